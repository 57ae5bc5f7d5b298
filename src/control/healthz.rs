//! `/healthz` and `/livez` as kube-proxy answers them (`pkg/proxy/healthcheck/
//! proxy_health.go`, Kubernetes 1.33+), and the [`ProcessHealth`] record they read.
//!
//! kube-proxy's semantics, which sluice follows:
//!
//! - **Updated**: each time the proxy's rules are synced (sluice: a routing snapshot is
//!   published), `lastUpdated` moves to now and any pending change counts as applied.
//! - **Queued update**: when a change arrives from the API server that is not applied yet
//!   (sluice: the Kubernetes watch reports one), its time is kept — the oldest one only.
//! - **Healthy** unless a queued change has waited [`HEALTH_TIMEOUT`] (kube-proxy: twice its
//!   sync period, 60 s by default) without an update. sluice also counts a stalled worker
//!   heartbeat as unhealthy (kube-proxy has no workers).
//! - **`/healthz`**: 200 when healthy and the node is eligible (sluice: not shutting down;
//!   kube-proxy: the Node is not being deleted), else 503. When it answers 200,
//!   `lastUpdated` is the current time (kube-proxy keeps that for compatibility with older
//!   releases, where it was the time of the last sync loop); when 503, the time of the last
//!   update. `currentTime` is now. The body is Go's `json.Marshal` of kube-proxy's
//!   `ProxyHealth`: times in RFC 3339 with nanoseconds, trailing zeros dropped (UTC), then
//!   `nodeEligible`, `healthy`, and per IP family the last update and health.
//! - **`/livez`**: the same without `nodeEligible`: 200 while healthy — a node that is
//!   draining stays live.
//!
//! Owns nothing but the record's shape and the bodies; the daemon writes the record.

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How long a change of a watched source may wait unapplied before `/healthz` says
/// unhealthy: kube-proxy's default (2 × its 30 s sync period).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// What the daemon records for health and reload metrics; shared with the HTTP tasks and
/// (for queued updates) the Kubernetes watch thread.
#[derive(Debug, Clone)]
pub struct ProcessHealth {
    /// When routing was last published (kube-proxy's `Updated()`).
    pub last_updated: SystemTime,
    /// The oldest change of the configuration source received and not yet applied
    /// (kube-proxy's `QueuedUpdate()`).
    pub pending_since: Option<Instant>,
    pub generation: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub last_reload_ok: bool,
    pub last_reload_at: Option<SystemTime>,
    /// Every worker's heartbeat advanced at the last check.
    pub workers_alive: bool,
    /// Set once shutdown began: `/healthz` turns 503 with `nodeEligible: false`.
    pub stopping: bool,
    /// The IP families sluice serves (`"IPv4"`, `"IPv6"`): the keys of `status`.
    pub families: Vec<&'static str>,
    /// How long each publish took (reloads and republishes): the metric comparable to
    /// kube-proxy's `kubeproxy_sync_proxy_rules_duration_seconds`, with its buckets
    /// (1 ms doubling to 16.4 s). Shared: clones observe into the same histogram.
    pub sync_durations: Histogram,
}

pub type SharedProcessHealth = Arc<Mutex<ProcessHealth>>;

/// The shared state, also after a panic while it was held (each update is whole).
pub fn lock(h: &SharedProcessHealth) -> std::sync::MutexGuard<'_, ProcessHealth> {
    h.lock().unwrap_or_else(|p| p.into_inner())
}

impl ProcessHealth {
    pub fn new(generation: u64) -> ProcessHealth {
        ProcessHealth {
            last_updated: SystemTime::now(),
            pending_since: None,
            generation,
            reloads_ok: 0,
            reloads_failed: 0,
            last_reload_ok: true,
            last_reload_at: None,
            workers_alive: true,
            stopping: false,
            families: vec!["IPv4"],
            sync_durations: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        }
    }

    /// Routing was published at `now`; `applied_source`: it holds everything the
    /// configuration source had (a reload), so no change is pending any more.
    pub fn updated(&mut self, now: SystemTime, applied_source: bool) {
        self.last_updated = now;
        if applied_source {
            self.pending_since = None;
        }
    }

