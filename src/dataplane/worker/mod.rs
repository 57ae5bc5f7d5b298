//! One worker thread: the IO loop around one [`ConnTable`]. It owns the driver (io_uring or
//! epoll), its own listening socket per NodePort (in the SO_REUSEPORT group), the sockets
//! and holders of its connections, and the holder pool; every decision about connections
//! (routing, retries, holds, parking, pins, idle and shutdown sweeps, drain) is the table's.
//!
//! Shared-nothing: a worker never locks and never touches another worker's state. It reads
//! routing state only through the published snapshot (one atomic load per accept, through a
//! cache that re-loads only when the pointer changed), and writes only its own slot of each
//! counter block. A connection keeps the snapshot it was routed with ("pinned") until it
//! ends, so a newly published snapshot affects new connections only.
//!
//! The loop, per iteration: submit queued entries and wait (bounded by the next tick),
//! feed the driver's completions to the table, give yielded connections their next turn,
//! accept what the table has room for, tick the table every [`TICK`]; after each input, run
//! the table's outputs (`execute`) until it has none. Sockets of finished connections are
//! closed by the driver in the submit that removes their polls ([`Driver::close`]).
//!
//! Accepting stops (connections wait in the kernel's accept queue, never accept-then-drop)
//! while the worker holds `max_connections_per_worker` relayed connections, and for a backoff
//! period when the process runs out of fds; existing connections keep being served meanwhile.
//!
//! Every connection cut before both directions finished is reset on both sides, never closed
//! with a FIN that would make a truncated stream look complete: the core asks for it (errors,
//! idle timeout with bytes held), the worker tells the table about bytes still in the
//! kernel's socket queues at an idle timeout, and a worker that ends (drain timeout, stop,
//! abort) resets every connection it still has.

mod accept;
mod carry;
mod connect;
mod flight;
mod listing;
mod ring;

pub use accept::Listener;
use accept::ListenerSlot;
pub use carry::{ExportedFlows, FlowCommand};
use flight::{Flight, FlightPool};

use crate::dataplane::conn::{ConnEvent, Dir, Side};
use crate::dataplane::connections::{
    ConnHandle, ConnTable, ListenerKey, Output, TableConfig, WorkerLimits, TICK,
};
use crate::dataplane::death::{self, InjectedDeath};
use crate::dataplane::driver::{Completion, Driver};
use crate::dataplane::relay::{self, HolderPool, HOLDER_CAPACITY};
use crate::dataplane::sys;
use crate::dataplane::udp::{self, UdpPlane};
use crate::model::{Protocol, RelayMode};
use crate::publish::Publisher;
use crate::stats::LoopStats;
use crate::table::RoutingSnapshot;
use socket2::SockRef;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

// The loop ticks both tables together: the flow table asks for the same period.
const _: () = assert!(crate::dataplane::flow::TICK.as_millis() == TICK.as_millis());

/// What the rest of the process can ask of a running worker (through its queue + eventfd).
#[derive(Debug)]
pub enum Command {
    /// Start accepting on these new listeners (a reload added NodePorts or addresses).
    AddListeners(Vec<Listener>),
    /// Stop accepting on these listeners and close them.
    RemoveListeners(Vec<ListenerKey>),
    /// Stop accepting; end once no connection is left, or at `deadline` (resetting the rest).
    Drain { deadline: Instant },
    /// End now, resetting open connections.
    Stop,
    /// End now, resetting open connections, and say so on `done` once every socket of this
    /// worker is closed (the process is about to exit).
    Abort { done: mpsc::Sender<()> },
    /// Attach (or detach) the client-IP steering program to these listener groups, through
    /// this worker's member socket; `groups` is the number of sockets per group (workers).
    Steer {
        attach: Vec<ListenerKey>,
        detach: Vec<ListenerKey>,
        groups: u32,
        /// Told when the change is applied.
        done: mpsc::Sender<()>,
    },
    /// Send a duplicate of each open listening socket (a hand-over to a new process, or
    /// systemd's fd store): this worker's index and its (key, socket) pairs.
    Export {
        done: mpsc::Sender<(usize, Vec<(ListenerKey, OwnedFd)>)>,
    },
    /// List the live UDP flows and TCP connections (`ctl flows`): answered on `reply`
    /// between two turns of the loop (`listing.rs`).
    Live {
        query: crate::dataplane::live::LiveQuery,
        reply: mpsc::Sender<crate::dataplane::live::WorkerLive>,
    },
    /// UDP flows across an upgrade (`carry.rs`).
    Flows(FlowCommand),
}

