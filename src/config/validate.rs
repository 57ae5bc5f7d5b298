//! Judges every value of a parsed file and builds the [`Model`] from it.
//!
//! Each check turns a spanned file value into a model value or into a [`ConfigError`] that
//! points at it ("parse, don't validate"): after this module nothing needs checking again.
//! Checks that involve several Service ports (duplicate identities, NodePort collisions) name
//! the earlier entry by its line. NodePort allocation itself is [`super::allocate`]'s job.

use super::allocate::{self, Allocation, Request};
use super::file::{ConfigFile, DurationText, EndpointEntry, ServiceEntry};
use super::{ConfigError, Source};
use crate::model::{
    Endpoint, HashKey, ListenAddresses, Model, NodePortRange, Policy, Protocol, RelayMode,
    ServiceDefaults, ServiceName, ServicePort, ServicePortKey, Settings, Timeouts,
    DEFAULT_NODE_PORT_RANGE, DEFAULT_WEIGHT,
};
use serde_spanned::Spanned;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

/// Upper bound of `workers`: far above any machine sluice runs on, low enough to catch typos.
const MAX_WORKERS: i64 = 1024;
/// Upper bound of an endpoint's `weight`, so that weight sums cannot overflow.
pub(super) const MAX_WEIGHT: i64 = 65535;
/// Bounds of `maglev_table_size` (both prime).
const MIN_TABLE_SIZE: i64 = 1009;
const MAX_TABLE_SIZE: i64 = 1_000_003;

/// Builds the model: settings first (services need their defaults and the NodePort range),
/// then each `[[service]]` in file order, then the checks across services, then allocation.
pub(super) fn build(
    src: &Source,
    file: ConfigFile,
    previous: Option<&Model>,
) -> Result<Model, ConfigError> {
    let (settings, range_span) = settings(src, &file)?;
    let mut checked: Vec<Checked> = Vec::with_capacity(file.service.len());
    let mut by_key: HashMap<ServicePortKey, usize> = HashMap::new();
    let mut by_node_port: HashMap<(Protocol, u16), usize> = HashMap::new();
    for entry in &file.service {
        let this = service(src, entry, &settings.defaults)?;
        if let Some(&first) = by_key.get(&this.port.key) {
            return Err(src.error(
                &this.name_span,
                format!(
                    "{} is defined twice (first at line {}); a Service's ports need \
                     distinct `port_name`s",
                    describe(&this.port.key),
                    src.line(checked[first].name_span.start)
                ),
            ));
        }
        if let Some(node_port) = &this.node_port {
            check_node_port_in_range(src, node_port, settings.node_port_range, &range_span)?;
            let wanted = (this.port.key.protocol, this.port.node_port);
            if let Some(&first) = by_node_port.get(&wanted) {
                let other = &checked[first];
                return Err(src.error(
                    &node_port.span(),
                    format!(
                        "node_port {}/{} of {} is already used by {} (line {})",
                        wanted.1,
                        wanted.0,
                        this.port.key,
                        other.port.key,
                        src.line(other.node_port.as_ref().map_or(0, |p| p.span().start))
                    ),
                ));
            }
            by_node_port.insert(wanted, checked.len());
        }
        by_key.insert(this.port.key.clone(), checked.len());
        checked.push(this);
    }
    check_port_names(src, &checked)?;

    checked.sort_by(|a, b| a.port.key.cmp(&b.port.key));
    let requests: Vec<Request> = checked
        .iter()
        .map(|c| Request {
            key: &c.port.key,
            explicit: c.node_port.as_ref().map(|_| c.port.node_port),
        })
        .collect();
    let allocated = allocate::allocate(settings.node_port_range, &requests, previous);
    let ports = match allocated {
        Ok(ports) => ports,
        Err(exhausted) => {
            let c = &checked[exhausted.index];
            return Err(src.error(
                &c.name_span,
                format!(
                    "no free node port left for {}: all {} ports of node_port_range {} are \
                     used; widen the range or give some services explicit node ports",
                    describe(&c.port.key),
                    settings.node_port_range.size(),
                    settings.node_port_range
                ),
            ));
        }
    };
    let services = checked
        .into_iter()
        .zip(ports)
        .map(
            |(
                c,
                Allocation {
                    node_port,
                    allocated,
                },
            )| ServicePort {
                node_port,
                node_port_allocated: allocated,
                ..c.port
            },
        )
        .collect();
    Ok(Model { settings, services })
}

