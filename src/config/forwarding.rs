//! The `forwarding` keys: how the pod learns the client's address (`none`, `proxy-v1`,
//! `proxy-v2`, `transparent`) and the PROXY v2 options (`proxy_unique_id`, `proxy_tlvs`).
//!
//! Turns those file values into a [`Forwarding`] or a located [`ConfigError`]. The limits on
//! custom TLVs keep the whole v2 header (IPv6 addresses, a 128-byte unique id and every
//! custom TLV) under 1024 bytes: nginx's default `client_header_buffer_size` (1k), which the
//! header must fit in, or nginx answers "broken header".

use super::file::{ServiceEntry, TlvEntry};
use super::values::choice;
use super::{ConfigError, SourceText};
use crate::model::{names, Forwarding, ForwardingMode, ProxyV2Options};
use serde_spanned::Spanned;

/// Longest value of one custom TLV, in bytes.
pub(super) const MAX_TLV_VALUE: usize = 255;
/// Most bytes all custom TLVs of one Service may take (3 bytes of type and length each,
/// plus the values).
pub(super) const MAX_TLV_TOTAL: usize = 768;

/// The words the `forwarding` key accepts.
fn modes() -> Vec<(&'static str, ForwardingMode)> {
    names(&ForwardingMode::ALL, ForwardingMode::name)
}

/// The node-wide default: the top-level `forwarding` key, or `none`.
pub(super) struct Default {
    mode: ForwardingMode,
    /// Line of the top-level key, for messages about a Service that inherits it.
    line: Option<usize>,
}

pub(super) fn default(
    src: &SourceText,
    value: &Option<Spanned<String>>,
) -> Result<Default, ConfigError> {
    Ok(match value {
        Some(v) => Default {
            mode: choice(src, v, "forwarding", &modes())?,
            line: Some(src.line(v.span().start)),
        },
        None => Default {
            mode: ForwardingMode::None,
            line: None,
        },
    })
}

/// A Service's forwarding: its own `forwarding` key or the default, with its v2 options.
pub(super) fn service(
    src: &SourceText,
    e: &ServiceEntry,
    default: &Default,
) -> Result<Forwarding, ConfigError> {
    let mode = match &e.forwarding {
        Some(v) => choice(src, v, "forwarding", &modes())?,
        None => default.mode,
    };
    if mode != ForwardingMode::ProxyV2 {
        let misplaced = e
            .proxy_unique_id
            .as_ref()
            .map(|v| ("proxy_unique_id", v.span()))
            .or_else(|| e.proxy_tlvs.as_ref().map(|v| ("proxy_tlvs", v.span())));
        if let Some((key, span)) = misplaced {
            let whence = match (&e.forwarding, default.line) {
                (Some(_), _) => String::new(),
                (None, Some(line)) => format!(" (the default set at line {line})"),
                (None, None) => " (the default)".to_owned(),
            };
            return Err(src.error(
                &span,
                format!(
                    "`{key}` is a PROXY v2 option, but this Service's forwarding is {:?}{whence}; \
                     set forwarding = \"proxy-v2\" or remove `{key}`",
                    mode.name()
                ),
            ));
        }
    }
    Ok(match mode {
        ForwardingMode::None => Forwarding::None,
        ForwardingMode::ProxyV1 => Forwarding::ProxyV1,
        ForwardingMode::Transparent => Forwarding::Transparent,
        ForwardingMode::ProxyV2 => Forwarding::ProxyV2(ProxyV2Options {
            unique_id: e.proxy_unique_id.as_ref().is_some_and(|v| *v.get_ref()),
            tlvs: match &e.proxy_tlvs {
                Some(list) => tlvs(src, list)?,
                None => Vec::new(),
            },
        }),
    })
}

/// One forwarding mode written as text (the `sluice.io/forwarding` annotation): the same
/// names and message as the `forwarding` key; PROXY v2 without options.
pub(super) fn mode(
    src: &SourceText,
    value: &Spanned<String>,
    key: &str,
) -> Result<Forwarding, ConfigError> {
    Ok(match choice(src, value, key, &modes())? {
        ForwardingMode::None => Forwarding::None,
        ForwardingMode::ProxyV1 => Forwarding::ProxyV1,
        ForwardingMode::ProxyV2 => Forwarding::ProxyV2(ProxyV2Options::default()),
        ForwardingMode::Transparent => Forwarding::Transparent,
    })
}

