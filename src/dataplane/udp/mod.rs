//! The IO around one worker's UDP flow table ([`super::flow`]): reading datagrams from the
//! worker's NodePort sockets and the flows' upstream sockets, and executing the table's
//! [`FlowOp`]s with the UDP syscalls of [`super::sys::udp`], under either driver.
//!
//! - **NodePort sockets** are the worker's listeners of protocol UDP (one SO_REUSEPORT
//!   socket per (address, NodePort) per worker, opened with packet info on): the driver
//!   reports them readable like a TCP listener (`Completion::Acceptable`), and the worker
//!   hands them here instead of accepting.
//! - **Upstream sockets**: one nonblocking UDP socket per flow, connected to its endpoint
//!   (the kernel then delivers only that endpoint's replies to it, so the socket is the
//!   return path), watched through [`Driver::watch_flow`] with the flow's token.
//! - Replies leave by the NodePort socket the client used, from the exact node address it
//!   sent to (IP_PKTINFO / IPV6_PKTINFO), so a wildcard listener on a node with several
//!   addresses answers from the right one.
//! - ECONNREFUSED (an ICMP port-unreachable from the pod) on a receive or a send is fed to
//!   the table as a failure for passive health; on a send the table resends that datagram
//!   once, so the error never costs the next datagram.
//! - Readiness is edge-triggered: a socket stays on this module's ready lists until a read
//!   finds nothing; each turn reads at most [`BATCH`] datagrams per socket, so one busy
//!   socket cannot starve the others (the worker does not sleep while a list is not empty).
//!
//! Batching (`batch.rs`, [`super::sys::udp_batch`]), under both drivers:
//! - a NodePort socket is read with one `recvmmsg(2)` of up to [`BATCH`] datagrams, each
//!   into its own 64 KiB slot; fewer than [`BATCH`] means the socket is empty (no extra
//!   read to see EAGAIN);
//! - the datagrams of that batch going to one flow leave by one `sendmmsg(2)` on its
//!   upstream socket, after the whole batch went through the table (a flow that closes in
//!   between sends its queue first); send failures reach the table once it has no ops
//!   pending, and an ECONNREFUSED still costs only the datagram that met it (resent once;
//!   a second refusal of the same flow in the same batch drops its datagram);
//! - replies are copied out of the receive buffer and leave at the end of the turn (or
//!   when [`batch::MAX_REPLIES`] or [`batch::MAX_REPLY_BYTES`] are queued) by one
//!   `sendmmsg(2)` per NodePort socket, each from the node address its client used.
//!
//! Every slot and the upstream receive buffer hold 65,536 bytes, so datagrams up to the
//! largest UDP payload (65,507 bytes over IPv4) pass whole; a longer one is seen truncated
//! (MSG_TRUNC) and dropped, never forwarded cut. The slots are touched only as far as
//! datagrams fill them (small datagrams keep a page of each resident). Nothing here panics
//! on what a client or a pod sends.

mod batch;

mod carry;

use super::driver::Driver;
use super::flow::{
    ClientDatagram, CloseReason, DropReason, FlowId, FlowOp, FlowTable, OpenFailure, ProxyHeader,
    Source, UpstreamError,
};
use super::select::Picker;
use super::sys::{self, udp as sysudp, udp_batch, Transfer};
use crate::stats::{LoopStats, DROP_REASONS};
use crate::table::RoutingSnapshot;
use socket2::{Domain, Socket, Type};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

/// Datagrams read from one socket per turn (one `recvmmsg`) before the next ready
/// socket's turn.
pub const BATCH: usize = udp_batch::MAX_BATCH;

/// Room for the largest datagram plus one byte, so that anything longer shows as truncated.
const BUFFER: usize = 65_536;

