//! The data plane's metrics: per Service port and endpoint (from the published snapshot's
//! per-worker counter blocks and histograms, summed here at scrape time — never on the hot
//! path) and per worker (from the [`Monitor`]).

use super::{counter_family, gauge_family, with, Labels};
use crate::control::endpoint_health::Shared as EndpointHealth;
use crate::dataplane::Monitor;
use crate::stats::{HistogramTotals, CONNECT_LATENCY_BOUNDS_NS, DURATION_BOUNDS_NS};
use crate::table::RoutingSnapshot;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::Mutex;

/// Every Service port's and endpoint's families.
pub(super) fn register_services(
    reg: &mut Registry,
    snapshot: &RoutingSnapshot,
    endpoint_health: &EndpointHealth,
) {
    let svc_conns = counter_family(
        reg,
        "sluice_service_connections",
        "Client connections accepted per Service port",
    );
    let svc_failed = counter_family(
        reg,
        "sluice_service_connection_failures",
        "Client connections that failed (no endpoint, every connect failed, reset)",
    );
    let svc_retries = counter_family(
        reg,
        "sluice_service_connect_retries",
        "Connect attempts retried on another endpoint",
    );
    let svc_holds_refused = counter_family(
        reg,
        "sluice_service_holds_refused",
        "Clients reset at once because a hold budget (max_held_per_service, max_held_per_worker) was spent",
    );
    let svc_source_refused = counter_family(
        reg,
        "sluice_service_source_ranges_refused",
        "Clients reset at accept because they are outside the Service's loadBalancerSourceRanges (at its LoadBalancer IPs; at its NodePort too with source_ranges_on_node_ports)",
    );
    let svc_bytes = counter_family(reg, "sluice_service_bytes", "Bytes relayed, by direction");
    let svc_active = gauge_family(
        reg,
        "sluice_service_connections_active",
        "Client connections open now",
    );
    let svc_usable = gauge_family(
        reg,
        "sluice_service_endpoints_usable",
        "Endpoints new connections may go to (routing weight > 0)",
    );
    let ep_conns = counter_family(
        reg,
        "sluice_endpoint_connections",
        "Backend connections opened per endpoint",
    );
    let ep_failed = counter_family(
        reg,
        "sluice_endpoint_connection_failures",
        "Backend connections that failed per endpoint",
    );
    let ep_retries = counter_family(
        reg,
        "sluice_endpoint_connect_retries",
        "Failed connects to this endpoint that were retried elsewhere",
    );
    let ep_bytes = counter_family(
        reg,
        "sluice_endpoint_bytes",
        "Bytes relayed per endpoint, by direction",
    );
    let ep_active = gauge_family(
        reg,
        "sluice_endpoint_connections_active",
        "Backend connections open now per endpoint",
    );
    let svc_datagrams = counter_family(
        reg,
        "sluice_service_datagrams",
        "UDP datagrams relayed per Service port, by direction",
    );
    let ep_datagrams = counter_family(
        reg,
        "sluice_endpoint_datagrams",
        "UDP datagrams relayed per endpoint, by direction",
    );
    let ep_weight = gauge_family(
        reg,
        "sluice_endpoint_weight",
        "Routing weight in use (0 = draining, disabled, down, or not chosen by the endpoint conditions)",
    );

    let ep_connect_failed = counter_family(
        reg,
        "sluice_endpoint_connect_failures",
        "Connect attempts to this endpoint that failed (refused, timed out, unreachable)",
    );
    let ep_up = gauge_family(
        reg,
        "sluice_endpoint_up",
        "1 while health checks (and operators) let the endpoint take connections, 0 while it is down",
    );
    let ep_transitions = counter_family(
        reg,
        "sluice_endpoint_health_transitions",
        "Endpoint health changes, by the state entered",
    );

    let connect_latency = HistogramFamily::new(&CONNECT_LATENCY_BOUNDS_NS);
    let duration = HistogramFamily::new(&DURATION_BOUNDS_NS);
    for (_, s) in snapshot.services() {
        let k = &s.port.key;
        let labels: Labels = vec![
            ("namespace", k.service.namespace.clone()),
            ("service", k.service.name.clone()),
            ("port_name", k.port_name.clone()),
            ("protocol", k.protocol.to_string()),
            ("node_port", s.port.node_port.to_string()),
        ];
        // Like a client library's labelled histogram, a series exists from its first
        // observation: idle Services (most, in a large cluster) cost no bucket lines.
        if let Some((c, d)) = s.stats.exported_histograms() {
            if c.count() > 0 {
                connect_latency.push(labels.clone(), c);
            }
            if d.count() > 0 {
                duration.push(labels.clone(), d);
            }
        }
        let t = s.stats.exported_totals();
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
        if k.protocol == crate::model::Protocol::Udp {
            with(&labels, "direction", "to_backend", |l| {
                svc_datagrams
                    .get_or_create(&l)
                    .inc_by(t.datagrams_to_backend);
            });
            with(&labels, "direction", "to_client", |l| {
                svc_datagrams
                    .get_or_create(&l)
                    .inc_by(t.datagrams_to_client);
            });
        }
        svc_usable.get_or_create(&labels).set(
            s.endpoints()
                .iter()
                .filter(|e| e.routing_weight > 0)
                .count() as i64,
        );
        for e in s.endpoints() {
            let mut l = labels.clone();
            l.push(("endpoint", e.endpoint.addr.to_string()));
            let t = e.stats.exported_totals();
            ep_conns.get_or_create(&l).inc_by(t.opened);
            ep_failed.get_or_create(&l).inc_by(t.failed);
            ep_retries.get_or_create(&l).inc_by(t.retries);
            ep_active.get_or_create(&l).set(t.active() as i64);
            ep_weight.get_or_create(&l).set(i64::from(e.routing_weight));
            ep_connect_failed.get_or_create(&l).inc_by(t.connect_failed);
            ep_up.get_or_create(&l).set(i64::from(e.endpoint.healthy));
            let r = endpoint_health
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
            if k.protocol == crate::model::Protocol::Udp {
                with(&l, "direction", "to_backend", |l| {
                    ep_datagrams
                        .get_or_create(&l)
                        .inc_by(t.datagrams_to_backend);
                });
                with(&l, "direction", "to_client", |l| {
                    ep_datagrams.get_or_create(&l).inc_by(t.datagrams_to_client);
                });
            }
        }
    }

    reg.register(
        "sluice_service_backend_connect_duration_seconds",
        "From starting a backend connect to the TCP connection being established (successful connects), per Service port",
        connect_latency,
    );
    reg.register(
        "sluice_service_connection_duration_seconds",
        "From accepting a client connection to closing it, per Service port",
        duration,
    );
}

