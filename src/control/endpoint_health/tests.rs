//! Tests of `endpoint_health`.

use super::*;

/// Feeds a string of results ('+' pass, '-' fail) and returns the up/down trace.
fn trace(mut c: CheckCounter, results: &str) -> String {
    results
        .chars()
        .map(|r| if c.record(r == '+') { 'U' } else { 'D' })
        .collect()
}

#[test]
fn fall_failures_in_a_row_mark_down_rise_successes_mark_up() {
    let confirmed = {
        let mut c = CheckCounter::fresh(2, 3);
        c.record(true);
        c
    };
    assert!(confirmed.is_up());
    assert_eq!(trace(confirmed, "---"), "UUD");
    // A success in between starts the count again.
    assert_eq!(trace(confirmed, "--+---"), "UUUUUD");
    // Down: rise successes in a row; a failure in between starts again.
    assert_eq!(trace(confirmed, "---++"), "UUDDU");
    assert_eq!(trace(confirmed, "---+-++"), "UUDDDDU");
    // Back up, it is confirmed again: fall failures to go down.
    assert_eq!(trace(confirmed, "---++---"), "UUDDUUUD");
}

#[test]
fn a_new_target_is_up_until_its_first_failed_check() {
    assert!(CheckCounter::fresh(2, 3).is_up());
    assert_eq!(trace(CheckCounter::fresh(2, 3), "-"), "D");
    assert_eq!(trace(CheckCounter::fresh(2, 3), "+---"), "UUUD");
    assert_eq!(trace(CheckCounter::fresh(1, 1), "-+-+"), "DUDU");
}

#[test]
fn new_limits_keep_the_state() {
    let mut c = CheckCounter::fresh(2, 3);
    c.record(true);
    let c = c.with_limits(5, 1);
    assert_eq!(trace(c, "-"), "D");
    let mut d = CheckCounter::fresh(2, 3);
    d.force_down();
    let d = d.with_limits(1, 4);
    assert!(!d.is_up());
    assert_eq!(trace(d, "+---"), "UUUU");
}

fn counts(ok: u64, failed: u64, failed_in_row: u64) -> ConnectCounts {
    ConnectCounts {
        ok,
        failed,
        failed_in_row,
    }
}

#[test]
fn ejection_after_consecutive_failures_then_return_and_doubling() {
    let cfg = PassiveCheck {
        consecutive_failures: 3,
        ejection_time: Duration::from_secs(10),
    };
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut e = Ejection::new(counts(100, 7, 7));
    // What happened before tracking does not count.
    assert_eq!(e.poll(at(0), &cfg, counts(100, 7, 7)), None);
    assert_eq!(e.poll(at(1), &cfg, counts(100, 9, 9)), None);
    assert_eq!(
        e.poll(at(2), &cfg, counts(100, 10, 10)),
        Some(EjectionChange::Ejected {
            failures: 3,
            time: Duration::from_secs(10)
        })
    );
    assert!(e.is_ejected());
    assert_eq!(e.poll(at(11), &cfg, counts(100, 10, 10)), None);
    assert_eq!(
        e.poll(at(12), &cfg, counts(100, 10, 10)),
        Some(EjectionChange::Returned)
    );
    // Failing again without a success in between: twice as long.
    assert_eq!(
        e.poll(at(13), &cfg, counts(100, 13, 13)),
        Some(EjectionChange::Ejected {
            failures: 3,
            time: Duration::from_secs(20)
        })
    );
    assert_eq!(
        e.poll(at(33), &cfg, counts(100, 13, 13)),
        Some(EjectionChange::Returned)
    );
    // …up to MAX_EJECTION_FACTOR times.
    let mut t = 33;
    let mut failed = 13;
    for want in [40, 80, 80] {
        failed += 3;
        t += 1;
        assert_eq!(
            e.poll(at(t), &cfg, counts(100, failed, failed)),
            Some(EjectionChange::Ejected {
                failures: 3,
                time: Duration::from_secs(want)
            })
        );
        t += want;
        assert_eq!(
            e.poll(at(t), &cfg, counts(100, failed, failed)),
            Some(EjectionChange::Returned)
        );
    }
    // A success resets the doubling, and only failures after it count.
    failed += 2;
    t += 1;
    assert_eq!(e.poll(at(t), &cfg, counts(101, failed, 1)), None);
    failed += 2;
    t += 1;
    assert_eq!(
        e.poll(at(t), &cfg, counts(101, failed, 3)),
        Some(EjectionChange::Ejected {
            failures: 3,
            time: Duration::from_secs(10)
        })
    );
}

/// An ejection time no clock can reach, doubled, must neither overflow `Duration * n`
/// nor `Instant + Duration` (either panicked the health task).
#[test]
fn ejection_times_beyond_any_clock_saturate() {
    let t0 = Instant::now();
    for ejection_time in [Duration::MAX, Duration::from_secs(u64::MAX / 4)] {
        let cfg = PassiveCheck {
            consecutive_failures: 1,
            ejection_time,
        };
        let mut e = Ejection::new(counts(0, 0, 0));
        let Some(EjectionChange::Ejected { time, .. }) = e.poll(t0, &cfg, counts(0, 1, 1)) else {
            panic!("one failure ejects");
        };
        assert!(time >= Duration::from_secs(50 * 365 * 86400), "{time:?}");
        assert!(e.is_ejected());
        let later = t0 + Duration::from_secs(365 * 86400);
        assert_eq!(e.poll(later, &cfg, counts(0, 1, 1)), None);
        assert!(e.is_ejected());
    }
}

#[test]
fn successes_keep_an_endpoint_in() {
    let cfg = PassiveCheck {
        consecutive_failures: 2,
        ejection_time: Duration::from_secs(1),
    };
    let t0 = Instant::now();
    let mut e = Ejection::new(ConnectCounts::default());
    // One failure then a success, per poll, for a long time: never two in a row.
    for i in 1..50u64 {
        assert_eq!(e.poll(t0, &cfg, counts(i, i, 0)), None, "poll {i}");
    }
}
