//! The bounds of every duration and count sluice accepts, in one place.
//!
//! The TOML keys (top level and `[[service]]`), the Kubernetes fields and `sluice.io/*`
//! annotations of the same meaning, and the control requests (`endpoint weight`) all judge
//! their values against these constants; a value outside is refused naming the key and,
//! in a file, its `FILE:LINE:COLUMN`. `docs/operations.md` ("Limits") lists every one with
//! its default and its reason, and `docs/configuration.md` gives it per key; a test below
//! keeps both in step with the constants.
//!
//! A bound is far above any real need and far below what could overflow: the time
//! arithmetic of the data plane and control plane saturates as well (`crate::deadline`),
//! but no configured value should ever come near that.

use std::time::Duration;

/// An accepted range of durations (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    pub min: Duration,
    pub max: Duration,
}

impl DurationRange {
    /// Longer than zero, at most `max`.
    const fn positive_up_to(max: Duration) -> DurationRange {
        DurationRange { min: POSITIVE, max }
    }
}

/// An accepted range of integers (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountRange {
    pub min: i64,
    pub max: i64,
}

impl CountRange {
    pub fn contains(&self, v: i64) -> bool {
        (self.min..=self.max).contains(&v)
    }
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86400);
/// "Longer than zero": the shortest duration there is.
const POSITIVE: Duration = Duration::from_nanos(1);

/// `connect_timeout`: the kernel gives up a connect after about 2 minutes of SYN retries
/// (`net.ipv4.tcp_syn_retries = 6`), so an hour is never reached.
pub const CONNECT_TIMEOUT: DurationRange = DurationRange::positive_up_to(HOUR);
/// `idle_timeout`: longer than any NAT or conntrack table keeps an idle flow (conntrack's
/// established timeout is 5 days).
pub const IDLE_TIMEOUT: DurationRange =
    DurationRange::positive_up_to(Duration::from_secs(7 * 86400));
/// `hold_when_empty` and `sluice.io/hold-when-empty`: a held client waits with an open
/// connection; clients give up far sooner.
pub const HOLD_WHEN_EMPTY: DurationRange = DurationRange::positive_up_to(HOUR);
/// `drain_timeout`: a service manager's stop timeout is far shorter (the unit's
/// `TimeoutStopSec=45s`).
pub const DRAIN_TIMEOUT: DurationRange = DurationRange::positive_up_to(DAY);
/// `health_check_interval`: shorter checks keep the control thread busy; an endpoint checked
/// less than hourly is not checked.
pub const HEALTH_CHECK_INTERVAL: DurationRange = DurationRange {
    min: Duration::from_millis(10),
    max: HOUR,
};
/// `health_check_timeout` (also at most the interval).
pub const HEALTH_CHECK_TIMEOUT: DurationRange = DurationRange::positive_up_to(HOUR);
/// `outlier_ejection_time`: repeated ejections double it up to 8 times, so an endpoint is
/// out at most 8 hours.
pub const OUTLIER_EJECTION_TIME: DurationRange = DurationRange::positive_up_to(HOUR);

/// `affinity_timeout_seconds` and `sessionAffinityConfig.clientIP.timeoutSeconds`:
/// Kubernetes' range.
pub const AFFINITY_TIMEOUT_SECONDS: CountRange = CountRange { min: 1, max: 86400 };
/// `workers`: far above any machine sluice runs on, low enough to catch typos.
pub const WORKERS: CountRange = CountRange { min: 1, max: 1024 };
/// `max_connections_per_worker`: each connection holds two fds, and a process may have at
/// most `fs.nr_open` (1,048,576 by default) of them.
pub const MAX_CONNECTIONS_PER_WORKER: CountRange = CountRange {
    min: 1,
    max: 1 << 20,
};
/// `max_flows_per_worker`: each UDP flow holds one upstream socket (one fd), and a process
/// may have at most `fs.nr_open` (1,048,576 by default) of them.
pub const MAX_FLOWS_PER_WORKER: CountRange = CountRange {
    min: 1,
    max: 1 << 20,
};
/// `udp_responses`: counted per flow; a flow that answers more than a million times is a
/// stream, which the idle timeout ends.
pub const UDP_RESPONSES: CountRange = CountRange {
    min: 1,
    max: 1_000_000,
};
/// `max_held_per_worker` and `max_held_per_service`: connections held for Services without
/// a usable endpoint (`hold_when_empty`); 0 turns holding off.
pub const HELD_CONNECTIONS: CountRange = CountRange {
    min: 0,
    max: crate::model::MAX_HELD as i64,
};
/// `backlog`: what `listen(2)` takes (the kernel caps it at `net.core.somaxconn`).
pub const BACKLOG: CountRange = CountRange {
    min: 1,
    max: i32::MAX as i64,
};
/// `connect_retries`: each retry is another endpoint and another connect timeout; past a
/// hundred a client has long given up.
pub const CONNECT_RETRIES: CountRange = CountRange { min: 0, max: 100 };
/// `maglev_table_size` (a prime in this range).
pub const MAGLEV_TABLE_SIZE: CountRange = CountRange {
    min: 1009,
    max: 1_000_003,
};
/// `affinity_max_entries`: 16 Mi clients per worker and Service port.
pub const AFFINITY_MAX_ENTRIES: CountRange = CountRange {
    min: 1,
    max: 1 << 24,
};
/// An endpoint's `weight` (file) and `sluice ctl endpoint weight`: weight sums cannot
/// overflow.
pub const WEIGHT: CountRange = CountRange { min: 0, max: 65535 };
/// `health_check_rise` and `health_check_fall`.
pub const HEALTH_CHECK_RISE_FALL: CountRange = CountRange { min: 1, max: 100 };
/// `outlier_consecutive_failures`.
pub const OUTLIER_CONSECUTIVE_FAILURES: CountRange = CountRange {
    min: 1,
    max: 10_000,
};

