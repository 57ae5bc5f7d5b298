//! The new process's side of `sluice ctl upgrade` and of a restart through systemd's fd
//! store ([`Successor`]): what `main` inherited ([`handover::Start`]), taken by name while
//! the daemon starts; "ready" once everything is open but nothing accepts; the UDP flows
//! until "go" ([`adopt_flows`]); then "serving", and "done" waited for off the loop, with
//! the old process's final counter totals ([`super::carried`]) before the HTTP listeners
//! accept. Any error before "ready" is sent to the old process as "failed" with the
//! error's text. The old process's side is [`super::upgrade`].

use super::carried;
use super::upgrade::store;
use crate::dataplane::ListenerKey;
use crate::handover::flows::ReceivedFlow;
use crate::handover::inherit::Session;
use crate::handover::state::Counters;
use crate::handover::{self, CarriedState, Inherited, SocketKind, SocketName};
use crate::model::Protocol;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

/// Gives each worker the UDP flows of the old process's worker of the same index (before
/// the workers read anything: the plane is paused until "go" was answered).
pub(super) fn adopt_flows(plane: &mut crate::dataplane::Dataplane, flows: Vec<ReceivedFlow>) {
    if flows.is_empty() {
        return;
    }
    tracing::info!(
        flows = flows.len(),
        "UDP flows received from the previous process"
    );
    let mut per_worker: std::collections::BTreeMap<u32, Vec<_>> = Default::default();
    for f in flows {
        per_worker
            .entry(f.worker)
            .or_default()
            .push((f.flow, f.socket));
    }
    for (worker, flows) in per_worker {
        plane.adopt_flows(worker as usize, flows);
    }
}

/// What this process inherited at start, as the daemon uses it while it starts.
#[derive(Debug, Default)]
pub struct Successor {
    /// The channel to the old process (`ctl upgrade`), until "ready".
    session: Option<Session>,
    sockets: Inherited,
    state: Option<CarriedState>,
    /// True once the HTTP listeners may accept (at once, but after `ctl upgrade`).
    http_open: Option<tokio::sync::watch::Sender<bool>>,
}

impl Successor {
    /// Sorts out what `main` inherited ([`handover::inherit::from_env`]).
    pub fn new(start: handover::Start) -> Successor {
        match start {
            handover::Start::Fresh => Successor::default(),
            handover::Start::Upgrade {
                session,
                sockets,
                state,
            } => {
                tracing::info!(
                    old_pid = session.predecessor().pid,
                    old_version = %session.predecessor().version,
                    sockets = sockets.len(),
                    "taking over from the running sluice"
                );
                let (state, warning) = CarriedState::from_json(state);
                if let Some(w) = warning {
                    tracing::warn!("{w}");
                }
                Successor {
                    session: Some(session),
                    sockets,
                    state: Some(state),
                    http_open: Some(tokio::sync::watch::Sender::new(false)),
                }
            }
            handover::Start::FdStore { sockets, rejected } => {
                for r in &rejected {
                    tracing::warn!(name = %r.name, reason = %r.reason, "not using a socket from systemd's fd store");
                }
                tracing::info!(
                    sockets = sockets.len(),
                    "restarting on the listening sockets of systemd's fd store"
                );
                Successor {
                    session: None,
                    sockets,
                    state: None,
                    http_open: None,
                }
            }
        }
    }

    /// Resolves when the HTTP listeners (metrics, health) may accept: at once, but after
    /// `ctl upgrade` once the old process said "done" (with its final counters) or the
    /// wait for it ended.
    pub fn http_start(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut open = self.http_open.as_ref().map(|s| s.subscribe());
        async move {
            if let Some(open) = open.as_mut() {
                let _ = open.wait_for(|o| *o).await;
            }
        }
    }

    /// Started by `ctl upgrade`: the workers must not accept before "go".
    pub fn is_upgrade(&self) -> bool {
        self.session.is_some()
    }

    /// The previous process's number of workers (socket *i* of a group is worker *i*).
    pub fn workers(&self) -> Option<usize> {
        self.sockets.workers()
    }

    /// The control socket, if passed.
    pub fn take_control(&mut self) -> Option<OwnedFd> {
        self.sockets.take(&SocketName::Control)
    }

    /// A control-plane listener of `kind` for the configured address (a configured port 0
    /// takes the one passed for that IP).
    pub fn take_listener(&mut self, kind: SocketKind, configured: SocketAddr) -> Option<OwnedFd> {
        let name = self.sockets.names().copied().find(|n| match n {
            SocketName::Bound { kind: k, addr, .. } => {
                *k == kind
                    && (*addr == configured
                        || (configured.port() == 0 && addr.ip() == configured.ip()))
            }
            SocketName::Control => false,
        })?;
        self.sockets.take(&name)
    }

