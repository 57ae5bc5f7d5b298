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
