//! A seeded simulation of one worker's flow table on simulated time: many clients sending,
//! pods replying (or refusing), reloads that remove, add, terminate and restore endpoints or
//! delete the Service, upstream sockets that fail to open, ticks. A fake driver keeps the
//! "sockets" the ops ask for and checks, after every step, what a user relies on:
//! - the driver's open sockets are exactly the table's live flows (every `Open` is closed
//!   once, nothing leaks, nothing is closed twice);
//! - a datagram is only ever sent to an endpoint that keeps flows in the current snapshot;
//! - the table never holds more than its cap, and refuses instead of evicting;
//! - no flow outlives its idle deadline by more than the sweep's lateness;
//! - a flow's endpoint never changes under it (a move is a new flow).
//!
//! Replayable: a failure prints its seed (`FLOW_SIM_SEED=… cargo test flow::simulation`).

use super::tests::{addr, model, udp_service, NODE};
use super::*;
use crate::dataplane::select::Picker;
use crate::model::{Conditions, Endpoint, Protocol, ServicePort};
use crate::table::usable::keeps_flows;
use crate::table::{RoutingSnapshot, StatsRegistry};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the fake driver knows about one open upstream socket.
struct Socket {
    endpoint: SocketAddr,
}

struct Sim {
    rng: Rng,
    reg: StatsRegistry,
    generation: u64,
    snapshot: RoutingSnapshot,
    table: FlowTable,
    picker: Picker,
    now: Instant,
    start: Instant,
    sockets: HashMap<FlowId, Socket>,
    /// Endpoint state: per pod, (present, serving).
    pods: Vec<(bool, bool)>,
    service_present: bool,
    max_flows: usize,
    refused: u64,
    sent: u64,
}

const PODS: u8 = 5;
const IDLE: Duration = Duration::from_secs(3);

impl Sim {
    fn new(seed: u64, max_flows: u32) -> Sim {
        let now = Instant::now();
        let mut reg = StatsRegistry::new(1);
        let pods = vec![(true, true); PODS as usize];
        let snapshot = RoutingSnapshot::build(&model(services(&pods, true)), 1, &mut reg);
        Sim {
            rng: Rng(seed | 1),
            reg,
            generation: 1,
            snapshot,
            table: FlowTable::new(now, 0, max_flows),
            picker: Picker::new(seed ^ 0x5555),
            now,
            start: now,
            sockets: HashMap::new(),
            pods,
            service_present: true,
            max_flows: max_flows as usize,
            refused: 0,
            sent: 0,
        }
    }

    fn reload(&mut self) {
        self.generation += 1;
        let services = services(&self.pods, self.service_present);
        self.snapshot = self
            .snapshot
            .rebuild(&model(services), self.generation, &mut self.reg);
    }

    /// Execute every op like a driver would; `refuse` makes sends fail with ECONNREFUSED
    /// (a pod that is gone answers with ICMP).
    fn run_ops(&mut self, open_fails: bool) {
        while let Some(op) = self.table.poll_op() {
            match op {
                FlowOp::Open { flow, endpoint, .. } => {
                    assert!(!self.sockets.contains_key(&flow), "{flow:?} opened twice");
                    if open_fails {
                        self.table.handle_open_failed(flow, OpenFailure::Ports);
                    } else {
                        self.sockets.insert(flow, Socket { endpoint });
                    }
                }
                FlowOp::SendUpstream { flow, .. } => {
                    let socket = self.sockets.get(&flow).expect("send on an open socket");
                    let kept = self.kept(socket.endpoint);
                    assert!(kept, "sent to {} which keeps no flows", socket.endpoint);
                    let view = self.table.flow(flow).expect("a live flow");
                    assert_eq!(
                        view.endpoint, socket.endpoint,
                        "endpoint changed under a flow"
                    );
                    self.sent += 1;
                }
                FlowOp::SendReply { to, from, .. } => {
                    assert_eq!(from, addr(NODE));
                    assert_eq!(to.ip(), addr("127.0.0.9:1").ip());
                }
                FlowOp::Close { flow, .. } => {
                    // An Open that failed has no socket.
                    self.sockets.remove(&flow);
                }
                FlowOp::Drop { reason, .. } => {
                    if reason == DropReason::TableFull {
                        self.refused += 1;
                    }
                }
            }
        }
    }

    fn kept(&self, endpoint: SocketAddr) -> bool {
        let Some(sid) = self
            .snapshot
            .lookup(Protocol::Udp, addr(NODE))
            .map(|r| r.service)
        else {
            return false;
        };
        let entry = self.snapshot.service(sid);
        entry
            .endpoint_by_addr(endpoint)
            .is_some_and(|e| keeps_flows(entry.port.traffic_policy, &entry.endpoint(e).endpoint))
    }

