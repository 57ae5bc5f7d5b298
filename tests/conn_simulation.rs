//! A seeded, replayable simulation of many interleaved proxied connections, driving the
//! production connection table ([`sluice::dataplane::testing::ConnTable`], the sans-IO
//! core of every worker) the way the worker does — feed it inputs, drain `poll()`, execute
//! each output, answer it — but against a simulated world and a simulated clock instead of
//! sockets and a driver: no syscalls, no threads. Routing comes from a real
//! `RoutingSnapshot` built from a TOML model, so endpoint choice, retries on untried
//! endpoints, the idle sweep and the counters are the production ones. Everything random
//! comes from one splitmix64 stream seeded per run, so a seed replays exactly.
//!
//! # The world
//!
//! Each connection has two peers (the client and the backend), each with a random byte
//! stream to send (0..~200 KB) and a plan:
//! - *done*: both peers write everything and half-close (FIN) at random points — right away,
//!   or only after having received some or all of the other stream — so either side may
//!   FIN first while the other direction keeps flowing;
//! - *reset*: one peer resets (or fails without RST) mid-stream; whatever the core was
//!   holding towards it is lost, and the bytes it queued but the proxy has not read are
//!   discarded, as a kernel does on RST;
//! - *idle*: both peers stop writing at random points without closing, and the connection
//!   has a short idle timeout; sometimes one peer also stops reading at a random point (a
//!   stuck reader), so bytes are still on their way when the timeout fires.
//!
//! The proxy's two sockets are modelled as a receive queue (peer → proxy) and a send queue
//! (proxy → peer), each with a small random capacity so that would-block is frequent, plus
//! FIN and error flags. The driver's holders are byte queues of the connection's
//! `holder_capacity`. Ops are executed with the semantics the real driver reports:
//! - `Receive{dir,max}` → `Received{1..=min(max, queued)}`, `Received{0}` once the peer's
//!   FIN is reached, `ReceiveWouldBlock` when nothing is queued, and — while the holder is
//!   not empty — sometimes `ReceiveWouldBlock` although bytes are queued (the pipe-full
//!   ambiguity of splice); `Failed` once the peer reset.
//! - `Send{dir,held}` → `Sent{1..=min(held, room)}`, `SendWouldBlock` when the send queue is
//!   full, `Failed` once the peer reset.
//! - `ShutdownWrite(side)` queues a FIN behind the bytes already sent to that peer.
//! - `Connect` follows a per-connection script: `Connected` or a failure (both started at
//!   once and completed later, like an io_uring completion), or a local failure (the attempt
//!   could not even start). A script that ends with "no endpoint" routes the connection to a
//!   Service with exactly as many endpoints as attempts before it, so the table finds none
//!   left to try; every attempt must go to an endpoint not tried yet.
//! - `Watch` reports the current state of both sockets once.
//! - `IdleExpired` (from the table's idle sweep) is answered with whether bytes still sit in
//!   either socket's queues, as the worker asks the kernel.
//! - `Close` makes the peers see a RST, or a FIN behind what was sent.
//!
//! Readiness is edge-triggered and stingy: after a would-block, a `Ready` for that side is
//! delivered only once the peer actually made progress (wrote, half-closed, read, reset),
//! and a reset is reported as readable+writable (as POLLERR is by the io_uring driver).
//! Spurious `Ready` events (with any flags) are injected too.
//!
//! A scheduler picks, step by step and at random, which connection is accepted, which peer
//! makes progress, which pending event (readiness or connect completion) is delivered —
//! delivering an event runs the table's outputs, as in the worker — when yielded connections
//! run again, and when time advances (then the table ticks: its idle sweep). When nothing can
//! happen any more but idle deadlines are pending, time jumps to the earliest.
//!
//! # What is asserted
//!
//! - Every byte arrives at its peer exactly once, in order, unmodified (each read is compared
//!   with the sender's stream at the reader's offset), and the core's `held` always equals
//!   the bytes really in the holder.
//! - A FIN reaches a peer only after every byte the other peer wrote, and only after that
//!   peer's own FIN when it comes from `ShutdownWrite`; no `Send` after `ShutdownWrite`, no
//!   `Receive` after EOF was reported.
//! - Each connection ends with exactly the `Close` its plan calls for: `Done` (no reset) when
//!   both directions finished, with both streams complete; `Broken(side)` resetting both
//!   sides after a failure on `side`; `IdleTimeout` for idle ones, never before
//!   `idle_timeout` without a byte moved, with FIN both ways when nothing was in flight and
//!   with a reset of both sides when bytes were still held or queued in a socket (told to
//!   the core as the driver does, from the kernel's queue sizes) — a reader must never take a
//!   cut stream for a complete one; `ConnectFailed(last)` resetting both sides after
//!   exactly `1 + connect_retries` failed attempts (or at once for `Local`); `NoEndpoint`.
//! - Each connect attempt goes to an endpoint of the connection's Service not tried before.
//! - The table's bookkeeping: the bytes it says a holder has equal the bytes really in it
//!   (also at `Close`); at the end no connection is left, at most one snapshot is pinned,
//!   and the Service counters the table keeps add up (opened = closed = connections,
//!   retries = failed attempts that were retried).
//! - No op after `Close` (also when events keep arriving for it); `Receive` never with
//!   `max == 0` or more than the holder's room, `Send` never with `held == 0`.
//! - No stall: the world reaches quiescence with every connection closed and every peer
//!   done, within a step bound (livelock) and without waiting for an event that never comes.
//!
//! # Running it
//!
//! `cargo test --test conn_simulation` runs 50 seeds of 200 connections. Environment:
//! `SLUICE_SIM_SEEDS=N` runs seeds `0..N`, `SLUICE_SIM_SEED=S` runs one seed,
//! `SLUICE_SIM_CONNS=N` sets the connections per seed, `SLUICE_SIM_TRACE=ID` prints every op
//! and event of connection `ID` (use it with `SLUICE_SIM_SEED`). A failure prints the seed
//! and the command that replays it.
//!
//! # Not modelled
//!
//! Real kernel buffer accounting (pipe pages, TCP windows, coalescing), partial failures of
//! `Watch`, the driver's holder pool, connect timeouts (a `TimedOut` result just arrives),
//! and anything multi-threaded. Holding, parking, the hold budgets, drain/abort and
//! endpoints marked down are exercised by the scenario tests at the end of this file, on the
//! same production table.

use sluice::dataplane::testing::{
    CloseReason, ConnEvent, ConnHandle, ConnTable, ConnectFailure, ConnectOutcome, Dir, NotStarted,
    Output, Side, TableConfig, WorkerLimits, TICK,
};
use sluice::dataplane::ListenerKey;
use sluice::model::{Model, Protocol};
use sluice::table::{RoutingSnapshot, StatsRegistry};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEFAULT_SEEDS: u64 = 50;
const DEFAULT_CONNS: usize = 200;
/// Idle timeout of connections not meant to go idle: longer than any simulated run.
const LONG_IDLE: Duration = Duration::from_secs(7 * 86_400);
/// Idle timeouts of connections meant to go idle (one Service each).
const SHORT_IDLE: [u64; 4] = [20, 30, 45, 60];
/// Connect retries a Service may have in the simulation.
const MAX_RETRIES: u32 = 3;
/// First NodePort of the simulated Services.
const FIRST_PORT: u16 = 30000;
const SIDES: [Side; 2] = [Side::Client, Side::Backend];

#[test]
fn interleaved_connections_deliver_every_byte_once_and_close_as_planned() {
    let conns = env_u64("SLUICE_SIM_CONNS").map_or(DEFAULT_CONNS, |n| n as usize);
    let seeds: Vec<u64> = match env_u64("SLUICE_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("SLUICE_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect(),
    };
    let mut total = Stats::default();
    for &seed in &seeds {
        total.add(&run_seed(seed, conns));
    }
    eprintln!("{} seeds x {conns} connections: {total}", seeds.len());
    // The run must exercise what it claims to test.
    assert!(total.closed_done > 0 && total.closed_broken > 0 && total.closed_idle > 0);
    assert!(total.closed_idle_reset > 0 && total.closed_idle_reset < total.closed_idle);
    assert!(total.connect_failures > 0 && total.spurious_would_blocks > 0);
    assert!(total.yields > 0 && total.bytes_after_half_close > 0);
}