/// A UDP Service's forwarding, judged: PROXY v1 is a text line for a byte stream and has
/// no datagram form, so it is refused, pointing at the Service's `forwarding` key or, when
/// the Service inherits it, at its `protocol` key (naming the default's line).
pub(super) fn check_datagrams(
    src: &SourceText,
    e: &ServiceEntry,
    forwarding: &Forwarding,
    default: &Default,
) -> Result<(), ConfigError> {
    if *forwarding != Forwarding::ProxyV1 {
        return Ok(());
    }
    const WHY: &str = "PROXY v1 is a text line for byte streams and has no form for \
                       datagrams; use \"proxy-v2\" (a header on every datagram), \
                       \"transparent\" or \"none\"";
    let (span, whence) = match (&e.forwarding, &e.protocol) {
        (Some(v), _) => (v.span(), String::new()),
        (None, Some(p)) => (
            p.span(),
            match default.line {
                Some(line) => format!(" (the default set at line {line})"),
                None => " (the default)".to_owned(),
            },
        ),
        // UDP is never the default protocol, so `protocol` is written; point at the name.
        (None, None) => (e.name.span(), String::new()),
    };
    Err(src.error(
        &span,
        format!("forwarding \"proxy-v1\"{whence} cannot be used on a UDP Service: {WHY}"),
    ))
}

fn tlvs(
    src: &SourceText,
    list: &Spanned<Vec<Spanned<TlvEntry>>>,
) -> Result<Vec<(u8, Vec<u8>)>, ConfigError> {
    let mut out: Vec<(u8, Vec<u8>)> = Vec::with_capacity(list.get_ref().len());
    let mut lines: Vec<usize> = Vec::new();
    let mut total = 0usize;
    for entry in list.get_ref() {
        let t = entry.get_ref();
        let kind = *t.kind.get_ref();
        let Some(kind) = u8::try_from(kind)
            .ok()
            .filter(|k| (0xE0..=0xEF).contains(k))
        else {
            let mut message = format!(
                "proxy_tlvs type {} is not a custom TLV type: write 0xE0..=0xEF (the range the \
                 PROXY protocol leaves to applications)",
                hex_or_dec(kind)
            );
            if kind == 0x05 {
                // PP2_TYPE_UNIQUE_ID
                message.push_str("; for a unique connection id set `proxy_unique_id = true`");
            }
            return Err(src.error(&t.kind.span(), message));
        };
        if let Some(i) = out.iter().position(|(k, _)| *k == kind) {
            return Err(src.error(
                &t.kind.span(),
                format!(
                    "proxy_tlvs type {kind:#04X} is listed twice (first at line {})",
                    lines[i]
                ),
            ));
        }
        let value = t.value.get_ref().as_bytes();
        if value.len() > MAX_TLV_VALUE {
            return Err(src.error(
                &t.value.span(),
                format!(
                    "proxy_tlvs value of type {kind:#04X} is {} bytes long; at most \
                     {MAX_TLV_VALUE} are allowed",
                    value.len()
                ),
            ));
        }
        total += 3 + value.len();
        if total > MAX_TLV_TOTAL {
            return Err(src.error(
                &t.value.span(),
                format!(
                    "proxy_tlvs take {total} bytes up to here; at most {MAX_TLV_TOTAL} are \
                     allowed (3 per TLV plus the values), so that the whole PROXY v2 header fits \
                     in nginx's default 1k header buffer"
                ),
            ));
        }
        lines.push(src.line(entry.span().start));
        out.push((kind, value.to_vec()));
    }
    Ok(out)
}

fn hex_or_dec(v: i64) -> String {
    if (0..=0xFF).contains(&v) {
        format!("{v:#04X}")
    } else {
        v.to_string()
    }
}
