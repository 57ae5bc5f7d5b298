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
    /// Stops reading (see the module documentation). A driver that receives datagrams
    /// itself has the flows' receives cancelled (the worker cancels the NodePort sockets'
    /// and waits until none is left, see `ring.rs`).
    pub fn pause<D: Driver>(&mut self, driver: &mut D) -> io::Result<()> {
        if self.paused {
            return Ok(());
        }
        self.paused = true;
        if driver.receives_datagrams() {
            for f in self.table.flows() {
                if let Some(Some(_)) = self.sockets.get(f.id.index()) {
                    driver.unwatch_flow(f.id.token())?;
                }
            }
        }
        Ok(())
    }

    /// Paused, while the worker has the driver stop its receives.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Reads again after [`Self::pause`]: every socket may hold datagrams. `listeners`: the
    /// worker's open UDP NodePort sockets (it arms their receives itself when the driver
    /// receives datagrams; the flows' are armed here).
    pub fn resume<D: Driver>(
        &mut self,
        driver: &mut D,
        listeners: impl IntoIterator<Item = u32>,
    ) -> io::Result<()> {
        if !self.paused {
            return Ok(());
        }
        self.paused = false;
        if driver.receives_datagrams() {
            // A receive's first try reads what is queued: no ready list needed.
            for f in self.table.flows() {
                if let Some(Some(fd)) = self.sockets.get(f.id.index()) {
                    driver.watch_flow(f.id.token(), fd.as_fd())?;
                }
            }
            return Ok(());
        }
        for l in listeners {
            self.nodeport_readable(l);
        }
        let ids: Vec<FlowId> = self.table.flows().map(|f| f.id).collect();
        for id in ids {
            if !self.ready_flows.contains(&id) {
                self.ready_flows.push_back(id);
            }
        }
        Ok(())
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
            // Replies may have arrived while no process read them (a receive of the
            // driver's own reads them when armed).
            if !cx.driver.receives_datagrams() {
                self.ready_flows.push_back(id);
            }
            adopted += 1;
        }
        self.stats.flows.active.set(self.table.len() as u64);
        Ok((adopted, refused))
    }
}
