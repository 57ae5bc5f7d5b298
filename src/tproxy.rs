//! Source-preserving (`forwarding = "transparent"`) forwarding: what the node needs around it.
//!
//! Owns two things, neither on the hot path: [`rules`], the exact `ip`/`nft` commands the
//! node needs so that a pod's replies to a connection that left from the client's own
//! address come back to sluice (printed by `sluice tproxy-rules`, never applied by sluice:
//! sluice does not change the node's routing), and [`check_transparent_capability`], the
//! probe `sluice check` (warns), `sluice run` (refuses) and the data plane's start use.
//! Uses [`crate::model`] and socket2's safe `set_ip_transparent`; no `unsafe` here.
//! See `docs/client-address.md`.

use crate::model::{Forwarding, Model, Protocol, ServicePort};
use std::fmt::Write as _;

/// The routing table and firewall mark the rules use.
pub const ROUTE_TABLE: u32 = 100;
pub const FWMARK: u32 = 1;
/// The nftables table name (one in the `ip` family, one in `ip6`).
pub const NFT_TABLE: &str = "sluice_tproxy";

/// The Service ports that use transparent forwarding.
pub fn transparent_services(model: &Model) -> impl Iterator<Item = &ServicePort> {
    model
        .services
        .iter()
        .filter(|s| s.forwarding == Forwarding::Transparent)
}

/// True when any Service port uses transparent forwarding.
pub fn uses_transparent(model: &Model) -> bool {
    transparent_services(model).next().is_some()
}

/// The node-side commands for every Service that uses `forwarding = "transparent"`, as a
/// shell script (comments say what each part is for). Both IPv4 and IPv6 are printed: the
/// family of a backend connection is the client's, and a dual-stack NodePort gets both.
/// Empty of commands (comments only) when no Service uses transparent forwarding.
pub fn rules(model: &Model) -> String {
    let mut out = String::new();
    let services: Vec<&ServicePort> = transparent_services(model).collect();
    if services.is_empty() {
        out.push_str("# No Service uses forwarding = \"transparent\": the node needs no rules.\n");
        return out;
    }
    out.push_str(
        "#!/bin/sh\n\
         # Node rules for sluice's transparent forwarding (forwarding = \"transparent\").\n\
         # Run once per boot, as root, in the network namespace sluice runs in; sluice never\n\
         # applies them itself. See docs/client-address.md.\n\
         #\n\
         # Services that need them:\n",
    );
    for s in &services {
        let endpoints: Vec<String> = s.endpoints.iter().map(|e| e.addr.to_string()).collect();
        let _ = writeln!(
            out,
            "#   {} on NodePort {}/{} -> {}",
            s.key,
            s.node_port,
            s.key.protocol,
            if endpoints.is_empty() {
                "(no endpoints yet)".to_owned()
            } else {
                endpoints.join(", ")
            }
        );
    }
    out.push_str(
        "#\n\
         # Why: a backend connection leaves from the client's address, so the pod's reply is\n\
         # addressed to the client. The pod's default route must lead back through this node\n\
         # (pod side, not done here). On the node, the nft rule marks packets that belong to\n\
         # a transparent socket, and the marked packets are routed to the local stack, where\n\
         # sluice's socket receives them. Without these, backend connects time out.\n\
         # IP forwarding (net.ipv4.ip_forward) can stay off.\n\n",
    );
    // UDP flows' upstream sockets are transparent too (bound to the client's address and
    // port): their replies need the same mark.
    let udp = services.iter().any(|s| s.key.protocol == Protocol::Udp);
    for (family, ip, any, nft_family) in [
        ("IPv4", "ip", "0.0.0.0/0", "ip"),
        ("IPv6", "ip -6", "::/0", "ip6"),
    ] {
        let _ = write!(
            out,
            "# --- {family} ---\n\
             # Packets marked {FWMARK} are looked up in table {ROUTE_TABLE} ...\n\
             {ip} rule add fwmark {FWMARK} lookup {ROUTE_TABLE}\n\
             # ... which delivers every destination locally.\n\
             {ip} route add local {any} dev lo table {ROUTE_TABLE}\n\
             # Mark TCP packets that belong to a transparent socket (sluice's backend side).\n\
             nft add table {nft_family} {NFT_TABLE}\n\
             nft add chain {nft_family} {NFT_TABLE} pre '{{ type filter hook prerouting priority mangle; policy accept; }}'\n\
             nft add rule {nft_family} {NFT_TABLE} pre meta l4proto tcp socket transparent 1 meta mark set {FWMARK:#x}\n"
        );
        if udp {
            let _ = writeln!(
                out,
                "# The same for UDP: replies to a UDP flow's socket, bound to the client's address.\n\
                 nft add rule {nft_family} {NFT_TABLE} pre meta l4proto udp socket transparent 1 meta mark set {FWMARK:#x}"
            );
        }
        out.push('\n');
    }
    let _ = write!(
        out,
        "# To remove them again:\n\
         #   ip rule del fwmark {FWMARK} lookup {ROUTE_TABLE}; ip route flush table {ROUTE_TABLE}; nft delete table ip {NFT_TABLE}\n\
         #   ip -6 rule del fwmark {FWMARK} lookup {ROUTE_TABLE}; ip -6 route flush table {ROUTE_TABLE}; nft delete table ip6 {NFT_TABLE}\n"
    );
    out
}

