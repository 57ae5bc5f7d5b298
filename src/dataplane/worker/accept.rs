//! Accepting: the worker's listening sockets (one per (address, NodePort) in each
//! SO_REUSEPORT group), watching them, the connection limit and the fd-exhaustion backoff,
//! and turning an accepted socket into a connection.
//!
//! The driver only reports that a listener has connections waiting
//! ([`Completion::Acceptable`], edge-triggered); the worker accepts them itself with
//! accept4(2), never more than it has room for. So `max_connections_per_worker` holds
//! exactly, under any burst and with either driver: the worker never holds more relayed
//! connections than the limit (no overshoot), and whatever it does not take waits in the
//! kernel's accept queue — never accepted-then-dropped. A listener stays on the ready list
//! until accept4(2) says EAGAIN, so a connection that waits while the worker is full is taken
//! as soon as a slot frees, without a new wake-up. Held connections (`hold_when_empty`) do
//! not count against the limit: they have their own budget (see `connect.rs`).
//!
//! Accepting also stops while the worker drains, and for a backoff period after the process
//! ran out of fds and the spare pipes were already given back; it resumes by itself.

use super::*;
use std::os::fd::AsRawFd;

/// Connections accepted from one listener per turn before the next ready listener's turn
/// (fairness between NodePorts under a burst).
pub const ACCEPT_BATCH: u32 = 16;

/// Which (address, NodePort) a listening socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerKey {
    pub addr: SocketAddr,
    pub protocol: Protocol,
}

impl ListenerKey {
    pub fn node_port(&self) -> u16 {
        self.addr.port()
    }
}

/// One listening socket of this worker.
#[derive(Debug)]
pub struct Listener {
    pub key: ListenerKey,
    pub socket: Socket,
}

/// A listener slot: its key stays after the socket is closed, so that a connection the
/// kernel accepted just before the close is still routed by its NodePort.
pub(super) struct ListenerSlot {
    pub(super) key: ListenerKey,
    pub(super) socket: Option<Socket>,
    /// Generation of the armed readiness watch, if armed.
    pub(super) watching: Option<u32>,
    /// Generation the next arm gets.
    pub(super) arms: u32,
    /// On the ready list: connections may be waiting (reported, and no EAGAIN since).
    pub(super) ready: bool,
}

impl ListenerSlot {
    pub(super) fn new(l: Listener) -> ListenerSlot {
        ListenerSlot {
            key: l.key,
            socket: Some(l.socket),
            watching: None,
            arms: 0,
            ready: false,
        }
    }
}

impl<D: Driver> Worker<D> {
    /// Relayed connections: every live one but those held waiting for an endpoint.
    pub(super) fn relayed(&self) -> u32 {
        self.active - self.held
    }

    /// Whether the worker takes new connections now.
    pub(super) fn may_accept(&self) -> bool {
        self.backoff_until.is_none()
            && self.draining.is_none()
            && self.relayed() < self.max_connections
    }

    /// Watch every open listener not watched yet (not while draining).
    pub(super) fn watch_listeners(&mut self) -> io::Result<()> {
        if self.draining.is_some() {
            return Ok(());
        }
        for i in 0..self.listeners.len() {
            self.watch_listener(i)?;
        }
        Ok(())
    }

    fn watch_listener(&mut self, i: usize) -> io::Result<()> {
        let l = &mut self.listeners[i];
        if let (None, Some(socket)) = (l.watching, l.socket.as_ref()) {
            let generation = l.arms;
            l.arms = generation.wrapping_add(1);
            l.watching = Some(generation);
            self.ring
                .watch_listener(i as u32, generation, socket.as_fd())?;
        }
        Ok(())
    }

    /// Stop watching listener `i` and forget that it was ready.
    pub(super) fn unwatch_listener(&mut self, i: usize) -> io::Result<()> {
        if let Some(generation) = self.listeners[i].watching.take() {
            self.ring.unwatch_listener(i as u32, generation)?;
        }
        // Its entry in the ready list is skipped when its turn comes.
        self.listeners[i].ready = false;
        Ok(())
    }

    /// Stop watching every listener (drain, shutdown).
    pub(super) fn unwatch_listeners(&mut self) -> io::Result<()> {
        for i in 0..self.listeners.len() {
            self.unwatch_listener(i)?;
        }
        self.ready.clear();
        Ok(())
    }

    /// The driver says listener `listener` has connections waiting.
    pub(super) fn on_acceptable(
        &mut self,
        listener: u32,
        generation: u32,
        ended: bool,
    ) -> io::Result<()> {
        let i = listener as usize;
        let Some(l) = self.listeners.get_mut(i) else {
            return Ok(());
        };
        if l.watching != Some(generation) {
            return Ok(()); // a report of an earlier, removed watch
        }
        if !l.ready {
            l.ready = true;
            self.ready.push_back(listener);
        }
        if ended {
            l.watching = None;
            self.watch_listener(i)?;
        }
        Ok(())
    }

    /// True when ready listeners wait for a turn the worker can give them now.
    pub(super) fn accepts_pending(&self) -> bool {
        !self.ready.is_empty() && self.may_accept()
    }

