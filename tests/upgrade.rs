//! `sluice ctl upgrade` and SIGUSR2 (issue 15): what an operator relies on before the hand-over
//! itself — a binary the daemon may not run is refused with the reason and nothing changes;
//! SIGUSR2 never ends the daemon.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

struct Running {
    sluice: Sluice,
    sock: std::path::PathBuf,
    dir: TempDir,
    node: std::net::SocketAddr,
    _echo: Backend,
}

fn start() -> Running {
    let echo = EchoServer::start("127.0.0.2");
    let port = free_port();
    let dir = TempDir::new("upgrade");
    let sock = dir.path().join("ctl.sock");
    let config = format!(
        "listen_addresses = [\"127.0.0.1\"]\nnode_port_range = \"{port}-{port}\"\nworkers = 2\ncontrol_socket = \"{}\"\n\n{}",
        sock.display(),
        service_toml("web", port, &[ep(echo.addr)], "")
    );
    let mut sluice = Sluice::run(&config);
    let node = node_addr(port);
    sluice.wait_ready_echo(node);
    Running {
        sluice,
        sock,
        dir,
        node,
        _echo: echo,
    }
}

fn status_pid(sock: &Path) -> u32 {
    let out = ctl_ok(sock, &["-o", "json", "status"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["result"]["pid"].as_u64().unwrap() as u32
}

#[test]
fn an_upgrade_to_a_binary_others_could_change_is_refused_and_nothing_changes() {
    let mut r = start();
    let pid = status_pid(&r.sock);
    // A copy of sluice that anyone may overwrite.
    let copy = r.dir.path().join("sluice-copy");
    std::fs::copy(env!("CARGO_BIN_EXE_sluice"), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o777)).unwrap();
    // Named relative to where `ctl` runs: the client makes it absolute.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(r.dir.path())
        .args(["ctl", "--socket"])
        .arg(&r.sock)
        .args(["upgrade", "--binary", "./sluice-copy"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Error (invalid): cannot upgrade to ")
            && stderr.contains(&format!("{}: writable by group or others", copy.display())),
        "{stderr}"
    );
    let out = ctl(&r.sock, &["upgrade", "--binary", "/nonexistent/sluice"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/sluice: No such file"),
        "{stderr}"
    );
    // The same daemon serves on.
    r.sluice.assert_alive();
    assert_eq!(status_pid(&r.sock), pid);
    assert!(probe_echo(r.node));
}

#[test]
fn sigusr2_never_ends_the_daemon() {
    let mut r = start();
    let pid = status_pid(&r.sock);
    for _ in 0..3 {
        // kill(1) by PID, a process this test started.
        let ok = std::process::Command::new("kill")
            .args(["-USR2", &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let sluice = &mut r.sluice;
    let handled = || sluice.stderr().matches("SIGUSR2").count() >= 3;
    wait_for(
        "three SIGUSR2 handled",
        std::time::Duration::from_secs(10),
        || handled().then_some(()),
    );
    r.sluice.assert_alive();
    assert_eq!(status_pid(&r.sock), pid);
    assert!(probe_echo(r.node));
}
