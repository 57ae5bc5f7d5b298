//! What a reload changed, in words: one line per change between the model serving and the
//! one replacing it, for `sluice ctl reload`, `status`'s last reload and the log.
//!
//! Lines start with `+` (added), `-` (removed) or `~` (changed), then say what in the
//! operator's terms: `~ endpoint workshop/web 10.0.3.7:9000: ready → terminating, serving`.
//! Pure: no IO.

use crate::model::{Endpoint, Model, ServicePort};
use std::collections::{HashMap, HashSet};

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
}