    /// Every listener of `kind` (healthCheckNodePorts), by address.
    pub fn take_all(&mut self, kind: SocketKind) -> Vec<(SocketAddr, OwnedFd)> {
        let names: Vec<SocketName> = self
            .sockets
            .names()
            .filter(|n| n.kind() == Some(kind))
            .copied()
            .collect();
        names
            .into_iter()
            .filter_map(|n| Some((n.addr()?, self.sockets.take(&n)?)))
            .collect()
    }

    /// Every complete NodePort group (TCP and UDP), by listener key, socket *i* being
    /// worker *i*'s.
    pub fn node_port_groups(&mut self) -> HashMap<ListenerKey, Vec<OwnedFd>> {
        let groups: std::collections::BTreeSet<(SocketKind, SocketAddr)> = self
            .sockets
            .names()
            .filter_map(|n| match n.kind()? {
                k @ (SocketKind::Tcp | SocketKind::Udp) => Some((k, n.addr()?)),
                _ => None,
            })
            .collect();
        let mut out = HashMap::new();
        for (kind, addr) in groups {
            let protocol = match kind {
                SocketKind::Udp => Protocol::Udp,
                _ => Protocol::Tcp,
            };
            if let Some(fds) = self.sockets.take_group(kind, addr) {
                out.insert(ListenerKey { addr, protocol }, fds);
            }
        }
        out
    }

    /// The carried state, once.
    pub fn take_state(&mut self) -> Option<CarriedState> {
        self.state.take()
    }

    /// Closes what nobody took (logged).
    pub fn release_rest(&mut self) {
        let rest = std::mem::take(&mut self.sockets).into_rest();
        for (name, _fd) in rest {
            tracing::info!(socket = %name, "inherited socket not used: closed");
        }
    }

    /// Tells the old process this one cannot serve, and why.
    pub fn failed(&mut self, error: &str) {
        if let Some(mut s) = self.session.take() {
            s.failed(error);
        }
    }

    /// "Ready", then takes the UDP flows until "go" (blocking, bounded by the step
    /// timeout); `workers`: this process's (the old one's) number of workers.
    pub fn ready(&mut self, workers: usize) -> Result<Vec<ReceivedFlow>, handover::InheritError> {
        let Some(s) = self.session.as_mut() else {
            return Ok(Vec::new());
        };
        let flows = s.ready(workers)?;
        if let Some(e) = injected_failure_after_flows(flows.len()) {
            return Err(e);
        }
        Ok(flows)
    }

    /// After the workers accept: "serving", then waits for "done" off the loop; READY=1
    /// to systemd once done (this process is the main one by then).
    /// `fd_store`: the sockets to put in systemd's fd store once this process is the main
    /// one. The old process's final counters (with "done") replace the offer's in
    /// `metrics`' snapshot and carried totals; then the HTTP listeners accept.
    pub fn serving(
        &mut self,
        summary: String,
        fd_store: Vec<(SocketName, OwnedFd)>,
        metrics: &super::metrics::MetricsInputs,
    ) {
        let Some(session) = self.session.take() else {
            return;
        };
        let http_open = self.http_open.take();
        let (publisher, process) = (metrics.publisher.clone(), metrics.carried.clone());
        tokio::task::spawn_blocking(move || match session.serving() {
            Ok(counters) => {
                if let Some(c) = counters {
                    match serde_json::from_value::<Counters>(c) {
                        Ok(c) => {
                            carried::apply(&publisher.current(), &c, &process);
                            tracing::info!("final counter totals taken from the previous process");
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the previous process's final counters do not parse: keeping those of its offer")
                        }
                    }
                }
                if let Some(open) = http_open {
                    open.send_replace(true);
                }
                super::socket::claim_adopted_control_socket();
                tracing::info!("the old process handed over: this one is the daemon");
                super::notify::Notifier::from_env().ready(&summary);
                store(&fd_store);
            }
            Err(e) => {
                if let Some(open) = http_open {
                    open.send_replace(true);
                }
                super::socket::claim_adopted_control_socket();
                tracing::warn!(error = %e, "hand-over after go; serving on")
            }
        });
    }
}

/// Test builds only: when `SLUICE_TEST_FAIL_AFTER_FLOWS` names a file that exists, a new
/// process fails right after it received the UDP flows (and "go"), before it reads
/// anything, so that tests can show the old process's flows survive that rollback.
fn injected_failure_after_flows(flows: usize) -> Option<handover::InheritError> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let path = std::env::var_os("SLUICE_TEST_FAIL_AFTER_FLOWS")?;
    std::path::Path::new(&path)
        .exists()
        .then(|| handover::InheritError::Protocol {
            step: handover::Step::Ready,
            detail: format!("test: failing after {flows} UDP flows"),
        })
}