/// One `[[service]]` entry after its own checks, with the spans later checks point at.
struct Checked {
    /// `node_port` is 0 here until allocation when the file gives none.
    port: ServicePort,
    name_span: Range<usize>,
    node_port: Option<Spanned<i64>>,
}

fn describe(key: &ServicePortKey) -> String {
    if key.port_name.is_empty() {
        format!("Service {}", key.service)
    } else {
        format!("port `{}` of Service {}", key.port_name, key.service)
    }
}

fn settings(src: &Source, f: &ConfigFile) -> Result<(Settings, Option<Range<usize>>), ConfigError> {
    let base = Settings::default();
    let workers = match &f.workers {
        Some(w) => Some(int(
            src,
            w,
            "workers",
            1,
            MAX_WORKERS,
            "omit `workers` for one per online CPU",
        )?),
        None => None,
    };
    let listen = match &f.listen_addresses {
        Some(list) => listen_addresses(src, list)?,
        None => ListenAddresses::All,
    };
    let node_port_range = match &f.node_port_range {
        Some(r) => node_port_range(src, r)?,
        None => DEFAULT_NODE_PORT_RANGE,
    };
    let max_connections_per_worker = match &f.max_connections_per_worker {
        Some(v) => int(src, v, "max_connections_per_worker", 1, u32::MAX.into(), "")?,
        None => base.max_connections_per_worker,
    };
    let relay = match &f.relay {
        Some(r) => choice(
            src,
            r,
            "relay",
            &[("splice", RelayMode::Splice), ("copy", RelayMode::Copy)],
        )?,
        None => base.relay,
    };
    let backlog = match &f.backlog {
        Some(b) => int(src, b, "backlog", 1, i32::MAX.into(), "")?,
        None => base.backlog,
    };
    let fallback = ServiceDefaults::default();
    let defaults = ServiceDefaults {
        timeouts: Timeouts {
            connect: opt_duration(
                src,
                &f.connect_timeout,
                "connect_timeout",
                fallback.timeouts.connect,
            )?,
            idle: opt_duration(src, &f.idle_timeout, "idle_timeout", fallback.timeouts.idle)?,
        },
        connect_retries: opt_retries(src, &f.connect_retries, fallback.connect_retries)?,
        maglev_table_size: opt_table_size(src, &f.maglev_table_size, fallback.maglev_table_size)?,
    };
    let settings = Settings {
        workers,
        pin_workers: f.pin_workers.unwrap_or(base.pin_workers),
        listen,
        node_port_range,
        max_connections_per_worker,
        relay,
        backlog,
        defaults,
    };
    Ok((settings, f.node_port_range.as_ref().map(Spanned::span)))
}

