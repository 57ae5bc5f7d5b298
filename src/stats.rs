//! Counters written by exactly one worker thread and read by anyone, without locks.
//!
//! Each counted thing (a Service port, an endpoint) owns one [`StatsBlock`]: an array of
//! cache-padded counter sets, one per worker. Worker `w` writes only slot `w` (plain
//! load + store, no read-modify-write), so the hot path never contends on a cache line;
//! readers sum the slots at scrape time. Blocks are `Arc`-shared and carried from one
//! routing snapshot to the next by identity, so counters survive reloads. A Service
//! port's block also has, per worker, two [`Histogram`]s (backend connect latency and
//! connection duration): fixed buckets of the same single-writer counters, so observing
//! is a few compares and two stores — no lock, no allocation.
//!
//! A block may also hold what a previous process counted for the same thing
//! ([`Carried`], set by the control plane after `sluice ctl upgrade`): the exported totals
//! ([`StatsBlock::exported_totals`], [`StatsBlock::exported_histograms`]) add it, so
//! Prometheus counters keep rising across the hand-over; [`StatsBlock::totals`] stays this
//! process's own (passive health checking compares successive totals).
//!
//! This module is a leaf like `model`: std and crossbeam only.

use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A monotonically increasing counter with a single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add `n`. Only the owning worker may call this (single writer).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value with a single writer that may go down as well as up (plain store).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Only the owning worker may call this (single writer).
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the backend connect-latency buckets, in nanoseconds (+Inf follows):
/// 100 µs to 10 s.
pub const CONNECT_LATENCY_BOUNDS_NS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Upper bounds of the connection-duration buckets, in nanoseconds (+Inf follows): 1 ms to
/// 1 h.
pub const DURATION_BOUNDS_NS: [u64; 14] = [
    1_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
    300_000_000_000,
    900_000_000_000,
    3_600_000_000_000,
];

/// A histogram with a single writer: a count per bucket (`N` = bounds + the +Inf bucket)
/// and the sum of the observations in nanoseconds.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    buckets: [Counter; N],
    sum_ns: Counter,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| Counter::default()),
            sum_ns: Counter::default(),
        }
    }
}

impl<const N: usize> Histogram<N> {
    /// Count `d` in the first bucket whose bound (`bounds`, ascending, `N - 1` of them) it
    /// does not exceed. Only the owning worker may call this (single writer).
    #[inline]
    pub fn observe(&self, bounds: &[u64], d: std::time::Duration) {
        debug_assert_eq!(bounds.len() + 1, N);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = bounds.iter().position(|b| ns <= *b).unwrap_or(N - 1);
        self.buckets[i].add(1);
        self.sum_ns.add(ns);
    }

    fn add_to(&self, t: &mut HistogramTotals) {
        t.buckets.resize(N, 0);
        for (sum, b) in t.buckets.iter_mut().zip(&self.buckets) {
            *sum += b.get();
        }
        t.sum_ns = t.sum_ns.wrapping_add(self.sum_ns.get());
    }
}

/// A [`Histogram`] summed over workers: per-bucket (not cumulative) counts, +Inf last.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HistogramTotals {
    pub buckets: Vec<u64>,
    pub sum_ns: u64,
}

