//! One worker thread: its io_uring ring, its own listening socket per NodePort (in the
//! SO_REUSEPORT group), its connection slab, holder pools, snapshot pins and counters.
//!
//! Shared-nothing: a worker never locks and never touches another worker's state. It reads
//! routing state only through the published snapshot (one atomic load per accept, through a
//! cache that re-loads only when the pointer changed), and writes only its own slot of each
//! counter block. A connection keeps the snapshot it was routed with ("pinned") until it
//! ends, so a newly published snapshot affects new connections only.
//!
//! The loop, per iteration: submit queued entries and wait (bounded by the next timer),
//! decode completions, feed them to the connections' state machines, execute their ops,
//! run connections that yielded, check idle deadlines incrementally (a slice of the slab per
//! tick, every connection about once a second — never a stop-the-world sweep), and close the
//! fds of finished connections after the submit that removed their polls.
//!
//! Accepting stops (connections wait in the kernel's accept queue, never accept-then-drop)
//! while the worker holds `max_connections_per_worker` relayed connections, and for a backoff
//! period when the process runs out of fds; existing connections keep being served meanwhile.
//! Connections held for an endpoint (`hold_when_empty`) have their own budget, per Service and
//! per worker, beside the relayed ones (see `accept.rs` and `connect.rs`).
//!
//! Every connection cut before both directions finished is reset on both sides, never closed
//! with a FIN that would make a truncated stream look complete: the core asks for it (errors,
//! idle timeout with bytes held), the worker adds the bytes still in the kernel's socket
//! queues at an idle timeout, and a worker that ends (drain timeout, stop, abort) resets every
//! connection it still has.

mod accept;
mod connect;

use accept::ListenerSlot;
pub use accept::{Listener, ListenerKey};

use crate::dataplane::conn::{CloseReason, Conn, ConnConfig, ConnectFailure, Dir, Event, Op, Side};
use crate::dataplane::driver::{Completion, Driver, MAX_SLOTS};
use crate::dataplane::relay::{self, Holder, HolderPool, HOLDER_CAPACITY};
use crate::dataplane::select::Selector;
use crate::dataplane::sys;
use crate::model::{Forwarding, Protocol, RelayMode, Settings};
use crate::publish::Publisher;
use crate::stats::LoopStats;
use crate::table::{EndpointId, RoutingSnapshot, ServiceEntry, ServiceId};
use socket2::{Domain, SockRef, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

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
}

/// What a worker is told at start.
pub struct WorkerSetup {
    pub index: usize,
    pub cpu: Option<usize>,
    pub listeners: Vec<Listener>,
    /// The data-plane limits: `max_connections_per_worker`, `max_held_per_worker`,
    /// `max_held_per_service`.
    pub limits: WorkerLimits,
    /// Spare pipes a worker may keep (see `relay::HolderPool`).
    pub spare_pipes: usize,
    pub relay: RelayMode,
    pub publisher: Publisher,
    pub wake: Arc<OwnedFd>,
    pub commands: mpsc::Receiver<Command>,
    pub loop_stats: Arc<LoopStats>,
}

/// A worker's connection budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLimits {
    /// Relayed (not held) connections at most; beyond, new ones wait in the accept queue.
    pub max_connections: u32,
    /// Connections held for an endpoint (`hold_when_empty`) at most, all Services together.
    pub max_held: u32,
    /// Connections held for an endpoint at most per Service port.
    pub max_held_per_service: u32,
}

