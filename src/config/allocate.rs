//! NodePort allocation for Service ports whose file entry gives no `node_port`.
//!
//! Kubernetes rules (docs/kubernetes.md, "What is served"): the lowest [`NodePortRange::static_band_size`] ports
//! of the range are the *static band*, left for explicit picks; allocation takes from the
//! *upper band* first and from the static band only when the upper one is full. A port is
//! never given to two Service ports of the same protocol, and explicit ports always win.
//!
//! sluice has no API server to remember allocations, so they must be reproducible instead:
//! 1. a Service port the running model (`previous`) already serves keeps that NodePort while
//!    it is still free and in range, so a reload never moves a Service;
//! 2. any other starts probing at `band_first + xxh3(identity) % band_size` and takes the first
//!    free port, wrapping within the band. Identity is `namespace/name:port_name/PROTOCOL`.
//!
//! Requests are handled in the order given (the model's sorted order), so the same file and
//! the same `previous` always give the same ports. This module only computes numbers; the
//! caller turns an [`Exhausted`] into a located error.

use crate::model::{Model, NodePortRange, Protocol, ServicePortKey};
use std::collections::{HashMap, HashSet};
use xxhash_rust::xxh3::xxh3_64;

/// One Service port that needs a NodePort.
pub(super) struct Request<'a> {
    pub key: &'a ServicePortKey,
    /// The port the file gives (already checked to be in range and unique), if any.
    pub explicit: Option<u16>,
}

/// The NodePort a request ends up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Allocation {
    pub node_port: u16,
    /// True when the port was not given by the file.
    pub allocated: bool,
}

/// Every port of the range is in use; `index` is the first request left without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Exhausted {
    pub index: usize,
}

/// Gives every request a NodePort; see the module documentation for the rules.
pub(super) fn allocate(
    range: NodePortRange,
    requests: &[Request],
    previous: Option<&Model>,
) -> Result<Vec<Allocation>, Exhausted> {
    let mut used: HashSet<(Protocol, u16)> = requests
        .iter()
        .filter_map(|r| r.explicit.map(|p| (r.key.protocol, p)))
        .collect();
    let mut result: Vec<Option<Allocation>> = requests
        .iter()
        .map(|r| {
            r.explicit.map(|node_port| Allocation {
                node_port,
                allocated: false,
            })
        })
        .collect();

    // 1. Keep what the running model serves, when still possible.
    let before: HashMap<&ServicePortKey, u16> = previous
        .map(|m| m.services.iter().map(|s| (&s.key, s.node_port)).collect())
        .unwrap_or_default();
    for (request, slot) in requests.iter().zip(result.iter_mut()) {
        if slot.is_some() {
            continue;
        }
        if let Some(&port) = before.get(request.key) {
            if range.contains(port) && used.insert((request.key.protocol, port)) {
                *slot = Some(Allocation {
                    node_port: port,
                    allocated: true,
                });
            }
        }
    }

    // 2. Hash, then probe: upper band first, static band when the upper one is full.
    let static_size = range.static_band_size();
    let static_band = (u32::from(range.first), static_size);
    let upper_band = (
        u32::from(range.first) + static_size,
        range.size() - static_size,
    );
    for (index, (request, slot)) in requests.iter().zip(result.iter_mut()).enumerate() {
        if slot.is_some() {
            continue;
        }
        let hash = xxh3_64(identity(request.key).as_bytes());
        let port = [upper_band, static_band]
            .into_iter()
            .find_map(|(first, size)| {
                probe(first, size, hash, |p| {
                    !used.contains(&(request.key.protocol, p))
                })
            })
            .ok_or(Exhausted { index })?;
        used.insert((request.key.protocol, port));
        *slot = Some(Allocation {
            node_port: port,
            allocated: true,
        });
    }
    Ok(result
        .into_iter()
        .map(|a| a.expect("every request was given a port"))
        .collect())
}

