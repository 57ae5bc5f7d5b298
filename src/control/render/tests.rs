//! Tests of `render` and `render::describe`: the tables and kubectl's exact layout.

use super::super::protocol::{
    Counters, EndpointInfo, EventInfo, KubernetesInfo, ServiceList, SpecPortInfo,
};
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

/// A daemon's answer is input: no time in it may panic `ctl` (it did for huge ones).
#[test]
fn any_reload_time_renders() {
    assert_eq!(when(0.0), "1970-01-01T00:00:00Z");
    assert_eq!(when(1_700_000_000.5), "2023-11-14T22:13:20Z");
    for t in [f64::MAX, f64::INFINITY, 1e300, 253_402_300_800.0] {
        assert_eq!(when(t), "9999-12-31T23:59:59Z", "{t}");
    }
    assert_eq!(when(-5.0), "1970-01-01T00:00:00Z");
    assert_eq!(when(f64::NAN), "?");
    assert!(!uptime(f64::MAX).is_empty());
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
        external_ips: Vec::new(),
        load_balancer_ips: Vec::new(),
        load_balancer_source_ranges: Vec::new(),
        source_ranges_refused: 0,
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
        cluster_ip: "10.100.13.81".into(),
        cluster_ips: vec!["10.100.13.81".into()],
        ports: vec![SpecPortInfo {
            name: "http".into(),
            protocol: "TCP".into(),
            port: 80,
            target_port: "9000".into(),
            node_port: 30000,
            app_protocol: None,
        }],
        session_affinity: "None".into(),
        external_traffic_policy: Some("Cluster".into()),
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
        external_ips: Vec::new(),
        load_balancer_ips: Vec::new(),
        load_balancer_source_ranges: Vec::new(),
        source_ranges_refused: 0,
        endpoints: vec![
            ep("192.168.7.8:9000"),
            ep("192.168.45.127:9000"),
            ep("192.168.66.254:9000"),
            not_ready,
        ],
        kubernetes: Some(k.clone()),
    };
    let seed = include_str!("../../../tests/fixtures/k8s/describe-myfrontend.txt");
    assert_eq!(describe(std::slice::from_ref(&p)), seed);
}

/// Every field kubectl's describeService prints, with its tabwriter's column widths:
/// a served port (AppProtocol, 5 ready endpoints), an unserved UDP port with its reason
/// as an Event, `(VIP)` ingress, both traffic policies, source ranges, traffic
/// distribution, a long annotation cut as kubectl cuts it, Events in kubectl's columns.
#[test]
fn describe_every_field_like_kubectl() {
    let k = KubernetesInfo {
        service_type: "LoadBalancer".into(),
        labels: vec![("tier".into(), "web".into()), ("app".into(), "shop".into())],
        annotations: vec![
            ("example.com/note".into(), "hi".into()),
            ("example.com/long".into(), "x".repeat(150)),
            (
                "kubectl.kubernetes.io/last-applied-configuration".into(),
                "{}".into(),
            ),
        ],
        selector: vec![("app".into(), "shop".into())],
        ip_family_policy: Some("PreferDualStack".into()),
        ip_families: vec!["IPv4".into(), "IPv6".into()],
        cluster_ip: "10.96.0.10".into(),
        cluster_ips: vec!["10.96.0.10".into(), "fd00::10".into()],
        external_ips: vec!["198.51.100.7".into()],
        load_balancer_ingress: vec!["203.0.113.10 (VIP)".into(), "lb.example.com".into()],
        ports: vec![
            SpecPortInfo {
                name: "http".into(),
                protocol: "TCP".into(),
                port: 80,
                target_port: "http-server".into(),
                node_port: 30080,
                app_protocol: Some("kubernetes.io/h2c".into()),
            },
            SpecPortInfo {
                name: "dns".into(),
                protocol: "UDP".into(),
                port: 53,
                target_port: "53".into(),
                node_port: 30053,
                app_protocol: None,
            },
        ],
        session_affinity: "ClientIP".into(),
        external_traffic_policy: Some("Local".into()),
        internal_traffic_policy: Some("Cluster".into()),
        traffic_distribution: Some("PreferClose".into()),
        load_balancer_source_ranges: vec!["192.0.2.0/24".into(), "198.51.100.0/24".into()],
        health_check_node_port: Some(32100),
        events: vec![
            EventInfo {
                type_: "Warning".into(),
                reason: "PortNotServed".into(),
                age_seconds: 300,
                from: "sluice".into(),
                message: "port \"dns\" is UDP: sluice serves only TCP; not served".into(),
            },
            EventInfo {
                type_: "Warning".into(),
                reason: "InvalidAnnotation".into(),
                age_seconds: 90,
                from: "sluice".into(),
                message: "annotation sluice.io/policy \"fastest\" is not accepted; keeping maglev"
                    .into(),
            },
        ],
    };
    let mut endpoints: Vec<EndpointInfo> =
        (1..=5).map(|i| ep(&format!("10.0.0.{i}:8080"))).collect();
    endpoints[4].ready = true;
    let mut not_ready = ep("10.0.0.9:8080");
    not_ready.ready = false;
    endpoints.insert(2, not_ready);
    let p = ServicePortInfo {
        namespace: "web".into(),
        name: "shop".into(),
        port_name: "http".into(),
        protocol: "TCP".into(),
        port: 80,
        target_port: 0,
        node_port: 30080,
        node_port_allocated: false,
        policy: "client-ip(10800s)".into(),
        session_affinity: "ClientIP".into(),
        forwarding: "transparent".into(),
        endpoints_usable: 5,
        endpoints_total: 6,
        counters: Counters::default(),
        external_ips: Vec::new(),
        load_balancer_ips: Vec::new(),
        load_balancer_source_ranges: Vec::new(),
        source_ranges_refused: 0,
        endpoints,
        kubernetes: Some(k),
    };
    let golden = include_str!("../../../tests/fixtures/k8s/describe-every-field.txt");
    assert_eq!(describe(&[p]), golden);
}

/// kubectl's Age column (`duration.HumanDuration`), at its boundaries.
#[test]
fn ages_like_kubectl() {
    for (s, want) in [
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (150, "2m30s"),
        (600, "10m"),
        (179 * 60, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 60, "3h1m"),
        (8 * 3600, "8h"),
        (47 * 3600, "47h"),
        (48 * 3600, "2d"),
        (50 * 3600, "2d2h"),
        (8 * 24 * 3600, "8d"),
        (2 * 365 * 24 * 3600, "2y"),
        (2 * 365 * 24 * 3600 + 86400, "2y1d"),
        (9 * 365 * 24 * 3600, "9y"),
    ] {
        assert_eq!(human_duration(s), want, "{s}");
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
        external_ips: Vec::new(),
        load_balancer_ips: Vec::new(),
        load_balancer_source_ranges: Vec::new(),
        source_ranges_refused: 0,
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
