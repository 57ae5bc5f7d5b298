//! Flows across an upgrade (`handover::flows`): the old process's table describes each live
//! flow as a [`CarriedFlow`] ([`FlowTable::carry_out`]); the new process's table takes one
//! in ([`FlowTable::adopt`]) when its Service (same stable id on the same NodePort socket)
//! and its endpoint are still there and keep flows, there is room, and no flow has its key.
//! Adopting emits no op: the upstream socket came with the flow, and the driver watches it.
//!
//! Clock readings travel as durations (age, time since the last datagram), so an adopted
//! flow expires when it would have in the old process. Counters: an adopted flow counts as
//! opened in the new process's blocks (so `opened − closed`, what least-connections reads,
//! stays right when it closes there).

use super::table::{kept_endpoint, Checked, Flow, FlowKey, FlowTable, Traffic};
use super::FlowId;
use crate::handover::flows::CarriedFlow;
use crate::model::Protocol;
use crate::table::RoutingSnapshot;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a carried flow was not adopted (logged as a count per reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotAdopted {
    /// The table holds `max_flows` already.
    TableFull,
    /// A flow of that client and node address exists already.
    Duplicate,
    /// No Service on that NodePort, or another one than the flow's.
    ServiceGone,
    /// Its endpoint was removed, does not serve, or is marked down.
    EndpointLeft,
    /// The worker has no UDP NodePort socket of that address.
    NoListener,
}

impl NotAdopted {
    pub fn as_str(self) -> &'static str {
        match self {
            NotAdopted::TableFull => "table_full",
            NotAdopted::Duplicate => "duplicate",
            NotAdopted::ServiceGone => "service_gone",
            NotAdopted::EndpointLeft => "endpoint_left",
            NotAdopted::NoListener => "no_listener",
        }
    }
}

impl FlowTable {
    /// The live flows of slots `from..`, at most `max`, as they travel; and the slot to go
    /// on from (`None` when no slot is left).
    pub fn carry_out(
        &self,
        now: Instant,
        from: usize,
        max: usize,
    ) -> (Vec<(FlowId, CarriedFlow)>, Option<usize>) {
        let mut out = Vec::new();
        let slots = self.flows.slots();
        let mut i = from;
        while i < slots && out.len() < max {
            if let Some((id, f)) = self.flows.at(i) {
                out.push((id, carried(now, f)));
            }
            i += 1;
        }
        (out, (i < slots).then_some(i))
    }

    /// Takes in a flow of the old process that replies through NodePort socket `listener`
    /// (the driver found it by `c.bound`). Emits no op.
    pub fn adopt(
        &mut self,
        now: Instant,
        snapshot: &RoutingSnapshot,
        listener: u32,
        c: &CarriedFlow,
    ) -> Result<FlowId, NotAdopted> {
        if self.flows.len() >= self.max_flows {
            return Err(NotAdopted::TableFull);
        }
        let key = FlowKey {
            client: c.client,
            node: c.node,
        };
        if self.by_key.contains_key(&key) {
            return Err(NotAdopted::Duplicate);
        }
        let reached = snapshot
            .lookup(Protocol::Udp, c.bound)
            .ok_or(NotAdopted::ServiceGone)?;
        let sid = reached.service;
        let entry = snapshot.service(sid);
        if entry.stable_id() != c.service {
            return Err(NotAdopted::ServiceGone);
        }
        let eid = kept_endpoint(entry, c.from_node, c.endpoint).ok_or(NotAdopted::EndpointLeft)?;
        let endpoint = entry.endpoint(eid);
        let before = |ms: u64| now.checked_sub(Duration::from_millis(ms)).unwrap_or(now);
        let flow = Flow {
            key,
            listener,
            bound: c.bound,
            from_node: c.from_node,
            service: c.service,
            endpoint: c.endpoint,
            idle: Duration::from_millis(c.idle_ms),
            responses_left: c.responses_left.filter(|&n| n > 0),
            created: before(c.age_ms),
            last_active: before(c.quiet_ms),
            checked: Checked {
                generation: snapshot.generation(),
                service: sid,
            },
            replied: c.replied,
            resent: false,
            proxy: None,
            service_stats: Arc::clone(&entry.stats),
            endpoint_stats: Arc::clone(&endpoint.stats),
            to_endpoint: Traffic {
                datagrams: c.to_endpoint[0],
                bytes: c.to_endpoint[1],
            },
            to_client: Traffic {
                datagrams: c.to_client[0],
                bytes: c.to_client[1],
            },
        };
        flow.service_stats.worker(self.worker).opened.add(1);
        flow.endpoint_stats.worker(self.worker).opened.add(1);
        let id = self.flows.insert(flow);
        self.by_key.insert(key, id);
        self.check_invariants();
        Ok(id)
    }
}

fn carried(now: Instant, f: &Flow) -> CarriedFlow {
    let ms = |since: Instant| now.saturating_duration_since(since).as_millis() as u64;
    CarriedFlow {
        client: f.key.client,
        node: f.key.node,
        bound: f.bound,
        service: f.service,
        endpoint: f.endpoint,
        from_node: f.from_node,
        idle_ms: f.idle.as_millis() as u64,
        responses_left: f.responses_left,
        age_ms: ms(f.created),
        quiet_ms: ms(f.last_active),
        replied: f.replied,
        to_endpoint: [f.to_endpoint.datagrams, f.to_endpoint.bytes],
        to_client: [f.to_client.datagrams, f.to_client.bytes],
    }
}
