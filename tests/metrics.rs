//! `/metrics` as Prometheus scrapes it: the `process_*` family, the per-Service connect
//! latency and connection duration histograms, the sync-duration histogram, the worker
//! heartbeat counter, and the format chosen by the `Accept` header — both formats parsed
//! by the Prometheus Python client's own parsers.

mod common;
use common::scrape::{sample, sample_names, scrape};
use common::*;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A sluice with one Service `itest/svc` and `metrics_address`.
struct Node {
    sluice: Sluice,
    node: SocketAddr,
    metrics: SocketAddr,
    sock: PathBuf,
    _dir: TempDir,
    _backend: Backend,
}

fn start() -> Node {
    let backend = NameServer::start("127.0.0.2", "a");
    let port = free_port();
    let dir = TempDir::new("metrics");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let sock = dir.path().join("ctl.sock");
    let top = format!(
        "workers = 2\ncontrol_socket = \"{}\"\nmetrics_address = \"{metrics}\"",
        sock.display()
    );
    let mut sluice = Sluice::run(&one_service(port, &top, &[ep(backend.addr)], ""));
    let node = node_addr(port);
    sluice.wait_ready_name(node);
    Node {
        sluice,
        node,
        metrics,
        sock,
        _dir: dir,
        _backend: backend,
    }
}

const SVC: &str = "{namespace=\"itest\",service=\"svc\",port_name=\"\",protocol=\"TCP\"";

/// After N requests: each histogram counted N (or more: the readiness probe) observations
/// into cumulative buckets ending at +Inf; the process figures are this process's; the
/// heartbeat is a counter that advances between scrapes.
#[test]
fn process_metrics_histograms_and_the_heartbeat_counter() {
    let mut n = start();
    let (_, before) = scrape(n.metrics, None);
    let opened_before = sample(&before, "sluice_service_connections_total{").unwrap();
    for _ in 0..20 {
        ask_name(n.node).unwrap();
    }
    // Every connection closed (its duration is observed when it ends).
    n.sluice.wait_until("20 connections counted closed", || {
        let (_, body) = scrape(n.metrics, None);
        sample(&body, "sluice_service_connections_active{") == Some(0.0)
            && sample(&body, "sluice_service_connections_total{") >= Some(opened_before + 20.0)
    });
    let (_, body) = scrape(n.metrics, None);
    let opened = sample(&body, "sluice_service_connections_total{").unwrap();
    for family in [
        "sluice_service_backend_connect_duration_seconds",
        "sluice_service_connection_duration_seconds",
    ] {
        let count = sample(&body, &format!("{family}_count{SVC}")).unwrap();
        assert_eq!(
            count, opened,
            "{family}: one observation per connection\n{body}"
        );
        let inf = sample(
            &body,
            &format!("{family}_bucket{{le=\"+Inf\",namespace=\"itest\""),
        )
        .unwrap();
        assert_eq!(inf, count, "{family}: +Inf bucket = count");
        let sum = sample(&body, &format!("{family}_sum{SVC}")).unwrap();
        assert!(sum > 0.0 && sum < count * 10.0, "{family}_sum {sum}");
        // Cumulative buckets never go down.
        let buckets: Vec<f64> = body
            .lines()
            .filter(|l| l.starts_with(&format!("{family}_bucket{{")))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(buckets.len() >= 15, "{family}: {buckets:?}");
        assert!(
            buckets.windows(2).all(|w| w[0] <= w[1]),
            "{family}: {buckets:?}"
        );
    }
    // Loopback connects take well under a second: all in the buckets up to 1 s.
    let within_1s = sample(
        &body,
        "sluice_service_backend_connect_duration_seconds_bucket{le=\"1.0\",namespace=\"itest\"",
    )
    .unwrap();
    assert_eq!(within_1s, opened);

    // process_*: this sluice's own figures.
    let pid = n.sluice.pid();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as f64;
    let open_fds = sample(&body, "process_open_fds ").unwrap();
    assert!(
        (open_fds - fds).abs() <= 8.0,
        "process_open_fds {open_fds}, /proc says {fds}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let max: f64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap();
    assert_eq!(sample(&body, "process_max_fds ").unwrap(), max);
    let rss = sample(&body, "process_resident_memory_bytes ").unwrap();
    assert!(rss > 1e6 && rss < 4e9, "rss {rss}");
    assert!(sample(&body, "process_virtual_memory_bytes ").unwrap() >= rss);
    assert!(sample(&body, "process_cpu_seconds_total ").unwrap() >= 0.0);
    let start = sample(&body, "process_start_time_seconds ").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        start <= now && now - start < 600.0,
        "started {start}, now {now}"
    );

    // The heartbeat is a counter: typed so, and it advances.
    assert!(
        body.contains("# TYPE sluice_worker_heartbeat_total counter\n"),
        "{body}"
    );
    let beat = |body: &str| sample(body, "sluice_worker_heartbeat_total{worker=\"0\"}").unwrap();
    let first = beat(&body);
    n.sluice.wait_until("worker 0's heartbeat advances", || {
        beat(&scrape(n.metrics, None).1) > first
    });
}

