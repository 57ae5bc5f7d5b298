//! The hand-over over socketpairs: both sides of the protocol in one process (the old side
//! on a thread), with real listening sockets and real connections; and the process side
//! with small shell scripts standing in for a new binary that fails.

use super::channel::{Channel, ChannelError, Deadline};
use super::inherit::{sort_listen_fds, InheritError, Inherited, Session};
use super::upgrade::{Upgrade, UpgradeError};
use super::wire::{Frame, Hello, Manifest};
use super::*;
use socket2::{Domain, Socket, Type};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn quick() -> Timeouts {
    Timeouts {
        step: Duration::from_secs(5),
        ready: Duration::from_secs(5),
        abort_grace: Duration::from_millis(500),
    }
}

fn short(ms: u64) -> Timeouts {
    Timeouts {
        step: Duration::from_millis(ms),
        ready: Duration::from_millis(ms),
        abort_grace: Duration::from_millis(ms),
    }
}

/// `n` members of one SO_REUSEPORT group listening on a kernel-chosen port of 127.0.0.1.
fn reuseport_group(n: usize) -> (SocketAddr, Vec<OwnedFd>) {
    let mut addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&addr.into()).unwrap();
        s.listen(64).unwrap();
        addr = s.local_addr().unwrap().as_socket().unwrap();
        out.push(OwnedFd::from(s));
    }
    (addr, out)
}

/// Connections waiting in each socket's accept queue (accepts them all, nonblocking).
fn accept_all(fds: &[OwnedFd]) -> Vec<usize> {
    fds.iter()
        .map(|fd| {
            let s = socket2::SockRef::from(fd);
            s.set_nonblocking(true).unwrap();
            let mut n = 0;
            while s.accept().is_ok() {
                n += 1;
            }
            n
        })
        .collect()
}