impl WorkerLimits {
    pub fn of(settings: &Settings) -> WorkerLimits {
        WorkerLimits {
            max_connections: settings.max_connections_per_worker.max(1),
            max_held: settings.max_held_per_worker,
            max_held_per_service: settings.max_held_per_service,
        }
    }
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerExit {
    /// Connections still open at the end, reset.
    pub reset: u64,
}

/// How often the loop wakes at the latest, and the idle-check tick.
const TICK: Duration = Duration::from_millis(100);
/// Ticks per full pass of the idle check over the slab.
const IDLE_PASS_TICKS: usize = 10;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one transparent-mode routing hint per worker per this period.
const HINT_EVERY: Duration = Duration::from_secs(10);

struct Pin {
    snapshot: Arc<RoutingSnapshot>,
    live: u32,
}

/// A connection's resources besides its state machine.
struct Live {
    /// Number of this connection on its worker (PROXY v2 unique id, logs).
    id: u64,
    conn: Conn,
    client: OwnedFd,
    client_addr: SocketAddr,
    /// The client is an address of this node (decided at accept): Local Services route
    /// it with the cluster endpoints.
    from_node: bool,
    backend: Option<OwnedFd>,
    pin: usize,
    service: ServiceId,
    endpoint: Option<EndpointId>,
    /// The endpoint this connection is connected to (counted as opened there).
    connected: bool,
    /// The endpoint's shutdown epoch when the connect completed: when it moves, the
    /// endpoint was marked down with `shutdown_sessions` and the sweep resets us.
    shutdown_epoch: u64,
    connect_in_flight: bool,
    /// Since when this connection waits for an fd to open its backend socket.
    parked_since: Option<Instant>,
    /// Since when this connection waits for its Service to have a usable endpoint.
    held_since: Option<Instant>,
    /// Counted in the hold budgets (waiting for an endpoint, or for a free slot after one
    /// appeared).
    held: bool,
    /// The NodePort the client connected to (to find its Service again in a newer snapshot).
    listener: ListenerKey,
    watching: bool,
    tried: Vec<EndpointId>,
    holders: [Holder; 2],
    /// Per direction: a read filled a whole buffer (`RelayMode::Auto` then uses a pipe).
    bulk: [bool; 2],
}

struct Slot {
    generation: u32,
    live: Option<Live>,
}

/// The state of one worker; see the module documentation.
pub struct Worker<D: Driver> {
    index: usize,
    ring: D,
    listeners: Vec<ListenerSlot>,
    /// Set by `Drain`: no accepting, end when empty or at this deadline.
    draining: Option<Instant>,
    exit_now: bool,
    commands: mpsc::Receiver<Command>,
    loop_stats: Arc<LoopStats>,
    /// No accepts until then (fd exhaustion backoff).
    backoff_until: Option<Instant>,
    backoff: Duration,
    max_connections: u32,
    max_held: u32,
    max_held_per_service: u32,
    /// Live connections, held ones included.
    active: u32,
    /// Held connections (counted in `active` too).
    held: u32,
    /// Held connections per Service port (by NodePort).
    held_per_port: std::collections::HashMap<(Protocol, u16), u32, ahash::RandomState>,
    /// Listeners that may have connections waiting, in turn order.
    ready: std::collections::VecDeque<u32>,
    /// Reused buffer of one turn's accepted sockets.
    accepted: Vec<(OwnedFd, Option<SocketAddr>)>,
    /// Told once this worker has closed every socket (`Command::Abort`).
    aborted: Option<mpsc::Sender<()>>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    pins: Vec<Option<Pin>>,
    current_pin: Option<usize>,
    reader: arc_swap::Cache<Arc<arc_swap::ArcSwap<RoutingSnapshot>>, Arc<RoutingSnapshot>>,
    pool: HolderPool,
    runq: Vec<u32>,
    /// Connections waiting for fds to open their backend socket: (slot, generation).
    parked: std::collections::VecDeque<(u32, u32)>,
    /// Connections waiting for their Service to have a usable endpoint (hold_when_empty).
    holding: Vec<(u32, u32)>,
    to_close: Vec<OwnedFd>,
    idle_cursor: usize,
    wake: Arc<OwnedFd>,
    now: Instant,
    /// Per-worker state of the balancing policies (affinity, round-robin, PRNG).
    selector: Selector,
    /// Connections accepted so far (ids).
    next_id: u64,
    /// Reused buffer for PROXY headers.
    header: Vec<u8>,
    /// When the transparent-mode routing hint was last logged (rate limit).
    last_hint: Option<Instant>,
    /// Tried-lists of finished connections, reused (no allocation per connection).
    spare_tried: Vec<Vec<EndpointId>>,
}

impl<D: Driver> Worker<D> {
    pub fn new(setup: WorkerSetup, ring: D) -> io::Result<Worker<D>> {
        Ok(Worker {
            index: setup.index,
            ring,
            listeners: setup.listeners.into_iter().map(ListenerSlot::new).collect(),
            draining: None,
            exit_now: false,
            commands: setup.commands,
            loop_stats: setup.loop_stats,
            backoff_until: None,
            backoff: BACKOFF_MIN,
            max_connections: setup.limits.max_connections.max(1),
            max_held: setup.limits.max_held,
            max_held_per_service: setup.limits.max_held_per_service,
            active: 0,
            held: 0,
            held_per_port: Default::default(),
            ready: std::collections::VecDeque::new(),
            accepted: Vec::new(),
            aborted: None,
            slots: Vec::new(),
            free: Vec::new(),
            pins: Vec::new(),
            current_pin: None,
            reader: setup.publisher.reader(),
            pool: HolderPool::new(setup.relay, setup.spare_pipes),
            runq: Vec::new(),
            parked: std::collections::VecDeque::new(),
            holding: Vec::new(),
            to_close: Vec::new(),
            idle_cursor: 0,
            wake: setup.wake,
            now: Instant::now(),
            spare_tried: Vec::new(),
            next_id: 0,
            selector: Selector::new(
                (setup.index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64),
            ),
            header: Vec::with_capacity(256),
            last_hint: None,
        })
    }

