//! A worker's answer to `Command::Live` (`sluice ctl flows`, see `dataplane::live`): its
//! UDP flows and TCP connections, read between two turns of its loop, when its tables are
//! consistent. At most the query's limit of entries is built (the rest only counted), so
//! the answer's size is bounded whatever the tables hold.

use super::Worker;
use crate::dataplane::driver::Driver;
use crate::dataplane::live::{LiveEntry, LiveQuery, LiveTraffic, WorkerLive};
use crate::model::Protocol;
use socket2::SockRef;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

impl<D: Driver> Worker<D> {
    pub(super) fn live(&mut self, query: &LiveQuery) -> WorkerLive {
        let now = Instant::now();
        let mut out = WorkerLive::default();
        // Flows name their Service port by its stable id: its name in the current snapshot
        // (a flow of a Service deleted since ends at its next datagram or sweep).
        let snapshot = std::sync::Arc::clone(self.reader.load());
        let names: HashMap<u64, String> = snapshot
            .services()
            .map(|(_, e)| (e.stable_id(), e.port.key.to_string()))
            .collect();
        for f in self.udp.table().flows() {
            if !query.wants(f.service) {
                continue;
            }
            out.total += 1;
            if out.entries.len() >= query.limit {
                continue;
            }
            out.entries.push(LiveEntry {
                protocol: Protocol::Udp,
                service: f.service,
                service_name: names
                    .get(&f.service)
                    .cloned()
                    .unwrap_or_else(|| "(removed)".to_owned()),
                client: canonical(f.client),
                node: canonical(f.node),
                endpoint: Some(f.endpoint),
                age: now.saturating_duration_since(f.created),
                idle: now.saturating_duration_since(f.last_active),
                to_endpoint: LiveTraffic {
                    bytes: f.to_endpoint.bytes,
                    datagrams: Some(f.to_endpoint.datagrams),
                },
                to_client: LiveTraffic {
                    bytes: f.to_client.bytes,
                    datagrams: Some(f.to_client.datagrams),
                },
                worker: self.index,
            });
        }
        let worker = self.index;
        self.table.each_live(|c| {
            if !query.wants(c.service) {
                return;
            }
            out.total += 1;
            if out.entries.len() >= query.limit {
                return;
            }
            // A wildcard listener: the address the client reached is the socket's own.
            let node = if c.listener.ip().is_unspecified() {
                SockRef::from(&c.resources.client)
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .map(canonical)
                    .unwrap_or(c.listener)
            } else {
                c.listener
            };
            out.entries.push(LiveEntry {
                protocol: Protocol::Tcp,
                service: c.service,
                service_name: c.service_key.to_string(),
                client: canonical(c.client),
                node,
                endpoint: c.endpoint,
                age: now.saturating_duration_since(c.accepted),
                idle: now.saturating_duration_since(c.last_activity),
                to_endpoint: LiveTraffic {
                    bytes: c.to_endpoint,
                    datagrams: None,
                },
                to_client: LiveTraffic {
                    bytes: c.to_client,
                    datagrams: None,
                },
                worker,
            });
        });
        out
    }
}

/// An IPv4 address seen by a dual-stack socket as IPv4 (`::ffff:10.0.0.1` → `10.0.0.1`).
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}
