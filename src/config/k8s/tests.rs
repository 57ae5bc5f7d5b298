//! The conversion over real Kubernetes JSON: the fixtures in `tests/fixtures/k8s/` are
//! objects as the API server and the EndpointSlice controller write them; each case
//! changes what it is about and checks the model (or the problems) that come out.
//!
//! Tests only (past ~600 lines): one case per rule of docs/kubernetes.md, read in order.

use super::*;
use crate::model::{Conditions, Forwarding, HashKey};
use crate::table::usable::{routing_weights, Tier};
use serde_json::{json, Value};

fn fixture(name: &str) -> Value {
    let text = match name {
        "myfrontend-service" => include_str!("../../../tests/fixtures/k8s/myfrontend-service.json"),
        "myfrontend-slice" => include_str!("../../../tests/fixtures/k8s/myfrontend-slice.json"),
        "helloworld-service" => include_str!("../../../tests/fixtures/k8s/helloworld-service.json"),
        "helloworld-slices" => include_str!("../../../tests/fixtures/k8s/helloworld-slices.json"),
        other => panic!("no fixture {other}"),
    };
    serde_json::from_str(text).unwrap()
}

/// Sets `value` at the JSON pointer `path` (the parent must exist).
fn set(mut v: Value, path: &str, value: Value) -> Value {
    let (parent, key) = path.rsplit_once('/').unwrap();
    let key = key.replace("~1", "/").replace("~0", "~");
    let target = v
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent}"));
    match target {
        Value::Object(o) => {
            o.insert(key, value);
        }
        Value::Array(a) if key.parse::<usize>().unwrap() == a.len() => a.push(value),
        Value::Array(a) => a[key.parse::<usize>().unwrap()] = value,
        _ => panic!("{parent} is not a container"),
    }
    v
}

fn objects(values: &[Value]) -> Objects {
    let mut o = Objects::default();
    let mut queue: Vec<Value> = values.to_vec();
    while let Some(v) = queue.pop() {
        match v["kind"].as_str().unwrap() {
            "List" => queue.extend(v["items"].as_array().unwrap().iter().cloned()),
            "Service" => o
                .services
                .push(Arc::new(serde_json::from_value(v).unwrap())),
            "EndpointSlice" => o.slices.push(Arc::new(serde_json::from_value(v).unwrap())),
            "Endpoints" => o
                .endpoints
                .push(Arc::new(serde_json::from_value(v).unwrap())),
            k => panic!("kind {k}"),
        }
    }
    o
}

fn build(values: &[Value]) -> (Model, Vec<Problem>) {
    build_with(values, &K8sOptions::default(), None)
}

