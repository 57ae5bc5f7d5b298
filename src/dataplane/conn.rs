//! The life of one proxied TCP connection, as a pure state machine (sans-IO).
//!
//! A [`Conn`] owns no socket, no clock and no randomness: the driver feeds it [`ConnEvent`]s
//! (with `now` passed in) and drains [`Op`]s from [`Conn::poll_op`] until it returns `None`,
//! executing each op and feeding the result back as an event before asking for the next.
//! The same core runs under every driver and in the simulator (`sim` tests).
//!
//! ```text
//!  accepted ──Connect──▶ Connecting ──Connected──▶ Relaying ──both directions done──▶ Closed
//!                  ▲          │ ConnectFailed                  │ error / reset / idle
//!                  └─retry────┘ (bounded)  ──no retries left──▶ Closed (client reset)
//! ```
//!
//! Bytes of each direction move in two steps, `Receive` (source socket → the direction's
//! holder: a pipe for splice, a buffer for copy) and `Send` (holder → destination socket).
//! The core only counts held bytes; the driver owns the holders. Readiness is edge-triggered:
//! a side stays `readable`/`writable` until an operation on it reports `WouldBlock`, which is
//! how both io_uring multishot poll and epoll (EPOLLET) report it.
//!
//! TCP semantics kept here: a FIN from one side is passed on as `ShutdownWrite` to the other
//! once every held byte of that direction is sent, and the other direction keeps flowing
//! (half-close); an error or reset on one side resets the other (RST propagation); a
//! connection with no bytes moving for `idle_timeout` is closed.

use std::time::{Duration, Instant};

/// Which socket of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Client = 0,
    Backend = 1,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }
}

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    ToBackend = 0,
    ToClient = 1,
}

impl Dir {
    pub const BOTH: [Dir; 2] = [Dir::ToBackend, Dir::ToClient];

    /// The socket this direction reads from.
    pub fn src(self) -> Side {
        match self {
            Dir::ToBackend => Side::Client,
            Dir::ToClient => Side::Backend,
        }
    }

    /// The socket this direction writes to.
    pub fn dst(self) -> Side {
        self.src().other()
    }
}

/// Why a connect attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The endpoint answered with a reset (nothing listens).
    Refused,
    /// No answer within the connect timeout.
    TimedOut,
    /// Any other network error (unreachable, …).
    Network,
    /// This node could not open a socket (fd limit, memory).
    Local,
}

/// What happened, as told by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEvent {
    /// The backend connection is established.
    Connected,
    /// The connect attempt failed.
    ConnectFailed(ConnectFailure),
    /// `Op::Connect` found no endpoint left to try (none usable, or all tried).
    NoEndpoint,
    /// Readiness reported for one socket. Flags are ORed into what is known.
    Ready {
        side: Side,
        readable: bool,
        writable: bool,
    },
    /// The peer of `side` shut down its sending side (or the socket failed): reported with
    /// readiness. From then on a short read is not taken as "drained" on that side — the
    /// FIN is still to be read, and no further readiness report will announce it.
    HangUp { side: Side },
    /// `Op::Receive(dir)` moved `bytes` into the holder; 0 means the source sent FIN.
    Received { dir: Dir, bytes: usize },
    /// `Op::Receive(dir)` moved `bytes` (> 0) and that was all the source had: a short
    /// read(2). The source is not tried again until readiness is reported, which saves the
    /// read that would only say EAGAIN. (Not used for splice: a short splice can also mean
    /// the pipe ran out of buffer slots.)
    ReceivedDrained { dir: Dir, bytes: usize },
    /// `Op::Send(dir)` moved `bytes` out of the holder.
    Sent { dir: Dir, bytes: usize },
    /// `Op::Receive(dir)` could not move anything now.
    ReceiveWouldBlock { dir: Dir },
    /// `Op::Send(dir)` could not move anything now.
    SendWouldBlock { dir: Dir },
    /// An operation on `side` failed; `reset` when the peer reset the connection.
    Failed { side: Side, reset: bool },
}

/// What the driver must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Pick an endpoint not yet tried, open a backend socket and connect it (with the
    /// Service's connect timeout). Answer with `Connected`, `ConnectFailed` or `NoEndpoint`.
    Connect,
    /// Start reporting readiness of both sockets.
    Watch,
    /// Move bytes from `dir.src()` into the direction's holder, at most `max`.
    Receive { dir: Dir, max: usize },
    /// Move the `held` bytes of the direction's holder to `dir.dst()`.
    Send { dir: Dir, held: usize },
    /// Pass a FIN on: shut down writing on `side`.
    ShutdownWrite(Side),
    /// The work budget of this turn is spent: run this connection again after the other
    /// ready ones (fairness between connections on one worker).
    Yield,
    /// Close both sockets; `reset` = abort with RST instead of FIN. Terminal.
    Close {
        reset_client: bool,
        reset_backend: bool,
        reason: CloseReason,
    },
}

