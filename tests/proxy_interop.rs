//! PROXY protocol against real receivers: nginx (`listen … proxy_protocol`, logging
//! `$proxy_protocol_addr $proxy_protocol_port`) and HAProxy (`accept-proxy`, logging
//! `%[src] %[src_port]`) behind sluice, for `proxy-v1` and `proxy-v2`, IPv4 and IPv6 (when
//! [::1] exists). Each asserts that the peer logged the client's actual address AND port.
//! Plus the seed's scenario: three pods, NodePort 30000, proxy-v2, every pod sees the client.

mod common;

use common::peers::*;
use common::*;
use std::net::{IpAddr, SocketAddr};

/// Client address for IPv4: not the node's 127.0.0.1, so a header naming the node is caught.
const CLIENT4: &str = "127.0.0.9";

/// sluice on `node_port` (127.0.0.1, and ::1 when `v6`) in front of `backend` with `mode`.
fn sluice_for(node_port: u16, v6: bool, backend: SocketAddr, service_extra: &str) -> Sluice {
    let listen = if v6 {
        "[\"127.0.0.1\", \"::1\"]"
    } else {
        "[\"127.0.0.1\"]"
    };
    let config = format!(
        "listen_addresses = {listen}\nnode_port_range = \"{node_port}-{node_port}\"\nworkers = 1\n\
         [[service]]\nname = \"svc\"\nnamespace = \"itest\"\nport = 80\nnode_port = {node_port}\n\
         endpoints = [\"{backend}\"]\n{service_extra}\n"
    );
    let mut s = Sluice::run(&config);
    s.wait_ready_accepting(SocketAddr::from(([127, 0, 0, 1], node_port)));
    if v6 {
        s.wait_ready_accepting(SocketAddr::new(loopback(true), node_port));
    }
    s
}

/// A port free on both 127.0.0.1 and, when `v6`, [::1] a moment ago.
fn free_port_for(v6: bool) -> u16 {
    for _ in 0..100 {
        let p = free_port();
        if !v6 || std::net::TcpListener::bind((loopback(true), p)).is_ok() {
            return p;
        }
    }
    panic!("no port free on both 127.0.0.1 and ::1");
}

/// The families to try: IPv4 always, IPv6 when [::1] can be bound (said loudly otherwise).
fn families() -> Vec<bool> {
    if have_ipv6_loopback() {
        vec![false, true]
    } else {
        eprintln!("NOTE: [::1] cannot be bound here; IPv6 cases skipped");
        vec![false]
    }
}

fn loopback(v6: bool) -> IpAddr {
    if v6 {
        "::1".parse().unwrap()
    } else {
        "127.0.0.1".parse().unwrap()
    }
}

fn client_ip(v6: bool) -> IpAddr {
    if v6 {
        "::1".parse().unwrap()
    } else {
        CLIENT4.parse().unwrap()
    }
}

/// One GET through sluice (mode `forwarding`) to nginx, per family; nginx must log the client.
fn nginx_sees_client(forwarding: &str) {
    if !have(NGINX) {
        return;
    }
    for v6 in families() {
        let backend = SocketAddr::new(loopback(v6), free_port_for(v6));
        let nginx = start_nginx(&[NginxServer {
            listen: backend,
            proxy_protocol: true,
            log: "pod.log".into(),
        }]);
        let node_port = free_port_for(v6);
        let _sluice = sluice_for(
            node_port,
            v6,
            backend,
            &format!("forwarding = \"{forwarding}\""),
        );
        let node = SocketAddr::new(loopback(v6), node_port);
        let (me, resp) = http_get_from(client_ip(v6), node);
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "{forwarding} v6={v6}: {resp:?}"
        );
        wait_logged(&nginx, "pod.log", me);
        eprintln!(
            "nginx logged {me} ({forwarding}, {})",
            if v6 { "IPv6" } else { "IPv4" }
        );
    }
}

fn haproxy_sees_client(forwarding: &str, extra: &str) {
    if !have(HAPROXY) {
        return;
    }
    for v6 in families() {
        let backend = SocketAddr::new(loopback(v6), free_port_for(v6));
        let haproxy = start_haproxy(&[backend]);
        let node_port = free_port_for(v6);
        let _sluice = sluice_for(
            node_port,
            v6,
            backend,
            &format!("forwarding = \"{forwarding}\"\n{extra}"),
        );
        let node = SocketAddr::new(loopback(v6), node_port);
        let (me, resp) = http_get_from(client_ip(v6), node);
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "{forwarding} v6={v6}: {resp:?}"
        );
        wait_logged(&haproxy, "stdout.log", me);
        eprintln!(
            "haproxy logged {me} ({forwarding}, {})",
            if v6 { "IPv6" } else { "IPv4" }
        );
    }
}

#[test]
fn nginx_proxy_v1() {
    nginx_sees_client("proxy-v1");
}

#[test]
fn nginx_proxy_v2() {
    nginx_sees_client("proxy-v2");
}

#[test]
fn haproxy_proxy_v1() {
    haproxy_sees_client("proxy-v1", "");
}

