//! The routing rules, table-driven: kube-proxy's own `TestCategorizeEndpoints` cases
//! (`pkg/proxy/topology_test.go`), then sluice's additions (families, operator weights,
//! health).

use super::*;
use crate::model::{Conditions, Hints};
use std::collections::BTreeSet;
use TrafficPolicy::{Cluster, Local};

/// One endpoint of a row: its address, flags (R ready, S serving, T terminating, L local,
/// D down by health checks, 0 weight 0), zone hints and node hints.
type Ep<'a> = (&'a str, &'a str, &'a [&'a str], &'a [&'a str]);

const NODE: &str = "this-node";

/// The endpoint as the conversion gives it on a node in `zone` named [`NODE`].
fn endpoint(spec: &Ep<'_>, zone: Option<&str>) -> Endpoint {
    let (addr, flags, zones, nodes) = *spec;
    let has = |c| flags.contains(c);
    let mut e = Endpoint::new(addr.parse().unwrap());
    e.conditions = Conditions {
        ready: has('R'),
        serving: has('S') || has('R'),
        terminating: has('T'),
    };
    e.local = has('L');
    e.healthy = !has('D');
    if has('0') {
        e.weight = 0;
    }
    let hint = |set: &[&str], mine: Option<&str>| match set {
        [] => Hint::Absent,
        s if mine.is_some_and(|m| s.contains(&m)) => Hint::Here,
        _ => Hint::Elsewhere,
    };
    e.hints = Hints {
        zone: hint(zones, zone),
        node: hint(nodes, Some(NODE)),
    };
    e
}

fn chosen(eps: &[Endpoint], weights: &[u32]) -> BTreeSet<String> {
    eps.iter()
        .zip(weights)
        .filter(|(_, w)| **w > 0)
        .map(|(e, _)| e.addr.to_string())
        .collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

struct Case<'a> {
    name: &'a str,
    /// This node's `topology.kubernetes.io/zone`.
    zone: Option<&'a str>,
    policy: TrafficPolicy,
    endpoints: &'a [Ep<'a>],
    /// kube-proxy's clusterEndpoints.
    cluster: &'a [&'a str],
    /// kube-proxy's localEndpoints (Local policy only).
    local: &'a [&'a str],
}

