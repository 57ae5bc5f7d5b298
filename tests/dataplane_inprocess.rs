//! The data plane driven as a library, without the CLI or the config parser: a Model built
//! in code, real sockets on loopback. The black-box suites (tests/*.rs using the binary)
//! cover the rest; these check the library API other crates and the control side use.

use sluice::dataplane::Dataplane;
use sluice::model::*;
use sluice::publish::Publisher;
use sluice::table::{RoutingSnapshot, StatsRegistry};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

mod common;
// NodePorts from below the kernel's ephemeral range (see its doc): a port from `bind(:0)`
// is handed out again to the sockets of tests running in parallel once a test closes its
// listener there — and `udp_flows_end_with_their_node_port_socket` then waited in vain
// for its closed NodePort to refuse datagrams another test's socket had taken.
use common::free_port;
use common::inprocess::{ask, listeners, model, name_backend, start};

#[test]
fn every_connection_is_answered_by_one_of_the_endpoints_and_counted() {
    for relay in [RelayMode::Splice, RelayMode::Copy] {
        let eps = [
            name_backend("127.0.0.2", "a"),
            name_backend("127.0.0.3", "b"),
            name_backend("127.0.0.4", "c"),
        ];
        let port = free_port();
        let m = model(port, &eps, relay);
        let (dp, publisher, _reg) = start(&m);
        let mut seen = std::collections::HashMap::new();
        for _ in 0..300 {
            *seen.entry(ask(port)).or_insert(0) += 1;
        }
        assert_eq!(seen.values().sum::<i32>(), 300);
        assert_eq!(seen.len(), 3, "all three endpoints used: {seen:?}");
        dp.stop().unwrap();
        let snap = publisher.current();
        let (_, svc) = snap.services().next().unwrap();
        let t = svc.stats.totals();
        assert_eq!(t.opened, 300);
        assert_eq!(t.closed, 300);
        assert_eq!(t.failed, 0);
        assert_eq!(t.bytes_to_client, 300);
        assert_eq!(t.bytes_to_backend, 300 * 18);
    }
}

#[test]
fn half_close_from_client_lets_the_reply_through() {
    let l = TcpListener::bind("127.0.0.2:0").unwrap();
    let backend = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap(); // until the client's FIN arrives
        s.write_all(format!("got {} bytes", all.len()).as_bytes())
            .unwrap();
    });
    let port = free_port();
    let (dp, _p, _r) = start(&model(port, &[backend], RelayMode::Splice));
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(&[7u8; 100_000]).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "got 100000 bytes");
    dp.stop().unwrap();
}

fn echo_backend(ip: &str) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    addr
}

fn echo_once(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)?;
    assert_eq!(got, msg);
    Ok(())
}

/// Wait (bounded) until `f` holds.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn listeners_follow_a_reload_and_established_connections_survive_it() {
    let echo = echo_backend("127.0.0.5");
    let (p1, p2) = (free_port(), free_port());
    let mut m = model(p1, &[echo], RelayMode::Splice);
    m.settings.node_port_range = NodePortRange {
        first: 1024,
        last: 65535,
    };
    let (mut dp, publisher, mut reg) = start(&m);
    let mut established = TcpStream::connect(("127.0.0.1", p1)).unwrap();
    established
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    echo_once(&mut established, b"before").unwrap();

    // Reload: the Service moves from p1 to p2.
    let mut m2 = m.clone();
    m2.services[0].node_port = p2;
    let ports2 = vec![(Protocol::Tcp, p2)];
    let plan = dp
        .prepare_listeners(m2.settings.backlog, &listeners(&ports2))
        .unwrap();
    assert_eq!(plan.added().len(), 1);
    assert_eq!(plan.removed().len(), 1);
    publisher.publish(RoutingSnapshot::build(&m2, 2, &mut reg));
    dp.commit_listeners(plan);

    eventually("the new NodePort answers", || {
        TcpStream::connect(("127.0.0.1", p2))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                echo_once(&mut s, b"new")
            })
            .is_ok()
    });
    eventually("the removed NodePort is closed", || {
        TcpStream::connect(("127.0.0.1", p1)).is_err()
    });
    // The connection made before the reload still works.
    echo_once(&mut established, b"after the reload").unwrap();

    // A listener that cannot be opened fails the prepare and changes nothing.
    let blocker = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = blocker.local_addr().unwrap().port();
    let err = dp.prepare_listeners(
        m2.settings.backlog,
        &listeners(&[(Protocol::Tcp, p2), (Protocol::Tcp, taken)]),
    );
    assert!(
        err.is_err(),
        "binding a port held by another socket must fail"
    );
    echo_once(&mut established, b"still").unwrap();
    dp.stop().unwrap();
}

