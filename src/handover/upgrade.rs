//! The old process's side of a hand-over (`sluice ctl upgrade`, SIGUSR2): start the new
//! binary, offer it the sockets and the state, wait for it to be ready, let it accept,
//! and either finish (it is the daemon now) or roll back (it is stopped; nothing changed
//! here). One upgrade at a time ([`UpgradeSlot`]).
//!
//! While waiting for an answer the old process also watches the child itself, so a new
//! binary that crashes is noticed at once, not at the deadline; and after any failure it
//! reads what the child may have said last, so `ctl upgrade` reports the child's own error
//! ("config.toml:3:1: …"), not "connection closed".

use super::channel::{Channel, ChannelError, Deadline, MAX_FDS_PER_MESSAGE};
use super::flows::{CarriedFlow, FlowBatch};
use super::name::SocketName;
use super::process::{self, StartedAs};
use super::wire::{Frame, Hello, Manifest};
use super::{hello, Step, Timeouts};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a new process may take from its start to "ready" (loading the configuration,
/// with `--kubernetes` the first list of the API, starting workers).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a new process told to abort may take to exit before it is killed.
pub const ABORT_GRACE: Duration = Duration::from_secs(2);

/// Why an upgrade did not happen (the old process serves on in every case).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Another upgrade is under way.
    #[error(transparent)]
    Busy(#[from] Busy),
    /// sluice is PID 1 (a container's init).
    #[error(
        "sluice runs as process 1 (a container's init): its exit would end the container; \
         upgrade by replacing the container (a new image)"
    )]
    Pid1,
    /// The binary cannot or may not be run (the reason, with its path).
    #[error("{0}")]
    Binary(String),
    /// The binary could not be started.
    #[error("cannot start {}: {cause}", binary.display())]
    Spawn { binary: PathBuf, cause: io::Error },
    /// The hand-over socket could not be made.
    #[error("cannot make the hand-over socket: {0}")]
    Socket(io::Error),
    /// The new process said it cannot serve.
    #[error("the new process (pid {pid}) failed: {error}")]
    Failed { pid: u32, error: String },
    /// The new process exited without saying why (its own log line says).
    #[error("the new process (pid {pid}) {status} during the hand-over ({step})")]
    Exited {
        pid: u32,
        step: Step,
        /// "exited with status 1", "was killed by signal 11".
        status: String,
    },
    /// The channel failed (a timeout, the other end closed).
    #[error("hand-over ({step}) with the new process (pid {pid}): {cause}")]
    Channel {
        pid: u32,
        step: Step,
        cause: ChannelError,
    },
    /// The new process does not speak this protocol, or broke its order.
    #[error("hand-over ({step}) with the new process (pid {pid}): {detail}")]
    Protocol {
        pid: u32,
        step: Step,
        detail: String,
    },
}

/// An upgrade under way: the new process and our end of its channel. Dropping it before
/// [`Upgrade::finish`] rolls back (the new process is told to abort, then killed).
pub struct Upgrade {
    child: Option<Child>,
    pid: u32,
    channel: Channel,
    successor: Hello,
    timeouts: Timeouts,
    /// Finished or rolled back: nothing left to do on drop.
    done: bool,
}

impl Upgrade {
    /// Starts `binary` (default: the one this process was started from) with this
    /// process's arguments and exchanges hellos with it.
    pub fn start(
        started: &StartedAs,
        binary: Option<&Path>,
        timeouts: Timeouts,
    ) -> Result<Upgrade, UpgradeError> {
        if std::process::id() == 1 {
            return Err(UpgradeError::Pid1);
        }
        let binary = binary.unwrap_or(&started.binary);
        process::check_binary(binary).map_err(UpgradeError::Binary)?;
        let (ours, theirs) = UnixStream::pair().map_err(UpgradeError::Socket)?;
        let child = process::spawn(binary, started, OwnedFd::from(theirs)).map_err(|cause| {
            UpgradeError::Spawn {
                binary: binary.to_owned(),
                cause,
            }
        })?;
        let pid = child.id();
        let channel = Channel::new(ours).map_err(UpgradeError::Socket)?;
        Upgrade::handshake(channel, Some(child), pid, timeouts)
    }