#[test]
fn a_seed_replays_exactly() {
    let a = run_seed(7, 40);
    let b = run_seed(7, 40);
    assert_eq!(a, b);
    assert_ne!(a, run_seed(8, 40));
}

/// Runs one seed to quiescence and checks every connection's outcome.
fn run_seed(seed: u64, conns: usize) -> Stats {
    let _hint = ReplayHint(seed, conns);
    let trace = env_u64("SLUICE_SIM_TRACE").map(|id| id as usize);
    let mut world = World::new(seed, conns, trace);
    world.run();
    world.check_outcomes();
    world.check_table();
    world.stats
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?}")))
}

/// Prints how to replay the seed when the test panics.
struct ReplayHint(u64, usize);

impl Drop for ReplayHint {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let conns = if self.1 == DEFAULT_CONNS {
                String::new()
            } else {
                format!("SLUICE_SIM_CONNS={} ", self.1)
            };
            eprintln!(
                "\nconn_simulation failed with seed {seed}; replay it with:\n  \
                 {conns}SLUICE_SIM_SEED={seed} cargo test --test conn_simulation\n\
                 (add SLUICE_SIM_TRACE=<connection id> to trace one connection)\n",
                seed = self.0
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Randomness

/// splitmix64: tiny, fast, and good enough to schedule a simulation.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        debug_assert!(lo <= hi);
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// True with probability `num / den`.
    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next_u64() % den < num
    }

    /// Roughly log-uniform in `lo..=hi`: small values are as likely as large magnitudes.
    fn log_range(&mut self, lo: usize, hi: usize) -> usize {
        let bits = usize::BITS - hi.leading_zeros();
        let top = 1usize << self.range(0, bits as usize);
        self.range(lo, top.clamp(lo, hi))
    }

    /// How many of `most` bytes one transfer moves: all of them half of the time, else
    /// uniform in `1..=most`.
    fn amount(&mut self, most: usize) -> usize {
        if self.chance(1, 2) {
            most
        } else {
            self.range(1, most)
        }
    }

    /// `n` bytes of random content.
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

// ---------------------------------------------------------------------------------------
// Plans: what each connection is going to do, decided up front from the seed

/// How the relaying part of a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Both peers send everything and FIN.
    Done,
    /// This peer fails mid-stream.
    Broken(Side),
    /// Both peers stop sending without closing.
    Idle,
}

/// One answer to `Output::Connect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectResult {
    Connected,
    Failed(ConnectFailure),
    NoEndpoint,
}

/// How a connection ended (the fields of `Output::Close` the spec decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Close {
    reset_client: bool,
    reset_backend: bool,
    reason: CloseReason,
}

/// The `Close` a connection must end with, and how many connect attempts lead there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expected {
    close: Close,
    connect_attempts: usize,
}

impl Expected {
    /// What the core must do with a connect script and an ending (the spec, restated).
    fn of(script: &[ConnectResult], retries: u32, ending: Ending) -> Expected {
        let reset = |reason| Close {
            reset_client: true,
            reset_backend: true,
            reason,
        };
        for (i, result) in script.iter().enumerate() {
            let connect_attempts = i + 1;
            let close = match *result {
                ConnectResult::Connected => match ending {
                    Ending::Done => Close {
                        reset_client: false,
                        reset_backend: false,
                        reason: CloseReason::Done,
                    },
                    Ending::Idle => Close {
                        reset_client: false,
                        reset_backend: false,
                        reason: CloseReason::IdleTimeout,
                    },
                    Ending::Broken(side) => reset(CloseReason::Broken(side)),
                },
                ConnectResult::NoEndpoint => {
                    // Not an attempt: the table finds no endpoint left and asks for none.
                    return Expected {
                        close: reset(CloseReason::NoEndpoint),
                        connect_attempts: i,
                    };
                }
                ConnectResult::Failed(f) if f == ConnectFailure::Local || i as u32 == retries => {
                    reset(CloseReason::ConnectFailed(f))
                }
                ConnectResult::Failed(_) => continue,
            };
            return Expected {
                close,
                connect_attempts,
            };
        }
        unreachable!("connect scripts end with a final answer")
    }
}

// ---------------------------------------------------------------------------------------
// Peers and sockets

/// The program at one end of a connection: a client, or a backend.
#[derive(Debug)]
struct Peer {
    /// Everything this peer means to send.
    out: Vec<u8>,
    /// Bytes of `out` written into the proxy's socket so far.
    written: usize,
    /// Stops writing here (`out.len()` unless the connection goes idle).
    write_limit: usize,
    /// Stops reading once this many bytes were received (a stuck reader).
    read_limit: usize,
    /// Half-closes once everything is written and this many bytes were received.
    fin_after_received: Option<usize>,
    fin_sent: bool,
    /// Fails once this many bytes are written: (`written`, with RST?).
    fail_at: Option<(usize, bool)>,
    failed: bool,
    /// Bytes received from the proxy (checked against the other peer's `out`).
    received: usize,
    /// Saw the proxy's FIN.
    eof: bool,
    /// Saw the proxy's RST.
    reset: bool,
}

impl Peer {
    fn new(out: Vec<u8>) -> Peer {
        Peer {
            write_limit: out.len(),
            read_limit: usize::MAX,
            out,
            written: 0,
            fin_after_received: None,
            fin_sent: false,
            fail_at: None,
            failed: false,
            received: 0,
            eof: false,
            reset: false,
        }
    }

    fn alive(&self) -> bool {
        !self.failed && !self.reset
    }
}

/// The proxy's socket towards one peer, with the network and the peer's kernel folded in.
#[derive(Debug, Default)]
struct Socket {
    /// Written by the peer, not yet received by the proxy.
    rx: Vec<u8>,
    rx_cap: usize,
    /// The peer's FIN, behind `rx`.
    rx_fin: bool,
    /// `Received{0}` was reported.
    eof_reported: bool,
    /// Sent by the proxy, not yet read by the peer.
    tx: Vec<u8>,
    tx_cap: usize,
    /// The proxy's FIN, behind `tx`; `by_shutdown` when it came from `ShutdownWrite`.
    tx_fin: bool,
    by_shutdown: bool,
    /// The peer failed: (with RST?).
    error: Option<bool>,
    /// The core saw a would-block and waits for an edge.
    read_armed: bool,
    write_armed: bool,
}

impl Socket {
    fn readable_now(&self) -> bool {
        !self.rx.is_empty() || self.rx_fin || self.error.is_some()
    }
}

/// What a connection's Service gives it (the plan's side of the model).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LinkConfig {
    idle_timeout: Duration,
    connect_retries: u32,
    /// Endpoints of the Service.
    endpoints: u32,
}

/// One simulated connection: its plan, its peers and sockets, and what the table did.
#[derive(Debug)]
struct Link {
    config: LinkConfig,
    /// The NodePort of its Service.
    node_port: u16,
    ending: Ending,
    script: Vec<ConnectResult>,
    expected: Expected,
    accepted: bool,
    /// Its handle in the table while it lives.
    handle: Option<ConnHandle>,
    connect_attempts: usize,
    /// Endpoints its attempts went to.
    tried: Vec<SocketAddr>,
    connected: bool,
    watching: bool,
    peers: [Peer; 2],
    sockets: [Socket; 2],
    holders: [Vec<u8>; 2],
    /// When the core last saw a byte move (or connected): for the idle check.
    last_move: Instant,
    closed: Option<Close>,
    /// Removed from the scheduler's active list.
    finished: bool,
}

/// What waits to be delivered to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// A readiness report.
    Event(ConnEvent),
    /// A connect completion.
    Connect(ConnectOutcome),
}

