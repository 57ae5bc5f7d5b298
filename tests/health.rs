//! Endpoint health, end to end: active TCP and HTTP checks (down within fall × interval
//! with every client still answered, back after rise × interval), Maglev keeping clients
//! in place while one endpoint flaps, the PROXY v2 LOCAL header of checks, passive outlier
//! ejection and return, and `shutdown_sessions`.
//!
//! Short check intervals (200 ms) keep the whole file to a few seconds. Each test uses its
//! own 127.0.x.0/24 block, so tests running in parallel never share a backend port.

mod common;
use common::*;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_millis(200);
const RISE: u32 = 2;
const FALL: u32 = 3;
/// Slack on top of rise/fall × interval for a state change to show: the probe's phase
/// (up to one interval), the publish, the `ctl` polling, and a busy 2-core machine.
const SLACK: Duration = Duration::from_millis(1500);

fn check_keys(kind: &str) -> String {
    format!(
        "health_check = \"{kind}\"\nhealth_check_interval = \"{}ms\"\nhealth_check_rise = {RISE}\nhealth_check_fall = {FALL}\n",
        INTERVAL.as_millis()
    )
}

/// A running sluice with a control socket.
struct Node {
    sluice: Sluice,
    sock: PathBuf,
    node: SocketAddr,
    _dir: TempDir,
}

impl Node {
    /// One Service `itest/svc` on a free NodePort with `endpoints` and `service_extra` keys.
    fn start(endpoints: &[SocketAddr], service_extra: &str) -> Node {
        Node::start_with(endpoints, "", service_extra)
    }

    /// Like [`Node::start`] with more top-level keys.
    fn start_with(endpoints: &[SocketAddr], top_extra: &str, service_extra: &str) -> Node {
        let dir = TempDir::new("health");
        let sock = dir.path().join("ctl.sock");
        let port = free_port();
        let eps: Vec<String> = endpoints.iter().map(|a| ep(*a)).collect();
        let config = node_toml(
            port,
            &format!(
                "workers = 2\ncontrol_socket = \"{}\"\n{top_extra}",
                sock.display()
            ),
        ) + &service_toml("svc", port, &eps, service_extra);
        let mut sluice = Sluice::run(&config);
        let node = node_addr(port);
        sluice.wait_ready_accepting(node);
        let s = &sock;
        sluice.wait_until("control socket", || s.exists());
        Node {
            sluice,
            sock,
            node,
            _dir: dir,
        }
    }

    /// `sluice ctl ARGS...`, which must succeed.
    fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["ctl", "--socket"])
            .arg(&self.sock)
            .args(args)
            .output()
            .expect("run sluice ctl");
        assert!(
            out.status.success(),
            "sluice ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `(health, reason)` of every endpoint, by address, from `sluice ctl -o json endpoints`.
    fn health(&self) -> HashMap<SocketAddr, (String, Option<String>)> {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["ctl", "--socket"])
            .arg(&self.sock)
            .args(["-o", "json", "endpoints"])
            .output()
            .expect("run sluice ctl");
        assert!(
            out.status.success(),
            "sluice ctl endpoints: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ctl json");
        v["result"]["services"][0]["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .map(|e| {
                (
                    e["address"].as_str().unwrap().parse().unwrap(),
                    (
                        e["health"].as_str().unwrap().to_owned(),
                        e["health_reason"].as_str().map(str::to_owned),
                    ),
                )
            })
            .collect()
    }

    /// Waits until `addr` shows `want` ("up"/"down"); returns how long it took and the
    /// reason shown.
    fn wait_health(&mut self, addr: SocketAddr, want: &str) -> (Duration, Option<String>) {
        let start = Instant::now();
        let mut reason = None;
        let what = format!("{addr} to be {want}");
        let node = &*self;
        wait_for(&what, SOON, || {
            let (h, r) = node.health().remove(&addr)?;
            reason = r;
            (h == want).then_some(())
        });
        self.sluice.assert_alive();
        (start.elapsed(), reason)
    }

    fn log(&self) -> String {
        self.sluice.stderr()
    }
}

