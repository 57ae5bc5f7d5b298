//! Datagrams the driver received itself (io_uring: multishot RECVMSG into its buffer ring,
//! see `driver::uring`), fed to the same flow logic as the `recvmmsg(2)` path.
//!
//! A [`Completion::Datagram`](crate::dataplane::driver::Completion) is only noted here
//! ([`UdpPlane::held`]) while the worker goes through its completions; the next
//! [`UdpPlane::run`] copies each datagram out of its ring buffer and gives the buffer back
//! at once: NodePort datagrams into the slots of the receive batch (`rx`, then one pass of
//! the table and one `sendmmsg` per flow as for `recvmmsg`), replies into the upstream
//! buffer (then the table and the reply queue as for `recv`). So the buffers are back in the
//! ring before the worker's next submit, and the flow code does not know which path read a
//! datagram. The copy (64 bytes for DNS) buys that independence; zero-copy would have to
//! lend ring buffers across a batch and its failures.
//!
//! Ends of a receive (no F_MORE): ENOBUFS (the ring ran dry; the datagrams wait in the
//! socket) and ECONNREFUSED (an ICMP port-unreachable on a flow's socket: a failure for
//! passive health, as for `recv`) are armed again at once (the entry goes in the next
//! submit, after this turn recycled the buffers); ECANCELED is a receive stopped on purpose
//! (flow closed, listener removed, pause). While paused (hand-over) nothing is armed again;
//! what was received before the receives were cancelled is still forwarded, and the worker
//! reports the pause done only when no receive is left armed and nothing is held.

use super::{Context, NodePortSockets, UdpPlane, BATCH, BUFFER, ICMP_REFUSED};
use crate::dataplane::driver::{Driver, ReceivedDatagram};
use crate::dataplane::flow::{FlowId, UpstreamError};
use crate::dataplane::sys::udp::Received;
use std::io;
use std::os::fd::AsFd;

/// A datagram (or a receive error) waiting in its ring buffer for the next turn.
#[derive(Debug)]
pub(super) struct Held {
    from: HeldFrom,
    datagram: Result<ReceivedDatagram, UpstreamError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeldFrom {
    NodePort(u32),
    Flow(FlowId),
}

impl UdpPlane {
    /// A datagram the driver received on NodePort socket `listener` (the worker checked that
    /// the receive belongs to the socket open in that slot).
    pub fn nodeport_datagram(&mut self, listener: u32, d: ReceivedDatagram) {
        self.held.push_back(Held {
            from: HeldFrom::NodePort(listener),
            datagram: Ok(d),
        });
    }

    /// A completion of a flow's receive: a reply, or the error that ended it; `ended`: the
    /// receive stopped (armed again here unless paused, cancelled or the flow is gone).
    pub fn flow_datagram<D: Driver>(
        &mut self,
        driver: &mut D,
        token: u64,
        datagram: io::Result<ReceivedDatagram>,
        ended: bool,
    ) -> io::Result<()> {
        let flow = FlowId::from_token(token);
        let live = self.table.flow(flow).is_some();
        let mut rearm = ended && live && !self.paused;
        match datagram {
            Ok(d) if live => self.held.push_back(Held {
                from: HeldFrom::Flow(flow),
                datagram: Ok(d),
            }),
            Ok(d) => driver.recycle(d.buf), // a reply to a flow that is gone
            Err(e) => match e.raw_os_error() {
                Some(libc::ECONNREFUSED) if live => self.held.push_back(Held {
                    from: HeldFrom::Flow(flow),
                    datagram: Err(UpstreamError::Refused),
                }),
                Some(libc::ECANCELED) => rearm = false,
                Some(libc::ENOBUFS | libc::ECONNREFUSED) => {}
                _ => {
                    tracing::debug!(worker = self.worker, error = %e,
                        "UDP upstream receive failed");
                }
            },
        }
        if rearm {
            if let Some(Some(fd)) = self.sockets.get(flow.index()) {
                driver.watch_flow(token, fd.as_fd())?;
            }
        }
        Ok(())
    }

