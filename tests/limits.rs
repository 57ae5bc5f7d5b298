//! Resource limits: the per-worker connection cap (extra clients wait in the kernel backlog,
//! never accepted-then-dropped) and running out of file descriptors (back off, keep serving
//! existing connections, recover).

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn connection_cap_leaves_extra_client_in_backlog_until_one_closes() {
    let echo = EchoServer::start("127.0.0.2");
    let port = free_port();
    let cfg = one_service(
        port,
        "workers = 1\nmax_connections_per_worker = 20",
        &[ep(echo.addr)],
        "",
    );
    let mut lb = Sluice::run(&cfg);
    lb.wait_ready_echo(node_addr(port));

    // 20 connections, each proven working. (A readiness probe still closing may hold a slot
    // for a moment; the generous read timeout covers that.)
    let mut held: Vec<TcpStream> = Vec::new();
    for i in 0..20 {
        let mut s = connect(node_addr(port)).unwrap();
        echo_roundtrip(&mut s, format!("held {i}").as_bytes())
            .unwrap_or_else(|e| panic!("held connection {i} not served: {e}"));
        held.push(s);
    }
    wait_for("probe connections to drain from the backend", SOON, || {
        (echo.active() == 20).then_some(())
    });
    let backend_conns = echo.connections();

    // The 21st: the kernel completes the handshake, sluice does not take it.
    let mut extra = connect(node_addr(port)).expect("21st connection completes the handshake");
    extra.write_all(b"extra").unwrap();
    wait_for(
        "the 21st connection to sit in the accept queue",
        SOON,
        || (accept_queue_len(port) == Some(1)).then_some(()),
    );
    extra
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = [0u8; 5];
    match extra.read(&mut buf) {
        Err(e) if classify(&e) == Ended::TimedOut => {}
        Ok(0) => panic!("21st connection got EOF: accepted then dropped"),
        Ok(n) => panic!("21st connection was served ({n} bytes) beyond the cap"),
        Err(e) => panic!("21st connection failed: {e} (accepted then dropped?)"),
    }
    assert_eq!(
        echo.connections(),
        backend_conns,
        "no backend connection for the 21st"
    );
    assert_eq!(
        accept_queue_len(port),
        Some(1),
        "still waiting in the backlog"
    );
    for (i, s) in held.iter_mut().enumerate() {
        echo_roundtrip(s, b"still").unwrap_or_else(|e| panic!("held connection {i}: {e}"));
    }

    // Free one slot: the waiting client is accepted and served.
    drop(held.pop());
    extra.set_read_timeout(Some(SOON)).unwrap();
    extra
        .read_exact(&mut buf)
        .expect("21st connection served after a slot freed");
    assert_eq!(&buf, b"extra");
    echo_roundtrip(&mut extra, b"more").unwrap();
    assert_eq!(accept_queue_len(port), Some(0));
}

#[test]
fn fd_exhaustion_backs_off_keeps_existing_and_recovers() {
    let echo = EchoServer::start("127.0.0.3");
    let port = free_port();
    let cfg = one_service(
        port,
        "workers = 1\nconnect_timeout = \"20s\"",
        &[ep(echo.addr)],
        "",
    );
    let mut lb = Sluice::run_with(
        &cfg,
        Launch {
            nofile: Some(64),
            ..Launch::default()
        },
    );
    lb.wait_ready_echo(node_addr(port));

    // Open connections until a new one is not served (within 2 s each). Bounded: 64 fds
    // cannot carry 200 proxied connections.
    let mut held: Vec<TcpStream> = Vec::new();
    let mut refused = None;
    // The client that hit the limit: accepted but short of an fd for its backend, it is
    // parked (not reset) and served once fds free up, within its connect timeout.
    let mut waiting: Option<(usize, TcpStream)> = None;
    for i in 0..200 {
        let mut s = match connect(node_addr(port)) {
            Ok(s) => s,
            Err(e) => {
                refused = Some(format!("connect {i}: {e}"));
                break;
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        match echo_roundtrip(&mut s, format!("conn {i}").as_bytes()) {
            Ok(()) => held.push(s),
            Err(e) => {
                refused = Some(format!("connection {i} not served: {e}"));
                waiting = Some((i, s));
                break;
            }
        }
    }
    let refused =
        refused.expect("200 proxied connections with RLIMIT_NOFILE=64: limit not applied?");
    eprintln!(
        "saturated after {} connections ({refused}); sluice holds {} fds",
        held.len(),
        lb.fd_count()
    );
    assert!(
        held.len() >= 2,
        "only {} connections before saturation",
        held.len()
    );
    lb.assert_alive();

    // Existing connections keep working while sluice is out of fds.
    for (i, s) in held.iter_mut().enumerate() {
        s.set_read_timeout(Some(SOON)).unwrap();
        echo_roundtrip(s, b"still working")
            .unwrap_or_else(|e| panic!("held connection {i} broke while at the fd limit: {e}"));
    }

    // Release them all: new connections are served again.
    let n = held.len();
    held.clear();
    if let Some((i, mut s)) = waiting {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let want = format!("conn {i}");
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).unwrap_or_else(|e| {
            panic!("the client parked at the fd limit was not served after fds freed: {e}")
        });
        assert_eq!(got, want.as_bytes());
    }
    lb.wait_until("new connections served after fds freed", || {
        probe_echo(node_addr(port))
    });
    let mut again = Vec::new();
    for i in 0..n.min(5) {
        let mut s = connect(node_addr(port)).unwrap();
        s.set_read_timeout(Some(SOON)).unwrap();
        echo_roundtrip(&mut s, b"recovered").unwrap_or_else(|e| panic!("after recovery, {i}: {e}"));
        again.push(s);
    }
    lb.assert_alive();
}
