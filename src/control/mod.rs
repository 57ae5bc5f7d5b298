//! The control plane: one thread running a tokio current-thread runtime that owns the
//! configuration, the reload transaction, the control socket, the metrics/health listeners,
//! signals and sd_notify. It never touches a data-plane connection. (A Kubernetes watch runs
//! on its own thread and reaches this one through [`DaemonEvent::SourceChanged`].)
//!
//! This file is the wiring: the module list, [`run`] (start-up, the select loop, shutdown)
//! and the types `main` passes in. The rooms:
//!
//! | file | what it owns |
//! |---|---|
//! | `daemon.rs` | the daemon's state, start-up, **the reload transaction**, republishing |
//! | `reload.rs` | the pure parts of a reload: `diff`, start-only settings, phase timings |
//! | `source.rs` | [`ConfigSource`]: file, built-in, manifests, Kubernetes watch |
//! | `source_files.rs` | reading the source's files off the loop, queued reloads |
//! | `requests.rs` | what a `ctl` request does (dispatch, endpoint overrides) |
//! | `views.rs` | **what `ctl` shows**: status, services, endpoints, describe data |
//! | `flows.rs` | `ctl flows`: the workers' live flows and connections, awaited off the loop |
//! | [`protocol`] | the versioned JSON-lines protocol of the control socket |
//! | `socket.rs` | the Unix socket server, its peer checks and fairness |
//! | [`render`] | human output of `sluice ctl` |
//! | [`client`] | what `sluice ctl` runs |
//! | [`overrides`] | runtime endpoint drain/disable/weight |
//! | [`endpoint_health`] | active checks and passive ejection of endpoints |
//! | `healthz.rs` | the process's own health (`/healthz`, `/livez`) |
//! | `hcnp.rs` | kube-proxy's healthCheckNodePort servers |
//! | `metrics` | `/metrics` and the HTTP listeners |
//! | `notify.rs` | sd_notify and the heartbeat-gated watchdog |
//! | `listeners.rs` | which listeners the model and the node's addresses call for (pure) |
//! | `relisten.rs` | listeners following the model and the node's addresses |
//! | `port_owner.rs` | one sluice per NodePort |
//! | `fatal.rs` | a dead worker takes the process down |
//! | [`node`] | this node's addresses |
//! | `upgrade.rs` | `ctl upgrade` / SIGUSR2: admission, the steps off the loop, what is carried |
//! | `successor.rs` | the new process's side of an upgrade or fd-store restart |
//! | `carried.rs` | counter totals across an upgrade: collected by the old process, applied by the new |

mod carried;
pub mod client;
mod daemon;
pub mod endpoint_health;
mod fatal;
mod flows;
mod hcnp;
mod healthz;
mod listeners;
mod metrics;
pub mod node;
mod notify;
pub mod overrides;
mod port_owner;
pub mod protocol;
mod relisten;
mod reload;
pub mod render;
mod requests;
mod socket;
mod source;
mod source_files;
mod successor;
mod upgrade;
mod views;

pub use port_owner::PortTaken;
pub use socket::{
    default_path as default_control_socket, default_paths as default_control_sockets,
    remove_control_socket,
};
pub use source::{ConfigSource, LoadError};

use crate::config::ConfigError;
use crate::dataplane::StartError;
use daemon::{Daemon, ReloadWaiter, Serving, Start};
pub use fatal::WORKER_DIED;
use protocol::Request;
use source_files::Reloads;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

/// Something a background task of the control plane (health checks, a Kubernetes watch)
/// tells the daemon's loop.
#[derive(Debug)]
pub enum DaemonEvent {
    /// The health state of some endpoint changed: build and publish a new snapshot.
    HealthChanged,
    /// The configuration source has new content (e.g. watched objects changed):
    /// reload from it. `since` is when the first unapplied change arrived.
    SourceChanged { since: Instant },
}

/// Changes the log filter at run time (`sluice ctl log-level`).
pub type LogFilterSetter = Box<dyn Fn(&str) -> Result<(), String> + Send>;

