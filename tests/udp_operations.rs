//! Operating UDP NodePorts end to end, under the driver `SLUICE_TEST_DRIVER` names:
//! `loadBalancerSourceRanges` on UDP, `sluice ctl flows`, and reloads under UDP load.
//! Peers and set-up: `common::udp` (pods on 127.0.0.2/3/4, a wildcard listener).

mod common;
use common::udp::*;
use common::*;
use std::net::SocketAddr;

/// A client outside the Service's `load_balancer_source_ranges` (applied at the NodePort
/// with `source_ranges_on_node_ports`) gets nothing: its datagrams never reach a pod, are
/// counted as dropped (`source_range`) and as refused for the Service, and logged (rate
/// limited, naming the client); a client inside the
/// ranges is served by the same NodePort.
#[test]
fn a_datagram_from_outside_the_source_ranges_is_dropped_and_counted() {
    let pod_port = free_udp_port();
    let pod = UdpPod::start(pod_addr("127.0.0.2", pod_port), "a", 1);
    let setup = Setup::new();
    let config = setup.config(
        "source_ranges_on_node_ports = true",
        &[pod.addr],
        "load_balancer_source_ranges = [\"127.0.0.5/32\"]",
    );
    let mut sluice = Sluice::run(&config);
    let node = setup.node();
    let inside = client("127.0.0.5");
    sluice.wait_until("a client inside the ranges is answered", || {
        ask(&inside, node, b"probe").is_some()
    });
    let before = pod.received().len();

    let outside = client("127.0.0.6");
    for i in 0..5 {
        assert_eq!(
            ask(&outside, node, format!("out {i}").as_bytes()),
            None,
            "a client outside the ranges was answered"
        );
    }
    // Counted: every one of the five, for the Service too.
    wait_for("the five drops counted", SOON, || {
        (setup.metric("sluice_udp_datagrams_dropped_total{reason=\"source_range\"}") == 5)
            .then_some(())
    });
    assert_eq!(
        setup.metric("sluice_service_source_ranges_refused_total{"),
        5
    );
    // Logged, naming the client, once for the five (at most one line per worker per 10 s).
    let lines: Vec<String> = sluice
        .stderr()
        .lines()
        .filter(|l| l.contains("datagram dropped: the client is outside"))
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 1, "one rate-limited line: {lines:?}");
    assert!(
        lines[0].contains("client=127.0.0.6") && lines[0].contains("refused=1"),
        "{}",
        lines[0]
    );
    // The inside client is still served, and the pod never saw an outside datagram.
    assert!(ask(&inside, node, b"again").is_some());
    let seen = pod.received();
    assert_eq!(seen.len(), before + 1, "only the inside client's datagram");
    assert!(seen.iter().all(|(_, bytes)| !bytes.starts_with(b"out")));
}

