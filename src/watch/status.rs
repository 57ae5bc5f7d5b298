//! What each watch stream is doing, for logs, `sluice ctl status` and `/metrics`.
//!
//! One [`StreamStatus`] per (kind, namespace) stream, updated by the stream's task on every
//! event ([`StreamStatus::on_event`], [`StreamStatus::on_error`]), which also decides which
//! *transitions* are worth a log line: the first sync, a loss, a recovery, a relist. Single
//! events are never logged above debug.

use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Where a stream is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StreamState {
    /// Started; no answer from the API server yet.
    Connecting,
    /// Reading a full list (the first one, or a relist after 410 Gone / a restart).
    Listing,
    /// Listed and watching: the store is complete.
    Synced,
    /// The last request or stream failed; retrying with backoff. The store keeps the last
    /// good content (and the model built from it keeps serving).
    Retrying,
}

/// One stream's record.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    /// `Service` or `EndpointSlice`.
    pub kind: &'static str,
    /// `None`: cluster-wide.
    pub namespace: Option<String>,
    pub state: StreamState,
    /// Full lists completed (1 after the first sync; more after relists).
    pub lists: u64,
    /// Errors (failed list or watch requests, error events such as 410 Gone, broken
    /// streams).
    pub errors: u64,
    /// Object events applied (listed objects count too).
    pub events: u64,
    /// Objects in the store.
    pub objects: usize,
    /// When the last full list completed (unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sync_unix: Option<f64>,
    /// The last error, while retrying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Requests fail and no answer came since: a loss was logged, a recovery is not yet.
    /// (kube's watcher reports the start of each relist attempt before its request, so a
    /// list *starting* proves nothing; only objects or a complete list do.)
    #[serde(skip)]
    failing: bool,
}

/// What happened to a stream, as far as the status cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Happened {
    /// A list began (`watcher::Event::Init`).
    ListStarted,
    /// A list completed (`InitDone`).
    ListDone,
    /// An object event (listed, added, modified, deleted).
    Object,
}

/// A transition to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The first full list arrived.
    FirstSync,
    /// Requests started failing (the first error after being synced).
    Lost(String),
    /// An answer arrived after errors.
    Recovered,
    /// A list completed after the first (410 Gone, API server restart).
    Relisted,
}

impl StreamStatus {
    pub fn new(kind: &'static str, namespace: Option<String>) -> StreamStatus {
        StreamStatus {
            kind,
            namespace,
            state: StreamState::Connecting,
            lists: 0,
            errors: 0,
            events: 0,
            objects: 0,
            last_sync_unix: None,
            last_error: None,
            failing: false,
        }
    }

    /// `Service (cluster-wide)`, `EndpointSlice in "shop"`.
    pub fn name(&self) -> String {
        match &self.namespace {
            None => format!("{} (cluster-wide)", self.kind),
            Some(ns) => format!("{} in {ns:?}", self.kind),
        }
    }

    /// Records a successful event; returns the transitions it makes (at most two: a
    /// recovery and a relist). A list starting is not an answer from the API server (kube's
    /// watcher announces each attempt before sending it): it neither recovers a failing
    /// stream nor re-arms the loss, so a run of failed attempts logs one loss and one
    /// recovery, however many attempts it takes.
    pub fn on_event(&mut self, what: Happened, objects: usize, now: SystemTime) -> Vec<Transition> {
        let mut out = Vec::new();
        if self.failing && what != Happened::ListStarted {
            self.failing = false;
            out.push(Transition::Recovered);
            self.last_error = None;
            self.state = if self.lists == 0 {
                StreamState::Listing
            } else {
                StreamState::Synced
            };
        }
        match what {
            Happened::ListStarted => self.state = StreamState::Listing,
            Happened::ListDone => {
                self.lists += 1;
                self.state = StreamState::Synced;
                self.last_sync_unix = Some(unix(now));
                out.push(if self.lists == 1 {
                    Transition::FirstSync
                } else {
                    Transition::Relisted
                });
            }
            Happened::Object => self.events += 1,
        }
        self.objects = objects;
        out
    }

