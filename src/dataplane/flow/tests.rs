//! Unit tests of the flow table: each reads like a trace of datagrams in and ops out.

use super::*;
use crate::dataplane::select::Picker;
use crate::model::*;
use crate::table::{RoutingSnapshot, StatsRegistry};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub(super) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub(super) const NODE: &str = "127.0.0.1:31000";

/// A UDP Service port on NodePort 31000 with these endpoints.
pub(super) fn udp_service(endpoints: Vec<Endpoint>) -> ServicePort {
    ServicePort {
        key: ServicePortKey {
            service: ServiceName {
                namespace: "t".into(),
                name: "dns".into(),
            },
            port_name: String::new(),
            protocol: Protocol::Udp,
        },
        port: 53,
        node_port: 31000,
        node_port_allocated: false,
        target_port: 53,
        endpoints,
        policy: Policy::default(),
        timeouts: Timeouts {
            idle: DEFAULT_UDP_IDLE_TIMEOUT,
            ..Timeouts::default()
        },
        connect_retries: 0,
        maglev_table_size: 1009,
        forwarding: Forwarding::None,
        udp_responses: None,
        traffic_policy: Default::default(),
        families: Default::default(),
        health: Default::default(),
        addresses: Default::default(),
        meta: None,
    }
}

pub(super) fn pods(n: u8) -> Vec<Endpoint> {
    (0..n)
        .map(|i| Endpoint::new(SocketAddr::from(([10, 0, 0, i + 1], 53))))
        .collect()
}

/// A world of one worker: a snapshot generation counter, stats, a table and a picker.
pub(super) struct World {
    pub reg: StatsRegistry,
    pub generation: u64,
    pub snapshot: RoutingSnapshot,
    pub table: FlowTable,
    pub picker: Picker,
    pub now: Instant,
}

impl World {
    pub fn new(services: Vec<ServicePort>, max_flows: u32) -> World {
        let now = Instant::now();
        let mut reg = StatsRegistry::new(1);
        let snapshot = RoutingSnapshot::build(&model(services), 1, &mut reg);
        World {
            reg,
            generation: 1,
            snapshot,
            table: FlowTable::new(now, 0, max_flows),
            picker: Picker::new(7),
            now,
        }
    }

    pub fn reload(&mut self, services: Vec<ServicePort>) {
        self.generation += 1;
        self.snapshot = self
            .snapshot
            .rebuild(&model(services), self.generation, &mut self.reg);
    }

    pub fn datagram(&mut self, client: &str, len: usize) -> Vec<FlowOp> {
        self.datagram_from(addr(client), len)
    }

    pub fn datagram_from(&mut self, client: SocketAddr, len: usize) -> Vec<FlowOp> {
        let d = ClientDatagram {
            listener: 0,
            bound: addr(NODE),
            client,
            node: addr(NODE),
            len,
            truncated: false,
        };
        self.table
            .handle_client_datagram(self.now, &self.snapshot, &mut self.picker, d);
        self.drain()
    }

    pub fn reply(&mut self, flow: FlowId, len: usize) -> Vec<FlowOp> {
        self.table.handle_reply(self.now, flow, len, false);
        self.drain()
    }

    pub fn tick(&mut self, by: Duration) -> Vec<FlowOp> {
        self.now += by;
        self.table.handle_tick(self.now, &self.snapshot);
        self.drain()
    }

    pub fn drain(&mut self) -> Vec<FlowOp> {
        let ops = std::iter::from_fn(|| self.table.poll_op()).collect();
        self.table.verify().unwrap();
        ops
    }
}

pub(super) fn model(services: Vec<ServicePort>) -> Model {
    Model {
        settings: Settings::default(),
        services,
        primary_ips: Vec::new(),
    }
}

/// The flow and endpoint of the `Open` in `ops`.
pub(super) fn opened(ops: &[FlowOp]) -> Option<(FlowId, SocketAddr)> {
    ops.iter().find_map(|op| match op {
        FlowOp::Open { flow, endpoint, .. } => Some((*flow, *endpoint)),
        _ => None,
    })
}

