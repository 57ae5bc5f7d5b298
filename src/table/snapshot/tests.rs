//! Tests of `snapshot`.

use super::*;
use crate::model::{HashKey, Policy, ServiceName, ServicePortKey, Settings, Timeouts};

fn key(name: &str) -> ServicePortKey {
    ServicePortKey {
        service: ServiceName {
            namespace: "default".into(),
            name: name.into(),
        },
        port_name: String::new(),
        protocol: Protocol::Tcp,
    }
}

fn service(name: &str, node_port: u16, endpoints: &[(&str, u32)]) -> ServicePort {
    ServicePort {
        key: key(name),
        port: 80,
        node_port,
        node_port_allocated: false,
        target_port: 8080,
        endpoints: endpoints
            .iter()
            .map(|(a, w)| Endpoint::new(a.parse().unwrap()).with_weight(*w))
            .collect(),
        policy: Policy::Maglev {
            key: HashKey::ClientIpPort,
        },
        timeouts: Timeouts::default(),
        connect_retries: 2,
        maglev_table_size: 1009,
        forwarding: Default::default(),
        udp_responses: None,
        traffic_policy: Default::default(),
        families: Default::default(),
        health: Default::default(),
        meta: None,
        addresses: Default::default(),
    }
}

fn model(services: Vec<ServicePort>) -> Model {
    Model {
        settings: Settings::default(),
        services,
        primary_ips: Vec::new(),
    }
}

fn client(i: u32) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, (i % 251) as u8], 1024 + (i % 60000) as u16))
}

fn addr_of(s: &ServiceEntry, id: EndpointId) -> String {
    s.endpoint(id).endpoint.addr.to_string()
}

#[test]
fn lookup_finds_services_by_node_port() {
    let m = model(vec![
        service("a", 30001, &[("10.0.0.1:80", 1)]),
        service("b", 30002, &[("10.0.0.2:80", 1)]),
        service("dup", 30001, &[("10.0.0.3:80", 1)]),
    ]);
    let snap = RoutingSnapshot::build(&m, 7, &mut StatsRegistry::new(2));
    assert_eq!(snap.generation(), 7);
    let at = |port: u16| SocketAddr::from(([0, 0, 0, 0], port));
    let found = |port: u16| snap.lookup(Protocol::Tcp, at(port)).map(|r| r.service);
    assert_eq!(found(30001), Some(ServiceId(0)));
    assert_eq!(found(30002), Some(ServiceId(1)));
    assert_eq!(found(30003), None);
    assert_eq!(found(0), None);
    assert_eq!(snap.services().count(), 3);
    assert_eq!(snap.service(ServiceId(1)).port.key, key("b"));
    let empty = RoutingSnapshot::empty();
    assert_eq!(empty.lookup(Protocol::Tcp, at(30001)), None);
    assert_eq!(empty.services().count(), 0);
}

/// TCP 53 and UDP 53 are two NodePorts: each protocol has its own index.
#[test]
fn the_same_node_port_number_is_one_service_per_protocol() {
    let mut udp = service("dns-udp", 30053, &[("10.0.0.2:53", 1)]);
    udp.key.protocol = Protocol::Udp;
    let m = model(vec![service("dns-tcp", 30053, &[("10.0.0.1:53", 1)]), udp]);
    let snap = RoutingSnapshot::build(&m, 1, &mut StatsRegistry::new(1));
    let found = |protocol, port| {
        snap.lookup(protocol, SocketAddr::from(([0, 0, 0, 0], port)))
            .map(|r| r.service)
    };
    assert_eq!(found(Protocol::Tcp, 30053), Some(ServiceId(0)));
    assert_eq!(found(Protocol::Udp, 30053), Some(ServiceId(1)));
    assert_eq!(found(Protocol::Udp, 30054), None);
    assert_ne!(
        snap.service(ServiceId(0)).stable_id(),
        snap.service(ServiceId(1)).stable_id()
    );
}

