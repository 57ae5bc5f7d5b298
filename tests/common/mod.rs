//! Black-box test harness: runs the `sluice` binary against real loopback peers.
//!
//! Owns: temp dirs and config files, the [`Sluice`] process guard (killed by PID on drop, its
//! stderr kept in a file and printed when a test fails), and the backends a test points
//! sluice at — all on 127.0.0.x with kernel-chosen ports. It must not use fixed ports,
//! must not sleep to synchronise (every wait is a polled condition with a deadline), and
//! must not leave a process or thread behind when a test panics.
//!
//! Each test binary includes this module and uses part of it.
#![allow(dead_code)]

mod backends;
pub mod fake_api;
pub mod inprocess;
pub mod kube;
pub mod peers;
pub mod scrape;
pub mod udp;
#[allow(unused_imports)]
pub use backends::*;

use sha2::{Digest, Sha256};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::fmt::Write as _;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bound for "this should happen soon" waits. Generous: CI has 2 shared cores.
pub const SOON: Duration = Duration::from_secs(15);
/// Read/write timeout put on every client socket, so no test blocks forever.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------

/// Polls `f` until it returns `Some`, or panics after `deadline` naming `what`.
/// Bounded in time and in number of polls (poll interval grows from 5 ms to 100 ms).
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    for _ in 0..100_000 {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() >= deadline {
            break;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    panic!("timed out after {deadline:?} waiting for {what}");
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------
// Temp dir and config
// ---------------------------------------------------------------------------------------

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "sluice-itest-{tag}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A port that was free on 127.0.0.1 (TCP and UDP) a moment ago. Used as a NodePort.
///
/// Picked below the kernel's ephemeral range (`ip_local_port_range`, 32768–60999 by
/// default): a port the kernel chose for `bind(:0)` is handed out again to the next
/// outgoing connection of any test running in parallel, which then holds it when sluice
/// binds it ("Address already in use"). Ports here are never chosen by the kernel; a
/// process-wide counter (starting at a point derived from the PID) keeps the tests of one
/// binary apart, and the bind check skips ports another process holds.
pub fn free_port() -> u16 {
    free_port_where(|port| {
        TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
    })
}

/// A port from the same never-ephemeral range as [`free_port`] that passes `free` (a
/// bind check the caller chooses, e.g. UDP on every address).
pub fn free_port_where(free: impl Fn(u16) -> bool) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000; // 10000..32000
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if free(port) {
            return port;
        }
    }
    panic!("no free port in 10000..32000 on 127.0.0.1");
}

/// Bind `addr` with `bind`, retrying "address in use" for up to 5 s; panics otherwise.
///
/// For reopening a port this process just closed (a pod or backend coming back): the
/// closed socket stays open while a process another test is spawning holds a copy of this
/// process's fd table, between its fork and its exec (where close-on-exec takes effect). CI
/// once failed that way; rebinding right after a close while another thread spawns
/// processes fails about 1 time in 300 here.
pub fn bind_again<T>(addr: SocketAddr, bind: impl Fn(SocketAddr) -> std::io::Result<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match bind(addr) {
            Ok(socket) => return socket,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

/// The node-level lines every test config starts with: serve only on 127.0.0.1, and a
/// NodePort range holding exactly `node_port`. `extra` is more top-level TOML.
pub fn node_toml(node_port: u16, extra: &str) -> String {
    format!(
        "listen_addresses = [\"127.0.0.1\"]\nnode_port_range = \"{node_port}-{node_port}\"\n{extra}\n"
    )
}

/// One `[[service]]` table. `endpoints` are TOML values (see [`ep`], [`ep_weighted`]);
/// `extra` are more keys of the table (e.g. `idle_timeout = "1s"`).
pub fn service_toml(name: &str, node_port: u16, endpoints: &[String], extra: &str) -> String {
    format!(
        "\n[[service]]\nname = \"{name}\"\nnamespace = \"itest\"\nport = 80\ntarget_port = 80\nnode_port = {node_port}\nendpoints = [{}]\n{extra}\n",
        endpoints.join(", ")
    )
}

/// `"IP:PORT"` as a TOML endpoint.
pub fn ep(addr: SocketAddr) -> String {
    format!("\"{addr}\"")
}

/// `{ address, port, weight }` as a TOML endpoint.
pub fn ep_weighted(addr: SocketAddr, weight: u32) -> String {
    format!(
        "{{ address = \"{}\", port = {}, weight = {weight} }}",
        addr.ip(),
        addr.port()
    )
}

/// A whole config with one service on `node_port`.
pub fn one_service(node_port: u16, top: &str, endpoints: &[String], service_extra: &str) -> String {
    node_toml(node_port, top) + &service_toml("svc", node_port, endpoints, service_extra)
}

/// The NodePort address clients use.
pub fn node_addr(node_port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], node_port))
}

