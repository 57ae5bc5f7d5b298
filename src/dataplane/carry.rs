//! UDP flows across an upgrade, for the daemon (`handover::flows`): in the old process a
//! [`FlowExporter`] (usable from the hand-over's blocking thread) stops the workers' UDP
//! reading, collects their flows in batches with duplicates of the upstream sockets, and
//! lets them read again after a rollback; in the new process
//! [`Dataplane::adopt_flows`] gives each worker the flows of the old worker of the same
//! index, before it reads anything.
//!
//! Descriptors: a batch holds at most `max` duplicates (the hand-over sends each batch as
//! one SCM_RIGHTS message, at most 253), which are closed once sent, so the old process
//! needs at most that many descriptors beyond its own while exporting.

use super::worker::{ExportedFlows, FlowCommand};
use super::{sys, Command, Dataplane};
use crate::handover::flows::CarriedFlow;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Flows as they travel, each with (a duplicate of) its upstream socket.
pub type FlowsWithSockets = Vec<(CarriedFlow, OwnedFd)>;

/// The old process's handle on its workers' UDP flows during an upgrade.
#[derive(Debug, Clone)]
pub struct FlowExporter {
    workers: Vec<(mpsc::Sender<Command>, Arc<OwnedFd>)>,
}

impl FlowExporter {
    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    fn send(&self, index: usize, command: FlowCommand) {
        let (commands, wake) = &self.workers[index];
        let _ = commands.send(Command::Flows(command));
        let _ = sys::eventfd_signal(wake.as_fd());
    }

    /// Every worker stops reading UDP; returns once all have (an error after `wait`: a
    /// wedged worker; call [`Self::resume`] then).
    pub fn pause(&self, wait: Duration) -> io::Result<()> {
        let (done, answers) = mpsc::channel();
        for i in 0..self.workers.len() {
            self.send(i, FlowCommand::Pause { done: done.clone() });
        }
        drop(done);
        let deadline = crate::deadline::after(Instant::now(), wait);
        for _ in 0..self.workers.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            answers
                .recv_timeout(left)
                .map_err(|_| io::Error::other("a worker did not stop reading UDP in time"))?;
        }
        Ok(())
    }

    /// Every worker reads UDP again (a rolled-back upgrade).
    pub fn resume(&self) {
        for i in 0..self.workers.len() {
            self.send(i, FlowCommand::Resume);
        }
    }

    /// Worker `index`'s flows from slot `from`, at most `max`, with duplicates of their
    /// upstream sockets, and the slot to go on from (`None`: that was the last).
    pub fn batch(
        &self,
        index: usize,
        from: usize,
        max: usize,
        wait: Duration,
    ) -> io::Result<(FlowsWithSockets, Option<usize>)> {
        let (done, answer) = mpsc::channel();
        self.send(index, FlowCommand::Export { from, max, done });
        let ExportedFlows { flows, next, .. } = answer
            .recv_timeout(wait)
            .map_err(|_| io::Error::other(format!("worker {index} did not list its UDP flows")))?;
        Ok((flows, next))
    }
}

impl Dataplane {
    /// A handle on the workers' UDP flows for an upgrade (see [`FlowExporter`]).
    pub fn flow_exporter(&self) -> FlowExporter {
        FlowExporter {
            workers: self
                .workers
                .iter()
                .map(|w| (w.commands.clone(), Arc::clone(&w.wake)))
                .collect(),
        }
    }

    /// Gives worker `index` flows of the previous process's worker of the same index (held,
    /// like the listeners, until [`Self::resume`] when paused; after them in any case).
    /// Flows for a worker this process does not have are closed.
    pub fn adopt_flows(&mut self, index: usize, flows: FlowsWithSockets) {
        if flows.is_empty() {
            return;
        }
        if index >= self.workers.len() {
            tracing::warn!(
                worker = index,
                flows = flows.len(),
                "UDP flows of a worker this process does not have: closed"
            );
            return;
        }
        self.post(index, Command::Flows(FlowCommand::Adopt(flows)));
    }
}
