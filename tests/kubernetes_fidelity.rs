//! Kubernetes fidelity with kube-proxy, end to end against the fake API server
//! (tests/common/fake_api.rs): topology hints and this node's zone from its Node object,
//! dual-stack Services, and problems posted as Events. (kube-proxy's own table-driven cases
//! are unit tests: `table::usable::tests`.)

mod common;
use common::fake_api::{FakeApi, Kind};
use common::kube::*;
use common::*;
use serde_json::json;
use std::net::SocketAddr;

/// Topology-aware routing end to end: the Service's slice carries the zone hints the
/// EndpointSlice controller writes for `trafficDistribution: PreferClose`; this node's zone
/// is read from its Node object (watched by name), and traffic follows the label as it
/// changes. Without a label (or a zone no hint names), every endpoint is used.
#[test]
fn topology_hints_follow_this_nodes_zone() {
    let (_pods, pod_port) = pods(&["127.0.0.2", "127.0.0.3"]);
    let p = free_port();
    let api = FakeApi::start_new();
    let mut svc = frontend_service("workshop", "myfrontend", p);
    svc["spec"]["trafficDistribution"] = json!("PreferClose");
    api.apply(svc);
    let mut sl = slice(
        "workshop",
        "myfrontend",
        pod_port,
        &[ready("127.0.0.2"), ready("127.0.0.3")],
    );
    sl["endpoints"][0]["hints"] = json!({"forZones": [{"name": "zone-a"}]});
    sl["endpoints"][1]["hints"] = json!({"forZones": [{"name": "zone-b"}]});
    api.apply(sl);
    let node = |zone: Option<&str>| {
        let mut labels = json!({"kubernetes.io/hostname": "node-a"});
        if let Some(z) = zone {
            labels["topology.kubernetes.io/zone"] = json!(z);
        }
        json!({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": "node-a", "labels": labels}})
    };
    api.apply(node(Some("zone-a")));
    // Another node's object must not be read as this node's.
    api.apply(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b",
        "labels": {"topology.kubernetes.io/zone": "zone-b"}}}),
    );
    let mut n = start_node(&api, (p, p), &[], Launch::default());
    let addr = node_addr(p);
    wait_answers(&mut n, addr, &["127.0.0.2"]);
    api.apply(node(Some("zone-b")));
    wait_answers(&mut n, addr, &["127.0.0.3"]);
    api.apply(node(None));
    wait_answers(&mut n, addr, &["127.0.0.2", "127.0.0.3"]);
    // sluice asked for its own Node only.
    let reqs = api.requests();
    assert!(
        reqs.iter().any(|r| r.starts_with("GET /api/v1/nodes?")
            && r.contains("fieldSelector=metadata.name%3Dnode-a")),
        "{reqs:?}"
    );
}

