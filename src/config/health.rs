//! The health keys: active checks (`health_check*`), passive outlier ejection (`outlier_*`)
//! and `shutdown_sessions`, at the top level (node-wide defaults) and in `[[service]]`.
//!
//! Each key a `[[service]]` table does not write is taken from the top level, key by key,
//! so a node can set `health_check_interval = "1s"` once and let each Service choose
//! `health_check = "tcp"` or `"http"`. A key written in a `[[service]]` table that has no
//! effect there (a path with a TCP check, timing with checks off) is an error pointing at
//! it; at the top level the tuning keys are defaults and always accepted, except those that
//! contradict the top-level `health_check`/`outlier_ejection` written beside them.

use super::file::{ConfigFile, DurationText, IntOrText, ServiceEntry};
use super::limits;
use super::values::{choice, count, int, opt_duration};
use super::{ConfigError, SourceText};
use crate::model::{
    ActiveCheck, CheckKind, HealthConfig, PassiveCheck, DEFAULT_CHECK_FALL, DEFAULT_CHECK_INTERVAL,
    DEFAULT_CHECK_RISE, DEFAULT_EJECTION_FAILURES, DEFAULT_EJECTION_TIME,
};
use serde_spanned::Spanned;
use std::ops::Range;

/// Longest accepted `health_check_path`.
const MAX_PATH: usize = 1024;
/// HAProxy's `http-check expect` default: any 2xx or 3xx.
pub(super) const DEFAULT_EXPECT: (u16, u16) = (200, 399);

/// The health keys of one table (the file's top level or one `[[service]]`), as written.
#[derive(Default, Clone, Copy)]
pub(super) struct HealthKeys<'a> {
    check: Option<&'a Spanned<String>>,
    path: Option<&'a Spanned<String>>,
    status: Option<&'a Spanned<IntOrText>>,
    interval: Option<&'a Spanned<DurationText>>,
    timeout: Option<&'a Spanned<DurationText>>,
    rise: Option<&'a Spanned<i64>>,
    fall: Option<&'a Spanned<i64>>,
    port: Option<&'a Spanned<i64>>,
    outlier: Option<&'a Spanned<bool>>,
    failures: Option<&'a Spanned<i64>>,
    ejection_time: Option<&'a Spanned<DurationText>>,
    shutdown_sessions: Option<&'a Spanned<bool>>,
}

macro_rules! keys_of {
    ($t:expr) => {
        HealthKeys {
            check: $t.health_check.as_ref(),
            path: $t.health_check_path.as_ref(),
            status: $t.health_check_status.as_ref(),
            interval: $t.health_check_interval.as_ref(),
            timeout: $t.health_check_timeout.as_ref(),
            rise: $t.health_check_rise.as_ref(),
            fall: $t.health_check_fall.as_ref(),
            port: $t.health_check_port.as_ref(),
            outlier: $t.outlier_ejection.as_ref(),
            failures: $t.outlier_consecutive_failures.as_ref(),
            ejection_time: $t.outlier_ejection_time.as_ref(),
            shutdown_sessions: $t.shutdown_sessions.as_ref(),
        }
    };
}

impl<'a> HealthKeys<'a> {
    pub(super) fn of_file(f: &'a ConfigFile) -> Self {
        keys_of!(f)
    }

    pub(super) fn of_service(e: &'a ServiceEntry) -> Self {
        keys_of!(e)
    }

