//! Backends sluice is pointed at in tests: real TCP servers on 127.0.0.x:0, one thread per
//! connection, each reporting what it saw ([`Report`]) so a test can assert on the backend
//! side too. Owns nothing outside its own sockets and threads; dropping a [`Backend`] stops
//! accepting and shuts its open connections down.

use super::{classify, hash_to_end, lock, read_to_end_outcome, reset_close, Ended, Pattern};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------

/// What a backend connection handler saw, for the test to inspect.
#[derive(Debug, Clone)]
pub struct Report {
    /// Bytes read from the connection.
    pub bytes: u64,
    /// SHA-256 (hex) of what was read, when the handler hashes.
    pub digest: Option<String>,
    /// The bytes themselves, when the handler keeps them (small payloads only).
    pub data: Vec<u8>,
    /// How the read side ended.
    pub ended: Ended,
}

/// Shared state of one backend.
pub struct BackendState {
    pub name: String,
    connections: AtomicUsize,
    active: AtomicUsize,
    stopping: AtomicBool,
    /// The local address of `close_listener`'s wake-up connection.
    wake_from: Mutex<Option<SocketAddr>>,
    reports: Mutex<Vec<Report>>,
    reported: Condvar,
    open: Mutex<HashMap<usize, TcpStream>>,
}

impl BackendState {
    pub fn report(&self, r: Report) {
        lock(&self.reports).push(r);
        self.reported.notify_all();
    }
}

type Handler = Arc<dyn Fn(TcpStream, &BackendState) + Send + Sync>;

/// A TCP server on `ip:0` running `handler` on a thread per connection. Dropping it stops
/// accepting, shuts down open connections, and joins the accept thread.
pub struct Backend {
    pub addr: SocketAddr,
    state: Arc<BackendState>,
    acceptor: Option<JoinHandle<()>>,
}

impl Backend {
    pub fn start(ip: &str, name: &str, handler: Handler) -> Backend {
        let listener = TcpListener::bind((ip, 0)).expect("bind backend on 127.0.0.x:0");
        Backend::serve(listener, name, handler)
    }

    /// Like [`Backend::start`] on exactly `addr` (e.g. to reopen a closed backend's port;
    /// see [`super::bind_again`]).
    pub fn start_at(addr: SocketAddr, name: &str, handler: Handler) -> Backend {
        let listener = super::bind_again(addr, TcpListener::bind);
        Backend::serve(listener, name, handler)
    }

    /// Like [`start`](Self::start) on a given address (e.g. several pods on one port).
    pub fn try_start_at(addr: SocketAddr, name: &str, handler: Handler) -> io::Result<Backend> {
        Ok(Backend::serve(TcpListener::bind(addr)?, name, handler))
    }

    fn serve(listener: TcpListener, name: &str, handler: Handler) -> Backend {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState {
            name: name.to_string(),
            connections: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            wake_from: Mutex::new(None),
            reports: Mutex::new(Vec::new()),
            reported: Condvar::new(),
            open: Mutex::new(HashMap::new()),
        });
        let st = Arc::clone(&state);
        let acceptor = std::thread::Builder::new()
            .name(format!("backend-{name}"))
            .spawn(move || loop {
                let accepted = listener.accept();
                if st.stopping.load(Ordering::SeqCst) {
                    // `close_listener`: serve what was accepted besides the wake-up
                    // connection, and what still waits in the accept queue, then close.
                    let Some(wake) = *lock(&st.wake_from) else {
                        return;
                    };
                    let _ = listener.set_nonblocking(true);
                    let mut next = accepted;
                    while let Ok((stream, peer)) = next {
                        if peer != wake && stream.set_nonblocking(false).is_ok() {
                            Backend::handle(&st, &handler, stream);
                        }
                        next = listener.accept();
                    }
                    return;
                }
                let Ok((stream, _)) = accepted else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                Backend::handle(&st, &handler, stream);
            })
            .expect("spawn backend thread");
        Backend {
            addr,
            state,
            acceptor: Some(acceptor),
        }
    }

    /// Runs `handler` on its own thread for one accepted connection.
    fn handle(st: &Arc<BackendState>, handler: &Handler, stream: TcpStream) {
        let id = st.connections.fetch_add(1, Ordering::SeqCst);
        st.active.fetch_add(1, Ordering::SeqCst);
        if let Ok(c) = stream.try_clone() {
            lock(&st.open).insert(id, c);
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(60)));
        let h = Arc::clone(handler);
        let st2 = Arc::clone(st);
        let spawned = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                h(stream, &st2);
                lock(&st2.open).remove(&id);
                st2.active.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            lock(&st.open).remove(&id);
            st.active.fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Connections whose handler is still running.
    pub fn active(&self) -> usize {
        self.state.active.load(Ordering::SeqCst)
    }

    pub fn reports(&self) -> Vec<Report> {
        lock(&self.state.reports).clone()
    }

    /// Waits until at least `n` handler reports exist; returns them all.
    pub fn wait_reports(&self, n: usize, deadline: Duration) -> Vec<Report> {
        let start = Instant::now();
        let mut g = lock(&self.state.reports);
        while g.len() < n {
            let left = deadline.checked_sub(start.elapsed()).unwrap_or_else(|| {
                panic!(
                    "backend {}: {} of {n} reports after {deadline:?}",
                    self.state.name,
                    g.len()
                )
            });
            g = self
                .state
                .reported
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        g.clone()
    }
}

