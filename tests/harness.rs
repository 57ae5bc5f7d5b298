//! Checks of the test harness itself: every backend, talked to directly (no sluice), does
//! what the other test files rely on. If one of these fails, failures elsewhere say nothing
//! about sluice.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

#[test]
fn name_server_answers_keep_alive_and_counts_connections() {
    let b = NameServer::start("127.0.0.2", "alpha");
    assert_eq!(ask_name(b.addr).unwrap(), "alpha");
    let mut s = connect(b.addr).unwrap();
    for _ in 0..3 {
        assert_eq!(ask_name_on(&mut s).unwrap(), "alpha");
    }
    wait_for("2 connections counted", SOON, || {
        (b.connections() == 2).then_some(())
    });
}

#[test]
fn echo_server_echoes_and_passes_eof_back() {
    let b = EchoServer::start("127.0.0.3");
    let mut s = connect(b.addr).unwrap();
    echo_roundtrip(&mut s, b"hello").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (rest, ended) = read_to_end_outcome(&mut s, Duration::from_secs(10));
    assert!(rest.is_empty());
    assert_eq!(ended, Ended::Eof);
    assert_eq!(b.wait_reports(1, SOON)[0].bytes, 5);
}

#[test]
fn sink_server_returns_sha256_after_client_eof() {
    let b = SinkServer::start("127.0.0.4");
    let mut s = connect(b.addr).unwrap();
    let sent = Pattern::write_to(7, 3 * PATTERN_BLOCK as u64 + 5, &mut s).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (reply, ended) = read_to_end_outcome(&mut s, Duration::from_secs(10));
    assert_eq!(ended, Ended::Eof);
    assert_eq!(String::from_utf8(reply).unwrap().trim(), sent);
    // Known answer: SHA-256 of nothing.
    assert_eq!(
        Pattern::sha256(1, 0),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn source_server_sends_the_pattern_then_eof() {
    let len = 1_000_003;
    let b = SourceServer::start("127.0.0.2", 42, len);
    let mut s = connect(b.addr).unwrap();
    let (n, digest, ended) = hash_to_end(&mut s);
    assert_eq!((n, ended), (len, Ended::Eof));
    assert_eq!(digest, Pattern::sha256(42, len));
    assert_ne!(digest, Pattern::sha256(43, len), "seed matters");
}

#[test]
fn fin_first_server_keeps_reading_after_its_fin() {
    let b = FinFirstServer::start("127.0.0.3", b"bye-from-backend");
    let mut s = connect(b.addr).unwrap();
    let mut banner = [0u8; 16];
    s.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"bye-from-backend");
    let (rest, ended) = read_to_end_outcome(&mut s, Duration::from_secs(10));
    assert_eq!((rest.len(), ended), (0, Ended::Eof));
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"still talking").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let r = &b.wait_reports(1, SOON)[0];
    assert_eq!(r.data, b"still talking");
    assert_eq!(r.ended, Ended::Eof);
}

#[test]
fn reset_server_resets() {
    let b = ResetServer::start("127.0.0.4", 4);
    let mut s = connect(b.addr).unwrap();
    s.write_all(b"ping").unwrap();
    let (_, ended) = read_to_end_outcome(&mut s, Duration::from_secs(10));
    assert_eq!(ended, Ended::Reset);
}

#[test]
fn observer_sees_client_reset() {
    let b = ObserverServer::start("127.0.0.2");
    let mut s = connect(b.addr).unwrap();
    s.write_all(b"abc").unwrap();
    wait_for("observer to read", SOON, || {
        (b.connections() == 1).then_some(())
    });
    reset_close(s);
    let r = &b.wait_reports(1, SOON)[0];
    assert_eq!(r.ended, Ended::Reset);
}

#[test]
fn closed_port_refuses() {
    let c = ClosedPort::new("127.0.0.3");
    let e = TcpStream::connect_timeout(&c.addr, Duration::from_secs(2)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn black_hole_swallows_syns() {
    let h = BlackHole::new("127.0.0.4");
    let start = Instant::now();
    let e = TcpStream::connect_timeout(&h.addr, Duration::from_millis(500)).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ),
        "{e}"
    );
    assert!(start.elapsed() >= Duration::from_millis(450));
}

#[test]
fn accept_queue_len_sees_unaccepted_connections() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    assert_eq!(accept_queue_len(port), Some(0));
    let (_held, err) = open_many(l.local_addr().unwrap(), 3);
    assert!(err.is_none());
    wait_for("3 queued", SOON, || {
        (accept_queue_len(port) == Some(3)).then_some(())
    });
    let _ = l.accept().unwrap();
    assert_eq!(accept_queue_len(port), Some(2));
}

#[test]
fn sluice_guard_reports_exit_of_a_bad_command() {
    let mut s = Sluice::spawn(&["no-such-subcommand"], Launch::default());
    let status = s.wait_exit(SOON);
    assert!(!status.success());
}