fn build_with(
    values: &[Value],
    options: &K8sOptions,
    previous: Option<&Model>,
) -> (Model, Vec<Problem>) {
    build_model(Settings::default(), &objects(values), options, previous)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addrs(p: &ServicePort) -> Vec<String> {
    p.endpoints.iter().map(|e| e.addr.to_string()).collect()
}

fn one(model: &Model) -> &ServicePort {
    assert_eq!(model.services.len(), 1, "{:#?}", model.services);
    &model.services[0]
}

fn node(name: &str) -> K8sOptions {
    K8sOptions {
        node_name: Some(name.into()),
        proxy_name: None,
        zone: None,
        primary_ips: Vec::new(),
    }
}

#[test]
fn seed_myfrontend_as_the_api_server_returns_it() {
    let (model, problems) = build(&[fixture("myfrontend-service"), fixture("myfrontend-slice")]);
    assert_eq!(problems, []);
    let p = one(&model);
    assert_eq!(p.key.to_string(), "workshop/myfrontend:http");
    assert_eq!((p.port, p.node_port, p.target_port), (80, 30000, 9000));
    assert!(!p.node_port_allocated);
    assert_eq!(
        addrs(p),
        [
            "192.168.7.8:9000",
            "192.168.45.127:9000",
            "192.168.66.254:9000"
        ]
    );
    assert!(p
        .endpoints
        .iter()
        .all(|e| e.conditions == Conditions::default() && !e.local));
    assert_eq!(p.policy, Policy::default());
    assert_eq!(p.forwarding, Forwarding::None);
    assert_eq!(p.traffic_policy, TrafficPolicy::Cluster);
    let meta = p.meta.as_deref().unwrap();
    assert_eq!(meta.service_type, "NodePort");
    assert_eq!(meta.labels, [("app".into(), "myfrontend".into())]);
    assert_eq!(meta.selector, [("app".into(), "frontend".into())]);
    assert_eq!(meta.cluster_ips, ["10.100.13.81"]);
    assert_eq!(meta.ip_families, ["IPv4"]);
    assert_eq!(meta.ip_family_policy.as_deref(), Some("SingleStack"));
    assert_eq!(meta.ports.len(), 1);
    assert_eq!(
        (
            meta.ports[0].name.as_str(),
            meta.ports[0].target_port.as_str()
        ),
        ("http", "9000")
    );
    assert_eq!(meta.health_check_node_port, None);
}

#[test]
fn named_target_port_is_resolved_per_slice_and_node_port_allocated() {
    let (model, problems) = build(&[fixture("helloworld-service"), fixture("helloworld-slices")]);
    assert_eq!(problems, []);
    let p = one(&model);
    assert_eq!(p.key.to_string(), "my-apps/helloworld");
    // Two slices name the same (unnamed) port with different numbers: each keeps its own.
    assert_eq!(
        addrs(p),
        [
            "172.30.172.228:8080",
            "172.30.234.176:8080",
            "172.30.234.177:8081"
        ]
    );
    assert!(p.node_port_allocated);
    let range = Settings::default().node_port_range;
    let upper = range.first + range.static_band_size() as u16..=range.last;
    assert!(
        upper.contains(&p.node_port),
        "{} not in {upper:?}",
        p.node_port
    );
    let meta = p.meta.as_deref().unwrap();
    assert_eq!(
        (
            meta.ports[0].name.as_str(),
            meta.ports[0].target_port.as_str()
        ),
        ("", "http-server")
    );
}

#[test]
fn allocation_is_stable_across_rebuilds() {
    let objs = [fixture("helloworld-service"), fixture("helloworld-slices")];
    let (first, _) = build(&objs);
    assert_eq!(first, build(&objs).0, "same objects, same model");
    // The running model serves it on another port (e.g. allocated before a range change):
    // a rebuild keeps that port, and a new Service that sorts first does not take it.
    let mut running = first.clone();
    running.services[0].node_port = 31234;
    let other = set(
        set(
            fixture("helloworld-service"),
            "/metadata/name",
            json!("aaa"),
        ),
        "/metadata/namespace",
        json!("a"),
    );
    let mut with_other = objs.to_vec();
    with_other.push(other);
    let (next, problems) = build_with(&with_other, &K8sOptions::default(), Some(&running));
    assert_eq!(problems, []);
    let hello = next
        .services
        .iter()
        .find(|s| s.key.service.name == "helloworld")
        .unwrap();
    assert_eq!((hello.node_port, hello.node_port_allocated), (31234, true));
    assert_eq!(next.services[0].key.service.name, "aaa");
    assert_ne!(next.services[0].node_port, 31234);
}

#[test]
fn conditions_default_and_terminating_is_the_fallback() {
    let slice = set(
        fixture("myfrontend-slice"),
        "/endpoints/0/conditions",
        json!({"ready": false, "serving": true, "terminating": true}),
    );
    // nil conditions: ready and serving, not terminating.
    let slice = set(slice, "/endpoints/1/conditions", json!({}));
    let slice = set(
        slice,
        "/endpoints/2/conditions",
        json!({"ready": false, "serving": false, "terminating": true}),
    );
    let (model, _) = build(&[fixture("myfrontend-service"), slice.clone()]);
    let p = one(&model);
    let by_addr = |a: &str| {
        p.endpoints
            .iter()
            .find(|e| e.addr.to_string() == a)
            .unwrap()
            .conditions
    };
    let c = |ready, serving, terminating| Conditions {
        ready,
        serving,
        terminating,
    };
    assert_eq!(by_addr("192.168.7.8:9000"), c(false, true, true));
    assert_eq!(by_addr("192.168.66.254:9000"), c(true, true, false));
    assert_eq!(by_addr("192.168.45.127:9000"), c(false, false, true));
    let (weights, tier) = routing_weights(p.traffic_policy, &p.endpoints);
    assert_eq!(
        (weights, tier),
        (vec![0, 0, 1], Tier::Ready),
        "only the ready pod"
    );

    // The ready pod gone: the serving-terminating one carries the traffic.
    let mut gone = slice;
    gone["endpoints"].as_array_mut().unwrap().remove(1);
    let (model, _) = build(&[fixture("myfrontend-service"), gone]);
    let p = one(&model);
    let (weights, tier) = routing_weights(p.traffic_policy, &p.endpoints);
    assert_eq!(addrs(p), ["192.168.7.8:9000", "192.168.45.127:9000"]);
    assert_eq!((weights, tier), (vec![1, 0], Tier::Terminating));
}

#[test]
fn local_policy_marks_this_nodes_endpoints_and_forwards_transparently() {
    let svc = set(
        fixture("myfrontend-service"),
        "/spec/externalTrafficPolicy",
        json!("Local"),
    );
    let objs = [svc, fixture("myfrontend-slice")];
    let (model, problems) = build_with(
        &objs,
        &node("ip-192-168-93-31.eu-west-1.compute.internal"),
        None,
    );
    assert_eq!(problems, []);
    let p = one(&model);
    assert_eq!(p.traffic_policy, TrafficPolicy::Local);
    assert_eq!(p.forwarding, Forwarding::Transparent);
    let local: Vec<String> = p
        .endpoints
        .iter()
        .filter(|e| e.local)
        .map(|e| e.addr.to_string())
        .collect();
    assert_eq!(local, ["192.168.66.254:9000"]);
    let (weights, _) = routing_weights(p.traffic_policy, &p.endpoints);
    assert_eq!(weights, [0, 0, 1]);

    // A node with none of the pods: nothing usable here.
    let (model, _) = build_with(&objs, &node("elsewhere"), None);
    let (_, tier) = routing_weights(TrafficPolicy::Local, &one(&model).endpoints);
    assert_eq!(tier, Tier::None);

    // No node name: served, nothing local, and a problem says why.
    let (model, problems) = build_with(&objs, &K8sOptions::default(), None);
    assert!(one(&model).endpoints.iter().all(|e| !e.local));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].object, "Service workshop/myfrontend");
    assert!(
        problems[0].message.contains("--node-name"),
        "{}",
        problems[0]
    );
}

