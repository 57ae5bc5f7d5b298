//! What `sluice ctl` shows, as data: the status of the daemon, and every served Service port
//! with its endpoints, their state and counters, and (for `describe`) its Kubernetes fields.
//! Built from the snapshot serving, the model as configured, the overrides and the health
//! checks' reports; the text for humans is `render`'s business, the wire types `protocol`'s.
//!
//! Reads only: nothing here changes the daemon.

use super::daemon::Daemon;
use super::overrides::AdminState;
use super::protocol::{self, Counters, EndpointInfo, ServiceList, ServicePortInfo, Status};

use crate::model::Policy;
use crate::stats::ConnTotals;

impl Daemon {
    pub(super) fn status(&self) -> Status {
        let monitor = &self.monitor;
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            started_at_unix: super::metrics::unix_seconds(self.started_at),
            binary: crate::handover::StartedAs::remembered()
                .map(|s| s.binary.display().to_string()),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            driver: monitor.driver().to_owned(),
            workers: monitor.workers(),
            generation: self.generation,
            config: self.source.describe(),
            service_ports: self.model.services.len(),
            listen: self
                .plane()
                .listen_addrs()
                .iter()
                .map(|a| a.to_string())
                .collect(),
            reloads: self.reloads,
            last_reload: self.last_reload.clone(),
        }
    }

    /// Every served Service port `keep` accepts, with endpoints, state and counters.
    pub(super) fn service_list(
        &self,
        keep: impl Fn(&crate::model::ServiceName) -> bool,
    ) -> ServiceList {
        let snapshot = self.publisher.current();
        let health = self.endpoint_health.shared();
        let mut services = Vec::new();
        // By key: a scan per Service is quadratic (10,000 Services: seconds per request).
        let configured_by_key: std::collections::HashMap<_, _> =
            self.model.services.iter().map(|c| (&c.key, c)).collect();
        // Served nodePorts by Service and port name (describe shows allocated ones).
        let mut served_node_ports: std::collections::HashMap<
            &crate::model::ServiceName,
            std::collections::HashMap<&str, u16>,
        > = std::collections::HashMap::new();
        for c in self.model.services.iter().filter(|c| keep(&c.key.service)) {
            served_node_ports
                .entry(&c.key.service)
                .or_default()
                .insert(c.key.port_name.as_str(), c.node_port);
        }
        for (_, s) in snapshot.services() {
            let p = &s.port;
            // Before anything is computed: `ctl endpoints NAME` of one Service in 10,000.
            if !keep(&p.key.service) {
                continue;
            }
            let configured = configured_by_key.get(&p.key).copied();
            let endpoints: Vec<EndpointInfo> = s
                .endpoints()
                .iter()
                .map(|e| {
                    let addr = e.endpoint.addr;
                    let configured_weight = configured
                        .and_then(|c| c.endpoints.iter().find(|x| x.addr == addr))
                        .map_or(e.endpoint.weight, |x| x.weight);
                    let o = self.overrides.get(&p.key, addr);
                    let report = health.report(&p.key, addr);
                    let state = match o.map(|o| o.state) {
                        Some(AdminState::Draining) => "draining",
                        Some(AdminState::Disabled) => "disabled",
                        _ if e.endpoint.weight == 0 => "draining",
                        _ => "enabled",
                    };
                    EndpointInfo {
                        address: addr.to_string(),
                        configured_weight,
                        weight: e.routing_weight,
                        state: state.to_owned(),
                        overridden: o.is_some(),
                        ready: e.endpoint.conditions.ready,
                        serving: e.endpoint.conditions.serving,
                        terminating: e.endpoint.conditions.terminating,
                        local: e.endpoint.local,
                        health: if e.endpoint.healthy { "up" } else { "down" }.to_owned(),
                        health_reason: if e.endpoint.healthy {
                            None
                        } else if state == "disabled" {
                            Some("disabled by an operator".to_owned())
                        } else {
                            report.and_then(|r| r.reason)
                        },
                        counters: counters(e.stats.exported_totals()),
                    }
                })
                .collect();
            let info = ServicePortInfo {
                namespace: p.key.service.namespace.clone(),
                name: p.key.service.name.clone(),
                port_name: p.key.port_name.clone(),
                protocol: p.key.protocol.to_string(),
                port: p.port,
                target_port: p.target_port,
                node_port: p.node_port,
                node_port_allocated: p.node_port_allocated,
                policy: p.policy.to_string(),
                session_affinity: match p.policy {
                    Policy::ClientIp { .. } => "ClientIP",
                    _ => "None",
                }
                .to_owned(),
                forwarding: p.forwarding.mode().name().to_owned(),
                endpoints_usable: endpoints.iter().filter(|e| e.weight > 0).count(),
                endpoints_total: endpoints.len(),
                counters: counters(s.stats.exported_totals()),
                external_ips: p
                    .addresses
                    .external_ips
                    .iter()
                    .map(|ip| ip.to_string())
                    .collect(),
                load_balancer_ips: p
                    .addresses
                    .load_balancer_ips
                    .iter()
                    .map(|ip| ip.to_string())
                    .collect(),
                load_balancer_source_ranges: p
                    .addresses
                    .source_ranges
                    .iter()
                    .map(|c| c.to_string())
                    .collect(),
                source_ranges_refused: s.stats.exported_totals().source_refused,
                endpoints,
                kubernetes: p.meta.as_deref().map(|m| {
                    let served = served_node_ports
                        .get(&p.key.service)
                        .cloned()
                        .unwrap_or_default();
                    let age = |reason: &str, message: &str| {
                        self.problems_since
                            .get(&(p.key.service.clone(), reason.to_owned(), message.to_owned()))
                            .and_then(|t| t.elapsed().ok())
                            .map_or(0, |d| d.as_secs())
                    };
                    kubernetes_info(m, p, &served, &age)
                }),
            };
            services.push(info);
        }
        ServiceList {
            generation: snapshot.generation(),
            services,
        }
    }
}