// ---------------------------------------------------------------------------------------
// Counters

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Stats {
    connections: u64,
    bytes: u64,
    ops: u64,
    receive_would_blocks: u64,
    spurious_would_blocks: u64,
    send_would_blocks: u64,
    readiness_edges: u64,
    spurious_ready: u64,
    drained_reads: u64,
    yields: u64,
    connect_failures: u64,
    bytes_after_half_close: u64,
    closed_done: u64,
    closed_broken: u64,
    closed_idle: u64,
    /// Idle closes with bytes still in flight (both sides reset).
    closed_idle_reset: u64,
    closed_connect: u64,
    steps: u64,
    /// Digest of (connection, close, time) for the replay test.
    outcome_digest: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.connections += o.connections;
        self.bytes += o.bytes;
        self.ops += o.ops;
        self.receive_would_blocks += o.receive_would_blocks;
        self.spurious_would_blocks += o.spurious_would_blocks;
        self.send_would_blocks += o.send_would_blocks;
        self.readiness_edges += o.readiness_edges;
        self.spurious_ready += o.spurious_ready;
        self.yields += o.yields;
        self.connect_failures += o.connect_failures;
        self.bytes_after_half_close += o.bytes_after_half_close;
        self.closed_done += o.closed_done;
        self.closed_broken += o.closed_broken;
        self.closed_idle += o.closed_idle;
        self.closed_idle_reset += o.closed_idle_reset;
        self.closed_connect += o.closed_connect;
        self.steps += o.steps;
        self.outcome_digest ^= o.outcome_digest;
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} conns, {} bytes relayed, {} ops, {} steps; would-block: {} receive ({} spurious), \
             {} send; {} readiness edges, {} spurious Ready, {} yields, {} connect failures, \
             {} bytes after a half-close; closed: {} done, {} broken, {} idle ({} with bytes in \
             flight, reset), {} connect/no endpoint",
            self.connections,
            self.bytes,
            self.ops,
            self.steps,
            self.receive_would_blocks,
            self.spurious_would_blocks,
            self.send_would_blocks,
            self.readiness_edges,
            self.spurious_ready,
            self.yields,
            self.connect_failures,
            self.bytes_after_half_close,
            self.closed_done,
            self.closed_broken,
            self.closed_idle,
            self.closed_idle_reset,
            self.closed_connect,
        )
    }
}

// ---------------------------------------------------------------------------------------
// The world

struct World {
    seed: u64,
    rng: Rng,
    start: Instant,
    now: Instant,
    /// The production connection table under test; a connection's resources are its link.
    table: ConnTable<usize>,
    snapshot: Arc<RoutingSnapshot>,
    links: Vec<Link>,
    /// Next link to accept.
    next_accept: usize,
    /// Links that may still do something (not closed, or peers still reading).
    active: Vec<usize>,
    /// Inputs waiting to be delivered, in no particular order.
    pending: Vec<(usize, Pending)>,
    /// Holder capacity of this run (one table, one capacity).
    holder_capacity: usize,
    stats: Stats,
    trace: Option<usize>,
}

impl World {
    fn new(seed: u64, n: usize, trace: Option<usize>) -> World {
        let mut rng = Rng(seed ^ 0x51ce_5eed_0000_0000);
        let start = Instant::now();
        // Tiny holders in some runs: many more partial moves and would-blocks.
        let holder_capacity = if rng.chance(1, 5) {
            rng.range(1, 512)
        } else {
            rng.range(4 << 10, 64 << 10)
        };
        let links = (0..n).map(|_| plan_link(&mut rng, start)).collect();
        let table = ConnTable::new(TableConfig {
            worker: 0,
            limits: WorkerLimits {
                max_connections: n as u32 + 1,
                max_held: 0,
                max_held_per_service: 0,
            },
            holder_capacity,
            seed: rng.next_u64(),
        });
        World {
            seed,
            rng,
            start,
            now: start,
            table,
            snapshot: sim_snapshot(),
            links,
            next_accept: 0,
            active: Vec::new(),
            pending: Vec::new(),
            holder_capacity,
            stats: Stats {
                connections: n as u64,
                ..Stats::default()
            },
            trace,
        }
    }

    fn trace(&self, c: usize, what: impl FnOnce() -> String) {
        if self.trace == Some(c) {
            eprintln!("[{:>12?}] #{c} {}", self.now - self.start, what());
        }
    }

    /// Runs until nothing can happen any more.
    fn run(&mut self) {
        let total: usize = self
            .links
            .iter()
            .map(|l| l.peers[0].out.len() + l.peers[1].out.len())
            .sum();
        let bound = 2_000_000 + 40 * total as u64;
        let mut idle_steps = 0usize;
        loop {
            self.stats.steps += 1;
            assert!(
                self.stats.steps <= bound,
                "seed {}: no quiescence after {bound} steps (livelock?)\n{}",
                self.seed,
                self.describe_open()
            );
            if self.step() {
                idle_steps = 0;
                continue;
            }
            idle_steps += 1;
            let all_accepted = self.next_accept == self.links.len();
            if !all_accepted || !self.pending.is_empty() || self.table.has_yielded() {
                continue;
            }
            if idle_steps < 4 * self.active.len() + 16 {
                continue;
            }
            idle_steps = 0;
            // Nothing was scheduled for a while: look at everything.
            self.active.retain(|&c| !self.links[c].finished);
            let can_act = self
                .active
                .iter()
                .any(|&c| SIDES.iter().any(|&p| self.peer_moves(c, p) != 0));
            if can_act {
                continue;
            }
            // Only connections meant to go idle may wait for their deadline.
            let open: Vec<&Link> = self.links.iter().filter(|l| l.closed.is_none()).collect();
            if open.is_empty() {
                return;
            }
            assert!(
                open.iter().all(|l| l.ending == Ending::Idle && l.connected),
                "seed {}: stalled — nothing can happen but connections are open\n{}",
                self.seed,
                self.describe_open()
            );
            // The earliest idle deadline (the core's is never earlier: it also counts
            // reading a FIN as activity), then a full pass of the table's sweep.
            let deadline = open
                .iter()
                .map(|l| l.last_move + l.config.idle_timeout)
                .min()
                .expect("open links");
            self.now = self.now.max(deadline);
            for _ in 0..10 {
                self.now += TICK;
                self.tick();
            }
        }
    }

    /// One random step; false when it found nothing to do.
    fn step(&mut self) -> bool {
        let roll = self.rng.range(0, 99);
        if roll < 3 && self.next_accept < self.links.len() {
            self.accept();
        } else if roll < 5 {
            self.now += Duration::from_micros(self.rng.range(1, 50_000) as u64);
            self.tick();
        } else if roll < 6 {
            return self.spurious_ready();
        } else if roll < 35 && !self.pending.is_empty() {
            let i = self.rng.range(0, self.pending.len() - 1);
            let (c, input) = self.pending.swap_remove(i);
            self.deliver(c, input);
        } else if roll < 45 && self.table.has_yielded() {
            self.stats.yields += 1;
            self.table.resume_yielded();
            self.run_table();
        } else {
            return self.peer_step();
        }
        true
    }

    fn accept(&mut self) {
        let c = self.next_accept;
        self.next_accept += 1;
        let l = &mut self.links[c];
        l.accepted = true;
        l.last_move = self.now;
        let listener = ListenerKey {
            addr: SocketAddr::from(([127, 0, 0, 1], l.node_port)),
            protocol: Protocol::Tcp,
        };
        let client = SocketAddr::from(([127, 0, 0, 2], 10_000 + (c % 50_000) as u16));
        let handle = self
            .table
            .accept(self.now, &self.snapshot, listener, client, c)
            .unwrap_or_else(|(why, _)| panic!("#{c}: accept refused: {why:?}"));
        self.links[c].handle = Some(handle);
        self.active.push(c);
        self.trace(c, || format!("accepted: {:?}", self.links[c].expected));
        self.run_table();
    }

    /// A tick of the table (its idle sweep looks at a slice of the slab), and what follows.
    fn tick(&mut self) {
        self.table.tick(self.now, &self.snapshot);
        self.run_table();
    }

    fn spurious_ready(&mut self) -> bool {
        if self.active.is_empty() {
            return false;
        }
        let c = self.active[self.rng.range(0, self.active.len() - 1)];
        if !self.links[c].watching || self.links[c].closed.is_some() {
            return false;
        }
        let side = SIDES[self.rng.range(0, 1)];
        let event = ConnEvent::Ready {
            side,
            readable: self.rng.chance(1, 2),
            writable: self.rng.chance(1, 2),
        };
        self.stats.spurious_ready += 1;
        self.pending.push((c, Pending::Event(event)));
        true
    }

