//! A [`Route`]: one way of routing a Service port's new connections — the endpoints one IP
//! family's clients (outside the node, or on it) may reach, with their Maglev table,
//! round-robin schedule and cumulative weights. A [`super::ServiceEntry`] holds up to
//! four (IPv4/IPv6 × outside/node) and shares identical ones. Read-only once built: every
//! method is lock-free and allocation-free, and none panics on client input.

use super::hash::client_hash;
use super::maglev::{MaglevTable, TableSize};
use super::snapshot::EndpointId;
use super::usable::Tier;
use crate::model::{Endpoint, HashKey, Policy};
use std::net::SocketAddr;
use std::sync::Arc;

/// Which endpoints new connections of one kind of client go to.
#[derive(Debug)]
pub struct Route {
    /// Routing weight per endpoint id (0: not in this route).
    weights: Box<[u32]>,
    /// Shared with later snapshots whose routing did not change.
    table: Arc<MaglevTable>,
    tier: Tier,
    /// Weighted round-robin order of endpoint indices (smooth WRR), for `RoundRobin`.
    schedule: Box<[u32]>,
    /// Running sums of weights in endpoint order, for weighted random choices.
    cumulative: Box<[u64]>,
}

impl Route {
    /// The route over `endpoints` (canonical order) with these routing `weights`.
    /// `previous`: a route of the last snapshot whose table may be reused when the
    /// addresses, weights and size are the same.
    pub(super) fn build(
        endpoints: &[Endpoint],
        weights: Vec<u32>,
        tier: Tier,
        size: TableSize,
        previous: Option<(&[Endpoint], &Route)>,
    ) -> Route {
        let routed: Vec<Endpoint> = endpoints
            .iter()
            .zip(&weights)
            .map(|(e, &w)| e.with_weight(w))
            .collect();
        let reusable = previous.and_then(|(prev_eps, prev)| {
            let same = prev.table.size() == size
                && prev_eps.len() == routed.len()
                && prev_eps
                    .iter()
                    .zip(prev.weights.iter())
                    .zip(&routed)
                    .all(|((p, &pw), r)| p.addr == r.addr && pw == r.weight);
            same.then(|| Arc::clone(&prev.table))
        });
        let table = reusable.unwrap_or_else(|| Arc::new(MaglevTable::build(&routed, size)));
        Route {
            schedule: smooth_wrr(&routed),
            cumulative: cumulative_weights(&routed),
            weights: weights.into_boxed_slice(),
            table,
            tier,
        }
    }

    /// Routing weight of each endpoint (by id).
    pub fn weights(&self) -> &[u32] {
        &self.weights
    }

    /// Which tier of endpoints carries new connections.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// The Maglev table `pick` reads.
    pub fn table(&self) -> &MaglevTable {
        &self.table
    }

    #[cfg(test)]
    pub(super) fn table_arc(&self) -> &Arc<MaglevTable> {
        &self.table
    }

    /// Whether new connections may go to `id` (routing weight > 0).
    #[inline]
    pub fn usable(&self, id: EndpointId) -> bool {
        self.weights.get(id.0 as usize).is_some_and(|&w| w > 0)
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
        let n = self.weights.len();
        (0..n)
            .map(|k| EndpointId(((first + k) % n) as u32))
            .find(|&id| self.usable(id) && !tried.contains(&id))
    }

    /// The endpoint a new connection from `client` goes to under `policy`, skipping those
    /// in `tried` (already tried by this connection after a failed connect).
    ///
    /// Slot `hash(key) % M` of the Maglev table, where the key is chosen by the
    /// [`Policy`]; if that endpoint was tried, the next slots forward (wrapping) until one
    /// holds an untried endpoint. `None` when no endpoint has weight > 0 or every endpoint
    /// that owns a slot was tried. Never allocates or panics; ids in `tried` that are not
    /// endpoints of this service are ignored. Cost: one hash, one division, then
    /// `1/(1-f)` slots expected where `f` is the share of the table owned by `tried`.
    #[inline]
    pub fn pick(
        &self,
        policy: Policy,
        client: SocketAddr,
        tried: &[EndpointId],
    ) -> Option<EndpointId> {
        let usable = self.table.usable();
        if usable == 0 || self.all_tried(tried, usable) {
            return None;
        }
        let hash = match policy {
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

    /// Same weights (so the same table, schedule and cumulative sums).
    pub(super) fn same_weights(&self, weights: &[u32]) -> bool {
        *self.weights == *weights
    }
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