fn listen_addresses(
    src: &Source,
    list: &Spanned<Vec<Spanned<String>>>,
) -> Result<ListenAddresses, ConfigError> {
    if list.get_ref().is_empty() {
        return Err(src.error(
            &list.span(),
            "`listen_addresses` is empty, so nothing would be served; omit the key to serve \
             on all addresses",
        ));
    }
    let mut seen: Vec<(IpAddr, Range<usize>)> = Vec::new();
    for text in list.get_ref() {
        let ip: IpAddr = text.get_ref().trim().parse().map_err(|_| {
            src.error(
                &text.span(),
                format!(
                    "listen address {:?} is not an IP address (CIDRs and host names are not \
                     supported)",
                    text.get_ref()
                ),
            )
        })?;
        for (other, span) in &seen {
            if *other == ip {
                return Err(src.error(
                    &text.span(),
                    format!(
                        "listen address {ip} is listed twice (first at line {})",
                        src.line(span.start)
                    ),
                ));
            }
            if other.is_ipv4() == ip.is_ipv4() && (other.is_unspecified() || ip.is_unspecified()) {
                return Err(src.error(
                    &text.span(),
                    format!(
                        "listen address {ip} overlaps {other} (line {}): a wildcard address \
                         already covers every address of its family",
                        src.line(span.start)
                    ),
                ));
            }
        }
        seen.push((ip, text.span()));
    }
    Ok(ListenAddresses::Only(
        seen.into_iter().map(|(ip, _)| ip).collect(),
    ))
}

fn node_port_range(src: &Source, text: &Spanned<String>) -> Result<NodePortRange, ConfigError> {
    let malformed = |why: &str| {
        src.error(
            &text.span(),
            format!(
                "node_port_range {:?} is malformed: {why}; expected \"FIRST-LAST\", e.g. \"30000-32767\"",
                text.get_ref()
            ),
        )
    };
    let (first, last) = text
        .get_ref()
        .split_once('-')
        .ok_or_else(|| malformed("no '-'"))?;
    let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p != 0);
    let first =
        port(first).ok_or_else(|| malformed("the first port is not a number in 1..=65535"))?;
    let last = port(last).ok_or_else(|| malformed("the last port is not a number in 1..=65535"))?;
    if first > last {
        return Err(malformed("the first port is above the last"));
    }
    Ok(NodePortRange { first, last })
}

fn service(
    src: &Source,
    e: &ServiceEntry,
    defaults: &ServiceDefaults,
) -> Result<Checked, ConfigError> {
    let name = dns_label(src, &e.name, "name", DnsLabel::Rfc1035)?;
    let namespace = match &e.namespace {
        Some(ns) => dns_label(src, ns, "namespace", DnsLabel::Rfc1123)?,
        None => "default".to_owned(),
    };
    let port_name = match &e.port_name {
        Some(p) if p.get_ref().is_empty() => String::new(),
        Some(p) => dns_label(src, p, "port_name", DnsLabel::Rfc1123)?,
        None => String::new(),
    };
    let protocol = match &e.protocol {
        Some(p) => protocol(src, p)?,
        None => Protocol::Tcp,
    };
    let port: u16 = int(src, &e.port, "port", 1, 65535, "")?;
    let target_port: u16 = match &e.target_port {
        Some(t) => int(src, t, "target_port", 1, 65535, "")?,
        None => port,
    };
    let node_port: u16 = match &e.node_port {
        Some(n) => int(
            src,
            n,
            "node_port",
            1,
            65535,
            "omit `node_port` to have one allocated",
        )?,
        None => 0,
    };
    if let Some(p) = &e.policy {
        choice(src, p, "policy", &[("maglev", ())])?;
    }
    let key = match &e.hash_key {
        Some(k) => choice(
            src,
            k,
            "hash_key",
            &[
                ("client-ip-port", HashKey::ClientIpPort),
                ("client-ip", HashKey::ClientIp),
            ],
        )?,
        None => HashKey::ClientIpPort,
    };
    let timeouts = Timeouts {
        connect: opt_duration(
            src,
            &e.connect_timeout,
            "connect_timeout",
            defaults.timeouts.connect,
        )?,
        idle: opt_duration(src, &e.idle_timeout, "idle_timeout", defaults.timeouts.idle)?,
    };
    let connect_retries = opt_retries(src, &e.connect_retries, defaults.connect_retries)?;
    let maglev_table_size = opt_table_size(src, &e.maglev_table_size, defaults.maglev_table_size)?;

    let mut endpoints: Vec<Endpoint> = Vec::with_capacity(e.endpoints.len());
    let mut first_seen: HashMap<SocketAddr, usize> = HashMap::new();
    for entry in &e.endpoints {
        let endpoint = self::endpoint(src, entry, target_port)?;
        if let Some(&first) = first_seen.get(&endpoint.addr) {
            return Err(src.error(
                &entry.span(),
                format!(
                    "endpoint {} is listed twice in {namespace}/{name} (first at line {})",
                    endpoint.addr,
                    src.line(first)
                ),
            ));
        }
        first_seen.insert(endpoint.addr, entry.span().start);
        endpoints.push(endpoint);
    }
    endpoints.sort_by_key(|ep| ep.addr);
    if endpoints.len() >= maglev_table_size as usize {
        let span = e
            .maglev_table_size
            .as_ref()
            .map_or(e.name.span(), Spanned::span);
        return Err(src.error(
            &span,
            format!(
                "maglev_table_size {maglev_table_size} is too small for {} endpoints: Maglev \
                 needs more table slots than endpoints (100 times more keeps shares even)",
                endpoints.len()
            ),
        ));
    }

    Ok(Checked {
        port: ServicePort {
            key: ServicePortKey {
                service: ServiceName { namespace, name },
                port_name,
                protocol,
            },
            port,
            node_port,
            node_port_allocated: false,
            target_port,
            endpoints,
            policy: Policy::Maglev { key },
            timeouts,
            connect_retries,
            maglev_table_size,
        },
        name_span: e.name.span(),
        node_port: e.node_port.clone(),
    })
}

