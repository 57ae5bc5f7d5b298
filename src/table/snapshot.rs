//! The immutable routing snapshot workers read, and `pick`: which endpoint a new
//! connection goes to.
//!
//! A [`RoutingSnapshot`] is built by the control plane from a validated [`Model`], off the
//! hot path, and is never mutated afterwards: it is published whole (see `publish`) and
//! read lock-free by every worker. It owns the Service ports keyed by the listener a
//! connection arrives at — (protocol, NodePort), or (protocol, address:port) for a Service's
//! external and LoadBalancer IPs —, their endpoints in canonical order (so an
//! [`EndpointId`] is an index), their Maglev tables, source ranges and counter blocks.
//! Reading it (`lookup`, `admits`, `service`, `pick`) must never allocate, lock, or panic
//! on anything a client controls. It does no IO and keeps no per-connection state: the
//! connection remembers which endpoints it already `tried`.

use super::hash::canonical_addr;
use super::maglev::{MaglevTable, TableSize};
use super::ranges::SourceRanges;
use super::registry::StatsRegistry;
use super::route::Route;
use super::usable::{family_weights, Family, Tier};
use crate::model::{Endpoint, Model, Protocol, ServicePort, ServicePortKey};
use crate::stats::StatsBlock;
use ahash::AHashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Index of a Service port in one [`RoutingSnapshot`] (its position in the model).
/// Valid only for the snapshot that returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub u32);

/// Index of an endpoint in one [`ServiceEntry::endpoints`] (canonical order).
/// Valid only for the snapshot that returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(pub u32);

/// One endpoint of a Service port, with its counters.
#[derive(Debug)]
pub struct EndpointEntry {
    pub endpoint: Endpoint,
    /// The weight new connections from outside the node see: `endpoint.weight` when the
    /// endpoint is chosen by the condition/topology/policy/health rules for its family
    /// (see `usable`), else 0.
    pub routing_weight: u32,
    pub stats: Arc<StatsBlock>,
}

/// One Service port as served: its model, counters, endpoints and routes.
#[derive(Debug)]
pub struct ServiceEntry {
    /// The Service port, with `endpoints` replaced by the canonical list (sorted by
    /// canonical address, one per address) that [`EndpointId`]s index.
    pub port: ServicePort,
    pub stats: Arc<StatsBlock>,
    endpoints: Vec<EndpointEntry>,
    /// The distinct routes; `route_of` says which serves which clients.
    routes: Vec<Route>,
    /// `routes` index by `[family][from node]` (IPv4 = 0, IPv6 = 1; outside = 0, node = 1).
    route_of: [[u8; 2]; 2],
    /// The family whose outside route [`ServiceEntry::pick`] and friends use when no client
    /// says (the first endpoint's; IPv4 without endpoints).
    primary: Family,
    /// A hash of the Service port's key: the same in every snapshot, so workers can keep
    /// state per Service port (affinity, round-robin position) across reloads.
    stable_id: u64,
    /// `loadBalancerSourceRanges`, ready for the accept path.
    source_ranges: SourceRanges,
}

impl ServiceEntry {
    /// Every endpoint, including those new connections do not go to (routing weight 0:
    /// draining, down, terminating while others are ready, remote under Local policy,
    /// outside this zone under topology hints); `EndpointId(i)` is `[i]`.
    pub fn endpoints(&self) -> &[EndpointEntry] {
        &self.endpoints
    }

    /// The endpoint `id`. Panics if `id` did not come from this service of this snapshot
    /// (a programming error, never client input); use `endpoints().get()` when unsure.
    pub fn endpoint(&self, id: EndpointId) -> &EndpointEntry {
        &self.endpoints[id.0 as usize]
    }

    /// The route for clients of `family`, on this node (`from_node`) or outside it.
    #[inline]
    pub fn route(&self, family: Family, from_node: bool) -> &Route {
        let f = match family {
            Family::V4 => 0,
            Family::V6 => 1,
        };
        &self.routes[usize::from(self.route_of[f][usize::from(from_node)])]
    }

    /// The route for outside clients of the primary family (see `primary`).
    fn primary(&self) -> &Route {
        self.route(self.primary, false)
    }

    /// Which tier of endpoints carries new connections from outside clients (of the
    /// first endpoint's family).
    pub fn tier(&self) -> Tier {
        self.primary().tier()
    }

    /// The Maglev table outside clients (of the first endpoint's family) are picked by.
    pub fn table(&self) -> &MaglevTable {
        self.primary().table()
    }

    /// Identity of the Service port that stays the same across snapshots.
    pub fn stable_id(&self) -> u64 {
        self.stable_id
    }

    /// Who may connect where the source ranges apply (see [`RoutingSnapshot::admits`]).
    pub fn source_ranges(&self) -> &SourceRanges {
        &self.source_ranges
    }

