//! The daemon's log output (`sluice run`, `sluice demo`): the format (`--log-format text` or
//! `json`), the filter and its changes at run time (`sluice ctl log-level`), and journald.
//!
//! - **text**: `TIME LEVEL target: message key=value ...`, one event per line. A value with a
//!   space, a quote, an `=` or a control character (or an empty one) is written quoted, with
//!   Rust's string escapes (`reason="3 failed checks: connection refused"`), so a line splits
//!   into fields unambiguously (the logfmt convention).
//! - **json**: one JSON object per line: `timestamp`, `level`, `target`, `message` and the
//!   event's fields at the top level.
//! - **Under journald** (`JOURNAL_STREAM` names the device and inode of stderr, which systemd
//!   sets for a service whose output goes to the journal), the timestamp is left out — the
//!   journal stamps each line itself — and each text line starts with its syslog priority
//!   (`<4>` for warn), so `journalctl -p warning` works. Set by hand on another stream, the
//!   variable changes nothing.
//!
//! Everything goes to stderr. This module must not decide what is logged, only how.

use std::fmt;
use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines with `key=value` fields (values quoted when needed).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Changes the log filter at run time (`sluice ctl log-level`).
pub type FilterSetter = Box<dyn Fn(&str) -> Result<(), String> + Send>;

/// Installs the global subscriber writing to stderr: `RUST_LOG` when set, else `filter`
/// (tracing's `EnvFilter` syntax). Returns the function that changes the filter later.
pub fn init(format: LogFormat, filter: &str) -> FilterSetter {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let journald = stderr_is_journal();
    let ansi =
        !journald && std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::registry()
        .with(filter)
        .with(layer(format, journald, ansi, std::io::stderr))
        .init();
    Box::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    })
}

/// The formatting layer for `format`, writing through `writer`. `journald`: no timestamp,
/// syslog priority prefixes (text).
pub fn layer<S, W>(
    format: LogFormat,
    journald: bool,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let base = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    match (format, journald) {
        (LogFormat::Json, false) => base
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .boxed(),
        (LogFormat::Json, true) => base
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .without_time()
            .boxed(),
        (LogFormat::Text, false) => base.fmt_fields(QuotedFields).boxed(),
        (LogFormat::Text, true) => base
            .fmt_fields(QuotedFields)
            .event_format(PriorityPrefix(format::format().without_time()))
            .boxed(),
    }
}

/// True when stderr is the journal's stream: `JOURNAL_STREAM` is `DEVICE:INODE` (decimal)
/// of the file stderr is open on.
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(parse_journal_stream) else {
        return false;
    };
    let stderr = std::os::fd::AsFd::as_fd(&std::io::stderr()).try_clone_to_owned();
    match stderr.map(std::fs::File::from).and_then(|f| f.metadata()) {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

/// `"8:1234"` → `(8, 1234)`.
fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// The syslog priority journald reads from a `<N>` line prefix (sd-daemon(3)).
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Prefixes each line of the inner format with `<N>`, the event's syslog priority.
struct PriorityPrefix<F>(F);

impl<S, N, F> FormatEvent<S, N> for PriorityPrefix<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer.by_ref(), event)
    }
}

/// Fields as `key=value`, the value quoted (Rust string escapes) when it holds a space, a
/// quote, an `=` or a control character, or is empty. The message is written as it is.
struct QuotedFields;

impl<'w> FormatFields<'w> for QuotedFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = FieldWriter {
            writer,
            result: Ok(()),
            first: true,
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct FieldWriter<'w> {
    writer: Writer<'w>,
    result: fmt::Result,
    first: bool,
}

impl FieldWriter<'_> {
    fn write(&mut self, field: &Field, value: &str, already_quoted: bool) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        self.result = if field.name() == "message" {
            write!(self.writer, "{sep}{value}")
        } else if already_quoted || !needs_quotes(value) {
            write!(self.writer, "{sep}{}={value}", field.name())
        } else {
            write!(self.writer, "{sep}{}={value:?}", field.name())
        };
    }
}

impl Visit for FieldWriter<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value, false);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        // A `?string` field is already in Rust's quotes and escapes.
        let quoted = text.len() >= 2 && text.starts_with('"') && text.ends_with('"');
        self.write(field, &text, quoted);
    }
}

fn needs_quotes(value: &str) -> bool {
    value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects what the layer writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(format: LogFormat, journald: bool, log: impl FnOnce()) -> String {
        let buf = Buffer::default();
        let out = buf.clone();
        let subscriber =
            tracing_subscriber::registry()
                .with(layer(format, journald, false, move || out.clone()));
        tracing::subscriber::with_default(subscriber, log);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn warn_event() {
        let reason = "3 failed checks: connection refused";
        tracing::warn!(
            service = %"workshop/myfrontend",
            endpoint = "127.0.0.3:9000",
            %reason,
            quoted = ?"a \"b\"",
            empty = "",
            count = 3,
            "endpoint DOWN"
        );
    }

    #[test]
    fn text_quotes_values_with_spaces_and_nothing_else() {
        let line = capture(LogFormat::Text, false, warn_event);
        assert!(
            line.contains(
                "endpoint DOWN service=workshop/myfrontend endpoint=127.0.0.3:9000 \
                 reason=\"3 failed checks: connection refused\" quoted=\"a \\\"b\\\"\" \
                 empty=\"\" count=3\n"
            ),
            "{line}"
        );
        // The default layout otherwise: a timestamp, the level, the target.
        assert!(line.contains(" WARN sluice::logging::tests: "), "{line}");
        assert!(line.starts_with("20"), "no timestamp: {line}");
    }

    #[test]
    fn journald_text_has_a_priority_and_no_timestamp() {
        let text = capture(LogFormat::Text, true, || {
            warn_event();
            tracing::info!("started");
            tracing::error!(what = "x y", "failed");
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("<4> WARN sluice::logging::tests: endpoint DOWN "),
            "{text}"
        );
        assert_eq!(lines[1], "<6> INFO sluice::logging::tests: started");
        assert_eq!(
            lines[2],
            "<3>ERROR sluice::logging::tests: failed what=\"x y\""
        );
    }

    #[test]
    fn json_is_one_object_per_line_with_flat_fields() {
        for journald in [false, true] {
            let text = capture(LogFormat::Json, journald, warn_event);
            let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
            assert_eq!(v["level"], "WARN");
            assert_eq!(v["message"], "endpoint DOWN");
            assert_eq!(v["reason"], "3 failed checks: connection refused");
            assert_eq!(v["service"], "workshop/myfrontend");
            assert_eq!(v["count"], 3);
            assert_eq!(v["target"], "sluice::logging::tests");
            assert_eq!(v.get("timestamp").is_some(), !journald, "{text}");
        }
    }

    #[test]
    fn journal_stream_values() {
        assert_eq!(parse_journal_stream("8:1234"), Some((8, 1234)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("a:1"), None);
        assert_eq!(parse_journal_stream(""), None);
    }
}
