//! A forced stop never makes a cut stream look complete (issue 12): a connection cut before
//! both directions finished — a second SIGTERM, the drain timeout, an idle timeout while
//! bytes are still on their way — ends with a reset on both sides, never with a FIN after
//! which a truncated download would look whole.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Length of the download: far more than the socket buffers hold, so it is mid-stream.
const DOWNLOAD: u64 = 100_000_000;

/// A download through sluice whose client has read 1 MB and then stops reading.
fn stalled_download(top: &str) -> (Sluice, Backend, TcpStream) {
    let source = SourceServer::start("127.0.0.2", 42, DOWNLOAD);
    let port = free_port();
    let mut lb = Sluice::run(&one_service(
        port,
        &format!("workers = 1\n{top}"),
        &[ep(source.addr)],
        "",
    ));
    lb.wait_ready_accepting(node_addr(port));
    let mut client = connect(node_addr(port)).unwrap();
    let mut first = vec![0u8; 1 << 20];
    client.read_exact(&mut first).unwrap();
    (lb, source, client)
}

fn signal(lb: &Sluice, sig: libc::c_int) {
    // SAFETY: kill(2) on the PID of a child this test spawned and still owns.
    unsafe { libc::kill(lb.pid() as i32, sig) };
}

/// The client reads what is left: the stream must end with a reset, never a clean EOF
/// short of the whole download.
fn assert_cut_with_reset(client: &mut TcpStream, what: &str) {
    let (bytes, _, ended) = hash_to_end(client);
    let total = bytes + (1 << 20);
    assert!(total < DOWNLOAD, "{what}: the whole download arrived");
    assert_eq!(
        ended,
        Ended::Reset,
        "{what}: the client got {ended:?} after {total} of {DOWNLOAD} bytes; a cut stream must end with a reset"
    );
}

#[test]
fn a_second_signal_resets_a_download_it_cuts() {
    let (mut lb, source, mut client) = stalled_download("drain_timeout = \"60s\"");
    signal(&lb, libc::SIGTERM);
    wait_for("the drain to start", SOON, || {
        lb.stderr().contains("draining").then_some(())
    });
    lb.assert_alive();
    signal(&lb, libc::SIGTERM);
    let status = lb.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "a second signal exits with 1");
    assert_cut_with_reset(&mut client, "second SIGTERM");
    // Both downloads (the readiness probe's and the client's) were cut on the backend too.
    for report in source.wait_reports(2, SOON) {
        assert!(
            report.digest.is_none(),
            "the backend could write its whole stream: it was not cut"
        );
    }
}

#[test]
fn the_drain_timeout_resets_a_download_it_cuts() {
    let (mut lb, _source, mut client) = stalled_download("drain_timeout = \"1s\"");
    let started = Instant::now();
    signal(&lb, libc::SIGTERM);
    let status = lb.wait_exit(SOON);
    assert_eq!(
        status.code(),
        Some(0),
        "a drain that ends at its timeout exits 0"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_cut_with_reset(&mut client, "drain timeout");
}

/// A backend that sends `len` bytes, then waits (without closing) for the client's end and
/// reports how it ended.
fn writes_then_waits(ip: &str, len: usize) -> Backend {
    Backend::start(
        ip,
        "writes-then-waits",
        Arc::new(move |mut s: TcpStream, st: &BackendState| {
            let _ = s.write_all(&vec![b'x'; len]);
            let (data, ended) = read_to_end_outcome(&mut s, Duration::from_secs(30));
            st.report(Report {
                bytes: data.len() as u64,
                digest: None,
                data,
                ended,
            });
        }),
    )
}

/// Idle timeout while bytes are still queued towards a client that stopped reading: both
/// sides are reset (the client would otherwise read the queued bytes and a clean EOF).
#[test]
fn an_idle_timeout_with_bytes_still_queued_resets_both_sides() {
    const LEN: usize = 8192;
    let backend = writes_then_waits("127.0.0.3", LEN);
    let port = free_port();
    let mut lb = Sluice::run(&one_service(
        port,
        "workers = 1",
        &[ep(backend.addr)],
        "idle_timeout = \"1s\"",
    ));
    lb.wait_ready_accepting(node_addr(port));
    wait_for("the readiness probe to end", SOON, || {
        (backend.reports().len() == 1).then_some(())
    });
    // A client with the smallest receive buffer: most of the bytes stay in sluice's socket.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(1024).unwrap();
    sock.connect_timeout(&node_addr(port).into(), Duration::from_secs(5))
        .unwrap();
    let mut client: TcpStream = sock.into();
    let reports = backend.wait_reports(2, SOON);
    let (data, ended) = read_to_end_outcome(&mut client, Duration::from_secs(10));
    // (With a FIN, the kernel would go on delivering the queued bytes and then an EOF,
    // although the backend never ended its stream.)
    assert_eq!(
        ended,
        Ended::Reset,
        "client: {ended:?} after {} of the {LEN} bytes sent so far",
        data.len()
    );
    assert_eq!(reports[1].ended, Ended::Reset, "backend side");
}
