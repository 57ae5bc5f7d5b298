//! The control plane: one thread running a tokio current-thread runtime that owns the
//! configuration, the reload transaction, the control socket, the metrics/health listeners,
//! signals and sd_notify. It never touches a data-plane connection. (A Kubernetes watch runs
//! on its own thread and reaches this one through [`Event::SourceChanged`].)
//!
//! Submodules: [`protocol`] (the versioned JSON-lines protocol), `socket` (the Unix socket
//! server and its peer checks), [`render`] (human output of `sluice ctl`), [`overrides`]
//! (runtime endpoint drain/disable/weight), `metrics` (`/metrics`, `/healthz`, `/livez`),
//! `notify` (sd_notify and the heartbeat-gated watchdog), `plane` (the calls into the data
//! plane), [`client`] (what `sluice ctl` runs).
//!
//! # The reload transaction
//! `sluice ctl reload`, SIGHUP and `ExecReload` all run [`Daemon::reload`]:
//! parse + validate (with the running model, so allocated NodePorts stay) → keep the settings
//! that only apply at start → re-apply overrides → open new listeners (`Plane::prepare`) →
//! build the snapshot → publish (the one atomic swap) → hand listeners to workers and close
//! removed ones (`Plane::commit`). Any error before publish leaves everything as it was and
//! is reported (config errors as `FILE:LINE:COLUMN: message`). Live connections keep the
//! snapshot they were routed with, so a reload never cuts one.

mod changes;
pub mod client;
mod hcnp;
pub mod health;
mod metrics;
mod node;
mod notify;
pub mod overrides;
mod plane;
pub mod protocol;
pub mod render;
mod socket;
mod upgrade;

use crate::config::{self, ConfigError};
use crate::dataplane::StartError;
use crate::model::{Forwarding, HashKey, Model, Policy, Settings};
use crate::publish::Publisher;
use crate::stats::ConnTotals;
use crate::table::{RoutingSnapshot, StatsRegistry};
use overrides::{AdminState, Overrides, Selector};
use plane::Plane;
use protocol::{
    Counters, EndpointAction, EndpointInfo, OverrideOutcome, ReloadOutcome, Request, Response,
    ServiceList, ServicePortInfo, Status,
};
use serde_json::json;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// Where the configuration comes from.
pub enum ConfigSource {
    /// A TOML file, re-read on each reload.
    File(PathBuf),
    /// A model built in (the demo); reloads are refused.
    Fixed(Box<Model>),
    /// Kubernetes manifests in a directory (`--manifests`), re-read on each reload.
    Manifests(config::manifests::Manifests),
    /// Services and EndpointSlices watched on the Kubernetes API (`--kubernetes`); a change
    /// reloads from the watch's stores, an explicit reload also re-reads the node settings.
    Kubernetes(Box<crate::watch::Source>),
}

/// Something a background task of the control plane (health checks, a Kubernetes watch)
/// tells the daemon's loop.
#[derive(Debug)]
pub enum Event {
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
}

/// Why the daemon could not start (or stopped on an error).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The configuration file is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The data plane could not start (a NodePort in use, no io_uring, …).
    #[error(transparent)]
    Start(#[from] StartError),
    /// The control socket could not be opened.
    #[error("control socket {0}")]
    Socket(#[from] socket::SocketError),
    /// The metrics or health listener could not be opened.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Http {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The runtime, a signal handler or the data plane failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The Kubernetes watch could not start (kubeconfig, node settings).
    #[error(transparent)]
    Kubernetes(#[from] crate::watch::WatchError),
}

/// Runs the daemon until SIGTERM/SIGINT and a graceful drain (or a second signal).
pub fn run(options: Options) -> Result<(), ControlError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(options))
}

