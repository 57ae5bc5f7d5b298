//! Names of the sockets a hand-over passes: what each socket is, in a form that is both the
//! manifest entry of the hand-over protocol and systemd's `FDNAME=` (so a socket keeps its
//! name whichever way it travels).
//!
//! A listening socket of the data plane is named by what it serves and which worker holds
//! it: `tcp/0.0.0.0/30000/w0`, `udp/[fd00--1]/30053/w3`. The worker index matters: a
//! client-IP steering program picks a socket by its position in the SO_REUSEPORT group,
//! and the successor must give socket *i* to its worker *i* for each worker's affinity
//! table to keep meaning the same clients. The control plane's own listeners are
//! `control`, `metrics/127.0.0.1/9100`, `health/0.0.0.0/10256` and
//! `hcnp/0.0.0.0/32000` (a Service's healthCheckNodePort).
//!
//! systemd's rule for names (`fdname_is_valid`): at most 255 printable ASCII characters,
//! no `:` (it separates `LISTEN_FDNAMES`). IPv6 addresses are therefore written in
//! brackets with `-` for `:` (`[::1]` → `[--1]`), which no IPv6 text form contains, so
//! the mapping is one-to-one. Parsing is strict: a name this version does not know is an
//! error naming it, never a guess.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// Longest name systemd accepts (`FDNAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// What kind of socket a name stands for; says how the socket is checked before use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SocketKind {
    /// A NodePort's TCP listener (SOCK_STREAM, listening, SO_REUSEPORT).
    Tcp,
    /// A NodePort's UDP socket (SOCK_DGRAM, SO_REUSEPORT).
    Udp,
    /// The `metrics_address` listener (SOCK_STREAM, listening).
    Metrics,
    /// The `health_address` listener (SOCK_STREAM, listening).
    Health,
    /// A healthCheckNodePort server's listener (SOCK_STREAM, listening).
    HealthCheckNodePort,
}

impl SocketKind {
    fn tag(self) -> &'static str {
        match self {
            SocketKind::Tcp => "tcp",
            SocketKind::Udp => "udp",
            SocketKind::Metrics => "metrics",
            SocketKind::Health => "health",
            SocketKind::HealthCheckNodePort => "hcnp",
        }
    }

    fn from_tag(tag: &str) -> Option<SocketKind> {
        Some(match tag {
            "tcp" => SocketKind::Tcp,
            "udp" => SocketKind::Udp,
            "metrics" => SocketKind::Metrics,
            "health" => SocketKind::Health,
            "hcnp" => SocketKind::HealthCheckNodePort,
            _ => return None,
        })
    }

    /// A NodePort socket of the data plane (one per worker).
    pub fn is_node_port(self) -> bool {
        matches!(self, SocketKind::Tcp | SocketKind::Udp)
    }
}

/// One socket passed from a running sluice to its successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SocketName {
    /// A socket bound to an address: a NodePort socket of worker `worker`, or (with
    /// `worker` 0) one of the control plane's TCP listeners.
    Bound {
        kind: SocketKind,
        addr: SocketAddr,
        /// The worker that holds it (its position in the SO_REUSEPORT group); 0 for the
        /// control plane's listeners.
        worker: u32,
    },
    /// The control socket (a Unix stream listener; its path comes from the configuration).
    Control,
}

impl SocketName {
    /// A NodePort socket of one worker.
    pub fn node_port(kind: SocketKind, addr: SocketAddr, worker: u32) -> SocketName {
        SocketName::Bound { kind, addr, worker }
    }

    /// One of the control plane's TCP listeners (metrics, health, healthCheckNodePort).
    pub fn listener(kind: SocketKind, addr: SocketAddr) -> SocketName {
        SocketName::Bound {
            kind,
            addr,
            worker: 0,
        }
    }

    pub fn kind(&self) -> Option<SocketKind> {
        match self {
            SocketName::Bound { kind, .. } => Some(*kind),
            SocketName::Control => None,
        }
    }

    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            SocketName::Bound { addr, .. } => Some(*addr),
            SocketName::Control => None,
        }
    }
}

/// A name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("socket name {name:?}: {problem}")]
pub struct NameError {
    /// The name as received (cut to [`MAX_NAME_LEN`] characters).
    pub name: String,
    pub problem: &'static str,
}