/// kube-proxy's TestCategorizeEndpoints, with the cases that concern a NodePort (the
/// internalTrafficPolicy-only ones do not: NodePort traffic is external). The old
/// `hintsAnnotation` variants collapse into one: since Kubernetes 1.27 kube-proxy uses the
/// hints whenever the EndpointSlice controller wrote them, whatever the annotation says.
#[test]
fn kube_proxy_categorize_endpoints_cases() {
    let za: &[&str] = &["zone-a"];
    let zb: &[&str] = &["zone-b"];
    let zc: &[&str] = &["zone-c"];
    let none: &[&str] = &[];
    #[rustfmt::skip]
    let cases = [
        Case { name: "hints, node in zone-a", zone: Some("zone-a"), policy: Cluster,
            endpoints: &[("10.1.2.3:80", "R", za, none), ("10.1.2.4:80", "R", zb, none),
                         ("10.1.2.5:80", "R", zc, none), ("10.1.2.6:80", "R", za, none)],
            cluster: &["10.1.2.3:80", "10.1.2.6:80"], local: &[] },
        Case { name: "externalTrafficPolicy: Local, topology ignored for Local endpoints",
            zone: Some("zone-a"), policy: Local,
            endpoints: &[("10.1.2.3:80", "RL", za, none), ("10.1.2.4:80", "RL", zb, none),
                         ("10.1.2.5:80", "R", zc, none), ("10.1.2.6:80", "R", za, none)],
            cluster: &["10.1.2.3:80", "10.1.2.6:80"], local: &["10.1.2.3:80", "10.1.2.4:80"] },
        Case { name: "empty node labels", zone: None, policy: Cluster,
            endpoints: &[("10.1.2.3:80", "R", za, none)],
            cluster: &["10.1.2.3:80"], local: &[] },
        Case { name: "empty zone label", zone: Some(""), policy: Cluster,
            endpoints: &[("10.1.2.3:80", "R", za, none)],
            cluster: &["10.1.2.3:80"], local: &[] },
        Case { name: "node in different zone, no endpoint filtering", zone: Some("zone-b"),
            policy: Cluster, endpoints: &[("10.1.2.3:80", "R", za, none)],
            cluster: &["10.1.2.3:80"], local: &[] },
        Case { name: "unready endpoint", zone: Some("zone-a"), policy: Cluster,
            endpoints: &[("10.1.2.3:80", "R", za, none), ("10.1.2.4:80", "R", zb, none),
                         ("10.1.2.5:80", "R", zc, none), ("10.1.2.6:80", "", za, none)],
            cluster: &["10.1.2.3:80"], local: &[] },
        Case { name: "only unready endpoints in same zone (should not filter)",
            zone: Some("zone-a"), policy: Cluster,
            endpoints: &[("10.1.2.3:80", "", za, none), ("10.1.2.4:80", "R", zb, none),
                         ("10.1.2.5:80", "R", zc, none), ("10.1.2.6:80", "", za, none)],
            cluster: &["10.1.2.4:80", "10.1.2.5:80"], local: &[] },
        Case { name: "missing hints, no filtering applied", zone: Some("zone-a"),
            policy: Cluster,
            endpoints: &[("10.1.2.3:80", "R", za, none), ("10.1.2.4:80", "R", zb, none),
                         ("10.1.2.5:80", "R", none, none), ("10.1.2.6:80", "R", za, none)],
            cluster: &["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"], local: &[] },
        Case { name: "multiple hints per endpoint, filtering includes any endpoint with zone included",
            zone: Some("zone-c"), policy: Cluster,
            endpoints: &[("10.1.2.3:80", "R", &["zone-a", "zone-b", "zone-c"], none),
                         ("10.1.2.4:80", "R", &["zone-b", "zone-c"], none),
                         ("10.1.2.5:80", "R", &["zone-b", "zone-d"], none),
                         ("10.1.2.6:80", "R", zc, none)],
            cluster: &["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"], local: &[] },
        Case { name: "conflicting topology and localness require merging allEndpoints",
            zone: Some("zone-a"), policy: Local,
            endpoints: &[("10.0.0.0:80", "RL", za, none), ("10.0.0.1:80", "RL", zb, none),
                         ("10.0.0.2:80", "R", za, none), ("10.0.0.3:80", "R", zb, none)],
            cluster: &["10.0.0.0:80", "10.0.0.2:80"], local: &["10.0.0.0:80", "10.0.0.1:80"] },
        Case { name: "Cluster traffic policy, endpoints not Ready", zone: None, policy: Cluster,
            endpoints: &[("10.0.0.0:80", "", none, none), ("10.0.0.1:80", "", none, none)],
            cluster: &[], local: &[] },
        Case { name: "Cluster traffic policy, some endpoints are Ready", zone: None,
            policy: Cluster,
            endpoints: &[("10.0.0.0:80", "", none, none), ("10.0.0.1:80", "R", none, none)],
            cluster: &["10.0.0.1:80"], local: &[] },
        Case { name: "Cluster traffic policy, all endpoints are terminating", zone: None,
            policy: Cluster,
            endpoints: &[("10.0.0.0:80", "STL", none, none), ("10.0.0.1:80", "ST", none, none)],
            cluster: &["10.0.0.0:80", "10.0.0.1:80"], local: &[] },
        Case { name: "iTP: Cluster, eTP: Local, some endpoints local", zone: None, policy: Local,
            endpoints: &[("10.0.0.0:80", "RL", none, none), ("10.0.0.1:80", "R", none, none)],
            cluster: &["10.0.0.0:80", "10.0.0.1:80"], local: &["10.0.0.0:80"] },
        Case { name: "eTP: Local, all endpoints remote", zone: None, policy: Local,
            endpoints: &[("10.0.0.0:80", "R", none, none), ("10.0.0.1:80", "R", none, none)],
            cluster: &["10.0.0.0:80", "10.0.0.1:80"], local: &[] },
        Case { name: "eTP: Local, all endpoints remote and terminating", zone: None,
            policy: Local,
            endpoints: &[("10.0.0.0:80", "ST", none, none), ("10.0.0.1:80", "ST", none, none)],
            cluster: &["10.0.0.0:80", "10.0.0.1:80"], local: &[] },
        Case { name: "iTP: Cluster, eTP: Local, with terminating endpoints", zone: None,
            policy: Local,
            endpoints: &[("10.0.0.0:80", "R", none, none), ("10.0.0.1:80", "L", none, none),
                         ("10.0.0.2:80", "STL", none, none), ("10.0.0.3:80", "ST", none, none)],
            cluster: &["10.0.0.0:80"], local: &["10.0.0.2:80"] },
    ];
    run(&cases);
}

