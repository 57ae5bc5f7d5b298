//! The UDP flows of one worker, as a pure table (sans-IO): which endpoint each client's
//! datagrams go to, for how long, and what the driver must do with each datagram.
//!
//! A **flow** is one (client IP:port, node IP:port) pair — the node address is the one the
//! client sent to (IP_PKTINFO), so a node with several addresses keeps them apart. It
//! belongs to the worker whose NodePort socket received its first datagram (SO_REUSEPORT
//! hashes the 4-tuple, or the client-IP steering program does) and owns one connected
//! upstream socket towards its endpoint: the socket is the return path (its replies need no
//! lookup) and [`FlowId`] is its token.
//!
//! The [`FlowTable`] owns no socket, no clock and no randomness: the driver feeds it
//! datagrams and socket outcomes with `now` and the worker's current [`RoutingSnapshot`],
//! and drains [`FlowOp`]s from [`FlowTable::poll_op`] until `None`, executing each in one
//! `match` — before feeding the next datagram, because `SendUpstream` and `SendReply` mean
//! "the datagram just handed in". The same code runs under both drivers and in the
//! seeded simulator (`simulation.rs`, on simulated time).
//!
//! ```text
//!  client datagram, no flow ──room, endpoint chosen by the Service's policy──▶ Open + SendUpstream
//!        │ no Service / no endpoint / table full / truncated / too large: Drop(reason)
//!        ▼
//!   live flow ──client datagram──▶ endpoint still kept? ─yes─▶ SendUpstream
//!        │                               └─no─▶ Close(EndpointLeft), then as a new flow (moves)
//!        ├──reply on its upstream──▶ SendReply (from the node address the client used)
//!        │                            └─ N-th reply with udp_responses = N ─▶ Close(Responses)
//!        ├──sweep (every flow about once a second)──▶ Close(Idle | ServiceGone | EndpointLeft)
//!        ├──its NodePort socket closed──▶ Close(ListenerClosed), at once
//!        └──Open failed──▶ Close(OpenFailed) + Drop(OpenFailed)
//! ```
//!
//! Routing rules (kube-proxy's semantics without its stale-conntrack bugs; SEMANTICS.md):
//! - A new flow's endpoint is chosen by [`Picker`] — the code TCP connections use — so
//!   Maglev on client IP and port (or ClientIP affinity) sends the same client to the same
//!   pod from every worker and every node.
//! - A flow keeps its endpoint while [`keeps_flows`] says so in the *current* snapshot:
//!   present, serving (terminating-but-serving included), not marked down. Checked on every
//!   datagram (once per snapshot generation, then cached) and by the sweep; when it no
//!   longer holds, the flow moves on its next datagram, so a one-way sender to a deleted pod
//!   never keeps its flow, and a Service scaled 1 → 0 → 1 recovers with one datagram.
//! - A deleted Service (or another Service now on the NodePort) frees its flows: at their
//!   next datagram, or at the latest when the sweep passes (within [`SWEEP_PERIOD`] plus a
//!   tick).
//! - A flow replies through the NodePort socket its client used (by the driver's listener
//!   index). When that socket closes, the driver calls [`FlowTable::close_listener`] and its
//!   flows end at once: the index may be given to a new listener, and a late reply must
//!   never leave through another NodePort.
//! - The table holds at most `max_flows` flows; when full, a datagram that would start a
//!   flow is dropped and counted ([`DropReason::TableFull`]) and no flow is ever evicted, so
//!   memory stays flat under a flood of new source ports.
//! - ECONNREFUSED on an upstream socket (an ICMP port-unreachable from the pod) counts as a
//!   failed connect for passive health; when it is the send that reports it, the datagram
//!   was not sent and is sent once more (the error is consumed by the failed call): it
//!   never costs the next datagram.
//!
//! Counters: flows opened/closed and bytes each way are added to the Service's and the
//! endpoint's [`crate::stats::StatsBlock`] (slot `worker`; `opened − closed` is what the
//! least-connections policy reads), passive health through `count_connect`; every dropped
//! datagram is a [`FlowOp::Drop`] with its reason for the driver to count.
//!
//! Never panics on anything a client or pod controls; `verify` checks the whole structure
//! (tests and the simulator call it).
//!
//! [`RoutingSnapshot`]: crate::table::RoutingSnapshot
//! [`Picker`]: super::select::Picker
//! [`keeps_flows`]: crate::table::usable::keeps_flows

