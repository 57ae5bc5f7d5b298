//! Accepting, as decisions: the accept budget (`max_connections_per_worker` counts relayed
//! connections, not held ones), the backoff after the process ran out of fds, and taking a
//! new client connection into the slab: the listener's Service in the snapshot published
//! now (pinned), `loadBalancerSourceRanges` (refused before any backend work, logged at
//! most once per worker per [`LOG_EVERY`]), and the connection's first turn.

use super::{ConnHandle, ConnTable, ListenerKey, Live, Slot, BACKOFF_MAX, BACKOFF_MIN};
use crate::dataplane::conn::{Conn, ConnConfig};
use crate::dataplane::driver::MAX_SLOTS;
use crate::dataplane::refusals::LOG_EVERY;
use crate::table::RoutingSnapshot;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why [`ConnTable::accept`] took no connection (the caller resets and closes the socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The NodePort is no longer served (a reload removed it).
    NotServed,
    /// Every slot a driver tag can name is taken (far beyond any connection limit).
    Full,
    /// The client is outside the Service's `loadBalancerSourceRanges` where they apply
    /// (counted in the Service's `source_refused`).
    SourceRange,
}

impl<R> ConnTable<R> {
    /// Live connections, held ones included.
    pub fn active(&self) -> u32 {
        self.active
    }

    /// Connections held waiting for an endpoint.
    pub fn held(&self) -> u32 {
        self.held
    }

    /// Relayed connections: every live one but those held waiting for an endpoint.
    pub fn relayed(&self) -> u32 {
        self.active - self.held
    }

    /// Whether the worker takes new connections now.
    pub fn may_accept(&self) -> bool {
        self.accept_room() > 0
    }

    /// How many connections the worker may accept now (0 while draining or backing off).
    pub fn accept_room(&self) -> u32 {
        if self.backoff_until.is_some() || self.draining.is_some() {
            return 0;
        }
        self.config
            .limits
            .max_connections
            .max(1)
            .saturating_sub(self.relayed())
    }

    /// The process ran out of resources: stop accepting for a while (doubling up to a
    /// second while it lasts). Returns the backoff when it starts now (to log it once).
    pub fn enter_backoff(&mut self, now: Instant) -> Option<Duration> {
        let started = self.backoff_until.is_none().then_some(self.backoff);
        self.backoff_until = Some(crate::deadline::after(now, self.backoff));
        self.backoff = crate::deadline::times(self.backoff, 2).min(BACKOFF_MAX);
        started
    }

    /// When the accept backoff ends, if one runs.
    pub fn backoff_until(&self) -> Option<Instant> {
        self.backoff_until
    }

    /// A new client connection on `listener`, routed with `snapshot` (the one published
    /// now). Its first output is a `Connect` (or its end, when no endpoint is usable).
    pub fn accept(
        &mut self,
        now: Instant,
        snapshot: &Arc<RoutingSnapshot>,
        listener: ListenerKey,
        client_addr: SocketAddr,
        resources: R,
    ) -> Result<ConnHandle, (Refused, R)> {
        self.backoff = BACKOFF_MIN;
        let pin = self.pin(snapshot);
        let snapshot = &self.pins[pin].as_ref().expect("current pin").snapshot;
        let Some(reached) = snapshot.lookup(listener.protocol, listener.addr) else {
            return Err((Refused::NotServed, resources));
        };
        let service = reached.service;
        if !snapshot.admits(reached, client_addr.ip()) {
            // loadBalancerSourceRanges: refused before any backend work.
            let entry = snapshot.service(service);
            entry.stats.worker(self.config.worker).source_refused.add(1);
            if let Some(refused) = self.refusal_log.refused(now) {
                tracing::warn!(
                    worker = self.config.worker,
                    service = %entry.port.key,
                    client = %client_addr.ip(),
                    listener = %listener.addr,
                    refused,
                    "connection refused: the client is outside the Service's loadBalancerSourceRanges (this worker logs at most one such line per {}s; `refused` counts since its last)",
                    LOG_EVERY.as_secs()
                );
            }
            return Err((Refused::SourceRange, resources));
        }
        if self.free.is_empty() && self.slots.len() as u32 >= MAX_SLOTS {
            return Err((Refused::Full, resources));
        }
        let entry = snapshot.service(service);
        entry.stats.worker(self.config.worker).opened.add(1);
        let config = ConnConfig {
            idle_timeout: entry.port.timeouts.idle,
            connect_retries: entry.port.connect_retries,
            holder_capacity: self.config.holder_capacity,
        };
        let from_node = snapshot.is_node_address(client_addr.ip());
        let mut tried = self.spare_tried.pop().unwrap_or_default();
        tried.clear();
        self.next_id += 1;
        let live = Live {
            id: self.next_id,
            conn: Conn::new(now, config),
            resources,
            client_addr,
            from_node,
            pin,
            service,
            endpoint: None,
            connected: false,
            shutdown_epoch: 0,
            connect_in_flight: false,
            choosing: None,
            retry_connect: false,
            parked_since: None,
            held_since: None,
            opened_at: now,
            connect_started: now,
            held: None,
            listener,
            moved: [0; 2],
            watching: false,
            tried,
        };
        self.pins[pin].as_mut().expect("current pin").live += 1;
        self.active += 1;
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize].live = Some(live);
                s
            }
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    live: None,
                    scheduled: false,
                });
                let s = self.slots.len() as u32 - 1;
                self.slots[s as usize].live = Some(live);
                s
            }
        };
        self.schedule(slot);
        Ok(self.handle_of(slot))
    }
}
