//! The pure parts of a reload, beside the transaction that uses them (`daemon.rs`):
//!
//! - [`diff`]: what a reload changed, in words: one line per change between the model
//!   serving and the one replacing it, for `sluice ctl reload`, `status`'s last reload and
//!   the log. Lines start with `+` (added), `-` (removed) or `~` (changed), then say what in
//!   the operator's terms: `~ endpoint workshop/web 10.0.3.7:9000: ready → terminating, serving`.
//! - [`keep_start_only_settings`]: the settings a reload cannot change (workers, driver,
//!   sockets, …) stay as they are and are reported as "applies after a restart".
//! - [`Phases`]: wall time of each phase of a reload, for the debug log.
//!
//! No IO: `Phases` reads the clock, nothing else does.

use crate::model::{Endpoint, Model, ServicePort, Settings};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// One line per change from `old` to `new`, Services in `new`'s order, removed ones last.
pub(super) fn diff(old: &Model, new: &Model) -> Vec<String> {
    let mut out = Vec::new();
    // By key: with 10,000 Services (a watched cluster) a scan per Service is seconds.
    let old_by_key: HashMap<_, _> = old.services.iter().map(|o| (&o.key, o)).collect();
    let new_keys: HashSet<_> = new.services.iter().map(|n| &n.key).collect();
    for n in &new.services {
        match old_by_key.get(&n.key).copied() {
            None => out.push(format!(
                "+ service {} {} ({})",
                n.key,
                on_node_port(n),
                plural(n.endpoints.len(), "endpoint")
            )),
            Some(o) => service_changes(o, n, &mut out),
        }
    }
    for o in &old.services {
        if !new_keys.contains(&o.key) {
            out.push(format!("- service {} (was {})", o.key, on_node_port(o)));
        }
    }
    out
}

/// `on NodePort 30080/TCP`, or `without a NodePort` (reached at its addresses only).
fn on_node_port(p: &ServicePort) -> String {
    if p.node_port == 0 {
        "without a NodePort".to_owned()
    } else {
        format!("on NodePort {}/{}", p.node_port, p.key.protocol)
    }
}

fn service_changes(o: &ServicePort, n: &ServicePort, out: &mut Vec<String>) {
    if o.node_port != n.node_port {
        out.push(format!(
            "~ service {}: NodePort {} → {}",
            n.key, o.node_port, n.node_port
        ));
    }
    let old_eps: HashMap<_, _> = o.endpoints.iter().map(|e| (e.addr, e)).collect();
    for e in &n.endpoints {
        match old_eps.get(&e.addr) {
            None => out.push(format!(
                "+ endpoint {} {}{}",
                n.key,
                e.addr,
                added_details(e)
            )),
            Some(x) => {
                let changed = endpoint_changes(x, e);
                if !changed.is_empty() {
                    out.push(format!(
                        "~ endpoint {} {}: {}",
                        n.key,
                        e.addr,
                        changed.join("; ")
                    ));
                }
            }
        }
    }
    let new_addrs: HashSet<_> = n.endpoints.iter().map(|e| e.addr).collect();
    for e in &o.endpoints {
        if !new_addrs.contains(&e.addr) {
            out.push(format!("- endpoint {} {}", n.key, e.addr));
        }
    }
    let settings: Vec<&str> = [
        (o.policy != n.policy, "policy"),
        (o.timeouts != n.timeouts, "timeouts"),
        (o.connect_retries != n.connect_retries, "connect retries"),
        (o.forwarding != n.forwarding, "forwarding"),
        (
            o.maglev_table_size != n.maglev_table_size,
            "Maglev table size",
        ),
        (o.traffic_policy != n.traffic_policy, "traffic policy"),
        (o.health != n.health, "health checks"),
        (
            o.addresses.external_ips != n.addresses.external_ips,
            "external IPs",
        ),
        (
            o.addresses.load_balancer_ips != n.addresses.load_balancer_ips,
            "LoadBalancer IPs",
        ),
        (
            o.addresses.source_ranges != n.addresses.source_ranges,
            "source ranges",
        ),
    ]
    .into_iter()
    .filter_map(|(changed, name)| changed.then_some(name))
    .collect();
    if !settings.is_empty() {
        out.push(format!(
            "~ service {}: {} changed",
            n.key,
            settings.join(", ")
        ));
    }
}

/// ` (weight 3, not ready, on another node)` for what differs from a plain ready endpoint.
fn added_details(e: &Endpoint) -> String {
    let mut what = Vec::new();
    if e.weight != crate::model::DEFAULT_WEIGHT {
        what.push(format!("weight {}", e.weight));
    }
    if e.conditions != Default::default() {
        what.push(e.conditions.to_string());
    }
    if !e.local {
        what.push("on another node".to_owned());
    }
    if what.is_empty() {
        String::new()
    } else {
        format!(" ({})", what.join(", "))
    }
}

fn endpoint_changes(x: &Endpoint, e: &Endpoint) -> Vec<String> {
    let mut what = Vec::new();
    if x.weight != e.weight {
        what.push(format!("weight {} → {}", x.weight, e.weight));
    }
    if x.conditions != e.conditions {
        what.push(format!("{} → {}", x.conditions, e.conditions));
    }
    if x.local != e.local {
        what.push(format!("{} → {}", node(x.local), node(e.local)));
    }
    what
}

