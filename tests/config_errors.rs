//! Bad configuration files and the exact error each must give: `LINE:COLUMN` of the
//! offending key or value, and words an operator can act on.
//!
//! One table row per mistake. Most rows start from the same three-line service (`[[service]]`,
//! `name = "a"`, `port = 80`) so the interesting line is line 4.

use sluice::config::parse;

struct Row {
    what: &'static str,
    text: &'static str,
    line: usize,
    column: usize,
    message: &'static str,
}

const fn row(
    what: &'static str,
    text: &'static str,
    (line, column): (usize, usize),
    message: &'static str,
) -> Row {
    Row {
        what,
        text,
        line,
        column,
        message,
    }
}

/// `[[service]]`, `name = "a"`, `port = 80`: lines 1–3 of most rows.
macro_rules! svc {
    ($($rest:literal)*) => {
        concat!("[[service]]\nname = \"a\"\nport = 80\n" $(, $rest)*)
    };
}

#[rustfmt::skip]
const ROWS: &[Row] = &[
    // Shape: keys and TOML types.
    row("unknown top-level key", "workers = 2\nbogus = 1\n", (2, 1),
        "unknown key `bogus` at the top level; expected one of `workers`"),
    row("unknown service key", svc!("nodeport = 30000\n"), (4, 1),
        "unknown key `nodeport` in [[service]]; expected one of `name`"),
    row("node-wide key after a service", svc!("relay = \"copy\"\n"), (4, 1),
        "unknown key `relay` in [[service]]; expected one of `name`"),
    row("unknown endpoint key", svc!("endpoints = [{ address = \"10.0.0.1\", wieght = 2 }]\n"), (4, 38),
        "unknown key `wieght` in an endpoint table"),
    row("missing name", "[[service]]\nport = 80\n", (1, 1), "missing key `name` in [[service]]"),
    row("missing port", "[[service]]\nname = \"a\"\n", (1, 1), "missing key `port` in [[service]]"),
    row("missing endpoint address", svc!("endpoints = [{ port = 9000 }]\n"), (4, 14),
        "missing key `address` in an endpoint table"),
    row("port as a string", svc!("target_port = \"http\"\n"), (4, 15),
        "`target_port`: invalid type: string \"http\", expected an integer"),
    row("bool as a string", "pin_workers = \"yes\"\n", (1, 15),
        "`pin_workers`: invalid type: string \"yes\", expected true or false"),
    row("service as a table", "[service]\nname = \"a\"\nport = 80\n", (1, 1),
        "invalid type: map, expected a sequence"),
    row("endpoint as a number", svc!("endpoints = [\"10.0.0.1\", 5]\n"), (4, 26),
        "expected an endpoint: a string \"IP\""),
    row("TOML syntax error", svc!("node_port = \n"), (4, 13), "invalid string"),
    // Found by fuzzing: the TOML parser's own message is empty here.
    row("a NUL in a comment inside an array", svc!("endpoints = [\n  \"10.0.0.1\", # a\0b\n]\n"), (5, 18),
        "invalid TOML: the control character '\\0' is not allowed here"),
    // Node-wide settings.
    row("workers = 0", "workers = 0\n", (1, 11), "workers 0 is out of range: must be 1..=1024"),
    row("node_port_range without dash", "node_port_range = \"30000\"\n", (1, 19),
        "node_port_range \"30000\" is malformed: no '-'"),
    row("node_port_range reversed", "node_port_range = \"32767-30000\"\n", (1, 19),
        "the first port is above the last"),
    row("node_port_range not numbers", "node_port_range = \"a-b\"\n", (1, 19),
        "the first port is not a number in 1..=65535"),
    row("unknown relay", "relay = \"sendfile\"\n", (1, 9),
        "relay \"sendfile\" is not accepted; expected one of \"splice\", \"copy\""),
    row("bad listen address", "listen_addresses = [\"10.0.0.1\", \"10.0.0.0/33\"]\n", (1, 33),
        "listen address \"10.0.0.0/33\" is not an IP address, a CIDR (\"10.0.0.0/8\") or \"primary\""),
    row("listen host name", "listen_addresses = [\"node-a\"]\n", (1, 21),
        "listen address \"node-a\" is not an IP address, a CIDR"),
    row("primary with others", "listen_addresses = [\"10.0.0.0/8\", \"primary\"]\n", (1, 35),
        "`\"primary\"` stands alone in `listen_addresses`"),
    row("duplicate listen CIDR", "listen_addresses = [\"10.0.0.0/8\", \"10.1.2.3/8\"]\n", (1, 35),
        "listen address 10.0.0.0/8 is listed twice (first at line 1)"),
    row("source range without a prefix", svc!("load_balancer_ips = [\"192.0.2.1\"]\nload_balancer_source_ranges = [\"10.0.0.1\"]\n"),
        (5, 32), "load_balancer_source_ranges entry \"10.0.0.1\" is not a CIDR"),
    row("source ranges without LoadBalancer IPs", svc!("load_balancer_source_ranges = [\"10.0.0.0/8\"]\n"), (4, 31),
        "`load_balancer_source_ranges` applies at the `load_balancer_ips`, and this Service has none"),
    row("external IP as a CIDR", svc!("external_ips = [\"192.0.2.1/32\"]\n"), (4, 17),
        "external_ips entry \"192.0.2.1/32\" is not an IP address"),
    row("multicast LoadBalancer IP", svc!("load_balancer_ips = [\"224.0.0.1\"]\n"), (4, 22),
        "load_balancer_ips entry 224.0.0.1 is a multicast address"),
    row("external IP listed twice", svc!("external_ips = [\"192.0.2.1\", \"192.0.2.1\"]\n"), (4, 30),
        "external_ips entry 192.0.2.1 is listed twice (first at line 4)"),
    row("external IP:port of another Service",
        svc!("external_ips = [\"192.0.2.1\"]\n[[service]]\nname = \"b\"\nport = 80\nload_balancer_ips = [\"192.0.2.1\"]\n"),
        (8, 22), "load_balancer_ips entry 192.0.2.1 with port 80/TCP of default/b is already used by default/a (line 4)"),
    row("empty listen_addresses", "listen_addresses = []\n", (1, 20), "`listen_addresses` is empty"),
    row("duplicate listen address", "listen_addresses = [\"::1\", \"::1\"]\n", (1, 28),
        "listen address ::1 is listed twice (first at line 1)"),
    row("wildcard beside a specific address", "listen_addresses = [\"0.0.0.0\", \"10.0.0.1\"]\n", (1, 32),
        "overlaps 0.0.0.0"),
    row("bad top-level duration", "\nidle_timeout = \"forever\"\n", (2, 16),
        "idle_timeout \"forever\" is not a duration"),
    row("relative control_socket", "control_socket = \"ctl.sock\"\n", (1, 18),
        "control_socket \"ctl.sock\" is not an absolute path"),
    row("control_socket_mode too big", "control_socket_mode = 0o1777\n", (1, 23),
        "control_socket_mode 1023 is out of range: must be 0..=511"),
    row("negative control uid", "control_allowed_uids = [0, -1]\n", (1, 28),
        "control_allowed_uids -1 is out of range"),
    row("metrics_address without port", "metrics_address = \"127.0.0.1\"\n", (1, 19),
        "metrics_address \"127.0.0.1\" is not an address with a port"),
    row("health_address not an address", "health_address = \"localhost:10256\"\n", (1, 18),
        "health_address \"localhost:10256\" is not an address with a port"),
    row("bad drain_timeout", "drain_timeout = \"soon\"\n", (1, 17),
        "drain_timeout \"soon\" is not a duration"),
    row("drain_timeout after a service", svc!("drain_timeout = \"5s\"\n"), (4, 1),
        "must come before the first [[service]]"),
    row("duration as a number", "connect_timeout = 3\n", (1, 19),
        "`connect_timeout`: invalid type: integer `3`, expected a duration string such as \"3s\""),
    row("zero duration", svc!("connect_timeout = \"0s\"\n"), (4, 19),
        "connect_timeout must be longer than zero"),
    row("non-prime table size", "maglev_table_size = 65536\n", (1, 21),
        "maglev_table_size 65536 is not a prime; Maglev needs a prime table size (nearest primes: 65521, 65537)"),
    row("table size too small", svc!("maglev_table_size = 1000\n"), (4, 21),
        "maglev_table_size 1000 is out of range: must be 1009..=1000003"),
    row("negative retries", "connect_retries = -1\n", (1, 19), "connect_retries -1 is out of range"),
    // One service.
    row("upper-case name", "[[service]]\nname = \"MyFrontend\"\nport = 80\n", (2, 8),
        "name \"MyFrontend\" is not a DNS-1035 label: it contains 'M'"),
    row("name starting with a digit", "[[service]]\nname = \"1web\"\nport = 80\n", (2, 8),
        "must start with a lower-case letter"),
    row("bad namespace", svc!("namespace = \"work_shop\"\n"), (4, 13),
        "namespace \"work_shop\" is not a DNS-1123 label: it contains '_'"),
    row("port name ending in dash", svc!("port_name = \"http-\"\n"), (4, 13),
        "must end with a letter or digit"),
    row("SCTP", svc!("protocol = \"SCTP\"\n"), (4, 12),
        "protocol \"SCTP\" is not served: sluice serves TCP and UDP"),
    row("lower-case tcp", svc!("protocol = \"tcp\"\n"), (4, 12), "expected one of \"TCP\", \"UDP\" (upper case"),
    // UDP Services.
    row("proxy-v1 on a UDP Service", svc!("protocol = \"UDP\"\nforwarding = \"proxy-v1\"\n"), (5, 14),
        "forwarding \"proxy-v1\" cannot be used on a UDP Service: PROXY v1 is a text line for byte streams"),
    row("inherited proxy-v1 on a UDP Service", concat!("forwarding = \"proxy-v1\"\n", svc!("protocol = \"UDP\"\n")), (5, 12),
        "forwarding \"proxy-v1\" (the default set at line 1) cannot be used on a UDP Service"),
    row("udp_responses on a TCP Service", svc!("udp_responses = 1\n"), (4, 17),
        "`udp_responses` applies to protocol = \"UDP\" only"),
    row("udp_responses zero", svc!("protocol = \"UDP\"\nudp_responses = 0\n"), (5, 17),
        "udp_responses 0 is out of range: must be 1..=1000000"),
    row("hold_when_empty on a UDP Service", svc!("protocol = \"UDP\"\nhold_when_empty = \"5s\"\n"), (5, 19),
        "`hold_when_empty` applies to TCP Services only"),
    row("max_flows_per_worker zero", "max_flows_per_worker = 0\n", (1, 24),
        "max_flows_per_worker 0 is out of range: must be 1..=1048576"),
    row("one port name for TCP and UDP", concat!(
            svc!("port_name = \"dns\"\n"),
            "[[service]]\nname = \"a\"\nport_name = \"dns\"\nprotocol = \"UDP\"\nport = 80\n"), (6, 8),
        "port `dns` of Service default/a is defined twice (first at line 2)"),
    row("the same UDP node_port twice", concat!(
            svc!("protocol = \"UDP\"\nport_name = \"x\"\nnode_port = 30053\n"),
            "[[service]]\nname = \"a\"\nport_name = \"y\"\nprotocol = \"UDP\"\nport = 80\nnode_port = 30053\n"), (12, 13),
        "node_port 30053/UDP of default/a:y is already used by default/a:x (line 6)"),
    row("port 0", "[[service]]\nname = \"a\"\nport = 0\n", (3, 8), "port 0 is out of range: must be 1..=65535"),
    row("port too big", svc!("target_port = 70000\n"), (4, 15), "target_port 70000 is out of range"),
    row("node_port 0", svc!("node_port = 0\n"), (4, 13), "omit `node_port` to have one allocated"),
    row("node_port not a port", svc!("node_port = 99999\n"), (4, 13), "node_port 99999 is outside node_port_range 30000-32767"),
    row("node_port outside the default range", svc!("node_port = 8080\n"), (4, 13),
        "node_port 8080 is outside node_port_range 30000-32767 (the default"),
    row("node_port outside a set range", concat!("node_port_range = \"40000-40999\"\n", svc!("node_port = 30000\n")), (5, 13),
        "node_port 30000 is outside node_port_range 40000-40999 (set at line 1)"),
    row("unknown policy", svc!("policy = \"least-loaded\"\n"), (4, 10),
        "policy \"least-loaded\" is not accepted; expected one of \"maglev\", \"client-ip\", \"round-robin\", \"random\", \"least-connections\""),
    row("affinity timeout too long", svc!("policy = \"client-ip\"\naffinity_timeout_seconds = 86401\n"), (5, 28),
        "affinity_timeout_seconds"),
    row("affinity timeout zero", svc!("policy = \"client-ip\"\naffinity_timeout_seconds = 0\n"), (5, 28),
        "affinity_timeout_seconds"),
    row("affinity key without client-ip", svc!("affinity_timeout_seconds = 60\n"), (4, 28),
        "applies to policy = \"client-ip\" only"),
    row("hash key with round-robin", svc!("policy = \"round-robin\"\nhash_key = \"client-ip\"\n"), (5, 12),
        "`hash_key` applies to policy = \"maglev\" only"),
    row("unknown hash key", svc!("hash_key = \"source-ip\"\n"), (4, 12),
        "expected one of \"client-ip-port\", \"client-ip\""),
    row("bad endpoint address", svc!("endpoints = [\"127.0.0.2\", \"127.0.0.300\"]\n"), (4, 27),
        "\"127.0.0.300\" is not an endpoint address"),
    row("host name endpoint", svc!("endpoints = [\"pod-a:8080\"]\n"), (4, 14), "host names are not resolved"),
    row("endpoint port 0", svc!("endpoints = [\"10.0.0.1:0\"]\n"), (4, 14), "has port 0"),
    row("unspecified endpoint", svc!("endpoints = [{ address = \"0.0.0.0\" }]\n"), (4, 26),
        "endpoint address 0.0.0.0 is the unspecified address"),
    row("endpoint table with a port in address", svc!("endpoints = [{ address = \"10.0.0.1:80\" }]\n"), (4, 26),
        "give the port in `port`"),
    row("negative weight", svc!("endpoints = [{ address = \"10.0.0.1\", weight = -1 }]\n"), (4, 47),
        "weight -1 is out of range: must be 0..=65535"),
    row("duplicate endpoint", svc!("target_port = 9000\n" "endpoints = [\n" "  \"10.0.0.1\",\n" "  \"10.0.0.1:9000\",\n" "]\n"), (7, 3),
        "endpoint 10.0.0.1:9000 is listed twice in default/a (first at line 6)"),
    // Forwarding (how the pod learns the client's address).
    row("unknown forwarding", svc!("forwarding = \"proxy\"\n"), (4, 14),
        "forwarding \"proxy\" is not accepted; expected one of \"none\", \"proxy-v1\", \"proxy-v2\", \"transparent\""),
    row("unknown top-level forwarding", "forwarding = \"PROXY-V2\"\n", (1, 14),
        "forwarding \"PROXY-V2\" is not accepted"),
    row("v2 option on a v1 service", svc!("forwarding = \"proxy-v1\"\n" "proxy_unique_id = true\n"), (5, 19),
        "`proxy_unique_id` is a PROXY v2 option, but this Service's forwarding is \"proxy-v1\"; set forwarding = \"proxy-v2\""),
    row("v2 option without forwarding", svc!("proxy_tlvs = [{ type = 0xE0, value = \"x\" }]\n"), (4, 14),
        "`proxy_tlvs` is a PROXY v2 option, but this Service's forwarding is \"none\" (the default)"),
    row("v2 option under a top-level transparent", concat!("forwarding = \"transparent\"\n", svc!("proxy_unique_id = false\n")), (5, 19),
        "forwarding is \"transparent\" (the default set at line 1)"),
    row("TLV type below the custom range", svc!("forwarding = \"proxy-v2\"\n" "proxy_tlvs = [{ type = 0x05, value = \"id\" }]\n"), (5, 24),
        "proxy_tlvs type 0x05 is not a custom TLV type: write 0xE0..=0xEF (the range the PROXY protocol leaves to applications); for a unique connection id set `proxy_unique_id = true`"),
    row("TLV type above a byte", svc!("forwarding = \"proxy-v2\"\n" "proxy_tlvs = [{ type = 480, value = \"x\" }]\n"), (5, 24),
        "proxy_tlvs type 480 is not a custom TLV type"),
    row("TLV type twice", svc!("forwarding = \"proxy-v2\"\n" "proxy_tlvs = [\n" "  { type = 0xE0, value = \"a\" },\n" "  { type = 0xE0, value = \"b\" },\n" "]\n"), (7, 12),
        "proxy_tlvs type 0xE0 is listed twice (first at line 6)"),
    row("TLV value too long", svc!("forwarding = \"proxy-v2\"\n" "proxy_tlvs = [{ type = 0xE1, value = \"" "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" "\" }]\n"), (5, 38),
        "proxy_tlvs value of type 0xE1 is 256 bytes long; at most 255 are allowed"),
    row("unknown TLV key", svc!("forwarding = \"proxy-v2\"\n" "proxy_tlvs = [{ type = 0xE0, data = \"x\" }]\n"), (5, 30),
        "unknown key `data` in a proxy_tlvs table"),
    row("TLV value as a number", svc!("forwarding = \"proxy-v2\"\n" "proxy_tlvs = [{ type = 0xE0, value = 7 }]\n"), (5, 38),
        "`value`: invalid type: integer `7`, expected a string"),
    // Across services.
    row("node_port taken", concat!(
            "[[service]]\nname = \"a\"\nnamespace = \"workshop\"\nport = 80\nnode_port = 30000\n\n",
            "[[service]]\nname = \"b\"\nnamespace = \"workshop\"\nport = 80\nnode_port = 30000\n"),
        (11, 13), "node_port 30000/TCP of workshop/b is already used by workshop/a (line 5)"),
    row("same service twice", concat!(svc!(), "\n[[service]]\nname = \"a\"\nport = 81\n"), (6, 8),
        "Service default/a is defined twice (first at line 2)"),
    row("same named port twice", concat!(svc!("port_name = \"http\"\n"), "[[service]]\nname = \"a\"\nport_name = \"http\"\nport = 81\n"), (6, 8),
        "port `http` of Service default/a is defined twice (first at line 2)"),
    row("unnamed port beside a named one", concat!(svc!("port_name = \"http\"\n"), "[[service]]\nname = \"a\"\nport = 81\n"), (6, 8),
        "Service default/a has 2 ports, so each needs a `port_name`"),
    row("node ports exhausted", concat!(
            "node_port_range = \"30000-30000\"\n",
            "[[service]]\nname = \"a\"\nport = 80\nnode_port = 30000\n",
            "[[service]]\nname = \"b\"\nport = 80\n"),
        (7, 8), "no free node port left for Service default/b: all 1 ports of node_port_range 30000-30000 are used"),
];