/// The worker's NodePort sockets, as this module needs them: by the listener index the
/// driver reports.
pub trait NodePortSockets {
    /// The open socket of listener `listener` and the address it is bound to, if it is
    /// open and serves UDP.
    fn udp_socket(&self, listener: u32) -> Option<(BorrowedFd<'_>, SocketAddr)>;
}

/// One worker's UDP side: its flow table, the flows' upstream sockets, the ready lists.
pub struct UdpPlane {
    worker: usize,
    table: FlowTable,
    /// Upstream sockets by flow slot.
    sockets: Vec<Option<OwnedFd>>,
    /// Upstream replies are read here.
    buf: Box<[u8]>,
    /// [`BATCH`] slots of [`BUFFER`] bytes: one `recvmmsg` from a NodePort socket.
    rx: Box<[u8]>,
    /// What that `recvmmsg` read: (slot, datagram).
    received: Vec<(usize, sysudp::Received)>,
    /// Client datagrams of the current receive batch queue their upstream sends.
    batching: bool,
    upstream: batch::Upstream,
    replies: batch::Replies,
    header: Vec<u8>,
    /// NodePort sockets that may still hold datagrams.
    ready_listeners: VecDeque<u32>,
    /// Upstream sockets that may still hold replies.
    ready_flows: VecDeque<FlowId>,
    /// The endpoint choice of new flows (Maglev, ClientIP affinity tables of UDP Services).
    picker: Picker,
    /// The snapshot (its address) the picker last forgot removed Services for.
    retained_for: usize,
    stats: Arc<LoopStats>,
    /// Reading stopped for a hand-over of the flows (`carry.rs`).
    paused: bool,
}

/// What the worker lends for one call.
pub struct Context<'a, D: Driver, L: NodePortSockets + ?Sized> {
    pub driver: &'a mut D,
    pub listeners: &'a L,
    pub snapshot: &'a RoutingSnapshot,
    pub now: Instant,
    /// Fds to close after the next submit (their polls are removed in it).
    pub to_close: &'a mut Vec<OwnedFd>,
}

impl UdpPlane {
    /// `seed`: of the balancing policies' PRNG (as the connection table's).
    pub fn new(
        now: Instant,
        worker: usize,
        max_flows: u32,
        seed: u64,
        stats: Arc<LoopStats>,
    ) -> UdpPlane {
        UdpPlane {
            worker,
            table: FlowTable::new(now, worker, max_flows),
            sockets: Vec::new(),
            buf: vec![0u8; BUFFER].into_boxed_slice(),
            rx: vec![0u8; BUFFER * BATCH].into_boxed_slice(),
            received: Vec::with_capacity(BATCH),
            batching: false,
            upstream: batch::Upstream::default(),
            replies: batch::Replies::default(),
            header: Vec::with_capacity(128),
            ready_listeners: VecDeque::new(),
            ready_flows: VecDeque::new(),
            picker: Picker::new(seed),
            retained_for: 0,
            stats,
            paused: false,
        }
    }

    /// Live flows.
    pub fn flows(&self) -> usize {
        self.table.len()
    }

    /// The flow table, read-only (`ctl flows`).
    pub fn table(&self) -> &FlowTable {
        &self.table
    }

    /// The driver reported NodePort socket `listener` readable.
    pub fn nodeport_readable(&mut self, listener: u32) {
        if !self.ready_listeners.contains(&listener) {
            self.ready_listeners.push_back(listener);
        }
    }

    /// The driver reported a flow's upstream socket readable; `ended`: its poll stopped and
    /// must be armed again.
    pub fn flow_readable<D: Driver>(
        &mut self,
        driver: &mut D,
        token: u64,
        ended: bool,
    ) -> io::Result<()> {
        let flow = FlowId::from_token(token);
        if self.table.flow(flow).is_none() {
            return Ok(()); // a report about a flow that is gone
        }
        if ended {
            if let Some(Some(fd)) = self.sockets.get(flow.index()) {
                driver.watch_flow(token, fd.as_fd())?;
            }
        }
        self.ready_flows.push_back(flow);
        Ok(())
    }

    /// Sockets wait for a turn: the worker must not sleep.
    pub fn pending(&self) -> bool {
        !self.paused && (!self.ready_listeners.is_empty() || !self.ready_flows.is_empty())
    }

    /// One turn over the ready sockets: at most [`BATCH`] datagrams each; a socket that may
    /// hold more goes to the back of its list.
    pub fn run<D: Driver, L: NodePortSockets + ?Sized>(
        &mut self,
        cx: &mut Context<'_, D, L>,
    ) -> io::Result<()> {
        if self.paused {
            return Ok(());
        }
        for _ in 0..self.ready_listeners.len() {
            let Some(listener) = self.ready_listeners.pop_front() else {
                break;
            };
            if self.read_nodeport(cx, listener)? {
                self.ready_listeners.push_back(listener);
            }
        }
        for _ in 0..self.ready_flows.len() {
            let Some(flow) = self.ready_flows.pop_front() else {
                break;
            };
            if self.read_upstream(cx, flow)? {
                self.ready_flows.push_back(flow);
            }
        }
        self.flush_replies(cx);
        self.stats.flows.active.set(self.table.len() as u64);
        Ok(())
    }

