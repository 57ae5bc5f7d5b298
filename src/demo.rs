//! The built-in demo: three local HTTP "pods" and the seed's `workshop/myfrontend` Service.
//!
//! This module owns two things: [`demo_model`], the one Service the demo serves (built
//! directly, no config file), and [`DemoPods`], tiny HTTP/1.1 servers on plain std threads
//! that answer every request with a body naming the pod. The pods exist so that
//! `sluice demo` works on a laptop with no cluster: `curl 127.0.0.1:30000` shows which pod
//! answered. They are test fixtures, not a web server: they must not be used for anything
//! but loopback demos and tests. They never panic on network input; a malformed request
//! closes that connection and nothing else.

use crate::model::{
    Endpoint, Model, Policy, Protocol, ServiceDefaults, ServiceName, ServicePort, ServicePortKey,
    Settings,
};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Where the three demo pods listen (the demo Service's endpoints).
pub const DEMO_POD_ADDRS: [&str; 3] = ["127.0.0.2:9000", "127.0.0.3:9000", "127.0.0.4:9000"];

/// The NodePort the demo Service is served on.
pub const DEMO_NODE_PORT: u16 = 30000;

/// Largest request head (request line + headers) a pod accepts before closing the connection.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// The seed Service: `workshop/myfrontend`, port `http` 80 → target port 9000, NodePort
/// 30000, three endpoints on 127.0.0.2-4:9000, every tunable at its default.
pub fn demo_model() -> Model {
    let settings = Settings::default();
    let defaults = ServiceDefaults::default();
    let endpoints = DEMO_POD_ADDRS
        .iter()
        .map(|a| {
            Endpoint::new(
                a.parse()
                    .expect("DEMO_POD_ADDRS are valid socket addresses"),
            )
        })
        .collect();
    Model {
        settings,
        services: vec![ServicePort {
            key: ServicePortKey {
                service: ServiceName {
                    namespace: "workshop".into(),
                    name: "myfrontend".into(),
                },
                port_name: "http".into(),
                protocol: Protocol::Tcp,
            },
            port: 80,
            node_port: DEMO_NODE_PORT,
            node_port_allocated: false,
            target_port: 9000,
            endpoints,
            policy: Policy::default(),
            timeouts: defaults.timeouts,
            connect_retries: defaults.connect_retries,
            maglev_table_size: defaults.maglev_table_size,
            forwarding: Default::default(),
            traffic_policy: Default::default(),
            families: Default::default(),
            health: Default::default(),
            meta: None,
        }],
    }
}

/// The demo pods' names and addresses: `pod-1` on 127.0.0.2:9000, and so on.
pub fn demo_pods() -> Vec<(String, SocketAddr)> {
    DEMO_POD_ADDRS
        .iter()
        .enumerate()
        .map(|(i, a)| {
            (
                format!("pod-{}", i + 1),
                a.parse()
                    .expect("DEMO_POD_ADDRS are valid socket addresses"),
            )
        })
        .collect()
}

/// Running HTTP pods. Dropping it (or calling [`DemoPods::stop`]) stops every pod: the
/// listeners close, open connections are shut down, and the threads are joined.
pub struct DemoPods {
    /// (name, bound address): the port is the real one when port 0 was asked for.
    pods: Vec<(String, SocketAddr)>,
    shared: Arc<Shared>,
    acceptors: Vec<JoinHandle<()>>,
}

/// State shared by a set of pods' threads.
struct Shared {
    stopping: AtomicBool,
    next_id: AtomicU64,
    /// Open connections (a clone of each stream), so `stop` can shut them down.
    open: Mutex<HashMap<u64, TcpStream>>,
    /// Connection threads, joined by `stop`.
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl DemoPods {
    /// Binds every pod's address (fails if any is taken) and starts serving.
    pub fn start(pods: &[(String, SocketAddr)]) -> io::Result<DemoPods> {
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            workers: Mutex::new(Vec::new()),
        });
        // Bind all first, so a failure leaves nothing running.
        let mut listeners = Vec::with_capacity(pods.len());
        for (name, addr) in pods {
            let listener = TcpListener::bind(addr)?;
            let bound = listener.local_addr()?;
            listeners.push((name.clone(), bound, listener));
        }
        let mut running = DemoPods {
            pods: listeners.iter().map(|(n, a, _)| (n.clone(), *a)).collect(),
            shared,
            acceptors: Vec::new(),
        };
        for (name, bound, listener) in listeners {
            let shared = Arc::clone(&running.shared);
            let body = format!("hello from {name} ({bound})\n");
            let handle = std::thread::Builder::new()
                .name(format!("demo-{name}"))
                .spawn(move || accept_loop(listener, body, shared))?;
            running.acceptors.push(handle);
        }
        Ok(running)
    }

    /// The pods' names and bound addresses.
    pub fn pods(&self) -> &[(String, SocketAddr)] {
        &self.pods
    }

    /// Stops every pod and waits for its threads. Idempotent.
    pub fn stop(&mut self) {
        if self.shared.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake each acceptor blocked in accept(): it sees `stopping` and returns.
        for (_, addr) in &self.pods {
            let _ = TcpStream::connect_timeout(addr, Duration::from_secs(1));
        }
        for handle in self.acceptors.drain(..) {
            let _ = handle.join();
        }
        // No new connections now; shut down the open ones so their threads see EOF.
        for stream in lock(&self.shared.open).values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let workers: Vec<_> = lock(&self.shared.workers).drain(..).collect();
        for handle in workers {
            let _ = handle.join();
        }
    }
}

