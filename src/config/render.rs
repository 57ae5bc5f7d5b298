//! The summary `sluice check --config FILE` prints for a valid configuration.
//!
//! Plain text for a human: one headline, one line of node-wide settings, then one row per
//! Service port with its endpoints. Allocated NodePorts are marked so that an operator knows
//! which ones came from sluice rather than the file. Nothing here is meant to be parsed.

use crate::model::{
    ListenAddresses, Model, Protocol, ServiceDefaults, ServicePort, TrafficPolicy,
    DEFAULT_UDP_IDLE_TIMEOUT,
};
use crate::table::usable::{routing_weights, Tier};
use std::fmt::Write;

pub(super) fn render(model: &Model) -> String {
    let s = &model.settings;
    let endpoint_count: usize = model.services.iter().map(|p| p.endpoints.len()).sum();
    let listen = match &s.listen {
        ListenAddresses::All => "all addresses (IPv4 and IPv6)".to_owned(),
        ListenAddresses::Only(ips) => ips
            .iter()
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        ListenAddresses::Matching { addresses, cidrs } => addresses
            .iter()
            .map(|ip| ip.to_string())
            .chain(
                cidrs
                    .iter()
                    .map(|c| format!("this node's addresses in {c}")),
            )
            .collect::<Vec<_>>()
            .join(", "),
        ListenAddresses::Primary => "this node's primary addresses".to_owned(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "config OK: {}, {}, served on {listen}",
        plural(model.services.len(), "service port"),
        plural(endpoint_count, "endpoint"),
    );
    let workers = match s.workers {
        Some(n) => n.to_string(),
        None => "one per online CPU".to_owned(),
    };
    let pinned = if s.pin_workers {
        "pinned"
    } else {
        "not pinned"
    };
    let (relay, driver) = (s.relay, s.driver);
    let _ = writeln!(
        out,
        "workers: {workers} ({pinned})   driver: {driver}   relay: {relay}   node-port range: {}   \
         max connections per worker: {} (held: {}, per Service: {})   max flows per worker: {}   \
         backlog: {}",
        s.node_port_range,
        s.max_connections_per_worker,
        s.max_held_per_worker,
        s.max_held_per_service,
        s.max_flows_per_worker,
        s.backlog
    );
    let _ = writeln!(out, "service defaults: {}", tunables(&s.defaults));

    let header = [
        "SERVICE",
        "PORT",
        "NODEPORT",
        "POLICY",
        "FORWARDING",
        "ENDPOINTS",
    ];
    let rows: Vec<[String; 6]> = model.services.iter().map(row).collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: [&str; 6]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$} ", width = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]);
    }
    // Per-service tunables, only those that differ from the node-wide defaults.
    for p in &model.services {
        let d = &s.defaults;
        let mut own = Vec::new();
        let udp = p.key.protocol == Protocol::Udp;
        // Connect timeouts and retries mean nothing to datagrams.
        if p.timeouts.connect != d.timeouts.connect && !udp {
            own.push(format!(
                "connect timeout {}",
                humantime::format_duration(p.timeouts.connect)
            ));
        }
        let idle_default = if udp {
            DEFAULT_UDP_IDLE_TIMEOUT
        } else {
            d.timeouts.idle
        };
        if p.timeouts.idle != idle_default {
            own.push(format!(
                "idle timeout {}",
                humantime::format_duration(p.timeouts.idle)
            ));
        }
        if p.connect_retries != d.connect_retries && !udp {
            own.push(plural(p.connect_retries as usize, "connect retry"));
        }
        if let Some(n) = p.udp_responses {
            own.push(format!("flows end after {}", plural(n as usize, "reply")));
        }
        if p.maglev_table_size != d.maglev_table_size {
            own.push(format!("maglev table {}", p.maglev_table_size));
        }
        if p.health != d.health {
            own.push(format!("health {}", super::health::describe(&p.health)));
        }
        if !own.is_empty() {
            let _ = writeln!(out, "{} sets its own: {}", p.key, own.join(", "));
        }
    }
    // Addresses of their own (served on the nodes where they are local).
    for p in &model.services {
        if let Some(text) = addresses(p, s.source_ranges_on_node_ports) {
            let _ = writeln!(out, "{} {text}", p.key);
        }
    }
    out
}