async fn serve(options: Options) -> Result<(), ControlError> {
    // Handlers first: from here on SIGTERM means "drain", SIGHUP "reload".
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigusr2 = signal(SignalKind::user_defined2())?;

    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let mut source = options.config;
    let mut source_metrics = None;
    let mut model = match &mut source {
        ConfigSource::File(path) => config::load_file(path, None)?,
        ConfigSource::Fixed(m) => (**m).clone(),
        ConfigSource::Manifests(m) => {
            let (model, problems) = m.load(None)?;
            log_problems(&problems);
            model
        }
        ConfigSource::Kubernetes(k) => {
            let tx = events_tx.clone();
            k.start(move |since| {
                let _ = tx.send(Event::SourceChanged { since });
            })
            .await?;
            source_metrics = Some(metrics::SourceMetrics::new(k.status()));
            // READY (and the NodePorts) only after the first full list: see
            // docs/kubernetes-watch.md, "Startup".
            tracing::info!("waiting for the first list of Services and EndpointSlices");
            tokio::select! {
                _ = k.wait_synced() => {}
                _ = sigterm.recv() => return Ok(()),
                _ = sigint.recv() => return Ok(()),
            }
            k.load(None, false).map_err(std::io::Error::other)?
        }
    };
    let workers = options
        .workers
        .or(model.settings.workers)
        .unwrap_or_else(|| crate::dataplane::sys::allowed_cpus().len().max(1));
    model.settings.workers = Some(workers);
    if let Some(d) = options.driver {
        model.settings.driver = d;
    }
    let settings = model.settings.clone();

    let control_socket = match socket::ControlSocket::bind(&settings.control) {
        Ok(s) => Some(s),
        Err(e) if settings.control.socket.is_none() => {
            tracing::warn!(error = %e, "no control socket (set `control_socket` to make this fatal)");
            None
        }
        Err(e) => return Err(e.into()),
    };
    check_tcp_migrate_req();
    let metrics_listener = bind_http(settings.metrics_address, "metrics_address").await?;
    let health_listener = bind_http(settings.health_address, "health_address").await?;

    let mut registry = StatsRegistry::new(workers);
    let overrides = Overrides::default();
    let node_addresses = node::addresses().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot list this node's addresses: only loopback clients count as the node itself");
        Vec::new()
    });
    let snapshot = RoutingSnapshot::build(&overrides.apply(&model), 1, &mut registry)
        .with_node_addresses(&node_addresses);
    let publisher = Publisher::new(snapshot);
    let mut plane = Plane::start(&settings, &node_ports(&model), &publisher)?;
    plane.steer_client_ips(&crate::dataplane::client_ip_ports(&model));
    let monitor = plane.monitor();
    let health = Arc::new(Mutex::new(metrics::Health::new(1)));

    let endpoint_health = health::HealthTracker::new(events_tx.clone());
    let (jobs_tx, mut jobs) = mpsc::channel::<socket::Job>(64);
    if let Some(s) = control_socket {
        tracing::info!(path = %s.path().display(), "control socket ready");
        tokio::spawn(s.serve(settings.control.clone(), jobs_tx.clone()));
    }
    drop(jobs_tx);
    let sources = metrics::Sources {
        publisher: publisher.clone(),
        monitor: monitor.clone(),
        health: Arc::clone(&health),
        endpoint_health: endpoint_health.shared(),
        source: source_metrics.clone(),
    };
    for (listener, what) in [
        (metrics_listener, metrics::Endpoints::MetricsAndHealth),
        (health_listener, metrics::Endpoints::HealthOnly),
    ] {
        if let Some(l) = listener {
            tokio::spawn(metrics::serve(l, what, sources.clone()));
        }
    }

    let health_check_node_ports = hcnp::HealthCheckServers::new(Arc::clone(&health));
    let mut daemon = Daemon {
        source,
        source_metrics,
        model,
        overrides,
        registry,
        publisher,
        plane: Some(plane),
        generation: 1,
        started: Instant::now(),
        reloads: 0,
        last_reload: None,
        health,
        notifier: notify::Notifier::from_env(),
        log_filter: options.log_filter,
        events: events_tx,
        endpoint_health,
        health_check_node_ports,
        problems_since: std::collections::HashMap::new(),
        upgrades: upgrade::Upgrades::default(),
    };
    daemon.after_publish();
    for s in &daemon.model.services {
        tracing::info!(
            service = %s.key,
            node_port = %format_args!("{}/{}", s.node_port, s.key.protocol),
            allocated = s.node_port_allocated,
            endpoints = s.endpoints.len(),
            "serving"
        );
    }
    let listen = daemon.plane().listen_addrs();
    tracing::info!(workers, driver = %monitor.driver(), addresses = ?listen, "sluice is serving");
    daemon.notifier.ready(&daemon.summary());

    let tick = daemon
        .notifier
        .watchdog_interval()
        .unwrap_or(Duration::from_secs(1))
        .max(Duration::from_millis(250));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gate = notify::HeartbeatGate::default();
    let jobs_open = true;
    let mut jobs_open = jobs_open;

    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                let outcome = daemon.reload();
                log_reload(&outcome, "SIGHUP");
            }
            _ = sigusr2.recv() => {
                let response = daemon.upgrade("SIGUSR2", None);
                if let Some(e) = response.error {
                    tracing::error!(error = %e.message, "upgrade (SIGUSR2) refused; still serving");
                }
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
            job = jobs.recv(), if jobs_open => match job {
                Some((request, reply)) => {
                    let response = daemon.handle(request);
                    let _ = reply.send(response);
                }
                None => jobs_open = false,
            },
            _ = ticker.tick() => {
                let beats = monitor.heartbeats();
                let stuck = gate.stuck(&beats);
                let alive = gate.all_advanced(beats);
                daemon.lock_health().workers_alive = alive;
                if alive {
                    if daemon.notifier.watchdog_interval().is_some() {
                        daemon.notifier.watchdog();
                    }
                } else {
                    tracing::error!(workers = ?stuck, "worker heartbeat stalled: withholding WATCHDOG=1");
                }
            }
        }
    }

    // Shutdown: stop accepting, drain, exit; a second signal ends at once.
    let timeout = daemon.model.settings.drain_timeout;
    tracing::info!(?timeout, "stopping: draining live connections");
    daemon.lock_health().stopping = true;
    daemon.notifier.stopping(&format!(
        "draining connections (up to {})",
        humantime::format_duration(timeout)
    ));
    jobs.close();
    let plane = daemon.plane.take().expect("the plane runs until shutdown");
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
                return Ok(());
            }
            _ = sigterm.recv() => second_signal(&aborter),
            _ = sigint.recv() => second_signal(&aborter),
            // The drain is bounded by `drain_timeout`: keep the watchdog fed meanwhile.
            _ = ticker.tick() => {
                if daemon.notifier.watchdog_interval().is_some() {
                    daemon.notifier.watchdog();
                }
            }
        }
    }
}