impl HistogramTotals {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// The histograms of one worker for one Service port.
#[derive(Debug, Default)]
pub struct ServiceHistograms {
    /// From starting a backend connect to the TCP connection being established (successful
    /// connects only).
    pub connect_latency: Histogram<17>,
    /// From accepting the client connection to closing it (every connection).
    pub duration: Histogram<15>,
}

/// The counters of one worker for one Service port or endpoint.
#[derive(Debug, Default)]
pub struct ConnCounters {
    /// Client connections accepted (Service) or backend connections opened (endpoint).
    pub opened: Counter,
    /// Connections finished, whatever the outcome.
    pub closed: Counter,
    /// Connections that failed: no endpoint, every connect attempt failed, or a reset.
    pub failed: Counter,
    /// Connect attempts that were retried on another endpoint.
    pub retries: Counter,
    /// Bytes from client to backend.
    pub bytes_to_backend: Counter,
    /// Bytes from backend to client.
    pub bytes_to_client: Counter,
    /// UDP: datagrams from client to endpoint (`opened`/`closed` count flows).
    pub datagrams_to_backend: Counter,
    /// UDP: datagrams from endpoint to client.
    pub datagrams_to_client: Counter,
    /// Endpoint only: connect attempts that failed (refused, timed out, unreachable).
    pub connect_failed: Counter,
    /// Service only: clients reset at once because a hold budget was spent
    /// (`max_held_per_service`, `max_held_per_worker`).
    pub holds_refused: Counter,
    /// Service only: clients refused (reset at accept) because they are outside the
    /// Service's `loadBalancerSourceRanges` where those apply.
    pub source_refused: Counter,
    /// Endpoint only: failed connects since this worker's last successful one (passive
    /// health checking reads the sum over workers).
    pub connect_failures_in_row: Gauge,
}

impl ConnCounters {
    /// Endpoint only: a connect attempt to the endpoint finished (`ok` = TCP connected).
    #[inline]
    pub fn count_connect(&self, ok: bool) {
        if ok {
            if self.connect_failures_in_row.get() != 0 {
                self.connect_failures_in_row.set(0);
            }
        } else {
            self.connect_failed.add(1);
            self.connect_failures_in_row
                .set(self.connect_failures_in_row.get() + 1);
        }
    }
}

/// A sum of [`ConnCounters`] over all workers, as plain numbers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnTotals {
    pub opened: u64,
    pub closed: u64,
    pub failed: u64,
    pub retries: u64,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    pub datagrams_to_backend: u64,
    pub datagrams_to_client: u64,
    pub connect_failed: u64,
    pub holds_refused: u64,
    pub source_refused: u64,
    /// Sum over workers of the failed connects since each one's last success.
    pub connect_failures_in_row: u64,
}

impl ConnTotals {
    /// These totals plus the counters of `base` (a previous process's). `closed` grows by
    /// `base.opened`, so [`Self::active`] stays this process's; the gauge
    /// `connect_failures_in_row` is not added.
    pub fn plus_counters(mut self, base: &ConnTotals) -> ConnTotals {
        self.opened += base.opened;
        self.closed += base.opened;
        self.failed += base.failed;
        self.retries += base.retries;
        self.bytes_to_backend += base.bytes_to_backend;
        self.bytes_to_client += base.bytes_to_client;
        self.datagrams_to_backend += base.datagrams_to_backend;
        self.datagrams_to_client += base.datagrams_to_client;
        self.connect_failed += base.connect_failed;
        self.holds_refused += base.holds_refused;
        self.source_refused += base.source_refused;
        self
    }

    /// Connections open right now (opened minus closed; momentarily approximate).
    pub fn active(&self) -> u64 {
        self.opened.saturating_sub(self.closed)
    }
}

/// One counter set per worker for one counted thing.
///
/// An endpoint's block also carries its *shutdown epoch*: the control plane bumps it when
/// the endpoint is marked down and its Service resets sessions on that
/// (`shutdown_sessions`). Each connection remembers the epoch it connected under; a worker
/// resets, in its periodic sweep, the connections whose endpoint's epoch moved. The only
/// writer is the control thread; workers read it with one relaxed load.
#[derive(Debug)]
pub struct StatsBlock {
    per_worker: Box<[CachePadded<ConnCounters>]>,
    /// Service ports only.
    histograms: Option<Box<[CachePadded<ServiceHistograms>]>>,
    shutdown_epoch: CachePadded<AtomicU64>,
    /// What a previous process counted (control plane only; read at scrape time).
    carried: Mutex<Carried>,
}

