//! Which listening sockets the data plane is to have: the model's NodePorts on the
//! addresses `listen_addresses` resolves to now (CIDRs and `primary` follow the node's
//! addresses), and every Service's external and LoadBalancer IPs that are local to this
//! node, on the Service port — what kube-proxy captures, where a user-space proxy can
//! receive it. Pure: the node's addresses are passed in (`node.rs` reads them).
//!
//! NodePort listeners are required (one that cannot be bound fails a reload, as before);
//! a Service's own addresses are optional (they follow the Service's status, and one that
//! cannot be bound must not hold up the rest: it is logged and tried again).

use crate::dataplane::{node_port_keys, node_ports, ListenerKey, Listeners};
use crate::model::{canonical_ip, Model, Policy};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

/// The listeners a model calls for on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Wanted {
    pub listeners: Listeners,
    /// The listeners of ClientIP-affinity Services, to steer by client IP.
    pub steered: Vec<ListenerKey>,
    /// Where NodePorts are served now (`None`: every address), for the
    /// healthCheckNodePorts, which kube-proxy serves on the same addresses.
    pub node_port_addresses: Option<Vec<IpAddr>>,
}

/// The listeners `model` calls for, given this node's addresses `node` (sorted, as
/// [`super::node::addresses`] gives them) and the address that stands for every address
/// (`wildcard`: `::` or `0.0.0.0`, see [`crate::dataplane::wildcard_address`]).
pub(super) fn wanted(model: &Model, node: &[IpAddr], wildcard: IpAddr) -> Wanted {
    let node_port_addresses = model.settings.listen.resolve(node, &model.primary_ips);
    let bind = node_port_addresses
        .clone()
        .unwrap_or_else(|| vec![wildcard]);
    let required = node_port_keys(&bind, &node_ports(model));
    let taken: BTreeSet<ListenerKey> = required.iter().copied().collect();
    let mut optional = BTreeSet::new();
    let mut steered = BTreeSet::new();
    for s in &model.services {
        let affinity = matches!(s.policy, Policy::ClientIp { .. });
        if affinity && s.node_port != 0 {
            steered.extend(node_port_keys(&bind, &vec![(s.key.protocol, s.node_port)]));
        }
        let a = &s.addresses;
        for &ip in a.load_balancer_ips.iter().chain(&a.external_ips) {
            if !is_local(ip, node) {
                continue;
            }
            let key = ListenerKey {
                addr: SocketAddr::new(canonical_ip(ip), s.port),
                protocol: s.key.protocol,
            };
            if !taken.contains(&key) {
                optional.insert(key);
            }
            if affinity {
                steered.insert(key);
            }
        }
    }
    Wanted {
        listeners: Listeners {
            required,
            optional: optional.into_iter().collect(),
        },
        steered: steered.into_iter().collect(),
        node_port_addresses,
    }
}