// ---------------------------------------------------------------------------------------
// The sluice process
// ---------------------------------------------------------------------------------------

/// How to start sluice.
#[derive(Default, Clone)]
pub struct Launch {
    /// Extra environment (RUST_LOG defaults to `info`).
    pub env: Vec<(String, String)>,
    /// Set RLIMIT_NOFILE (soft and hard) of the child to this.
    pub nofile: Option<u64>,
    /// Make io_uring_setup fail with EPERM in the child (a seccomp filter, like a container
    /// runtime's default profile).
    pub block_io_uring: bool,
    /// Do not add `--driver $SLUICE_TEST_DRIVER` (tests that choose the driver themselves).
    pub own_driver: bool,
    /// Set JOURNAL_STREAM to the device and inode of the stderr file, as systemd does for a
    /// service whose output goes to the journal.
    pub journal_stream: bool,
    /// Run as this uid (and the gid of the same number); needs root.
    pub uid: Option<u32>,
}

/// The driver the suite runs under: `SLUICE_TEST_DRIVER` (`uring`, `epoll`, `auto`), or the
/// default (`auto`) when unset. `tests/run-all.sh` runs the integration suite once per driver.
pub fn test_driver() -> Option<String> {
    std::env::var("SLUICE_TEST_DRIVER")
        .ok()
        .filter(|d| !d.is_empty())
}

/// A running `sluice` process. Dropping it kills it by PID (SIGKILL) and reaps it; when the
/// test is panicking, the tail of sluice's stderr is printed (libtest shows it).
pub struct Sluice {
    child: Child,
    dir: TempDir,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
    pub config_path: Option<PathBuf>,
}

impl Sluice {
    /// `sluice run --config FILE` with `config` written to a temp file. Not yet ready: call
    /// one of the `wait_*` methods.
    pub fn run(config: &str) -> Sluice {
        Sluice::run_with(config, Launch::default())
    }

    pub fn run_with(config: &str, launch: Launch) -> Sluice {
        let dir = TempDir::new("run");
        let path = dir.write("sluice.toml", config);
        let args = [
            "run".to_string(),
            "--config".to_string(),
            path.display().to_string(),
        ];
        let mut s = Sluice::spawn_in(dir, &args, launch);
        s.config_path = Some(path);
        s
    }

    /// Any sluice command line, e.g. `["demo"]`.
    pub fn spawn(args: &[&str], launch: Launch) -> Sluice {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Sluice::spawn_in(TempDir::new("spawn"), &args, launch)
    }

