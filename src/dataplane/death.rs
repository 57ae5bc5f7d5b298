//! When a worker thread dies: a panic, or its loop ending on an error it cannot recover from.
//!
//! A dead worker must never leave a half-deaf process behind: its listening sockets would
//! stay in their SO_REUSEPORT groups (the kernel keeps handing them connections nobody
//! accepts) while every other part of the process — the control socket, `/healthz`, the
//! other workers — says all is well. Restarting the worker in place is not safe: an io_uring
//! worker that unwinds frees buffers and connect arguments the kernel may still write to.
//! So the process goes down and the service manager starts a fresh one (Envoy does the same).
//!
//! This module only *reports* a death, once, to the handler the embedding program installs
//! with [`on_worker_death`]; the daemon's handler logs it, tells systemd, removes the control
//! socket and exits (`control`). It reports from the dying thread itself, before anything is
//! unwound: a panic is caught by a panic hook (installed with the handler) that recognises
//! worker threads by a thread-local mark. Without a handler (a program using the data plane
//! as a library) a dead worker's thread just ends, as any thread's does.
//!
//! For tests, builds with debug assertions (the `ci` profile) read `SLUICE_TEST_WORKER_DEATH`
//! (`INDEX:panic` or `INDEX:error`): worker INDEX then dies that way on its first accepted
//! connection. Release builds never read it.

use std::cell::Cell;
use std::sync::{Arc, Mutex, Once};

/// A worker that died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerDeath {
    /// Its index (thread `sluice-wN`).
    pub worker: usize,
    /// The panic message with its location, or the error its loop ended with.
    pub cause: String,
}

type Handler = Arc<dyn Fn(&WorkerDeath) + Send + Sync>;

static HANDLER: Mutex<Option<Handler>> = Mutex::new(None);
static HOOK: Once = Once::new();

thread_local! {
    /// Set on worker threads: their index.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Install `handler`, called on the dying worker's thread when a worker panics or its loop
/// fails (replacing any earlier handler). The daemon's handler does not return.
pub fn on_worker_death(handler: impl Fn(&WorkerDeath) + Send + Sync + 'static) {
    *lock() = Some(Arc::new(handler));
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // The usual message (and backtrace, with RUST_BACKTRACE) first.
            previous(info);
            let Some(worker) = WORKER.try_with(Cell::get).ok().flatten() else {
                return;
            };
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned());
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            report(WorkerDeath {
                worker,
                cause: format!("panicked{at}: {message}"),
            });
        }));
    });
}

/// Marks the calling thread as worker `index` (for the panic hook).
pub(super) fn mark_worker(index: usize) {
    WORKER.with(|w| w.set(Some(index)));
}

/// Tells the handler, if one is installed, that `death` happened.
pub(super) fn report(death: WorkerDeath) {
    let handler = lock().clone();
    if let Some(handler) = handler {
        handler(&death);
    }
}

fn lock() -> std::sync::MutexGuard<'static, Option<Handler>> {
    HANDLER.lock().unwrap_or_else(|p| p.into_inner())
}

/// How the test hook (`SLUICE_TEST_WORKER_DEATH`) makes a worker die.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InjectedDeath {
    Panic,
    Error,
}

/// The death injected into worker `index`, if this build has debug assertions and
/// `SLUICE_TEST_WORKER_DEATH` names it.
pub(super) fn injected(index: usize) -> Option<InjectedDeath> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let value = std::env::var("SLUICE_TEST_WORKER_DEATH").ok()?;
    let (who, how) = value.split_once(':')?;
    if who.trim().parse::<usize>().ok()? != index {
        return None;
    }
    match how.trim() {
        "panic" => Some(InjectedDeath::Panic),
        "error" => Some(InjectedDeath::Error),
        _ => None,
    }
}
