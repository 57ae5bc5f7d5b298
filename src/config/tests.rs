//! Tests of the TOML configuration: parsing, errors with their places, and the vocabulary
//! (`every_*_name_parses_back`).

use super::*;
use crate::model::*;
use std::net::SocketAddr;
use std::time::Duration;

const HAPPY: &str = r#"
[[service]]
name = "myfrontend"
namespace = "workshop"
node_port = 30000
port = 80
target_port = 9000
endpoints = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
"#;

fn ep(addr: &str, weight: u32) -> Endpoint {
    Endpoint::new(addr.parse::<SocketAddr>().unwrap()).with_weight(weight)
}

#[test]
fn happy_config_from_the_brief() {
    let model = parse(HAPPY, "happy.toml", None).unwrap();
    assert_eq!(model.settings, Settings::default());
    // Measured default (docs/benchmarks.md, issue 18): workers are not pinned.
    assert!(!model.settings.pin_workers);
    assert_eq!(
        model.services,
        vec![ServicePort {
            key: ServicePortKey {
                service: ServiceName {
                    namespace: "workshop".into(),
                    name: "myfrontend".into(),
                },
                port_name: String::new(),
                protocol: Protocol::Tcp,
            },
            port: 80,
            node_port: 30000,
            node_port_allocated: false,
            target_port: 9000,
            endpoints: vec![
                ep("127.0.0.2:9000", 1),
                ep("127.0.0.3:9000", 1),
                ep("127.0.0.4:9000", 1),
            ],
            policy: Policy::Maglev {
                key: HashKey::ClientIpPort,
            },
            timeouts: Timeouts::default(),
            connect_retries: 2,
            maglev_table_size: DEFAULT_MAGLEV_TABLE_SIZE,
            forwarding: Default::default(),
            udp_responses: None,
            traffic_policy: Default::default(),
            families: Default::default(),
            health: Default::default(),
            meta: None,
            addresses: Default::default(),
        }]
    );
}

#[test]
fn every_key_set() {
    let text = r#"
workers = 3
pin_workers = true
listen_addresses = ["10.0.0.1", "::1"]
node_port_range = "20000-20999"
max_connections_per_worker = 100
relay = "copy"
backlog = 128
connect_timeout = "500ms"
idle_timeout = "10m"
connect_retries = 1
maglev_table_size = 1009

[[service]]
name = "web"
port_name = "http"
protocol = "TCP"
port = 8080
node_port = 20001
endpoints = [
  "10.1.0.2",
  "10.1.0.1:81",
  "[fd00::1]:82",
  { address = "fd00::2", port = 83, weight = 0 },
  { address = "10.1.0.3", weight = 5 },
]
policy = "maglev"
hash_key = "client-ip"
connect_timeout = "1s"
connect_retries = 0
maglev_table_size = 65537

[[service]]
name = "web"
port_name = "admin"
port = 9090
target_port = 9091
idle_timeout = "1h 30m"
endpoints = []
"#;
    let model = parse(text, "all.toml", None).unwrap();
    let s = &model.settings;
    assert_eq!(s.workers, Some(3));
    assert!(s.pin_workers);
    assert_eq!(
        s.listen,
        ListenAddresses::Only(vec!["10.0.0.1".parse().unwrap(), "::1".parse().unwrap()])
    );
    assert_eq!(
        s.node_port_range,
        NodePortRange {
            first: 20000,
            last: 20999
        }
    );
    assert_eq!(s.max_connections_per_worker, 100);
    assert_eq!(s.relay, RelayMode::Copy);
    assert_eq!(s.backlog, 128);
    assert_eq!(s.defaults.timeouts.connect, Duration::from_millis(500));
    assert_eq!(s.defaults.timeouts.idle, Duration::from_secs(600));
    assert_eq!(s.defaults.connect_retries, 1);
    assert_eq!(s.defaults.maglev_table_size, 1009);

    // Sorted by port name: "admin" before "http".
    let [admin, http] = &model.services[..] else {
        panic!("two service ports expected, got {:?}", model.services)
    };
    assert_eq!(admin.key.port_name, "admin");
    assert_eq!(admin.key.service.namespace, "default");
    assert_eq!(admin.target_port, 9091);
    assert!(admin.endpoints.is_empty());
    assert!(admin.node_port_allocated);
    assert!((20000..=20999).contains(&admin.node_port));
    assert_eq!(admin.timeouts.connect, Duration::from_millis(500));
    assert_eq!(admin.timeouts.idle, Duration::from_secs(5400));
    assert_eq!(admin.connect_retries, 1);
    assert_eq!(admin.maglev_table_size, 1009);

    assert_eq!(http.node_port, 20001);
    assert!(!http.node_port_allocated);
    assert_eq!(http.target_port, 8080);
    assert_eq!(
        http.policy,
        Policy::Maglev {
            key: HashKey::ClientIp
        }
    );
    assert_eq!(http.timeouts.connect, Duration::from_secs(1));
    assert_eq!(http.timeouts.idle, Duration::from_secs(600));
    assert_eq!(http.connect_retries, 0);
    assert_eq!(http.maglev_table_size, 65537);
    assert_eq!(
        http.endpoints,
        vec![
            ep("10.1.0.1:81", 1),
            ep("10.1.0.2:8080", 1),
            ep("10.1.0.3:8080", 5),
            ep("[fd00::1]:82", 1),
            ep("[fd00::2]:83", 0),
        ]
    );
}