/// The old side on a thread: hellos, the offer, ready, go, done; then it drops (closes)
/// its copies of the sockets. Returns what went wrong, if anything.
fn old_side(
    channel: Channel,
    sockets: Vec<(SocketName, OwnedFd)>,
    state: serde_json::Value,
    timeouts: Timeouts,
) -> JoinHandle<Result<(), UpgradeError>> {
    std::thread::spawn(move || {
        let mut up = Upgrade::handshake(channel, None, std::process::id(), timeouts)?;
        let borrowed: Vec<(SocketName, BorrowedFd<'_>)> =
            sockets.iter().map(|(n, fd)| (*n, fd.as_fd())).collect();
        up.offer(&borrowed, &state)?;
        up.wait_ready()?;
        up.go()?;
        up.finish(Some(serde_json::json!({"reloads_ok": 3})));
        drop(sockets);
        Ok(())
    })
}

#[test]
fn six_hundred_listeners_pass_in_chunks_and_their_accept_queues_survive() {
    const GROUPS: usize = 150;
    const WORKERS: usize = 4;
    let mut sockets = Vec::new();
    let mut addrs = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..GROUPS {
        let (addr, fds) = reuseport_group(WORKERS);
        for (w, fd) in fds.into_iter().enumerate() {
            sockets.push((SocketName::node_port(SocketKind::Tcp, addr, w as u32), fd));
        }
        // Before the pass: a client waits in one of the group's accept queues.
        clients.push(TcpStream::connect(addr).unwrap());
        addrs.push(addr);
    }
    assert_eq!(sockets.len(), 600);
    let (old, new) = Channel::pair().unwrap();
    let state = serde_json::json!({"format": 1, "note": "carried"});
    let old = old_side(old, sockets, state.clone(), quick());

    let (mut session, mut inherited, got_state) = Session::receive(new, quick()).unwrap();
    assert_eq!(got_state, state);
    assert_eq!(inherited.len(), 600);
    assert_eq!(inherited.workers(), Some(WORKERS));
    assert_eq!(session.predecessor().pid, std::process::id());
    session.ready(1).unwrap();
    // The final counters come with "done" (this new process's hello asks for them).
    assert_eq!(
        session.serving().unwrap(),
        Some(serde_json::json!({"reloads_ok": 3}))
    );
    old.join().unwrap().unwrap();

    // The old copies are closed now; the sockets live on here, queues and all.
    for addr in addrs {
        let group = inherited.take_group(SocketKind::Tcp, addr).unwrap();
        assert_eq!(group.len(), WORKERS);
        // After the pass: one more client.
        clients.push(TcpStream::connect(addr).unwrap());
        let accepted: usize = wait_for_accepts(&group, 2);
        assert_eq!(
            accepted, 2,
            "{addr}: the client queued before the pass and the one after"
        );
    }
    assert!(inherited.is_empty());
}

/// Accepts until `want` connections came or 5 s passed (a connect completes in the kernel
/// asynchronously to this thread).
fn wait_for_accepts(group: &[OwnedFd], want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut total = 0;
    while total < want && Instant::now() < deadline {
        total += accept_all(group).iter().sum::<usize>();
        if total < want {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    total
}

/// Frames sent raw from a stand-in old process, which then keeps its end open until the
/// new side has given up; returns what the new side says.
fn new_side_against(frames: impl FnOnce(&mut Channel) + Send + 'static) -> InheritError {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let (mut old, new) = Channel::pair().unwrap();
    let t = std::thread::spawn(move || {
        frames(&mut old);
        let _ = wait.recv_timeout(Duration::from_secs(10));
    });
    let e = Session::receive(new, short(2000)).unwrap_err();
    drop(done);
    t.join().unwrap();
    e
}

/// As [`new_side_against`], but the stand-in closes its end right after its frames.
fn new_side_against_then_close(frames: impl FnOnce(&mut Channel) + Send + 'static) -> InheritError {
    let (mut old, new) = Channel::pair().unwrap();
    let t = std::thread::spawn(move || frames(&mut old));
    let e = Session::receive(new, short(2000)).unwrap_err();
    t.join().unwrap();
    e
}

fn send(c: &mut Channel, f: Frame) {
    c.send(&f, &[], Deadline::after(Duration::from_secs(2)))
        .unwrap();
}

fn good_hello() -> Frame {
    Frame::Hello(hello())
}

fn raw(c: &Channel) -> UnixStream {
    // A second handle on the same socket, to write bytes that are not frames.
    UnixStream::from(c.as_fd().try_clone_to_owned().unwrap())
}

#[test]
fn garbled_and_truncated_frames_are_errors_that_say_what_arrived() {
    let e = new_side_against(|c| raw(c).write_all(&[0xff, 0, 0, 0, 0]).unwrap());
    assert_eq!(
        e.to_string(),
        "hand-over (hello): bad bytes on the hand-over channel: unknown frame kind 0xff"
    );

    let e = new_side_against_then_close(|c| {
        let mut r = raw(c);
        r.write_all(&[1, 0, 0, 0, 100, b'{', b'"', b'm']).unwrap();
    });
    assert_eq!(
        e.to_string(),
        "hand-over (hello): the other process closed the hand-over channel while this one \
         waited for the old process's hello (after 3 of 100 bytes of a hello frame)"
    );

    let e = new_side_against(|c| {
        let mut r = raw(c);
        r.write_all(&[1, 0, 0, 0, 2, b'{', b'}']).unwrap();
    });
    assert!(
        e.to_string()
            .contains("a hello frame does not parse: missing field"),
        "{e}"
    );

    let e = new_side_against(|c| raw(c).write_all(&[2, 0x7f, 0xff, 0xff, 0xff]).unwrap());
    assert!(e.to_string().contains("larger than the"), "{e}");
}

#[test]
fn a_peer_that_is_not_a_sluice_or_speaks_another_version_is_refused_and_told() {
    let (mut old, new) = Channel::pair().unwrap();
    let t = std::thread::spawn(move || {
        send(
            &mut old,
            Frame::Hello(Hello {
                protocol: PROTOCOL_VERSION + 1,
                version: "9.9.9".into(),
                ..hello()
            }),
        );
        let d = Deadline::after(Duration::from_secs(2));
        let theirs = old.recv(d, "hello").unwrap();
        let verdict = old.recv(d, "failed").unwrap();
        (theirs, verdict)
    });
    let e = Session::receive(new, short(2000)).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "speaks hand-over protocol {}",
            PROTOCOL_VERSION + 1
        )) && text.contains("sluice 9.9.9"),
        "{text}"
    );
    let (theirs, verdict) = t.join().unwrap();
    assert!(matches!(theirs, Frame::Hello(_)));
    assert_eq!(verdict, Frame::Failed(text));

    let e = new_side_against(|c| {
        send(
            c,
            Frame::Hello(Hello {
                magic: "http".into(),
                ..hello()
            }),
        )
    });
    assert!(e.to_string().contains("not a sluice"), "{e}");
}

