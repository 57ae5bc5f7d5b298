//! Helpers for the `--kubernetes` tests (tests/kubernetes.rs, tests/kubernetes_fidelity.rs):
//! the seeds' objects as the API returns them (tests/fixtures/api/), EndpointSlices with
//! chosen pods, name-server pods, and `sluice run --kubernetes` against a [`FakeApi`].

use super::fake_api::FakeApi;
use super::*;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------------------

pub fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/api")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// The seed's `myfrontend` Service (real API JSON) as `namespace/name` on `node_port`.
pub fn frontend_service(namespace: &str, name: &str, node_port: u16) -> Value {
    let mut s = fixture("myfrontend-service.json");
    s["metadata"]["namespace"] = json!(namespace);
    s["metadata"]["name"] = json!(name);
    s["metadata"]["labels"]["app"] = json!(name);
    s["spec"]["ports"][0]["nodePort"] = json!(node_port);
    s
}

/// A pod in a slice: address and conditions.
#[derive(Clone, Copy)]
pub struct Pod {
    pub ip: &'static str,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

pub fn ready(ip: &'static str) -> Pod {
    Pod {
        ip,
        ready: true,
        serving: true,
        terminating: false,
    }
}

/// A pod being deleted that still passes its readiness probe (kube: ready false,
/// serving true, terminating true).
pub fn terminating(ip: &'static str) -> Pod {
    Pod {
        ip,
        ready: false,
        serving: true,
        terminating: true,
    }
}

/// The controller's EndpointSlice for Service `namespace/service` with `pods` on `port`.
/// A fake API server holding the seed's `workshop/myfrontend` Service on `node_port` and
/// one EndpointSlice with `pods` on `pod_port`.
pub fn frontend_api(node_port: u16, pod_port: u16, pods: &[Pod]) -> FakeApi {
    let api = FakeApi::start_new();
    api.apply(frontend_service("workshop", "myfrontend", node_port));
    api.apply(slice("workshop", "myfrontend", pod_port, pods));
    api
}

pub fn slice(namespace: &str, service: &str, port: u16, pods: &[Pod]) -> Value {
    let mut s = fixture("myfrontend-slice.json");
    let template = s["endpoints"][0].clone();
    s["metadata"]["namespace"] = json!(namespace);
    s["metadata"]["name"] = json!(format!("{service}-x7k2p"));
    s["metadata"]["generateName"] = json!(format!("{service}-"));
    s["metadata"]["labels"]["app"] = json!(service);
    s["metadata"]["labels"]["kubernetes.io/service-name"] = json!(service);
    s["metadata"]["ownerReferences"][0]["name"] = json!(service);
    s["ports"][0]["port"] = json!(port);
    s["endpoints"] = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut e = template.clone();
            e["addresses"] = json!([p.ip]);
            e["conditions"] = json!({
                "ready": p.ready, "serving": p.serving, "terminating": p.terminating
            });
            e["targetRef"]["namespace"] = json!(namespace);
            e["targetRef"]["name"] = json!(format!("{service}-695f9f586f-{i}"));
            e["targetRef"]["uid"] = json!(format!("0f6d5b0c-1c7e-4a43-9a8f-{i:012}"));
            e
        })
        .collect();
    s
}