fn check_node_port_in_range(
    src: &Source,
    node_port: &Spanned<i64>,
    range: NodePortRange,
    range_span: &Option<Range<usize>>,
) -> Result<(), ConfigError> {
    let value = *node_port.get_ref();
    if (i64::from(range.first)..=i64::from(range.last)).contains(&value) {
        return Ok(());
    }
    let whence = match range_span {
        Some(span) => format!("set at line {}", src.line(span.start)),
        None => "the default; set `node_port_range` to change it".to_owned(),
    };
    Err(src.error(
        &node_port.span(),
        format!("node_port {value} is outside node_port_range {range} ({whence})"),
    ))
}

/// Kubernetes: when a Service has several ports, every one of them must be named.
fn check_port_names(src: &Source, checked: &[Checked]) -> Result<(), ConfigError> {
    let mut ports: BTreeMap<&ServiceName, Vec<&Checked>> = BTreeMap::new();
    for c in checked {
        ports.entry(&c.port.key.service).or_default().push(c);
    }
    for (service, list) in ports {
        if list.len() < 2 {
            continue;
        }
        if let Some(unnamed) = list.iter().find(|c| c.port.key.port_name.is_empty()) {
            return Err(src.error(
                &unnamed.name_span,
                format!(
                    "Service {service} has {} ports, so each needs a `port_name` (as in \
                     Kubernetes); this one has none",
                    list.len()
                ),
            ));
        }
    }
    Ok(())
}