/// `sluice ctl flows`: every live UDP flow and TCP connection with its client, the node
/// address it reached, its endpoint, bytes and datagrams each way and its worker, as the
/// clients made them; a Service filter; a limit that still counts all; an unknown Service
/// refused.
#[test]
fn ctl_flows_lists_the_live_udp_flows_and_tcp_connections() {
    let pod_port = free_udp_port();
    let pods: Vec<UdpPod> = [("127.0.0.2", "a"), ("127.0.0.3", "b")]
        .iter()
        .map(|(ip, n)| UdpPod::start(pod_addr(ip, pod_port), n, 1))
        .collect();
    let echo = EchoServer::start("127.0.0.4");
    let setup = Setup::new();
    let tcp_port = free_port();
    let (low, high) = (setup.node_port.min(tcp_port), setup.node_port.max(tcp_port));
    let udp_eps: Vec<String> = pods.iter().map(|p| format!("\"{}\"", p.addr)).collect();
    let config = format!(
        "node_port_range = \"{low}-{high}\"\nworkers = 2\ncontrol_socket = \"{sock}\"\n\
         [[service]]\nname = \"dns\"\nnamespace = \"itest\"\nprotocol = \"UDP\"\nport = 53\n\
         node_port = {np}\nendpoints = [{eps}]\n\
         [[service]]\nname = \"web\"\nnamespace = \"itest\"\nport = 80\nnode_port = {tcp_port}\n\
         endpoints = [\"{echo}\"]\n",
        sock = setup.sock().display(),
        np = setup.node_port,
        eps = udp_eps.join(", "),
        echo = echo.addr,
    );
    let mut sluice = Sluice::run(&config);
    let node = setup.node();
    // Three flows, two datagrams each way: "q0" (2 bytes) and "q00" (3 bytes) out.
    let clients: Vec<std::net::UdpSocket> = (0..3).map(|_| client("127.0.0.1")).collect();
    sluice.wait_until("the UDP NodePort answers", || {
        ask(&clients[0], node, b"q0").is_some()
    });
    let mut replies = vec![(String::new(), 0usize); 3];
    for (i, c) in clients.iter().enumerate() {
        if i > 0 {
            let (r, _) = ask(c, node, b"q0").expect("a reply");
            replies[i].1 += r.len();
        }
        let (r, _) = ask(c, node, b"q00").expect("a reply");
        replies[i] = (name(&r).to_owned(), replies[i].1 + r.len());
    }
    // The first client's first reply was read by the readiness wait: "NAME 2".
    replies[0].1 += replies[0].0.len() + 2;
    let mut tcp = connect(SocketAddr::from(([127, 0, 0, 1], tcp_port))).unwrap();
    echo_roundtrip(&mut tcp, b"hello").unwrap();

    let list = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["-o", "json", "flows"];
        all.extend_from_slice(args);
        serde_json::from_str::<serde_json::Value>(&ctl_ok(&setup.sock(), &all)).unwrap()["result"]
            .clone()
    };
    let all = list(&[]);
    assert_eq!(all["total"], 4, "{all:#}");
    assert_eq!(
        (all["workers"].as_u64(), all["workers_answered"].as_u64()),
        (Some(2), Some(2))
    );
    let flows = all["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 4);
    // UDP first.
    assert_eq!(
        flows
            .iter()
            .map(|f| f["protocol"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["UDP", "UDP", "UDP", "TCP"]
    );
    for (c, (pod, reply_bytes)) in clients.iter().zip(&replies) {
        let me = c.local_addr().unwrap().to_string();
        let f = flows
            .iter()
            .find(|f| f["client"] == me.as_str())
            .unwrap_or_else(|| panic!("no flow of {me}: {all:#}"));
        let pod_addr = pods.iter().find(|p| name_of(p) == pod).unwrap().addr;
        assert_eq!(f["service"], "itest/dns");
        assert_eq!(f["node"], node.to_string().as_str());
        assert_eq!(f["endpoint"], pod_addr.to_string().as_str());
        assert_eq!(f["datagrams_to_endpoint"], 2, "{f:#}");
        assert_eq!(f["bytes_to_endpoint"], 5, "{f:#}");
        assert_eq!(f["datagrams_to_client"], 2, "{f:#}");
        assert_eq!(
            f["bytes_to_client"].as_u64(),
            Some(*reply_bytes as u64),
            "{f:#}"
        );
        assert!(f["worker"].as_u64().unwrap() < 2);
        assert!(f["age_seconds"].as_f64().unwrap() >= f["idle_seconds"].as_f64().unwrap());
    }
    let t = &flows[3];
    assert_eq!(t["client"], tcp.local_addr().unwrap().to_string().as_str());
    assert_eq!(t["node"], format!("127.0.0.1:{tcp_port}").as_str());
    assert_eq!(t["endpoint"], echo.addr.to_string().as_str());
    assert_eq!(
        (
            t["bytes_to_endpoint"].as_u64(),
            t["bytes_to_client"].as_u64()
        ),
        (Some(5), Some(5))
    );
    assert!(t["datagrams_to_endpoint"].is_null());
    assert_eq!(t["service"], "itest/web");

    // One Service: its flows only.
    let dns = list(&["itest/dns"]);
    assert_eq!(dns["total"], 3);
    assert!(dns["flows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["protocol"] == "UDP"));
    // A limit lists fewer and still counts all.
    let two = list(&["--limit", "2"]);
    assert_eq!(
        (
            two["total"].as_u64(),
            two["flows"].as_array().unwrap().len()
        ),
        (Some(4), 2)
    );
    let human = ctl_ok(&setup.sock(), &["flows", "--limit", "2"]);
    assert!(human.starts_with("PROTO"), "{human}");
    assert!(
        human.contains("4 flows and connections, the first 2 shown"),
        "{human}"
    );
    // An unknown Service is an error, not an empty list.
    let out = ctl(&setup.sock(), &["flows", "itest/nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{out:?}"
    );
    drop(tcp);
}

fn name_of(pod: &UdpPod) -> &'static str {
    if pod.addr.ip().to_string() == "127.0.0.2" {
        "a"
    } else {
        "b"
    }
}

/// Reloads under UDP load: four clients send request after request on their flows while
/// the configuration is reloaded 20 times — an endpoint added and removed, a second UDP
/// Service (and its NodePort listeners) added and removed, the idle timeout changed — none
/// of which touches the flows' endpoints. No datagram is lost and every flow keeps its pod.
#[test]
fn twenty_reloads_under_udp_load_lose_no_datagram_and_move_no_flow() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let pod_port = free_udp_port();
    let pods = three_pods(pod_port);
    let extra_pod = UdpPod::start(pod_addr("127.0.0.5", pod_port), "d", 1);
    let setup = Setup::new();
    let other_port = free_udp_port();
    let (low, high) = (
        setup.node_port.min(other_port),
        setup.node_port.max(other_port),
    );
    let config = |i: usize| {
        let mut eps: Vec<String> = pods.iter().map(|p| format!("\"{}\"", p.addr)).collect();
        if i % 2 == 1 {
            eps.push(format!("\"{}\"", extra_pod.addr));
        }
        let mut text = format!(
            "node_port_range = \"{low}-{high}\"\nworkers = 2\ncontrol_socket = \"{sock}\"\n\
             [[service]]\nname = \"dns\"\nnamespace = \"itest\"\nprotocol = \"UDP\"\nport = 53\n\
             node_port = {np}\nendpoints = [{eps}]\nidle_timeout = \"{idle}s\"\n",
            sock = setup.sock().display(),
            np = setup.node_port,
            eps = eps.join(", "),
            idle = 30 + i,
        );
        if i % 3 == 1 {
            text.push_str(&format!(
                "[[service]]\nname = \"other\"\nnamespace = \"itest\"\nprotocol = \"UDP\"\n\
                 port = 53\nnode_port = {other_port}\nendpoints = [\"{}\"]\n",
                extra_pod.addr
            ));
        }
        text
    };
    let mut sluice = Sluice::run(&config(0));
    let node = setup.node();
    let probe = client("127.0.0.1");
    sluice.wait_until("the UDP NodePort answers", || {
        ask(&probe, node, b"probe").is_some()
    });

    let stop = Arc::new(AtomicBool::new(false));
    // Each flow is opened (and its pod chosen) before the first reload.
    let (opened_tx, opened) = std::sync::mpsc::channel::<()>();
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let stop = Arc::clone(&stop);
            let opened_tx = opened_tx.clone();
            std::thread::spawn(move || {
                let c = client("127.0.0.1");
                c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
                let mut pods = std::collections::BTreeSet::new();
                let (mut sent, mut lost) = (1u32, 0u32);
                match ask(&c, node, b"first") {
                    Some((reply, _)) => {
                        pods.insert(name(&reply).to_owned());
                    }
                    None => lost += 1,
                }
                let _ = opened_tx.send(());
                // Bounded: until the reloads are done, and at most 100,000 datagrams.
                while !stop.load(Ordering::Relaxed) && sent < 100_000 {
                    sent += 1;
                    match ask(&c, node, format!("n{sent}").as_bytes()) {
                        Some((reply, _)) => {
                            pods.insert(name(&reply).to_owned());
                        }
                        None => lost += 1,
                    }
                }
                (sent, lost, pods)
            })
        })
        .collect();
    drop(opened_tx);
    for _ in 0..4 {
        opened
            .recv_timeout(SOON)
            .expect("every flow opened before the reloads");
    }
    for i in 1..=20 {
        setup.reload(&sluice, &config(i));
    }
    stop.store(true, Ordering::Relaxed);
    for (i, s) in senders.into_iter().enumerate() {
        let (sent, lost, pods) = s.join().unwrap();
        assert_eq!(lost, 0, "flow {i}: {lost} of {sent} datagrams lost");
        assert_eq!(pods.len(), 1, "flow {i} moved between pods: {pods:?}");
        assert!(
            sent > 20,
            "flow {i}: only {sent} datagrams during the reloads"
        );
        assert!(!pods.contains("d"), "flow {i} went to the added pod");
    }
    sluice.assert_alive();
}