fn node(local: bool) -> &'static str {
    if local {
        "on this node"
    } else {
        "on another node"
    }
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Copies into `next` the settings that only apply when the daemon starts; returns the
/// names of those that differed (reported as "applies after a restart").
pub(super) fn keep_start_only_settings(running: &Settings, next: &mut Settings) -> Vec<String> {
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
pub(super) struct Phases {
    at: Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Phases {
    pub(super) fn new() -> Phases {
        Phases {
            at: Instant::now(),
            laps: Vec::new(),
        }
    }

    /// Ends the phase `name`: the time since the last lap (or since `new`).
    pub(super) fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.laps
            .push((name, now.saturating_duration_since(self.at)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Conditions;

    fn model(text: &str) -> Model {
        crate::config::parse(text, "t.toml", None).unwrap()
    }

    const BEFORE: &str = r#"
[[service]]
name = "web"
namespace = "shop"
port = 80
node_port = 30080
endpoints = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]

[[service]]
name = "old"
port = 80
node_port = 30081
endpoints = []
"#;

    #[test]
    fn a_reload_report_reads_as_words() {
        let old = model(BEFORE);
        let mut new = model(
            &BEFORE
                .replace(
                    "\"10.0.0.3:80\"",
                    "{ address = \"10.0.0.4\", port = 80, weight = 2 }",
                )
                .replace("name = \"old\"", "name = \"new\"")
                .replace(
                    "endpoints = [\"10.0.0.1",
                    "policy = \"round-robin\"\nendpoints = [\"10.0.0.1",
                ),
        );
        // What a watch brings: a pod terminating, another one moving off this node.
        let web = new
            .services
            .iter_mut()
            .find(|s| s.key.service.name == "web")
            .unwrap();
        web.endpoints[0].conditions = Conditions {
            ready: false,
            serving: true,
            terminating: true,
        };
        web.endpoints[1].local = false;
        web.endpoints[1].weight = 5;
        let lines = diff(&old, &new);
        assert_eq!(
            lines,
            [
                "+ service default/new on NodePort 30081/TCP (0 endpoints)",
                "~ endpoint shop/web 10.0.0.1:80: ready → terminating, serving",
                "~ endpoint shop/web 10.0.0.2:80: weight 1 → 5; on this node → on another node",
                "+ endpoint shop/web 10.0.0.4:80 (weight 2)",
                "- endpoint shop/web 10.0.0.3:80",
                "~ service shop/web: policy changed",
                "- service default/old (was on NodePort 30081/TCP)",
            ]
        );
        for l in &lines {
            assert!(!l.contains('{') && !l.contains("true"), "debug output: {l}");
        }
        assert!(diff(&old, &old).is_empty());
    }

    #[test]
    fn unchanged_settings_need_no_restart() {
        let running = model(BEFORE).settings;
        let mut next = running.clone();
        assert!(keep_start_only_settings(&running, &mut next).is_empty());
        assert_eq!(next, running);
    }

    #[test]
    fn start_only_settings_keep_their_running_values_and_are_named() {
        let mut running = model(BEFORE).settings;
        running.workers = Some(4);
        let mut next = model(
            &format!("workers = 2\npin_workers = true\nrelay = \"copy\"\ndriver = \"epoll\"\nmetrics_address = \"127.0.0.1:9100\"\nmax_connections_per_worker = 7\ndrain_timeout = \"3s\"\n{BEFORE}"),
        )
        .settings;
        let drain_timeout = next.drain_timeout;
        let changed = keep_start_only_settings(&running, &mut next);
        assert_eq!(
            changed,
            [
                "workers",
                "pin_workers",
                "max_connections_per_worker",
                "relay",
                "driver",
                "metrics_address",
            ]
        );
        // Every start-only setting is back to what runs; the others take the new value.
        assert_eq!(next.workers, Some(4));
        assert_eq!(next.pin_workers, running.pin_workers);
        assert_eq!(next.relay, running.relay);
        assert_eq!(next.driver, running.driver);
        assert_eq!(next.metrics_address, running.metrics_address);
        assert_eq!(
            next.max_connections_per_worker,
            running.max_connections_per_worker
        );
        assert_eq!(next.drain_timeout, drain_timeout);
        assert_ne!(next.drain_timeout, running.drain_timeout);
    }

    #[test]
    fn a_file_without_workers_keeps_the_resolved_count_silently() {
        let mut running = model(BEFORE).settings;
        running.workers = Some(3);
        let mut next = model(BEFORE).settings;
        assert_eq!(next.workers, None);
        assert!(keep_start_only_settings(&running, &mut next).is_empty());
        assert_eq!(next.workers, Some(3));
    }

    #[test]
    fn phases_print_each_lap_in_milliseconds() {
        let mut phases = Phases::new();
        assert_eq!(phases.to_string(), "");
        phases.lap("load");
        phases.laps[0].1 = Duration::from_micros(1500);
        phases.laps.push(("diff", Duration::from_millis(20)));
        assert_eq!(phases.to_string(), "load=1.5ms diff=20.0ms");
    }
}
