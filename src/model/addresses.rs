//! Addresses in the vocabulary: where NodePorts are served (`listen_addresses`, with
//! kube-proxy's CIDRs and `primary`), IP prefixes ([`Cidr`]), and a Service port's
//! addresses of its own (external and LoadBalancer IPs, source ranges). Plain data and
//! pure functions, std only, like the rest of `model`.

use std::fmt;
use std::net::IpAddr;

/// Which node addresses NodePorts are served on, as configured (`listen_addresses`, like
/// kube-proxy's `nodePortAddresses`). [`ListenAddresses::resolve`] turns it into the
/// addresses to bind, given the node's addresses now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddresses {
    /// Every local address, IPv4 and IPv6 (one dual-stack wildcard socket, or `0.0.0.0`
    /// when the host has no IPv6).
    All,
    /// Exactly these local addresses.
    Only(Vec<IpAddr>),
    /// These addresses, and the node's addresses inside these CIDRs (following the
    /// node's address changes; IPv6 link-local ones are left out: they need an interface).
    Matching {
        addresses: Vec<IpAddr>,
        cidrs: Vec<Cidr>,
    },
    /// kube-proxy's `primary`: this node's primary addresses ([`super::Model::primary_ips`]); every
    /// address while they are unknown (as kube-proxy, which then matches everything).
    Primary,
}

impl ListenAddresses {
    /// The addresses to bind NodePorts on now: `None` for every address (a wildcard),
    /// else a sorted list without duplicates (possibly empty: no CIDR matches yet).
    /// `node`: the node's interface addresses now; `primary`: its primary addresses.
    pub fn resolve(&self, node: &[IpAddr], primary: &[IpAddr]) -> Option<Vec<IpAddr>> {
        let mut out =
            match self {
                ListenAddresses::All => return None,
                ListenAddresses::Only(list) => list.clone(),
                ListenAddresses::Matching { addresses, cidrs } => {
                    let mut out = addresses.clone();
                    out.extend(node.iter().map(|&ip| canonical_ip(ip)).filter(|&ip| {
                        !is_ipv6_link_local(ip) && cidrs.iter().any(|c| c.contains(ip))
                    }));
                    out
                }
                ListenAddresses::Primary if primary.is_empty() => return None,
                ListenAddresses::Primary => primary.to_vec(),
            };
        out.sort_unstable();
        out.dedup();
        Some(out)
    }
}

/// `fe80::/10`: usable only with an interface scope, which a listen address does not carry.
fn is_ipv6_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// `ip`, with an IPv4-mapped IPv6 address as the IPv4 address it maps.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An IP prefix, e.g. `10.0.0.0/8` or `2001:db8::/32`: its address has no bits set past the
/// prefix length (an IPv4-mapped IPv6 prefix is kept as the IPv4 one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The prefix of `addr` with `prefix` bits (bits past them are cleared, as Go's
    /// `net.ParseCIDR` does); `None` when `prefix` is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() && prefix >= 96 => {
                (canonical_ip(addr), prefix - 96)
            }
            _ => (addr, prefix),
        };
        match addr {
            IpAddr::V4(v4) if prefix <= 32 => Some(Cidr {
                addr: IpAddr::V4((u32::from(v4) & mask32(prefix)).into()),
                prefix,
            }),
            IpAddr::V6(v6) if prefix <= 128 => Some(Cidr {
                addr: IpAddr::V6((u128::from(v6) & mask128(prefix)).into()),
                prefix,
            }),
            _ => None,
        }
    }

    /// The prefix's first address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// Its length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` (IPv4-mapped counts as IPv4) is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical_ip(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }

    /// Whether every address of `other` is inside this prefix.
    pub fn covers(&self, other: &Cidr) -> bool {
        self.prefix <= other.prefix && self.contains(other.addr)
    }
}

/// `"10.0.0.0/8"`, `"2001:db8::/32"`; a bare address is a host prefix (`/32`, `/128`).
impl std::str::FromStr for Cidr {
    type Err = ();

    fn from_str(s: &str) -> Result<Cidr, ()> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => {
                let ip: IpAddr = ip.parse().map_err(drop)?;
                // Digits only: Go rejects "+8" and " 8".
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(());
                }
                (ip, p.parse::<u8>().map_err(drop)?)
            }
            None => {
                let ip: IpAddr = s.parse().map_err(drop)?;
                (ip, if ip.is_ipv4() { 32 } else { 128 })
            }
        };
        Cidr::new(ip, prefix).ok_or(())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// Where a Service port is reached besides its NodePort, as kube-proxy serves them: its
/// `spec.externalIPs` and its LoadBalancer ingress IPs (`status.loadBalancer.ingress[].ip`
/// in VIP mode), each on the Service port, on the nodes where the address is local.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceAddresses {
    /// `spec.externalIPs` (of the families the Service serves).
    pub external_ips: Vec<IpAddr>,
    /// LoadBalancer ingress IPs (of the families the Service serves).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`: at the LoadBalancer IPs, a client of a family some
    /// range is of must be inside one (a family without ranges is not restricted, as in
    /// kube-proxy, whose per-family proxiers each see their family's ranges only).
    pub source_ranges: Vec<Cidr>,
}

impl ServiceAddresses {
    /// Whether the Service port is reached at an address of its own.
    pub fn is_empty(&self) -> bool {
        self.external_ips.is_empty() && self.load_balancer_ips.is_empty()
    }
}
