//! Configuration file (TOML) → validated [`crate::model::Model`], with `FILE:LINE:COLUMN`
//! errors.
//!
//! This module owns the file format described in `docs/configuration.md`: reading files
//! (`read`: regular files only, at most [`MAX_CONFIG_BYTES`]), the TOML as written (`file`),
//! judging single values (`values`) and node-wide settings (`settings`), building the model
//! with the checks across Service ports (`validate`), giving NodePorts to Service ports that
//! have none (`allocate`), and the summary `sluice check` prints (`render`). It uses only
//! [`crate::model`] and must not touch sockets, threads or any other module: a configuration
//! is data in, data (or one precise error) out.
//!
//! A reload is `parse(new_text, origin, Some(&running_model))`: the running model is only read,
//! to keep the NodePorts it allocated (see the `allocate` module).

mod addresses;
mod allocate;
mod file;
mod forwarding;
mod health;
pub mod k8s;
pub mod limits;
pub use self_loop::set_local_addresses;
pub mod manifests;
mod read;
mod render;
mod self_loop;
mod settings;
mod validate;
mod values;

use crate::model::Model;
#[cfg(test)]
pub(crate) use read::mkfifo;
pub use read::{read_file, MAX_CONFIG_BYTES};
use std::ops::Range;
use std::path::Path;

/// Why a configuration was rejected, and where.
///
/// Displays as `FILE:LINE:COLUMN: message` (1-based, pointing at the offending key or value),
/// or `FILE: message` when the file could not be read at all (`line` and `column` are then 0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{} {message}", position(.line, .column))]
pub struct ConfigError {
    /// The file name given to [`parse`] or [`load_file`].
    pub origin: String,
    /// 1-based line of the offending key or value; 0 when the file could not be read.
    pub line: usize,
    /// 1-based column (in characters) of the offending key or value; 0 with `line`.
    pub column: usize,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

/// Reads and parses the file at `path` (with [`read_file`]). `previous` is the model currently
/// running, if any: Service ports it gave a NodePort keep that port (see [`parse`]).
pub fn load_file(path: &Path, previous: Option<&Model>) -> Result<Model, ConfigError> {
    let text = read_file(path, MAX_CONFIG_BYTES)?;
    parse(&text, &path.display().to_string(), previous)
}

/// Parses configuration `text`; `origin` names it in error messages.
///
/// Service ports without a `node_port` get one allocated: the one they had in `previous` when
/// it is still free and in range, otherwise one derived from a hash of their identity, so the
/// same text always yields the same model.
pub fn parse(text: &str, origin: &str, previous: Option<&Model>) -> Result<Model, ConfigError> {
    let source = SourceText { origin, text };
    let file: file::ConfigFile = toml::from_str(text).map_err(|e| source.toml_error(&e))?;
    validate::build(&source, file, previous)
}

/// The human-readable summary `sluice check --config FILE` prints for a valid configuration.
pub fn render_check(model: &Model) -> String {
    render::render(model)
}

fn position(line: &usize, column: &usize) -> String {
    if *line == 0 {
        String::new()
    } else {
        format!("{line}:{column}:")
    }
}

/// The text being parsed, to turn byte offsets into `LINE:COLUMN` errors.
pub(super) struct SourceText<'a> {
    origin: &'a str,
    text: &'a str,
}

impl SourceText<'_> {
    /// An error pointing at the start of `span` (a byte range of the text).
    fn error(&self, span: &Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.line_column(span.start);
        ConfigError {
            origin: self.origin.to_owned(),
            line,
            column,
            message: message.into(),
        }
    }

    /// 1-based line of a byte offset, for messages that refer to another place in the file.
    fn line(&self, offset: usize) -> usize {
        self.line_column(offset).0
    }

    fn line_column(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// Rewords a TOML/serde error: "field" becomes "key", Rust type names become TOML ones,
    /// the table is named, and a wrong value is prefixed with its key when one precedes it.
    fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
        let span = error.span().unwrap_or(0..0);
        let raw = error.message().trim_end();
        if raw.is_empty() {
            return self.unexplained_toml_error(span.start);
        }
        let mut message = raw
            .replace("expected i64", "expected an integer")
            .replace("expected a boolean", "expected true or false")
            .replace("unknown field", "unknown key")
            .replace("missing field", "missing key");
        if raw.starts_with("unknown field") || raw.starts_with("missing field") {
            message = match message.split_once(", expected ") {
                Some((head, known)) => format!("{head} {}; expected {known}", table_of(raw)),
                None => format!("{message} {}", table_of(raw)),
            };
            let node_wide = NODE_WIDE_ONLY
                .iter()
                .any(|key| raw.starts_with(&format!("unknown field `{key}`")));
            if node_wide && table_of(raw) == "in [[service]]" {
                message.push_str(
                    " (node-wide keys must come before the first [[service]]: after it, they \
                     belong to that table)",
                );
            }
        } else if raw.starts_with("invalid type") || raw.starts_with("invalid value") {
            if let Some(key) = self.key_before(span.start) {
                message = format!("`{key}`: {message}");
            }
        }
        self.error(&span, message)
    }

    /// For a TOML error without a message (a control character in a comment inside an
    /// array, found by fuzzing): the first control character of the line up to `offset`
    /// (TOML allows none but tab and line ends), else the character at `offset`.
    fn unexplained_toml_error(&self, offset: usize) -> ConfigError {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line_start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let end = self.text[offset..]
            .chars()
            .next()
            .map_or(offset, |c| offset + c.len_utf8());
        let control = self.text[line_start..end]
            .char_indices()
            .find(|(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r'));
        let (at, message) = match control {
            Some((i, c)) => (
                line_start + i,
                format!("invalid TOML: the control character {c:?} is not allowed here"),
            ),
            None => match self.text[offset..].chars().next() {
                Some(c) => (offset, format!("invalid TOML: unexpected {c:?}")),
                None => (
                    offset,
                    "invalid TOML: unexpected end of the file".to_owned(),
                ),
            },
        };
        self.error(&(at..at), message)
    }

    /// The bare key of `key = value` when `offset` is where the value starts.
    fn key_before(&self, offset: usize) -> Option<&str> {
        let before = self.text.get(..offset)?.trim_end_matches([' ', '\t']);
        let before = before.strip_suffix('=')?.trim_end_matches([' ', '\t']);
        let start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map_or(0, |i| i + 1);
        let key = &before[start..];
        (!key.is_empty()).then_some(key)
    }
}

/// Top-level keys that a `[[service]]` table does not have: written after a `[[service]]`
/// header by mistake, they land in that table.
const NODE_WIDE_ONLY: &[&str] = &[
    "workers",
    "pin_workers",
    "listen_addresses",
    "node_port_range",
    "max_connections_per_worker",
    "max_held_per_worker",
    "max_held_per_service",
    "max_flows_per_worker",
    "relay",
    "driver",
    "backlog",
    "control_socket",
    "control_socket_mode",
    "control_socket_group",
    "control_allowed_uids",
    "control_allowed_gids",
    "metrics_address",
    "health_address",
    "drain_timeout",
    "source_ranges_on_node_ports",
];

/// Which table an unknown/missing-key message from serde is about, told by the keys it knows.
fn table_of(message: &str) -> &'static str {
    if message.contains("`address`") {
        "in an endpoint table"
    } else if message.contains("`value`") {
        "in a proxy_tlvs table"
    } else if message.contains("`node_port`")
        || message == "missing field `name`"
        || message == "missing field `port`"
    {
        "in [[service]]"
    } else {
        "at the top level"
    }
}

#[cfg(test)]
mod tests;