    /// The endpoint with this address (IPv4-mapped or not), if it is one of this Service's.
    pub fn endpoint_by_addr(&self, addr: SocketAddr) -> Option<EndpointId> {
        let want = canonical_addr(addr);
        self.endpoints
            .binary_search_by(|e| canonical_addr(e.endpoint.addr).cmp(&want))
            .ok()
            .map(|i| EndpointId(i as u32))
    }

    /// Whether new connections from outside clients may go to `id`.
    pub fn usable(&self, id: EndpointId) -> bool {
        self.endpoints
            .get(id.0 as usize)
            .is_some_and(|e| e.routing_weight > 0)
    }

    /// [`Route::round_robin`] of the primary route.
    pub fn round_robin(&self, position: usize, tried: &[EndpointId]) -> Option<EndpointId> {
        self.primary().round_robin(position, tried)
    }

    /// [`Route::schedule_len`] of the primary route.
    pub fn schedule_len(&self) -> usize {
        self.primary().schedule_len()
    }

    /// [`Route::weighted`] of the primary route.
    pub fn weighted(&self, r: u64, tried: &[EndpointId]) -> Option<EndpointId> {
        self.primary().weighted(r, tried)
    }

    /// The endpoint a new connection from `client` (outside the node) goes to: its
    /// family's route, [`Route::pick`].
    #[inline]
    pub fn pick(&self, client: SocketAddr, tried: &[EndpointId]) -> Option<EndpointId> {
        self.route(Family::of(client.ip()), false)
            .pick(self.port.policy, client, tried)
    }
}

/// Ports per protocol in the NodePort index.
const PORTS: usize = 1 << 16;

/// How a new connection reached its Service port: which one, and whether the Service's
/// source ranges apply at the listener it arrived at (see [`RoutingSnapshot::lookup`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reached {
    pub service: ServiceId,
    /// The client must pass [`RoutingSnapshot::admits`]: the connection arrived at one of
    /// the Service's LoadBalancer IPs (or at its NodePort, with `source_ranges_on_node_ports`)
    /// and the Service has source ranges.
    pub source_ranges: bool,
}

/// A Service port reached at an address of its own: (protocol index, canonical
/// address:port) → Service port index, and whether the address is a LoadBalancer IP.
type AddressEntry = ((usize, SocketAddr), u32, bool);

/// Everything workers need to route new connections, at one configuration generation.
pub struct RoutingSnapshot {
    generation: u64,
    services: Vec<ServiceEntry>,
    /// Dense index: `by_port[protocol_index · 65536 + node_port]` is `ServiceId + 1`, or 0
    /// for none. 256 KiB per protocol, zero-initialised (lazily faulted in) — one load per
    /// lookup, no hashing, no probing; empty in [`RoutingSnapshot::empty`].
    by_port: Box<[u32]>,
    /// Service ports by their external and LoadBalancer IPs, sorted by key (one entry per
    /// key: the first Service port in the model that claims it). Looked up before the
    /// NodePort index, as kube-proxy's service-IP map is matched before its NodePort map.
    by_address: Box<[AddressEntry]>,
    /// `source_ranges_on_node_ports`: source ranges apply at NodePorts too.
    ranges_on_node_ports: bool,
    /// This node's own addresses (canonical, sorted): a client with one of them (or any
    /// loopback address) is on the node itself, and Local Services route it with the
    /// cluster endpoints, as kube-proxy does.
    node_addresses: Arc<[IpAddr]>,
}

impl RoutingSnapshot {
    /// A snapshot serving nothing (generation 0), e.g. before the first configuration.
    pub fn empty() -> Self {
        RoutingSnapshot {
            generation: 0,
            services: Vec::new(),
            by_port: Box::new([]),
            by_address: Box::new([]),
            ranges_on_node_ports: false,
            node_addresses: Arc::new([]),
        }
    }

    /// The same snapshot, knowing `addresses` as this node's own (any order; IPv4-mapped
    /// ones count as IPv4). [`rebuild`](Self::rebuild) keeps them.
    pub fn with_node_addresses(mut self, addresses: &[IpAddr]) -> Self {
        let mut v: Vec<IpAddr> = addresses.iter().map(|&ip| canonical_ip(ip)).collect();
        v.sort_unstable();
        v.dedup();
        self.node_addresses = v.into();
        self
    }

    /// Whether `client` is an address of this node (loopback included). Lock-free and
    /// allocation-free: a binary search.
    #[inline]
    pub fn is_node_address(&self, client: IpAddr) -> bool {
        let ip = canonical_ip(client);
        ip.is_loopback() || self.node_addresses.binary_search(&ip).is_ok()
    }