/// `is reached at 192.0.2.10:80 (LoadBalancer IP), 192.0.2.7:80 (external IP), where local
/// to the node; clients from 10.0.0.0/8 only at the LoadBalancer IPs`, or `None`.
fn addresses(p: &ServicePort, ranges_on_node_ports: bool) -> Option<String> {
    let a = &p.addresses;
    let mut at: Vec<String> = Vec::new();
    let ip_port = |ip: &std::net::IpAddr| std::net::SocketAddr::new(*ip, p.port).to_string();
    for ip in &a.load_balancer_ips {
        at.push(format!("{} (LoadBalancer IP)", ip_port(ip)));
    }
    for ip in a
        .external_ips
        .iter()
        .filter(|ip| !a.load_balancer_ips.contains(ip))
    {
        at.push(format!("{} (external IP)", ip_port(ip)));
    }
    let mut text = String::new();
    if !at.is_empty() {
        let _ = write!(
            text,
            "is reached at {}, where local to the node",
            at.join(", ")
        );
    }
    let ranges: Vec<String> = a.source_ranges.iter().map(|c| c.to_string()).collect();
    let gates = match (
        a.load_balancer_ips.is_empty(),
        ranges_on_node_ports && p.node_port != 0,
    ) {
        (false, true) => Some("at the LoadBalancer IPs and the NodePort"),
        (false, false) => Some("at the LoadBalancer IPs"),
        (true, true) => Some("at the NodePort"),
        (true, false) => None,
    };
    if let (false, Some(gates)) = (ranges.is_empty(), gates) {
        if !text.is_empty() {
            text.push_str("; ");
        }
        let _ = write!(text, "clients from {} only {gates}", ranges.join(", "));
    }
    (!text.is_empty()).then_some(text)
}

fn row(p: &ServicePort) -> [String; 6] {
    let node_port = if p.node_port == 0 {
        "none".to_owned()
    } else if p.node_port_allocated {
        format!("{}/{} (allocated)", p.node_port, p.key.protocol)
    } else {
        format!("{}/{}", p.node_port, p.key.protocol)
    };
    let endpoints = endpoints(p);
    [
        p.key.to_string(),
        format!("{}/{}", p.port, p.key.protocol),
        node_port,
        p.policy.to_string(),
        p.forwarding.to_string(),
        endpoints,
    ]
}

/// The endpoints as routing will use them ([`crate::table::usable::routing_weights`]:
/// conditions, traffic policy, weights): those that take new connections first, then
/// those that do not, each with why.
fn endpoints(p: &ServicePort) -> String {
    let (weights, tier) = routing_weights(p.traffic_policy, &p.endpoints);
    let mut used = Vec::new();
    let mut unused = Vec::new();
    for (e, &w) in p.endpoints.iter().zip(&weights) {
        let mut notes = Vec::new();
        if e.weight != crate::model::DEFAULT_WEIGHT {
            notes.push(format!("weight {}", e.weight));
        }
        if w > 0 {
            if tier == Tier::Terminating {
                notes.push(format!("{}: used while none is ready", e.conditions));
            }
        } else if e.weight > 0 {
            notes.push(if p.traffic_policy == TrafficPolicy::Local && !e.local {
                "on another node: not used".to_owned()
            } else {
                format!("{}: not used", e.conditions)
            });
        }
        let text = if notes.is_empty() {
            e.addr.to_string()
        } else {
            format!("{} ({})", e.addr, notes.join(", "))
        };
        if w > 0 {
            used.push(text);
        } else {
            unused.push(text);
        }
    }
    let none = match p.timeouts.hold_when_empty {
        None if p.key.protocol == Protocol::Udp => "none usable: datagrams are dropped".to_owned(),
        None => "none usable: connections are reset".to_owned(),
        Some(d) => format!(
            "none usable: connections wait up to {} for one",
            humantime::format_duration(d)
        ),
    };
    if tier == Tier::None {
        if p.endpoints.is_empty() {
            return format!("({none})");
        }
        return format!("({none}) {}", unused.join(", "));
    }
    used.extend(unused);
    used.join(", ")
}

fn tunables(d: &ServiceDefaults) -> String {
    let mut text = format!(
        "connect timeout {}, idle timeout {}, {}, maglev table {}",
        humantime::format_duration(d.timeouts.connect),
        humantime::format_duration(d.timeouts.idle),
        plural(d.connect_retries as usize, "connect retry"),
        d.maglev_table_size
    );
    if d.health != Default::default() {
        let _ = write!(text, ", health {}", super::health::describe(&d.health));
    }
    text
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else if let Some(stem) = noun.strip_suffix('y') {
        format!("{n} {stem}ies")
    } else {
        format!("{n} {noun}s")
    }
}
