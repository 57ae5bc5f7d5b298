//! The daemon's state and the reload transaction: what the control thread owns
//! ([`Daemon`]), how it starts serving ([`Daemon::start`]), and every way a new snapshot gets
//! published — a reload of the source ([`Daemon::reload_with`]), a change the source or the
//! health checks report ([`Daemon::on_events`]), an operator override ([`Daemon::republish`]).
//!
//! # The reload transaction
//! `sluice ctl reload`, SIGHUP and `ExecReload` all ask for a reload: the source's files are
//! read off the loop (`source_files`, bounded in time and size), then [`Daemon::reload_with`]
//! runs on the loop: load + validate (with the running model, so allocated NodePorts stay;
//! [`ConfigSource::load`]) → keep the settings that only apply at start
//! ([`reload::keep_start_only_settings`]) → re-apply overrides → check that no other process
//! listens on new NodePorts (`port_owner`) → open new listeners for the node's addresses as
//! read now (`Daemon::prepare_listeners`, `relisten.rs`) → build the snapshot → publish (the
//! one atomic swap) → hand listeners to workers and close removed ones
//! (`Daemon::commit_listeners`) → say
//! what changed ([`reload::diff`]). Any error before publish leaves everything as it was and
//! is reported (config errors as `FILE:LINE:COLUMN: message`).
//! Live connections keep the snapshot they were routed with, so a reload never cuts one.
//!
//! What `ctl` requests do is `requests.rs`; what they show is `views.rs`.

use super::overrides::Overrides;
use super::protocol::{ReloadOutcome, Response};
use super::reload::{self, Phases};
use super::source::ConfigSource;
use super::source_files::{ReadInput, ReadPlan};
use super::{
    endpoint_health, hcnp, healthz, listeners, metrics, node, notify, port_owner, relisten, socket,
    ControlError, DaemonEvent, LogFilterSetter,
};
use crate::config::ConfigError;
use crate::dataplane::{Dataplane, Monitor};
use crate::model::{Model, ServiceName};
use crate::publish::Publisher;
use crate::table::{RoutingSnapshot, StatsRegistry};
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};

/// Everything the control thread owns.
pub(super) struct Daemon {
    pub(super) source: ConfigSource,
    /// The configuration as written (no overrides), with the settings in effect.
    pub(super) model: Model,
    pub(super) overrides: Overrides,
    registry: StatsRegistry,
    pub(super) publisher: Publisher,
    pub(super) plane: Option<Dataplane>,
    /// Worker heartbeats and loop stats (also after the plane is handed to the drain).
    pub(super) monitor: Monitor,
    pub(super) generation: u64,
    pub(super) started: Instant,
    /// When this process started serving (`ctl status`).
    pub(super) started_at: SystemTime,
    pub(super) reloads: u64,
    pub(super) last_reload: Option<ReloadOutcome>,
    pub(super) health: healthz::SharedProcessHealth,
    notifier: notify::Notifier,
    pub(super) log_filter: Option<LogFilterSetter>,
    /// For background tasks to reach the daemon's loop.
    #[allow(dead_code)]
    events: mpsc::UnboundedSender<DaemonEvent>,
    /// Active checks and passive ejection of endpoints (`endpoint_health`).
    pub(super) endpoint_health: endpoint_health::HealthTracker,
    /// kube-proxy's healthCheckNodePort servers (LoadBalancer + Local Services).
    pub(super) health_check_node_ports: hcnp::HealthCheckServers,
    /// Sync-latency histogram and watch status (with `ConfigSource::Kubernetes`).
    source_metrics: Option<metrics::SourceMetrics>,
    /// When each problem of a Kubernetes Service (Service, reason, message) was first seen,
    /// for the Age column of `describe`'s Events.
    pub(super) problems_since: HashMap<(ServiceName, String, String), SystemTime>,
    /// This node's addresses and the listeners that follow them (`relisten`).
    pub(super) listening: relisten::Listening,
    /// `ctl upgrade` / SIGUSR2: one at a time.
    pub(super) upgrades: super::upgrade::Upgrades,
    /// The control socket's serving task (stopped once a new process took it over; the
    /// connections under way are tasks of their own and finish).
    pub(super) servers: Vec<tokio::task::AbortHandle>,
    /// Set once a new process took the HTTP listeners over (metrics, health,
    /// healthCheckNodePorts): they stop accepting and let requests under way finish.
    pub(super) handed_over: tokio::sync::watch::Sender<bool>,
    /// The metrics and health servers' tasks: after a hand-over, awaited before exiting so
    /// that the requests they accepted are answered ([`Self::http_finished`]).
    pub(super) http_servers: Vec<tokio::task::JoinHandle<()>>,
    /// A duplicate of the control socket and of each HTTP listener, by name, to pass to a
    /// new process (`ctl upgrade`).
    pub(super) handover_fds: Vec<(crate::handover::SocketName, std::os::fd::OwnedFd)>,
    /// Process-wide counters a previous process carried over (`ctl upgrade`).
    pub(super) carried: super::carried::SharedCarried,
}

