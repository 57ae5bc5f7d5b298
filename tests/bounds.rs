//! Bounds on durations, end to end. Four durations that `sluice check` accepted crashed or
//! broke sluice (`idle_timeout` panicked the worker on the first relayed connection,
//! `drain_timeout` panicked on SIGTERM, `connect_timeout` panicked the epoll worker and made
//! io_uring reset every connection, `outlier_ejection_time` panicked the health task). Each
//! is now refused past its bound — by `check`, by `run` and by a reload, with
//! `FILE:LINE:COLUMN` — and its bound itself is served without a panic. A bounded property
//! test then feeds extreme values of every duration key through check → run → traffic →
//! SIGTERM under both drivers.

mod common;

use common::*;
use proptest::prelude::*;
use sluice::config::limits::DurationRange;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The value of the report: u64::MAX seconds.
const HUGE: &str = "\"18446744073709551615s\"";

/// `sluice check --config FILE`: success, and stderr.
fn check(path: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("run sluice check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The drivers to run under: the suite's (`SLUICE_TEST_DRIVER`), else both (io_uring only
/// where this kernel offers it).
fn drivers() -> Vec<&'static str> {
    match test_driver().as_deref() {
        Some("epoll") => vec!["epoll"],
        Some("uring") => vec!["uring"],
        _ => {
            let mut v = vec!["epoll"];
            match sluice::dataplane::probe_uring() {
                Ok(()) => v.push("uring"),
                Err(e) => eprintln!("SKIPPED under io_uring (unavailable here: {e}); epoll only"),
            }
            v
        }
    }
}

/// `sluice run` with `driver = "…"` prepended to the file.
fn run_under(text: &str, driver: &str) -> Sluice {
    Sluice::run_with(
        &format!("driver = \"{driver}\"\n{text}"),
        Launch {
            own_driver: true,
            ..Launch::default()
        },
    )
}

/// The daemon's uptime in seconds, from `sluice ctl -o json status`.
fn uptime(sock: &Path) -> Option<f64> {
    let out = ctl(sock, &["-o", "json", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["result"]["uptime_seconds"].as_f64()
}

/// SIGTERM, then the process must exit 0 without a panic in its log.
fn stop_cleanly(lb: &mut Sluice) {
    // SAFETY: kill with a child PID we own.
    unsafe { libc::kill(lb.pid() as i32, libc::SIGTERM) };
    let status = lb.wait_exit(SOON);
    let log = lb.stderr();
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(status.code(), Some(0), "{status}\n{log}");
}

/// `key = HUGE` on line 1 of a file that is otherwise fine: `check`, `run` and a reload
/// all refuse it at 1:COLUMN naming the key, without a panic, and the reload keeps the
/// running configuration serving.
fn refused_everywhere(key: &str) {
    let echo = EchoServer::start("127.0.0.3");
    let port = free_port();
    let dir = TempDir::new("bounds");
    let sock = dir.path().join("ctl.sock");
    let good = one_service(
        port,
        &format!("control_socket = \"{}\"", sock.display()),
        &[ep(echo.addr)],
        "",
    );
    let bad = format!("{key} = {HUGE}\n{good}");
    let path = dir.write("bad.toml", &bad);
    let want = format!(
        "{}:1:{}: {key} {HUGE} is too long: at most ",
        path.display(),
        key.len() + 4
    );

    let (ok, stderr) = check(&path);
    assert!(!ok, "sluice check accepted {key} = {HUGE}");
    assert!(stderr.contains(&want), "want {want:?} in:\n{stderr}");

    let mut lb = Sluice::run(&bad);
    let status = lb.wait_exit(SOON);
    assert!(!status.success(), "sluice run served {key} = {HUGE}");
    let log = lb.stderr();
    let want_run = want.replace(
        &path.display().to_string(),
        &lb.config_path.as_ref().unwrap().display().to_string(),
    );
    assert!(log.contains(&want_run), "want {want_run:?} in:\n{log}");
    assert!(!log.contains("panicked"), "{log}");

    let mut lb = Sluice::run(&good);
    lb.wait_until("control socket answers", || {
        ctl(&sock, &["status"]).status.success()
    });
    lb.wait_ready_echo(node_addr(port));
    let config = lb.config_path.clone().unwrap();
    std::fs::write(&config, &bad).unwrap();
    let out = ctl(&sock, &["reload"]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the reload accepted {key} = {HUGE}");
    let want_reload = want.replace(&path.display().to_string(), &config.display().to_string());
    assert!(
        text.contains(&want_reload),
        "want {want_reload:?} in:\n{text}"
    );
    assert!(
        probe_echo(node_addr(port)),
        "still serving after the refused reload"
    );
    stop_cleanly(&mut lb);
}

#[test]
fn idle_timeout_past_its_bound_is_refused_and_its_bound_relays() {
    refused_everywhere("idle_timeout");
    let echo = EchoServer::start("127.0.0.3");
    let dir = TempDir::new("bounds-idle");
    let sock = dir.path().join("ctl.sock");
    for driver in drivers() {
        let port = free_port();
        let top = format!(
            "idle_timeout = \"7days\"\ncontrol_socket = \"{}\"",
            sock.display()
        );
        let text = one_service(port, &top, &[ep(echo.addr)], "");
        let mut lb = run_under(&text, driver);
        lb.wait_ready_echo(node_addr(port));
        for i in 0..10 {
            let mut s = connect(node_addr(port)).unwrap();
            echo_roundtrip(&mut s, format!("relayed {i}").as_bytes()).unwrap();
        }
        // One connection lives across idle checks (each worker checks every 100 ms): half a
        // second of the daemon's uptime later it still relays.
        let mut s = connect(node_addr(port)).unwrap();
        echo_roundtrip(&mut s, b"first").unwrap();
        let opened = wait_for("ctl status", SOON, || uptime(&sock));
        wait_for("half a second of uptime", SOON, || {
            uptime(&sock).filter(|t| *t >= opened + 0.5)
        });
        echo_roundtrip(&mut s, b"second").unwrap();
        drop(s);
        stop_cleanly(&mut lb);
    }
}

#[test]
fn drain_timeout_past_its_bound_is_refused_and_its_bound_drains() {
    refused_everywhere("drain_timeout");
    let echo = EchoServer::start("127.0.0.3");
    let port = free_port();
    let text = one_service(port, "drain_timeout = \"1day\"", &[ep(echo.addr)], "");
    let mut lb = Sluice::run(&text);
    lb.wait_ready_echo(node_addr(port));
    let mut live = connect(node_addr(port)).unwrap();
    echo_roundtrip(&mut live, b"before").unwrap();
    // SAFETY: kill with a child PID we own.
    unsafe { libc::kill(lb.pid() as i32, libc::SIGTERM) };
    wait_for("the drain to start", SOON, || {
        lb.stderr().contains("draining").then_some(())
    });
    lb.assert_alive();
    echo_roundtrip(&mut live, b"during the drain").unwrap();
    drop(live);
    let status = lb.wait_exit(SOON);
    let log = lb.stderr();
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(status.code(), Some(0), "{status}\n{log}");
}

#[test]
fn connect_timeout_past_its_bound_is_refused_and_its_bound_connects_under_both_drivers() {
    refused_everywhere("connect_timeout");
    let echo = EchoServer::start("127.0.0.3");
    let closed = ClosedPort::new("127.0.0.4");
    for driver in drivers() {
        let port = free_port();
        // A refused endpoint beside a good one: refusals are retried on the other.
        let text = one_service(
            port,
            "connect_timeout = \"1h\"\nworkers = 1",
            &[ep(echo.addr), ep(closed.addr)],
            "connect_retries = 1",
        );
        let mut lb = run_under(&text, driver);
        lb.wait_ready_echo(node_addr(port));
        for i in 0..20 {
            let mut s = connect(node_addr(port)).unwrap();
            echo_roundtrip(&mut s, format!("{driver} {i}").as_bytes())
                .unwrap_or_else(|e| panic!("{driver}: connection {i}: {e}"));
        }
        stop_cleanly(&mut lb);
    }
}

#[test]
fn outlier_ejection_time_past_its_bound_is_refused_and_its_bound_ejects() {
    refused_everywhere("outlier_ejection_time");
    let echo = EchoServer::start("127.0.0.3");
    let closed = ClosedPort::new("127.0.0.4");
    let port = free_port();
    let dir = TempDir::new("bounds-eject");
    let sock = dir.path().join("ctl.sock");
    let text = one_service(
        port,
        &format!(
            "control_socket = \"{}\"\noutlier_ejection = true\noutlier_consecutive_failures = 1\n\
             outlier_ejection_time = \"1h\"",
            sock.display()
        ),
        &[ep(echo.addr), ep(closed.addr)],
        "connect_retries = 1",
    );
    let mut lb = Sluice::run(&text);
    lb.wait_ready_echo(node_addr(port));
    let down = format!("{}", closed.addr);
    wait_for("the refusing endpoint to be ejected", SOON, || {
        let mut s = connect(node_addr(port)).ok()?;
        echo_roundtrip(&mut s, b"x").ok()?;
        let shown = ctl_ok(&sock, &["endpoints"]);
        shown
            .lines()
            .any(|l| l.contains(&down) && l.contains("ejected"))
            .then_some(())
    });
    // The health task lives on: it still answers for the endpoints, and serving goes on.
    lb.assert_alive();
    assert!(ctl_ok(&sock, &["endpoints"]).contains("ejected"));
    let mut s = connect(node_addr(port)).unwrap();
    echo_roundtrip(&mut s, b"after the ejection").unwrap();
    drop(s);
    stop_cleanly(&mut lb);
}

// ---------------------------------------------------------------------------------------
// Extreme values of every duration key
// ---------------------------------------------------------------------------------------

/// The duration keys, each with its bound (from the library, so the test follows it).
fn keys() -> Vec<(&'static str, DurationRange)> {
    sluice::config::limits::DURATIONS.to_vec()
}

/// A value inside a key's range, favouring its edges.
fn inside(range: DurationRange) -> impl Strategy<Value = Duration> {
    let (min, max) = (range.min, range.max);
    prop_oneof![
        Just(min),
        Just(max),
        (min.as_nanos() as u64..=max.as_nanos() as u64).prop_map(Duration::from_nanos),
    ]
}

/// A text outside a key's range, or no duration at all: just past the bound, values no
/// clock holds, numbers humantime cannot hold.
fn outside(range: DurationRange) -> impl Strategy<Value = String> {
    let past = range.max + Duration::from_nanos(1);
    prop_oneof![
        Just(format!("{}s {}ns", past.as_secs(), past.subsec_nanos())),
        Just("18446744073709551615s".to_owned()),
        Just("18446744073709551615s 999999999ns".to_owned()),
        Just("584942417355years".to_owned()),
        Just("99999999999999999999999s".to_owned()),
        (range.max.as_secs() + 1..u64::MAX).prop_map(|s| format!("{s}s")),
    ]
}

/// One case: a value inside its range for some keys (the file is served), one key's text
/// outside its range (the same file with it is refused), and whether the per-Service keys go
/// into the `[[service]]` table instead of the top level.
type Case = (Vec<Option<String>>, (usize, String), bool);

fn case() -> impl Strategy<Value = Case> {
    let show = sluice::config::limits::show;
    let per_key: Vec<_> = keys()
        .into_iter()
        .map(|(_, r)| proptest::option::weighted(0.8, inside(r)))
        .collect();
    let bad = (0..keys().len()).prop_flat_map(|i| (Just(i), outside(keys()[i].1)));
    (per_key, bad, any::<bool>()).prop_map(move |(mut values, bad, in_service)| {
        // A check must end before the next: the timeout at most the interval.
        let at = |k: &str| keys().iter().position(|(key, _)| *key == k).unwrap();
        let interval = values[at("health_check_interval")].unwrap_or(Duration::from_secs(2));
        if let Some(t) = &mut values[at("health_check_timeout")] {
            *t = (*t).min(interval);
        }
        (
            values.into_iter().map(|v| v.map(show)).collect(),
            bad,
            in_service,
        )
    })
}

fn config_of(values: &[Option<String>], in_service: bool, port: u16, echo: SocketAddr) -> String {
    let mut top = String::from("workers = 1\nhealth_check = \"tcp\"\noutlier_ejection = true\n");
    let mut service = String::new();
    for ((key, _), value) in keys().iter().zip(values) {
        let Some(v) = value else { continue };
        let line = format!("{key} = \"{v}\"\n");
        let per_service = matches!(*key, "connect_timeout" | "idle_timeout" | "hold_when_empty");
        if per_service && in_service {
            service.push_str(&line);
        } else {
            top.push_str(&line);
        }
    }
    one_service(port, &top, &[ep(echo)], &service)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 12,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// check → run → a little traffic → SIGTERM, under both drivers: a file with every
    /// duration inside its range is accepted, served and stops with status 0; the same file
    /// with one duration past its bound is refused alike by `check` and `run`, at a
    /// FILE:LINE:COLUMN naming the key. No panic either way.
    #[test]
    fn extreme_durations_never_panic((values, (bad, bad_text), in_service) in case()) {
        let echo = EchoServer::start("127.0.0.3");
        let mut refused = values.clone();
        refused[bad] = Some(bad_text);
        let bad_key = keys()[bad].0;
        for driver in drivers() {
            for (values, served) in [(&values, true), (&refused, false)] {
                let port = free_port();
                let text = format!("driver = \"{driver}\"\n{}", config_of(values, in_service, port, echo.addr));
                let dir = TempDir::new("extreme");
                let path = dir.write("x.toml", &text);
                let (accepted, stderr) = check(&path);
                prop_assert!(!stderr.contains("panicked"), "{}\n{}", text, stderr);
                prop_assert_eq!(accepted, served, "{}\n{}", text, stderr);
                let mut lb = Sluice::run_with(&text, Launch { own_driver: true, ..Launch::default() });
                if !served {
                    let at = format!("{}:", path.display());
                    let line = stderr.lines().find(|l| l.contains(&at) && l.contains(bad_key));
                    prop_assert!(line.is_some(), "no FILE:LINE:COLUMN error naming {}:\n{}\n{}", bad_key, text, stderr);
                    let status = lb.wait_exit(SOON);
                    let log = lb.stderr();
                    prop_assert!(!status.success(), "run served what check refused:\n{}", text);
                    prop_assert!(!log.contains("panicked"), "{}\n{}", text, log);
                    let shown = line.unwrap().split_once(": ").map(|(_, m)| m.to_owned()).unwrap_or_default();
                    prop_assert!(log.contains(&shown), "run and check differ: {}\n{}", shown, log);
                    continue;
                }
                lb.wait_ready_accepting(node_addr(port));
                // Traffic may fail with such values (a 1 ns idle or connect timeout): only a
                // panic or an unclean exit is a failure.
                for i in 0..5 {
                    if let Ok(mut s) = connect(node_addr(port)) {
                        let _ = echo_roundtrip(&mut s, format!("{i}").as_bytes());
                    }
                }
                lb.assert_alive();
                // SAFETY: kill with a child PID we own.
                unsafe { libc::kill(lb.pid() as i32, libc::SIGTERM) };
                let status = lb.wait_exit(SOON);
                let log = lb.stderr();
                prop_assert!(!log.contains("panicked"), "{}\n{}", text, log);
                prop_assert_eq!(status.code(), Some(0), "{}\n{}", text, log);
            }
        }
    }
}
