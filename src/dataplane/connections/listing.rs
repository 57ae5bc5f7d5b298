//! The live connections as `sluice ctl flows` lists them: a read-only walk of the slab
//! (see `dataplane::live`), run by the worker between two turns of its loop.

use super::ConnTable;
use crate::model::ServicePortKey;
use std::net::SocketAddr;
use std::time::Instant;

/// One live connection, borrowed from the table.
pub struct ConnInfo<'a, R> {
    /// The Service port's stable id.
    pub service: u64,
    pub service_key: &'a ServicePortKey,
    pub client: SocketAddr,
    /// The listener's own address (a wildcard one says `0.0.0.0` or `::`).
    pub listener: SocketAddr,
    /// The endpoint chosen, once there is one.
    pub endpoint: Option<SocketAddr>,
    pub accepted: Instant,
    /// When bytes last moved either way.
    pub last_activity: Instant,
    /// Bytes sent to the endpoint and to the client.
    pub to_endpoint: u64,
    pub to_client: u64,
    pub resources: &'a R,
}

impl<R> ConnTable<R> {
    /// Calls `f` for every live connection (connecting and held ones included), in slot
    /// order.
    pub fn each_live(&self, mut f: impl FnMut(ConnInfo<'_, R>)) {
        for slot in &self.slots {
            let Some(live) = slot.live.as_ref() else {
                continue;
            };
            let entry = self.service_of(live.pin, live.service);
            f(ConnInfo {
                service: entry.stable_id(),
                service_key: &entry.port.key,
                client: live.client_addr,
                listener: live.listener.addr,
                endpoint: live.endpoint.map(|e| entry.endpoint(e).endpoint.addr),
                accepted: live.opened_at,
                last_activity: live.conn.last_activity(),
                to_endpoint: live.moved[0],
                to_client: live.moved[1],
                resources: &live.resources,
            });
        }
    }
}