/// What a worker is told at start.
pub struct WorkerSetup {
    pub index: usize,
    pub cpu: Option<usize>,
    pub listeners: Vec<Listener>,
    /// The data-plane limits: `max_connections_per_worker`, `max_held_per_worker`,
    /// `max_held_per_service`.
    pub limits: WorkerLimits,
    /// UDP flows at most (`max_flows_per_worker`).
    pub max_flows: u32,
    /// Spare pipes a worker may keep (see `relay::HolderPool`).
    pub spare_pipes: usize,
    pub relay: RelayMode,
    pub publisher: Publisher,
    pub wake: Arc<OwnedFd>,
    pub commands: mpsc::Receiver<Command>,
    pub loop_stats: Arc<LoopStats>,
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerExit {
    /// Connections still open at the end, reset.
    pub reset: u64,
}

/// A connection's IO resources (the table's `R`): its sockets and the state of its bytes
/// in flight.
///
/// Small on purpose (16 bytes): the table hands each of its outputs back by value, and
/// `Output::Close` carries the resources, so their size is copied with every output.
struct Io {
    client: OwnedFd,
    backend: Option<OwnedFd>,
    /// From the worker's [`FlightPool`], back there at close.
    flight: Box<Flight>,
}

impl Io {
    fn side(&self, side: Side) -> std::os::fd::BorrowedFd<'_> {
        match side {
            Side::Client => self.client.as_fd(),
            Side::Backend => self.backend.as_ref().expect("backend socket").as_fd(),
        }
    }
}

/// The state of one worker; see the module documentation.
pub struct Worker<D: Driver> {
    index: usize,
    driver: D,
    table: ConnTable<Io>,
    listeners: Vec<ListenerSlot>,
    exit_now: bool,
    commands: mpsc::Receiver<Command>,
    loop_stats: Arc<LoopStats>,
    /// Listeners that may have connections waiting, in turn order.
    ready: std::collections::VecDeque<u32>,
    /// Reused buffer of one turn's accepted sockets.
    accepted: Vec<(OwnedFd, Option<SocketAddr>)>,
    /// Told once this worker has closed every socket (`Command::Abort`).
    aborted: Option<mpsc::Sender<()>>,
    reader: arc_swap::Cache<Arc<arc_swap::ArcSwap<RoutingSnapshot>>, Arc<RoutingSnapshot>>,
    pool: HolderPool,
    flights: FlightPool,
    to_close: Vec<OwnedFd>,
    /// Ring SENDs of closed connections still in flight: (slot, generation, to the
    /// client, ring buffer), recycled when they complete.
    orphan_sends: Vec<(u32, u32, bool, u16)>,
    wake: Arc<OwnedFd>,
    now: Instant,
    /// Reused buffer for PROXY headers.
    header: Vec<u8>,
    /// Test builds only: die this way at the first accepted connection (`death`).
    injected_death: Option<InjectedDeath>,
    /// The UDP NodePorts' flow table and its sockets (`dataplane::udp`).
    udp: UdpPlane,
}

