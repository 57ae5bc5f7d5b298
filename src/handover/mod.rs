//! Hand-over: a running sluice passes its listening sockets and the state worth keeping
//! to a new process (`sluice ctl upgrade`, SIGUSR2), or leaves them in systemd's fd store
//! across `systemctl restart`, so that no connection is refused and none is cut while
//! the binary or the process changes. Never re-bind: the accept queues, the SO_REUSEPORT
//! groups and their steering programs stay exactly as they are.
//!
//! This module owns the protocol and the process mechanics; it knows nothing of workers,
//! snapshots or the control socket's requests. The daemon (`control`) decides which
//! sockets and which state to pass and what to do between the steps; the data plane
//! takes sockets by name. It depends on `model` for nothing: names are its own
//! ([`SocketName`]).
//!
//! # The sequence (old = the running daemon, new = the process it starts)
//! ```text
//!  old                                          new  (SLUICE_HANDOVER_FD=n)
//!  spawn(binary, same args) ──────────────────▶ inherit::from_env()
//!  hello ─────────────────────────────────────▶
//!    ◀───────────────────────────────────────── hello          (protocol versions checked)
//!  manifest, fds ×⌈N/253⌉, state, offer-end ──▶ each socket checked against its name
//!                                               load config, start workers NOT accepting
//!    ◀──────────────────────────── ready | failed: <error>     (old: READY_TIMEOUT)
//!  stop reading UDP (NodePort, upstream sockets)
//!  flows, fds ×⌈F/253⌉ (protocol ≥ 2) ────────▶ checked; each worker adopts its own
//!  go ────────────────────────────────────────▶ workers accept; control, metrics served
//!    ◀───────────────────────────────────────── serving
//!  stop accepting (listeners closed here, open there)
//!  MAINPID=new, BARRIER=1 (under systemd)
//!  stop answering /metrics; counters (when the
//!  new hello says final_counters) ────────────▶ counters start at the old totals
//!  done ──────────────────────────────────────▶ READY=1, watchdog, /metrics: it is the daemon
//!  drain live connections (drain_timeout), exit
//! ```
//! Every step is bounded ([`STEP_TIMEOUT`], [`upgrade::READY_TIMEOUT`]). Rollback: any
//! failure before "go" — the new binary does not start, fails its configuration, crashes,
//! is not ready in time, sends bad bytes — leaves the old process serving as if nothing
//! happened: the new one is told to abort, killed after [`upgrade::ABORT_GRACE`], and
//! reaped; it never accepted a connection, so the sockets it held were only copies, and the
//! old process reads its UDP sockets again (its flows are as they were: the datagrams that
//! arrived meanwhile wait in the sockets' queues). Between
//! "go" and "serving" both processes accept (from the same queues), which is harmless; a
//! failure there stops the new one and resets what it had accepted — the one window where a
//! failure costs connections.
//!
//! Submodules: [`name`] (socket names, also systemd's FDNAME), [`wire`] (frames as
//! bytes, no IO), [`channel`] (frames and SCM_RIGHTS over a Unix stream socket, with
//! deadlines), [`validate`] (is this fd the socket its name says), [`systemd`] (fd store,
//! LISTEN_FDS, MAINPID, barrier), [`process`] (which binary, how it is started and
//! stopped), [`upgrade`] (the old process's steps), [`inherit`] (the new process's
//! steps), [`state`] (the state blob), [`flows`] (UDP flows and their upstream sockets).
//!
//! No `unsafe` here: descriptors travel as `BorrowedFd`/`OwnedFd` through rustix; the
//! one adoption of an inherited descriptor number is the caller's ([`Adopt`]: `main` passes
//! the data plane's `adopt_inherited_fd`), so this module uses nothing else of the crate.

pub mod channel;
pub mod flows;
pub mod inherit;
pub mod name;
pub mod process;
pub mod state;
pub mod systemd;
pub mod upgrade;
pub mod validate;
pub mod wire;

pub use inherit::{InheritError, Inherited, Start};
pub use name::{SocketKind, SocketName};
pub use process::StartedAs;
pub use state::CarriedState;
pub use upgrade::{Upgrade, UpgradeError, UpgradeSlot};

use std::fmt;
use std::time::Duration;

/// Takes ownership of a descriptor this process inherited by number across exec (the
/// number is the environment's: `SLUICE_HANDOVER_FD`, `LISTEN_FDS`).
pub type Adopt = fn(std::os::fd::RawFd) -> std::io::Result<std::os::fd::OwnedFd>;

/// The environment variable naming the new process's end of the hand-over channel.
pub const HANDOVER_FD_ENV: &str = "SLUICE_HANDOVER_FD";
/// This version's protocol: 2 hands over UDP flows (`flows` frames between "ready" and
/// "go"); 1 did not.
pub const PROTOCOL_VERSION: u32 = 2;
/// The first protocol with `flows` frames.
pub const FLOWS_PROTOCOL_VERSION: u32 = 2;
/// The oldest protocol this version still speaks (an upgrade from an older sluice).
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// Bound of each step but "ready": hellos, the offer, go → serving, serving → done.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The bounds of a hand-over's steps (the defaults are the documented ones; tests shorten
/// them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Each step but "ready" ([`STEP_TIMEOUT`]).
    pub step: Duration,
    /// From the new process's start to its "ready" ([`upgrade::READY_TIMEOUT`]).
    pub ready: Duration,
    /// How long a new process told to abort may take to exit before it is killed
    /// ([`upgrade::ABORT_GRACE`]).
    pub abort_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            step: STEP_TIMEOUT,
            ready: upgrade::READY_TIMEOUT,
            abort_grace: upgrade::ABORT_GRACE,
        }
    }
}

/// A step of the hand-over, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Hello,
    Offer,
    Ready,
    Flows,
    Serving,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Hello => "hello",
            Step::Offer => "passing the sockets",
            Step::Ready => "waiting for ready",
            Step::Flows => "passing the UDP flows",
            Step::Serving => "go",
        })
    }
}

/// This process's hello.
fn hello() -> wire::Hello {
    wire::Hello {
        magic: wire::MAGIC.to_owned(),
        protocol: PROTOCOL_VERSION,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        final_counters: true,
    }
}

/// Whether the peer's hello is one this version can talk to.
fn check_hello(peer: &wire::Hello) -> Result<(), String> {
    if peer.magic != wire::MAGIC {
        return Err(format!(
            "the other process is not a sluice (hello says {:?})",
            peer.magic
        ));
    }
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&peer.protocol) {
        return Err(format!(
            "the other process (sluice {}) speaks hand-over protocol {}, this one (sluice {}) \
             speaks {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}: stop and start instead",
            peer.version,
            peer.protocol,
            env!("CARGO_PKG_VERSION")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