    /// Hellos over `channel` with the process `pid` (`child`, when this process started it;
    /// a channel the caller made, in tests).
    pub fn handshake(
        channel: Channel,
        child: Option<Child>,
        pid: u32,
        timeouts: Timeouts,
    ) -> Result<Upgrade, UpgradeError> {
        let mut upgrade = Upgrade {
            child,
            pid,
            channel,
            successor: hello(),
            timeouts,
            done: false,
        };
        let step = Step::Hello;
        let deadline = Deadline::after(timeouts.step);
        upgrade
            .channel
            .send(&Frame::Hello(hello()), &[], deadline)
            .map_err(|cause| upgrade.explain(step, cause))?;
        let theirs = match upgrade.recv(step, deadline, "the new process's hello")? {
            Frame::Hello(h) => h,
            other => return Err(upgrade.unexpected(step, "hello", other)),
        };
        if let Err(detail) = super::check_hello(&theirs) {
            return Err(UpgradeError::Protocol { pid, step, detail });
        }
        upgrade.successor = theirs;
        Ok(upgrade)
    }

    /// The new process's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The new process's version (from its hello).
    pub fn version(&self) -> &str {
        &self.successor.version
    }

    /// Passes every socket under its name (fds in chunks of at most 253), then the state.
    pub fn offer(
        &mut self,
        sockets: &[(SocketName, BorrowedFd<'_>)],
        state: &serde_json::Value,
    ) -> Result<(), UpgradeError> {
        let step = Step::Offer;
        let deadline = Deadline::after(self.timeouts.step);
        let manifest = Manifest {
            sockets: sockets.iter().map(|(n, _)| n.to_string()).collect(),
        };
        self.send(step, &Frame::Manifest(manifest), &[], deadline)?;
        let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, fd)| *fd).collect();
        for (i, chunk) in fds.chunks(MAX_FDS_PER_MESSAGE).enumerate() {
            let frame = Frame::Fds {
                first: (i * MAX_FDS_PER_MESSAGE) as u32,
                count: chunk.len() as u16,
            };
            self.send(step, &frame, chunk, deadline)?;
        }
        self.send(step, &Frame::State(state.clone()), &[], deadline)?;
        self.send(step, &Frame::OfferEnd, &[], deadline)
    }

    /// Whether the new process takes UDP flows (its protocol is 2 or later).
    pub fn takes_flows(&self) -> bool {
        self.successor.protocol >= super::FLOWS_PROTOCOL_VERSION
    }

    /// Sends UDP flows of the old process's worker `worker` with their upstream sockets
    /// (between "ready" and "go"; at most [`MAX_FDS_PER_MESSAGE`] per call, and only when
    /// [`Self::takes_flows`]). The duplicates are the caller's to close afterwards.
    pub fn send_flows(
        &mut self,
        worker: u32,
        flows: &[(CarriedFlow, OwnedFd)],
    ) -> Result<(), UpgradeError> {
        let step = Step::Flows;
        let deadline = Deadline::after(self.timeouts.step);
        let batch = FlowBatch {
            worker,
            flows: flows.iter().map(|(c, _)| c.clone()).collect(),
        };
        let fds: Vec<BorrowedFd<'_>> = flows.iter().map(|(_, fd)| fd.as_fd()).collect();
        self.send(step, &Frame::Flows(batch), &fds, deadline)
    }

    /// Waits for "ready" (up to the ready timeout). "Failed", an exit, silence or anything
    /// else is an error carrying the new process's own words where it sent any.
    pub fn wait_ready(&mut self) -> Result<(), UpgradeError> {
        let step = Step::Ready;
        let deadline = Deadline::after(self.timeouts.ready);
        match self.recv(step, deadline, "ready")? {
            Frame::Ready { pid } if pid == self.pid => Ok(()),
            Frame::Ready { pid } => Err(UpgradeError::Protocol {
                pid: self.pid,
                step,
                detail: format!("it says it is pid {pid}"),
            }),
            other => Err(self.unexpected(step, "ready", other)),
        }
    }