#[test]
fn every_port_of_a_service_with_its_own_slice_port() {
    let svc = set(
        fixture("myfrontend-service"),
        "/spec/ports/1",
        json!({"name": "metrics", "port": 9100, "protocol": "TCP", "targetPort": "metrics", "nodePort": 30001}),
    );
    let slice = set(
        fixture("myfrontend-slice"),
        "/ports/1",
        json!({"name": "metrics", "port": 9102, "protocol": "TCP"}),
    );
    let (model, problems) = build(&[svc, slice]);
    assert_eq!(problems, []);
    let names: Vec<(&str, u16)> = model
        .services
        .iter()
        .map(|s| (s.key.port_name.as_str(), s.node_port))
        .collect();
    assert_eq!(names, [("http", 30000), ("metrics", 30001)]);
    assert!(addrs(&model.services[1])
        .iter()
        .all(|a| a.ends_with(":9102")));
    assert!(addrs(&model.services[0])
        .iter()
        .all(|a| a.ends_with(":9000")));
    assert!(Arc::ptr_eq(
        model.services[0].meta.as_ref().unwrap(),
        model.services[1].meta.as_ref().unwrap()
    ));
}

#[test]
fn skipped_services_and_ports() {
    let base = fixture("myfrontend-service");
    struct Case {
        name: &'static str,
        service: Value,
        options: K8sOptions,
        served_ports: &'static [&'static str],
        problem: Option<&'static str>,
    }
    let sctp = set(
        base.clone(),
        "/spec/ports/1",
        json!({"name": "sig", "port": 2905, "protocol": "SCTP", "targetPort": 2905, "nodePort": 30053}),
    );
    let labelled = set(
        base.clone(),
        "/metadata/labels/service.kubernetes.io~1service-proxy-name",
        json!("other-proxy"),
    );
    let cases = [
        Case {
            name: "SCTP port skipped, TCP served",
            service: sctp,
            options: K8sOptions::default(),
            served_ports: &["http"],
            problem: Some("port \"sig\" is SCTP: sluice serves TCP and UDP; not served"),
        },
        Case {
            name: "headless",
            service: set(base.clone(), "/spec/clusterIP", json!("None")),
            options: K8sOptions::default(),
            served_ports: &[],
            problem: None,
        },
        Case {
            name: "ClusterIP",
            service: set(base.clone(), "/spec/type", json!("ClusterIP")),
            options: K8sOptions::default(),
            served_ports: &[],
            problem: None,
        },
        Case {
            name: "another proxy's Service",
            service: labelled.clone(),
            options: K8sOptions::default(),
            served_ports: &[],
            problem: None,
        },
        Case {
            name: "our proxy name",
            service: labelled,
            options: K8sOptions {
                node_name: None,
                proxy_name: Some("other-proxy".into()),
                zone: None,
                primary_ips: Vec::new(),
            },
            served_ports: &["http"],
            problem: None,
        },
    ];
    for c in cases {
        let (model, problems) =
            build_with(&[c.service, fixture("myfrontend-slice")], &c.options, None);
        let served: Vec<&str> = model
            .services
            .iter()
            .map(|s| s.key.port_name.as_str())
            .collect();
        assert_eq!(served, c.served_ports, "{}", c.name);
        let messages: Vec<String> = problems.iter().map(|p| p.message.clone()).collect();
        assert_eq!(
            messages,
            c.problem.into_iter().collect::<Vec<_>>(),
            "{}",
            c.name
        );
    }
}