    /// Delivers one input and runs the table's outputs, as the worker does. Inputs for a
    /// closed connection name a stale handle: the table must ignore them.
    fn deliver(&mut self, c: usize, input: Pending) {
        self.trace(c, || format!("input {input:?}"));
        let now = self.now;
        let handle = self.links[c].handle.expect("accepted");
        match input {
            Pending::Event(event) => self.feed(c, event),
            Pending::Connect(outcome) => {
                let l = &mut self.links[c];
                if l.closed.is_none() && outcome == ConnectOutcome::Connected {
                    l.connected = true;
                    l.last_move = now;
                }
                self.table.connect_finished(now, handle, outcome);
            }
        }
        self.run_table();
    }

    /// Feeds an event to the table and checks its bookkeeping against the world's.
    fn feed(&mut self, c: usize, event: ConnEvent) {
        let now = self.now;
        let l = &mut self.links[c];
        let handle = l.handle.expect("accepted");
        match event {
            ConnEvent::Received { bytes, .. } | ConnEvent::Sent { bytes, .. } if bytes > 0 => {
                l.last_move = now;
            }
            _ => {}
        }
        self.table.handle(now, handle, event);
        if l.closed.is_none() {
            for dir in Dir::BOTH {
                assert_eq!(
                    self.table.held_bytes(handle, dir),
                    l.holders[dir as usize].len(),
                    "#{c}: the table's held({dir:?}) differs from the holder after {event:?}"
                );
            }
        }
    }

    /// Executes the table's outputs until it has none, answering each as the worker does.
    fn run_table(&mut self) {
        for _ in 0..1_000_000 {
            let Some(out) = self.table.poll(self.now) else {
                return;
            };
            self.stats.ops += 1;
            self.execute(out);
        }
        panic!(
            "seed {}: the table never stops asking (1000000 outputs)",
            self.seed
        );
    }

    /// Executes one output against the world and answers it.
    fn execute(&mut self, out: Output<usize>) {
        let now = self.now;
        let c = match &out {
            Output::Close { resources, .. } => *resources,
            Output::Connect { conn, .. }
            | Output::Watch { conn }
            | Output::Receive { conn, .. }
            | Output::Send { conn, .. }
            | Output::ShutdownWrite { conn, .. }
            | Output::IdleExpired { conn } => *self
                .table
                .resources(*conn)
                .expect("outputs name live connections"),
        };
        self.trace(c, || format!("output {out:?}"));
        assert!(self.links[c].closed.is_none(), "#{c}: {out:?} after Close");
        let handle = self.links[c].handle.expect("accepted");
        match out {
            Output::Connect { addr, .. } => self.connect(c, addr),
            Output::Watch { .. } => self.watch(c),
            Output::Receive { dir, max, .. } => {
                let event = self.receive(c, dir, max);
                self.trace(c, || format!("  -> {event:?}"));
                self.feed(c, event);
            }
            Output::Send { dir, held, .. } => {
                let event = self.send(c, dir, held);
                self.trace(c, || format!("  -> {event:?}"));
                self.feed(c, event);
            }
            Output::ShutdownWrite { side, .. } => {
                if let Some(event) = self.shutdown_write(c, side) {
                    self.feed(c, event);
                }
            }
            Output::IdleExpired { .. } => {
                // What the worker asks the kernel (SIOCINQ / SIOCOUTQ of both sockets).
                let l = &mut self.links[c];
                let queued = l
                    .sockets
                    .iter()
                    .any(|s| !s.rx.is_empty() || !s.tx.is_empty());
                // The spec: an idle close resets both sides when any byte is in flight.
                if l.expected.close.reason == CloseReason::IdleTimeout {
                    let lost = queued || l.holders.iter().any(|h| !h.is_empty());
                    l.expected.close.reset_client = lost;
                    l.expected.close.reset_backend = lost;
                }
                self.trace(c, || "idle deadline passed".into());
                self.table.idle_expired(now, handle, queued);
            }
            Output::Close {
                reset_client,
                reset_backend,
                reason,
                held,
                ..
            } => {
                let l = &self.links[c];
                for dir in Dir::BOTH {
                    assert_eq!(
                        held[dir as usize],
                        l.holders[dir as usize].len(),
                        "#{c}: Close says {dir:?} held a different count"
                    );
                }
                self.close(
                    c,
                    Close {
                        reset_client,
                        reset_backend,
                        reason,
                    },
                );
            }
        }
    }

    fn connect(&mut self, c: usize, addr: SocketAddr) {
        let now = self.now;
        let l = &mut self.links[c];
        let handle = l.handle.expect("accepted");
        assert!(!l.connected, "#{c}: Connect while connected");
        assert!(
            !l.tried.contains(&addr),
            "#{c}: connect to {addr}, tried before ({:?})",
            l.tried
        );
        l.connect_attempts += 1;
        let attempt = l.connect_attempts;
        assert!(
            attempt <= l.script.len() && attempt <= 1 + l.config.connect_retries as usize,
            "#{c}: connect attempt {attempt} with {} retries allowed, after {:?}",
            l.config.connect_retries,
            &l.script[..l.script.len().min(attempt - 1)]
        );
        match l.script[attempt - 1] {
            ConnectResult::NoEndpoint => {
                panic!("#{c}: attempt {attempt} to {addr}, but every endpoint was tried")
            }
            ConnectResult::Failed(ConnectFailure::Local) => {
                self.stats.connect_failures += 1;
                self.table
                    .connect_not_started(now, handle, NotStarted::Local);
            }
            ConnectResult::Failed(f) => {
                l.tried.push(addr);
                self.stats.connect_failures += 1;
                self.table.connect_started(now, handle);
                self.pending
                    .push((c, Pending::Connect(ConnectOutcome::Failed(f))));
            }
            ConnectResult::Connected => {
                l.tried.push(addr);
                self.table.connect_started(now, handle);
                self.pending
                    .push((c, Pending::Connect(ConnectOutcome::Connected)));
            }
        }
    }

    /// A multishot poll reports the current state once, then edges.
    fn watch(&mut self, c: usize) {
        let l = &mut self.links[c];
        assert!(l.connected && !l.watching, "#{c}: Watch out of place");
        l.watching = true;
        for side in SIDES {
            let s = &mut l.sockets[side as usize];
            s.read_armed = true;
            if s.readable_now() {
                s.read_armed = false;
                let writable = s.error.is_some();
                self.pending.push((
                    c,
                    Pending::Event(ConnEvent::Ready {
                        side,
                        readable: true,
                        writable,
                    }),
                ));
            }
        }
    }

    fn receive(&mut self, c: usize, dir: Dir, max: usize) -> ConnEvent {
        let l = &mut self.links[c];
        let holder = &mut l.holders[dir as usize];
        assert!(max > 0, "#{c}: Receive with max 0");
        assert!(
            holder.len() + max <= self.holder_capacity,
            "#{c}: Receive of {max} into a holder with {} of {} bytes",
            holder.len(),
            self.holder_capacity
        );
        let side = dir.src();
        let s = &mut l.sockets[side as usize];
        assert!(!s.eof_reported, "#{c}: Receive({dir:?}) after EOF");
        if let Some(reset) = s.error {
            return ConnEvent::Failed { side, reset };
        }
        if !s.rx.is_empty() {
            if !holder.is_empty() && self.rng.chance(1, 4) {
                // The holder may look full to the kernel (pipe pages): no edge follows.
                self.stats.receive_would_blocks += 1;
                self.stats.spurious_would_blocks += 1;
                return ConnEvent::ReceiveWouldBlock { dir };
            }
            let n = self.rng.amount(max.min(s.rx.len()));
            let took_all = n == s.rx.len() && n < max;
            holder.extend_from_slice(&s.rx[..n]);
            s.rx.drain(..n);
            if took_all && self.rng.chance(1, 2) {
                // A short read(2) (copy holder): the driver reports the source drained, and
                // the core waits for the next edge instead of reading EAGAIN.
                s.read_armed = true;
                self.stats.drained_reads += 1;
                return ConnEvent::ReceivedDrained { dir, bytes: n };
            }
            return ConnEvent::Received { dir, bytes: n };
        }
        if s.rx_fin {
            s.eof_reported = true;
            return ConnEvent::Received { dir, bytes: 0 };
        }
        self.stats.receive_would_blocks += 1;
        s.read_armed = true;
        ConnEvent::ReceiveWouldBlock { dir }
    }

