//! This node's own addresses, read with getifaddrs(3) at start, at each reload and every
//! [`POLL`]: the data plane treats a client with one of them as the node itself (Local
//! Services route it with the cluster endpoints, as kube-proxy's "fib saddr type local"
//! rule does), and the listeners follow them (`control::listeners`).
//!
//! Reading them never fails the daemon: an error is logged and the addresses known before
//! are kept (loopback always counts, in the snapshot itself).

use std::net::IpAddr;
use std::time::Duration;

/// How often the control plane reads the addresses again, so that listeners follow them
/// (a getifaddrs(3) call: one netlink dump, well under a millisecond on a node with a few
/// dozen addresses). Polling rather than a netlink subscription: no socket to keep, no
/// missed or overflowed notification to recover from, and a VIP that moves between nodes
/// (kube-vip, keepalived) takes seconds to be announced anyway.
pub const POLL: Duration = Duration::from_secs(2);

/// Every address of every interface (up or not), IPv4 and IPv6; `Err` when the kernel
/// cannot list them.
pub fn addresses() -> Result<Vec<IpAddr>, std::io::Error> {
    let list = nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)?;
    let mut out: Vec<IpAddr> = list
        .filter_map(|i| i.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_is_listed() {
        let all = super::addresses().unwrap();
        assert!(all.contains(&"127.0.0.1".parse().unwrap()), "{all:?}");
    }
}
