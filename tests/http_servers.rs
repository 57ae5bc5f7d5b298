//! sluice's own HTTP listeners as a load balancer's probe and a scraper meet them: slow
//! clients cannot starve `/healthz` or `/metrics`, connections are kept alive, and a client
//! that stalls in its request head is closed by the header-read timeout.

mod common;
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

/// A sluice with one Service, `metrics_address` and `health_address` on loopback.
struct Node {
    sluice: Sluice,
    metrics: SocketAddr,
    health: SocketAddr,
    _sock: PathBuf,
    _dir: TempDir,
    _backend: Backend,
}

impl Node {
    fn start() -> Node {
        let backend = NameServer::start("127.0.0.2", "a");
        let port = free_port();
        let dir = TempDir::new("http");
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let health = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let sock = dir.path().join("ctl.sock");
        let top = format!(
            "workers = 2\ncontrol_socket = \"{}\"\nmetrics_address = \"{metrics}\"\nhealth_address = \"{health}\"",
            sock.display()
        );
        let config = one_service(port, &top, &[ep(backend.addr)], "");
        let mut sluice = Sluice::run(&config);
        sluice.wait_ready_name(node_addr(port));
        sluice.wait_until("the health listener answers", || {
            get(health, "/healthz").is_ok()
        });
        Node {
            sluice,
            metrics,
            health,
            _sock: sock,
            _dir: dir,
            _backend: backend,
        }
    }
}

/// One request on a fresh connection (`Connection: close`), each step within `timeout`:
/// (status code, body).
fn get_within(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no response head: {text:?}")))?;
    let code = head
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status: {head:?}")))?;
    Ok((code, body.to_owned()))
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    get_within(addr, path, Duration::from_secs(5))
}

/// `n` connections that each send half a request head and then stall.
fn stalled_clients(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = connect(addr).expect("connect a slow client");
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: sl")
                .expect("half a head");
            s
        })
        .collect()
}

/// Reads (up to `timeout`) until the server closes the connection: true when it did.
fn closed_by_server(s: &mut TcpStream, timeout: Duration) -> bool {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// 64 slow clients hold half a request head each on the health listener and 64 on the
/// metrics listener (the old server had 16 slots held 10 s each: most probes timed out).
/// Every probe — each with its own 5-second timeout, as a load balancer's — is answered
/// while they hang; and the stalled clients are closed by the header-read timeout.
#[test]
fn slow_clients_do_not_starve_healthz_or_metrics() {
    let mut node = Node::start();
    let mut slow = stalled_clients(node.health, 64);
    slow.extend(stalled_clients(node.metrics, 64));
    for i in 0..7 {
        let (code, body) = get(node.health, "/healthz")
            .unwrap_or_else(|e| panic!("/healthz probe {i} while 128 clients stall: {e}"));
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"nodeEligible\""), "{body}");
    }
    let (code, body) = get(node.metrics, "/metrics").expect("a scrape while clients stall");
    assert_eq!(code, 200);
    assert!(body.contains("sluice_service_connections_total"), "{body}");
    let (code, _) = get(node.metrics, "/livez").expect("/livez on the metrics listener");
    assert_eq!(code, 200);
    // The header-read timeout (10 s) closes every stalled client.
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(
            closed_by_server(s, Duration::from_secs(20)),
            "stalled client {i} still open after 20 s"
        );
    }
    node.sluice.assert_alive();
}

/// Many more idle clients than the bound (128 per listener): the longest-idle ones are
/// closed to make room, and probes are answered.
#[test]
fn connections_over_the_bound_shed_the_oldest_idle() {
    let mut node = Node::start();
    let mut slow = stalled_clients(node.health, 300);
    for i in 0..5 {
        let (code, _) = get(node.health, "/healthz")
            .unwrap_or_else(|e| panic!("/healthz probe {i} with 300 idle clients: {e}"));
        assert_eq!(code, 200);
    }
    // The first ones connected were shed at once (not after the header-read timeout).
    assert!(
        closed_by_server(&mut slow[0], Duration::from_secs(3)),
        "the oldest idle client was not shed"
    );
    // The newest ones are still open: they complete their request and are answered.
    let last = slow.last_mut().unwrap();
    last.write_all(b"ow\r\n\r\n").unwrap();
    last.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = [0u8; 12];
    last.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    node.sluice.assert_alive();
}

/// Keep-alive: several requests on one connection, each answered in turn.
#[test]
fn health_and_metrics_keep_connections_alive() {
    let node = Node::start();
    for (addr, paths) in [
        (node.health, &["/healthz", "/livez", "/healthz"][..]),
        (node.metrics, &["/metrics", "/healthz", "/metrics"][..]),
    ] {
        let mut s = connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for path in paths {
            write!(s, "GET {path} HTTP/1.1\r\nHost: k\r\n\r\n").unwrap();
            let body = read_http_body(&mut s).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(!body.is_empty(), "{path}");
        }
    }
}
