//! UDP test peers and the sluice set-up of the UDP suites (tests/udp*.rs): pods that answer
//! every datagram with their name, clients on loopback, one UDP Service on a wildcard
//! listener, metrics read over HTTP.

use super::*;
use std::net::UdpSocket;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// How long a client waits for one reply before calling the datagram lost.
pub const REPLY_WAIT: Duration = Duration::from_millis(300);

/// A datagram a pod received: its source and bytes.
pub type Datagram = (SocketAddr, Vec<u8>);

/// A UDP pod: answers each datagram with `NAME LEN` (or, for a datagram ending with `BIG`,
/// with 65,507 bytes), `replies` times, and records what it received.
pub struct UdpPod {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<Datagram>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Three pods `a`, `b`, `c` on 127.0.0.2, .3 and .4, all on `port`, one reply per datagram.
pub fn three_pods(port: u16) -> Vec<UdpPod> {
    [("127.0.0.2", "a"), ("127.0.0.3", "b"), ("127.0.0.4", "c")]
        .iter()
        .map(|(ip, n)| UdpPod::start(pod_addr(ip, port), n, 1))
        .collect()
}

impl UdpPod {
    pub fn start(addr: SocketAddr, name: &str, replies: usize) -> UdpPod {
        let socket = bind_again(addr, UdpSocket::bind);
        let addr = socket.local_addr().unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (stop2, received2, name) = (Arc::clone(&stop), Arc::clone(&received), name.to_owned());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 70_000];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                received2.lock().unwrap().push((from, buf[..n].to_vec()));
                let reply = if buf[..n].ends_with(b"BIG") {
                    vec![b'x'; 65_507]
                } else {
                    format!("{name} {n}").into_bytes()
                };
                for _ in 0..replies {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        UdpPod {
            addr,
            stop,
            received,
            thread: Some(thread),
        }
    }

    pub fn received(&self) -> Vec<Datagram> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for UdpPod {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP port free on every address (the NodePort and the pods' port).
///
/// Not one the kernel picks for `bind(:0)`: that port is in the ephemeral range and is
/// handed out again to the next client socket of any test running in parallel, which then
/// holds it when sluice binds it later (a reload once failed with "Address already in
/// use" that way). [`free_port_where`] picks below the ephemeral range.
pub fn free_udp_port() -> u16 {
    free_port_where(|port| {
        let in_use = |r: std::io::Result<UdpSocket>| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::AddrInUse);
        UdpSocket::bind(("0.0.0.0", port)).is_ok() && !in_use(UdpSocket::bind(("::", port)))
    })
}

pub fn client(ip: &str) -> UdpSocket {
    let c = UdpSocket::bind((ip, 0)).unwrap();
    c.set_read_timeout(Some(REPLY_WAIT)).unwrap();
    c
}

/// Send `payload` to `node` and wait for one reply: (text, the address it came from).
pub fn ask(c: &UdpSocket, node: SocketAddr, payload: &[u8]) -> Option<(String, SocketAddr)> {
    c.send_to(payload, node).unwrap();
    let mut buf = vec![0u8; 70_000];
    let (n, from) = c.recv_from(&mut buf).ok()?;
    Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

/// The pod name in a reply `NAME LEN`.
pub fn name(reply: &str) -> &str {
    reply.split(' ').next().unwrap_or("")
}

pub struct Setup {
    pub dir: TempDir,
    pub node_port: u16,
    pub metrics: SocketAddr,
    /// The readiness probe's client socket, kept bound as long as the set-up lives: its
    /// flow stays in sluice's table (idle timeout), and a test client that got the same
    /// port once it was closed would join that flow instead of opening its own.
    probe: UdpSocket,
}

impl Setup {
    pub fn new() -> Setup {
        Setup {
            dir: TempDir::new("udp"),
            node_port: free_udp_port(),
            metrics: SocketAddr::from(([127, 0, 0, 1], free_port())),
            probe: client("127.0.0.1"),
        }
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("ctl.sock")
    }

    /// A config listening on every address with one UDP Service.
    pub fn config(&self, top: &str, endpoints: &[SocketAddr], service_extra: &str) -> String {
        let eps: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            "node_port_range = \"{np}-{np}\"\nworkers = 2\ncontrol_socket = \"{sock}\"\n\
             metrics_address = \"{m}\"\n{top}\n\
             [[service]]\nname = \"dns\"\nnamespace = \"itest\"\nprotocol = \"UDP\"\nport = 53\n\
             node_port = {np}\nendpoints = [{eps}]\n{service_extra}\n",
            np = self.node_port,
            sock = self.sock().display(),
            m = self.metrics,
            eps = eps.join(", "),
        )
    }

    pub fn node(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.node_port))
    }

    pub fn start(&self, config: &str) -> Sluice {
        let mut s = Sluice::run(config);
        let node = self.node();
        s.wait_until("the UDP NodePort answers", || {
            ask(&self.probe, node, b"probe").is_some()
        });
        s
    }

    pub fn reload(&self, sluice: &Sluice, config: &str) {
        std::fs::write(sluice.config_path.as_ref().unwrap(), config).unwrap();
        ctl_ok(&self.sock(), &["reload"]);
    }

    pub fn metric(&self, line_start: &str) -> u64 {
        metric(self.metrics, line_start)
    }
}

/// The value of the first metric line starting with `line_start` (name and labels).
pub fn metric(addr: SocketAddr, line_start: &str) -> u64 {
    let body = http_get_body(addr, "/metrics");
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or_else(
            || panic!("no metric {line_start} in:\n{body}"),
            |v| v as u64,
        )
}

pub fn pod_addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// `GET path` over HTTP/1.1 with `Connection: close`; the body.
pub fn http_get_body(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}