#[test]
fn drain_lets_open_connections_finish_then_resets_the_rest() {
    let echo = echo_backend("127.0.0.6");
    let port = free_port();
    let (dp, _p, _r) = start(&model(port, &[echo], RelayMode::Splice));
    let monitor = dp.monitor();
    let mut finishing = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut lingering = TcpStream::connect(("127.0.0.1", port)).unwrap();
    for s in [&mut finishing, &mut lingering] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        echo_once(s, b"hello").unwrap();
    }
    eventually("both connections counted active", || monitor.active() == 2);
    let beats = monitor.heartbeats();
    eventually("heartbeats advance while idle", || {
        monitor
            .heartbeats()
            .iter()
            .zip(&beats)
            .all(|(now, before)| now > before)
    });

    let drainer = std::thread::spawn(move || dp.drain(Duration::from_millis(1500)).unwrap());
    eventually("accepting stopped", || {
        monitor.worker_stats().iter().all(|w| !w.accepting)
    });
    // During the drain, open connections keep working; one finishes cleanly.
    echo_once(&mut finishing, b"during drain").unwrap();
    finishing.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    finishing.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let report = drainer.join().unwrap();
    assert_eq!(report.reset, 1, "{report:?}");
    assert_eq!(report.finished, 1, "{report:?}");
    // The lingering one was reset at the deadline.
    let mut buf = [0u8; 1];
    let r = lingering.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "expected a reset, got {r:?}"
    );
}

/// A backend that reads a PROXY header, replies with what it decoded, then echoes.
fn proxy_reading_backend(ip: &str) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 512];
                let (header, used) = loop {
                    let n = s.read(&mut chunk).unwrap();
                    assert!(n > 0, "EOF before a whole PROXY header");
                    buf.extend_from_slice(&chunk[..n]);
                    match sluice::proxy_protocol::decode(&buf) {
                        Ok(h) => break h,
                        Err(sluice::proxy_protocol::DecodeError::Incomplete) => continue,
                        Err(e) => panic!("{e}"),
                    }
                };
                let (src, dst) = header.addrs.expect("addresses in the header");
                let line = format!(
                    "v{} {src} {dst} tlvs={}\n",
                    header.version,
                    header.tlvs.len()
                );
                s.write_all(line.as_bytes()).unwrap();
                s.write_all(&buf[used..]).unwrap();
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    addr
}

#[test]
fn proxy_headers_name_the_client_and_the_node_port_before_any_client_byte() {
    let backend = proxy_reading_backend("127.0.0.7");
    for (forwarding, version, tlvs) in [
        (Forwarding::ProxyV1, 1, 0),
        (Forwarding::ProxyV2(ProxyV2Options::default()), 2, 0),
        (
            Forwarding::ProxyV2(ProxyV2Options {
                unique_id: true,
                tlvs: vec![(0xE0, b"test/inproc".to_vec())],
            }),
            2,
            2,
        ),
    ] {
        let port = free_port();
        let mut m = model(port, &[backend], RelayMode::Splice);
        m.services[0].forwarding = forwarding;
        let (dp, _p, _r) = start(&m);
        let client =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        client
            .bind(&"127.0.0.9:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        client
            .connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
            .unwrap();
        let me = client.local_addr().unwrap().as_socket().unwrap();
        let mut c: TcpStream = client.into();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"payload").unwrap();
        let want = format!("v{version} {me} 127.0.0.1:{port} tlvs={tlvs}\npayload");
        let mut got = vec![0u8; want.len()];
        c.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8_lossy(&got), want);
        dp.stop().unwrap();
    }
}

