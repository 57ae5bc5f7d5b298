//! The control plane under abuse (issue 12): allowed control clients cannot starve root, a
//! FIFO or endless file as configuration cannot wedge the control thread, a second instance
//! cannot share the NodePorts, SIGHUP during start-up, `ctl` against a socket that never
//! answers, errors that name their cause once, the control socket removed on every exit,
//! and its directory made when missing (issue 17).

mod common;
use common::*;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The uid allowed clients run as (`nobody`).
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn skip_unless_root(test: &str) -> bool {
    if !is_root() {
        eprintln!("SKIPPED: {test} needs root (to act as another uid)");
        return true;
    }
    false
}

/// A config serving one Service on `port` with `endpoints`, its control socket in `dir`.
fn config(dir: &Path, port: u16, top: &str, endpoints: &[String]) -> String {
    one_service(
        port,
        &format!(
            "workers = 1\ncontrol_socket = \"{}\"\n{top}",
            dir.join("ctl.sock").display()
        ),
        endpoints,
        "",
    )
}

/// sluice running `config(dir, …)`, with its control socket answering.
struct Daemon {
    sluice: Sluice,
    sock: PathBuf,
    dir: TempDir,
}

fn start(port: u16, top: &str, endpoints: &[String]) -> Daemon {
    let dir = TempDir::new("ctl-hard");
    let text = config(dir.path(), port, top, endpoints);
    let mut sluice = Sluice::run(&text);
    let sock = dir.path().join("ctl.sock");
    let probe = sock.clone();
    sluice.wait_until("control socket answers", || {
        ctl(&probe, &["status"]).status.success()
    });
    Daemon { sluice, sock, dir }
}

/// Sends one request line on `s`, returns the response line.
fn request(s: &mut UnixStream, line: &str) -> io::Result<String> {
    s.write_all(line.as_bytes())?;
    read_line(s)
}

fn read_line(s: &mut UnixStream) -> io::Result<String> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut byte = [0u8; 1];
    let mut out = Vec::new();
    loop {
        match io::Read::read(s, &mut byte)? {
            0 => break,
            _ if byte[0] == b'\n' => break,
            _ => out.push(byte[0]),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The error kind of a response line, or `ok`.
fn kind(response: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(response)
        .unwrap_or_else(|e| panic!("not a response ({e}): {response:?}"));
    if v["ok"] == true {
        "ok".into()
    } else {
        v["error"]["kind"].as_str().unwrap_or("?").to_owned()
    }
}

const STATUS: &str = "{\"version\":1,\"command\":\"status\"}\n";

/// Connects to `path` as `uid`. SO_PEERCRED records the effective uid of the thread that
/// connects, so a short-lived thread changes its own credentials only, with the raw
/// syscall (glibc's setresuid would change every thread of the test process).
fn connect_as(uid: u32, path: &Path) -> io::Result<UnixStream> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        // -1: unchanged.
        let keep = libc::uid_t::MAX;
        // SAFETY: changes the effective uid of this thread only; the thread ends right
        // after connecting.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, keep, uid, keep) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        UnixStream::connect(&path)
    })
    .join()
    .expect("connect thread")
}