#[test]
fn a_first_datagram_opens_a_flow_and_later_ones_reuse_it() {
    let mut w = World::new(vec![udp_service(pods(3))], 16);
    let ops = w.datagram("127.0.0.9:5000", 10);
    let (flow, endpoint) = opened(&ops).expect("an Open");
    assert_eq!(
        ops,
        vec![
            FlowOp::Open {
                flow,
                endpoint,
                source: Source::Node
            },
            FlowOp::SendUpstream { flow, proxy: None }
        ]
    );
    for _ in 0..5 {
        assert_eq!(
            w.datagram("127.0.0.9:5000", 10),
            vec![FlowOp::SendUpstream { flow, proxy: None }]
        );
    }
    let view = w.table.flow(flow).unwrap();
    assert_eq!(view.to_endpoint.datagrams, 6);
    assert_eq!(view.to_endpoint.bytes, 60);
    assert_eq!(
        w.reply(flow, 7),
        vec![FlowOp::SendReply {
            listener: 0,
            from: addr(NODE),
            to: addr("127.0.0.9:5000")
        }]
    );
    let t = w.snapshot.services().next().unwrap().1.stats.totals();
    assert_eq!(
        (t.opened, t.closed, t.bytes_to_backend, t.bytes_to_client),
        (1, 0, 60, 7)
    );
}

#[test]
fn maglev_picks_the_same_pod_on_every_worker_and_spreads_clients() {
    let mut a = World::new(vec![udp_service(pods(3))], 4096);
    let mut b = World::new(vec![udp_service(pods(3))], 4096);
    let mut seen = std::collections::HashMap::new();
    for port in 10_000..11_000u16 {
        let client = SocketAddr::from(([127, 0, 0, 9], port));
        let ea = opened(&a.datagram_from(client, 1)).unwrap().1;
        let eb = opened(&b.datagram_from(client, 1)).unwrap().1;
        assert_eq!(ea, eb, "two workers agree for {client}");
        *seen.entry(ea).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|&n| n > 200), "{seen:?}");
    assert_eq!(a.table.len(), 1000);
}

#[test]
fn a_removed_endpoint_moves_its_flow_on_the_next_datagram() {
    let mut w = World::new(vec![udp_service(pods(3))], 16);
    let (flow, endpoint) = opened(&w.datagram("127.0.0.9:5000", 1)).unwrap();
    let rest: Vec<Endpoint> = pods(3).into_iter().filter(|e| e.addr != endpoint).collect();
    w.reload(vec![udp_service(rest)]);
    let ops = w.datagram("127.0.0.9:5000", 1);
    assert_eq!(
        ops[0],
        FlowOp::Close {
            flow,
            reason: CloseReason::EndpointLeft
        }
    );
    let (moved, to) = opened(&ops).unwrap();
    assert_ne!(to, endpoint);
    assert_ne!(moved, flow);
    assert_eq!(
        ops.last(),
        Some(&FlowOp::SendUpstream {
            flow: moved,
            proxy: None
        })
    );
    assert_eq!(w.table.len(), 1);
    // A late reply on the old socket finds nothing.
    assert_eq!(
        w.reply(flow, 1),
        vec![FlowOp::Drop {
            reason: DropReason::StaleFlow,
            service: None
        }]
    );
}

#[test]
fn a_terminating_endpoint_that_serves_keeps_its_flows_and_one_that_stops_loses_them() {
    let mut w = World::new(vec![udp_service(pods(2))], 64);
    let (flow, endpoint) = opened(&w.datagram("127.0.0.9:5000", 1)).unwrap();
    let with = |serving: bool| -> Vec<Endpoint> {
        pods(2)
            .into_iter()
            .map(|mut e| {
                if e.addr == endpoint {
                    e.conditions = Conditions {
                        ready: false,
                        serving,
                        terminating: true,
                    };
                }
                e
            })
            .collect()
    };
    w.reload(vec![udp_service(with(true))]);
    assert_eq!(
        w.datagram("127.0.0.9:5000", 1),
        vec![FlowOp::SendUpstream { flow, proxy: None }],
        "terminating but serving: kept"
    );
    // New clients go to the ready one only.
    for port in 6000..6050u16 {
        let e = opened(&w.datagram_from(SocketAddr::from(([127, 0, 0, 9], port)), 1))
            .unwrap()
            .1;
        assert_ne!(e, endpoint);
    }
    w.reload(vec![udp_service(with(false))]);
    let ops = w.datagram("127.0.0.9:5000", 1);
    assert_eq!(
        ops[0],
        FlowOp::Close {
            flow,
            reason: CloseReason::EndpointLeft
        }
    );
    assert_ne!(opened(&ops).unwrap().1, endpoint);
}