/// Dual-stack: a Service with `ipFamilies: [IPv4, IPv6]` and one slice per family. An
/// IPv4 client reaches only the IPv4 pod, an IPv6 client only the IPv6 pod; with
/// `ipFamilies: [IPv4]` (SingleStack) IPv6 clients find no endpoint. describe shows the
/// families as kubectl does.
#[test]
fn dual_stack_services_route_each_family_to_its_own_pods() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: no IPv6 loopback on this machine");
        return;
    }
    let v4 = NameServer::start("127.0.0.2", "v4-pod");
    let v6 = NameServer::start("::1", "v6-pod");
    let p = free_port();
    let api = FakeApi::start_new();
    let mut svc = frontend_service("workshop", "myfrontend", p);
    svc["spec"]["ipFamilyPolicy"] = json!("PreferDualStack");
    svc["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
    svc["spec"]["clusterIPs"] = json!(["10.100.13.81", "fd00:10:96::7"]);
    api.apply(svc.clone());
    let mut s4 = slice(
        "workshop",
        "myfrontend",
        v4.addr.port(),
        &[ready("127.0.0.2")],
    );
    s4["endpoints"][0]["addresses"] = json!([v4.addr.ip().to_string()]);
    api.apply(s4);
    let mut s6 = slice(
        "workshop",
        "myfrontend",
        v6.addr.port(),
        &[ready("127.0.0.2")],
    );
    s6["metadata"]["name"] = json!("myfrontend-v6abc");
    s6["addressType"] = json!("IPv6");
    s6["endpoints"][0]["addresses"] = json!(["::1"]);
    api.apply(s6);
    let mut n = start_node_on(
        &api,
        (p, p),
        "\"127.0.0.1\", \"::1\"",
        &[],
        Launch::default(),
    );
    let at4 = node_addr(p);
    let at6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, p));
    n.sluice.wait_until("both families served", || {
        ask_name(at4).is_ok() && ask_name(at6).is_ok()
    });
    for _ in 0..20 {
        assert_eq!(ask_name(at4).unwrap(), "v4-pod");
        assert_eq!(ask_name(at6).unwrap(), "v6-pod");
    }
    let describe = ctl_ok(
        &n.sock,
        &["describe", "service", "myfrontend", "-n", "workshop"],
    );
    for line in [
        "IP Family Policy:         PreferDualStack\n",
        "IP Families:              IPv4,IPv6\n",
        "IPs:                      10.100.13.81,fd00:10:96::7\n",
    ] {
        assert!(describe.contains(line), "{line:?} not in\n{describe}");
    }
    // SingleStack IPv4 (and the policy unset: describe leaves the line out).
    svc["spec"]["ipFamilies"] = json!(["IPv4"]);
    svc["spec"]["clusterIPs"] = json!(["10.100.13.81"]);
    svc["spec"]
        .as_object_mut()
        .unwrap()
        .remove("ipFamilyPolicy");
    api.apply(svc);
    n.sluice
        .wait_until("IPv6 clients find no endpoint", || ask_name(at6).is_err());
    assert_eq!(ask_name(at4).unwrap(), "v4-pod");
    let describe = ctl_ok(
        &n.sock,
        &["describe", "service", "myfrontend", "-n", "workshop"],
    );
    assert!(!describe.contains("IP Family Policy"), "{describe}");
    assert!(
        describe.contains("IP Families:              IPv4\n"),
        "{describe}"
    );
}

/// A bad `sluice.io/*` annotation is posted as a Kubernetes Event on the Service (what
/// kube-rs's Recorder sends: events.k8s.io/v1, regarding the Service, reason and note),
/// once, and `describe` shows it in kubectl's Event columns.
#[test]
fn a_bad_annotation_is_posted_as_an_event_on_the_service() {
    let (_pods, pod_port) = pods(&["127.0.0.2"]);
    let p = free_port();
    let api = frontend_api(p, pod_port, &[ready("127.0.0.2")]);
    let mut n = start_node(&api, (p, p), &[], Launch::default());
    n.sluice.wait_ready_name(node_addr(p));
    let mut svc = api
        .get(Kind::Service, "workshop", "myfrontend")
        .expect("the Service");
    svc["metadata"]["annotations"]["sluice.io/policy"] = json!("fastest");
    api.apply(svc.clone());
    let event = wait_for("an Event posted", SOON, || {
        api.events().into_iter().find(|e| e.method == "POST")
    });
    assert_eq!(event.namespace, "workshop");
    let b = &event.body;
    assert_eq!(b["type"], "Warning", "{b}");
    assert_eq!(b["reason"], "InvalidAnnotation", "{b}");
    assert_eq!(b["regarding"]["kind"], "Service", "{b}");
    assert_eq!(b["regarding"]["name"], "myfrontend", "{b}");
    assert_eq!(b["regarding"]["uid"], svc["metadata"]["uid"], "{b}");
    assert_eq!(b["reportingController"], "sluice", "{b}");
    assert_eq!(b["reportingInstance"], "node-a", "{b}");
    let note = b["note"].as_str().unwrap_or_default();
    assert!(note.contains("sluice.io/policy \"fastest\""), "{note}");
    // Still served (the annotation keeps its last good value), and shown by describe.
    assert_eq!(ask_name(node_addr(p)).unwrap(), "127.0.0.2");
    let describe = ctl_ok(
        &n.sock,
        &["describe", "service", "myfrontend", "-n", "workshop"],
    );
    assert!(
        describe.contains("Events:\n  Type     Reason             Age"),
        "{describe}"
    );
    assert!(
        describe.contains("  Warning  InvalidAnnotation  "),
        "{describe}"
    );
    // Other changes to the Service while the problem lasts post nothing more.
    svc["metadata"]["labels"]["tier"] = json!("web");
    api.apply(svc);
    let before = api.events().len();
    n.sluice.wait_until("the label change is applied", || {
        ctl_ok(
            &n.sock,
            &["describe", "service", "myfrontend", "-n", "workshop"],
        )
        .contains("tier=web")
    });
    assert_eq!(api.events().len(), before, "{:?}", api.events());
}