#[test]
fn every_toml_example_in_the_docs_parses() {
    let doc = include_str!("../../docs/configuration.md");
    let mut blocks = 0;
    for (i, chunk) in doc.split("```toml\n").enumerate().skip(1) {
        let block = chunk.split("```").next().unwrap();
        if let Err(e) = parse(block, &format!("docs block {i}"), None) {
            panic!("{e}\n{block}");
        }
        blocks += 1;
    }
    assert!(blocks >= 3, "only {blocks} toml blocks found");
}

#[test]
fn same_file_same_ports_and_reload_keeps_them() {
    let two = "[[service]]\nname = \"b\"\nport = 80\n[[service]]\nname = \"c\"\nport = 80\n";
    let first = parse(two, "r.toml", None).unwrap();
    assert_eq!(first, parse(two, "r.toml", None).unwrap());
    let ports: Vec<u16> = first.services.iter().map(|s| s.node_port).collect();

    // Reload: a new Service that sorts first asks explicitly for c's port, and another
    // one needs a port. b keeps its port; c must move (explicit ports win), d is new.
    let taken = ports[1];
    let more = format!(
        "[[service]]\nname = \"a\"\nport = 80\nnode_port = {taken}\n{two}\
         [[service]]\nname = \"d\"\nport = 80\n"
    );
    let second = parse(&more, "r.toml", Some(&first)).unwrap();
    let by_name = |m: &Model, n: &str| {
        m.services
            .iter()
            .find(|s| s.key.service.name == n)
            .map(|s| (s.node_port, s.node_port_allocated))
            .unwrap()
    };
    assert_eq!(by_name(&second, "a"), (taken, false));
    assert_eq!(by_name(&second, "b"), (ports[0], true));
    assert_ne!(by_name(&second, "c").0, taken);

    // Removing an explicit node_port keeps the port the running model serves it on.
    let without = more.replace(&format!("node_port = {taken}\n"), "");
    let third = parse(&without, "r.toml", Some(&second)).unwrap();
    assert_eq!(by_name(&third, "a"), (taken, true));
    for n in ["b", "c", "d"] {
        assert_eq!(by_name(&third, n).0, by_name(&second, n).0, "{n} moved");
    }
}

#[test]
fn node_wide_key_after_a_service_gets_a_hint() {
    let e = parse(
        "[[service]]\nname = \"a\"\nport = 80\nworkers = 2\n",
        "h.toml",
        None,
    )
    .unwrap_err();
    assert_eq!((e.line, e.column), (4, 1));
    assert!(
        e.message.contains("must come before the first [[service]]"),
        "{e}"
    );
}

#[test]
fn both_wildcards_may_be_listed() {
    let m = parse("listen_addresses = [\"0.0.0.0\", \"::\"]\n", "w.toml", None).unwrap();
    assert_eq!(
        m.settings.listen,
        ListenAddresses::Only(vec!["0.0.0.0".parse().unwrap(), "::".parse().unwrap()])
    );
}

#[test]
fn forwarding_keys() {
    let text = r#"
forwarding = "proxy-v1"

[[service]]
name = "a"
port = 80

[[service]]
name = "b"
port = 80
forwarding = "proxy-v2"
proxy_unique_id = true
proxy_tlvs = [{ type = 0xE0, value = "workshop/myfrontend" }, { type = 0xEF, value = "" }]

[[service]]
name = "c"
port = 80
forwarding = "transparent"

[[service]]
name = "d"
port = 80
forwarding = "none"
"#;
    let model = parse(text, "f.toml", None).unwrap();
    let f: Vec<&Forwarding> = model.services.iter().map(|s| &s.forwarding).collect();
    assert_eq!(
        f,
        [
            &Forwarding::ProxyV1,
            &Forwarding::ProxyV2(ProxyV2Options {
                unique_id: true,
                tlvs: vec![(0xE0, b"workshop/myfrontend".to_vec()), (0xEF, Vec::new())],
            }),
            &Forwarding::Transparent,
            &Forwarding::None,
        ]
    );
    let shown = render_check(&model);
    assert!(shown.contains("FORWARDING"), "{shown}");
    assert!(shown.contains(" proxy-v2(unique-id,0xE0,0xEF) "), "{shown}");
    assert!(shown.contains(" transparent "), "{shown}");
    assert!(shown.contains(" proxy-v1 "), "{shown}");
}

