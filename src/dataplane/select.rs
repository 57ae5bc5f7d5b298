//! Which endpoint a new connection goes to, per the Service port's policy, with the state
//! some policies keep per worker: affinity tables, round-robin positions, a PRNG.
//!
//! The state is private to one worker and keyed by the Service port's stable id, so it
//! survives snapshot swaps (a reload does not forget affinities or restart round-robin).
//! Pure given its inputs: time comes in as `now`, randomness from a seeded xorshift.

use super::affinity::AffinityTable;
use crate::model::Policy;
use crate::table::{EndpointId, Family, ServiceEntry};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// The endpoint picker: one worker's selection state.
#[derive(Debug)]
pub struct Picker {
    rng: u64,
    positions: HashMap<u64, usize, ahash::RandomState>,
    affinity: HashMap<u64, AffinityTable, ahash::RandomState>,
}

impl Picker {
    /// `seed` must not be 0 (it is forced odd).
    pub fn new(seed: u64) -> Picker {
        Picker {
            rng: seed | 1,
            positions: HashMap::default(),
            affinity: HashMap::default(),
        }
    }

    /// The endpoint for a connection from `client`, not one of `tried`; `None` when no
    /// usable endpoint is left. `from_node`: the client is an address of this node (Local
    /// Services route it with the cluster endpoints). Only endpoints of the client's IP
    /// family are candidates.
    pub fn choose(
        &mut self,
        entry: &ServiceEntry,
        client: SocketAddr,
        from_node: bool,
        tried: &[EndpointId],
        now: Instant,
    ) -> Option<EndpointId> {
        let route = entry.route(Family::of(client.ip()), from_node);
        match entry.port.policy {
            Policy::Maglev { .. } => route.pick(entry.port.policy, client, tried),
            Policy::ClientIp {
                timeout,
                max_entries,
            } => {
                let table = self
                    .affinity
                    .entry(entry.stable_id())
                    .or_insert_with(|| AffinityTable::new(max_entries));
                let ip = canonical_ip(client.ip());
                let remembered = table
                    .lookup(ip, now)
                    .and_then(|addr| entry.endpoint_by_addr(addr))
                    .filter(|&id| route.usable(id) && !tried.contains(&id));
                let id = match remembered {
                    Some(id) => id,
                    None => route.pick(entry.port.policy, client, tried)?,
                };
                let until = crate::deadline::after(now, timeout);
                table.remember(ip, entry.endpoint(id).endpoint.addr, now, until);
                Some(id)
            }
            Policy::RoundRobin => {
                let len = route.schedule_len();
                if len == 0 {
                    return None;
                }
                let position = self.positions.entry(entry.stable_id()).or_insert(0);
                let at = *position % len;
                *position = (at + 1) % len;
                route.round_robin(at, tried)
            }
            Policy::Random => {
                let r = self.next();
                route.weighted(r, tried)
            }
            Policy::LeastConnections => {
                let a = route.weighted(self.next(), tried)?;
                let b = route.weighted(self.next(), tried)?;
                // Compare active/weight without dividing: active_a · w_b vs active_b · w_a.
                let load = |id: EndpointId| {
                    let e = entry.endpoint(id);
                    let weight = route.weights().get(id.0 as usize).copied().unwrap_or(1);
                    (u128::from(e.stats.active()), u128::from(weight.max(1)))
                };
                let ((la, wa), (lb, wb)) = (load(a), load(b));
                Some(if lb * wa < la * wb { b } else { a })
            }
        }
    }

    /// Forget the state of Service ports that are not in `snapshot` (removed by a reload),
    /// so that churning Services does not grow it without bound. Called when a worker pins
    /// a new snapshot.
    pub fn retain_services(&mut self, snapshot: &crate::table::RoutingSnapshot) {
        if self.positions.is_empty() && self.affinity.is_empty() {
            return;
        }
        let live: std::collections::HashSet<u64, ahash::RandomState> =
            snapshot.services().map(|(_, s)| s.stable_id()).collect();
        self.positions.retain(|id, _| live.contains(id));
        self.affinity.retain(|id, _| live.contains(id));
    }

    /// Clients remembered for affinity, all Service ports (for tests).
    #[cfg(test)]
    pub fn affinity_entries(&self) -> usize {
        self.affinity.values().map(AffinityTable::len).sum()
    }

    /// xorshift64*.
    fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use crate::table::{RoutingSnapshot, StatsRegistry};

    fn model(names: &[&str], policy: Policy) -> Model {
        Model {
            settings: Settings::default(),
            services: names
                .iter()
                .enumerate()
                .map(|(i, name)| ServicePort {
                    key: ServicePortKey {
                        service: ServiceName {
                            namespace: "t".into(),
                            name: (*name).into(),
                        },
                        port_name: String::new(),
                        protocol: Protocol::Tcp,
                    },
                    port: 80,
                    node_port: 30000 + i as u16,
                    node_port_allocated: false,
                    target_port: 80,
                    endpoints: vec![
                        Endpoint::new(SocketAddr::from(([10, 0, 0, 1], 80))).with_weight(1)
                    ],
                    policy,
                    timeouts: Timeouts::default(),
                    connect_retries: 0,
                    maglev_table_size: 1009,
                    forwarding: Forwarding::None,
                    udp_responses: None,
                    traffic_policy: Default::default(),
                    families: Default::default(),
                    health: Default::default(),
                    meta: None,
                    addresses: Default::default(),
                })
                .collect(),
            primary_ips: Vec::new(),
        }
    }

    #[test]
    fn state_of_removed_services_is_forgotten() {
        let policy = Policy::ClientIp {
            timeout: std::time::Duration::from_secs(60),
            max_entries: 10,
        };
        let mut reg = StatsRegistry::new(1);
        let both = RoutingSnapshot::build(&model(&["a", "b"], policy), 1, &mut reg);
        let mut sel = Picker::new(7);
        let client = SocketAddr::from(([127, 0, 0, 10], 5000));
        for (_, entry) in both.services() {
            assert!(sel
                .choose(entry, client, false, &[], Instant::now())
                .is_some());
        }
        assert_eq!(sel.affinity_entries(), 2);
        let only_a = RoutingSnapshot::build(&model(&["a"], policy), 2, &mut reg);
        sel.retain_services(&only_a);
        assert_eq!(
            sel.affinity_entries(),
            1,
            "b's affinity table is dropped, a's kept"
        );
    }
}