/// Name servers on `ips`, all on one port (pods of a Deployment share their container
/// port); returns them and the port.
pub fn pods(ips: &[&'static str]) -> (Vec<Backend>, u16) {
    for _ in 0..50 {
        let first = NameServer::start(ips[0], ips[0]);
        let port = first.addr.port();
        let mut all = vec![first];
        for ip in &ips[1..] {
            match NameServer::try_start_at(SocketAddr::new(ip.parse().unwrap(), port), ip) {
                Ok(b) => all.push(b),
                Err(_) => break,
            }
        }
        if all.len() == ips.len() {
            return (all, port);
        }
    }
    panic!("no common free port for {ips:?}");
}

// ---------------------------------------------------------------------------------------
// sluice
// ---------------------------------------------------------------------------------------

pub struct Node {
    pub sluice: Sluice,
    pub sock: PathBuf,
    pub metrics: SocketAddr,
    _dir: TempDir,
}

/// `sluice run --kubernetes` against `api`, serving on 127.0.0.1 NodePorts in `range`.
pub fn start_node(api: &FakeApi, range: (u16, u16), extra: &[&str], launch: Launch) -> Node {
    start_node_on(api, range, "\"127.0.0.1\"", extra, launch)
}

/// [`start_node`] serving on `listen` (TOML array items, e.g. `"127.0.0.1", "::1"`).
pub fn start_node_on(
    api: &FakeApi,
    range: (u16, u16),
    listen: &str,
    extra: &[&str],
    launch: Launch,
) -> Node {
    let dir = TempDir::new("kube");
    let kubeconfig = dir.write("kubeconfig", &api.kubeconfig());
    let sock = dir.path().join("ctl.sock");
    let mport = free_port();
    let settings = dir.write(
        "node.toml",
        &format!(
            "listen_addresses = [{listen}]\nnode_port_range = \"{}-{}\"\nworkers = 2\ncontrol_socket = \"{}\"\nmetrics_address = \"127.0.0.1:{mport}\"\n",
            range.0.min(range.1),
            range.0.max(range.1),
            sock.display()
        ),
    );
    let mut args = vec![
        "run".to_owned(),
        "--kubernetes".to_owned(),
        "--kubeconfig".to_owned(),
        kubeconfig.display().to_string(),
        "--config".to_owned(),
        settings.display().to_string(),
        "--node-name".to_owned(),
        "node-a".to_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Node {
        sluice: Sluice::spawn(&args, launch),
        sock,
        metrics: SocketAddr::from(([127, 0, 0, 1], mport)),
        _dir: dir,
    }
}

impl Node {
    pub fn ctl_json(&self, args: &[&str]) -> Option<Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("ctl")
            .arg("--socket")
            .arg(&self.sock)
            .arg("-o")
            .arg("json")
            .args(args)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn generation(&self) -> u64 {
        let v = self.ctl_json(&["status"]).expect("ctl status");
        v["result"]["generation"]
            .as_u64()
            .unwrap_or_else(|| panic!("{v}"))
    }

    pub fn metrics(&self) -> String {
        metrics_at(self.metrics)
    }

    pub fn metric(&self, prefix: &str) -> Option<f64> {
        metric_at(self.metrics, prefix)
    }

    pub fn lists(&self, kind: &str) -> u64 {
        lists_at(self.metrics, kind)
    }
}

pub fn metrics_at(addr: SocketAddr) -> String {
    let mut s = connect(addr).expect("connect metrics");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// The value of the first metric line starting with `prefix`.
pub fn metric_at(addr: SocketAddr, prefix: &str) -> Option<f64> {
    metrics_at(addr)
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Completed lists of one stream (`Service` / `EndpointSlice`), cluster-wide.
pub fn lists_at(addr: SocketAddr, kind: &str) -> u64 {
    metric_at(
        addr,
        &format!("sluice_kubernetes_watch_lists_total{{kind=\"{kind}\",namespace=\"\"}}"),
    )
    .unwrap_or(0.0) as u64
}

/// The pods answering through `node` from distinct client addresses (127.0.1.x), `n` asks.
pub fn answers(node: SocketAddr, n: u8) -> std::collections::BTreeSet<String> {
    (1..=n)
        .filter_map(|i| {
            let mut s = connect_from(IpAddr::from([127, 0, 1, i]), node).ok()?;
            ask_name_on(&mut s).ok()
        })
        .collect()
}

pub fn wait_answers(n: &mut Node, node: SocketAddr, want: &[&str]) {
    wait_answers_within(n, node, want, SOON)
}

/// [`wait_answers`] with its own patience: after an API outage the watch retries with
/// kube's default backoff (0.8 s doubling to 30 s, jittered, counted across the failed
/// connects and the `410 Gone` that follows), so the relist can come up to ~30 s late.
pub fn wait_answers_within(n: &mut Node, node: SocketAddr, want: &[&str], within: Duration) {
    let want: std::collections::BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let mut last = Default::default();
    let start = Instant::now();
    while start.elapsed() < within {
        n.sluice.assert_alive();
        last = answers(node, 24);
        if last == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "through {node}: wanted {want:?}, got {last:?}\n--- sluice stderr ---\n{}",
        n.sluice.stderr_tail(40)
    );
}

pub fn refused(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}
