//! Manifest mode end to end (`sluice run --manifests DIR`): the seeds' Service YAML
//! verbatim with EndpointSlices as the controller writes them, traffic to the pods, the
//! named targetPort and an allocated nodePort, reloads that follow the directory (pods
//! added, terminating pods as the fallback, a broken file, a deleted Service), the
//! healthCheckNodePort's bytes and that it listens before its NodePort, and `describe`.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Copy)]
enum Pod {
    Ready,
    Terminating,
    /// Shutting down and failing its readiness probe: neither ready nor serving.
    Gone,
}

/// An EndpointSlice as the EndpointSlice controller writes it: one port, pods as
/// (IP, node, state).
fn slice(
    service: &str,
    ns: &str,
    suffix: &str,
    port: (&str, u16),
    pods: &[(&str, &str, Pod)],
) -> String {
    let mut endpoints = String::new();
    for (i, (ip, node, state)) in pods.iter().enumerate() {
        let (ready, serving, terminating) = match state {
            Pod::Ready => (true, true, false),
            Pod::Terminating => (false, true, true),
            Pod::Gone => (false, false, true),
        };
        endpoints.push_str(&format!(
            "- addresses:\n  - {ip}\n  conditions:\n    ready: {ready}\n    serving: {serving}\n    terminating: {terminating}\n  nodeName: {node}\n  targetRef:\n    kind: Pod\n    name: {service}-6d4cf56db6-{i}x{suffix}\n    namespace: {ns}\n    uid: 5b1f{i}c1e-0d43-4b7e-9a55-2f63c0e1a7{i}d\n  zone: zone-a\n"
        ));
    }
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  generateName: {service}-\n  name: {service}-{suffix}\n  namespace: {ns}\n  labels:\n    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io\n    kubernetes.io/service-name: {service}\n  ownerReferences:\n  - apiVersion: v1\n    blockOwnerDeletion: true\n    controller: true\n    kind: Service\n    name: {service}\n    uid: 2a6c3e0f-6f0b-4c4e-8f5e-0c9d1b7a3e21\naddressType: IPv4\nports:\n- name: \"{}\"\n  port: {}\n  protocol: TCP\nendpoints:\n{endpoints}",
        port.0, port.1
    )
}

/// Node settings for manifest mode: loopback only, a control socket in `dir`.
fn node_settings(dir: &TempDir, range: &str) -> (PathBuf, PathBuf) {
    let sock = dir.path().join("ctl.sock");
    let toml = dir.write(
        "node.toml",
        &format!(
            "listen_addresses = [\"127.0.0.1\"]\nworkers = 2\nnode_port_range = \"{range}\"\ncontrol_socket = \"{}\"\n",
            sock.display()
        ),
    );
    (toml, sock)
}

fn run_manifests(dir: &TempDir, toml: &Path, node_name: &str) -> Sluice {
    Sluice::spawn(
        &[
            "run",
            "--manifests",
            &dir.path().display().to_string(),
            "--config",
            &toml.display().to_string(),
            "--node-name",
            node_name,
        ],
        Launch::default(),
    )
}

/// Names of the pods that answered `n` connections (stops early once `all` answered).
fn answering(node: SocketAddr, n: usize, all: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        seen.insert(ask_name(node).expect("request through sluice answered"));
        if seen.len() == all {
            break;
        }
    }
    seen
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The seeds as written: `myfrontend` on nodePort 30000 in front of three pods on
/// 127.0.0.{2,3,4}:9000, and `helloworld` with `targetPort: http-server` and no nodePort.
/// Fixed ports, so it runs in a private network namespace when it can (like the demo).
#[test]
fn seeds_verbatim_serve_their_pods() {
    match in_private_netns(seeds_scenario) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("NOTE: no private network namespace ({e}); running on the host");
            seeds_scenario();
        }
    }
}