    /// Accept from the ready listeners, in turn, at most [`ACCEPT_BATCH`] each, and never
    /// more than the room left under `max_connections_per_worker`. A listener that may still
    /// have connections waiting keeps its place on the ready list.
    pub(super) fn accept_ready(&mut self) -> io::Result<()> {
        let mut turns = self.ready.len();
        let mut accepted = std::mem::take(&mut self.accepted);
        while turns > 0 && self.may_accept() {
            turns -= 1;
            let Some(i) = self.ready.pop_front() else {
                break;
            };
            let i = i as usize;
            if !self.listeners[i].ready {
                continue;
            }
            let room = (self.max_connections - self.relayed()).min(ACCEPT_BATCH);
            let Some(socket) = self.listeners[i].socket.as_ref() else {
                self.listeners[i].ready = false;
                continue;
            };
            let mut outcome = Ok(true);
            accepted.clear();
            while accepted.len() < room as usize {
                match sys::accept(socket.as_fd()) {
                    Ok(Some(conn)) => accepted.push(conn),
                    Ok(None) => {
                        outcome = Ok(false);
                        break;
                    }
                    Err(e) if sys::is_transient_accept_error(&e) => {}
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
            }
            let fd = socket.as_raw_fd();
            for (conn, peer) in accepted.drain(..) {
                self.on_accept(i, conn, peer)?;
            }
            let still_ready = match outcome {
                Ok(more) => more,
                Err(e) if sys::is_fd_exhaustion(&e) && self.release_spare_fds() > 0 => true,
                Err(e) if sys::is_resource_exhaustion(&e) => {
                    self.enter_backoff(&e);
                    true
                }
                Err(e) => {
                    tracing::debug!(worker = self.index, listener = fd, error = %e, "accept failed");
                    false
                }
            };
            if still_ready && self.listeners[i].ready {
                self.ready.push_back(i as u32);
            } else {
                self.listeners[i].ready = false;
            }
        }
        self.accepted = accepted;
        Ok(())
    }

    pub(super) fn on_accept(
        &mut self,
        listener: usize,
        fd: OwnedFd,
        client_addr: Option<SocketAddr>,
    ) -> io::Result<()> {
        self.loop_stats.accepted.add(1);
        self.backoff = BACKOFF_MIN;
        let key = self.listeners[listener].key;
        let (protocol, node_port) = (key.protocol, key.node_port());
        let pin = self.pin_current();
        let snapshot = &self.pins[pin].as_ref().expect("current pin").snapshot;
        let (Some(service), Some(client_addr)) =
            (snapshot.lookup(protocol, node_port), client_addr)
        else {
            // Port no longer served (a reload removed it), or not an IP client.
            let _ = SockRef::from(&fd).set_linger(Some(Duration::ZERO));
            self.to_close.push(fd);
            return Ok(());
        };
        let entry = snapshot.service(service);
        entry.stats.worker(self.index).opened.add(1);
        let config = ConnConfig {
            idle_timeout: entry.port.timeouts.idle,
            connect_retries: entry.port.connect_retries,
            holder_capacity: HOLDER_CAPACITY,
        };
        let mut tried = self.spare_tried.pop().unwrap_or_default();
        tried.clear();
        self.next_id += 1;
        let live = Live {
            id: self.next_id,
            conn: Conn::new(self.now, config),
            client: fd,
            client_addr,
            from_node: snapshot.is_node_address(client_addr.ip()),
            backend: None,
            pin,
            service,
            endpoint: None,
            connected: false,
            shutdown_epoch: 0,
            connect_in_flight: false,
            parked_since: None,
            held_since: None,
            held: false,
            listener: key,
            watching: false,
            tried,
            holders: [Holder::Empty, Holder::Empty],
            bulk: [false; 2],
        };
        self.pins[pin].as_mut().expect("current pin").live += 1;
        self.active += 1;
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize].live = Some(live);
                s
            }
            None => {
                if self.slots.len() as u32 >= MAX_SLOTS {
                    // Unreachable in practice (the connection limit is far lower).
                    self.active -= 1;
                    return Ok(());
                }
                self.slots.push(Slot {
                    generation: 0,
                    live: Some(live),
                });
                self.slots.len() as u32 - 1
            }
        };
        self.drive(slot)
    }

    /// The process is out of fds: give back the spare pipes first (returns the fds freed); a
    /// caller that freed none backs off.
    pub(super) fn release_spare_fds(&mut self) -> usize {
        let freed = self.pool.release_spares();
        if freed > 0 {
            tracing::debug!(
                worker = self.index,
                fds = freed,
                "out of fds: closed the spare pipes"
            );
        }
        freed
    }

    pub(super) fn enter_backoff(&mut self, e: &io::Error) {
        if self.backoff_until.is_none() {
            tracing::warn!(
                worker = self.index,
                error = %e,
                fd_limit = sys::fd_limit(),
                active = self.active,
                backoff_ms = self.backoff.as_millis() as u64,
                "out of resources: not accepting new connections for a while; existing ones keep running"
            );
        }
        self.backoff_until = Some(self.now + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}
