//! Endpoints that are sluice's own NodePorts on this node. A connection routed to one comes
//! straight back to sluice, which routes it again: every client connection becomes a chain of
//! connections until a limit breaks it. Such an endpoint is refused: in a file as an error
//! at its `FILE:LINE:COLUMN`, from Kubernetes objects as a problem of the Service, the
//! endpoint skipped.
//!
//! An endpoint loops when its port is one of this configuration's NodePorts of the same
//! protocol (a UDP endpoint on a TCP NodePort's number reaches no sluice socket) and its address
//! is one sluice listens on: a listen address itself, or — with a wildcard (no
//! `listen_addresses`, `0.0.0.0`, `::`) — any address of this node: loopback addresses and
//! the node's interface addresses. Reading those is the embedding program's job
//! ([`set_local_addresses`]; `sluice` does it with getifaddrs): this module does no IO, and
//! without a source only loopback addresses count as the node's.

use crate::model::{ListenAddresses, Protocol, ServicePort};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

static LOCAL: OnceLock<fn() -> Vec<IpAddr>> = OnceLock::new();

/// Where the node's interface addresses come from, read at each configuration load (they
/// may change). Set once; later calls are ignored.
pub fn set_local_addresses(source: fn() -> Vec<IpAddr>) {
    let _ = LOCAL.set(source);
}

/// The node's interface addresses now (empty without a source).
pub(super) fn local_addresses() -> Vec<IpAddr> {
    LOCAL.get().map(|f| f()).unwrap_or_default()
}

/// What decides whether an endpoint loops: the NodePorts and where they are served.
pub(super) struct Served {
    /// (protocol, NodePort) → the Service port served on it.
    node_ports: HashMap<(Protocol, u16), String>,
    /// The addresses NodePorts are bound on (`listen_addresses` resolved against `local`
    /// and the primary addresses); `None`: every address.
    bound: Option<Vec<IpAddr>>,
    local: Vec<IpAddr>,
}

impl Served {
    /// For `services` (with their NodePorts allocated), served on `listen`; `local` are
    /// the node's interface addresses, `primary` its primary ones (`listen_addresses =
    /// ["primary"]`).
    pub(super) fn new(
        services: &[ServicePort],
        listen: &ListenAddresses,
        local: Vec<IpAddr>,
        primary: &[IpAddr],
    ) -> Served {
        Served {
            node_ports: services
                .iter()
                .filter(|s| s.node_port != 0)
                .map(|s| {
                    (
                        (s.key.protocol, s.node_port),
                        format!("{}/{} of {}", s.node_port, s.key.protocol, s.key),
                    )
                })
                .collect(),
            bound: listen.resolve(&local, primary),
            local,
        }
    }

    /// `Some(why)` when `endpoint` of a `protocol` Service loops: "sluice's own NodePort …"
    /// words for a message.
    pub(super) fn explain(&self, protocol: Protocol, endpoint: SocketAddr) -> Option<String> {
        let how = self.loops(protocol, endpoint)?;
        let node_port = self.node_ports.get(&(protocol, endpoint.port()))?;
        Some(format!(
            "endpoint {endpoint} is sluice's own NodePort {node_port} on this node ({how}): \
             its connections would come straight back into sluice"
        ))
    }

    /// `Some(why)` when connecting to `endpoint` reaches sluice itself: which listen
    /// address serves it.
    fn loops(&self, protocol: Protocol, endpoint: SocketAddr) -> Option<String> {
        if !self.node_ports.contains_key(&(protocol, endpoint.port())) {
            return None;
        }
        let ip = canonical(endpoint.ip());
        let node = |ip: IpAddr| ip.is_loopback() || self.local.contains(&ip);
        match &self.bound {
            None => node(ip)
                .then(|| "sluice serves its NodePorts on every address of this node".to_owned()),
            Some(list) => list.iter().find_map(|&l| {
                let l = canonical(l);
                // `::` is dual-stack (it also takes IPv4); `0.0.0.0` takes IPv4 only.
                let wildcard = l.is_unspecified() && (l.is_ipv6() || ip.is_ipv4()) && node(ip);
                (l == ip || wildcard).then(|| format!("listen address {l}"))
            }),
        }
    }
}