#[test]
fn endpoints_are_canonical_and_deduplicated() {
    let m = model(vec![service(
        "a",
        30001,
        &[
            ("10.0.0.9:80", 1),
            ("[::ffff:10.0.0.1]:80", 1),
            ("10.0.0.1:80", 3),
            ("[fd00::1]:80", 1),
        ],
    )]);
    let snap = RoutingSnapshot::build(&m, 1, &mut StatsRegistry::new(1));
    let s = snap.service(ServiceId(0));
    let got: Vec<(String, u32)> = s
        .endpoints()
        .iter()
        .map(|e| (e.endpoint.addr.to_string(), e.endpoint.weight))
        .collect();
    assert_eq!(
        got,
        [
            ("10.0.0.1:80".to_string(), 3),
            ("10.0.0.9:80".to_string(), 1),
            ("[fd00::1]:80".to_string(), 1)
        ]
    );
    assert_eq!(s.port.endpoints.len(), 3);
}

#[test]
fn pick_is_deterministic_and_spreads() {
    let m = model(vec![service(
        "a",
        30001,
        &[("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.3:80", 1)],
    )]);
    let snap = RoutingSnapshot::build(&m, 1, &mut StatsRegistry::new(1));
    let s = snap.service(ServiceId(0));
    let mut counts = [0u32; 3];
    for i in 0..3000 {
        let id = s.pick(client(i), &[]).unwrap();
        assert_eq!(s.pick(client(i), &[]), Some(id));
        counts[id.0 as usize] += 1;
    }
    assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
}

#[test]
fn pick_walks_past_tried_endpoints() {
    let m = model(vec![service(
        "a",
        30001,
        &[("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.3:80", 1)],
    )]);
    let snap = RoutingSnapshot::build(&m, 1, &mut StatsRegistry::new(1));
    let s = snap.service(ServiceId(0));
    for i in 0..200 {
        let c = client(i);
        let first = s.pick(c, &[]).unwrap();
        let second = s.pick(c, &[first]).unwrap();
        assert_ne!(second, first);
        // Deterministic: the same tried set gives the same answer.
        assert_eq!(s.pick(c, &[first]), Some(second));
        let third = s.pick(c, &[first, second]).unwrap();
        assert!(third != first && third != second);
        assert_eq!(s.pick(c, &[first, second, third]), None);
        // Repeated and foreign ids are harmless.
        assert_eq!(
            s.pick(c, &[first, first, EndpointId(99), second]),
            Some(third)
        );
    }
}

#[test]
fn pick_never_returns_weight_zero() {
    let m = model(vec![service(
        "a",
        30001,
        &[("10.0.0.1:80", 0), ("10.0.0.2:80", 1), ("10.0.0.3:80", 0)],
    )]);
    let snap = RoutingSnapshot::build(&m, 1, &mut StatsRegistry::new(1));
    let s = snap.service(ServiceId(0));
    assert_eq!(s.endpoints().len(), 3);
    for i in 0..500 {
        let id = s.pick(client(i), &[]).unwrap();
        assert_eq!(addr_of(s, id), "10.0.0.2:80");
        assert_eq!(s.pick(client(i), &[id]), None);
    }
}

#[test]
fn pick_with_nothing_usable_is_none() {
    let m = model(vec![
        service("zero", 30001, &[("10.0.0.1:80", 0)]),
        service("none", 30002, &[]),
    ]);
    let snap = RoutingSnapshot::build(&m, 1, &mut StatsRegistry::new(1));
    for (_, s) in snap.services() {
        assert_eq!(s.pick(client(1), &[]), None);
        assert_eq!(s.pick(client(1), &[EndpointId(0)]), None);
    }
}

