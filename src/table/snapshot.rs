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

use super::hash::{canonical_addr, client_hash};
use super::maglev::{MaglevTable, TableSize};
use super::registry::StatsRegistry;
use super::usable::{routing_weights, Tier};
use crate::model::{Endpoint, HashKey, Model, Policy, Protocol, ServicePort, ServicePortKey};
use crate::stats::StatsBlock;
use ahash::AHashMap;
use std::net::SocketAddr;
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
    /// The weight new connections see: `endpoint.weight` when the endpoint is chosen by
    /// the condition/policy/health rules (see `usable`), else 0.
    pub routing_weight: u32,
    pub stats: Arc<StatsBlock>,
}

/// One Service port as served: its model, counters, endpoints and Maglev table.
#[derive(Debug)]
pub struct ServiceEntry {
    /// The Service port, with `endpoints` replaced by the canonical list (sorted by
    /// canonical address, one per address) that [`EndpointId`]s index.
    pub port: ServicePort,
    pub stats: Arc<StatsBlock>,
    endpoints: Vec<EndpointEntry>,
    /// Shared with later snapshots whose endpoints and table size did not change.
    table: Arc<MaglevTable>,
    /// A hash of the Service port's key: the same in every snapshot, so workers can keep
    /// state per Service port (affinity, round-robin position) across reloads.
    stable_id: u64,
    /// Which endpoints carry traffic: ready ones, terminating ones as a fallback, or none.
    tier: Tier,
    /// Weighted round-robin order of endpoint indices (smooth WRR), for `RoundRobin`.
    schedule: Box<[u32]>,
    /// Running sums of weights in endpoint order, for weighted random choices.
    cumulative: Box<[u64]>,
}

impl ServiceEntry {
    /// Every endpoint, including those new connections do not go to (routing weight 0:
    /// draining, down, terminating while others are ready, remote under Local policy);
    /// `EndpointId(i)` is `[i]`.
    pub fn endpoints(&self) -> &[EndpointEntry] {
        &self.endpoints
    }

    /// The endpoint `id`. Panics if `id` did not come from this service of this snapshot
    /// (a programming error, never client input); use `endpoints().get()` when unsure.
    pub fn endpoint(&self, id: EndpointId) -> &EndpointEntry {
        &self.endpoints[id.0 as usize]
    }