fn endpoint(
    src: &Source,
    entry: &Spanned<EndpointEntry>,
    target_port: u16,
) -> Result<Endpoint, ConfigError> {
    let (ip, port, weight, ip_span) = match entry.get_ref() {
        EndpointEntry::Text(text) => {
            let (ip, port) = endpoint_text(text).ok_or_else(|| {
                src.error(
                    &entry.span(),
                    format!(
                        "{text:?} is not an endpoint address: expected \"IP\", \"IP:PORT\" or \
                         \"[IPv6]:PORT\" (host names are not resolved)"
                    ),
                )
            })?;
            if port == Some(0) {
                return Err(src.error(&entry.span(), format!("endpoint {text:?} has port 0")));
            }
            (
                ip,
                port.unwrap_or(target_port),
                DEFAULT_WEIGHT,
                entry.span(),
            )
        }
        EndpointEntry::Table(table) => {
            let text = table.address.get_ref();
            let ip: IpAddr = text.trim().parse().map_err(|_| {
                src.error(
                    &table.address.span(),
                    format!(
                        "endpoint address {text:?} is not an IP address (give the port in \
                         `port`; host names are not resolved)"
                    ),
                )
            })?;
            let port = match &table.port {
                Some(p) => int(src, p, "port", 1, 65535, "")?,
                None => target_port,
            };
            let weight = match &table.weight {
                Some(w) => int(
                    src,
                    w,
                    "weight",
                    0,
                    MAX_WEIGHT,
                    "0 means: no new connections",
                )?,
                None => DEFAULT_WEIGHT,
            };
            (ip, port, weight, table.address.span())
        }
    };
    let unusable = if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip == IpAddr::from([255, 255, 255, 255]) {
        Some("the broadcast address")
    } else {
        None
    };
    if let Some(what) = unusable {
        return Err(src.error(
            &ip_span,
            format!("endpoint address {ip} is {what}; a backend needs a unicast address"),
        ));
    }
    Ok(Endpoint {
        addr: SocketAddr::new(ip, port),
        weight,
    })
}

/// `"IP"`, `"IP:PORT"`, `"[IPv6]"` or `"[IPv6]:PORT"` → address and port if given.
fn endpoint_text(text: &str) -> Option<(IpAddr, Option<u16>)> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some((ip, None));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some((addr.ip(), Some(addr.port())));
    }
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .parse::<Ipv6Addr>()
        .ok()
        .map(|ip| (IpAddr::V6(ip), None))
}

fn protocol(src: &Source, p: &Spanned<String>) -> Result<Protocol, ConfigError> {
    match p.get_ref().as_str() {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" | "SCTP" => Err(src.error(
            &p.span(),
            format!(
                "protocol {:?} is not served: sluice serves only TCP so far",
                p.get_ref()
            ),
        )),
        other => Err(src.error(
            &p.span(),
            format!("unknown protocol {other:?}: expected \"TCP\" (upper case, as in Kubernetes)"),
        )),
    }
}

#[derive(Clone, Copy)]
enum DnsLabel {
    /// Kubernetes Service names: starts with a letter.
    Rfc1035,
    /// Namespaces and port names: starts with a letter or digit.
    Rfc1123,
}

fn dns_label(
    src: &Source,
    value: &Spanned<String>,
    key: &str,
    kind: DnsLabel,
) -> Result<String, ConfigError> {
    let s = value.get_ref();
    let (what, rule) = match kind {
        DnsLabel::Rfc1035 => ("a DNS-1035 label", "start with a lower-case letter"),
        DnsLabel::Rfc1123 => (
            "a DNS-1123 label",
            "start with a lower-case letter or digit",
        ),
    };
    let first_ok = |c: char| match kind {
        DnsLabel::Rfc1035 => c.is_ascii_lowercase(),
        DnsLabel::Rfc1123 => c.is_ascii_lowercase() || c.is_ascii_digit(),
    };
    let problem = if s.is_empty() {
        Some("is empty".to_owned())
    } else if s.len() > 63 {
        Some(format!(
            "is {} characters long; at most 63 are allowed",
            s.len()
        ))
    } else if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        Some(format!(
            "contains {c:?}; only lower-case letters, digits and '-' are allowed"
        ))
    } else if !s.starts_with(first_ok) {
        Some(format!("must {rule}"))
    } else if s.ends_with('-') {
        Some("must end with a letter or digit".to_owned())
    } else {
        None
    };
    match problem {
        None => Ok(s.clone()),
        Some(problem) => Err(src.error(
            &value.span(),
            format!("{key} {s:?} is not {what}: it {problem}"),
        )),
    }
}

