//! The IO side of handing UDP flows to a new process (`handover::flows`,
//! `flow::carry`): pausing the worker's UDP reading while its flows are described and their
//! upstream sockets duplicated, reading again after a rollback, and adopting flows (with
//! their sockets) in the new process before it reads anything.
//!
//! While paused, nothing is read from the NodePort sockets or the upstream sockets and the
//! sweep does not run (no flow changes under the export); datagrams wait in the sockets'
//! queues. The ready lists keep what the driver reports; on resume every UDP NodePort
//! socket and every flow is put on them, as a readiness edge may have passed meanwhile.

use super::{Context, NodePortSockets, UdpPlane};
use crate::dataplane::driver::Driver;
use crate::dataplane::flow::{FlowId, NotAdopted};
use crate::handover::flows::CarriedFlow;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

impl UdpPlane {
    /// Stops reading (see the module documentation).
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Reads again after [`Self::pause`]: every socket may hold datagrams. `listeners`: the
    /// worker's open UDP NodePort sockets.
    pub fn resume(&mut self, listeners: impl IntoIterator<Item = u32>) {
        if !self.paused {
            return;
        }
        self.paused = false;
        for l in listeners {
            self.nodeport_readable(l);
        }
        let ids: Vec<FlowId> = self.table.flows().map(|f| f.id).collect();
        for id in ids {
            if !self.ready_flows.contains(&id) {
                self.ready_flows.push_back(id);
            }
        }
    }

    /// The live flows of slots `from..` (at most `max`) with a duplicate of each one's
    /// upstream socket, and the slot to go on from. A flow whose socket cannot be
    /// duplicated (out of fds) is left out (it is not carried: its next datagram opens a
    /// new flow in the new process).
    pub fn carry_out(
        &self,
        now: Instant,
        from: usize,
        max: usize,
    ) -> (Vec<(CarriedFlow, OwnedFd)>, Option<usize>) {
        let (flows, next) = self.table.carry_out(now, from, max);
        let mut out = Vec::with_capacity(flows.len());
        for (id, c) in flows {
            let Some(Some(fd)) = self.sockets.get(id.index()) else {
                continue;
            };
            match fd.as_fd().try_clone_to_owned() {
                Ok(dup) => out.push((c, dup)),
                Err(e) => {
                    tracing::warn!(worker = self.worker, client = %c.client, error = %e,
                        "cannot duplicate a UDP flow's upstream socket: not carried");
                }
            }
        }
        (out, next)
    }

    /// Takes in flows of the old process with their upstream sockets; `listener_of` finds
    /// the worker's NodePort socket by its address. What cannot be adopted is closed.
    /// Returns how many were adopted and, per reason, how many not.
    pub fn adopt<D: Driver, L: NodePortSockets + ?Sized>(
        &mut self,
        cx: &mut Context<'_, D, L>,
        flows: Vec<(CarriedFlow, OwnedFd)>,
        listener_of: impl Fn(SocketAddr) -> Option<u32>,
    ) -> io::Result<(usize, HashMap<NotAdopted, usize>)> {
        let mut adopted = 0;
        let mut refused: HashMap<NotAdopted, usize> = HashMap::new();
        for (c, fd) in flows {
            let result = listener_of(c.bound)
                .ok_or(NotAdopted::NoListener)
                .and_then(|l| self.table.adopt(cx.now, cx.snapshot, l, &c));
            let id = match result {
                Ok(id) => id,
                Err(why) => {
                    *refused.entry(why).or_default() += 1;
                    cx.to_close.push(fd);
                    continue;
                }
            };
            cx.driver.watch_flow(id.token(), fd.as_fd())?;
            let i = id.index();
            if self.sockets.len() <= i {
                self.sockets.resize_with(i + 1, || None);
            }
            self.sockets[i] = Some(fd);
            // Replies may have arrived while no process read them.
            self.ready_flows.push_back(id);
            adopted += 1;
        }
        self.stats.flows.active.set(self.table.len() as u64);
        Ok((adopted, refused))
    }
}