/// Exit at once, but first have the workers reset every connection (an exit would close
/// them with a FIN, and a cut download would look complete to its client).
fn second_signal(aborter: &crate::dataplane::Aborter) -> ! {
    tracing::warn!("second signal: resetting every connection and exiting at once");
    aborter.abort(Duration::from_secs(2));
    std::process::exit(1)
}

fn log_reload(outcome: &ReloadOutcome, by: &str) {
    if outcome.ok {
        tracing::info!(
            by,
            generation = outcome.generation,
            changes = outcome.changes.len(),
            "reloaded"
        );
    } else {
        tracing::error!(
            by,
            error = outcome.error.as_deref().unwrap_or("?"),
            "reload failed; still serving the previous configuration"
        );
    }
}

/// Problems with single Kubernetes objects: logged naming the object; the rest is served.
fn log_problems(problems: &[config::k8s::Problem]) {
    for p in problems {
        tracing::warn!(object = %p.object, "{}", p.message);
    }
}

async fn bind_http(
    addr: Option<std::net::SocketAddr>,
    what: &'static str,
) -> Result<Option<tokio::net::TcpListener>, ControlError> {
    let Some(addr) = addr else { return Ok(None) };
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ControlError::Http { what, addr, source })?;
    tracing::info!(address = %l.local_addr().unwrap_or(addr), what, "HTTP listener ready");
    Ok(Some(l))
}

use crate::dataplane::node_ports;

/// Everything the control thread owns.
struct Daemon {
    source: ConfigSource,
    /// The configuration as written (no overrides), with the settings in effect.
    model: Model,
    overrides: Overrides,
    registry: StatsRegistry,
    publisher: Publisher,
    plane: Option<Plane>,
    generation: u64,
    started: Instant,
    reloads: u64,
    last_reload: Option<ReloadOutcome>,
    health: metrics::SharedHealth,
    notifier: notify::Notifier,
    log_filter: Option<LogFilterSetter>,
    /// For background tasks to reach the daemon's loop.
    #[allow(dead_code)]
    events: mpsc::UnboundedSender<Event>,
    /// Active checks and passive ejection of endpoints (`health`).
    endpoint_health: health::HealthTracker,
    /// kube-proxy's healthCheckNodePort servers (LoadBalancer + Local Services).
    health_check_node_ports: hcnp::HealthCheckServers,
    /// `ctl upgrade` / SIGUSR2: one at a time.
    upgrades: upgrade::Upgrades,
    /// Sync-latency histogram and watch status (with `ConfigSource::Kubernetes`).
    source_metrics: Option<metrics::SourceMetrics>,
    /// When each problem of a Kubernetes Service (Service, reason, message) was first seen,
    /// for the Age column of `describe`'s Events.
    problems_since:
        std::collections::HashMap<(crate::model::ServiceName, String, String), SystemTime>,
}