    fn spawn_in(dir: TempDir, args: &[String], launch: Launch) -> Sluice {
        use std::os::unix::process::CommandExt;
        let mut args = args.to_vec();
        if let (Some(driver), false) = (test_driver(), launch.own_driver) {
            if matches!(args.first().map(String::as_str), Some("run" | "demo")) {
                args.push("--driver".into());
                args.push(driver);
            }
        }
        let stderr_path = dir.path().join("stderr.log");
        let stdout_path = dir.path().join("stdout.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        if launch.journal_stream {
            use std::os::unix::fs::MetadataExt;
            let m = stderr.metadata().expect("stderr file metadata");
            cmd.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
            .stderr(stderr);
        cmd.env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in &launch.env {
            cmd.env(k, v);
        }
        if let Some(uid) = launch.uid {
            cmd.uid(uid).gid(uid);
        }
        let nofile = launch.nofile;
        let block_io_uring = launch.block_io_uring;
        // SAFETY: runs in the forked child before exec; only async-signal-safe syscalls
        // (prctl, setrlimit) and no allocation.
        unsafe {
            cmd.pre_exec(move || {
                // Die with the thread that spawned us, should the test process be killed
                // before the guard's Drop runs.
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                if block_io_uring {
                    block_io_uring_setup()?;
                }
                if let Some(n) = nofile {
                    let lim = libc::rlimit {
                        rlim_cur: n as libc::rlim_t,
                        rlim_max: n as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn sluice binary");
        Sluice {
            child,
            dir,
            stderr_path,
            stdout_path,
            config_path: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// The last `n` lines of stderr.
    pub fn stderr_tail(&self, n: usize) -> String {
        let all = self.stderr();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Panics (with stderr) if the process has exited.
    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "sluice exited early with {status}\n--- sluice stderr (tail) ---\n{}\n--- stdout ---\n{}",
                self.stderr_tail(60),
                self.stdout()
            );
        }
    }

    /// Waits until `probe` succeeds (it is given nothing; it connects where it likes),
    /// checking in between that sluice is still running.
    pub fn wait_until(&mut self, what: &str, mut probe: impl FnMut() -> bool) {
        let start = Instant::now();
        let deadline = Duration::from_secs(30);
        let mut pause = Duration::from_millis(5);
        for _ in 0..10_000 {
            self.assert_alive();
            if probe() {
                return;
            }
            if start.elapsed() > deadline {
                break;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        panic!(
            "sluice not ready after {deadline:?}: {what}\n--- sluice stderr (tail) ---\n{}",
            self.stderr_tail(60)
        );
    }

    /// Ready = the NodePort accepts a connection and an echo through it comes back.
    pub fn wait_ready_echo(&mut self, node: SocketAddr) {
        self.wait_until(&format!("echo through {node}"), || probe_echo(node));
    }

    /// Ready = the NodePort accepts a connection and a name request is answered.
    pub fn wait_ready_name(&mut self, node: SocketAddr) {
        self.wait_until(&format!("name request through {node}"), || {
            ask_name(node).is_ok()
        });
    }

    /// Ready = the NodePort accepts TCP connections (for services that cannot answer).
    pub fn wait_ready_accepting(&mut self, node: SocketAddr) {
        self.wait_until(&format!("TCP accept on {node}"), || {
            TcpStream::connect_timeout(&node, Duration::from_secs(1)).is_ok()
        });
    }

    /// Number of open fds of the sluice process (from /proc).
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Waits for the process to exit by itself (for short-lived commands like `check`).
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        wait_for("sluice to exit", deadline, || {
            child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- sluice stderr (last 80 lines) ---\n{}\n--- sluice stdout ---\n{}\n--- end ---",
                self.stderr_tail(80),
                self.stdout()
            );
        }
        let _ = &self.dir;
    }
}

// ---------------------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------------------

/// Connects with timeouts on connect and on every read/write.
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Connects from a chosen local IP (port picked by the kernel).
pub fn connect_from(src: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    sock.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
    sock.connect_timeout(&SockAddr::from(addr), Duration::from_secs(5))?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Sends `payload`, reads exactly as many bytes back, and checks they are the same.
pub fn echo_roundtrip(s: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    s.write_all(payload)?;
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back)?;
    if back != payload {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            "echo returned different bytes",
        ));
    }
    Ok(())
}

/// One short echo through `addr`, with short timeouts; true when it came back intact.
pub fn probe_echo(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    echo_roundtrip(&mut s, b"ready?").is_ok()
}

/// The request [`NameServer`] answers.
pub const NAME_REQUEST: &[u8] = b"GET /name HTTP/1.1\r\nHost: itest\r\n\r\n";

/// Asks a [`NameServer`] (directly or through sluice) for its name.
pub fn ask_name(addr: SocketAddr) -> io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    ask_name_on(&mut s)
}

/// One name request on an open connection (keep-alive).
pub fn ask_name_on(s: &mut TcpStream) -> io::Result<String> {
    s.write_all(NAME_REQUEST)?;
    read_http_body(s)
}

/// Reads one `Content-Length` HTTP response and returns its body, trimmed.
pub fn read_http_body(s: &mut TcpStream) -> io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                "response head too long",
            ));
        }
        match s.read(&mut byte)? {
            0 => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "EOF in response head",
                ))
            }
            _ => head.push(byte[0]),
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            format!("bad status: {head}"),
        ));
    }
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, "no Content-Length"))?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body).trim().to_string())
}