/// How `sluice run` starts the daemon.
pub struct Options {
    pub config: ConfigSource,
    /// `--workers`: wins over the file.
    pub workers: Option<usize>,
    /// `--driver`: wins over the file.
    pub driver: Option<crate::model::DriverSetting>,
    pub log_filter: Option<LogFilterSetter>,
    /// Called once when sluice serves, with the control socket's path when it has one
    /// (the demo prints the `sluice ctl` line to try).
    pub on_ready: Option<ReadyHook>,
    /// What this process inherited at start (`handover::inherit::from_env`): nothing, the
    /// sockets and state of a `ctl upgrade`, or systemd's fd store.
    pub inherit: crate::handover::Start,
}

/// See [`Options::on_ready`].
pub type ReadyHook = Box<dyn FnOnce(Option<&Path>) + Send>;

/// Why the daemon could not start (or stopped on an error).
///
/// Like every error of the crate, its message is complete and names each cause once: a
/// variant that adds words prints its cause and does not also return it from `source()`; a
/// variant that adds nothing is `transparent` (docs/architecture.md, "Errors").
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The configuration file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data plane could not start (a NodePort in use, no io_uring, …).
    #[error(transparent)]
    Start(#[from] StartError),
    /// The control socket could not be opened.
    #[error(transparent)]
    Socket(#[from] socket::SocketError),
    /// The metrics or health listener could not be opened.
    #[error("cannot listen on {addr} ({what}): {cause}")]
    Http {
        what: &'static str,
        addr: std::net::SocketAddr,
        cause: std::io::Error,
    },
    /// The runtime, a signal handler or the data plane failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The Kubernetes watch could not start (kubeconfig, node settings).
    #[error(transparent)]
    Kubernetes(#[from] crate::watch::WatchError),
    /// Another process listens on a NodePort to serve (another sluice).
    #[error(transparent)]
    NodePortTaken(#[from] PortTaken),
}

impl From<LoadError> for ControlError {
    /// An invalid file stays a [`ControlError::Config`] (`main` prints it alone).
    fn from(e: LoadError) -> ControlError {
        match e {
            LoadError::Config(e) => ControlError::Config(e),
            LoadError::Other(message) => std::io::Error::other(message).into(),
        }
    }
}

/// Runs the daemon until SIGTERM/SIGINT and a graceful drain (or a second signal).
///
/// On every way out (done, an error at start or later) the control socket file is removed;
/// the second signal's immediate exit removes it too, and anything else that ends the process
/// early can call [`remove_control_socket`]. A read of the configuration stuck in the kernel
/// is not waited for.
pub fn run(options: Options) -> Result<(), ControlError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(serve(options));
    runtime.shutdown_timeout(Duration::from_millis(100));
    remove_control_socket();
    result
}

async fn serve(mut options: Options) -> Result<(), ControlError> {
    let inherit = std::mem::replace(&mut options.inherit, crate::handover::Start::Fresh);
    let mut successor = upgrade::Successor::new(inherit);
    let result = serve_as(options, &mut successor).await;
    if let Err(e) = &result {
        // A new process started by `ctl upgrade` says why it cannot serve (the old one
        // serves on and reports it); nothing was accepted here.
        successor.failed(&e.to_string());
    }
    result
}

async fn serve_as(
    options: Options,
    successor: &mut upgrade::Successor,
) -> Result<(), ControlError> {
    // Handlers first: from here on SIGTERM means "drain", SIGHUP "reload" (before this,
    // `main` has SIGHUP ignored, so a reload asked for during start-up cannot end sluice).
    let mut stop = StopSignals {
        term: signal(SignalKind::terminate())?,
        int: signal(SignalKind::interrupt())?,
    };
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigusr2 = signal(SignalKind::user_defined2())?;

    let (events_tx, mut events) = mpsc::unbounded_channel::<DaemonEvent>();
    let health = Arc::new(Mutex::new(healthz::ProcessHealth::new(1)));
    let mut source = options.config;
    // The files are read off this loop: a stuck read does not make SIGTERM wait.
    let Some(input) = stop.unless(source.read_plan(false).start()).await else {
        return Ok(());
    };
    let input = input?;
    let (tx, queued) = (events_tx.clone(), Arc::clone(&health));
    let source_metrics = source
        .start(move |since| {
            // kube-proxy's QueuedUpdate: /healthz turns unhealthy if it stays unapplied.
            healthz::lock(&queued).queued(since);
            let _ = tx.send(DaemonEvent::SourceChanged { since });
        })
        .await?;
    if stop.unless(source.wait_synced()).await.is_none() {
        return Ok(());
    }
    let model = source.load(input, None)?;
    let Serving {
        mut daemon,
        mut priority_jobs,
        mut jobs,
        control_path,
    } = Daemon::start(
        Start {
            source,
            source_metrics,
            model,
            health,
            events: events_tx,
            workers: options.workers,
            driver: options.driver,
            log_filter: options.log_filter,
        },
        successor,
    )
    .await?;
    if let Some(ready) = options.on_ready {
        ready(control_path.as_deref());
    }

    let mut ticker = tokio::time::interval(daemon.tick());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gate = notify::HeartbeatGate::default();
    // The node's addresses are read again this often: listeners follow them (CIDR listen
    // addresses, Services' external and LoadBalancer IPs becoming local or not).
    let mut address_poll = tokio::time::interval(node::POLL);
    address_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut jobs_open = true;
    let mut reloads = Reloads::<ReloadWaiter>::default();
    let mut underway: Option<upgrade::Underway> = None;

    loop {
        tokio::select! {
            _ = stop.signal() => break,
            _ = sighup.recv() => {
                reloads.request(ReloadWaiter::Signal, || daemon.reload_plan());
            }
            _ = sigusr2.recv() => match daemon.upgrade("SIGUSR2", None, None) {
                Ok(u) => underway = Some(u),
                Err(refused) => {
                    let why = refused.error.map(|e| e.message).unwrap_or_default();
                    tracing::error!(error = %why, "upgrade (SIGUSR2) refused; still serving");
                }
            },
            staged = upgrade::Underway::finished(&mut underway) => {
                let u = underway.take().expect("an upgrade was under way");
                match staged {
                    Ok(Ok((up, admitted))) => {
                        daemon.hand_over(up, admitted, u).await;
                        break;
                    }
                    Ok(Err(failed)) => u.fail(failed.0.to_string()),
                    Err(e) => u.fail(format!("the upgrade's task failed: {e}")),
                }
            }
            read = reloads.read(), if reloads.is_reading() => {
                let waiters = reloads.finished(|| daemon.reload_plan());
                let outcome = daemon.reload_with(read);
                daemon::answer_reload(&outcome, waiters);
            }
            Some(event) = events.recv() => {
                // Events that queued up while the last one was handled are merged: one
                // reload covers them all.
                let mut merged = vec![event];
                while let Ok(e) = events.try_recv() {
                    merged.push(e);
                }
                daemon.on_events(merged);
            }
            // Root's and the daemon's own requests first (socket.rs, "Fairness").
            job = next_job(&mut priority_jobs, &mut jobs), if jobs_open => match job {
                // Another binary than the installed one: only root and the daemon's uid.
                Some(((Request::Upgrade { binary: Some(_), .. }, reply), false)) => {
                    let _ = reply.send(protocol::Response::error(
                        "forbidden",
                        "only root and the daemon's own user may give `--binary`; others may \
                         upgrade to the binary the daemon was started from",
                    ));
                }
                Some(((Request::Reload, reply), _)) if daemon.upgrades.in_progress() => {
                    let _ = reply.send(upgrade::busy_refusal());
                }
                Some(((Request::Upgrade { binary, ready_timeout_seconds }, reply), _)) => {
                    match daemon.upgrade("ctl upgrade", binary.as_deref(), ready_timeout_seconds) {
                        Ok(mut u) => {
                            u.set_reply(reply);
                            underway = Some(u);
                        }
                        Err(refused) => {
                            let _ = reply.send(refused);
                        }
                    }
                }
                Some(((Request::Reload, reply), _)) => {
                    reloads.request(ReloadWaiter::Client(reply), || daemon.reload_plan());
                }
                // The workers answer off the loop (flows.rs).
                Some(((Request::Flows { service, limit }, reply), _)) => {
                    match daemon.flows(service.as_deref(), limit) {
                        Ok(pending) => {
                            tokio::task::spawn_blocking(move || {
                                let _ = reply.send(pending.answer());
                            });
                        }
                        Err(answer) => {
                            let _ = reply.send(answer);
                        }
                    }
                }
                Some(((request, reply), _)) => {
                    let response = daemon.handle(request);
                    let _ = reply.send(response);
                }
                None => jobs_open = false,
            },
            // Not during an upgrade: the sockets offered are the ones open now.
            _ = address_poll.tick(), if underway.is_none() => daemon.follow_node_addresses(),
            _ = ticker.tick() => daemon.check_heartbeats(&mut gate),
        }
    }

    // Shutdown: stop accepting, drain, exit; a second signal ends at once.
    let (plane, timeout) = daemon.stop();
    priority_jobs.close();
    jobs.close();
    // Reloads still waiting for their files are answered "busy" (their reply is dropped).
    drop(reloads);
    let aborter = plane.aborter();
    let mut drain = tokio::task::spawn_blocking(move || plane.drain(timeout));
    loop {
        tokio::select! {
            done = &mut drain => {
                match done {
                    Ok(Ok(report)) => tracing::info!(finished = report.finished, reset = report.reset, "drained; bye"),
                    Ok(Err(e)) => return Err(e.into()),
                    Err(e) => return Err(std::io::Error::other(e.to_string()).into()),
                }
                // Requests the HTTP listeners accepted before a hand-over: answered here
                // (their sockets live on in the new process).
                daemon.http_finished(Duration::from_secs(6)).await;
                // The answer to the request that ended us (`ctl upgrade`) may still be on
                // its way to the client: an exit now would close its connection unanswered.
                let unanswered = socket::replies_written(Duration::from_secs(2)).await;
                if unanswered > 0 {
                    tracing::warn!(unanswered, "exiting with control requests unanswered");
                }
                return Ok(());
            }
            _ = stop.signal() => second_signal(&aborter),
            // The drain is bounded by `drain_timeout`: keep the watchdog fed meanwhile.
            _ = ticker.tick() => daemon.feed_watchdog(),
        }
    }
}

/// SIGTERM and SIGINT: the first drains, a second one exits at once.
struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    /// Returns when either arrives.
    async fn signal(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }

    /// What `work` returns, or `None` when a stop signal comes first.
    async fn unless<T>(&mut self, work: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::select! {
            done = work => Some(done),
            _ = self.signal() => None,
        }
    }
}

/// Exit at once, but first have the workers reset every connection (an exit would close
/// them with a FIN, and a cut download would look complete to its client), and remove the
/// control socket file.
fn second_signal(aborter: &crate::dataplane::Aborter) -> ! {
    tracing::warn!("second signal: resetting every connection and exiting at once");
    aborter.abort(Duration::from_secs(2));
    remove_control_socket();
    std::process::exit(1)
}

/// The next request for the daemon: root's and the daemon's own uid's first; `None` when
/// the control socket is gone.
/// `privileged`: from root or the daemon's own uid.
async fn next_job(
    priority: &mut mpsc::Receiver<socket::Job>,
    normal: &mut mpsc::Receiver<socket::Job>,
) -> Option<(socket::Job, bool)> {
    tokio::select! {
        biased;
        Some(job) = priority.recv() => Some((job, true)),
        job = normal.recv() => job.map(|j| (j, false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What anyhow's `{:#}` (and any chain-walking logger) prints: the message, then each
    /// source's, joined by ": ".
    fn chain(e: &dyn std::error::Error) -> String {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        text
    }

    #[test]
    fn every_error_names_its_cause_once() {
        let in_use = || std::io::Error::from_raw_os_error(libc::EADDRINUSE);
        let cause = in_use().to_string();
        let addr: std::net::SocketAddr = "127.0.0.1:30000".parse().unwrap();
        let errors: Vec<ControlError> = vec![
            StartError::Listen {
                addr,
                node_port: 30000,
                protocol: crate::model::Protocol::Tcp,
                cause: in_use(),
            }
            .into(),
            StartError::Worker {
                index: 0,
                cause: in_use(),
            }
            .into(),
            StartError::Uring(in_use()).into(),
            socket::SocketError::Io {
                path: "/run/sluice/control.sock".into(),
                cause: in_use(),
            }
            .into(),
            ControlError::Http {
                what: "metrics_address",
                addr,
                cause: in_use(),
            },
            in_use().into(),
            std::io::Error::other(in_use()).into(),
        ];
        for e in &errors {
            let shown = chain(e);
            assert_eq!(shown.matches(&cause).count(), 1, "{shown}");
            assert_eq!(shown, e.to_string(), "Display alone says it all");
        }
        let config = ControlError::from(crate::watch::WatchError::Settings(ConfigError {
            origin: "node.toml".into(),
            line: 1,
            column: 2,
            message: "bad".into(),
        }));
        assert_eq!(chain(&config), "node.toml:1:2: bad");
    }
}