#[test]
fn a_service_scaled_to_zero_and_back_recovers_with_one_datagram() {
    let mut w = World::new(vec![udp_service(pods(1))], 16);
    let (flow, _) = opened(&w.datagram("127.0.0.9:5000", 1)).unwrap();
    w.reload(vec![udp_service(vec![])]);
    let ops = w.datagram("127.0.0.9:5000", 1);
    assert_eq!(
        ops,
        vec![
            FlowOp::Close {
                flow,
                reason: CloseReason::EndpointLeft
            },
            FlowOp::Drop {
                reason: DropReason::NoEndpoint,
                service: w
                    .snapshot
                    .lookup(Protocol::Udp, addr(NODE))
                    .map(|r| r.service)
            }
        ]
    );
    assert!(w.table.is_empty());
    let back = vec![Endpoint::new(addr("10.0.0.7:53"))];
    w.reload(vec![udp_service(back)]);
    let ops = w.datagram("127.0.0.9:5000", 1);
    assert_eq!(opened(&ops).unwrap().1, addr("10.0.0.7:53"));
}

#[test]
fn udp_responses_closes_the_flow_after_the_nth_reply() {
    let mut svc = udp_service(pods(2));
    svc.udp_responses = Some(2);
    let mut w = World::new(vec![svc], 16);
    let (flow, _) = opened(&w.datagram("127.0.0.9:5000", 1)).unwrap();
    assert_eq!(w.reply(flow, 1).len(), 1);
    let ops = w.reply(flow, 1);
    assert_eq!(
        ops,
        vec![
            FlowOp::SendReply {
                listener: 0,
                from: addr(NODE),
                to: addr("127.0.0.9:5000")
            },
            FlowOp::Close {
                flow,
                reason: CloseReason::Responses
            }
        ]
    );
    assert!(w.table.is_empty());
    // The next query is a new flow.
    assert!(opened(&w.datagram("127.0.0.9:5000", 1)).is_some());
}

#[test]
fn an_idle_flow_is_swept_within_a_period_of_its_deadline_and_traffic_keeps_it() {
    let mut svc = udp_service(pods(1));
    svc.timeouts.idle = Duration::from_secs(5);
    let mut w = World::new(vec![svc], 16);
    let (quiet, _) = opened(&w.datagram("127.0.0.9:5000", 1)).unwrap();
    let (busy, _) = opened(&w.datagram("127.0.0.9:5001", 1)).unwrap();
    let mut closed_at = None;
    for step in 1..=80u32 {
        let ops = w.tick(TICK);
        if step % 10 == 0 {
            // One datagram a second each way keeps `busy`.
            if step % 20 == 0 {
                w.datagram("127.0.0.9:5001", 1);
            } else {
                w.reply(busy, 1);
            }
        }
        if ops.contains(&FlowOp::Close {
            flow: quiet,
            reason: CloseReason::Idle,
        }) {
            closed_at = Some(TICK * step);
        }
    }
    let at = closed_at.expect("the quiet flow expired");
    assert!(at >= Duration::from_secs(5), "not early: {at:?}");
    assert!(
        at <= Duration::from_secs(5) + SWEEP_PERIOD + TICK,
        "late: {at:?}"
    );
    assert!(w.table.flow(busy).is_some(), "traffic keeps a flow");
    assert_eq!(w.table.len(), 1);
    assert_eq!(w.table.next_tick(), Some(w.now + TICK));
}

#[test]
fn a_full_table_refuses_new_flows_and_never_evicts() {
    let mut w = World::new(vec![udp_service(pods(2))], 3);
    let ids: Vec<FlowId> = (0..3)
        .map(|i| {
            opened(&w.datagram_from(SocketAddr::from(([127, 0, 0, 9], 5000 + i)), 1))
                .unwrap()
                .0
        })
        .collect();
    let sid = w
        .snapshot
        .lookup(Protocol::Udp, addr(NODE))
        .map(|r| r.service);
    for port in 6000..7000u16 {
        assert_eq!(
            w.datagram_from(SocketAddr::from(([127, 0, 0, 9], port)), 1),
            vec![FlowOp::Drop {
                reason: DropReason::TableFull,
                service: sid
            }]
        );
    }
    for (i, id) in ids.iter().enumerate() {
        assert!(w.table.flow(*id).is_some(), "flow {i} kept");
        assert_eq!(
            w.datagram_from(SocketAddr::from(([127, 0, 0, 9], 5000 + i as u16)), 1),
            vec![FlowOp::SendUpstream {
                flow: *id,
                proxy: None
            }]
        );
    }
    assert_eq!(w.table.len(), 3);
}