/// A Service with TCP 53 and UDP 53 on one nodePort (kube-dns' shape): both ports are
/// served, each with its own slice port; the UDP one has the UDP idle timeout and
/// `sluice.io/udp-responses`.
#[test]
fn tcp_and_udp_ports_share_a_node_port_number() {
    let svc = set(
        fixture("myfrontend-service"),
        "/spec/ports",
        json!([
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 5353, "nodePort": 30053},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353, "nodePort": 30053},
        ]),
    );
    let svc = set(
        svc,
        "/metadata/annotations/sluice.io~1udp-responses",
        json!("1"),
    );
    let slice = set(
        fixture("myfrontend-slice"),
        "/ports",
        json!([
            {"name": "dns-tcp", "port": 5353, "protocol": "TCP"},
            {"name": "dns", "port": 5354, "protocol": "UDP"},
        ]),
    );
    let (model, problems) = build(&[svc.clone(), slice.clone()]);
    assert_eq!(problems, []);
    let [udp, tcp] = &model.services[..] else {
        panic!("two ports expected: {:#?}", model.services)
    };
    assert_eq!(
        (
            udp.key.protocol,
            udp.node_port,
            tcp.key.protocol,
            tcp.node_port
        ),
        (Protocol::Udp, 30053, Protocol::Tcp, 30053)
    );
    assert!(addrs(udp).iter().all(|a| a.ends_with(":5354")), "{udp:?}");
    assert!(addrs(tcp).iter().all(|a| a.ends_with(":5353")), "{tcp:?}");
    assert_eq!(udp.timeouts.idle, crate::model::DEFAULT_UDP_IDLE_TIMEOUT);
    assert_eq!(
        tcp.timeouts.idle,
        Settings::default().defaults.timeouts.idle
    );
    assert_eq!((udp.udp_responses, tcp.udp_responses), (Some(1), None));

    // An invalid count keeps the last good one; proxy-v1 has no datagram form: the UDP
    // port is not served, the TCP one is.
    let bad = set(
        svc.clone(),
        "/metadata/annotations/sluice.io~1udp-responses",
        json!("0"),
    );
    let (again, problems) = build_with(&[bad, slice.clone()], &K8sOptions::default(), Some(&model));
    assert_eq!(again.services[0].udp_responses, Some(1));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].message.starts_with(
            "annotation sluice.io/udp-responses 0 is out of range: must be 1..=1000000; keeping 1"
        ),
        "{problems:?}"
    );
    let v1 = set(
        svc,
        "/metadata/annotations/sluice.io~1forwarding",
        json!("proxy-v1"),
    );
    let (model, problems) = build(&[v1, slice]);
    assert_eq!(one(&model).key.protocol, Protocol::Tcp);
    assert_eq!(
        problems
            .iter()
            .map(|p| p.message.as_str())
            .collect::<Vec<_>>(),
        [
            "port \"dns\" is UDP and the Service forwards with proxy-v1, which has no form for \
          datagrams (use proxy-v2, transparent or none); not served"
        ]
    );
}

#[test]
fn load_balancer_services() {
    let svc = fixture("myfrontend-service");
    let svc = set(svc, "/spec/type", json!("LoadBalancer"));
    let svc = set(svc, "/spec/externalTrafficPolicy", json!("Local"));
    let svc = set(svc, "/spec/healthCheckNodePort", json!(32100));
    let svc = set(
        svc,
        "/status/loadBalancer",
        json!({"ingress": [{"ip": "203.0.113.10", "ipMode": "VIP"}, {"hostname": "lb.example.com"}]}),
    );
    let (model, problems) = build_with(std::slice::from_ref(&svc), &node("n1"), None);
    assert_eq!(problems, []);
    let p = one(&model);
    assert_eq!(p.node_port, 30000);
    let meta = p.meta.as_deref().unwrap();
    assert_eq!(meta.service_type, "LoadBalancer");
    assert_eq!(meta.health_check_node_port, Some(32100));
    assert_eq!(
        meta.load_balancer_ingress,
        ["203.0.113.10 (VIP)", "lb.example.com"],
        "kubectl shows the ipMode"
    );

    // The VIP ingress IP is the Service's address (the hostname is not an address).
    assert_eq!(p.addresses.load_balancer_ips, [ip("203.0.113.10")]);
    assert_eq!(p.addresses.external_ips, [] as [IpAddr; 0]);

    // allocateLoadBalancerNodePorts: false and no nodePort: served at the LoadBalancer IP
    // only (on the Service port), no NodePort allocated.
    let no_ports = set(
        svc.clone(),
        "/spec/allocateLoadBalancerNodePorts",
        json!(false),
    );
    let without = set(no_ports.clone(), "/spec/ports/0/nodePort", Value::Null);
    let (model, problems) = build_with(std::slice::from_ref(&without), &node("n1"), None);
    assert_eq!(problems, []);
    let p = one(&model);
    assert_eq!((p.node_port, p.node_port_allocated), (0, false));
    assert_eq!(p.addresses.load_balancer_ips, [ip("203.0.113.10")]);
    // … and without an ingress IP (or only a Proxy-mode one): nothing to serve here.
    for status in [
        json!({}),
        json!({"ingress": [{"ip": "203.0.113.10", "ipMode": "Proxy"}]}),
    ] {
        let s = set(without.clone(), "/status/loadBalancer", status);
        let (model, problems) = build_with(&[s], &node("n1"), None);
        assert_eq!((model.services.len(), problems.len()), (0, 0));
    }
    // … but a nodePort given anyway is served.
    let (model, _) = build_with(&[no_ports], &node("n1"), None);
    assert_eq!(one(&model).node_port, 30000);
}

