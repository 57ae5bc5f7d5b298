//! A Service's addresses of its own and this node's primary addresses, read from the
//! Kubernetes objects as kube-proxy reads them: `spec.externalIPs`,
//! `status.loadBalancer.ingress[].ip`, `spec.loadBalancerSourceRanges` (its
//! `newBaseServiceInfo`), and the Node's `status.addresses` (`GetNodeHostIPs`, for
//! `listen_addresses = ["primary"]`). Bad entries are reported and left out; never an error.

use crate::model::{canonical_ip, Cidr, Families, ServiceAddresses};
use k8s_openapi::api::core::v1::{Node, Service};
use std::net::IpAddr;
use std::sync::Arc;

/// This node's primary addresses as kube-proxy finds them (`GetNodeHostIPs`): among the
/// `status.addresses` of the Node named `node_name`, InternalIPs first then ExternalIPs,
/// the first one, and the first of the other family after it. Empty without such a Node
/// or address.
pub fn node_primary_ips(nodes: &[Arc<Node>], node_name: Option<&str>) -> Vec<IpAddr> {
    let Some(name) = node_name else {
        return Vec::new();
    };
    let Some(addresses) = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(name))
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.addresses.as_ref())
    else {
        return Vec::new();
    };
    let all: Vec<IpAddr> = ["InternalIP", "ExternalIP"]
        .iter()
        .flat_map(|kind| {
            addresses
                .iter()
                .filter(move |a| a.type_ == *kind)
                .filter_map(|a| a.address.trim().parse::<IpAddr>().ok())
        })
        .collect();
    let Some(&first) = all.first() else {
        return Vec::new();
    };
    let mut out = vec![first];
    if let Some(&other) = all.iter().find(|ip| ip.is_ipv4() != first.is_ipv4()) {
        out.push(other);
    }
    out
}

/// The Service's addresses of its own, as kube-proxy reads them (`newBaseServiceInfo`):
/// `spec.externalIPs` and the `status.loadBalancer.ingress` IPs in VIP mode (`ipMode` unset
/// or `VIP`; a `Proxy` one is a proxying balancer's, not served), each of a family the
/// Service serves (kube-proxy's per-family filter); `spec.loadBalancerSourceRanges`
/// trimmed (validation lets whitespace through). Unparsable entries are reported and left
/// out.
pub(super) fn service_addresses(
    svc: &Service,
    families: Families,
    report: &mut dyn FnMut(String),
) -> ServiceAddresses {
    let spec = svc.spec.as_ref();
    let mut ip = |what: &str, text: &str, out: &mut Vec<IpAddr>| match text.trim().parse() {
        Ok(ip) => {
            let ip = canonical_ip(ip);
            if families.serves(ip) && !out.contains(&ip) {
                out.push(ip);
            }
        }
        Err(_) => report(format!("{what} {text:?} is not an IP address; ignored")),
    };
    let mut external_ips = Vec::new();
    for text in spec
        .and_then(|s| s.external_ips.as_ref())
        .into_iter()
        .flatten()
    {
        ip("externalIPs entry", text, &mut external_ips);
    }
    let mut load_balancer_ips = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for i in ingress.into_iter().flatten() {
        let vip = matches!(i.ip_mode.as_deref(), None | Some("VIP"));
        if let (Some(text), true) = (i.ip.as_deref().filter(|t| !t.is_empty()), vip) {
            ip(
                "status.loadBalancer.ingress IP",
                text,
                &mut load_balancer_ips,
            );
        }
    }
    let mut source_ranges = Vec::new();
    for text in spec
        .and_then(|s| s.load_balancer_source_ranges.as_ref())
        .into_iter()
        .flatten()
    {
        let t = text.trim();
        match t.contains('/').then(|| t.parse::<Cidr>().ok()).flatten() {
            Some(c) if !source_ranges.contains(&c) => source_ranges.push(c),
            Some(_) => {}
            None => report(format!(
                "loadBalancerSourceRanges entry {text:?} is not a CIDR; ignored"
            )),
        }
    }
    ServiceAddresses {
        external_ips,
        load_balancer_ips,
        source_ranges,
    }
}
