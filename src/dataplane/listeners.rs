//! The data plane's listening sockets: which (address, NodePort) listeners a model calls
//! for ([`node_ports`], [`node_port_keys`], [`wildcard_address`]), and the listener change
//! of a reload as two steps, so that a port that cannot be bound fails the reload before
//! anything is published: [`Dataplane::prepare_listeners`] opens one SO_REUSEPORT socket per
//! worker for each new listener (all or nothing for the required ones) into a
//! [`ListenerPlan`], [`Dataplane::commit_listeners`] hands them to the workers and closes the
//! removed ones. [`Dataplane::steer_client_ips`] attaches and detaches the client-IP steering
//! program of ClientIP-affinity Services' listener groups.
//!
//! A data plane started on inherited sockets ([`Dataplane::start_inheriting`]) takes a
//! listener's group from them instead of binding, and while paused holds every change for
//! the workers until [`Dataplane::resume`].
//!
//! Must not: read configuration (the caller says which listeners it wants), or change what
//! workers listen on before the commit.

use super::worker::{Command, Listener};
use super::{sys, Dataplane, ListenerKey, StartError};
use crate::model::{Model, Protocol};
use socket2::{Domain, Socket, Type};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::time::Duration;

/// The NodePorts to open: (protocol, port) pairs.
pub type NodePorts = Vec<(Protocol, u16)>;

/// The listening sockets the data plane is to have (see [`Dataplane::prepare_listeners`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listeners {
    /// Opened all or nothing: one that cannot be bound fails the change (NodePorts).
    pub required: Vec<ListenerKey>,
    /// Opened where possible: one that cannot be bound is reported in the plan and left
    /// out, the rest goes ahead (a Service's external and LoadBalancer IPs, which come
    /// and go with the Service's status).
    pub optional: Vec<ListenerKey>,
}

/// Listener changes opened by [`Dataplane::prepare_listeners`], applied by
/// [`Dataplane::commit_listeners`].
#[derive(Debug)]
pub struct ListenerPlan {
    /// New keys, each with one socket per worker.
    add: Vec<(ListenerKey, Vec<Socket>)>,
    remove: Vec<ListenerKey>,
    /// Optional keys that could not be opened, and why.
    failed: Vec<(ListenerKey, io::Error)>,
}

impl ListenerPlan {
    /// (address, NodePort) pairs the plan opens.
    pub fn added(&self) -> Vec<ListenerKey> {
        self.add.iter().map(|(k, _)| *k).collect()
    }

    /// (address, NodePort) pairs the plan closes.
    pub fn removed(&self) -> &[ListenerKey] {
        &self.remove
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Optional listeners that could not be opened (not open, not in the plan), and why.
    pub fn failed(&self) -> &[(ListenerKey, io::Error)] {
        &self.failed
    }
}

impl Dataplane {
    /// Open sockets (with `backlog`) for the `wanted` listeners that are not open yet, and
    /// plan to close the open ones it does not name. Nothing changes for the workers until
    /// [`Self::commit_listeners`]. A required listener that cannot be opened is an error,
    /// and then nothing was changed (sockets opened so far are closed); an optional one is
    /// reported in [`ListenerPlan::failed`] and left out.
    pub fn prepare_listeners(
        &mut self,
        backlog: u32,
        wanted: &Listeners,
    ) -> Result<ListenerPlan, StartError> {
        // Sets: with 10,000 NodePorts a scan per listener is quadratic.
        let keep: HashSet<ListenerKey> = wanted
            .required
            .iter()
            .chain(&wanted.optional)
            .copied()
            .collect();
        let open: HashSet<ListenerKey> = self.open.iter().copied().collect();
        let (add, failed) = open_listeners(
            backlog,
            wanted,
            &open,
            self.workers.len(),
            &mut self.inherited,
        )?;
        let remove = self
            .open
            .iter()
            .filter(|k| !keep.contains(k))
            .copied()
            .collect();
        Ok(ListenerPlan {
            add,
            remove,
            failed,
        })
    }

    /// Hand the plan's new listeners to the workers and close the removed ones. Call it
    /// after publishing the snapshot that routes the new NodePorts.
    pub fn commit_listeners(&mut self, plan: ListenerPlan) {
        let mut per_worker: Vec<Vec<Listener>> =
            (0..self.workers.len()).map(|_| Vec::new()).collect();
        for (key, sockets) in plan.add {
            for (listeners, socket) in per_worker.iter_mut().zip(sockets) {
                listeners.push(Listener { key, socket });
            }
            self.open.push(key);
        }
        let removed: HashSet<&ListenerKey> = plan.remove.iter().collect();
        self.open.retain(|k| !removed.contains(k));
        self.steered.retain(|k| !removed.contains(k));
        for (index, listeners) in per_worker.into_iter().enumerate() {
            if !listeners.is_empty() {
                self.post(index, Command::AddListeners(listeners));
            }
            if !plan.remove.is_empty() {
                self.post(index, Command::RemoveListeners(plan.remove.clone()));
            }
        }
    }