#[test]
fn client_ip_policy_ignores_source_port() {
    let mut p = service(
        "a",
        30001,
        &[("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.3:80", 1)],
    );
    p.policy = Policy::Maglev {
        key: HashKey::ClientIp,
    };
    let snap = RoutingSnapshot::build(&model(vec![p]), 1, &mut StatsRegistry::new(1));
    let s = snap.service(ServiceId(0));
    let v4: SocketAddr = "192.0.2.7:1000".parse().unwrap();
    let first = s.pick(v4, &[]);
    for port in [1, 2, 65535] {
        assert_eq!(s.pick(SocketAddr::new(v4.ip(), port), &[]), first);
    }
    let mapped: SocketAddr = "[::ffff:192.0.2.7]:5".parse().unwrap();
    assert_eq!(s.pick(mapped, &[]), first);
}

#[test]
fn stats_blocks_survive_rebuilds_and_removed_keys_are_dropped() {
    let mut reg = StatsRegistry::new(4);
    let m1 = model(vec![
        service("a", 30001, &[("10.0.0.1:80", 1), ("10.0.0.2:80", 1)]),
        service("b", 30002, &[("10.0.0.3:80", 1)]),
    ]);
    let s1 = RoutingSnapshot::build(&m1, 1, &mut reg);
    assert_eq!((reg.service_count(), reg.endpoint_count()), (2, 3));
    s1.service(ServiceId(0)).stats.worker(3).opened.add(5);

    // Generation 2: "b" is gone, "a" lost 10.0.0.2 and gained 10.0.0.4.
    let m2 = model(vec![service(
        "a",
        30001,
        &[("10.0.0.4:80", 1), ("10.0.0.1:80", 1)],
    )]);
    let s2 = RoutingSnapshot::build(&m2, 2, &mut reg);
    assert_eq!((reg.service_count(), reg.endpoint_count()), (1, 2));
    let (a1, a2) = (s1.service(ServiceId(0)), s2.service(ServiceId(0)));
    assert!(Arc::ptr_eq(&a1.stats, &a2.stats));
    assert_eq!(a2.stats.totals().opened, 5);
    let old = a1.endpoint(EndpointId(0));
    let new = a2.endpoint(EndpointId(0));
    assert_eq!(old.endpoint.addr, new.endpoint.addr);
    assert!(Arc::ptr_eq(&old.stats, &new.stats));
    assert!(Arc::ptr_eq(reg.service(&key("a")).unwrap(), &a2.stats));
    assert!(reg.service(&key("b")).is_none());
    assert!(reg
        .endpoint(&key("a"), "10.0.0.2:80".parse().unwrap())
        .is_none());

    // The old snapshot still holds the dropped blocks.
    let b_stats = Arc::clone(&s1.service(ServiceId(1)).stats);
    assert_eq!(Arc::strong_count(&b_stats), 2);
    drop(s1);
    assert_eq!(Arc::strong_count(&b_stats), 1);

    // "b" coming back starts from zero.
    let s3 = RoutingSnapshot::build(&m1, 3, &mut reg);
    assert!(!Arc::ptr_eq(&s3.service(ServiceId(1)).stats, &b_stats));
    assert!(Arc::ptr_eq(&s3.service(ServiceId(0)).stats, &a2.stats));
}

#[test]
fn rebuild_reuses_unchanged_tables_and_equals_build() {
    let mut reg = StatsRegistry::new(1);
    let m1 = model(vec![
        service("a", 30001, &[("10.0.0.1:80", 1), ("10.0.0.2:80", 1)]),
        service("b", 30002, &[("10.0.0.3:80", 1), ("10.0.0.4:80", 1)]),
    ]);
    let s1 = RoutingSnapshot::build(&m1, 1, &mut reg);
    // "a" unchanged but listed in another order; "b" re-weighted.
    let m2 = model(vec![
        service("a", 30001, &[("10.0.0.2:80", 1), ("10.0.0.1:80", 1)]),
        service("b", 30002, &[("10.0.0.3:80", 2), ("10.0.0.4:80", 1)]),
    ]);
    let s2 = s1.rebuild(&m2, 2, &mut reg);
    assert!(Arc::ptr_eq(
        s1.service(ServiceId(0)).primary().table_arc(),
        s2.service(ServiceId(0)).primary().table_arc()
    ));
    assert!(!Arc::ptr_eq(
        s1.service(ServiceId(1)).primary().table_arc(),
        s2.service(ServiceId(1)).primary().table_arc()
    ));
    let fresh = RoutingSnapshot::build(&m2, 2, &mut reg);
    for ((_, a), (_, b)) in s2.services().zip(fresh.services()) {
        assert_eq!(a.table().fingerprint(), b.table().fingerprint());
        assert_eq!(a.port, b.port);
    }
    // A changed table size is not reused.
    let mut m3 = m2.clone();
    m3.services[0].maglev_table_size = 2003;
    let s3 = s2.rebuild(&m3, 3, &mut reg);
    assert_eq!(s3.service(ServiceId(0)).table().size().get(), 2003);
}

