//! The `sluice.io/*` annotations of a Service: per-Service options the Kubernetes API has
//! no field for. Values are judged by the same functions as the TOML keys of the same
//! meaning (so the accepted words and the messages are the same); an invalid value is a
//! problem naming the annotation and the value, and the Service keeps its last good
//! setting (from the model serving now), or the default if it never had one.

use super::super::file::DurationText;
use super::super::forwarding;
use super::super::limits;
use super::super::values::{choice, count, opt_duration};
use super::super::{ConfigError, SourceText};
use crate::model::{
    names, Forwarding, HashKey, Policy, PolicyKind, ServicePort, Settings, Timeouts, TrafficPolicy,
};
use serde_spanned::Spanned;
use std::collections::BTreeMap;

/// `none`, `proxy-v1`, `proxy-v2` or `transparent` (the TOML `forwarding` values).
pub const FORWARDING: &str = "sluice.io/forwarding";
/// `maglev`, `round-robin`, `random` or `least-connections` (`client-ip` comes from
/// `sessionAffinity: ClientIP`).
pub const POLICY: &str = "sluice.io/policy";
/// `client-ip-port` or `client-ip` (Maglev only).
pub const HASH_KEY: &str = "sluice.io/hash-key";
/// A duration (`"30s"`): hold new connections that long while no endpoint is usable (TCP
/// ports only: a datagram cannot wait).
pub const HOLD_WHEN_EMPTY: &str = "sluice.io/hold-when-empty";
/// An integer (`"1"` for DNS): the Service's UDP flows close after that many replies (the
/// TOML `udp_responses`); TCP ports ignore it.
pub const UDP_RESPONSES: &str = "sluice.io/udp-responses";

/// What the annotations (and the traffic policy's defaults) give a Service.
pub(super) struct FromAnnotations {
    pub policy: Policy,
    pub forwarding: Forwarding,
    pub timeouts: Timeouts,
    /// For the Service's UDP ports.
    pub udp_responses: Option<u32>,
    /// One message per invalid or ignored annotation.
    pub problems: Vec<String>,
}

/// The forwarding a Service gets without the annotation: Local Services preserve the
/// client address transparently (what kube-proxy's Local gives pods), others use none.
pub fn default_forwarding(traffic_policy: TrafficPolicy) -> Forwarding {
    match traffic_policy {
        TrafficPolicy::Cluster => Forwarding::None,
        TrafficPolicy::Local => Forwarding::Transparent,
    }
}

/// The words `sluice.io/policy` accepts: every policy but `client-ip`.
fn kinds() -> Vec<(&'static str, PolicyKind)> {
    let mut all = names(&PolicyKind::ALL, PolicyKind::name);
    all.retain(|(_, k)| *k != PolicyKind::ClientIp);
    all
}

