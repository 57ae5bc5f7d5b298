//! Which endpoints new connections may go to: a port of kube-proxy's `CategorizeEndpoints`
//! (`pkg/proxy/topology.go`) — endpoint conditions, topology hints, externalTrafficPolicy —
//! with sluice's operator weights and health on top.
//!
//! The result is a *routing weight* per endpoint: the endpoint's weight when it is chosen,
//! 0 when it is not. Endpoints with routing weight 0 stay in the snapshot (their
//! connections, counters and ids live on); they just own no Maglev slot and are never
//! picked. Rules (kube-proxy's; docs/kubernetes.md, "What is served"), applied to the endpoints of one IP family
//! (kube-proxy runs one proxier per family, each seeing only its family's slices):
//!
//! - A *candidate* has weight > 0 (not drained or disabled by an operator), is healthy (not
//!   held down by health checks) and is of the family being routed.
//! - **Cluster endpoints** (`cluster_weights`): the ready candidates that topology allows;
//!   if there is none, every serving-and-terminating candidate (no topology).
//!   Topology (`topology_mode`): when every ready candidate has node hints and one names
//!   this node, only endpoints hinted for this node (PreferSameNode); else when every
//!   ready candidate has zone hints and one names this node's zone, only endpoints hinted
//!   for this zone (PreferClose / PreferSameZone); else all of them. The hints are written
//!   by the EndpointSlice controller from the Service's `trafficDistribution`.
//! - **Local endpoints** (`local_weights`): local ready candidates; else local
//!   serving-and-terminating ones; else none — remote endpoints are never used, even when
//!   ready (then the Service has no usable endpoint on this node for outside clients: new
//!   connections are reset, or held with `hold_when_empty`). Topology does not apply.
//! - externalTrafficPolicy Cluster routes every client with the cluster endpoints; Local
//!   routes outside clients with the local endpoints and clients on the node itself with
//!   the cluster endpoints (kube-proxy's "short circuit" for host-originated traffic).
//!
//! Departure from kube-proxy, on purpose: kube-proxy knows no operator weights or health
//! checks. An endpoint an operator drained, or health checks hold down, does not count as
//! ready, so when every ready endpoint is drained or down, serving-terminating endpoints
//! take the traffic rather than nothing.
//!
//! Established UDP flows follow a rule of their own, [`keeps_flows`]: kube-proxy's since
//! 1.32 (`pkg/proxy/conntrack/cleanup.go`: only entries whose endpoint no longer *serves*
//! are cleared), plus health checks. A TCP connection never moves; a flow has no
//! connection to keep, so it moves on its next datagram when this says no.

use crate::model::{is_v4, Endpoint, Hint, TrafficPolicy};

/// Which tier of endpoints carries traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Ready endpoints (the normal case).
    Ready,
    /// No ready endpoint: serving-and-terminating endpoints, as a fallback.
    Terminating,
    /// Nothing usable.
    None,
}