/// Lets `nobody` reach the socket in `d`.
fn open_to_nobody(d: &Daemon) {
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

// ---------------------------------------------------------------------------------------
// Item 6: allowed clients cannot starve root
// ---------------------------------------------------------------------------------------

/// 32 allowed clients asking again as soon as they are answered hold every shared
/// connection: root is still answered (reserved connection, served first), a 33rd allowed
/// client is told `busy` at once, and once they stop asking they are closed as idle.
#[test]
fn root_is_answered_while_allowed_clients_hold_every_connection() {
    if skip_unless_root("root_is_answered_while_allowed_clients_hold_every_connection") {
        return;
    }
    let port = free_port();
    let d = start(
        port,
        &format!("control_socket_mode = 0o666\ncontrol_allowed_uids = [{NOBODY}]"),
        &[],
    );
    open_to_nobody(&d);
    let stop = Arc::new(AtomicBool::new(false));
    let answered: Arc<Vec<AtomicU64>> = Arc::new((0..32).map(|_| AtomicU64::new(0)).collect());
    let mut hammers = Vec::new();
    for i in 0..32 {
        let mut s = connect_as(NOBODY, &d.sock).expect("connect as nobody");
        let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
        hammers.push(std::thread::spawn(move || {
            // Bounded: until told to stop, at most 200,000 requests.
            for _ in 0..200_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match request(&mut s, STATUS) {
                    Ok(r) if kind(&r) == "ok" => answered[i].fetch_add(1, Ordering::Relaxed),
                    Ok(r) => panic!("allowed client {i} got {r}"),
                    Err(e) => panic!("allowed client {i}: {e}"),
                };
            }
            s
        }));
    }
    wait_for("every allowed client answered once", SOON, || {
        answered
            .iter()
            .all(|a| a.load(Ordering::Relaxed) > 0)
            .then_some(())
    });

    // Root: answered while the 32 keep asking (today it waits in the backlog until one of
    // them goes away).
    let mut root = UnixStream::connect(&d.sock).unwrap();
    let r = request(&mut root, STATUS).expect("root's request answered");
    assert_eq!(kind(&r), "ok", "{r}");
    let out = ctl_ok(&d.sock, &["reload"]);
    assert!(out.contains("reloaded"), "{out}");
    // Another allowed client: told at once.
    let mut extra = connect_as(NOBODY, &d.sock).unwrap();
    let r = read_line(&mut extra).expect("the 33rd allowed client is answered");
    assert_eq!(kind(&r), "busy", "{r}");
    assert!(r.contains("32 control clients"), "{r}");

    stop.store(true, Ordering::Relaxed);
    let mut idle: Vec<UnixStream> = hammers.into_iter().map(|h| h.join().unwrap()).collect();
    // Now idle: each is closed by the daemon (a `timeout` line, then end of stream).
    for s in &mut idle {
        let r = read_line(s).expect("an idle client is closed");
        assert_eq!(kind(&r), "timeout", "{r}");
        assert_eq!(read_line(s).unwrap(), "", "closed after the timeout line");
    }
    // Their connections are free again.
    let mut later = connect_as(NOBODY, &d.sock).unwrap();
    assert_eq!(kind(&request(&mut later, STATUS).unwrap()), "ok");
}

/// 40 idle allowed clients: 32 get a connection, the other 8 are told `busy` at once, root
/// is answered meanwhile, and the idle ones are closed.
#[test]
fn idle_allowed_clients_take_no_more_than_their_share() {
    if skip_unless_root("idle_allowed_clients_take_no_more_than_their_share") {
        return;
    }
    let port = free_port();
    let d = start(
        port,
        &format!("control_socket_mode = 0o666\ncontrol_allowed_uids = [{NOBODY}]"),
        &[],
    );
    open_to_nobody(&d);
    let mut idle: Vec<UnixStream> = (0..40)
        .map(|_| connect_as(NOBODY, &d.sock).expect("connect as nobody"))
        .collect();
    let mut root = UnixStream::connect(&d.sock).unwrap();
    assert_eq!(kind(&request(&mut root, STATUS).unwrap()), "ok");
    let mut kinds: Vec<String> = idle
        .iter_mut()
        .map(|s| kind(&read_line(s).expect("every idle client hears from the daemon")))
        .collect();
    kinds.sort();
    let busy = kinds.iter().filter(|k| *k == "busy").count();
    let timeout = kinds.iter().filter(|k| *k == "timeout").count();
    assert_eq!((busy, timeout), (8, 32), "{kinds:?}");
}

// ---------------------------------------------------------------------------------------
// Item 7: a FIFO or an endless file as configuration
// ---------------------------------------------------------------------------------------

fn mkfifo(path: &Path) {
    let made = Command::new("mkfifo").arg(path).status();
    assert!(
        matches!(made, Ok(s) if s.success()),
        "mkfifo {}",
        path.display()
    );
}

