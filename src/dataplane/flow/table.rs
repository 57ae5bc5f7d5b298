//! [`FlowTable`]: the flows of one worker, their lookups (by client 4-tuple, by upstream
//! token), their lifecycle and the incremental sweep. The module documentation of `flow`
//! says what it decides; this file is how.

use super::slab::Slab;
use super::{
    ClientDatagram, CloseReason, DropReason, FlowId, FlowOp, OpenFailure, ProxyHeader, Source,
    UpstreamError, MAX_PAYLOAD_V4, MAX_PAYLOAD_V6, SWEEP_PERIOD, UNIQUE_ID_LEN,
};
use crate::dataplane::refusals::{RefusalLog, LOG_EVERY};
use crate::dataplane::select::Picker;
use crate::model::{Forwarding, Protocol, TrafficPolicy};
use crate::stats::StatsBlock;
use crate::table::usable::keeps_flows;
use crate::table::{EndpointId, RoutingSnapshot, ServiceEntry, ServiceId};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Datagrams and bytes one way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub datagrams: u64,
    pub bytes: u64,
}

impl Traffic {
    fn add(&mut self, len: usize) {
        self.datagrams += 1;
        self.bytes += len as u64;
    }
}

/// One live flow as `ctl flows` (and tests) see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowView {
    pub id: FlowId,
    /// The Service port's stable id.
    pub service: u64,
    pub client: SocketAddr,
    pub node: SocketAddr,
    pub endpoint: SocketAddr,
    pub created: Instant,
    /// The last datagram either way.
    pub last_active: Instant,
    /// When the sweep will end it if nothing moves.
    pub idle_deadline: Instant,
    pub to_endpoint: Traffic,
    pub to_client: Traffic,
    /// Replies still allowed (`udp_responses`), if limited.
    pub responses_left: Option<u32>,
}

/// The lookup key: a flow is one (client, node address) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct FlowKey {
    pub(super) client: SocketAddr,
    pub(super) node: SocketAddr,
}

/// Where the flow's endpoint was found the last time it was checked.
#[derive(Debug, Clone, Copy)]
pub(super) struct Checked {
    pub(super) generation: u64,
    pub(super) service: ServiceId,
}

#[derive(Debug)]
pub(super) struct Flow {
    pub(super) key: FlowKey,
    pub(super) listener: u32,
    /// The NodePort socket's own address (see [`ClientDatagram::bound`]).
    pub(super) bound: SocketAddr,
    /// The client is an address of this node: a Local Service routes it with the cluster
    /// endpoints (as kube-proxy routes host-originated traffic), so its flow keeps a
    /// remote endpoint too.
    pub(super) from_node: bool,
    /// The Service port's stable id (the same in every snapshot).
    pub(super) service: u64,
    pub(super) endpoint: SocketAddr,
    pub(super) idle: Duration,
    pub(super) responses_left: Option<u32>,
    pub(super) created: Instant,
    pub(super) last_active: Instant,
    pub(super) checked: Checked,
    /// A reply arrived since the flow opened or last saw ECONNREFUSED (passive health is
    /// told once per change, not per datagram).
    pub(super) replied: bool,
    /// The current datagram was sent again after ECONNREFUSED.
    pub(super) resent: bool,
    /// The header of the current datagram, for a resend.
    pub(super) proxy: Option<ProxyHeader>,
    pub(super) service_stats: Arc<StatsBlock>,
    pub(super) endpoint_stats: Arc<StatsBlock>,
    pub(super) to_endpoint: Traffic,
    pub(super) to_client: Traffic,
}

impl Flow {
    fn idle_deadline(&self) -> Instant {
        crate::deadline::after(self.last_active, self.idle)
    }
}

/// The incremental sweep's position.
#[derive(Debug)]
struct Sweep {
    /// Next slot to visit.
    cursor: usize,
    /// The previous tick.
    last: Instant,
}

/// See the module documentation of `flow`.
#[derive(Debug)]
pub struct FlowTable {
    /// Which slot of the counter blocks this worker writes.
    pub(super) worker: usize,
    pub(super) max_flows: usize,
    pub(super) flows: Slab<Flow>,
    pub(super) by_key: HashMap<FlowKey, FlowId, ahash::RandomState>,
    ops: VecDeque<FlowOp>,
    sweep: Sweep,
    /// Datagrams refused by source ranges: the rate-limited log line.
    refusal_log: RefusalLog,
}