/// PreferSameNode (node hints, `trafficDistribution: PreferSameNode`) and how it falls
/// back to zones, per kube-proxy's `topologyModeFromHints`; and the terminating fallback,
/// which ignores topology.
#[test]
fn node_hints_and_fallbacks() {
    let za: &[&str] = &["zone-a"];
    let zb: &[&str] = &["zone-b"];
    let me: &[&str] = &[NODE];
    let other: &[&str] = &["other-node"];
    let none: &[&str] = &[];
    #[rustfmt::skip]
    let cases = [
        Case { name: "every ready endpoint has node hints, one for this node: PreferSameNode",
            zone: Some("zone-a"), policy: Cluster,
            endpoints: &[("10.0.0.1:80", "R", za, me), ("10.0.0.2:80", "R", za, other),
                         ("10.0.0.3:80", "R", zb, other)],
            cluster: &["10.0.0.1:80"], local: &[] },
        Case { name: "node hints, none for this node: zone hints decide",
            zone: Some("zone-a"), policy: Cluster,
            endpoints: &[("10.0.0.1:80", "R", za, other), ("10.0.0.2:80", "R", za, other),
                         ("10.0.0.3:80", "R", zb, other)],
            cluster: &["10.0.0.1:80", "10.0.0.2:80"], local: &[] },
        Case { name: "one ready endpoint without a node hint: zone hints decide",
            zone: Some("zone-a"), policy: Cluster,
            endpoints: &[("10.0.0.1:80", "R", za, me), ("10.0.0.2:80", "R", za, none),
                         ("10.0.0.3:80", "R", zb, other)],
            cluster: &["10.0.0.1:80", "10.0.0.2:80"], local: &[] },
        Case { name: "an unready endpoint without hints does not stop PreferSameNode",
            zone: Some("zone-a"), policy: Cluster,
            endpoints: &[("10.0.0.1:80", "R", za, me), ("10.0.0.2:80", "", none, none),
                         ("10.0.0.3:80", "R", zb, other)],
            cluster: &["10.0.0.1:80"], local: &[] },
        Case { name: "nothing ready: serving-terminating anywhere, hints ignored",
            zone: Some("zone-a"), policy: Cluster,
            endpoints: &[("10.0.0.1:80", "ST", zb, other), ("10.0.0.2:80", "ST", za, me)],
            cluster: &["10.0.0.1:80", "10.0.0.2:80"], local: &[] },
        Case { name: "Local: topology applies to node-originated (cluster) traffic only",
            zone: Some("zone-a"), policy: Local,
            endpoints: &[("10.0.0.1:80", "RL", zb, none), ("10.0.0.2:80", "R", za, none),
                         ("10.0.0.3:80", "R", zb, none)],
            cluster: &["10.0.0.2:80"], local: &["10.0.0.1:80"] },
    ];
    run(&cases);
}

