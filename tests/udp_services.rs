//! UDP Services beside TCP ones: a file with a UDP Service beside a TCP one on the same
//! NodePort number loads, `check`, `ctl services`, `ctl describe` and the metrics show the
//! protocol, and both ports are served (no "not listening" warning, the UDP socket is held
//! at start and after a reload). What the UDP flows do is `tests/udp.rs`.

mod common;
use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;

fn config(
    dir: &Path,
    port: u16,
    mport: u16,
    udp_port_name: &str,
    ns_address: SocketAddr,
) -> String {
    format!(
        "listen_addresses = [\"127.0.0.1\"]\nnode_port_range = \"{port}-{port}\"\nworkers = 2\n\
         control_socket = \"{}\"\nmetrics_address = \"127.0.0.1:{mport}\"\n\
         [[service]]\nname = \"dns\"\nnamespace = \"itest\"\nport_name = \"dns-tcp\"\nport = 53\n\
         node_port = {port}\nendpoints = [\"{ns_address}\"]\n\
         [[service]]\nname = \"dns\"\nnamespace = \"itest\"\nport_name = \"{udp_port_name}\"\n\
         protocol = \"UDP\"\nport = 53\nnode_port = {port}\nudp_responses = 1\n\
         endpoints = [\"{ns_address}\"]\n",
        dir.join("ctl.sock").display()
    )
}

/// Whether this process can bind a plain UDP socket (no SO_REUSEPORT) on 127.0.0.1:`port`:
/// false while anyone else holds it.
fn udp_port_is_free(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

#[test]
fn a_udp_service_is_read_shown_and_served_beside_its_tcp_twin() {
    let ns = NameServer::start("127.0.0.2", "a");
    let port = free_port();
    let mport = free_port();
    let dir = TempDir::new("udp");
    let text = config(dir.path(), port, mport, "dns", ns.addr);
    let sock = dir.path().join("ctl.sock");

    // `check` says what `run` will skip.
    let path = dir.write("check.toml", &text);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(&format!(" {port}/UDP ")), "{stdout}");
    assert!(stdout.contains(&format!(" {port}/TCP ")), "{stdout}");
    assert!(!stderr.contains("not listening on"), "{stderr}");

    let mut sluice = Sluice::run(&text);
    let node = node_addr(port);
    sluice.wait_ready_name(node);
    assert_eq!(ask_name(node).unwrap(), "a", "the TCP port is served");
    let logged = sluice.stderr();
    assert!(!logged.contains("not listening on"), "{logged}");
    assert!(!udp_port_is_free(port), "the UDP NodePort is served");

    let services = ctl_ok(&sock, &["services"]);
    let udp_row = services
        .lines()
        .find(|l| l.contains("dns:53") && l.contains("UDP"))
        .unwrap_or_else(|| panic!("no UDP row:\n{services}"));
    assert!(udp_row.contains(&port.to_string()), "{services}");
    assert!(
        services
            .lines()
            .any(|l| l.contains("dns-tcp:53") && l.contains("TCP")),
        "{services}"
    );
    let describe = ctl_ok(&sock, &["describe", "service", "dns", "-n", "itest"]);
    for want in [
        "Port:                     dns  53/UDP\n".to_owned(),
        format!("NodePort:                 dns  {port}/UDP\n"),
        "Port:                     dns-tcp  53/TCP\n".to_owned(),
    ] {
        assert!(describe.contains(&want), "{want:?} missing:\n{describe}");
    }
    let metrics = http_get_body(SocketAddr::from(([127, 0, 0, 1], mport)), "/metrics");
    let udp_label = format!("port_name=\"dns\",protocol=\"UDP\",node_port=\"{port}\"");
    assert!(
        metrics.contains(&udp_label),
        "{udp_label} missing:\n{metrics}"
    );

    // A reload keeps serving both (the new name shows it is the new configuration's).
    let next = config(dir.path(), port, mport, "dns-udp", ns.addr);
    let config_path = sluice.config_path.clone().unwrap();
    std::fs::write(&config_path, next).unwrap();
    ctl_ok(&sock, &["reload"]);
    let logged = sluice.stderr();
    assert!(!logged.contains("not listening on"), "{logged}");
    assert!(!udp_port_is_free(port));
    let services = ctl_ok(&sock, &["services"]);
    assert!(services.contains("dns-udp"), "{services}");
    assert_eq!(ask_name(node).unwrap(), "a");
}

/// `GET path` over HTTP/1.1 with `Connection: close`; the body.
fn http_get_body(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}