/// Checks that this process may set IP_TRANSPARENT (what transparent forwarding does on every
/// backend socket), on a throwaway socket. The error names the missing capability.
pub fn check_transparent_capability() -> Result<(), String> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| format!("cannot open a socket to test IP_TRANSPARENT: {e}"))?;
    match socket.set_ip_transparent(true) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Err(format!(
            "forwarding = \"transparent\" needs the CAP_NET_ADMIN capability, which this process \
             lacks (setting IP_TRANSPARENT on a socket failed: {e}); run sluice as root or grant \
             it CAP_NET_ADMIN (systemd: AmbientCapabilities=CAP_NET_ADMIN; Kubernetes: \
             securityContext.capabilities.add: [\"NET_ADMIN\"]), or use forwarding = \
             \"proxy-v2\" instead. See docs/client-address.md"
        )),
        Err(e) => Err(format!(
            "forwarding = \"transparent\" cannot be used: setting IP_TRANSPARENT on a socket \
             failed: {e} (it needs CAP_NET_ADMIN and a kernel with IP_TRANSPARENT)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(text: &str) -> Model {
        crate::config::parse(text, "t.toml", None).unwrap()
    }

    #[test]
    fn rules_name_the_services_and_both_families() {
        let m = model(
            "[[service]]\nname = \"web\"\nnamespace = \"shop\"\nport = 80\nnode_port = 30080\n\
             forwarding = \"transparent\"\nendpoints = [\"198.18.2.2\"]\n\
             [[service]]\nname = \"other\"\nport = 80\nendpoints = [\"10.0.0.1\"]\n",
        );
        let r = rules(&m);
        assert!(
            r.contains("#   shop/web on NodePort 30080/TCP -> 198.18.2.2:80\n"),
            "{r}"
        );
        assert!(!r.contains("default/other"), "{r}");
        assert!(
            !r.contains("l4proto udp"),
            "no UDP Service, no UDP rule: {r}"
        );
        for line in [
            "ip rule add fwmark 1 lookup 100\n",
            "ip route add local 0.0.0.0/0 dev lo table 100\n",
            "nft add table ip sluice_tproxy\n",
            "nft add chain ip sluice_tproxy pre '{ type filter hook prerouting priority mangle; policy accept; }'\n",
            "nft add rule ip sluice_tproxy pre meta l4proto tcp socket transparent 1 meta mark set 0x1\n",
            "ip -6 rule add fwmark 1 lookup 100\n",
            "ip -6 route add local ::/0 dev lo table 100\n",
            "nft add table ip6 sluice_tproxy\n",
            "nft add rule ip6 sluice_tproxy pre meta l4proto tcp socket transparent 1 meta mark set 0x1\n",
        ] {
            assert!(r.contains(line), "missing {line:?} in\n{r}");
        }
        // Every line is a command or a comment.
        for l in r.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            assert!(l.starts_with("ip ") || l.starts_with("nft "), "{l}");
        }
    }

    #[test]
    fn a_transparent_udp_service_adds_the_udp_rule_for_both_families() {
        let m = model(
            "[[service]]\nname = \"dns\"\nprotocol = \"UDP\"\nport = 53\nnode_port = 30053\n\
             forwarding = \"transparent\"\nendpoints = [\"198.18.2.2\"]\n",
        );
        let r = rules(&m);
        assert!(
            r.contains("#   default/dns on NodePort 30053/UDP -> 198.18.2.2:53\n"),
            "{r}"
        );
        for family in ["ip", "ip6"] {
            for proto in ["tcp", "udp"] {
                let line = format!(
                    "nft add rule {family} sluice_tproxy pre meta l4proto {proto} socket transparent 1 meta mark set 0x1\n"
                );
                assert!(r.contains(&line), "missing {line:?} in\n{r}");
            }
        }
        for l in r.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            assert!(l.starts_with("ip ") || l.starts_with("nft "), "{l}");
        }
    }

    #[test]
    fn no_transparent_service_no_commands() {
        let m = model("[[service]]\nname = \"a\"\nport = 80\nforwarding = \"proxy-v2\"\n");
        let r = rules(&m);
        assert!(r.lines().all(|l| l.starts_with('#')), "{r}");
        assert!(!uses_transparent(&m));
    }
}
