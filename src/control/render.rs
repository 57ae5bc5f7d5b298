//! Human output of `sluice ctl`: the tables of `status`, `services`, `endpoints`, `stats`,
//! `flows`, `reload` and endpoint overrides here; `describe service` in the exact layout
//! `kubectl describe service` prints in [`describe`](mod@describe) (re-exported).
//!
//! Pure functions from protocol results to text; no IO. Names of model values (policies,
//! forwarding modes) arrive already spelled by `model`'s `Display`.

use super::protocol::{
    FlowList, OverrideOutcome, ReloadOutcome, ServiceList, ServicePortInfo, Status, UpgradeOutcome,
};
use std::fmt::Write as _;
use std::io::Write as _;
use tabwriter::TabWriter;

mod describe;
pub use describe::{describe, human_duration};

/// `status`.
pub fn status(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "sluice {} (pid {})", s.version, s.pid);
    let _ = writeln!(
        out,
        "started:      {} (uptime {})",
        when(s.started_at_unix),
        uptime(s.uptime_seconds)
    );
    if let Some(b) = &s.binary {
        let _ = writeln!(out, "binary:       {b}");
    }
    let _ = writeln!(out, "driver:       {}", s.driver);
    let _ = writeln!(out, "workers:      {}", s.workers);
    let _ = writeln!(out, "generation:   {}", s.generation);
    let _ = writeln!(
        out,
        "config:       {}",
        s.config.as_deref().unwrap_or("(built in)")
    );
    let _ = writeln!(out, "services:     {} ports", s.service_ports);
    let _ = writeln!(out, "listening on: {}", join_or_none(&s.listen));
    let last = match &s.last_reload {
        None => "none yet".to_owned(),
        Some(r) if r.ok => format!("ok at {} (generation {})", when(r.at_unix), r.generation),
        Some(r) => format!(
            "FAILED at {}: {}",
            when(r.at_unix),
            r.error.as_deref().unwrap_or("?")
        ),
    };
    let _ = writeln!(out, "reloads:      {} (last: {last})", s.reloads);
    out
}

/// `reload`.
pub fn reload(r: &ReloadOutcome) -> String {
    let mut out = String::new();
    if r.ok {
        let _ = writeln!(out, "reloaded: generation {}", r.generation);
        if r.changes.is_empty() {
            let _ = writeln!(out, "no changes");
        }
        for c in &r.changes {
            let _ = writeln!(out, "  {c}");
        }
        for s in &r.needs_restart {
            let _ = writeln!(out, "  ! {s} changed: applies after a restart");
        }
    } else {
        let _ = writeln!(
            out,
            "reload failed, still serving generation {}: {}",
            r.generation,
            r.error.as_deref().unwrap_or("?")
        );
    }
    out
}

/// `upgrade`.
pub fn upgrade(u: &UpgradeOutcome) -> String {
    format!(
        "upgraded in {:.1} s: pid {} (sluice {}) serves now, from {}\n\
         pid {} (sluice {}) stopped accepting and lets its connections finish (up to {})\n",
        u.seconds,
        u.new_pid,
        u.new_version,
        u.binary,
        u.old_pid,
        u.old_version,
        uptime(u.drain_timeout_seconds)
    )
}

/// `services`: one line per Service port.
pub fn services(list: &ServiceList) -> String {
    let mut rows = vec![[
        "NAMESPACE".to_owned(),
        "NAME".to_owned(),
        "PORT".to_owned(),
        "PROTOCOL".to_owned(),
        "NODEPORT".to_owned(),
        "EXTERNAL-IP".to_owned(),
        "POLICY".to_owned(),
        "ENDPOINTS".to_owned(),
        "ACTIVE".to_owned(),
    ]];
    for s in &list.services {
        // As `kubectl get service`: LoadBalancer IPs, then external IPs.
        let mut external: Vec<&str> = s.load_balancer_ips.iter().map(String::as_str).collect();
        external.extend(
            s.external_ips
                .iter()
                .map(String::as_str)
                .filter(|ip| !s.load_balancer_ips.iter().any(|l| l == ip)),
        );
        rows.push([
            s.namespace.clone(),
            s.name.clone(),
            if s.port_name.is_empty() {
                s.port.to_string()
            } else {
                format!("{}:{}", s.port_name, s.port)
            },
            s.protocol.clone(),
            if s.node_port == 0 {
                "<none>".to_owned()
            } else {
                s.node_port.to_string()
            },
            or_none(&external.join(",")),
            s.policy.clone(),
            format!("{}/{}", s.endpoints_usable, s.endpoints_total),
            s.counters.connections_active.to_string(),
        ]);
    }
    table(&rows)
}

/// `endpoints`: one line per endpoint. CONDITIONS are the Kubernetes endpoint conditions in
/// words (`ready`, `terminating, serving`, `not ready`); NODE says whether the endpoint runs
/// on this node (what externalTrafficPolicy: Local goes by; `-` for TOML Services, whose
/// endpoints have no node).
pub fn endpoints(list: &ServiceList) -> String {
    let mut rows = vec![[
        "SERVICE".to_owned(),
        "ENDPOINT".to_owned(),
        "STATE".to_owned(),
        "WEIGHT".to_owned(),
        "CONDITIONS".to_owned(),
        "NODE".to_owned(),
        "ACTIVE".to_owned(),
        "TOTAL".to_owned(),
        "FAILED".to_owned(),
        "HEALTH".to_owned(),
    ]];
    for s in &list.services {
        for e in &s.endpoints {
            let conditions = crate::model::Conditions {
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
            };
            let node = match (&s.kubernetes, e.local) {
                (None, _) => "-",
                (Some(_), true) => "this",
                (Some(_), false) => "other",
            };
            rows.push([
                port_key(s),
                e.address.clone(),
                if e.overridden {
                    format!("{} (override)", e.state)
                } else {
                    e.state.clone()
                },
                if e.weight == e.configured_weight {
                    e.weight.to_string()
                } else {
                    format!("{} (configured {})", e.weight, e.configured_weight)
                },
                conditions.to_string(),
                node.to_owned(),
                e.counters.connections_active.to_string(),
                e.counters.connections_total.to_string(),
                e.counters.connections_failed.to_string(),
                match &e.health_reason {
                    Some(why) => format!("{} ({why})", e.health),
                    None => e.health.clone(),
                },
            ]);
        }
    }
    table(&rows)
}