mod carry;
#[cfg(test)]
mod carry_tests;
#[cfg(test)]
mod simulation;
mod slab;
mod table;
#[cfg(test)]
mod tests;

pub use carry::NotAdopted;
pub use table::FlowTable;

use crate::table::ServiceId;
use std::net::SocketAddr;
use std::time::Duration;

/// How often the sweep visits every flow (idle expiry, deleted Services, endpoints that
/// left): a flow ends at most about this much after its idle deadline.
pub const SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// The driver calls [`FlowTable::handle_tick`] at least this often while flows are live
/// ([`FlowTable::next_tick`] says when).
pub const TICK: Duration = Duration::from_millis(100);

/// The largest UDP payload over IPv4: 65,535 − 20 (IP header) − 8 (UDP header).
pub const MAX_PAYLOAD_V4: usize = 65_507;
/// The largest UDP payload over IPv6 (no jumbograms): 65,535 − 8.
pub const MAX_PAYLOAD_V6: usize = 65_527;

/// The bytes of a PROXY v2 `PP2_TYPE_UNIQUE_ID` for a flow: the worker (8 bytes, big
/// endian) and the flow's token (8 bytes).
pub const UNIQUE_ID_LEN: usize = 16;

/// One flow's upstream socket: slot index and generation. Stale once the flow closes (its
/// slot's generation moves on), so a late report about a closed flow never reaches the flow
/// that reuses the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId {
    index: u32,
    generation: u32,
}

impl FlowId {
    /// As one `u64` (io_uring user data, an epoll token).
    pub fn token(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    /// Back from [`FlowId::token`].
    pub fn from_token(token: u64) -> FlowId {
        FlowId {
            index: token as u32,
            generation: (token >> 32) as u32,
        }
    }

    /// The slot: dense, so a driver can keep its sockets in a `Vec` indexed by it.
    pub fn index(self) -> usize {
        self.index as usize
    }

    /// [`UNIQUE_ID_LEN`] bytes naming this flow of `worker` in a PROXY v2 header.
    pub fn unique_id(self, worker: usize) -> [u8; UNIQUE_ID_LEN] {
        let mut id = [0u8; UNIQUE_ID_LEN];
        id[..8].copy_from_slice(&(worker as u64).to_be_bytes());
        id[8..].copy_from_slice(&self.token().to_be_bytes());
        id
    }
}

/// A datagram a NodePort socket received, as the driver read it (the payload stays in the
/// driver's buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientDatagram {
    /// The driver's index of the NodePort socket it arrived on; replies leave by it.
    pub listener: u32,
    /// That socket's own address (a wildcard, or one address): the Service is looked up by
    /// it, as a TCP connection is by its listener's.
    pub bound: SocketAddr,
    /// Source address and port.
    pub client: SocketAddr,
    /// The node address the client sent to (IP_PKTINFO / IPV6_PKTINFO, or the socket's own
    /// address when it is bound to one) and the NodePort. Replies leave from it.
    pub node: SocketAddr,
    /// Payload bytes.
    pub len: usize,
    /// The kernel cut it (MSG_TRUNC): never forwarded.
    pub truncated: bool,
}

/// What the driver must do next. [`FlowOp::SendUpstream`] and [`FlowOp::SendReply`] are
/// about the datagram handed in with the call that produced them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowOp {
    /// Open a nonblocking UDP socket connected to `endpoint` for `flow` (its token:
    /// [`FlowId::token`]) and watch it for replies. On failure call
    /// [`FlowTable::handle_open_failed`] before draining the next op.
    Open {
        flow: FlowId,
        endpoint: SocketAddr,
        source: Source,
    },
    /// Send the datagram on `flow`'s upstream socket, after the PROXY v2 header when
    /// `proxy` says so (as a second part of the same message: `encode_datagram` with the
    /// options of `snapshot.service(proxy.service)` and [`FlowId::unique_id`]). On
    /// ECONNREFUSED call [`FlowTable::handle_upstream_error`] with `RefusedOnSend`.
    SendUpstream {
        flow: FlowId,
        proxy: Option<ProxyHeader>,
    },
    /// Send the reply just read from an upstream socket to `to`, from the node address
    /// `from`, on NodePort socket `listener` (IP_PKTINFO / IPV6_PKTINFO source).
    SendReply {
        listener: u32,
        from: SocketAddr,
        to: SocketAddr,
    },
    /// Close `flow`'s upstream socket (there may be none: an `Open` that failed). Later
    /// reports about `flow` are stale and ignored.
    Close { flow: FlowId, reason: CloseReason },
    /// The datagram handed in was not forwarded: count it. `service` when one was found
    /// (valid with the snapshot passed to the call).
    Drop {
        reason: DropReason,
        service: Option<ServiceId>,
    },
}