    /// Records an error; returns [`Transition::Lost`] for the first of a run of errors.
    pub fn on_error(&mut self, error: String) -> Option<Transition> {
        self.errors += 1;
        let first = !self.failing;
        self.failing = true;
        self.state = StreamState::Retrying;
        self.last_error = Some(error.clone());
        first.then_some(Transition::Lost(error))
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Every stream's status, shared between the stream tasks and the control plane.
#[derive(Debug, Clone, Default)]
pub struct WatchStatus {
    streams: Arc<Mutex<Vec<StreamStatus>>>,
}

impl WatchStatus {
    /// Adds a stream; returns its index for [`update`](Self::update).
    pub fn add(&self, s: StreamStatus) -> usize {
        let mut v = self.lock();
        v.push(s);
        v.len() - 1
    }

    pub fn update<T>(&self, index: usize, f: impl FnOnce(&mut StreamStatus) -> T) -> T {
        f(&mut self.lock()[index])
    }

    /// A copy of every stream's record.
    pub fn streams(&self) -> Vec<StreamStatus> {
        self.lock().clone()
    }

    /// Every stream has completed its first list.
    pub fn all_synced_once(&self) -> bool {
        self.lock().iter().all(|s| s.lists > 0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<StreamStatus>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_first_sync_loss_recovery_relist() {
        let now = SystemTime::now();
        let mut s = StreamStatus::new("Service", None);
        assert_eq!(s.on_event(Happened::ListStarted, 0, now), vec![]);
        assert_eq!(s.state, StreamState::Listing);
        assert_eq!(s.on_event(Happened::Object, 0, now), vec![]);
        assert_eq!(
            s.on_event(Happened::ListDone, 1, now),
            vec![Transition::FirstSync]
        );
        assert_eq!(s.state, StreamState::Synced);
        assert_eq!(s.objects, 1);
        // A run of errors is one loss.
        assert_eq!(
            s.on_error("connection refused".into()),
            Some(Transition::Lost("connection refused".into()))
        );
        assert_eq!(s.on_error("connection refused".into()), None);
        assert_eq!(s.errors, 2);
        assert_eq!(s.state, StreamState::Retrying);
        // Retry attempts that announce a list and fail again: nothing more is logged
        // (this was a loss and a recovery per attempt: 8 in 6 s with the API down).
        for _ in 0..8 {
            assert_eq!(s.on_event(Happened::ListStarted, 1, now), vec![]);
            assert_eq!(s.on_error("connection refused".into()), None);
        }
        // 410 Gone → relist: the list starting is not an answer; the list done is a
        // recovery and a relist.
        assert_eq!(s.on_event(Happened::ListStarted, 1, now), vec![]);
        assert_eq!(
            s.on_event(Happened::ListDone, 2, now),
            vec![Transition::Recovered, Transition::Relisted]
        );
        assert_eq!(s.last_error, None);
        assert_eq!(s.lists, 2);
        // Errors before the first sync, then the list: recovered, first sync.
        let mut t = StreamStatus::new("EndpointSlice", Some("shop".into()));
        assert!(t.on_error("refused".into()).is_some());
        assert_eq!(t.on_event(Happened::ListStarted, 0, now), vec![]);
        assert_eq!(t.state, StreamState::Listing);
        assert_eq!(
            t.on_event(Happened::ListDone, 0, now),
            vec![Transition::Recovered, Transition::FirstSync]
        );
        // A watch event after a broken stream (resumed without a relist) recovers too.
        assert!(t.on_error("stream cut".into()).is_some());
        assert_eq!(
            t.on_event(Happened::Object, 1, now),
            vec![Transition::Recovered]
        );
        assert_eq!(t.name(), "EndpointSlice in \"shop\"");
    }
}