#[test]
fn a_manifest_that_does_not_match_its_fds_is_refused() {
    let e = new_side_against(|c| {
        send(c, good_hello());
        send(
            c,
            Frame::Manifest(Manifest {
                sockets: vec!["tcp/0.0.0.0/30000/w0".into(), "ftp/x".into()],
            }),
        );
    });
    assert!(matches!(e, InheritError::Name(_)), "{e}");
    assert!(e.to_string().contains("\"ftp/x\""), "{e}");

    let (addr, fds) = reuseport_group(2);
    let e = new_side_against(move |c| {
        send(c, good_hello());
        let names = (0..2)
            .map(|w| SocketName::node_port(SocketKind::Tcp, addr, w).to_string())
            .collect();
        send(c, Frame::Manifest(Manifest { sockets: names }));
        let d = Deadline::after(Duration::from_secs(2));
        c.send(&Frame::Fds { first: 0, count: 1 }, &[fds[0].as_fd()], d)
            .unwrap();
        send(c, Frame::State(serde_json::Value::Null));
    });
    assert_eq!(
        e.to_string(),
        "hand-over (passing the sockets): 1 sockets arrived of the 2 in the manifest"
    );

    let (addr, fds) = reuseport_group(2);
    let e = new_side_against(move |c| {
        send(c, good_hello());
        let names = (0..2)
            .map(|w| SocketName::node_port(SocketKind::Tcp, addr, w).to_string())
            .collect();
        send(c, Frame::Manifest(Manifest { sockets: names }));
        let d = Deadline::after(Duration::from_secs(2));
        c.send(&Frame::Fds { first: 1, count: 1 }, &[fds[1].as_fd()], d)
            .unwrap();
    });
    assert!(
        e.to_string()
            .contains("fds 1..2 do not follow the 0 received"),
        "{e}"
    );

    // Descriptors riding on a frame that carries none.
    let (_, fds) = reuseport_group(1);
    let e = new_side_against(move |c| {
        let d = Deadline::after(Duration::from_secs(2));
        c.send(&good_hello(), &[fds[0].as_fd()], d).unwrap();
    });
    assert_eq!(
        e.to_string(),
        "hand-over (hello): a hello frame arrived with 1 file descriptors; it should carry 0"
    );
}