/// What start-up has before the daemon exists: the source, its first model, and what the
/// loop and the source's watch already share.
pub(super) struct Start {
    pub source: ConfigSource,
    pub source_metrics: Option<metrics::SourceMetrics>,
    pub model: Model,
    pub health: healthz::SharedProcessHealth,
    pub events: mpsc::UnboundedSender<DaemonEvent>,
    /// `--workers`: wins over the file.
    pub workers: Option<usize>,
    /// `--driver`: wins over the file.
    pub driver: Option<crate::model::DriverSetting>,
    pub log_filter: Option<LogFilterSetter>,
}

/// A daemon serving, and the queues of `ctl` requests its control socket fills.
pub(super) struct Serving {
    pub daemon: Daemon,
    /// Root's and the daemon's own uid's requests (socket.rs, "Fairness").
    pub priority_jobs: mpsc::Receiver<socket::Job>,
    pub jobs: mpsc::Receiver<socket::Job>,
    pub control_path: Option<PathBuf>,
}

impl Daemon {
    /// Opens the control socket and the HTTP listeners, publishes the first snapshot, starts
    /// the data plane and the background tasks: sluice serves when this returns.
    ///
    /// A successor (`ctl upgrade`, systemd's fd store) takes the sockets it inherited by
    /// name instead of binding them; after `ctl upgrade` it answers "ready" once everything
    /// is open, and its workers accept only after the old process's "go".
    pub(super) async fn start(
        start: Start,
        successor: &mut super::upgrade::Successor,
    ) -> Result<Serving, ControlError> {
        let Start {
            source,
            source_metrics,
            mut model,
            health,
            events: events_tx,
            workers,
            driver,
            log_filter,
        } = start;
        let mut workers = workers
            .or(model.settings.workers)
            .unwrap_or_else(crate::dataplane::default_workers);
        if let Some(inherited) = successor.workers() {
            if inherited != workers {
                tracing::warn!(
                    inherited,
                    configured = workers,
                    "keeping the previous process's number of workers (each inherited socket \
                     belongs to one worker); a new number applies after a stop and start"
                );
            }
            workers = inherited;
        }
        model.settings.workers = Some(workers);
        if let Some(d) = driver {
            model.settings.driver = d;
        }
        let settings = model.settings.clone();

        let control_socket = match successor.take_control() {
            Some(fd) => Ok(socket::ControlSocket::adopt(fd, &settings.control)?),
            None => socket::ControlSocket::bind(&settings.control),
        };
        let control_socket = match control_socket {
            Ok(s) => Some(s),
            Err(e) if settings.control.socket.is_none() => {
                tracing::warn!(error = %e, "no control socket (set `control_socket` to make this fatal)");
                None
            }
            Err(e) => return Err(e.into()),
        };
        super::fatal::take_the_process_down_on_worker_death(notify::Notifier::from_env());
        check_tcp_migrate_req();
        use crate::handover::{SocketKind, SocketName};
        let metrics_listener = bind_http(
            settings.metrics_address,
            "metrics_address",
            successor,
            SocketKind::Metrics,
        )?;
        let health_listener = bind_http(
            settings.health_address,
            "health_address",
            successor,
            SocketKind::Health,
        )?;
        let mut handover_fds = Vec::new();
        if let Some(fd) = control_socket.as_ref().and_then(|s| s.duplicate().ok()) {
            handover_fds.push((SocketName::Control, fd));
        }
        for (l, kind) in [
            (&metrics_listener, SocketKind::Metrics),
            (&health_listener, SocketKind::Health),
        ] {
            let Some(l) = l else { continue };
            use std::os::fd::AsFd;
            if let (Ok(addr), Ok(fd)) = (l.local_addr(), l.as_fd().try_clone_to_owned()) {
                handover_fds.push((SocketName::listener(kind, addr), fd));
            }
        }

        let mut registry = StatsRegistry::new(workers);
        let overrides = Overrides::default();
        let node_addresses = node::addresses().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot list this node's addresses: only loopback clients count as the node itself");
            Vec::new()
        });
        let started = Instant::now();
        let snapshot = RoutingSnapshot::build(&overrides.apply(&model), 1, &mut registry)
            .with_node_addresses(&node_addresses);
        let publisher = Publisher::new(snapshot);
        let wildcard = crate::dataplane::wildcard_address();
        let wanted = listeners::wanted(&model, &node_addresses, wildcard);
        // One sluice per NodePort: refuse before listening, and look again once listening
        // (two instances started at the same moment both stop).
        let listen: Vec<SocketAddr> = wanted.listeners.required.iter().map(|k| k.addr).collect();
        port_owner::check(&listen)?;
        {
            // The first sync: everything the source held is applied.
            let mut h = healthz::lock(&health);
            h.updated(SystemTime::now(), true);
            h.sync_durations.observe(started.elapsed().as_secs_f64());
        }
        // The healthCheckNodePorts before the NodePorts: a load balancer (or a client) that
        // reaches a NodePort finds its health check answering too, never refused.
        let (handed_over, handed_over_rx) = tokio::sync::watch::channel(false);
        let mut health_check_node_ports =
            hcnp::HealthCheckServers::new(std::sync::Arc::clone(&health), handed_over_rx.clone());
        // After `ctl upgrade`: the healthCheckNodePort listeners the old process passed.
        health_check_node_ports.inherit(successor.take_all(SocketKind::HealthCheckNodePort));
        health_check_node_ports.open_new(&model, wanted.node_port_addresses.as_deref());
        // NodePorts now (all or nothing); the Services' own addresses once the daemon is
        // built, where they can be bound.
        let mut plane = Dataplane::start_inheriting(
            &settings,
            &wanted.listeners.required,
            &publisher,
            successor.node_port_groups(),
            successor.is_upgrade(),
        )?;
        // Steering first: connections accepted before it is attached may meet a worker that
        // does not hold their client's affinity.
        plane.steer_client_ips(&wanted.steered);
        port_owner::check(&listen)?;
        let listening = relisten::Listening::new(node_addresses, wildcard, &wanted);
        let monitor = plane.monitor();
        let listen_ips = wanted
            .node_port_addresses
            .clone()
            .unwrap_or_else(|| vec![wildcard]);
        healthz::lock(&health).families = healthz::families_of(&listen_ips);

        let endpoint_health = endpoint_health::HealthTracker::new(events_tx.clone());
        let (priority_tx, priority_jobs) = mpsc::channel::<socket::Job>(64);
        let (jobs_tx, jobs) = mpsc::channel::<socket::Job>(64);
        let control_path = control_socket.as_ref().map(|s| s.path().to_path_buf());
        let sources = metrics::MetricsInputs {
            publisher: publisher.clone(),
            monitor: monitor.clone(),
            health: std::sync::Arc::clone(&health),
            endpoint_health: endpoint_health.shared(),
            source: source_metrics.clone(),
            carried: Default::default(),
        };

        let mut daemon = Daemon {
            source,
            source_metrics,
            model,
            overrides,
            registry,
            publisher,
            plane: Some(plane),
            monitor,
            generation: 1,
            started: Instant::now(),
            started_at: SystemTime::now(),
            reloads: 0,
            last_reload: None,
            health,
            notifier: notify::Notifier::from_env(),
            log_filter,
            events: events_tx,
            endpoint_health,
            health_check_node_ports,
            problems_since: HashMap::new(),
            listening,
            upgrades: Default::default(),
            servers: Vec::new(),
            http_servers: Vec::new(),
            handed_over,
            handover_fds,
            carried: sources.carried.clone(),
        };
        daemon.open_remaining_listeners();
        let unused = daemon
            .plane
            .as_mut()
            .expect("the plane runs until shutdown")
            .release_inherited();
        for key in unused {
            tracing::info!(address = %key.addr, "inherited NodePort listeners not served any more: closed");
        }
        successor.release_rest();
        daemon.after_publish();
        if let Some(state) = successor.take_state() {
            daemon.carry_in(state);
        }
        daemon.health_check_node_ports.release_inherited();
        if successor.is_upgrade() {
            // Everything is open, nothing accepts: "ready", then wait for the old
            // process's "go" (bounded), and only then accept.
            let flows = successor
                .ready(workers)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let plane = daemon
                .plane
                .as_mut()
                .expect("the plane runs until shutdown");
            super::upgrade::adopt_flows(plane, flows);
            plane.resume();
        }
        if let Some(s) = control_socket {
            tracing::info!(path = %s.path().display(), "control socket ready");
            let queues = socket::Queues {
                priority: priority_tx.clone(),
                normal: jobs_tx.clone(),
            };
            let task = tokio::spawn(s.serve(settings.control.clone(), queues));
            daemon.servers.push(task.abort_handle());
        }
        drop((priority_tx, jobs_tx));
        for (listener, what) in [
            (metrics_listener, metrics::Endpoints::MetricsAndHealth),
            (health_listener, metrics::Endpoints::HealthOnly),
        ] {
            if let Some(l) = listener {
                daemon.http_servers.push(tokio::spawn(metrics::serve(
                    l,
                    what,
                    sources.clone(),
                    handed_over_rx.clone(),
                    successor.http_start(),
                )));
            }
        }
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
        tracing::info!(workers, driver = %daemon.monitor.driver(), addresses = ?listen, "sluice is serving");
        let fd_store = daemon.sockets_for_fd_store();
        if successor.is_upgrade() {
            // READY=1 (and the fd store) once the old process said "done": it named this
            // one the main PID.
            successor.serving(daemon.summary(), fd_store, &sources);
        } else {
            super::upgrade::store(&fd_store);
            daemon.notifier.ready(&daemon.summary());
        }
        Ok(Serving {
            daemon,
            priority_jobs,
            jobs,
            control_path,
        })
    }

    pub(super) fn plane(&self) -> &Dataplane {
        self.plane.as_ref().expect("the plane runs until shutdown")
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, healthz::ProcessHealth> {
        healthz::lock(&self.health)
    }

    fn summary(&self) -> String {
        format!(
            "serving {} service ports on {} listeners, generation {}",
            self.model.services.len(),
            self.plane().listen_addrs().len(),
            self.generation
        )
    }

    /// What an explicit reload (SIGHUP, `ctl reload`) reads.
    pub(super) fn reload_plan(&self) -> ReadPlan {
        self.source.read_plan(true)
    }

    /// How often the loop looks at the workers' heartbeats: the watchdog's interval (at
    /// least 250 ms), else every second.
    pub(super) fn tick(&self) -> Duration {
        self.notifier
            .watchdog_interval()
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(250), crate::deadline::FAR_FUTURE)
    }

    /// On each tick: feeds the watchdog while every worker's heartbeat advances, withholds it
    /// (and turns `/livez` unhealthy) when one stalls.
    pub(super) fn check_heartbeats(&self, gate: &mut notify::HeartbeatGate) {
        let beats = self.monitor.heartbeats();
        let stuck = gate.stuck(&beats);
        let alive = gate.all_advanced(beats);
        self.lock_health().workers_alive = alive;
        if alive {
            self.feed_watchdog();
        } else {
            tracing::error!(workers = ?stuck, "worker heartbeat stalled: withholding WATCHDOG=1");
        }
    }

    /// WATCHDOG=1, when systemd asks for it.
    pub(super) fn feed_watchdog(&self) {
        if self.notifier.watchdog_interval().is_some() {
            self.notifier.watchdog();
        }
    }

    /// The start of the shutdown: says so (log, `/healthz`, sd_notify) and hands over the
    /// data plane to be drained within the returned timeout.
    pub(super) fn stop(&mut self) -> (Dataplane, Duration) {
        let timeout = self.model.settings.drain_timeout;
        tracing::info!(?timeout, "stopping: draining live connections");
        // After a hand-over the node's proxy is not stopping: the new process serves (and
        // is systemd's main process), and a health check answered here meanwhile must not
        // say otherwise.
        if !*self.handed_over.borrow() {
            self.lock_health().stopping = true;
            self.notifier.stopping(&format!(
                "draining connections (up to {})",
                humantime::format_duration(timeout)
            ));
        }
        let plane = self.plane.take().expect("the plane runs until shutdown");
        (plane, timeout)
    }

    /// After a hand-over, waits (at most `bound`) until the HTTP servers here (metrics,
    /// health, healthCheckNodePorts), which stopped accepting, have answered the requests
    /// they accepted before: an exit would reset those connections. Without a hand-over
    /// they serve until the exit (answering "stopping") and there is nothing to wait for.
    pub(super) async fn http_finished(&mut self, bound: Duration) {
        if !*self.handed_over.borrow() {
            return;
        }
        let mut tasks = std::mem::take(&mut self.http_servers);
        tasks.extend(self.health_check_node_ports.take_tasks());
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(bound, all).await.is_err() {
            tracing::warn!(
                ?bound,
                "exiting with HTTP requests (metrics, health, healthCheckNodePorts) unanswered"
            );
        }
    }

    /// Handles the events that arrived together: one source reload for every
    /// `SourceChanged` (measured from the earliest; it publishes health state too), else
    /// one republish for health changes; then the sessions of endpoints marked down are
    /// shut down where the Service asks for it.
    pub(super) fn on_events(&mut self, events: Vec<DaemonEvent>) {
        let health = events
            .iter()
            .any(|e| matches!(e, DaemonEvent::HealthChanged));
        if health {
            self.endpoint_health.acknowledge();
        }
        let since = events
            .iter()
            .filter_map(|e| match e {
                DaemonEvent::SourceChanged { since } => Some(*since),
                DaemonEvent::HealthChanged => None,
            })
            .min();
        match since {
            Some(since) => {
                let outcome = self.reload_with(Ok(ReadInput::Nothing));
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
        self.health_check_node_ports
            .sync(&self.model, self.listening.node_port_addresses.as_deref());
        // First-seen times of the problems the model carries (dropped when they go).
        let now = SystemTime::now();
        let mut seen = HashMap::new();
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

    /// Builds and publishes a snapshot of the current model with the current overrides
    /// (no listener changes: the NodePorts are the same).
    pub(super) fn republish(&mut self) {
        let started = Instant::now();
        let effective = self.effective(&self.model, &self.overrides);
        self.generation += 1;
        let next = self
            .publisher
            .current()
            .rebuild(&effective, self.generation, &mut self.registry)
            .with_node_addresses(&self.listening.node_addresses);
        self.publisher.publish(next);
        {
            let mut h = self.lock_health();
            h.generation = self.generation;
            // Published from the model held: a pending source change is still pending.
            h.updated(SystemTime::now(), false);
        }
        self.after_publish();
        self.lock_health()
            .sync_durations
            .observe(started.elapsed().as_secs_f64());
    }

    /// The reload transaction (see the module docs), with what was read of the source (or
    /// why it could not be read). Never leaves a half-applied state.
    pub(super) fn reload_with(&mut self, read: Result<ReadInput, ConfigError>) -> ReloadOutcome {
        self.notifier.reloading();
        let at = SystemTime::now();
        let started = Instant::now();
        let result = read
            .map_err(|e| e.to_string())
            .and_then(|input| self.try_reload(input));
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
                h.updated(SystemTime::now(), true);
            } else {
                h.reloads_failed += 1;
            }
            h.last_reload_ok = outcome.ok;
            h.last_reload_at = Some(at);
            h.generation = self.generation;
            h.sync_durations.observe(started.elapsed().as_secs_f64());
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

    fn try_reload(&mut self, input: ReadInput) -> Result<(Vec<String>, Vec<String>), String> {
        let mut phases = Phases::new();
        let mut next = self
            .source
            .load(input, Some(&self.model))
            .map_err(|e| e.to_string())?;
        phases.lap("load");
        let needs_restart =
            reload::keep_start_only_settings(&self.model.settings, &mut next.settings);
        let mut overrides = self.overrides.clone();
        overrides.retain_existing(&next);
        let effective = self.effective(&next, &overrides);
        phases.lap("effective");
        // A new Service's healthCheckNodePort listens before its NodePort does (as at
        // start), on the addresses NodePorts are served on now (a change of those is
        // followed after the publish).
        self.health_check_node_ports
            .open_new(&next, self.listening.node_port_addresses.as_deref());
        // The node's addresses may have changed (DHCP, an added VIP): read again. One
        // sluice per NodePort: a new one another process listens on fails the reload.
        let prepared = match self.prepare_listeners(&effective) {
            Ok(p) => p,
            Err(e) => {
                self.health_check_node_ports
                    .sync(&self.model, self.listening.node_port_addresses.as_deref());
                return Err(e);
            }
        };
        phases.lap("prepare");
        // Nothing can fail from here on.
        let generation = self.generation + 1;
        let snapshot = self
            .publisher
            .current()
            .rebuild(&effective, generation, &mut self.registry)
            .with_node_addresses(&prepared.node_addresses);
        phases.lap("rebuild");
        self.publisher.publish(snapshot);
        self.commit_listeners(prepared);
        phases.lap("commit");
        let changes = reload::diff(&self.model, &next);
        phases.lap("diff");
        self.model = next;
        self.overrides = overrides;
        self.generation = generation;
        self.after_publish();
        phases.lap("after_publish");
        tracing::debug!(generation, phases = %phases, "reload phases");
        Ok((changes, needs_restart))
    }
}

/// Who asked for a reload, to be told how it went.
pub(super) enum ReloadWaiter {
    Signal,
    Client(oneshot::Sender<Response>),
}

/// Logs a reload once and answers each client that asked for it.
pub(super) fn answer_reload(outcome: &ReloadOutcome, waiters: Vec<ReloadWaiter>) {
    let by_client = waiters.iter().any(|w| matches!(w, ReloadWaiter::Client(_)));
    log_reload(
        outcome,
        if by_client {
            "control socket"
        } else {
            "SIGHUP"
        },
    );
    for w in waiters {
        if let ReloadWaiter::Client(reply) = w {
            let response = if outcome.ok {
                Response::ok(json!(outcome))
            } else {
                let mut r =
                    Response::error("reload-failed", outcome.error.clone().unwrap_or_default());
                r.result = Some(json!(outcome));
                r
            };
            let _ = reply.send(response);
        }
    }
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

/// The listener of `addr`: the one a previous process passed under `kind`, else bound now.
fn bind_http(
    addr: Option<SocketAddr>,
    what: &'static str,
    successor: &mut super::upgrade::Successor,
    kind: crate::handover::SocketKind,
) -> Result<Option<tokio::net::TcpListener>, ControlError> {
    let Some(addr) = addr else { return Ok(None) };
    let err = |cause| ControlError::Http { what, addr, cause };
    let std_listener = match successor.take_listener(kind, addr) {
        Some(fd) => std::net::TcpListener::from(fd),
        None => std::net::TcpListener::bind(addr).map_err(err)?,
    };
    std_listener.set_nonblocking(true).map_err(err)?;
    let l = tokio::net::TcpListener::from_std(std_listener).map_err(err)?;
    tracing::info!(address = %l.local_addr().unwrap_or(addr), what, "HTTP listener ready");
    Ok(Some(l))
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