#[test]
fn invalid_annotation_keeps_the_last_good_value() {
    let annotate = |pairs: &[(&str, &str)]| {
        let mut svc = fixture("myfrontend-service");
        for (k, v) in pairs {
            let path = format!("/metadata/annotations/{}", k.replace('/', "~1"));
            svc = set(svc, &path, json!(v));
        }
        [svc, fixture("myfrontend-slice")]
    };
    let good = annotate(&[
        (POLICY, "round-robin"),
        (FORWARDING, "proxy-v2"),
        (HOLD_WHEN_EMPTY, "30s"),
    ]);
    let (first, problems) = build(&good);
    assert_eq!(problems, []);
    let p = one(&first);
    assert_eq!(p.policy, Policy::RoundRobin);
    assert_eq!(p.forwarding, Forwarding::ProxyV2(Default::default()));
    assert_eq!(p.timeouts.hold_when_empty, Some(Duration::from_secs(30)));

    let bad = annotate(&[
        (POLICY, "fastest"),
        (FORWARDING, "proxy-v3"),
        (HOLD_WHEN_EMPTY, "soon"),
    ]);
    let (next, problems) = build_with(&bad, &K8sOptions::default(), Some(&first));
    let p = one(&next);
    assert_eq!(p.policy, Policy::RoundRobin, "kept");
    assert_eq!(
        p.forwarding,
        Forwarding::ProxyV2(Default::default()),
        "kept"
    );
    assert_eq!(
        p.timeouts.hold_when_empty,
        Some(Duration::from_secs(30)),
        "kept"
    );
    assert_eq!(problems.len(), 3, "{problems:#?}");
    for (problem, (annotation, value)) in problems.iter().zip([
        (FORWARDING, "proxy-v3"),
        (POLICY, "fastest"),
        (HOLD_WHEN_EMPTY, "soon"),
    ]) {
        assert_eq!(problem.object, "Service workshop/myfrontend");
        assert!(
            problem.message.contains(annotation) && problem.message.contains(value),
            "{problem}"
        );
    }
    assert!(
        problems[1].message.ends_with("keeping round-robin"),
        "{}",
        problems[1]
    );
    assert_eq!(
        p.meta.as_deref().unwrap().warnings.len(),
        3,
        "describe shows them"
    );

    // Never had a good value: the default.
    let (fresh, problems) = build(&bad);
    let p = one(&fresh);
    assert_eq!(problems.len(), 3);
    assert_eq!(p.policy, Policy::default());
    assert_eq!(p.forwarding, Forwarding::None);
    assert_eq!(p.timeouts.hold_when_empty, None);

    // Hash key, and annotations that do not apply.
    let (m, problems) = build(&annotate(&[(HASH_KEY, "client-ip")]));
    assert_eq!(problems, []);
    assert_eq!(
        one(&m).policy,
        Policy::Maglev {
            key: HashKey::ClientIp
        }
    );
    let (m, problems) = build(&annotate(&[(POLICY, "random"), (HASH_KEY, "client-ip")]));
    assert_eq!(one(&m).policy, Policy::Random);
    assert!(
        problems[0].message.contains("maglev policy only"),
        "{problems:?}"
    );
    let (_, problems) = build(&annotate(&[(POLICY, "client-ip")]));
    assert!(
        problems[0].message.contains("sessionAffinity: ClientIP"),
        "{problems:?}"
    );
}

/// `sluice.io/hold-when-empty` keeps the bound of `hold_when_empty`: above it, a problem
/// naming the annotation, and the last good value stays.
#[test]
fn hold_annotation_above_its_bound_is_a_problem() {
    let hold = |v: &str| {
        let svc = set(
            fixture("myfrontend-service"),
            &format!(
                "/metadata/annotations/{}",
                HOLD_WHEN_EMPTY.replace('/', "~1")
            ),
            json!(v),
        );
        [svc, fixture("myfrontend-slice")]
    };
    let (first, problems) = build(&hold("1h"));
    assert_eq!(problems, []);
    assert_eq!(
        one(&first).timeouts.hold_when_empty,
        Some(Duration::from_secs(3600))
    );
    for bad in ["18446744073709551615s", "1h 1ns", "2days"] {
        let (next, problems) = build_with(&hold(bad), &K8sOptions::default(), Some(&first));
        assert_eq!(
            one(&next).timeouts.hold_when_empty,
            Some(Duration::from_secs(3600)),
            "kept for {bad}"
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].message,
            format!(
                "annotation {HOLD_WHEN_EMPTY} {bad:?} is too long: at most 1h is accepted (see \
                 \"Limits\" in docs/operations.md); keeping 1h"
            )
        );
    }
}

