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