    /// The node addresses this snapshot knows.
    pub fn node_addresses(&self) -> &[IpAddr] {
        &self.node_addresses
    }

    /// Build the snapshot of `model`. Counter blocks come from `stats` (reused for keys the
    /// previous build had; blocks for keys `model` no longer has are dropped from `stats`).
    ///
    /// Never fails; inputs the model should already have rejected are made harmless:
    /// endpoints are sorted canonically and deduplicated by canonical address (the highest
    /// weight wins), a non-prime or out-of-range `maglev_table_size` is rounded up to a
    /// prime (see [`TableSize`]), and when two Service ports claim the same
    /// (protocol, NodePort) the first in the model wins `lookup` (the other stays in
    /// [`services`](Self::services)).
    pub fn build(model: &Model, generation: u64, stats: &mut StatsRegistry) -> Self {
        Self::empty().rebuild(model, generation, stats)
    }

    /// Like [`build`](Self::build), but reuses this snapshot's Maglev table for every
    /// Service port (same key) whose canonical endpoints and table size did not change,
    /// instead of filling it again (~1–3 ms each at M = 65537). The result is identical to
    /// `build`'s; only the time to get it differs. The control plane passes the snapshot
    /// published now.
    pub fn rebuild(&self, model: &Model, generation: u64, stats: &mut StatsRegistry) -> Self {
        let previous: AHashMap<&ServicePortKey, &ServiceEntry> =
            self.services.iter().map(|s| (&s.port.key, s)).collect();
        stats.begin();
        let mut by_port = vec![0u32; PORTS * Protocol::COUNT].into_boxed_slice();
        let mut by_address: Vec<AddressEntry> = Vec::new();
        let mut services = Vec::with_capacity(model.services.len());
        for (i, port) in model.services.iter().enumerate() {
            let endpoints = canonical_endpoints(&port.endpoints);
            let size = TableSize::new(port.maglev_table_size);
            let prev = previous.get(&port.key).copied();
            let mut routes: Vec<Route> = Vec::with_capacity(2);
            let mut route_of = [[0u8; 2]; 2];
            let mut outside_weights = vec![0u32; endpoints.len()];
            for (f, family) in [Family::V4, Family::V6].into_iter().enumerate() {
                let served = match family {
                    Family::V4 => port.families.v4,
                    Family::V6 => port.families.v6,
                };
                let (outside, node) = if served {
                    family_weights(port.traffic_policy, &endpoints, family)
                } else {
                    let none = (vec![0; endpoints.len()], Tier::None);
                    (none.clone(), none)
                };
                for (w, e) in outside_weights.iter_mut().zip(&outside.0) {
                    *w += e;
                }
                for (o, (weights, tier)) in [outside, node].into_iter().enumerate() {
                    let index = match routes.iter().position(|r| r.same_weights(&weights)) {
                        Some(i) => i,
                        None => {
                            let reuse = prev.and_then(|p| {
                                p.routes
                                    .iter()
                                    .find(|r| r.same_weights(&weights))
                                    .map(|r| (&p.port.endpoints[..], r))
                            });
                            routes.push(Route::build(&endpoints, weights, tier, size, reuse));
                            routes.len() - 1
                        }
                    };
                    route_of[f][o] = index as u8;
                }
            }
            let service_stats = stats.service_block(&port.key);
            let entries = endpoints
                .iter()
                .zip(&outside_weights)
                .map(|(&endpoint, &routing_weight)| EndpointEntry {
                    endpoint,
                    routing_weight,
                    stats: stats.endpoint_block(&port.key, endpoint.addr),
                })
                .collect();
            // Model sizes are far below u32::MAX Services.
            let slot = &mut by_port[port_index(port.key.protocol, port.node_port)];
            if *slot == 0 && port.node_port != 0 {
                *slot = i as u32 + 1;
            }
            let a = &port.addresses;
            for (ip, lb) in a
                .load_balancer_ips
                .iter()
                .map(|ip| (ip, true))
                .chain(a.external_ips.iter().map(|ip| (ip, false)))
            {
                let addr = SocketAddr::new(canonical_ip(*ip), port.port);
                by_address.push(((port.key.protocol.index(), addr), i as u32, lb));
            }
            services.push(ServiceEntry {
                stable_id: stable_id(&port.key),
                primary: endpoints
                    .first()
                    .map_or(Family::V4, |e| Family::of(e.addr.ip())),
                routes,
                route_of,
                port: ServicePort {
                    endpoints,
                    ..port.clone()
                },
                stats: service_stats,
                endpoints: entries,
                source_ranges: SourceRanges::new(&port.addresses.source_ranges),
            });
        }
        stats.finish();
        // Stable: of two claims to one key, the first in the model (a LoadBalancer IP
        // before an external IP of the same Service port) stays.
        by_address.sort_by_key(|e| e.0);
        by_address.dedup_by_key(|e| e.0);
        RoutingSnapshot {
            generation,
            services,
            by_port,
            by_address: by_address.into_boxed_slice(),
            ranges_on_node_ports: model.settings.source_ranges_on_node_ports,
            node_addresses: Arc::clone(&self.node_addresses),
        }
    }

