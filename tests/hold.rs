//! Hold-while-empty (kubernetes#484, scale from zero): a Service with no usable endpoint and
//! `hold_when_empty` set keeps new connections waiting, and serves them as soon as an
//! endpoint appears; past the hold time they are reset, as without it (tested in
//! tcp_semantics.rs: reset at once).

mod common;

use common::*;
use std::io::Read;
use std::time::{Duration, Instant};

#[test]
fn a_held_connection_is_served_once_an_endpoint_appears() {
    let port = free_port();
    let service =
        |eps: &[String]| one_service(port, "workers = 1", eps, "hold_when_empty = \"20s\"");
    let mut lb = Sluice::run(&service(&[]));
    let node = node_addr(port);
    lb.wait_ready_accepting(node);

    let mut held = connect(node).unwrap();
    held.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    std::io::Write::write_all(&mut held, NAME_REQUEST).unwrap();
    // Held, not reset: nothing comes back for a while.
    let mut byte = [0u8; 1];
    match held.read(&mut byte) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("a held connection must wait, got {other:?}"),
    }

    // The Service scales up: the held connection is served by the new endpoint.
    let pod = NameServer::start("127.0.0.4", "pod-new");
    std::fs::write(lb.config_path.as_ref().unwrap(), service(&[ep(pod.addr)])).unwrap();
    // SAFETY: signalling the child we spawned, by PID.
    unsafe { libc::kill(lb.pid() as i32, libc::SIGHUP) };
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let answer = read_http_body(&mut held).expect("the held connection is served after the reload");
    assert_eq!(answer, "pod-new");
}

#[test]
fn a_held_connection_is_reset_after_the_hold_time() {
    let port = free_port();
    let mut lb = Sluice::run(&one_service(
        port,
        "workers = 1",
        &[],
        "hold_when_empty = \"1s\"",
    ));
    let node = node_addr(port);
    lb.wait_ready_accepting(node);
    let started = Instant::now();
    let mut s = connect(node).unwrap();
    std::io::Write::write_all(&mut s, NAME_REQUEST).unwrap();
    let (got, ended) = read_to_end_outcome(&mut s, Duration::from_secs(10));
    let waited = started.elapsed();
    assert!(got.is_empty(), "nothing may be served without an endpoint");
    assert_eq!(ended, Ended::Reset, "expired held connections are reset");
    assert!(
        waited >= Duration::from_millis(900),
        "reset before the hold time: {waited:?}"
    );
}

/// Expects `s` to be held: neither data nor a close within a short while.
fn assert_held(s: &mut std::net::TcpStream, what: &str) {
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    match s.read(&mut byte) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("{what} must be held, got {other:?}"),
    }
}

/// Two Services on one worker: `empty` (no endpoint, holds for 30 s) and `web`.
fn two_services(top: &str) -> (Sluice, u16, u16, Backend) {
    let web = NameServer::start("127.0.0.5", "web");
    let (empty_port, web_port) = (free_port(), free_port());
    let cfg = format!(
        "listen_addresses = [\"127.0.0.1\"]\nnode_port_range = \"{}-{}\"\nworkers = 1\n{top}\n{}{}",
        empty_port.min(web_port),
        empty_port.max(web_port),
        service_toml("empty", empty_port, &[], "hold_when_empty = \"30s\""),
        service_toml("web", web_port, &[ep(web.addr)], ""),
    );
    let mut lb = Sluice::run(&cfg);
    lb.wait_ready_name(node_addr(web_port));
    (lb, empty_port, web_port, web)
}