/// An endpoint that is this Service's own NodePort on this node (here a loopback address,
/// which is this node's whatever the listen addresses) would loop: a problem, and skipped.
#[test]
fn an_endpoint_that_is_our_own_node_port_is_skipped() {
    let slice = set(fixture("myfrontend-slice"), "/ports/0/port", json!(30000));
    let slice = set(slice, "/endpoints/0/addresses/0", json!("127.0.0.1"));
    let (m, problems) = build(&[fixture("myfrontend-service"), slice]);
    let p = one(&m);
    assert_eq!(p.node_port, 30000);
    assert!(
        !addrs(p).contains(&"127.0.0.1:30000".to_owned()),
        "{:?}",
        addrs(p)
    );
    assert_eq!(addrs(p).len(), 2, "{:?}", addrs(p));
    assert_eq!(
        problems,
        [Problem {
            object: "Service workshop/myfrontend".into(),
            reason: reason::ENDPOINT_LOOPS,
            message: "endpoint 127.0.0.1:30000 is sluice's own NodePort 30000/TCP of \
                      workshop/myfrontend:http on this node (sluice serves its NodePorts on \
                      every address of this node): its connections would come straight back \
                      into sluice; this endpoint is skipped"
                .into(),
        }]
    );
}

#[test]
fn session_affinity_client_ip() {
    let svc = set(
        fixture("myfrontend-service"),
        "/spec/sessionAffinity",
        json!("ClientIP"),
    );
    let (m, problems) = build(std::slice::from_ref(&svc));
    assert_eq!(problems, []);
    let default = Policy::ClientIp {
        timeout: Duration::from_secs(10800),
        max_entries: DEFAULT_AFFINITY_MAX_ENTRIES,
    };
    assert_eq!(one(&m).policy, default);
    let timeout = |t: i64| {
        set(
            svc.clone(),
            "/spec/sessionAffinityConfig",
            json!({"clientIP": {"timeoutSeconds": t}}),
        )
    };
    let (short, _) = build(&[timeout(600)]);
    let six_hundred = Policy::ClientIp {
        timeout: Duration::from_secs(600),
        max_entries: DEFAULT_AFFINITY_MAX_ENTRIES,
    };
    assert_eq!(one(&short).policy, six_hundred);
    for bad in [0, 86401] {
        let (m, problems) = build_with(&[timeout(bad)], &K8sOptions::default(), Some(&short));
        assert_eq!(one(&m).policy, six_hundred, "kept for {bad}");
        assert!(problems[0].message.contains("out of range"), "{problems:?}");
        let (m, _) = build(&[timeout(bad)]);
        assert_eq!(one(&m).policy, default, "default for {bad}");
    }
}

#[test]
fn legacy_endpoints_only_without_slices() {
    let legacy = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2022-02-25T00:40:47Z"},
            "labels": {"app": "myfrontend"},
            "name": "myfrontend",
            "namespace": "workshop"
        },
        "subsets": [{
            "addresses": [
                {"ip": "192.168.7.8", "nodeName": "n1", "targetRef": {"kind": "Pod", "name": "frontend-695f9f586f-dwprb", "namespace": "workshop"}},
                {"ip": "192.168.45.127", "nodeName": "n2"}
            ],
            "notReadyAddresses": [{"ip": "192.168.66.254", "nodeName": "n1"}],
            "ports": [{"name": "http", "port": 9000, "protocol": "TCP"}]
        }]
    });
    let (m, problems) = build_with(
        &[fixture("myfrontend-service"), legacy.clone()],
        &node("n1"),
        None,
    );
    assert_eq!(problems, []);
    let p = one(&m);
    let got: Vec<(String, bool, bool)> = p
        .endpoints
        .iter()
        .map(|e| (e.addr.to_string(), e.conditions.ready, e.local))
        .collect();
    assert_eq!(
        got,
        [
            ("192.168.7.8:9000".into(), true, true),
            ("192.168.45.127:9000".into(), true, false),
            ("192.168.66.254:9000".into(), false, true),
        ]
    );
    // A slice naming the Service wins over the legacy object.
    let (m, _) = build(&[fixture("myfrontend-service"), legacy, {
        let mut s = fixture("myfrontend-slice");
        s["endpoints"].as_array_mut().unwrap().truncate(1);
        s
    }]);
    assert_eq!(addrs(one(&m)), ["192.168.7.8:9000"]);
}

#[test]
fn ipv6_slices_and_bad_addresses() {
    let svc = set(
        fixture("myfrontend-service"),
        "/spec/ipFamilies",
        json!(["IPv6"]),
    );
    let slice = set(fixture("myfrontend-slice"), "/addressType", json!("IPv6"));
    let slice = set(slice, "/metadata/name", json!("myfrontend-v6abc"));
    let slice = set(slice, "/endpoints/0/addresses", json!(["fd00:10:244::8"]));
    let slice = set(slice, "/endpoints/1/addresses", json!(["fd00:10:244::9"]));
    // An IPv4 address in an IPv6 slice is reported and left out.
    let (m, problems) = build(&[svc.clone(), slice.clone()]);
    assert_eq!(
        addrs(one(&m)),
        ["[fd00:10:244::8]:9000", "[fd00:10:244::9]:9000"]
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        problems[0].object,
        "EndpointSlice workshop/myfrontend-v6abc"
    );
    assert!(
        problems[0].message.contains("192.168.45.127"),
        "{}",
        problems[0]
    );
    // Dual stack: both slices serve the same Service port.
    let (m, _) = build(&[svc, slice, fixture("myfrontend-slice")]);
    assert_eq!(one(&m).endpoints.len(), 5);
}

