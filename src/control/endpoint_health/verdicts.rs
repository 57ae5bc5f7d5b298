//! The pure rules of endpoint health, fed counts and `now`, deciding Up/Down: HAProxy's
//! health counter for active checks ([`CheckCounter`]) and passive outlier ejection with
//! its doubling ejection time ([`Ejection`]). No IO, no clock of their own: the tracker
//! (`endpoint_health.rs`) feeds them probe results and the workers' connect counters.

use crate::model::{PassiveCheck, MAX_EJECTION_FACTOR};
use std::time::{Duration, Instant};

/// HAProxy's health counter: `0..rise` is down, `rise..=rise+fall-1` is up. A failure
/// while up steps down by one (down below `rise`, where it drops to 0); a success while
/// down steps up by one (up at `rise`, where it jumps to the top). So from the top, `fall`
/// failures in a row mark it down; from 0, `rise` successes in a row mark it up; a new
/// counter sits at `rise` (up, but one failure marks it down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckCounter {
    health: u32,
    rise: u32,
    fall: u32,
}

impl CheckCounter {
    /// A new target: up, unconfirmed.
    pub fn fresh(rise: u32, fall: u32) -> CheckCounter {
        CheckCounter {
            health: rise,
            rise,
            fall,
        }
    }

    /// The same up/down state under new `rise`/`fall` (confirmed when up).
    pub(super) fn with_limits(self, rise: u32, fall: u32) -> CheckCounter {
        let up = self.is_up();
        let mut c = CheckCounter {
            health: 0,
            rise,
            fall,
        };
        if up {
            c.health = c.top();
        }
        c
    }

    fn top(&self) -> u32 {
        self.rise + self.fall - 1
    }

    pub fn is_up(&self) -> bool {
        self.health >= self.rise
    }

    /// Marks it down (an ejection): `rise` successes bring it back.
    pub fn force_down(&mut self) {
        self.health = 0;
    }

    /// Records one check result; returns whether it is up now.
    pub fn record(&mut self, ok: bool) -> bool {
        if ok {
            if self.health < self.top() {
                self.health += 1;
                if self.health >= self.rise {
                    self.health = self.top();
                }
            }
        } else if self.health > self.rise {
            self.health -= 1;
        } else {
            self.health = 0;
        }
        self.is_up()
    }
}

/// What a passive poll concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectionChange {
    /// Ejected for this long after this many failed connects in a row.
    Ejected { failures: u64, time: Duration },
    /// The ejection time is over.
    Returned,
}

/// Passive outlier ejection of one target, fed with the workers' counters (pure: time and
/// counters are passed in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ejection {
    until: Option<Instant>,
    /// Ejections since the last successful connect (the next one lasts 2^this × base).
    ejections: u32,
    /// Failed connects in a row, counted since the last poll that saw a success.
    streak: u64,
    seen_ok: u64,
    seen_failed: u64,
}

/// The counters of one endpoint a passive poll reads (sums over workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectCounts {
    /// Successful connects (backend connections opened).
    pub ok: u64,
    /// Failed connects.
    pub failed: u64,
    /// Failed connects since each worker's last success, summed.
    pub failed_in_row: u64,
}

impl Ejection {
    /// Starts counting from `counts` (what happened before does not count).
    pub fn new(counts: ConnectCounts) -> Ejection {
        Ejection {
            until: None,
            ejections: 0,
            streak: 0,
            seen_ok: counts.ok,
            seen_failed: counts.failed,
        }
    }

    pub fn is_ejected(&self) -> bool {
        self.until.is_some()
    }

    /// One poll at `now` with the current counters.
    pub fn poll(
        &mut self,
        now: Instant,
        config: &PassiveCheck,
        counts: ConnectCounts,
    ) -> Option<EjectionChange> {
        let ok = counts.ok.wrapping_sub(self.seen_ok);
        let failed = counts.failed.wrapping_sub(self.seen_failed);
        self.seen_ok = counts.ok;
        self.seen_failed = counts.failed;
        if let Some(until) = self.until {
            if now < until {
                return None;
            }
            self.until = None;
            self.streak = 0;
            return Some(EjectionChange::Returned);
        }
        if ok > 0 {
            // Some connect succeeded since the last poll: only the failures after each
            // worker's last success are in a row.
            self.streak = counts.failed_in_row.min(failed);
            self.ejections = 0;
        } else {
            self.streak += failed;
        }
        if self.streak < u64::from(config.consecutive_failures) {
            return None;
        }
        let factor = 1u32 << self.ejections.min(16);
        let time = crate::deadline::times(config.ejection_time, factor.min(MAX_EJECTION_FACTOR));
        self.ejections = self.ejections.saturating_add(1);
        self.until = Some(crate::deadline::after(now, time));
        let failures = self.streak;
        self.streak = 0;
        Some(EjectionChange::Ejected { failures, time })
    }
}
