//! The connection table of one worker, sans-IO: every decision above one connection.
//!
//! A [`ConnTable`] owns a slab of connections addressed by [`ConnHandle`]s (slot +
//! generation, so that a late report about a connection that is gone never reaches the one
//! that reuses its slot), the snapshot pins, the endpoints each connection tried, the hold
//! budgets (`hold_when_empty`), the connections parked for lack of fds, the accept budget and
//! backoff, the drain state, the incremental idle sweep and the endpoints' shutdown epochs.
//! It does no IO: no syscall, no clock (time comes in as `now`), no randomness (the
//! picker's seed comes in with [`TableConfig`]). Like quinn-proto's `Endpoint`, it is fed
//! with inputs ([`ConnTable::accept`], [`ConnTable::handle`], [`ConnTable::connect_started`],
//! [`ConnTable::connect_finished`], [`ConnTable::tick`], ...) and drained with
//! [`ConnTable::poll`], which returns the next [`Output`] to execute. The worker executes
//! them against sockets and a driver; the simulator (`tests/conn_simulation.rs`) executes them
//! against a simulated world with simulated time.
//!
//! Each connection carries the caller's resources `R` (the worker's: its two sockets and
//! holders); the table hands them out with [`ConnTable::resources_mut`] and gives them back
//! in [`Output::Close`], and never looks inside.
//!
//! The protocol with the executor, per output (answers go in before the next `poll`):
//! - [`Output::Connect`]: open a backend socket and start connecting; answer
//!   [`ConnTable::connect_started`] or [`ConnTable::connect_not_started`]; later, when the
//!   connect completes, [`ConnTable::connect_finished`].
//! - [`Output::Receive`] / [`Output::Send`]: move bytes; answer with the resulting
//!   [`ConnEvent`] through [`ConnTable::handle`]. [`Output::ShutdownWrite`]: answer only a
//!   failure (`ConnEvent::Failed`). [`Output::Watch`]: no answer (readiness arrives as events).
//! - [`Output::IdleExpired`]: answer [`ConnTable::idle_expired`] with whether the kernel
//!   still queues bytes of the connection.
//! - [`Output::Close`]: release the resources; the handle is dead from now on.
//!
//! The rooms: this file has the types, the slab and the inputs and turns of one connection;
//! `accept.rs` the accept budget, backoff and admission of a new connection; `connect.rs`
//! picking an endpoint, holding, parking and retrying; `pins.rs` the snapshot pins;
//! `sweep.rs` the tick (idle sweep, shutdown epochs), the drain and the end of the worker.
//!
//! Must not: touch a socket, read the clock, log at a level above `debug` on the hot path,
//! or panic on any order of inputs the executor may produce (stale handles are ignored).

mod accept;
mod connect;
mod listing;
mod pins;
mod sweep;

pub use accept::Refused;
pub use connect::{ConnectOutcome, NotStarted, ProxyHeader};

use super::conn::{CloseReason, Conn, ConnEvent, Dir, Op, Side};
use super::refusals::RefusalLog;
use super::select::Picker;
use crate::model::Protocol;
use crate::table::{EndpointId, RoutingSnapshot, ServiceId};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Names one connection of a table: slot and generation. A handle whose connection ended
/// is stale: every input naming it is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnHandle {
    slot: u32,
    generation: u32,
}

impl ConnHandle {
    /// Rebuild a handle from the tag a driver carried (slot, generation).
    pub fn from_parts(slot: u32, generation: u32) -> ConnHandle {
        ConnHandle { slot, generation }
    }

    pub fn slot(self) -> u32 {
        self.slot
    }

    pub fn generation(self) -> u32 {
        self.generation
    }
}

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
    pub fn of(settings: &crate::model::Settings) -> WorkerLimits {
        WorkerLimits {
            max_connections: settings.max_connections_per_worker.max(1),
            max_held: settings.max_held_per_worker,
            max_held_per_service: settings.max_held_per_service,
        }
    }
}

/// What a table is told at creation.
#[derive(Debug, Clone, Copy)]
pub struct TableConfig {
    /// The worker's index: its slot in every counter block.
    pub worker: usize,
    pub limits: WorkerLimits,
    /// Bytes one holder (pipe or buffer) takes.
    pub holder_capacity: usize,
    /// Seed of the balancing policies' PRNG (never 0 after mixing).
    pub seed: u64,
}

