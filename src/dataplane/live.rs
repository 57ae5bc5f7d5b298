//! What `sluice ctl flows` lists: the live UDP flows and TCP connections of every worker,
//! like `conntrack -L`, as a bounded, consistent-enough snapshot taken without a lock.
//!
//! Workers share nothing, so the control side cannot read their tables. It sends each
//! worker a [`LiveQuery`] over the worker's command queue (with a wake-up); the worker
//! answers between two turns of its loop with at most `limit` entries and the number of
//! entries that matched (its tables are consistent at that point, since it is the only
//! writer), on a channel of its own. [`LiveRequest::wait`] gathers the answers within a
//! deadline, so a wedged worker costs the request a bounded wait and is reported as not
//! answering, never a hang; the hot path pays nothing but one queue check per loop turn it
//! already makes. Each worker's answer is a snapshot of that worker at its own moment: the
//! whole is "consistent enough" (an entry may close or open between two workers' answers),
//! as `conntrack -L` is over a table that changes while it is read.

use crate::model::Protocol;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Which entries to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveQuery {
    /// Only the Service ports with these stable ids (`ServiceEntry::stable_id`); every
    /// one when `None`.
    pub services: Option<Vec<u64>>,
    /// Each worker sends at most this many entries (it still counts all that match).
    pub limit: usize,
}

impl LiveQuery {
    pub(super) fn wants(&self, service: u64) -> bool {
        self.services.as_ref().is_none_or(|s| s.contains(&service))
    }
}

/// Bytes and datagrams one way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveTraffic {
    pub bytes: u64,
    /// Datagrams (UDP); `None` for a TCP connection (a byte stream).
    pub datagrams: Option<u64>,
}

/// One live UDP flow or TCP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEntry {
    pub protocol: Protocol,
    /// The Service port's stable id (the same in every snapshot).
    pub service: u64,
    /// `namespace/name[:port]` of the Service port, as the worker's snapshot names it.
    pub service_name: String,
    pub client: SocketAddr,
    /// The node address and port the client reached.
    pub node: SocketAddr,
    /// The endpoint, once chosen (a TCP connection still connecting, or held waiting for
    /// one, has none yet).
    pub endpoint: Option<SocketAddr>,
    /// Since the flow opened or the connection was accepted.
    pub age: Duration,
    /// Since the last datagram either way or the last byte moved.
    pub idle: Duration,
    pub to_endpoint: LiveTraffic,
    pub to_client: LiveTraffic,
    pub worker: usize,
}

/// One worker's answer.
#[derive(Debug, Default)]
pub struct WorkerLive {
    /// At most the query's `limit`.
    pub entries: Vec<LiveEntry>,
    /// Every entry that matched.
    pub total: usize,
}

/// The answers of every worker that replied.
#[derive(Debug, Default)]
pub struct LiveReport {
    /// At most the query's `limit`, UDP before TCP, then by Service, client and node.
    pub entries: Vec<LiveEntry>,
    /// Every entry that matched, in the workers that answered.
    pub total: usize,
    pub workers: usize,
    /// Workers that answered before the deadline.
    pub answered: usize,
}

/// Questions sent to the workers; [`LiveRequest::wait`] collects the answers.
pub struct LiveRequest {
    pub(super) limit: usize,
    pub(super) answers: Vec<mpsc::Receiver<WorkerLive>>,
}

impl LiveRequest {
    /// Blocks until every worker answered or `timeout` passed (call it off an async
    /// runtime's thread).
    pub fn wait(self, timeout: Duration) -> LiveReport {
        let deadline = crate::deadline::after(Instant::now(), timeout);
        let mut report = LiveReport {
            workers: self.answers.len(),
            ..LiveReport::default()
        };
        for answer in self.answers {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Ok(w) = answer.recv_timeout(left) {
                report.answered += 1;
                report.total += w.total;
                report.entries.extend(w.entries);
            }
        }
        report.entries.sort_by(|a, b| {
            b.protocol.cmp(&a.protocol).then_with(|| {
                (&a.service_name, a.client, a.node).cmp(&(&b.service_name, b.client, b.node))
            })
        });
        report.entries.truncate(self.limit);
        report
    }
}