#[test]
fn client_ip_steering_sends_every_client_to_one_worker() {
    let eps = [
        name_backend("127.0.0.2", "a"),
        name_backend("127.0.0.3", "b"),
    ];
    let port = free_port();
    let mut m = model(port, &eps, RelayMode::Splice);
    m.services[0].policy = Policy::ClientIp {
        timeout: Duration::from_secs(60),
        max_entries: 1000,
    };
    let (mut dp, _p, _r) = start(&m);
    dp.steer_client_ips(&listeners(&[(Protocol::Tcp, port)]).required);
    let monitor = dp.monitor();
    let accepted = || -> Vec<u64> { monitor.worker_stats().iter().map(|w| w.accepted).collect() };
    let mut workers_used = std::collections::HashSet::new();
    for c in 10..40u8 {
        let before = accepted();
        for _ in 0..10 {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.bind(&SocketAddr::from(([127, 0, 0, c], 0)).into())
                .unwrap();
            s.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
                .unwrap();
            let mut s: TcpStream = s.into();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"hi").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
        }
        eventually("the worker counted the accepts", || {
            accepted().iter().sum::<u64>() == before.iter().sum::<u64>() + 10
        });
        let delta: Vec<u64> = accepted().iter().zip(&before).map(|(a, b)| a - b).collect();
        assert!(
            delta.contains(&10),
            "client 127.0.0.{c} spread over workers: {delta:?}"
        );
        workers_used.insert(delta.iter().position(|&d| d == 10).unwrap());
    }
    assert_eq!(
        workers_used.len(),
        2,
        "30 clients all steered to one worker"
    );
    dp.stop().unwrap();
}

/// Durations no clock can reach (beyond the configuration's bounds: a bug in a bound, a
/// future source) must not panic a worker or the drain: the connect timeout (a deadline in
/// the epoll timer heap, a kernel timespec under io_uring), the idle deadline and the drain
/// deadline saturate to a far future instead of overflowing.
#[test]
fn durations_beyond_any_clock_saturate_under_both_drivers() {
    let mut drivers = vec![DriverSetting::Epoll];
    match sluice::dataplane::probe_uring() {
        Ok(()) => drivers.push(DriverSetting::Uring),
        Err(e) => eprintln!("SKIPPED under io_uring (unavailable here: {e}); epoll only"),
    }
    for driver in drivers {
        let eps = [name_backend("127.0.0.2", "a")];
        let port = free_port();
        let mut m = model(port, &eps, RelayMode::Copy);
        m.settings.driver = driver;
        m.services[0].timeouts = Timeouts {
            connect: Duration::MAX,
            idle: Duration::MAX,
            hold_when_empty: Some(Duration::MAX),
        };
        let (dp, publisher, _reg) = start(&m);
        for i in 0..20 {
            assert_eq!(ask(port), "a", "{driver:?}, connection {i}");
        }
        // One connection stays open across a few idle checks (one per ~100 ms loop tick):
        // wait until every worker's loop went round five more times.
        let mut open = TcpStream::connect(("127.0.0.1", port)).unwrap();
        open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let monitor = dp.monitor();
        let before = monitor.heartbeats();
        eventually("every worker ran five more loop iterations", || {
            monitor
                .heartbeats()
                .iter()
                .zip(&before)
                .all(|(now, was)| *now >= was + 5)
        });
        open.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        open.read_to_string(&mut out).unwrap();
        assert_eq!(
            out, "a",
            "{driver:?}: the connection held across idle checks"
        );
        drop(open);
        // Nothing is open: the drain ends at once (its deadline is only computed).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(dp.drain(Duration::MAX)));
        let report = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the drain ends once no connection is open")
            .expect("workers end cleanly");
        assert_eq!(report.reset, 0, "{driver:?}");
        let snap = publisher.current();
        let (_, svc) = snap.services().next().unwrap();
        let t = svc.stats.totals();
        assert_eq!((t.opened, t.failed), (21, 0), "{driver:?}");
    }
}