/// How a connection ended, as seen by the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Clean EOF (FIN).
    Eof,
    /// ECONNRESET (RST).
    Reset,
    /// Nothing happened before the read timeout.
    TimedOut,
    /// Another error.
    Error(ErrorKind),
}

/// Reads until EOF, error or `timeout` (per read). Returns the bytes and how it ended.
pub fn read_to_end_outcome(s: &mut TcpStream, timeout: Duration) -> (Vec<u8>, Ended) {
    let _ = s.set_read_timeout(Some(timeout));
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (data, Ended::Eof),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) => return (data, classify(&e)),
        }
    }
}

pub fn classify(e: &io::Error) -> Ended {
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            Ended::Reset
        }
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Ended::TimedOut,
        k => Ended::Error(k),
    }
}

/// Closes `s` with an RST: SO_LINGER 0, then close.
pub fn reset_close(s: TcpStream) {
    let sock = Socket::from(s);
    sock.set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
    drop(sock);
}

/// Opens up to `n` connections to `addr` (stops at the first failure and returns what it
/// has, plus the error).
pub fn open_many(addr: SocketAddr, n: usize) -> (Vec<TcpStream>, Option<io::Error>) {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        match connect(addr) {
            Ok(s) => v.push(s),
            Err(e) => return (v, Some(e)),
        }
    }
    (v, None)
}

/// Length of the accept queue of the TCP listener on `port` (any local address), from
/// /proc/net/tcp: the connections the kernel has completed but nobody has accepted yet.
pub fn accept_queue_len(port: u16) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let want = format!(":{port:04X}");
    let mut total = None;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || !f[1].ends_with(&want) || f[3] != "0A" {
            continue;
        }
        let rx = f[4].split(':').nth(1)?;
        *total.get_or_insert(0) += u32::from_str_radix(rx, 16).ok()?;
    }
    total
}

// ---------------------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------------------

/// Deterministic pseudo-random bytes (splitmix64), produced in 64 KiB blocks.
pub struct Pattern {
    state: u64,
}

pub const PATTERN_BLOCK: usize = 64 * 1024;

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern { state: seed }
    }

    /// Fills `buf` (length a multiple of 8) with the next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        assert_eq!(buf.len() % 8, 0);
        for chunk in buf.chunks_exact_mut(8) {
            self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
    }

    /// Writes `len` bytes of the pattern for `seed` to `w`; returns their SHA-256 (hex).
    pub fn write_to(seed: u64, len: u64, w: &mut impl Write) -> io::Result<String> {
        let mut p = Pattern::new(seed);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; PATTERN_BLOCK];
        let mut left = len;
        while left > 0 {
            p.fill(&mut buf);
            let n = left.min(PATTERN_BLOCK as u64) as usize;
            h.update(&buf[..n]);
            w.write_all(&buf[..n])?;
            left -= n as u64;
        }
        Ok(hex(&h.finalize()))
    }

    /// SHA-256 (hex) of the first `len` bytes of the pattern for `seed`.
    pub fn sha256(seed: u64, len: u64) -> String {
        Pattern::write_to(seed, len, &mut io::sink()).unwrap()
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Reads `r` to EOF; returns (bytes, SHA-256 hex, how it ended).
pub fn hash_to_end(r: &mut TcpStream) -> (u64, String, Ended) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let ended = loop {
        match r.read(&mut buf) {
            Ok(0) => break Ended::Eof,
            Ok(n) => {
                h.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => break classify(&e),
        }
    };
    (total, hex(&h.finalize()), ended)
}

// ---------------------------------------------------------------------------------------
// Private network namespace
// ---------------------------------------------------------------------------------------

/// Runs `f` on a new thread that first moves into a fresh network namespace with only
/// loopback (brought up). Sockets that thread opens and processes it spawns live there, so a
/// test can use addresses the product fixes (the demo's 127.0.0.1:30000, 127.0.0.2:9000)
/// without colliding with anything else on the machine. `Err` when the namespace cannot be
/// made (no CAP_SYS_ADMIN); a panic in `f` is re-raised here.
pub fn in_private_netns<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let handle = std::thread::spawn(move || -> io::Result<T> {
        // SAFETY: unshare(CLONE_NEWNET) affects only this thread's network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        loopback_up()?;
        Ok(f())
    });
    match handle.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs `ip ARGS…`, which must succeed.
pub fn run_ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The script `sluice tproxy-rules --config CONFIG` prints (the command must succeed).
pub fn tproxy_rules(config: &std::path::Path) -> String {
    let rules = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["tproxy-rules", "--config"])
        .arg(config)
        .output()
        .expect("sluice tproxy-rules");
    assert!(
        rules.status.success(),
        "{}",
        String::from_utf8_lossy(&rules.stderr)
    );
    String::from_utf8(rules.stdout).unwrap()
}

