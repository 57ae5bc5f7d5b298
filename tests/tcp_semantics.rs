//! TCP behaviour a client relies on through sluice: half-close in both directions, RST in
//! both directions, connect timeout to a black hole, no endpoints, and the idle timeout.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

#[test]
fn client_half_close_backend_still_answers() {
    let sink = SinkServer::start("127.0.0.2");
    let port = free_port();
    let mut lb = Sluice::run(&one_service(port, "workers = 1", &[ep(sink.addr)], ""));
    lb.wait_ready_accepting(node_addr(port));
    lb.wait_until("sink answers", || {
        let Ok(mut s) = connect(node_addr(port)) else {
            return false;
        };
        let _ = s.shutdown(Shutdown::Write);
        let (reply, _) = read_to_end_outcome(&mut s, Duration::from_secs(2));
        !reply.is_empty()
    });

    let mut s = connect(node_addr(port)).unwrap();
    let sent = Pattern::write_to(5, 300_000, &mut s).unwrap();
    s.shutdown(Shutdown::Write).unwrap(); // FIN client → backend
                                          // The backend sees EOF, and only then sends its answer, which must still arrive.
    let (reply, ended) = read_to_end_outcome(&mut s, Duration::from_secs(15));
    assert_eq!(String::from_utf8_lossy(&reply).trim(), sent);
    assert_eq!(ended, Ended::Eof);
    let r = sink
        .reports()
        .into_iter()
        .find(|r| r.bytes == 300_000)
        .expect("sink report");
    assert_eq!(r.ended, Ended::Eof, "backend saw a clean EOF");
}

#[test]
fn backend_half_close_client_keeps_sending() {
    let peer = FinFirstServer::start("127.0.0.3", b"server-done-writing\n");
    let port = free_port();
    let mut lb = Sluice::run(&one_service(port, "workers = 1", &[ep(peer.addr)], ""));
    lb.wait_ready_accepting(node_addr(port));
    lb.wait_until("banner through sluice", || {
        let Ok(mut s) = connect(node_addr(port)) else {
            return false;
        };
        let mut b = [0u8; 20];
        s.set_read_timeout(Some(Duration::from_secs(2))).is_ok() && s.read_exact(&mut b).is_ok()
    });
    let mut s = connect(node_addr(port)).unwrap();
    let mut banner = [0u8; 20];
    s.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"server-done-writing\n");
    let (rest, ended) = read_to_end_outcome(&mut s, Duration::from_secs(15));
    assert_eq!(
        (rest.len(), ended),
        (0, Ended::Eof),
        "client sees the backend's FIN"
    );

    // The other direction still flows.
    let mut sent = Vec::new();
    for i in 0..50 {
        let chunk = format!("line {i} after the backend's FIN\n").repeat(100);
        s.write_all(chunk.as_bytes())
            .expect("client can still write after backend FIN");
        sent.extend_from_slice(chunk.as_bytes());
    }
    s.shutdown(Shutdown::Write).unwrap();
    // Probe connections report empty reads; ours is the one with data (reported at EOF).
    let r = wait_for("backend report with the data", SOON, || {
        peer.reports().into_iter().find(|r| !r.data.is_empty())
    });
    assert_eq!(r.data.len(), sent.len());
    assert!(
        r.data == sent,
        "backend received exactly what the client sent after the FIN"
    );
    assert_eq!(r.ended, Ended::Eof);
}

#[test]
fn backend_reset_reaches_client_as_reset() {
    let rst = ResetServer::start("127.0.0.4", 4);
    let port = free_port();
    let mut lb = Sluice::run(&one_service(port, "workers = 1", &[ep(rst.addr)], ""));
    lb.wait_ready_accepting(node_addr(port));
    lb.wait_until("backend reached through sluice", || {
        let before = rst.reports().len();
        let Ok(mut s) = connect(node_addr(port)) else {
            return false;
        };
        let _ = s.write_all(b"ping");
        let _ = read_to_end_outcome(&mut s, Duration::from_secs(2));
        rst.reports().len() > before
    });

    for i in 0..5 {
        let mut s = connect(node_addr(port)).unwrap();
        s.write_all(b"ping").unwrap();
        let (data, ended) = read_to_end_outcome(&mut s, Duration::from_secs(10));
        assert!(data.is_empty());
        assert_eq!(
            ended,
            Ended::Reset,
            "attempt {i}: backend RST must reach the client as RST, not {ended:?}"
        );
    }
}

#[test]
fn client_reset_reaches_backend_promptly() {
    let obs = ObserverServer::start("127.0.0.2");
    let port = free_port();
    let mut lb = Sluice::run(&one_service(port, "workers = 1", &[ep(obs.addr)], ""));
    lb.wait_ready_accepting(node_addr(port));
    // Probe until a connection reaches the backend; then let every probe finish.
    lb.wait_until("backend reached through sluice", || {
        let _ = connect(node_addr(port)).map(|mut s| s.write_all(b"."));
        obs.connections() > 0
    });
    wait_for("probes to end", SOON, || {
        (obs.reports().len() == obs.connections()).then_some(())
    });
    let baseline = obs.connections();

    let mut s = connect(node_addr(port)).unwrap();
    s.write_all(b"abc").unwrap();
    wait_for("backend connection", SOON, || {
        (obs.connections() > baseline).then_some(())
    });
    let start = Instant::now();
    reset_close(s);
    let r = obs
        .wait_reports(baseline + 1, Duration::from_secs(5))
        .pop()
        .unwrap();
    assert!(
        matches!(r.ended, Ended::Reset | Ended::Eof),
        "backend should see reset/EOF, saw {:?}",
        r.ended
    );
    eprintln!(
        "backend saw {:?} {:?} after client RST",
        r.ended,
        start.elapsed()
    );
}

