//! The daemon's answer to a dead worker (`dataplane::death`): take the whole process down so
//! that the service manager starts a fresh one, instead of serving on with a worker missing
//! (its NodePort sockets would stay in their SO_REUSEPORT groups, half-deaf, while `ctl` and
//! `/healthz` still said all was well).
//!
//! Runs on the dying worker's thread, before anything unwinds: logs the cause at error level
//! with the worker's index, tells systemd (`STOPPING=1` with the reason as `STATUS=`), removes
//! the control socket (if the file is still ours), and exits with [`WORKER_DIED`]. The unit's
//! `Restart=on-failure` then restarts sluice (docs/operations.md, "When a worker dies").

use super::notify::Notifier;
use std::sync::atomic::{AtomicBool, Ordering};

/// Exit status of a process taken down by a dead worker (`EX_SOFTWARE`, sysexits.h).
pub const WORKER_DIED: i32 = 70;

/// From now on, a worker that dies ends the process.
pub fn take_the_process_down_on_worker_death(notifier: Notifier) {
    static EXITING: AtomicBool = AtomicBool::new(false);
    crate::dataplane::on_worker_death(move |death| {
        if EXITING.swap(true, Ordering::SeqCst) {
            // Another worker died first and is taking the process down: wait for the end
            // (two threads must not run `exit` at once).
            loop {
                std::thread::park();
            }
        }
        tracing::error!(
            worker = death.worker,
            cause = %death.cause,
            "worker {} died: taking the whole process down so that the service manager \
             restarts it (exit status {WORKER_DIED})",
            death.worker
        );
        notifier.failing(&format!("worker {} died: {}", death.worker, death.cause));
        super::socket::remove_control_socket();
        std::process::exit(WORKER_DIED);
    });
}