/// The config path becomes a FIFO, then /dev/zero, then a sparse 65 MiB file: each reload
/// fails at once naming the file and why, the old configuration keeps serving, the control
/// socket keeps answering, and SIGTERM still stops sluice.
#[test]
fn a_fifo_or_endless_file_as_config_fails_the_reload_and_nothing_hangs() {
    let a = NameServer::start("127.0.0.2", "a");
    let port = free_port();
    let mut d = start(port, "", &[ep(a.addr)]);
    d.sluice.wait_ready_name(node_addr(port));
    let path = d.sluice.config_path.clone().unwrap();
    let good = std::fs::read_to_string(&path).unwrap();

    // A FIFO nobody writes to. Today the reload (and with it the whole control thread)
    // waits for a writer: the raw request below times out.
    std::fs::remove_file(&path).unwrap();
    mkfifo(&path);
    let mut s = UnixStream::connect(&d.sock).unwrap();
    let r = request(&mut s, "{\"version\":1,\"command\":\"reload\"}\n")
        .expect("the reload is answered");
    assert_eq!(kind(&r), "reload-failed", "{r}");
    assert!(r.contains(&format!("{}: is a FIFO", path.display())), "{r}");
    assert_eq!(kind(&request(&mut s, STATUS).unwrap()), "ok");
    assert_eq!(ask_name(node_addr(port)).unwrap(), "a");

    // A device that never ends.
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
    let out = ctl(&d.sock, &["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is a character device"), "{err}");

    // A regular file past the size limit (sparse: 65 MiB of zeros that take no disk).
    std::fs::remove_file(&path).unwrap();
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(65 * 1024 * 1024).unwrap();
    drop(f);
    let out = ctl(&d.sock, &["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("larger than 64 MiB"), "{err}");

    // `check` refuses the same at once.
    let mut check = Sluice::spawn(
        &["check", "--config", path.to_str().unwrap()],
        Launch::default(),
    );
    assert_eq!(check.wait_exit(SOON).code(), Some(1));
    assert!(
        check.stderr().contains("larger than 64 MiB"),
        "{}",
        check.stderr()
    );

    // Back to the good file: reloads work; still serving the whole time.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, good).unwrap();
    ctl_ok(&d.sock, &["reload"]);
    assert_eq!(ask_name(node_addr(port)).unwrap(), "a");

    // And with the FIFO back in place, SIGTERM ends sluice (today it waits for the FIFO).
    std::fs::remove_file(&path).unwrap();
    mkfifo(&path);
    let _ = ctl(&d.sock, &["reload"]);
    signal(&d.sluice, libc::SIGTERM);
    let status = d.sluice.wait_exit(SOON);
    assert!(status.success(), "{status}\n{}", d.sluice.stderr_tail(20));
}

/// `sluice run` and `sluice check` with a FIFO as config: refused at once, naming it.
#[test]
fn run_and_check_refuse_a_fifo_at_once() {
    let dir = TempDir::new("fifo-run");
    let path = dir.path().join("sluice.toml");
    mkfifo(&path);
    for args in [
        ["run", "--config", path.to_str().unwrap()],
        ["check", "--config", path.to_str().unwrap()],
    ] {
        let mut s = Sluice::spawn(&args, Launch::default());
        let status = s.wait_exit(SOON);
        assert_eq!(status.code(), Some(1), "{args:?}: {}", s.stderr());
        assert!(
            s.stderr()
                .contains(&format!("{}: is a FIFO", path.display())),
            "{args:?}: {}",
            s.stderr()
        );
    }
}

fn signal(s: &Sluice, sig: libc::c_int) {
    // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(s.pid() as libc::pid_t, sig) }, 0);
}

// ---------------------------------------------------------------------------------------
// Item 8: one sluice per NodePort
// ---------------------------------------------------------------------------------------

/// A second `sluice run` on the same NodePort (another control socket, another endpoint)
/// refuses to start and names the first; the first keeps every connection. A reload of the
/// first that would take the second's NodePort fails the same way.
#[test]
fn a_second_instance_on_the_same_node_port_refuses_naming_the_first() {
    let a = NameServer::start("127.0.0.2", "a");
    let b = NameServer::start("127.0.0.3", "b");
    let port = free_port();
    let mut first = start(port, "", &[ep(a.addr)]);
    first.sluice.wait_ready_name(node_addr(port));

    let dir = TempDir::new("second");
    let mut second = Sluice::run(&config(dir.path(), port, "", &[ep(b.addr)]));
    let status = second.wait_exit(SOON);
    let err = second.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "NodePort {port}/TCP is already listened on (127.0.0.1:{port}) by pid {} (",
            first.sluice.pid()
        )),
        "{err}"
    );
    assert!(err.contains("a second sluice"), "{err}");
    for _ in 0..50 {
        assert_eq!(ask_name(node_addr(port)).unwrap(), "a");
    }

    // The other way round: the first reloads onto a NodePort a third instance serves.
    let other_port = free_port();
    let mut third = start(other_port, "", &[ep(b.addr)]);
    third.sluice.wait_ready_name(node_addr(other_port));
    let path = first.sluice.config_path.clone().unwrap();
    let both = config(first.dir.path(), port, "", &[ep(a.addr)]).replace(
        &format!("node_port_range = \"{port}-{port}\""),
        &format!(
            "node_port_range = \"{}-{}\"",
            port.min(other_port),
            port.max(other_port)
        ),
    ) + &service_toml("other", other_port, &[ep(a.addr)], "");
    std::fs::write(&path, both).unwrap();
    let out = ctl(&first.sock, &["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("by pid {} (", third.sluice.pid())),
        "{err}"
    );
    for _ in 0..50 {
        assert_eq!(ask_name(node_addr(other_port)).unwrap(), "b");
        assert_eq!(ask_name(node_addr(port)).unwrap(), "a");
    }
    first.sluice.assert_alive();
    third.sluice.assert_alive();
}

// ---------------------------------------------------------------------------------------
// Item 10: SIGHUP at start-up, ctl timeout, duplicate keys, error texts
// ---------------------------------------------------------------------------------------

/// SIGHUP from the first log line on (a `systemctl reload` racing the start) does not end
/// sluice: it starts and serves. Start-up is made long on purpose (manifests with 8 MB of
/// ConfigMaps to parse) so that the signals land in it.
#[test]
fn sighup_during_start_up_does_not_end_sluice() {
    let a = NameServer::start("127.0.0.2", "a");
    let port = free_port();
    let settings = TempDir::new("hup-settings");
    let sock = settings.path().join("ctl.sock");
    let toml = settings.write(
        "node.toml",
        &format!(
            "listen_addresses = [\"127.0.0.1\"]\nworkers = 1\nnode_port_range = \"{port}-{port}\"\ncontrol_socket = \"{}\"\n",
            sock.display()
        ),
    );
    let manifests = TempDir::new("hup-manifests");
    manifests.write(
        "web.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: itest}}\nspec:\n  type: NodePort\n  ports:\n  - {{name: http, port: 80, targetPort: {pod}, nodePort: {port}}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: itest, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: {pod}}}]\nendpoints: [{{addresses: [\"127.0.0.2\"], conditions: {{ready: true}}}}]\n",
            pod = a.addr.port()
        ),
    );
    let filler = "x".repeat(1000);
    let mut big = String::new();
    for i in 0..8000 {
        big += &format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}}}\ndata: {{k: \"{filler}\"}}\n");
    }
    manifests.write("big.yaml", &big);
    let mut s = Sluice::spawn(
        &[
            "run",
            "--manifests",
            manifests.path().to_str().unwrap(),
            "--config",
            toml.to_str().unwrap(),
        ],
        Launch::default(),
    );
    // As soon as main has started (a tight poll: the window is what is tested).
    let started = std::time::Instant::now();
    while !s.stderr().contains("sluice starting") {
        s.assert_alive();
        assert!(started.elapsed() < SOON, "no start-up log line");
        std::thread::yield_now();
    }
    let mut sent = 0u32;
    // Bounded: until the control socket answers, at most 100,000 signals.
    for _ in 0..100_000 {
        signal(&s, libc::SIGHUP);
        sent += 1;
        s.assert_alive();
        if UnixStream::connect(&sock).is_ok() {
            break;
        }
        std::thread::yield_now();
    }
    s.wait_ready_name(node_addr(port));
    assert!(sent > 1, "the signals were sent during start-up: {sent}");
    s.assert_alive();
}

