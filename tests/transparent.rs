//! `forwarding = "transparent"` end to end, in network namespaces this test creates and
//! removes (198.18.0.0/15 only):
//!
//! ```text
//!  client ns             node ns (sluice)                      pod ns
//!  198.18.1.2 ──veth── 198.18.1.1 | 198.18.2.1 ──veth── 198.18.2.2 (nginx, default via .2.1)
//! ```
//!
//! Without the node rules the backend connect times out and sluice logs the documented hint;
//! with the rules `sluice tproxy-rules` prints (run for real inside the node namespace) the
//! pod's nginx logs the client's own address. Also: the capability check refuses `run`
//! without CAP_NET_ADMIN and only warns in `check`. Needs root (skips loudly otherwise).

mod common;

use common::peers::*;
use common::*;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

const CLIENT: &str = "198.18.1.2";
const NODE_FRONT: &str = "198.18.1.1";
const POD: &str = "198.18.2.2";
const NODE_PORT: u16 = 30000;

/// Three namespaces wired as in the module doc; deleted on drop (even when the test panics).
struct Topology {
    client: String,
    node: String,
    pod: String,
}

impl Topology {
    fn new() -> Topology {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tag = format!("sl{}-{nanos:x}", std::process::id());
        let t = Topology {
            client: format!("{tag}-c"),
            node: format!("{tag}-n"),
            pod: format!("{tag}-p"),
        };
        // Registered for removal before anything can fail.
        for ns in [&t.client, &t.node, &t.pod] {
            run_ip(&["netns", "add", ns]);
        }
        let (c, n, p) = (t.client.as_str(), t.node.as_str(), t.pod.as_str());
        run_ip(&[
            "link", "add", "c0", "netns", c, "type", "veth", "peer", "name", "n0", "netns", n,
        ]);
        run_ip(&[
            "link", "add", "n1", "netns", n, "type", "veth", "peer", "name", "p0", "netns", p,
        ]);
        let steps: &[(&str, &[&str])] = &[
            (c, &["addr", "add", "198.18.1.2/24", "dev", "c0"]),
            (n, &["addr", "add", "198.18.1.1/24", "dev", "n0"]),
            (n, &["addr", "add", "198.18.2.1/24", "dev", "n1"]),
            (p, &["addr", "add", "198.18.2.2/24", "dev", "p0"]),
            (c, &["link", "set", "c0", "up"]),
            (c, &["link", "set", "lo", "up"]),
            (n, &["link", "set", "n0", "up"]),
            (n, &["link", "set", "n1", "up"]),
            (n, &["link", "set", "lo", "up"]),
            (p, &["link", "set", "p0", "up"]),
            (p, &["link", "set", "lo", "up"]),
            (c, &["route", "add", "default", "via", "198.18.1.1"]),
            // The pod-side requirement: its default route leads back through the node.
            (p, &["route", "add", "default", "via", "198.18.2.1"]),
        ];
        for (ns, args) in steps {
            let mut all = vec!["-n", ns];
            all.extend_from_slice(args);
            run_ip(&all);
        }
        t
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.client, &self.node, &self.pod] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn config() -> String {
    format!(
        "listen_addresses = [\"{NODE_FRONT}\"]\nworkers = 1\n\
         [[service]]\nname = \"web\"\nnamespace = \"tproxy\"\nport = 80\nnode_port = {NODE_PORT}\n\
         endpoints = [\"{POD}:80\"]\nforwarding = \"transparent\"\nconnect_timeout = \"2s\"\n\
         connect_retries = 0\n"
    )
}

/// One GET from the client namespace; the response text ("" when the connection failed).
fn get_from_client(t: &Topology) -> String {
    in_netns(&t.client, || {
        let node = SocketAddr::new(NODE_FRONT.parse().unwrap(), NODE_PORT);
        let client: IpAddr = CLIENT.parse().unwrap();
        let (_, resp) = http_get_from(client, node);
        resp
    })
}

#[test]
fn transparent_pod_sees_the_client_only_with_the_node_rules() {
    if !is_root() {
        eprintln!("SKIPPED: transparent forwarding needs root (namespaces, CAP_NET_ADMIN)");
        return;
    }
    if !have(NGINX) {
        return;
    }
    let t = Topology::new();
    let nginx = in_netns(&t.pod, || {
        start_nginx(&[NginxServer {
            listen: SocketAddr::new(POD.parse().unwrap(), 80),
            proxy_protocol: false,
            log: "pod.log".into(),
        }])
    });
    let mut sluice = here_in_netns(&t.node, || Sluice::run(&config()));
    let node = SocketAddr::new(NODE_FRONT.parse().unwrap(), NODE_PORT);
    let client_ns = t.client.clone();
    sluice.wait_until("NodePort accepting from the client namespace", move || {
        in_netns(&client_ns, move || {
            std::net::TcpStream::connect_timeout(&node, Duration::from_secs(1)).is_ok()
        })
    });

    // 1. No node rules: the pod's SYN-ACK to the client's address never reaches sluice's
    //    socket, the connect times out, and sluice says what is missing.
    let resp = get_from_client(&t);
    assert!(
        !resp.starts_with("HTTP/1.1 200"),
        "answered without rules: {resp:?}"
    );
    wait_for("sluice's transparent-mode hint", SOON, || {
        let err = sluice.stderr();
        (err.contains("sluice tproxy-rules") && err.contains("docs/client-address.md"))
            .then_some(())
    });
    let hint = sluice
        .stderr()
        .lines()
        .find(|l| l.contains("sluice tproxy-rules"))
        .unwrap_or_default()
        .to_string();
    eprintln!("without rules, sluice logged: {hint}");
    assert!(
        !nginx.file("pod.log").contains("LOGGED"),
        "the pod logged a request without the rules"
    );

    // 2. The rules `sluice tproxy-rules` prints, run as printed inside the node namespace.
    let script = tproxy_rules(sluice.config_path.as_ref().unwrap());
    apply_in_netns(&t.node, &script);

    // 3. With the rules: the pod's nginx logs the client's own address.
    let resp = get_from_client(&t);
    assert!(resp.starts_with("HTTP/1.1 200"), "with rules: {resp:?}");
    let logged = wait_for("the pod to log the request", SOON, || {
        let log = nginx.file("pod.log");
        log.lines()
            .find(|l| l.starts_with("LOGGED "))
            .map(str::to_string)
    });
    eprintln!("with rules, the pod logged: {logged}");
    assert!(
        logged.starts_with(&format!("LOGGED {CLIENT} ")),
        "the pod saw {logged:?}, not the client {CLIENT}"
    );
    drop(sluice);
    drop(nginx);
    drop(t);
}

/// `run` refuses a transparent Service without CAP_NET_ADMIN, naming the capability; `check`
/// only warns. As root the capabilities are dropped with setpriv; as another user they are
/// missing anyway.
#[test]
fn transparent_without_cap_net_admin_is_refused_at_load() {
    let dir = TempDir::new("tproxy-cap");
    let path = dir.write("t.toml", &config());
    let sluice = env!("CARGO_BIN_EXE_sluice");
    let without_caps = |args: &[&str]| {
        let mut cmd = if is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--inh-caps=-net_admin,-net_raw",
                "--bounding-set=-net_admin,-net_raw",
                sluice,
            ]);
            c
        } else {
            Command::new(sluice)
        };
        cmd.args(args).arg(&path).env("NO_COLOR", "1");
        cmd.output().expect("run sluice")
    };
    let run = without_caps(&["run", "--config"]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert!(err.contains("CAP_NET_ADMIN"), "{err}");
    assert!(err.contains("forwarding = \"transparent\""), "{err}");
    eprintln!("run refused with: {}", err.trim());

    let check = without_caps(&["check", "--config"]);
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{err}");
    assert!(
        err.starts_with("warning: ") && err.contains("CAP_NET_ADMIN"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains(" transparent "));
}

#[test]
fn tproxy_rules_subcommand_prints_commands_for_both_families() {
    let dir = TempDir::new("tproxy-rules");
    let path = dir.write("t.toml", &config());
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["tproxy-rules", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("#   tproxy/web on NodePort 30000/TCP -> 198.18.2.2:80"),
        "{text}"
    );
    assert!(
        text.contains("\nip rule add fwmark 1 lookup 100\n"),
        "{text}"
    );
    assert!(
        text.contains("\nip -6 route add local ::/0 dev lo table 100\n"),
        "{text}"
    );
}
