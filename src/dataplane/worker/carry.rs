//! A worker's part of handing its UDP flows to a new process (`handover::flows`): the old
//! process's worker stops reading UDP, describes its flows in batches with duplicates of
//! their upstream sockets, and reads again if the upgrade is rolled back; the new process's
//! worker adopts the flows of the worker of the same index before it reads anything (the
//! command arrives right after its inherited listeners, held until "go").

use super::*;
use crate::handover::flows::CarriedFlow;

/// What the process asks of a worker about its UDP flows across an upgrade.
#[derive(Debug)]
pub enum FlowCommand {
    /// Stop reading UDP (NodePort and upstream sockets); told on `done` once stopped.
    Pause { done: mpsc::Sender<usize> },
    /// Read again (a rolled-back upgrade).
    Resume,
    /// The flows of slots `from..`, at most `max`, with duplicates of their upstream
    /// sockets, and the slot to go on from; answered on `done`.
    Export {
        from: usize,
        max: usize,
        done: mpsc::Sender<ExportedFlows>,
    },
    /// Adopt these flows of the old process's worker of the same index.
    Adopt(Vec<(CarriedFlow, OwnedFd)>),
}

/// One batch of a worker's flows (see [`FlowCommand::Export`]).
#[derive(Debug)]
pub struct ExportedFlows {
    pub flows: Vec<(CarriedFlow, OwnedFd)>,
    pub next: Option<usize>,
}

impl<D: Driver> Worker<D> {
    pub(super) fn on_flow_command(&mut self, command: FlowCommand) -> io::Result<()> {
        match command {
            FlowCommand::Pause { done } => {
                self.udp.pause();
                let _ = done.send(self.index);
            }
            FlowCommand::Resume => {
                let udp: Vec<u32> = self.udp_listener_indices().collect();
                self.udp.resume(udp);
            }
            FlowCommand::Export { from, max, done } => {
                let (flows, next) = self.udp.carry_out(self.now, from, max);
                let _ = done.send(ExportedFlows { flows, next });
            }
            FlowCommand::Adopt(flows) => {
                let offered = flows.len();
                let listeners: Vec<(SocketAddr, u32)> = self
                    .udp_listener_indices()
                    .map(|i| (self.listeners[i as usize].key.addr, i))
                    .collect();
                let snapshot = Arc::clone(self.reader.load());
                let (adopted, refused) = self.with_udp(&snapshot, |udp, cx| {
                    udp.adopt(cx, flows, |bound| {
                        listeners.iter().find(|(a, _)| *a == bound).map(|&(_, i)| i)
                    })
                })?;
                let refused: Vec<String> = refused
                    .iter()
                    .map(|(why, n)| format!("{}: {n}", why.as_str()))
                    .collect();
                tracing::info!(
                    worker = self.index,
                    offered,
                    adopted,
                    not_adopted = ?refused,
                    "UDP flows taken over from the previous process"
                );
            }
        }
        Ok(())
    }

    /// The slots of the open UDP NodePort sockets.
    fn udp_listener_indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| l.key.protocol == Protocol::Udp && l.socket.is_some())
            .map(|(i, _)| i as u32)
    }
}