    /// A change of the configuration source arrived at `since` and is not applied yet.
    pub fn queued(&mut self, since: Instant) {
        self.pending_since = Some(self.pending_since.map_or(since, |p| p.min(since)));
    }

    /// kube-proxy's `ProcessHealth().Healthy`: no change has waited [`HEALTH_TIMEOUT`]
    /// unapplied; and every worker runs.
    pub fn healthy(&self, now: Instant) -> bool {
        let overdue = self
            .pending_since
            .is_some_and(|p| now.saturating_duration_since(p) >= HEALTH_TIMEOUT);
        self.workers_alive && !overdue
    }

    /// kube-proxy: the Node is not being deleted. sluice: not shutting down.
    pub fn node_eligible(&self) -> bool {
        !self.stopping
    }
}

/// The IP families served by listeners on `addrs`: a dual-stack `[::]` serves both.
pub fn families_of(addrs: &[std::net::IpAddr]) -> Vec<&'static str> {
    let v4 = addrs
        .iter()
        .any(|a| a.is_ipv4() || (a.is_ipv6() && a.is_unspecified()));
    let v6 = addrs.iter().any(|a| a.is_ipv6());
    let mut out = Vec::new();
    if v4 {
        out.push("IPv4");
    }
    if v6 {
        out.push("IPv6");
    }
    out
}

/// Go's `ProxyHealth`, field for field in `json.Marshal` order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProxyHealth {
    last_updated: String,
    current_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
    healthy: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    status: BTreeMap<&'static str, ProxierHealth>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProxierHealth {
    last_updated: String,
    healthy: bool,
}

fn proxy_health(h: &ProcessHealth, now: SystemTime, mono: Instant) -> ProxyHealth {
    let healthy = h.healthy(mono);
    ProxyHealth {
        last_updated: rfc3339_nano(h.last_updated),
        current_time: rfc3339_nano(now),
        node_eligible: None,
        healthy,
        status: h
            .families
            .iter()
            .map(|f| {
                let status = ProxierHealth {
                    last_updated: rfc3339_nano(h.last_updated),
                    healthy,
                };
                (*f, status)
            })
            .collect(),
    }
}

/// kube-proxy's `/healthz` at `now` (`mono`: the same instant on the monotonic clock).
pub fn healthz(h: &ProcessHealth, now: SystemTime, mono: Instant) -> (u16, String) {
    let mut body = proxy_health(h, now, mono);
    let eligible = h.node_eligible();
    body.node_eligible = Some(eligible);
    let ok = body.healthy && eligible;
    if ok {
        body.last_updated = rfc3339_nano(now);
    }
    (if ok { 200 } else { 503 }, json(&body))
}

/// kube-proxy's `/livez`: like `/healthz` without the node's eligibility.
pub fn livez(h: &ProcessHealth, now: SystemTime, mono: Instant) -> (u16, String) {
    let mut body = proxy_health(h, now, mono);
    if body.healthy {
        body.last_updated = rfc3339_nano(now);
    }
    (if body.healthy { 200 } else { 503 }, json(&body))
}

fn json(body: &ProxyHealth) -> String {
    serde_json::to_string(body).unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()))
}