#[test]
fn a_deleted_service_frees_its_flows_at_the_sweep() {
    let mut w = World::new(vec![udp_service(pods(2))], 16);
    for port in 5000..5010u16 {
        w.datagram_from(SocketAddr::from(([127, 0, 0, 9], port)), 1);
    }
    w.reload(vec![]);
    let ops = w.tick(SWEEP_PERIOD);
    assert_eq!(
        ops.iter()
            .filter(|op| matches!(
                op,
                FlowOp::Close {
                    reason: CloseReason::ServiceGone,
                    ..
                }
            ))
            .count(),
        10
    );
    assert!(w.table.is_empty());
    assert_eq!(
        w.datagram("127.0.0.9:5000", 1),
        vec![FlowOp::Drop {
            reason: DropReason::NoService,
            service: None
        }]
    );
}

#[test]
fn a_failed_open_drops_the_datagram_and_frees_the_slot() {
    let mut w = World::new(vec![udp_service(pods(1))], 16);
    let d = ClientDatagram {
        listener: 0,
        bound: addr(NODE),
        client: addr("127.0.0.9:5000"),
        node: addr(NODE),
        len: 1,
        truncated: false,
    };
    w.table
        .handle_client_datagram(w.now, &w.snapshot, &mut w.picker, d);
    let Some(FlowOp::Open { flow, .. }) = w.table.poll_op() else {
        panic!("an Open first");
    };
    w.table.handle_open_failed(flow, OpenFailure::Ports);
    let sid = w
        .snapshot
        .lookup(Protocol::Udp, addr(NODE))
        .map(|r| r.service);
    assert_eq!(
        w.drain(),
        vec![
            FlowOp::Close {
                flow,
                reason: CloseReason::OpenFailed(OpenFailure::Ports)
            },
            FlowOp::Drop {
                reason: DropReason::OpenFailed(OpenFailure::Ports),
                service: sid
            }
        ],
        "the queued SendUpstream is withdrawn"
    );
    assert!(w.table.is_empty());
}

#[test]
fn econnrefused_on_send_resends_that_datagram_once_and_counts_a_failure() {
    let mut w = World::new(vec![udp_service(pods(1))], 16);
    let (flow, endpoint) = opened(&w.datagram("127.0.0.9:5000", 1)).unwrap();
    w.table
        .handle_upstream_error(flow, UpstreamError::RefusedOnSend);
    assert_eq!(w.drain(), vec![FlowOp::SendUpstream { flow, proxy: None }]);
    w.table
        .handle_upstream_error(flow, UpstreamError::RefusedOnSend);
    let sid = w
        .snapshot
        .lookup(Protocol::Udp, addr(NODE))
        .map(|r| r.service);
    assert_eq!(
        w.drain(),
        vec![FlowOp::Drop {
            reason: DropReason::SendFailed,
            service: sid
        }]
    );
    // The next datagram goes out normally.
    assert_eq!(
        w.datagram("127.0.0.9:5000", 1),
        vec![FlowOp::SendUpstream { flow, proxy: None }]
    );
    let entry = w.snapshot.service(sid.unwrap());
    let eid = entry.endpoint_by_addr(endpoint).unwrap();
    let stats = std::sync::Arc::clone(&entry.endpoint(eid).stats);
    assert_eq!(stats.totals().connect_failed, 2);
    // A receive that reports it: counted, nothing else to do.
    w.table.handle_upstream_error(flow, UpstreamError::Refused);
    assert_eq!(w.drain(), vec![]);
    assert_eq!(stats.totals().connect_failed, 3);
}

