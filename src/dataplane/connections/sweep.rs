//! Time and the end of things: the tick (the incremental idle sweep, endpoints marked down
//! with `shutdown_sessions`, the end of the accept backoff, held and parked retries), the
//! drain, and resetting every connection when the worker ends.
//!
//! The idle sweep looks at a slice of the slab per tick (every connection about once per
//! `IDLE_PASS_TICKS` ticks), never the whole slab at once: no stop-the-world pause with a
//! million connections.

use super::{ConnHandle, ConnTable, Output, IDLE_PASS_TICKS};
use crate::table::RoutingSnapshot;
use std::sync::Arc;
use std::time::Instant;

impl<R> ConnTable<R> {
    /// Called every [`super::TICK`] with the snapshot published now: sweeps a slice of the
    /// slab for idle deadlines and endpoints marked down, ends the accept backoff when due,
    /// and retries the held and parked connections.
    pub fn tick(&mut self, now: Instant, snapshot: &Arc<RoutingSnapshot>) {
        self.sweep_slice(now);
        if self.backoff_until.is_some_and(|t| now >= t) {
            self.backoff_until = None;
        }
        if !self.parked.is_empty() {
            self.retry_parked();
        }
        if !self.holding.is_empty() {
            self.retry_held(now, snapshot);
        }
    }

    /// Check the idle deadline of a slice of the slab (all of it once per
    /// IDLE_PASS_TICKS), and reset the connections whose endpoint was marked down with
    /// `shutdown_sessions` since they connected (its shutdown epoch moved: one relaxed load
    /// per connection).
    fn sweep_slice(&mut self, now: Instant) {
        let n = self.slots.len();
        if n == 0 {
            return;
        }
        let step = n.div_ceil(IDLE_PASS_TICKS);
        for _ in 0..step {
            let slot = (self.idle_cursor % n) as u32;
            self.idle_cursor = (self.idle_cursor + 1) % n;
            let conn = self.handle_of(slot);
            let Some(live) = self.slots[slot as usize].live.as_ref() else {
                continue;
            };
            if live.connected && !live.conn.is_closed() {
                let endpoint = live.endpoint.expect("connected endpoint");
                let epoch = self
                    .service_of(live.pin, live.service)
                    .endpoint(endpoint)
                    .stats
                    .shutdown_epoch();
                if epoch != live.shutdown_epoch {
                    tracing::debug!(worker = self.config.worker, client = %live.client_addr,
                        "endpoint marked down (shutdown_sessions): resetting the connection");
                    let live = self.slots[slot as usize].live.as_mut().expect("checked");
                    live.conn.abort();
                    self.schedule(slot);
                    continue;
                }
            }
            if live.conn.deadline().is_some_and(|d| now >= d) {
                self.outputs.push_back(Output::IdleExpired { conn });
            }
        }
    }

    /// Answer to `Output::IdleExpired`: the connection's idle deadline passed, and the
    /// kernel still queues bytes of it (`queued_in_kernel`) or not. Bytes still in the
    /// kernel's queues of either socket are as much "in flight" as those in a holder: the
    /// core resets both sides then.
    pub fn idle_expired(&mut self, now: Instant, conn: ConnHandle, queued_in_kernel: bool) {
        let Some(live) = self.live_mut(conn) else {
            return;
        };
        live.conn.handle_timeout_queued(now, queued_in_kernel);
        self.schedule(conn.slot);
    }

    /// Stop accepting; [`Self::drained`] says when the worker may end.
    pub fn drain(&mut self, deadline: Instant) {
        self.draining = Some(deadline);
    }

    /// Whether a drain is under way.
    pub fn is_draining(&self) -> bool {
        self.draining.is_some()
    }

    /// A drain is under way and is over: no connection is left, or its deadline passed.
    pub fn drained(&self, now: Instant) -> bool {
        self.draining
            .is_some_and(|deadline| self.active == 0 || now >= deadline)
    }

    /// The worker ends: stop accepting and reset every connection still open (both
    /// sides, never a FIN that would make a truncated stream look complete). Returns how
    /// many; their `Output::Close` come from [`Self::poll`].
    pub fn abort_all(&mut self, now: Instant) -> u64 {
        self.draining = Some(now);
        let mut reset = 0;
        for slot in 0..self.slots.len() as u32 {
            if let Some(live) = self.slots[slot as usize].live.as_mut() {
                live.conn.abort();
                reset += 1;
                self.schedule(slot);
            }
        }
        reset
    }
}