/// Asks for names through `node` on new connections until stopped, counting answers and
/// keeping every failure. Bounded: at most 20 000 requests or 60 s.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(node: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, a, f) = (stop.clone(), answered.clone(), failures.clone());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            for _ in 0..20_000 {
                if s.load(Ordering::SeqCst) || start.elapsed() > Duration::from_secs(60) {
                    break;
                }
                match ask_name(node) {
                    Ok(_) => {
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => f.lock().unwrap().push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(3));
            }
        });
        Load {
            stop,
            answered,
            failures,
            thread: Some(thread),
        }
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }

    /// Stops and returns (answered, failures).
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("load thread");
        }
        (self.answered(), self.failures.lock().unwrap().clone())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request on an open connection gets an HTTP response (whatever its status).
fn answers(s: &mut std::net::TcpStream) -> bool {
    use std::io::{Read, Write};
    if s.write_all(NAME_REQUEST).is_err() {
        return false;
    }
    let mut head = [0u8; 9];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 ")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// (a) + (b): a closed listener is marked down within fall × interval while every client
/// request is answered (connect retries), and back up within rise × interval once it
/// listens again, taking traffic again.
#[test]
fn closed_endpoint_goes_down_without_failed_clients_and_comes_back() {
    let a = NameServer::start("127.0.1.2", "a");
    let mut b = NameServer::start("127.0.1.3", "b");
    let c = NameServer::start("127.0.1.4", "c");
    let b_addr = b.addr;
    let mut n = Node::start(
        &[a.addr, b_addr, c.addr],
        &format!("{}connect_retries = 2\n", check_keys("tcp")),
    );
    n.sluice.wait_ready_name(n.node);
    for addr in [a.addr, b_addr, c.addr] {
        n.wait_health(addr, "up");
    }
    let load = Load::start(n.node);
    wait_for("some answers before the close", SOON, || {
        (load.answered() >= 20).then_some(())
    });

    b.close_listener();
    let (took, reason) = n.wait_health(b_addr, "down");
    assert!(
        took <= INTERVAL * FALL + SLACK,
        "marked down after {took:?}, expected within fall × interval = {:?} (+ slack)",
        INTERVAL * FALL
    );
    let reason = reason.expect("a reason for down");
    assert!(
        reason.contains("failed check") && reason.contains("connection refused"),
        "{reason}"
    );
    let log = n.log();
    assert!(
        log.contains("endpoint DOWN") && log.contains(&b_addr.to_string()),
        "transition not logged:\n{log}"
    );
    // Keep the load running a little while b is down.
    let at = load.answered();
    wait_for("answers while b is down", SOON, || {
        (load.answered() >= at + 20).then_some(())
    });

    let b2 = NameServer::start_at(b_addr, "b");
    let (took, _) = n.wait_health(b_addr, "up");
    assert!(
        took <= INTERVAL * RISE + SLACK,
        "back up after {took:?}, expected within rise × interval = {:?} (+ slack)",
        INTERVAL * RISE
    );
    let (answered, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {} client requests failed while {b_addr} went down and up: {:?}",
        failures.len(),
        answered + failures.len() as u64,
        &failures[..failures.len().min(5)]
    );
    // b takes traffic again (new connections hash over all three).
    wait_for("b to answer a client again", SOON, || {
        (ask_name(n.node).ok()? == "b").then_some(())
    });
    assert!(b2.connections() > 0);
    drop((a, c));
}

/// (c) Flapping one endpoint of four moves no client of the other three beyond Maglev's
/// bound (2% of the table per removal), and when it is back every client is exactly where
/// it was (the table is a function of the endpoint set).
#[test]
fn flapping_endpoint_keeps_other_clients_in_place() {
    let names = ["a", "b", "c", "d"];
    let mut backends: Vec<Backend> = names
        .iter()
        .enumerate()
        .map(|(i, name)| NameServer::start(&format!("127.0.2.{}", i + 2), name))
        .collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let mut n = Node::start(
        &addrs,
        &format!(
            "policy = \"maglev\"\nhash_key = \"client-ip\"\n{}",
            check_keys("tcp")
        ),
    );
    n.sluice.wait_ready_name(n.node);
    for addr in &addrs {
        n.wait_health(*addr, "up");
    }
    let clients: Vec<IpAddr> = (10..70).map(|i| ip(&format!("127.0.2.{i}"))).collect();
    let where_now = |node: SocketAddr| -> Vec<String> {
        clients
            .iter()
            .map(|c| {
                let mut s = connect_from(*c, node).expect("connect from client");
                ask_name_on(&mut s).expect("answer")
            })
            .collect()
    };
    let before = where_now(n.node);
    let flapped = "d";
    let on_flapped = before.iter().filter(|e| *e == flapped).count();
    let others = before.len() - on_flapped;
    assert!(
        on_flapped > 0 && others > 0,
        "clients spread badly: {before:?}"
    );
    // Maglev's bound: at most 2% of the table moves beyond the removed endpoint's slots.
    let allowed = (others as f64 * 0.02).ceil() as usize;
    for round in 0..3 {
        let d = &mut backends[3];
        d.close_listener();
        n.wait_health(addrs[3], "down");
        let during = where_now(n.node);
        let moved: Vec<usize> = (0..clients.len())
            .filter(|&i| before[i] != flapped && during[i] != before[i])
            .collect();
        assert!(
            moved.len() <= allowed,
            "round {round}: {} clients of other endpoints moved (allowed {allowed}): {moved:?}",
            moved.len()
        );
        for (i, e) in during.iter().enumerate() {
            assert_ne!(
                e, flapped,
                "round {round}: client {i} still on the down endpoint"
            );
        }
        backends[3] = NameServer::start_at(addrs[3], "d");
        n.wait_health(addrs[3], "up");
        let after = where_now(n.node);
        assert_eq!(
            after, before,
            "round {round}: clients not back where they were"
        );
    }
}

/// (d) An HTTP check marks down an endpoint that answers 500 although TCP connects, and
/// sends `GET path HTTP/1.1` with Host and `Connection: close`.
#[test]
fn http_check_marks_down_on_a_bad_status() {
    let a = StatusServer::start("127.0.3.2", "a");
    let b = StatusServer::start("127.0.3.3", "b");
    let b_addr = b.backend.addr;
    let mut n = Node::start(
        &[a.backend.addr, b_addr],
        &format!(
            "{}health_check_path = \"/healthz\"\nhealth_check_status = \"200-299\"\n",
            check_keys("http")
        ),
    );
    n.wait_health(b_addr, "up");
    wait_for("a check request at b", SOON, || {
        b.heads()
            .into_iter()
            .find(|h| h.starts_with("GET /healthz "))
    });
    let head = b
        .heads()
        .into_iter()
        .find(|h| h.starts_with("GET /healthz "))
        .unwrap();
    assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head:?}");
    assert!(
        head.contains(&format!("\r\nHost: {b_addr}\r\n")),
        "{head:?}"
    );
    assert!(head.contains("\r\nConnection: close\r\n"), "{head:?}");

    b.set_status(500);
    let (_, reason) = n.wait_health(b_addr, "down");
    let reason = reason.unwrap_or_default();
    assert!(
        reason.contains("HTTP status 500 (expected 200-299)"),
        "{reason}"
    );
    assert_eq!(n.health()[&a.backend.addr].0, "up");
    // TCP still connects: the server keeps receiving checks.
    let seen = b.heads().len();
    wait_for("more checks at b while down", SOON, || {
        (b.heads().len() > seen).then_some(())
    });
    b.set_status(204);
    n.wait_health(b_addr, "up");
}

