//! The command line: `sluice check` on good and bad files, and `sluice demo` end to end.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

const GOOD: &str = r#"listen_addresses = ["127.0.0.1"]
node_port_range = "30000-30100"
workers = 2

[[service]]
name = "myfrontend"
namespace = "workshop"
port = 80
target_port = 9000
node_port = 30080
endpoints = ["127.0.0.2", "127.0.0.3:9001", { address = "127.0.0.4", port = 9000, weight = 2 }]
"#;

fn check(text: &str) -> (std::process::ExitStatus, String, String) {
    let dir = TempDir::new("check");
    let path = dir.write("cfg.toml", text);
    let mut s = Sluice::spawn(
        &["check", "--config", path.to_str().unwrap()],
        Launch::default(),
    );
    let status = s.wait_exit(SOON);
    (status, s.stdout() + &s.stderr(), path.display().to_string())
}

/// Asserts `output` holds `PATH:LINE:COL: ` for the given line (any column ≥ 1).
fn assert_located(output: &str, path: &str, line: usize) {
    let prefix = format!("{path}:{line}:");
    let at = output
        .find(&prefix)
        .unwrap_or_else(|| panic!("no `{prefix}COL:` in output:\n{output}"));
    let rest = &output[at + prefix.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let col: usize = digits
        .parse()
        .unwrap_or_else(|_| panic!("no column after `{prefix}`:\n{output}"));
    assert!(col >= 1, "column {col}");
    assert!(
        rest[digits.len()..].starts_with(':'),
        "`{prefix}{col}` not followed by `:`:\n{output}"
    );
}

/// An endpoint that is sluice's own NodePort on this node would loop every connection back
/// into sluice: `check` refuses it at the endpoint, for a listen address and, with the
/// wildcard, for any address of this node (read from its interfaces).
#[test]
fn check_refuses_an_endpoint_that_is_our_own_node_port() {
    let text = GOOD.replace("\"127.0.0.2\", ", "\"127.0.0.2\", \"127.0.0.1:30080\", ");
    let (status, out, path) = check(&text);
    assert!(!status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "{path}:11:27: endpoint 127.0.0.1:30080 is sluice's own NodePort 30080/TCP of \
             workshop/myfrontend on this node (listen address 127.0.0.1)"
        )),
        "{out}"
    );
    // Listening everywhere: every address of the node, not only loopback ones.
    let node_ip = sluice::control::node::addresses()
        .unwrap()
        .into_iter()
        .find(|ip| ip.is_ipv4() && !ip.is_loopback());
    let Some(node_ip) = node_ip else {
        eprintln!("SKIPPED the wildcard half: this node has no non-loopback IPv4 address");
        return;
    };
    let text = GOOD
        .replace("listen_addresses = [\"127.0.0.1\"]\n", "")
        .replace(
            "\"127.0.0.2\", ",
            &format!("\"127.0.0.2\", \"{node_ip}:30080\", "),
        );
    let (status, out, path) = check(&text);
    assert!(!status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "{path}:10:27: endpoint {node_ip}:30080 is sluice's own NodePort 30080/TCP of \
             workshop/myfrontend on this node (sluice serves its NodePorts on every address \
             of this node)"
        )),
        "{out}"
    );
}

/// `--workers` keeps the bound of the `workers` key (a typo must not start 100,000 threads).
#[test]
fn workers_flag_keeps_its_bound() {
    for bad in ["0", "1025", "100000", "4294967297"] {
        let mut s = Sluice::spawn(
            &["run", "--config", "/nonexistent.toml", "--workers", bad],
            Launch {
                own_driver: true,
                ..Launch::default()
            },
        );
        let status = s.wait_exit(SOON);
        assert_eq!(status.code(), Some(2), "--workers {bad}");
        assert!(
            s.stderr().contains("must be a number in 1..=1024"),
            "--workers {bad}: {}",
            s.stderr()
        );
    }
}

#[test]
fn check_accepts_a_good_file_and_prints_the_service() {
    let (status, out, _) = check(GOOD);
    assert!(
        status.success(),
        "check failed on a good file: {status}\n{out}"
    );
    assert!(
        out.contains("myfrontend"),
        "summary does not name the service:\n{out}"
    );
    assert!(
        out.contains("30080"),
        "summary does not show the NodePort:\n{out}"
    );
}

#[test]
fn check_rejects_a_type_error_with_file_line_col() {
    let bad = GOOD.replace("node_port = 30080", "node_port = \"thirty\"");
    let (status, out, path) = check(&bad);
    assert!(!status.success(), "check accepted a bad file:\n{out}");
    assert_located(&out, &path, 10);
}

#[test]
fn check_rejects_a_node_port_outside_the_range_with_file_line_col() {
    let bad = GOOD.replace("node_port = 30080", "node_port = 31000");
    let (status, out, path) = check(&bad);
    assert!(
        !status.success(),
        "check accepted NodePort 31000 outside 30000-30100:\n{out}"
    );
    assert_located(&out, &path, 10);
}