    /// Steer the connections of these listeners to workers by client IP (a classic-BPF
    /// SO_REUSEPORT program), so that each client IP always meets the same worker and its
    /// affinity table; other listeners go back to the kernel's 4-tuple hash. Call after
    /// `start` and after each `commit_listeners` with the listeners of ClientIP-affinity
    /// Services (keys not open are ignored). Returns once the change is in place (or after
    /// a second, if the worker is wedged).
    pub fn steer_client_ips(&mut self, keys: &[ListenerKey]) {
        let keys: HashSet<&ListenerKey> = keys.iter().collect();
        let wanted: Vec<ListenerKey> = self
            .open
            .iter()
            .filter(|k| keys.contains(k))
            .copied()
            .collect();
        let steered: HashSet<&ListenerKey> = self.steered.iter().collect();
        let attach: Vec<ListenerKey> = wanted
            .iter()
            .filter(|k| !steered.contains(k))
            .copied()
            .collect();
        let wanted_set: HashSet<&ListenerKey> = wanted.iter().collect();
        let detach: Vec<ListenerKey> = self
            .steered
            .iter()
            .filter(|k| !wanted_set.contains(k))
            .copied()
            .collect();
        if attach.is_empty() && detach.is_empty() {
            return;
        }
        self.steered = wanted;
        if !self.workers.is_empty() {
            let (done, applied) = mpsc::channel();
            let groups = self.workers.len() as u32;
            let paused = self.is_paused();
            self.post(
                0,
                Command::Steer {
                    attach,
                    detach,
                    groups,
                    done,
                },
            );
            // While paused the change waits with the listeners (`Dataplane::resume`).
            if !paused {
                let _ = applied.recv_timeout(Duration::from_secs(1));
            }
        }
    }
}

/// The NodePorts a model serves (Service ports without one, node_port 0, have none).
pub fn node_ports(model: &Model) -> NodePorts {
    let mut ports: NodePorts = model
        .services
        .iter()
        .filter(|s| s.node_port != 0)
        .map(|s| (s.key.protocol, s.node_port))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The listeners of `node_ports` on each of `addresses`.
pub fn node_port_keys(addresses: &[IpAddr], node_ports: &NodePorts) -> Vec<ListenerKey> {
    let mut keys = Vec::with_capacity(addresses.len() * node_ports.len());
    for &(protocol, node_port) in node_ports {
        for &ip in addresses {
            keys.push(ListenerKey {
                addr: SocketAddr::new(ip, node_port),
                protocol,
            });
        }
    }
    keys
}

/// Open `workers` reuseport sockets for every wanted key not in `open`: the required ones
/// all or nothing (an error closes what was opened), the optional ones where possible
/// (returned second: those that failed, and why).
#[allow(clippy::type_complexity)]
pub(super) fn open_listeners(
    backlog: u32,
    wanted: &Listeners,
    open: &HashSet<ListenerKey>,
    workers: usize,
    inherited: &mut HashMap<ListenerKey, Vec<Socket>>,
) -> Result<
    (
        Vec<(ListenerKey, Vec<Socket>)>,
        Vec<(ListenerKey, io::Error)>,
    ),
    StartError,
> {
    let mut out = Vec::new();
    let mut seen: HashSet<ListenerKey> = HashSet::new();
    // An inherited group of the right size is taken as it is (never re-bound); one of
    // another size cannot be given to workers by position and is closed.
    let mut group = |key: &ListenerKey| match inherited.remove(key) {
        Some(sockets) if sockets.len() == workers => Ok(sockets),
        _ => (0..workers)
            .map(|_| match key.protocol {
                Protocol::Tcp => open_listener(key.addr, backlog),
                Protocol::Udp => open_udp_socket(key.addr),
            })
            .collect::<io::Result<Vec<_>>>(),
    };
    for key in &wanted.required {
        if open.contains(key) || !seen.insert(*key) {
            continue;
        }
        let sockets = group(key).map_err(|cause| StartError::Listen {
            addr: key.addr,
            node_port: key.node_port(),
            protocol: key.protocol,
            cause,
        })?;
        out.push((*key, sockets));
    }
    let mut failed = Vec::new();
    for key in &wanted.optional {
        if open.contains(key) || !seen.insert(*key) {
            continue;
        }
        match group(key) {
            Ok(sockets) => out.push((*key, sockets)),
            Err(e) => failed.push((*key, e)),
        }
    }
    Ok((out, failed))
}

/// The address that stands for "every address" (`listen_addresses` omitted): `::`, one
/// dual-stack socket, when the host has IPv6, else `0.0.0.0`.
pub fn wildcard_address() -> IpAddr {
    if Socket::new(Domain::IPV6, Type::STREAM, None).is_ok() {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

/// One member of a SO_REUSEPORT group listening on `addr`.
/// One member of a SO_REUSEPORT group of UDP NodePort sockets on `addr`, told to report the
/// node address each datagram was sent to (replies must leave from it).
fn open_udp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.nonblocking().cloexec(),
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    sys::udp::set_recv_pktinfo(socket.as_fd(), addr.is_ipv6())?;
    // A burst (iperf3 paces in 1 ms bursts) must not overflow the default 208 KiB queue
    // while the worker is busy: ask for UDP_RECEIVE_BUFFER; the kernel grants at most
    // `net.core.rmem_max` (doubled for its bookkeeping), which is the operator's knob.
    if let Err(e) = socket.set_recv_buffer_size(UDP_RECEIVE_BUFFER) {
        tracing::debug!(%addr, error = %e, "cannot enlarge a UDP NodePort socket's receive buffer");
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// What a UDP NodePort socket asks for as its receive buffer (SO_RCVBUF), bytes; the
/// kernel caps it at `net.core.rmem_max`. docs/operations.md, "UDP receive buffers".
pub const UDP_RECEIVE_BUFFER: usize = 4 << 20;

fn open_listener(addr: SocketAddr, backlog: u32) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    // Accepted sockets inherit TCP_NODELAY: no Nagle delay on relayed small writes.
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket)
}