/// (e) Checks of a Service that forwards with PROXY v2 start with a v2 LOCAL header: TCP
/// checks send only that; HTTP checks send it before the request.
#[test]
fn checks_send_a_proxy_v2_local_header_first() {
    let local: Vec<u8> = [
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x20, 0x00, 0x00,
        0x00,
    ]
    .to_vec();
    for (i, kind) in ["tcp", "http"].into_iter().enumerate() {
        let observer = ObserverServer::start(&format!("127.0.4.{}", i + 2));
        let n = Node::start(
            &[observer.addr],
            &format!("forwarding = \"proxy-v2\"\n{}", check_keys(kind)),
        );
        // The NodePort readiness probe is relayed with a PROXY (not LOCAL) header; checks
        // are the connections whose header says LOCAL.
        let checks = wait_for("a check at the observer", SOON, || {
            let checks: Vec<Vec<u8>> = observer
                .reports()
                .into_iter()
                .map(|r| r.data)
                .filter(|d| {
                    sluice::proxy_protocol::decode(d).map(|(h, _)| h.command)
                        != Ok(sluice::proxy_protocol::Command::Proxy)
                })
                .collect();
            (!checks.is_empty()).then_some(checks)
        });
        for data in checks {
            assert!(
                data.starts_with(&local),
                "{kind} check: does not start with a v2 LOCAL header: {data:02x?}"
            );
            let (header, len) =
                sluice::proxy_protocol::decode(&data).expect("a valid PROXY v2 header");
            assert_eq!((header.version, len), (2, 16));
            assert_eq!(header.command, sluice::proxy_protocol::Command::Local);
            let rest = &data[len..];
            match kind {
                "tcp" => assert!(rest.is_empty(), "tcp check sent more: {rest:02x?}"),
                _ => assert!(
                    rest.starts_with(b"GET / HTTP/1.1\r\n"),
                    "http check after the header: {:?}",
                    String::from_utf8_lossy(rest)
                ),
            }
        }
        drop(n);
    }
}

