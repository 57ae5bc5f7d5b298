//! Rate-limited reporting of clients refused by `loadBalancerSourceRanges`: each worker
//! logs at most one line per [`LOG_EVERY`] for TCP connections and for UDP datagrams,
//! with the count since its last line. The counters (`source_refused`, the
//! `source_range` drop reason) count every one; the log says that it happens, and to whom.

use std::time::{Duration, Instant};

/// At most one line per worker and protocol per this period.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

/// Refusals since the last line, and when that line was written.
#[derive(Debug, Default)]
pub(crate) struct RefusalLog {
    last: Option<Instant>,
    since: u64,
}

impl RefusalLog {
    /// Counts one refusal at `now`; `Some(n)` when a line is due, `n` being the refusals
    /// since the last line (this one included).
    pub(crate) fn refused(&mut self, now: Instant) -> Option<u64> {
        self.since += 1;
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < LOG_EVERY)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_refusal_is_logged_then_one_line_per_period_with_the_count_between() {
        let t0 = Instant::now();
        let mut log = RefusalLog::default();
        assert_eq!(log.refused(t0), Some(1));
        for i in 1..5 {
            assert_eq!(log.refused(t0 + Duration::from_secs(i)), None);
        }
        // 4 held back + this one.
        assert_eq!(log.refused(t0 + LOG_EVERY), Some(5));
        assert_eq!(log.refused(t0 + LOG_EVERY + Duration::from_secs(1)), None);
        assert_eq!(log.refused(t0 + LOG_EVERY * 3), Some(2));
    }
}