/// Where a flow's upstream socket leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The node's own address (port chosen by the kernel).
    Node,
    /// `forwarding = "transparent"`: IP_TRANSPARENT, bound to the client's IP and port
    /// (the client's IP and any port when that 4-tuple is taken).
    Client(SocketAddr),
}

/// A PROXY v2 header to put before the datagram (`forwarding = "proxy-v2"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    pub client: SocketAddr,
    pub node: SocketAddr,
    /// The Service whose options (TLVs, unique id) apply.
    pub service: ServiceId,
}

/// Why a flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// No datagram either way for the Service's idle timeout.
    Idle,
    /// The Service's `udp_responses`-th reply went out.
    Responses,
    /// Its endpoint was removed, stopped serving, or was marked down: the flow's next
    /// datagram opens a new flow to another endpoint.
    EndpointLeft,
    /// Its Service was deleted, or another Service took the NodePort.
    ServiceGone,
    /// Its upstream socket could not be opened.
    OpenFailed(OpenFailure),
    /// The NodePort socket it arrived on was closed (a reload or an address change removed
    /// that listener, or the worker drains): its replies have no way back, and the slot
    /// may be reused by another listener.
    ListenerClosed,
    /// The worker stops.
    Shutdown,
}

/// Why a datagram was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The kernel cut it (larger than the driver's buffer): never forwarded cut.
    Truncated,
    /// No Service on this NodePort (it is being removed).
    NoService,
    /// The Service has no usable endpoint.
    NoEndpoint,
    /// A new flow, but the worker holds `max_flows` already.
    TableFull,
    /// With its PROXY v2 header it would exceed the largest UDP payload.
    TooLarge,
    /// A new flow whose upstream socket could not be opened (fds, local ports, …).
    OpenFailed(OpenFailure),
    /// The upstream send failed (other than ECONNREFUSED, or that twice in a row).
    SendFailed,
    /// A reply for a flow that is closed already.
    StaleFlow,
    /// The client is outside the Service's `loadBalancerSourceRanges` (at a LoadBalancer
    /// IP, or at the NodePort with `source_ranges_on_node_ports`).
    SourceRange,
}

impl DropReason {
    /// Its position in [`crate::stats::DROP_REASONS`] (the metric label).
    pub fn index(self) -> usize {
        match self {
            DropReason::Truncated => 0,
            DropReason::NoService => 1,
            DropReason::NoEndpoint => 2,
            DropReason::TableFull => 3,
            DropReason::TooLarge => 4,
            DropReason::OpenFailed(_) => 5,
            DropReason::SendFailed => 6,
            DropReason::StaleFlow => 7,
            DropReason::SourceRange => 10,
        }
    }
}

/// Why an upstream socket could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenFailure {
    /// Out of fds or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM).
    Local,
    /// No local port left towards the endpoint (EADDRNOTAVAIL, EADDRINUSE).
    Ports,
    /// Transparent forwarding could not bind to the client's address (EPERM: no
    /// CAP_NET_ADMIN).
    Transparent,
    /// The endpoint cannot be reached (ENETUNREACH, EHOSTUNREACH at connect).
    Network,
}

/// What went wrong on an upstream socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// The send of the last `SendUpstream` failed with ECONNREFUSED: an ICMP
    /// port-unreachable from the pod arrived since the previous send. That datagram was
    /// not sent; the failed call consumed the error.
    RefusedOnSend,
    /// A receive reported ECONNREFUSED (nothing was lost).
    Refused,
    /// The send of the last `SendUpstream` failed otherwise (EMSGSIZE, ENOBUFS, …).
    SendFailed,
}