/// Runs `script` (the printed rules) with `sh -e` inside network namespace `ns`.
pub fn apply_in_netns(ns: &str, script: &str) {
    let applied = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-e", "-c", script])
        .output()
        .expect("apply the rules");
    assert!(
        applied.status.success(),
        "the printed rules failed:\n{script}\n{}",
        String::from_utf8_lossy(&applied.stderr)
    );
}

/// Runs `f` on the current thread inside network namespace `ns`, then moves the thread back.
/// For spawning sluice: the harness kills sluice when the thread that spawned it ends
/// (PR_SET_PDEATHSIG), so it must be a thread that lives as long as the test.
pub fn here_in_netns<T>(ns: &str, f: impl FnOnce() -> T) -> T {
    use std::os::fd::AsRawFd;
    let enter = |path: &str| {
        let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on a valid namespace fd; affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
    };
    let home = std::fs::File::open("/proc/thread-self/ns/net").expect("own netns");
    enter(&format!("/run/netns/{ns}"));
    let v = f();
    // SAFETY: as above, back to the namespace this thread started in.
    let rc = unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns back: {}", std::io::Error::last_os_error());
    v
}

/// Runs `f` on a thread that has joined the named network namespace `ns`
/// (`/run/netns/NS`, made with `ip netns add`); processes it spawns live there too.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    let h = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on a valid namespace fd; affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    });
    match h.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

fn loopback_up() -> io::Result<()> {
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    use std::os::fd::AsRawFd;
    // SAFETY: ifreq is plain data; the ioctls read/write only that struct.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) != 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Install a seccomp filter in the calling process that makes io_uring_setup(2) fail with
/// EPERM (what Docker's default profile does) and allows everything else. For pre_exec:
/// only prctl, no allocation.
fn block_io_uring_setup() -> io::Result<()> {
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const NR_IO_URING_SETUP: u32 = 425;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    let filter = [
        // A = seccomp_data.arch; other architectures are left alone.
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 4,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 3,
            k: AUDIT_ARCH_X86_64,
        },
        // A = seccomp_data.nr
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: NR_IO_URING_SETUP,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with a filter program that lives on this stack for the duration of the
    // call (the kernel copies it).
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `sluice ctl --socket SOCK ARGS…`, its output whatever the exit status.
pub fn ctl(sock: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("ctl")
        .arg("--socket")
        .arg(sock)
        .args(args)
        .output()
        .expect("run sluice ctl")
}

/// `sluice ctl`, which must succeed; its stdout.
pub fn ctl_ok(sock: &Path, args: &[&str]) -> String {
    let out = ctl(sock, args);
    assert!(
        out.status.success(),
        "sluice ctl {args:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Processes sluice started (the new ones of `ctl upgrade`), not this test's children: killed by PID on drop.
#[derive(Default)]
pub struct Pids(std::sync::Mutex<Vec<u32>>);

impl Pids {
    pub fn add(&self, pid: u32) {
        self.0.lock().unwrap().push(pid);
    }
}

impl Drop for Pids {
    fn drop(&mut self) {
        for pid in self.0.lock().unwrap().iter() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// `ctl -o json status`: the serving process's PID.
pub fn status_pid(sock: &Path) -> u32 {
    let out = ctl_ok(sock, &["-o", "json", "status"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["result"]["pid"].as_u64().unwrap() as u32
}

/// `ctl -o json upgrade ARGS`, which must succeed: (old pid, new pid).
pub fn upgrade_ok(sock: &Path, args: &[&str]) -> (u32, u32) {
    let mut all = vec!["-o", "json", "upgrade"];
    all.extend_from_slice(args);
    let out = ctl_ok(sock, &all);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let r = &v["result"];
    (
        r["old_pid"].as_u64().unwrap() as u32,
        r["new_pid"].as_u64().unwrap() as u32,
    )
}