/// `stats`: counters per Service port, then per endpoint (indented).
pub fn stats(list: &ServiceList) -> String {
    let mut rows = vec![[
        "SERVICE / ENDPOINT".to_owned(),
        "TOTAL".to_owned(),
        "ACTIVE".to_owned(),
        "FAILED".to_owned(),
        "RETRIES".to_owned(),
        "BYTES IN".to_owned(),
        "BYTES OUT".to_owned(),
    ]];
    for s in &list.services {
        let row = |name: String, c: &super::protocol::Counters| {
            [
                name,
                c.connections_total.to_string(),
                c.connections_active.to_string(),
                c.connections_failed.to_string(),
                c.connect_retries.to_string(),
                c.bytes_to_backend.to_string(),
                c.bytes_to_client.to_string(),
            ]
        };
        rows.push(row(port_key(s), &s.counters));
        for e in &s.endpoints {
            rows.push(row(format!("  {}", e.address), &e.counters));
        }
    }
    table(&rows) + "(bytes in: client → endpoint; bytes out: endpoint → client)\n"
}

/// `endpoint ...`.
pub fn override_outcome(o: &OverrideOutcome) -> String {
    let mut out = String::new();
    for a in &o.affected {
        let _ = writeln!(out, "{a}");
    }
    let _ = writeln!(out, "serving generation {}", o.generation);
    out
}

/// `flows`: one line per UDP flow or TCP connection, like `conntrack -L` in columns; bytes
/// (and datagrams, UDP) each way; then how many there are in all.
pub fn flows(list: &FlowList) -> String {
    let mut rows = vec![[
        "PROTO".to_owned(),
        "SERVICE".to_owned(),
        "CLIENT".to_owned(),
        "NODE".to_owned(),
        "ENDPOINT".to_owned(),
        "AGE".to_owned(),
        "IDLE".to_owned(),
        "TO-ENDPOINT".to_owned(),
        "TO-CLIENT".to_owned(),
        "WORKER".to_owned(),
    ]];
    let traffic = |bytes: u64, datagrams: Option<u64>| match datagrams {
        Some(d) => format!("{bytes}B/{d}"),
        None => format!("{bytes}B"),
    };
    for f in &list.flows {
        rows.push([
            f.protocol.clone(),
            f.service.clone(),
            f.client.clone(),
            f.node.clone(),
            f.endpoint.clone().unwrap_or_else(|| "<none>".to_owned()),
            human_duration(f.age_seconds as u64),
            human_duration(f.idle_seconds as u64),
            traffic(f.bytes_to_endpoint, f.datagrams_to_endpoint),
            traffic(f.bytes_to_client, f.datagrams_to_client),
            f.worker.to_string(),
        ]);
    }
    let mut out = if list.flows.is_empty() {
        String::new()
    } else {
        table(&rows)
    };
    let _ = write!(out, "{} flows and connections", list.total);
    if list.total > list.flows.len() {
        let _ = write!(out, ", the first {} shown (--limit)", list.flows.len());
    }
    let _ = writeln!(out);
    if list.workers_answered < list.workers {
        let _ = writeln!(
            out,
            "warning: {} of {} workers did not answer in time: their flows are not counted",
            list.workers - list.workers_answered,
            list.workers
        );
    }
    out
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".to_owned()
    } else {
        s.to_owned()
    }
}

fn port_key(s: &ServicePortInfo) -> String {
    if s.port_name.is_empty() {
        format!("{}/{}", s.namespace, s.name)
    } else {
        format!("{}/{}:{}", s.namespace, s.name, s.port_name)
    }
}

/// Rows in aligned columns (3 spaces apart, as `kubectl get`), through a tabwriter.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut w = TabWriter::new(Vec::new()).minwidth(0).padding(3);
    for r in rows {
        // A tab inside a cell would start a column: cells never hold one.
        let cells: Vec<String> = r.iter().map(|c| c.replace('\t', " ")).collect();
        let _ = writeln!(w, "{}", cells.join("\t"));
    }
    let bytes = w.into_inner().unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn join_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "<none>".to_owned()
    } else {
        v.join(", ")
    }
}

fn uptime(secs: f64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs as u64)).to_string()
}

/// A daemon's Unix time as RFC 3339, clamped to what RFC 3339 can write (years 1970..=9999);
/// "?" for a value that is no number.
fn when(unix: f64) -> String {
    /// 9999-12-31T23:59:59Z.
    const LAST: f64 = 253_402_300_799.0;
    match std::time::Duration::try_from_secs_f64(unix.clamp(0.0, LAST)) {
        Ok(d) => humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + d).to_string(),
        Err(_) => "?".to_owned(),
    }
}

#[cfg(test)]
mod tests;