/// Go's `time.RFC3339Nano` in UTC: `2006-01-02T15:04:05.999999999Z`, trailing zeros of the
/// fraction dropped (and the dot with them).
pub fn rfc3339_nano(t: SystemTime) -> String {
    let whole = humantime::format_rfc3339_seconds(t).to_string();
    let nanos = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    if nanos == 0 {
        return whole;
    }
    let fraction = format!("{nanos:09}");
    let fraction = fraction.trim_end_matches('0');
    match whole.strip_suffix('Z') {
        Some(base) => format!("{base}.{fraction}Z"),
        None => whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000; // 2023-11-14T22:13:20Z

    fn at(secs: u64, nanos: u32) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn times_as_go_marshals_them() {
        assert_eq!(rfc3339_nano(at(T0, 0)), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_nano(at(T0, 500_000_000)), "2023-11-14T22:13:20.5Z");
        assert_eq!(
            rfc3339_nano(at(T0, 123_456_789)),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(rfc3339_nano(at(T0, 1_000)), "2023-11-14T22:13:20.000001Z");
    }

    /// The bodies byte for byte, as kube-proxy's `json.Marshal(ProxyHealth)`.
    #[test]
    fn golden_bodies() {
        let mono = Instant::now();
        let mut h = ProcessHealth::new(1);
        h.last_updated = at(T0, 0);
        h.families = vec!["IPv4", "IPv6"];
        let now = at(T0 + 5, 250_000_000);
        // Healthy: lastUpdated is the current time; status keeps the real last update.
        let (code, body) = healthz(&h, now, mono);
        assert_eq!(code, 200);
        assert_eq!(
            body,
            "{\"lastUpdated\":\"2023-11-14T22:13:25.25Z\",\"currentTime\":\"2023-11-14T22:13:25.25Z\",\
\"nodeEligible\":true,\"healthy\":true,\"status\":{\"IPv4\":{\"lastUpdated\":\"2023-11-14T22:13:20Z\",\
\"healthy\":true},\"IPv6\":{\"lastUpdated\":\"2023-11-14T22:13:20Z\",\"healthy\":true}}}"
        );
        let (code, body) = livez(&h, now, mono);
        assert_eq!(code, 200);
        assert!(!body.contains("nodeEligible"), "{body}");
        assert!(body.starts_with("{\"lastUpdated\":\"2023-11-14T22:13:25.25Z\",\"currentTime\""));

        // Shutting down: not eligible, 503, lastUpdated is the last update; still live.
        h.families = vec!["IPv4"];
        h.stopping = true;
        let (code, body) = healthz(&h, now, mono);
        assert_eq!(code, 503);
        assert_eq!(
            body,
            "{\"lastUpdated\":\"2023-11-14T22:13:20Z\",\"currentTime\":\"2023-11-14T22:13:25.25Z\",\
\"nodeEligible\":false,\"healthy\":true,\"status\":{\"IPv4\":{\"lastUpdated\":\"2023-11-14T22:13:20Z\",\
\"healthy\":true}}}"
        );
        assert_eq!(livez(&h, now, mono).0, 200);
        h.stopping = false;

        // A stalled worker: unhealthy everywhere.
        h.workers_alive = false;
        assert_eq!(healthz(&h, now, mono).0, 503);
        let (code, body) = livez(&h, now, mono);
        assert_eq!(code, 503);
        assert!(body.contains("\"healthy\":false"), "{body}");
    }

    /// kube-proxy's rule: a queued change makes the proxy unhealthy only once it has
    /// waited the health timeout without an update; an update clears it.
    #[test]
    fn queued_updates_turn_unhealthy_after_the_timeout() {
        let t0 = Instant::now();
        let mut h = ProcessHealth::new(1);
        assert!(h.healthy(t0));
        h.queued(t0);
        h.queued(t0 + Duration::from_secs(30)); // the oldest one counts
        assert!(h.healthy(t0 + HEALTH_TIMEOUT - Duration::from_millis(1)));
        assert!(!h.healthy(t0 + HEALTH_TIMEOUT));
        let now = at(T0, 0);
        let (code, body) = healthz(&h, now, t0 + HEALTH_TIMEOUT);
        assert_eq!(code, 503);
        assert!(body.contains("\"healthy\":false"), "{body}");
        // A republish that did not read the source keeps the change pending.
        h.updated(now, false);
        assert!(!h.healthy(t0 + HEALTH_TIMEOUT));
        // A reload applies it.
        h.updated(now, true);
        assert!(h.healthy(t0 + HEALTH_TIMEOUT));
        assert_eq!(h.pending_since, None);
    }

    #[test]
    fn families_from_listen_addresses() {
        let ips = |list: &[&str]| -> Vec<std::net::IpAddr> {
            list.iter().map(|a| a.parse().unwrap()).collect()
        };
        assert_eq!(families_of(&ips(&["::"])), ["IPv4", "IPv6"]);
        assert_eq!(families_of(&ips(&["0.0.0.0"])), ["IPv4"]);
        assert_eq!(
            families_of(&ips(&["10.0.0.1", "fd00::1"])),
            ["IPv4", "IPv6"]
        );
        assert_eq!(families_of(&ips(&["fd00::1"])), ["IPv6"]);
    }
}