/// Every duration key with its range, for the documentation check (and readers).
pub const DURATIONS: &[(&str, DurationRange)] = &[
    ("connect_timeout", CONNECT_TIMEOUT),
    ("idle_timeout", IDLE_TIMEOUT),
    ("hold_when_empty", HOLD_WHEN_EMPTY),
    ("drain_timeout", DRAIN_TIMEOUT),
    ("health_check_interval", HEALTH_CHECK_INTERVAL),
    ("health_check_timeout", HEALTH_CHECK_TIMEOUT),
    ("outlier_ejection_time", OUTLIER_EJECTION_TIME),
];

/// Every count key with its range, for the documentation check (and readers).
pub const COUNTS: &[(&str, CountRange)] = &[
    ("affinity_timeout_seconds", AFFINITY_TIMEOUT_SECONDS),
    ("workers", WORKERS),
    ("max_connections_per_worker", MAX_CONNECTIONS_PER_WORKER),
    ("max_flows_per_worker", MAX_FLOWS_PER_WORKER),
    ("udp_responses", UDP_RESPONSES),
    ("max_held_per_worker", HELD_CONNECTIONS),
    ("max_held_per_service", HELD_CONNECTIONS),
    ("backlog", BACKLOG),
    ("connect_retries", CONNECT_RETRIES),
    ("maglev_table_size", MAGLEV_TABLE_SIZE),
    ("affinity_max_entries", AFFINITY_MAX_ENTRIES),
    ("weight", WEIGHT),
    ("health_check_rise", HEALTH_CHECK_RISE_FALL),
    ("health_check_fall", HEALTH_CHECK_RISE_FALL),
    ("outlier_consecutive_failures", OUTLIER_CONSECUTIVE_FAILURES),
];

