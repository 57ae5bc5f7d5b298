//! Which endpoints new connections may go to: Kubernetes' endpoint-condition fallback
//! (kube-proxy's `CategorizeEndpoints`), externalTrafficPolicy, operator weights and health.
//!
//! The result is a *routing weight* per endpoint: the endpoint's weight when it is chosen,
//! 0 when it is not. Endpoints with routing weight 0 stay in the snapshot (their
//! connections, counters and ids live on); they just own no Maglev slot and are never
//! picked. Rules (shared/design/SEMANTICS.md):
//!
//! - A *candidate* has weight > 0 (not drained or disabled by an operator) and is healthy
//!   (not held down by health checks).
//! - Cluster: the ready candidates; if there is none, the candidates that are serving and
//!   terminating.
//! - Local: the same, among local candidates only; remote endpoints are never used, even
//!   when no local one is left (then the Service has no usable endpoint on this node and
//!   new connections are reset, or held with `hold_when_empty`).
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

use crate::model::{Endpoint, TrafficPolicy};

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

/// Routing weight of each endpoint of `endpoints` (same order), and the tier used.
pub fn routing_weights(policy: TrafficPolicy, endpoints: &[Endpoint]) -> (Vec<u32>, Tier) {
    let in_scope = |e: &Endpoint| match policy {
        TrafficPolicy::Cluster => true,
        TrafficPolicy::Local => e.local,
    };
    let candidate = |e: &Endpoint| e.weight > 0 && e.healthy && in_scope(e);
    let ready = |e: &Endpoint| candidate(e) && e.conditions.ready;
    let fallback = |e: &Endpoint| candidate(e) && e.conditions.serving && e.conditions.terminating;
    let (tier, chosen): (Tier, &dyn Fn(&Endpoint) -> bool) = if endpoints.iter().any(ready) {
        (Tier::Ready, &ready)
    } else if endpoints.iter().any(fallback) {
        (Tier::Terminating, &fallback)
    } else {
        (Tier::None, &|_| false)
    };
    let weights = endpoints
        .iter()
        .map(|e| if chosen(e) { e.weight } else { 0 })
        .collect();
    (weights, tier)
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
mod tests {
    use super::*;
    use crate::model::Conditions;
    use TrafficPolicy::{Cluster, Local};

    /// ready/serving/terminating, local, weight, healthy — one letter each in the table.
    fn ep(i: u8, spec: &str) -> Endpoint {
        let has = |c| spec.contains(c);
        let mut e = Endpoint::new(([10, 0, 0, i], 80).into());
        e.conditions = Conditions {
            ready: has('R'),
            serving: has('S'),
            terminating: has('T'),
        };
        e.local = has('L');
        e.healthy = !has('D');
        if has('0') {
            e.weight = 0;
        }
        e
    }

    /// Each row: policy, endpoints (R ready, S serving, T terminating, L local, D down by
    /// health checks, 0 weight 0), which endpoints get traffic, and the tier.
    #[test]
    fn kube_proxy_fallback_table() {
        #[rustfmt::skip]
        let rows: &[(TrafficPolicy, &[&str], &[usize], Tier)] = &[
            // Cluster: ready endpoints only, wherever they run.
            (Cluster, &["RSL", "RS", "ST"], &[0, 1], Tier::Ready),
            // Cluster: nothing ready → serving-terminating ones (not merely terminating).
            (Cluster, &["ST", "T", "S"], &[0], Tier::Terminating),
            (Cluster, &["STL", "ST"], &[0, 1], Tier::Terminating),
            // Not serving and terminating: never used.
            (Cluster, &["T", "", "S"], &[], Tier::None),
            // One ready endpoint anywhere stops the fallback.
            (Cluster, &["ST", "RS"], &[1], Tier::Ready),
            // A pod that is ready and terminating (kube's ready=false when terminating is
            // the usual case, but the condition decides): it is ready.
            (Cluster, &["RST", "ST"], &[0], Tier::Ready),
            // Local: only local ready endpoints.
            (Local, &["RS", "RSL", "RSL"], &[1, 2], Tier::Ready),
            // Local: no local ready → local serving-terminating, even with ready remote ones.
            (Local, &["RS", "STL", "ST"], &[1], Tier::Terminating),
            // Local: nothing local at all → none, even though remote endpoints are ready.
            (Local, &["RS", "ST"], &[], Tier::None),
            (Local, &[], &[], Tier::None),
            // Operator drain (weight 0) and health-down do not count as ready…
            (Cluster, &["RS0", "RSD", "ST"], &[2], Tier::Terminating),
            // …and are never used as a fallback either.
            (Cluster, &["RS0", "ST0", "STD"], &[], Tier::None),
            (Local, &["RSLD", "STL", "RS"], &[1], Tier::Terminating),
        ];
        for (row, (policy, spec, want, tier)) in rows.iter().enumerate() {
            let eps: Vec<Endpoint> = spec
                .iter()
                .enumerate()
                .map(|(i, s)| ep(i as u8 + 1, s))
                .collect();
            let (weights, got_tier) = routing_weights(*policy, &eps);
            let got: Vec<usize> = (0..eps.len()).filter(|&i| weights[i] > 0).collect();
            assert_eq!(
                (&got[..], got_tier),
                (*want, *tier),
                "row {row}: {policy:?} {spec:?}"
            );
        }
    }

    /// Flows stay on serving endpoints — terminating ones included, unlike new flows —
    /// and leave endpoints that stopped serving, are held down, or left the policy's scope.
    #[test]
    fn which_endpoints_keep_their_flows() {
        #[rustfmt::skip]
        let rows: &[(TrafficPolicy, &str, bool)] = &[
            (Cluster, "RS", true),
            (Cluster, "ST", true),   // terminating but serving: kept (kube-proxy ≥ 1.32)
            (Cluster, "S", true),    // not ready, serving
            (Cluster, "RS0", true),  // drained by an operator: kept, like TCP connections
            (Cluster, "T", false),   // terminating, no longer serving
            (Cluster, "", false),    // not ready, not serving
            (Cluster, "RSD", false), // marked down by health checking
            (Local, "RSL", true),
            (Local, "RS", false),    // on another node
        ];
        for (policy, spec, keeps) in rows {
            assert_eq!(
                keeps_flows(*policy, &ep(1, spec)),
                *keeps,
                "{policy:?} {spec:?}"
            );
        }
    }

    #[test]
    fn chosen_endpoints_keep_their_weight() {
        let mut eps = vec![ep(1, "RS"), ep(2, "RS"), ep(3, "ST")];
        eps[0].weight = 5;
        eps[2].weight = 9;
        assert_eq!(routing_weights(Cluster, &eps).0, vec![5, 1, 0]);
        eps[0].conditions.ready = false;
        eps[1].conditions.ready = false;
        assert_eq!(routing_weights(Cluster, &eps).0, vec![0, 0, 9]);
    }
}