    /// Run until told to stop or drained. Connections still open then are reset.
    pub fn run(mut self) -> io::Result<WorkerExit> {
        self.ring.watch_wake(self.wake.as_fd())?;
        self.watch_listeners()?;
        let mut completions = Vec::new();
        let mut last_tick = Instant::now();
        loop {
            // Sockets to close wait for this submit (their polls are removed in it): do not
            // sleep on them, a reset must leave at once.
            let wait =
                if self.runq.is_empty() && self.to_close.is_empty() && !self.accepts_pending() {
                    let mut w = TICK;
                    if let Some(until) = self.backoff_until {
                        w = w.min(until.saturating_duration_since(self.now));
                    }
                    Some(w)
                } else {
                    Some(Duration::ZERO)
                };
            self.ring.submit_and_wait(wait)?;
            // Entries naming these fds are submitted now (polls removed): safe to close.
            let freed = !self.to_close.is_empty();
            self.to_close.clear();
            self.now = Instant::now();
            if freed && !self.parked.is_empty() {
                self.retry_parked()?;
            }
            self.ring.completions(&mut completions);
            self.loop_stats.iterations.add(1);
            self.loop_stats.completions.add(completions.len() as u64);
            for c in completions.drain(..) {
                self.on_completion(c)?;
            }
            for slot in std::mem::take(&mut self.runq) {
                self.drive(slot)?;
            }
            self.accept_ready()?;
            self.loop_stats.set_active(u64::from(self.active));
            self.loop_stats.set_accepting(self.may_accept());
            if self.exit_now {
                break;
            }
            if let Some(deadline) = self.draining {
                if self.active == 0 || self.now >= deadline {
                    break;
                }
            }
            if self.now.duration_since(last_tick) >= TICK {
                last_tick = self.now;
                self.check_idle_slice()?;
                self.pool.tick();
                if self.backoff_until.is_some_and(|t| self.now >= t) {
                    self.backoff_until = None;
                }
                if !self.parked.is_empty() {
                    self.retry_parked()?;
                }
                if !self.holding.is_empty() {
                    self.retry_held()?;
                }
            }
        }
        self.shutdown()
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
            } => {
                let now = self.now;
                let Some(live) = self
                    .slots
                    .get_mut(slot as usize)
                    .filter(|s| s.generation == generation)
                    .and_then(|s| s.live.as_mut())
                else {
                    return Ok(());
                };
                let side = if client { Side::Client } else { Side::Backend };
                live.conn.handle(
                    now,
                    Event::Ready {
                        side,
                        readable,
                        writable,
                    },
                );
                if hangup {
                    live.conn.handle(now, Event::HangUp { side });
                }
                if ended && live.watching {
                    let fd = if client {
                        &live.client
                    } else {
                        live.backend.as_ref().expect("watched backend")
                    };
                    self.ring.watch(slot, generation, client, fd.as_fd())?;
                }
                self.drive(slot)?;
            }
            Completion::Connected {
                slot,
                generation,
                result,
            } => self.on_connected(slot, generation, result)?,
            Completion::Wake { ended } => {
                sys::eventfd_drain(self.wake.as_fd());
                if ended {
                    self.ring.watch_wake(self.wake.as_fd())?;
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
                    self.listeners.push(ListenerSlot::new(l));
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
                    }
                }
            }
            Command::Drain { deadline } => {
                // Close the listeners too, not only stop accepting: new clients are refused
                // at once (and retry elsewhere) instead of waiting in an accept queue
                // until the drain ends.
                self.draining = Some(deadline);
                self.unwatch_listeners()?;
                for l in &mut self.listeners {
                    if let Some(socket) = l.socket.take() {
                        self.to_close.push(socket.into());
                    }
                }
            }
            Command::Stop => self.exit_now = true,
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
        }
        Ok(())
    }

    /// Execute a connection's ops until it waits, yields or closes.
    fn drive(&mut self, slot: u32) -> io::Result<()> {
        let generation = self.slots[slot as usize].generation;
        let Some(mut live) = self.slots[slot as usize].live.take() else {
            return Ok(());
        };
        match self.drive_live(slot, generation, &mut live) {
            Ok(true) => self.finish(slot, live),
            Ok(false) => {
                self.slots[slot as usize].live = Some(live);
                Ok(())
            }
            Err(e) => {
                self.slots[slot as usize].live = Some(live);
                Err(e)
            }
        }
    }

    /// Returns Ok(true) when the connection closed.
    fn drive_live(&mut self, slot: u32, generation: u32, live: &mut Live) -> io::Result<bool> {
        let now = self.now;
        while let Some(op) = live.conn.poll_op() {
            match op {
                Op::Connect => {
                    let event = self.start_connect(slot, generation, live)?;
                    if let Some(event) = event {
                        live.conn.handle(now, event);
                    }
                }
                Op::Watch => {
                    live.watching = true;
                    self.ring
                        .watch(slot, generation, true, live.client.as_fd())?;
                    let backend = live.backend.as_ref().expect("connected backend");
                    self.ring.watch(slot, generation, false, backend.as_fd())?;
                }
                Op::Receive { dir, max } => {
                    let src = side_fd(&live.client, &live.backend, dir.src());
                    let event = relay::receive(
                        &mut self.pool,
                        &mut live.holders[dir as usize],
                        &mut live.bulk[dir as usize],
                        src,
                        dir,
                        max,
                    );
                    live.conn.handle(now, event);
                    if live.conn.held(dir) == 0 {
                        // Drained (nothing came, or EOF): an idle direction holds no pipe.
                        let h = std::mem::take(&mut live.holders[dir as usize]);
                        self.pool.give(h, 0);
                    }
                }
                Op::Send { dir, held } => {
                    let dst = side_fd(&live.client, &live.backend, dir.dst());
                    let event = relay::send(&mut live.holders[dir as usize], dst, dir, held);
                    if let Event::Sent { bytes, .. } = event {
                        self.count_bytes(live, dir, bytes as u64);
                    }
                    live.conn.handle(now, event);
                    if live.conn.held(dir) == 0 {
                        let h = std::mem::take(&mut live.holders[dir as usize]);
                        self.pool.give(h, 0);
                    }
                }
                Op::ShutdownWrite(side) => {
                    if let Err(e) = SockRef::from(&side_fd(&live.client, &live.backend, side))
                        .shutdown(std::net::Shutdown::Write)
                    {
                        live.conn.handle(
                            now,
                            Event::Failed {
                                side,
                                reset: sys::is_reset(&e),
                            },
                        );
                    }
                }
                Op::Yield => {
                    self.runq.push(slot);
                    return Ok(false);
                }
                Op::Close {
                    reset_client,
                    reset_backend,
                    ..
                } => {
                    if reset_client {
                        let _ = SockRef::from(&live.client).set_linger(Some(Duration::ZERO));
                    }
                    if let (true, Some(b)) = (reset_backend, live.backend.as_ref()) {
                        let _ = SockRef::from(b).set_linger(Some(Duration::ZERO));
                    }
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Release everything of a closed connection and free its slot.
    fn finish(&mut self, slot: u32, mut live: Live) -> io::Result<()> {
        let generation = self.slots[slot as usize].generation;
        if live.watching {
            self.ring.unwatch(slot, generation, true)?;
            self.ring.unwatch(slot, generation, false)?;
        }
        if live.connect_in_flight {
            self.ring.cancel_connect(slot, generation)?;
        }
        self.release_hold(&mut live);
        let reason = live.conn.close_reason().unwrap_or(CloseReason::Shutdown);
        let worker = self.index;
        let entry = self.service_of(live.pin, live.service);
        let sc = entry.stats.worker(worker);
        sc.closed.add(1);
        if reason.is_failure() {
            sc.failed.add(1);
        }
        if live.connected {
            let ec = entry
                .endpoint(live.endpoint.expect("connected endpoint"))
                .stats
                .worker(worker);
            ec.closed.add(1);
            if matches!(reason, CloseReason::Broken(_)) {
                ec.failed.add(1);
            }
        }
        for dir in Dir::BOTH {
            let h = std::mem::take(&mut live.holders[dir as usize]);
            self.pool.give(h, live.conn.held(dir));
        }
        self.to_close.push(live.client);
        if let Some(b) = live.backend.take() {
            self.to_close.push(b);
        }
        self.spare_tried.push(std::mem::take(&mut live.tried));
        self.unpin(live.pin);
        let s = &mut self.slots[slot as usize];
        s.generation = s.generation.wrapping_add(1);
        self.free.push(slot);
        self.active -= 1;
        Ok(())
    }

    fn count_bytes(&self, live: &Live, dir: Dir, bytes: u64) {
        let entry = self.service_of(live.pin, live.service);
        let ep = entry.endpoint(live.endpoint.expect("relaying to an endpoint"));
        for c in [entry.stats.worker(self.index), ep.stats.worker(self.index)] {
            match dir {
                Dir::ToBackend => c.bytes_to_backend.add(bytes),
                Dir::ToClient => c.bytes_to_client.add(bytes),
            }
        }
    }

    fn service_of(&self, pin: usize, service: ServiceId) -> &ServiceEntry {
        self.pins[pin]
            .as_ref()
            .expect("pinned snapshot")
            .snapshot
            .service(service)
    }

    /// The pin of the currently published snapshot (pinning it if it is new).
    fn pin_current(&mut self) -> usize {
        let snapshot = self.reader.load();
        if let Some(i) = self.current_pin {
            if Arc::ptr_eq(
                &self.pins[i].as_ref().expect("current pin").snapshot,
                snapshot,
            ) {
                return i;
            }
        }
        self.selector.retain_services(snapshot);
        let pin = Pin {
            snapshot: Arc::clone(snapshot),
            live: 0,
        };
        let i = match self.pins.iter().position(Option::is_none) {
            Some(i) => {
                self.pins[i] = Some(pin);
                i
            }
            None => {
                self.pins.push(Some(pin));
                self.pins.len() - 1
            }
        };
        let old = self.current_pin.replace(i);
        if let Some(old) = old {
            if self.pins[old].as_ref().is_some_and(|p| p.live == 0) {
                self.pins[old] = None;
            }
        }
        i
    }

    fn unpin(&mut self, pin: usize) {
        let p = self.pins[pin].as_mut().expect("pinned snapshot");
        p.live -= 1;
        if p.live == 0 && self.current_pin != Some(pin) {
            self.pins[pin] = None;
        }
    }

    /// Check the idle deadline of a slice of the slab (all of it once per IDLE_PASS_TICKS),
    /// and reset the connections whose endpoint was marked down with `shutdown_sessions`
    /// since they connected (its shutdown epoch moved: one relaxed load per connection).
    fn check_idle_slice(&mut self) -> io::Result<()> {
        let n = self.slots.len();
        if n == 0 {
            return Ok(());
        }
        let step = n.div_ceil(IDLE_PASS_TICKS);
        for _ in 0..step {
            let slot = (self.idle_cursor % n) as u32;
            self.idle_cursor = (self.idle_cursor + 1) % n;
            let now = self.now;
            let Some(live) = self.slots[slot as usize].live.as_mut() else {
                continue;
            };
            if live.connected && !live.conn.is_closed() {
                let endpoint = live.endpoint.expect("connected endpoint");
                let stats = &self.pins[live.pin]
                    .as_ref()
                    .expect("pinned snapshot")
                    .snapshot
                    .service(live.service)
                    .endpoint(endpoint)
                    .stats;
                if stats.shutdown_epoch() != live.shutdown_epoch {
                    tracing::debug!(worker = self.index, client = %live.client_addr,
                        "endpoint marked down (shutdown_sessions): resetting the connection");
                    live.conn.abort();
                    self.drive(slot)?;
                    continue;
                }
            }
            if live.conn.deadline().is_some_and(|d| now >= d) {
                // Bytes still in the kernel's queues of either socket are as much "in flight"
                // as those in a holder: the core resets both sides then.
                let queued = sys::queued_bytes(live.client.as_fd())
                    + live
                        .backend
                        .as_ref()
                        .map_or(0, |b| sys::queued_bytes(b.as_fd()));
                live.conn.handle_timeout_queued(now, queued > 0);
                self.drive(slot)?;
            }
        }
        Ok(())
    }

    /// End: every connection still open is reset on both sides (SO_LINGER 0), never closed
    /// with a FIN, and every socket is closed before this returns.
    fn shutdown(mut self) -> io::Result<WorkerExit> {
        self.draining = Some(self.now);
        self.unwatch_listeners()?;
        let mut reset = 0;
        for slot in 0..self.slots.len() as u32 {
            if let Some(live) = self.slots[slot as usize].live.as_mut() {
                live.conn.abort();
                reset += 1;
                self.drive(slot)?;
            }
        }
        self.ring.submit_and_wait(Some(Duration::ZERO))?;
        self.to_close.clear();
        for l in &mut self.listeners {
            l.socket = None;
        }
        self.loop_stats.set_active(0);
        self.loop_stats.set_accepting(false);
        if let Some(done) = self.aborted.take() {
            // The ring (which may still reference sockets) goes first: with SO_LINGER 0 set,
            // their last reference going away sends the RST.
            drop(self.ring);
            let _ = done.send(());
        }
        Ok(WorkerExit { reset })
    }
}

fn side_fd<'a>(
    client: &'a OwnedFd,
    backend: &'a Option<OwnedFd>,
    side: Side,
) -> std::os::fd::BorrowedFd<'a> {
    match side {
        Side::Client => client.as_fd(),
        Side::Backend => backend.as_ref().expect("backend socket").as_fd(),
    }
}