#[test]
fn empty_file_is_a_valid_empty_model() {
    let model = parse("", "empty.toml", None).unwrap();
    assert_eq!(model.settings, Settings::default());
    assert!(model.services.is_empty());
}

#[test]
fn error_display_has_file_line_column() {
    let e = parse("workers = 2\nbogus = 1\n", "x.toml", None).unwrap_err();
    assert_eq!((e.line, e.column), (2, 1));
    let shown = e.to_string();
    assert!(
        shown.starts_with("x.toml:2:1: unknown key `bogus` at the top level"),
        "{shown}"
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    let e = parse(
        "# é\n[[service]]\nname = \"é\"\nport = 80\n",
        "u.toml",
        None,
    )
    .unwrap_err();
    assert_eq!((e.line, e.column), (3, 8), "{e}");
}

#[test]
fn unreadable_file_has_no_position() {
    let path = Path::new("/nonexistent/sluice/config.toml");
    let e = load_file(path, None).unwrap_err();
    assert_eq!((e.line, e.column), (0, 0));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/sluice/config.toml: "),
        "{e}"
    );
}

#[test]
fn wrong_type_names_the_key() {
    let e = parse("[[service]]\nname = \"a\"\nport = \"80\"\n", "t.toml", None).unwrap_err();
    assert_eq!((e.line, e.column), (3, 8));
    assert_eq!(
        e.message,
        "`port`: invalid type: string \"80\", expected an integer"
    );
}

#[test]
fn render_check_of_the_happy_config() {
    let text = format!(
        "{HAPPY}\n[[service]]\nname = \"helloworld\"\nport = 8080\nendpoints = [{{ address = \"10.0.0.9\", weight = 0 }}]\n"
    );
    let model = parse(&text, "happy.toml", None).unwrap();
    let shown = render_check(&model);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(
        lines[0],
        "config OK: 2 service ports, 4 endpoints, served on all addresses (IPv4 and IPv6)"
    );
    assert!(lines[1].contains("workers: one per online CPU"), "{shown}");
    assert!(lines[1].contains("relay: auto"), "{shown}");
    assert!(lines[1].contains("node-port range: 30000-32767"), "{shown}");
    assert!(
        lines[2].starts_with("service defaults: connect timeout 3s"),
        "{shown}"
    );
    assert!(lines[3].starts_with("SERVICE"), "{shown}");
    assert!(lines[4].starts_with("default/helloworld"), "{shown}");
    assert!(lines[4].contains("(allocated)"), "{shown}");
    assert!(lines[4].contains("10.0.0.9:8080 (weight 0)"), "{shown}");
    assert!(lines[5].starts_with("workshop/myfrontend"), "{shown}");
    assert!(
        lines[5].contains("30000/TCP ") && !lines[5].contains("allocated"),
        "{shown}"
    );
    assert_eq!(lines.len(), 6, "{shown}");
    let text = text.replace("port = 8080", "port = 8080\nidle_timeout = \"30s\"");
    let shown = render_check(&parse(&text, "happy.toml", None).unwrap());
    assert!(
        shown.ends_with("\ndefault/helloworld sets its own: idle timeout 30s\n"),
        "{shown}"
    );
    assert!(
        lines[5].ends_with("127.0.0.2:9000, 127.0.0.3:9000, 127.0.0.4:9000"),
        "{shown}"
    );
}

