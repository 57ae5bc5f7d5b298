//! The control plane's view of the data plane: the few calls a reload, a drain and the
//! watchdog make, in one place, so the rest of `control` does not depend on how the data
//! plane spells them.
//!
//! It only forwards to [`Dataplane`]; it owns no sockets of its own.

use crate::dataplane::{
    Aborter, Dataplane, DataplaneMonitor, DrainReport, ListenerKey, ListenerPlan, Listeners,
    StartError,
};
use crate::model::Settings;
use crate::publish::Publisher;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// The running data plane, as the control plane drives it.
pub struct Plane {
    dp: Dataplane,
}

/// Listeners opened for a reload, not yet handed to workers.
pub type Plan = ListenerPlan;

/// A cheap, `Send` handle to read worker heartbeats and loop stats from other threads.
pub type Monitor = DataplaneMonitor;

impl Plane {
    /// Starts the workers with the listeners `keys` (all of them, or an error).
    pub fn start(
        settings: &Settings,
        keys: &[ListenerKey],
        publisher: &Publisher,
    ) -> Result<Plane, StartError> {
        Ok(Plane {
            dp: Dataplane::start(settings, keys, publisher)?,
        })
    }

    /// Opens the `wanted` listeners that are not open yet (with `backlog`); nothing changes
    /// for the workers until [`commit`](Self::commit). An error (a required listener)
    /// means nothing changed; optional ones that failed are in [`Plan::failed`].
    pub fn prepare(&self, backlog: u32, wanted: &Listeners) -> Result<Plan, StartError> {
        self.dp.prepare_listeners(backlog, wanted)
    }

    /// After publishing: hands new listeners to the workers and closes removed ones.
    pub fn commit(&mut self, plan: Plan) {
        self.dp.commit_listeners(plan)
    }

    /// Steers the connections of these listeners to workers by client IP (affinity).
    pub fn steer_client_ips(&mut self, keys: &[ListenerKey]) {
        self.dp.steer_client_ips(keys)
    }

    /// Stops accepting, lets live connections finish until `timeout`, resets the rest.
    pub fn drain(self, timeout: Duration) -> io::Result<DrainReport> {
        self.dp.drain(timeout)
    }

    /// A handle that resets every connection and closes every socket of the workers, even
    /// during [`drain`](Self::drain): for a process that exits at once (second signal).
    pub fn aborter(&self) -> Aborter {
        self.dp.aborter()
    }

    pub fn monitor(&self) -> Monitor {
        self.dp.monitor()
    }

    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.dp.listen_addrs()
    }
}
