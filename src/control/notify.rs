//! sd_notify: telling systemd (or whoever set `NOTIFY_SOCKET`) what the daemon is doing,
//! and the watchdog gated on worker heartbeats.
//!
//! Messages go through the `sd-notify` crate; without `NOTIFY_SOCKET` every call is a no-op.
//! The watchdog keep-alive is sent only while every worker's heartbeat has advanced since the
//! previous one ([`HeartbeatGate`]), so a wedged worker lets systemd's watchdog fire.

use sd_notify::NotifyState;
use std::time::Duration;

/// The daemon's link to its service manager.
#[derive(Debug, Clone)]
pub struct Notifier {
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `WATCHDOG_USEC` / `WATCHDOG_PID` (libsystemd's rule: the watchdog is ours when
    /// `WATCHDOG_PID` is unset or names this process).
    pub fn from_env() -> Notifier {
        let usec = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|&u| u > 0);
        let ours = match std::env::var("WATCHDOG_PID") {
            Ok(p) => p.trim().parse::<u32>().ok() == Some(std::process::id()),
            Err(_) => true,
        };
        Notifier {
            watchdog: usec.filter(|_| ours).map(Duration::from_micros),
        }
    }

    /// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when the watchdog is on.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    pub fn ready(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `RELOADING=1` with `MONOTONIC_USEC` (as `Type=notify-reload` expects).
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(_) => send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self, status: &str) {
        send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// The daemon is going down on a failure (`STOPPING=1` with the reason as `STATUS=`);
    /// the exit status that follows tells systemd it failed.
    pub fn failing(&self, status: &str) {
        send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    pub fn watchdog(&self) {
        send(&[NotifyState::Watchdog]);
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// Remembers the last heartbeats seen; says whether every worker advanced since.
#[derive(Debug, Default)]
pub struct HeartbeatGate {
    last: Vec<u64>,
}

impl HeartbeatGate {
    /// True when each worker's counter differs from the previous call's (the first call
    /// only records). A wedged worker makes this false until it moves again.
    pub fn all_advanced(&mut self, now: Vec<u64>) -> bool {
        let first = self.last.len() != now.len();
        let moved = !first && self.last.iter().zip(&now).all(|(a, b)| a != b);
        self.last = now;
        first || moved
    }

    /// The workers whose heartbeat did not move at the last check (for the log).
    pub fn stuck(&self, now: &[u64]) -> Vec<usize> {
        self.last
            .iter()
            .zip(now)
            .enumerate()
            .filter(|(_, (a, b))| a == b)
            .map(|(i, _)| i)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stuck_worker_closes_the_gate() {
        let mut g = HeartbeatGate::default();
        assert!(g.all_advanced(vec![1, 1]));
        assert!(g.all_advanced(vec![2, 5]));
        assert!(!g.all_advanced(vec![3, 5]));
        assert!(g.all_advanced(vec![4, 6]));
    }
}