    /// Every key of `self`, and of `fallback` where `self` has none.
    fn or(self, fallback: HealthKeys<'a>) -> HealthKeys<'a> {
        HealthKeys {
            check: self.check.or(fallback.check),
            path: self.path.or(fallback.path),
            status: self.status.or(fallback.status),
            interval: self.interval.or(fallback.interval),
            timeout: self.timeout.or(fallback.timeout),
            rise: self.rise.or(fallback.rise),
            fall: self.fall.or(fallback.fall),
            port: self.port.or(fallback.port),
            outlier: self.outlier.or(fallback.outlier),
            failures: self.failures.or(fallback.failures),
            ejection_time: self.ejection_time.or(fallback.ejection_time),
            shutdown_sessions: self.shutdown_sessions.or(fallback.shutdown_sessions),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    None,
    Tcp,
    Http,
}

/// The node-wide defaults: what a Service that writes no health key gets. Judges every
/// top-level value, so a bad one is reported even when no Service uses it.
pub(super) fn defaults(src: &SourceText, top: HealthKeys) -> Result<HealthConfig, ConfigError> {
    let kind = kind(src, top.check)?;
    if let Some(k) = top.check.filter(|_| kind != Kind::Http) {
        for (key, span) in [
            ("health_check_path", top.path.map(Spanned::span)),
            ("health_check_status", top.status.map(Spanned::span)),
        ] {
            if let Some(span) = span {
                return Err(not_http(src, &span, key, k));
            }
        }
    }
    if let Some(o) = top.outlier.filter(|o| !*o.get_ref()) {
        for (key, span) in [
            (
                "outlier_consecutive_failures",
                top.failures.map(Spanned::span),
            ),
            (
                "outlier_ejection_time",
                top.ejection_time.map(Spanned::span),
            ),
        ] {
            if let Some(span) = span {
                return Err(src.error(
                    &span,
                    format!(
                        "`{key}` has no effect: outlier_ejection = false (line {})",
                        src.line(o.span().start)
                    ),
                ));
            }
        }
    }
    // Judge every tuning value as if a Service turned both kinds of checking on.
    let mut probe = top;
    let on = Spanned::new(0..0, true);
    probe.outlier = Some(&on);
    active(src, Kind::Http, probe)?;
    passive(src, probe)?;
    resolve(src, top, HealthKeys::default(), false)
}

/// The health configuration of one `[[service]]`: its own keys, the top level's for the
/// others.
pub(super) fn service(
    src: &SourceText,
    own: HealthKeys,
    top: HealthKeys,
) -> Result<HealthConfig, ConfigError> {
    resolve(src, own, top, true)
}

/// `strict`: keys written in `own` that have no effect are errors.
fn resolve(
    src: &SourceText,
    own: HealthKeys,
    top: HealthKeys,
    strict: bool,
) -> Result<HealthConfig, ConfigError> {
    let keys = own.or(top);
    let kind = kind(src, keys.check)?;
    let outlier = keys.outlier.is_some_and(|o| *o.get_ref());
    if strict {
        let whence = |written: Option<&Spanned<String>>| match (written, own.check) {
            (Some(_), Some(_)) => String::new(),
            (Some(t), None) => format!(" (the default set at line {})", src.line(t.span().start)),
            (None, _) => " (the default)".to_owned(),
        };
        if kind != Kind::Http {
            for (key, span) in [
                ("health_check_path", own.path.map(Spanned::span)),
                ("health_check_status", own.status.map(Spanned::span)),
            ] {
                if let Some(span) = span {
                    let current = keys.check.map_or("none", |c| c.get_ref().as_str());
                    return Err(src.error(
                        &span,
                        format!(
                            "`{key}` applies to health_check = \"http\", but this Service's \
                             health_check is {current:?}{}",
                            whence(keys.check)
                        ),
                    ));
                }
            }
        }
        if kind == Kind::None {
            let tuning = [
                ("health_check_interval", own.interval.map(Spanned::span)),
                ("health_check_timeout", own.timeout.map(Spanned::span)),
                ("health_check_rise", own.rise.map(Spanned::span)),
                ("health_check_fall", own.fall.map(Spanned::span)),
                ("health_check_port", own.port.map(Spanned::span)),
            ];
            for (key, span) in tuning {
                if let Some(span) = span {
                    return Err(src.error(
                        &span,
                        format!(
                            "`{key}` has no effect: this Service has no active health check{}; \
                             set health_check = \"tcp\" or \"http\"",
                            whence(keys.check)
                        ),
                    ));
                }
            }
        }
        if !outlier {
            for (key, span) in [
                (
                    "outlier_consecutive_failures",
                    own.failures.map(Spanned::span),
                ),
                (
                    "outlier_ejection_time",
                    own.ejection_time.map(Spanned::span),
                ),
            ] {
                if let Some(span) = span {
                    return Err(src.error(
                        &span,
                        format!(
                            "`{key}` has no effect: outlier ejection is off for this Service; \
                             set outlier_ejection = true"
                        ),
                    ));
                }
            }
        }
        if let Some(s) = own.shutdown_sessions.filter(|s| *s.get_ref()) {
            if kind == Kind::None && !outlier {
                return Err(src.error(
                    &s.span(),
                    "`shutdown_sessions` has no effect: this Service has no health checking \
                     (set health_check or outlier_ejection)",
                ));
            }
        }
    }
    Ok(HealthConfig {
        active: match kind {
            Kind::None => None,
            k => Some(active(src, k, keys)?),
        },
        passive: if outlier {
            Some(passive(src, keys)?)
        } else {
            None
        },
        shutdown_sessions: keys.shutdown_sessions.is_some_and(|s| *s.get_ref()),
    })
}

/// How `sluice check` shows a health configuration, e.g. `http GET /healthz expect 200-399
/// every 2s (timeout 2s, rise 2, fall 3) + outlier ejection (5 failures, 30s)`.
pub(super) fn describe(h: &HealthConfig) -> String {
    let mut parts = Vec::new();
    if let Some(a) = &h.active {
        let what = match &a.kind {
            CheckKind::Tcp => "tcp".to_owned(),
            CheckKind::Http { path, expect } if expect.0 == expect.1 => {
                format!("http GET {path} expect {}", expect.0)
            }
            CheckKind::Http { path, expect } => {
                format!("http GET {path} expect {}-{}", expect.0, expect.1)
            }
        };
        let port = a.port.map(|p| format!(", port {p}")).unwrap_or_default();
        parts.push(format!(
            "{what} every {} (timeout {}, rise {}, fall {}{port})",
            humantime::format_duration(a.interval),
            humantime::format_duration(a.timeout),
            a.rise,
            a.fall
        ));
    }
    if let Some(p) = &h.passive {
        parts.push(format!(
            "outlier ejection ({} failures, {})",
            p.consecutive_failures,
            humantime::format_duration(p.ejection_time)
        ));
    }
    if h.shutdown_sessions && !parts.is_empty() {
        parts.push("shutdown sessions".to_owned());
    }
    if parts.is_empty() {
        "off".to_owned()
    } else {
        parts.join(" + ")
    }
}

fn kind(src: &SourceText, check: Option<&Spanned<String>>) -> Result<Kind, ConfigError> {
    match check {
        Some(c) => choice(
            src,
            c,
            "health_check",
            &[
                ("none", Kind::None),
                ("tcp", Kind::Tcp),
                ("http", Kind::Http),
            ],
        ),
        None => Ok(Kind::None),
    }
}

fn not_http(
    src: &SourceText,
    span: &Range<usize>,
    key: &str,
    check: &Spanned<String>,
) -> ConfigError {
    src.error(
        span,
        format!(
            "`{key}` applies to health_check = \"http\", but health_check is {:?} (line {})",
            check.get_ref(),
            src.line(check.span().start)
        ),
    )
}

fn active(src: &SourceText, kind: Kind, k: HealthKeys) -> Result<ActiveCheck, ConfigError> {
    let interval = opt_duration(
        src,
        &k.interval.map(clone_duration),
        "health_check_interval",
        limits::HEALTH_CHECK_INTERVAL,
        DEFAULT_CHECK_INTERVAL,
    )?;
    let timeout = opt_duration(
        src,
        &k.timeout.map(clone_duration),
        "health_check_timeout",
        limits::HEALTH_CHECK_TIMEOUT,
        interval,
    )?;
    if timeout > interval {
        let span = k.timeout.map_or(0..0, Spanned::span);
        return Err(src.error(
            &span,
            format!(
                "health_check_timeout {} is longer than health_check_interval {}: a check must \
                 end before the next one starts",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        ));
    }
    let rise = match k.rise {
        Some(r) => count(
            src,
            r,
            "health_check_rise",
            limits::HEALTH_CHECK_RISE_FALL,
            "",
        )?,
        None => DEFAULT_CHECK_RISE,
    };
    let fall = match k.fall {
        Some(f) => count(
            src,
            f,
            "health_check_fall",
            limits::HEALTH_CHECK_RISE_FALL,
            "",
        )?,
        None => DEFAULT_CHECK_FALL,
    };
    let port = match k.port {
        Some(p) => Some(int(src, p, "health_check_port", 1, 65535, "")?),
        None => None,
    };
    let kind = match kind {
        Kind::Http => CheckKind::Http {
            path: match k.path {
                Some(p) => path(src, p)?,
                None => "/".to_owned(),
            },
            expect: match k.status {
                Some(s) => status(src, s)?,
                None => DEFAULT_EXPECT,
            },
        },
        _ => CheckKind::Tcp,
    };
    Ok(ActiveCheck {
        kind,
        interval,
        timeout,
        rise,
        fall,
        port,
    })
}

fn passive(src: &SourceText, k: HealthKeys) -> Result<PassiveCheck, ConfigError> {
    Ok(PassiveCheck {
        consecutive_failures: match k.failures {
            Some(f) => count(
                src,
                f,
                "outlier_consecutive_failures",
                limits::OUTLIER_CONSECUTIVE_FAILURES,
                "",
            )?,
            None => DEFAULT_EJECTION_FAILURES,
        },
        ejection_time: opt_duration(
            src,
            &k.ejection_time.map(clone_duration),
            "outlier_ejection_time",
            limits::OUTLIER_EJECTION_TIME,
            DEFAULT_EJECTION_TIME,
        )?,
    })
}

fn clone_duration(d: &Spanned<DurationText>) -> Spanned<DurationText> {
    Spanned::new(d.span(), DurationText(d.get_ref().0.clone()))
}

/// A request path: starts with `/`, visible ASCII only (it goes into the request line as is).
fn path(src: &SourceText, p: &Spanned<String>) -> Result<String, ConfigError> {
    let s = p.get_ref();
    let problem = if !s.starts_with('/') {
        Some("must start with '/'".to_owned())
    } else if s.len() > MAX_PATH {
        Some(format!("is longer than {MAX_PATH} bytes"))
    } else {
        s.chars().find(|c| !c.is_ascii_graphic()).map(|c| {
            format!("contains {c:?}; only visible ASCII is allowed (percent-encode the rest)")
        })
    };
    match problem {
        None => Ok(s.clone()),
        Some(problem) => Err(src.error(&p.span(), format!("health_check_path {s:?} {problem}"))),
    }
}

/// `200`, `"200"` or `"200-399"` → an inclusive range of HTTP status codes.
fn status(src: &SourceText, v: &Spanned<IntOrText>) -> Result<(u16, u16), ConfigError> {
    let bad = |why: &str| {
        src.error(
            &v.span(),
            format!(
                "health_check_status {} {why}; expected a status such as 200 or a range such \
                 as \"200-399\" (codes 100..=599)",
                match v.get_ref() {
                    IntOrText::Int(i) => i.to_string(),
                    IntOrText::Text(t) => format!("{t:?}"),
                }
            ),
        )
    };
    let code = |n: i64| u16::try_from(n).ok().filter(|c| (100..=599).contains(c));
    let parse = |t: &str| t.trim().parse::<i64>().ok().and_then(code);
    let (lo, hi) = match v.get_ref() {
        IntOrText::Int(i) => {
            let c = code(*i).ok_or_else(|| bad("is not an HTTP status code"))?;
            (c, c)
        }
        IntOrText::Text(t) => match t.split_once('-') {
            Some((a, b)) => (
                parse(a).ok_or_else(|| bad("does not start with a status code"))?,
                parse(b).ok_or_else(|| bad("does not end with a status code"))?,
            ),
            None => {
                let c = parse(t).ok_or_else(|| bad("is not an HTTP status code"))?;
                (c, c)
            }
        },
    };
    if lo > hi {
        return Err(bad("is an empty range"));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests;
