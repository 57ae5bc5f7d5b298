//! Coalescing bursts of watch events into few reloads, with a bounded delay.
//!
//! [`Coalescer`] is a pure timer rule (no clock, no IO: time comes in as `now`): after a
//! change it waits for `quiet` without further changes, but never longer than `max` after
//! the first unapplied change, then says "fire" with the time that first change arrived
//! (what the sync-latency metric measures from). [`run`] drives it with tokio's clock.

use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long to wait for a burst to end: `quiet` after the last change, at most `max` after
/// the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub quiet: Duration,
    pub max: Duration,
}

impl Default for Window {
    /// 100 ms of quiet, at most 1 s: a rolling update's burst becomes one or two reloads,
    /// and no change waits more than a second.
    fn default() -> Self {
        Window {
            quiet: Duration::from_millis(100),
            max: Duration::from_secs(1),
        }
    }
}

/// The pending-change state between two reloads.
#[derive(Debug, Clone)]
pub struct Coalescer {
    window: Window,
    /// (first, last) unapplied change.
    pending: Option<(Instant, Instant)>,
}

impl Coalescer {
    pub fn new(window: Window) -> Coalescer {
        Coalescer {
            window,
            pending: None,
        }
    }

    /// A change arrived at `now`.
    pub fn change(&mut self, now: Instant) {
        self.pending = Some(match self.pending {
            None => (now, now),
            Some((first, last)) => (first, last.max(now)),
        });
    }

    /// When [`poll`](Self::poll) will fire, if a change is pending.
    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = self.pending?;
        let after = crate::deadline::after;
        Some(after(last, self.window.quiet).min(after(first, self.window.max)))
    }

    /// At or after the deadline: the time the first unapplied change arrived, and the state
    /// is reset. Before it (or with nothing pending): `None`.
    pub fn poll(&mut self, now: Instant) -> Option<Instant> {
        let deadline = self.deadline()?;
        if now < deadline {
            return None;
        }
        self.pending.take().map(|(first, _)| first)
    }
}

/// Receives change times on `changes` and calls `fire(first_change)` once per coalesced
/// burst. Ends when every sender of `changes` is gone.
pub async fn run(
    window: Window,
    mut changes: mpsc::UnboundedReceiver<Instant>,
    mut fire: impl FnMut(Instant),
) {
    let mut c = Coalescer::new(window);
    loop {
        let deadline = c.deadline();
        tokio::select! {
            change = changes.recv() => match change {
                Some(at) => c.change(at),
                None => {
                    // Deliver what is pending before ending.
                    if let Some(first) = c.pending.take().map(|(f, _)| f) {
                        fire(first);
                    }
                    return;
                }
            },
            _ = sleep_until(deadline) => {
                if let Some(first) = c.poll(Instant::now()) {
                    fire(first);
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn window() -> Window {
        Window {
            quiet: 100 * MS,
            max: 1000 * MS,
        }
    }

    #[test]
    fn nothing_pending_never_fires() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(window());
        assert_eq!(c.deadline(), None);
        assert_eq!(c.poll(t0 + 10_000 * MS), None);
    }

    #[test]
    fn one_change_fires_after_the_quiet_time_with_its_own_time() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(window());
        c.change(t0);
        assert_eq!(c.deadline(), Some(t0 + 100 * MS));
        assert_eq!(c.poll(t0 + 99 * MS), None);
        assert_eq!(c.poll(t0 + 100 * MS), Some(t0));
        // Reset: nothing more until the next change.
        assert_eq!(c.deadline(), None);
        assert_eq!(c.poll(t0 + 500 * MS), None);
    }

    #[test]
    fn each_change_in_a_burst_pushes_the_deadline_by_the_quiet_time() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(window());
        for i in 0..5 {
            c.change(t0 + i * 50 * MS);
        }
        // Last change at 200 ms → fires at 300 ms, reporting the first change.
        assert_eq!(c.deadline(), Some(t0 + 300 * MS));
        assert_eq!(c.poll(t0 + 250 * MS), None);
        assert_eq!(c.poll(t0 + 300 * MS), Some(t0));
    }

    #[test]
    fn a_burst_that_never_pauses_fires_at_the_max_delay() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(window());
        let mut fired = Vec::new();
        // A change every 50 ms for 3 s: the quiet time never passes.
        for i in 0..60u32 {
            let now = t0 + i * 50 * MS;
            if let Some(first) = c.poll(now) {
                fired.push((now, first));
            }
            c.change(now);
        }
        // Fires once per second of burst, each reporting when its part began.
        assert_eq!(fired.len(), 2, "{fired:?}");
        assert_eq!(fired[0], (t0 + 1000 * MS, t0));
        assert_eq!(fired[1].1, t0 + 1000 * MS);
        assert_eq!(fired[1].0, t0 + 2000 * MS);
        // The tail is still pending.
        assert!(c.deadline().is_some());
    }

    #[test]
    fn out_of_order_times_do_not_move_the_deadline_back() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(window());
        c.change(t0 + 50 * MS);
        c.change(t0 + 10 * MS);
        assert_eq!(c.deadline(), Some(t0 + 150 * MS));
    }

    #[test]
    fn run_turns_a_burst_of_200_changes_into_one_fire() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, rx) = mpsc::unbounded_channel();
            let (fired_tx, mut fired) = mpsc::unbounded_channel();
            // A generous max: the burst below takes far less than that.
            let w = Window {
                quiet: 50 * MS,
                max: 10_000 * MS,
            };
            let task = tokio::spawn(run(w, rx, move |t| fired_tx.send(t).unwrap()));
            let t0 = Instant::now();
            for _ in 0..200 {
                tx.send(Instant::now()).unwrap();
            }
            let first = fired.recv().await.unwrap();
            assert!(first >= t0);
            // Nothing more: the burst was one.
            drop(tx);
            task.await.unwrap();
            assert!(fired.recv().await.is_none());
        });
    }
}
