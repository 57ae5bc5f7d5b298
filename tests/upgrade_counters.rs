//! Prometheus counters across `sluice ctl upgrade` (issue 15, "counters stay monotonic
//! across an upgrade where the docs say they do"; docs/operations.md, "Hitless upgrade and
//! restart"): the new process starts every carried counter — per Service port and
//! endpoint (connections, failures, bytes, datagrams, connect failures, the two
//! histograms), the UDP flow table's, reloads — at the old process's total, carries it on
//! to the next upgrade, and counts on from there; a scraper polling `/metrics` all through
//! upgrades under load never sees one go down. Under the driver `SLUICE_TEST_DRIVER` names.
//!
//! The new processes are started by sluice, not by the test: [`Pids`] kills each by its PID
//! when the test ends, whatever happened.

mod common;
use common::udp::*;
use common::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The counter families the hand-over carries (docs/operations.md lists them), as sample
/// names of the Prometheus text format.
const CARRIED: &[&str] = &[
    "sluice_service_connections_total",
    "sluice_service_connection_failures_total",
    "sluice_service_connect_retries_total",
    "sluice_service_holds_refused_total",
    "sluice_service_source_ranges_refused_total",
    "sluice_service_bytes_total",
    "sluice_service_datagrams_total",
    "sluice_endpoint_connections_total",
    "sluice_endpoint_connection_failures_total",
    "sluice_endpoint_connect_retries_total",
    "sluice_endpoint_connect_failures_total",
    "sluice_endpoint_bytes_total",
    "sluice_endpoint_datagrams_total",
    "sluice_service_backend_connect_duration_seconds_bucket",
    "sluice_service_backend_connect_duration_seconds_count",
    "sluice_service_backend_connect_duration_seconds_sum",
    "sluice_service_connection_duration_seconds_bucket",
    "sluice_service_connection_duration_seconds_count",
    "sluice_service_connection_duration_seconds_sum",
    "sluice_udp_flows_created_total",
    "sluice_udp_flows_expired_total",
    "sluice_udp_flows_closed_total",
    "sluice_udp_flows_refused_total",
    "sluice_udp_datagrams_dropped_total",
    "sluice_reloads_total",
];

/// Every carried series of a scrape: `name{labels}` → value.
type Series = BTreeMap<String, f64>;

fn carried(metrics: SocketAddr) -> Series {
    let (_, body) = scrape::scrape(metrics, None);
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            if !CARRIED.contains(&name) {
                return None;
            }
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn get(s: &Series, name: &str, labels: &[&str]) -> f64 {
    s.iter()
        .find(|(k, _)| k.split('{').next() == Some(name) && labels.iter().all(|l| k.contains(l)))
        .map_or(0.0, |(_, v)| *v)
}

struct Running {
    sluice: Sluice,
    sock: std::path::PathBuf,
    metrics: SocketAddr,
    web: SocketAddr,
    refused: SocketAddr,
    dns: SocketAddr,
    config: String,
    _dir: TempDir,
    _echo: Backend,
    _pod: UdpPod,
}

/// sluice (2 workers) with an echo Service `web`, a Service `refused` whose one endpoint
/// refuses connections, and a UDP Service `dns` whose pod answers each datagram.
fn start() -> Running {
    let echo = EchoServer::start("127.0.0.2");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
        l.local_addr().unwrap() // nothing listens there once `l` is dropped
    };
    let pod = UdpPod::start(pod_addr("127.0.0.4", 0), "pod", 1);
    let (web, refused) = (free_port(), free_port());
    let dns = free_udp_port();
    let dir = TempDir::new("upgrade-counters");
    let sock = dir.path().join("ctl.sock");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (lo, hi) = (web.min(refused).min(dns), web.max(refused).max(dns));
    let config = format!(
        "listen_addresses = [\"127.0.0.1\"]\nnode_port_range = \"{lo}-{hi}\"\nworkers = 2\n\
         control_socket = \"{}\"\nmetrics_address = \"{metrics}\"\n{}{}\n\
         [[service]]\nname = \"dns\"\nnamespace = \"itest\"\nprotocol = \"UDP\"\nport = 53\n\
         node_port = {dns}\nendpoints = [\"{}\"]\n",
        sock.display(),
        service_toml("web", web, &[ep(echo.addr)], ""),
        service_toml("refused", refused, &[ep(closed)], ""),
        pod.addr,
    );
    let mut sluice = Sluice::run(&config);
    sluice.wait_ready_echo(node_addr(web));
    Running {
        sluice,
        sock,
        metrics,
        web: node_addr(web),
        refused: node_addr(refused),
        dns: node_addr(dns),
        config,
        _dir: dir,
        _echo: echo,
        _pod: pod,
    }
}