/// A string that must be one of `accepted` (exact, case-sensitive).
fn choice<T: Copy>(
    src: &Source,
    value: &Spanned<String>,
    key: &str,
    accepted: &[(&str, T)],
) -> Result<T, ConfigError> {
    if let Some((_, v)) = accepted.iter().find(|(name, _)| name == value.get_ref()) {
        return Ok(*v);
    }
    let list: Vec<String> = accepted
        .iter()
        .map(|(name, _)| format!("{name:?}"))
        .collect();
    Err(src.error(
        &value.span(),
        format!(
            "{key} {:?} is not accepted; expected {}",
            value.get_ref(),
            if list.len() == 1 {
                list[0].clone()
            } else {
                format!("one of {}", list.join(", "))
            }
        ),
    ))
}

/// An integer in `lo..=hi`, converted to the model's type. `hint` is appended when non-empty.
fn int<T: TryFrom<i64>>(
    src: &Source,
    value: &Spanned<i64>,
    key: &str,
    lo: i64,
    hi: i64,
    hint: &str,
) -> Result<T, ConfigError> {
    let v = *value.get_ref();
    if (lo..=hi).contains(&v) {
        if let Ok(converted) = T::try_from(v) {
            return Ok(converted);
        }
    }
    let mut message = format!("{key} {v} is out of range: must be {lo}..={hi}");
    if !hint.is_empty() {
        message = format!("{message} ({hint})");
    }
    Err(src.error(&value.span(), message))
}

fn opt_duration(
    src: &Source,
    value: &Option<Spanned<DurationText>>,
    key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let text = &value.get_ref().0;
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        src.error(
            &value.span(),
            format!(
                "{key} {text:?} is not a duration ({e}); write e.g. \"3s\", \"500ms\" or \"1h\""
            ),
        )
    })?;
    if d.is_zero() {
        return Err(src.error(&value.span(), format!("{key} must be longer than zero")));
    }
    Ok(d)
}

fn opt_retries(
    src: &Source,
    value: &Option<Spanned<i64>>,
    default: u32,
) -> Result<u32, ConfigError> {
    match value {
        Some(v) => int(src, v, "connect_retries", 0, u32::MAX.into(), ""),
        None => Ok(default),
    }
}

fn opt_table_size(
    src: &Source,
    value: &Option<Spanned<i64>>,
    default: u32,
) -> Result<u32, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let size: u32 = int(
        src,
        value,
        "maglev_table_size",
        MIN_TABLE_SIZE,
        MAX_TABLE_SIZE,
        "a prime; bigger tables spread connections more evenly",
    )?;
    if !is_prime(size) {
        let below = (MIN_TABLE_SIZE as u32..size).rev().find(|n| is_prime(*n));
        let above = (size..=MAX_TABLE_SIZE as u32).find(|n| is_prime(*n));
        let near: Vec<String> = below
            .into_iter()
            .chain(above)
            .map(|n| n.to_string())
            .collect();
        return Err(src.error(
            &value.span(),
            format!(
                "maglev_table_size {size} is not a prime; Maglev needs a prime table size \
                 (nearest primes: {})",
                near.join(", ")
            ),
        ));
    }
    Ok(size)
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        assert!(is_prime(1009) && is_prime(65537) && is_prime(1_000_003));
        assert!(!is_prime(65536) && !is_prime(1_000_001) && !is_prime(1));
    }

    #[test]
    fn endpoint_texts() {
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(
            endpoint_text("10.0.0.1"),
            Some(("10.0.0.1".parse().unwrap(), None))
        );
        assert_eq!(
            endpoint_text("10.0.0.1:80"),
            Some(("10.0.0.1".parse().unwrap(), Some(80)))
        );
        assert_eq!(endpoint_text("fd00::1"), Some((v6, None)));
        assert_eq!(endpoint_text("[fd00::1]"), Some((v6, None)));
        assert_eq!(endpoint_text("[fd00::1]:80"), Some((v6, Some(80))));
        assert_eq!(endpoint_text("pod-a:80"), None);
        assert_eq!(endpoint_text("10.0.0.1:99999"), None);
    }
}
