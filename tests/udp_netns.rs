//! UDP NodePorts across real interfaces, in network namespaces this test creates and removes
//! (198.18.0.0/15 only; removed on drop, even when a test fails), under the driver
//! `SLUICE_TEST_DRIVER` names. Needs root (skips loudly otherwise).
//!
//! - A node with two addresses on one interface and sluice on the wildcard address: each
//!   client's replies come from the address it sent to.
//! - `forwarding = "transparent"` for UDP: the pod sees the client's own IP and port, once
//!   the rules `sluice tproxy-rules` prints (UDP ones included) are applied on the node.

mod common;
use common::peers::is_root;
use common::udp::*;
use common::*;
use std::net::SocketAddr;
use std::process::Command;

const NODE_PORT: u16 = 30000;

/// A client's reply (text, source) if any, and the client's own address.
type Sent = (Option<(String, SocketAddr)>, SocketAddr);

/// Network namespaces named `{tag}-{suffix}`; deleted on drop.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn new(suffixes: &[&str]) -> Namespaces {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tag = format!("su{}-{nanos:x}", std::process::id());
        let mut ns = Namespaces(Vec::new());
        for s in suffixes {
            let name = format!("{tag}-{s}");
            // Registered for removal before it exists: a failure below still cleans up.
            ns.0.push(name.clone());
            run_ip(&["netns", "add", &name]);
            run_ip(&["-n", &name, "link", "set", "lo", "up"]);
        }
        ns
    }

    fn name(&self, i: usize) -> &str {
        &self.0[i]
    }

    /// A veth pair from `a` (named `a_if`, with `a_addr`) to `b` (`b_if`, `b_addr`), up.
    fn link(&self, (a, a_if, a_addr): (usize, &str, &str), (b, b_if, b_addr): (usize, &str, &str)) {
        let (na, nb) = (self.name(a), self.name(b));
        run_ip(&[
            "link", "add", a_if, "netns", na, "type", "veth", "peer", "name", b_if, "netns", nb,
        ]);
        for (ns, dev, addr) in [(na, a_if, a_addr), (nb, b_if, b_addr)] {
            run_ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            run_ip(&["-n", ns, "link", "set", dev, "up"]);
        }
    }

    fn ip(&self, i: usize, args: &[&str]) {
        let mut all = vec!["-n", self.name(i)];
        all.extend_from_slice(args);
        run_ip(&all);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// One UDP Service on NodePort 30000 with `extra` top-level and Service lines.
fn config(dir: &TempDir, top: &str, endpoints: &[SocketAddr], service: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "node_port_range = \"{NODE_PORT}-{NODE_PORT}\"\nworkers = 2\ncontrol_socket = \"{}\"\n{top}\n\
         [[service]]\nname = \"dns\"\nnamespace = \"netns\"\nprotocol = \"UDP\"\nport = 53\n\
         node_port = {NODE_PORT}\nendpoints = [{}]\n{service}\n",
        dir.path().join("ctl.sock").display(),
        eps.join(", ")
    )
}

/// A node with two addresses on its one interface (198.18.20.1 and .11), a client behind a
/// veth (198.18.20.2), sluice listening on the wildcard address: a client's flows to each
/// address are answered from that address (IP_PKTINFO), by a connected client socket too
/// (the kernel drops a reply from any other address), over a routed interface rather than
/// loopback.
#[test]
fn replies_leave_from_the_node_address_each_client_used() {
    if !is_root() {
        eprintln!("SKIPPED: network namespaces need root");
        return;
    }
    let ns = Namespaces::new(&["c", "n"]);
    let (client_ns, node_ns) = (ns.name(0).to_owned(), ns.name(1).to_owned());
    ns.link((0, "c0", "198.18.20.2/24"), (1, "n0", "198.18.20.1/24"));
    ns.ip(1, &["addr", "add", "198.18.20.11/24", "dev", "n0"]);
    let pod_port = free_udp_port();
    let pod = in_netns(&node_ns, move || {
        UdpPod::start(pod_addr("127.0.0.2", pod_port), "a", 1)
    });
    let dir = TempDir::new("udp-netns");
    let text = config(&dir, "", &[pod.addr], "");
    let mut sluice = here_in_netns(&node_ns, || Sluice::run(&text));
    let addresses: Vec<SocketAddr> = ["198.18.20.1", "198.18.20.11"]
        .iter()
        .map(|a| SocketAddr::new(a.parse().unwrap(), NODE_PORT))
        .collect();
    let first = addresses[0];
    let probe_ns = client_ns.clone();
    sluice.wait_until("the NodePort answers the client namespace", move || {
        in_netns(&probe_ns, move || {
            ask(&client("198.18.20.2"), first, b"probe").is_some()
        })
    });

    let outcome = in_netns(&client_ns, move || {
        let mut wrong = Vec::new();
        for i in 0..40 {
            let node = addresses[i % 2];
            // Unconnected: the reply's source is read.
            let c = client("198.18.20.2");
            match ask(&c, node, b"q") {
                Some((_, from)) if from == node => {}
                other => wrong.push(format!("flow {i} to {node}: {other:?}")),
            }
            // Connected: only a reply from `node` itself is delivered.
            let c = client("198.18.20.2");
            c.connect(node).unwrap();
            c.send(b"q").unwrap();
            let mut buf = [0u8; 64];
            if c.recv(&mut buf).is_err() {
                wrong.push(format!("connected flow {i} to {node}: no reply"));
            }
        }
        wrong
    });
    assert!(outcome.is_empty(), "{outcome:#?}");
    drop(sluice);
    drop(pod);
}