impl Drop for DemoPods {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn accept_loop(listener: TcpListener, body: String, shared: Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // EMFILE, ECONNABORTED, ...: back off a little and keep serving.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        match stream.try_clone() {
            Ok(clone) => {
                lock(&shared.open).insert(id, clone);
            }
            Err(_) => continue, // out of fds: drop this one connection
        }
        let body = body.clone();
        let conn_shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || {
                let _ = serve_connection(stream, body.as_bytes());
                lock(&conn_shared.open).remove(&id);
            });
        match spawned {
            Ok(handle) => {
                let mut workers = lock(&shared.workers);
                workers.retain(|h| !h.is_finished());
                workers.push(handle);
            }
            Err(_) => {
                if let Some(s) = lock(&shared.open).remove(&id) {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
        }
    }
}

/// Answers requests on one connection until the client closes, asks to close, or sends
/// something that is not a request we understand.
fn serve_connection(mut stream: TcpStream, body: &[u8]) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        // Read one request head.
        let head_end = loop {
            if let Some(pos) = find(&buf, b"\r\n\r\n") {
                break pos + 4;
            }
            if buf.len() > MAX_REQUEST_HEAD {
                return Ok(());
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let Some(request) = parse_head(&buf[..head_end]) else {
            let _ = stream.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return Ok(());
        };
        // Skip the request body, if any.
        let mut to_skip = request.content_length;
        buf.drain(..head_end);
        let in_buf = to_skip.min(buf.len() as u64) as usize;
        buf.drain(..in_buf);
        to_skip -= in_buf as u64;
        while to_skip > 0 {
            let want = to_skip.min(chunk.len() as u64) as usize;
            let n = stream.read(&mut chunk[..want])?;
            if n == 0 {
                return Ok(());
            }
            to_skip -= n as u64;
        }
        let connection = if request.keep_alive {
            "keep-alive"
        } else {
            "close"
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
            body.len()
        );
        let mut response = Vec::with_capacity(head.len() + body.len());
        response.extend_from_slice(head.as_bytes());
        if !request.head_only {
            response.extend_from_slice(body);
        }
        stream.write_all(&response)?;
        if !request.keep_alive {
            let _ = stream.shutdown(Shutdown::Write);
            return Ok(());
        }
    }
}

struct RequestHead {
    keep_alive: bool,
    content_length: u64,
    head_only: bool,
}