    fn send(&mut self, c: usize, dir: Dir, held: usize) -> ConnEvent {
        let l = &mut self.links[c];
        let holder = &mut l.holders[dir as usize];
        assert!(held > 0, "#{c}: Send with held 0");
        assert_eq!(held, holder.len(), "#{c}: Send({dir:?}) of a wrong count");
        let side = dir.dst();
        let s = &mut l.sockets[side as usize];
        assert!(
            !s.tx_fin,
            "#{c}: Send({dir:?}) after ShutdownWrite({side:?})"
        );
        if let Some(reset) = s.error {
            return ConnEvent::Failed { side, reset };
        }
        let room = s.tx_cap - s.tx.len();
        if room == 0 {
            self.stats.send_would_blocks += 1;
            s.write_armed = true;
            return ConnEvent::SendWouldBlock { dir };
        }
        let most = held.min(room);
        let n = self.rng.amount(most);
        s.tx.extend_from_slice(&holder[..n]);
        holder.drain(..n);
        self.stats.bytes += n as u64;
        ConnEvent::Sent { dir, bytes: n }
    }

    fn shutdown_write(&mut self, c: usize, side: Side) -> Option<ConnEvent> {
        let l = &mut self.links[c];
        let dir = if side == Side::Backend {
            Dir::ToBackend
        } else {
            Dir::ToClient
        };
        assert!(
            l.holders[dir as usize].is_empty() && l.sockets[dir.src() as usize].eof_reported,
            "#{c}: ShutdownWrite({side:?}) before every byte of {dir:?} was sent"
        );
        let s = &mut l.sockets[side as usize];
        assert!(!s.tx_fin, "#{c}: ShutdownWrite({side:?}) twice");
        if let Some(reset) = s.error {
            return Some(ConnEvent::Failed { side, reset });
        }
        s.tx_fin = true;
        s.by_shutdown = true;
        None
    }

    fn close(&mut self, c: usize, close: Close) {
        let now = self.now;
        let l = &mut self.links[c];
        let Close {
            reset_client,
            reset_backend,
            reason,
        } = close;
        assert_eq!(
            close, l.expected.close,
            "#{c}: closed unexpectedly (plan {:?}, connect script {:?}, retries {})",
            l.ending, l.script, l.config.connect_retries
        );
        assert_eq!(
            l.connect_attempts, l.expected.connect_attempts,
            "#{c}: wrong number of connect attempts"
        );
        match reason {
            CloseReason::Done => {
                self.stats.closed_done += 1;
                for dir in Dir::BOTH {
                    assert!(
                        l.sockets[dir.dst() as usize].tx_fin,
                        "#{c}: Done before {dir:?} was shut"
                    );
                }
            }
            CloseReason::IdleTimeout => {
                self.stats.closed_idle += 1;
                if reset_client {
                    self.stats.closed_idle_reset += 1;
                }
                assert!(
                    now >= l.last_move + l.config.idle_timeout,
                    "#{c}: idle close {:?} after the last byte moved (timeout {:?})",
                    now - l.last_move,
                    l.config.idle_timeout
                );
            }
            CloseReason::Broken(_) => self.stats.closed_broken += 1,
            _ => self.stats.closed_connect += 1,
        }
        l.closed = Some(close);
        for (side, reset) in [(Side::Client, reset_client), (Side::Backend, reset_backend)] {
            let exists = side == Side::Client || l.connected;
            if reset && exists {
                l.peers[side as usize].reset = true;
            } else {
                // close(2): a FIN behind whatever was already sent.
                l.sockets[side as usize].tx_fin = true;
            }
        }
        let elapsed = (now - self.start).as_micros() as u64;
        self.stats.outcome_digest ^= (c as u64 + 1)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left((elapsed % 64) as u32)
            ^ elapsed;
    }

    // -- peers ---------------------------------------------------------------------------

    const READ: u8 = 1;
    const WRITE: u8 = 2;
    const FIN: u8 = 4;
    const FAIL: u8 = 8;

    /// What peer `p` of link `c` could do now (a set of the flags above).
    fn peer_moves(&self, c: usize, p: Side) -> u8 {
        let l = &self.links[c];
        let peer = &l.peers[p as usize];
        let s = &l.sockets[p as usize];
        let exists = l.accepted && (p == Side::Client || l.connected);
        if !exists || !peer.alive() {
            return 0;
        }
        let mut moves = 0;
        let reads_data = !s.tx.is_empty() && peer.received < peer.read_limit;
        if reads_data || (s.tx.is_empty() && s.tx_fin && !peer.eof) {
            moves |= Self::READ;
        }
        if l.closed.is_some() {
            return moves;
        }
        if peer.written < peer.write_limit && s.rx.len() < s.rx_cap {
            moves |= Self::WRITE;
        }
        let all_written = peer.written == peer.out.len();
        if !peer.fin_sent
            && all_written
            && peer.fin_after_received.is_some_and(|n| peer.received >= n)
        {
            moves |= Self::FIN;
        }
        if l.watching && peer.fail_at.is_some_and(|(k, _)| k == peer.written) {
            moves |= Self::FAIL;
        }
        moves
    }

    /// A random peer of a random active link makes progress; false when it could not.
    fn peer_step(&mut self) -> bool {
        if self.active.is_empty() {
            return false;
        }
        let i = self.rng.range(0, self.active.len() - 1);
        let c = self.active[i];
        let first = SIDES[self.rng.range(0, 1)];
        for p in [first, first.other()] {
            let moves = self.peer_moves(c, p);
            if moves == 0 {
                continue;
            }
            // A random one of the possible moves.
            let mut k = self.rng.range(1, moves.count_ones() as usize);
            let mut pick = 0;
            for m in [Self::READ, Self::WRITE, Self::FIN, Self::FAIL] {
                if moves & m != 0 {
                    k -= 1;
                    if k == 0 {
                        pick = m;
                        break;
                    }
                }
            }
            match pick {
                Self::READ => self.peer_read(c, p),
                Self::WRITE => self.peer_write(c, p),
                Self::FIN => self.peer_fin(c, p),
                _ => self.peer_fail(c, p),
            }
            return true;
        }
        if self.links[c].closed.is_some() {
            self.links[c].finished = true;
            self.active.swap_remove(i);
        }
        false
    }

    /// An edge for `side`, if the core waits for one.
    fn edge(&mut self, c: usize, side: Side, readable: bool) {
        let l = &mut self.links[c];
        if l.closed.is_some() || !l.watching {
            return;
        }
        let s = &mut l.sockets[side as usize];
        let armed = if readable {
            &mut s.read_armed
        } else {
            &mut s.write_armed
        };
        if *armed {
            *armed = false;
            self.stats.readiness_edges += 1;
            self.pending.push((
                c,
                Pending::Event(ConnEvent::Ready {
                    side,
                    readable,
                    writable: !readable,
                }),
            ));
        }
    }

    fn peer_read(&mut self, c: usize, p: Side) {
        let l = &mut self.links[c];
        let [client, backend] = &mut l.peers;
        let (peer, other) = match p {
            Side::Client => (client, &*backend),
            Side::Backend => (backend, &*client),
        };
        let s = &mut l.sockets[p as usize];
        if s.tx.is_empty() {
            // The proxy's FIN, behind every byte it sent.
            assert!(
                peer.received == other.written,
                "#{c}: {p:?} got FIN after {} of the {} bytes the other peer wrote",
                peer.received,
                other.written
            );
            assert!(
                !s.by_shutdown || other.fin_sent,
                "#{c}: FIN passed on to {p:?} but the other peer never sent one"
            );
            peer.eof = true;
            self.trace(c, || format!("{p:?} peer reads EOF"));
            return;
        }
        let n = self
            .rng
            .amount(s.tx.len().min(peer.read_limit - peer.received));
        let expect = &other.out[peer.received..(peer.received + n).min(other.out.len())];
        assert!(
            s.tx[..n] == *expect,
            "#{c}: {p:?} received bytes {}..{} that differ from what was sent",
            peer.received,
            peer.received + n
        );
        peer.received += n;
        s.tx.drain(..n);
        let half_closed = l.sockets[p.other() as usize].by_shutdown;
        if half_closed {
            self.stats.bytes_after_half_close += n as u64;
        }
        self.edge(c, p, false);
    }

