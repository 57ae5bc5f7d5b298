//! Connecting, as decisions: picking an endpoint not tried yet, holding a connection while
//! its Service has no usable endpoint (`hold_when_empty`, within the hold budgets), parking
//! one when the process is out of fds, retrying held and parked ones, and what a finished
//! connect means (counters, the endpoint's shutdown epoch, the transparent-mode hint).
//!
//! Hold budgets: a worker holds at most `max_held_per_service` connections per Service port
//! and `max_held_per_worker` in all. Held connections are not relayed ones: they do not count
//! against `max_connections_per_worker`, so clients waiting on an empty Service never keep
//! the clients of other Services in the accept queue. A client beyond a budget is reset at
//! once, as without `hold_when_empty`, and counted (`holds_refused`). A held connection
//! whose Service gets an endpoint becomes a relayed one when a relayed slot is free, and
//! waits held (within its hold time) until then.

use super::{ConnHandle, ConnTable, Live, Output, HINT_EVERY};
use crate::dataplane::conn::{ConnEvent, ConnectFailure, Side};
use crate::model::Forwarding;
use crate::table::RoutingSnapshot;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why an `Output::Connect` could not even start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStarted {
    /// Out of fds or memory opening the socket (after the spare pipes were given back):
    /// the connection is parked until fds free up, within its connect timeout.
    Exhausted,
    /// Any other local failure (a transparent bind that is not allowed, ...): the attempt
    /// failed for good (`ConnectFailure::Local`, not retried).
    Local,
}

/// How a connect that started ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// Connected (and the PROXY header, if any, was sent whole).
    Connected,
    /// Connected, but the PROXY header could not be sent; `reset` when the peer reset.
    HeaderFailed { reset: bool },
    /// The connect failed.
    Failed(ConnectFailure),
}

/// What the executor needs to write a connection's PROXY header.
#[derive(Debug, Clone, Copy)]
pub struct ProxyHeader<'a> {
    pub forwarding: &'a Forwarding,
    pub client: SocketAddr,
    /// The PROXY v2 unique id: worker index, then the connection's number on its worker.
    pub unique_id: [u8; 16],
}

impl<R> ConnTable<R> {
    /// Pick an endpoint for `live` and ask the executor to connect to it; `None` when the
    /// connection waits held or parked, or was told `NoEndpoint` (its core goes on).
    pub(super) fn start_connect(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        live: &mut Live<R>,
    ) -> Option<Output<R>> {
        let worker = self.config.worker;
        // Borrow `pins` and `picker` separately (not all of self).
        let entry = self.pins[live.pin]
            .as_ref()
            .expect("pinned snapshot")
            .snapshot
            .service(live.service);
        let Some(endpoint) =
            self.picker
                .choose(entry, live.client_addr, live.from_node, &live.tried, now)
        else {
            // No usable endpoint at all (not: every endpoint tried and failed): the Service
            // may hold the connection until one appears (scale from zero).
            let hold = entry.port.timeouts.hold_when_empty;
            if let (Some(hold), true) = (hold, live.tried.is_empty()) {
                let since = *live.held_since.get_or_insert(now);
                if now.saturating_duration_since(since) < hold {
                    if self.take_hold(live) {
                        self.holding.push(conn);
                        return None;
                    }
                    self.service_of(live.pin, live.service)
                        .stats
                        .worker(worker)
                        .holds_refused
                        .add(1);
                }
            }
            live.conn.handle(now, ConnEvent::NoEndpoint);
            return None;
        };
        self.release_hold(live);
        live.held_since = None;
        let entry = self.service_of(live.pin, live.service);
        let addr = entry.endpoint(endpoint).endpoint.addr;
        let timeout = entry.port.timeouts.connect;
        let transparent = matches!(entry.port.forwarding, Forwarding::Transparent);
        live.choosing = Some((endpoint, timeout));
        Some(Output::Connect {
            conn,
            addr,
            timeout,
            transparent_from: transparent.then_some(live.client_addr),
        })
    }