impl Running {
    /// `n` echo connections (3 round trips each, then closed), `n` connections to the
    /// refusing Service, `n` datagrams from each of two UDP clients; then waits until no
    /// TCP connection is open (their counters are final).
    fn traffic(&self, n: usize) {
        for _ in 0..n {
            let mut s = connect(self.web).unwrap();
            for _ in 0..3 {
                echo_roundtrip(&mut s, &[0x5a; 100]).unwrap();
            }
            drop(s);
            if let Ok(mut s) = connect(self.refused) {
                // Reset or closed by sluice once its connect fails.
                let _ = read_to_end_outcome(&mut s, Duration::from_secs(5));
            }
        }
        for ip in ["127.0.0.5", "127.0.0.6"] {
            let c = client(ip);
            for i in 0..n {
                assert!(ask(&c, self.dns, format!("q{i}").as_bytes()).is_some());
            }
        }
        let metrics = self.metrics;
        wait_for("no TCP connection open", Duration::from_secs(10), || {
            let (_, body) = scrape::scrape(metrics, None);
            body.lines()
                .filter(|l| {
                    l.starts_with("sluice_service_connections_active{")
                        && l.contains("protocol=\"TCP\"")
                })
                .all(|l| l.ends_with(" 0"))
                .then_some(())
        });
    }

    /// One reload that succeeds and one that fails (a config that does not parse).
    fn reloads(&self) {
        ctl_ok(&self.sock, &["reload"]);
        let path = self.sluice.config_path.as_ref().unwrap();
        std::fs::write(path, "workers = \"many\"\n").unwrap();
        assert!(!ctl(&self.sock, &["reload"]).status.success());
        std::fs::write(path, &self.config).unwrap();
    }
}

/// Whether `s` is a UDP Service's or endpoint's `connections` series: each flow handed
/// over is counted once more by the new process (docs/operations.md).
fn udp_flow_count(s: &str) -> bool {
    s.contains("_connections_total{") && s.contains("protocol=\"UDP\"")
}