/// `sluice ctl` against a socket that accepts nothing and never answers gives up after
/// its timeout (default 10 s; `--timeout`) with a clear message and status 2.
#[test]
fn ctl_gives_up_on_a_socket_that_never_answers() {
    let dir = TempDir::new("mute");
    let path = dir.path().join("mute.sock");
    let _listener = UnixListener::bind(&path).unwrap(); // never accepts
    let run = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("ctl").arg("--socket").arg(&path).args(extra);
        cmd.arg("status")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        /// Kills the ctl process should the test fail before it exits.
        struct Reap(std::process::Child);
        impl Drop for Reap {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut child = Reap(cmd.spawn().unwrap());
        // Today it waits 60 s: past this deadline.
        let status = wait_for("ctl to give up", Duration::from_secs(30), || {
            child.0.try_wait().ok().flatten()
        });
        let mut err = String::new();
        io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
        (status, err)
    };
    let (status, err) = run(&[]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("no answer within 10s"), "{err}");
    assert!(err.contains("--timeout"), "{err}");
    let (status, err) = run(&["--timeout", "1s"]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("no answer within 1s"), "{err}");
}

/// A request naming a key twice is refused, whichever would have won.
#[test]
fn a_request_with_a_key_twice_is_refused() {
    let port = free_port();
    let d = start(port, "", &[]);
    let mut s = UnixStream::connect(&d.sock).unwrap();
    let r = request(
        &mut s,
        "{\"version\":1,\"command\":\"reload\",\"command\":\"status\"}\n",
    )
    .unwrap();
    assert_eq!(kind(&r), "malformed", "{r}");
    assert!(r.contains("duplicate key `command`"), "{r}");
    assert_eq!(kind(&request(&mut s, STATUS).unwrap()), "ok");
}

