//! Endpoints of Services from EndpointSlices (and legacy Endpoints): every slice checked
//! once and grouped by the Service it names ([`EndpointIndex`]), then each Service port's
//! endpoints with kube-proxy's condition defaults, locality, topology hints as they concern
//! this node, deduplicated by IP:port. Part of the conversion (`super`); no IO.

use super::{name_ref, object_name, reason, K8sOptions, Objects, Problem, SERVICE_NAME_LABEL};
use crate::model::{Conditions, Endpoint, Hint, Hints, ServiceName};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

/// One endpoint address as a slice (or legacy subset) gives it, already checked.
struct ParsedEndpoint {
    ip: IpAddr,
    conditions: Conditions,
    node_name: Option<String>,
    /// `hints.forZones` names (`None`: no zone hints).
    zones: Option<Vec<String>>,
    /// `hints.forNodes` names (`None`: no node hints).
    nodes: Option<Vec<String>>,
}

/// A slice or legacy subset: its ports (name, protocol, number) and endpoints.
struct ParsedGroup {
    ports: Vec<(String, String, u16)>,
    endpoints: Vec<ParsedEndpoint>,
}

/// Every slice and legacy subset, checked once and grouped by the Service they name.
pub(super) struct EndpointIndex {
    slices: HashMap<ServiceName, Vec<ParsedGroup>>,
    legacy: HashMap<ServiceName, Vec<ParsedGroup>>,
}