impl FlowTable {
    /// An empty table for worker `worker` (its slot in the counter blocks) holding at most
    /// `max_flows` flows (at least 1).
    pub fn new(now: Instant, worker: usize, max_flows: u32) -> FlowTable {
        FlowTable {
            worker,
            max_flows: max_flows.max(1) as usize,
            flows: Slab::new(),
            by_key: HashMap::default(),
            ops: VecDeque::new(),
            sweep: Sweep {
                cursor: 0,
                last: now,
            },
            refusal_log: RefusalLog::default(),
        }
    }

    /// Live flows.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.len() == 0
    }

    /// The next op for the driver, in order; `None` when all are out.
    pub fn poll_op(&mut self) -> Option<FlowOp> {
        self.ops.pop_front()
    }

    #[cfg(test)]
    /// When the driver must call [`FlowTable::handle_tick`] at the latest: [`TICK`] after
    /// the previous tick while flows are live; `None` without flows.
    pub fn next_tick(&self) -> Option<Instant> {
        (!self.is_empty()).then(|| crate::deadline::after(self.sweep.last, super::TICK))
    }

    /// The live flow `id`.
    pub fn flow(&self, id: FlowId) -> Option<FlowView> {
        self.flows.get(id).map(|f| view(id, f))
    }

    /// Every live flow, in slot order.
    pub fn flows(&self) -> impl Iterator<Item = FlowView> + '_ {
        self.flows.iter().map(|(id, f)| view(id, f))
    }

    /// A datagram from a client on a NodePort socket. Ops: `Drop`, or `SendUpstream`
    /// (preceded by `Open` for a new flow, and by `Close` when the flow moved).
    pub fn handle_client_datagram(
        &mut self,
        now: Instant,
        snapshot: &RoutingSnapshot,
        picker: &mut Picker,
        d: ClientDatagram,
    ) {
        self.on_client_datagram(now, snapshot, picker, d);
        self.check_invariants();
    }

    /// A reply read from `flow`'s upstream socket (`len` bytes; `truncated` when the
    /// kernel cut it). Ops: `SendReply` (then `Close` after the last allowed reply) or
    /// `Drop`.
    pub fn handle_reply(&mut self, now: Instant, flow: FlowId, len: usize, truncated: bool) {
        self.on_reply(now, flow, len, truncated);
        self.check_invariants();
    }

    /// An error on `flow`'s upstream socket (see [`UpstreamError`]). Ops: a second
    /// `SendUpstream` of the same datagram after `RefusedOnSend` (once), or `Drop`.
    pub fn handle_upstream_error(&mut self, flow: FlowId, error: UpstreamError) {
        self.on_upstream_error(flow, error);
        self.check_invariants();
    }

    /// `Open` for `flow` failed: the flow ends and its first datagram is dropped (the
    /// `SendUpstream` queued behind the `Open` is withdrawn). Ops: `Close`, `Drop`.
    pub fn handle_open_failed(&mut self, flow: FlowId, failure: OpenFailure) {
        if self.flows.get(flow).is_some() {
            self.ops
                .retain(|op| !matches!(op, FlowOp::SendUpstream { flow: f, .. } if *f == flow));
            let service = self.flows.get(flow).map(|f| f.checked.service);
            self.close(flow, CloseReason::OpenFailed(failure));
            self.drop_datagram(DropReason::OpenFailed(failure), service);
        }
        self.check_invariants();
    }

    /// The sweep: visits the share of the slots due since the previous tick (every slot
    /// about once per [`SWEEP_PERIOD`]) and closes flows that are idle past their deadline,
    /// whose Service is gone, or whose endpoint is no longer kept. Ops: `Close`.
    pub fn handle_tick(&mut self, now: Instant, snapshot: &RoutingSnapshot) {
        let elapsed = now.saturating_duration_since(self.sweep.last);
        if elapsed.is_zero() {
            return;
        }
        self.sweep.last = now;
        let slots = self.flows.slots();
        if slots == 0 {
            return;
        }
        let period = SWEEP_PERIOD.as_nanos();
        let due = (slots as u128 * elapsed.as_nanos()).div_ceil(period);
        let budget = due.min(slots as u128) as usize;
        for _ in 0..budget {
            let index = self.sweep.cursor % slots;
            self.sweep.cursor = (index + 1) % slots;
            let Some((id, flow)) = self.flows.at(index) else {
                continue;
            };
            if flow.idle_deadline() <= now {
                self.close(id, CloseReason::Idle);
                continue;
            }
            match snapshot.lookup(Protocol::Udp, flow.bound) {
                None => self.close(id, CloseReason::ServiceGone),
                Some(reached) => {
                    self.revalidate(id, snapshot, reached.service);
                }
            }
        }
        self.check_invariants();
    }

    /// NodePort socket `listener` was closed: every flow that replies through it ends
    /// (its index may be reused by the next listener the worker opens). Ops: `Close` for
    /// each. O(flows): it runs when listeners change, not per datagram.
    pub fn close_listener(&mut self, listener: u32) {
        let ids: Vec<FlowId> = self
            .flows
            .iter()
            .filter(|(_, f)| f.listener == listener)
            .map(|(id, _)| id)
            .collect();
        for id in ids {
            self.close(id, CloseReason::ListenerClosed);
        }
        self.check_invariants();
    }

    /// Close every flow (the worker stops). Ops: `Close` for each.
    pub fn close_all(&mut self, reason: CloseReason) {
        let ids: Vec<FlowId> = self.flows.iter().map(|(id, _)| id).collect();
        for id in ids {
            self.close(id, reason);
        }
        self.check_invariants();
    }

    #[cfg(test)]
    /// Checks the whole structure: every key maps to the live flow of that key, every live
    /// flow is in the map once, the count is within the cap, the slab adds up. O(flows):
    /// for tests and the simulator; the mutators check the O(1) part themselves.
    pub fn verify(&self) -> Result<(), String> {
        self.flows.verify()?;
        if self.by_key.len() != self.flows.len() {
            return Err(format!(
                "{} keys for {} flows",
                self.by_key.len(),
                self.flows.len()
            ));
        }
        for (key, &id) in &self.by_key {
            match self.flows.get(id) {
                Some(f) if f.key == *key => {}
                Some(f) => return Err(format!("{key:?} maps to the flow of {:?}", f.key)),
                None => return Err(format!("{key:?} maps to a closed flow {id:?}")),
            }
        }
        if self.flows.len() > self.max_flows {
            return Err(format!(
                "{} flows above the cap {}",
                self.flows.len(),
                self.max_flows
            ));
        }
        Ok(())
    }

    fn on_client_datagram(
        &mut self,
        now: Instant,
        snapshot: &RoutingSnapshot,
        picker: &mut Picker,
        d: ClientDatagram,
    ) {
        let key = FlowKey {
            client: d.client,
            node: d.node,
        };
        let existing = self.by_key.get(&key).copied();
        let Some(reached) = snapshot.lookup(Protocol::Udp, d.bound) else {
            if let Some(id) = existing {
                self.close(id, CloseReason::ServiceGone);
            }
            self.drop_datagram(DropReason::NoService, None);
            return;
        };
        let sid = reached.service;
        if !snapshot.admits(reached, d.client.ip()) {
            // loadBalancerSourceRanges: never forwarded, whether a flow exists or not;
            // counted for the Service as a refused TCP connection is.
            let entry = snapshot.service(sid);
            entry.stats.worker(self.worker).source_refused.add(1);
            if let Some(refused) = self.refusal_log.refused(now) {
                tracing::warn!(
                    worker = self.worker,
                    service = %entry.port.key,
                    client = %d.client.ip().to_canonical(),
                    node = %d.node,
                    refused,
                    "datagram dropped: the client is outside the Service's loadBalancerSourceRanges (this worker logs at most one such line per {}s; `refused` counts since its last)",
                    LOG_EVERY.as_secs()
                );
            }
            self.drop_datagram(DropReason::SourceRange, Some(sid));
            return;
        }
        if d.truncated {
            self.drop_datagram(DropReason::Truncated, Some(sid));
            return;
        }
        let entry = snapshot.service(sid);
        let (proxy, header_len) = match &entry.port.forwarding {
            Forwarding::ProxyV2(opts) => {
                let id_len = if opts.unique_id { UNIQUE_ID_LEN } else { 0 };
                let header = ProxyHeader {
                    client: d.client,
                    node: d.node,
                    service: sid,
                };
                let len = crate::proxy_protocol::v2_len(d.client, d.node, opts, id_len);
                (Some(header), len)
            }
            _ => (None, 0),
        };
        if let Some(id) = existing {
            if self.revalidate(id, snapshot, sid) {
                let endpoint = self.flows.get(id).map(|f| f.endpoint);
                if endpoint.is_some_and(|e| d.len + header_len > max_payload(e)) {
                    self.drop_datagram(DropReason::TooLarge, Some(sid));
                } else {
                    self.forward(id, now, d.len, proxy);
                }
                return;
            }
            // Closed by `revalidate`: it moves, as a new flow.
        }
        if self.flows.len() >= self.max_flows {
            self.drop_datagram(DropReason::TableFull, Some(sid));
            return;
        }
        let from_node = snapshot.is_node_address(d.client.ip());
        let Some(eid) = picker.choose(entry, d.client, from_node, &[], now) else {
            self.drop_datagram(DropReason::NoEndpoint, Some(sid));
            return;
        };
        if d.len + header_len > max_payload(entry.endpoint(eid).endpoint.addr) {
            self.drop_datagram(DropReason::TooLarge, Some(sid));
            return;
        }
        let id = self.open(now, snapshot, sid, eid, d, from_node);
        self.forward(id, now, d.len, proxy);
    }

    /// Whether flow `id` may stay on its endpoint under `snapshot`, where `sid` now serves
    /// its NodePort; closes it (and says false) when not.
    fn revalidate(&mut self, id: FlowId, snapshot: &RoutingSnapshot, sid: ServiceId) -> bool {
        let Some(flow) = self.flows.get_mut(id) else {
            return false;
        };
        let entry = snapshot.service(sid);
        if flow.service != entry.stable_id() {
            self.close(id, CloseReason::ServiceGone);
            return false;
        }
        if flow.checked.generation == snapshot.generation() {
            return true;
        }
        if kept_endpoint(entry, flow.from_node, flow.endpoint).is_some() {
            // Its idle timeout and reply limit stay those it was opened with: like a TCP
            // connection's, a reload's new values apply to new flows.
            flow.checked = Checked {
                generation: snapshot.generation(),
                service: sid,
            };
            true
        } else {
            self.close(id, CloseReason::EndpointLeft);
            false
        }
    }

    fn open(
        &mut self,
        now: Instant,
        snapshot: &RoutingSnapshot,
        sid: ServiceId,
        eid: EndpointId,
        d: ClientDatagram,
        from_node: bool,
    ) -> FlowId {
        let entry = snapshot.service(sid);
        let endpoint = entry.endpoint(eid);
        let source = match entry.port.forwarding {
            Forwarding::Transparent => Source::Client(d.client),
            _ => Source::Node,
        };
        let flow = Flow {
            key: FlowKey {
                client: d.client,
                node: d.node,
            },
            listener: d.listener,
            bound: d.bound,
            from_node,
            service: entry.stable_id(),
            endpoint: endpoint.endpoint.addr,
            idle: entry.port.timeouts.idle,
            responses_left: entry.port.udp_responses,
            created: now,
            last_active: now,
            checked: Checked {
                generation: snapshot.generation(),
                service: sid,
            },
            replied: false,
            resent: false,
            proxy: None,
            service_stats: Arc::clone(&entry.stats),
            endpoint_stats: Arc::clone(&endpoint.stats),
            to_endpoint: Traffic::default(),
            to_client: Traffic::default(),
        };
        flow.service_stats.worker(self.worker).opened.add(1);
        flow.endpoint_stats.worker(self.worker).opened.add(1);
        let key = flow.key;
        let addr = flow.endpoint;
        let id = self.flows.insert(flow);
        self.by_key.insert(key, id);
        self.ops.push_back(FlowOp::Open {
            flow: id,
            endpoint: addr,
            source,
        });
        id
    }

    fn forward(&mut self, id: FlowId, now: Instant, len: usize, proxy: Option<ProxyHeader>) {
        let worker = self.worker;
        let Some(flow) = self.flows.get_mut(id) else {
            return;
        };
        flow.last_active = now;
        flow.resent = false;
        flow.proxy = proxy;
        flow.to_endpoint.add(len);
        for c in [
            flow.service_stats.worker(worker),
            flow.endpoint_stats.worker(worker),
        ] {
            c.bytes_to_backend.add(len as u64);
            c.datagrams_to_backend.add(1);
        }
        self.ops.push_back(FlowOp::SendUpstream { flow: id, proxy });
    }

    fn on_reply(&mut self, now: Instant, id: FlowId, len: usize, truncated: bool) {
        let worker = self.worker;
        let Some(flow) = self.flows.get_mut(id) else {
            self.drop_datagram(DropReason::StaleFlow, None);
            return;
        };
        if truncated {
            let service = flow.checked.service;
            self.drop_datagram(DropReason::Truncated, Some(service));
            return;
        }
        flow.last_active = now;
        flow.to_client.add(len);
        let service = flow.service_stats.worker(worker);
        service.bytes_to_client.add(len as u64);
        service.datagrams_to_client.add(1);
        let endpoint = flow.endpoint_stats.worker(worker);
        endpoint.bytes_to_client.add(len as u64);
        endpoint.datagrams_to_client.add(1);
        if !flow.replied {
            // The pod answers: a successful "connect" for passive health.
            flow.replied = true;
            endpoint.count_connect(true);
        }
        self.ops.push_back(FlowOp::SendReply {
            listener: flow.listener,
            from: flow.key.node,
            to: flow.key.client,
        });
        if let Some(left) = &mut flow.responses_left {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.close(id, CloseReason::Responses);
            }
        }
    }

    fn on_upstream_error(&mut self, id: FlowId, error: UpstreamError) {
        let worker = self.worker;
        let Some(flow) = self.flows.get_mut(id) else {
            return;
        };
        let service = Some(flow.checked.service);
        match error {
            UpstreamError::RefusedOnSend | UpstreamError::Refused => {
                flow.replied = false;
                flow.endpoint_stats.worker(worker).count_connect(false);
                if error == UpstreamError::RefusedOnSend {
                    if flow.resent {
                        self.drop_datagram(DropReason::SendFailed, service);
                    } else {
                        flow.resent = true;
                        let proxy = flow.proxy;
                        self.ops.push_back(FlowOp::SendUpstream { flow: id, proxy });
                    }
                }
            }
            UpstreamError::SendFailed => self.drop_datagram(DropReason::SendFailed, service),
        }
    }

    fn close(&mut self, id: FlowId, reason: CloseReason) {
        let Some(flow) = self.flows.remove(id) else {
            return;
        };
        if self.by_key.get(&flow.key) == Some(&id) {
            self.by_key.remove(&flow.key);
        }
        flow.service_stats.worker(self.worker).closed.add(1);
        flow.endpoint_stats.worker(self.worker).closed.add(1);
        self.ops.push_back(FlowOp::Close { flow: id, reason });
    }

    fn drop_datagram(&mut self, reason: DropReason, service: Option<ServiceId>) {
        self.ops.push_back(FlowOp::Drop { reason, service });
    }

    /// The O(1) part of [`FlowTable::verify`], after every mutator in debug builds.
    pub(super) fn check_invariants(&self) {
        if cfg!(debug_assertions) {
            assert_eq!(
                self.by_key.len(),
                self.flows.len(),
                "a flow without its key"
            );
        }
    }
}