/// What a previous process counted for one Service port or endpoint: added to the
/// exported totals. Histograms are per-bucket counts with the same bounds as this
/// process's (empty when there were none or the bounds differed).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Carried {
    pub totals: ConnTotals,
    pub connect_latency: HistogramTotals,
    pub duration: HistogramTotals,
}

impl HistogramTotals {
    /// Adds `other` bucket by bucket (when it has buckets of the same number).
    fn add(&mut self, other: &HistogramTotals) {
        if other.buckets.is_empty() || other.buckets.len() != self.buckets.len() {
            return;
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum_ns = self.sum_ns.wrapping_add(other.sum_ns);
    }
}

impl StatsBlock {
    /// An endpoint's block: counters only.
    pub fn new(workers: usize) -> StatsBlock {
        StatsBlock {
            per_worker: (0..workers.max(1))
                .map(|_| CachePadded::default())
                .collect(),
            histograms: None,
            shutdown_epoch: CachePadded::default(),
            carried: Mutex::default(),
        }
    }

    /// A Service port's block: counters and [`ServiceHistograms`].
    pub fn with_histograms(workers: usize) -> StatsBlock {
        StatsBlock {
            histograms: Some(
                (0..workers.max(1))
                    .map(|_| CachePadded::default())
                    .collect(),
            ),
            ..StatsBlock::new(workers)
        }
    }

    /// The histograms worker `w` writes (Service ports only).
    #[inline]
    pub fn histograms(&self, w: usize) -> Option<&ServiceHistograms> {
        self.histograms.as_ref().map(|h| &*h[w])
    }

    /// (connect latency, duration) summed over all workers (Service ports only).
    pub fn histogram_totals(&self) -> Option<(HistogramTotals, HistogramTotals)> {
        let per_worker = self.histograms.as_ref()?;
        let (mut connect, mut duration) = (HistogramTotals::default(), HistogramTotals::default());
        for h in per_worker.iter() {
            h.connect_latency.add_to(&mut connect);
            h.duration.add_to(&mut duration);
        }
        Some((connect, duration))
    }

    /// Sets what a previous process counted (replacing what was set before). Control
    /// plane only.
    pub fn set_carried(&self, carried: Carried) {
        *self.carried.lock().unwrap_or_else(|p| p.into_inner()) = carried;
    }

    /// [`Self::totals`] plus what a previous process counted: what `/metrics` and
    /// `ctl services` show.
    pub fn exported_totals(&self) -> ConnTotals {
        let carried = self.carried.lock().unwrap_or_else(|p| p.into_inner());
        self.totals().plus_counters(&carried.totals)
    }

    /// [`Self::histogram_totals`] plus what a previous process counted (Service ports
    /// only).
    pub fn exported_histograms(&self) -> Option<(HistogramTotals, HistogramTotals)> {
        let (mut connect, mut duration) = self.histogram_totals()?;
        let carried = self.carried.lock().unwrap_or_else(|p| p.into_inner());
        connect.add(&carried.connect_latency);
        duration.add(&carried.duration);
        Some((connect, duration))
    }

    /// The endpoint's shutdown epoch (see the type's documentation).
    #[inline]
    pub fn shutdown_epoch(&self) -> u64 {
        self.shutdown_epoch.load(Ordering::Relaxed)
    }