/// IPv4-mapped IPv6 addresses as IPv4 (that is where the kernel delivers them).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(listen: ListenAddresses, local: &[&str]) -> Served {
        let local: Vec<IpAddr> = local.iter().map(|a| a.parse().unwrap()).collect();
        Served {
            node_ports: [((Protocol::Tcp, 30000), "30000/TCP of itest/a".to_owned())]
                .into_iter()
                .collect(),
            bound: listen.resolve(&local, &[]),
            local,
        }
    }

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn only(list: &[&str]) -> ListenAddresses {
        ListenAddresses::Only(list.iter().map(|a| a.parse().unwrap()).collect())
    }

    #[test]
    fn which_endpoints_loop() {
        let all = served(ListenAddresses::All, &["192.0.2.10", "2001:db8::10"]);
        for looping in [
            "127.0.0.1:30000",
            "127.0.0.9:30000",
            "[::1]:30000",
            "192.0.2.10:30000",
            "[2001:db8::10]:30000",
            "[::ffff:192.0.2.10]:30000",
        ] {
            assert!(all.loops(Protocol::Tcp, ep(looping)).is_some(), "{looping}");
        }
        for fine in [
            "127.0.0.1:30001",
            "192.0.2.11:30000",
            "[2001:db8::11]:30000",
        ] {
            assert_eq!(all.loops(Protocol::Tcp, ep(fine)), None, "{fine}");
        }

        let one = served(only(&["192.0.2.10"]), &["192.0.2.10", "192.0.2.20"]);
        assert_eq!(
            one.loops(Protocol::Tcp, ep("192.0.2.10:30000")).as_deref(),
            Some("listen address 192.0.2.10")
        );
        // Not listened on: a connection there reaches whatever else listens, not sluice.
        assert_eq!(one.loops(Protocol::Tcp, ep("192.0.2.20:30000")), None);
        assert_eq!(one.loops(Protocol::Tcp, ep("127.0.0.1:30000")), None);

        // A CIDR: the node's addresses inside it.
        let cidr = served(
            ListenAddresses::Matching {
                addresses: vec![],
                cidrs: vec!["192.0.2.0/24".parse().unwrap()],
            },
            &["192.0.2.10", "198.51.100.1"],
        );
        assert!(cidr
            .explain(Protocol::Tcp, ep("192.0.2.10:30000"))
            .is_some());
        assert!(cidr
            .explain(Protocol::Tcp, ep("192.0.2.99:30000"))
            .is_none());
        assert!(cidr
            .explain(Protocol::Tcp, ep("198.51.100.1:30000"))
            .is_none());
        let v4_wildcard = served(only(&["0.0.0.0"]), &["192.0.2.10", "2001:db8::10"]);
        assert!(v4_wildcard
            .loops(Protocol::Tcp, ep("192.0.2.10:30000"))
            .is_some());
        assert!(v4_wildcard
            .loops(Protocol::Tcp, ep("127.0.0.2:30000"))
            .is_some());
        assert_eq!(
            v4_wildcard.loops(Protocol::Tcp, ep("[2001:db8::10]:30000")),
            None
        );

        let v6_wildcard = served(only(&["::"]), &["192.0.2.10", "2001:db8::10"]);
        assert!(v6_wildcard
            .loops(Protocol::Tcp, ep("192.0.2.10:30000"))
            .is_some());
        assert!(v6_wildcard
            .loops(Protocol::Tcp, ep("[2001:db8::10]:30000"))
            .is_some());
        assert_eq!(
            v6_wildcard.loops(Protocol::Tcp, ep("198.51.100.1:30000")),
            None
        );

        // A UDP endpoint on a TCP NodePort's number reaches no sluice socket.
        assert_eq!(all.loops(Protocol::Udp, ep("127.0.0.1:30000")), None);
    }
}
