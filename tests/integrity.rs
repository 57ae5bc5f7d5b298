//! Bytes arrive intact: 256 MiB each way through sluice, checked with SHA-256, for both
//! relay modes. Upload: client → SinkServer (which answers with the digest of what it read,
//! after the client's FIN). Download: SourceServer → client (pattern, then FIN).
//! (sha2 is optimised even in dev builds, see Cargo.toml, so this stays affordable there.)

mod common;
use common::*;
use std::net::Shutdown;
use std::time::Duration;

const VOLUME: u64 = 256 << 20;

fn upload(relay: &str, seed: u64) {
    let sink = SinkServer::start("127.0.0.2");
    let port = free_port();
    let top = format!("workers = 1\nrelay = \"{relay}\"");
    let mut lb = Sluice::run(&one_service(port, &top, &[ep(sink.addr)], ""));
    lb.wait_ready_accepting(node_addr(port));

    // Readiness probe for a sink: send nothing, FIN, expect the digest of nothing.
    lb.wait_until("sink answers through sluice", || {
        let Ok(mut s) = connect(node_addr(port)) else {
            return false;
        };
        let _ = s.shutdown(Shutdown::Write);
        let (reply, _) = read_to_end_outcome(&mut s, Duration::from_secs(2));
        String::from_utf8_lossy(&reply).trim() == Pattern::sha256(0, 0)
    });

    let mut s = connect(node_addr(port)).unwrap();
    let sent = Pattern::write_to(seed, VOLUME, &mut s).expect("upload through sluice");
    s.shutdown(Shutdown::Write).unwrap();
    let (reply, ended) = read_to_end_outcome(&mut s, Duration::from_secs(60));
    assert_eq!(
        ended,
        Ended::Eof,
        "client sees the sink's FIN after its answer"
    );
    assert_eq!(
        String::from_utf8_lossy(&reply).trim(),
        sent,
        "digest of what the backend read"
    );
    let report = sink
        .reports()
        .into_iter()
        .find(|r| r.bytes > 0)
        .expect("sink report");
    assert_eq!(report.bytes, VOLUME);
}

fn download(relay: &str, seed: u64) {
    let source = SourceServer::start("127.0.0.3", seed, VOLUME);
    let port = free_port();
    let top = format!("workers = 1\nrelay = \"{relay}\"");
    let mut lb = Sluice::run(&one_service(port, &top, &[ep(source.addr)], ""));
    // Readiness probe: the first 8 bytes of the pattern arrive; then abort the download.
    let mut head = [0u8; 8];
    Pattern::new(seed).fill(&mut head);
    lb.wait_until("source answers through sluice", || {
        let Ok(mut s) = connect(node_addr(port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut got = [0u8; 8];
        let ok = std::io::Read::read_exact(&mut s, &mut got).is_ok() && got == head;
        reset_close(s);
        ok
    });

    let mut s = connect(node_addr(port)).unwrap();
    let (n, digest, ended) = hash_to_end(&mut s);
    assert_eq!(ended, Ended::Eof, "download ends with a clean FIN");
    assert_eq!(n, VOLUME, "byte count");
    assert_eq!(
        digest,
        Pattern::sha256(seed, VOLUME),
        "SHA-256 of the download"
    );
}

#[test]
fn upload_256_mib_splice() {
    upload("splice", 11);
}

#[test]
fn upload_256_mib_copy() {
    upload("copy", 12);
}

#[test]
fn download_256_mib_splice() {
    download("splice", 21);
}

#[test]
fn download_256_mib_copy() {
    download("copy", 22);
}

#[test]
fn upload_256_mib_auto() {
    upload("auto", 13);
}

#[test]
fn download_256_mib_auto() {
    download("auto", 23);
}

/// Small writes (each far below a ring buffer, so under io_uring with `relay = "auto"` they
/// go through the ring receive and are sent from the ring's buffers) to a backend that reads
/// nothing until the client's writes block: sluice meets a full destination mid-stream
/// (short or refused sends, the source leaving the ring), then every byte must arrive, in
/// order, with the client's FIN after it.
#[test]
fn small_writes_to_a_backend_that_stops_reading_arrive_intact() {
    use std::io::{Read, Write};
    use std::sync::{mpsc, Arc, Condvar, Mutex};
    // A small receive buffer on the backend: its window closes after a few KiB.
    let listener = {
        let addr: std::net::SocketAddr = "127.0.0.2:0".parse().unwrap();
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.bind(&addr.into()).unwrap();
        sock.listen(16).unwrap();
        std::net::TcpListener::from(sock)
    };
    let backend = listener.local_addr().unwrap();
    let go = Arc::new((Mutex::new(false), Condvar::new()));
    let (done_tx, done_rx) = mpsc::channel::<Vec<u8>>();
    {
        let go = Arc::clone(&go);
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                let (go, done) = (Arc::clone(&go), done_tx.clone());
                std::thread::spawn(move || {
                    let (lock, cv) = &*go;
                    let started = cv
                        .wait_timeout_while(lock.lock().unwrap(), Duration::from_secs(60), |g| !*g)
                        .unwrap();
                    drop(started);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut all = Vec::new();
                    let _ = s.read_to_end(&mut all);
                    if !all.is_empty() {
                        let _ = done.send(all);
                    }
                });
            }
        });
    }
    let port = free_port();
    let mut lb = Sluice::run(&one_service(
        port,
        "workers = 1\nrelay = \"auto\"",
        &[ep(backend)],
        "",
    ));
    lb.wait_ready_accepting(node_addr(port));

    let byte = |i: usize| (i.wrapping_mul(31) ^ (i / 1021)) as u8;
    let mut s = connect(node_addr(port)).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_nonblocking(true).unwrap();
    let mut sent = 0usize;
    let started = std::time::Instant::now();
    // Bytes the client's kernel still holds (not yet acknowledged by sluice's).
    let unacked = |s: &std::net::TcpStream| {
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int for a TCP socket.
        unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(s), libc::TIOCOUTQ, &mut n) };
        n
    };
    // Write 1,000-byte pieces until the whole path is full (sluice's kernel stops taking
    // them, or the client's buffer is full; bounded in bytes and time). Each piece waits
    // (bounded) for sluice's kernel to take it before the next, so that sluice receives
    // them one by one, far below a ring buffer.
    loop {
        let piece: Vec<u8> = (sent..sent + 1000).map(byte).collect();
        match s.write(&piece) {
            Ok(n) => {
                sent += n;
                let taken = (0..100_000).any(|_| {
                    std::thread::yield_now();
                    unacked(&s) == 0
                });
                if !taken {
                    break; // sluice's window is closed: the path is full
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if sent > 0 {
                    break;
                }
            }
            Err(e) => panic!("write through sluice: {e}"),
        }
        assert!(sent < 256 << 20, "the path never filled up");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "writes too slow"
        );
    }
    // The backend starts reading; a few more pieces follow, then the FIN.
    *go.0.lock().unwrap() = true;
    go.1.notify_all();
    s.set_nonblocking(false).unwrap();
    for _ in 0..100 {
        let piece: Vec<u8> = (sent..sent + 1000).map(byte).collect();
        s.write_all(&piece).unwrap();
        sent += 1000;
    }
    s.shutdown(Shutdown::Write).unwrap();
    let got = done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the backend read the upload");
    assert_eq!(got.len(), sent, "bytes the backend read");
    let first_bad = got.iter().enumerate().position(|(i, b)| *b != byte(i));
    assert_eq!(
        first_bad, None,
        "first byte that differs from what was sent"
    );
}