/// The string hashed to pick a starting port: `namespace/name:port_name/PROTOCOL`.
fn identity(key: &ServicePortKey) -> String {
    format!(
        "{}/{}:{}/{}",
        key.service.namespace, key.service.name, key.port_name, key.protocol
    )
}

/// The first free port of the band `first..first + size`, starting at `hash % size`.
fn probe(first: u32, size: u32, hash: u64, free: impl Fn(u16) -> bool) -> Option<u16> {
    if size == 0 {
        return None;
    }
    let start = (hash % u64::from(size)) as u32;
    (0..size)
        .map(|i| first + (start + i) % size)
        .filter_map(|p| u16::try_from(p).ok())
        .find(|p| free(*p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ServiceName, DEFAULT_NODE_PORT_RANGE};

    fn key(name: &str) -> ServicePortKey {
        ServicePortKey {
            service: ServiceName {
                namespace: "default".into(),
                name: name.into(),
            },
            port_name: String::new(),
            protocol: Protocol::Tcp,
        }
    }

    fn requests<'a>(keys: &'a [ServicePortKey], explicit: &[Option<u16>]) -> Vec<Request<'a>> {
        keys.iter()
            .zip(explicit.iter().copied().chain(std::iter::repeat(None)))
            .map(|(key, explicit)| Request { key, explicit })
            .collect()
    }

    fn keys(n: usize) -> Vec<ServicePortKey> {
        (0..n).map(|i| key(&format!("svc-{i}"))).collect()
    }

    fn ports(allocations: &[Allocation]) -> Vec<u16> {
        allocations.iter().map(|a| a.node_port).collect()
    }

    /// A previous model that served `keys` on `ports`.
    fn model_with(keys: &[ServicePortKey], ports: &[u16]) -> Model {
        let services = keys
            .iter()
            .zip(ports)
            .map(|(k, &p)| crate::model::ServicePort {
                key: k.clone(),
                port: 80,
                node_port: p,
                node_port_allocated: true,
                target_port: 80,
                endpoints: vec![],
                policy: Default::default(),
                timeouts: Default::default(),
                connect_retries: 2,
                maglev_table_size: crate::model::DEFAULT_MAGLEV_TABLE_SIZE,
                forwarding: Default::default(),
                udp_responses: None,
                traffic_policy: Default::default(),
                families: Default::default(),
                health: Default::default(),
                meta: None,
                addresses: Default::default(),
            })
            .collect();
        Model {
            settings: Default::default(),
            services,
            primary_ips: Vec::new(),
        }
    }

    #[test]
    fn avoids_the_static_band() {
        let range = DEFAULT_NODE_PORT_RANGE;
        let ks = keys(300);
        let got = allocate(range, &requests(&ks, &[]), None).unwrap();
        for a in &got {
            assert!(a.allocated);
            assert!(
                (30086..=32767).contains(&a.node_port),
                "{} is in the static band",
                a.node_port
            );
        }
        let distinct: HashSet<u16> = ports(&got).into_iter().collect();
        assert_eq!(distinct.len(), 300);
    }

    #[test]
    fn deterministic() {
        let ks = keys(50);
        let a = allocate(DEFAULT_NODE_PORT_RANGE, &requests(&ks, &[]), None).unwrap();
        let b = allocate(DEFAULT_NODE_PORT_RANGE, &requests(&ks, &[]), None).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn explicit_ports_are_kept_and_avoided() {
        let ks = keys(2);
        let first_alone =
            allocate(DEFAULT_NODE_PORT_RANGE, &requests(&ks[..1], &[]), None).unwrap();
        let taken = first_alone[0].node_port;
        // svc-1 explicitly asks for the port svc-0 would hash to; svc-0 must move.
        let reqs = [
            Request {
                key: &ks[0],
                explicit: None,
            },
            Request {
                key: &ks[1],
                explicit: Some(taken),
            },
        ];
        let got = allocate(DEFAULT_NODE_PORT_RANGE, &reqs, None).unwrap();
        assert_eq!(
            got[1],
            Allocation {
                node_port: taken,
                allocated: false
            }
        );
        assert_ne!(got[0].node_port, taken);
        assert_eq!(
            got[0].node_port,
            if taken == 32767 { 30086 } else { taken + 1 }
        );
    }

    #[test]
    fn previous_ports_are_kept() {
        let ks = keys(3);
        let prev = model_with(&ks, &[30001, 31000, 32000]);
        let got = allocate(DEFAULT_NODE_PORT_RANGE, &requests(&ks, &[]), Some(&prev)).unwrap();
        assert_eq!(ports(&got), vec![30001, 31000, 32000]);
        assert!(got.iter().all(|a| a.allocated));
    }

    #[test]
    fn previous_port_given_up_when_taken_or_out_of_range() {
        let ks = keys(3);
        let prev = model_with(&ks, &[31000, 20000, 32000]);
        let reqs = requests(&ks, &[None, None, Some(31000)]);
        let range = NodePortRange {
            first: 30000,
            last: 32767,
        };
        let got = allocate(range, &reqs, Some(&prev)).unwrap();
        let fresh = allocate(range, &requests(&ks[..2], &[]), None).unwrap();
        // svc-0 lost 31000 to svc-2's explicit pick, svc-1's 20000 is outside the range.
        assert_ne!(got[0].node_port, 31000);
        assert_eq!(got[1].node_port, fresh[1].node_port);
        assert_eq!(
            got[2],
            Allocation {
                node_port: 31000,
                allocated: false
            }
        );
    }

    #[test]
    fn adding_a_service_does_not_move_others_on_reload() {
        let ks = keys(20);
        let first = allocate(DEFAULT_NODE_PORT_RANGE, &requests(&ks[..10], &[]), None).unwrap();
        let prev = model_with(&ks[..10], &ports(&first));
        let second = allocate(DEFAULT_NODE_PORT_RANGE, &requests(&ks, &[]), Some(&prev)).unwrap();
        assert_eq!(ports(&second[..10]), ports(&first));
    }

    #[test]
    fn full_upper_band_falls_back_to_static_band_then_exhausts() {
        // 30000-30019: static band 16 ports (30000-30015), upper band 4 (30016-30019).
        let range = NodePortRange {
            first: 30000,
            last: 30019,
        };
        assert_eq!(range.static_band_size(), 16);
        let ks = keys(21);
        let got = allocate(range, &requests(&ks[..6], &[]), None).unwrap();
        let mut upper: Vec<u16> = ports(&got[..4]).into_iter().collect();
        upper.sort_unstable();
        assert_eq!(upper, vec![30016, 30017, 30018, 30019]);
        assert!(got[4..].iter().all(|a| a.node_port < 30016));

        let all = allocate(range, &requests(&ks[..20], &[]), None).unwrap();
        let distinct: HashSet<u16> = ports(&all).into_iter().collect();
        assert_eq!(distinct.len(), 20);
        assert_eq!(
            allocate(range, &requests(&ks, &[]), None),
            Err(Exhausted { index: 20 })
        );
    }

    #[test]
    fn tiny_range_is_all_static_band() {
        let range = NodePortRange {
            first: 40000,
            last: 40004,
        };
        let ks = keys(5);
        let got = allocate(range, &requests(&ks, &[]), None).unwrap();
        let mut p = ports(&got);
        p.sort_unstable();
        assert_eq!(p, vec![40000, 40001, 40002, 40003, 40004]);
    }

    #[test]
    fn range_ending_at_65535() {
        let range = NodePortRange {
            first: 65500,
            last: 65535,
        };
        let ks = keys(36);
        let got = allocate(range, &requests(&ks, &[]), None).unwrap();
        let distinct: HashSet<u16> = ports(&got).into_iter().collect();
        assert_eq!(distinct.len(), 36);
    }
}
