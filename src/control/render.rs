//! Human output of `sluice ctl`: tables, and `describe service` in the exact layout
//! `kubectl describe service` prints.
//!
//! Pure functions from protocol results to text; no IO.

use super::protocol::{
    KubernetesInfo, OverrideOutcome, ReloadOutcome, ServiceList, ServicePortInfo, SpecPortInfo,
    Status, UpgradeOutcome,
};
use std::fmt::Write as _;
use std::io::Write as _;
use tabwriter::TabWriter;

/// `status`.
pub fn status(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "sluice {} (pid {})", s.version, s.pid);
    let _ = writeln!(out, "uptime:       {}", uptime(s.uptime_seconds));
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
        "POLICY".to_owned(),
        "ENDPOINTS".to_owned(),
        "ACTIVE".to_owned(),
    ]];
    for s in &list.services {
        rows.push([
            s.namespace.clone(),
            s.name.clone(),
            if s.port_name.is_empty() {
                s.port.to_string()
            } else {
                format!("{}:{}", s.port_name, s.port)
            },
            s.protocol.clone(),
            s.node_port.to_string(),
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

/// `describe service`: one Service laid out byte for byte as `kubectl describe service`
/// prints it (`describeService` in kubectl's `pkg/describe/describe.go`): every
/// `spec.ports` entry in spec order, served or not, columns aligned by a tabwriter with
/// kubectl's settings (minwidth 0, padding 2), Events in kubectl's columns. Services from
/// TOML have no Kubernetes object: they show what a NodePort Service with their ports would.
pub fn describe(ports: &[ServicePortInfo]) -> String {
    let Some(first) = ports.first() else {
        return String::new();
    };
    let k = first
        .kubernetes
        .clone()
        .unwrap_or_else(|| toml_service(ports));
    let mut w = TabWriter::new(Vec::new()).minwidth(0).padding(2);
    put(&mut w, format!("Name:\t{}\n", first.name));
    put(&mut w, format!("Namespace:\t{}\n", first.namespace));
    put(&mut w, multiline_labels("Labels", &k.labels));
    put(&mut w, multiline_annotations("Annotations", &k.annotations));
    let selector: Vec<String> = k.selector.iter().map(|(n, v)| format!("{n}={v}")).collect();
    put(
        &mut w,
        format!("Selector:\t{}\n", or_none(&selector.join(","))),
    );
    put(&mut w, format!("Type:\t{}\n", k.service_type));
    if let Some(policy) = &k.ip_family_policy {
        put(&mut w, format!("IP Family Policy:\t{policy}\n"));
    }
    put(
        &mut w,
        format!("IP Families:\t{}\n", or_none(&k.ip_families.join(","))),
    );
    put(&mut w, format!("IP:\t{}\n", k.cluster_ip));
    put(
        &mut w,
        format!("IPs:\t{}\n", or_none(&k.cluster_ips.join(","))),
    );
    if !k.external_ips.is_empty() {
        put(
            &mut w,
            format!("External IPs:\t{}\n", k.external_ips.join(",")),
        );
    }
    if !k.load_balancer_ingress.is_empty() {
        put(
            &mut w,
            format!(
                "LoadBalancer Ingress:\t{}\n",
                k.load_balancer_ingress.join(", ")
            ),
        );
    }
    for sp in &k.ports {
        let name = if sp.name.is_empty() {
            "<unset>"
        } else {
            &sp.name
        };
        put(
            &mut w,
            format!("Port:\t{name}\t{}/{}\n", sp.port, sp.protocol),
        );
        put(
            &mut w,
            format!("TargetPort:\t{}/{}\n", sp.target_port, sp.protocol),
        );
        if let Some(app) = &sp.app_protocol {
            put(&mut w, format!("AppProtocol:\t{app}\n"));
        }
        if sp.node_port != 0 {
            put(
                &mut w,
                format!("NodePort:\t{name}\t{}/{}\n", sp.node_port, sp.protocol),
            );
        }
        let served = ports
            .iter()
            .find(|p| p.port_name == sp.name && p.protocol == sp.protocol);
        put(
            &mut w,
            format!(
                "Endpoints:\t{}\n",
                served.map_or_else(|| "<none>".to_owned(), kubectl_endpoints)
            ),
        );
    }
    put(
        &mut w,
        format!("Session Affinity:\t{}\n", k.session_affinity),
    );
    if let Some(p) = &k.external_traffic_policy {
        put(&mut w, format!("External Traffic Policy:\t{p}\n"));
    }
    if let Some(p) = &k.internal_traffic_policy {
        put(&mut w, format!("Internal Traffic Policy:\t{p}\n"));
    }
    if let Some(port) = k.health_check_node_port {
        put(&mut w, format!("HealthCheck NodePort:\t{port}\n"));
    }
    if !k.load_balancer_source_ranges.is_empty() {
        put(
            &mut w,
            format!(
                "LoadBalancer Source Ranges:\t{}\n",
                k.load_balancer_source_ranges.join(",")
            ),
        );
    }
    if let Some(d) = &k.traffic_distribution {
        put(&mut w, format!("Traffic Distribution:\t{d}\n"));
    }
    if k.events.is_empty() {
        put(&mut w, "Events:\t<none>\n".to_owned());
    } else {
        // kubectl flushes before the table: its columns are aligned on their own.
        let _ = w.flush();
        put(
            &mut w,
            "Events:\n  Type\tReason\tAge\tFrom\tMessage\n".to_owned(),
        );
        put(&mut w, "  ----\t------\t----\t----\t-------\n".to_owned());
        for e in &k.events {
            put(
                &mut w,
                format!(
                    "  {}\t{}\t{}\t{}\t{}\n",
                    e.type_,
                    e.reason,
                    human_duration(e.age_seconds),
                    e.from,
                    e.message.trim()
                ),
            );
        }
    }
    let bytes = w.into_inner().unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn put(w: &mut TabWriter<Vec<u8>>, text: String) {
    let _ = w.write_all(text.as_bytes());
}

/// What kubectl would show for a NodePort Service with the ports of a TOML Service.
fn toml_service(ports: &[ServicePortInfo]) -> KubernetesInfo {
    let (v4, v6) = ports
        .iter()
        .flat_map(|p| &p.endpoints)
        .fold((false, false), |(a, b), e| {
            let v6 = e.address.starts_with('[');
            (a || !v6, b || v6)
        });
    let (policy, families) = match (v4, v6) {
        (true, true) => ("PreferDualStack", vec!["IPv4".into(), "IPv6".into()]),
        (false, true) => ("SingleStack", vec!["IPv6".into()]),
        _ => ("SingleStack", vec!["IPv4".into()]),
    };
    let affinity = if ports.iter().any(|p| p.session_affinity == "ClientIP") {
        "ClientIP"
    } else {
        "None"
    };
    KubernetesInfo {
        service_type: "NodePort".into(),
        ip_family_policy: Some(policy.into()),
        ip_families: families,
        cluster_ip: "<none>".into(),
        ports: ports
            .iter()
            .map(|p| SpecPortInfo {
                name: p.port_name.clone(),
                protocol: p.protocol.clone(),
                port: i32::from(p.port),
                target_port: p.target_port.to_string(),
                node_port: i32::from(p.node_port),
                app_protocol: None,
            })
            .collect(),
        session_affinity: affinity.into(),
        external_traffic_policy: Some("Cluster".into()),
        ..Default::default()
    }
}

/// kubectl's `printLabelsMultiline`: `key=value` per line, sorted; `<none>` when empty.
fn multiline_labels(title: &str, pairs: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = pairs.iter().collect();
    sorted.sort();
    if sorted.is_empty() {
        return format!("{title}:\t<none>\n");
    }
    let mut out = format!("{title}:");
    for (k, v) in sorted {
        let _ = writeln!(out, "\t{k}={v}");
    }
    out
}

/// Longest annotation kubectl prints on one line (`maxAnnotationLen`).
const MAX_ANNOTATION_LEN: usize = 140;

/// kubectl's `printAnnotationsMultiline`: `key: value` per line, sorted, without
/// `kubectl.kubernetes.io/last-applied-configuration`; a long or multi-line value goes on
/// its own indented lines, each cut at 138 characters with `...`.
fn multiline_annotations(title: &str, pairs: &[(String, String)]) -> String {
    let mut shown: Vec<&(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "kubectl.kubernetes.io/last-applied-configuration")
        .collect();
    shown.sort();
    if shown.is_empty() {
        return format!("{title}:\t<none>\n");
    }
    let mut out = format!("{title}:\t");
    for (i, (k, v)) in shown.iter().enumerate() {
        if i != 0 {
            out.push('\t');
        }
        let value = v.strip_suffix('\n').unwrap_or(v);
        if value.len() + k.len() + 2 > MAX_ANNOTATION_LEN || value.contains('\n') {
            let _ = writeln!(out, "{k}:");
            for part in value.split('\n') {
                let _ = writeln!(out, "\t  {}", shorten(part, MAX_ANNOTATION_LEN - 2));
            }
        } else {
            let _ = writeln!(out, "{k}: {value}");
        }
    }
    out
}

/// Go's `shorten`: the first `max` bytes and `...` when longer.
fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Kubernetes' `duration.HumanDuration` (kubectl's Age column).
pub fn human_duration(seconds: u64) -> String {
    let s = seconds;
    if s < 120 {
        return format!("{s}s");
    }
    let minutes = s / 60;
    if minutes < 10 {
        return match s % 60 {
            0 => format!("{minutes}m"),
            r => format!("{minutes}m{r}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = s / 3600;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let years = hours / 24 / 365;
        return match (hours / 24) % 365 {
            0 => format!("{years}y"),
            d => format!("{years}y{d}d"),
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".to_owned()
    } else {
        s.to_owned()
    }
}

/// Ready endpoints as kubectl shows them (`formatEndpointSlices`): the first three, then
/// `+ N more...` counting the other ready ones. TOML Services: the endpoints routing uses.
fn kubectl_endpoints(p: &ServicePortInfo) -> String {
    if p.endpoints.is_empty() {
        return "<none>".to_owned();
    }
    let ready: Vec<&str> = p
        .endpoints
        .iter()
        .filter(|e| match p.kubernetes {
            Some(_) => e.ready,
            None => e.weight > 0,
        })
        .map(|e| e.address.as_str())
        .collect();
    let mut s = ready[..ready.len().min(3)].join(",");
    if ready.len() > 3 {
        let _ = write!(s, " + {} more...", ready.len() - 3);
    }
    s
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

fn when(unix: f64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(unix.max(0.0));
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::super::protocol::{Counters, EndpointInfo, EventInfo, KubernetesInfo, ServiceList};
    use super::*;

    fn ep(a: &str) -> EndpointInfo {
        EndpointInfo {
            address: a.into(),
            configured_weight: 1,
            weight: 1,
            state: "enabled".into(),
            overridden: false,
            ready: true,
            serving: true,
            terminating: false,
            local: true,
            health: "up".into(),
            health_reason: None,
            counters: Counters::default(),
        }
    }

    #[test]
    fn describe_matches_the_seed_layout() {
        let p = ServicePortInfo {
            namespace: "workshop".into(),
            name: "myfrontend".into(),
            port_name: "http".into(),
            protocol: "TCP".into(),
            port: 80,
            target_port: 9000,
            node_port: 30000,
            node_port_allocated: false,
            policy: "maglev(client-ip-port)".into(),
            session_affinity: "None".into(),
            forwarding: "none".into(),
            endpoints_usable: 3,
            endpoints_total: 3,
            counters: Counters::default(),
            endpoints: vec![
                ep("192.168.7.8:9000"),
                ep("192.168.45.127:9000"),
                ep("192.168.66.254:9000"),
            ],
            kubernetes: None,
        };
        let text = describe(&[p]);
        let seed = "\
Name:                     myfrontend
Namespace:                workshop
Labels:                   <none>
Annotations:              <none>
Selector:                 <none>
Type:                     NodePort
IP Family Policy:         SingleStack
IP Families:              IPv4
IP:                       <none>
IPs:                      <none>
Port:                     http  80/TCP
TargetPort:               9000/TCP
NodePort:                 http  30000/TCP
Endpoints:                192.168.7.8:9000,192.168.45.127:9000,192.168.66.254:9000
Session Affinity:         None
External Traffic Policy:  Cluster
Events:                   <none>
";
        assert_eq!(text, seed);
    }

    /// A Service read from Kubernetes objects: the EKS seed's `kubectl describe` output, to
    /// the byte.
    #[test]
    fn describe_of_a_kubernetes_service_matches_the_seed() {
        let k = KubernetesInfo {
            service_type: "NodePort".into(),
            labels: vec![("app".into(), "myfrontend".into())],
            annotations: vec![(
                "kubectl.kubernetes.io/last-applied-configuration".into(),
                "{...}".into(),
            )],
            selector: vec![("app".into(), "frontend".into())],
            ip_family_policy: Some("SingleStack".into()),
            ip_families: vec!["IPv4".into()],
            cluster_ip: "10.100.13.81".into(),
            cluster_ips: vec!["10.100.13.81".into()],
            ports: vec![SpecPortInfo {
                name: "http".into(),
                protocol: "TCP".into(),
                port: 80,
                target_port: "9000".into(),
                node_port: 30000,
                app_protocol: None,
            }],
            session_affinity: "None".into(),
            external_traffic_policy: Some("Cluster".into()),
            ..Default::default()
        };
        let mut not_ready = ep("192.168.99.1:9000");
        not_ready.ready = false;
        let p = ServicePortInfo {
            namespace: "workshop".into(),
            name: "myfrontend".into(),
            port_name: "http".into(),
            protocol: "TCP".into(),
            port: 80,
            target_port: 9000,
            node_port: 30000,
            node_port_allocated: false,
            policy: "maglev(client-ip-port)".into(),
            session_affinity: "None".into(),
            forwarding: "none".into(),
            endpoints_usable: 3,
            endpoints_total: 4,
            counters: Counters::default(),
            endpoints: vec![
                ep("192.168.7.8:9000"),
                ep("192.168.45.127:9000"),
                ep("192.168.66.254:9000"),
                not_ready,
            ],
            kubernetes: Some(k.clone()),
        };
        let seed = include_str!("../../tests/fixtures/k8s/describe-myfrontend.txt");
        assert_eq!(describe(std::slice::from_ref(&p)), seed);
    }

    /// Every field kubectl's describeService prints, with its tabwriter's column widths:
    /// a served port (AppProtocol, 5 ready endpoints), an unserved UDP port with its reason
    /// as an Event, `(VIP)` ingress, both traffic policies, source ranges, traffic
    /// distribution, a long annotation cut as kubectl cuts it, Events in kubectl's columns.
    #[test]
    fn describe_every_field_like_kubectl() {
        let k = KubernetesInfo {
            service_type: "LoadBalancer".into(),
            labels: vec![("tier".into(), "web".into()), ("app".into(), "shop".into())],
            annotations: vec![
                ("example.com/note".into(), "hi".into()),
                ("example.com/long".into(), "x".repeat(150)),
                (
                    "kubectl.kubernetes.io/last-applied-configuration".into(),
                    "{}".into(),
                ),
            ],
            selector: vec![("app".into(), "shop".into())],
            ip_family_policy: Some("PreferDualStack".into()),
            ip_families: vec!["IPv4".into(), "IPv6".into()],
            cluster_ip: "10.96.0.10".into(),
            cluster_ips: vec!["10.96.0.10".into(), "fd00::10".into()],
            external_ips: vec!["198.51.100.7".into()],
            load_balancer_ingress: vec!["203.0.113.10 (VIP)".into(), "lb.example.com".into()],
            ports: vec![
                SpecPortInfo {
                    name: "http".into(),
                    protocol: "TCP".into(),
                    port: 80,
                    target_port: "http-server".into(),
                    node_port: 30080,
                    app_protocol: Some("kubernetes.io/h2c".into()),
                },
                SpecPortInfo {
                    name: "dns".into(),
                    protocol: "UDP".into(),
                    port: 53,
                    target_port: "53".into(),
                    node_port: 30053,
                    app_protocol: None,
                },
            ],
            session_affinity: "ClientIP".into(),
            external_traffic_policy: Some("Local".into()),
            internal_traffic_policy: Some("Cluster".into()),
            traffic_distribution: Some("PreferClose".into()),
            load_balancer_source_ranges: vec!["192.0.2.0/24".into(), "198.51.100.0/24".into()],
            health_check_node_port: Some(32100),
            events: vec![
                EventInfo {
                    type_: "Warning".into(),
                    reason: "PortNotServed".into(),
                    age_seconds: 300,
                    from: "sluice".into(),
                    message: "port \"dns\" is UDP: sluice serves only TCP; not served".into(),
                },
                EventInfo {
                    type_: "Warning".into(),
                    reason: "InvalidAnnotation".into(),
                    age_seconds: 90,
                    from: "sluice".into(),
                    message:
                        "annotation sluice.io/policy \"fastest\" is not accepted; keeping maglev"
                            .into(),
                },
            ],
        };
        let mut endpoints: Vec<EndpointInfo> =
            (1..=5).map(|i| ep(&format!("10.0.0.{i}:8080"))).collect();
        endpoints[4].ready = true;
        let mut not_ready = ep("10.0.0.9:8080");
        not_ready.ready = false;
        endpoints.insert(2, not_ready);
        let p = ServicePortInfo {
            namespace: "web".into(),
            name: "shop".into(),
            port_name: "http".into(),
            protocol: "TCP".into(),
            port: 80,
            target_port: 0,
            node_port: 30080,
            node_port_allocated: false,
            policy: "client-ip(10800s)".into(),
            session_affinity: "ClientIP".into(),
            forwarding: "transparent".into(),
            endpoints_usable: 5,
            endpoints_total: 6,
            counters: Counters::default(),
            endpoints,
            kubernetes: Some(k),
        };
        let golden = include_str!("../../tests/fixtures/k8s/describe-every-field.txt");
        assert_eq!(describe(&[p]), golden);
    }

    /// kubectl's Age column (`duration.HumanDuration`), at its boundaries.
    #[test]
    fn ages_like_kubectl() {
        for (s, want) in [
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (150, "2m30s"),
            (600, "10m"),
            (179 * 60, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60, "3h1m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (48 * 3600, "2d"),
            (50 * 3600, "2d2h"),
            (8 * 24 * 3600, "8d"),
            (2 * 365 * 24 * 3600, "2y"),
            (2 * 365 * 24 * 3600 + 86400, "2y1d"),
            (9 * 365 * 24 * 3600, "9y"),
        ] {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }

    /// Conditions and locality in words, not as booleans.
    #[test]
    fn endpoints_show_conditions_and_node_in_words() {
        let mut terminating = ep("10.0.0.2:9000");
        terminating.ready = false;
        terminating.terminating = true;
        terminating.local = false;
        terminating.weight = 0;
        let mut port = ServicePortInfo {
            namespace: "shop".into(),
            name: "web".into(),
            port_name: String::new(),
            protocol: "TCP".into(),
            port: 80,
            target_port: 9000,
            node_port: 30080,
            node_port_allocated: false,
            policy: "maglev(client-ip-port)".into(),
            session_affinity: "None".into(),
            forwarding: "none".into(),
            endpoints_usable: 1,
            endpoints_total: 2,
            counters: Counters::default(),
            endpoints: vec![ep("10.0.0.1:9000"), terminating],
            kubernetes: Some(KubernetesInfo::default()),
        };
        let list = |p: &ServicePortInfo| ServiceList {
            generation: 1,
            services: vec![p.clone()],
        };
        let text = endpoints(&list(&port));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "SERVICE",
                "ENDPOINT",
                "STATE",
                "WEIGHT",
                "CONDITIONS",
                "NODE",
                "ACTIVE",
                "TOTAL",
                "FAILED",
                "HEALTH"
            ]
        );
        assert!(
            lines[1].contains(" enabled   1                  ready                  this "),
            "{text}"
        );
        assert!(
            lines[2].contains(" 0 (configured 1)   terminating, serving   other "),
            "{text}"
        );
        // A TOML Service's endpoints have no node.
        port.kubernetes = None;
        let text = endpoints(&list(&port));
        assert!(
            text.lines().nth(1).unwrap().contains(" ready ") && text.contains("   -   "),
            "{text}"
        );
    }

    #[test]
    fn tables_align() {
        let t = table(&[
            ["A".to_owned(), "B".to_owned()],
            ["long".to_owned(), "x".to_owned()],
        ]);
        assert_eq!(t, "A      B\nlong   x\n");
    }
}