impl Daemon {
    fn plane(&self) -> &Plane {
        self.plane.as_ref().expect("the plane runs until shutdown")
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, metrics::Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn summary(&self) -> String {
        format!(
            "serving {} service ports on {} listeners, generation {}",
            self.model.services.len(),
            self.plane().listen_addrs().len(),
            self.generation
        )
    }

    /// Handles the events that arrived together: one source reload for every
    /// `SourceChanged` (measured from the earliest; it publishes health state too), else
    /// one republish for health changes; then the sessions of endpoints marked down are
    /// shut down where the Service asks for it.
    fn on_events(&mut self, events: Vec<Event>) {
        let health = events.iter().any(|e| matches!(e, Event::HealthChanged));
        if health {
            self.endpoint_health.acknowledge();
        }
        let since = events
            .iter()
            .filter_map(|e| match e {
                Event::SourceChanged { since } => Some(*since),
                Event::HealthChanged => None,
            })
            .min();
        match since {
            Some(since) => {
                let outcome = self.reload_with(false);
                if outcome.ok {
                    tracing::debug!(
                        generation = outcome.generation,
                        changes = outcome.changes.len(),
                        latency = ?since.elapsed(),
                        "applied a change of the configuration source"
                    );
                    for c in &outcome.changes {
                        tracing::debug!("{c}");
                    }
                    if let Some(m) = &self.source_metrics {
                        m.synced(since.elapsed(), SystemTime::now());
                    }
                } else {
                    log_reload(&outcome, "source change");
                    if health {
                        self.republish();
                    }
                }
            }
            None if health => self.republish(),
            None => {}
        }
        if health {
            self.endpoint_health.shut_down_sessions();
        }
    }

    /// The model routing uses: the configured one with operator overrides applied and
    /// endpoints that health checks hold down (or operators disabled) marked unhealthy.
    fn effective(&self, model: &Model, overrides: &Overrides) -> Model {
        let mut m = overrides.apply(model);
        self.endpoint_health.mark_down(&mut m, overrides);
        m
    }

    /// After each publish: brings what follows the served model (listeners of the
    /// control plane, health checks) in line with it.
    fn after_publish(&mut self) {
        let snapshot = self.publisher.current();
        self.endpoint_health.sync(&snapshot, &self.overrides);
        self.health_check_node_ports.sync(&self.model);
        // First-seen times of the problems the model carries (dropped when they go).
        let now = SystemTime::now();
        let mut seen = std::collections::HashMap::new();
        for p in &self.model.services {
            let Some(meta) = &p.meta else { continue };
            for (reason, message) in &meta.warnings {
                let key = (p.key.service.clone(), reason.clone(), message.clone());
                let since = self.problems_since.get(&key).copied().unwrap_or(now);
                seen.insert(key, since);
            }
        }
        self.problems_since = seen;
    }

    /// The next model from the configuration source; `self.model` is passed in so
    /// allocated NodePorts (and other carried state) stay.
    /// `reread`: read files again (explicit reloads); a watched source's change reloads
    /// from what the watch holds.
    fn load_next(&self, reread: bool) -> Result<Model, String> {
        match &self.source {
            ConfigSource::File(path) => {
                config::load_file(path, Some(&self.model)).map_err(|e| e.to_string())
            }
            ConfigSource::Fixed(_) => {
                Err("this daemon runs a built-in configuration (demo): nothing to reload".into())
            }
            ConfigSource::Manifests(m) => {
                let (model, problems) = m.load(Some(&self.model)).map_err(|e| e.to_string())?;
                log_problems(&problems);
                Ok(model)
            }
            ConfigSource::Kubernetes(k) => k.load(Some(&self.model), reread),
        }
    }

    fn handle(&mut self, request: Request) -> Response {
        match request {
            Request::Status => Response::ok(json!(self.status())),
            Request::Services | Request::Stats => Response::ok(json!(self.service_list(|_| true))),
            Request::Endpoints { service } => {
                let list = self.service_list(|p| {
                    service.as_ref().is_none_or(|s| {
                        let sel = s.split_once('/');
                        match sel {
                            Some((ns, n)) => p.namespace == ns && p.name == n,
                            None => p.name == *s,
                        }
                    })
                });
                if list.services.is_empty() && service.is_some() {
                    return Response::error(
                        "not-found",
                        format!("services {:?} not found", service.unwrap_or_default()),
                    );
                }
                Response::ok(json!(list))
            }
            Request::Describe { service, namespace } => {
                let ns = namespace.unwrap_or_else(|| "default".to_owned());
                let list = self.service_list(|p| p.namespace == ns && p.name == service);
                if list.services.is_empty() {
                    return Response::error(
                        "not-found",
                        format!("services {service:?} not found in namespace {ns:?}"),
                    );
                }
                Response::ok(json!(list))
            }
            Request::Reload | Request::Endpoint { .. } if self.upgrades.in_progress() => {
                // What it would change could not reach the new process any more.
                Response::error(
                    "in-progress",
                    "an upgrade is in progress: try again once it has finished (or failed)",
                )
            }
            Request::Reload => {
                let outcome = self.reload();
                log_reload(&outcome, "control socket");
                if outcome.ok {
                    Response::ok(json!(outcome))
                } else {
                    let mut r =
                        Response::error("reload-failed", outcome.error.clone().unwrap_or_default());
                    r.result = Some(json!(outcome));
                    r
                }
            }
            Request::Endpoint {
                action,
                service,
                address,
                weight,
            } => self.endpoint_override(action, &service, &address, weight),
            Request::Upgrade { binary } => self.upgrade("ctl upgrade", binary.as_deref()),
            Request::LogLevel { level } => match &self.log_filter {
                Some(set) => match set(&level) {
                    Ok(()) => {
                        tracing::info!(%level, "log level changed");
                        Response::ok(json!({ "level": level }))
                    }
                    Err(e) => Response::error("invalid", e),
                },
                None => Response::error("invalid", "this daemon cannot change its log level"),
            },
        }
    }

    /// `ctl upgrade`, SIGUSR2: admits the request (one at a time, a binary this daemon may
    /// run), then hands over (docs/operations.md, "Hitless upgrade and restart").
    fn upgrade(&mut self, by: &'static str, binary: Option<&str>) -> Response {
        let admitted = match self.upgrades.admit(by, binary) {
            Ok(a) => a,
            Err(refused) => return refused,
        };
        // WIRING(issue 15, after issue 13) — the one call left to make, off the loop:
        //   let sockets = <the data plane's listeners by name> + control/metrics/health;
        //   let state = <overrides, health, counters as handover::CarriedState>;
        //   spawn_blocking(upgrade::stage(&admitted, &sockets, &state, Timeouts::default()))
        //   → on Ok(up): stop accepting, MAINPID + barrier, up.finish(), reply, drain, exit;
        //   → on Err(e): reply `upgrade-failed` with e, serve on.
        // See the integration plan in docs/operations.md. Until then: refused, and said so.
        drop(admitted);
        Response::error(
            "not-wired",
            "upgrade is not wired to the data plane in this build (issue 15)",
        )
    }

    fn endpoint_override(
        &mut self,
        action: EndpointAction,
        service: &str,
        address: &str,
        weight: Option<u32>,
    ) -> Response {
        let sel = match Selector::parse(service, address) {
            Ok(s) => s,
            Err(e) => return Response::error("invalid", e),
        };
        if action == EndpointAction::Weight && weight.is_none() {
            return Response::error("invalid", "`endpoint weight` needs a weight");
        }
        if let Some(w) = weight.filter(|w| *w > 65535) {
            return Response::error(
                "invalid",
                format!("weight {w} is out of range: must be 0..=65535"),
            );
        }
        let mut overrides = self.overrides.clone();
        let hit = overrides.set(&self.model, &sel, |o| match action {
            EndpointAction::Drain => o.state = AdminState::Draining,
            EndpointAction::Disable => o.state = AdminState::Disabled,
            EndpointAction::Enable => o.state = AdminState::Enabled,
            EndpointAction::Weight => o.weight = weight,
        });
        let hit = match hit {
            Ok(h) => h,
            Err(e) => return Response::error("not-found", e),
        };
        self.overrides = overrides;
        self.republish();
        let affected = hit
            .iter()
            .map(|(key, addr)| {
                let o = self.overrides.get(key, *addr).unwrap_or_default();
                format!(
                    "{key} {addr} {}{}",
                    o.state.as_str(),
                    o.weight.map(|w| format!(" weight {w}")).unwrap_or_default()
                )
            })
            .collect();
        tracing::info!(?action, service, address, "endpoint override set");
        Response::ok(json!(OverrideOutcome {
            generation: self.generation,
            affected,
        }))
    }

    /// Builds and publishes a snapshot of the current model with the current overrides
    /// (no listener changes: the NodePorts are the same).
    fn republish(&mut self) {
        let effective = self.effective(&self.model, &self.overrides);
        self.generation += 1;
        let next =
            self.publisher
                .current()
                .rebuild(&effective, self.generation, &mut self.registry);
        self.publisher.publish(next);
        {
            let mut h = self.lock_health();
            h.generation = self.generation;
            h.last_updated = SystemTime::now();
        }
        self.after_publish();
    }

    /// The reload transaction (see the module docs). Never leaves a half-applied state.
    fn reload(&mut self) -> ReloadOutcome {
        self.reload_with(true)
    }

    /// [`reload`](Self::reload); `reread`: see [`load_next`](Self::load_next).
    fn reload_with(&mut self, reread: bool) -> ReloadOutcome {
        self.notifier.reloading();
        let at = SystemTime::now();
        let result = self.try_reload(reread);
        self.reloads += 1;
        let outcome = match result {
            Ok((changes, needs_restart)) => ReloadOutcome {
                ok: true,
                at_unix: metrics::unix_seconds(at),
                generation: self.generation,
                error: None,
                changes,
                needs_restart,
            },
            Err(error) => ReloadOutcome {
                ok: false,
                at_unix: metrics::unix_seconds(at),
                generation: self.generation,
                error: Some(error),
                changes: Vec::new(),
                needs_restart: Vec::new(),
            },
        };
        {
            let mut h = self.lock_health();
            if outcome.ok {
                h.reloads_ok += 1;
                h.last_updated = SystemTime::now();
            } else {
                h.reloads_failed += 1;
            }
            h.last_reload_ok = outcome.ok;
            h.last_reload_at = Some(at);
            h.generation = self.generation;
        }
        self.last_reload = Some(outcome.clone());
        let summary = if outcome.ok {
            self.summary()
        } else {
            format!("{}; last reload FAILED", self.summary())
        };
        self.notifier.ready(&summary);
        outcome
    }

    fn try_reload(&mut self, reread: bool) -> Result<(Vec<String>, Vec<String>), String> {
        let mut phases = Phases::new();
        let mut next = self.load_next(reread)?;
        phases.lap("load");
        let needs_restart = keep_start_only_settings(&self.model.settings, &mut next.settings);
        let mut overrides = self.overrides.clone();
        overrides.retain_existing(&next);
        let effective = self.effective(&next, &overrides);
        phases.lap("effective");
        let plane = self.plane.as_mut().expect("the plane runs until shutdown");
        let plan = plane
            .prepare(&effective.settings, &node_ports(&effective))
            .map_err(|e| e.to_string())?;
        phases.lap("prepare");
        // Nothing can fail from here on.
        let generation = self.generation + 1;
        let mut snapshot =
            self.publisher
                .current()
                .rebuild(&effective, generation, &mut self.registry);
        // The node's addresses may have changed (DHCP, an added VIP): read them again.
        match node::addresses() {
            Ok(a) => snapshot = snapshot.with_node_addresses(&a),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list this node's addresses; keeping the last known")
            }
        }
        phases.lap("rebuild");
        self.publisher.publish(snapshot);
        plane.commit(plan);
        plane.steer_client_ips(&crate::dataplane::client_ip_ports(&effective));
        phases.lap("commit");
        let changes = changes::diff(&self.model, &next);
        phases.lap("diff");
        self.model = next;
        self.overrides = overrides;
        self.generation = generation;
        self.after_publish();
        phases.lap("after_publish");
        tracing::debug!(generation, phases = %phases, "reload phases");
        Ok((changes, needs_restart))
    }