#[test]
fn counters_start_at_the_old_totals_carry_on_and_count_on() {
    let r = start();
    let pids = Pids::default();
    r.traffic(4);
    r.reloads();
    let before = carried(r.metrics);
    // The traffic is there to be carried.
    let web = "service=\"web\"";
    assert!(get(&before, "sluice_service_connections_total", &[web]) >= 4.0);
    assert!(get(&before, "sluice_service_bytes_total", &[web, "to_client"]) >= 1200.0);
    assert!(
        get(
            &before,
            "sluice_endpoint_connect_failures_total",
            &["refused"]
        ) >= 1.0
    );
    assert!(
        get(
            &before,
            "sluice_service_connection_failures_total",
            &["refused"]
        ) >= 1.0
    );
    assert!(
        get(
            &before,
            "sluice_service_connection_duration_seconds_count",
            &[web]
        ) >= 4.0
    );
    assert!(
        get(
            &before,
            "sluice_service_datagrams_total",
            &["dns", "to_backend"]
        ) >= 8.0
    );
    assert!(
        get(
            &before,
            "sluice_endpoint_datagrams_total",
            &["dns", "to_client"]
        ) >= 8.0
    );
    assert!(get(&before, "sluice_udp_flows_created_total", &[]) >= 2.0);
    assert_eq!(get(&before, "sluice_reloads_total", &["success"]), 1.0);
    assert_eq!(get(&before, "sluice_reloads_total", &["failure"]), 1.0);

    let mut last = before;
    for round in 0..2 {
        let (old, new) = upgrade_ok(&r.sock, &[]);
        pids.add(new);
        assert_ne!(old, new);
        assert_eq!(status_pid(&r.sock), new);
        // No traffic in between: every series is where the old process left it (a UDP
        // flow's count grows by the flows handed over).
        let after = carried(r.metrics);
        for (series, v) in &last {
            let now = after.get(series).copied();
            if udp_flow_count(series) {
                assert!(
                    now.is_some_and(|n| n >= *v && n <= v + 10.0),
                    "upgrade {round}: {series} was {v}, is {now:?}"
                );
            } else {
                assert_eq!(now, Some(*v), "upgrade {round}: {series}");
            }
        }
        // And the new process counts on from there.
        r.traffic(2);
        let more = carried(r.metrics);
        for (name, labels) in [
            ("sluice_service_connections_total", vec![web]),
            ("sluice_endpoint_connections_total", vec![web]),
            ("sluice_service_bytes_total", vec![web, "to_backend"]),
            ("sluice_endpoint_connect_failures_total", vec!["refused"]),
            (
                "sluice_service_connection_duration_seconds_count",
                vec![web],
            ),
            ("sluice_service_datagrams_total", vec!["dns", "to_client"]),
            ("sluice_udp_flows_created_total", vec![]),
        ] {
            assert!(
                get(&more, name, &labels) > get(&after, name, &labels),
                "upgrade {round}: {name}{labels:?} did not grow: {} then {}",
                get(&after, name, &labels),
                get(&more, name, &labels)
            );
        }
        last = more;
    }
    assert_eq!(get(&last, "sluice_reloads_total", &["success"]), 1.0);
}

#[test]
fn a_scraper_polling_through_upgrades_under_load_never_sees_a_counter_go_down() {
    let r = start();
    let pids = Pids::default();
    r.traffic(2);
    let stop = Arc::new(AtomicBool::new(false));
    // Keep-alive echo load: bytes are counted all through each upgrade (bounded: 60 s).
    let load = {
        let (stop, addr) = (stop.clone(), r.web);
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(60);
            let mut s = connect(addr).unwrap();
            let mut round_trips = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                if round_trips % 50 == 49 {
                    s = connect(addr).unwrap();
                }
                echo_roundtrip(&mut s, &[7; 512]).unwrap();
                round_trips += 1;
            }
            round_trips
        })
    };
    let scraper = {
        let (stop, metrics) = (stop.clone(), r.metrics);
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(60);
            let mut scrapes = vec![carried(metrics)];
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                scrapes.push(carried(metrics));
            }
            scrapes
        })
    };
    for _ in 0..3 {
        let (_, new) = upgrade_ok(&r.sock, &[]);
        pids.add(new);
    }
    stop.store(true, Ordering::Relaxed);
    let round_trips = load.join().unwrap();
    let scrapes = scraper.join().unwrap();
    assert!(
        round_trips > 0 && scrapes.len() > 3,
        "{round_trips} {}",
        scrapes.len()
    );
    for (i, pair) in scrapes.windows(2).enumerate() {
        for (series, v) in &pair[0] {
            let now = pair[1].get(series).copied();
            assert!(
                now.is_some_and(|n| n >= *v),
                "scrape {i} → {}: {series} went from {v} to {now:?}",
                i + 1
            );
        }
    }
    eprintln!("{round_trips} round trips, {} scrapes", scrapes.len());
    let first = &scrapes[0];
    let final_ = &scrapes[scrapes.len() - 1];
    let bytes = |s: &Series| {
        get(
            s,
            "sluice_service_bytes_total",
            &["service=\"web\"", "to_client"],
        )
    };
    // (What the old processes relayed while they drained the load's connection is not
    // carried: docs/operations.md.)
    assert!(
        bytes(final_) > bytes(first),
        "bytes {} then {} after {round_trips} round trips",
        bytes(first),
        bytes(final_)
    );
}