#[test]
fn haproxy_proxy_v2_with_tlvs() {
    haproxy_sees_client(
        "proxy-v2",
        "proxy_unique_id = true\nproxy_tlvs = [{ type = 0xE0, value = \"itest/svc\" }]",
    );
}

/// A pod that expects a PROXY header gets none with `forwarding = "none"`: nginx rejects the
/// connection ("broken header"), so the client gets no 200. This is the failure the docs
/// describe for a pod and a Service that disagree.
#[test]
fn nginx_rejects_a_connection_without_the_header() {
    if !have(NGINX) {
        return;
    }
    let backend = SocketAddr::new(loopback(false), free_port());
    let nginx = start_nginx(&[NginxServer {
        listen: backend,
        proxy_protocol: true,
        log: "pod.log".into(),
    }]);
    let node_port = free_port();
    let _sluice = sluice_for(node_port, false, backend, "forwarding = \"none\"");
    let (_, resp) = http_get_from(
        client_ip(false),
        SocketAddr::new(loopback(false), node_port),
    );
    assert!(!resp.starts_with("HTTP/1.1 200"), "{resp:?}");
    wait_for("nginx to log a broken header", SOON, || {
        nginx
            .file("error.log")
            .contains("broken header")
            .then_some(())
    });
}

/// The seed: `workshop/myfrontend`, NodePort 30000, pods 127.0.0.2/3/4:9000, here with
/// `proxy-v2` (unique id and a custom TLV naming the Service). Run in a private network
/// namespace so that 30000 and the pod addresses cannot collide with anything else; in the
/// host namespace with free ports when no namespace can be made.
#[test]
fn seed_three_pods_proxy_v2_every_pod_sees_the_client() {
    if !have(NGINX) {
        return;
    }
    let run = || seed_scenario(Some(30000));
    match in_private_netns(run) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("NOTE: no private network namespace ({e}); using free ports instead");
            seed_scenario(None);
        }
    }
}

fn seed_scenario(fixed_port: Option<u16>) {
    let pod_port = if fixed_port.is_some() { 9000 } else { 0 };
    let pods: Vec<SocketAddr> = (2..=4)
        .map(|i| {
            let ip = IpAddr::from([127, 0, 0, i]);
            let port = if pod_port == 0 {
                std::net::TcpListener::bind((ip, 0))
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            } else {
                pod_port
            };
            SocketAddr::new(ip, port)
        })
        .collect();
    let servers: Vec<NginxServer> = pods
        .iter()
        .enumerate()
        .map(|(i, a)| NginxServer {
            listen: *a,
            proxy_protocol: true,
            log: format!("pod-{}.log", i + 1),
        })
        .collect();
    let nginx = start_nginx(&servers);
    let node_port = fixed_port.unwrap_or_else(free_port);
    let endpoints: Vec<String> = pods.iter().map(|a| format!("\"{a}\"")).collect();
    let config = format!(
        "listen_addresses = [\"127.0.0.1\"]\nworkers = 2\n\
         [[service]]\nname = \"myfrontend\"\nnamespace = \"workshop\"\nport = 80\n\
         target_port = 9000\nnode_port = {node_port}\nendpoints = [{}]\n\
         forwarding = \"proxy-v2\"\nproxy_unique_id = true\n\
         proxy_tlvs = [{{ type = 0xE0, value = \"workshop/myfrontend\" }}]\n",
        endpoints.join(", ")
    );
    let config = if fixed_port.is_some() {
        config
    } else {
        format!("node_port_range = \"{node_port}-{node_port}\"\n{config}")
    };
    let mut sluice = Sluice::run(&config);
    let node = SocketAddr::from(([127, 0, 0, 1], node_port));
    sluice.wait_ready_accepting(node);

    // Enough connections (distinct source ports → Maglev spreads them) to reach every pod.
    let mut clients = Vec::new();
    for i in 0..60u8 {
        let ip = IpAddr::from([127, 0, 1, 1 + i % 20]);
        let (me, resp) = http_get_from(ip, node);
        assert!(resp.starts_with("HTTP/1.1 200"), "connection {i}: {resp:?}");
        clients.push(me);
    }
    // Every client connection is logged, with its address and port, by exactly one pod, and
    // every pod logged some.
    let logs: Vec<String> = wait_for("all 60 connections logged", SOON, || {
        let logs: Vec<String> = servers.iter().map(|s| nginx.file(&s.log)).collect();
        let lines = logs.iter().map(|l| l.lines().count()).sum::<usize>();
        (lines >= clients.len()).then_some(logs)
    });
    for me in &clients {
        let want = format!("LOGGED {} {}", me.ip(), me.port());
        let seen_by = logs
            .iter()
            .filter(|l| l.lines().any(|x| x.trim() == want))
            .count();
        assert_eq!(seen_by, 1, "{want} logged by {seen_by} pods:\n{logs:#?}");
    }
    for (s, log) in servers.iter().zip(&logs) {
        let n = log.lines().count();
        assert!(
            n > 0,
            "{} ({}) saw no connection:\n{logs:#?}",
            s.log,
            s.listen
        );
        eprintln!("{} ({}) logged {n} connections", s.log, s.listen);
    }
    drop(sluice);
}