/// Reads the annotations. `before` are this Service's ports in the model serving now
/// (for last good values); `affinity` is true when `sessionAffinity: ClientIP` decides
/// the policy.
pub(super) fn read(
    annotations: &BTreeMap<String, String>,
    traffic_policy: TrafficPolicy,
    affinity: bool,
    before: &[&ServicePort],
    settings: &Settings,
) -> FromAnnotations {
    let mut problems = Vec::new();
    let last = before.first();
    let invalid =
        |e: ConfigError, kept: String| format!("annotation {}; keeping {kept}", e.message);

    let forwarding = match annotations.get(FORWARDING) {
        None => default_forwarding(traffic_policy),
        Some(v) => {
            let (src, value) = spanned(v);
            match forwarding::mode(&src, &value, FORWARDING) {
                Ok(f) => f,
                Err(e) => {
                    let kept = last
                        .map(|p| p.forwarding.clone())
                        .unwrap_or_else(|| default_forwarding(traffic_policy));
                    problems.push(invalid(e, kept.mode().name().into()));
                    kept
                }
            }
        }
    };

    let last_kind = last
        .map(|p| p.policy.kind())
        .filter(|k| *k != PolicyKind::ClientIp);
    let kind = match annotations.get(POLICY) {
        None => PolicyKind::Maglev,
        Some(v) if affinity => {
            problems.push(format!(
                "annotation {POLICY} {v:?} is ignored: sessionAffinity: ClientIP chooses the \
                 policy (client-ip)"
            ));
            PolicyKind::Maglev
        }
        Some(v) if v == "client-ip" => {
            let kept = last_kind.unwrap_or(PolicyKind::Maglev);
            problems.push(format!(
                "annotation {POLICY} \"client-ip\" is not accepted: set the Service's \
                 sessionAffinity: ClientIP instead; keeping {}",
                kept.name()
            ));
            kept
        }
        Some(v) => {
            let (src, value) = spanned(v);
            match choice(&src, &value, POLICY, &kinds()) {
                Ok(k) => k,
                Err(e) => {
                    let kept = last_kind.unwrap_or(PolicyKind::Maglev);
                    problems.push(invalid(e, kept.name().into()));
                    kept
                }
            }
        }
    };

    let last_key = last.and_then(|p| match p.policy {
        Policy::Maglev { key } => Some(key),
        _ => None,
    });
    let key = match annotations.get(HASH_KEY) {
        None => HashKey::ClientIpPort,
        Some(v) if affinity || kind != PolicyKind::Maglev => {
            problems.push(format!(
                "annotation {HASH_KEY} {v:?} is ignored: it applies to the maglev policy only"
            ));
            HashKey::ClientIpPort
        }
        Some(v) => {
            let (src, value) = spanned(v);
            match choice(&src, &value, HASH_KEY, &names(&HashKey::ALL, HashKey::name)) {
                Ok(k) => k,
                Err(e) => {
                    let kept = last_key.unwrap_or(HashKey::ClientIpPort);
                    problems.push(invalid(e, kept.name().into()));
                    kept
                }
            }
        }
    };

    let mut timeouts = settings.defaults.timeouts;
    if let Some(v) = annotations.get(HOLD_WHEN_EMPTY) {
        let (src, value) = spanned(v);
        let value = Some(Spanned::new(value.span(), DurationText(value.into_inner())));
        match opt_duration(
            &src,
            &value,
            HOLD_WHEN_EMPTY,
            limits::HOLD_WHEN_EMPTY,
            std::time::Duration::ZERO,
        ) {
            Ok(d) => timeouts.hold_when_empty = Some(d),
            Err(e) => {
                let kept = last.map_or(timeouts.hold_when_empty, |p| p.timeouts.hold_when_empty);
                let shown = kept.map_or("no hold".to_owned(), |d| {
                    humantime::format_duration(d).to_string()
                });
                problems.push(invalid(e, shown));
                timeouts.hold_when_empty = kept;
            }
        }
    }

    let udp_responses = match annotations.get(UDP_RESPONSES) {
        None => None,
        Some(v) => {
            let (src, value) = spanned(v);
            let number = value
                .get_ref()
                .trim()
                .parse::<i64>()
                .map_err(|_| {
                    src.error(
                        &value.span(),
                        format!("{UDP_RESPONSES} {v:?} is not an integer"),
                    )
                })
                .and_then(|n| {
                    count(
                        &src,
                        &Spanned::new(value.span(), n),
                        UDP_RESPONSES,
                        limits::UDP_RESPONSES,
                        "",
                    )
                });
            match number {
                Ok(n) => Some(n),
                Err(e) => {
                    let kept = before.iter().find_map(|p| p.udp_responses);
                    let shown = kept.map_or("no limit".to_owned(), |n| n.to_string());
                    problems.push(invalid(e, shown));
                    kept
                }
            }
        }
    };

    FromAnnotations {
        udp_responses,
        policy: match kind {
            // `client-ip` is never read here (sessionAffinity chooses it).
            PolicyKind::Maglev | PolicyKind::ClientIp => Policy::Maglev { key },
            PolicyKind::RoundRobin => Policy::RoundRobin,
            PolicyKind::Random => Policy::Random,
            PolicyKind::LeastConnections => Policy::LeastConnections,
        },
        forwarding,
        timeouts,
        problems,
    }
}

/// An annotation value as a one-line "file", so the TOML value checks can judge it.
fn spanned(v: &str) -> (SourceText<'_>, Spanned<String>) {
    (
        SourceText {
            origin: "annotation",
            text: v,
        },
        Spanned::new(0..v.len(), v.to_owned()),
    )
}