    /// Datagrams wait in ring buffers for a turn.
    pub fn holds(&self) -> bool {
        !self.held.is_empty()
    }

    /// Forward what is held (see the module documentation).
    pub(super) fn run_held<D: Driver, L: NodePortSockets + ?Sized>(
        &mut self,
        cx: &mut Context<'_, D, L>,
    ) -> io::Result<()> {
        while let Some(h) = self.held.pop_front() {
            match h.from {
                HeldFrom::NodePort(listener) => self.run_nodeport(cx, listener, h)?,
                HeldFrom::Flow(flow) => self.run_reply(cx, flow, h.datagram)?,
            }
        }
        Ok(())
    }

    /// `first` and the datagrams of the same socket right behind it, at most [`BATCH`]:
    /// copied into the receive batch and forwarded as one.
    fn run_nodeport<D: Driver, L: NodePortSockets + ?Sized>(
        &mut self,
        cx: &mut Context<'_, D, L>,
        listener: u32,
        first: Held,
    ) -> io::Result<()> {
        let bound = cx.listeners.udp_socket(listener).map(|(_, bound)| bound);
        self.received.clear();
        let mut next = Some(first);
        while let Some(h) = next.take() {
            if let Ok(d) = h.datagram {
                let slot = self.received.len();
                let bytes = cx.driver.datagram(d.buf);
                let len = d.len.min(BUFFER);
                let copied = match (bound, d.from, bytes.get(d.offset..d.offset + len)) {
                    (Some(_), Some(from), Some(src)) => {
                        self.rx[slot * BUFFER..slot * BUFFER + len].copy_from_slice(src);
                        Some(Received {
                            len,
                            truncated: d.truncated || d.len > BUFFER,
                            from,
                            to: d.to,
                        })
                    }
                    _ => None, // its socket closed (or no source address): dropped
                };
                cx.driver.recycle(d.buf);
                if let Some(r) = copied {
                    self.received.push((slot, r));
                }
            }
            if self.received.len() < BATCH
                && self
                    .held
                    .front()
                    .is_some_and(|h| h.from == HeldFrom::NodePort(listener))
            {
                next = self.held.pop_front();
            }
        }
        match bound {
            Some(bound) if !self.received.is_empty() => self.forward_received(cx, listener, bound),
            _ => Ok(()),
        }
    }

    /// A reply (or a refusal) of a flow's upstream socket, as `read_upstream` handles one.
    fn run_reply<D: Driver, L: NodePortSockets + ?Sized>(
        &mut self,
        cx: &mut Context<'_, D, L>,
        flow: FlowId,
        datagram: Result<ReceivedDatagram, UpstreamError>,
    ) -> io::Result<()> {
        let live = self.table.flow(flow).is_some();
        match datagram {
            Ok(d) => {
                let len = d.len.min(self.buf.len());
                let copied = match cx.driver.datagram(d.buf).get(d.offset..d.offset + len) {
                    Some(src) if live => {
                        self.buf[..len].copy_from_slice(src);
                        true
                    }
                    _ => false,
                };
                cx.driver.recycle(d.buf);
                if copied {
                    let truncated = d.truncated || d.len > self.buf.len();
                    self.table.handle_reply(cx.now, flow, len, truncated);
                    self.execute(cx, super::Payload::Buf { len })?;
                }
            }
            Err(error) if live => {
                self.count_drop_label(ICMP_REFUSED);
                self.table.handle_upstream_error(flow, error);
                self.execute(cx, super::Payload::None)?;
            }
            Err(_) => {}
        }
        Ok(())
    }

    /// Give back the buffers of what is held for NodePort socket `listener` (it closed), or
    /// of everything (`None`: the worker stops).
    pub(super) fn forget_held<D: Driver>(&mut self, driver: &mut D, listener: Option<u32>) {
        self.held.retain(|h| {
            let keep = listener.is_some_and(|l| h.from != HeldFrom::NodePort(l));
            if !keep {
                if let Ok(d) = &h.datagram {
                    driver.recycle(d.buf);
                }
            }
            keep
        });
    }
}
