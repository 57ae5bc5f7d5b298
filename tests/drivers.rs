//! Driver selection: `auto` falls back to epoll with one clear log line when io_uring is
//! blocked (here by a seccomp filter, as a container runtime's default profile does), and
//! `driver = "uring"` refuses to start with the reason instead. The rest of the integration
//! suite runs under each driver (`SLUICE_TEST_DRIVER`, see tests/run-all.sh).

mod common;

use common::*;
use std::time::Duration;

#[test]
fn auto_falls_back_to_epoll_when_io_uring_is_blocked_and_serves() {
    let echo = EchoServer::start("127.0.0.3");
    let port = free_port();
    let cfg = one_service(port, "workers = 1", &[ep(echo.addr)], "");
    let mut lb = Sluice::run_with(
        &cfg,
        Launch {
            block_io_uring: true,
            own_driver: true,
            ..Launch::default()
        },
    );
    lb.wait_ready_echo(node_addr(port));
    let log = log_with(&lb, "sluice is serving");
    assert!(log.contains("io_uring is unavailable"), "{log}");
    assert!(log.contains("using the epoll driver"), "{log}");
    assert!(log.contains("driver=epoll"), "{log}");
}

#[test]
fn auto_uses_io_uring_when_it_is_available() {
    if let Err(e) = sluice::dataplane::probe_uring() {
        eprintln!(
            "SKIPPED: this kernel or sandbox does not offer io_uring ({e}); nothing to check"
        );
        return;
    }
    let echo = EchoServer::start("127.0.0.3");
    let port = free_port();
    let cfg = one_service(port, "workers = 1", &[ep(echo.addr)], "");
    let mut lb = Sluice::run_with(
        &cfg,
        Launch {
            own_driver: true,
            ..Launch::default()
        },
    );
    lb.wait_ready_echo(node_addr(port));
    let log = log_with(&lb, "sluice is serving");
    assert!(log.contains("driver=io_uring"), "{log}");
    assert!(!log.contains("using the epoll driver"), "{log}");
}

#[test]
fn uring_refuses_to_start_when_io_uring_is_blocked() {
    let echo = EchoServer::start("127.0.0.3");
    let port = free_port();
    let cfg = one_service(
        port,
        "workers = 1\ndriver = \"uring\"",
        &[ep(echo.addr)],
        "",
    );
    let mut lb = Sluice::run_with(
        &cfg,
        Launch {
            block_io_uring: true,
            own_driver: true,
            ..Launch::default()
        },
    );
    let status = lb.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    let log = lb.stderr();
    assert!(log.contains("io_uring is unavailable"), "{log}");
    assert!(log.contains("Operation not permitted"), "{log}");
}

/// sluice's stderr once it contains `needle` (bounded wait: the log line may trail the
/// first served connection).
fn log_with(lb: &Sluice, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = lb.stderr();
        if log.contains(needle) {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
