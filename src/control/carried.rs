//! Counter totals across `sluice ctl upgrade`: what the old process sends
//! ([`collect`]) and how the new one starts its counters from them ([`apply`]), so that
//! Prometheus counters keep rising instead of falling to zero (docs/operations.md,
//! "Hitless upgrade and restart").
//!
//! The data plane's hot path knows nothing of this: a Service port's or endpoint's carried
//! totals sit in its [`StatsBlock`] beside the workers' slots and are added at scrape time
//! ([`StatsBlock::exported_totals`]); the process-wide ones (UDP flow table, reloads) sit
//! in [`ProcessCarried`], added by `/metrics`. Keys are matched by name (Service port:
//! namespace, name, port name, protocol; endpoint: that and its address); what the new
//! configuration lacks is dropped. Applying replaces what an earlier apply set: the
//! `offer`'s totals first, then the old process's final ones (the `counters` frame).
//! Gauges are never carried.

use crate::handover::state::{Counters, FlowCounts, Histogram, PortKey, Totals};
use crate::model::{ServiceName, ServicePortKey};
use crate::stats::{
    Carried, ConnTotals, FlowTotals, HistogramTotals, StatsBlock, CONNECT_LATENCY_BOUNDS_NS,
    DROP_REASONS, DURATION_BOUNDS_NS,
};
use crate::table::RoutingSnapshot;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// The process-wide counters a previous process counted (added by `/metrics`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProcessCarried {
    /// UDP flow table counters (`active` stays 0: a gauge).
    pub flows: FlowTotals,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
}

impl ProcessCarried {
    /// `flows` (this process's) plus the carried counters; `active` stays this process's.
    pub fn flows_plus(&self, mut flows: FlowTotals) -> FlowTotals {
        flows.created += self.flows.created;
        flows.expired += self.flows.expired;
        flows.closed += self.flows.closed;
        flows.refused += self.flows.refused;
        for (t, c) in flows.drops.iter_mut().zip(self.flows.drops) {
            *t += c;
        }
        flows
    }
}

/// Shared between the daemon, `/metrics` and the new process's hand-over thread.
pub type SharedCarried = Arc<Mutex<ProcessCarried>>;

/// Locks `shared`, whatever a panicking holder left.
pub fn lock(shared: &SharedCarried) -> std::sync::MutexGuard<'_, ProcessCarried> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// The key of a Service port in the carried state.
pub fn port_key(key: &ServicePortKey) -> PortKey {
    let ServiceName { namespace, name } = &key.service;
    PortKey {
        namespace: namespace.clone(),
        name: name.clone(),
        port_name: key.port_name.clone(),
        protocol: key.protocol.to_string(),
    }
}

/// Every exported counter of this process now (its own plus what it was carried):
/// `flows` is this process's flow table ([`crate::dataplane::Monitor::flow_totals`]),
/// `reloads` its (ok, failed) reload counts.
pub fn collect(
    snapshot: &RoutingSnapshot,
    flows: FlowTotals,
    reloads: (u64, u64),
    carried: &ProcessCarried,
) -> Counters {
    let mut out = Counters {
        reloads_ok: reloads.0 + carried.reloads_ok,
        reloads_failed: reloads.1 + carried.reloads_failed,
        ..Counters::default()
    };
    for (_, s) in snapshot.services() {
        let key = port_key(&s.port.key);
        for e in s.endpoints() {
            out.endpoints
                .push((key.clone(), e.endpoint.addr, totals_of(&e.stats)));
        }
        out.services.push((key, totals_of(&s.stats)));
    }
    let f = carried.flows_plus(flows);
    out.udp_flows = FlowCounts {
        created: f.created,
        expired: f.expired,
        closed: f.closed,
        refused: f.refused,
        drops: DROP_REASONS
            .iter()
            .zip(f.drops)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| ((*r).to_owned(), n))
            .collect(),
    };
    out
}

/// What [`apply`] matched, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub services: usize,
    pub endpoints: usize,
    /// Keys the configuration lacks (dropped).
    pub dropped: usize,
}

