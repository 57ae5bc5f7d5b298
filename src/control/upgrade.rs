//! `sluice ctl upgrade` and SIGUSR2 on the daemon's side: admitting a request (one upgrade
//! at a time, a binary this daemon may run), and the steps that run off the control loop
//! (start the new process, offer it the sockets and the state, wait for it to be ready,
//! let it accept). What the loop does with the outcome — stop accepting and drain after
//! a success, serve on after a failure — is the daemon's (docs/operations.md, "Hitless
//! upgrade and restart"); the protocol is `handover`'s.

use super::protocol::Response;
use crate::handover::upgrade::UpgradeTicket;
use crate::handover::{self, SocketName, StartedAs, Timeouts, Upgrade, UpgradeError, UpgradeSlot};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

/// The daemon's upgrade state.
#[derive(Debug, Default)]
pub struct Upgrades {
    slot: UpgradeSlot,
}

/// An upgrade that may go ahead: the slot is held until this (or what it became) drops.
#[derive(Debug)]
// WIRING(issue 15): read by `stage`, which the daemon calls once the data plane can hand
// its listeners over.
#[allow(dead_code)]
pub struct Admitted {
    pub ticket: UpgradeTicket,
    pub binary: PathBuf,
    pub started: StartedAs,
    /// Who asked (`ctl upgrade`, `SIGUSR2`), for the log.
    pub by: &'static str,
}

impl Upgrades {
    /// Whether an upgrade is under way (reloads and overrides wait for its outcome: what
    /// they change would not reach the new process).
    pub fn in_progress(&self) -> bool {
        self.slot.busy()
    }

    /// Admits an upgrade asked `by` someone, or answers why not: one is under way
    /// (`in-progress`), the binary is not one this daemon may run, or it cannot know which
    /// binary it was started from (`invalid`).
    pub fn admit(&self, by: &'static str, binary: Option<&str>) -> Result<Admitted, Response> {
        let ticket = self
            .slot
            .try_begin(by)
            .map_err(|busy| Response::error("in-progress", busy.to_string()))?;
        let Some(started) = StartedAs::remembered() else {
            return Err(Response::error(
                "invalid",
                "this process does not know the binary it was started from (not `sluice run`)",
            ));
        };
        let binary = binary
            .map(PathBuf::from)
            .unwrap_or_else(|| started.binary.clone());
        handover::process::check_binary(&binary)
            .map_err(|e| Response::error("invalid", format!("cannot upgrade to {e}")))?;
        Ok(Admitted {
            ticket,
            binary,
            started: started.clone(),
            by,
        })
    }
}

/// The answer to a reload or an endpoint override asked for during an upgrade.
pub fn busy_refusal() -> Response {
    Response::error(
        "in-progress",
        "an upgrade is in progress: try again once it has finished (or failed)",
    )
}

impl super::daemon::Daemon {
    /// `ctl upgrade`, SIGUSR2: admits the request (one at a time, a binary this daemon may
    /// run), then hands over (docs/operations.md, "Hitless upgrade and restart").
    pub(super) fn upgrade(
        &mut self,
        by: &'static str,
        binary: Option<&str>,
        _ready_timeout_seconds: Option<u64>,
    ) -> Response {
        let admitted = match self.upgrades.admit(by, binary) {
            Ok(a) => a,
            Err(refused) => return refused,
        };
        drop(admitted);
        Response::error(
            "not-wired",
            "upgrade is not wired to the data plane in this build (issue 15)",
        )
    }
}

/// The blocking steps of an upgrade, for a blocking thread: start the new binary, offer it
/// `sockets` and `state`, wait until it is ready, tell it to accept and wait until it does.
/// On success the new process accepts on the very same sockets; the caller then stops
/// accepting here, names the new main PID to systemd, calls [`Upgrade::finish`] and drains.
/// On an error the new process was stopped (rolled back) and nothing changed here.
// WIRING(issue 15): called by `Daemon::upgrade` once the data plane can hand its listeners
// over (docs/operations.md, "Integration").
#[allow(dead_code)]
pub fn stage(
    admitted: &Admitted,
    sockets: &[(SocketName, OwnedFd)],
    state: &handover::CarriedState,
    timeouts: Timeouts,
) -> Result<Upgrade, UpgradeError> {
    let mut up = Upgrade::start(&admitted.started, Some(&admitted.binary), timeouts)?;
    admitted.ticket.set_successor(up.pid());
    tracing::info!(
        by = admitted.by,
        binary = %admitted.binary.display(),
        pid = up.pid(),
        version = up.version(),
        sockets = sockets.len(),
        "upgrade: new process started; passing the sockets"
    );
    let borrowed: Vec<(SocketName, BorrowedFd<'_>)> =
        sockets.iter().map(|(n, fd)| (*n, fd.as_fd())).collect();
    up.offer(&borrowed, &state.to_json())?;
    up.wait_ready()?;
    up.go()?;
    Ok(up)
}
