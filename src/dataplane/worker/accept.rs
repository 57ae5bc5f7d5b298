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
//! not count against the limit: they have their own budget (see `connections/connect.rs`).
//!
//! Accepting also stops while the worker drains, and for a backoff period after the process
//! ran out of fds and the spare pipes were already given back; it resumes by itself. How
//! many the worker may take is the table's answer ([`ConnTable::accept_room`]).

use super::*;
use crate::dataplane::connections::Refused;
use socket2::Socket;
use std::os::fd::AsRawFd;

/// Connections accepted from one listener per turn before the next ready listener's turn
/// (fairness between NodePorts under a burst).
pub const ACCEPT_BATCH: u32 = 16;

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

impl crate::dataplane::udp::NodePortSockets for [ListenerSlot] {
    fn udp_socket(&self, listener: u32) -> Option<(std::os::fd::BorrowedFd<'_>, SocketAddr)> {
        let l = self.get(listener as usize)?;
        if l.key.protocol != crate::model::Protocol::Udp {
            return None;
        }
        Some((l.socket.as_ref()?.as_fd(), l.key.addr))
    }
}

impl<D: Driver> Worker<D> {
    /// Watch every open listener not watched yet (not while draining).
    pub(super) fn watch_listeners(&mut self) -> io::Result<()> {
        if self.table.is_draining() {
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
            self.driver
                .watch_listener(i as u32, generation, socket.as_fd())?;
        }
        Ok(())
    }

    /// Stop watching listener `i` and forget that it was ready.
    pub(super) fn unwatch_listener(&mut self, i: usize) -> io::Result<()> {
        if let Some(generation) = self.listeners[i].watching.take() {
            self.driver.unwatch_listener(i as u32, generation)?;
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
        if l.key.protocol == crate::model::Protocol::Udp {
            // Datagrams, not connections: the UDP side reads them.
            self.udp.nodeport_readable(listener);
        } else if !l.ready {
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
        !self.ready.is_empty() && self.table.may_accept()
    }

    /// Accept from the ready listeners, in turn, at most [`ACCEPT_BATCH`] each, and never
    /// more than the room left under `max_connections_per_worker`. A listener that may still
    /// have connections waiting keeps its place on the ready list.
    pub(super) fn accept_ready(&mut self) -> io::Result<()> {
        let mut turns = self.ready.len();
        let mut accepted = std::mem::take(&mut self.accepted);
        while turns > 0 && self.table.may_accept() {
            turns -= 1;
            let Some(i) = self.ready.pop_front() else {
                break;
            };
            let i = i as usize;
            if !self.listeners[i].ready {
                continue;
            }
            let room = self.table.accept_room().min(ACCEPT_BATCH);
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
        match self.injected_death {
            None => {}
            Some(InjectedDeath::Panic) => {
                panic!("injected worker panic (SLUICE_TEST_WORKER_DEATH)")
            }
            Some(InjectedDeath::Error) => {
                return Err(io::Error::other(
                    "injected worker error (SLUICE_TEST_WORKER_DEATH)",
                ))
            }
        }
        self.loop_stats.accepted.add(1);
        let key = self.listeners[listener].key;
        let Some(client_addr) = client_addr else {
            // Not an IP client.
            let _ = SockRef::from(&fd).set_linger(Some(Duration::ZERO));
            self.to_close.push(fd);
            return Ok(());
        };
        let io = Io {
            client: fd,
            backend: None,
            flight: self.flights.take(),
        };
        let snapshot = Arc::clone(self.reader.load());
        match self.table.accept(self.now, &snapshot, key, client_addr, io) {
            Ok(_) => self.execute(),
            Err((why, io)) => {
                // Port no longer served (a reload removed it), a client outside the
                // source ranges, or no slot left.
                if matches!(why, Refused::NotServed | Refused::SourceRange) {
                    let _ = SockRef::from(&io.client).set_linger(Some(Duration::ZERO));
                }
                self.flights.give(io.flight);
                self.to_close.push(io.client);
                Ok(())
            }
        }
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
        if let Some(backoff) = self.table.enter_backoff(self.now) {
            tracing::warn!(
                worker = self.index,
                error = %e,
                fd_limit = sys::fd_limit(),
                active = self.table.active(),
                backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                "out of resources: not accepting new connections for a while; existing ones keep running"
            );
        }
    }
}