/// `forwarding = "transparent"` on a UDP Service: the flow's upstream socket leaves from
/// the client's own IP and port. Without the node rules the pod's reply (addressed to the
/// client) never reaches sluice; with the rules `sluice tproxy-rules` prints — which name
/// UDP — applied in the node namespace, the reply comes back through the NodePort, and the
/// pod saw the client's address and port on every datagram.
///
/// ```text
///  client ns               node ns (sluice)                        pod ns
///  198.18.21.2 ──veth── 198.18.21.1 | 198.18.22.1 ──veth── 198.18.22.2 (default via .22.1)
/// ```
#[test]
fn transparent_udp_pod_sees_the_client_address_and_port() {
    if !is_root() {
        eprintln!("SKIPPED: transparent forwarding needs root (namespaces, CAP_NET_ADMIN)");
        return;
    }
    let ns = Namespaces::new(&["c", "n", "p"]);
    let (client_ns, node_ns, pod_ns) = (
        ns.name(0).to_owned(),
        ns.name(1).to_owned(),
        ns.name(2).to_owned(),
    );
    ns.link((0, "c0", "198.18.21.2/24"), (1, "n0", "198.18.21.1/24"));
    ns.link((1, "n1", "198.18.22.1/24"), (2, "p0", "198.18.22.2/24"));
    ns.ip(0, &["route", "add", "default", "via", "198.18.21.1"]);
    // The pod side of transparent forwarding: replies to clients go back through the node.
    ns.ip(2, &["route", "add", "default", "via", "198.18.22.1"]);
    let pod_port = free_udp_port();
    let pod = in_netns(&pod_ns, move || {
        UdpPod::start(pod_addr("198.18.22.2", pod_port), "pod", 1)
    });
    let dir = TempDir::new("udp-tproxy");
    let text = config(
        &dir,
        "listen_addresses = [\"198.18.21.1\"]",
        &[pod.addr],
        "forwarding = \"transparent\"",
    );
    let sluice = here_in_netns(&node_ns, || Sluice::run(&text));
    wait_for("sluice to serve", SOON, || {
        sluice.stderr().contains("sluice is serving").then_some(())
    });
    let node = SocketAddr::new("198.18.21.1".parse().unwrap(), NODE_PORT);
    let in_client = |f: fn(SocketAddr) -> Sent| in_netns(&client_ns, move || f(node));
    let send_one = |node: SocketAddr| {
        let c = client("198.18.21.2");
        let me = c.local_addr().unwrap();
        (ask(&c, node, b"who am i"), me)
    };

    // 1. No node rules: the pod gets the datagram from the client's own address, but its
    //    reply, addressed to the client, is not delivered to sluice's socket.
    let (reply, me) = in_client(send_one);
    assert_eq!(reply, None, "answered without the node rules");
    wait_for("the pod to receive the datagram", SOON, || {
        pod.received()
            .iter()
            .any(|(from, _)| *from == me)
            .then_some(())
    });

    // 2. The rules, as `sluice tproxy-rules` prints them, run inside the node namespace.
    let script = tproxy_rules(sluice.config_path.as_ref().unwrap());
    assert!(
        script.contains("meta l4proto udp socket transparent 1"),
        "{script}"
    );
    apply_in_netns(&node_ns, &script);

    // 3. With the rules: answered from the NodePort, and the pod saw this client's address
    //    and port, on several flows.
    for _ in 0..5 {
        let (reply, me) = in_client(send_one);
        let (text, from) = reply.expect("answered with the node rules");
        assert_eq!(from, node, "the reply left from another address");
        assert_eq!(name(&text), "pod");
        assert!(
            pod.received().iter().any(|(from, _)| *from == me),
            "the pod never saw {me}: {:?}",
            pod.received()
        );
    }
    assert!(
        pod.received().iter().all(|(from, _)| from.ip() == me.ip()),
        "a datagram reached the pod from the node's address: {:?}",
        pod.received()
    );
    drop(sluice);
    drop(pod);
    drop(ns);
}