fn seeds_scenario() {
    let pods: Vec<Backend> = (2..=4)
        .map(|i| {
            let addr: SocketAddr = format!("127.0.0.{i}:9000").parse().unwrap();
            NameServer::start_at(addr, &format!("frontend-{i}"))
        })
        .collect();
    let hello = NameServer::start("127.0.0.5", "helloworld-pod");
    let dir = TempDir::new("manifests");
    dir.write(
        "myfrontend-service.yaml",
        include_str!("fixtures/k8s/myfrontend-service.yaml"),
    );
    dir.write(
        "myfrontend-slice.yaml",
        &slice(
            "myfrontend",
            "workshop",
            "x7k2q",
            ("http", 9000),
            &[
                ("127.0.0.2", "node-a", Pod::Ready),
                ("127.0.0.3", "node-b", Pod::Ready),
                ("127.0.0.4", "node-c", Pod::Ready),
            ],
        ),
    );
    dir.write(
        "helloworld-service-nodeport.yaml",
        include_str!("fixtures/k8s/helloworld-service-nodeport.yaml"),
    );
    // The named targetPort resolves to the port the slice gives (the pod's `http-server`).
    dir.write(
        "helloworld-slice.yaml",
        &slice(
            "helloworld",
            "default",
            "9xq4w",
            ("", hello.addr.port()),
            &[("127.0.0.5", "node-a", Pod::Ready)],
        ),
    );
    let node_dir = TempDir::new("node");
    let (toml, sock) = node_settings(&node_dir, "30000-32767");
    let mut lb = run_manifests(&dir, &toml, "node-a");
    let node: SocketAddr = "127.0.0.1:30000".parse().unwrap();
    lb.wait_ready_name(node);
    assert_eq!(
        answering(node, 300, 3),
        set(&["frontend-2", "frontend-3", "frontend-4"])
    );
    assert!(pods.iter().all(|p| p.connections() > 0));

    let list: serde_json::Value =
        serde_json::from_str(&ctl_ok(&sock, &["-o", "json", "services"])).unwrap();
    let hello_port = list["result"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "helloworld")
        .expect("helloworld served");
    assert_eq!(hello_port["namespace"], "default");
    assert_eq!(hello_port["node_port_allocated"], true);
    let port = hello_port["node_port"].as_u64().unwrap() as u16;
    assert!(
        (30086..=32767).contains(&port),
        "allocated {port}: not the upper band"
    );
    assert_eq!(
        ask_name(SocketAddr::from(([127, 0, 0, 1], port))).unwrap(),
        "helloworld-pod"
    );

    let describe = ctl_ok(
        &sock,
        &["describe", "service", "myfrontend", "-n", "workshop"],
    );
    // kubectl describe of the object as written: fields the manifest leaves out (the
    // API server would default them) are shown as kubectl shows them unset, the columns
    // as wide as the widest label needs (Go's tabwriter).
    assert_eq!(
        describe,
        "\
Name:              myfrontend
Namespace:         workshop
Labels:            app=myfrontend
Annotations:       <none>
Selector:          app=frontend
Type:              NodePort
IP Families:       <none>
IP:                
IPs:               <none>
Port:              http  80/TCP
TargetPort:        9000/TCP
NodePort:          http  30000/TCP
Endpoints:         127.0.0.2:9000,127.0.0.3:9000,127.0.0.4:9000
Session Affinity:  None
Events:            <none>
"
    );
    let describe = ctl_ok(&sock, &["describe", "service", "helloworld"]);
    assert!(
        describe.contains(
            "\nPort:              <unset>  8080/TCP\nTargetPort:        http-server/TCP\n"
        ),
        "{describe}"
    );
}

