//! Human output of `sluice ctl`: tables, and `describe service` in the exact layout
//! `kubectl describe service` prints.
//!
//! Pure functions from protocol results to text; no IO.

use super::protocol::{OverrideOutcome, ReloadOutcome, ServiceList, ServicePortInfo, Status};
use std::fmt::Write as _;

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

/// `describe service`: every port of one Service, laid out as `kubectl describe service`.
/// Services from Kubernetes (manifests, the API) show what the objects say; TOML Services
/// show `<none>` where they have no source (labels, selector, cluster IPs, events).
pub fn describe(ports: &[ServicePortInfo]) -> String {
    let Some(first) = ports.first() else {
        return String::new();
    };
    let k8s = first.kubernetes.as_ref();
    let mut out = String::new();
    let mut field = |label: &str, value: &str| {
        let _ = writeln!(out, "{:<26}{value}", format!("{label}:"));
    };
    field("Name", &first.name);
    field("Namespace", &first.namespace);
    field(
        "Labels",
        &multiline(k8s.map(|k| &k.labels[..]).unwrap_or(&[]), &[]),
    );
    field(
        "Annotations",
        &multiline(
            k8s.map(|k| &k.annotations[..]).unwrap_or(&[]),
            &["kubectl.kubernetes.io/last-applied-configuration"],
        ),
    );
    let selector = k8s
        .map(|k| {
            k.selector
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty());
    field("Selector", selector.as_deref().unwrap_or("<none>"));
    field("Type", k8s.map_or("NodePort", |k| &k.service_type));
    match k8s {
        Some(k) => {
            field(
                "IP Family Policy",
                k.ip_family_policy.as_deref().unwrap_or("<none>"),
            );
            field("IP Families", &or_none(&k.ip_families.join(",")));
            field("IP", k.cluster_ips.first().map_or("<none>", String::as_str));
            field("IPs", &or_none(&k.cluster_ips.join(",")));
            if !k.external_ips.is_empty() {
                field("External IPs", &k.external_ips.join(","));
            }
            if !k.load_balancer_ingress.is_empty() {
                field("LoadBalancer Ingress", &k.load_balancer_ingress.join(", "));
            }
        }
        None => {
            let (v4, v6) =
                ports
                    .iter()
                    .flat_map(|p| &p.endpoints)
                    .fold((false, false), |(a, b), e| {
                        let v6 = e.address.starts_with('[');
                        (a || !v6, b || v6)
                    });
            let (policy, families) = match (v4, v6) {
                (true, true) => ("PreferDualStack", "IPv4,IPv6"),
                (false, true) => ("SingleStack", "IPv6"),
                _ => ("SingleStack", "IPv4"),
            };
            field("IP Family Policy", policy);
            field("IP Families", families);
            field("IP", "<none>");
            field("IPs", "<none>");
        }
    }
    for p in ports {
        let name = if p.port_name.is_empty() {
            "<unset>"
        } else {
            &p.port_name
        };
        let target = p
            .kubernetes
            .as_ref()
            .map_or_else(|| p.target_port.to_string(), |k| k.target_port.clone());
        field("Port", &format!("{name}  {}/{}", p.port, p.protocol));
        field("TargetPort", &format!("{target}/{}", p.protocol));
        field(
            "NodePort",
            &format!("{name}  {}/{}", p.node_port, p.protocol),
        );
        field("Endpoints", &kubectl_endpoints(p));
    }
    let affinity = if ports.iter().any(|p| p.session_affinity == "ClientIP") {
        "ClientIP"
    } else {
        "None"
    };
    field("Session Affinity", affinity);
    field(
        "External Traffic Policy",
        k8s.map_or("Cluster", |k| &k.external_traffic_policy),
    );
    if let Some(port) = k8s.and_then(|k| k.health_check_node_port) {
        field("HealthCheck NodePort", &port.to_string());
    }
    let warnings: Vec<&String> = k8s.iter().flat_map(|k| &k.warnings).collect();
    if warnings.is_empty() {
        field("Events", "<none>");
    } else {
        out.push_str(
            "Events:\n  Type     Reason   From    Message\n  ----     ------   ----    -------\n",
        );
        for w in warnings {
            let _ = writeln!(out, "  Warning  Problem  sluice  {w}");
        }
    }
    out
}

/// kubectl's multi-line `key=value` list: one per line, aligned; `<none>` when empty.
fn multiline(pairs: &[(String, String)], hidden: &[&str]) -> String {
    let shown: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| !hidden.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if shown.is_empty() {
        return "<none>".to_owned();
    }
    shown.join(&format!("\n{:26}", ""))
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".to_owned()
    } else {
        s.to_owned()
    }
}

/// Ready endpoints as kubectl shows them: the first three, then `+ N more...`.
fn kubectl_endpoints(p: &ServicePortInfo) -> String {
    // Kubernetes Services: the ready endpoints (kubectl's view); TOML: those routing uses.
    let usable: Vec<&str> = p
        .endpoints
        .iter()
        .filter(|e| match p.kubernetes {
            Some(_) => e.ready,
            None => e.weight > 0,
        })
        .map(|e| e.address.as_str())
        .collect();
    if usable.is_empty() {
        return "<none>".to_owned();
    }
    let mut s = usable[..usable.len().min(3)].join(",");
    if usable.len() > 3 {
        let _ = write!(s, " + {} more...", usable.len() - 3);
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

fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == N {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}   ", w = widths[i]);
            }
        }
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
    use super::super::protocol::{Counters, EndpointInfo, KubernetesInfo, ServiceList};
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
            cluster_ips: vec!["10.100.13.81".into()],
            target_port: "9000".into(),
            external_traffic_policy: "Cluster".into(),
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

        // The OpenShift seed's named targetPort; a LoadBalancer with Local policy.
        let mut hello = p.clone();
        hello.port_name = String::new();
        let mut k2 = k.clone();
        k2.target_port = "http-server".into();
        k2.service_type = "LoadBalancer".into();
        k2.external_traffic_policy = "Local".into();
        k2.health_check_node_port = Some(32100);
        k2.load_balancer_ingress = vec!["203.0.113.10".into()];
        k2.labels.push(("tier".into(), "web".into()));
        k2.warnings = vec!["annotation sluice.io/policy \"x\" is not accepted".into()];
        hello.kubernetes = Some(k2);
        let text = describe(&[hello]);
        for line in [
            "Labels:                   app=myfrontend\n                          tier=web\n",
            "Type:                     LoadBalancer\n",
            "LoadBalancer Ingress:     203.0.113.10\nPort:                     <unset>  80/TCP\n",
            "TargetPort:               http-server/TCP\n",
            "External Traffic Policy:  Local\nHealthCheck NodePort:     32100\n",
            "Events:\n  Type     Reason   From    Message\n",
            "  Warning  Problem  sluice  annotation sluice.io/policy \"x\" is not accepted\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
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