    /// "Go" (the new process starts accepting), then waits for "serving". After an error
    /// here the new process may have accepted connections: rolling back (dropping this)
    /// resets them — the one window of the hand-over where a failure costs connections.
    pub fn go(&mut self) -> Result<(), UpgradeError> {
        let step = Step::Serving;
        let deadline = Deadline::after(self.timeouts.step);
        self.send(step, &Frame::Go, &[], deadline)?;
        match self.recv(step, deadline, "serving")? {
            Frame::Serving => Ok(()),
            other => Err(self.unexpected(step, "serving", other)),
        }
    }

    /// Whether the new process reads a `counters` frame before "done".
    pub fn takes_final_counters(&self) -> bool {
        self.successor.final_counters
    }

    /// "Done": the new process is the daemon now (call after this one stopped accepting
    /// and, under systemd, named it the main PID). `counters` (this process's final
    /// totals) go first when the new process takes them. It is left running; returns its
    /// pid.
    pub fn finish(mut self, counters: Option<serde_json::Value>) -> u32 {
        if let Some(c) = counters.filter(|_| self.takes_final_counters()) {
            let _ = self.channel.send(
                &Frame::Counters(c),
                &[],
                Deadline::after(Duration::from_secs(1)),
            );
        }
        let _ = self
            .channel
            .send(&Frame::Done, &[], Deadline::after(Duration::from_secs(1)));
        // Not killed, not waited for: it outlives this process (and is reparented).
        drop(self.child.take());
        self.done = true;
        self.pid
    }

    /// Rolls back: tells the new process to abort, gives it [`ABORT_GRACE`] to exit, then
    /// kills it, and reaps it. Returns how it ended, for the log.
    pub fn abort(mut self, reason: &str) -> String {
        self.stop(reason)
    }