    fn status(&self) -> Status {
        let monitor = self.plane().monitor();
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            driver: monitor.driver().to_owned(),
            workers: monitor.workers(),
            generation: self.generation,
            config: match &self.source {
                ConfigSource::File(p) => Some(p.display().to_string()),
                ConfigSource::Fixed(_) => None,
                ConfigSource::Manifests(m) => Some(m.dir.display().to_string()),
                ConfigSource::Kubernetes(k) => Some(k.describe()),
            },
            service_ports: self.model.services.len(),
            listen: self
                .plane()
                .listen_addrs()
                .iter()
                .map(|a| a.to_string())
                .collect(),
            reloads: self.reloads,
            last_reload: self.last_reload.clone(),
        }
    }

    /// Every served Service port `keep` accepts, with endpoints, state and counters.
    fn service_list(&self, keep: impl Fn(&crate::model::ServiceName) -> bool) -> ServiceList {
        let snapshot = self.publisher.current();
        let health = self.endpoint_health.shared();
        let mut services = Vec::new();
        // By key: a scan per Service is quadratic (10,000 Services: seconds per request).
        let configured_by_key: std::collections::HashMap<_, _> =
            self.model.services.iter().map(|c| (&c.key, c)).collect();
        // Served nodePorts by Service and port name (describe shows allocated ones).
        let mut served_node_ports: std::collections::HashMap<
            &crate::model::ServiceName,
            std::collections::HashMap<&str, u16>,
        > = std::collections::HashMap::new();
        for c in self.model.services.iter().filter(|c| keep(&c.key.service)) {
            served_node_ports
                .entry(&c.key.service)
                .or_default()
                .insert(c.key.port_name.as_str(), c.node_port);
        }
        for (_, s) in snapshot.services() {
            let p = &s.port;
            // Before anything is computed: `ctl endpoints NAME` of one Service in 10,000.
            if !keep(&p.key.service) {
                continue;
            }
            let configured = configured_by_key.get(&p.key).copied();
            let endpoints: Vec<EndpointInfo> = s
                .endpoints()
                .iter()
                .map(|e| {
                    let addr = e.endpoint.addr;
                    let configured_weight = configured
                        .and_then(|c| c.endpoints.iter().find(|x| x.addr == addr))
                        .map_or(e.endpoint.weight, |x| x.weight);
                    let o = self.overrides.get(&p.key, addr);
                    let report = health.report(&p.key, addr);
                    let state = match o.map(|o| o.state) {
                        Some(AdminState::Draining) => "draining",
                        Some(AdminState::Disabled) => "disabled",
                        _ if e.endpoint.weight == 0 => "draining",
                        _ => "enabled",
                    };
                    EndpointInfo {
                        address: addr.to_string(),
                        configured_weight,
                        weight: e.routing_weight,
                        state: state.to_owned(),
                        overridden: o.is_some(),
                        ready: e.endpoint.conditions.ready,
                        serving: e.endpoint.conditions.serving,
                        terminating: e.endpoint.conditions.terminating,
                        local: e.endpoint.local,
                        health: if e.endpoint.healthy { "up" } else { "down" }.to_owned(),
                        health_reason: if e.endpoint.healthy {
                            None
                        } else if state == "disabled" {
                            Some("disabled by an operator".to_owned())
                        } else {
                            report.and_then(|r| r.reason)
                        },
                        counters: counters(e.stats.totals()),
                    }
                })
                .collect();
            let info = ServicePortInfo {
                namespace: p.key.service.namespace.clone(),
                name: p.key.service.name.clone(),
                port_name: p.key.port_name.clone(),
                protocol: p.key.protocol.to_string(),
                port: p.port,
                target_port: p.target_port,
                node_port: p.node_port,
                node_port_allocated: p.node_port_allocated,
                policy: match p.policy {
                    Policy::Maglev {
                        key: HashKey::ClientIpPort,
                    } => "maglev(client-ip-port)".to_owned(),
                    Policy::Maglev {
                        key: HashKey::ClientIp,
                    } => "maglev(client-ip)".to_owned(),
                    Policy::ClientIp { timeout, .. } => {
                        format!("client-ip({}s)", timeout.as_secs())
                    }
                    Policy::RoundRobin => "round-robin".to_owned(),
                    Policy::Random => "random".to_owned(),
                    Policy::LeastConnections => "least-connections".to_owned(),
                },
                session_affinity: match p.policy {
                    Policy::ClientIp { .. } => "ClientIP",
                    _ => "None",
                }
                .to_owned(),
                forwarding: match &p.forwarding {
                    Forwarding::None => "none",
                    Forwarding::ProxyV1 => "proxy-v1",
                    Forwarding::ProxyV2(_) => "proxy-v2",
                    Forwarding::Transparent => "transparent",
                }
                .to_owned(),
                endpoints_usable: endpoints.iter().filter(|e| e.weight > 0).count(),
                endpoints_total: endpoints.len(),
                counters: counters(s.stats.totals()),
                endpoints,
                kubernetes: p.meta.as_deref().map(|m| {
                    let served = served_node_ports
                        .get(&p.key.service)
                        .cloned()
                        .unwrap_or_default();
                    let age = |reason: &str, message: &str| {
                        self.problems_since
                            .get(&(p.key.service.clone(), reason.to_owned(), message.to_owned()))
                            .and_then(|t| t.elapsed().ok())
                            .map_or(0, |d| d.as_secs())
                    };
                    kubernetes_info(m, p, &served, &age)
                }),
            };
            services.push(info);
        }
        ServiceList {
            generation: snapshot.generation(),
            services,
        }
    }
}

