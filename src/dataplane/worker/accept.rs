//! Accepting: the worker's listening sockets (one per (address, NodePort) in each
//! SO_REUSEPORT group), arming and cancelling their accepts, the connection limit and the
//! fd-exhaustion backoff, and turning an accepted socket into a connection.
//!
//! Accepting stops (accepts are cancelled, never accept-then-drop) while the worker holds
//! `max_connections_per_worker` connections, while it drains, and for a backoff period after
//! the process ran out of fds; it resumes by itself.

use super::*;

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
    /// Generation of the armed multishot accept, if armed.
    pub(super) accepting: Option<u32>,
    /// Generation the next arm gets.
    pub(super) arms: u32,
}

impl<D: Driver> Worker<D> {
    pub(super) fn on_accept(&mut self, listener: usize, fd: OwnedFd) -> io::Result<()> {
        self.loop_stats.accepted.add(1);
        let key = self.listeners[listener].key;
        let (protocol, node_port) = (key.protocol, key.node_port());
        let pin = self.pin_current();
        let snapshot = &self.pins[pin].as_ref().expect("current pin").snapshot;
        let client_addr = SockRef::from(&fd)
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket());
        let (Some(service), Some(client_addr)) =
            (snapshot.lookup(protocol, node_port), client_addr)
        else {
            // Port no longer served (a reload removed it) or the client is already gone.
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
            backend: None,
            pin,
            service,
            endpoint: None,
            connected: false,
            shutdown_epoch: 0,
            connect_in_flight: false,
            parked_since: None,
            held_since: None,
            opened_at: self.now,
            connect_started: self.now,
            listener: key,
            watching: false,
            tried,
            holders: [Holder::Empty, Holder::Empty],
            bulk: [false; 2],
        };
        self.pins[pin].as_mut().expect("current pin").live += 1;
        self.active += 1;
        if self.active >= self.max_connections {
            self.pause_accepting()?;
        }
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

    pub(super) fn may_accept(&self) -> bool {
        self.backoff_until.is_none()
            && self.draining.is_none()
            && self.active < self.max_connections
    }

    pub(super) fn arm_accept(&mut self, i: usize) -> io::Result<()> {
        let l = &mut self.listeners[i];
        if let (None, Some(socket)) = (l.accepting, l.socket.as_ref()) {
            let generation = l.arms;
            l.arms = generation.wrapping_add(1);
            l.accepting = Some(generation);
            self.ring.accept(i as u32, generation, socket.as_fd())?;
        }
        self.loop_stats.set_accepting(true);
        Ok(())
    }

    pub(super) fn resume_accepting(&mut self) -> io::Result<()> {
        if !self.may_accept() {
            return Ok(());
        }
        for i in 0..self.listeners.len() {
            self.arm_accept(i)?;
        }
        Ok(())
    }

    pub(super) fn pause_accepting(&mut self) -> io::Result<()> {
        for i in 0..self.listeners.len() {
            if let Some(generation) = self.listeners[i].accepting.take() {
                self.ring.cancel_accept(i as u32, generation)?;
            }
        }
        self.loop_stats.set_accepting(false);
        Ok(())
    }

    pub(super) fn enter_backoff(&mut self, e: &io::Error) -> io::Result<()> {
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
        self.pause_accepting()
    }
}