#[test]
fn truncated_and_oversized_datagrams_are_dropped_and_named() {
    let mut svc = udp_service(pods(1));
    svc.forwarding = Forwarding::ProxyV2(ProxyV2Options::default());
    let mut w = World::new(vec![svc], 16);
    let sid = w
        .snapshot
        .lookup(Protocol::Udp, addr(NODE))
        .map(|r| r.service);
    let d = ClientDatagram {
        listener: 0,
        bound: addr(NODE),
        client: addr("127.0.0.9:5000"),
        node: addr(NODE),
        len: 100,
        truncated: true,
    };
    w.table
        .handle_client_datagram(w.now, &w.snapshot, &mut w.picker, d);
    assert_eq!(
        w.drain(),
        vec![FlowOp::Drop {
            reason: DropReason::Truncated,
            service: sid
        }]
    );
    // 28 header bytes + 65,480 > 65,507.
    assert_eq!(
        w.datagram("127.0.0.9:5000", 65_480),
        vec![FlowOp::Drop {
            reason: DropReason::TooLarge,
            service: sid
        }]
    );
    assert!(w.table.is_empty(), "no flow for a datagram that cannot go");
    let ops = w.datagram("127.0.0.9:5000", 65_479);
    let (flow, _) = opened(&ops).unwrap();
    assert_eq!(
        ops[1],
        FlowOp::SendUpstream {
            flow,
            proxy: Some(ProxyHeader {
                client: addr("127.0.0.9:5000"),
                node: addr(NODE),
                service: sid.unwrap()
            })
        }
    );
    w.table.handle_reply(w.now, flow, 10, true);
    assert_eq!(
        w.drain(),
        vec![FlowOp::Drop {
            reason: DropReason::Truncated,
            service: sid
        }]
    );
}

#[test]
fn client_ip_affinity_keeps_one_client_on_one_pod_across_ports() {
    let mut svc = udp_service(pods(4));
    svc.policy = Policy::ClientIp {
        timeout: Duration::from_secs(60),
        max_entries: 100,
    };
    let mut w = World::new(vec![svc], 64);
    let first = opened(&w.datagram("127.0.0.9:5000", 1)).unwrap().1;
    for port in 5001..5040u16 {
        let e = opened(&w.datagram_from(SocketAddr::from(([127, 0, 0, 9], port)), 1))
            .unwrap()
            .1;
        assert_eq!(e, first);
    }
}

#[test]
fn transparent_flows_leave_from_the_client_address() {
    let mut svc = udp_service(pods(1));
    svc.forwarding = Forwarding::Transparent;
    let mut w = World::new(vec![svc], 16);
    let ops = w.datagram("127.0.0.9:5000", 1);
    assert!(matches!(
        ops[0],
        FlowOp::Open {
            source: Source::Client(c),
            ..
        } if c == addr("127.0.0.9:5000")
    ));
}

#[test]
fn close_all_ends_every_flow() {
    let mut w = World::new(vec![udp_service(pods(2))], 16);
    for port in 5000..5005u16 {
        w.datagram_from(SocketAddr::from(([127, 0, 0, 9], port)), 1);
    }
    w.table.close_all(CloseReason::Shutdown);
    assert_eq!(w.drain().len(), 5);
    assert!(w.table.is_empty());
    let t = w.snapshot.services().next().unwrap().1.stats.totals();
    assert_eq!((t.opened, t.closed), (5, 5));
}

/// A flow replies through the NodePort socket (the driver's listener index) its client
/// used; when that socket closes, its flows end at once, the others stay, and a late reply
/// for a closed one is stale (never sent through whatever listener takes the index next).
#[test]
fn closing_a_listener_ends_its_flows_only() {
    let mut w = World::new(vec![udp_service(pods(2))], 16);
    let on = |listener: u32, port: u16| ClientDatagram {
        listener,
        bound: addr(NODE),
        client: SocketAddr::from(([127, 0, 0, 9], port)),
        node: addr(NODE),
        len: 1,
        truncated: false,
    };
    let mut flows = Vec::new();
    for (listener, port) in [(3, 5000), (3, 5001), (4, 5002)] {
        w.table
            .handle_client_datagram(w.now, &w.snapshot, &mut w.picker, on(listener, port));
        flows.push(opened(&w.drain()).unwrap().0);
    }
    w.table.close_listener(3);
    let ops = w.drain();
    assert_eq!(
        ops,
        vec![
            FlowOp::Close {
                flow: flows[0],
                reason: CloseReason::ListenerClosed
            },
            FlowOp::Close {
                flow: flows[1],
                reason: CloseReason::ListenerClosed
            },
        ]
    );
    assert_eq!(w.table.len(), 1);
    assert!(w.table.flow(flows[2]).is_some());
    assert_eq!(
        w.reply(flows[0], 10),
        vec![FlowOp::Drop {
            reason: DropReason::StaleFlow,
            service: None
        }]
    );
    assert!(matches!(
        w.reply(flows[2], 10)[..],
        [FlowOp::SendReply { listener: 4, .. }]
    ));
    // The sweep would not have ended them: the Service still serves the NodePort.
    w.table.close_listener(3);
    assert!(w.drain().is_empty());
}
