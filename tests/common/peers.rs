//! Real peers the PROXY-protocol and transparent-mode tests put behind sluice: nginx and
//! HAProxy (Debian packages), each started in a temp dir on addresses the test gives, killed
//! by PID on drop, with their logs kept in files the test reads.
//!
//! Skipping: a peer binary that is missing makes the test skip loudly only when not root; as
//! root (CI) the packages are installed by tests/run-all.sh, so a missing binary is a failure.

use super::{wait_for, TempDir, SOON};
use socket2::{Domain, SockAddr, Socket, Type};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const NGINX: &str = "/usr/sbin/nginx";
pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// True when the test may go on with `binary`; false (after saying so on stderr) when it is
/// missing and we are not root. Panics when it is missing and we are root.
pub fn have(binary: &str) -> bool {
    if Path::new(binary).exists() {
        return true;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        panic!("{binary} is missing although we are root: tests/run-all.sh installs it");
    }
    eprintln!("SKIPPED: {binary} is not installed and we are not root to install it");
    false
}

/// True when we are root (network namespaces, IP_TRANSPARENT).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True when [::1] can be bound here.
pub fn have_ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// A running peer process (nginx or HAProxy), killed by PID and reaped on drop.
pub struct Peer {
    child: Option<Child>,
    pub dir: TempDir,
    pub name: &'static str,
}

impl Peer {
    fn spawn(name: &'static str, dir: TempDir, cmd: &mut Command) -> Peer {
        let out = std::fs::File::create(dir.path().join("stdout.log")).unwrap();
        let err = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Peer {
            child: Some(child),
            dir,
            name,
        }
    }

    pub fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Waits until every address accepts TCP (panics with the peer's own logs if it died).
    pub fn wait_listening(&mut self, addrs: &[SocketAddr]) {
        for addr in addrs {
            let what = format!("{} listening on {addr}", self.name);
            let child = self.child.as_mut().unwrap();
            let dir = self.dir.path().to_path_buf();
            wait_for(&what, SOON, || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "{what}: exited with {status}\n{}\n{}\n{}",
                        read(&dir, "stderr.log"),
                        read(&dir, "stdout.log"),
                        read(&dir, "error.log")
                    );
                }
                TcpStream::connect_timeout(addr, Duration::from_millis(500))
                    .ok()
                    .map(|_| ())
            });
        }
    }
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- {} stderr ---\n{}\n--- {} error.log ---\n{}\n--- {} stdout ---\n{}",
                self.name,
                self.file("stderr.log"),
                self.name,
                self.file("error.log"),
                self.name,
                self.file("stdout.log")
            );
        }
    }
}

/// One nginx `server` block: listen address, whether it expects a PROXY header, and the
/// access-log file name it writes `LOGGED` lines to.
pub struct NginxServer {
    pub listen: SocketAddr,
    pub proxy_protocol: bool,
    pub log: String,
}

/// nginx (one process, `master_process off`) serving `200 <log name>` on every server, each
/// logging one line per request: `$proxy_protocol_addr $proxy_protocol_port` when it expects
/// a PROXY header, `$remote_addr $remote_port` otherwise.
pub fn start_nginx(servers: &[NginxServer]) -> Peer {
    let dir = TempDir::new("nginx");
    let d = dir.path().display().to_string();
    let mut blocks = String::new();
    for s in servers {
        let (listen, fmt) = if s.proxy_protocol {
            (format!("{} proxy_protocol", s.listen), "pp")
        } else {
            (s.listen.to_string(), "plain")
        };
        blocks.push_str(&format!(
            "  server {{\n    listen {listen};\n    access_log {d}/{log} {fmt};\n    \
             location / {{ return 200 \"{log}\\n\"; }}\n  }}\n",
            log = s.log
        ));
    }
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\nevents {{ worker_connections 512; }}\nhttp {{\n  \
         access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         log_format pp 'LOGGED $proxy_protocol_addr $proxy_protocol_port';\n  \
         log_format plain 'LOGGED $remote_addr $remote_port';\n{blocks}}}\n"
    );
    let path: PathBuf = dir.write("nginx.conf", &conf);
    let mut cmd = Command::new(NGINX);
    cmd.arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(dir.path().join("error.log"));
    let mut peer = Peer::spawn("nginx", dir, &mut cmd);
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.listen).collect();
    peer.wait_listening(&addrs);
    peer
}

/// HAProxy in HTTP mode with `accept-proxy` on every address, answering 200 itself and
/// logging `LOGGED <src> <src_port>` to stdout (`-db`), where src is what the PROXY header
/// said.
pub fn start_haproxy(binds: &[SocketAddr]) -> Peer {
    let dir = TempDir::new("haproxy");
    let mut bind_lines = String::new();
    for b in binds {
        bind_lines.push_str(&format!("  bind {}:{} accept-proxy\n", b.ip(), b.port()));
    }
    let conf = format!(
        "global\n  maxconn 1000\n  log stdout format raw local0 info\n\
         defaults\n  mode http\n  log global\n  timeout connect 5s\n  timeout client 10s\n  \
         timeout server 10s\n\
         frontend fe\n{bind_lines}  log-format \"LOGGED %[src] %[src_port]\"\n  \
         http-request return status 200 content-type text/plain string \"haproxy\"\n"
    );
    let path = dir.write("haproxy.cfg", &conf);
    let mut cmd = Command::new(HAPROXY);
    cmd.arg("-db").arg("-f").arg(&path);
    let mut peer = Peer::spawn("haproxy", dir, &mut cmd);
    peer.wait_listening(binds);
    peer
}

/// An HTTP GET through `node` from `client_ip` (port chosen by the kernel, then known).
/// Returns the client's address and the response.
pub fn http_get_from(client_ip: std::net::IpAddr, node: SocketAddr) -> (SocketAddr, String) {
    let domain = if client_ip.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::STREAM, None).expect("client socket");
    sock.bind(&SockAddr::from(SocketAddr::new(client_ip, 0)))
        .expect("bind client address");
    sock.connect_timeout(&SockAddr::from(node), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {node}: {e}"));
    let me = sock.local_addr().unwrap().as_socket().unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: itest\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    (me, resp)
}

/// Waits until `log` (read afresh each time) holds the line `LOGGED <ip> <port>`.
pub fn wait_logged(peer: &Peer, log: &str, who: SocketAddr) {
    let want = format!("LOGGED {} {}", who.ip(), who.port());
    let mut last = String::new();
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(&format!("{} to log {want:?}", peer.name), SOON, || {
            last = peer.file(log);
            last.lines().any(|l| l.trim() == want).then_some(())
        })
    }));
    if found.is_err() {
        panic!(
            "{} never logged {want:?} in {log}; it logged:\n{last}",
            peer.name
        );
    }
}
