//! The queues that let one syscall carry many datagrams (issue 14): replies waiting for a
//! `sendmmsg(2)` on their NodePort socket, and datagrams read by one `recvmmsg(2)` waiting
//! for a `sendmmsg(2)` on their flow's upstream socket. Plain data: `super` decides when they
//! are flushed and what a failure means for the flow table.

use super::super::flow::{FlowId, UpstreamError};
use std::net::SocketAddr;
use std::ops::Range;

/// Most replies kept before a flush.
pub const MAX_REPLIES: usize = super::super::sys::udp_batch::MAX_BATCH;
/// Most reply bytes kept before a flush (a few of the largest datagrams).
pub const MAX_REPLY_BYTES: usize = 256 * 1024;

/// One reply waiting for its NodePort socket.
#[derive(Debug, Clone)]
pub struct QueuedReply {
    pub listener: u32,
    /// The node address the client used (the reply leaves from it).
    pub from: SocketAddr,
    pub to: SocketAddr,
    /// Its bytes in [`Replies::bytes`].
    pub bytes: Range<usize>,
}

/// Replies read from upstream sockets this turn, copied out of the receive buffer (the next
/// read reuses it), sent together at the end of the turn or when full.
#[derive(Debug, Default)]
pub struct Replies {
    pub queued: Vec<QueuedReply>,
    pub bytes: Vec<u8>,
}

impl Replies {
    /// Whether a reply of `len` bytes still fits (an empty queue takes any).
    pub fn fits(&self, len: usize) -> bool {
        self.queued.is_empty()
            || (self.queued.len() < MAX_REPLIES && self.bytes.len() + len <= MAX_REPLY_BYTES)
    }

    pub fn push(&mut self, listener: u32, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        self.queued.push(QueuedReply {
            listener,
            from,
            to,
            bytes: start..self.bytes.len(),
        });
    }

    pub fn clear(&mut self) {
        self.queued.clear();
        self.bytes.clear();
    }
}

/// One client datagram waiting for its flow's upstream socket.
#[derive(Debug, Clone)]
pub struct QueuedSend {
    pub flow: FlowId,
    /// Its slot in the receive batch, and length.
    pub slot: usize,
    pub len: usize,
    /// Its PROXY v2 header in [`Upstream::headers`] (empty: none).
    pub header: Range<usize>,
}

/// A queued datagram that could not be sent, for the flow table to hear about once it has
/// no ops pending.
#[derive(Debug, Clone, Copy)]
pub struct FailedSend {
    pub flow: FlowId,
    pub slot: usize,
    pub len: usize,
    pub error: UpstreamError,
}

/// Datagrams of one receive batch on their way upstream, in arrival order (a flow's own
/// datagrams keep their order; consecutive ones of a flow share a `sendmmsg`).
#[derive(Debug, Default)]
pub struct Upstream {
    pub queued: Vec<QueuedSend>,
    pub headers: Vec<u8>,
    pub failed: Vec<FailedSend>,
}

impl Upstream {
    pub fn holds(&self, flow: FlowId) -> bool {
        self.queued.iter().any(|q| q.flow == flow)
    }
}