/// An IP family: each is routed on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family of `ip` (IPv4-mapped IPv6 is IPv4).
    #[inline]
    pub fn of(ip: std::net::IpAddr) -> Family {
        if is_v4(ip) {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// kube-proxy's topology modes (`topologyModeFromHints`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopologyMode {
    /// No filtering by hints.
    None,
    /// Only endpoints whose zone hints name this node's zone.
    PreferSameZone,
    /// Only endpoints whose node hints name this node.
    PreferSameNode,
}

/// Routing weight of each endpoint of `endpoints` (same order), and the tier used, for
/// clients outside the node under `policy`, over endpoints of every family (tests and
/// single-family callers; the snapshot uses [`family_weights`]).
pub fn routing_weights(policy: TrafficPolicy, endpoints: &[Endpoint]) -> (Vec<u32>, Tier) {
    match policy {
        TrafficPolicy::Cluster => cluster_weights(endpoints, |_| true),
        TrafficPolicy::Local => local_weights(endpoints, |_| true),
    }
}

/// The weights of one family: `(outside clients, clients on this node)`. The second is
/// the same as the first for Cluster Services.
pub fn family_weights(
    policy: TrafficPolicy,
    endpoints: &[Endpoint],
    family: Family,
) -> ((Vec<u32>, Tier), (Vec<u32>, Tier)) {
    let in_family = |e: &Endpoint| Family::of(e.addr.ip()) == family;
    let cluster = cluster_weights(endpoints, in_family);
    match policy {
        TrafficPolicy::Cluster => (cluster.clone(), cluster),
        TrafficPolicy::Local => (local_weights(endpoints, in_family), cluster),
    }
}

/// The cluster endpoints among those `in_scope` accepts (see the module docs).
pub fn cluster_weights(
    endpoints: &[Endpoint],
    in_scope: impl Fn(&Endpoint) -> bool,
) -> (Vec<u32>, Tier) {
    let candidate = |e: &Endpoint| e.weight > 0 && e.healthy && in_scope(e);
    let ready = |e: &Endpoint| candidate(e) && e.conditions.ready;
    let mode = topology_mode(endpoints.iter().filter(|e| ready(e)));
    let chosen = |e: &Endpoint| ready(e) && available_for_topology(e, mode);
    if endpoints.iter().any(chosen) {
        return (weights(endpoints, chosen), Tier::Ready);
    }
    let fallback = |e: &Endpoint| candidate(e) && e.conditions.serving && e.conditions.terminating;
    if endpoints.iter().any(fallback) {
        return (weights(endpoints, fallback), Tier::Terminating);
    }
    (vec![0; endpoints.len()], Tier::None)
}

/// The local endpoints among those `in_scope` accepts (see the module docs).
pub fn local_weights(
    endpoints: &[Endpoint],
    in_scope: impl Fn(&Endpoint) -> bool,
) -> (Vec<u32>, Tier) {
    let candidate = |e: &Endpoint| e.weight > 0 && e.healthy && e.local && in_scope(e);
    let ready = |e: &Endpoint| candidate(e) && e.conditions.ready;
    if endpoints.iter().any(ready) {
        return (weights(endpoints, ready), Tier::Ready);
    }
    let fallback = |e: &Endpoint| candidate(e) && e.conditions.serving && e.conditions.terminating;
    if endpoints.iter().any(fallback) {
        return (weights(endpoints, fallback), Tier::Terminating);
    }
    (vec![0; endpoints.len()], Tier::None)
}

/// kube-proxy's `topologyModeFromHints` over the ready endpoints. (kube-proxy's
/// PreferSameTrafficDistribution feature gate — node hints — is on by default since 1.34,
/// the API version sluice reads.)
pub fn topology_mode<'a>(ready: impl Iterator<Item = &'a Endpoint>) -> TopologyMode {
    let (mut any, mut all_node, mut node_here, mut all_zone, mut zone_here) =
        (false, true, false, true, false);
    for e in ready {
        any = true;
        match e.hints.node {
            Hint::Absent => all_node = false,
            Hint::Here => node_here = true,
            Hint::Elsewhere => {}
        }
        match e.hints.zone {
            Hint::Absent => all_zone = false,
            Hint::Here => zone_here = true,
            Hint::Elsewhere => {}
        }
    }
    if !any {
        TopologyMode::None
    } else if all_node && node_here {
        TopologyMode::PreferSameNode
    } else if all_zone && zone_here {
        TopologyMode::PreferSameZone
    } else {
        TopologyMode::None
    }
}

fn available_for_topology(e: &Endpoint, mode: TopologyMode) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::PreferSameNode => e.hints.node == Hint::Here,
        TopologyMode::PreferSameZone => e.hints.zone == Hint::Here,
    }
}

fn weights(endpoints: &[Endpoint], chosen: impl Fn(&Endpoint) -> bool) -> Vec<u32> {
    endpoints
        .iter()
        .map(|e| if chosen(e) { e.weight } else { 0 })
        .collect()
}

/// Whether an established UDP flow stays on `e`: while the endpoint is serving (a
/// terminating pod that still serves keeps its flows, even while other endpoints are
/// ready and take every new flow), health checking does not hold it down, and it is in the
/// traffic policy's scope. An operator's drain or disable (weight 0) keeps flows, as it
/// keeps TCP connections. An endpoint that left the Service keeps nothing (the caller finds
/// no `e`).
pub fn keeps_flows(policy: TrafficPolicy, e: &Endpoint) -> bool {
    let in_scope = match policy {
        TrafficPolicy::Cluster => true,
        TrafficPolicy::Local => e.local,
    };
    (e.conditions.serving || e.conditions.ready) && e.healthy && in_scope
}

#[cfg(test)]
mod tests;