impl Backend {
    /// Closes the listening socket (new connects are refused) but lets the connections
    /// already accepted run to their end.
    /// Connections that completed their handshake before the listener closed are served
    /// too (as a server that stops listening does), so that only connects made after the
    /// close are refused.
    pub fn close_listener(&mut self) {
        let Some(h) = self.acceptor.take() else {
            return;
        };
        // Tell the acceptor which connection is ours: bind first to know its address.
        let wake = Socket::new(Domain::for_address(self.addr), Type::STREAM, None).and_then(|s| {
            s.bind(&SockAddr::from(SocketAddr::new(self.addr.ip(), 0)))?;
            Ok(s)
        });
        if let Ok(from) = wake
            .as_ref()
            .map(|s| s.local_addr().ok().and_then(|a| a.as_socket()))
        {
            *lock(&self.state.wake_from) = from;
        }
        self.state.stopping.store(true, Ordering::SeqCst);
        match &wake {
            Ok(s) => {
                let _ = s.connect_timeout(&SockAddr::from(self.addr), Duration::from_secs(1));
            }
            Err(_) => {
                let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            }
        }
        let _ = h.join();
    }

    fn stop_accepting(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        if let Some(h) = self.acceptor.take() {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            let _ = h.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop_accepting();
        for s in lock(&self.state.open).values() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Answers every [`NAME_REQUEST`] (anything ending in a blank line) with an HTTP response
/// whose body is its name; keep-alive. Counts connections.
pub struct NameServer;
impl NameServer {
    pub fn start(ip: &str, name: &str) -> Backend {
        Backend::start(ip, name, NameServer::handler())
    }

    /// A name server on exactly `addr` (reopening a port a closed one had).
    pub fn start_at(addr: SocketAddr, name: &str) -> Backend {
        Backend::start_at(addr, name, NameServer::handler())
    }

    /// On a given address; `Err` when it cannot be bound.
    pub fn try_start_at(addr: SocketAddr, name: &str) -> io::Result<Backend> {
        Backend::try_start_at(addr, name, Self::handler())
    }

    fn handler() -> Handler {
        Arc::new(|mut s: TcpStream, st: &BackendState| {
            let body = format!("{}\n", st.name);
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            loop {
                while let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..p + 4);
                    if s.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                if buf.len() > 64 * 1024 {
                    return;
                }
            }
        })
    }
}

/// An HTTP/1.1 server answering every request (keep-alive unless it asks `Connection:
/// close`) with the status set by [`StatusServer::set_status`] (200 at first) and its name
/// as the body. Keeps every request head it received.
pub struct StatusServer {
    pub backend: Backend,
    status: Arc<std::sync::atomic::AtomicU16>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl StatusServer {
    pub fn start(ip: &str, name: &str) -> StatusServer {
        let status = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (st_status, st_heads) = (Arc::clone(&status), Arc::clone(&heads));
        let backend = Backend::start(
            ip,
            name,
            Arc::new(move |mut s: TcpStream, st: &BackendState| {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    while let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..p + 4]).into_owned();
                        buf.drain(..p + 4);
                        let close = head.to_ascii_lowercase().contains("connection: close");
                        lock(&st_heads).push(head);
                        let body = format!("{}\n", st.name);
                        let code = st_status.load(Ordering::SeqCst);
                        let resp = format!(
                            "HTTP/1.1 {code} Status\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(resp.as_bytes()).is_err() || close {
                            return;
                        }
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if buf.len() > 64 * 1024 {
                        return;
                    }
                }
            }),
        );
        StatusServer {
            backend,
            status,
            heads,
        }
    }

    pub fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    /// Every request head received so far.
    pub fn heads(&self) -> Vec<String> {
        lock(&self.heads).clone()
    }
}

/// Echoes everything; on EOF shuts down its write side and ends.
pub struct EchoServer;
impl EchoServer {
    pub fn start(ip: &str) -> Backend {
        Backend::start(
            ip,
            "echo",
            Arc::new(|mut s: TcpStream, st: &BackendState| {
                let mut buf = vec![0u8; 16 * 1024];
                let mut total = 0u64;
                let ended = loop {
                    match s.read(&mut buf) {
                        Ok(0) => break Ended::Eof,
                        Ok(n) => {
                            total += n as u64;
                            if let Err(e) = s.write_all(&buf[..n]) {
                                break classify(&e);
                            }
                        }
                        Err(e) => break classify(&e),
                    }
                };
                let _ = s.shutdown(Shutdown::Write);
                st.report(Report {
                    bytes: total,
                    digest: None,
                    data: Vec::new(),
                    ended,
                });
            }),
        )
    }
}