#[test]
fn silly_table_sizes_are_made_prime() {
    let mut p = service("a", 30001, &[("10.0.0.1:80", 1), ("10.0.0.2:80", 1)]);
    p.maglev_table_size = 0;
    let mut q = p.clone();
    q.key = key("b");
    q.node_port = 30002;
    q.maglev_table_size = 1000;
    let snap = RoutingSnapshot::build(&model(vec![p, q]), 1, &mut StatsRegistry::new(1));
    assert_eq!(snap.service(ServiceId(0)).table().size().get(), 2);
    assert_eq!(snap.service(ServiceId(1)).table().size().get(), 1009);
    assert!(snap.service(ServiceId(0)).pick(client(3), &[]).is_some());
}

/// The snapshot builder applies the endpoint-condition rules (`usable`): each row gives
/// a traffic policy and endpoints (R ready, S serving, T terminating, L local), and the
/// endpoints that 2,000 clients are picked onto, by Maglev, round-robin and random.
#[test]
fn builder_routes_by_conditions_and_locality() {
    use crate::model::{Conditions, TrafficPolicy};
    #[rustfmt::skip]
    let rows: &[(TrafficPolicy, &[&str], &[usize], Tier)] = &[
        (TrafficPolicy::Cluster, &["RSL", "RS", "ST"], &[0, 1], Tier::Ready),
        (TrafficPolicy::Cluster, &["ST", "STL", "T"], &[0, 1], Tier::Terminating),
        (TrafficPolicy::Cluster, &["T", "S"], &[], Tier::None),
        (TrafficPolicy::Local, &["RS", "RSL", "STL"], &[1], Tier::Ready),
        (TrafficPolicy::Local, &["RS", "STL", "ST"], &[1], Tier::Terminating),
        (TrafficPolicy::Local, &["RS", "RS"], &[], Tier::None),
    ];
    for policy in [Policy::default(), Policy::RoundRobin, Policy::Random] {
        for (row, (traffic, spec, want, tier)) in rows.iter().enumerate() {
            let mut p = service("a", 30001, &[]);
            p.policy = policy;
            p.traffic_policy = *traffic;
            p.endpoints = spec
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let mut e = Endpoint::new(([10, 0, 0, i as u8 + 1], 80).into());
                    e.conditions = Conditions {
                        ready: s.contains('R'),
                        serving: s.contains('S'),
                        terminating: s.contains('T'),
                    };
                    e.local = s.contains('L');
                    e
                })
                .collect();
            let snap = RoutingSnapshot::build(&model(vec![p]), 1, &mut StatsRegistry::new(1));
            let svc = snap.service(ServiceId(0));
            assert_eq!(svc.tier(), *tier, "row {row}");
            let mut got = std::collections::BTreeSet::new();
            for c in 0..2000u16 {
                let chosen = match policy {
                    Policy::RoundRobin => svc.round_robin(c as usize, &[]),
                    Policy::Random => {
                        svc.weighted(u64::from(c).wrapping_mul(0x9e37_79b9_7f4a_7c15), &[])
                    }
                    _ => svc.pick(client(u32::from(c)), &[]),
                };
                if let Some(id) = chosen {
                    got.insert(id.0 as usize);
                }
            }
            // Endpoints are in canonical (address) order, the same as the row's here.
            let want: std::collections::BTreeSet<usize> = want.iter().copied().collect();
            assert_eq!(got, want, "row {row} {policy:?} {traffic:?} {spec:?}");
            // Unchosen endpoints stay in the snapshot (their connections live on).
            assert_eq!(svc.endpoints().len(), spec.len());
        }
    }
}