/// Issue 12: 50 held clients on an empty Service took every connection slot of the worker,
/// and a request to another Service waited in the backlog until the holds expired (18.7 s).
/// Held connections have their own budget: they never take the slots of Services that have
/// endpoints.
#[test]
fn held_clients_do_not_take_the_slots_of_other_services() {
    const CAP: usize = 20;
    let (_lb, empty_port, web_port, _web) =
        two_services(&format!("max_connections_per_worker = {CAP}"));
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut s = connect(node_addr(empty_port)).unwrap();
        std::io::Write::write_all(&mut s, NAME_REQUEST).unwrap();
        held.push(s);
    }
    wait_for("the held clients to be accepted", SOON, || {
        (accept_queue_len(empty_port) == Some(0)).then_some(())
    });
    assert_held(&mut held[0], "a client of the empty Service");

    // The other Service is served at once, several times.
    let started = Instant::now();
    for i in 0..3 {
        let mut s = connect(node_addr(web_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let name = ask_name_on(&mut s).unwrap_or_else(|e| {
            panic!("request {i} to a Service with endpoints, beside {CAP} held clients: {e}")
        });
        assert_eq!(name, "web");
    }
    eprintln!(
        "3 requests beside {CAP} held clients: {:?}",
        started.elapsed()
    );
    for (i, s) in held.iter_mut().enumerate().take(3) {
        assert_held(s, &format!("held client {i}"));
    }
}

/// How many clients of `node_port` were refused a hold (budget spent), from `/metrics`.
fn holds_refused(metrics: std::net::SocketAddr, node_port: u16) -> u64 {
    let mut s = connect(metrics).unwrap();
    std::io::Write::write_all(
        &mut s,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let want = format!("node_port=\"{node_port}\"}}");
    text.lines()
        .find(|l| l.starts_with("sluice_service_holds_refused_total{") && l.contains(&want))
        .unwrap_or_else(|| panic!("no sluice_service_holds_refused_total for {node_port}:\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Issue 12: the hold budget is bounded per Service and per worker; a client beyond it is
/// reset at once (as without `hold_when_empty`) and counted.
#[test]
fn holds_beyond_the_budget_are_reset_at_once_and_counted() {
    let web = NameServer::start("127.0.0.6", "web");
    let mport = free_port();
    let ports = [free_port(), free_port(), free_port()];
    let (a_port, b_port, web_port) = (ports[0], ports[1], ports[2]);
    let cfg = format!(
        "listen_addresses = [\"127.0.0.1\"]\nnode_port_range = \"{}-{}\"\nworkers = 1\n\
         max_held_per_service = 5\nmax_held_per_worker = 8\nmetrics_address = \"127.0.0.1:{mport}\"\n{}{}{}",
        ports.iter().min().unwrap(),
        ports.iter().max().unwrap(),
        service_toml("a", a_port, &[], "hold_when_empty = \"30s\""),
        service_toml("b", b_port, &[], "hold_when_empty = \"30s\""),
        service_toml("web", web_port, &[ep(web.addr)], ""),
    );
    // Ready through the Service with an endpoint: a probe of an empty one would be held.
    let mut lb = Sluice::run(&cfg);
    lb.wait_ready_name(node_addr(web_port));
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{mport}").parse().unwrap();

    let hold = |port: u16, n: usize| -> Vec<std::net::TcpStream> {
        let mut v = Vec::new();
        for i in 0..n {
            let mut s = connect(node_addr(port)).unwrap();
            std::io::Write::write_all(&mut s, NAME_REQUEST).unwrap();
            assert_held(&mut s, &format!("client {i} of NodePort {port}"));
            v.push(s);
        }
        v
    };
    let over_budget = |port: u16, what: &str| {
        let started = Instant::now();
        // Reset at once: under load the RST can arrive before connect(2) has returned, and
        // then connect itself reports it (as in tcp_semantics.rs).
        let (data, ended) = match connect(node_addr(port)) {
            Ok(mut s) => read_to_end_outcome(&mut s, Duration::from_secs(5)),
            Err(e) => (Vec::new(), classify(&e)),
        };
        assert!(data.is_empty());
        assert_eq!(ended, Ended::Reset, "{what}: reset, as without a hold");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what}: reset after {:?}, not at once",
            started.elapsed()
        );
    };

    // Per Service: 5 held on `a`, the 6th reset.
    let _a = hold(a_port, 5);
    over_budget(a_port, "the 6th client of `a` (max_held_per_service = 5)");
    // Per worker: 3 more on `b` make 8, the next one is reset.
    let _b = hold(b_port, 3);
    over_budget(
        b_port,
        "the 9th held client of the worker (max_held_per_worker = 8)",
    );
    assert_eq!(holds_refused(metrics, a_port), 1);
    assert_eq!(holds_refused(metrics, b_port), 1);
    // Services with endpoints are not affected.
    assert_eq!(ask_name(node_addr(web_port)).unwrap(), "web");
}
