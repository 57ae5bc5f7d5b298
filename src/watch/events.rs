//! Problems with Services, written as Kubernetes Events on the Service (`events.k8s.io/v1`,
//! through kube-rs's event `Recorder`), so that `kubectl describe service` and `kubectl get
//! events` show them where users look — in addition to the log.
//!
//! The conversion reports a problem once while it lasts (`ClusterWatch::report`); this task posts
//! it, rate-limited: the same (Service, reason, message) at most once per [`REPEAT_AFTER`],
//! and at most [`BURST`] Events at once, refilled at [`PER_SECOND`] a second (a burst of
//! broken Services does not flood the API server); what is dropped is counted in the log.
//! A failed post (RBAC, API down) is logged at debug and never retried: the log line stays.

use crate::config::k8s::Problem;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The same problem is posted again at most this often (kube-rs's Recorder folds repeats
/// within 6 minutes into a series).
pub const REPEAT_AFTER: Duration = Duration::from_secs(600);
/// Events posted at once before the rate applies.
pub const BURST: f64 = 25.0;
/// Events per second after a burst.
pub const PER_SECOND: f64 = 1.0;
/// Problems remembered for [`REPEAT_AFTER`]; more are forgotten oldest first.
const REMEMBERED: usize = 10_000;

/// One problem to post, on the Service it concerns.
#[derive(Debug, Clone)]
pub struct ProblemEvent {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub reason: &'static str,
    pub message: String,
}

impl ProblemEvent {
    /// The Event for `p` when it concerns a Service (`Service ns/name`); `uid` is the
    /// Service's, when known.
    pub fn of(p: &Problem, uid: Option<String>) -> Option<ProblemEvent> {
        let (namespace, name) = p.object.strip_prefix("Service ")?.split_once('/')?;
        Some(ProblemEvent {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid,
            reason: p.reason,
            message: p.message.clone(),
        })
    }
}

/// Which problems to post now: dedup per (Service, reason, message) and a token bucket.
#[derive(Debug)]
pub struct Limiter {
    posted: HashMap<(String, String, &'static str, String), Instant>,
    tokens: f64,
    refilled: Instant,
    /// Dropped by the rate since the last post.
    pub dropped: u64,
}

impl Limiter {
    pub fn new(now: Instant) -> Limiter {
        Limiter {
            posted: HashMap::new(),
            tokens: BURST,
            refilled: now,
            dropped: 0,
        }
    }

    /// Whether `e` may be posted at `now` (and if so, it counts as posted).
    pub fn admit(&mut self, e: &ProblemEvent, now: Instant) -> bool {
        let key = (
            e.namespace.clone(),
            e.name.clone(),
            e.reason,
            e.message.clone(),
        );
        if self
            .posted
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < REPEAT_AFTER)
        {
            return false;
        }
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * PER_SECOND).min(BURST);
        self.refilled = now;
        if self.tokens < 1.0 {
            self.dropped += 1;
            return false;
        }
        self.tokens -= 1.0;
        if self.posted.len() >= REMEMBERED {
            self.posted
                .retain(|_, t| now.duration_since(*t) < REPEAT_AFTER);
            if self.posted.len() >= REMEMBERED {
                self.posted.clear();
            }
        }
        self.posted.insert(key, now);
        true
    }
}

/// Posts the problems that arrive on `problems` until the channel closes.
pub async fn publish(
    client: Client,
    node_name: Option<String>,
    mut problems: mpsc::UnboundedReceiver<ProblemEvent>,
) {
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "sluice".into(),
            instance: node_name,
        },
    );
    let mut limiter = Limiter::new(Instant::now());
    while let Some(e) = problems.recv().await {
        if !limiter.admit(&e, Instant::now()) {
            continue;
        }
        if limiter.dropped > 0 {
            tracing::warn!(
                dropped = limiter.dropped,
                "Kubernetes Events not posted: more problems than the Event rate allows (they are in this log)"
            );
            limiter.dropped = 0;
        }
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            name: Some(e.name.clone()),
            namespace: Some(e.namespace.clone()),
            uid: e.uid.clone(),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: e.reason.into(),
            note: Some(e.message.clone()),
            // The Recorder folds Events with the same (type, action, reason, object) into
            // one series: the action carries the message (cut to the API's 128 bytes), so
            // two different problems of one reason stay two Events.
            action: action_of(&e.message),
            secondary: None,
        };
        if let Err(err) = recorder.publish(&event, &reference).await {
            tracing::debug!(service = %format_args!("{}/{}", e.namespace, e.name), error = %err, "cannot post a Kubernetes Event");
        }
    }
}

/// An Event's `action` (at most 128 bytes) from a problem's message.
fn action_of(message: &str) -> String {
    let mut end = message.len().min(128);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str, message: &str) -> ProblemEvent {
        ProblemEvent {
            namespace: "ns".into(),
            name: name.into(),
            uid: None,
            reason: "InvalidAnnotation",
            message: message.into(),
        }
    }

    #[test]
    fn repeats_are_posted_once_per_window_and_bursts_are_bounded() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0);
        assert!(l.admit(&ev("a", "m"), t0));
        assert!(
            !l.admit(&ev("a", "m"), t0 + Duration::from_secs(60)),
            "same problem"
        );
        assert!(l.admit(&ev("a", "other"), t0), "another message");
        assert!(
            l.admit(&ev("a", "m"), t0 + REPEAT_AFTER),
            "after the window"
        );
        // A burst of distinct problems: the bucket (full again, one token used just above)
        // lets BURST - 1 through, the rest is dropped.
        let admitted = (0..100)
            .filter(|i| l.admit(&ev(&format!("s{i}"), "m"), t0 + REPEAT_AFTER))
            .count();
        assert_eq!(admitted, BURST as usize - 1);
        assert!(l.dropped > 0);
        let later = t0 + REPEAT_AFTER + Duration::from_secs(2);
        assert!(l.admit(&ev("late", "m"), later));
        assert!(l.admit(&ev("late2", "m"), later));
        assert!(!l.admit(&ev("late3", "m"), later));
    }

    #[test]
    fn actions_fit_the_api() {
        assert_eq!(action_of("short"), "short");
        let long = "é".repeat(100);
        assert!(action_of(&long).len() <= 128);
    }
}
