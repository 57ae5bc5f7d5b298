//! A worker thread that dies — a panic, or its loop failing — takes the whole process down
//! (exit status 70, `sluice::control::WORKER_DIED`) so that the service manager restarts it,
//! instead of leaving a process whose NodePort is half-served while `ctl` still lists it.
//!
//! The death is injected with `SLUICE_TEST_WORKER_DEATH=INDEX:panic|error`, which only builds
//! with debug assertions (the suite's `ci` profile) read: worker INDEX dies at its first
//! accepted connection.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

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

/// Runs two workers, worker 1 dying as `how` at its first connection; connects until the
/// process is gone and checks how it went.
fn dies_whole(driver: &str, how: &str) {
    let echo = EchoServer::start("127.0.0.3");
    let port = free_port();
    let dir = TempDir::new("death");
    let sock = dir.path().join("ctl.sock");
    // The service manager's notify socket.
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    let text = format!(
        "driver = \"{driver}\"\n{}",
        one_service(
            port,
            &format!(
                "workers = 2\npin_workers = false\ncontrol_socket = \"{}\"",
                sock.display()
            ),
            &[ep(echo.addr)],
            "",
        )
    );
    let mut lb = Sluice::run_with(
        &text,
        Launch {
            own_driver: true,
            env: vec![
                ("SLUICE_TEST_WORKER_DEATH".into(), format!("1:{how}")),
                ("NOTIFY_SOCKET".into(), notify_path.display().to_string()),
            ],
            ..Launch::default()
        },
    );
    lb.wait_until("control socket answers", || {
        ctl(&sock, &["status"]).status.success()
    });
    assert!(Path::new(&sock).exists());

    // The kernel spreads connections over both workers' sockets: within a few, one lands
    // on worker 1, which dies. Connections on worker 0 are served meanwhile.
    let mut served = 0;
    let mut died_at = None;
    for i in 0..200 {
        let ok = connect(node_addr(port))
            .and_then(|mut s| echo_roundtrip(&mut s, format!("{i}").as_bytes()))
            .is_ok();
        if ok {
            served += 1;
            continue;
        }
        died_at = Some(Instant::now());
        break;
    }
    let died_at = died_at.unwrap_or_else(|| {
        panic!("{driver}/{how}: 200 connections and none met worker 1 ({served} served)")
    });
    let status = lb.wait_exit(SOON);
    let gone_after = died_at.elapsed();
    let log = lb.stderr();
    assert_eq!(
        status.code(),
        Some(sluice::control::WORKER_DIED),
        "{driver}/{how}: {status}\n{log}"
    );
    assert!(gone_after < Duration::from_secs(5), "{gone_after:?}");
    let why = match how {
        "panic" => "panicked at",
        _ => "stopped on an error: injected worker error",
    };
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("worker 1 died: taking the whole process down")
            && l.contains(why)),
        "{driver}/{how}: no error line naming worker 1 and its cause:\n{log}"
    );
    // systemd was told why (the exit status tells it the service failed). The unit failed:
    // the emulated systemd releases its fd store (sluice put the NodePort sockets there);
    // reading the messages without taking their descriptors closes them.
    notify.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    let mut told = Vec::new();
    while let Ok(n) = notify.recv(&mut buf) {
        told.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // Nothing is left half-served: the NodePort refuses, and the control socket is gone.
    // (Under io_uring the kernel closes the listening sockets a few milliseconds after the
    // exit, when it tears the rings down: a connect in that window is accepted, then reset.)
    let exited = Instant::now();
    let mut accepted = 0;
    let refused = wait_for("the NodePort to refuse", Duration::from_secs(2), || {
        match std::net::TcpStream::connect_timeout(&node_addr(port), Duration::from_secs(2)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(exited.elapsed()),
            _ => {
                accepted += 1;
                None
            }
        }
    });
    eprintln!("{driver}/{how}: refused {refused:?} after exit, {accepted} accepted before");
    assert!(
        !Path::new(&sock).exists(),
        "{driver}/{how}: control socket left behind"
    );
    assert!(
        told.iter()
            .any(|m| m.contains("STOPPING=1") && m.contains("STATUS=worker 1 died: ")),
        "{driver}/{how}: sd_notify messages {told:?}"
    );
}

#[test]
fn a_worker_that_panics_takes_the_process_down_under_both_drivers() {
    for driver in drivers() {
        dies_whole(driver, "panic");
    }
}

#[test]
fn a_worker_whose_loop_fails_takes_the_process_down_under_both_drivers() {
    for driver in drivers() {
        dies_whole(driver, "error");
    }
}

/// A death aimed at a worker that does not exist changes nothing: every worker serves.
#[test]
fn a_death_aimed_at_no_worker_changes_nothing() {
    let echo = EchoServer::start("127.0.0.3");
    let port = free_port();
    let text = one_service(port, "workers = 2", &[ep(echo.addr)], "");
    let mut lb = Sluice::run_with(
        &text,
        Launch {
            env: vec![("SLUICE_TEST_WORKER_DEATH".into(), "7:panic".into())],
            ..Launch::default()
        },
    );
    lb.wait_ready_echo(node_addr(port));
    for i in 0..50 {
        let mut s = connect(node_addr(port)).unwrap();
        echo_roundtrip(&mut s, format!("{i}").as_bytes()).unwrap();
    }
    lb.assert_alive();
}

/// The shipped unit restarts the service when it exits with a failure status such as 70.
#[test]
fn the_systemd_unit_restarts_a_process_a_dead_worker_took_down() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/sluice.service"),
    )
    .unwrap();
    let value = |key: &str| {
        unit.lines()
            .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .next_back()
            .map(str::trim)
    };
    // (`on-abnormal` and `on-watchdog` would not restart after a non-zero exit status.)
    assert!(
        matches!(value("Restart"), Some("on-failure" | "always")),
        "Restart={:?}",
        value("Restart")
    );
    let prevented = value("RestartPreventExitStatus").unwrap_or("");
    assert!(
        !prevented
            .split_whitespace()
            .any(|s| s == sluice::control::WORKER_DIED.to_string()),
        "RestartPreventExitStatus={prevented}"
    );
}
