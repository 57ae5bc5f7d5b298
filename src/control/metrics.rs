//! `/metrics` (Prometheus text format), `/healthz` and `/livez` (kube-proxy compatible) over a
//! small HTTP/1.1 listener.
//!
//! Metrics are built at scrape time: a fresh `prometheus-client` registry is filled from the
//! published snapshot's per-worker counter blocks (summed here, never on the hot path), the
//! data plane's [`Monitor`] and the daemon's [`Health`] record, then encoded. The HTTP side
//! is deliberately minimal (one GET per connection, bounded head, timeouts): it serves three
//! paths and nothing else.

use super::plane::Monitor;
use crate::publish::Publisher;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the daemon records for health and reload metrics; shared with the HTTP tasks.
#[derive(Debug, Clone)]
pub struct Health {
    /// When the routing state was last (re)published successfully.
    pub last_updated: SystemTime,
    pub generation: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub last_reload_ok: bool,
    pub last_reload_at: Option<SystemTime>,
    /// Every worker's heartbeat advanced at the last check.
    pub workers_alive: bool,
    /// Set once shutdown began: `/healthz` turns 503 with `nodeEligible: false`.
    pub stopping: bool,
}

impl Health {
    pub fn new(generation: u64) -> Health {
        Health {
            last_updated: SystemTime::now(),
            generation,
            reloads_ok: 0,
            reloads_failed: 0,
            last_reload_ok: true,
            last_reload_at: None,
            workers_alive: true,
            stopping: false,
        }
    }
}

pub type SharedHealth = Arc<Mutex<Health>>;

/// What an HTTP listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// `/metrics`, `/healthz`, `/livez`.
    MetricsAndHealth,
    /// `/healthz`, `/livez` only.
    HealthOnly,
}

/// The sources a scrape reads.
#[derive(Clone)]
pub struct Sources {
    pub publisher: Publisher,
    pub monitor: Monitor,
    pub health: SharedHealth,
    /// Endpoint health (transitions).
    pub endpoint_health: super::health::Shared,
    /// With a watched configuration source (`--kubernetes`).
    pub source: Option<SourceMetrics>,
}

/// What a watched configuration source exports: its streams' status, and the latency from
/// the first unapplied change to the snapshot serving it. The histogram and gauge live
/// here (shared, not rebuilt at each scrape) because they accumulate.
#[derive(Clone, Debug)]
pub struct SourceMetrics {
    pub watch: crate::watch::status::WatchStatus,
    sync_latency: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
}

impl SourceMetrics {
    pub fn new(watch: crate::watch::status::WatchStatus) -> SourceMetrics {
        SourceMetrics {
            watch,
            // Every sync waits at least the coalescing quiet time (100 ms): finer there.
            sync_latency: Histogram::new([
                0.01, 0.025, 0.05, 0.1, 0.125, 0.15, 0.2, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0,
            ]),
            last_sync: Gauge::default(),
        }
    }

    /// A change of the source was published, `latency` after it arrived.
    pub fn synced(&self, latency: Duration, now: SystemTime) {
        self.sync_latency.observe(latency.as_secs_f64());
        self.last_sync.set(unix_seconds(now));
    }
}

fn lock(h: &SharedHealth) -> std::sync::MutexGuard<'_, Health> {
    h.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves HTTP on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, what: Endpoints, sources: Sources) {
    let permits = Arc::new(tokio::sync::Semaphore::new(16));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(10), http(stream, what, &sources)).await;
            drop(permit);
        });
    }
}

