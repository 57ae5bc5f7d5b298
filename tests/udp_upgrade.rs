//! UDP flows across `sluice ctl upgrade` (issue 15): the old process hands its flow table
//! and each flow's upstream socket to the new one, so a client sending through the upgrades
//! loses no datagram, keeps its pod, and the pod sees one and the same source address (the
//! same upstream socket) throughout; a new process that fails leaves the old one's flows
//! serving. Under the driver `SLUICE_TEST_DRIVER` names.
//!
//! The new processes are started by sluice, not by the test: [`Pids`] kills each by its PID
//! when the test ends, whatever happened.

mod common;
use common::udp::*;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A UDP pod that answers `NAME SOURCE SEQ` to a datagram `SEQ`: its name, the source
/// address it saw (sluice's upstream socket), the sequence number.
struct EchoPod {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoPod {
    fn start(ip: &str, port: u16, name: &str) -> EchoPod {
        let socket = UdpSocket::bind((ip, port)).expect("bind the pod");
        let addr = socket.local_addr().unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, name) = (Arc::clone(&stop), name.to_owned());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let seq = String::from_utf8_lossy(&buf[..n]).into_owned();
                let _ = socket.send_to(format!("{name} {from} {seq}").as_bytes(), from);
            }
        });
        EchoPod {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EchoPod {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One client on one socket (one flow) sending datagram `0`, `1`, … at `rate` per second
/// until stopped (and at most `cap`), and collecting the replies: by sequence number, the
/// pod's name and the source address the pod saw.
struct Sender {
    stop: Arc<AtomicBool>,
    sent: std::thread::JoinHandle<u64>,
    replies: Arc<Mutex<BTreeMap<u64, (String, String)>>>,
    receiver: std::thread::JoinHandle<()>,
    done: Arc<AtomicBool>,
}

impl Sender {
    fn start(node: SocketAddr, rate: u64, cap: Duration) -> Sender {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let rx = socket.try_clone().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(Mutex::new(BTreeMap::new()));
        let stop2 = Arc::clone(&stop);
        let sent = std::thread::spawn(move || {
            let start = Instant::now();
            let mut seq = 0u64;
            while !stop2.load(Ordering::Relaxed) && start.elapsed() < cap {
                // Paced: datagram `seq` leaves at `seq / rate` seconds.
                let due = start + Duration::from_micros(seq * 1_000_000 / rate);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                socket.send_to(seq.to_string().as_bytes(), node).unwrap();
                seq += 1;
            }
            seq
        });
        let (replies2, done2) = (Arc::clone(&replies), Arc::clone(&done));
        let receiver = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !done2.load(Ordering::Relaxed) {
                let Ok(n) = rx.recv(&mut buf) else { continue };
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let mut f = text.split(' ');
                let (Some(name), Some(from), Some(seq)) = (f.next(), f.next(), f.next()) else {
                    continue;
                };
                if let Ok(seq) = seq.parse::<u64>() {
                    replies2
                        .lock()
                        .unwrap()
                        .insert(seq, (name.to_owned(), from.to_owned()));
                }
            }
        });
        Sender {
            stop,
            sent,
            replies,
            receiver,
            done,
        }
    }

    fn answered(&self) -> usize {
        self.replies.lock().unwrap().len()
    }

    /// Waits until `n` more replies arrived (bounded).
    fn wait_progress(&self, n: usize) {
        let target = self.answered() + n;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.answered() < target {
            assert!(
                Instant::now() < deadline,
                "no progress: {} replies",
                self.answered()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops sending, waits (bounded) for the replies still on their way; returns how many
    /// were sent and the replies.
    fn finish(self) -> (u64, BTreeMap<u64, (String, String)>) {
        let Sender {
            stop,
            sent,
            replies,
            receiver,
            done,
        } = self;
        stop.store(true, Ordering::Relaxed);
        let sent = sent.join().unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        while (replies.lock().unwrap().len() as u64) < sent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        done.store(true, Ordering::Relaxed);
        receiver.join().unwrap();
        let replies = std::mem::take(&mut *replies.lock().unwrap());
        (sent, replies)
    }
}

/// Asserts that every datagram `0..sent` was answered, all by one pod, which saw one
/// source address; returns (pod, source).
fn assert_one_flow_all_answered(
    what: &str,
    sent: u64,
    replies: &BTreeMap<u64, (String, String)>,
) -> (String, String) {
    let lost: Vec<u64> = (0..sent).filter(|s| !replies.contains_key(s)).collect();
    assert!(
        lost.is_empty(),
        "{what}: {} of {sent} datagrams unanswered (first: {:?})",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    let pods: BTreeSet<&str> = replies.values().map(|(p, _)| p.as_str()).collect();
    let sources: BTreeMap<&str, usize> = replies.values().fold(BTreeMap::new(), |mut m, (_, s)| {
        *m.entry(s.as_str()).or_default() += 1;
        m
    });
    assert_eq!(pods.len(), 1, "{what}: the flow changed pods: {pods:?}");
    assert_eq!(
        sources.len(),
        1,
        "{what}: the pod saw several source addresses (upstream sockets): {sources:?}"
    );
    let (pod, source) = replies.values().next().unwrap().clone();
    (pod, source)
}

/// The file whose presence makes a new process fail right after it received the UDP flows
/// (`SLUICE_TEST_FAIL_AFTER_FLOWS`, honoured by test builds only).
fn fail_switch(setup: &Setup) -> std::path::PathBuf {
    setup.dir.path().join("fail-after-flows")
}

/// Two pods behind one UDP Service on 2 workers; every process (the new ones inherit the
/// environment) fails after the flows while [`fail_switch`] exists.
fn start(setup: &Setup) -> (Sluice, EchoPod, EchoPod, UdpSocket) {
    let port = free_udp_port();
    let a = EchoPod::start("127.0.0.2", port, "pod-a");
    let b = EchoPod::start("127.0.0.3", port, "pod-b");
    let config = setup.config(
        "drain_timeout = \"2s\"",
        &[a.addr, b.addr],
        "idle_timeout = \"60s\"",
    );
    let launch = Launch {
        env: vec![(
            "SLUICE_TEST_FAIL_AFTER_FLOWS".into(),
            fail_switch(setup).display().to_string(),
        )],
        ..Launch::default()
    };
    let mut sluice = Sluice::run_with(&config, launch);
    // Kept open: its flow stays (see `Setup::probe`), so no test client can join it.
    let probe = client("127.0.0.1");
    let node = setup.node();
    sluice.wait_until("the UDP NodePort answers", || {
        ask(&probe, node, b"probe").is_some()
    });
    (sluice, a, b, probe)
}

/// A client sending 1,000 datagrams/s through 5 consecutive upgrades: every datagram is
/// answered, by the same pod, which sees the same source address (sluice's upstream socket,
/// handed from process to process) throughout.
#[test]
fn a_udp_flow_keeps_its_pod_and_its_upstream_socket_across_five_upgrades() {
    const UPGRADES: usize = 5;
    let setup = Setup::new();
    let (mut sluice, _a, _b, _probe) = start(&setup);
    let sock = setup.sock();
    let pids = Pids::default();
    let mut serving = sluice.pid();
    let sender = Sender::start(setup.node(), 1000, Duration::from_secs(30));
    sender.wait_progress(500);
    for i in 0..UPGRADES {
        let (old, new) = upgrade_ok(&sock, &[]);
        pids.add(new);
        assert_eq!(old, serving, "upgrade {i}");
        assert_eq!(status_pid(&sock), new, "upgrade {i}");
        // The new process answers the flow.
        sender.wait_progress(300);
        serving = new;
    }
    let (sent, replies) = sender.finish();
    let (pod, source) = assert_one_flow_all_answered("5 upgrades", sent, &replies);
    assert!(sent >= 1000, "{sent} datagrams sent");
    // The first process drained and exited.
    let status = sluice.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "the first process ended with {status}");
    eprintln!("{UPGRADES} upgrades: {sent} datagrams, all answered by {pod}, seen from {source}");
}

/// While a flow sends 1,000 datagrams/s: a new binary that exits at once, one whose
/// configuration fails, and one that fails after it received the flows (the old process
/// had stopped reading UDP and handed them over): each `ctl upgrade` fails, and the old
/// process's flow serves on — no datagram lost, same pod, same upstream socket. Then a
/// good upgrade carries it.
#[test]
fn a_failed_upgrade_leaves_udp_flows_serving() {
    let setup = Setup::new();
    let (mut sluice, _a, _b, _probe) = start(&setup);
    let sock = setup.sock();
    let pid = sluice.pid();
    let sender = Sender::start(setup.node(), 1000, Duration::from_secs(30));
    sender.wait_progress(300);

    let exits = setup.dir.path().join("exits.sh");
    std::fs::write(&exits, "#!/bin/sh\necho 'cannot run here' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&exits, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = ctl(
        &sock,
        &["upgrade", "--binary", &exits.display().to_string()],
    );
    assert_eq!(out.status.code(), Some(1));
    sender.wait_progress(300);

    let config = sluice.config_path.clone().unwrap();
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{good}\nbogus_key = 1\n")).unwrap();
    let out = ctl(&sock, &["upgrade"]);
    std::fs::write(&config, &good).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bogus_key"), "{stderr}");
    sender.wait_progress(300);

    std::fs::write(fail_switch(&setup), b"").unwrap();
    let out = ctl(&sock, &["upgrade"]);
    std::fs::remove_file(fail_switch(&setup)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("test: failing after 2 UDP flows"),
        "{stderr}"
    );
    sender.wait_progress(300);
    sluice.assert_alive();
    assert_eq!(status_pid(&sock), pid);

    let pids = Pids::default();
    let (old, new) = upgrade_ok(&sock, &[]);
    pids.add(new);
    assert_eq!(old, pid);
    sender.wait_progress(300);
    let (sent, replies) = sender.finish();
    assert_one_flow_all_answered("2 failed upgrades and 1 good one", sent, &replies);
}