/// What the executor must do next; see the module documentation for the answers.
#[derive(Debug)]
pub enum Output<R> {
    /// Open a nonblocking backend socket, leaving from `transparent_from` if set
    /// (transparent forwarding), and connect it to `addr` within `timeout`.
    Connect {
        conn: ConnHandle,
        addr: SocketAddr,
        timeout: Duration,
        transparent_from: Option<SocketAddr>,
    },
    /// Start reporting readiness of both sockets.
    Watch { conn: ConnHandle },
    /// Move at most `max` bytes from `dir.src()` into the direction's holder.
    Receive {
        conn: ConnHandle,
        dir: Dir,
        max: usize,
    },
    /// Move the `held` bytes of the direction's holder to `dir.dst()`.
    Send {
        conn: ConnHandle,
        dir: Dir,
        held: usize,
    },
    /// Pass a FIN on: shut down writing on `side`.
    ShutdownWrite { conn: ConnHandle, side: Side },
    /// The idle deadline passed: tell whether the kernel still queues bytes of it.
    IdleExpired { conn: ConnHandle },
    /// The connection ended: stop watching (if `watching`), cancel the connect (if
    /// `connect_in_flight`), reset the sides named (SO_LINGER 0), give the holders back
    /// (with the bytes they still `held`), close the sockets.
    Close {
        conn: ConnHandle,
        resources: R,
        reset_client: bool,
        reset_backend: bool,
        reason: CloseReason,
        watching: bool,
        connect_in_flight: bool,
        held: [usize; 2],
    },
}

struct Pin {
    snapshot: Arc<RoutingSnapshot>,
    live: u32,
}

/// One connection's state above its core: see the module documentation.
struct Live<R> {
    /// Number of this connection on its worker (PROXY v2 unique id, logs).
    id: u64,
    conn: Conn,
    resources: R,
    client_addr: SocketAddr,
    /// The client is an address of this node (decided at accept): Local Services route
    /// it with the cluster endpoints.
    from_node: bool,
    pin: usize,
    service: ServiceId,
    endpoint: Option<EndpointId>,
    /// Connected to `endpoint` (counted as opened there).
    connected: bool,
    /// The endpoint's shutdown epoch when the connect completed: when it moves, the
    /// endpoint was marked down with `shutdown_sessions` and the sweep resets us.
    shutdown_epoch: u64,
    connect_in_flight: bool,
    /// The endpoint chosen by the last `Output::Connect`, and its connect timeout, until
    /// the executor says whether the attempt started.
    choosing: Option<(EndpointId, Duration)>,
    /// Run the connect decision again before the core's next op (a parked retry).
    retry_connect: bool,
    /// Since when this connection waits for an fd to open its backend socket.
    parked_since: Option<Instant>,
    /// Since when this connection waits for its Service to have a usable endpoint.
    held_since: Option<Instant>,
    /// When the client connection was accepted (the Service's duration histogram).
    opened_at: Instant,
    /// When the last backend connect was started (the connect-latency histogram).
    connect_started: Instant,
    /// Counted in the hold budgets: the stable id of the Service port it is counted
    /// against (however it was reached: NodePort, external or LoadBalancer IP).
    held: Option<u64>,
    /// The listener the client connected to (to find its Service again in a newer snapshot).
    listener: ListenerKey,
    /// Bytes sent each way (`Dir` order), for `ctl flows`.
    moved: [u64; 2],
    watching: bool,
    tried: Vec<EndpointId>,
}

struct Slot<R> {
    generation: u32,
    live: Option<Live<R>>,
    /// In `to_drive` (or the one being driven).
    scheduled: bool,
}

/// The connection table of one worker: see the module documentation.
pub struct ConnTable<R> {
    config: TableConfig,
    slots: Vec<Slot<R>>,
    free: Vec<u32>,
    pins: Vec<Option<Pin>>,
    current_pin: Option<usize>,
    picker: Picker,
    /// Live connections, held ones included.
    active: u32,
    /// Held connections (counted in `active` too).
    held: u32,
    /// Held connections per Service port (by NodePort).
    held_per_port: HashMap<u64, u32, ahash::RandomState>,
    /// Connections to run, in order; `current` is the one running.
    to_drive: VecDeque<u32>,
    current: Option<u32>,
    /// Connections that spent their turn's budget (`Op::Yield`).
    yielded: Vec<u32>,
    /// Outputs decided outside a connection's turn (held retries, the sweep).
    outputs: VecDeque<Output<R>>,
    /// Connections waiting for fds to open their backend socket.
    parked: VecDeque<ConnHandle>,
    /// Parked connections still to retry in this round (stops at the first short of fds).
    parked_retries: usize,
    /// Connections waiting for their Service to have a usable endpoint (hold_when_empty).
    holding: Vec<ConnHandle>,
    idle_cursor: usize,
    /// Set by [`Self::drain`]: no accepting, done when empty or at this deadline.
    draining: Option<Instant>,
    /// No accepts until then (fd exhaustion backoff).
    backoff_until: Option<Instant>,
    backoff: Duration,
    /// Connections accepted so far (ids).
    next_id: u64,
    /// When the transparent-mode routing hint was last logged (rate limit).
    last_hint: Option<Instant>,
    /// Clients refused by source ranges: the rate-limited log line.
    refusal_log: RefusalLog,
    /// Tried-lists of finished connections, reused (no allocation per connection).
    spare_tried: Vec<Vec<EndpointId>>,
}

