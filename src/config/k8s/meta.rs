//! The Service as written, for `describe` ([`ServiceMeta`]): type, labels, annotations,
//! selector, every spec port (served or not), addresses, policies and ingress, copied from
//! the object without judging it. Never fails: a field that is absent is left empty.

use crate::model::{ServiceMeta, SpecPort};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

pub(super) fn service_meta(
    svc: &Service,
    service_type: String,
    warnings: Vec<(String, String)>,
) -> ServiceMeta {
    let pairs = |m: &Option<BTreeMap<String, String>>| -> Vec<(String, String)> {
        m.iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let spec = svc.spec.as_ref();
    let load_balancer_ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .map(|i| match (&i.ip, &i.ip_mode) {
            (Some(ip), Some(mode)) if !ip.is_empty() => format!("{ip} ({mode})"),
            (Some(ip), None) if !ip.is_empty() => ip.clone(),
            _ => i.hostname.clone().unwrap_or_default(),
        })
        .collect();
    let ports = spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| SpecPort {
            name: p.name.clone().unwrap_or_default(),
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            port: p.port,
            target_port: match &p.target_port {
                Some(IntOrString::Int(i)) => i.to_string(),
                Some(IntOrString::String(s)) => s.clone(),
                None => p.port.to_string(),
            },
            node_port: p.node_port.unwrap_or(0),
            app_protocol: p.app_protocol.clone(),
        })
        .collect();
    ServiceMeta {
        service_type,
        labels: pairs(&svc.metadata.labels),
        annotations: pairs(&svc.metadata.annotations),
        selector: pairs(&spec.and_then(|s| s.selector.clone())),
        cluster_ip: spec.and_then(|s| s.cluster_ip.clone()).unwrap_or_default(),
        cluster_ips: spec.and_then(|s| s.cluster_ips.clone()).unwrap_or_default(),
        ip_families: spec.and_then(|s| s.ip_families.clone()).unwrap_or_default(),
        ip_family_policy: spec.and_then(|s| s.ip_family_policy.clone()),
        external_ips: spec
            .and_then(|s| s.external_ips.clone())
            .unwrap_or_default(),
        load_balancer_ingress,
        ports,
        session_affinity: spec
            .and_then(|s| s.session_affinity.clone())
            .unwrap_or_else(|| "None".into()),
        external_traffic_policy: spec.and_then(|s| s.external_traffic_policy.clone()),
        internal_traffic_policy: spec.and_then(|s| s.internal_traffic_policy.clone()),
        traffic_distribution: spec.and_then(|s| s.traffic_distribution.clone()),
        load_balancer_source_ranges: spec
            .and_then(|s| s.load_balancer_source_ranges.clone())
            .unwrap_or_default(),
        health_check_node_port: spec
            .and_then(|s| s.health_check_node_port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0),
        warnings,
    }
}