/// Start-up failures print their cause once (`in use (os error 98)` appeared 2–3 times),
/// and the control socket bound before the failure is removed.
#[test]
fn a_failed_start_names_the_cause_once_and_removes_its_socket() {
    // A NodePort bound (not listening) by someone else: sluice's bind fails.
    let port = free_port();
    let taken = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    taken
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    // A metrics address in use.
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    for (what, top, port) in [
        ("NodePort", String::new(), port),
        (
            "metrics_address",
            format!("metrics_address = \"{metrics_addr}\""),
            free_port(),
        ),
    ] {
        let dir = TempDir::new("cause-once");
        let mut s = Sluice::run(&config(dir.path(), port, &top, &[]));
        let status = s.wait_exit(SOON);
        let err = s.stderr();
        assert_eq!(status.code(), Some(1), "{what}: {err}");
        let cause = io::Error::from_raw_os_error(libc::EADDRINUSE).to_string();
        assert_eq!(err.matches(&cause).count(), 1, "{what}: {err}");
        assert!(
            !dir.path().join("ctl.sock").exists(),
            "{what}: the control socket is left behind"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Item 5 (last sentence): the control socket is removed on every exit path
// ---------------------------------------------------------------------------------------

/// SIGTERM (a drain, exit 0) and a second SIGTERM during a drain (immediate exit 1) both
/// leave no control socket behind.
#[test]
fn the_control_socket_is_removed_on_exit_and_on_the_second_signal() {
    let echo = EchoServer::start("127.0.0.2");
    let port = free_port();
    // Plain stop.
    let mut d = start(port, "", &[ep(echo.addr)]);
    signal(&d.sluice, libc::SIGTERM);
    assert!(d.sluice.wait_exit(SOON).success());
    assert!(!d.sock.exists(), "left behind after SIGTERM");

    // Second signal while a connection holds the drain open.
    let mut d = start(port, "drain_timeout = \"60s\"", &[ep(echo.addr)]);
    d.sluice.wait_ready_echo(node_addr(port));
    let mut open = connect(node_addr(port)).unwrap();
    echo_roundtrip(&mut open, b"held").unwrap();
    signal(&d.sluice, libc::SIGTERM);
    wait_for("the drain to begin", SOON, || {
        d.sluice.stderr().contains("draining").then_some(())
    });
    signal(&d.sluice, libc::SIGTERM);
    let status = d.sluice.wait_exit(SOON);
    assert_eq!(status.code(), Some(1), "{}", d.sluice.stderr_tail(20));
    assert!(!d.sock.exists(), "left behind after the second signal");
}

// ---------------------------------------------------------------------------------------
// Issue 17: the default socket's directory, for a user without /run
// ---------------------------------------------------------------------------------------

/// A non-root `sluice run` without `control_socket` serves
/// `$XDG_RUNTIME_DIR/sluice/control.sock`, making the directory (0750), and a plain
/// `sluice ctl status` of that user finds it.
#[test]
fn a_user_without_a_configured_socket_gets_one_that_ctl_finds() {
    if skip_unless_root("a_user_without_a_configured_socket_gets_one_that_ctl_finds") {
        return;
    }
    use std::os::unix::process::CommandExt;
    let can_run = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--version")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .map(|o| o.status.success());
    if !matches!(can_run, Ok(true)) {
        eprintln!("SKIPPED: `nobody` cannot run the sluice binary here ({can_run:?})");
        return;
    }
    let a = NameServer::start("127.0.0.2", "a");
    let port = free_port();
    let dir = TempDir::new("xdg");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    std::os::unix::fs::chown(&runtime, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = dir.write(
        "sluice.toml",
        &one_service(port, "workers = 1", &[ep(a.addr)], ""),
    );
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let xdg = ("XDG_RUNTIME_DIR".to_owned(), runtime.display().to_string());
    let mut s = Sluice::spawn(
        &["run", "--config", config.to_str().unwrap()],
        Launch {
            uid: Some(NOBODY),
            env: vec![xdg.clone()],
            ..Launch::default()
        },
    );
    s.wait_ready_name(node_addr(port));
    let sock = runtime.join("sluice").join("control.sock");
    let ctl_as_nobody = || {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["ctl", "status"])
            .env(&xdg.0, &xdg.1)
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .unwrap()
    };
    s.wait_until("ctl status without --socket", || {
        ctl_as_nobody().status.success()
    });
    let out = ctl_as_nobody();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("generation"),
        "{out:?}"
    );
    assert!(sock.exists());
    let mode = std::fs::metadata(runtime.join("sluice"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o750);
}