    fn check(&self) {
        self.table.verify().unwrap();
        assert!(self.table.len() <= self.max_flows);
        let live: Vec<FlowId> = self.table.flows().map(|f| f.id).collect();
        assert_eq!(
            live.len(),
            self.sockets.len(),
            "driver sockets vs live flows"
        );
        for id in &live {
            assert!(self.sockets.contains_key(id), "{id:?} has no socket");
        }
        let late = SWEEP_PERIOD + TICK * 2;
        for f in self.table.flows() {
            assert!(
                self.now <= f.idle_deadline + late,
                "flow idle since {:?} still live at {:?}",
                f.last_active - self.start,
                self.now - self.start
            );
        }
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..=54 => {
                let port = 5000 + self.rng.below(300) as u16;
                let client = SocketAddr::from(([127, 0, 0, 9], port));
                let d = ClientDatagram {
                    listener: 0,
                    bound: addr(NODE),
                    client,
                    node: addr(NODE),
                    len: 1 + self.rng.below(1400) as usize,
                    truncated: self.rng.below(200) == 0,
                };
                self.table
                    .handle_client_datagram(self.now, &self.snapshot, &mut self.picker, d);
                let fails = self.rng.below(50) == 0;
                self.run_ops(fails);
            }
            55..=74 => {
                // A reply on a random open socket (or a refusal from a pod that left).
                if self.sockets.is_empty() {
                    return;
                }
                let i = self.rng.below(self.sockets.len() as u64) as usize;
                let (&flow, socket) = self.sockets.iter().nth(i).expect("in range");
                if self.kept(socket.endpoint) {
                    self.table.handle_reply(self.now, flow, 10, false);
                } else {
                    self.table
                        .handle_upstream_error(flow, UpstreamError::Refused);
                }
                self.run_ops(false);
            }
            75..=92 => {
                self.now += TICK;
                self.table.handle_tick(self.now, &self.snapshot);
                self.run_ops(false);
            }
            _ => {
                let pod = self.rng.below(u64::from(PODS)) as usize;
                match self.rng.below(5) {
                    0 => self.pods[pod].0 = !self.pods[pod].0,
                    1 => self.pods[pod].1 = !self.pods[pod].1,
                    2 if self.rng.below(4) == 0 => self.service_present = !self.service_present,
                    _ => self.pods[pod] = (true, true),
                }
                self.reload();
            }
        }
        self.check();
    }
}

fn services(pods: &[(bool, bool)], present: bool) -> Vec<ServicePort> {
    if !present {
        return Vec::new();
    }
    let endpoints = pods
        .iter()
        .enumerate()
        .filter(|(_, (present, _))| *present)
        .map(|(i, &(_, serving))| {
            let mut e = Endpoint::new(SocketAddr::from(([10, 0, 0, i as u8 + 1], 53)));
            if !serving {
                e.conditions = Conditions {
                    ready: false,
                    serving: false,
                    terminating: true,
                };
            }
            e
        })
        .collect();
    let mut s = udp_service(endpoints);
    s.timeouts.idle = IDLE;
    vec![s]
}

fn run(seed: u64, max_flows: u32, steps: usize) -> Sim {
    let mut sim = Sim::new(seed, max_flows);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for _ in 0..steps {
            sim.step();
        }
        sim.table.close_all(CloseReason::Shutdown);
        sim.run_ops(false);
        sim.check();
        assert!(sim.sockets.is_empty(), "close_all closes every socket");
        sim
    }));
    match outcome {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("flow simulation failed with seed {seed} (FLOW_SIM_SEED={seed})");
            std::panic::resume_unwind(e)
        }
    }
}

#[test]
fn seeded_flow_simulation_keeps_its_promises() {
    let seeds: Vec<u64> = match std::env::var("FLOW_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("FLOW_SIM_SEED is a number")],
        Err(_) => (1..=24).collect(),
    };
    let (mut sent, mut refused) = (0, 0);
    for seed in seeds {
        let cap = if seed % 3 == 0 { 40 } else { 4096 };
        let sim = run(seed, cap, 6_000);
        sent += sim.sent;
        refused += sim.refused;
        let t = sim.snapshot.services().map(|(_, s)| s.stats.totals());
        for t in t {
            assert!(t.closed <= t.opened);
        }
    }
    assert!(sent > 10_000, "the simulation moves datagrams: {sent}");
    assert!(refused > 0, "the small caps were reached: {refused}");
}