/// How a duration bound is written in messages and the docs (`"1h"`, `"7days"`, `"10ms"`).
pub fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The rows of the markdown tables whose first cell names `` `key` `` (alone or in a
    /// list such as `` `a`, `b` ``).
    fn rows<'a>(doc: &'a str, key: &str) -> Vec<&'a str> {
        let name = format!("`{key}`");
        doc.lines()
            .filter(|l| {
                let first = l.strip_prefix('|').and_then(|l| l.split('|').next());
                first.is_some_and(|cell| cell.split(',').any(|k| k.trim() == name))
            })
            .collect()
    }

    fn limits_section(doc: &str) -> &str {
        let start = doc
            .find("\n## Limits")
            .expect("docs/operations.md has a Limits section");
        let rest = &doc[start + 1..];
        let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
        &rest[..end]
    }

    /// docs/operations.md ("Limits") and docs/configuration.md state every bound as it is.
    #[test]
    fn the_docs_state_every_bound() {
        let ops = limits_section(include_str!("../../docs/operations.md"));
        let cfg = include_str!("../../docs/configuration.md");
        for (key, r) in DURATIONS {
            let limit = stated(ops, cfg, key, &format!("`{}`", show(r.max)));
            if r.min != POSITIVE {
                let min = format!("`{}`", show(r.min));
                assert!(limit.contains(&min), "{key}: {min} in {limit:?}");
            }
        }
        for (key, r) in COUNTS {
            stated(ops, cfg, key, &format!("{}..={}", r.min, r.max));
        }
    }

    /// Checks that `key` has one row in `ops` (the Limits section) and at least one in
    /// `cfg`, and that each shows `bound`; returns the Limits row.
    fn stated<'a>(ops: &'a str, cfg: &str, key: &str, bound: &str) -> &'a str {
        let limit = rows(ops, key);
        assert_eq!(
            limit.len(),
            1,
            "docs/operations.md Limits: one row for {key}"
        );
        assert!(limit[0].contains(bound), "{key}: {bound} in {:?}", limit[0]);
        let per_key = rows(cfg, key);
        assert!(
            !per_key.is_empty(),
            "docs/configuration.md: no row for {key}"
        );
        for row in per_key {
            assert!(
                row.contains(bound),
                "configuration.md {key}: {bound} in {row:?}"
            );
        }
        limit[0]
    }

    /// Where a key goes in a test file: (text before the key's line, text after).
    fn context(key: &str) -> (&'static str, &'static str) {
        const SERVICE: &str = "[[service]]\nname = \"a\"\nport = 80\n";
        match key {
            "affinity_timeout_seconds" | "affinity_max_entries" => (
                "[[service]]\nname = \"a\"\nport = 80\npolicy = \"client-ip\"\n",
                "",
            ),
            "weight" => (
                "[[service]]\nname = \"a\"\nport = 80\nendpoints = [{ address = \"10.0.0.1\", ",
                " }]\n",
            ),
            "health_check_timeout" => ("health_check_interval = \"1h\"\n", ""),
            "udp_responses" => (
                "[[service]]\nname = \"a\"\nport = 53\nprotocol = \"UDP\"\n",
                "",
            ),
            "hold_when_empty" | "connect_timeout" | "idle_timeout" | "connect_retries" => {
                (SERVICE, "")
            }
            _ => ("", ""),
        }
    }

    /// Parses a file with `key = value` in its place; Ok, or the error's line, column and
    /// message.
    fn judge(key: &str, value: &str) -> Result<(), (usize, usize, String)> {
        let (before, after) = context(key);
        let sep = if key == "weight" { "" } else { "\n" };
        let text = format!("{before}{key} = {value}{after}{sep}");
        match crate::config::parse(&text, "l.toml", None) {
            Ok(_) => Ok(()),
            Err(e) => Err((e.line, e.column, e.message)),
        }
    }

    /// Line and column of the value written by [`judge`].
    fn value_position(key: &str) -> (usize, usize) {
        let (before, _) = context(key);
        let last = before.rsplit('\n').next().unwrap_or("");
        (
            before.matches('\n').count() + 1,
            last.chars().count() + key.len() + 4,
        )
    }

    fn any_seconds(max: Duration) -> impl Strategy<Value = (u64, u32)> {
        let near = max.as_secs() * 2 + 2;
        (
            prop_oneof![0..near, any::<u64>(), Just(u64::MAX), Just(max.as_secs())],
            prop_oneof![0u32..1_000_000_000, Just(0u32), Just(1u32)],
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any duration, for any duration key: accepted exactly within its range, else an
        /// error pointing at the value and naming the key. Never a panic.
        #[test]
        fn every_duration_key_keeps_its_range(
            (which, (secs, nanos)) in (0..DURATIONS.len())
                .prop_flat_map(|i| (Just(i), any_seconds(DURATIONS[i].1.max))),
        ) {
            let (key, range) = DURATIONS[which];
            let text = if nanos == 0 { format!("\"{secs}s\"") } else { format!("\"{secs}s {nanos}ns\"") };
            let d = Duration::new(secs, nanos);
            let inside = d >= range.min && d <= range.max;
            match judge(key, &text) {
                Ok(()) => prop_assert!(inside, "{key} = {text} accepted"),
                Err((line, col, message)) => {
                    prop_assert!(!inside, "{key} = {text} refused: {message}");
                    prop_assert_eq!((line, col), value_position(key), "{}", message);
                    prop_assert!(message.starts_with(key), "{}", message);
                }
            }
        }

        /// Any integer, for any count key: accepted exactly within its range.
        #[test]
        fn every_count_key_keeps_its_range(
            which in 0..COUNTS.len(),
            v in prop_oneof![any::<i64>(), -2i64..70_000, Just(i64::MAX), Just(i64::from(u32::MAX) + 1)],
        ) {
            let (key, range) = COUNTS[which];
            // Maglev sizes must also be prime: judged by its own tests.
            prop_assume!(key != "maglev_table_size");
            match judge(key, &v.to_string()) {
                Ok(()) => prop_assert!(range.contains(v), "{key} = {v} accepted"),
                Err((line, col, message)) => {
                    prop_assert!(!range.contains(v), "{key} = {v} refused: {message}");
                    prop_assert_eq!((line, col), value_position(key), "{}", message);
                    prop_assert!(message.starts_with(&format!("{key} {v} is out of range")), "{}", message);
                }
            }
        }
    }

    /// The four durations reported to crash sluice are refused where they are written.
    #[test]
    fn the_reported_durations_are_refused_with_their_position() {
        for key in [
            "idle_timeout",
            "drain_timeout",
            "connect_timeout",
            "outlier_ejection_time",
        ] {
            let (line, col, message) = judge(key, "\"18446744073709551615s\"").unwrap_err();
            assert_eq!((line, col), value_position(key), "{message}");
            assert!(
                message.starts_with(&format!(
                    "{key} \"18446744073709551615s\" is too long: at most "
                )),
                "{message}"
            );
        }
    }

    #[test]
    fn bounds_are_ordered_and_far_from_overflow() {
        for (key, r) in DURATIONS {
            assert!(r.min > Duration::ZERO && r.min <= r.max, "{key}");
            // Doubled eight times (ejections) and added to any instant: nowhere near the
            // saturation point.
            assert!(r.max * 8 < crate::deadline::FAR_FUTURE / 100, "{key}");
        }
        for (key, r) in COUNTS {
            assert!(r.min <= r.max && r.max <= i64::from(u32::MAX), "{key}");
        }
    }
}
