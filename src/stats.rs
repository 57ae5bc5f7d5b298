//! Counters written by exactly one worker thread and read by anyone, without locks.
//!
//! Each counted thing (a Service port, an endpoint) owns one [`StatsBlock`]: an array of
//! cache-padded counter sets, one per worker. Worker `w` writes only slot `w` (plain
//! load + store, no read-modify-write), so the hot path never contends on a cache line;
//! readers sum the slots at scrape time. Blocks are `Arc`-shared and carried from one
//! routing snapshot to the next by identity, so counters survive reloads.
//!
//! This module is a leaf like `model`: std and crossbeam only.

use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering};

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
    pub connect_failed: u64,
    pub holds_refused: u64,
    pub source_refused: u64,
    /// Sum over workers of the failed connects since each one's last success.
    pub connect_failures_in_row: u64,
}

impl ConnTotals {
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
    shutdown_epoch: CachePadded<AtomicU64>,
}

impl StatsBlock {
    pub fn new(workers: usize) -> StatsBlock {
        StatsBlock {
            per_worker: (0..workers.max(1))
                .map(|_| CachePadded::default())
                .collect(),
            shutdown_epoch: CachePadded::default(),
        }
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
