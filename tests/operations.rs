//! Operating sluice: the control socket and `sluice ctl`, transactional reloads (with a
//! 200-reload hammer under load), endpoint drain and overrides, sd_notify, graceful drain on
//! SIGTERM, metrics and health endpoints, and the systemd unit.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `sluice ctl --socket SOCK ARGS...`.
/// One raw request line on the socket; the response line.
fn raw(sock: &Path, line: &[u8]) -> String {
    let mut s = UnixStream::connect(sock).expect("connect control socket");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = s.write_all(line);
    let mut out = String::new();
    let _ = BufReader::new(s).read_line(&mut out);
    out
}

/// Config with a control socket in `dir`, `top` more top-level keys, and `services`.
fn config(dir: &Path, range: (u16, u16), top: &str, services: &str) -> String {
    format!(
        "listen_addresses = [\"127.0.0.1\"]\nnode_port_range = \"{}-{}\"\nworkers = 2\ncontrol_socket = \"{}\"\n{top}\n{services}",
        range.0.min(range.1),
        range.0.max(range.1),
        dir.join("ctl.sock").display()
    )
}

fn svc(name: &str, ns: &str, node_port: u16, eps: &[SocketAddr]) -> String {
    service_toml(
        name,
        node_port,
        &eps.iter().map(|a| ep(*a)).collect::<Vec<_>>(),
        "",
    )
    .replace("namespace = \"itest\"", &format!("namespace = \"{ns}\""))
}

struct Running {
    sluice: Sluice,
    sock: PathBuf,
    _dir: TempDir,
}

fn start(top: &str, services: &str, range: (u16, u16), launch: Launch) -> Running {
    let dir = TempDir::new("ops");
    let text = config(dir.path(), range, top, services);
    let mut sluice = Sluice::run_with(&text, launch);
    let sock = dir.path().join("ctl.sock");
    let probe = sock.clone();
    sluice.wait_until("control socket answers", || {
        ctl(&probe, &["status"]).status.success()
    });
    Running {
        sluice,
        sock,
        _dir: dir,
    }
}