/// Reloads follow the directory: a pod added is served; a terminating pod only when no
/// ready one is left; a broken file is refused naming it (the old config keeps serving);
/// a deleted Service's nodePort closes.
#[test]
fn reload_follows_the_directory() {
    let a = NameServer::start("127.0.0.2", "pod-a");
    let b = NameServer::start("127.0.0.3", "pod-b");
    let p = free_port();
    let dir = TempDir::new("manifests");
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: itest\nspec:\n  type: NodePort\n  selector:\n    app: web\n  ports:\n  - name: http\n    port: 80\n    targetPort: http-server\n    nodePort: {p}\n"
    );
    dir.write("service.yaml", &service);
    // Pods on kernel-chosen ports: one slice each (the controller splits slices by port).
    let slice_of = |pod: &Backend, suffix: &str, state: Pod| {
        let ip = pod.addr.ip().to_string();
        slice(
            "web",
            "itest",
            suffix,
            ("http", pod.addr.port()),
            &[(&ip, "node-a", state)],
        )
    };
    dir.write("slice-a.yaml", &slice_of(&a, "aaaaa", Pod::Ready));
    let node_dir = TempDir::new("node");
    let (toml, sock) = node_settings(&node_dir, &format!("{p}-{p}"));
    let mut lb = run_manifests(&dir, &toml, "node-a");
    let node = node_addr(p);
    lb.wait_ready_name(node);
    assert_eq!(answering(node, 20, 2), set(&["pod-a"]));

    // A pod added.
    dir.write("slice-b.yaml", &slice_of(&b, "bbbbb", Pod::Ready));
    let out = ctl_ok(&sock, &["reload"]);
    assert!(
        out.contains(&format!("+ endpoint itest/web:http {}", b.addr)),
        "{out}"
    );
    assert_eq!(answering(node, 300, 2), set(&["pod-a", "pod-b"]));

    // pod-a terminating: only pod-b while it is ready; pod-a once it is the only one left.
    dir.write("slice-a.yaml", &slice_of(&a, "aaaaa", Pod::Terminating));
    ctl_ok(&sock, &["reload"]);
    assert_eq!(answering(node, 50, 3), set(&["pod-b"]));
    std::fs::remove_file(dir.path().join("slice-b.yaml")).unwrap();
    ctl_ok(&sock, &["reload"]);
    assert_eq!(answering(node, 20, 2), set(&["pod-a"]));

    // A broken file: refused, named, and the running config keeps serving.
    dir.write(
        "zz-broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: [oops\n",
    );
    let out = ctl(&sock, &["reload"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("zz-broken.yaml:3:"), "{text}");
    assert_eq!(answering(node, 10, 2), set(&["pod-a"]));

    // The Service deleted: its nodePort closes.
    std::fs::remove_file(dir.path().join("zz-broken.yaml")).unwrap();
    std::fs::remove_file(dir.path().join("service.yaml")).unwrap();
    let out = ctl_ok(&sock, &["reload"]);
    assert!(out.contains("- service itest/web:http"), "{out}");
    wait_for("the deleted Service's nodePort to close", SOON, || {
        TcpStream::connect_timeout(&node, Duration::from_secs(1))
            .is_err()
            .then_some(())
    });
    lb.assert_alive();
}