    /// The executor opened the backend socket of the last `Output::Connect` and the
    /// connect is under way.
    pub fn connect_started(&mut self, now: Instant, conn: ConnHandle) {
        let worker = self.config.worker;
        let Some(live) = self.live_mut(conn) else {
            return;
        };
        let Some((endpoint, _)) = live.choosing.take() else {
            return;
        };
        live.parked_since = None;
        let retry = !live.tried.is_empty();
        live.tried.push(endpoint);
        live.endpoint = Some(endpoint);
        live.connect_in_flight = true;
        live.connect_started = now;
        let (pin, service) = (live.pin, live.service);
        if retry {
            self.service_of(pin, service)
                .stats
                .worker(worker)
                .retries
                .add(1);
        }
    }

    /// The executor could not start the last `Output::Connect`.
    pub fn connect_not_started(&mut self, now: Instant, conn: ConnHandle, why: NotStarted) {
        let Some(live) = self.live_mut(conn) else {
            return;
        };
        let Some((_, timeout)) = live.choosing.take() else {
            return;
        };
        match why {
            NotStarted::Exhausted => {
                // The client waits (parked) instead of being reset, until fds free up or
                // its connect timeout has passed.
                let since = *live.parked_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= timeout {
                    live.parked_since = None;
                    live.conn
                        .handle(now, ConnEvent::ConnectFailed(ConnectFailure::Local));
                } else {
                    self.parked.push_back(conn);
                    // A parked retry that is still short of fds ends the round.
                    self.parked_retries = 0;
                }
            }
            NotStarted::Local => {
                live.parked_since = None;
                live.conn
                    .handle(now, ConnEvent::ConnectFailed(ConnectFailure::Local));
            }
        }
        self.schedule(conn.slot);
    }