/// Every publish — the start, each reload, a republish after an operator's override — is
/// one observation of the sync-duration histogram (kube-proxy's buckets).
#[test]
fn sync_duration_histogram_counts_every_publish() {
    let n = start();
    let count = || {
        sample(
            &scrape(n.metrics, None).1,
            "sluice_sync_proxy_rules_duration_seconds_count",
        )
        .unwrap()
    };
    assert_eq!(count(), 1.0, "the first sync at start");
    ctl_ok(&n.sock, &["reload"]);
    ctl_ok(&n.sock, &["reload"]);
    assert_eq!(count(), 3.0);
    let ep = n._backend.addr.to_string();
    ctl_ok(&n.sock, &["endpoint", "drain", "itest/svc", &ep]);
    assert_eq!(count(), 4.0);
    let (_, body) = scrape(n.metrics, None);
    for le in ["0.001", "0.002", "1.024", "16.384", "+Inf"] {
        let prefix = format!("sluice_sync_proxy_rules_duration_seconds_bucket{{le=\"{le}\"}}");
        assert!(body.contains(&prefix), "{prefix} missing:\n{body}");
    }
    assert_eq!(
        sample(
            &body,
            "sluice_sync_proxy_rules_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        Some(4.0)
    );
}

/// Runs the Prometheus Python client's parser for `format` on `body`: the sample names.
fn python_parse(format: &str, body: &str) -> Option<Vec<String>> {
    let python = "/usr/bin/python3";
    let check = Command::new(python)
        .args(["-c", "import prometheus_client"])
        .status()
        .ok()?;
    if !check.success() {
        eprintln!(
            "SKIPPED: the Prometheus Python client's parsers (Debian python3-prometheus-client; tests/run-all.sh installs it)"
        );
        return None;
    }
    let script = match format {
        "openmetrics" => "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nfor f in p(sys.stdin.read()):\n  for s in f.samples: print(s.name)\n",
        _ => "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nfor f in p(sys.stdin.read()):\n  for s in f.samples: print(s.name)\n",
    };
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the {format} parser rejected the exposition: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect(),
    )
}

/// The format follows the `Accept` header as with the Prometheus Go client: OpenMetrics
/// when the scraper ranks it first (what Prometheus sends), the 0.0.4 text otherwise; both
/// carry the same samples, and each passes its format's parser.
#[test]
fn accept_header_chooses_the_format() {
    let mut n = start();
    ask_name(n.node).unwrap();
    // Closed and counted: the duration histogram's series exists from here on.
    let m = n.metrics;
    n.sluice
        .wait_until("the connections' durations observed", || {
            let (_, body) = scrape(m, None);
            sample(&body, "sluice_service_connections_active{") == Some(0.0)
                && sample(&body, "sluice_service_connection_duration_seconds_count{").is_some()
        });
    let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    let (om_type, om) = scrape(n.metrics, Some(prometheus));
    assert_eq!(
        om_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(om.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    assert!(om.contains("# TYPE sluice_reloads counter\n"), "{om}");

    for accept in [
        None,
        Some("text/plain"),
        Some("*/*"),
        Some("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5"),
    ] {
        let (ty, text) = scrape(n.metrics, accept);
        assert_eq!(
            ty, "text/plain; version=0.0.4; charset=utf-8",
            "Accept {accept:?}"
        );
        assert!(!text.contains("# EOF"), "Accept {accept:?}");
        assert!(
            text.contains("# TYPE sluice_reloads_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# HELP sluice_reloads_total "), "{text}");
    }
    let (_, text) = scrape(n.metrics, None);
    // The same samples in both (values move between scrapes; names do not).
    assert_eq!(sample_names(&text), sample_names(&om));

    if let (Some(from_om), Some(from_text)) = (
        python_parse("openmetrics", &om),
        python_parse("text", &text),
    ) {
        for want in [
            "sluice_service_connections_total",
            "sluice_service_backend_connect_duration_seconds_bucket",
            "process_cpu_seconds_total",
            "sluice_worker_heartbeat_total",
        ] {
            assert!(
                from_om.iter().any(|s| s == want),
                "OpenMetrics parser: no {want}"
            );
            assert!(
                from_text.iter().any(|s| s == want),
                "text parser: no {want}"
            );
        }
    }
}