/// Reads everything until EOF, then answers with the SHA-256 (hex) of what it read and a
/// newline, and closes. Also reports it (and how the read ended) to the test.
pub struct SinkServer;
impl SinkServer {
    pub fn start(ip: &str) -> Backend {
        Backend::start(
            ip,
            "sink",
            Arc::new(|mut s: TcpStream, st: &BackendState| {
                let (bytes, digest, ended) = hash_to_end(&mut s);
                // Report first, so a client holding the answer can rely on the report.
                st.report(Report {
                    bytes,
                    digest: Some(digest.clone()),
                    data: Vec::new(),
                    ended,
                });
                if ended == Ended::Eof {
                    let _ = s.write_all(format!("{digest}\n").as_bytes());
                    let _ = s.shutdown(Shutdown::Write);
                }
            }),
        )
    }
}

/// Sends `len` bytes of [`Pattern`] `seed` on every connection, then closes its write
/// side, waits for the client's EOF and closes (so no unread data turns close into RST).
pub struct SourceServer;
impl SourceServer {
    pub fn start(ip: &str, seed: u64, len: u64) -> Backend {
        Backend::start(
            ip,
            "source",
            Arc::new(move |mut s: TcpStream, st: &BackendState| {
                let written = Pattern::write_to(seed, len, &mut s);
                let _ = s.shutdown(Shutdown::Write);
                let (data, ended) = read_to_end_outcome(&mut s, Duration::from_secs(30));
                st.report(Report {
                    bytes: data.len() as u64,
                    digest: written.ok(),
                    data,
                    ended,
                });
            }),
        )
    }
}

/// Half-close peer, backend side first: sends `banner`, shuts down its write side (FIN),
/// then keeps reading until the client's EOF and reports everything it read.
pub struct FinFirstServer;
impl FinFirstServer {
    pub fn start(ip: &str, banner: &'static [u8]) -> Backend {
        Backend::start(
            ip,
            "fin-first",
            Arc::new(move |mut s: TcpStream, st: &BackendState| {
                let _ = s.write_all(banner);
                let _ = s.shutdown(Shutdown::Write);
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
}

/// Reads until it has seen `trigger` bytes (or EOF), then closes with an RST (SO_LINGER 0).
pub struct ResetServer;
impl ResetServer {
    pub fn start(ip: &str, trigger: usize) -> Backend {
        Backend::start(
            ip,
            "reset",
            Arc::new(move |mut s: TcpStream, st: &BackendState| {
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                let mut ended = Ended::Eof;
                while data.len() < trigger {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => data.extend_from_slice(&buf[..n]),
                        Err(e) => {
                            ended = classify(&e);
                            break;
                        }
                    }
                }
                st.report(Report {
                    bytes: data.len() as u64,
                    digest: None,
                    data,
                    ended,
                });
                reset_close(s);
            }),
        )
    }
}

/// Reads until EOF or error (no timeout beyond 60 s) and reports how the read ended and
/// everything it read. Writes nothing.
pub struct ObserverServer;
impl ObserverServer {
    pub fn start(ip: &str) -> Backend {
        Backend::start(
            ip,
            "observer",
            Arc::new(|mut s: TcpStream, st: &BackendState| {
                let (data, ended) = read_to_end_outcome(&mut s, Duration::from_secs(60));
                st.report(Report {
                    bytes: data.len() as u64,
                    digest: None,
                    data,
                    ended,
                });
            }),
        )
    }
}

/// A port with nothing listening: a bound, non-listening socket holds it, so connects are
/// refused (RST) and nobody else can take the port meanwhile.
pub struct ClosedPort {
    pub addr: SocketAddr,
    _sock: Socket,
}

impl ClosedPort {
    pub fn new(ip: &str) -> ClosedPort {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        let want: SocketAddr = format!("{ip}:0").parse().unwrap();
        sock.bind(&SockAddr::from(want)).expect("bind closed port");
        let addr = sock.local_addr().unwrap().as_socket().unwrap();
        ClosedPort { addr, _sock: sock }
    }
}

/// An address whose SYNs get no answer: a listener with backlog 0 whose accept queue is
/// filled with connections that are never accepted, so the kernel drops further SYNs.
/// [`BlackHole::new`] verifies that a connect really times out before returning.
pub struct BlackHole {
    pub addr: SocketAddr,
    _listener: Socket,
    _fillers: Vec<TcpStream>,
}

impl BlackHole {
    pub fn new(ip: &str) -> BlackHole {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        let want: SocketAddr = format!("{ip}:0").parse().unwrap();
        sock.bind(&SockAddr::from(want)).expect("bind black hole");
        sock.listen(0).expect("listen(0)");
        let addr = sock.local_addr().unwrap().as_socket().unwrap();
        let mut fillers = Vec::new();
        let mut full = false;
        for _ in 0..32 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => fillers.push(s),
                Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
                    full = true;
                    break;
                }
                Err(e) => panic!("filling black hole {addr}: {e}"),
            }
        }
        assert!(full, "black hole {addr}: accept queue never filled");
        match TcpStream::connect_timeout(&addr, Duration::from_millis(700)) {
            Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {}
            other => panic!("black hole {addr} is not black: connect gave {other:?}"),
        }
        BlackHole {
            addr,
            _listener: sock,
            _fillers: fillers,
        }
    }
}