impl fmt::Display for SocketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketName::Control => f.write_str("control"),
            SocketName::Bound { kind, addr, worker } => {
                f.write_str(kind.tag())?;
                match addr.ip() {
                    IpAddr::V4(ip) => write!(f, "/{ip}")?,
                    IpAddr::V6(ip) => write!(f, "/[{}]", ip.to_string().replace(':', "-"))?,
                }
                write!(f, "/{}", addr.port())?;
                if kind.is_node_port() {
                    write!(f, "/w{worker}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for SocketName {
    type Err = NameError;

    fn from_str(name: &str) -> Result<SocketName, NameError> {
        let err = |problem| NameError {
            name: name.chars().take(MAX_NAME_LEN).collect(),
            problem,
        };
        if name.len() > MAX_NAME_LEN {
            return Err(err("longer than 255 bytes"));
        }
        if name == "control" {
            return Ok(SocketName::Control);
        }
        let mut parts = name.split('/');
        let tag = parts.next().unwrap_or_default();
        let kind = SocketKind::from_tag(tag).ok_or_else(|| {
            err("unknown kind (expected tcp, udp, metrics, health, hcnp or control)")
        })?;
        let ip = parts.next().ok_or_else(|| err("no address"))?;
        let ip: IpAddr = match ip.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            Some(v6) if !v6.contains(':') => v6
                .replace('-', ":")
                .parse::<std::net::Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| err("not an IPv6 address in [...]"))?,
            Some(_) => return Err(err("IPv6 addresses are written with - for :")),
            None => ip
                .parse::<std::net::Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| err("not an IPv4 address (IPv6 goes in [...])"))?,
        };
        let port = parts
            .next()
            .ok_or_else(|| err("no port"))?
            .parse::<u16>()
            .map_err(|_| err("the port is not a number in 0..=65535"))?;
        let worker = if kind.is_node_port() {
            let w = parts.next().ok_or_else(|| err("no worker (/wN)"))?;
            w.strip_prefix('w')
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or_else(|| err("the worker is not wN"))?
        } else {
            0
        };
        if parts.next().is_some() {
            return Err(err("unexpected text after the last part"));
        }
        let parsed = SocketName::Bound {
            kind,
            addr: SocketAddr::new(ip, port),
            worker,
        };
        // One spelling per socket: `w01` or `[0-0-0-0-0-0-0-1]` would name the same socket
        // twice in a manifest.
        if parsed.to_string() != name {
            return Err(err("not in canonical form"));
        }
        Ok(parsed)
    }
}

/// Whether systemd accepts `name` as an `FDNAME=` (its `fdname_is_valid`).
pub fn is_valid_fdname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(name: SocketName) -> String {
        let text = name.to_string();
        assert!(is_valid_fdname(&text), "{text} is not a valid FDNAME");
        assert_eq!(text.parse::<SocketName>(), Ok(name), "{text}");
        text
    }

    #[test]
    fn names_round_trip_and_are_valid_fdnames() {
        let v4: SocketAddr = "0.0.0.0:30000".parse().unwrap();
        let v6: SocketAddr = "[fd00::1]:30053".parse().unwrap();
        let any6: SocketAddr = "[::]:30000".parse().unwrap();
        assert_eq!(
            round_trip(SocketName::node_port(SocketKind::Tcp, v4, 0)),
            "tcp/0.0.0.0/30000/w0"
        );
        assert_eq!(
            round_trip(SocketName::node_port(SocketKind::Udp, v6, 17)),
            "udp/[fd00--1]/30053/w17"
        );
        assert_eq!(
            round_trip(SocketName::node_port(SocketKind::Tcp, any6, 3)),
            "tcp/[--]/30000/w3"
        );
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        round_trip(SocketName::node_port(SocketKind::Tcp, mapped, 1));
        assert_eq!(
            round_trip(SocketName::listener(
                SocketKind::Metrics,
                "127.0.0.1:9100".parse().unwrap()
            )),
            "metrics/127.0.0.1/9100"
        );
        round_trip(SocketName::listener(SocketKind::Health, any6));
        round_trip(SocketName::listener(SocketKind::HealthCheckNodePort, v4));
        assert_eq!(round_trip(SocketName::Control), "control");
    }

    #[test]
    fn names_of_another_kind_or_spelling_are_errors_that_say_why() {
        for (bad, why) in [
            ("", "unknown kind"),
            ("sctp/0.0.0.0/1/w0", "unknown kind"),
            ("tcp", "no address"),
            ("tcp/0.0.0.0", "no port"),
            ("tcp/0.0.0.0/30000", "no worker"),
            ("tcp/0.0.0.0/70000/w0", "port"),
            ("tcp/0.0.0.0/30000/0", "wN"),
            ("tcp/0.0.0.0/30000/w0/x", "after the last part"),
            ("tcp/::1/30000/w0", "IPv4"),
            ("tcp/[::1]/30000/w0", "with - for :"),
            ("tcp/[fd00--zz]/30000/w0", "IPv6"),
            ("tcp/0.0.0.0/30000/w01", "canonical"),
            ("tcp/0.0.0.0/030000/w1", "canonical"),
            ("tcp/[0-0-0-0-0-0-0-1]/1/w0", "canonical"),
            ("metrics/127.0.0.1/9100/w0", "after the last part"),
        ] {
            let e = bad.parse::<SocketName>().unwrap_err();
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
        }
        let long = "x".repeat(300);
        let e = long.parse::<SocketName>().unwrap_err();
        assert!(e.to_string().contains("255"), "{e}");
        assert_eq!(e.name.len(), MAX_NAME_LEN);
    }

    #[test]
    fn fdname_rule_matches_systemds() {
        assert!(is_valid_fdname("tcp/[--]/30000/w0"));
        assert!(!is_valid_fdname("tcp/[::]/30000/w0"));
        assert!(!is_valid_fdname(""));
        assert!(!is_valid_fdname("a\nb"));
        assert!(!is_valid_fdname(&"a".repeat(256)));
    }
}