#[test]
fn a_socket_that_is_not_what_its_name_says_rolls_the_upgrade_back_with_the_reason() {
    let (addr, fds) = reuseport_group(1);
    let udp_name = SocketName::node_port(SocketKind::Udp, addr, 0);
    let (old, new) = Channel::pair().unwrap();
    let fd = fds.into_iter().next().unwrap();
    let old = old_side(old, vec![(udp_name, fd)], serde_json::Value::Null, quick());
    let e = Session::receive(new, quick()).unwrap_err();
    assert!(matches!(e, InheritError::Invalid(_)), "{e}");
    let expected = format!(
        "inherited socket udp/127.0.0.1/{}/w0: is a stream (SOCK_STREAM) socket, not datagram (SOCK_DGRAM)",
        addr.port()
    );
    assert_eq!(e.to_string(), expected);
    // The old side hears the new one's words.
    match old.join().unwrap() {
        Err(UpgradeError::Failed { error, .. }) => assert_eq!(error, expected),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_wait_is_bounded() {
    // The new side waits for a hello that never comes.
    let (_old, new) = Channel::pair().unwrap();
    let e = Session::receive(new, short(200)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "hand-over (hello): timed out after 200.0ms waiting for the old process's hello"
    );

    // A frame stalled halfway.
    let (old, new) = Channel::pair().unwrap();
    raw(&old).write_all(&[1, 0, 0, 0, 50, b'{']).unwrap();
    let e = Session::receive(new, short(200)).unwrap_err();
    assert!(
        matches!(
            e,
            InheritError::Channel {
                cause: ChannelError::Timeout { .. },
                ..
            }
        ),
        "{e}"
    );
    drop(old);

    // The old side waits for a "ready" that never comes.
    let (old, new) = Channel::pair().unwrap();
    let t = std::thread::spawn(move || Session::receive(new, quick()).unwrap());
    let mut up = Upgrade::handshake(old, None, std::process::id(), short(300)).unwrap();
    up.offer(&[], &serde_json::Value::Null).unwrap();
    let (mut session, inherited, _) = t.join().unwrap();
    assert!(inherited.is_empty());
    let e = up.wait_ready().unwrap_err();
    assert!(
        e.to_string()
            .ends_with("timed out after 300.0ms waiting for ready"),
        "{e}"
    );
    // Rolling back tells the new side to abort.
    assert_eq!(up.abort("no ready in time"), "told to abort");
    let e = session.ready(1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the old process aborted the hand-over: no ready in time"
    );

    // The new side waits for a "go" that never comes.
    let (old, new) = Channel::pair().unwrap();
    let t = std::thread::spawn(move || {
        let mut up = Upgrade::handshake(old, None, std::process::id(), quick()).unwrap();
        up.offer(&[], &serde_json::Value::Null).unwrap();
        up.wait_ready().unwrap();
        // Silent, then gone.
        std::thread::sleep(Duration::from_millis(600));
        up.finish(None);
    });
    let (mut session, _, _) = Session::receive(new, short(300)).unwrap();
    let e = session.ready(1).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("timed out after 300.0ms waiting for go"),
        "{e}"
    );
    t.join().unwrap();
}

#[test]
fn an_abort_reaches_the_new_side_with_its_reason() {
    let (old, new) = Channel::pair().unwrap();
    let t = std::thread::spawn(move || {
        let mut up = Upgrade::handshake(old, None, std::process::id(), quick()).unwrap();
        up.offer(&[], &serde_json::Value::Null).unwrap();
        up.wait_ready().unwrap();
        up.abort("SIGTERM during the upgrade")
    });
    let (mut session, _, _) = Session::receive(new, quick()).unwrap();
    let e = session.ready(1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the old process aborted the hand-over: SIGTERM during the upgrade"
    );
    t.join().unwrap();
}

#[test]
fn more_than_253_fds_in_one_message_is_refused_before_sending() {
    let (mut a, _b) = Channel::pair().unwrap();
    let (_, fds) = reuseport_group(1);
    let many: Vec<BorrowedFd<'_>> = (0..254).map(|_| fds[0].as_fd()).collect();
    let e = a
        .send(
            &Frame::Fds {
                first: 0,
                count: 254,
            },
            &many,
            Deadline::after(Duration::from_secs(1)),
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "254 file descriptors in one message: at most 253"
    );
}

#[test]
fn listen_fds_are_sorted_into_ours_and_rejected() {
    let (addr, mut fds) = reuseport_group(2);
    let udp = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
    let tcp0 = SocketName::node_port(SocketKind::Tcp, addr, 0).to_string();
    let tcp1 = SocketName::node_port(SocketKind::Tcp, addr, 1).to_string();
    let second = fds.pop().unwrap();
    let first = fds.pop().unwrap();
    let dup = first.try_clone().unwrap();
    let (inherited, rejected) = sort_listen_fds(vec![
        (first, tcp0.clone()),
        (OwnedFd::from(udp), tcp1.clone()),
        (second, "unknown".into()),
        (dup, tcp0.clone()),
    ]);
    let names: Vec<String> = inherited.names().map(|n| n.to_string()).collect();
    assert_eq!(names, vec![tcp0.clone()]);
    let why: Vec<(String, String)> = rejected.into_iter().map(|r| (r.name, r.reason)).collect();
    assert_eq!(
        why,
        vec![
            (
                tcp1,
                "is a datagram (SOCK_DGRAM) socket, not stream (SOCK_STREAM)".to_owned()
            ),
            (
                "unknown".to_owned(),
                "unknown kind (expected tcp, udp, metrics, health, hcnp or control)".to_owned()
            ),
            (tcp0, "a second descriptor of this name".to_owned()),
        ]
    );
    // A group with a gap (worker 1 missing) is not handed out by position.
    let mut inherited: Inherited = inherited;
    assert_eq!(inherited.workers(), Some(1));
    assert!(inherited.take_group(SocketKind::Tcp, addr).is_some());
}

/// A small executable script standing in for a new binary.
struct Script {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl Script {
    fn new(tag: &str, body: &str) -> Script {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sluice-upgrade-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sluice");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Script { dir, path }
    }

    fn started(&self, args: &[&str]) -> StartedAs {
        StartedAs {
            binary: self.path.clone(),
            args: args.iter().map(Into::into).collect(),
            cwd: self.dir.clone(),
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_new_binary_that_exits_at_once_is_reported_with_its_status() {
    let script = Script::new("exits", "exit 3");
    let e = match Upgrade::start(&script.started(&[]), None, quick()) {
        Err(e) => e,
        Ok(_) => panic!("a binary that exits cannot say hello"),
    };
    match &e {
        UpgradeError::Exited { status, step, .. } => {
            assert_eq!(status, "exited with status 3");
            assert_eq!(*step, Step::Hello);
        }
        other => panic!("{other}"),
    }
    assert!(
        e.to_string()
            .contains("exited with status 3 during the hand-over (hello)"),
        "{e}"
    );
}

#[test]
fn a_new_binary_that_never_answers_is_stopped_by_pid_and_reaped() {
    let script = Script::new("silent", "exec sleep 30");
    let e = match Upgrade::start(&script.started(&[]), None, short(300)) {
        Err(e) => e,
        Ok(_) => panic!("sleep cannot say hello"),
    };
    let UpgradeError::Channel { pid, cause, .. } = &e else {
        panic!("{e}")
    };
    assert!(matches!(cause, ChannelError::Timeout { .. }), "{e}");
    // Dropped on the error path: told to abort, killed after the grace, reaped.
    let gone =
        rustix::process::test_kill_process(rustix::process::Pid::from_raw(*pid as i32).unwrap());
    assert_eq!(gone, Err(rustix::io::Errno::SRCH), "pid {pid} still exists");
}

#[test]
fn the_new_binary_is_the_file_on_disk_now_with_the_arguments_and_the_channel() {
    let script = Script::new("env", "exit 1");
    let marker = script.dir.join("marker");
    let started = script.started(&["run", "--config", "x.toml"]);
    // A package upgrade replaces the file (a new inode at the same path) after the start.
    let replacement = script.dir.join("sluice.new");
    std::fs::write(
        &replacement,
        format!(
            "#!/bin/sh\necho \"v2 fd=$SLUICE_HANDOVER_FD cwd=$(pwd) args=$*\" > {}\nexit 1\n",
            marker.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&replacement, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::rename(&replacement, &script.path).unwrap();
    let e = Upgrade::start(&started, None, quick()).err().unwrap();
    assert!(matches!(e, UpgradeError::Exited { .. }), "{e}");
    let said = std::fs::read_to_string(&marker).unwrap();
    let fd_field = said.split_whitespace().nth(1).unwrap();
    assert!(fd_field.starts_with("fd=") && fd_field.len() > 3, "{said}");
    assert!(
        said.contains(&format!("cwd={}", script.dir.display()))
            && said.trim_end().ends_with("args=run --config x.toml")
            && said.starts_with("v2 "),
        "{said}"
    );
}

#[test]
fn a_binary_others_could_write_is_not_run() {
    use std::os::unix::fs::PermissionsExt;
    let script = Script::new("writable", "exit 0");
    std::fs::set_permissions(&script.path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = Upgrade::start(&script.started(&[]), None, quick())
        .err()
        .unwrap();
    assert!(e.to_string().contains("writable by group or others"), "{e}");
}
