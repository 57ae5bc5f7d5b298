//! `sluice ctl upgrade` and SIGUSR2 (issue 15): the running daemon hands its listening
//! sockets to a new process and drains; clients see nothing — no refused connect, no reset,
//! a long download finishes intact — and a new process that fails (exits at once, rejects
//! the configuration, never becomes ready) leaves the old one serving with the same sockets.
//! A binary the daemon may not run is refused with the reason.
//!
//! The new processes are started by sluice, not by the test: [`Pids`] kills each by its PID
//! when the test ends, whatever happened.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Running {
    sluice: Sluice,
    sock: std::path::PathBuf,
    dir: TempDir,
    node: std::net::SocketAddr,
    _echo: Backend,
}

fn start() -> Running {
    start_with("", "")
}

/// sluice with an echo Service (`web`) and `more` Services, 2 workers, `top` settings.
fn start_with(top: &str, more: &str) -> Running {
    let echo = EchoServer::start("127.0.0.2");
    let port = free_port();
    let dir = TempDir::new("upgrade");
    let sock = dir.path().join("ctl.sock");
    let config = format!(
        "listen_addresses = [\"127.0.0.1\"]\nnode_port_range = \"10000-32000\"\nworkers = 2\ncontrol_socket = \"{}\"\n{top}\n{}{more}",
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

/// A process this test started: killed by PID and reaped on drop.
struct Spawned(std::process::Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Bounded client load on an echo NodePort: keep-alive clients (100 round trips per
/// connection, then a new one) and one-shot clients (connect, one round trip, close).
/// Every failure (refused, reset, short read, timeout) is recorded.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Runs until [`Load::finish`], and at most `cap` (a bound for a test that fails).
    fn start(addr: SocketAddr, keep_alive: usize, one_shot: usize, cap: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let until = Instant::now() + cap;
        let mut threads = Vec::new();
        for i in 0..keep_alive + one_shot {
            let per_connection = if i < keep_alive { 100 } else { 1 };
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            threads.push(std::thread::spawn(move || {
                let payload = [0x5au8; 64];
                let fail = |what: String| failures.lock().unwrap().push(what);
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    let mut s = match connect(addr) {
                        Ok(s) => s,
                        Err(e) => {
                            fail(format!("connect: {e}"));
                            continue;
                        }
                    };
                    for _ in 0..per_connection {
                        match echo_roundtrip(&mut s, &payload) {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                fail(format!("round trip: {e} ({:?})", classify(&e)));
                                break;
                            }
                        }
                    }
                }
            }));
        }
        Load {
            stop,
            ok,
            failures,
            threads,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `n` more round trips succeeded (the process serving now answers).
    fn wait_progress(&self, n: u64) {
        let from = self.ok();
        wait_for(
            "round trips through the serving process",
            Duration::from_secs(20),
            || (self.ok() >= from + n).then_some(()),
        );
    }

    /// Stops the clients; returns (round trips, failures).
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// Listening TCP sockets on `port` (`ss -lnt` as /proc/net/tcp shows them).
fn listening_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[3] == "0A"
                && f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        })
        .count()
}

fn status_json(sock: &Path) -> serde_json::Value {
    let out = ctl_ok(sock, &["-o", "json", "status"]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["result"].clone()
}

/// `ctl upgrade ARGS`, which must fail: its stderr.
fn upgrade_fails(sock: &Path, args: &[&str]) -> String {
    let mut all = vec!["upgrade"];
    all.extend_from_slice(args);
    let out = ctl(sock, &all);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

/// 20 consecutive `ctl upgrade`s under client load: every round trip of keep-alive and
/// one-shot clients succeeds (no refused connect, no reset), a download opened to the
/// first process before the first upgrade finishes intact after the last one, the PID
/// changes each time and `ctl status` (JSON and human) shows the serving process.
#[test]
fn consecutive_upgrades_under_load_refuse_nothing_and_cut_nothing() {
    const UPGRADES: usize = 20;
    const DOWNLOAD: u64 = 32 << 20;
    let source = SourceServer::start("127.0.0.3", 7, DOWNLOAD);
    let download_port = free_port();
    let mut r = start_with(
        // Old processes keep their live connections as long as the test may need.
        "drain_timeout = \"120s\"",
        &service_toml("download", download_port, &[ep(source.addr)], ""),
    );
    let pids = Pids::default();
    let first = status_json(&r.sock)["pid"].as_u64().unwrap() as u32;
    assert_eq!(first, r.sluice.pid());

    // The download: opened now, read a little, the rest after the upgrades.
    let mut download = connect(node_addr(download_port)).unwrap();
    download
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = vec![0u8; 1 << 20];
    download.read_exact(&mut head).unwrap();

    let load = Load::start(r.node, 2, 2, Duration::from_secs(240));
    load.wait_progress(200);
    let mut serving = first;
    for i in 0..UPGRADES {
        let (old, new) = upgrade_ok(&r.sock, &[]);
        pids.add(new);
        assert_eq!(old, serving, "upgrade {i}: answered by the serving process");
        assert_ne!(new, old, "upgrade {i}: a new process");
        let status = status_json(&r.sock);
        assert_eq!(status["pid"].as_u64(), Some(u64::from(new)), "upgrade {i}");
        assert_eq!(status["version"].as_str(), Some(env!("CARGO_PKG_VERSION")));
        assert!(
            status["started_at_unix"].as_f64().unwrap() > 1.0e9,
            "{status}"
        );
        let human = ctl_ok(&r.sock, &["status"]);
        assert!(
            human.starts_with(&format!(
                "sluice {} (pid {new})\n",
                env!("CARGO_PKG_VERSION")
            )) && human.contains("\nstarted:      "),
            "{human}"
        );
        // The new process serves (through the same NodePort sockets).
        load.wait_progress(100);
        serving = new;
    }
    let (round_trips, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failures in {round_trips} round trips across {UPGRADES} upgrades: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    // The download, still served by the first process (draining), completes intact.
    let mut h = sha2::Sha256::new();
    use sha2::Digest;
    h.update(&head);
    let (rest, _, ended) = {
        let mut total = head.len() as u64;
        let mut buf = vec![0u8; 256 * 1024];
        let ended = loop {
            match download.read(&mut buf) {
                Ok(0) => break Ended::Eof,
                Ok(n) => {
                    h.update(&buf[..n]);
                    total += n as u64;
                }
                Err(e) => break classify(&e),
            }
        };
        (total, (), ended)
    };
    assert_eq!(ended, Ended::Eof);
    assert_eq!(rest, DOWNLOAD);
    assert_eq!(hex(&h.finalize()), Pattern::sha256(7, DOWNLOAD));
    download.write_all(b"bye").unwrap();
    drop(download);
    // With its last connection done, the first process exits on its own.
    let status = r.sluice.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "the first process ended with {status}");
    assert!(probe_echo(r.node));
    eprintln!("{UPGRADES} upgrades, {round_trips} round trips, 0 failures");
}

/// A new binary that exits at once, one whose configuration fails, and one that never
/// becomes ready: each `ctl upgrade` exits 1 with the new process's error, the same
/// process serves on without a failed round trip, and the NodePort's listening sockets are
/// the same number as before.
#[test]
fn a_failed_upgrade_rolls_back_and_the_old_process_serves_on() {
    let mut r = start();
    let pid = r.sluice.pid();
    let port = r.node.port();
    let before = listening_sockets(port);
    assert_eq!(before, 2, "one listener per worker");
    let load = Load::start(r.node, 2, 2, Duration::from_secs(120));
    load.wait_progress(100);

    let script = |name: &str, body: &str| {
        let path = r.dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.display().to_string()
    };
    // 1. It exits at once.
    let exits = script(
        "exits.sh",
        "#!/bin/sh\necho 'cannot run here' >&2\nexit 3\n",
    );
    let e = upgrade_fails(&r.sock, &["--binary", &exits]);
    assert!(
        e.contains("Error (upgrade-failed): the new process (pid ")
            && e.contains(") exited with status 3 during the hand-over"),
        "{e}"
    );
    assert_eq!(listening_sockets(port), before);
    load.wait_progress(100);

    // 2. Its configuration fails (the file was edited since the start).
    let config = r.sluice.config_path.clone().unwrap();
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{good}\nbogus_key = 1\n")).unwrap();
    let e = upgrade_fails(&r.sock, &[]);
    std::fs::write(&config, &good).unwrap();
    assert!(
        e.contains("Error (upgrade-failed): the new process (pid ")
            && e.contains(&format!(") failed: {}:", config.display()))
            && e.contains("bogus_key"),
        "{e}"
    );
    assert_eq!(listening_sockets(port), before);
    load.wait_progress(100);

    // 3. It never becomes ready (within the bound asked for).
    let hangs = script("hangs.sh", "#!/bin/sh\nexec sleep 60\n");
    let asked = Instant::now();
    let e = upgrade_fails(&r.sock, &["--binary", &hangs, "--ready-timeout", "2s"]);
    assert!(
        e.contains("Error (upgrade-failed): hand-over (hello) with the new process (pid ")
            && e.contains("timed out after 2.0s"),
        "{e}"
    );
    assert!(asked.elapsed() < Duration::from_secs(30));
    assert_eq!(listening_sockets(port), before);
    load.wait_progress(100);

    let (round_trips, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failures in {round_trips} round trips: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    r.sluice.assert_alive();
    assert_eq!(status_pid(&r.sock), pid);
    // And it can still be upgraded: nothing of the failed attempts is left holding the slot.
    let pids = Pids::default();
    let (old, new) = upgrade_ok(&r.sock, &[]);
    pids.add(new);
    assert_eq!(old, pid);
    assert_eq!(status_pid(&r.sock), new);
    assert!(probe_echo(r.node));
}

/// SIGUSR2 upgrades as `ctl upgrade` does (the daemon's log says so); the old process
/// drains and exits.
#[test]
fn sigusr2_upgrades() {
    let mut r = start();
    let pid = status_pid(&r.sock);
    let pids = Pids::default();
    let ok = std::process::Command::new("kill")
        .args(["-USR2", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let sock = r.sock.clone();
    let new = wait_for("a new process serving", Duration::from_secs(30), || {
        let out = ctl(&sock, &["-o", "json", "status"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let p = v["result"]["pid"].as_u64()? as u32;
        (p != pid).then_some(p)
    });
    pids.add(new);
    let status = r.sluice.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    assert!(probe_echo(r.node));
}

/// Operators' overrides reach the new process.
#[test]
fn endpoint_overrides_are_carried_over() {
    let r = start();
    let endpoint = r._echo.addr.to_string();
    ctl_ok(&r.sock, &["endpoint", "drain", "itest/web", &endpoint]);
    let pids = Pids::default();
    let (_, new) = upgrade_ok(&r.sock, &[]);
    pids.add(new);
    assert_eq!(status_pid(&r.sock), new);
    let out = ctl_ok(&r.sock, &["-o", "json", "endpoints"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let e = &v["result"]["services"][0]["endpoints"][0];
    assert_eq!(e["state"].as_str(), Some("draining"), "{v}");
}

/// The sd_notify messages of an emulated systemd (a datagram socket the test owns), with
/// the descriptors of `FDSTORE=1` messages kept by their `FDNAME=`, as systemd's fd store.
struct FdStore {
    sock: std::os::unix::net::UnixDatagram,
    path: std::path::PathBuf,
    stored: std::collections::BTreeMap<String, std::os::fd::OwnedFd>,
}

impl FdStore {
    fn new(dir: &TempDir) -> FdStore {
        let path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        FdStore {
            sock,
            path,
            stored: Default::default(),
        }
    }

    /// Reads what arrived; keeps the first socket of each name (systemd ignores a socket it
    /// holds already).
    fn poll(&mut self) {
        use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
        use std::mem::MaybeUninit;
        loop {
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(8))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut buf = [0u8; 4096];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let Ok(got) = recvmsg(
                &self.sock,
                &mut iov,
                &mut control,
                RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
            ) else {
                return;
            };
            let mut fds = Vec::new();
            for m in control.drain() {
                if let RecvAncillaryMessage::ScmRights(r) = m {
                    fds.extend(r);
                }
            }
            let text = String::from_utf8_lossy(&buf[..got.bytes]).into_owned();
            if !text.lines().any(|l| l == "FDSTORE=1") {
                continue;
            }
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("FDNAME="))
                .unwrap_or("stored")
                .to_owned();
            if let Some(fd) = fds.into_iter().next() {
                self.stored.entry(name).or_insert(fd);
            }
        }
    }
}

/// `systemctl restart` through the fd store, with systemd emulated: sluice stores each
/// NodePort socket (`FDSTORE=1`, `FDNAME=tcp/127.0.0.1/PORT/wN`); it is stopped (SIGTERM:
/// drain, exit) while clients keep connecting; a new sluice is started with the stored
/// sockets as `LISTEN_FDS`/`LISTEN_FDNAMES` from fd 3. No connect is refused, no round trip
/// fails (connects made between the two processes wait in the accept queue), and the new
/// process serves on the very same sockets (the NodePort still has one listener per worker:
/// nothing was bound afresh beside them).
#[test]
fn a_restart_through_the_fd_store_refuses_no_connection() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let echo = EchoServer::start("127.0.0.2");
    let port = free_port();
    let dir = TempDir::new("fdstore");
    let mut store = FdStore::new(&dir);
    let sock = dir.path().join("ctl.sock");
    let config = node_toml(
        port,
        &format!(
            "workers = 2\ndrain_timeout = \"5s\"\ncontrol_socket = \"{}\"",
            sock.display()
        ),
    ) + &service_toml("web", port, &[ep(echo.addr)], "");
    let launch = Launch {
        env: vec![("NOTIFY_SOCKET".into(), store.path.display().to_string())],
        ..Launch::default()
    };
    let mut old = Sluice::run_with(&config, launch);
    let node = node_addr(port);
    old.wait_ready_echo(node);
    let names: Vec<String> = (0..2)
        .map(|w| format!("tcp/127.0.0.1/{port}/w{w}"))
        .collect();
    wait_for(
        "the NodePort sockets in the fd store",
        Duration::from_secs(10),
        || {
            store.poll();
            names
                .iter()
                .all(|n| store.stored.contains_key(n))
                .then_some(())
        },
    );

    let load = Load::start(node, 1, 2, Duration::from_secs(120));
    load.wait_progress(100);
    // `systemctl restart`: stop (SIGTERM: drain and exit)…
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &old.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = old.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    // No sluice runs now: a client connecting in this gap is queued, not refused…
    let mut in_the_gap = connect(node).expect("a connect between the two processes");
    in_the_gap.write_all(b"queued while no sluice ran").unwrap();
    // …then start with the stored sockets from fd 3 on. They are first copied above the
    // numbers the child will use, so that setting fd 3 and 4 cannot overwrite a source.
    let high: Vec<std::os::fd::OwnedFd> = names
        .iter()
        .map(|n| rustix::io::fcntl_dupfd_cloexec(&store.stored[n], 100).unwrap())
        .collect();
    let sources = [high[0].as_raw_fd(), high[1].as_raw_fd()];
    let stderr_path = dir.path().join("new-stderr.log");
    let config_path = old.config_path.clone().unwrap();
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("export LISTEN_PID=$$; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg("--config")
        .arg(&config_path);
    if let Some(d) = test_driver() {
        cmd.args(["--driver", &d]);
    }
    cmd.env("LISTEN_FDS", "2")
        .env("LISTEN_FDNAMES", names.join(":"))
        .env("NOTIFY_SOCKET", &store.path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    // SAFETY: runs in the forked child before exec; only async-signal-safe syscalls (dup2
    // onto 3 and 4, which also clears their close-on-exec flag; prctl), no allocation.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            for (target, source) in [(3, sources[0]), (4, sources[1])] {
                if libc::dup2(source, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = Spawned(cmd.spawn().unwrap());
    drop(high);
    let new = wait_for("the new process serving", Duration::from_secs(30), || {
        let out = ctl(&sock, &["-o", "json", "status"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["result"]["pid"].as_u64()
    });
    assert_eq!(new, u64::from(child.0.id()));
    // The client of the gap is served by the new process.
    let mut back = [0u8; 26];
    in_the_gap.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"queued while no sluice ran");
    load.wait_progress(100);
    let (round_trips, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failures in {round_trips} round trips: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let log = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        log.contains("restarting on the listening sockets of systemd's fd store sockets=2"),
        "{log}"
    );
    assert_eq!(
        listening_sockets(port),
        2,
        "the same two sockets, none bound afresh"
    );
    eprintln!("restart through the fd store: {round_trips} round trips, 0 failures");
}

/// One upgrade at a time: while one waits for its new process, a second `ctl upgrade`, a
/// reload and an endpoint override are refused with the reason, and the old process serves
/// on once the first has failed.
#[test]
fn a_second_upgrade_during_one_is_refused() {
    let mut r = start();
    let pid = r.sluice.pid();
    let hangs = r.dir.path().join("hangs.sh");
    std::fs::write(&hangs, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&hangs, std::fs::Permissions::from_mode(0o755)).unwrap();
    let first = {
        let sock = r.sock.clone();
        let hangs = hangs.display().to_string();
        std::thread::spawn(move || {
            upgrade_fails(&sock, &["--binary", &hangs, "--ready-timeout", "5s"])
        })
    };
    wait_for(
        "the first upgrade to start its new process",
        Duration::from_secs(20),
        || {
            r.sluice
                .stderr()
                .contains("upgrade: starting the new process")
                .then_some(())
        },
    );
    let second = upgrade_fails(&r.sock, &[]);
    assert!(
        second.contains("Error (in-progress): ") && second.contains("upgrade"),
        "{second}"
    );
    let endpoint = r._echo.addr.to_string();
    for args in [
        vec!["reload"],
        vec!["endpoint", "drain", "itest/web", &endpoint],
    ] {
        let out = ctl(&r.sock, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} during an upgrade: {stderr}"
        );
        assert!(
            stderr.contains("an upgrade is in progress"),
            "{args:?}: {stderr}"
        );
    }
    assert!(
        probe_echo(r.node),
        "the old process serves during the upgrade"
    );
    let first = first.join().unwrap();
    assert!(first.contains("timed out after 5.0s"), "{first}");
    r.sluice.assert_alive();
    assert_eq!(status_pid(&r.sock), pid);
    // Nothing was changed by the refused requests: the endpoint is not draining.
    let out = ctl_ok(&r.sock, &["-o", "json", "endpoints"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let e = &v["result"]["services"][0]["endpoints"][0];
    assert_ne!(e["state"].as_str(), Some("draining"), "{v}");
    assert!(probe_echo(r.node));
}

/// Endpoints that active health checks hold down stay down in the new process from its
/// first moment (a new target would otherwise start up and take traffic until it failed
/// `fall` checks there: here 3 × 5 s, since the file was edited before the upgrade).
#[test]
fn endpoints_held_down_by_health_checks_are_carried_over() {
    let echo = EchoServer::start("127.0.0.2");
    let dead = SocketAddr::from(([127, 0, 0, 3], free_port()));
    let port = free_port();
    let dir = TempDir::new("upgrade");
    let sock = dir.path().join("ctl.sock");
    let config = |interval: &str| {
        format!(
            "listen_addresses = [\"127.0.0.1\"]\nnode_port_range = \"10000-32000\"\nworkers = 2\ncontrol_socket = \"{}\"\nhealth_check = \"tcp\"\nhealth_check_interval = \"{interval}\"\nhealth_check_rise = 2\nhealth_check_fall = 3\n{}",
            sock.display(),
            service_toml("web", port, &[ep(echo.addr), ep(dead)], "")
        )
    };
    let mut sluice = Sluice::run(&config("200ms"));
    let node = node_addr(port);
    sluice.wait_ready_echo(node);
    let health = |sock: &Path| -> Vec<(String, String)> {
        let out = ctl_ok(sock, &["-o", "json", "endpoints"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["result"]["services"][0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["address"].as_str().unwrap_or_default().to_owned(),
                    e["health"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let expected = vec![
        (echo.addr.to_string(), "up".to_owned()),
        (dead.to_string(), "down".to_owned()),
    ];
    let s = sock.clone();
    wait_for(
        "the dead endpoint held down",
        Duration::from_secs(20),
        || {
            let mut h = health(&s);
            h.sort();
            let mut want = expected.clone();
            want.sort();
            (h == want).then_some(())
        },
    );
    // The new process checks every 5 s: without the carried state it would show the dead
    // endpoint up for its first 10+ s.
    let path = sluice.config_path.clone().unwrap();
    std::fs::write(&path, config("5s")).unwrap();
    let pids = Pids::default();
    let (_, new) = upgrade_ok(&sock, &[]);
    pids.add(new);
    assert_eq!(status_pid(&sock), new);
    let mut h = health(&sock);
    h.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(h, want, "the new process's first view");
    // And it serves.
    for _ in 0..20 {
        assert!(probe_echo(node));
    }
}