fn run(cases: &[Case<'_>]) {
    for c in cases {
        let eps: Vec<Endpoint> = c.endpoints.iter().map(|e| endpoint(e, c.zone)).collect();
        let (outside, node) = family_weights(c.policy, &eps, Family::V4);
        assert_eq!(chosen(&eps, &node.0), set(c.cluster), "{}: cluster", c.name);
        let want_outside = match c.policy {
            Cluster => set(c.cluster),
            Local => set(c.local),
        };
        assert_eq!(
            chosen(&eps, &outside.0),
            want_outside,
            "{}: outside",
            c.name
        );
        assert_eq!(routing_weights(c.policy, &eps), outside, "{}", c.name);
    }
}

/// One family at a time: an IPv4 client's endpoints are the IPv4 ones, and the fallback
/// and topology are decided per family, as in kube-proxy's per-family proxiers.
#[test]
fn each_family_is_routed_on_its_own() {
    let mk = |a: &str, ready: bool| {
        let mut e = Endpoint::new(a.parse().unwrap());
        e.conditions.ready = ready;
        e.conditions.terminating = !ready;
        e
    };
    // IPv4: one ready pod. IPv6: none ready, one serving-terminating.
    let eps = [
        mk("10.0.0.1:80", true),
        mk("[fd00::1]:80", false),
        mk("[fd00::2]:80", false),
        mk("10.0.0.2:80", false),
    ];
    let (v4, _) = family_weights(Cluster, &eps, Family::V4);
    assert_eq!(v4, (vec![1, 0, 0, 0], Tier::Ready));
    let (v6, _) = family_weights(Cluster, &eps, Family::V6);
    assert_eq!(v6, (vec![0, 1, 1, 0], Tier::Terminating));
    // A family with no endpoint at all has nothing (never the other family's).
    let only_v4 = [mk("10.0.0.1:80", true)];
    assert_eq!(
        family_weights(Cluster, &only_v4, Family::V6).0 .1,
        Tier::None
    );
    assert_eq!(Family::of("::ffff:10.0.0.1".parse().unwrap()), Family::V4);
}

/// sluice's own rules beside kube-proxy's: operator weights and health checks.
#[test]
fn drained_and_down_endpoints_are_not_ready() {
    let none: &[&str] = &[];
    #[rustfmt::skip]
    let cases = [
        // Operator drain (weight 0) and health-down do not count as ready…
        Case { name: "drained and down", zone: None, policy: Cluster,
            endpoints: &[("10.0.0.1:80", "RS0", none, none), ("10.0.0.2:80", "RSD", none, none),
                         ("10.0.0.3:80", "ST", none, none)],
            cluster: &["10.0.0.3:80"], local: &[] },
        // …and are never used as a fallback either.
        Case { name: "nothing left", zone: None, policy: Cluster,
            endpoints: &[("10.0.0.1:80", "RS0", none, none), ("10.0.0.2:80", "ST0", none, none),
                         ("10.0.0.3:80", "STD", none, none)],
            cluster: &[], local: &[] },
        Case { name: "local down", zone: None, policy: Local,
            endpoints: &[("10.0.0.1:80", "RSLD", none, none), ("10.0.0.2:80", "STL", none, none),
                         ("10.0.0.3:80", "RS", none, none)],
            cluster: &["10.0.0.3:80"], local: &["10.0.0.2:80"] },
        // A ready and terminating pod is ready (the condition decides).
        Case { name: "ready and terminating", zone: None, policy: Cluster,
            endpoints: &[("10.0.0.1:80", "RST", none, none), ("10.0.0.2:80", "ST", none, none)],
            cluster: &["10.0.0.1:80"], local: &[] },
        // Serving without terminating is not a fallback.
        Case { name: "serving only", zone: None, policy: Cluster,
            endpoints: &[("10.0.0.1:80", "S", none, none), ("10.0.0.2:80", "T", none, none)],
            cluster: &[], local: &[] },
    ];
    run(&cases);
}

#[test]
fn chosen_endpoints_keep_their_weight_and_tiers() {
    let mut eps: Vec<Endpoint> = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
        .iter()
        .map(|a| Endpoint::new(a.parse().unwrap()))
        .collect();
    eps[2].conditions = Conditions {
        ready: false,
        serving: true,
        terminating: true,
    };
    eps[0].weight = 5;
    eps[2].weight = 9;
    assert_eq!(routing_weights(Cluster, &eps), (vec![5, 1, 0], Tier::Ready));
    eps[0].conditions.ready = false;
    eps[1].conditions.ready = false;
    assert_eq!(
        routing_weights(Cluster, &eps),
        (vec![0, 0, 9], Tier::Terminating)
    );
    assert_eq!(routing_weights(Local, &[]), (vec![], Tier::None));
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
            keeps_flows(*policy, &endpoint(&("10.0.0.1:80", spec, &[], &[]), None)),
            *keeps,
            "{policy:?} {spec:?}"
        );
    }
}