/// Why a connection ended, for counters and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both directions finished with FIN.
    Done,
    /// No bytes moved for the idle timeout.
    IdleTimeout,
    /// Every connect attempt failed; carries the last failure.
    ConnectFailed(ConnectFailure),
    /// No usable endpoint.
    NoEndpoint,
    /// `side` reset the connection or failed; the other side was reset too.
    Broken(Side),
    /// The worker is shutting down.
    Shutdown,
}

impl CloseReason {
    /// True for outcomes counted as failed connections.
    pub fn is_failure(self) -> bool {
        !matches!(self, CloseReason::Done | CloseReason::IdleTimeout)
    }
}

/// Per-connection settings fixed at accept time (from the Service of the snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnConfig {
    pub idle_timeout: Duration,
    /// Connect attempts after the first one.
    pub connect_retries: u32,
    /// Bytes one holder can take (pipe or buffer capacity).
    pub holder_capacity: usize,
}

/// Ops one turn may emit before yielding: bounds the time one busy connection holds the
/// worker (with 64 KiB holders, 32 ops move at most ~1 MiB).
const TURN_BUDGET: u32 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Relaying,
    Closed,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Flow {
    /// Bytes in the holder, received but not yet sent.
    held: usize,
    /// The source sent FIN.
    eof: bool,
    /// FIN passed on to the destination.
    shut: bool,
    /// A `Receive` would-block while bytes were held: the holder may be full (a pipe's
    /// capacity is in pages, not bytes), so wait for `Send` progress before trying again.
    stalled: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Readiness {
    readable: bool,
    writable: bool,
    /// The peer shut down sending (sticky): its FIN may be waiting behind the data.
    hung_up: bool,
}

/// One proxied connection: see the module documentation.
#[derive(Debug, Clone)]
pub struct Conn {
    phase: Phase,
    config: ConnConfig,
    flows: [Flow; 2],
    ready: [Readiness; 2],
    retries_left: u32,
    last_activity: Instant,
    pending: Option<Op>,
    budget: u32,
    /// Direction served first in the next turn (alternates, so neither starves).
    first: Dir,
    reason: Option<CloseReason>,
}

impl Conn {
    /// A connection just accepted: its first op is `Connect`.
    pub fn new(now: Instant, config: ConnConfig) -> Conn {
        Conn {
            phase: Phase::Connecting,
            config,
            flows: [Flow::default(); 2],
            ready: [Readiness::default(); 2],
            retries_left: config.connect_retries,
            last_activity: now,
            pending: Some(Op::Connect),
            budget: TURN_BUDGET,
            first: Dir::ToBackend,
            reason: None,
        }
    }

    /// Feed one event. Events for a closed connection are ignored.
    pub fn handle(&mut self, now: Instant, event: ConnEvent) {
        if self.phase == Phase::Closed {
            return;
        }
        match event {
            ConnEvent::Connected => {
                debug_assert_eq!(self.phase, Phase::Connecting);
                self.phase = Phase::Relaying;
                self.last_activity = now;
                // A fresh socket has send buffer space; readability comes from the watch.
                self.ready[Side::Client as usize].writable = true;
                self.ready[Side::Backend as usize].writable = true;
                self.pending = Some(Op::Watch);
            }
            ConnEvent::ConnectFailed(failure) => {
                if self.retries_left > 0 && failure != ConnectFailure::Local {
                    self.retries_left -= 1;
                    self.pending = Some(Op::Connect);
                } else {
                    self.close(true, true, CloseReason::ConnectFailed(failure));
                }
            }
            ConnEvent::NoEndpoint => self.close(true, true, CloseReason::NoEndpoint),
            ConnEvent::Ready {
                side,
                readable,
                writable,
            } => {
                let r = &mut self.ready[side as usize];
                r.readable |= readable;
                r.writable |= writable;
            }
            ConnEvent::Received { dir, bytes: 0 } => {
                let f = &mut self.flows[dir as usize];
                f.eof = true;
                self.ready[dir.src() as usize].readable = false;
                self.last_activity = now;
            }
            ConnEvent::Received { dir, bytes } => {
                self.flows[dir as usize].held += bytes;
                debug_assert!(self.flows[dir as usize].held <= self.config.holder_capacity);
                self.last_activity = now;
            }
            ConnEvent::ReceivedDrained { dir, bytes } => {
                debug_assert!(bytes > 0, "a drained receive moved bytes (0 is EOF)");
                self.flows[dir as usize].held += bytes;
                debug_assert!(self.flows[dir as usize].held <= self.config.holder_capacity);
                let src = &mut self.ready[dir.src() as usize];
                if !src.hung_up {
                    src.readable = false;
                }
                self.last_activity = now;
            }
            ConnEvent::HangUp { side } => {
                let r = &mut self.ready[side as usize];
                r.hung_up = true;
                r.readable = true;
            }
            ConnEvent::Sent { dir, bytes } => {
                let f = &mut self.flows[dir as usize];
                debug_assert!(bytes <= f.held);
                f.held -= bytes.min(f.held);
                if bytes > 0 {
                    f.stalled = false;
                    self.last_activity = now;
                }
            }
            ConnEvent::ReceiveWouldBlock { dir } => {
                if self.flows[dir as usize].held == 0 {
                    self.ready[dir.src() as usize].readable = false;
                } else {
                    self.flows[dir as usize].stalled = true;
                }
            }
            ConnEvent::SendWouldBlock { dir } => {
                self.ready[dir.dst() as usize].writable = false;
            }
            ConnEvent::Failed { side, .. } => {
                // Whatever broke one side, the other learns it by a reset, never by a
                // clean FIN that would make a truncated stream look complete.
                self.close(true, true, CloseReason::Broken(side));
            }
        }
        self.check_invariants();
    }

    /// The next operation to execute, or `None` when the connection waits for an event.
    pub fn poll_op(&mut self) -> Option<Op> {
        if let Some(op) = self.pending.take() {
            return Some(op);
        }
        if self.phase != Phase::Relaying {
            return None;
        }
        let order = [self.first, other_dir(self.first)];
        for dir in order {
            let cap = self.config.holder_capacity;
            let f = self.flows[dir as usize];
            let can_send = f.held > 0 && self.ready[dir.dst() as usize].writable;
            let can_receive =
                !f.eof && !f.stalled && f.held < cap && self.ready[dir.src() as usize].readable;
            if can_send || can_receive {
                if self.budget == 0 {
                    self.budget = TURN_BUDGET;
                    return Some(Op::Yield);
                }
                self.budget -= 1;
                self.first = other_dir(dir);
                return Some(if can_send {
                    Op::Send { dir, held: f.held }
                } else {
                    Op::Receive {
                        dir,
                        max: cap - f.held,
                    }
                });
            }
            if f.eof && f.held == 0 && !f.shut {
                self.flows[dir as usize].shut = true;
                return Some(Op::ShutdownWrite(dir.dst()));
            }
        }
        if self.flows.iter().all(|f| f.shut) {
            self.close(false, false, CloseReason::Done);
            return self.pending.take();
        }
        self.budget = TURN_BUDGET;
        None
    }

    /// When bytes last moved (or the connection was accepted).
    pub fn last_activity(&self) -> Instant {
        self.last_activity
    }

    /// When the idle timer fires, if nothing moves before then.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Relaying => Some(crate::deadline::after(
                self.last_activity,
                self.config.idle_timeout,
            )),
            Phase::Connecting | Phase::Closed => None,
        }
    }

    /// Tell the connection the time; closes it if its idle deadline has passed.
    ///
    /// An idle connection with no bytes in flight ends with FIN both ways. If bytes are
    /// still held (a peer stopped reading), they are lost: both sides are reset, so neither
    /// peer mistakes a truncated stream for a complete one.
    #[cfg(test)]
    pub fn handle_timeout(&mut self, now: Instant) {
        self.handle_timeout_queued(now, false);
    }

    /// [`Self::handle_timeout`], told whether the kernel still queues bytes of this
    /// connection (unread in, or unsent from, either socket): those are in flight too, so
    /// the idle close resets both sides then.
    pub fn handle_timeout_queued(&mut self, now: Instant, queued_in_kernel: bool) {
        if let Some(deadline) = self.deadline() {
            if now >= deadline {
                let lost = queued_in_kernel || self.flows.iter().any(|f| f.held > 0);
                self.close(lost, lost, CloseReason::IdleTimeout);
            }
        }
    }

    /// Abort the connection (worker shutdown, drain timeout, second signal): both sides
    /// reset, never a FIN that would make a cut stream look complete.
    pub fn abort(&mut self) {
        if self.phase != Phase::Closed {
            self.close(true, true, CloseReason::Shutdown);
        }
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Why the connection closed (once closed).
    #[cfg(test)]
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.reason
    }

    /// Bytes held for `dir` (received, not yet sent).
    pub fn held(&self, dir: Dir) -> usize {
        self.flows[dir as usize].held
    }

    fn close(&mut self, reset_client: bool, reset_backend: bool, reason: CloseReason) {
        self.phase = Phase::Closed;
        self.reason = Some(reason);
        self.pending = Some(Op::Close {
            reset_client,
            reset_backend,
            reason,
        });
    }

    fn check_invariants(&self) {
        if cfg!(debug_assertions) {
            for f in &self.flows {
                assert!(f.held <= self.config.holder_capacity, "holder overfilled");
                assert!(!f.shut || (f.eof && f.held == 0), "FIN passed on early");
            }
        }
    }
}

fn other_dir(d: Dir) -> Dir {
    match d {
        Dir::ToBackend => Dir::ToClient,
        Dir::ToClient => Dir::ToBackend,
    }
}

#[cfg(test)]
mod tests;