/// The Kubernetes fields of `describe` for one Service port. `age`: seconds since a
/// problem of the Service was first seen.
fn kubernetes_info(
    m: &crate::model::ServiceMeta,
    p: &crate::model::ServicePort,
    served: &std::collections::HashMap<&str, u16>,
    age: &dyn Fn(&str, &str) -> u64,
) -> protocol::KubernetesInfo {
    protocol::KubernetesInfo {
        service_type: m.service_type.clone(),
        labels: m.labels.clone(),
        annotations: m.annotations.clone(),
        selector: m.selector.clone(),
        ip_family_policy: m.ip_family_policy.clone(),
        ip_families: m.ip_families.clone(),
        cluster_ip: m.cluster_ip.clone(),
        cluster_ips: m.cluster_ips.clone(),
        external_ips: m.external_ips.clone(),
        load_balancer_ingress: m.load_balancer_ingress.clone(),
        ports: m
            .ports
            .iter()
            .map(|sp| protocol::SpecPortInfo {
                name: sp.name.clone(),
                protocol: sp.protocol.clone(),
                port: sp.port,
                target_port: sp.target_port.clone(),
                // An allocated nodePort (manifests) is the one served.
                node_port: match served.get(sp.name.as_str()) {
                    Some(&n) if sp.node_port == 0 && sp.protocol == p.key.protocol.to_string() => {
                        i32::from(n)
                    }
                    _ => sp.node_port,
                },
                app_protocol: sp.app_protocol.clone(),
            })
            .collect(),
        session_affinity: m.session_affinity.clone(),
        external_traffic_policy: m.external_traffic_policy.clone(),
        internal_traffic_policy: m.internal_traffic_policy.clone(),
        traffic_distribution: m.traffic_distribution.clone(),
        load_balancer_source_ranges: m.load_balancer_source_ranges.clone(),
        health_check_node_port: m.health_check_node_port,
        events: m
            .warnings
            .iter()
            .map(|(reason, message)| protocol::EventInfo {
                type_: "Warning".into(),
                reason: reason.clone(),
                age_seconds: age(reason, message),
                from: "sluice".into(),
                message: message.clone(),
            })
            .collect(),
    }
}