    /// Control plane only: connections opened before now are to be reset by their workers.
    pub fn bump_shutdown_epoch(&self) {
        self.shutdown_epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// The slot worker `w` writes. Panics if `w` is not a worker index of this process.
    #[inline]
    pub fn worker(&self, w: usize) -> &ConnCounters {
        &self.per_worker[w]
    }

    pub fn workers(&self) -> usize {
        self.per_worker.len()
    }

    /// Connections open now, summed over all workers (opened − closed; relaxed reads, so
    /// momentarily approximate). Cheaper than `totals()` for the least-connections policy.
    pub fn active(&self) -> u64 {
        let (mut opened, mut closed) = (0u64, 0u64);
        for c in self.per_worker.iter() {
            opened += c.opened.get();
            closed += c.closed.get();
        }
        opened.saturating_sub(closed)
    }

    /// Sum over all workers.
    pub fn totals(&self) -> ConnTotals {
        let mut t = ConnTotals::default();
        for c in self.per_worker.iter() {
            t.opened += c.opened.get();
            t.closed += c.closed.get();
            t.failed += c.failed.get();
            t.retries += c.retries.get();
            t.bytes_to_backend += c.bytes_to_backend.get();
            t.bytes_to_client += c.bytes_to_client.get();
            t.datagrams_to_backend += c.datagrams_to_backend.get();
            t.datagrams_to_client += c.datagrams_to_client.get();
            t.connect_failed += c.connect_failed.get();
            t.holds_refused += c.holds_refused.get();
            t.source_refused += c.source_refused.get();
            t.connect_failures_in_row += c.connect_failures_in_row.get();
        }
        t
    }
}

/// What one worker's event loop reports about itself; written by that worker only.
#[derive(Debug, Default)]
pub struct LoopStats {
    /// Loop iterations: the heartbeat (advances at least every 100 ms while the worker runs).
    pub iterations: Counter,
    /// Completions processed.
    pub completions: Counter,
    /// Connections accepted by this worker.
    pub accepted: Counter,
    /// Client connections open now (a gauge, stored).
    pub active: AtomicU64,
    /// 1 while the worker accepts new connections, 0 while paused (limit, fd backoff, drain).
    pub accepting: AtomicU64,
    /// The worker's UDP flows.
    pub flows: FlowCounters,
}

/// Why a datagram was not forwarded, as metric labels; [`FlowCounters::drops`] is indexed
/// by position in this list.
pub const DROP_REASONS: [&str; 11] = [
    "truncated",
    "no_service",
    "no_endpoint",
    "table_full",
    "too_large",
    "open_failed",
    "send_failed",
    "stale_flow",
    "reply_failed",
    "icmp_refused",
    "source_range",
];

/// One worker's UDP flow counters (single writer: that worker).
#[derive(Debug, Default)]
pub struct FlowCounters {
    /// Flows live now.
    pub active: Gauge,
    /// Flows opened.
    pub created: Counter,
    /// Flows ended by their idle timeout.
    pub expired: Counter,
    /// Flows ended for any reason (idle, `udp_responses`, endpoint left, Service gone, …).
    pub closed: Counter,
    /// New flows refused: the table was full (`max_flows_per_worker`) or their upstream
    /// socket could not be opened (fds, local ports).
    pub refused: Counter,
    /// Datagrams not forwarded, by [`DROP_REASONS`] (ICMP port-unreachable reports from
    /// pods are counted under `icmp_refused`, though no datagram is lost to them).
    pub drops: [Counter; DROP_REASONS.len()],
}

/// [`FlowCounters`] summed over workers, as plain numbers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlowTotals {
    pub active: u64,
    pub created: u64,
    pub expired: u64,
    pub closed: u64,
    pub refused: u64,
    pub drops: [u64; DROP_REASONS.len()],
}

impl FlowTotals {
    /// Add one worker's counters.
    pub fn add(&mut self, c: &FlowCounters) {
        self.active += c.active.get();
        self.created += c.created.get();
        self.expired += c.expired.get();
        self.closed += c.closed.get();
        self.refused += c.refused.get();
        for (t, d) in self.drops.iter_mut().zip(&c.drops) {
            *t += d.get();
        }
    }

    /// Drops counted under `reason` (one of [`DROP_REASONS`]).
    pub fn drops(&self, reason: &str) -> u64 {
        DROP_REASONS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.drops[i])
    }
}

impl LoopStats {
    pub fn set_active(&self, n: u64) {
        self.active.store(n, Ordering::Relaxed);
    }

