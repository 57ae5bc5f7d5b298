//! Checks of single values: integers in range, choices, DNS labels, durations, Maglev table
//! sizes, protocols and endpoints.
//!
//! Each function turns one spanned file value into a model value, or into a [`ConfigError`]
//! naming the key and pointing at the value. None of them looks at any other value.

use super::file::{DurationText, EndpointEntry};
use super::limits::{self, CountRange, DurationRange};
use super::{ConfigError, SourceText};
use crate::model::{names, Endpoint, Protocol, DEFAULT_WEIGHT};
use serde_spanned::Spanned;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Bounds of `maglev_table_size` (both prime).
const MIN_TABLE_SIZE: i64 = limits::MAGLEV_TABLE_SIZE.min;
const MAX_TABLE_SIZE: i64 = limits::MAGLEV_TABLE_SIZE.max;

/// One element of `endpoints` → an [`Endpoint`], its port defaulting to `target_port`.
pub(super) fn endpoint(
    src: &SourceText,
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
                Some(w) => count(
                    src,
                    w,
                    "weight",
                    limits::WEIGHT,
                    "0 means: no new connections",
                )?,
                None => DEFAULT_WEIGHT,
            };
            (ip, port, weight, table.address.span())
        }
    };
    if let Some(what) = not_unicast(ip) {
        return Err(src.error(
            &ip_span,
            format!("endpoint address {ip} is {what}; a backend needs a unicast address"),
        ));
    }
    Ok(Endpoint::new(SocketAddr::new(ip, port)).with_weight(weight))
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

pub(super) fn protocol(src: &SourceText, p: &Spanned<String>) -> Result<Protocol, ConfigError> {
    if p.get_ref() == "SCTP" {
        return Err(src.error(
            &p.span(),
            "protocol \"SCTP\" is not served: sluice serves TCP and UDP",
        ));
    }
    choice(src, p, "protocol", &names(&Protocol::ALL, Protocol::name)).map_err(|mut e| {
        e.message.push_str(" (upper case, as in Kubernetes)");
        e
    })
}

#[derive(Clone, Copy)]
pub(super) enum DnsLabel {
    /// Kubernetes Service names: starts with a letter.
    Rfc1035,
    /// Namespaces and port names: starts with a letter or digit.
    Rfc1123,
}

pub(super) fn dns_label(
    src: &SourceText,
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
pub(super) fn choice<T: Copy>(
    src: &SourceText,
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
pub(super) fn int<T: TryFrom<i64>>(
    src: &SourceText,
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

/// An integer in `range` (one of [`limits`]), converted to the model's type.
pub(super) fn count<T: TryFrom<i64>>(
    src: &SourceText,
    value: &Spanned<i64>,
    key: &str,
    range: CountRange,
    hint: &str,
) -> Result<T, ConfigError> {
    int(src, value, key, range.min, range.max, hint)
}

/// A duration in `range` (one of [`limits`]), or `default` when the key is not written.
pub(super) fn opt_duration(
    src: &SourceText,
    value: &Option<Spanned<DurationText>>,
    key: &str,
    range: DurationRange,
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
    if d < range.min {
        return Err(src.error(
            &value.span(),
            format!(
                "{key} {} is too short: at least {} is needed",
                limits::show(d),
                limits::show(range.min)
            ),
        ));
    }
    if d > range.max {
        return Err(src.error(
            &value.span(),
            format!(
                "{key} {text:?} is too long: at most {} is accepted (see \"Limits\" in \
                 docs/operations.md)",
                limits::show(range.max)
            ),
        ));
    }
    Ok(d)
}

pub(super) fn opt_retries(
    src: &SourceText,
    value: &Option<Spanned<i64>>,
    default: u32,
) -> Result<u32, ConfigError> {
    match value {
        Some(v) => count(src, v, "connect_retries", limits::CONNECT_RETRIES, ""),
        None => Ok(default),
    }
}

pub(super) fn opt_table_size(
    src: &SourceText,
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

/// What makes `ip` unusable as an endpoint or a Service address (`None`: a unicast address).
pub(super) fn not_unicast(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip == IpAddr::from([255, 255, 255, 255]) {
        Some("the broadcast address")
    } else {
        None
    }
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