/// How often the executor calls [`ConnTable::tick`].
pub const TICK: Duration = Duration::from_millis(100);
/// Ticks per full pass of the idle sweep over the slab.
const IDLE_PASS_TICKS: usize = 10;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one transparent-mode routing hint per worker per this period.
const HINT_EVERY: Duration = Duration::from_secs(10);

impl<R> ConnTable<R> {
    pub fn new(config: TableConfig) -> ConnTable<R> {
        ConnTable {
            picker: Picker::new(config.seed),
            config,
            slots: Vec::new(),
            free: Vec::new(),
            pins: Vec::new(),
            current_pin: None,
            active: 0,
            held: 0,
            held_per_port: HashMap::default(),
            to_drive: VecDeque::new(),
            current: None,
            yielded: Vec::new(),
            outputs: VecDeque::new(),
            parked: VecDeque::new(),
            parked_retries: 0,
            holding: Vec::new(),
            idle_cursor: 0,
            draining: None,
            backoff_until: None,
            backoff: BACKOFF_MIN,
            next_id: 0,
            last_hint: None,
            refusal_log: RefusalLog::default(),
            spare_tried: Vec::new(),
        }
    }

    // -- inputs about one connection ----------------------------------------------------

    /// Feed one event of the connection core (readiness, the result of a `Receive`, `Send`
    /// or `ShutdownWrite`). Bytes sent are counted for the Service and the endpoint.
    pub fn handle(&mut self, now: Instant, conn: ConnHandle, event: ConnEvent) {
        let worker = self.config.worker;
        let Some(live) = self.live_mut(conn) else {
            return;
        };
        live.conn.handle(now, event);
        if let ConnEvent::Sent { dir, bytes } = event {
            live.moved[dir as usize] += bytes as u64;
            let (pin, service, endpoint) = (live.pin, live.service, live.endpoint);
            let entry = self.service_of(pin, service);
            let ep = entry.endpoint(endpoint.expect("relaying to an endpoint"));
            for c in [entry.stats.worker(worker), ep.stats.worker(worker)] {
                match dir {
                    Dir::ToBackend => c.bytes_to_backend.add(bytes as u64),
                    Dir::ToClient => c.bytes_to_client.add(bytes as u64),
                }
            }
        }
        self.schedule(conn.slot);
    }

    /// The connection's resources, while it lives.
    pub fn resources_mut(&mut self, conn: ConnHandle) -> Option<&mut R> {
        self.live_mut(conn).map(|l| &mut l.resources)
    }

    /// The connection's resources, while it lives.
    pub fn resources(&self, conn: ConnHandle) -> Option<&R> {
        self.live(conn).map(|l| &l.resources)
    }

    /// Bytes the connection's core counts in the direction's holder (0 for a stale handle).
    pub fn held_bytes(&self, conn: ConnHandle, dir: Dir) -> usize {
        self.live(conn).map_or(0, |l| l.conn.held(dir))
    }

    /// Whether readiness of the connection's sockets is being reported (`Output::Watch`
    /// was executed and the connection lives): a multishot report that ended is re-armed.
    pub fn is_watching(&self, conn: ConnHandle) -> bool {
        self.live(conn).is_some_and(|l| l.watching)
    }

    /// The client's address.
    pub fn client_addr(&self, conn: ConnHandle) -> Option<SocketAddr> {
        self.live(conn).map(|l| l.client_addr)
    }

    // -- running ------------------------------------------------------------------------

    /// The next output to execute, or `None` when every connection waits for an input.
    pub fn poll(&mut self, now: Instant) -> Option<Output<R>> {
        loop {
            if let Some(out) = self.outputs.pop_front() {
                return Some(out);
            }
            if let Some(slot) = self.current {
                if let Some(out) = self.step(now, slot) {
                    return Some(out);
                }
                self.current = None;
                if let Some(s) = self.slots.get_mut(slot as usize) {
                    s.scheduled = false;
                }
                continue;
            }
            if let Some(slot) = self.to_drive.pop_front() {
                self.current = Some(slot);
                continue;
            }
            if self.parked_retries > 0 {
                self.parked_retries -= 1;
                let Some(h) = self.parked.pop_front() else {
                    self.parked_retries = 0;
                    continue;
                };
                if let Some(live) = self.live_mut(h) {
                    live.retry_connect = true;
                    self.schedule(h.slot);
                }
                continue;
            }
            return None;
        }
    }