#[test]
fn duplicates() {
    // The same pod in two slices (e.g. during a slice split): one endpoint.
    let copy = set(
        fixture("myfrontend-slice"),
        "/metadata/name",
        json!("myfrontend-zz9zz"),
    );
    let (m, _) = build(&[
        fixture("myfrontend-service"),
        fixture("myfrontend-slice"),
        copy,
    ]);
    assert_eq!(one(&m).endpoints.len(), 3);

    // Two Services on one nodePort: the later is skipped, naming both.
    let other = set(
        fixture("myfrontend-service"),
        "/metadata/name",
        json!("zfrontend"),
    );
    let (m, problems) = build(&[other, fixture("myfrontend-service")]);
    assert_eq!(one(&m).key.service.name, "myfrontend");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].object, "Service workshop/zfrontend");
    assert_eq!(
        problems[0].message,
        "nodePort 30000/TCP of port \"http\" of Service workshop/zfrontend is already used by \
         port \"http\" of Service workshop/myfrontend; this port is not served"
    );
}

#[test]
fn output_does_not_depend_on_input_order() {
    let mut objs = vec![
        fixture("myfrontend-service"),
        fixture("myfrontend-slice"),
        fixture("helloworld-service"),
        fixture("helloworld-slices"),
    ];
    let (a, _) = build(&objs);
    objs.reverse();
    let (b, _) = build(&objs);
    assert_eq!(a, b);
    let keys: Vec<String> = a.services.iter().map(|s| s.key.to_string()).collect();
    assert_eq!(keys, ["my-apps/helloworld", "workshop/myfrontend:http"]);
}