    /// The PROXY header the connection's Service calls for, if any (to write right after
    /// the connect, before any client byte).
    pub fn proxy_header(&self, conn: ConnHandle) -> Option<ProxyHeader<'_>> {
        let live = self.live(conn)?;
        let forwarding = &self.service_of(live.pin, live.service).port.forwarding;
        if !matches!(forwarding, Forwarding::ProxyV1 | Forwarding::ProxyV2(_)) {
            return None;
        }
        let mut unique_id = [0u8; 16];
        unique_id[..8].copy_from_slice(&(self.config.worker as u64).to_be_bytes());
        unique_id[8..].copy_from_slice(&live.id.to_be_bytes());
        Some(ProxyHeader {
            forwarding,
            client: live.client_addr,
            unique_id,
        })
    }

    /// A connect finished: count it, remember the endpoint's shutdown epoch, and let the
    /// connection go on (relay, or retry elsewhere).
    pub fn connect_finished(&mut self, now: Instant, conn: ConnHandle, outcome: ConnectOutcome) {
        let worker = self.config.worker;
        let Some(mut live) = self.take_live(conn) else {
            return;
        };
        live.connect_in_flight = false;
        let endpoint = live.endpoint.expect("connecting to an endpoint");
        let entry = self.pins[live.pin]
            .as_ref()
            .expect("pinned snapshot")
            .snapshot
            .service(live.service);
        let tcp_connected = !matches!(outcome, ConnectOutcome::Failed(_));
        if let (true, Some(h)) = (tcp_connected, entry.stats.histograms(worker)) {
            h.connect_latency.observe(
                &crate::stats::CONNECT_LATENCY_BOUNDS_NS,
                now.saturating_duration_since(live.connect_started),
            );
        }
        let event = match outcome {
            ConnectOutcome::Connected => ConnEvent::Connected,
            ConnectOutcome::HeaderFailed { reset } => ConnEvent::Failed {
                side: Side::Backend,
                reset,
            },
            ConnectOutcome::Failed(failure) => {
                if failure == ConnectFailure::TimedOut
                    && matches!(entry.port.forwarding, Forwarding::Transparent)
                    && self
                        .last_hint
                        .is_none_or(|t| now.saturating_duration_since(t) >= HINT_EVERY)
                {
                    self.last_hint = Some(now);
                    tracing::warn!(
                        worker,
                        service = %entry.port.key,
                        endpoint = %entry.endpoint(endpoint).endpoint.addr,
                        client = %live.client_addr,
                        "transparent forwarding: connect to the endpoint timed out. Replies to the client's address must come back to this node: apply the rules `sluice tproxy-rules` prints, and route the pod's default route through this node (see docs/client-address.md)"
                    );
                }
                ConnEvent::ConnectFailed(failure)
            }
        };
        live.connected = tcp_connected;
        let stats = &entry.endpoint(endpoint).stats;
        let c = stats.worker(worker);
        c.count_connect(tcp_connected);
        live.shutdown_epoch = stats.shutdown_epoch();
        if event == ConnEvent::Connected {
            c.opened.add(1);
        } else {
            c.failed.add(1);
        }
        live.conn.handle(now, event);
        self.slots[conn.slot as usize].live = Some(live);
        self.schedule(conn.slot);
    }

    /// Count `live` in the hold budgets (if it is not yet); false when a budget is spent.
    fn take_hold(&mut self, live: &mut Live<R>) -> bool {
        if live.held.is_some() {
            return true;
        }
        let limits = self.config.limits;
        let port = self.service_of(live.pin, live.service).stable_id();
        let of_service = self.held_per_port.get(&port).copied().unwrap_or(0);
        if self.held >= limits.max_held || of_service >= limits.max_held_per_service {
            return false;
        }
        self.held += 1;
        self.held_per_port.insert(port, of_service + 1);
        live.held = Some(port);
        true
    }

    /// Take `live` out of the hold budgets (it connects, or it ends).
    pub(super) fn release_hold(&mut self, live: &mut Live<R>) {
        let Some(port) = live.held.take() else {
            return;
        };
        self.held -= 1;
        if let Some(n) = self.held_per_port.get_mut(&port) {
            *n -= 1;
            if *n == 0 {
                self.held_per_port.remove(&port);
            }
        }
    }

    /// Try the held connections again (every tick): each moves to `snapshot` (the one
    /// published now), finds its Service again by NodePort, and connects if an endpoint is
    /// usable and a relayed slot is free; it is reset once its hold time has passed or its
    /// NodePort is no longer served.
    pub(super) fn retry_held(&mut self, now: Instant, snapshot: &Arc<RoutingSnapshot>) {
        for conn in std::mem::take(&mut self.holding) {
            let Some(mut live) = self.take_live(conn) else {
                continue;
            };
            let current = self.pin(snapshot);
            if current != live.pin {
                self.pins[current].as_mut().expect("current pin").live += 1;
                self.unpin(live.pin);
                live.pin = current;
                let snapshot = &self.pins[current].as_ref().expect("current pin").snapshot;
                match snapshot.lookup(live.listener.protocol, live.listener.addr) {
                    Some(reached) => live.service = reached.service,
                    None => {
                        live.conn.handle(now, ConnEvent::NoEndpoint);
                        self.slots[conn.slot as usize].live = Some(live);
                        self.schedule(conn.slot);
                        continue;
                    }
                }
            }
            if self.relayed() >= self.config.limits.max_connections.max(1) {
                // No relayed slot for it yet: it keeps waiting, within its hold time.
                let hold = self
                    .service_of(live.pin, live.service)
                    .port
                    .timeouts
                    .hold_when_empty
                    .unwrap_or_default();
                let waited = live
                    .held_since
                    .map_or(Duration::MAX, |t| now.saturating_duration_since(t));
                if waited < hold {
                    self.holding.push(conn);
                } else {
                    live.conn.handle(now, ConnEvent::NoEndpoint);
                    self.schedule(conn.slot);
                }
                self.slots[conn.slot as usize].live = Some(live);
                continue;
            }
            let out = self.start_connect(now, conn, &mut live);
            self.slots[conn.slot as usize].live = Some(live);
            match out {
                Some(out) => self.outputs.push_back(out),
                None => self.schedule(conn.slot),
            }
        }
    }

    /// Try again to connect the connections parked for lack of fds, oldest first, one at a
    /// time as [`Self::poll`] runs them; the round stops at the first that is still short
    /// of fds. Called after a tick, and when sockets were closed.
    pub fn retry_parked(&mut self) {
        self.parked_retries = self.parked.len();
    }

    /// The endpoint the connection connects (or is connected) to, for logs.
    pub fn endpoint_addr(&self, conn: ConnHandle) -> Option<SocketAddr> {
        let live = self.live(conn)?;
        let endpoint = live.endpoint?;
        Some(
            self.service_of(live.pin, live.service)
                .endpoint(endpoint)
                .endpoint
                .addr,
        )
    }

    /// Whether connections wait for fds.
    pub fn has_parked(&self) -> bool {
        !self.parked.is_empty()
    }
}