#[test]
fn every_bad_config_gives_its_exact_error() {
    assert!(ROWS.len() >= 15);
    let mut failures = Vec::new();
    for row in ROWS {
        match parse(row.text, "bad.toml", None) {
            Ok(model) => failures.push(format!("{}: accepted, gave {model:?}", row.what)),
            Err(e) => {
                let position_ok = (e.line, e.column) == (row.line, row.column);
                let message_ok = e.message.contains(row.message);
                let display_ok =
                    e.to_string() == format!("bad.toml:{}:{}: {}", e.line, e.column, e.message);
                if !(position_ok && message_ok && display_ok) {
                    failures.push(format!(
                        "{}: expected {}:{} containing {:?}\n    got {e}",
                        row.what, row.line, row.column, row.message
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        ROWS.len(),
        failures.join("\n")
    );
}

#[test]
fn all_tlvs_together_may_not_exceed_768_bytes() {
    let tlvs: Vec<String> = (0..4)
        .map(|i| format!("{{ type = 0xE{i}, value = \"{}\" }}", "x".repeat(200)))
        .collect();
    let text = format!(
        "[[service]]\nname = \"a\"\nport = 80\nforwarding = \"proxy-v2\"\nproxy_tlvs = [\n{}\n]\n",
        tlvs.join(",\n")
    );
    let e = parse(&text, "bad.toml", None).unwrap_err();
    assert_eq!(e.line, 9, "{e}");
    assert!(
        e.message
            .contains("proxy_tlvs take 812 bytes up to here; at most 768"),
        "{e}"
    );
    // Three of them fit.
    let three = text.replace(&format!(",\n{}", tlvs[3]), "");
    parse(&three, "ok.toml", None).expect("three 200-byte TLVs fit");
}

/// TCP 53 and UDP 53 side by side (Kubernetes allows it); UDP flows get their own idle
/// default and `udp_responses`; allocation is per protocol too.
#[test]
fn tcp_and_udp_may_share_a_node_port_number() {
    use sluice::model::Protocol;
    let text = r#"
idle_timeout = "10m"

[[service]]
name = "dns"
port_name = "dns-tcp"
port = 53
node_port = 30053

[[service]]
name = "dns"
port_name = "dns"
protocol = "UDP"
port = 53
node_port = 30053
udp_responses = 1

[[service]]
name = "syslog"
protocol = "UDP"
port = 514
idle_timeout = "2m"
"#;
    let model = parse(text, "ok.toml", None).expect("TCP and UDP on one node port");
    let by = |name: &str, port_name: &str| {
        model
            .services
            .iter()
            .find(|s| s.key.service.name == name && s.key.port_name == port_name)
            .unwrap()
    };
    let (tcp, udp, syslog) = (by("dns", "dns-tcp"), by("dns", "dns"), by("syslog", ""));
    assert_eq!((tcp.key.protocol, tcp.node_port), (Protocol::Tcp, 30053));
    assert_eq!((udp.key.protocol, udp.node_port), (Protocol::Udp, 30053));
    assert_eq!(
        tcp.timeouts.idle.as_secs(),
        600,
        "the top-level idle_timeout is TCP's"
    );
    assert_eq!(udp.timeouts.idle, sluice::model::DEFAULT_UDP_IDLE_TIMEOUT);
    assert_eq!(syslog.timeouts.idle.as_secs(), 120);
    assert_eq!((tcp.udp_responses, udp.udp_responses), (None, Some(1)));
    assert_eq!(udp.timeouts.hold_when_empty, None);
    assert_eq!(
        model.settings.max_flows_per_worker,
        sluice::model::DEFAULT_MAX_FLOWS_PER_WORKER
    );
    let shown = sluice::config::render_check(&model);
    assert!(shown.contains(" 30053/UDP "), "{shown}");
    assert!(shown.contains(" 53/UDP "), "{shown}");
    assert!(shown.contains("max flows per worker: 4096"), "{shown}");
    assert!(
        shown.contains("default/dns:dns sets its own: flows end after 1 reply\n"),
        "{shown}"
    );
    assert!(
        shown.contains("default/syslog sets its own: idle timeout 2m\n"),
        "{shown}"
    );

    // A NodePort range of one port: one TCP and one UDP Service both get it allocated.
    let one = "node_port_range = \"31000-31000\"\n[[service]]\nname = \"t\"\nport = 80\n\
               [[service]]\nname = \"u\"\nprotocol = \"UDP\"\nport = 80\n";
    let m = parse(one, "ok.toml", None).expect("one port per protocol");
    assert!(m
        .services
        .iter()
        .all(|s| s.node_port == 31000 && s.node_port_allocated));
}

#[test]
fn the_brief_example_is_accepted() {
    let text = r#"
[[service]]
name = "myfrontend"
namespace = "workshop"
node_port = 30000
port = 80
target_port = 9000
endpoints = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
"#;
    let model = parse(text, "ok.toml", None).expect("the example must parse");
    assert_eq!(model.services.len(), 1);
    assert_eq!(model.services[0].endpoints.len(), 3);
}
