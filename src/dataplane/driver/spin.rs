//! Adaptive busy-polling before a driver sleeps (`busy_poll`): how long to spin on the
//! completion queue before blocking in the kernel.
//!
//! The rule is the one of KVM's halt polling: a wait that ended (found work) within `max`
//! makes the next spin longer (from [`START`], doubling, up to `max`); a wait longer than
//! `max` (the worker would have spun for nothing) turns spinning off until a short wait
//! again. An idle worker (its waits end only at the tick) therefore never spins: idle CPU
//! stays at zero. `max` zero turns the whole thing off.
//!
//! Pure bookkeeping, no clock of its own: the driver measures and reports its waits.

use std::time::Duration;

/// The first spin after a short wait.
pub const START: Duration = Duration::from_micros(10);

/// The spin budget of one driver.
#[derive(Debug, Clone, Copy)]
pub struct Spin {
    max: Duration,
    budget: Duration,
}

impl Spin {
    /// Spins of at most `max` (zero: never).
    pub fn new(max: Duration) -> Spin {
        Spin {
            max,
            budget: Duration::ZERO,
        }
    }

    /// Whether spinning is on at all (`max` > 0): when off, waits need no bookkeeping.
    pub fn enabled(&self) -> bool {
        !self.max.is_zero()
    }

    /// How long to spin before a wait of at most `timeout` (`None`: unbounded).
    pub fn budget(&self, timeout: Option<Duration>) -> Duration {
        timeout.map_or(self.budget, |t| self.budget.min(t))
    }

    /// A wait (spin included) ended after `waited`: with work (`found`) or at its timeout.
    pub fn waited(&mut self, waited: Duration, found: bool) {
        if found && waited <= self.max {
            self.budget = if self.budget.is_zero() {
                START.min(self.max)
            } else {
                (self.budget * 2).min(self.max)
            };
        } else if waited > self.max {
            self.budget = Duration::ZERO;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(50);

    #[test]
    fn short_waits_grow_the_spin_up_to_max() {
        let mut s = Spin::new(MAX);
        assert_eq!(
            s.budget(None),
            Duration::ZERO,
            "no spin before a short wait"
        );
        let mut seen = Vec::new();
        for _ in 0..5 {
            s.waited(Duration::from_micros(5), true);
            seen.push(s.budget(None).as_micros());
        }
        assert_eq!(seen, [10, 20, 40, 50, 50]);
        assert_eq!(s.budget(Some(Duration::from_micros(3))).as_micros(), 3);
    }

    #[test]
    fn a_long_wait_or_an_idle_tick_stops_spinning() {
        let mut s = Spin::new(MAX);
        s.waited(Duration::from_micros(5), true);
        s.waited(Duration::from_micros(5), true);
        s.waited(Duration::from_micros(51), true);
        assert_eq!(
            s.budget(None),
            Duration::ZERO,
            "woken late: spinning would not have paid"
        );
        s.waited(Duration::from_micros(5), true);
        // An idle worker's waits end at the tick, with nothing found.
        s.waited(Duration::from_millis(100), false);
        assert_eq!(s.budget(None), Duration::ZERO);
    }

    #[test]
    fn off_never_spins() {
        let mut s = Spin::new(Duration::ZERO);
        assert!(!s.enabled());
        for _ in 0..3 {
            s.waited(Duration::ZERO, true);
        }
        assert_eq!(s.budget(None), Duration::ZERO);
    }
}