    fn peer_write(&mut self, c: usize, p: Side) {
        let l = &mut self.links[c];
        let peer = &mut l.peers[p as usize];
        let s = &mut l.sockets[p as usize];
        let most = (peer.write_limit - peer.written).min(s.rx_cap - s.rx.len());
        let n = self.rng.amount(most);
        s.rx.extend_from_slice(&peer.out[peer.written..peer.written + n]);
        peer.written += n;
        self.edge(c, p, true);
    }

    fn peer_fin(&mut self, c: usize, p: Side) {
        let l = &mut self.links[c];
        l.peers[p as usize].fin_sent = true;
        l.sockets[p as usize].rx_fin = true;
        self.trace(c, || format!("{p:?} peer sends FIN"));
        self.edge(c, p, true);
        // A FIN wakes the poller whatever state it is in (POLLRDHUP / EPOLLRDHUP): the
        // driver reports the hang-up, which is what lets the core trust short reads.
        if l_watching(&self.links[c]) {
            self.pending.push((
                c,
                Pending::Event(ConnEvent::Ready {
                    side: p,
                    readable: true,
                    writable: false,
                }),
            ));
            self.pending
                .push((c, Pending::Event(ConnEvent::HangUp { side: p })));
        }
    }

    fn peer_fail(&mut self, c: usize, p: Side) {
        let l = &mut self.links[c];
        let (_, reset) = l.peers[p as usize].fail_at.expect("planned");
        l.peers[p as usize].failed = true;
        let s = &mut l.sockets[p as usize];
        s.error = Some(reset);
        if reset {
            // A RST discards what the proxy had not read yet.
            s.rx.clear();
        }
        self.trace(c, || format!("{p:?} peer fails (reset: {reset})"));
        // POLLERR is an edge of its own, reported as readable and writable.
        self.stats.readiness_edges += 1;
        self.pending.push((
            c,
            Pending::Event(ConnEvent::Ready {
                side: p,
                readable: true,
                writable: true,
            }),
        ));
    }

    // -- the end -------------------------------------------------------------------------

    fn check_outcomes(&self) {
        for (c, l) in self.links.iter().enumerate() {
            assert_eq!(
                l.closed,
                Some(l.expected.close),
                "#{c}: ended open or differently"
            );
            for p in SIDES {
                let peer = &l.peers[p as usize];
                let other = &l.peers[p.other() as usize];
                if peer.failed || !(p == Side::Client || l.connected) {
                    continue;
                }
                let Close {
                    reset_client,
                    reset_backend,
                    reason,
                } = l.expected.close;
                let reset = if p == Side::Client {
                    reset_client
                } else {
                    reset_backend
                };
                if reset {
                    assert!(peer.reset, "#{c}: {p:?} was not reset");
                } else {
                    assert!(peer.eof, "#{c}: {p:?} never saw the end of its stream");
                    assert_eq!(peer.received, other.written, "#{c}: {p:?} missed bytes");
                }
                if reason == CloseReason::Done {
                    assert_eq!(peer.received, other.out.len(), "#{c}: {p:?} stream cut");
                }
            }
        }
    }

    /// The table's own bookkeeping after the run: nothing left, pins released, counters
    /// that add up to what the world saw.
    fn check_table(&self) {
        assert_eq!(self.table.active(), 0, "connections left in the table");
        assert!(self.table.pinned_snapshots() <= 1, "snapshots still pinned");
        let (mut opened, mut closed, mut retries, mut bytes) = (0, 0, 0, 0);
        for (_, service) in self.snapshot.services() {
            let c = service.stats.worker(0);
            opened += c.opened.get();
            closed += c.closed.get();
            retries += c.retries.get();
            bytes += c.bytes_to_backend.get() + c.bytes_to_client.get();
        }
        let n = self.links.len() as u64;
        assert_eq!((opened, closed), (n, n), "opened/closed counters");
        let tried: u64 = self
            .links
            .iter()
            .map(|l| l.tried.len().saturating_sub(1) as u64)
            .sum();
        assert_eq!(retries, tried, "retries counter");
        assert_eq!(bytes, self.stats.bytes, "bytes counters");
    }

    fn describe_open(&self) -> String {
        let mut out = String::new();
        for (c, l) in self
            .links
            .iter()
            .enumerate()
            .filter(|(_, l)| l.closed.is_none())
        {
            let peer = |p: &Peer| {
                format!(
                    "written {}/{} (limit {}), fin {}, failed {}, received {}",
                    p.written,
                    p.out.len(),
                    p.write_limit,
                    p.fin_sent,
                    p.failed,
                    p.received
                )
            };
            let socket = |s: &Socket| {
                format!(
                    "rx {}/{} fin {} eof_reported {}, tx {}/{} fin {}, error {:?}, armed r {} w {}",
                    s.rx.len(),
                    s.rx_cap,
                    s.rx_fin,
                    s.eof_reported,
                    s.tx.len(),
                    s.tx_cap,
                    s.tx_fin,
                    s.error,
                    s.read_armed,
                    s.write_armed
                )
            };
            out += &format!(
                "#{c} plan {:?}, expected {:?}\n  handle {:?}\n  client: {}; socket {}\n  \
                 backend: {}; socket {}\n  holders {} / {}\n",
                l.ending,
                l.expected,
                l.handle,
                peer(&l.peers[0]),
                socket(&l.sockets[0]),
                peer(&l.peers[1]),
                socket(&l.sockets[1]),
                l.holders[0].len(),
                l.holders[1].len(),
            );
        }
        out
    }
}

/// Draws one connection's plan.
fn plan_link(rng: &mut Rng, now: Instant) -> Link {
    let connect_retries = rng.range(0, MAX_RETRIES as usize) as u32;
    let ending = match rng.range(0, 99) {
        0..=74 => Ending::Done,
        75..=87 => Ending::Broken(SIDES[rng.range(0, 1)]),
        _ => Ending::Idle,
    };
    let idle_class = if ending == Ending::Idle {
        rng.range(1, SHORT_IDLE.len())
    } else {
        0
    };

    let mut script = Vec::new();
    for _ in 0..=connect_retries {
        let result = match rng.range(0, 99) {
            0..=79 => ConnectResult::Connected,
            80..=87 => ConnectResult::Failed(ConnectFailure::Refused),
            88..=93 => ConnectResult::Failed(ConnectFailure::TimedOut),
            94..=96 => ConnectResult::Failed(ConnectFailure::Network),
            97..=98 => ConnectResult::Failed(ConnectFailure::Local),
            _ => ConnectResult::NoEndpoint,
        };
        script.push(result);
        if matches!(
            result,
            ConnectResult::Connected
                | ConnectResult::NoEndpoint
                | ConnectResult::Failed(ConnectFailure::Local)
        ) {
            break;
        }
    }
    let expected = Expected::of(&script, connect_retries, ending);
    // A script ending with "no endpoint" meets a Service with just as many endpoints as it
    // tried; the others meet one with an endpoint for every attempt they may make.
    let endpoints = match script.last() {
        Some(ConnectResult::NoEndpoint) => script.len() as u32 - 1,
        _ => connect_retries + 1,
    };
    let config = LinkConfig {
        idle_timeout: idle_of(idle_class),
        connect_retries,
        endpoints,
    };

    let stream = |rng: &mut Rng| {
        let len = if rng.chance(1, 10) {
            0
        } else {
            rng.log_range(1, 200_000)
        };
        rng.bytes(len)
    };
    let mut peers = [Peer::new(stream(rng)), Peer::new(stream(rng))];
    match ending {
        Ending::Done => {
            for p in [0, 1] {
                let other_len = peers[1 - p].out.len();
                peers[p].fin_after_received = Some(if rng.chance(1, 2) {
                    0
                } else {
                    rng.range(0, other_len)
                });
            }
        }
        Ending::Broken(side) => {
            let p = side as usize;
            if peers[p].out.is_empty() {
                let len = rng.range(1, 5000);
                peers[p] = Peer::new(rng.bytes(len));
            }
            let at = rng.range(0, peers[p].out.len() - 1);
            peers[p].fail_at = Some((at, rng.chance(3, 4)));
            peers[p].write_limit = at;
            if rng.chance(1, 2) {
                peers[1 - p].fin_after_received = Some(0);
            }
        }
        Ending::Idle => {
            // At most one peer half-closes; neither closes the connection.
            let closer = rng.range(0, 2);
            for (p, peer) in peers.iter_mut().enumerate() {
                if p == closer {
                    peer.fin_after_received = Some(0);
                } else {
                    peer.write_limit = rng.range(0, peer.out.len());
                }
            }
            // Sometimes a peer stops reading too: bytes are in flight at the timeout.
            if rng.chance(1, 3) {
                let p = rng.range(0, 1);
                let other_len = peers[1 - p].out.len();
                peers[p].read_limit = rng.range(0, other_len);
            }
        }
    }

    let socket = |rng: &mut Rng, stream_len: usize| {
        // Tiny buffers only for short streams, to keep the run short.
        let lo = if stream_len < 4096 { 1 } else { 64 };
        Socket {
            rx_cap: rng.log_range(lo, 64 << 10),
            tx_cap: rng.log_range(lo, 64 << 10),
            ..Socket::default()
        }
    };
    let sockets = [
        socket(rng, peers[0].out.len().max(peers[1].out.len())),
        socket(rng, peers[0].out.len().max(peers[1].out.len())),
    ];
    Link {
        config,
        node_port: node_port_of(connect_retries, idle_class, endpoints),
        ending,
        script,
        expected,
        accepted: false,
        handle: None,
        connect_attempts: 0,
        tried: Vec::new(),
        connected: false,
        watching: false,
        peers,
        sockets,
        holders: [Vec::new(), Vec::new()],
        last_move: now,
        closed: None,
        finished: false,
    }
}