    /// Connections that yielded get their next turn (once per loop iteration).
    pub fn resume_yielded(&mut self) {
        for slot in std::mem::take(&mut self.yielded) {
            self.schedule(slot);
        }
    }

    /// Whether connections wait for a next turn ([`Self::resume_yielded`]).
    pub fn has_yielded(&self) -> bool {
        !self.yielded.is_empty()
    }

    /// Run one op of connection `slot`; `None` when it waits, yielded or closed.
    fn step(&mut self, now: Instant, slot: u32) -> Option<Output<R>> {
        let conn = self.handle_of(slot);
        // The connection stays in its slot while it runs: `Live` is large, and moving it
        // out and back for each output was a memcpy in every step. Only starting a connect
        // (which needs the table too) and the close take it out.
        loop {
            let live = self.slots.get_mut(slot as usize)?.live.as_mut()?;
            let op = if std::mem::take(&mut live.retry_connect) {
                Op::Connect
            } else {
                live.conn.poll_op()?
            };
            match op {
                Op::Connect => {
                    let mut live = self.slots[slot as usize].live.take()?;
                    let out = self.start_connect(now, conn, &mut live);
                    self.slots[slot as usize].live = Some(live);
                    if out.is_some() {
                        return out;
                    }
                }
                Op::Watch => {
                    live.watching = true;
                    return Some(Output::Watch { conn });
                }
                Op::Receive { dir, max } => return Some(Output::Receive { conn, dir, max }),
                Op::Send { dir, held } => return Some(Output::Send { conn, dir, held }),
                Op::ShutdownWrite(side) => return Some(Output::ShutdownWrite { conn, side }),
                Op::Yield => {
                    self.yielded.push(slot);
                    return None;
                }
                Op::Close {
                    reset_client,
                    reset_backend,
                    reason,
                } => {
                    let live = self.slots[slot as usize].live.take()?;
                    self.current = None;
                    self.slots[slot as usize].scheduled = false;
                    return Some(self.finish(now, slot, live, reset_client, reset_backend, reason));
                }
            }
        }
    }

    /// Count the end of a closed connection, release its pin and hold, free its slot.
    fn finish(
        &mut self,
        now: Instant,
        slot: u32,
        mut live: Live<R>,
        reset_client: bool,
        reset_backend: bool,
        reason: CloseReason,
    ) -> Output<R> {
        let conn = self.handle_of(slot);
        self.release_hold(&mut live);
        let worker = self.config.worker;
        let entry = self.service_of(live.pin, live.service);
        let sc = entry.stats.worker(worker);
        sc.closed.add(1);
        if let Some(h) = entry.stats.histograms(worker) {
            h.duration.observe(
                &crate::stats::DURATION_BOUNDS_NS,
                now.saturating_duration_since(live.opened_at),
            );
        }
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
        let held = [
            live.conn.held(Dir::ToBackend),
            live.conn.held(Dir::ToClient),
        ];
        self.spare_tried.push(std::mem::take(&mut live.tried));
        self.unpin(live.pin);
        let s = &mut self.slots[slot as usize];
        s.generation = s.generation.wrapping_add(1);
        self.free.push(slot);
        self.active -= 1;
        Output::Close {
            conn,
            resources: live.resources,
            reset_client,
            reset_backend,
            reason,
            watching: live.watching,
            connect_in_flight: live.connect_in_flight,
            held,
        }
    }

    // -- helpers ------------------------------------------------------------------------

    fn handle_of(&self, slot: u32) -> ConnHandle {
        ConnHandle {
            slot,
            generation: self.slots[slot as usize].generation,
        }
    }

    fn live(&self, conn: ConnHandle) -> Option<&Live<R>> {
        self.slots
            .get(conn.slot as usize)
            .filter(|s| s.generation == conn.generation)
            .and_then(|s| s.live.as_ref())
    }

    fn live_mut(&mut self, conn: ConnHandle) -> Option<&mut Live<R>> {
        self.slots
            .get_mut(conn.slot as usize)
            .filter(|s| s.generation == conn.generation)
            .and_then(|s| s.live.as_mut())
    }

    /// Takes connection `conn` out of its slot (to be put back or closed), if it is still
    /// the one the handle names.
    fn take_live(&mut self, conn: ConnHandle) -> Option<Live<R>> {
        self.slots
            .get_mut(conn.slot as usize)
            .filter(|s| s.generation == conn.generation)
            .and_then(|s| s.live.take())
    }

    /// Queue connection `slot` to run (once; not the one running now).
    fn schedule(&mut self, slot: u32) {
        if self.current == Some(slot) {
            return;
        }
        let s = &mut self.slots[slot as usize];
        if !s.scheduled {
            s.scheduled = true;
            self.to_drive.push_back(slot);
        }
    }
}