#[test]
fn black_hole_endpoint_times_out_after_connect_timeout() {
    let hole = BlackHole::new("127.0.0.3");
    let port = free_port();
    let cfg = one_service(
        port,
        "workers = 1",
        &[ep(hole.addr)],
        "connect_timeout = \"500ms\"\nconnect_retries = 0",
    );
    let mut lb = Sluice::run(&cfg);
    lb.wait_ready_accepting(node_addr(port));

    let mut s = connect(node_addr(port)).unwrap();
    let start = Instant::now();
    let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n");
    let (data, ended) = read_to_end_outcome(&mut s, Duration::from_secs(10));
    let took = start.elapsed();
    assert!(data.is_empty());
    assert!(
        matches!(ended, Ended::Eof | Ended::Reset),
        "client not closed within 10 s: {ended:?}"
    );
    assert!(
        took >= Duration::from_millis(300),
        "closed after {took:?}: before the 500ms connect timeout"
    );
}

/// How long a client waits for its reset, median of `tries` connections to `node`. The
/// worker wakes at least every 100 ms: a reset that waits for that wake-up (issue 12: the
/// close was deferred to the next loop turn) takes ~100 ms every time, one made at once takes
/// well under a millisecond. The median of several tries keeps a loaded machine's hiccups out.
fn median_time_to_reset(node: std::net::SocketAddr, tries: usize) -> Duration {
    let mut took = Vec::new();
    for i in 0..tries {
        let start = Instant::now();
        // The reset may come before connect(2) has returned.
        let (data, ended) =
            match std::net::TcpStream::connect_timeout(&node, Duration::from_secs(5)) {
                Ok(mut s) => {
                    let _ = s.write_all(b"hello?");
                    read_to_end_outcome(&mut s, Duration::from_secs(5))
                }
                Err(e) => (Vec::new(), classify(&e)),
            };
        took.push(start.elapsed());
        assert!(data.is_empty(), "attempt {i}: served without an endpoint");
        assert_eq!(
            ended,
            Ended::Reset,
            "attempt {i}: must be reset, not closed"
        );
    }
    took.sort();
    eprintln!("time to reset: {took:?}");
    took[tries / 2]
}

#[test]
fn no_endpoints_resets_client_at_once() {
    let port = free_port();
    let cfg = one_service(port, "workers = 1", &[], "connect_timeout = \"5s\"");
    let mut lb = Sluice::run(&cfg);
    lb.wait_ready_accepting(node_addr(port));
    let median = median_time_to_reset(node_addr(port), 9);
    assert!(
        median < Duration::from_millis(50),
        "reset after {median:?} (median): not at once but at the worker's next tick"
    );
}

#[test]
fn refusing_endpoints_reset_client_as_soon_as_retries_are_spent() {
    let closed: Vec<ClosedPort> = (2..=4)
        .map(|i| ClosedPort::new(&format!("127.0.0.{i}")))
        .collect();
    let port = free_port();
    let eps: Vec<String> = closed.iter().map(|c| ep(c.addr)).collect();
    let cfg = one_service(
        port,
        "workers = 1",
        &eps,
        "connect_timeout = \"5s\"\nconnect_retries = 2",
    );
    let mut lb = Sluice::run(&cfg);
    lb.wait_ready_accepting(node_addr(port));
    let median = median_time_to_reset(node_addr(port), 9);
    assert!(
        median < Duration::from_millis(50),
        "reset after {median:?} (median): three refused connects take microseconds"
    );
}

#[test]
fn idle_connection_is_closed_active_one_is_not() {
    let echo = EchoServer::start("127.0.0.4");
    let port = free_port();
    let cfg = one_service(
        port,
        "workers = 1",
        &[ep(echo.addr)],
        "idle_timeout = \"1s\"",
    );
    let mut lb = Sluice::run(&cfg);
    lb.wait_ready_echo(node_addr(port));

    // Active: one byte every 300 ms for 3 s, each echoed (pacing, not synchronisation).
    let node = node_addr(port);
    let active = std::thread::spawn(move || -> Result<(), String> {
        let mut s = connect(node).map_err(|e| e.to_string())?;
        for i in 0..10u8 {
            echo_roundtrip(&mut s, &[b'a' + i]).map_err(|e| format!("byte {i}: {e}"))?;
            std::thread::sleep(Duration::from_millis(300));
        }
        echo_roundtrip(&mut s, b"still here").map_err(|e| format!("final: {e}"))
    });

    let mut idle = connect(node).unwrap();
    echo_roundtrip(&mut idle, b"x").unwrap();
    let last_activity = Instant::now();
    let (data, ended) = read_to_end_outcome(&mut idle, Duration::from_secs(10));
    let idle_for = last_activity.elapsed();
    assert!(data.is_empty());
    assert!(
        matches!(ended, Ended::Eof | Ended::Reset),
        "idle connection not closed: {ended:?}"
    );
    assert!(
        idle_for >= Duration::from_millis(700),
        "closed after {idle_for:?} of idleness (timeout 1s)"
    );

    active
        .join()
        .unwrap()
        .expect("active connection must survive the idle timeout");
}