/// The idle timeout of idle class `class` (0: connections not meant to go idle).
fn idle_of(class: usize) -> Duration {
    match class {
        0 => LONG_IDLE,
        c => Duration::from_secs(SHORT_IDLE[c - 1]),
    }
}

/// The NodePort of the Service with these retries, idle class and number of endpoints.
fn node_port_of(retries: u32, idle_class: usize, endpoints: u32) -> u16 {
    let classes = SHORT_IDLE.len() + 1;
    let most = MAX_RETRIES as usize + 2;
    FIRST_PORT + ((retries as usize * classes + idle_class) * most + endpoints as usize) as u16
}

/// The routing snapshot of the simulation: one Service per (connect retries, idle
/// timeout, number of endpoints), built from TOML the way the daemon builds it.
fn sim_snapshot() -> Arc<RoutingSnapshot> {
    let mut toml = format!(
        "listen_addresses = [\"127.0.0.1\"]\nnode_port_range = \"{FIRST_PORT}-{}\"\nworkers = 1\n",
        FIRST_PORT + 999
    );
    for retries in 0..=MAX_RETRIES {
        for class in 0..=SHORT_IDLE.len() {
            for endpoints in 0..=MAX_RETRIES + 1 {
                let eps: Vec<String> = (1..=endpoints)
                    .map(|i| format!("\"198.18.0.{i}\""))
                    .collect();
                toml += &format!(
                    "\n[[service]]\nname = \"s-{retries}-{class}-{endpoints}\"\nport = 80\n\
                     target_port = 8080\nnode_port = {}\nendpoints = [{}]\n\
                     connect_retries = {retries}\nidle_timeout = \"{}s\"\n",
                    node_port_of(retries, class, endpoints),
                    eps.join(", "),
                    idle_of(class).as_secs()
                );
            }
        }
    }
    let model: Model = sluice::config::parse(&toml, "sim.toml", None)
        .unwrap_or_else(|e| panic!("the simulation's model: {e}"));
    let mut registry = StatsRegistry::new(1);
    Arc::new(RoutingSnapshot::build(&model, 1, &mut registry))
}

fn l_watching(l: &Link) -> bool {
    l.watching && l.closed.is_none()
}

// ---------------------------------------------------------------------------------------
// Scenarios above one connection, on the same production table with a simulated clock:
// holding (and its budgets), parking, drain and abort, endpoints marked down, the accept
// budget and stale handles.

/// A table over a small model, with a simulated clock; a connection's resources are a
/// plain number.
struct Bench {
    table: ConnTable<u32>,
    snapshot: Arc<RoutingSnapshot>,
    now: Instant,
    next: u32,
}

const PORT: u16 = 30100;
const EP1: &str = "198.18.0.1:8080";

/// A snapshot of one Service on [`PORT`] with these endpoints and extra keys.
fn one_service(endpoints: &[&str], keys: &str) -> Arc<RoutingSnapshot> {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|e| format!("\"{}\"", e.split(':').next().expect("ip")))
        .collect();
    let toml = format!(
        "listen_addresses = [\"127.0.0.1\"]\nnode_port_range = \"{PORT}-{PORT}\"\nworkers = 1\n\n\
         [[service]]\nname = \"s\"\nport = 80\ntarget_port = 8080\nnode_port = {PORT}\n\
         endpoints = [{}]\n{keys}\n",
        eps.join(", ")
    );
    let model = sluice::config::parse(&toml, "bench.toml", None)
        .unwrap_or_else(|e| panic!("bench model: {e}"));
    Arc::new(RoutingSnapshot::build(
        &model,
        1,
        &mut StatsRegistry::new(1),
    ))
}

impl Bench {
    fn new(limits: WorkerLimits, snapshot: Arc<RoutingSnapshot>) -> Bench {
        Bench {
            table: ConnTable::new(TableConfig {
                worker: 0,
                limits,
                holder_capacity: 64 << 10,
                seed: 1,
            }),
            snapshot,
            now: Instant::now(),
            next: 0,
        }
    }

    fn accept(&mut self) -> ConnHandle {
        self.next += 1;
        let listener = ListenerKey {
            addr: SocketAddr::from(([127, 0, 0, 1], PORT)),
            protocol: Protocol::Tcp,
        };
        let client = SocketAddr::from(([127, 0, 0, 2], 20_000 + self.next as u16));
        self.table
            .accept(self.now, &self.snapshot, listener, client, self.next)
            .expect("accepted")
    }

    /// Every output the table has now.
    fn outputs(&mut self) -> Vec<Output<u32>> {
        std::iter::from_fn(|| self.table.poll(self.now)).collect()
    }

    /// Lets `d` pass, ticking every [`TICK`]; returns the outputs of the ticks.
    fn advance(&mut self, d: Duration) -> Vec<Output<u32>> {
        let mut out = Vec::new();
        let end = self.now + d;
        while self.now < end {
            self.now += TICK;
            self.table.tick(self.now, &self.snapshot.clone());
            out.extend(self.outputs());
        }
        out
    }

    /// Accepts a connection and connects it to its first endpoint.
    fn connected(&mut self) -> ConnHandle {
        let h = self.accept();
        let out = self.outputs();
        assert!(matches!(out[..], [Output::Connect { .. }]), "{out:?}");
        self.table.connect_started(self.now, h);
        self.table
            .connect_finished(self.now, h, ConnectOutcome::Connected);
        let out = self.outputs();
        assert!(matches!(out[..], [Output::Watch { .. }]), "{out:?}");
        h
    }

    fn service_counter(&self, f: impl Fn(&sluice::stats::ConnCounters) -> u64) -> u64 {
        self.snapshot
            .services()
            .map(|(_, s)| f(s.stats.worker(0)))
            .sum()
    }
}

fn limits(max_connections: u32, max_held: u32, max_held_per_service: u32) -> WorkerLimits {
    WorkerLimits {
        max_connections,
        max_held,
        max_held_per_service,
    }
}

/// The close of connection `id` among `out`, as (resets, reason).
fn close_of(out: &[Output<u32>], id: u32) -> Option<(bool, bool, CloseReason)> {
    out.iter().find_map(|o| match o {
        Output::Close {
            resources,
            reset_client,
            reset_backend,
            reason,
            ..
        } if *resources == id => Some((*reset_client, *reset_backend, *reason)),
        _ => None,
    })
}