impl EndpointIndex {
    pub(super) fn new(objects: &Objects, problems: &mut Vec<Problem>) -> EndpointIndex {
        let mut slices: HashMap<ServiceName, Vec<ParsedGroup>> = HashMap::new();
        let mut sorted: Vec<&EndpointSlice> = objects.slices.iter().map(|s| &**s).collect();
        sorted.sort_by(|a, b| name_ref(&a.metadata).cmp(&name_ref(&b.metadata)));
        for slice in sorted {
            let id = object_name(&slice.metadata);
            let object = format!("EndpointSlice {id}");
            let Some(service) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .filter(|s| !s.is_empty())
            else {
                problems.push(Problem {
                    object,
                    reason: reason::INVALID_OBJECT,
                    message: format!(
                        "has no {SERVICE_NAME_LABEL} label, so it belongs to no Service; ignored"
                    ),
                });
                continue;
            };
            let family_v6 = match slice.address_type.as_str() {
                "IPv4" => false,
                "IPv6" => true,
                "FQDN" => {
                    tracing::debug!(slice = %id, "skipped: addressType FQDN");
                    continue;
                }
                other => {
                    problems.push(Problem {
                        reason: reason::INVALID_OBJECT,
                        object,
                        message: format!("unknown addressType {other:?}; ignored"),
                    });
                    continue;
                }
            };
            let ports = slice
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let number = p
                        .port
                        .and_then(|n| u16::try_from(n).ok())
                        .filter(|n| *n != 0);
                    let Some(number) = number else {
                        problems.push(Problem {
                            reason: reason::INVALID_OBJECT,
                            object: object.clone(),
                            message: format!(
                                "port {:?} has no valid port number; ignored",
                                p.name.as_deref().unwrap_or("")
                            ),
                        });
                        return None;
                    };
                    Some((
                        p.name.clone().unwrap_or_default(),
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        number,
                    ))
                })
                .collect();
            let mut endpoints = Vec::new();
            for ep in &slice.endpoints {
                // Like kube-proxy: the first address is the endpoint's address.
                let Some(text) = ep.addresses.first() else {
                    continue;
                };
                let Some(ip) = unicast(text).filter(|ip| ip.is_ipv6() == family_v6) else {
                    problems.push(Problem {
                        reason: reason::INVALID_OBJECT,
                        object: object.clone(),
                        message: format!(
                            "endpoint address {text:?} is not a unicast {} address; ignored",
                            slice.address_type
                        ),
                    });
                    continue;
                };
                let c = ep.conditions.as_ref();
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                endpoints.push(ParsedEndpoint {
                    ip,
                    conditions: Conditions {
                        ready,
                        serving: c.and_then(|c| c.serving).unwrap_or(true),
                        terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                    },
                    node_name: ep.node_name.clone(),
                    zones: ep
                        .hints
                        .as_ref()
                        .and_then(|h| h.for_zones.as_ref())
                        .filter(|z| !z.is_empty())
                        .map(|z| z.iter().map(|z| z.name.clone()).collect()),
                    nodes: ep
                        .hints
                        .as_ref()
                        .and_then(|h| h.for_nodes.as_ref())
                        .filter(|n| !n.is_empty())
                        .map(|n| n.iter().map(|n| n.name.clone()).collect()),
                });
            }
            let key = ServiceName {
                namespace: id.namespace.clone(),
                name: service.clone(),
            };
            slices
                .entry(key)
                .or_default()
                .push(ParsedGroup { ports, endpoints });
        }

        let mut legacy: HashMap<ServiceName, Vec<ParsedGroup>> = HashMap::new();
        for eps in &objects.endpoints {
            let id = object_name(&eps.metadata);
            let object = format!("Endpoints {id}");
            for subset in eps.subsets.iter().flatten() {
                let ports = subset
                    .ports
                    .iter()
                    .flatten()
                    .filter_map(|p| {
                        let n = u16::try_from(p.port).ok().filter(|n| *n != 0)?;
                        Some((
                            p.name.clone().unwrap_or_default(),
                            p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                            n,
                        ))
                    })
                    .collect();
                let mut endpoints = Vec::new();
                for (list, ready) in [
                    (&subset.addresses, true),
                    (&subset.not_ready_addresses, false),
                ] {
                    for a in list.iter().flatten() {
                        let Some(ip) = unicast(&a.ip) else {
                            problems.push(Problem {
                                reason: reason::INVALID_OBJECT,
                                object: object.clone(),
                                message: format!(
                                    "address {:?} is not a unicast IP address; ignored",
                                    a.ip
                                ),
                            });
                            continue;
                        };
                        endpoints.push(ParsedEndpoint {
                            ip,
                            conditions: Conditions {
                                ready,
                                serving: ready,
                                terminating: false,
                            },
                            node_name: a.node_name.clone(),
                            zones: None,
                            nodes: None,
                        });
                    }
                }
                legacy
                    .entry(id.clone())
                    .or_default()
                    .push(ParsedGroup { ports, endpoints });
            }
        }
        EndpointIndex { slices, legacy }
    }

    /// The endpoints of one Service port, deduplicated by IP:port and sorted by address.
    pub(super) fn endpoints(
        &self,
        service: &ServiceName,
        port_name: &str,
        protocol: &str,
        options: &K8sOptions,
    ) -> Vec<Endpoint> {
        let groups = self
            .slices
            .get(service)
            .or_else(|| self.legacy.get(service))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut by_addr: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
        for g in groups {
            let Some(&(_, _, number)) = g
                .ports
                .iter()
                .find(|(n, p, _)| n == port_name && p == protocol)
            else {
                continue;
            };
            for e in &g.endpoints {
                let addr = SocketAddr::new(e.ip, number);
                let local = options.node_name.is_some() && e.node_name == options.node_name;
                let mut endpoint = Endpoint::new(addr);
                endpoint.conditions = e.conditions;
                endpoint.local = local;
                endpoint.hints = Hints {
                    zone: hint(e.zones.as_deref(), options.zone.as_deref()),
                    node: hint(e.nodes.as_deref(), options.node_name.as_deref()),
                };
                // kube-proxy: the first copy stays unless a later one is local.
                if !by_addr.contains_key(&addr) || local {
                    by_addr.insert(addr, endpoint);
                }
            }
        }
        by_addr.into_values().collect()
    }
}

/// One kind of hint of an endpoint, compared with this node's zone or name.
fn hint(names: Option<&[String]>, mine: Option<&str>) -> Hint {
    match names {
        None => Hint::Absent,
        Some(n) if mine.is_some_and(|m| !m.is_empty() && n.iter().any(|x| x == m)) => Hint::Here,
        Some(_) => Hint::Elsewhere,
    }
}

/// `text` as an IP address a backend can have.
fn unicast(text: &str) -> Option<IpAddr> {
    let ip: IpAddr = text.trim().parse().ok()?;
    let bad = ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]);
    (!bad).then_some(ip)
}
