//! Many connections at once: 2,000 client connections held open together, each echoing its
//! own distinct payload, once per relay mode (one after the other, never both at once).
//! Alone in its test binary because of its fd budget: this process holds ~4,000 fds (2,000
//! client sockets + 2,000 backend sockets); sluice holds ~12,000 with `splice` (2 sockets +
//! 2 pipes of 2 fds per connection) and ~4,000 with `copy`, under the 20,000 limit here.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;

const CONNECTIONS: usize = 2000;

fn payload(i: usize) -> Vec<u8> {
    let mut p = format!("connection {i:05} says: ").into_bytes();
    let mut tail = vec![0u8; 512 + (i % 8) * 64];
    Pattern::new(i as u64).fill(&mut tail);
    p.extend_from_slice(&tail);
    p
}

#[test]
fn two_thousand_concurrent_connections_each_echo_their_own_payload() {
    concurrent_echo("splice");
    concurrent_echo("copy");
    concurrent_echo("auto");
}

fn concurrent_echo(relay: &str) {
    let echos = [
        EchoServer::start("127.0.0.2"),
        EchoServer::start("127.0.0.3"),
        EchoServer::start("127.0.0.4"),
    ];
    let port = free_port();
    let eps: Vec<String> = echos.iter().map(|e| ep(e.addr)).collect();
    let top = format!("workers = 2\nrelay = \"{relay}\"");
    let mut lb = Sluice::run(&one_service(port, &top, &eps, ""));
    lb.wait_ready_echo(node_addr(port));
    let before: usize = echos.iter().map(|e| e.connections()).sum();

    // Open all connections first, so they are all open at once.
    let mut conns: Vec<TcpStream> = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        match connect(node_addr(port)) {
            Ok(s) => conns.push(s),
            Err(e) => panic!("{relay}: connection {i} of {CONNECTIONS} failed: {e}"),
        }
    }
    // Each sends its payload (small enough to sit in socket buffers), then all are read.
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(&payload(i))
            .unwrap_or_else(|e| panic!("write on connection {i}: {e}"));
    }
    let mut bad = Vec::new();
    for (i, s) in conns.iter_mut().enumerate() {
        let want = payload(i);
        let mut got = vec![0u8; want.len()];
        match s.read_exact(&mut got) {
            Ok(()) if got == want => {}
            Ok(()) => bad.push(format!("connection {i}: wrong bytes")),
            Err(e) => bad.push(format!("connection {i}: {e}")),
        }
    }
    assert!(
        bad.is_empty(),
        "{relay}: {} of {CONNECTIONS} failed, first: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );

    // The backends really held them all at the same time.
    let accepted: usize = echos.iter().map(|e| e.connections()).sum::<usize>() - before;
    let active: usize = echos.iter().map(|e| e.active()).sum();
    assert_eq!(accepted, CONNECTIONS);
    assert!(active >= CONNECTIONS, "backends hold {active} connections");
    eprintln!(
        "{relay}: sluice holds {} fds with {CONNECTIONS} connections open",
        lb.fd_count()
    );
    lb.assert_alive();
}