#[test]
fn a_held_connection_connects_once_its_service_gets_an_endpoint() {
    let mut b = Bench::new(
        limits(10, 10, 10),
        one_service(&[], "hold_when_empty = \"30s\""),
    );
    let h = b.accept();
    assert!(b.outputs().is_empty(), "held: nothing to do yet");
    assert_eq!((b.table.held(), b.table.relayed()), (1, 0));
    assert!(b.advance(Duration::from_secs(5)).is_empty(), "still held");
    // A reload publishes an endpoint: the next tick moves the connection to it.
    b.snapshot = one_service(&[EP1], "hold_when_empty = \"30s\"");
    let out = b.advance(TICK);
    match &out[..] {
        [Output::Connect { conn, addr, .. }] => {
            assert_eq!(*conn, h);
            assert_eq!(addr.to_string(), EP1);
        }
        other => panic!("expected a connect, got {other:?}"),
    }
    assert_eq!((b.table.held(), b.table.relayed()), (0, 1));
    b.table.connect_started(b.now, h);
    b.table
        .connect_finished(b.now, h, ConnectOutcome::Connected);
    assert!(matches!(b.outputs()[..], [Output::Watch { .. }]));
    assert_eq!(
        b.table.pinned_snapshots(),
        1,
        "the old snapshot was released"
    );
}

#[test]
fn hold_budgets_refuse_beyond_them_and_the_hold_time_ends_a_held_connection() {
    let mut b = Bench::new(
        limits(10, 10, 1),
        one_service(&[], "hold_when_empty = \"3s\""),
    );
    b.accept();
    assert!(b.outputs().is_empty());
    b.accept();
    let out = b.outputs();
    assert_eq!(
        close_of(&out, 2),
        Some((true, true, CloseReason::NoEndpoint)),
        "beyond max_held_per_service: reset at once"
    );
    assert_eq!(b.service_counter(|c| c.holds_refused.get()), 1);
    let out = b.advance(Duration::from_millis(2900));
    assert!(close_of(&out, 1).is_none(), "within its hold time");
    let out = b.advance(Duration::from_millis(200));
    assert_eq!(
        close_of(&out, 1),
        Some((true, true, CloseReason::NoEndpoint))
    );
    assert_eq!((b.table.held(), b.table.active()), (0, 0));
}

#[test]
fn held_connections_do_not_count_against_the_connection_limit() {
    let mut b = Bench::new(
        limits(1, 10, 10),
        one_service(&[], "hold_when_empty = \"30s\""),
    );
    b.accept();
    b.accept();
    assert!(b.outputs().is_empty());
    assert_eq!(b.table.accept_room(), 1, "two held, none relayed");
    // An endpoint appears, but only one relayed slot is free: one connects, one waits.
    b.snapshot = one_service(&[EP1], "hold_when_empty = \"30s\"");
    let out = b.advance(TICK);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((b.table.held(), b.table.relayed()), (1, 1));
    assert_eq!(b.table.accept_room(), 0);
}

#[test]
fn a_parked_connection_retries_when_fds_free_and_gives_up_after_its_connect_timeout() {
    let mut b = Bench::new(
        limits(10, 0, 0),
        one_service(&[EP1], "connect_timeout = \"2s\""),
    );
    let (h1, h2) = (b.accept(), b.accept());
    let out = b.outputs();
    assert_eq!(out.len(), 2, "{out:?}");
    for h in [h1, h2] {
        b.table.connect_not_started(b.now, h, NotStarted::Exhausted);
    }
    assert!(b.outputs().is_empty(), "both parked, not reset");
    // Sockets closed: a round of retries, one at a time (each answered before the next
    // poll, as the worker does), which stops at the first still short of fds.
    b.table.retry_parked();
    let out = b.table.poll(b.now);
    assert!(
        matches!(out, Some(Output::Connect { conn, .. }) if conn == h1),
        "{out:?}"
    );
    b.table
        .connect_not_started(b.now, h1, NotStarted::Exhausted);
    assert!(
        b.table.poll(b.now).is_none(),
        "the round ended at the first short of fds"
    );
    // Next round: h2 (now first) gets its fds, and the round goes on to h1.
    b.table.retry_parked();
    let out = b.table.poll(b.now);
    assert!(
        matches!(out, Some(Output::Connect { conn, .. }) if conn == h2),
        "{out:?}"
    );
    b.table.connect_started(b.now, h2);
    let out = b.table.poll(b.now);
    assert!(
        matches!(out, Some(Output::Connect { conn, .. }) if conn == h1),
        "{out:?}"
    );
    b.table
        .connect_not_started(b.now, h1, NotStarted::Exhausted);
    assert!(b.table.poll(b.now).is_none());
    // h1 stays short of fds until its connect timeout: then it is reset (a local failure).
    let mut closed = None;
    for _ in 0..30 {
        for o in b.advance(TICK) {
            match o {
                Output::Connect { conn, .. } => {
                    b.table
                        .connect_not_started(b.now, conn, NotStarted::Exhausted);
                }
                Output::Close {
                    resources: 1,
                    reason,
                    ..
                } => closed = Some(reason),
                other => panic!("unexpected {other:?}"),
            }
        }
        closed = closed.or_else(|| close_of(&b.outputs(), 1).map(|c| c.2));
        if closed.is_some() {
            break;
        }
    }
    assert_eq!(
        closed,
        Some(CloseReason::ConnectFailed(ConnectFailure::Local))
    );
}

#[test]
fn drain_stops_accepting_and_abort_resets_every_connection() {
    let mut b = Bench::new(limits(10, 0, 0), one_service(&[EP1], ""));
    let _ = (b.connected(), b.connected());
    let third = b.accept();
    b.outputs();
    b.table.connect_started(b.now, third); // the third one is connecting
    assert_eq!(b.table.active(), 3);
    b.table.drain(b.now + Duration::from_secs(5));
    assert_eq!(b.table.accept_room(), 0, "no accepting while draining");
    assert!(!b.table.drained(b.now), "connections left, deadline ahead");
    assert!(
        b.table.drained(b.now + Duration::from_secs(5)),
        "at the deadline"
    );
    assert_eq!(b.table.abort_all(b.now), 3);
    let out = b.outputs();
    for id in 1..=3 {
        assert_eq!(
            close_of(&out, id),
            Some((true, true, CloseReason::Shutdown))
        );
    }
    let in_flight = out
        .iter()
        .filter(|o| {
            matches!(
                o,
                Output::Close {
                    connect_in_flight: true,
                    ..
                }
            )
        })
        .count();
    assert_eq!(in_flight, 1, "the connecting one's connect is cancelled");
    assert!(b.table.drained(b.now));
}

#[test]
fn an_endpoint_marked_down_with_shutdown_sessions_resets_its_connections() {
    let mut b = Bench::new(limits(10, 0, 0), one_service(&[EP1], ""));
    b.connected();
    assert!(
        b.advance(Duration::from_secs(2)).is_empty(),
        "nothing to sweep"
    );
    let (_, service) = b.snapshot.services().next().expect("one service");
    let ep = service
        .endpoint_by_addr(EP1.parse().expect("addr"))
        .expect("endpoint");
    service.endpoint(ep).stats.bump_shutdown_epoch();
    // The sweep sees every connection within a pass (10 ticks).
    let out = b.advance(TICK * 10);
    assert_eq!(close_of(&out, 1), Some((true, true, CloseReason::Shutdown)));
}

#[test]
fn a_stale_handle_never_reaches_the_connection_that_reuses_its_slot() {
    let mut b = Bench::new(limits(10, 0, 0), one_service(&[EP1], ""));
    let old = b.connected();
    b.table.handle(
        b.now,
        old,
        ConnEvent::Failed {
            side: Side::Backend,
            reset: true,
        },
    );
    assert!(close_of(&b.outputs(), 1).is_some());
    let new = b.connected();
    assert_eq!(new.slot(), old.slot(), "the slot is reused");
    assert_ne!(new, old);
    b.table.handle(
        b.now,
        old,
        ConnEvent::Failed {
            side: Side::Client,
            reset: true,
        },
    );
    b.table
        .connect_finished(b.now, old, ConnectOutcome::Failed(ConnectFailure::Refused));
    b.table.idle_expired(b.now, old, true);
    assert!(
        b.outputs().is_empty(),
        "inputs naming the old handle are ignored"
    );
    assert_eq!(b.table.active(), 1);
    assert!(b.table.resources(new).is_some() && b.table.resources(old).is_none());
}