fn rewrite(r: &Running, text: &str) {
    let path = r.sluice.config_path.as_ref().unwrap();
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn ctl_commands_answer_for_humans_and_scripts() {
    let a = NameServer::start("127.0.0.2", "a");
    let b = NameServer::start("127.0.0.3", "b");
    let port = free_port();
    let mut r = start(
        "",
        &svc("myfrontend", "workshop", port, &[a.addr, b.addr])
            .replace("\nport = 80\n", "\nport = 80\nport_name = \"http\"\n"),
        (port, port),
        Launch::default(),
    );
    r.sluice.wait_ready_name(node_addr(port));
    for _ in 0..4 {
        ask_name(node_addr(port)).unwrap();
    }

    let status = ctl_ok(&r.sock, &["status"]);
    assert!(
        status.contains("driver:") && status.contains("workers:      2"),
        "{status}"
    );
    assert!(status.contains("generation:   1"), "{status}");

    let services = ctl_ok(&r.sock, &["services"]);
    let line = services.lines().nth(1).expect("one service line");
    for want in [
        "workshop",
        "myfrontend",
        "http:80",
        "TCP",
        &port.to_string(),
        "2/2",
    ] {
        assert!(line.contains(want), "{want} missing: {services}");
    }

    let describe = ctl_ok(
        &r.sock,
        &["describe", "service", "myfrontend", "-n", "workshop"],
    );
    let want = format!(
        "Name:                     myfrontend\nNamespace:                workshop\nLabels:                   <none>\n\
         Annotations:              <none>\nSelector:                 <none>\nType:                     NodePort\n\
         IP Family Policy:         SingleStack\nIP Families:              IPv4\nIP:                       <none>\n\
         IPs:                      <none>\nPort:                     http  80/TCP\nTargetPort:               80/TCP\n\
         NodePort:                 http  {port}/TCP\nEndpoints:                {},{}\n\
         Session Affinity:         None\nExternal Traffic Policy:  Cluster\nEvents:                   <none>\n",
        a.addr, b.addr
    );
    assert_eq!(describe, want);
    let missing = ctl(&r.sock, &["describe", "service", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));

    let eps = ctl_ok(&r.sock, &["endpoints", "workshop/myfrontend"]);
    assert!(
        eps.contains(&a.addr.to_string()) && eps.contains(&b.addr.to_string()),
        "{eps}"
    );

    let stats = ctl_ok(&r.sock, &["-o", "json", "stats"]);
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(v["ok"], true);
    let total = v["result"]["services"][0]["counters"]["connections_total"]
        .as_u64()
        .unwrap();
    assert!(total >= 4, "{stats}");
    let human = ctl_ok(&r.sock, &["stats"]);
    assert!(
        human.contains("RETRIES") && human.contains(&a.addr.to_string()),
        "{human}"
    );

    // Bad requests get errors; the connection and the daemon survive them.
    let resp = raw(&r.sock, b"this is not json\n");
    assert!(resp.contains("\"kind\":\"malformed\""), "{resp}");
    let resp = raw(&r.sock, b"{\"version\":1,\"command\":\"self-destruct\"}\n");
    assert!(resp.contains("\"kind\":\"unknown-command\""), "{resp}");
    let resp = raw(&r.sock, b"{\"version\":9,\"command\":\"status\"}\n");
    assert!(resp.contains("\"kind\":\"version\""), "{resp}");
    let mut huge = vec![b'x'; 200 * 1024];
    huge.push(b'\n');
    let resp = raw(&r.sock, &huge);
    assert!(resp.contains("\"kind\":\"too-large\""), "{resp}");
    // Two requests on one connection, answered in order.
    let mut s = UnixStream::connect(&r.sock).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(
        b"{\"version\":1,\"command\":\"status\"}\n{\"version\":1,\"command\":\"services\"}\n",
    )
    .unwrap();
    let mut lines = BufReader::new(s).lines();
    assert!(lines.next().unwrap().unwrap().contains("uptime_seconds"));
    assert!(lines.next().unwrap().unwrap().contains("endpoints_usable"));
    r.sluice.assert_alive();
    assert_eq!(ask_name(node_addr(port)).map(|_| ()).ok(), Some(()));
    ctl_ok(&r.sock, &["log-level", "debug"]);
    assert_eq!(ctl(&r.sock, &["log-level", "[[["]).status.code(), Some(1));
}

#[test]
fn a_uid_that_is_not_allowed_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: a_uid_that_is_not_allowed_is_refused needs root to act as nobody");
        return;
    }
    let port = free_port();
    let r = start(
        "control_socket_mode = 0o666",
        &svc("a", "itest", port, &[]),
        (port, port),
        Launch::default(),
    );
    // The temp dir must be traversable for `nobody`.
    use std::os::unix::fs::PermissionsExt;
    let dir = r.sock.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    use std::os::unix::process::CommandExt;
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["ctl", "--socket"])
        .arg(&r.sock)
        .arg("status")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("forbidden") && err.contains("uid 65534"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // The socket file has the configured mode.
    let mode = std::fs::metadata(&r.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);
    ctl_ok(&r.sock, &["status"]);
}

