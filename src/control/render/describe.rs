//! `sluice ctl describe service`: one Service laid out byte for byte as
//! `kubectl describe service` prints it, with kubectl's helpers (`shorten`,
//! `HumanDuration`, `formatEndpointSlices`) carried over.
//!
//! Pure: protocol results in, text out.

use super::super::protocol::{KubernetesInfo, ServicePortInfo, SpecPortInfo};
use super::or_none;
use std::fmt::Write as _;
use std::io::Write as _;
use tabwriter::TabWriter;

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
    let first = &ports[0];
    KubernetesInfo {
        service_type: if first.load_balancer_ips.is_empty() {
            "NodePort"
        } else {
            "LoadBalancer"
        }
        .into(),
        external_ips: first.external_ips.clone(),
        load_balancer_ingress: first.load_balancer_ips.clone(),
        load_balancer_source_ranges: first.load_balancer_source_ranges.clone(),
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