/// The UDP flows of every worker, summed.
/// `flows`: the workers' totals plus what a previous process carried.
pub(super) fn register_flows(reg: &mut Registry, flows: crate::stats::FlowTotals) {
    let udp_active = prometheus_client::metrics::gauge::Gauge::<i64>::default();
    reg.register(
        "sluice_udp_flows_active",
        "UDP flows live now, all workers",
        udp_active.clone(),
    );
    udp_active.set(flows.active as i64);
    for (name, help, value) in [
        (
            "sluice_udp_flows_created",
            "UDP flows opened",
            flows.created,
        ),
        (
            "sluice_udp_flows_expired",
            "UDP flows ended by their idle timeout",
            flows.expired,
        ),
        (
            "sluice_udp_flows_closed",
            "UDP flows ended for any reason",
            flows.closed,
        ),
        (
            "sluice_udp_flows_refused",
            "New UDP flows refused: flow table full (max_flows_per_worker) or no upstream socket",
            flows.refused,
        ),
    ] {
        let c = prometheus_client::metrics::counter::Counter::<u64>::default();
        reg.register(name, help, c.clone());
        c.inc_by(value);
    }
    let drops = counter_family(
        reg,
        "sluice_udp_datagrams_dropped",
        "UDP datagrams not forwarded, by reason (icmp_refused counts ICMP port-unreachable reports from pods)",
    );
    for (reason, n) in crate::stats::DROP_REASONS.iter().zip(flows.drops) {
        drops
            .get_or_create(&vec![("reason", (*reason).to_owned())])
            .inc_by(n);
    }
}

/// Every worker's families.
pub(super) fn register_workers(reg: &mut Registry, monitor: &Monitor) {
    let w_iter = counter_family(
        reg,
        "sluice_worker_loop_iterations",
        "Event-loop iterations per worker",
    );
    let w_compl = counter_family(
        reg,
        "sluice_worker_completions",
        "Completions handled per worker",
    );
    let w_accepted = counter_family(
        reg,
        "sluice_worker_accepted",
        "Client connections accepted per worker",
    );
    let w_active = gauge_family(
        reg,
        "sluice_worker_connections_active",
        "Client connections held per worker",
    );
    let w_accepting = gauge_family(
        reg,
        "sluice_worker_accepting",
        "1 while the worker accepts new connections",
    );
    let w_beat = counter_family(
        reg,
        "sluice_worker_heartbeat",
        "Heartbeats per worker: advances at least every 100 ms while its loop runs (a stalled worker's stops)",
    );
    let beats = monitor.heartbeats();
    for (i, w) in monitor.worker_stats().iter().enumerate() {
        let l: Labels = vec![("worker", i.to_string())];
        w_iter.get_or_create(&l).inc_by(w.iterations);
        w_compl.get_or_create(&l).inc_by(w.completions);
        w_accepted.get_or_create(&l).inc_by(w.accepted);
        w_active.get_or_create(&l).set(w.active as i64);
        w_accepting.get_or_create(&l).set(i64::from(w.accepting));
        w_beat
            .get_or_create(&l)
            .inc_by(beats.get(i).copied().unwrap_or(0));
    }
}

/// Histograms of one metric family whose buckets were counted elsewhere (the workers'
/// blocks): built at each scrape, encoded once.
#[derive(Debug)]
struct HistogramFamily {
    /// Upper bounds in seconds (+Inf follows).
    bounds: Vec<f64>,
    series: Mutex<Vec<(Labels, HistogramTotals)>>,
}

impl HistogramFamily {
    fn new(bounds_ns: &[u64]) -> HistogramFamily {
        HistogramFamily {
            bounds: bounds_ns.iter().map(|b| *b as f64 / 1e9).collect(),
            series: Mutex::new(Vec::new()),
        }
    }

    fn push(&self, labels: Labels, totals: HistogramTotals) {
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((labels, totals));
    }
}

impl TypedMetric for HistogramFamily {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for HistogramFamily {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        for (labels, totals) in series.iter() {
            let buckets: Vec<(f64, u64)> = self
                .bounds
                .iter()
                .copied()
                .chain(std::iter::once(f64::INFINITY))
                .zip(totals.buckets.iter().copied())
                .collect();
            encoder
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(
                    totals.sum_ns as f64 / 1e9,
                    totals.count(),
                    &buckets,
                    None,
                )?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}