/// `check` shows the endpoints as routing uses them: conditions and the traffic policy
/// decide which take new connections (the same function as the data plane's snapshot).
#[test]
fn render_check_endpoints_follow_conditions_and_traffic_policy() {
    use crate::model::{Conditions, TrafficPolicy};
    let text = "[[service]]\nname = \"web\"\nport = 80\nnode_port = 30080\n\
                endpoints = [\"10.0.0.1\", \"10.0.0.2\", \"10.0.0.3\"]\n";
    let mut model = parse(text, "t.toml", None).unwrap();
    let row = |m: &Model| render_check(m).lines().nth(4).unwrap().to_owned();
    assert!(
        row(&model).ends_with("10.0.0.1:80, 10.0.0.2:80, 10.0.0.3:80"),
        "{}",
        row(&model)
    );
    let terminating = Conditions {
        ready: false,
        serving: true,
        terminating: true,
    };
    let eps = &mut model.services[0].endpoints;
    eps[0].conditions = terminating;
    eps[1].conditions.ready = false;
    assert!(
        row(&model).ends_with(
            "10.0.0.3:80, 10.0.0.1:80 (terminating, serving: not used), \
             10.0.0.2:80 (not ready, serving: not used)"
        ),
        "{}",
        row(&model)
    );
    // Local: only this node's endpoints; the terminating local one is the fallback.
    model.services[0].traffic_policy = TrafficPolicy::Local;
    model.services[0].endpoints[2].local = false;
    assert!(
        row(&model).ends_with(
            "10.0.0.1:80 (terminating, serving: used while none is ready), \
             10.0.0.2:80 (not ready, serving: not used), \
             10.0.0.3:80 (on another node: not used)"
        ),
        "{}",
        row(&model)
    );
    model.services[0].endpoints[0].local = false;
    assert!(
        row(&model).contains("(none usable: connections are reset) 10.0.0.1:80 (on another node"),
        "{}",
        row(&model)
    );
}

// The vocabulary (`model::names`): every name printed is a word the parser accepts.

fn one_service(top: &str, service: &str) -> Model {
    let text = format!("{top}\n[[service]]\nname = \"a\"\nport = 80\nendpoints = []\n{service}\n");
    parse(&text, "names.toml", None).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn every_policy_name_parses_back() {
    for kind in PolicyKind::ALL {
        let keys: &[Option<HashKey>] = if kind == PolicyKind::Maglev {
            &[None, Some(HashKey::ClientIpPort), Some(HashKey::ClientIp)]
        } else {
            &[None]
        };
        for key in keys {
            let hash_key = key.map(|k| format!("hash_key = \"{}\"", k.name()));
            let m = one_service(
                "",
                &format!(
                    "policy = \"{}\"\n{}",
                    kind.name(),
                    hash_key.unwrap_or_default()
                ),
            );
            let policy = m.services[0].policy;
            assert_eq!(policy.kind(), kind);
            let shown = policy.to_string();
            assert!(shown.starts_with(kind.name()), "{shown}");
            if let Policy::Maglev { key: parsed } = policy {
                assert_eq!(parsed, key.unwrap_or(HashKey::ClientIpPort));
                assert_eq!(shown, format!("maglev({})", parsed.name()));
            }
        }
    }
    assert_eq!(
        Policy::default().to_string(),
        "maglev(client-ip-port)",
        "`check` and `ctl` print the hash key as the file spells it"
    );
}

#[test]
fn every_forwarding_name_parses_back() {
    for mode in ForwardingMode::ALL {
        let m = one_service("", &format!("forwarding = \"{}\"", mode.name()));
        let f = &m.services[0].forwarding;
        assert_eq!(f.mode(), mode);
        assert_eq!(f.to_string(), mode.name());
        // The node-wide default key takes the same words.
        let m = one_service(&format!("forwarding = \"{}\"", mode.name()), "");
        assert_eq!(m.services[0].forwarding.mode(), mode);
    }
    let m = one_service("", "forwarding = \"proxy-v2\"\nproxy_unique_id = true");
    assert_eq!(m.services[0].forwarding.to_string(), "proxy-v2(unique-id)");
}

#[test]
fn every_relay_and_driver_name_parses_back() {
    for relay in RelayMode::ALL {
        let m = one_service(&format!("relay = \"{relay}\""), "");
        assert_eq!(m.settings.relay, relay);
    }
    for driver in DriverSetting::ALL {
        let m = one_service(&format!("driver = \"{driver}\""), "");
        assert_eq!(m.settings.driver, driver);
    }
}

#[test]
fn every_protocol_name_parses_back() {
    for protocol in Protocol::ALL {
        let m = one_service("", &format!("protocol = \"{protocol}\""));
        assert_eq!(m.services[0].key.protocol, protocol);
        let shown = render_check(&m);
        assert!(
            shown.contains(&format!("/{}", protocol.name())),
            "`check` prints the NodePort as 30000/{protocol}: {shown}"
        );
    }
}

#[test]
fn check_prints_the_names_the_file_accepts() {
    let m = one_service(
        "relay = \"copy\"\ndriver = \"epoll\"",
        "policy = \"maglev\"\nhash_key = \"client-ip\"\nforwarding = \"proxy-v1\"",
    );
    let text = render_check(&m);
    for word in [
        "maglev(client-ip)",
        "proxy-v1",
        "relay: copy",
        "driver: epoll",
    ] {
        assert!(text.contains(word), "{word} in {text}");
    }
}