/// Starts this process's counters at `counters`: each Service port and endpoint of
/// `snapshot` with a carried entry gets it (replacing what an earlier apply set), the
/// process-wide ones go to `process`.
pub fn apply(snapshot: &RoutingSnapshot, counters: &Counters, process: &SharedCarried) -> Applied {
    let services: HashMap<&PortKey, &Totals> =
        counters.services.iter().map(|(k, t)| (k, t)).collect();
    let endpoints: HashMap<(&PortKey, SocketAddr), &Totals> = counters
        .endpoints
        .iter()
        .map(|(k, a, t)| ((k, *a), t))
        .collect();
    let mut applied = Applied::default();
    for (_, s) in snapshot.services() {
        let key = port_key(&s.port.key);
        if let Some(t) = services.get(&key) {
            s.stats.set_carried(carried_of(t));
            applied.services += 1;
        }
        for e in s.endpoints() {
            if let Some(t) = endpoints.get(&(&key, e.endpoint.addr)) {
                e.stats.set_carried(carried_of(t));
                applied.endpoints += 1;
            }
        }
    }
    applied.dropped =
        counters.services.len() + counters.endpoints.len() - applied.services - applied.endpoints;
    let f = &counters.udp_flows;
    let mut flows = FlowTotals {
        created: f.created,
        expired: f.expired,
        closed: f.closed,
        refused: f.refused,
        ..FlowTotals::default()
    };
    for (reason, n) in &f.drops {
        if let Some(i) = DROP_REASONS.iter().position(|r| r == reason) {
            flows.drops[i] = *n;
        }
    }
    *lock(process) = ProcessCarried {
        flows,
        reloads_ok: counters.reloads_ok,
        reloads_failed: counters.reloads_failed,
    };
    applied
}

fn totals_of(stats: &StatsBlock) -> Totals {
    let t = stats.exported_totals();
    let (connect_latency, duration) = match stats.exported_histograms() {
        Some((c, d)) => (
            histogram(&CONNECT_LATENCY_BOUNDS_NS, c),
            histogram(&DURATION_BOUNDS_NS, d),
        ),
        None => (None, None),
    };
    Totals {
        opened: t.opened,
        failed: t.failed,
        retries: t.retries,
        bytes_to_backend: t.bytes_to_backend,
        bytes_to_client: t.bytes_to_client,
        connect_failed: t.connect_failed,
        holds_refused: t.holds_refused,
        source_refused: t.source_refused,
        datagrams_to_backend: t.datagrams_to_backend,
        datagrams_to_client: t.datagrams_to_client,
        connect_latency,
        duration,
    }
}

fn histogram(bounds: &[u64], t: HistogramTotals) -> Option<Histogram> {
    (t.count() > 0).then(|| Histogram {
        bounds_ns: bounds.to_vec(),
        buckets: t.buckets,
        sum_ns: t.sum_ns,
    })
}

/// A carried histogram counted under other bounds than `bounds` is dropped.
fn histogram_totals(bounds: &[u64], h: &Option<Histogram>) -> HistogramTotals {
    match h {
        Some(h) if h.bounds_ns == bounds && h.buckets.len() == bounds.len() + 1 => {
            HistogramTotals {
                buckets: h.buckets.clone(),
                sum_ns: h.sum_ns,
            }
        }
        _ => HistogramTotals::default(),
    }
}