#[test]
fn check_rejects_a_syntax_error_with_file_line_col() {
    let bad = GOOD.replace("port = 80\n", "port = = 80\n");
    let (status, out, path) = check(&bad);
    assert!(!status.success(), "check accepted a syntax error:\n{out}");
    assert_located(&out, &path, 8);
}

/// `sluice demo` serves on fixed addresses (the product requires them): 127.0.0.1:30000
/// and 127.0.0.{2,3,4}:9000. To not collide with anything else on the machine (another
/// engineer's demo, an nginx on :9000), it runs in a private network namespace when it can.
#[test]
fn demo_is_answered_by_all_three_pods() {
    match in_private_netns(demo_scenario) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("NOTE: no private network namespace ({e}); running the demo on the host");
            demo_scenario();
        }
    }
}

fn demo_scenario() {
    for a in [
        "127.0.0.1:30000",
        "127.0.0.2:9000",
        "127.0.0.3:9000",
        "127.0.0.4:9000",
    ] {
        let addr: SocketAddr = a.parse().unwrap();
        if let Err(e) = TcpListener::bind(addr) {
            panic!("{a} is in use ({e}): is another `sluice demo` running on this machine?");
        }
    }
    let dir = TempDir::new("demo");
    let sock = dir.path().join("ctl.sock");
    let mut demo = Sluice::spawn(
        &["demo", "--socket", sock.to_str().unwrap()],
        Launch::default(),
    );
    let node: SocketAddr = "127.0.0.1:30000".parse().unwrap();
    let ask = move || -> std::io::Result<String> {
        let mut s = connect(node)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")?;
        read_http_body(&mut s)
    };
    demo.wait_until("demo answers on 127.0.0.1:30000", || ask().is_ok());

    let mut seen = BTreeSet::new();
    for _ in 0..300 {
        let body = ask().expect("demo request answered");
        assert!(
            body.starts_with("hello from pod-"),
            "unexpected body {body:?}"
        );
        seen.insert(body);
        if seen.len() == 3 {
            break;
        }
    }
    let seen: Vec<String> = seen.into_iter().collect();
    assert_eq!(
        seen.len(),
        3,
        "pods that answered in 300 requests: {seen:?}"
    );
    for ip in ["127.0.0.2:9000", "127.0.0.3:9000", "127.0.0.4:9000"] {
        assert!(
            seen.iter().any(|b| b.contains(ip)),
            "no answer names {ip}: {seen:?}"
        );
    }
    wait_for("the hint `curl 127.0.0.1:30000` printed", SOON, || {
        (demo.stdout() + &demo.stderr())
            .contains("curl 127.0.0.1:30000")
            .then_some(())
    });
    // The demo serves a control socket and says how to use it; the line works as printed.
    let hint = format!("sluice ctl --socket {} services", sock.display());
    wait_for("the `sluice ctl` hint printed", SOON, || {
        demo.stdout().contains(&hint).then_some(())
    });
    let out = ctl_ok(&sock, &["services"]);
    assert!(out.contains("myfrontend"), "{out}");
    let out = ctl_ok(&sock, &["status"]);
    assert!(out.contains("(built in)"), "{out}");
}