/// Dual-stack: each client family reaches only its own family's endpoints (never an
/// IPv4 client to an IPv6 pod); a family the Service does not serve has none. Local:
/// outside clients reach local endpoints only, the node itself the cluster ones.
#[test]
fn routes_per_family_and_origin() {
    use crate::model::{Families, TrafficPolicy};
    let mut p = service(
        "a",
        30001,
        &[("10.0.0.1:80", 1), ("[fd00::1]:80", 1), ("[fd00::2]:80", 1)],
    );
    p.endpoints[1].local = false;
    p.endpoints[0].local = false;
    let snap = RoutingSnapshot::build(&model(vec![p.clone()]), 1, &mut StatsRegistry::new(1));
    let s = snap.service(ServiceId(0));
    let v4: std::collections::BTreeSet<String> = (0..500)
        .filter_map(|i| s.pick(client(i), &[]))
        .map(|id| addr_of(s, id))
        .collect();
    assert_eq!(v4, ["10.0.0.1:80".to_string()].into());
    let v6client = |i: u32| SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16 + 1], 999));
    let v6: std::collections::BTreeSet<String> = (0..500)
        .filter_map(|i| s.pick(v6client(i), &[]))
        .map(|id| addr_of(s, id))
        .collect();
    assert_eq!(v6.len(), 2, "{v6:?}");
    assert!(v6.iter().all(|a| a.starts_with('[')));
    let mapped: SocketAddr = "[::ffff:192.0.2.1]:5".parse().unwrap();
    assert_eq!(addr_of(s, s.pick(mapped, &[]).unwrap()), "10.0.0.1:80");

    // IPv6 only (ipFamilies: [IPv6]): IPv4 clients find nothing.
    let mut only6 = p.clone();
    only6.families = Families {
        v4: false,
        v6: true,
    };
    let snap = RoutingSnapshot::build(&model(vec![only6]), 1, &mut StatsRegistry::new(1));
    let s = snap.service(ServiceId(0));
    assert_eq!(s.pick(client(1), &[]), None);
    assert!(s.pick(v6client(1), &[]).is_some());

    // Local: [fd00::2] is the only local endpoint.
    let mut local = p;
    local.traffic_policy = TrafficPolicy::Local;
    let snap = RoutingSnapshot::build(&model(vec![local]), 1, &mut StatsRegistry::new(1))
        .with_node_addresses(&["192.0.2.50".parse().unwrap()]);
    let s = snap.service(ServiceId(0));
    let policy = s.port.policy;
    let outside4 = s.route(Family::V4, false);
    assert_eq!(
        outside4.pick(policy, client(1), &[]),
        None,
        "no local IPv4 pod"
    );
    let node4 = s.route(Family::V4, true);
    assert_eq!(
        addr_of(s, node4.pick(policy, client(1), &[]).unwrap()),
        "10.0.0.1:80"
    );
    for i in 0..100 {
        let id = s
            .route(Family::V6, false)
            .pick(policy, v6client(i), &[])
            .unwrap();
        assert_eq!(addr_of(s, id), "[fd00::2]:80");
    }
    assert!(snap.is_node_address("192.0.2.50".parse().unwrap()));
    assert!(snap.is_node_address("::ffff:192.0.2.50".parse().unwrap()));
    assert!(snap.is_node_address("127.0.0.9".parse().unwrap()));
    assert!(snap.is_node_address("::1".parse().unwrap()));
    assert!(!snap.is_node_address("192.0.2.51".parse().unwrap()));
    // A rebuild keeps the node's addresses.
    let again = snap.rebuild(&model(vec![]), 2, &mut StatsRegistry::new(1));
    assert!(again.is_node_address("192.0.2.50".parse().unwrap()));
}