    /// The periodic sweep (idle flows, deleted Services, endpoints that left).
    pub fn tick<D: Driver, L: NodePortSockets + ?Sized>(
        &mut self,
        cx: &mut Context<'_, D, L>,
    ) -> io::Result<()> {
        if self.table.is_empty() || self.paused {
            return Ok(());
        }
        self.table.handle_tick(cx.now, cx.snapshot);
        // Forget balancing state of removed Services, once per published snapshot.
        let snapshot = cx.snapshot as *const RoutingSnapshot as usize;
        if snapshot != self.retained_for {
            self.retained_for = snapshot;
            self.picker.retain_services(cx.snapshot);
        }
        self.execute(cx, Payload::None)?;
        self.stats.flows.active.set(self.table.len() as u64);
        Ok(())
    }

    /// NodePort socket `listener` was closed (the worker took it out of its slot): its
    /// flows end now, before the slot can hold another listener.
    pub fn listener_closed<D: Driver, L: NodePortSockets + ?Sized>(
        &mut self,
        cx: &mut Context<'_, D, L>,
        listener: u32,
    ) -> io::Result<()> {
        self.ready_listeners.retain(|&l| l != listener);
        // Replies still queued for it (a turn cut short by an error) never leave by the
        // socket that may take its slot.
        let lost = self.replies.forget_listener(listener);
        self.stats.flows.drops[REPLY_FAILED].add(lost as u64);
        if self.table.is_empty() {
            return Ok(());
        }
        self.table.close_listener(listener);
        self.execute(cx, Payload::None)?;
        self.stats.flows.active.set(self.table.len() as u64);
        Ok(())
    }

    /// Close every flow (the worker stops).
    pub fn close_all<D: Driver, L: NodePortSockets + ?Sized>(
        &mut self,
        cx: &mut Context<'_, D, L>,
    ) -> io::Result<()> {
        self.flush_replies(cx);
        self.table.close_all(CloseReason::Shutdown);
        self.execute(cx, Payload::None)?;
        self.ready_flows.clear();
        self.ready_listeners.clear();
        self.stats.flows.active.set(0);
        Ok(())
    }

    /// Read up to [`BATCH`] datagrams from a NodePort socket with one `recvmmsg`, feed
    /// them to the table and send them on; true when it may hold more.
    fn read_nodeport<D: Driver, L: NodePortSockets + ?Sized>(
        &mut self,
        cx: &mut Context<'_, D, L>,
        listener: u32,
    ) -> io::Result<bool> {
        let Some((fd, bound)) = cx.listeners.udp_socket(listener) else {
            return Ok(false);
        };
        if let Err(e) = udp_batch::recv_batch(fd, &mut self.rx, BUFFER, &mut self.received) {
            // ENOMEM, a queued error, …: stop this turn (the next datagram's arrival
            // reports the socket again), never spin on it.
            tracing::debug!(worker = self.worker, listener, error = %e,
                "UDP NodePort receive failed");
            return Ok(false);
        }
        let received = std::mem::take(&mut self.received);
        let more = received.len() == BATCH;
        self.batching = true;
        let mut result = Ok(());
        for &(slot, r) in &received {
            // A socket bound to one address was sent to that one; a wildcard socket learns
            // the address from the packet info.
            let node = match r.to {
                Some(ip) if bound.ip().is_unspecified() => SocketAddr::new(ip, bound.port()),
                _ => bound,
            };
            let d = ClientDatagram {
                listener,
                bound,
                client: r.from,
                node,
                len: r.len,
                truncated: r.truncated,
            };
            self.table
                .handle_client_datagram(cx.now, cx.snapshot, &mut self.picker, d);
            result = self.execute(cx, Payload::Rx { slot, len: r.len });
            if result.is_err() {
                break;
            }
        }
        self.batching = false;
        let settled = self.settle_upstream(cx);
        self.received = received;
        result?;
        settled?;
        Ok(more)
    }

