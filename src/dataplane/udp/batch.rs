//! The queues that let one syscall carry many datagrams (issue 14): replies waiting for a
//! `sendmmsg(2)` on their NodePort socket, and datagrams read by one `recvmmsg(2)` waiting
//! for a `sendmmsg(2)` on their flow's upstream socket, and the [`UdpPlane`] methods that
//! send them (`super` decides when).

use super::super::driver::Driver;
use super::super::flow::{DropReason, FlowId, UpstreamError};
use super::super::sys::udp_batch;
use super::{
    Context, NodePortSockets, Payload, UdpPlane, BATCH, BUFFER, ICMP_REFUSED, REPLY_FAILED,
};
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::AsFd;

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

    /// Drop the replies queued for NodePort socket `listener` (it closed); how many.
    pub fn forget_listener(&mut self, listener: u32) -> usize {
        let before = self.queued.len();
        self.queued.retain(|q| q.listener != listener);
        let lost = before - self.queued.len();
        if self.queued.is_empty() {
            self.bytes.clear();
        }
        lost
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

impl UdpPlane {
    /// Send every queued upstream datagram (one `sendmmsg` per run of a flow's); failures
    /// wait in `upstream.failed` for [`UdpPlane::settle_upstream`].
    pub(super) fn send_upstream_queue(&mut self) {
        let queued = &self.upstream.queued;
        let mut i = 0;
        while i < queued.len() {
            let flow = queued[i].flow;
            let mut j = i;
            while j < queued.len() && queued[j].flow == flow && j - i < BATCH {
                j += 1;
            }
            let Some(Some(fd)) = self.sockets.get(flow.index()) else {
                i = j; // no socket: its Open failed and withdrew the sends (not reached)
                continue;
            };
            let mut datagrams: [(&[u8], &[u8]); BATCH] = [(&[], &[]); BATCH];
            for (d, q) in datagrams.iter_mut().zip(&queued[i..j]) {
                let start = q.slot * BUFFER;
                *d = (
                    &self.upstream.headers[q.header.clone()],
                    &self.rx[start..start + q.len],
                );
            }
            let failed = |q: &QueuedSend, error| FailedSend {
                flow,
                slot: q.slot,
                len: q.len,
                error,
            };
            match udp_batch::send_connected(fd.as_fd(), &datagrams[..j - i]) {
                Ok(n) if n > 0 => i += n,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    // The socket's send buffer is full: the rest of this run is lost.
                    for q in &queued[i..j] {
                        self.upstream
                            .failed
                            .push(failed(q, UpstreamError::SendFailed));
                    }
                    i = j;
                }
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    let f = failed(&queued[i], UpstreamError::RefusedOnSend);
                    self.upstream.failed.push(f);
                    i += 1;
                }
                other => {
                    if let Err(e) = other {
                        tracing::debug!(worker = self.worker, error = %e, "UDP upstream send failed");
                    }
                    let f = failed(&queued[i], UpstreamError::SendFailed);
                    self.upstream.failed.push(f);
                    i += 1;
                }
            }
        }
        self.upstream.queued.clear();
        self.upstream.headers.clear();
    }

    /// End of a receive batch (the table has no ops pending): send what is queued, then
    /// tell the table about each datagram that could not go (a refused one is resent once).
    pub(super) fn settle_upstream<D: Driver, L: NodePortSockets + ?Sized>(
        &mut self,
        cx: &mut Context<'_, D, L>,
    ) -> io::Result<()> {
        self.send_upstream_queue();
        if self.upstream.failed.is_empty() {
            return Ok(());
        }
        let mut failed = std::mem::take(&mut self.upstream.failed);
        let mut result = Ok(());
        for f in &failed {
            if f.error == UpstreamError::RefusedOnSend {
                self.count_drop_label(ICMP_REFUSED);
            }
            if self.table.flow(f.flow).is_none() {
                // Closed since (its queue was sent when it closed): counted here.
                self.stats.flows.drops[DropReason::SendFailed.index()].add(1);
                continue;
            }
            self.table.handle_upstream_error(f.flow, f.error);
            let payload = Payload::Rx {
                slot: f.slot,
                len: f.len,
            };
            result = result.and(self.execute(cx, payload));
        }
        failed.clear();
        self.upstream.failed = failed;
        result
    }

    /// Send the queued replies: one `sendmmsg` per run of replies on the same NodePort
    /// socket; each one that cannot go is counted (`reply_failed`).
    pub(super) fn flush_replies<D: Driver, L: NodePortSockets + ?Sized>(
        &mut self,
        cx: &Context<'_, D, L>,
    ) {
        let queued = &self.replies.queued;
        let mut i = 0;
        while i < queued.len() {
            let (listener, v6) = (queued[i].listener, queued[i].from.is_ipv6());
            let mut j = i;
            while j < queued.len()
                && queued[j].listener == listener
                && queued[j].from.is_ipv6() == v6
                && j - i < BATCH
            {
                j += 1;
            }
            let Some((fd, _)) = cx.listeners.udp_socket(listener) else {
                self.stats.flows.drops[REPLY_FAILED].add((j - i) as u64);
                i = j;
                continue;
            };
            let mut replies = [udp_batch::Reply {
                payload: &[],
                to: queued[i].to,
                from: queued[i].from.ip(),
            }; BATCH];
            for (r, q) in replies.iter_mut().zip(&queued[i..j]) {
                *r = udp_batch::Reply {
                    payload: &self.replies.bytes[q.bytes.clone()],
                    to: q.to,
                    from: q.from.ip(),
                };
            }
            match udp_batch::send_replies(fd, &replies[..j - i], v6) {
                Ok(n) if n > 0 => i += n,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    // The socket's send buffer is full: the rest of this run is lost.
                    self.stats.flows.drops[REPLY_FAILED].add((j - i) as u64);
                    i = j;
                }
                _ => {
                    self.stats.flows.drops[REPLY_FAILED].add(1);
                    i += 1;
                }
            }
        }
        self.replies.clear();
    }
}