fn carried_of(t: &Totals) -> Carried {
    Carried {
        totals: ConnTotals {
            opened: t.opened,
            failed: t.failed,
            retries: t.retries,
            bytes_to_backend: t.bytes_to_backend,
            bytes_to_client: t.bytes_to_client,
            connect_failed: t.connect_failed,
            holds_refused: t.holds_refused,
            source_refused: t.source_refused,
            datagrams_to_backend: t.datagrams_to_backend,
            datagrams_to_client: t.datagrams_to_client,
            ..ConnTotals::default()
        },
        connect_latency: histogram_totals(&CONNECT_LATENCY_BOUNDS_NS, &t.connect_latency),
        duration: histogram_totals(&DURATION_BOUNDS_NS, &t.duration),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::StatsRegistry;
    use std::time::Duration;

    fn snapshot(endpoints: &[&str]) -> (RoutingSnapshot, StatsRegistry) {
        let text = format!(
            "[[service]]\nname = \"web\"\nnamespace = \"shop\"\nport = 80\nnode_port = 30001\n\
             endpoints = [{}]\n\n[[service]]\nname = \"dns\"\nnamespace = \"kube\"\nport = 53\n\
             protocol = \"UDP\"\nnode_port = 30053\nendpoints = [\"10.0.0.9:53\"]\n",
            endpoints
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        let model = crate::config::parse(&text, "t.toml", None).unwrap();
        let mut registry = StatsRegistry::new(2);
        (RoutingSnapshot::build(&model, 1, &mut registry), registry)
    }

    fn web(s: &RoutingSnapshot) -> &crate::table::ServiceEntry {
        s.services()
            .map(|(_, s)| s)
            .find(|s| s.port.key.service.name == "web")
            .unwrap()
    }

    #[test]
    fn the_new_process_starts_where_the_old_one_was_and_drops_what_it_lacks() {
        let (old, _r) = snapshot(&["10.0.0.1:80", "10.0.0.2:80"]);
        let w = web(&old);
        w.stats.worker(1).opened.add(7);
        w.stats.worker(0).closed.add(2);
        w.stats.worker(0).bytes_to_client.add(1000);
        w.stats
            .histograms(0)
            .unwrap()
            .duration
            .observe(&DURATION_BOUNDS_NS, Duration::from_millis(3));
        w.endpoints()[1].stats.worker(0).opened.add(4);
        w.endpoints()[0].stats.worker(0).opened.add(3);
        let mut flows = FlowTotals {
            created: 5,
            active: 2,
            ..FlowTotals::default()
        };
        flows.drops[2] = 6; // no_endpoint
        let before = ProcessCarried {
            reloads_ok: 10,
            ..ProcessCarried::default()
        };
        let counters = collect(&old, flows, (2, 1), &before);
        assert_eq!((counters.reloads_ok, counters.reloads_failed), (12, 1));
        assert_eq!(counters.udp_flows.drops, vec![("no_endpoint".into(), 6)]);
        // Through JSON, as on the wire.
        let state = crate::handover::CarriedState {
            format: crate::handover::CarriedState::FORMAT,
            counters,
            ..Default::default()
        };
        let (state, _) = crate::handover::CarriedState::from_json(state.to_json());

        // The new configuration lost 10.0.0.1 and gained 10.0.0.3.
        let (new, _r) = snapshot(&["10.0.0.2:80", "10.0.0.3:80"]);
        let process = SharedCarried::default();
        let applied = apply(&new, &state.counters, &process);
        assert_eq!(
            applied,
            Applied {
                services: 2,
                endpoints: 2,
                dropped: 1
            }
        );
        let w = web(&new);
        let t = w.stats.exported_totals();
        assert_eq!((t.opened, t.bytes_to_client, t.active()), (7, 1000, 0));
        let (_, d) = w.stats.exported_histograms().unwrap();
        assert_eq!((d.count(), d.sum_ns), (1, 3_000_000));
        let by_addr = |a: &str| {
            w.endpoints()
                .iter()
                .find(|e| e.endpoint.addr == a.parse::<SocketAddr>().unwrap())
                .unwrap()
                .stats
                .exported_totals()
                .opened
        };
        assert_eq!((by_addr("10.0.0.2:80"), by_addr("10.0.0.3:80")), (4, 0));
        let p = lock(&process).clone();
        assert_eq!((p.reloads_ok, p.flows.created, p.flows.active), (12, 5, 0));
        assert_eq!(p.flows_plus(FlowTotals::default()).drops[2], 6);

        // The final totals replace the offer's; this process's own counts add on top.
        w.stats.worker(0).opened.add(1);
        let mut last = state.counters.clone();
        last.services.iter_mut().for_each(|(_, t)| t.opened += 2);
        apply(&new, &last, &process);
        assert_eq!(w.stats.exported_totals().opened, 7 + 2 + 1);
        // And an upgrade from this process carries it all on.
        let again = collect(&new, FlowTotals::default(), (0, 0), &lock(&process));
        let (_, t) = again
            .services
            .iter()
            .find(|(k, _)| k.name == "web")
            .unwrap();
        assert_eq!(t.opened, 10);
        assert_eq!(again.udp_flows.created, 5);
    }

    #[test]
    fn a_histogram_counted_under_other_bounds_is_dropped() {
        let h = Some(Histogram {
            bounds_ns: vec![1, 2, 3],
            buckets: vec![1, 1, 1, 1],
            sum_ns: 4,
        });
        assert_eq!(
            histogram_totals(&DURATION_BOUNDS_NS, &h),
            HistogramTotals::default()
        );
        let same = Some(Histogram {
            bounds_ns: DURATION_BOUNDS_NS.to_vec(),
            buckets: vec![1; 15],
            sum_ns: 4,
        });
        assert_eq!(histogram_totals(&DURATION_BOUNDS_NS, &same).count(), 15);
    }
}