async fn http(mut stream: TcpStream, what: Endpoints, sources: &Sources) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 8192 {
            return respond(&mut stream, 431, "text/plain", "request head too large\n").await;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, 405, "text/plain", "only GET\n").await;
    }
    match path {
        "/metrics" if what == Endpoints::MetricsAndHealth => {
            let body = render(sources);
            respond(
                &mut stream,
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &body,
            )
            .await
        }
        "/healthz" => {
            let (code, body) = healthz(&lock(&sources.health), SystemTime::now());
            respond(&mut stream, code, "application/json", &body).await
        }
        "/livez" => {
            let (code, body) = livez(&lock(&sources.health), SystemTime::now());
            respond(&mut stream, code, "application/json", &body).await
        }
        _ => respond(&mut stream, 404, "text/plain", "404 page not found\n").await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// kube-proxy's `/healthz`: 200 while the workers run and the node is not shutting down.
pub fn healthz(h: &Health, now: SystemTime) -> (u16, String) {
    let eligible = !h.stopping;
    let healthy = h.workers_alive && eligible;
    let body = format!(
        "{{\"lastUpdated\": {:?},\"currentTime\": {:?}, \"nodeEligible\": {eligible}}}",
        rfc3339(h.last_updated),
        rfc3339(now)
    );
    (if healthy { 200 } else { 503 }, body)
}

/// kube-proxy's `/livez`: like `/healthz` without `nodeEligible`; only the workers count.
pub fn livez(h: &Health, now: SystemTime) -> (u16, String) {
    let body = format!(
        "{{\"lastUpdated\": {:?},\"currentTime\": {:?}}}",
        rfc3339(h.last_updated),
        rfc3339(now)
    );
    (if h.workers_alive { 200 } else { 503 }, body)
}

type Labels = Vec<(&'static str, String)>;

fn counter_family(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

fn gauge_family(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    reg.register(name, help, f.clone());
    f
}

fn float_gauge(reg: &mut Registry, name: &str, help: &str) -> Gauge<f64, AtomicU64> {
    let g = Gauge::<f64, AtomicU64>::default();
    reg.register(name, help, g.clone());
    g
}

/// The whole `/metrics` body.
pub fn render(sources: &Sources) -> String {
    let mut reg = Registry::default();
    let snapshot = sources.publisher.current();

    let svc_conns = counter_family(
        &mut reg,
        "sluice_service_connections",
        "Client connections accepted per Service port",
    );
    let svc_failed = counter_family(
        &mut reg,
        "sluice_service_connection_failures",
        "Client connections that failed (no endpoint, every connect failed, reset)",
    );
    let svc_retries = counter_family(
        &mut reg,
        "sluice_service_connect_retries",
        "Connect attempts retried on another endpoint",
    );
    let svc_holds_refused = counter_family(
        &mut reg,
        "sluice_service_holds_refused",
        "Clients reset at once because a hold budget (max_held_per_service, max_held_per_worker) was spent",
    );
    let svc_source_refused = counter_family(
        &mut reg,
        "sluice_service_source_ranges_refused",
        "Clients reset at accept because they are outside the Service's loadBalancerSourceRanges (at its LoadBalancer IPs; at its NodePort too with source_ranges_on_node_ports)",
    );
    let svc_bytes = counter_family(
        &mut reg,
        "sluice_service_bytes",
        "Bytes relayed, by direction",
    );
    let svc_active = gauge_family(
        &mut reg,
        "sluice_service_connections_active",
        "Client connections open now",
    );
    let svc_usable = gauge_family(
        &mut reg,
        "sluice_service_endpoints_usable",
        "Endpoints new connections may go to (routing weight > 0)",
    );
    let ep_conns = counter_family(
        &mut reg,
        "sluice_endpoint_connections",
        "Backend connections opened per endpoint",
    );
    let ep_failed = counter_family(
        &mut reg,
        "sluice_endpoint_connection_failures",
        "Backend connections that failed per endpoint",
    );
    let ep_retries = counter_family(
        &mut reg,
        "sluice_endpoint_connect_retries",
        "Failed connects to this endpoint that were retried elsewhere",
    );
    let ep_bytes = counter_family(
        &mut reg,
        "sluice_endpoint_bytes",
        "Bytes relayed per endpoint, by direction",
    );
    let ep_active = gauge_family(
        &mut reg,
        "sluice_endpoint_connections_active",
        "Backend connections open now per endpoint",
    );
    let ep_weight = gauge_family(
        &mut reg,
        "sluice_endpoint_weight",
        "Routing weight in use (0 = draining, disabled, down, or not chosen by the endpoint conditions)",
    );

    let ep_connect_failed = counter_family(
        &mut reg,
        "sluice_endpoint_connect_failures",
        "Connect attempts to this endpoint that failed (refused, timed out, unreachable)",
    );
    let ep_up = gauge_family(
        &mut reg,
        "sluice_endpoint_up",
        "1 while health checks (and operators) let the endpoint take connections, 0 while it is down",
    );
    let ep_transitions = counter_family(
        &mut reg,
        "sluice_endpoint_health_transitions",
        "Endpoint health changes, by the state entered",
    );

    for (_, s) in snapshot.services() {
        let k = &s.port.key;
        let labels: Labels = vec![
            ("namespace", k.service.namespace.clone()),
            ("service", k.service.name.clone()),
            ("port_name", k.port_name.clone()),
            ("protocol", k.protocol.to_string()),
            ("node_port", s.port.node_port.to_string()),
        ];
        let t = s.stats.totals();
        svc_conns.get_or_create(&labels).inc_by(t.opened);
        svc_failed.get_or_create(&labels).inc_by(t.failed);
        svc_retries.get_or_create(&labels).inc_by(t.retries);
        svc_holds_refused
            .get_or_create(&labels)
            .inc_by(t.holds_refused);
        svc_source_refused
            .get_or_create(&labels)
            .inc_by(t.source_refused);
        svc_active.get_or_create(&labels).set(t.active() as i64);
        with(&labels, "direction", "to_backend", |l| {
            svc_bytes.get_or_create(&l).inc_by(t.bytes_to_backend);
        });
        with(&labels, "direction", "to_client", |l| {
            svc_bytes.get_or_create(&l).inc_by(t.bytes_to_client);
        });
        svc_usable.get_or_create(&labels).set(
            s.endpoints()
                .iter()
                .filter(|e| e.routing_weight > 0)
                .count() as i64,
        );
        for e in s.endpoints() {
            let mut l = labels.clone();
            l.push(("endpoint", e.endpoint.addr.to_string()));
            let t = e.stats.totals();
            ep_conns.get_or_create(&l).inc_by(t.opened);
            ep_failed.get_or_create(&l).inc_by(t.failed);
            ep_retries.get_or_create(&l).inc_by(t.retries);
            ep_active.get_or_create(&l).set(t.active() as i64);
            ep_weight.get_or_create(&l).set(i64::from(e.routing_weight));
            ep_connect_failed.get_or_create(&l).inc_by(t.connect_failed);
            ep_up.get_or_create(&l).set(i64::from(e.endpoint.healthy));
            let r = sources
                .endpoint_health
                .report(k, e.endpoint.addr)
                .unwrap_or_default();
            with(&l, "to", "down", |l| {
                ep_transitions.get_or_create(&l).inc_by(r.downs);
            });
            with(&l, "to", "up", |l| {
                ep_transitions.get_or_create(&l).inc_by(r.ups);
            });
            with(&l, "direction", "to_backend", |l| {
                ep_bytes.get_or_create(&l).inc_by(t.bytes_to_backend);
            });
            with(&l, "direction", "to_client", |l| {
                ep_bytes.get_or_create(&l).inc_by(t.bytes_to_client);
            });
        }
    }

    let w_iter = counter_family(
        &mut reg,
        "sluice_worker_loop_iterations",
        "Event-loop iterations per worker",
    );
    let w_compl = counter_family(
        &mut reg,
        "sluice_worker_completions",
        "Completions handled per worker",
    );
    let w_accepted = counter_family(
        &mut reg,
        "sluice_worker_accepted",
        "Client connections accepted per worker",
    );
    let w_active = gauge_family(
        &mut reg,
        "sluice_worker_connections_active",
        "Client connections held per worker",
    );
    let w_accepting = gauge_family(
        &mut reg,
        "sluice_worker_accepting",
        "1 while the worker accepts new connections",
    );
    let w_beat = gauge_family(
        &mut reg,
        "sluice_worker_heartbeat",
        "Heartbeat counter per worker (advances while its loop runs)",
    );
    let beats = sources.monitor.heartbeats();
    for (i, w) in sources.monitor.worker_stats().iter().enumerate() {
        let l: Labels = vec![("worker", i.to_string())];
        w_iter.get_or_create(&l).inc_by(w.iterations);
        w_compl.get_or_create(&l).inc_by(w.completions);
        w_accepted.get_or_create(&l).inc_by(w.accepted);
        w_active.get_or_create(&l).set(w.active as i64);
        w_accepting.get_or_create(&l).set(i64::from(w.accepting));
        w_beat
            .get_or_create(&l)
            .set(beats.get(i).copied().unwrap_or(0) as i64);
    }

    let h = lock(&sources.health).clone();
    let reloads = counter_family(&mut reg, "sluice_reloads", "Reload attempts by result");
    reloads
        .get_or_create(&vec![("result", "success".to_owned())])
        .inc_by(h.reloads_ok);
    reloads
        .get_or_create(&vec![("result", "failure".to_owned())])
        .inc_by(h.reloads_failed);
    let last_ok = Gauge::<i64>::default();
    reg.register(
        "sluice_last_reload_success",
        "1 if the last reload succeeded (1 before any reload)",
        last_ok.clone(),
    );
    last_ok.set(i64::from(h.last_reload_ok));
    let last_at = float_gauge(
        &mut reg,
        "sluice_last_reload_timestamp_seconds",
        "Unix time of the last reload attempt (0 before any)",
    );
    last_at.set(h.last_reload_at.map_or(0.0, unix_seconds));
    let generation = Gauge::<i64>::default();
    reg.register(
        "sluice_snapshot_generation",
        "Generation of the routing snapshot being served",
        generation.clone(),
    );
    generation.set(snapshot.generation() as i64);
    let info = gauge_family(
        &mut reg,
        "sluice_build_info",
        "Version and data-plane driver of this daemon",
    );
    info.get_or_create(&vec![
        ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ("driver", sources.monitor.driver().to_owned()),
    ])
    .set(1);

    if let Some(source) = &sources.source {
        render_source(&mut reg, source);
    }

    let mut out = String::new();
    encode(&mut out, &reg).expect("encoding into a String cannot fail");
    out
}

fn render_source(reg: &mut Registry, m: &SourceMetrics) {
    reg.register(
        "sluice_kubernetes_sync_latency_seconds",
        "From the first unapplied watch event to the routing snapshot serving it",
        m.sync_latency.clone(),
    );
    reg.register(
        "sluice_kubernetes_last_sync_timestamp_seconds",
        "Unix time a change from the Kubernetes API was last published (0 before any)",
        m.last_sync.clone(),
    );
    let up = gauge_family(
        reg,
        "sluice_kubernetes_watch_up",
        "1 while the stream is listed and watching, 0 while connecting, listing or retrying",
    );
    let objects = gauge_family(
        reg,
        "sluice_kubernetes_objects",
        "Objects in the watch's store",
    );
    let lists = counter_family(
        reg,
        "sluice_kubernetes_watch_lists",
        "Full lists completed (the first, then one per relist: 410 Gone, API server restart)",
    );
    let errors = counter_family(
        reg,
        "sluice_kubernetes_watch_errors",
        "Failed list/watch requests, broken streams and error events (410 Gone included)",
    );
    let events = counter_family(
        reg,
        "sluice_kubernetes_watch_events",
        "Object events applied to the store (listed objects included)",
    );
    for s in m.watch.streams() {
        let l: Labels = vec![
            ("kind", s.kind.to_owned()),
            ("namespace", s.namespace.clone().unwrap_or_default()),
        ];
        up.get_or_create(&l).set(i64::from(
            s.state == crate::watch::status::StreamState::Synced,
        ));
        objects.get_or_create(&l).set(s.objects as i64);
        lists.get_or_create(&l).inc_by(s.lists);
        errors.get_or_create(&l).inc_by(s.errors);
        events.get_or_create(&l).inc_by(s.events);
    }
}

fn with(labels: &Labels, k: &'static str, v: &str, f: impl FnOnce(Labels)) {
    let mut l = labels.clone();
    l.push((k, v.to_owned()));
    f(l)
}

/// Seconds since the Unix epoch, as a float.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_body_has_kube_proxy_shape() {
        let mut h = Health::new(1);
        h.last_updated = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let now = h.last_updated + Duration::from_millis(1500);
        let (code, body) = healthz(&h, now);
        assert_eq!(code, 200);
        assert_eq!(
            body,
            "{\"lastUpdated\": \"2023-11-14T22:13:20.000000000Z\",\"currentTime\": \"2023-11-14T22:13:21.500000000Z\", \"nodeEligible\": true}"
        );
        h.stopping = true;
        assert_eq!(healthz(&h, now).0, 503);
        assert_eq!(livez(&h, now).0, 200);
        assert!(!livez(&h, now).1.contains("nodeEligible"));
        h.workers_alive = false;
        assert_eq!(livez(&h, now).0, 503);
    }
}