    pub fn set_accepting(&self, on: bool) {
        self.accepting.store(u64::from(on), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_every_worker_slot() {
        let b = StatsBlock::new(3);
        b.worker(0).opened.add(2);
        b.worker(2).opened.add(5);
        b.worker(2).closed.add(1);
        b.worker(1).bytes_to_client.add(100);
        let t = b.totals();
        assert_eq!(t.opened, 7);
        assert_eq!(t.active(), 6);
        assert_eq!(t.bytes_to_client, 100);
    }

    #[test]
    fn histograms_bucket_and_sum_every_worker_slot() {
        use std::time::Duration;
        assert!(StatsBlock::new(2).histogram_totals().is_none());
        let b = StatsBlock::with_histograms(2);
        let h0 = b.histograms(0).unwrap();
        let h1 = b.histograms(1).unwrap();
        h0.connect_latency
            .observe(&CONNECT_LATENCY_BOUNDS_NS, Duration::from_micros(80));
        h1.connect_latency
            .observe(&CONNECT_LATENCY_BOUNDS_NS, Duration::from_micros(100)); // on the bound
        h1.connect_latency
            .observe(&CONNECT_LATENCY_BOUNDS_NS, Duration::from_millis(2));
        h0.connect_latency
            .observe(&CONNECT_LATENCY_BOUNDS_NS, Duration::from_secs(60)); // +Inf
        h0.duration
            .observe(&DURATION_BOUNDS_NS, Duration::from_secs(7200));
        let (c, d) = b.histogram_totals().unwrap();
        assert_eq!(c.buckets.len(), 17);
        assert_eq!((c.buckets[0], c.buckets[4], c.buckets[16]), (2, 1, 1));
        assert_eq!(c.count(), 4);
        assert_eq!(c.sum_ns, 80_000 + 100_000 + 2_000_000 + 60_000_000_000);
        assert_eq!((d.count(), d.buckets[14]), (1, 1));
    }

    #[test]
    fn exported_totals_add_what_a_previous_process_counted_but_not_its_gauges() {
        let b = StatsBlock::with_histograms(2);
        b.worker(0).opened.add(3);
        b.worker(1).closed.add(1);
        b.worker(0).count_connect(false);
        b.histograms(1)
            .unwrap()
            .duration
            .observe(&DURATION_BOUNDS_NS, std::time::Duration::from_millis(2));
        let mut duration = HistogramTotals {
            buckets: vec![0; 15],
            sum_ns: 7,
        };
        duration.buckets[1] = 4;
        b.set_carried(Carried {
            totals: ConnTotals {
                opened: 100,
                closed: 90,
                bytes_to_client: 1 << 33,
                connect_failures_in_row: 5,
                ..ConnTotals::default()
            },
            connect_latency: HistogramTotals {
                buckets: vec![1; 3], // other bounds: not added
                sum_ns: 1,
            },
            duration,
        });
        let t = b.exported_totals();
        assert_eq!((t.opened, t.bytes_to_client), (103, 1 << 33));
        assert_eq!(t.active(), 2, "the gauge stays this process's");
        assert_eq!(t.connect_failures_in_row, 1);
        assert_eq!(b.totals().opened, 3, "totals() stays this process's");
        let (c, d) = b.exported_histograms().unwrap();
        assert_eq!(c.count(), 0);
        assert_eq!((d.count(), d.buckets[1], d.sum_ns), (5, 5, 2_000_007));
    }

    #[test]
    fn connect_failures_in_row_restart_at_each_success_per_worker() {
        let b = StatsBlock::new(2);
        for ok in [false, false, true, false] {
            b.worker(0).count_connect(ok);
        }
        b.worker(1).count_connect(false);
        let t = b.totals();
        assert_eq!(t.connect_failed, 4);
        assert_eq!(t.connect_failures_in_row, 2);
        b.worker(1).count_connect(true);
        assert_eq!(b.totals().connect_failures_in_row, 1);
        assert_eq!(b.shutdown_epoch(), 0);
        b.bump_shutdown_epoch();
        assert_eq!(b.shutdown_epoch(), 1);
    }
}
