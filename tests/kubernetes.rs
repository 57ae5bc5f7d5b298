//! `sluice run --kubernetes` against a fake API server on loopback that speaks the real wire
//! protocol (tests/common/fake_api.rs): traffic follows the watched Services and
//! EndpointSlices, and the watch survives 410 Gone, dropped connections and API server
//! restarts without dropping a client connection. Fixtures: tests/fixtures/api/ (real API
//! JSON: the seeds' Services, EndpointSlices as the EndpointSlice controller writes them).

mod common;
use common::fake_api::{FakeApi, Kind};
use common::kube::*;
use common::*;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn pods_added_are_served_and_a_deleted_service_closes_its_node_port() {
    let (_pods, pod_port) = pods(&["127.0.0.2", "127.0.0.3"]);
    let (p1, p2) = (free_port(), free_port());
    let api = frontend_api(p1, pod_port, &[ready("127.0.0.2")]);
    let mut n = start_node(&api, (p1, p2), &[], Launch::default());
    n.sluice.wait_ready_name(node_addr(p1));
    wait_answers(&mut n, node_addr(p1), &["127.0.0.2"]);

    // A second Service appears with its slice: its NodePort opens.
    api.apply(frontend_service("shop", "cart", p2));
    api.apply(slice("shop", "cart", pod_port, &[ready("127.0.0.3")]));
    wait_answers(&mut n, node_addr(p2), &["127.0.0.3"]);

    // A pod added to the first → both serve it.
    api.apply(slice(
        "workshop",
        "myfrontend",
        pod_port,
        &[ready("127.0.0.2"), ready("127.0.0.3")],
    ));
    wait_answers(&mut n, node_addr(p1), &["127.0.0.2", "127.0.0.3"]);

    // The first Service deleted (its slice goes with it, as the garbage collector does):
    // its NodePort is closed; the other keeps serving.
    api.delete(Kind::Service, "workshop", "myfrontend");
    api.delete(Kind::EndpointSlice, "workshop", "myfrontend-x7k2p");
    n.sluice
        .wait_until("NodePort of the deleted Service refuses", || {
            refused(node_addr(p1))
        });
    assert_eq!(answers(node_addr(p2), 4), ["127.0.0.3".to_string()].into());
}

#[test]
fn a_terminating_pod_is_only_a_fallback() {
    let (_pods, pod_port) = pods(&["127.0.0.2", "127.0.0.3"]);
    let p = free_port();
    let api = frontend_api(p, pod_port, &[ready("127.0.0.2"), terminating("127.0.0.3")]);
    let mut n = start_node(&api, (p, p), &[], Launch::default());
    n.sluice.wait_ready_name(node_addr(p));
    // A ready pod exists: the terminating one gets nothing (24 distinct clients).
    wait_answers(&mut n, node_addr(p), &["127.0.0.2"]);
    assert_eq!(answers(node_addr(p), 48), ["127.0.0.2".to_string()].into());

    // The ready pod goes away: the serving-but-terminating one takes the traffic
    // (kube-proxy's fallback) instead of the Service going dark.
    api.apply(slice(
        "workshop",
        "myfrontend",
        pod_port,
        &[terminating("127.0.0.3")],
    ));
    wait_answers(&mut n, node_addr(p), &["127.0.0.3"]);

    // A ready pod is back: the terminating one stops getting new connections.
    api.apply(slice(
        "workshop",
        "myfrontend",
        pod_port,
        &[ready("127.0.0.2"), terminating("127.0.0.3")],
    ));
    wait_answers(&mut n, node_addr(p), &["127.0.0.2"]);
}

#[test]
fn the_seed_helloworld_service_with_a_named_target_port_is_served() {
    let (_pods, pod_port) = pods(&["127.0.0.5"]);
    let p = free_port();
    let api = FakeApi::start_new();
    let mut svc = fixture("helloworld-service.json");
    svc["spec"]["ports"][0]["nodePort"] = json!(p);
    let mut sl = fixture("helloworld-slice.json");
    // The slice carries the resolved container port of `http-server`.
    sl["ports"][0]["port"] = json!(pod_port);
    api.apply(svc);
    api.apply(sl);
    let mut n = start_node(&api, (p, p), &[], Launch::default());
    n.sluice.wait_ready_name(node_addr(p));
    wait_answers(&mut n, node_addr(p), &["127.0.0.5"]);
}