/// The Kubernetes fields of `describe` for one Service port. `age`: seconds since a
/// problem of the Service was first seen.
fn kubernetes_info(
    m: &crate::model::ServiceMeta,
    p: &crate::model::ServicePort,
    served: &std::collections::HashMap<&str, u16>,
    age: &dyn Fn(&str, &str) -> u64,
) -> protocol::KubernetesInfo {
    protocol::KubernetesInfo {
        service_type: m.service_type.clone(),
        labels: m.labels.clone(),
        annotations: m.annotations.clone(),
        selector: m.selector.clone(),
        ip_family_policy: m.ip_family_policy.clone(),
        ip_families: m.ip_families.clone(),
        cluster_ip: m.cluster_ip.clone(),
        cluster_ips: m.cluster_ips.clone(),
        external_ips: m.external_ips.clone(),
        load_balancer_ingress: m.load_balancer_ingress.clone(),
        ports: m
            .ports
            .iter()
            .map(|sp| protocol::SpecPortInfo {
                name: sp.name.clone(),
                protocol: sp.protocol.clone(),
                port: sp.port,
                target_port: sp.target_port.clone(),
                // An allocated nodePort (manifests) is the one served.
                node_port: match served.get(sp.name.as_str()) {
                    Some(&n) if sp.node_port == 0 && sp.protocol == p.key.protocol.to_string() => {
                        i32::from(n)
                    }
                    _ => sp.node_port,
                },
                app_protocol: sp.app_protocol.clone(),
            })
            .collect(),
        session_affinity: m.session_affinity.clone(),
        external_traffic_policy: m.external_traffic_policy.clone(),
        internal_traffic_policy: m.internal_traffic_policy.clone(),
        traffic_distribution: m.traffic_distribution.clone(),
        load_balancer_source_ranges: m.load_balancer_source_ranges.clone(),
        health_check_node_port: m.health_check_node_port,
        events: m
            .warnings
            .iter()
            .map(|(reason, message)| protocol::EventInfo {
                type_: "Warning".into(),
                reason: reason.clone(),
                age_seconds: age(reason, message),
                from: "sluice".into(),
                message: message.clone(),
            })
            .collect(),
    }
}

fn counters(t: ConnTotals) -> Counters {
    Counters {
        connections_total: t.opened,
        connections_active: t.active(),
        connections_failed: t.failed,
        connect_retries: t.retries,
        bytes_to_backend: t.bytes_to_backend,
        bytes_to_client: t.bytes_to_client,
    }
}