    fn stop(&mut self, reason: &str) -> String {
        self.done = true;
        let _ = self.channel.send(
            &Frame::Abort(reason.to_owned()),
            &[],
            Deadline::after(Duration::from_millis(200)),
        );
        let Some(mut child) = self.child.take() else {
            return "told to abort".into();
        };
        let deadline = Instant::now() + self.timeouts.abort_grace;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return describe(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => break,
            }
        }
        // Still running: the Child handle has not been reaped, so its pid is still this
        // process's child and cannot have been reused.
        let _ = child.kill();
        match child.wait() {
            Ok(status) => format!(
                "{} (killed after {:?})",
                describe(status),
                self.timeouts.abort_grace
            ),
            Err(e) => format!("could not be reaped: {e}"),
        }
    }

    fn send(
        &mut self,
        step: Step,
        frame: &Frame,
        fds: &[BorrowedFd<'_>],
        deadline: Deadline,
    ) -> Result<(), UpgradeError> {
        self.channel
            .send(frame, fds, deadline)
            .map_err(|cause| self.explain(step, cause))
    }

    /// Receives a frame, watching the child meanwhile: its exit ends the wait at once.
    fn recv(
        &mut self,
        step: Step,
        deadline: Deadline,
        waiting_for: &'static str,
    ) -> Result<Frame, UpgradeError> {
        loop {
            match wait_readable(
                &self.channel,
                deadline.remaining().min(Duration::from_millis(100)),
            ) {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => return Err(self.explain(step, e.into())),
            }
            if let Some(status) = self.exited() {
                // It may have said why before exiting.
                if let Ok(true) = wait_readable(&self.channel, Duration::ZERO) {
                    break;
                }
                return Err(UpgradeError::Exited {
                    pid: self.pid,
                    step,
                    status,
                });
            }
            if deadline.remaining().is_zero() {
                break;
            }
        }
        match self.channel.recv(deadline, waiting_for) {
            Ok(Frame::Failed(error)) => Err(UpgradeError::Failed {
                pid: self.pid,
                error,
            }),
            Ok(frame) => Ok(frame),
            Err(cause) => Err(self.explain(step, cause)),
        }
    }

    /// Turns a channel error into the best explanation: the child's last words ("failed"),
    /// else its exit, else the channel error itself.
    fn explain(&mut self, step: Step, cause: ChannelError) -> UpgradeError {
        if matches!(cause, ChannelError::Closed { .. } | ChannelError::Io(_)) {
            if let Ok(Frame::Failed(error)) = self
                .channel
                .recv(Deadline::after(Duration::from_millis(200)), "last words")
            {
                return UpgradeError::Failed {
                    pid: self.pid,
                    error,
                };
            }
            // Give an exiting child a moment to be seen as exited.
            let until = Instant::now() + Duration::from_millis(500);
            while Instant::now() < until {
                if let Some(status) = self.exited() {
                    return UpgradeError::Exited {
                        pid: self.pid,
                        step,
                        status,
                    };
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        UpgradeError::Channel {
            pid: self.pid,
            step,
            cause,
        }
    }

    fn unexpected(&self, step: Step, expected: &str, got: Frame) -> UpgradeError {
        UpgradeError::Protocol {
            pid: self.pid,
            step,
            detail: format!("expected {expected}, got {}", got.name()),
        }
    }

    /// How the child ended, if it has (not reaped: `try_wait` keeps the status).
    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(describe(status)),
            _ => None,
        }
    }
}

impl Drop for Upgrade {
    fn drop(&mut self) {
        if !self.done {
            let how = self.stop("the upgrade was cancelled");
            tracing::info!(pid = self.pid, outcome = %how, "stopped the new process (rollback)");
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => format!("ended ({status})"),
    }
}

/// Whether the channel has something to read (or was closed) within `timeout`.
fn wait_readable(fd: &impl AsFd, timeout: Duration) -> io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let ts = Timespec::try_from(timeout).unwrap_or(Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    });
    match poll(&mut fds, Some(&ts)) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// At most one upgrade at a time, for the whole process.
#[derive(Debug, Clone, Default)]
pub struct UpgradeSlot {
    current: Arc<Mutex<Option<InFlight>>>,
}

#[derive(Debug, Clone)]
struct InFlight {
    since: Instant,
    by: String,
    successor: Option<u32>,
}

/// A second upgrade asked for while one is under way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an upgrade is already in progress (asked by {by} {ago:.1?} ago{successor}): wait for its outcome")]
pub struct Busy {
    pub by: String,
    pub ago: Duration,
    /// `, new process pid 1234` once it started.
    successor: String,
}

/// Holds the slot; dropping it frees it.
#[derive(Debug)]
pub struct UpgradeTicket {
    current: Arc<Mutex<Option<InFlight>>>,
}

impl UpgradeSlot {
    /// Takes the slot for an upgrade asked for `by` (`ctl upgrade`, `SIGUSR2`), or says who
    /// holds it.
    pub fn try_begin(&self, by: &str) -> Result<UpgradeTicket, Busy> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = current.as_ref() {
            return Err(Busy {
                by: f.by.clone(),
                ago: f.since.elapsed(),
                successor: f
                    .successor
                    .map(|p| format!(", new process pid {p}"))
                    .unwrap_or_default(),
            });
        }
        *current = Some(InFlight {
            since: Instant::now(),
            by: by.to_owned(),
            successor: None,
        });
        Ok(UpgradeTicket {
            current: Arc::clone(&self.current),
        })
    }

    /// Whether an upgrade is under way (reloads wait for its outcome).
    pub fn busy(&self) -> bool {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

impl UpgradeTicket {
    /// Records the new process's pid (shown to a second asker).
    pub fn set_successor(&self, pid: u32) {
        if let Some(f) = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            f.successor = Some(pid);
        }
    }
}

impl Drop for UpgradeTicket {
    fn drop(&mut self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_upgrade_at_a_time() {
        let slot = UpgradeSlot::default();
        let ticket = slot.try_begin("ctl upgrade").unwrap();
        assert!(slot.busy());
        ticket.set_successor(4321);
        let e = slot.try_begin("SIGUSR2").unwrap_err();
        assert_eq!(e.by, "ctl upgrade");
        let text = e.to_string();
        assert!(
            text.starts_with("an upgrade is already in progress (asked by ctl upgrade ")
                && text.ends_with("ago, new process pid 4321): wait for its outcome"),
            "{text}"
        );
        drop(ticket);
        assert!(!slot.busy());
        let _again = slot.try_begin("SIGUSR2").unwrap();
    }
}