/// Whether `ip` is an address of this node: one of its interface addresses, or loopback
/// (all of 127.0.0.0/8 is local on Linux, though `lo` lists only 127.0.0.1).
pub(super) fn is_local(ip: IpAddr, node: &[IpAddr]) -> bool {
    let ip = canonical_ip(ip);
    ip.is_loopback() || node.binary_search(&ip).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Cidr, ListenAddresses, Protocol, ServiceAddresses, ServiceName, ServicePort,
        ServicePortKey, Settings,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn key(s: &str) -> ListenerKey {
        ListenerKey {
            addr: s.parse().unwrap(),
            protocol: Protocol::Tcp,
        }
    }

    fn port(name: &str, port: u16, node_port: u16, addresses: ServiceAddresses) -> ServicePort {
        let mut p = crate::config::parse(
            &format!("[[service]]\nname = \"{name}\"\nport = {port}\nnode_port = 30000\n"),
            "t",
            None,
        )
        .unwrap()
        .services
        .remove(0);
        p.node_port = node_port;
        p.key = ServicePortKey {
            service: ServiceName {
                namespace: "default".into(),
                name: name.into(),
            },
            port_name: String::new(),
            protocol: Protocol::Tcp,
        };
        p.addresses = addresses;
        p
    }

    fn model(listen: ListenAddresses, services: Vec<ServicePort>, primary: &[&str]) -> Model {
        Model {
            settings: Settings {
                listen,
                ..Settings::default()
            },
            services,
            primary_ips: primary.iter().map(|s| ip(s)).collect(),
        }
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    /// `listen_addresses` → the addresses NodePorts are bound on, for a node whose
    /// interfaces have `NODE` (kube-proxy's nodePortAddresses cases where they apply:
    /// CIDRs of either family, `primary`; sluice's own: plain addresses, loopback, and
    /// link-local addresses left out).
    #[test]
    fn listen_addresses_resolve_against_the_nodes_addresses() {
        const NODE: &[&str] = &[
            "10.0.0.5",
            "10.0.1.7",
            "127.0.0.1",
            "192.0.2.10",
            "::1",
            "2001:db8::10",
            "fe80::1",
        ];
        let node: Vec<IpAddr> = {
            let mut v: Vec<IpAddr> = NODE.iter().map(|s| ip(s)).collect();
            v.sort();
            v
        };
        let matching = |addresses: &[&str], cidrs: &[&str]| ListenAddresses::Matching {
            addresses: addresses.iter().map(|s| ip(s)).collect(),
            cidrs: cidrs.iter().map(|s| cidr(s)).collect(),
        };
        /// What, the setting, the Node's primary addresses, the addresses bound.
        type Case<'a> = (
            &'a str,
            ListenAddresses,
            &'a [&'a str],
            Option<&'a [&'a str]>,
        );
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("omitted: every address", ListenAddresses::All, &[], None),
            ("plain addresses, local or not", ListenAddresses::Only(vec![ip("10.0.0.5"), ip("198.51.100.1")]),
                &[], Some(&["10.0.0.5", "198.51.100.1"])),
            ("one IPv4 CIDR", matching(&[], &["10.0.0.0/16"]), &[], Some(&["10.0.0.5", "10.0.1.7"])),
            ("a /24 inside it", matching(&[], &["10.0.1.0/24"]), &[], Some(&["10.0.1.7"])),
            ("host bits of a written CIDR are cleared", matching(&[], &["10.0.1.99/24"]), &[], Some(&["10.0.1.7"])),
            ("both families", matching(&[], &["10.0.0.0/8", "2001:db8::/64"]), &[],
                Some(&["10.0.0.5", "10.0.1.7", "2001:db8::10"])),
            ("every IPv6 address but link-local", matching(&[], &["::/0"]), &[], Some(&["::1", "2001:db8::10"])),
            ("loopback by CIDR: lo's own address", matching(&[], &["127.0.0.0/29"]), &[], Some(&["127.0.0.1"])),
            ("a CIDR matching nothing yet", matching(&[], &["172.16.0.0/12"]), &[], Some(&[])),
            ("an address and a CIDR covering it", matching(&["10.0.0.5"], &["10.0.0.0/24"]), &[], Some(&["10.0.0.5"])),
            ("primary: the Node's addresses", ListenAddresses::Primary, &["10.0.1.7", "2001:db8::10"],
                Some(&["10.0.1.7", "2001:db8::10"])),
            ("primary, Node unknown: every address", ListenAddresses::Primary, &[], None),
        ];
        for (what, listen, primary, want) in cases {
            let m = model(listen.clone(), vec![], primary);
            let got = m.settings.listen.resolve(&node, &m.primary_ips);
            let want: Option<Vec<IpAddr>> = want.map(|w| {
                let mut v: Vec<IpAddr> = w.iter().map(|s| ip(s)).collect();
                v.sort();
                v
            });
            assert_eq!(got, want, "{what}");
        }
    }

    /// Service addresses get a listener on the Service port where they are local; NodePort
    /// 0 has none; a Service address that is also a NodePort listener is one socket;
    /// ClientIP Services' listeners are steered.
    #[test]
    fn service_addresses_are_listened_on_where_local() {
        let node = vec![ip("10.0.0.5"), ip("127.0.0.1"), ip("192.0.2.100")];
        let lb = port(
            "lb",
            80,
            30080,
            ServiceAddresses {
                load_balancer_ips: vec![ip("192.0.2.100"), ip("203.0.113.9")],
                external_ips: vec![ip("127.0.0.5")],
                source_ranges: vec![cidr("10.0.0.0/8")],
            },
        );
        let mut sticky = port(
            "sticky",
            8443,
            0,
            ServiceAddresses {
                external_ips: vec![ip("10.0.0.5"), ip("::ffff:192.0.2.100")],
                ..Default::default()
            },
        );
        sticky.policy = Policy::ClientIp {
            timeout: std::time::Duration::from_secs(60),
            max_entries: 10,
        };
        // An external IP:port that is also a NodePort listener (the node's own address).
        let same = port(
            "same",
            30080,
            30081,
            ServiceAddresses {
                external_ips: vec![ip("10.0.0.5")],
                ..Default::default()
            },
        );
        let m = model(
            ListenAddresses::Only(vec![ip("10.0.0.5")]),
            vec![lb, sticky, same],
            &[],
        );
        let w = wanted(&m, &node, ip("::"));
        assert_eq!(
            w.listeners.required,
            [key("10.0.0.5:30080"), key("10.0.0.5:30081")]
        );
        assert_eq!(
            w.listeners.optional,
            [
                key("10.0.0.5:8443"),
                key("127.0.0.5:80"),
                key("192.0.2.100:80"),
                key("192.0.2.100:8443"),
            ],
            "203.0.113.9 is not local; 10.0.0.5:30080 is the NodePort listener already"
        );
        assert_eq!(w.steered, [key("10.0.0.5:8443"), key("192.0.2.100:8443")]);
        assert_eq!(w.node_port_addresses, Some(vec![ip("10.0.0.5")]));

        // Every address: the wildcard; the address follows the node (192.0.2.100 gone).
        let mut all = m.clone();
        all.settings.listen = ListenAddresses::All;
        let w = wanted(&all, &[ip("10.0.0.5")], ip("::"));
        assert_eq!(w.listeners.required, [key("[::]:30080"), key("[::]:30081")]);
        assert_eq!(
            w.listeners.optional,
            [
                key("10.0.0.5:8443"),
                key("10.0.0.5:30080"),
                key("127.0.0.5:80")
            ]
        );
        assert_eq!(w.node_port_addresses, None);
    }
}