/// Parses the request line and the two headers the pods care about. `None` for anything
/// that is not an HTTP/1.x request (or uses chunked request bodies, which pods don't read).
fn parse_head(head: &[u8]) -> Option<RequestHead> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?;
    let _target = request_line.next()?;
    let version = request_line.next()?;
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return None,
    };
    let mut content_length = 0u64;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().ok()?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        } else if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                keep_alive = true;
            }
        }
    }
    Some(RequestHead {
        keep_alive,
        content_length,
        head_only: method == "HEAD",
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    fn start_one(name: &str, ip: &str) -> DemoPods {
        let addr: SocketAddr = format!("{ip}:0").parse().unwrap();
        DemoPods::start(&[(name.to_string(), addr)]).expect("bind a demo pod on port 0")
    }

    /// Reads one HTTP response (status line, headers, Content-Length body).
    fn read_response(
        reader: &mut io::BufReader<TcpStream>,
    ) -> (String, Vec<(String, String)>, String) {
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').unwrap();
            headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .expect("response has Content-Length")
            .1
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).unwrap();
        (
            status.trim_end().to_string(),
            headers,
            String::from_utf8(body).unwrap(),
        )
    }

    fn connect(pods: &DemoPods) -> (TcpStream, io::BufReader<TcpStream>) {
        let s = TcpStream::connect(pods.pods()[0].1).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = io::BufReader::new(s.try_clone().unwrap());
        (s, r)
    }

    #[test]
    fn demo_model_is_the_seed_service() {
        let model = demo_model();
        assert_eq!(model.settings, Settings::default());
        assert_eq!(model.services.len(), 1);
        let svc = &model.services[0];
        assert_eq!(svc.key.to_string(), "workshop/myfrontend:http");
        assert_eq!(
            (svc.port, svc.target_port, svc.node_port),
            (80, 9000, 30000)
        );
        assert!(!svc.node_port_allocated);
        assert!(model.settings.node_port_range.contains(svc.node_port));
        let addrs: Vec<String> = svc.endpoints.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(addrs, DEMO_POD_ADDRS);
        assert!(svc
            .endpoints
            .iter()
            .all(|e| e.weight == crate::model::DEFAULT_WEIGHT));
        assert_eq!(svc.policy, Policy::default());
        assert_eq!(svc.timeouts, ServiceDefaults::default().timeouts);
        assert_eq!(
            svc.connect_retries,
            ServiceDefaults::default().connect_retries
        );
    }

    #[test]
    fn demo_pods_are_named_after_their_addresses() {
        let pods = demo_pods();
        assert_eq!(pods[0].0, "pod-1");
        assert_eq!(pods[2].1.to_string(), "127.0.0.4:9000");
    }

    #[test]
    fn pod_answers_keep_alive_requests_with_its_name() {
        let pods = start_one("pod-7", "127.0.0.2");
        let bound = pods.pods()[0].1;
        assert_ne!(bound.port(), 0, "pods() reports the bound port");
        let (mut s, mut r) = connect(&pods);
        for _ in 0..3 {
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let (status, headers, body) = read_response(&mut r);
            assert_eq!(status, "HTTP/1.1 200 OK");
            assert!(headers.contains(&("connection".into(), "keep-alive".into())));
            assert_eq!(body, format!("hello from pod-7 ({bound})\n"));
        }
        // A request with a body, pipelined with a second request.
        s.write_all(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        assert_eq!(
            read_response(&mut r).2,
            format!("hello from pod-7 ({bound})\n")
        );
        let (_, headers, _) = read_response(&mut r);
        assert!(headers.contains(&("connection".into(), "close".into())));
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "pod closes after Connection: close");
    }

    #[test]
    fn pod_closes_http10_and_rejects_garbage() {
        let pods = start_one("pod-8", "127.0.0.3");
        let (mut s, mut r) = connect(&pods);
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let (status, _, body) = read_response(&mut r);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.starts_with("hello from pod-8"));
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());

        let (mut s, mut r) = connect(&pods);
        s.write_all(b"NONSENSE\r\n\r\n").unwrap();
        let (status, _, _) = read_response(&mut r);
        assert_eq!(status, "HTTP/1.1 400 Bad Request");
    }

    #[test]
    fn stop_closes_open_connections_and_frees_the_port() {
        let mut pods = start_one("pod-9", "127.0.0.4");
        let bound = pods.pods()[0].1;
        let (mut s, mut r) = connect(&pods);
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        read_response(&mut r);
        pods.stop(); // must not hang on the open keep-alive connection
        let mut rest = Vec::new();
        // EOF or reset: either way the connection is gone.
        let _ = r.read_to_end(&mut rest);
        assert!(rest.is_empty());
        TcpListener::bind(bound).expect("port is free again after stop");
        pods.stop(); // idempotent
    }
}