/// One HTTP response (head and Content-Length body) from `s`.
fn read_response(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map_or(0, |v| v.parse().unwrap());
            if buf.len() >= end + 4 + len {
                return buf;
            }
        }
        let n = s.read(&mut chunk).expect("read health-check response");
        assert!(
            n > 0,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The Date header's value replaced by a marker (the rest must match to the byte).
fn without_date(response: &[u8]) -> String {
    let text = String::from_utf8(response.to_vec()).unwrap();
    let start = text.find("\r\nDate: ").expect("Date header") + 8;
    let end = start + text[start..].find("\r\n").unwrap();
    let date = &text[start..end];
    assert!(date.ends_with(" GMT") && date.len() == 29, "Date {date:?}");
    format!("{}<DATE>{}", &text[..start], &text[end..])
}

fn golden(code: &str, count: usize) -> String {
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": \"itest\",\n\t\t\"name\": \"lb\"\n\t}},\n\t\"localEndpoints\": {count},\n\t\"serviceProxyHealthy\": true\n}}"
    );
    format!(
        "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nX-Load-Balancing-Endpoint-Weight: {count}\r\nDate: <DATE>\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A LoadBalancer Service with externalTrafficPolicy Local: the healthCheckNodePort answers
/// like kube-proxy (any path, 200 with the local ready endpoints, 503 without), the
/// nodePort sends only to this node's pod, and the port closes with the Service.
#[test]
fn health_check_node_port_answers_like_kube_proxy() {
    let local = NameServer::start("127.0.0.2", "local-pod");
    let remote = NameServer::start("127.0.0.3", "remote-pod");
    let (p, h) = (free_port(), free_port());
    let dir = TempDir::new("manifests");
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: lb\n  namespace: itest\n  annotations:\n    sluice.io/forwarding: none\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {h}\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n    nodePort: {p}\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: 203.0.113.10\n"
    );
    dir.write("lb.yaml", &service);
    let slices = |state: Pod| {
        let l = local.addr.ip().to_string();
        let r = remote.addr.ip().to_string();
        slice(
            "lb",
            "itest",
            "lllll",
            ("http", local.addr.port()),
            &[(&l, "node-a", state)],
        ) + "---\n"
            + &slice(
                "lb",
                "itest",
                "rrrrr",
                ("http", remote.addr.port()),
                &[(&r, "node-b", Pod::Ready)],
            )
    };
    dir.write("slices.yaml", &slices(Pod::Ready));
    let node_dir = TempDir::new("node");
    let (toml, sock) = node_settings(&node_dir, &format!("{p}-{p}"));
    let mut lb = run_manifests(&dir, &toml, "node-a");
    let node = node_addr(p);
    lb.wait_ready_name(node);
    // The clients here are on the node itself (loopback is a node address): kube-proxy
    // routes host-originated traffic to a Local Service with the Cluster rules, so both
    // pods answer (sluice sent only to the local one before, and reset it without one).
    assert_eq!(
        answering(node, 50, 2),
        set(&["local-pod", "remote-pod"]),
        "traffic from the node itself to a Local Service: Cluster rules"
    );

    let hc = node_addr(h);
    let ask = |request: &[u8]| {
        let mut s = TcpStream::connect_timeout(&hc, Duration::from_secs(2)).expect("connect hcnp");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.write_all(request).unwrap();
        let first = read_response(&mut s);
        // Keep-alive, as Go's server: a second request on the same connection.
        s.write_all(b"POST /anything HTTP/1.1\r\nHost: lb\r\nContent-Length: 3\r\n\r\nabc")
            .unwrap();
        let second = read_response(&mut s);
        (without_date(&first), without_date(&second))
    };
    let (first, second) =
        ask(b"GET /healthz HTTP/1.1\r\nHost: 10.0.0.1:32100\r\nUser-Agent: GoogleHC/1.0\r\n\r\n");
    assert_eq!(first, golden("200 OK", 1));
    assert_eq!(second, first);

    // The local pod terminating: no local ready endpoint → 503; the node itself still
    // reaches the remote ready pod (cluster endpoints), as with kube-proxy.
    dir.write("slices.yaml", &slices(Pod::Terminating));
    ctl_ok(&sock, &["reload"]);
    assert_eq!(answering(node, 50, 1), set(&["remote-pod"]));
    let (first, _) = ask(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(first, golden("503 Service Unavailable", 0));

    let describe = ctl_ok(&sock, &["describe", "service", "lb", "-n", "itest"]);
    for line in [
        "Type:                     LoadBalancer\n",
        "LoadBalancer Ingress:     203.0.113.10\n",
        "External Traffic Policy:  Local\n",
        &format!("HealthCheck NodePort:     {h}\n"),
    ] {
        assert!(describe.contains(line), "{line:?} not in\n{describe}");
    }

    // The Service deleted: the health-check port closes too.
    std::fs::remove_file(dir.path().join("lb.yaml")).unwrap();
    ctl_ok(&sock, &["reload"]);
    wait_for("the healthCheckNodePort to close", SOON, || {
        TcpStream::connect_timeout(&hc, Duration::from_secs(1))
            .is_err()
            .then_some(())
    });
    lb.assert_alive();
}

/// A LoadBalancer Service with `externalTrafficPolicy: Local` and a healthCheckNodePort.
fn lb_service(name: &str, node_port: u16, health_port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: itest\n  annotations:\n    sluice.io/forwarding: none\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {health_port}\n  ports:\n  - name: http\n    port: 80\n    nodePort: {node_port}\n"
    )
}

/// Connects to `node_port` as fast as it can until it accepts (bounded by `SOON`), then at
/// once to `health_port`: true when the health check took that connection too.
fn health_check_answers_once_the_node_port_does(node_port: u16, health_port: u16) -> bool {
    // Not `wait_for`: its pauses grow to 100 ms, longer than the window this looks for.
    let quick = Duration::from_millis(200);
    let start = std::time::Instant::now();
    while TcpStream::connect_timeout(&node_addr(node_port), quick).is_err() {
        assert!(
            start.elapsed() < SOON,
            "NodePort {node_port} never accepted"
        );
        std::thread::sleep(Duration::from_micros(100));
    }
    TcpStream::connect_timeout(&node_addr(health_port), quick).is_ok()
}

/// The healthCheckNodePort is open before its NodePort takes connections, at start and when
/// a reload adds the Service: whoever reaches the NodePort (a load balancer, the test's
/// own readiness probe) finds the health check answering, never refused. It used to be
/// opened after the data plane served (at start, after the control socket and the metrics
/// listeners), and a client probing the NodePort in that window was refused.
#[test]
fn health_check_node_port_is_open_before_the_node_port() {
    let pod = NameServer::start("127.0.0.2", "local-pod");
    let (p, h, q, k) = (free_port(), free_port(), free_port(), free_port());
    let dir = TempDir::new("manifests-hc-order");
    let pod_ip = pod.addr.ip().to_string();
    let slice_of = |name: &str| {
        slice(
            name,
            "itest",
            "aaaaa",
            ("http", pod.addr.port()),
            &[(&pod_ip, "node-a", Pod::Ready)],
        )
    };
    dir.write(
        "first.yaml",
        &(lb_service("first", p, h) + "---\n" + &slice_of("first")),
    );
    let node_dir = TempDir::new("node");
    let (toml, sock) = node_settings(&node_dir, &format!("{p}-{p}"));
    // The probing starts before sluice does: the first connection the NodePort takes.
    let mut lb = run_manifests(&dir, &toml, "node-a");
    assert!(
        health_check_answers_once_the_node_port_does(p, h),
        "at start: the NodePort took a connection before the healthCheckNodePort listened"
    );
    lb.wait_ready_name(node_addr(p));

    // A reload adds a second such Service, probed from another thread while it happens.
    let probe = std::thread::spawn(move || health_check_answers_once_the_node_port_does(q, k));
    dir.write(
        "second.yaml",
        &(lb_service("second", q, k) + "---\n" + &slice_of("second")),
    );
    ctl_ok(&sock, &["reload"]);
    assert!(
        probe.join().unwrap(),
        "at a reload: the NodePort took a connection before the healthCheckNodePort listened"
    );

    // A reload that fails (another process listens on the new NodePort) takes back the
    // health check it opened early; the running Services' stay.
    let (r, j) = (free_port(), free_port());
    let squatter = std::net::TcpListener::bind(("127.0.0.1", r)).unwrap();
    dir.write(
        "third.yaml",
        &(lb_service("third", r, j) + "---\n" + &slice_of("third")),
    );
    let out = ctl(&sock, &["reload"]);
    assert!(
        !out.status.success(),
        "reload with NodePort {r} taken succeeded"
    );
    assert!(
        TcpStream::connect_timeout(&node_addr(j), Duration::from_secs(1)).is_err(),
        "the failed reload left the third Service's healthCheckNodePort open"
    );
    for port in [h, k] {
        TcpStream::connect_timeout(&node_addr(port), Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("healthCheckNodePort {port} after a failed reload: {e}"));
    }
    drop(squatter);
    lb.assert_alive();
}

/// The seeds' manifest style with a `protocol: UDP` port (kube-dns' shape: 53/TCP and 53/UDP
/// on one nodePort): `check --manifests` converts both ports, each with its slice port, and
/// skips neither.
#[test]
fn a_udp_port_in_the_seeds_style_is_converted() {
    let dir = TempDir::new("manifests-udp");
    let (toml, _) = node_settings(&dir, "30000-32767");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("dns.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: dns\n  namespace: kube-system\nspec:\n  type: NodePort\n  selector:\n    app: dns\n  ports:\n  - name: dns-tcp\n    port: 53\n    protocol: TCP\n    targetPort: 5353\n    nodePort: 30053\n  - name: dns\n    port: 53\n    protocol: UDP\n    targetPort: 5353\n    nodePort: 30053\n",
    )
    .unwrap();
    let tcp = slice(
        "dns",
        "kube-system",
        "t1",
        ("dns-tcp", 5353),
        &[("10.0.0.5", "n1", Pod::Ready)],
    );
    let udp = slice(
        "dns",
        "kube-system",
        "u1",
        ("dns", 5354),
        &[("10.0.0.5", "n1", Pod::Ready)],
    )
    .replace("protocol: TCP", "protocol: UDP");
    std::fs::write(manifests.join("slices.yaml"), format!("{tcp}---\n{udp}")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(&toml)
        .arg("--manifests")
        .arg(&manifests)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    let row = |proto: &str| {
        stdout
            .lines()
            .find(|l| l.contains(&format!(" 30053/{proto} ")))
            .unwrap_or_else(|| panic!("no 30053/{proto} row:\n{stdout}"))
            .to_owned()
    };
    assert!(row("TCP").ends_with("10.0.0.5:5353"), "{stdout}");
    assert!(row("UDP").ends_with("10.0.0.5:5354"), "{stdout}");
    assert!(
        !stderr.contains("not listening on"),
        "served, not skipped: {stderr}"
    );
}

/// A named network namespace for a client outside the node, deleted on drop.
struct ClientNetns(String);

impl Drop for ClientNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// externalTrafficPolicy: Local seen from both sides, in a private network namespace (the
/// node) with a client namespace behind a veth pair (198.18.77.0/30): a client outside the
/// node reaches only this node's pod (and is reset when this node has none), while clients
/// on the node itself (loopback, the node's own address) use the cluster endpoints, as
/// kube-proxy routes host-originated traffic.
#[test]
fn local_policy_outside_clients_get_local_pods_and_the_node_gets_the_cluster() {
    let client_ns = format!("sluice-local-{}", std::process::id());
    let outcome = in_private_netns(move || {
        let local = NameServer::start("127.0.0.2", "local-pod");
        let remote = NameServer::start("127.0.0.3", "remote-pod");
        let netns = ClientNetns(client_ns.clone());
        run_ip(&["netns", "add", &netns.0]);
        run_ip(&[
            "link", "add", "c0", "type", "veth", "peer", "name", "n0", "netns", &netns.0,
        ]);
        run_ip(&["addr", "add", "198.18.77.1/30", "dev", "c0"]);
        run_ip(&["link", "set", "c0", "up"]);
        run_ip(&["-n", &netns.0, "addr", "add", "198.18.77.2/30", "dev", "n0"]);
        run_ip(&["-n", &netns.0, "link", "set", "n0", "up"]);
        run_ip(&["-n", &netns.0, "link", "set", "lo", "up"]);
        let p = 30000;
        let dir = TempDir::new("manifests-local");
        dir.write(
            "svc.yaml",
            &format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: itest\n  annotations:\n    sluice.io/forwarding: none\nspec:\n  type: NodePort\n  externalTrafficPolicy: Local\n  ports:\n  - name: http\n    port: 80\n    nodePort: {p}\n"),
        );
        let slices = |local_state: Pod| {
            slice(
                "web",
                "itest",
                "lllll",
                ("http", local.addr.port()),
                &[("127.0.0.2", "node-a", local_state)],
            ) + "---\n"
                + &slice(
                    "web",
                    "itest",
                    "rrrrr",
                    ("http", remote.addr.port()),
                    &[("127.0.0.3", "node-b", Pod::Ready)],
                )
        };
        dir.write("slices.yaml", &slices(Pod::Ready));
        let node_dir = TempDir::new("node");
        let sock = node_dir.path().join("ctl.sock");
        let toml = node_dir.write(
            "node.toml",
            &format!(
                "listen_addresses = [\"127.0.0.1\", \"198.18.77.1\"]\nworkers = 2\ncontrol_socket = \"{}\"\n",
                sock.display()
            ),
        );
        let mut lb = run_manifests(&dir, &toml, "node-a");
        let on_node = SocketAddr::from(([127, 0, 0, 1], p));
        lb.wait_ready_name(on_node);
        let ns_name = netns.0.clone();
        let from_outside = |n: usize| -> BTreeSet<String> {
            in_netns(&ns_name, move || {
                let to = SocketAddr::from(([198, 18, 77, 1], 30000));
                (0..n)
                    .map(|_| ask_name(to).unwrap_or_else(|e| format!("error: {:?}", e.kind())))
                    .collect()
            })
        };
        // Outside the node: this node's pod only.
        assert_eq!(from_outside(40), set(&["local-pod"]));
        // The node itself, from loopback and from its own address: the cluster endpoints.
        assert_eq!(answering(on_node, 60, 2), set(&["local-pod", "remote-pod"]));
        let own = SocketAddr::from(([198, 18, 77, 1], p));
        let via_own: BTreeSet<String> = (0..60)
            .map(|i| {
                let s = connect_from(IpAddr::from([198, 18, 77, 1]), own);
                let mut s = s.unwrap_or_else(|e| panic!("connect {i}: {e}"));
                ask_name_on(&mut s).unwrap()
            })
            .collect();
        assert_eq!(via_own, set(&["local-pod", "remote-pod"]));

        // The local pod terminating and not serving: nothing local is usable. Outside
        // clients are reset (kube-proxy drops them); the node still reaches the remote pod.
        dir.write("slices.yaml", &slices(Pod::Gone));
        ctl_ok(&sock, &["reload"]);
        let outside = from_outside(5);
        assert!(
            outside.iter().all(|r| r.starts_with("error")),
            "outside clients must not reach a remote pod: {outside:?}"
        );
        assert_eq!(answering(on_node, 20, 1), set(&["remote-pod"]));
        lb.assert_alive();
        drop(netns);
    });
    if let Err(e) = outcome {
        eprintln!("SKIPPED: cannot make network namespaces here ({e})");
    }
}

/// `ctl upgrade` hands the healthCheckNodePort listener over with the NodePorts: an external
/// load balancer's checks are answered throughout (none refused), and by the new process
/// once the old one has exited (before, the new process could not bind the port the old
/// one held, and the check port stayed closed after the old one's exit).
#[test]
fn the_health_check_node_port_is_handed_over_with_ctl_upgrade() {
    let local = NameServer::start("127.0.0.2", "local-pod");
    let (p, h) = (free_port(), free_port());
    let dir = TempDir::new("manifests");
    dir.write(
        "lb.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: lb\n  namespace: itest\n  annotations:\n    sluice.io/forwarding: none\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {h}\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n    nodePort: {p}\n"
        ),
    );
    let l = local.addr.ip().to_string();
    dir.write(
        "slices.yaml",
        &slice(
            "lb",
            "itest",
            "lllll",
            ("http", local.addr.port()),
            &[(&l, "node-a", Pod::Ready)],
        ),
    );
    let node_dir = TempDir::new("node");
    let (toml, sock) = node_settings(&node_dir, &format!("{p}-{p}"));
    let mut old = run_manifests(&dir, &toml, "node-a");
    old.wait_ready_name(node_addr(p));
    let hc = node_addr(h);
    let check = move || -> Result<String, String> {
        let mut s = TcpStream::connect_timeout(&hc, Duration::from_secs(2))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)
            .map_err(|e| format!("read: {e}"))?;
        Ok(answer.lines().next().unwrap_or("").to_owned())
    };
    assert_eq!(check().unwrap(), "HTTP/1.1 200 OK");

    // Checks all along the upgrade (bounded: until it is over, at most 60 s).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let until = std::time::Instant::now() + Duration::from_secs(60);
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < until
            {
                match check() {
                    Ok(line) if line == "HTTP/1.1 200 OK" => ok += 1,
                    Ok(line) => failed.push(line),
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        })
    };
    let (_, new) = upgrade_ok(&sock, &[]);
    // The new process is not this test's child: ended by its PID, whatever happens.
    let pids = Pids::default();
    pids.add(new);
    let status = old.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    // The old process is gone: the new one answers the checks.
    for _ in 0..5 {
        assert_eq!(check().unwrap(), "HTTP/1.1 200 OK");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = checker.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} checks failed, {ok} answered: {failed:?}",
        failed.len()
    );
    assert!(ok > 0);
}