/// (f) Without active checks, an endpoint that refuses connections is ejected after
/// `outlier_consecutive_failures` failed connects (clients are still answered: retries),
/// and tried again after the ejection time.
#[test]
fn passive_ejection_and_return() {
    let a = NameServer::start("127.0.5.2", "a");
    let closed = ClosedPort::new("127.0.5.3");
    let b_addr = closed.addr;
    let mut n = Node::start(
        &[a.addr, b_addr],
        "outlier_ejection = true\noutlier_consecutive_failures = 3\noutlier_ejection_time = \"2s\"\nconnect_retries = 1\n",
    );
    n.sluice.wait_ready_name(n.node);
    assert_eq!(
        n.health()[&b_addr].0,
        "up",
        "no active check: up until seen failing"
    );
    let load = Load::start(n.node);
    let (_, reason) = n.wait_health(b_addr, "down");
    let reason = reason.unwrap_or_default();
    assert!(reason.contains("ejected"), "{reason}");
    // While ejected the port starts listening; after the ejection time b is tried again.
    drop(closed);
    let b = NameServer::start_at(b_addr, "b");
    n.wait_health(b_addr, "up");
    wait_for("b to answer a client", SOON, || {
        (ask_name(n.node).ok()? == "b").then_some(())
    });
    let (answered, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        answered,
        &failures[..failures.len().min(5)]
    );
    assert!(b.connections() > 0);
}

