//! The one spelling of every model value a person reads or writes: the words the
//! configuration file and the `sluice.io/*` annotations accept, and what `sluice check`,
//! `sluice ctl`, the logs and the docs print. Parsers build their lists of accepted words
//! from [`names`] over each enum's `ALL`; printers use `name()` or `Display`. A test in
//! `config` parses every name back.
//!
//! Kept apart from the types so the vocabulary reads as one table (like sozu's
//! `command/src/proto/display.rs`).

use super::{DriverSetting, Forwarding, HashKey, Policy, Protocol, RelayMode, TrafficPolicy};
use std::fmt;

/// `(name, value)` for each of `all`: the list a parser of that key accepts.
pub fn names<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> Vec<(&'static str, T)> {
    all.iter().map(|&v| (name(v), v)).collect()
}

/// The kind of a [`Policy`], without its parameters: what the `policy` key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Maglev,
    ClientIp,
    RoundRobin,
    Random,
    LeastConnections,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 5] = [
        PolicyKind::Maglev,
        PolicyKind::ClientIp,
        PolicyKind::RoundRobin,
        PolicyKind::Random,
        PolicyKind::LeastConnections,
    ];

    /// The value of the `policy` key (and of `sluice.io/policy`, which has no `client-ip`:
    /// that comes from `sessionAffinity: ClientIP`).
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Maglev => "maglev",
            PolicyKind::ClientIp => "client-ip",
            PolicyKind::RoundRobin => "round-robin",
            PolicyKind::Random => "random",
            PolicyKind::LeastConnections => "least-connections",
        }
    }
}

impl Policy {
    pub fn kind(&self) -> PolicyKind {
        match self {
            Policy::Maglev { .. } => PolicyKind::Maglev,
            Policy::ClientIp { .. } => PolicyKind::ClientIp,
            Policy::RoundRobin => PolicyKind::RoundRobin,
            Policy::Random => PolicyKind::Random,
            Policy::LeastConnections => PolicyKind::LeastConnections,
        }
    }
}

/// `maglev(client-ip-port)`, `client-ip(10800s)`, `round-robin`, …: the policy's name with
/// the parameter that tells two of a kind apart (the hash key, the affinity timeout).
impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.kind().name();
        match self {
            Policy::Maglev { key } => write!(f, "{name}({key})"),
            Policy::ClientIp { timeout, .. } => write!(f, "{name}({}s)", timeout.as_secs()),
            Policy::RoundRobin | Policy::Random | Policy::LeastConnections => f.write_str(name),
        }
    }
}

impl HashKey {
    pub const ALL: [HashKey; 2] = [HashKey::ClientIpPort, HashKey::ClientIp];

    /// The value of the `hash_key` key and of `sluice.io/hash-key`.
    pub fn name(self) -> &'static str {
        match self {
            HashKey::ClientIpPort => "client-ip-port",
            HashKey::ClientIp => "client-ip",
        }
    }
}

/// The kind of a [`Forwarding`], without the PROXY v2 options: what the `forwarding` key
/// names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardingMode {
    None,
    ProxyV1,
    ProxyV2,
    Transparent,
}

impl ForwardingMode {
    pub const ALL: [ForwardingMode; 4] = [
        ForwardingMode::None,
        ForwardingMode::ProxyV1,
        ForwardingMode::ProxyV2,
        ForwardingMode::Transparent,
    ];

    /// The value of the `forwarding` key and of `sluice.io/forwarding`.
    pub fn name(self) -> &'static str {
        match self {
            ForwardingMode::None => "none",
            ForwardingMode::ProxyV1 => "proxy-v1",
            ForwardingMode::ProxyV2 => "proxy-v2",
            ForwardingMode::Transparent => "transparent",
        }
    }
}

impl Forwarding {
    pub fn mode(&self) -> ForwardingMode {
        match self {
            Forwarding::None => ForwardingMode::None,
            Forwarding::ProxyV1 => ForwardingMode::ProxyV1,
            Forwarding::ProxyV2(_) => ForwardingMode::ProxyV2,
            Forwarding::Transparent => ForwardingMode::Transparent,
        }
    }
}

/// The mode's name; PROXY v2 adds its options: `proxy-v2(unique-id,0xE0)`.
impl fmt::Display for Forwarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mode().name())?;
        if let Forwarding::ProxyV2(o) = self {
            let mut extra: Vec<String> = Vec::new();
            if o.unique_id {
                extra.push("unique-id".to_owned());
            }
            extra.extend(o.tlvs.iter().map(|(k, _)| format!("{k:#04X}")));
            if !extra.is_empty() {
                write!(f, "({})", extra.join(","))?;
            }
        }
        Ok(())
    }
}

impl RelayMode {
    pub const ALL: [RelayMode; 3] = [RelayMode::Splice, RelayMode::Copy, RelayMode::Auto];

    /// The value of the `relay` key.
    pub fn name(self) -> &'static str {
        match self {
            RelayMode::Splice => "splice",
            RelayMode::Copy => "copy",
            RelayMode::Auto => "auto",
        }
    }
}

impl DriverSetting {
    pub const ALL: [DriverSetting; 3] = [
        DriverSetting::Auto,
        DriverSetting::Uring,
        DriverSetting::Epoll,
    ];

    /// The value of the `driver` key and of `--driver`.
    pub fn name(self) -> &'static str {
        match self {
            DriverSetting::Auto => "auto",
            DriverSetting::Uring => "uring",
            DriverSetting::Epoll => "epoll",
        }
    }
}

impl TrafficPolicy {
    pub const ALL: [TrafficPolicy; 2] = [TrafficPolicy::Cluster, TrafficPolicy::Local];

    /// Kubernetes' spelling of `externalTrafficPolicy`.
    pub fn name(self) -> &'static str {
        match self {
            TrafficPolicy::Cluster => "Cluster",
            TrafficPolicy::Local => "Local",
        }
    }
}

impl Protocol {
    /// Every protocol, in order.
    pub const ALL: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];

    /// Kubernetes' spelling, upper case: the value of the `protocol` key and of a Service
    /// port's `protocol`, and what `check`, `ctl`, `describe` (`53/UDP`) and the metrics'
    /// `protocol` label print.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// `Display` is `name()` for the enums whose values carry nothing else.
macro_rules! display_by_name {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    )*};
}
display_by_name!(HashKey, RelayMode, DriverSetting, TrafficPolicy, Protocol);
