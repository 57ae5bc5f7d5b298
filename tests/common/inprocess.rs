//! The data plane started as a library in the test process (no CLI, no config parser): a
//! Model built in code, real sockets on loopback.

use sluice::dataplane::{node_port_keys, Dataplane, Listeners};
use sluice::model::*;
use sluice::publish::Publisher;
use sluice::table::{RoutingSnapshot, StatsRegistry};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A backend that answers each connection with its name, after reading the request line.
pub fn name_backend(ip: &str, name: &'static str) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                let _ = s.read(&mut buf);
                let _ = s.write_all(name.as_bytes());
            });
        }
    });
    addr
}

/// One TCP Service on `node_port` over `endpoints`, two workers, the driver of `SLUICE_TEST_DRIVER`.
pub fn model(node_port: u16, endpoints: &[SocketAddr], relay: RelayMode) -> Model {
    Model {
        settings: Settings {
            workers: Some(2),
            listen: ListenAddresses::Only(vec!["127.0.0.1".parse().unwrap()]),
            node_port_range: NodePortRange {
                first: node_port,
                last: node_port,
            },
            relay,
            driver: match std::env::var("SLUICE_TEST_DRIVER").as_deref() {
                Ok("epoll") => DriverSetting::Epoll,
                Ok("uring") => DriverSetting::Uring,
                _ => DriverSetting::Auto,
            },
            ..Settings::default()
        },
        services: vec![ServicePort {
            key: ServicePortKey {
                service: ServiceName {
                    namespace: "test".into(),
                    name: "inproc".into(),
                },
                port_name: String::new(),
                protocol: Protocol::Tcp,
            },
            port: 80,
            node_port,
            node_port_allocated: false,
            target_port: 0,
            endpoints: endpoints
                .iter()
                .map(|&addr| Endpoint::new(addr).with_weight(DEFAULT_WEIGHT))
                .collect(),
            policy: Policy::default(),
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
        }],
        primary_ips: Vec::new(),
    }
}

/// The listeners of `ports` on 127.0.0.1 (the model's `listen_addresses`).
pub fn listeners(ports: &[(Protocol, u16)]) -> Listeners {
    Listeners {
        required: node_port_keys(&["127.0.0.1".parse().unwrap()], &ports.to_vec()),
        optional: Vec::new(),
    }
}

/// The data plane of `model` started on its listeners, with its publisher and stats.
pub fn start(model: &Model) -> (Dataplane, Publisher, StatsRegistry) {
    let mut reg = StatsRegistry::new(model.settings.workers.unwrap());
    let publisher = Publisher::new(RoutingSnapshot::build(model, 1, &mut reg));
    let ports: Vec<(Protocol, u16)> = model
        .services
        .iter()
        .map(|s| (s.key.protocol, s.node_port))
        .collect();
    let dp = Dataplane::start(&model.settings, &listeners(&ports).required, &publisher)
        .expect("data plane starts");
    (dp, publisher, reg)
}

/// One request and its whole answer over a new connection to 127.0.0.1:`port`.
pub fn ask(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