/// (g) With `shutdown_sessions`, established connections to an endpoint marked down are
/// reset, those to other endpoints go on; without it they all go on.
#[test]
fn shutdown_sessions_resets_only_the_downed_endpoints_connections() {
    for (i, shutdown) in [true, false].into_iter().enumerate() {
        let a = StatusServer::start(&format!("127.0.6.{}", 2 + 2 * i), "a");
        let b = StatusServer::start(&format!("127.0.6.{}", 3 + 2 * i), "b");
        let b_addr = b.backend.addr;
        let mut n = Node::start(
            &[a.backend.addr, b_addr],
            &format!("{}shutdown_sessions = {shutdown}\n", check_keys("http")),
        );
        n.sluice.wait_ready_name(n.node);
        n.wait_health(b_addr, "up");
        // Keep-alive connections, spread by client port over both endpoints.
        let mut on: HashMap<String, Vec<std::net::TcpStream>> = HashMap::new();
        for _ in 0..24 {
            let mut s = connect(n.node).expect("connect");
            let name = ask_name_on(&mut s).expect("answer");
            on.entry(name).or_default().push(s);
        }
        assert!(
            on.contains_key("a") && on.contains_key("b"),
            "connections all on one endpoint: {:?}",
            on.keys()
        );
        b.set_status(503);
        n.wait_health(b_addr, "down");
        if shutdown {
            for s in on.get_mut("b").unwrap() {
                let (_, ended) = read_to_end_outcome(s, SOON);
                assert_eq!(ended, Ended::Reset, "connection to the downed endpoint");
            }
        } else {
            // The sweep visits every connection within ~1.1 s: give it that long to (not)
            // act, then check the connections to b still work.
            std::thread::sleep(Duration::from_millis(1500));
            for s in on.get_mut("b").unwrap() {
                assert!(answers(s), "connection to b did not survive");
            }
        }
        for s in on.get_mut("a").unwrap() {
            assert_eq!(ask_name_on(s).expect("connection to a survives"), "a");
        }
    }
}

/// GET `path` from an HTTP listener; the body.
fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = connect(addr).expect("connect metrics");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// An operator `disable` counts the endpoint down (and stops its checks), `enable` brings
/// it back; a reload keeps the state of unchanged endpoints; transitions show in
/// `/metrics` and in `sluice ctl endpoints`.
#[test]
fn disable_counts_down_reload_keeps_state_and_metrics_count_transitions() {
    let a = NameServer::start("127.0.7.2", "a");
    let mut b = NameServer::start("127.0.7.3", "b");
    let b_addr = b.addr;
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut n = Node::start_with(
        &[a.addr, b_addr],
        &format!("metrics_address = \"{metrics}\""),
        &check_keys("tcp"),
    );
    n.wait_health(b_addr, "up");
    n.ctl(&["endpoint", "disable", "itest/svc", &a.addr.to_string()]);
    let (_, reason) = n.wait_health(a.addr, "down");
    assert_eq!(reason.as_deref(), Some("disabled by an operator"));
    let table = n.ctl(&["endpoints"]);
    assert!(table.contains("HEALTH"), "{table}");
    assert!(table.contains("down (disabled by an operator)"), "{table}");
    // No checks while disabled: the backend sees no new connection for a few intervals.
    let seen = a.connections();
    std::thread::sleep(INTERVAL * 4);
    assert_eq!(a.connections(), seen, "checks went on while disabled");
    n.ctl(&["endpoint", "enable", "itest/svc", &a.addr.to_string()]);
    n.wait_health(a.addr, "up");

    // b goes down; a reload of the same file keeps it down (not restarted as new, up).
    b.close_listener();
    n.wait_health(b_addr, "down");
    n.ctl(&["reload"]);
    assert_eq!(n.health()[&b_addr].0, "down", "a reload reset b's health");

    let body = http_get(metrics, "/metrics");
    let line = |name: &str, addr: SocketAddr, extra: &str| -> Option<String> {
        body.lines()
            .find(|l| {
                l.starts_with(name)
                    && l.contains(&format!("endpoint=\"{addr}\""))
                    && l.contains(extra)
            })
            .map(str::to_owned)
    };
    assert_eq!(
        line("sluice_endpoint_up{", b_addr, "")
            .as_deref()
            .map(|l| l.ends_with(" 0")),
        Some(true),
        "{body}"
    );
    assert_eq!(
        line("sluice_endpoint_up{", a.addr, "")
            .as_deref()
            .map(|l| l.ends_with(" 1")),
        Some(true),
        "{body}"
    );
    let transitions = |addr, to| {
        line(
            "sluice_endpoint_health_transitions_total{",
            addr,
            &format!("to=\"{to}\""),
        )
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    assert_eq!(transitions(a.addr, "down"), Some(1), "{body}");
    assert_eq!(transitions(a.addr, "up"), Some(1), "{body}");
    assert_eq!(transitions(b_addr, "down"), Some(1), "{body}");
    assert_eq!(transitions(b_addr, "up"), Some(0), "{body}");
}