/// Topology hints as the EndpointSlice controller writes them for `trafficDistribution:
/// PreferClose`: compared with this node's zone, and the zone-a node routes to zone a only
/// (kube-proxy's behaviour; before, a zone-a node spread over every zone).
#[test]
fn zone_hints_route_to_this_zone() {
    let mut slice = fixture("myfrontend-slice");
    for (i, zone) in ["eu-west-1a", "eu-west-1c", "eu-west-1b"]
        .iter()
        .enumerate()
    {
        slice = set(
            slice,
            &format!("/endpoints/{i}/hints"),
            json!({"forZones": [{"name": zone}]}),
        );
    }
    let svc = set(
        fixture("myfrontend-service"),
        "/spec/trafficDistribution",
        json!("PreferClose"),
    );
    let objs = [svc, slice.clone()];
    let in_zone = |zone: Option<&str>| {
        let options = K8sOptions {
            zone: zone.map(Into::into),
            ..node("n")
        };
        let (model, problems) = build_with(&objs, &options, None);
        assert_eq!(problems, []);
        let p = one(&model).clone();
        let (weights, _) = routing_weights(p.traffic_policy, &p.endpoints);
        p.endpoints
            .iter()
            .zip(weights)
            .filter(|(_, w)| *w > 0)
            .map(|(e, _)| e.addr.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(in_zone(Some("eu-west-1a")), ["192.168.7.8:9000"]);
    assert_eq!(in_zone(Some("eu-west-1c")), ["192.168.66.254:9000"]);
    // A zone no hint names, or no zone known: every endpoint (kube-proxy's fallback).
    assert_eq!(in_zone(Some("eu-west-1z")).len(), 3);
    assert_eq!(in_zone(None).len(), 3);
    // One endpoint without hints: hints are ignored.
    let partial = set(slice, "/endpoints/2/hints", json!({}));
    let (model, _) = build_with(
        &[fixture("myfrontend-service"), partial],
        &K8sOptions {
            zone: Some("eu-west-1a".into()),
            ..node("n")
        },
        None,
    );
    let (weights, _) = routing_weights(TrafficPolicy::Cluster, &one(&model).endpoints);
    assert_eq!(weights, [1, 1, 1]);
}

/// Dual-stack Services: `ipFamilies` decides the families served; an IPv6 slice beside the
/// IPv4 one gives the IPv6 endpoints (the snapshot routes each family to its own).
#[test]
fn ip_families_are_read() {
    let v6_slice = set(
        set(
            set(fixture("myfrontend-slice"), "/addressType", json!("IPv6")),
            "/metadata/name",
            json!("myfrontend-v6"),
        ),
        "/endpoints",
        json!([{"addresses": ["fd00::8"], "conditions": {"ready": true}}]),
    );
    let families = |v: Value| {
        let (model, problems) = build(&[v, fixture("myfrontend-slice"), v6_slice.clone()]);
        assert_eq!(problems, []);
        let p = one(&model);
        assert_eq!(p.endpoints.len(), 4);
        (p.families.v4, p.families.v6)
    };
    let svc = fixture("myfrontend-service");
    assert_eq!(families(svc.clone()), (true, false), "ipFamilies: [IPv4]");
    let dual = set(
        set(svc.clone(), "/spec/ipFamilies", json!(["IPv6", "IPv4"])),
        "/spec/ipFamilyPolicy",
        json!("PreferDualStack"),
    );
    assert_eq!(families(dual), (true, true));
    // Without ipFamilies: the clusterIP's family; without either: both.
    let mut bare = svc.clone();
    bare["spec"].as_object_mut().unwrap().remove("ipFamilies");
    bare["spec"].as_object_mut().unwrap().remove("clusterIPs");
    assert_eq!(families(bare.clone()), (true, false));
    bare["spec"].as_object_mut().unwrap().remove("clusterIP");
    assert_eq!(families(bare), (true, true));
}

/// `spec.externalIPs` (also on a ClusterIP Service, which has no nodePort), ingress IPs,
/// and `loadBalancerSourceRanges` as kube-proxy reads them: per the Service's families,
/// trimmed, a bad entry reported and left out.
#[test]
fn external_ips_and_source_ranges_are_read() {
    let svc = fixture("myfrontend-service");
    let svc = set(svc, "/spec/type", json!("ClusterIP"));
    let svc = set(svc, "/spec/ports/0/nodePort", Value::Null);
    let svc = set(
        svc,
        "/spec/externalIPs",
        json!(["192.0.2.7", "2001:db8::7", "bogus", "192.0.2.7"]),
    );
    let svc = set(
        svc,
        "/spec/loadBalancerSourceRanges",
        json!([" 10.0.0.0/8 ", "10.0.0.1", "2001:db8::/32"]),
    );
    let (model, problems) = build_with(std::slice::from_ref(&svc), &node("n1"), None);
    let p = one(&model);
    assert_eq!((p.node_port, p.node_port_allocated), (0, false));
    assert_eq!(
        p.addresses.external_ips,
        [ip("192.0.2.7")],
        "IPv4 Service: the IPv6 address is the other proxier's"
    );
    let ranges: Vec<String> = p
        .addresses
        .source_ranges
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(ranges, ["10.0.0.0/8", "2001:db8::/32"]);
    let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[0].contains("\"bogus\" is not an IP address"),
        "{messages:?}"
    );
    assert!(
        messages[1].contains("\"10.0.0.1\" is not a CIDR"),
        "{messages:?}"
    );
    // A ClusterIP Service without external IPs is not served at all.
    let plain = set(svc, "/spec/externalIPs", json!([]));
    let (model, _) = build_with(&[plain], &node("n1"), None);
    assert_eq!(model.services.len(), 0);
}

/// This node's primary addresses (`GetNodeHostIPs`): InternalIPs before ExternalIPs, the
/// first, then the first of the other family; only this node's Node object.
#[test]
fn node_primary_ips_like_get_node_host_ips() {
    let node = |name: &str, addresses: Value| -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name}, "status": {"addresses": addresses}}))
            .unwrap(),
        )
    };
    #[rustfmt::skip]
    let cases: &[(Value, &[&str])] = &[
        (json!([{"type": "ExternalIP", "address": "203.0.113.1"}, {"type": "InternalIP", "address": "10.0.0.5"},
                {"type": "InternalIP", "address": "10.0.0.6"}, {"type": "InternalIP", "address": "fd00::5"}]),
            &["10.0.0.5", "fd00::5"]),
        (json!([{"type": "InternalIP", "address": "fd00::5"}, {"type": "ExternalIP", "address": "203.0.113.1"}]),
            &["fd00::5", "203.0.113.1"]),
        (json!([{"type": "Hostname", "address": "node-a"}, {"type": "ExternalIP", "address": "203.0.113.1"}]),
            &["203.0.113.1"]),
        (json!([{"type": "Hostname", "address": "node-a"}, {"type": "InternalIP", "address": "not-an-ip"}]), &[]),
        (json!([]), &[]),
    ];
    for (addresses, want) in cases {
        let nodes = [
            node(
                "other",
                json!([{"type": "InternalIP", "address": "10.9.9.9"}]),
            ),
            node("me", addresses.clone()),
        ];
        let got = node_primary_ips(&nodes, Some("me"));
        let want: Vec<IpAddr> = want.iter().map(|s| ip(s)).collect();
        assert_eq!(got, want, "{addresses}");
    }
    let nodes = [node(
        "me",
        json!([{"type": "InternalIP", "address": "10.0.0.5"}]),
    )];
    assert!(node_primary_ips(&nodes, None).is_empty());
    assert!(node_primary_ips(&nodes, Some("someone-else")).is_empty());
}