    /// The configuration generation this snapshot was built for.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The Service port a connection to the listener bound at `listener` (`protocol`)
    /// goes to: the one whose external or LoadBalancer IP:port it is, else the one whose
    /// NodePort is its port (a NodePort listener, on a node address or a wildcard). Never
    /// allocates or panics: a binary search, then one load.
    #[inline]
    pub fn lookup(&self, protocol: Protocol, listener: SocketAddr) -> Option<Reached> {
        let key = (
            protocol.index(),
            SocketAddr::new(canonical_ip(listener.ip()), listener.port()),
        );
        if let Ok(i) = self.by_address.binary_search_by(|e| e.0.cmp(&key)) {
            let (_, id, lb) = self.by_address[i];
            let service = ServiceId(id);
            return Some(Reached {
                service,
                source_ranges: lb && !self.service(service).source_ranges.is_empty(),
            });
        }
        match self.by_port.get(port_index(protocol, listener.port())) {
            Some(&id) if id != 0 => {
                let service = ServiceId(id - 1);
                Some(Reached {
                    service,
                    source_ranges: self.ranges_on_node_ports
                        && !self.service(service).source_ranges.is_empty(),
                })
            }
            _ => None,
        }
    }

    /// Whether `client` may connect where it `reached` its Service port: always when the
    /// source ranges do not apply there; else when a range holds it (or none is of its
    /// family), or — kube-proxy's rule for VIPs that are local addresses — when it is one
    /// of the Service's LoadBalancer IPs (the node talking to its own VIP) and a range holds
    /// one of this node's addresses. Never allocates or panics.
    #[inline]
    pub fn admits(&self, reached: Reached, client: IpAddr) -> bool {
        if !reached.source_ranges {
            return true;
        }
        let s = self.service(reached.service);
        if s.source_ranges.admits(client) {
            return true;
        }
        // Rare (a refused client): a scan of the Service's LoadBalancer IPs.
        let client = canonical_ip(client);
        s.port.addresses.load_balancer_ips.contains(&client)
            && self
                .node_addresses
                .iter()
                .any(|&a| !a.is_loopback() && s.source_ranges.holds(a))
    }

    /// The Service port `id`. Panics if `id` did not come from this snapshot (a
    /// programming error, never client input).
    pub fn service(&self, id: ServiceId) -> &ServiceEntry {
        &self.services[id.0 as usize]
    }

    /// Every Service port, in model order.
    pub fn services(&self) -> impl Iterator<Item = (ServiceId, &ServiceEntry)> {
        self.services
            .iter()
            .enumerate()
            .map(|(i, s)| (ServiceId(i as u32), s))
    }
}

impl std::fmt::Debug for RoutingSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutingSnapshot")
            .field("generation", &self.generation)
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

impl Default for RoutingSnapshot {
    fn default() -> Self {
        Self::empty()
    }
}

/// Number of [`Protocol`]s, and each one's block in the NodePort index.
trait ProtocolIndex {
    const COUNT: usize;
    fn index(self) -> usize;
}

impl ProtocolIndex for Protocol {
    const COUNT: usize = Protocol::ALL.len();
    fn index(self) -> usize {
        match self {
            Protocol::Tcp => 0,
            Protocol::Udp => 1,
        }
    }
}

#[inline]
fn port_index(protocol: Protocol, node_port: u16) -> usize {
    protocol.index() * PORTS + usize::from(node_port)
}

/// Endpoints sorted by canonical address, one per canonical address (the highest weight
/// wins), so the list, the `EndpointId`s and the Maglev table depend only on the set.
/// xxh3 of the Service port's key text (namespace/name:port/protocol).
fn stable_id(key: &ServicePortKey) -> u64 {
    let text = format!(
        "{}/{}:{}/{}",
        key.service.namespace, key.service.name, key.port_name, key.protocol
    );
    super::hash::stable_hash(text.as_bytes(), 0)
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn canonical_endpoints(given: &[Endpoint]) -> Vec<Endpoint> {
    let mut eps = given.to_vec();
    eps.sort_by(|a, b| {
        canonical_addr(a.addr)
            .cmp(&canonical_addr(b.addr))
            .then(b.weight.cmp(&a.weight))
            .then(a.addr.cmp(&b.addr))
    });
    eps.dedup_by(|later, first| canonical_addr(later.addr) == canonical_addr(first.addr));
    eps
}

#[cfg(test)]
mod tests;