#[test]
fn api_server_restart_drops_no_connection_and_later_changes_apply() {
    let (_pods, pod_port) = pods(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    let p = free_port();
    let mut api = FakeApi::start_new();
    api.apply(frontend_service("workshop", "myfrontend", p));
    api.apply(slice(
        "workshop",
        "myfrontend",
        pod_port,
        &[ready("127.0.0.2"), ready("127.0.0.3")],
    ));
    let mut n = start_node(&api, (p, p), &[], Launch::default());
    n.sluice.wait_ready_name(node_addr(p));
    wait_answers(&mut n, node_addr(p), &["127.0.0.2", "127.0.0.3"]);
    let lists_before = n.lists("EndpointSlice");

    // Keep-alive connections opened before the outage.
    let mut live: Vec<TcpStream> = (1..=8)
        .map(|i| connect_from(IpAddr::from([127, 0, 2, i]), node_addr(p)).unwrap())
        .collect();
    for s in &mut live {
        ask_name_on(s).unwrap();
    }

    api.stop();
    let outage = Instant::now();
    // During the outage: old connections keep working, new ones are served, for at least
    // as long as the watch needs to notice (its retries fail: connection refused).
    let mut asked = 0;
    while outage.elapsed() < Duration::from_millis(2500) {
        for s in &mut live {
            ask_name_on(s).expect("a live connection failed during the API outage");
        }
        let mut s = connect(node_addr(p)).expect("a new connection failed during the outage");
        ask_name_on(&mut s).expect("a new connection was not served during the outage");
        asked += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(asked > 5);
    n.sluice.assert_alive();
    assert!(
        n.metrics()
            .contains("sluice_kubernetes_watch_up{kind=\"EndpointSlice\",namespace=\"\"} 0"),
        "the outage was not noticed:\n{}",
        n.sluice.stderr_tail(20)
    );

    // A pod was added while the API server was down (etcd kept being written). Back on
    // the same port with no watch history (as a real restart): the watch's version is too
    // old, it relists and gets the new pod.
    api.apply(slice(
        "workshop",
        "myfrontend",
        pod_port,
        &[ready("127.0.0.2"), ready("127.0.0.3"), ready("127.0.0.4")],
    ));
    api.start();
    wait_answers_within(
        &mut n,
        node_addr(p),
        &["127.0.0.2", "127.0.0.3", "127.0.0.4"],
        Duration::from_secs(45),
    );
    for s in &mut live {
        ask_name_on(s).expect("a connection opened before the outage failed after it");
    }
    assert!(n.lists("EndpointSlice") > lists_before);
    // And the watch goes on after the relist.
    api.apply(slice(
        "workshop",
        "myfrontend",
        pod_port,
        &[ready("127.0.0.3"), ready("127.0.0.4")],
    ));
    wait_answers(&mut n, node_addr(p), &["127.0.0.3", "127.0.0.4"]);
    for s in &mut live {
        ask_name_on(s).expect("a connection opened before the outage failed after it");
    }
    let log = n.sluice.stderr();
    assert!(log.contains("Kubernetes watch lost"), "{log}");
    assert!(
        log.contains("relisting") || log.contains("relisted"),
        "{log}"
    );
}

#[test]
fn expired_watch_relists_and_converges() {
    let (_pods, pod_port) = pods(&["127.0.0.2", "127.0.0.3"]);
    let p = free_port();
    let api = frontend_api(p, pod_port, &[ready("127.0.0.2")]);
    let mut n = start_node(&api, (p, p), &[], Launch::default());
    n.sluice.wait_ready_name(node_addr(p));
    wait_answers(&mut n, node_addr(p), &["127.0.0.2"]);
    assert_eq!(n.lists("EndpointSlice"), 1);

    // The watch falls behind: 410 Gone on the open watches, history compacted. A change
    // made meanwhile reaches sluice only through the relist.
    api.expire_watches();
    api.apply(slice(
        "workshop",
        "myfrontend",
        pod_port,
        &[ready("127.0.0.3")],
    ));
    api.compact();
    wait_answers(&mut n, node_addr(p), &["127.0.0.3"]);
    let m = n.metrics;
    n.sluice.wait_until("both streams relisted", || {
        lists_at(m, "EndpointSlice") >= 2 && lists_at(m, "Service") >= 2
    });
    assert!(n.sluice.stderr().contains("410 Gone"));
    // Still watching after the relist: the next change arrives.
    api.apply(slice(
        "workshop",
        "myfrontend",
        pod_port,
        &[ready("127.0.0.2")],
    ));
    wait_answers(&mut n, node_addr(p), &["127.0.0.2"]);
}

#[test]
fn dropped_watch_connections_resume_without_relisting() {
    let (_pods, pod_port) = pods(&["127.0.0.2", "127.0.0.3"]);
    let p = free_port();
    let api = frontend_api(p, pod_port, &[ready("127.0.0.2")]);
    let mut n = start_node(&api, (p, p), &[], Launch::default());
    n.sluice.wait_ready_name(node_addr(p));
    let watches_before = api.count_requests("watch=true");

    for round in 0..2 {
        api.drop_connections();
        let pods: &[Pod] = if round == 0 {
            &[ready("127.0.0.2"), ready("127.0.0.3")]
        } else {
            &[ready("127.0.0.3")]
        };
        api.apply(slice("workshop", "myfrontend", pod_port, pods));
        let want: Vec<&str> = pods.iter().map(|p| p.ip).collect();
        wait_answers(&mut n, node_addr(p), &want);
    }
    // Resumed from the last resourceVersion: new watch requests, but no new list.
    assert!(api.count_requests("watch=true") > watches_before);
    assert_eq!(n.lists("EndpointSlice"), 1);
    assert_eq!(n.lists("Service"), 1);
    let resumed = api
        .requests()
        .iter()
        .rev()
        .find(|r| r.contains("endpointslices?") && r.contains("watch=true"))
        .cloned()
        .unwrap();
    assert!(
        !resumed.contains("resourceVersion=0&") && resumed.contains("resourceVersion="),
        "{resumed}"
    );
}

#[test]
fn a_burst_of_200_changes_is_coalesced_into_few_reloads() {
    let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let (_pods, pod_port) = pods(&ips);
    let p = free_port();
    let api = FakeApi::start_new();
    api.apply(frontend_service("workshop", "myfrontend", p));
    api.apply(slice("workshop", "myfrontend", pod_port, &[ready(ips[0])]));
    let mut n = start_node(&api, (p, p), &[], Launch::default());
    n.sluice.wait_ready_name(node_addr(p));
    wait_answers(&mut n, node_addr(p), &[ips[0]]);
    let g0 = n.generation();

    // 200 slice updates, a few milliseconds apart (a rolling update's churn); the last
    // one has the two last pods.
    let burst = Instant::now();
    for i in 0..200usize {
        let pods: Vec<Pod> = if i == 199 {
            vec![ready(ips[1]), ready(ips[2])]
        } else {
            vec![ready(ips[i % 3])]
        };
        api.apply(slice("workshop", "myfrontend", pod_port, &pods));
        std::thread::sleep(Duration::from_millis(2));
    }
    let burst_took = burst.elapsed();
    wait_answers(&mut n, node_addr(p), &[ips[1], ips[2]]);
    let reloads = n.generation() - g0;
    // One reload per quiet period or per second of burst, not one per event.
    let bound = 3 + 2 * burst_took.as_secs();
    assert!(
        (1..=bound).contains(&reloads),
        "{reloads} reloads for 200 events over {burst_took:?}"
    );
    let events = n
        .metric("sluice_kubernetes_watch_events_total{kind=\"EndpointSlice\"")
        .unwrap();
    assert!(events >= 200.0, "{events}");
}

#[test]
fn metrics_and_status_show_the_watch() {
    let (_pods, pod_port) = pods(&["127.0.0.2"]);
    let p = free_port();
    let api = frontend_api(p, pod_port, &[ready("127.0.0.2")]);
    let mut n = start_node(&api, (p, p), &[], Launch::default());
    // Only the watch machinery: the stores and metrics, whatever the conversion serves.
    let m = n.metrics;
    n.sluice.wait_until("both stores synced", || {
        TcpStream::connect(m).is_ok()
            && metric_at(m, "sluice_kubernetes_objects{kind=\"EndpointSlice\"") == Some(1.0)
    });
    api.apply(slice(
        "workshop",
        "myfrontend",
        pod_port,
        &[ready("127.0.0.2"), terminating("127.0.0.3")],
    ));
    n.sluice.wait_until("a synced change is measured", || {
        metric_at(m, "sluice_kubernetes_sync_latency_seconds_count").unwrap_or(0.0) >= 1.0
    });
    let body = n.metrics();
    for want in [
        "sluice_kubernetes_sync_latency_seconds_bucket{le=\"0.25\"}",
        "sluice_kubernetes_watch_up{kind=\"Service\",namespace=\"\"} 1",
        "sluice_kubernetes_watch_up{kind=\"EndpointSlice\",namespace=\"\"} 1",
        "sluice_kubernetes_objects{kind=\"Service\",namespace=\"\"} 1",
        "sluice_kubernetes_watch_errors_total{kind=\"Service\",namespace=\"\"} 0",
        "sluice_kubernetes_last_sync_timestamp_seconds",
    ] {
        assert!(body.contains(want), "{want} missing:\n{body}");
    }
    let status = n.ctl_json(&["status"]).unwrap();
    assert_eq!(
        status["result"]["config"], "kubernetes (cluster-wide)",
        "{status}"
    );
    // What kube-rs asked: paginated lists, then watches from their resourceVersion with
    // bookmarks, with the bearer token (the fake refuses requests without it).
    let reqs = api.requests();
    assert!(
        reqs.iter().any(|r| r == "GET /api/v1/services?&limit=500"),
        "{reqs:?}"
    );
    assert!(
        reqs.iter().any(|r| r
            .starts_with("GET /apis/discovery.k8s.io/v1/endpointslices?&watch=true")
            && r.contains("allowWatchBookmarks=true")),
        "{reqs:?}"
    );
}

/// deploy/grafana/sluice.json queries only metrics a running sluice exports: every name its
/// PromQL uses (panels, variables, annotations) is a sample of a `--kubernetes` node that
/// has served a connection (so per-Service series and the watch's exist).
#[test]
fn grafana_dashboard_queries_only_exported_metrics() {
    use common::scrape::{dashboard_metrics, sample_names, scrape};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/sluice.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("dashboard JSON");
    let wanted = dashboard_metrics(&dashboard);
    for family in [
        "sluice_service_connections_total",
        "sluice_endpoint_up",
        "sluice_service_backend_connect_duration_seconds_bucket",
        "sluice_reloads_total",
        "sluice_kubernetes_sync_latency_seconds_bucket",
    ] {
        assert!(
            wanted.contains(family),
            "the dashboard has no {family} panel: {wanted:?}"
        );
    }

    let (_pods, pod_port) = pods(&["127.0.0.2"]);
    let p = free_port();
    let api = frontend_api(p, pod_port, &[ready("127.0.0.2")]);
    let mut n = start_node(&api, (p, p), &[], Launch::default());
    let node = node_addr(p);
    n.sluice.wait_ready_name(node);
    ask_name(node).unwrap();
    // Closed and counted: the duration histogram's series exists from its first observation.
    let m = n.metrics;
    n.sluice
        .wait_until("the connection's duration observed", || {
            scrape(m, None)
                .1
                .contains("sluice_service_connection_duration_seconds_count{")
        });
    let (_, body) = scrape(n.metrics, None);
    let exported = sample_names(&body);
    let missing: Vec<&String> = wanted.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\n{body}"
    );
}

#[test]
fn namespaces_limit_what_is_watched() {
    let (_pods, pod_port) = pods(&["127.0.0.2", "127.0.0.3"]);
    let (p1, p2) = (free_port(), free_port());
    let api = frontend_api(p1, pod_port, &[ready("127.0.0.2")]);
    api.apply(frontend_service("other", "elsewhere", p2));
    api.apply(slice("other", "elsewhere", pod_port, &[ready("127.0.0.3")]));
    let mut n = start_node(
        &api,
        (p1, p2),
        &["--namespace", "workshop"],
        Launch::default(),
    );
    n.sluice.wait_ready_name(node_addr(p1));
    assert!(
        refused(node_addr(p2)),
        "a Service of another namespace is served"
    );
    let reqs = api.requests();
    assert!(reqs
        .iter()
        .any(|r| r.starts_with("GET /api/v1/namespaces/workshop/services?")));
    assert!(
        !reqs.iter().any(|r| r.starts_with("GET /api/v1/services")),
        "{reqs:?}"
    );
}

#[test]
fn startup_waits_for_the_api_then_becomes_ready() {
    let (_pods, pod_port) = pods(&["127.0.0.2"]);
    let p = free_port();
    let mut api = FakeApi::start_new();
    api.apply(frontend_service("workshop", "myfrontend", p));
    api.apply(slice(
        "workshop",
        "myfrontend",
        pod_port,
        &[ready("127.0.0.2")],
    ));
    api.stop();
    let tmp = TempDir::new("kube-notify");
    let notify_path = tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let launch = Launch {
        env: vec![("NOTIFY_SOCKET".into(), notify_path.display().to_string())],
        ..Launch::default()
    };
    let mut n = start_node(&api, (p, p), &[], launch);
    // The API is down: no READY, no NodePort, but the process keeps trying (long enough
    // for kube's backoff, 0.8 s then 1.6 s, to retry each stream more than once).
    let until = Instant::now() + Duration::from_millis(3500);
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        if let Ok(len) = notify.recv(&mut buf) {
            panic!(
                "sd_notify before the first sync: {}",
                String::from_utf8_lossy(&buf[..len])
            );
        }
    }
    n.sluice.assert_alive();
    assert!(refused(node_addr(p)));
    assert!(n.sluice.stderr().contains("Kubernetes watch lost"));

    api.start();
    let ready_msg = wait_for("READY=1 after the API came up", SOON, || {
        let len = notify.recv(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        text.contains("READY=1").then_some(text)
    });
    assert!(ready_msg.contains("serving 1 service ports"), "{ready_msg}");
    // READY came after the first model was served: the NodePort answers now.
    assert_eq!(ask_name(node_addr(p)).unwrap(), "127.0.0.2");
    // One loss and one recovery per stream for the whole outage, however many retries
    // it took (this was logged on every retry: 8 recoveries in 6 s).
    let log = n.sluice.stderr();
    for stream in ["Service (cluster-wide)", "EndpointSlice (cluster-wide)"] {
        let lines = |what: &str| {
            log.lines()
                .filter(|l| l.contains(what) && l.contains(stream))
                .count()
        };
        assert_eq!(lines("Kubernetes watch lost"), 1, "{stream}:\n{log}");
        assert!(lines("reachable again") <= 1, "{stream}:\n{log}");
    }
}

/// `sluice run --kubernetes` with these files, which must exit with an error.
fn refused_start(kubeconfig: &std::path::Path, settings: &std::path::Path) -> Sluice {
    let mut s = Sluice::spawn(
        &[
            "run",
            "--kubernetes",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--config",
            settings.to_str().unwrap(),
        ],
        Launch::default(),
    );
    assert!(!s.wait_exit(SOON).success());
    s
}

#[test]
fn bad_startup_input_is_refused_clearly() {
    let dir = TempDir::new("kube-bad");
    let settings = dir.write(
        "node.toml",
        "listen_addresses = [\"127.0.0.1\"]\n\n[[service]]\nname = \"x\"\nnode_port = 30000\nport = 80\ntarget_port = 80\nendpoints = [\"127.0.0.2\"]\n",
    );
    let kubeconfig = dir.write("kubeconfig", "this: is: not: a kubeconfig");
    let s = refused_start(&kubeconfig, &settings);
    assert!(
        s.stderr()
            .contains("node.toml: `[[service]]` tables cannot be used with --kubernetes"),
        "{}",
        s.stderr()
    );

    let settings = dir.write("node2.toml", "listen_addresses = [\"127.0.0.1\"]\n");
    let s = refused_start(&kubeconfig, &settings);
    // Said once (it was printed twice, the second time as its own cause).
    let said = format!("kubeconfig {}", kubeconfig.display());
    assert_eq!(s.stderr().matches(&said).count(), 1, "{}", s.stderr());
    // A kubeconfig that cannot be read: the path once, without kube's doubled quotes.
    let missing = dir.path().join("missing-kubeconfig");
    let s = refused_start(&missing, &settings);
    let err = s.stderr();
    assert_eq!(err.matches("missing-kubeconfig").count(), 1, "{err}");
    assert!(err.contains("cannot read it: No such file"), "{err}");
    assert!(!err.contains("'\""), "{err}");
}

// ---------------------------------------------------------------------------------------
// Scale benchmark (not a test: `bench/k8s-scale.sh` runs it and docs/benchmarks.md has the
// numbers). Ignored by default.
// ---------------------------------------------------------------------------------------

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// `n` sequential connections (connect, one request, close) through `node`: mean wall
/// time per connection and sluice's CPU ticks per 1000 connections.
fn connection_cost(pid: u32, node: SocketAddr, n: u32) -> (Duration, f64) {
    let t0 = Instant::now();
    let c0 = cpu_ticks(pid);
    for i in 0..n {
        let mut s = connect_from(IpAddr::from([127, 0, 3, (i % 250) as u8 + 1]), node).unwrap();
        ask_name_on(&mut s).unwrap();
    }
    let wall = t0.elapsed() / n;
    let ticks = (cpu_ticks(pid) - c0) as f64 * 1000.0 / f64::from(n);
    (wall, ticks)
}

#[test]
#[ignore = "benchmark: run by bench/k8s-scale.sh"]
fn scale_services_bench() {
    let services: u16 = std::env::var("SLUICE_BENCH_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let table: u32 = std::env::var("SLUICE_BENCH_MAGLEV")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1009);
    let first_port: u16 = 20_000;
    let ips: Vec<&'static str> = (2..12)
        .map(|i| &*Box::leak(format!("127.0.0.{i}").into_boxed_str()))
        .collect();
    let (_pods, pod_port) = pods(&ips);
    let all: Vec<Pod> = ips.iter().map(|ip| ready(ip)).collect();
    let api = FakeApi::start_new();
    let node = node_addr(first_port);
    let dir = TempDir::new("kube-scale");
    let kubeconfig = dir.write("kubeconfig", &api.kubeconfig());
    let sock = dir.path().join("ctl.sock");
    let run = |n: u16| -> Sluice {
        let settings = dir.write(
            &format!("node-{n}.toml"),
            &format!(
                "listen_addresses = [\"127.0.0.1\"]\nnode_port_range = \"{first_port}-{}\"\nworkers = 1\nmaglev_table_size = {table}\ncontrol_socket = \"{}\"\n",
                first_port + services - 1,
                sock.display()
            ),
        );
        let args = [
            "run",
            "--kubernetes",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--config",
            settings.to_str().unwrap(),
        ];
        Sluice::spawn(&args, Launch::default())
    };
    let generation = || -> Option<u64> {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["ctl", "-o", "json", "--socket"])
            .arg(&sock)
            .arg("status")
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["result"]["generation"].as_u64()
    };

    // Baseline: one Service.
    api.apply(frontend_service("bench", "svc-0", first_port));
    api.apply(slice("bench", "svc-0", pod_port, &all));
    let mut one = run(1);
    one.wait_ready_name(node);
    let _ = connection_cost(one.pid(), node, 200);
    let (wall1, cpu1) = connection_cost(one.pid(), node, 3000);
    println!(
        "BENCH services=1 conn_wall_us={:.1} sluice_cpu_ticks_per_1000_conns={cpu1:.1} rss_kib={}",
        wall1.as_secs_f64() * 1e6,
        rss_kib(one.pid())
    );
    drop(one);

    // Scale: `services` Services × 10 endpoints.
    let t = Instant::now();
    api.apply_all((1..services).flat_map(|i| {
        let name = format!("svc-{i}");
        [
            frontend_service("bench", &name, first_port + i),
            slice("bench", &name, pod_port, &all),
        ]
    }));
    println!(
        "BENCH fake API filled with {} objects in {:?}",
        2 * u32::from(services),
        t.elapsed()
    );
    let t = Instant::now();
    let mut big = run(services);
    let last = node_addr(first_port + services - 1);
    big.wait_until("the last NodePort serves", || ask_name(last).is_ok());
    let startup = t.elapsed();
    let g0 = wait_for("generation", SOON, &generation);
    println!(
        "BENCH services={services} maglev={table} startup_to_last_nodeport_s={:.2} rss_kib={} generation={g0}",
        startup.as_secs_f64(),
        rss_kib(big.pid())
    );
    // Let the start-up reload (the first sync's own change event) settle.
    std::thread::sleep(Duration::from_secs(2));

    // One change (an endpoint leaves one Service): from the API event to the new snapshot.
    let mut latencies = Vec::new();
    for round in 0..5u16 {
        let g = wait_for("generation", SOON, &generation);
        let target = 1 + round * 997 % (services - 1);
        let name = format!("svc-{target}");
        let t = Instant::now();
        api.apply(slice(
            "bench",
            &name,
            pod_port,
            &all[..9 - round as usize % 2],
        ));
        wait_for(
            "the change to be published",
            Duration::from_secs(60),
            || generation().filter(|&n| n > g),
        );
        latencies.push(t.elapsed());
    }
    println!(
        "BENCH one_change_to_published_ms={:?}",
        latencies.iter().map(|l| l.as_millis()).collect::<Vec<_>>()
    );

    // A burst: every Service's slice changes (10,000 events), then how long after the last
    // API event the snapshot with all of them serves.
    let g = wait_for("generation", SOON, &generation);
    let t_burst = Instant::now();
    api.apply_all((0..services).map(|i| slice("bench", &format!("svc-{i}"), pod_port, &all[..8])));
    let after_last = Instant::now();
    let burst_write = after_last - t_burst;
    // Published when the generation stops moving and the endpoint count is the new one.
    let probe = ips[9];
    wait_for("the burst to be applied", Duration::from_secs(120), || {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["ctl", "-o", "json", "--socket"])
            .arg(&sock)
            .args(["endpoints", &format!("bench/svc-{}", services - 1)])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (!text.is_empty() && !text.contains(probe) && !text.contains(ips[8])).then_some(())
    });
    let applied = after_last.elapsed();
    println!(
        "BENCH burst events={services} write_ms={} last_event_to_served_ms={} reloads={} rss_kib={}",
        burst_write.as_millis(),
        applied.as_millis(),
        generation().unwrap_or(0) - g,
        rss_kib(big.pid())
    );

    let _ = connection_cost(big.pid(), node, 200);
    let (wall, cpu) = connection_cost(big.pid(), node, 3000);
    println!(
        "BENCH services={services} conn_wall_us={:.1} sluice_cpu_ticks_per_1000_conns={cpu:.1}",
        wall.as_secs_f64() * 1e6
    );
}