    /// Read up to [`BATCH`] replies from a flow's upstream socket; true when it may hold
    /// more.
    fn read_upstream<D: Driver, L: NodePortSockets + ?Sized>(
        &mut self,
        cx: &mut Context<'_, D, L>,
        flow: FlowId,
    ) -> io::Result<bool> {
        for _ in 0..BATCH {
            let Some(Some(fd)) = self.sockets.get(flow.index()) else {
                return Ok(false);
            };
            if self.table.flow(flow).is_none() {
                return Ok(false);
            }
            match sysudp::recv_connected(fd.as_fd(), &mut self.buf) {
                Ok(Some((len, truncated))) => {
                    self.table.handle_reply(cx.now, flow, len, truncated);
                    self.execute(cx, Payload::Buf { len })?;
                }
                Ok(None) => return Ok(false),
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    self.count_drop_label(ICMP_REFUSED);
                    self.table
                        .handle_upstream_error(flow, UpstreamError::Refused);
                    self.execute(cx, Payload::None)?;
                }
                Err(e) => {
                    tracing::debug!(worker = self.worker, error = %e, "UDP upstream receive failed");
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The bytes of the datagram `payload` names.
    fn payload(&self, payload: Payload) -> &[u8] {
        match payload {
            Payload::None => &[],
            Payload::Buf { len } => &self.buf[..len.min(self.buf.len())],
            Payload::Rx { slot, len } => {
                let start = (slot * BUFFER).min(self.rx.len());
                &self.rx[start..(start + len.min(BUFFER)).min(self.rx.len())]
            }
        }
    }

    /// Encode `flow`'s PROXY v2 header (when `proxy` asks for one) into `self.header`.
    fn encode_header<D: Driver, L: NodePortSockets + ?Sized>(
        &mut self,
        cx: &Context<'_, D, L>,
        flow: FlowId,
        proxy: Option<ProxyHeader>,
    ) {
        self.header.clear();
        if let Some(p) = proxy {
            let entry = cx.snapshot.service(p.service);
            let id = flow.unique_id(self.worker);
            crate::proxy_protocol::encode_datagram(
                &entry.port.forwarding,
                p.client,
                p.node,
                &id,
                &mut self.header,
            );
        }
    }

    /// Execute the table's ops; `payload` is the datagram just handed to the table.
    fn execute<D: Driver, L: NodePortSockets + ?Sized>(
        &mut self,
        cx: &mut Context<'_, D, L>,
        payload: Payload,
    ) -> io::Result<()> {
        while let Some(op) = self.table.poll_op() {
            match op {
                FlowOp::Open {
                    flow,
                    endpoint,
                    source,
                } => match open_upstream(endpoint, source) {
                    Ok(socket) => {
                        let fd: OwnedFd = socket.into();
                        cx.driver.watch_flow(flow.token(), fd.as_fd())?;
                        let i = flow.index();
                        if self.sockets.len() <= i {
                            self.sockets.resize_with(i + 1, || None);
                        }
                        self.sockets[i] = Some(fd);
                        self.stats.flows.created.add(1);
                    }
                    Err(e) => {
                        let failure = classify_open(&e);
                        tracing::debug!(worker = self.worker, %endpoint, error = %e,
                            "cannot open a UDP flow's upstream socket");
                        self.table.handle_open_failed(flow, failure);
                    }
                },
                FlowOp::SendUpstream { flow, proxy } => {
                    self.encode_header(cx, flow, proxy);
                    if let (true, Payload::Rx { slot, len }) = (self.batching, payload) {
                        // Sent with the rest of the receive batch (`send_upstream_queue`).
                        let start = self.upstream.headers.len();
                        self.upstream.headers.extend_from_slice(&self.header);
                        let header = start..self.upstream.headers.len();
                        self.upstream.queued.push(batch::QueuedSend {
                            flow,
                            slot,
                            len,
                            header,
                        });
                        continue;
                    }
                    let Some(Some(fd)) = self.sockets.get(flow.index()) else {
                        continue;
                    };
                    let payload = self.payload(payload);
                    let parts: [&[u8]; 2] = [&self.header, payload];
                    let parts = if self.header.is_empty() {
                        &parts[1..]
                    } else {
                        &parts[..]
                    };
                    match sysudp::send_parts(fd.as_fd(), parts) {
                        Ok(Transfer::Moved(_)) => {}
                        Ok(Transfer::WouldBlock) => {
                            self.table
                                .handle_upstream_error(flow, UpstreamError::SendFailed);
                        }
                        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                            self.count_drop_label(ICMP_REFUSED);
                            self.table
                                .handle_upstream_error(flow, UpstreamError::RefusedOnSend);
                        }
                        Err(e) => {
                            tracing::debug!(worker = self.worker, error = %e, "UDP upstream send failed");
                            self.table
                                .handle_upstream_error(flow, UpstreamError::SendFailed);
                        }
                    }
                }
                FlowOp::SendReply { listener, from, to } => {
                    // Queued (copied out of the buffer the next read reuses) and sent at the
                    // end of the turn with the others (`flush_replies`).
                    if !self.replies.fits(self.payload(payload).len()) {
                        self.flush_replies(cx);
                    }
                    let bytes = match payload {
                        Payload::None => &[][..],
                        Payload::Buf { len } => &self.buf[..len.min(self.buf.len())],
                        Payload::Rx { slot, len } => {
                            &self.rx[slot * BUFFER..slot * BUFFER + len.min(BUFFER)]
                        }
                    };
                    self.replies.push(listener, from, to, bytes);
                }
                FlowOp::Close { flow, reason } => {
                    if self.upstream.holds(flow) {
                        // Its queued datagrams leave before its socket closes.
                        self.send_upstream_queue();
                    }
                    if let Some(slot) = self.sockets.get_mut(flow.index()) {
                        if let Some(fd) = slot.take() {
                            cx.driver.unwatch_flow(flow.token())?;
                            cx.to_close.push(fd);
                        }
                    }
                    let f = &self.stats.flows;
                    f.closed.add(1);
                    match reason {
                        CloseReason::Idle => f.expired.add(1),
                        CloseReason::OpenFailed(_) => f.refused.add(1),
                        _ => {}
                    }
                }
                FlowOp::Drop { reason, service } => {
                    let _ = service;
                    if reason == DropReason::TableFull {
                        self.stats.flows.refused.add(1);
                    }
                    self.stats.flows.drops[reason.index()].add(1);
                }
            }
        }
        Ok(())
    }

    fn count_drop_label(&self, index: usize) {
        self.stats.flows.drops[index].add(1);
    }
}

/// Which buffer holds the datagram just handed to the table.
#[derive(Debug, Clone, Copy)]
enum Payload {
    /// None (a sweep, a close).
    None,
    /// A reply read from an upstream socket into `buf`.
    Buf { len: usize },
    /// A client datagram in slot `slot` of the receive batch `rx`.
    Rx { slot: usize, len: usize },
}

const REPLY_FAILED: usize = 8;
const ICMP_REFUSED: usize = 9;
const _: () = assert!(matches!(
    DROP_REASONS[REPLY_FAILED].as_bytes(),
    b"reply_failed"
));
const _: () = assert!(matches!(
    DROP_REASONS[ICMP_REFUSED].as_bytes(),
    b"icmp_refused"
));

/// A nonblocking UDP socket connected to `endpoint`, leaving from the node (or, for
/// transparent forwarding, from the client's address).
fn open_upstream(endpoint: SocketAddr, source: Source) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(endpoint),
        Type::DGRAM.nonblocking().cloexec(),
        None,
    )?;
    if let Source::Client(client) = source {
        let client = SocketAddr::new(client.ip().to_canonical(), client.port());
        sys::set_transparent(socket.as_fd(), endpoint.is_ipv6())?;
        socket.set_reuse_address(true)?;
        if socket.bind(&client.into()).is_err() {
            // That 4-tuple is taken (another flow of the same client): any port.
            socket.bind(&SocketAddr::new(client.ip(), 0).into())?;
        }
    }
    socket.connect(&endpoint.into())?;
    Ok(socket)
}

fn classify_open(e: &io::Error) -> OpenFailure {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => OpenFailure::Local,
        Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE) => OpenFailure::Ports,
        Some(libc::EPERM | libc::EACCES) => OpenFailure::Transparent,
        _ => OpenFailure::Network,
    }
}
