//! Time arithmetic that cannot panic: deadlines, products of durations and durations handed
//! to the kernel saturate at [`FAR_FUTURE`] instead of overflowing.
//!
//! `Instant + Duration` and `Duration * n` panic on overflow, and a `timespec` whose seconds
//! do not fit its signed field is refused by the kernel. Every configured duration has an
//! upper bound far below that (`config::limits`), so with a valid configuration nothing here
//! ever saturates; these helpers make the data plane and the control plane safe against any
//! value regardless (a bound gone wrong, a value from the environment, a future source).
//! A duration longer than [`FAR_FUTURE`] means "never" for every use in sluice.
//!
//! Pure (std only): no clock is read here — `now` is passed in, so the sans-IO connection
//! core may use it.

use std::time::{Duration, Instant};

/// The longest duration sluice waits for anything: about 100 years. Longer ones are cut to
/// this, which changes nothing a process can observe.
pub const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `d`, at most [`FAR_FUTURE`].
pub fn cap(d: Duration) -> Duration {
    d.min(FAR_FUTURE)
}

/// `now + d`, or the latest instant this clock can represent up to `now + FAR_FUTURE`
/// when that would overflow. Never earlier than `now`.
pub fn after(now: Instant, d: Duration) -> Instant {
    let mut d = cap(d);
    loop {
        if let Some(t) = now.checked_add(d) {
            return t;
        }
        // Only on a clock that cannot hold `now + 100 years`: halve until it fits
        // (`now + 0` always does).
        d /= 2;
    }
}

/// `d * n`, at most [`FAR_FUTURE`].
pub fn times(d: Duration, n: u32) -> Duration {
    cap(d.saturating_mul(n))
}

/// `d` as the (seconds, nanoseconds) of a kernel `timespec`, at most [`FAR_FUTURE`] (so the
/// seconds always fit the kernel's signed 64-bit field).
pub fn timespec(d: Duration) -> (u64, u32) {
    let d = cap(d);
    (d.as_secs(), d.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
            (0u64..10 * 365 * 86400, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
            Just(Duration::MAX),
            Just(Duration::ZERO),
            Just(FAR_FUTURE),
        ]
    }

    #[test]
    fn the_edges() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::ZERO), now);
        assert_eq!(after(now, Duration::MAX), now + FAR_FUTURE);
        assert_eq!(times(Duration::MAX, 2), FAR_FUTURE);
        assert_eq!(times(Duration::from_secs(10), 8), Duration::from_secs(80));
        assert_eq!(timespec(Duration::MAX), (FAR_FUTURE.as_secs(), 0));
        assert_eq!(timespec(Duration::from_millis(1500)), (1, 500_000_000));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Never panics, never earlier than `now`, exact below the cap, and monotonic in `d`.
        #[test]
        fn after_saturates(a in any_duration(), b in any_duration()) {
            let now = Instant::now();
            let (ta, tb) = (after(now, a), after(now, b));
            prop_assert!(ta >= now);
            if a <= FAR_FUTURE {
                prop_assert_eq!(ta, now + a);
            } else {
                prop_assert_eq!(ta, now + FAR_FUTURE);
            }
            if a <= b {
                prop_assert!(ta <= tb);
            }
        }

        #[test]
        fn times_saturates(d in any_duration(), n in any::<u32>()) {
            let t = times(d, n);
            prop_assert!(t <= FAR_FUTURE);
            match d.checked_mul(n) {
                Some(exact) if exact <= FAR_FUTURE => prop_assert_eq!(t, exact),
                _ => prop_assert_eq!(t, FAR_FUTURE),
            }
        }

        #[test]
        fn timespecs_fit_the_kernel(d in any_duration()) {
            let (secs, nanos) = timespec(d);
            prop_assert!(i64::try_from(secs).is_ok());
            prop_assert!(nanos < 1_000_000_000);
            prop_assert_eq!(Duration::new(secs, nanos), cap(d));
        }
    }
}
