//! `/metrics` (the Prometheus text format or OpenMetrics, by the `Accept` header:
//! [`format`]), `/healthz` and `/livez` (kube-proxy's: [`super::healthz`]) on one listener.
//!
//! Metrics are built at scrape time: a fresh `prometheus-client` registry is filled from the
//! published snapshot's per-worker counter blocks and histograms (summed here, never on the
//! hot path: [`dataplane`]), the data plane's [`Monitor`], the daemon's [`ProcessHealth`](super::healthz::ProcessHealth) record,
//! the watched source's status and `/proc` ([`process`]), then encoded. Every metric is
//! listed in docs/operations.md. The HTTP side is [`crate::http`]'s server (bounded
//! connections, header-read timeout, keep-alive), serving three paths and nothing else.

use super::healthz;
use crate::dataplane::Monitor;
use crate::http;
use crate::publish::Publisher;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpListener;

pub use super::healthz::SharedProcessHealth;

mod dataplane;
pub mod format;
mod process;

use format::Format;

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
pub struct MetricsInputs {
    pub publisher: Publisher,
    pub monitor: Monitor,
    pub health: SharedProcessHealth,
    /// Endpoint health (transitions).
    pub endpoint_health: super::endpoint_health::Shared,
    /// With a watched configuration source (`--kubernetes`).
    pub source: Option<SourceMetrics>,
    /// Process-wide counters a previous process carried over (`ctl upgrade`).
    pub carried: super::carried::SharedCarried,
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

/// Serves `/metrics` (with [`Endpoints::MetricsAndHealth`]), `/healthz` and `/livez` on
/// `listener` until the task is dropped, within [`crate::http::Limits::DEFAULT`].
/// Serves until `stop` turns true (the listener was handed to a new process: requests under
/// way finish, see `http::serve_until`). Accepts nothing before `start` resolves (a new
/// process after `ctl upgrade`: until the old one stopped answering and sent its final
/// counters, so that no scrape sees a counter go down).
pub async fn serve(
    listener: TcpListener,
    what: Endpoints,
    sources: MetricsInputs,
    mut stop: tokio::sync::watch::Receiver<bool>,
    start: impl std::future::Future<Output = ()>,
) {
    start.await;
    let handler: http::Handler = Arc::new(move |request| answer(request, what, &sources));
    let stop = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    http::serve_until(
        listener,
        http::Options::default(),
        handler,
        Arc::default(),
        stop,
    )
    .await
}

fn answer(
    request: &Request<Incoming>,
    what: Endpoints,
    sources: &MetricsInputs,
) -> Response<Full<Bytes>> {
    const JSON: [(&str, &str); 2] = [
        ("Content-Type", "application/json"),
        ("X-Content-Type-Options", "nosniff"),
    ];
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return http::response(
            405,
            &[("Content-Type", "text/plain"), ("Allow", "GET, HEAD")],
            "only GET\n",
        );
    }
    match request.uri().path() {
        "/metrics" if what == Endpoints::MetricsAndHealth => {
            let accept = request
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let format = Format::negotiate(accept);
            http::response(
                200,
                &[("Content-Type", format.content_type())],
                render(sources, format),
            )
        }
        path @ ("/healthz" | "/livez") => {
            let answer = if path == "/healthz" {
                healthz::healthz
            } else {
                healthz::livez
            };
            let (code, body) = answer(
                &healthz::lock(&sources.health),
                SystemTime::now(),
                Instant::now(),
            );
            http::response(code, &JSON, body)
        }
        _ => http::response(
            404,
            &[("Content-Type", "text/plain")],
            "404 page not found\n",
        ),
    }
}

pub(super) type Labels = Vec<(&'static str, String)>;

pub(super) fn counter_family(
    reg: &mut Registry,
    name: &str,
    help: &str,
) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

pub(super) fn gauge_family(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    reg.register(name, help, f.clone());
    f
}

fn float_gauge(reg: &mut Registry, name: &str, help: &str) -> Gauge<f64, AtomicU64> {
    let g = Gauge::<f64, AtomicU64>::default();
    reg.register(name, help, g.clone());
    g
}

/// The whole `/metrics` body in `format`.
pub fn render(sources: &MetricsInputs, format: Format) -> String {
    let mut reg = Registry::default();
    let snapshot = sources.publisher.current();

    dataplane::register_services(&mut reg, &snapshot, &sources.endpoint_health);
    dataplane::register_workers(&mut reg, &sources.monitor);
    let carried = super::carried::lock(&sources.carried).clone();
    dataplane::register_flows(&mut reg, carried.flows_plus(sources.monitor.flow_totals()));

    let h = healthz::lock(&sources.health).clone();
    let reloads = counter_family(&mut reg, "sluice_reloads", "Reload attempts by result");
    reloads
        .get_or_create(&vec![("result", "success".to_owned())])
        .inc_by(h.reloads_ok + carried.reloads_ok);
    reloads
        .get_or_create(&vec![("result", "failure".to_owned())])
        .inc_by(h.reloads_failed + carried.reloads_failed);
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
    reg.register(
        "sluice_sync_proxy_rules_duration_seconds",
        "Time to apply a change to routing (a reload or a republish after health or operator changes), failed ones included; comparable to kube-proxy's kubeproxy_sync_proxy_rules_duration_seconds (same buckets)",
        h.sync_durations.clone(),
    );
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

    process::ProcessStats::read().register(&mut reg);

    let mut out = String::new();
    encode(&mut out, &reg).expect("encoding into a String cannot fail");
    match format {
        Format::OpenMetrics => out,
        Format::PrometheusText => format::to_prometheus_text(&out),
    }
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

pub(super) fn with(labels: &Labels, k: &'static str, v: &str, f: impl FnOnce(Labels)) {
    let mut l = labels.clone();
    l.push((k, v.to_owned()));
    f(l)
}

/// Seconds since the Unix epoch, as a float.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