/// A UDP pod that echoes every datagram back to its sender.
/// `recv_from` that retries when a signal interrupts it: the data plane runs in this test
/// process, beside the other tests' threads, and a signal delivered to this thread
/// interrupts a blocking receive (EINTR), which std does not retry for datagram sockets.
fn recv_from(s: &std::net::UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    loop {
        match s.recv_from(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn udp_echo_pod(ip: &str) -> SocketAddr {
    let s = std::net::UdpSocket::bind((ip, 0)).unwrap();
    let addr = s.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = recv_from(&s, &mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    addr
}

/// A UDP flow replies through the NodePort socket its client used. When a listener change
/// closes that socket while its Service stays (the node address it was bound to went away:
/// the Service is still found by its NodePort, so neither a datagram nor the sweep would
/// end the flow), its flows end at once, and a late reply from the pod never leaves
/// through the listener that takes the worker's slot next. It used to: the flow kept the
/// slot's index, and the next listener opened there carried the reply.
#[test]
fn udp_flows_end_with_their_node_port_socket() {
    use std::net::UdpSocket;
    let pod = UdpSocket::bind("127.0.0.7:0").unwrap();
    let other_pod = udp_echo_pod("127.0.0.8");
    let (p1, p2) = (free_port(), free_port());
    let mut m = model(p1, &[pod.local_addr().unwrap()], RelayMode::Splice);
    m.settings.node_port_range = NodePortRange {
        first: 1024,
        last: 65535,
    };
    m.services[0].key.protocol = Protocol::Udp;
    let mut b = m.services[0].clone();
    b.key.service.name = "other".into();
    b.node_port = p2;
    b.endpoints = vec![Endpoint::new(other_pod).with_weight(DEFAULT_WEIGHT)];
    m.services.push(b);
    // Both Services in every snapshot; at first only p1 has a listener.
    let mut reg = StatsRegistry::new(m.settings.workers.unwrap());
    let publisher = Publisher::new(RoutingSnapshot::build(&m, 1, &mut reg));
    let mut dp = Dataplane::start(
        &m.settings,
        &listeners(&[(Protocol::Udp, p1)]).required,
        &publisher,
    )
    .expect("data plane starts");

    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    client.send_to(b"question", ("127.0.0.1", p1)).unwrap();
    pod.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let (n, upstream) = recv_from(&pod, &mut buf).expect("the pod gets the datagram");
    assert_eq!(&buf[..n], b"question");
    pod.connect(upstream).unwrap();
    pod.send(b"answer").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (n, from) = recv_from(&client, &mut buf).expect("the reply");
    assert_eq!((&buf[..n], from.port()), (&b"answer"[..], p1));

    // The listener of p1 closes; the Service stays.
    let plan = dp
        .prepare_listeners(m.settings.backlog, &listeners(&[]))
        .unwrap();
    assert_eq!(plan.removed().len(), 1);
    dp.commit_listeners(plan);
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe.connect(("127.0.0.1", p1)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    eventually("p1 is closed", || {
        let _ = probe.send(b"?");
        matches!(probe.recv(&mut [0u8; 64]), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    });
    // A new listener, in the slot p1 had.
    let plan = dp
        .prepare_listeners(m.settings.backlog, &listeners(&[(Protocol::Udp, p2)]))
        .unwrap();
    dp.commit_listeners(plan);
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe.connect(("127.0.0.1", p2)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    eventually("p2 serves", || {
        let _ = probe.send(b"ping");
        probe.recv(&mut [0u8; 64]).is_ok()
    });

    // The pod answers late: its flow's socket is closed (the kernel refuses), and nothing
    // reaches the client, from p2 or anywhere.
    pod.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let _ = pod.send(b"late answer");
        if let Ok((n, from)) = client.recv_from(&mut buf) {
            panic!(
                "the client got {:?} from {from} after its NodePort socket closed",
                String::from_utf8_lossy(&buf[..n])
            );
        }
        match pod.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break true,
            _ if std::time::Instant::now() > deadline => break false,
            _ => {}
        }
    };
    assert!(
        refused,
        "the flow's upstream socket stayed open after its NodePort socket closed"
    );
    dp.stop().unwrap();
}

/// Client-IP steering (the reuseport BPF program) covers UDP NodePorts: every flow of one
/// client IP, from whatever source port, lands on the same worker, so a ClientIP-affinity
/// Service's flows of one client share one worker's affinity table. Without the program
/// attached to the UDP group, the kernel's 4-tuple hash spreads a client's ports over both
/// workers.
#[test]
fn client_ip_steering_sends_every_udp_flow_of_a_client_to_one_worker() {
    use sluice::dataplane::LiveQuery;
    use std::net::UdpSocket;
    let pod = udp_echo_pod("127.0.0.7");
    let port = free_port();
    let mut m = model(port, &[pod], RelayMode::Splice);
    m.settings.node_port_range = NodePortRange {
        first: 1024,
        last: 65535,
    };
    m.services[0].key.protocol = Protocol::Udp;
    m.services[0].policy = Policy::ClientIp {
        timeout: Duration::from_secs(60),
        max_entries: 1000,
    };
    let (mut dp, _p, _r) = start(&m);
    assert!(dp.workers() >= 2, "the test needs two workers");
    dp.steer_client_ips(&listeners(&[(Protocol::Udp, port)]).required);
    let mut clients = Vec::new();
    for c in 10..40u8 {
        for _ in 0..10 {
            let s = UdpSocket::bind((format!("127.0.0.{c}").as_str(), 0)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.send_to(b"hi", ("127.0.0.1", port)).unwrap();
            let mut buf = [0u8; 16];
            let (n, _) = recv_from(&s, &mut buf).expect("the echo through the flow");
            assert_eq!(&buf[..n], b"hi");
            clients.push(s); // keeps its port, so the flow stays this client's
        }
    }
    let report = dp
        .live(&LiveQuery {
            services: None,
            limit: 10_000,
        })
        .wait(Duration::from_secs(5));
    assert_eq!(report.answered, report.workers);
    let udp: Vec<_> = report
        .entries
        .iter()
        .filter(|e| e.protocol == Protocol::Udp)
        .collect();
    assert_eq!(udp.len(), 300, "every flow is live");
    let mut worker_of = std::collections::HashMap::new();
    for e in &udp {
        let w = *worker_of.entry(e.client.ip()).or_insert(e.worker);
        assert_eq!(
            w,
            e.worker,
            "client {} has flows on workers {w} and {}",
            e.client.ip(),
            e.worker
        );
    }
    let used: std::collections::HashSet<_> = worker_of.values().collect();
    assert_eq!(used.len(), 2, "30 client IPs all steered to one worker");
    dp.stop().unwrap();
}

/// A listener removed while traffic hits it is closed, every time: its port refuses
/// afterwards. io_uring's POLL_REMOVE fails (EALREADY) when it meets the multishot poll
/// in the middle of a wake-up; the poll then stayed armed and held the closed socket
/// open for ever — a removed NodePort went on taking datagrams (and connections) that
/// nobody read. The driver now cancels polls with ASYNC_CANCEL, which cannot miss.
#[test]
fn listeners_removed_under_traffic_close_every_time() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    for protocol in [Protocol::Udp, Protocol::Tcp] {
        let pod = match protocol {
            Protocol::Udp => udp_echo_pod("127.0.0.9"),
            _ => echo_backend("127.0.0.9"),
        };
        let port = free_port();
        let mut m = model(port, &[pod], RelayMode::Splice);
        m.services[0].key.protocol = protocol;
        let mut reg = StatsRegistry::new(m.settings.workers.unwrap());
        let publisher = Publisher::new(RoutingSnapshot::build(&m, 1, &mut reg));
        let mut dp =
            Dataplane::start(&m.settings, &listeners(&[]).required, &publisher).expect("starts");
        for round in 0..20 {
            let plan = dp
                .prepare_listeners(m.settings.backlog, &listeners(&[(protocol, port)]))
                .unwrap();
            dp.commit_listeners(plan);
            // Traffic at the port while it goes away: bounded in time.
            let stop = Arc::new(AtomicBool::new(false));
            let flood = {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let deadline = std::time::Instant::now() + Duration::from_secs(3);
                    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                        match protocol {
                            Protocol::Udp => {
                                let _ = udp.send_to(b"x", ("127.0.0.1", port));
                            }
                            _ => {
                                let _ = TcpStream::connect_timeout(
                                    &SocketAddr::from(([127, 0, 0, 1], port)),
                                    Duration::from_millis(100),
                                );
                            }
                        }
                    }
                })
            };
            std::thread::sleep(Duration::from_millis(20));
            let plan = dp
                .prepare_listeners(m.settings.backlog, &listeners(&[]))
                .unwrap();
            assert_eq!(plan.removed().len(), 1);
            dp.commit_listeners(plan);
            stop.store(true, Ordering::Relaxed);
            flood.join().unwrap();
            eventually(
                &format!("{protocol:?} port is closed (round {round})"),
                || match protocol {
                    Protocol::Udp => {
                        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                        probe.connect(("127.0.0.1", port)).unwrap();
                        probe
                            .set_read_timeout(Some(Duration::from_millis(20)))
                            .unwrap();
                        let _ = probe.send(b"?");
                        matches!(probe.recv(&mut [0u8; 8]), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
                    }
                    _ => matches!(
                        TcpStream::connect_timeout(
                            &SocketAddr::from(([127, 0, 0, 1], port)),
                            Duration::from_millis(100)
                        ),
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
                    ),
                },
            );
        }
        dp.stop().unwrap();
    }
}