/// systemd and Kubernetes stop sluice with SIGTERM: it must exit by itself, successfully.
#[test]
fn sigterm_stops_run_cleanly() {
    let echo = EchoServer::start("127.0.0.3");
    let port = free_port();
    // SIGTERM drains: an open connection may finish for `drain_timeout`, then it is reset
    // and sluice exits 0 (tests/operations.rs covers a connection finishing in time).
    let mut lb = Sluice::run(&one_service(
        port,
        "workers = 1\ndrain_timeout = \"1s\"",
        &[ep(echo.addr)],
        "",
    ));
    lb.wait_ready_echo(node_addr(port));
    let _open = connect(node_addr(port)).unwrap(); // an open connection must not block exit past the drain
                                                   // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
    assert_eq!(
        unsafe { libc::kill(lb.pid() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let status = lb.wait_exit(SOON);
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        lb.stderr_tail(20)
    );
}

/// `sluice tproxy-rules --manifests DIR` names the Services that forward transparently
/// (externalTrafficPolicy: Local, by default) and only those.
#[test]
fn tproxy_rules_read_manifests() {
    let dir = TempDir::new("tproxy-manifests");
    dir.write(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: edge\n  namespace: shop\nspec:\n  \
         type: NodePort\n  externalTrafficPolicy: Local\n  ports:\n  - name: http\n    port: 80\n    \
         targetPort: 8080\n    nodePort: 31080\n---\napiVersion: v1\nkind: Service\nmetadata:\n  \
         name: plain\n  namespace: shop\nspec:\n  type: NodePort\n  ports:\n  - port: 80\n    \
         targetPort: 8080\n    nodePort: 31081\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["tproxy-rules", "--manifests"])
        .arg(dir.path())
        .env_remove("NODE_NAME")
        .output()
        .expect("run sluice tproxy-rules");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("shop/edge:http on NodePort 31080/TCP"),
        "{stdout}"
    );
    assert!(!stdout.contains("shop/plain"), "{stdout}");
    assert!(
        stdout.contains("socket transparent 1 meta mark set 0x1"),
        "{stdout}"
    );
}

/// `--log-format`: text lines by default (timestamp, level, target, message, fields), JSON
/// objects with `json`; under journald (JOURNAL_STREAM naming stderr) text lines start with
/// the syslog priority and carry no timestamp of their own.
#[test]
fn log_formats_text_json_and_journald() {
    for (format, journald) in [
        ("text", false),
        ("text", true),
        ("json", false),
        ("json", true),
    ] {
        let dir = TempDir::new("logs");
        let config = dir.write("s.toml", &one_service(free_port(), "", &[], ""));
        let mut s = Sluice::spawn(
            &[
                "run",
                "--log-format",
                format,
                "--config",
                config.to_str().unwrap(),
            ],
            Launch {
                journal_stream: journald,
                ..Launch::default()
            },
        );
        let line = wait_for("the serving line", SOON, || {
            s.stderr()
                .lines()
                .find(|l| l.contains("sluice is serving"))
                .map(str::to_owned)
        });
        let what = format!("{format}, journald {journald}: {line}");
        match (format, journald) {
            ("text", false) => {
                assert!(line.starts_with("20"), "{what}");
                assert!(
                    line.contains(" INFO sluice::control::daemon: sluice is serving workers="),
                    "{what}"
                );
            }
            ("text", true) => {
                assert!(
                    line.starts_with(
                        "<6> INFO sluice::control::daemon: sluice is serving workers="
                    ),
                    "{what}"
                );
            }
            _ => {
                let v: serde_json::Value = serde_json::from_str(&line).expect(&what);
                assert_eq!(v["message"], "sluice is serving", "{what}");
                assert_eq!(v["level"], "INFO", "{what}");
                assert!(v["workers"].is_number(), "{what}");
                assert_eq!(v.get("timestamp").is_some(), !journald, "{what}");
                // Every line is JSON.
                for l in s.stderr().lines() {
                    serde_json::from_str::<serde_json::Value>(l).expect(l);
                }
            }
        }
        s.assert_alive();
    }
}

/// `sluice completions SHELL` prints a script for that shell; `sluice man DIR` writes one
/// page per command.
#[test]
fn completions_and_man_pages() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef sluice"),
        ("fish", "complete -c sluice"),
    ] {
        let mut s = Sluice::spawn(&["completions", shell], Launch::default());
        assert!(s.wait_exit(SOON).success(), "{shell}: {}", s.stderr());
        let out = s.stdout();
        assert!(out.contains(marker), "{shell}: no {marker:?}");
        assert!(
            out.contains("endpoints") && out.contains("log-format"),
            "{shell}: subcommands and flags"
        );
    }
    let dir = TempDir::new("man");
    let out = dir.path().join("man1");
    let mut s = Sluice::spawn(&["man", out.to_str().unwrap()], Launch::default());
    assert!(s.wait_exit(SOON).success(), "{}", s.stderr());
    for page in [
        "sluice.1",
        "sluice-run.1",
        "sluice-check.1",
        "sluice-ctl.1",
        "sluice-ctl-endpoint-drain.1",
    ] {
        let text =
            std::fs::read_to_string(out.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: not a man page"
        );
    }
    let run = std::fs::read_to_string(out.join("sluice-run.1")).unwrap();
    assert!(
        run.contains("kubernetes") && run.contains("log\\-format"),
        "{run}"
    );
}

/// A start-up error is said once: "Address already in use" was printed twice (the error,
/// then the same cause again as its own line of the chain).
#[test]
fn a_start_error_names_its_cause_once() {
    // Bound, not listening: sluice's bind fails (a listener would be named as another
    // process serving the NodePort, before any bind).
    let taken = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    taken
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = taken.local_addr().unwrap().as_socket().unwrap().port();
    let dir = TempDir::new("cli-inuse");
    let cfg = dir.write(
        "cfg.toml",
        &format!(
            "listen_addresses = [\"127.0.0.1\"]\nnode_port_range = \"{port}-{port}\"\nworkers = 1\ncontrol_socket = \"{}\"\n\n[[service]]\nname = \"a\"\nport = 80\ntarget_port = 80\nnode_port = {port}\nendpoints = [\"127.0.0.2\"]\n",
            dir.path().join("ctl.sock").display()
        ),
    );
    let mut s = Sluice::spawn(
        &["run", "--config", cfg.to_str().unwrap()],
        Launch::default(),
    );
    assert!(!s.wait_exit(SOON).success());
    let err = s.stderr();
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
    drop(taken);
}