fn counters(t: ConnTotals) -> Counters {
    Counters {
        connections_total: t.opened,
        connections_active: t.active(),
        connections_failed: t.failed,
        connect_retries: t.retries,
        bytes_to_backend: t.bytes_to_backend,
        bytes_to_client: t.bytes_to_client,
    }
}

/// Copies into `next` the settings that only apply when the daemon starts; returns the
/// names of those that differed (reported as "applies after a restart").
fn keep_start_only_settings(running: &Settings, next: &mut Settings) -> Vec<String> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($($field:ident => $name:literal),* $(,)?) => {$(
            if next.$field != running.$field {
                changed.push($name.to_owned());
                next.$field = running.$field.clone();
            }
        )*};
    }
    // `workers` in the running model is the resolved count; compare only what the file says.
    if next.workers.is_some() && next.workers != running.workers {
        changed.push("workers".to_owned());
    }
    next.workers = running.workers;
    keep!(
        pin_workers => "pin_workers",
        max_connections_per_worker => "max_connections_per_worker",
        max_held_per_worker => "max_held_per_worker",
        max_held_per_service => "max_held_per_service",
        relay => "relay",
        driver => "driver",
        control => "control_socket*",
        metrics_address => "metrics_address",
        health_address => "health_address",
    );
    changed
}

/// Wall time of each phase of a reload, for the debug log (`name=ms ...`).
struct Phases {
    at: Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn new() -> Phases {
        Phases {
            at: Instant::now(),
            laps: Vec::new(),
        }
    }

    fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.laps.push((name, now - self.at));
        self.at = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, d)) in self.laps.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{name}={:.1}ms", d.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

/// Warn when `net.ipv4.tcp_migrate_req` is 0 in this network namespace: then connections
/// waiting in the accept queue of a listener that a reload closes (or a worker's listener
/// closed on drain) are reset instead of moving to another listener of the group. sluice
/// does not change node settings itself; `systemd/99-sluice.conf` sets it.
fn check_tcp_migrate_req() {
    const PATH: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
    match std::fs::read_to_string(PATH) {
        Ok(v) if v.trim() == "0" => tracing::warn!(
            "net.ipv4.tcp_migrate_req is 0: connections queued on a listener that a reload \
             removes are reset instead of moving to another listener; set it to 1 \
             (systemd/99-sluice.conf does, see docs/operations.md)"
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "cannot read {PATH}"),
    }
}