/// `forwarding = "transparent"` across `ctl upgrade`: the flow's upstream socket
/// (IP_TRANSPARENT, bound to the client's own address and port) is handed to the new
/// process and adopted there (each new process logs it), and through 3 upgrades every
/// datagram is answered and the pod sees only the client's exact address and port.
/// (Before the flows were handed over this held too — a new upstream socket binds the same
/// client address, SO_REUSEADDR — so this guards the passed transparent socket, not a
/// difference from then.)
#[test]
fn transparent_udp_flow_keeps_the_clients_address_and_port_across_upgrades() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    if !is_root() {
        eprintln!("SKIPPED: transparent forwarding needs root (namespaces, CAP_NET_ADMIN)");
        return;
    }
    let ns = Namespaces::new(&["c", "n", "p"]);
    let (client_ns, node_ns, pod_ns) = (
        ns.name(0).to_owned(),
        ns.name(1).to_owned(),
        ns.name(2).to_owned(),
    );
    ns.link((0, "c0", "198.18.23.2/24"), (1, "n0", "198.18.23.1/24"));
    ns.link((1, "n1", "198.18.24.1/24"), (2, "p0", "198.18.24.2/24"));
    ns.ip(0, &["route", "add", "default", "via", "198.18.23.1"]);
    ns.ip(2, &["route", "add", "default", "via", "198.18.24.1"]);
    let pod_port = free_udp_port();
    let pod = in_netns(&pod_ns, move || {
        UdpPod::start(pod_addr("198.18.24.2", pod_port), "pod", 1)
    });
    let dir = TempDir::new("udp-tproxy-upgrade");
    let text = config(
        &dir,
        "listen_addresses = [\"198.18.23.1\"]\ndrain_timeout = \"2s\"",
        &[pod.addr],
        "forwarding = \"transparent\"\nidle_timeout = \"60s\"",
    );
    let sluice = here_in_netns(&node_ns, || Sluice::run(&text));
    wait_for("sluice to serve", SOON, || {
        sluice.stderr().contains("sluice is serving").then_some(())
    });
    apply_in_netns(
        &node_ns,
        &tproxy_rules(sluice.config_path.as_ref().unwrap()),
    );
    let node = SocketAddr::new("198.18.23.1".parse().unwrap(), NODE_PORT);

    // One client socket (one flow), asking in a loop until stopped (at most 60 s).
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, lost) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (stop2, answered2, lost2) = (stop.clone(), answered.clone(), lost.clone());
    let client_thread = std::thread::spawn(move || {
        in_netns(&client_ns, move || {
            let c = client("198.18.23.2");
            let me = c.local_addr().unwrap();
            let start = std::time::Instant::now();
            while !stop2.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
                match ask(&c, node, b"q") {
                    Some((_, from)) if from == node => answered2.fetch_add(1, Ordering::Relaxed),
                    _ => lost2.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(2));
            }
            me
        })
    });
    let progress = |n: u64| {
        let target = answered.load(Ordering::Relaxed) + n;
        wait_for("answers", SOON, || {
            (answered.load(Ordering::Relaxed) >= target).then_some(())
        });
    };
    progress(50);
    let sock = dir.path().join("ctl.sock");
    // The new processes sluice starts: killed by PID when the test ends, however it ends.
    struct Pids(Vec<u32>);
    impl Drop for Pids {
        fn drop(&mut self) {
            for pid in &self.0 {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
    let mut pids = Pids(Vec::new());
    for i in 0..3 {
        let out = ctl(&sock, &["-o", "json", "upgrade"]);
        assert!(
            out.status.success(),
            "upgrade {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        pids.0.push(v["result"]["new_pid"].as_u64().unwrap() as u32);
        progress(50);
    }
    stop.store(true, Ordering::Relaxed);
    let me = client_thread.join().unwrap();
    drop(pids);
    // Every new process took the flow over (the new processes log to the same stderr).
    let log = sluice.stderr();
    let adopted = log
        .lines()
        .filter(|l| l.contains("UDP flows taken over") && l.contains("adopted=1"))
        .count();
    assert_eq!(adopted, 3, "{log}");
    let received = pod.received();
    let sources: std::collections::BTreeSet<SocketAddr> =
        received.iter().map(|(from, _)| *from).collect();
    let (answered, lost) = (
        answered.load(Ordering::Relaxed),
        lost.load(Ordering::Relaxed),
    );
    assert_eq!(lost, 0, "{lost} of {} unanswered", answered + lost);
    assert_eq!(
        sources,
        [me].into_iter().collect(),
        "the pod saw other sources than the client {me}"
    );
    eprintln!("3 upgrades: {answered} answered, the pod saw only {me}");
    drop(sluice);
    drop(pod);
    drop(ns);
}
