//! The immutable routing snapshot workers read, and `pick`: which endpoint a new
//! connection goes to.
//!
//! A [`RoutingSnapshot`] is built by the control plane from a validated [`Model`], off the
//! hot path, and is never mutated afterwards: it is published whole (see `publish`) and
//! read lock-free by every worker. It owns the Service ports keyed by (protocol, NodePort),
//! their endpoints in canonical order (so an [`EndpointId`] is an index), their Maglev
//! tables and their counter blocks. Reading it (`lookup`, `service`, `pick`) must never
//! allocate, lock, or panic on anything a client controls. It does no IO and keeps no
//! per-connection state: the connection remembers which endpoints it already `tried`.

use super::hash::canonical_addr;
use super::maglev::{MaglevTable, TableSize};
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

/// Everything workers need to route new connections, at one configuration generation.
pub struct RoutingSnapshot {
    generation: u64,
    services: Vec<ServiceEntry>,
    /// Dense index: `by_port[protocol_index · 65536 + node_port]` is `ServiceId + 1`, or 0
    /// for none. 256 KiB per protocol, zero-initialised (lazily faulted in) — one load per
    /// lookup, no hashing, no probing; empty in [`RoutingSnapshot::empty`].
    by_port: Box<[u32]>,
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
            let slot = &mut by_port[port_index(port.key.protocol, port.node_port)];
            if *slot == 0 {
                // Model sizes are far below u32::MAX Services.
                *slot = i as u32 + 1;
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
            });
        }
        stats.finish();
        RoutingSnapshot {
            generation,
            services,
            by_port,
            node_addresses: Arc::clone(&self.node_addresses),
        }
    }

    /// The configuration generation this snapshot was built for.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The Service port served on `node_port` for `protocol`. Never panics.
    #[inline]
    pub fn lookup(&self, protocol: Protocol, node_port: u16) -> Option<ServiceId> {
        match self.by_port.get(port_index(protocol, node_port)) {
            Some(&id) if id != 0 => Some(ServiceId(id - 1)),
            _ => None,
        }
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
    const COUNT: usize = 1;
    fn index(self) -> usize {
        match self {
            Protocol::Tcp => 0,
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
mod tests {
    use super::*;
    use crate::model::{HashKey, Policy, ServiceName, ServicePortKey, Settings, Timeouts};

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

    fn service(name: &str, node_port: u16, endpoints: &[(&str, u32)]) -> ServicePort {
        ServicePort {
            key: key(name),
            port: 80,
            node_port,
            node_port_allocated: false,
            target_port: 8080,
            endpoints: endpoints
                .iter()
                .map(|(a, w)| Endpoint::new(a.parse().unwrap()).with_weight(*w))
                .collect(),
            policy: Policy::Maglev {
                key: HashKey::ClientIpPort,
            },
            timeouts: Timeouts::default(),
            connect_retries: 2,
            maglev_table_size: 1009,
            forwarding: Default::default(),
            traffic_policy: Default::default(),
            families: Default::default(),
            health: Default::default(),
            meta: None,
        }
    }

    fn model(services: Vec<ServicePort>) -> Model {
        Model {
            settings: Settings::default(),
            services,
        }
    }

    fn client(i: u32) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, (i % 251) as u8], 1024 + (i % 60000) as u16))
    }

    fn addr_of(s: &ServiceEntry, id: EndpointId) -> String {
        s.endpoint(id).endpoint.addr.to_string()
    }

    #[test]
    fn lookup_finds_services_by_node_port() {
        let m = model(vec![
            service("a", 30001, &[("10.0.0.1:80", 1)]),
            service("b", 30002, &[("10.0.0.2:80", 1)]),
            service("dup", 30001, &[("10.0.0.3:80", 1)]),
        ]);
        let snap = RoutingSnapshot::build(&m, 7, &mut StatsRegistry::new(2));
        assert_eq!(snap.generation(), 7);
        assert_eq!(snap.lookup(Protocol::Tcp, 30001), Some(ServiceId(0)));
        assert_eq!(snap.lookup(Protocol::Tcp, 30002), Some(ServiceId(1)));
        assert_eq!(snap.lookup(Protocol::Tcp, 30003), None);
        assert_eq!(snap.lookup(Protocol::Tcp, 0), None);
        assert_eq!(snap.services().count(), 3);
        assert_eq!(snap.service(ServiceId(1)).port.key, key("b"));
        let empty = RoutingSnapshot::empty();
        assert_eq!(empty.lookup(Protocol::Tcp, 30001), None);
        assert_eq!(empty.services().count(), 0);
    }

    #[test]
    fn endpoints_are_canonical_and_deduplicated() {
        let m = model(vec![service(
            "a",
            30001,
            &[
                ("10.0.0.9:80", 1),
                ("[::ffff:10.0.0.1]:80", 1),
                ("10.0.0.1:80", 3),
                ("[fd00::1]:80", 1),
            ],
        )]);
        let snap = RoutingSnapshot::build(&m, 1, &mut StatsRegistry::new(1));
        let s = snap.service(ServiceId(0));
        let got: Vec<(String, u32)> = s
            .endpoints()
            .iter()
            .map(|e| (e.endpoint.addr.to_string(), e.endpoint.weight))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1:80".to_string(), 3),
                ("10.0.0.9:80".to_string(), 1),
                ("[fd00::1]:80".to_string(), 1)
            ]
        );
        assert_eq!(s.port.endpoints.len(), 3);
    }

    #[test]
    fn pick_is_deterministic_and_spreads() {
        let m = model(vec![service(
            "a",
            30001,
            &[("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.3:80", 1)],
        )]);
        let snap = RoutingSnapshot::build(&m, 1, &mut StatsRegistry::new(1));
        let s = snap.service(ServiceId(0));
        let mut counts = [0u32; 3];
        for i in 0..3000 {
            let id = s.pick(client(i), &[]).unwrap();
            assert_eq!(s.pick(client(i), &[]), Some(id));
            counts[id.0 as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn pick_walks_past_tried_endpoints() {
        let m = model(vec![service(
            "a",
            30001,
            &[("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.3:80", 1)],
        )]);
        let snap = RoutingSnapshot::build(&m, 1, &mut StatsRegistry::new(1));
        let s = snap.service(ServiceId(0));
        for i in 0..200 {
            let c = client(i);
            let first = s.pick(c, &[]).unwrap();
            let second = s.pick(c, &[first]).unwrap();
            assert_ne!(second, first);
            // Deterministic: the same tried set gives the same answer.
            assert_eq!(s.pick(c, &[first]), Some(second));
            let third = s.pick(c, &[first, second]).unwrap();
            assert!(third != first && third != second);
            assert_eq!(s.pick(c, &[first, second, third]), None);
            // Repeated and foreign ids are harmless.
            assert_eq!(
                s.pick(c, &[first, first, EndpointId(99), second]),
                Some(third)
            );
        }
    }

    #[test]
    fn pick_never_returns_weight_zero() {
        let m = model(vec![service(
            "a",
            30001,
            &[("10.0.0.1:80", 0), ("10.0.0.2:80", 1), ("10.0.0.3:80", 0)],
        )]);
        let snap = RoutingSnapshot::build(&m, 1, &mut StatsRegistry::new(1));
        let s = snap.service(ServiceId(0));
        assert_eq!(s.endpoints().len(), 3);
        for i in 0..500 {
            let id = s.pick(client(i), &[]).unwrap();
            assert_eq!(addr_of(s, id), "10.0.0.2:80");
            assert_eq!(s.pick(client(i), &[id]), None);
        }
    }

    #[test]
    fn pick_with_nothing_usable_is_none() {
        let m = model(vec![
            service("zero", 30001, &[("10.0.0.1:80", 0)]),
            service("none", 30002, &[]),
        ]);
        let snap = RoutingSnapshot::build(&m, 1, &mut StatsRegistry::new(1));
        for (_, s) in snap.services() {
            assert_eq!(s.pick(client(1), &[]), None);
            assert_eq!(s.pick(client(1), &[EndpointId(0)]), None);
        }
    }

    #[test]
    fn client_ip_policy_ignores_source_port() {
        let mut p = service(
            "a",
            30001,
            &[("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.3:80", 1)],
        );
        p.policy = Policy::Maglev {
            key: HashKey::ClientIp,
        };
        let snap = RoutingSnapshot::build(&model(vec![p]), 1, &mut StatsRegistry::new(1));
        let s = snap.service(ServiceId(0));
        let v4: SocketAddr = "192.0.2.7:1000".parse().unwrap();
        let first = s.pick(v4, &[]);
        for port in [1, 2, 65535] {
            assert_eq!(s.pick(SocketAddr::new(v4.ip(), port), &[]), first);
        }
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:5".parse().unwrap();
        assert_eq!(s.pick(mapped, &[]), first);
    }

    #[test]
    fn stats_blocks_survive_rebuilds_and_removed_keys_are_dropped() {
        let mut reg = StatsRegistry::new(4);
        let m1 = model(vec![
            service("a", 30001, &[("10.0.0.1:80", 1), ("10.0.0.2:80", 1)]),
            service("b", 30002, &[("10.0.0.3:80", 1)]),
        ]);
        let s1 = RoutingSnapshot::build(&m1, 1, &mut reg);
        assert_eq!((reg.service_count(), reg.endpoint_count()), (2, 3));
        s1.service(ServiceId(0)).stats.worker(3).opened.add(5);

        // Generation 2: "b" is gone, "a" lost 10.0.0.2 and gained 10.0.0.4.
        let m2 = model(vec![service(
            "a",
            30001,
            &[("10.0.0.4:80", 1), ("10.0.0.1:80", 1)],
        )]);
        let s2 = RoutingSnapshot::build(&m2, 2, &mut reg);
        assert_eq!((reg.service_count(), reg.endpoint_count()), (1, 2));
        let (a1, a2) = (s1.service(ServiceId(0)), s2.service(ServiceId(0)));
        assert!(Arc::ptr_eq(&a1.stats, &a2.stats));
        assert_eq!(a2.stats.totals().opened, 5);
        let old = a1.endpoint(EndpointId(0));
        let new = a2.endpoint(EndpointId(0));
        assert_eq!(old.endpoint.addr, new.endpoint.addr);
        assert!(Arc::ptr_eq(&old.stats, &new.stats));
        assert!(Arc::ptr_eq(reg.service(&key("a")).unwrap(), &a2.stats));
        assert!(reg.service(&key("b")).is_none());
        assert!(reg
            .endpoint(&key("a"), "10.0.0.2:80".parse().unwrap())
            .is_none());

        // The old snapshot still holds the dropped blocks.
        let b_stats = Arc::clone(&s1.service(ServiceId(1)).stats);
        assert_eq!(Arc::strong_count(&b_stats), 2);
        drop(s1);
        assert_eq!(Arc::strong_count(&b_stats), 1);

        // "b" coming back starts from zero.
        let s3 = RoutingSnapshot::build(&m1, 3, &mut reg);
        assert!(!Arc::ptr_eq(&s3.service(ServiceId(1)).stats, &b_stats));
        assert!(Arc::ptr_eq(&s3.service(ServiceId(0)).stats, &a2.stats));
    }

    #[test]
    fn rebuild_reuses_unchanged_tables_and_equals_build() {
        let mut reg = StatsRegistry::new(1);
        let m1 = model(vec![
            service("a", 30001, &[("10.0.0.1:80", 1), ("10.0.0.2:80", 1)]),
            service("b", 30002, &[("10.0.0.3:80", 1), ("10.0.0.4:80", 1)]),
        ]);
        let s1 = RoutingSnapshot::build(&m1, 1, &mut reg);
        // "a" unchanged but listed in another order; "b" re-weighted.
        let m2 = model(vec![
            service("a", 30001, &[("10.0.0.2:80", 1), ("10.0.0.1:80", 1)]),
            service("b", 30002, &[("10.0.0.3:80", 2), ("10.0.0.4:80", 1)]),
        ]);
        let s2 = s1.rebuild(&m2, 2, &mut reg);
        assert!(Arc::ptr_eq(
            s1.service(ServiceId(0)).primary().table_arc(),
            s2.service(ServiceId(0)).primary().table_arc()
        ));
        assert!(!Arc::ptr_eq(
            s1.service(ServiceId(1)).primary().table_arc(),
            s2.service(ServiceId(1)).primary().table_arc()
        ));
        let fresh = RoutingSnapshot::build(&m2, 2, &mut reg);
        for ((_, a), (_, b)) in s2.services().zip(fresh.services()) {
            assert_eq!(a.table().fingerprint(), b.table().fingerprint());
            assert_eq!(a.port, b.port);
        }
        // A changed table size is not reused.
        let mut m3 = m2.clone();
        m3.services[0].maglev_table_size = 2003;
        let s3 = s2.rebuild(&m3, 3, &mut reg);
        assert_eq!(s3.service(ServiceId(0)).table().size().get(), 2003);
    }

    #[test]
    fn silly_table_sizes_are_made_prime() {
        let mut p = service("a", 30001, &[("10.0.0.1:80", 1), ("10.0.0.2:80", 1)]);
        p.maglev_table_size = 0;
        let mut q = p.clone();
        q.key = key("b");
        q.node_port = 30002;
        q.maglev_table_size = 1000;
        let snap = RoutingSnapshot::build(&model(vec![p, q]), 1, &mut StatsRegistry::new(1));
        assert_eq!(snap.service(ServiceId(0)).table().size().get(), 2);
        assert_eq!(snap.service(ServiceId(1)).table().size().get(), 1009);
        assert!(snap.service(ServiceId(0)).pick(client(3), &[]).is_some());
    }

    /// The snapshot builder applies the endpoint-condition rules (`usable`): each row gives
    /// a traffic policy and endpoints (R ready, S serving, T terminating, L local), and the
    /// endpoints that 2,000 clients are picked onto, by Maglev, round-robin and random.
    #[test]
    fn builder_routes_by_conditions_and_locality() {
        use crate::model::{Conditions, TrafficPolicy};
        #[rustfmt::skip]
        let rows: &[(TrafficPolicy, &[&str], &[usize], Tier)] = &[
            (TrafficPolicy::Cluster, &["RSL", "RS", "ST"], &[0, 1], Tier::Ready),
            (TrafficPolicy::Cluster, &["ST", "STL", "T"], &[0, 1], Tier::Terminating),
            (TrafficPolicy::Cluster, &["T", "S"], &[], Tier::None),
            (TrafficPolicy::Local, &["RS", "RSL", "STL"], &[1], Tier::Ready),
            (TrafficPolicy::Local, &["RS", "STL", "ST"], &[1], Tier::Terminating),
            (TrafficPolicy::Local, &["RS", "RS"], &[], Tier::None),
        ];
        for policy in [Policy::default(), Policy::RoundRobin, Policy::Random] {
            for (row, (traffic, spec, want, tier)) in rows.iter().enumerate() {
                let mut p = service("a", 30001, &[]);
                p.policy = policy;
                p.traffic_policy = *traffic;
                p.endpoints = spec
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let mut e = Endpoint::new(([10, 0, 0, i as u8 + 1], 80).into());
                        e.conditions = Conditions {
                            ready: s.contains('R'),
                            serving: s.contains('S'),
                            terminating: s.contains('T'),
                        };
                        e.local = s.contains('L');
                        e
                    })
                    .collect();
                let snap = RoutingSnapshot::build(&model(vec![p]), 1, &mut StatsRegistry::new(1));
                let svc = snap.service(ServiceId(0));
                assert_eq!(svc.tier(), *tier, "row {row}");
                let mut got = std::collections::BTreeSet::new();
                for c in 0..2000u16 {
                    let chosen = match policy {
                        Policy::RoundRobin => svc.round_robin(c as usize, &[]),
                        Policy::Random => {
                            svc.weighted(u64::from(c).wrapping_mul(0x9e37_79b9_7f4a_7c15), &[])
                        }
                        _ => svc.pick(client(u32::from(c)), &[]),
                    };
                    if let Some(id) = chosen {
                        got.insert(id.0 as usize);
                    }
                }
                // Endpoints are in canonical (address) order, the same as the row's here.
                let want: std::collections::BTreeSet<usize> = want.iter().copied().collect();
                assert_eq!(got, want, "row {row} {policy:?} {traffic:?} {spec:?}");
                // Unchosen endpoints stay in the snapshot (their connections live on).
                assert_eq!(svc.endpoints().len(), spec.len());
            }
        }
    }

    /// Dual-stack: each client family reaches only its own family's endpoints (never an
    /// IPv4 client to an IPv6 pod); a family the Service does not serve has none. Local:
    /// outside clients reach local endpoints only, the node itself the cluster ones.
    #[test]
    fn routes_per_family_and_origin() {
        use crate::model::{Families, TrafficPolicy};
        let mut p = service(
            "a",
            30001,
            &[("10.0.0.1:80", 1), ("[fd00::1]:80", 1), ("[fd00::2]:80", 1)],
        );
        p.endpoints[1].local = false;
        p.endpoints[0].local = false;
        let snap = RoutingSnapshot::build(&model(vec![p.clone()]), 1, &mut StatsRegistry::new(1));
        let s = snap.service(ServiceId(0));
        let v4: std::collections::BTreeSet<String> = (0..500)
            .filter_map(|i| s.pick(client(i), &[]))
            .map(|id| addr_of(s, id))
            .collect();
        assert_eq!(v4, ["10.0.0.1:80".to_string()].into());
        let v6client =
            |i: u32| SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16 + 1], 999));
        let v6: std::collections::BTreeSet<String> = (0..500)
            .filter_map(|i| s.pick(v6client(i), &[]))
            .map(|id| addr_of(s, id))
            .collect();
        assert_eq!(v6.len(), 2, "{v6:?}");
        assert!(v6.iter().all(|a| a.starts_with('[')));
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:5".parse().unwrap();
        assert_eq!(addr_of(s, s.pick(mapped, &[]).unwrap()), "10.0.0.1:80");

        // IPv6 only (ipFamilies: [IPv6]): IPv4 clients find nothing.
        let mut only6 = p.clone();
        only6.families = Families {
            v4: false,
            v6: true,
        };
        let snap = RoutingSnapshot::build(&model(vec![only6]), 1, &mut StatsRegistry::new(1));
        let s = snap.service(ServiceId(0));
        assert_eq!(s.pick(client(1), &[]), None);
        assert!(s.pick(v6client(1), &[]).is_some());

        // Local: [fd00::2] is the only local endpoint.
        let mut local = p;
        local.traffic_policy = TrafficPolicy::Local;
        let snap = RoutingSnapshot::build(&model(vec![local]), 1, &mut StatsRegistry::new(1))
            .with_node_addresses(&["192.0.2.50".parse().unwrap()]);
        let s = snap.service(ServiceId(0));
        let policy = s.port.policy;
        let outside4 = s.route(Family::V4, false);
        assert_eq!(
            outside4.pick(policy, client(1), &[]),
            None,
            "no local IPv4 pod"
        );
        let node4 = s.route(Family::V4, true);
        assert_eq!(
            addr_of(s, node4.pick(policy, client(1), &[]).unwrap()),
            "10.0.0.1:80"
        );
        for i in 0..100 {
            let id = s
                .route(Family::V6, false)
                .pick(policy, v6client(i), &[])
                .unwrap();
            assert_eq!(addr_of(s, id), "[fd00::2]:80");
        }
        assert!(snap.is_node_address("192.0.2.50".parse().unwrap()));
        assert!(snap.is_node_address("::ffff:192.0.2.50".parse().unwrap()));
        assert!(snap.is_node_address("127.0.0.9".parse().unwrap()));
        assert!(snap.is_node_address("::1".parse().unwrap()));
        assert!(!snap.is_node_address("192.0.2.51".parse().unwrap()));
        // A rebuild keeps the node's addresses.
        let again = snap.rebuild(&model(vec![]), 2, &mut StatsRegistry::new(1));
        assert!(again.is_node_address("192.0.2.50".parse().unwrap()));
    }
}