    /// Which tier of endpoints carries new connections.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// The Maglev table `pick` reads.
    pub fn table(&self) -> &MaglevTable {
        &self.table
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

    /// Whether new connections may go to `id` (routing weight > 0).
    pub fn usable(&self, id: EndpointId) -> bool {
        self.endpoints
            .get(id.0 as usize)
            .is_some_and(|e| e.routing_weight > 0)
    }

    /// Weighted round-robin: the endpoint at `position` of the smooth-WRR schedule, or the
    /// next one not in `tried`. `None` when nothing usable is left.
    pub fn round_robin(&self, position: usize, tried: &[EndpointId]) -> Option<EndpointId> {
        let n = self.schedule.len();
        (0..n)
            .map(|k| EndpointId(self.schedule[(position + k) % n]))
            .find(|id| !tried.contains(id))
    }

    /// Length of the round-robin schedule (0 when nothing is usable).
    pub fn schedule_len(&self) -> usize {
        self.schedule.len()
    }

    /// Weighted random: the endpoint that owns `r` (any u64) in the cumulative weights, or
    /// the next usable one not in `tried`.
    pub fn weighted(&self, r: u64, tried: &[EndpointId]) -> Option<EndpointId> {
        let total = *self.cumulative.last()?;
        if total == 0 {
            return None;
        }
        let point = r % total;
        let first = self.cumulative.partition_point(|&c| c <= point);
        let n = self.endpoints.len();
        (0..n)
            .map(|k| EndpointId(((first + k) % n) as u32))
            .find(|&id| self.usable(id) && !tried.contains(&id))
    }

    /// The endpoint a new connection from `client` goes to, skipping those in `tried`
    /// (already tried by this connection after a failed connect).
    ///
    /// Slot `hash(key) % M` of the Maglev table, where the key is chosen by the Service's
    /// [`Policy`]; if that endpoint was tried, the next slots forward (wrapping) until one
    /// holds an untried endpoint. `None` when no endpoint has weight > 0 or every endpoint
    /// that owns a slot was tried. Never allocates or panics; ids in `tried` that are not
    /// endpoints of this service are ignored. Cost: one hash, one division, then
    /// `1/(1-f)` slots expected where `f` is the share of the table owned by `tried`.
    #[inline]
    pub fn pick(&self, client: SocketAddr, tried: &[EndpointId]) -> Option<EndpointId> {
        let usable = self.table.usable();
        if usable == 0 || self.all_tried(tried, usable) {
            return None;
        }
        let hash = match self.port.policy {
            Policy::Maglev { key } => client_hash(key, client),
            // Affinity places new clients by their IP, so every worker and node agrees.
            Policy::ClientIp { .. } => client_hash(HashKey::ClientIp, client),
            _ => client_hash(HashKey::ClientIpPort, client),
        };
        self.table
            .walk(hash, |e| !tried.contains(&EndpointId(e)))
            .map(EndpointId)
    }

    /// Whether `tried` holds every one of the `usable` endpoints that own slots: then a
    /// walk would find nothing, and would visit all M slots to learn it.
    #[inline]
    fn all_tried(&self, tried: &[EndpointId], usable: u32) -> bool {
        if (tried.len() as u64) < u64::from(usable) {
            return false;
        }
        let distinct_usable = tried
            .iter()
            .enumerate()
            .filter(|&(i, id)| self.table.slots(id.0) > 0 && !tried[..i].contains(id))
            .count();
        distinct_usable as u64 >= u64::from(usable)
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
}

impl RoutingSnapshot {
    /// A snapshot serving nothing (generation 0), e.g. before the first configuration.
    pub fn empty() -> Self {
        RoutingSnapshot {
            generation: 0,
            services: Vec::new(),
            by_port: Box::new([]),
        }
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
            let (weights, tier) = routing_weights(port.traffic_policy, &endpoints);
            let routed: Vec<Endpoint> = endpoints
                .iter()
                .zip(&weights)
                .map(|(e, &w)| e.with_weight(w))
                .collect();
            let size = TableSize::new(port.maglev_table_size);
            let same_routing = |prev: &ServiceEntry| {
                prev.endpoints.len() == routed.len()
                    && prev
                        .endpoints
                        .iter()
                        .zip(&routed)
                        .all(|(p, r)| p.endpoint.addr == r.addr && p.routing_weight == r.weight)
            };
            let table = match previous.get(&port.key) {
                Some(prev) if prev.table.size() == size && same_routing(prev) => {
                    Arc::clone(&prev.table)
                }
                _ => Arc::new(MaglevTable::build(&routed, size)),
            };
            let service_stats = stats.service_block(&port.key);
            let entries = endpoints
                .iter()
                .zip(&weights)
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
                tier,
                schedule: smooth_wrr(&routed),
                cumulative: cumulative_weights(&routed),
                port: ServicePort {
                    endpoints,
                    ..port.clone()
                },
                stats: service_stats,
                endpoints: entries,
                table,
            });
        }
        stats.finish();
        RoutingSnapshot {
            generation,
            services,
            by_port,
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

/// Most entries of a round-robin schedule; larger weight sums are scaled down to fit.
const SCHEDULE_MAX: u64 = 1 << 16;

/// Smooth weighted round-robin (as nginx does it): each endpoint appears `weight` times per
/// cycle, spread out rather than in bursts. Weights are scaled down (keeping ≥ 1) when their
/// sum exceeds [`SCHEDULE_MAX`].
fn smooth_wrr(endpoints: &[Endpoint]) -> Box<[u32]> {
    let sum: u64 = endpoints.iter().map(|e| u64::from(e.weight)).sum();
    if sum == 0 {
        return Box::new([]);
    }
    let weights: Vec<i64> = endpoints
        .iter()
        .map(|e| match e.weight {
            0 => 0,
            w if sum > SCHEDULE_MAX => ((u64::from(w) * SCHEDULE_MAX / sum).max(1)) as i64,
            w => i64::from(w),
        })
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out.into_boxed_slice()
}

fn cumulative_weights(endpoints: &[Endpoint]) -> Box<[u64]> {
    let mut sum = 0u64;
    endpoints
        .iter()
        .map(|e| {
            sum += u64::from(e.weight);
            sum
        })
        .collect()
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
    use crate::model::{HashKey, ServiceName, ServicePortKey, Settings, Timeouts};

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
            udp_responses: None,
            traffic_policy: Default::default(),
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

    /// TCP 53 and UDP 53 are two NodePorts: each protocol has its own index.
    #[test]
    fn the_same_node_port_number_is_one_service_per_protocol() {
        let mut udp = service("dns-udp", 30053, &[("10.0.0.2:53", 1)]);
        udp.key.protocol = Protocol::Udp;
        let m = model(vec![service("dns-tcp", 30053, &[("10.0.0.1:53", 1)]), udp]);
        let snap = RoutingSnapshot::build(&m, 1, &mut StatsRegistry::new(1));
        assert_eq!(snap.lookup(Protocol::Tcp, 30053), Some(ServiceId(0)));
        assert_eq!(snap.lookup(Protocol::Udp, 30053), Some(ServiceId(1)));
        assert_eq!(snap.lookup(Protocol::Udp, 30054), None);
        assert_ne!(
            snap.service(ServiceId(0)).stable_id(),
            snap.service(ServiceId(1)).stable_id()
        );
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
            &s1.service(ServiceId(0)).table,
            &s2.service(ServiceId(0)).table
        ));
        assert!(!Arc::ptr_eq(
            &s1.service(ServiceId(1)).table,
            &s2.service(ServiceId(1)).table
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
}