impl<D: Driver> Worker<D> {
    pub fn new(setup: WorkerSetup, driver: D) -> io::Result<Worker<D>> {
        let seed = (setup.index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        Ok(Worker {
            index: setup.index,
            driver,
            table: ConnTable::new(TableConfig {
                worker: setup.index,
                limits: setup.limits,
                holder_capacity: HOLDER_CAPACITY,
                seed,
            }),
            listeners: setup.listeners.into_iter().map(ListenerSlot::new).collect(),
            exit_now: false,
            commands: setup.commands,
            loop_stats: Arc::clone(&setup.loop_stats),
            ready: std::collections::VecDeque::new(),
            accepted: Vec::new(),
            aborted: None,
            reader: setup.publisher.reader(),
            pool: HolderPool::new(setup.relay, setup.spare_pipes),
            flights: FlightPool::default(),
            to_close: Vec::new(),
            orphan_sends: Vec::new(),
            wake: setup.wake,
            now: Instant::now(),
            header: Vec::with_capacity(256),
            injected_death: death::injected(setup.index),
            udp: UdpPlane::new(
                Instant::now(),
                setup.index,
                setup.max_flows,
                seed.rotate_left(32),
                setup.loop_stats,
            ),
        })
    }

    /// Run until told to stop or drained. Connections still open then are reset.
    pub fn run(mut self) -> io::Result<WorkerExit> {
        self.driver.watch_wake(self.wake.as_fd())?;
        self.watch_listeners()?;
        let mut completions = Vec::new();
        let mut last_tick = Instant::now();
        loop {
            // Sockets to close go to the driver, which closes them in this submit (after
            // the removal of their polls) before it sleeps; only connections parked for
            // lack of fds need a round without sleep to retry at once.
            let parked_may_retry = self.table.has_parked() && !self.to_close.is_empty();
            let wait = if !self.table.has_yielded()
                && !parked_may_retry
                && !self.accepts_pending()
                && !self.udp.pending()
            {
                let mut w = TICK;
                if let Some(until) = self.table.backoff_until() {
                    w = w.min(until.saturating_duration_since(self.now));
                }
                Some(w)
            } else {
                Some(Duration::ZERO)
            };
            let freed = self.submit(wait)?;
            self.now = Instant::now();
            if freed && self.table.has_parked() {
                self.table.retry_parked();
                self.execute()?;
            }
            self.driver.completions(&mut completions);
            self.loop_stats.iterations.add(1);
            self.loop_stats.completions.add(completions.len() as u64);
            for c in completions.drain(..) {
                self.on_completion(c)?;
                self.execute()?;
            }
            self.table.resume_yielded();
            self.execute()?;
            self.accept_ready()?;
            self.run_udp(false)?;
            self.loop_stats.set_active(u64::from(self.table.active()));
            self.loop_stats.set_accepting(self.table.may_accept());
            if self.exit_now || self.table.drained(self.now) {
                break;
            }
            if self.now.duration_since(last_tick) >= TICK {
                last_tick = self.now;
                let snapshot = Arc::clone(self.reader.load());
                self.table.tick(self.now, &snapshot);
                self.execute()?;
                self.run_udp(true)?;
                self.pool.tick();
            }
        }
        self.shutdown()
    }

    /// Hand the sockets to close to the driver (closed in this submit, after the entries
    /// that removed their polls), submit and wait at most `wait`; true when sockets were
    /// closed (fds freed).
    fn submit(&mut self, wait: Option<Duration>) -> io::Result<bool> {
        let freed = !self.to_close.is_empty();
        for fd in self.to_close.drain(..) {
            self.driver.close(fd)?;
        }
        self.driver.submit_and_wait(wait)?;
        Ok(freed)
    }

    fn on_completion(&mut self, c: Completion) -> io::Result<()> {
        match c {
            Completion::Acceptable {
                listener,
                generation,
                ended,
            } => self.on_acceptable(listener, generation, ended)?,
            Completion::Ready {
                slot,
                generation,
                client,
                readable,
                writable,
                hangup,
                ended,
                input,
            } => {
                let conn = ConnHandle::from_parts(slot, generation);
                let side = if client { Side::Client } else { Side::Backend };
                if input {
                    if let Some(io) = self.table.resources_mut(conn) {
                        if io.flight.ring[side as usize].state == ring::RingState::Waiting {
                            return ring::first_input(&mut self.driver, io, slot, generation, side);
                        }
                    }
                }
                let now = self.now;
                self.table.handle(
                    now,
                    conn,
                    ConnEvent::Ready {
                        side,
                        readable,
                        writable,
                    },
                );
                if hangup {
                    self.table.handle(now, conn, ConnEvent::HangUp { side });
                }
                if ended && self.table.is_watching(conn) {
                    let io = self.table.resources(conn).expect("watched connection");
                    if input {
                        self.driver
                            .watch_input(slot, generation, client, io.side(side))?;
                    } else if io.flight.ring[side as usize].output_only {
                        self.driver
                            .watch_ring(slot, generation, client, io.side(side))?;
                    } else {
                        self.driver.watch(slot, generation, client, io.side(side))?;
                    }
                }
            }
            Completion::Received {
                slot,
                generation,
                client,
                result,
                buf,
                ended,
            } => self.on_ring_received(slot, generation, client, result, buf, ended)?,
            Completion::Sent {
                slot,
                generation,
                client,
                result,
            } => self.on_ring_sent(slot, generation, client, result)?,
            Completion::Connected {
                slot,
                generation,
                result,
            } => self.on_connected(ConnHandle::from_parts(slot, generation), result),
            Completion::FlowReadable { flow, ended } => {
                self.udp.flow_readable(&mut self.driver, flow, ended)?;
            }
            Completion::Wake { ended } => {
                sys::eventfd_drain(self.wake.as_fd());
                if ended {
                    self.driver.watch_wake(self.wake.as_fd())?;
                }
                while let Ok(command) = self.commands.try_recv() {
                    self.on_command(command)?;
                }
            }
        }
        Ok(())
    }

    fn on_command(&mut self, command: Command) -> io::Result<()> {
        match command {
            Command::AddListeners(listeners) => {
                for l in listeners {
                    // A closed slot is reused (listeners come and go with Services'
                    // addresses); its watch generations go on, so a late report of the
                    // closed listener's watch is never taken for the new one's.
                    let closed = self
                        .listeners
                        .iter()
                        .position(|s| s.socket.is_none() && s.watching.is_none());
                    match closed {
                        Some(i) => {
                            let arms = self.listeners[i].arms;
                            self.listeners[i] = ListenerSlot::new(l);
                            self.listeners[i].arms = arms;
                        }
                        None => self.listeners.push(ListenerSlot::new(l)),
                    }
                }
                self.watch_listeners()?;
            }
            Command::RemoveListeners(keys) => {
                let keys: std::collections::HashSet<ListenerKey> = keys.into_iter().collect();
                for i in 0..self.listeners.len() {
                    if self.listeners[i].socket.is_some() && keys.contains(&self.listeners[i].key) {
                        self.unwatch_listener(i)?;
                        let socket = self.listeners[i].socket.take().expect("open listener");
                        self.to_close.push(socket.into());
                        self.udp_listener_closed(i)?;
                    }
                }
            }
            Command::Drain { deadline } => {
                // Close the listeners too, not only stop accepting: new clients are refused
                // at once (and retry elsewhere) instead of waiting in an accept queue
                // until the drain ends.
                self.table.drain(deadline);
                self.unwatch_listeners()?;
                for i in 0..self.listeners.len() {
                    if let Some(socket) = self.listeners[i].socket.take() {
                        self.to_close.push(socket.into());
                        // UDP flows reply through their NodePort socket: they end with it.
                        self.udp_listener_closed(i)?;
                    }
                }
            }
            Command::Stop => self.exit_now = true,
            Command::Export { done } => {
                // A failed dup (out of fds) is the caller's error (nothing sent), never
                // this worker's end.
                let out: io::Result<Vec<(ListenerKey, OwnedFd)>> = self
                    .listeners
                    .iter()
                    .filter_map(|l| l.socket.as_ref().map(|s| (l.key, s)))
                    .map(|(key, s)| s.as_fd().try_clone_to_owned().map(|fd| (key, fd)))
                    .collect();
                match out {
                    Ok(out) => {
                        let _ = done.send((self.index, out));
                    }
                    Err(e) => {
                        tracing::warn!(worker = self.index, error = %e, "cannot duplicate the listening sockets");
                    }
                }
            }
            Command::Abort { done } => {
                self.exit_now = true;
                self.aborted = Some(done);
            }
            Command::Steer {
                attach,
                detach,
                groups,
                done,
            } => {
                let attach: std::collections::HashSet<ListenerKey> = attach.into_iter().collect();
                let detach: std::collections::HashSet<ListenerKey> = detach.into_iter().collect();
                for l in &self.listeners {
                    let Some(socket) = l.socket.as_ref() else {
                        continue;
                    };
                    let result = if attach.contains(&l.key) {
                        sys::attach_client_ip_steering(socket.as_fd(), groups)
                    } else if detach.contains(&l.key) {
                        sys::detach_steering(socket.as_fd())
                    } else {
                        continue;
                    };
                    if let Err(e) = result {
                        tracing::warn!(listener = %l.key.addr, error = %e, "cannot change client-IP steering; affinity tables of different workers may disagree");
                    }
                }
                let _ = done.send(());
            }
            Command::Live { query, reply } => {
                let _ = reply.send(self.live(&query));
            }
            Command::Flows(command) => self.on_flow_command(command)?,
        }
        Ok(())
    }

    /// Execute the table's outputs until it has none (its answers go back in at once).
    fn execute(&mut self) -> io::Result<()> {
        while let Some(out) = self.table.poll(self.now) {
            self.execute_one(out)?;
        }
        Ok(())
    }

    fn execute_one(&mut self, out: Output<Io>) -> io::Result<()> {
        let now = self.now;
        match out {
            Output::Connect {
                conn,
                addr,
                timeout,
                transparent_from,
            } => self.start_connect(conn, addr, timeout, transparent_from)?,
            Output::Watch { conn } => {
                let ring = self.driver.receives_streams() && self.pool.copies();
                let io = self.table.resources_mut(conn).expect("live connection");
                let (slot, generation) = (conn.slot(), conn.generation());
                if ring {
                    for side in [Side::Client, Side::Backend] {
                        let r = &mut io.flight.ring[side as usize];
                        r.state = ring::RingState::Waiting;
                        r.output_only = true;
                        let client = side == Side::Client;
                        self.driver
                            .watch_ring(slot, generation, client, io.side(side))?;
                        self.driver
                            .watch_first_input(slot, generation, client, io.side(side))?;
                    }
                } else {
                    self.driver
                        .watch(slot, generation, true, io.client.as_fd())?;
                    self.driver
                        .watch(slot, generation, false, io.side(Side::Backend))?;
                }
            }
            Output::Receive { conn, dir, max } => {
                let io = self.table.resources_mut(conn).expect("live connection");
                if io.flight.ring[dir.src() as usize].owns_input() {
                    let event = ring::receive(io, dir, max);
                    self.table.handle(now, conn, event);
                    self.give_back_if_drained(conn, dir);
                    return Ok(());
                }
                let src = match dir.src() {
                    Side::Client => io.client.as_fd(),
                    Side::Backend => io.backend.as_ref().expect("backend socket").as_fd(),
                };
                let event = relay::receive(
                    &mut self.pool,
                    &mut io.flight.holders[dir as usize],
                    &mut io.flight.bulk[dir as usize],
                    src,
                    dir,
                    max,
                );
                self.table.handle(now, conn, event);
                self.give_back_if_drained(conn, dir);
            }
            Output::Send { conn, dir, held } => {
                let io = self.table.resources_mut(conn).expect("live connection");
                if let Some(event) =
                    ring::send(&mut self.driver, io, conn.slot(), conn.generation(), dir)?
                {
                    self.table.handle(now, conn, event);
                    return Ok(());
                }
                let dst = match dir.dst() {
                    Side::Client => io.client.as_fd(),
                    Side::Backend => io.backend.as_ref().expect("backend socket").as_fd(),
                };
                let event = relay::send(&mut io.flight.holders[dir as usize], dst, dir, held);
                if let ConnEvent::SendWouldBlock { .. } = event {
                    // Back-pressure: the source stops being read while bytes are held,
                    // which a ring receive would not do.
                    ring::leave(
                        &mut self.driver,
                        io,
                        conn.slot(),
                        conn.generation(),
                        dir.src(),
                    )?;
                }
                self.table.handle(now, conn, event);
                self.give_back_if_drained(conn, dir);
            }
            Output::ShutdownWrite { conn, side } => {
                let io = self.table.resources(conn).expect("live connection");
                if let Err(e) = SockRef::from(&io.side(side)).shutdown(std::net::Shutdown::Write) {
                    let reset = sys::is_reset(&e);
                    self.table
                        .handle(now, conn, ConnEvent::Failed { side, reset });
                }
            }
            Output::IdleExpired { conn } => {
                let io = self.table.resources(conn).expect("live connection");
                let queued = sys::queued_bytes(io.client.as_fd())
                    + io.backend
                        .as_ref()
                        .map_or(0, |b| sys::queued_bytes(b.as_fd()))
                    + io.flight
                        .ring
                        .iter()
                        .map(|r| r.backlog.len())
                        .sum::<usize>();
                self.table.idle_expired(now, conn, queued > 0);
            }
            Output::Close {
                conn,
                resources: mut io,
                reset_client,
                reset_backend,
                watching,
                connect_in_flight,
                held,
                ..
            } => {
                if reset_client {
                    let _ = SockRef::from(&io.client).set_linger(Some(Duration::ZERO));
                }
                if let (true, Some(b)) = (reset_backend, io.backend.as_ref()) {
                    let _ = SockRef::from(b).set_linger(Some(Duration::ZERO));
                }
                let (slot, generation) = (conn.slot(), conn.generation());
                if watching {
                    self.driver.unwatch(slot, generation, true)?;
                    self.driver.unwatch(slot, generation, false)?;
                }
                if connect_in_flight {
                    self.driver.cancel_connect(slot, generation)?;
                }
                self.stop_ring(slot, generation, &mut io)?;
                for dir in Dir::BOTH {
                    let h = std::mem::take(&mut io.flight.holders[dir as usize]);
                    self.pool.give(h, held[dir as usize]);
                }
                self.flights.give(io.flight);
                self.to_close.push(io.client);
                if let Some(b) = io.backend {
                    self.to_close.push(b);
                }
            }
        }
        Ok(())
    }

    /// A drained direction (nothing came, EOF, or everything sent) holds no pipe.
    fn give_back_if_drained(&mut self, conn: ConnHandle, dir: Dir) {
        if self.table.held_bytes(conn, dir) == 0 {
            if let Some(io) = self.table.resources_mut(conn) {
                let h = std::mem::take(&mut io.flight.holders[dir as usize]);
                self.pool.give(h, 0);
            }
        }
    }

    /// A turn of the UDP side over its ready sockets, or (`tick`) its periodic sweep; does
    /// nothing while there is neither.
    fn run_udp(&mut self, tick: bool) -> io::Result<()> {
        if !(self.udp.pending() || tick && self.udp.flows() > 0) {
            return Ok(());
        }
        let snapshot = Arc::clone(self.reader.load());
        self.with_udp(
            &snapshot,
            |udp, cx| {
                if tick {
                    udp.tick(cx)
                } else {
                    udp.run(cx)
                }
            },
        )
    }

    /// Runs `f` on the UDP side with a context over this worker's driver, listener slots
    /// and close list, reading `snapshot`.
    fn with_udp<T>(
        &mut self,
        snapshot: &RoutingSnapshot,
        f: impl FnOnce(&mut UdpPlane, &mut udp::Context<'_, D, [ListenerSlot]>) -> T,
    ) -> T {
        let mut cx = udp::Context {
            driver: &mut self.driver,
            listeners: &self.listeners[..],
            snapshot,
            now: self.now,
            to_close: &mut self.to_close,
        };
        f(&mut self.udp, &mut cx)
    }

    /// The socket of listener slot `i` was just taken out: when it served UDP, the flows
    /// that reply through it end before the slot can take another listener.
    fn udp_listener_closed(&mut self, i: usize) -> io::Result<()> {
        if self.listeners[i].key.protocol != Protocol::Udp {
            return Ok(());
        }
        let snapshot = Arc::clone(self.reader.load());
        self.with_udp(&snapshot, |udp, cx| udp.listener_closed(cx, i as u32))
    }

    /// End: every connection still open is reset on both sides (SO_LINGER 0), never closed
    /// with a FIN, every UDP flow is closed, and every socket is closed before this returns.
    fn shutdown(mut self) -> io::Result<WorkerExit> {
        self.unwatch_listeners()?;
        self.with_udp(&RoutingSnapshot::empty(), |udp, cx| udp.close_all(cx))?;
        let reset = self.table.abort_all(self.now);
        self.execute()?;
        self.submit(Some(Duration::ZERO))?;
        for l in &mut self.listeners {
            l.socket = None;
        }
        self.loop_stats.set_active(0);
        self.loop_stats.set_accepting(false);
        if let Some(done) = self.aborted.take() {
            // The driver (which may still reference sockets) goes first: with SO_LINGER 0
            // set, their last reference going away sends the RST.
            drop(self.driver);
            let _ = done.send(());
        }
        Ok(WorkerExit { reset })
    }
}