#[test]
fn default_socket_mode_is_0600() {
    let port = free_port();
    let r = start(
        "",
        &svc("a", "itest", port, &[]),
        (port, port),
        Launch::default(),
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&r.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn reload_applies_changes_and_a_bad_file_keeps_the_old_config_serving() {
    let a = NameServer::start("127.0.0.2", "a");
    let b = NameServer::start("127.0.0.3", "b");
    let (p1, p2) = (free_port(), free_port());
    let range = (p1.min(p2), p1.max(p2));
    let mut r = start(
        "",
        &svc("one", "itest", p1, &[a.addr]),
        range,
        Launch::default(),
    );
    r.sluice.wait_ready_name(node_addr(p1));
    let dir = r.sock.parent().unwrap().to_path_buf();

    // Add a Service on a new NodePort and change endpoints.
    let two = svc("one", "itest", p1, &[b.addr]) + &svc("two", "itest", p2, &[a.addr]);
    rewrite(&r, &config(&dir, range, "", &two));
    let out = ctl_ok(&r.sock, &["reload"]);
    assert!(out.contains("reloaded: generation 2"), "{out}");
    assert!(out.contains("+ service itest/two"), "{out}");
    assert!(
        out.contains(&format!("- endpoint itest/one {}", a.addr)),
        "{out}"
    );
    assert_eq!(ask_name(node_addr(p2)).unwrap(), "a");
    assert_eq!(ask_name(node_addr(p1)).unwrap(), "b");

    // A bad file: error with file:line:column, exit code 1, old config still served.
    let bad = config(&dir, range, "", &two) + "\nbogus_key = 1\n";
    rewrite(&r, &bad);
    let out = ctl(&r.sock, &["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let path = r.sluice.config_path.as_ref().unwrap().display().to_string();
    let lines = bad.lines().count();
    assert!(err.contains(&format!("{path}:{lines}:1:")), "{err}");
    assert_eq!(ask_name(node_addr(p2)).unwrap(), "a");
    let status = ctl_ok(&r.sock, &["status"]);
    assert!(
        status.contains("FAILED") && status.contains("generation:   2"),
        "{status}"
    );

    // A NodePort that cannot be opened: the reload fails before publish.
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = blocker.local_addr().unwrap().port();
    let range3 = (range.0.min(busy), range.1.max(busy));
    let three = two.clone() + &svc("three", "itest", busy, &[a.addr]);
    rewrite(&r, &config(&dir, range3, "", &three));
    let out = ctl(&r.sock, &["-o", "json", "reload"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("reload-failed") && text.contains(&busy.to_string()),
        "{text}"
    );
    let services = ctl_ok(&r.sock, &["services"]);
    assert!(!services.contains("three"), "{services}");

    // SIGHUP reloads too: remove Service two.
    rewrite(
        &r,
        &config(&dir, range, "", &svc("one", "itest", p1, &[a.addr])),
    );
    // SAFETY: kill with a child PID we own.
    unsafe { libc::kill(r.sluice.pid() as i32, libc::SIGHUP) };
    wait_for("SIGHUP reload", SOON, || {
        ctl_ok(&r.sock, &["status"])
            .contains("generation:   3")
            .then_some(())
    });
    wait_for("NodePort of the removed Service closed", SOON, || {
        TcpStream::connect_timeout(&node_addr(p2), Duration::from_millis(500))
            .is_err()
            .then_some(())
    });
    assert_eq!(ask_name(node_addr(p1)).unwrap(), "a");
}

#[test]
fn two_hundred_reloads_under_load_fail_no_request() {
    let backends = [
        NameServer::start("127.0.0.2", "a"),
        NameServer::start("127.0.0.3", "b"),
        NameServer::start("127.0.0.4", "c"),
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let (p1, p2) = (free_port(), free_port());
    let range = (p1.min(p2), p1.max(p2));
    let mut r = start(
        "",
        &svc("main", "itest", p1, &addrs[..2]),
        range,
        Launch::default(),
    );
    r.sluice.wait_ready_name(node_addr(p1));
    let dir = r.sock.parent().unwrap().to_path_buf();

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
            std::thread::spawn(move || -> Result<(), String> {
                let deadline = Instant::now() + Duration::from_secs(90);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let mut s = connect(node_addr(p1)).map_err(|e| format!("connect: {e}"))?;
                    for _ in 0..2 {
                        let name = ask_name_on(&mut s).map_err(|e| format!("request: {e}"))?;
                        if !["a", "b", "c"].contains(&name.as_str()) {
                            return Err(format!("unexpected answer {name:?}"));
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            })
        })
        .collect();

    let start_time = Instant::now();
    for i in 0..200usize {
        // Rotate endpoints of the main Service; add and remove a second Service.
        let eps = [addrs[i % 3], addrs[(i + 1) % 3]];
        let mut services = svc("main", "itest", p1, &eps);
        if i % 2 == 0 {
            services += &svc("extra", "itest", p2, &addrs[2..]);
        }
        rewrite(&r, &config(&dir, range, "", &services));
        let out = ctl(&r.sock, &["reload"]);
        assert!(
            out.status.success(),
            "reload {i} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if start_time.elapsed() > Duration::from_secs(75) {
            panic!("reloads too slow: only {i} in 75 s");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread").expect("no failed request");
    }
    let requests = done.load(Ordering::Relaxed);
    assert!(
        requests >= 200,
        "only {requests} requests ran during the reloads"
    );
    let status = ctl_ok(&r.sock, &["status"]);
    assert!(status.contains("generation:   201"), "{status}");
    r.sluice.assert_alive();
}

#[test]
fn a_drained_endpoint_gets_no_new_connections_keeps_open_ones_and_survives_reload() {
    let a = NameServer::start("127.0.0.2", "a");
    let b = NameServer::start("127.0.0.3", "b");
    let port = free_port();
    let mut r = start(
        "",
        &svc("web", "itest", port, &[a.addr, b.addr]),
        (port, port),
        Launch::default(),
    );
    r.sluice.wait_ready_name(node_addr(port));
    let dir = r.sock.parent().unwrap().to_path_buf();

    // Open connections to both endpoints first (client-ip-port hashing spreads them).
    let mut open: Vec<(TcpStream, String)> = Vec::new();
    for _ in 0..40 {
        let mut s = connect(node_addr(port)).unwrap();
        let name = ask_name_on(&mut s).unwrap();
        open.push((s, name));
        if open.iter().any(|(_, n)| n == "a") && open.iter().any(|(_, n)| n == "b") {
            break;
        }
    }
    assert!(
        open.iter().any(|(_, n)| n == "a"),
        "no connection reached a"
    );

    let out = ctl_ok(
        &r.sock,
        &["endpoint", "drain", "itest/web", &a.addr.to_string()],
    );
    assert!(out.contains("draining"), "{out}");
    for _ in 0..30 {
        assert_eq!(
            ask_name(node_addr(port)).unwrap(),
            "b",
            "new connection went to a drained endpoint"
        );
    }
    for (s, name) in &mut open {
        assert_eq!(
            &ask_name_on(s).unwrap(),
            name,
            "an open connection moved or broke"
        );
    }

    // A reload that keeps the endpoint keeps the override.
    let c = NameServer::start("127.0.0.4", "c");
    rewrite(
        &r,
        &config(
            &dir,
            (port, port),
            "",
            &svc("web", "itest", port, &[a.addr, b.addr, c.addr]),
        ),
    );
    ctl_ok(&r.sock, &["reload"]);
    let eps = ctl_ok(&r.sock, &["endpoints"]);
    assert!(eps.contains("draining (override)"), "{eps}");
    for _ in 0..30 {
        assert_ne!(ask_name(node_addr(port)).unwrap(), "a");
    }
    // Weight and enable.
    ctl_ok(
        &r.sock,
        &["endpoint", "enable", "itest/web", &a.addr.to_string()],
    );
    ctl_ok(
        &r.sock,
        &["endpoint", "weight", "itest/web", &b.addr.to_string(), "0"],
    );
    ctl_ok(
        &r.sock,
        &["endpoint", "disable", "itest/web", &c.addr.to_string()],
    );
    for _ in 0..20 {
        assert_eq!(ask_name(node_addr(port)).unwrap(), "a");
    }
    let bad = ctl(&r.sock, &["endpoint", "drain", "itest/web", "127.0.0.9:1"]);
    assert_eq!(bad.status.code(), Some(1));
    // Removing the endpoint from the file forgets its override.
    rewrite(
        &r,
        &config(
            &dir,
            (port, port),
            "",
            &svc("web", "itest", port, &[a.addr, c.addr]),
        ),
    );
    ctl_ok(&r.sock, &["reload"]);
    rewrite(
        &r,
        &config(
            &dir,
            (port, port),
            "",
            &svc("web", "itest", port, &[a.addr, b.addr, c.addr]),
        ),
    );
    ctl_ok(&r.sock, &["reload"]);
    let json = ctl_ok(&r.sock, &["-o", "json", "endpoints"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let eps = v["result"]["services"][0]["endpoints"].as_array().unwrap();
    let b_entry = eps
        .iter()
        .find(|e| e["address"] == b.addr.to_string())
        .unwrap();
    assert_eq!(b_entry["overridden"], false, "{json}");
    assert_eq!(b_entry["weight"], 1);
}

/// Collects sd_notify datagrams sent to a socket the test owns.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    seen: Vec<String>,
}

impl NotifySocket {
    fn new(dir: &TempDir) -> NotifySocket {
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket {
            sock,
            path,
            seen: Vec::new(),
        }
    }

    /// Waits for a message containing `want`; returns it.
    fn wait(&mut self, want: &str) -> String {
        let deadline = Instant::now() + SOON;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if msg.lines().any(|l| l == want || l.starts_with(want)) {
                    return msg;
                }
            }
        }
        panic!("no sd_notify message with {want:?}; seen: {:?}", self.seen);
    }
}

#[test]
fn sd_notify_ready_reloading_watchdog_stopping() {
    let a = NameServer::start("127.0.0.2", "a");
    let port = free_port();
    let tmp = TempDir::new("notify");
    let mut notify = NotifySocket::new(&tmp);
    let launch = Launch {
        env: vec![
            ("NOTIFY_SOCKET".into(), notify.path.display().to_string()),
            ("WATCHDOG_USEC".into(), "600000".into()),
        ],
        ..Launch::default()
    };
    let mut r = start(
        "",
        &svc("web", "itest", port, &[a.addr]),
        (port, port),
        launch,
    );
    let ready = notify.wait("READY=1");
    assert!(ready.contains("STATUS=serving 1 service ports"), "{ready}");
    // READY=1 came after the listeners were bound: the NodePort answers now.
    assert_eq!(ask_name(node_addr(port)).unwrap(), "a");
    notify.wait("WATCHDOG=1");
    notify.wait("WATCHDOG=1");

    ctl_ok(&r.sock, &["reload"]);
    let reloading = notify.wait("RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    notify.wait("READY=1");

    // SAFETY: kill with a child PID we own.
    unsafe { libc::kill(r.sluice.pid() as i32, libc::SIGTERM) };
    notify.wait("STOPPING=1");
    let status = r.sluice.wait_exit(SOON);
    assert!(status.success(), "{status}");
}

#[test]
fn sigterm_lets_a_live_connection_finish_then_exits_zero() {
    let a = NameServer::start("127.0.0.2", "a");
    let port = free_port();
    let mut r = start(
        "drain_timeout = \"20s\"",
        &svc("web", "itest", port, &[a.addr]),
        (port, port),
        Launch::default(),
    );
    r.sluice.wait_ready_name(node_addr(port));
    let mut live = connect(node_addr(port)).unwrap();
    assert_eq!(ask_name_on(&mut live).unwrap(), "a");
    // SAFETY: kill with a child PID we own.
    unsafe { libc::kill(r.sluice.pid() as i32, libc::SIGTERM) };
    wait_for("drain started", SOON, || {
        r.sluice.stderr().contains("draining").then_some(())
    });
    // The live connection keeps working during the drain.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(200));
        r.sluice.assert_alive();
        assert_eq!(ask_name_on(&mut live).unwrap(), "a");
    }
    drop(live);
    let status = r.sluice.wait_exit(SOON);
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn a_second_signal_exits_at_once() {
    let a = NameServer::start("127.0.0.2", "a");
    let port = free_port();
    let mut r = start(
        "drain_timeout = \"60s\"",
        &svc("web", "itest", port, &[a.addr]),
        (port, port),
        Launch::default(),
    );
    r.sluice.wait_ready_name(node_addr(port));
    let mut live = connect(node_addr(port)).unwrap();
    ask_name_on(&mut live).unwrap();
    let pid = r.sluice.pid() as i32;
    // SAFETY: kill with a child PID we own.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_for("drain started", SOON, || {
        r.sluice.stderr().contains("draining").then_some(())
    });
    let t = Instant::now();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGINT) };
    r.sluice.wait_exit(Duration::from_secs(5));
    assert!(t.elapsed() < Duration::from_secs(5));
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let code = head[9..12].parse().unwrap();
    (code, head.to_owned(), body.to_owned())
}

#[test]
fn metrics_healthz_and_livez() {
    let a = NameServer::start("127.0.0.2", "a");
    let port = free_port();
    let mport = free_port();
    let hport = free_port();
    let mut r = start(
        &format!("metrics_address = \"127.0.0.1:{mport}\"\nhealth_address = \"127.0.0.1:{hport}\""),
        &svc("web", "itest", port, &[a.addr]),
        (port, port),
        Launch::default(),
    );
    r.sluice.wait_ready_name(node_addr(port));
    for _ in 0..3 {
        ask_name(node_addr(port)).unwrap();
    }
    let maddr: SocketAddr = format!("127.0.0.1:{mport}").parse().unwrap();
    let (code, _, body) = http_get(maddr, "/metrics");
    assert_eq!(code, 200);
    let want_conns = format!(
        "sluice_service_connections_total{{namespace=\"itest\",service=\"web\",port_name=\"\",protocol=\"TCP\",node_port=\"{port}\"}}"
    );
    let line = body
        .lines()
        .find(|l| l.starts_with(&want_conns))
        .unwrap_or_else(|| panic!("no {want_conns}:\n{body}"));
    let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 3, "{line}");
    for name in [
        "sluice_endpoint_bytes_total",
        "sluice_worker_loop_iterations_total{worker=\"1\"}",
        "sluice_reloads_total{result=\"success\"} 0",
        "sluice_snapshot_generation 1",
        "sluice_last_reload_timestamp_seconds",
        "sluice_endpoint_weight",
    ] {
        assert!(body.contains(name), "{name} missing:\n{body}");
    }
    ctl_ok(&r.sock, &["reload"]);
    let (_, _, body) = http_get(maddr, "/metrics");
    assert!(
        body.contains("sluice_reloads_total{result=\"success\"} 1"),
        "{body}"
    );
    assert!(body.contains("sluice_snapshot_generation 2"), "{body}");

    let haddr: SocketAddr = format!("127.0.0.1:{hport}").parse().unwrap();
    for addr in [maddr, haddr] {
        let (code, head, body) = http_get(addr, "/healthz");
        assert_eq!(code, 200, "{head}");
        assert!(head.contains("Content-Type: application/json"), "{head}");
        // kube-proxy's json.Marshal(ProxyHealth): docs/operations.md, "/healthz".
        assert!(
            body.starts_with("{\"lastUpdated\":\"")
                && body.contains(",\"nodeEligible\":true,\"healthy\":true,\"status\":{\"IPv4\":{"),
            "{body}"
        );
        let (code, _, body) = http_get(addr, "/livez");
        assert_eq!(code, 200);
        assert!(
            body.contains("\"currentTime\"") && !body.contains("nodeEligible"),
            "{body}"
        );
    }
    assert_eq!(http_get(haddr, "/metrics").0, 404);
}

#[test]
fn the_systemd_units_verify() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let config_unit = std::fs::read_to_string(dir.join("sluice.service")).unwrap();
    let kube_unit = std::fs::read_to_string(dir.join("sluice-kubernetes.service")).unwrap();
    for text in [&config_unit, &kube_unit] {
        for want in [
            "Type=notify",
            "ExecStartPre=sluice check ",
            "ExecReload=sluice ctl",
            "Restart=on-failure",
            "LimitNOFILE=1048576",
            "RuntimeDirectory=sluice",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "WatchdogSec=",
            // Transparent forwarding's capability only through the drop-in.
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n",
        ] {
            assert!(text.contains(want), "{want} missing from a unit:\n{text}");
        }
    }
    // The Kubernetes variant: the node name, and a kubeconfig the hardening does not hide.
    for want in [
        "ExecStart=sluice run --kubernetes ",
        "Environment=NODE_NAME=%H",
        "EnvironmentFile=-/etc/default/sluice-kubernetes",
        "--kubeconfig /etc/sluice/kubeconfig",
        "Conflicts=sluice.service",
    ] {
        assert!(
            kube_unit.contains(want),
            "{want} missing from sluice-kubernetes.service"
        );
    }
    let dropin = std::fs::read_to_string(dir.join("transparent.conf")).unwrap();
    assert!(dropin.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_NET_ADMIN"));
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "SKIPPED: systemd-analyze is not installed (tests/run-all.sh installs `systemd`)"
        );
        return;
    }
    // verify wants the commands to exist: point copies of the units at our binary (the
    // package's own install is verified by tests/package.sh).
    let tmp = TempDir::new("unit");
    let bin = env!("CARGO_BIN_EXE_sluice");
    for (name, text) in [
        ("sluice.service", &config_unit),
        ("sluice-kubernetes.service", &kube_unit),
    ] {
        let copy = tmp.write(name, &text.replace("=sluice ", &format!("={bin} ")));
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&copy)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let relevant: Vec<&str> = err
            .lines()
            .filter(|l| l.contains(name) && !l.contains("Failed to connect"))
            .collect();
        assert!(
            out.status.success() && relevant.is_empty(),
            "systemd-analyze verify {name}:\n{err}"
        );
    }
}
