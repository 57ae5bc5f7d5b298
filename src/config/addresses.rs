//! A `[[service]]`'s addresses of its own: `external_ips`, `load_balancer_ips` and
//! `load_balancer_source_ranges` → [`ServiceAddresses`], and the check across Service ports
//! that no (address, port, protocol) is claimed twice.
//!
//! These are what Kubernetes' `spec.externalIPs`, `status.loadBalancer.ingress[].ip` and
//! `spec.loadBalancerSourceRanges` give (docs/kubernetes.md), written in the file so that the
//! same serving can be had, and tested, without Kubernetes. Like the rest of `config`, data
//! in, a model value or one precise error out.

use super::file::ServiceEntry;
use super::{ConfigError, SourceText};
use crate::model::{Cidr, Protocol, ServiceAddresses, ServicePortKey};
use serde_spanned::Spanned;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

/// The addresses of one `[[service]]` table. `ranges_on_node_ports`: the node setting
/// `source_ranges_on_node_ports` (without it, source ranges need LoadBalancer IPs to apply).
pub(super) fn service(
    src: &SourceText,
    e: &ServiceEntry,
    ranges_on_node_ports: bool,
) -> Result<ServiceAddresses, ConfigError> {
    let external_ips = ips(src, e.external_ips.as_deref(), "external_ips")?;
    let load_balancer_ips = ips(src, e.load_balancer_ips.as_deref(), "load_balancer_ips")?;
    let mut source_ranges = Vec::new();
    if let Some(list) = &e.load_balancer_source_ranges {
        for text in list.get_ref() {
            let written = text.get_ref().trim();
            let cidr = written
                .contains('/')
                .then(|| written.parse::<Cidr>().ok())
                .flatten()
                .ok_or_else(|| {
                    src.error(
                        &text.span(),
                        format!(
                            "load_balancer_source_ranges entry {:?} is not a CIDR such as \
                             \"10.0.0.0/8\" or \"2001:db8::/32\" (a single client is \"IP/32\")",
                            text.get_ref()
                        ),
                    )
                })?;
            source_ranges.push(cidr);
        }
        if load_balancer_ips.is_empty() && !ranges_on_node_ports && !source_ranges.is_empty() {
            return Err(src.error(
                &list.span(),
                "`load_balancer_source_ranges` applies at the `load_balancer_ips`, and this \
                 Service has none (set `source_ranges_on_node_ports = true` at the top level to \
                 apply them at NodePorts too)",
            ));
        }
    }
    Ok(ServiceAddresses {
        external_ips,
        load_balancer_ips,
        source_ranges,
    })
}

/// A list of unicast IP addresses, each once.
fn ips(
    src: &SourceText,
    list: Option<&[Spanned<String>]>,
    key: &str,
) -> Result<Vec<IpAddr>, ConfigError> {
    let mut out: Vec<(IpAddr, Range<usize>)> = Vec::new();
    for text in list.unwrap_or_default() {
        let ip: IpAddr = text.get_ref().trim().parse().map_err(|_| {
            src.error(
                &text.span(),
                format!(
                    "{key} entry {:?} is not an IP address (no port, no CIDR, no host name)",
                    text.get_ref()
                ),
            )
        })?;
        let ip = crate::model::canonical_ip(ip);
        if let Some(what) = super::values::not_unicast(ip) {
            return Err(src.error(
                &text.span(),
                format!("{key} entry {ip} is {what}; a Service address must be unicast"),
            ));
        }
        if let Some((_, first)) = out.iter().find(|(other, _)| *other == ip) {
            return Err(src.error(
                &text.span(),
                format!(
                    "{key} entry {ip} is listed twice (first at line {})",
                    src.line(first.start)
                ),
            ));
        }
        out.push((ip, text.span()));
    }
    Ok(out.into_iter().map(|(ip, _)| ip).collect())
}

/// The (protocol, address:port) pairs claimed so far, to find a second claim.
#[derive(Default)]
pub(super) struct Claims {
    by_addr: HashMap<(Protocol, SocketAddr), (ServicePortKey, usize)>,
}

impl Claims {
    /// Claims every address of `key`'s table `e` on `port`; an address:port another table
    /// claimed is an error at this table's entry, naming the other's line.
    pub(super) fn claim(
        &mut self,
        src: &SourceText,
        e: &ServiceEntry,
        key: &ServicePortKey,
        port: u16,
    ) -> Result<(), ConfigError> {
        let lists = [
            ("external_ips", e.external_ips.as_deref()),
            ("load_balancer_ips", e.load_balancer_ips.as_deref()),
        ];
        let mut mine: Vec<IpAddr> = Vec::new();
        for (what, list) in lists {
            for text in list.unwrap_or_default() {
                // Already judged by `service`.
                let Ok(ip) = text.get_ref().trim().parse::<IpAddr>() else {
                    continue;
                };
                let ip = crate::model::canonical_ip(ip);
                if mine.contains(&ip) {
                    continue; // in both lists of this table: one listener
                }
                mine.push(ip);
                let at = (key.protocol, SocketAddr::new(ip, port));
                if let Some((other, line)) = self.by_addr.get(&at) {
                    return Err(src.error(
                        &text.span(),
                        format!(
                            "{what} entry {ip} with port {port}/{} of {key} is already \
                             used by {other} (line {line})",
                            key.protocol
                        ),
                    ));
                }
                self.by_addr
                    .insert(at, (key.clone(), src.line(text.span().start)));
            }
        }
        Ok(())
    }
}