/// The largest datagram (header included) an upstream socket towards `endpoint` can send.
fn max_payload(endpoint: SocketAddr) -> usize {
    let v4 = match endpoint {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
    };
    if v4 {
        MAX_PAYLOAD_V4
    } else {
        MAX_PAYLOAD_V6
    }
}

fn view(id: FlowId, f: &Flow) -> FlowView {
    FlowView {
        id,
        service: f.service,
        client: f.key.client,
        node: f.key.node,
        endpoint: f.endpoint,
        created: f.created,
        last_active: f.last_active,
        idle_deadline: f.idle_deadline(),
        to_endpoint: f.to_endpoint,
        to_client: f.to_client,
        responses_left: f.responses_left,
    }
}

/// The endpoint at `addr` of `entry` if a flow on it may stay there ([`keeps_flows`] under
/// the policy that applies: `Cluster` for traffic from the node itself): one rule for the
/// sweep and for flows adopted from a previous process.
pub(super) fn kept_endpoint(
    entry: &ServiceEntry,
    from_node: bool,
    addr: SocketAddr,
) -> Option<EndpointId> {
    let policy = if from_node {
        TrafficPolicy::Cluster
    } else {
        entry.port.traffic_policy
    };
    entry
        .endpoint_by_addr(addr)
        .filter(|&eid| keeps_flows(policy, &entry.endpoint(eid).endpoint))
}
