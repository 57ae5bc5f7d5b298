//! `sluice ctl upgrade`, SIGUSR2 and a restart through systemd's fd store, on the daemon's
//! side (docs/operations.md, "Hitless upgrade and restart"); the protocol and the process
//! mechanics are `handover`'s.
//!
//! **Old process** ([`Daemon::upgrade`], [`Daemon::hand_over`]): admit the request (one
//! upgrade at a time, a binary this daemon may run), collect the listening sockets by name
//! (the data plane's NodePort groups, the control socket, the metrics and health
//! listeners) and the state worth keeping (overrides, endpoints health holds down,
//! counter totals: [`super::carried`]), then run the blocking steps off the loop ([`stage`]: start the new binary, offer, wait for
//! ready, go, serving). On success the loop calls [`Daemon::hand_over`] — stop serving the
//! control socket and the HTTP listeners, forget the control socket file, name the new
//! main PID to systemd, send the final counter totals and "done", answer the client — and
//! then drains as on SIGTERM. On an error the new process was stopped and nothing changed
//! here.
//!
//! **New process**: `successor.rs` ([`Successor`], re-exported here).

use super::carried::{self, port_key};
use super::daemon::Daemon;
use super::protocol::{Response, UpgradeOutcome};
use crate::dataplane::{FlowExporter, ListenerKey};
use crate::handover::state::{Counters, EndpointHealth, EndpointOverride, PortKey};
use crate::handover::upgrade::UpgradeTicket;
use crate::handover::{
    self, CarriedState, SocketKind, SocketName, StartedAs, Timeouts, Upgrade, UpgradeError,
    UpgradeSlot,
};
use crate::model::{Protocol, ServicePortKey};
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub(super) use super::successor::{adopt_flows, Successor};

/// How long the old process waits for its metrics and health servers to stop before it
/// takes its final counter totals.
const HTTP_STOP_WAIT: Duration = Duration::from_secs(2);

/// Bounds of `ready_timeout_seconds`.
const READY_TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 1..=600;

/// The daemon's upgrade state.
#[derive(Debug, Default)]
pub struct Upgrades {
    slot: UpgradeSlot,
}

/// An upgrade that may go ahead: the slot is held until this (or what it became) drops.
#[derive(Debug)]
pub struct Admitted {
    pub ticket: UpgradeTicket,
    pub binary: PathBuf,
    pub started: StartedAs,
    /// Who asked (`ctl upgrade`, `SIGUSR2`), for the log.
    pub by: &'static str,
}

impl Upgrades {
    /// Whether an upgrade is under way (reloads and overrides wait for its outcome: what
    /// they change would not reach the new process).
    pub fn in_progress(&self) -> bool {
        self.slot.busy()
    }

    /// Admits an upgrade asked `by` someone, or answers why not: one is under way
    /// (`in-progress`), the binary is not one this daemon may run, or it cannot know which
    /// binary it was started from (`invalid`).
    pub fn admit(&self, by: &'static str, binary: Option<&str>) -> Result<Admitted, Response> {
        let ticket = self
            .slot
            .try_begin(by)
            .map_err(|busy| Response::error("in-progress", busy.to_string()))?;
        let Some(started) = StartedAs::remembered() else {
            return Err(Response::error(
                "invalid",
                "this process does not know the binary it was started from (not `sluice run`)",
            ));
        };
        let binary = binary
            .map(PathBuf::from)
            .unwrap_or_else(|| started.binary.clone());
        handover::process::check_binary(&binary)
            .map_err(|e| Response::error("invalid", format!("cannot upgrade to {e}")))?;
        Ok(Admitted {
            ticket,
            binary,
            started: started.clone(),
            by,
        })
    }
}

/// The answer to a reload or an endpoint override asked for during an upgrade.
pub fn busy_refusal() -> Response {
    Response::error(
        "in-progress",
        "an upgrade is in progress: try again once it has finished (or failed)",
    )
}

/// What the blocking steps give back: the new process serving, or why not.
type Staged = Result<(Upgrade, Admitted), Box<(UpgradeError, Admitted)>>;

/// An upgrade whose blocking steps run off the loop.
pub(super) struct Underway {
    task: tokio::task::JoinHandle<Staged>,
    /// The `ctl upgrade` client waiting for the outcome (none for SIGUSR2).
    reply: Option<oneshot::Sender<Response>>,
    asked: Instant,
}

impl Underway {
    /// Resolves when the blocking steps are over (never, for no upgrade).
    pub(super) async fn finished(underway: &mut Option<Underway>) -> Result<Staged, String> {
        match underway {
            Some(u) => (&mut u.task).await.map_err(|e| e.to_string()),
            None => std::future::pending().await,
        }
    }

    pub(super) fn set_reply(&mut self, reply: oneshot::Sender<Response>) {
        self.reply = Some(reply);
    }

    /// Answers the client (if any) that the upgrade failed, with `error`.
    pub(super) fn fail(self, error: String) {
        tracing::error!(error = %error, "upgrade failed; still serving");
        if let Some(reply) = self.reply {
            let _ = reply.send(Response::error("upgrade-failed", error));
        }
    }
}

impl Daemon {
    /// `ctl upgrade`, SIGUSR2: admits the request and starts its blocking steps off the
    /// loop, or answers why not.
    pub(super) fn upgrade(
        &mut self,
        by: &'static str,
        binary: Option<&str>,
        ready_timeout_seconds: Option<u64>,
    ) -> Result<Underway, Response> {
        let mut timeouts = Timeouts::default();
        if let Some(secs) = ready_timeout_seconds {
            if !READY_TIMEOUT_RANGE.contains(&secs) {
                return Err(Response::error(
                    "invalid",
                    format!(
                        "ready timeout {secs}s is out of range: must be {}..={} s",
                        READY_TIMEOUT_RANGE.start(),
                        READY_TIMEOUT_RANGE.end()
                    ),
                ));
            }
            timeouts.ready = Duration::from_secs(secs);
            timeouts.step = timeouts.step.min(timeouts.ready);
        }
        let admitted = self.upgrades.admit(by, binary)?;
        let sockets = self.sockets_to_hand_over().map_err(|e| {
            Response::error(
                "upgrade-failed",
                format!("cannot collect the listening sockets: {e}"),
            )
        })?;
        let state = self.state_to_carry();
        let flows = self.plane().flow_exporter();
        tracing::info!(
            by,
            binary = %admitted.binary.display(),
            sockets = sockets.len(),
            "upgrade: starting the new process"
        );
        let task = tokio::task::spawn_blocking(move || {
            // `sockets` are this process's duplicates: closed when this returns.
            match stage(&admitted, &sockets, &state, &flows, timeouts) {
                Ok(up) => Ok((up, admitted)),
                Err(e) => Err(Box::new((e, admitted))),
            }
        });
        Ok(Underway {
            task,
            reply: None,
            asked: Instant::now(),
        })
    }

    /// Every socket to pass, under its name: the NodePort groups (worker order), the control
    /// socket, the metrics and health listeners. Duplicates: the originals serve on.
    fn sockets_to_hand_over(&self) -> std::io::Result<Vec<(SocketName, OwnedFd)>> {
        let mut out = Vec::new();
        for (key, fds) in self.plane().listening_sockets(Duration::from_secs(2))? {
            let kind = match key.protocol {
                Protocol::Tcp => SocketKind::Tcp,
                Protocol::Udp => SocketKind::Udp,
            };
            for (worker, fd) in fds.into_iter().enumerate() {
                out.push((SocketName::node_port(kind, key.addr, worker as u32), fd));
            }
        }
        for (name, fd) in &self.handover_fds {
            out.push((*name, fd.try_clone()?));
        }
        for (addr, fd) in self.health_check_node_ports.sockets()? {
            out.push((
                SocketName::listener(SocketKind::HealthCheckNodePort, addr),
                fd,
            ));
        }
        Ok(out)
    }

    /// What goes to systemd's fd store (under `NOTIFY_SOCKET`): every listening socket but
    /// the control socket (whose file this process removes when it exits; the next one
    /// binds it afresh). Empty without a service manager or on an error (logged: a restart
    /// then binds afresh, as without the store).
    pub(super) fn sockets_for_fd_store(&self) -> Vec<(SocketName, OwnedFd)> {
        if handover::systemd::ServiceManager::from_env().is_none() {
            return Vec::new();
        }
        match self.sockets_to_hand_over() {
            Ok(mut all) => {
                all.retain(|(n, _)| *n != SocketName::Control);
                all
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot collect the listening sockets for systemd's fd store");
                Vec::new()
            }
        }
    }

    /// After a listener change: the new NodePort sockets go to systemd's fd store, the
    /// removed ones leave it (or systemd would keep them listening).
    pub(super) fn update_fd_store(&self, added: &[ListenerKey], removed: &[ListenerKey]) {
        let Some(manager) = handover::systemd::ServiceManager::from_env() else {
            return;
        };
        let workers = self.plane().workers() as u32;
        let names = |keys: &[ListenerKey]| -> Vec<SocketName> {
            keys.iter()
                .flat_map(|k| {
                    (0..workers).map(move |w| SocketName::node_port(SocketKind::Tcp, k.addr, w))
                })
                .collect()
        };
        if !removed.is_empty() {
            if let Err(e) = manager.remove(&names(removed)) {
                tracing::warn!(error = %e, "cannot remove closed listeners from systemd's fd store");
            }
        }
        if added.is_empty() {
            return;
        }
        let wanted: std::collections::HashSet<&ListenerKey> = added.iter().collect();
        let sockets: Vec<(SocketName, OwnedFd)> = self
            .sockets_for_fd_store()
            .into_iter()
            .filter(|(n, _)| {
                n.kind() == Some(SocketKind::Tcp)
                    && n.addr().is_some_and(|a| {
                        wanted.contains(&ListenerKey {
                            addr: a,
                            protocol: Protocol::Tcp,
                        })
                    })
            })
            .collect();
        store(&sockets);
    }

    /// Every exported counter's total now ([`carried::collect`]).
    fn counters_now(&self) -> Counters {
        let reloads = {
            let h = super::healthz::lock(&self.health);
            (h.reloads_ok, h.reloads_failed)
        };
        carried::collect(
            &self.publisher.current(),
            self.monitor.flow_totals(),
            reloads,
            &carried::lock(&self.carried),
        )
    }

    /// Operators' overrides, the endpoints health checking holds down, counter totals.
    fn state_to_carry(&self) -> CarriedState {
        let overrides = self
            .overrides
            .iter()
            .map(|((key, endpoint), o)| EndpointOverride {
                service: port_key(key),
                endpoint: *endpoint,
                state: o.state.as_str().to_owned(),
                weight: o.weight,
            })
            .collect();
        let health = self
            .endpoint_health
            .carry_out()
            .into_iter()
            .map(|((key, endpoint), reason)| EndpointHealth {
                service: port_key(&key),
                endpoint,
                reason: Some(reason),
            })
            .collect();
        CarriedState {
            format: CarriedState::FORMAT,
            overrides,
            health,
            counters: self.counters_now(),
        }
    }

    /// The new process serves: stop accepting on the control socket and the HTTP listeners here
    /// (their sockets live on there), leave the control socket file to it, name it the main
    /// PID to systemd, send the final counter totals once `/metrics` answers nothing more
    /// here, say "done", and answer the client. The caller then drains.
    pub(super) async fn hand_over(&mut self, up: Upgrade, admitted: Admitted, underway: Underway) {
        for task in self.servers.drain(..) {
            task.abort();
        }
        // Metrics, health, healthCheckNodePorts: stop accepting, finish what is under way.
        let _ = self.handed_over.send(true);
        self.handover_fds.clear();
        super::socket::forget_control_socket();
        let new_pid = up.pid();
        let new_version = up.version().to_owned();
        if let Some(manager) = handover::systemd::ServiceManager::from_env() {
            if let Err(e) = manager.main_pid(new_pid) {
                tracing::warn!(error = %e, "cannot tell systemd the new main PID");
            } else if let Err(e) = manager.barrier(Duration::from_secs(5)) {
                tracing::warn!(error = %e, "systemd did not confirm the new main PID");
            }
        }
        // Counted once `/metrics` answers nothing more here: no scrape of this process saw
        // more (and the new one answers only after "done").
        self.http_stopped(HTTP_STOP_WAIT).await;
        let counters = serde_json::to_value(self.counters_now()).ok();
        up.finish(counters);
        let outcome = UpgradeOutcome {
            old_pid: std::process::id(),
            old_version: env!("CARGO_PKG_VERSION").to_owned(),
            new_pid,
            new_version,
            binary: admitted.binary.display().to_string(),
            seconds: underway.asked.elapsed().as_secs_f64(),
            drain_timeout_seconds: self.model.settings.drain_timeout.as_secs_f64(),
        };
        tracing::info!(
            by = admitted.by,
            new_pid,
            seconds = outcome.seconds,
            "upgraded: the new process serves; draining this one"
        );
        if let Some(reply) = underway.reply {
            let _ = reply.send(Response::ok(serde_json::json!(outcome)));
        }
        drop(admitted);
    }

    /// Waits (at most `bound`) until the metrics and health servers, told to stop, have
    /// answered what they had read; those still at it stay for [`Daemon::http_finished`].
    async fn http_stopped(&mut self, bound: Duration) {
        let mut tasks = std::mem::take(&mut self.http_servers);
        let all = async {
            for t in tasks.iter_mut() {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(bound, all).await.is_err() {
            tracing::warn!(
                ?bound,
                "metrics requests still under way: a scrape answered by this process may \
                 show more than the counters the new process starts from"
            );
        }
        tasks.retain(|t| !t.is_finished());
        self.http_servers = tasks;
    }

    /// Takes over what the previous process carried: its overrides (for endpoints that
    /// still exist), the endpoints its health checks held down, its counter totals (for
    /// Service ports and endpoints that still exist).
    pub(super) fn carry_in(&mut self, state: CarriedState) {
        let keys: HashMap<PortKey, ServicePortKey> = self
            .model
            .services
            .iter()
            .map(|s| (port_key(&s.key), s.key.clone()))
            .collect();
        let mut overrides = self.overrides.clone();
        for o in &state.overrides {
            let Some(key) = keys.get(&o.service) else {
                continue;
            };
            let Some(admin) = super::overrides::AdminState::parse(&o.state) else {
                continue;
            };
            overrides.insert(
                key.clone(),
                o.endpoint,
                super::overrides::Override {
                    state: admin,
                    weight: o.weight,
                },
            );
        }
        overrides.retain_existing(&self.model);
        let down: Vec<_> = state
            .health
            .iter()
            .filter_map(|h| {
                let key = keys.get(&h.service)?;
                Some((
                    (key.clone(), h.endpoint),
                    h.reason.clone().unwrap_or_default(),
                ))
            })
            .collect();
        tracing::info!(
            overrides = overrides.len(),
            held_down = down.len(),
            "carried over from the previous process"
        );
        self.overrides = overrides;
        self.endpoint_health.carry_in(down);
        self.republish();
        let applied = carried::apply(&self.publisher.current(), &state.counters, &self.carried);
        tracing::info!(
            services = applied.services,
            endpoints = applied.endpoints,
            dropped = applied.dropped,
            "counter totals carried over from the previous process"
        );
    }
}

/// Puts `sockets` in systemd's fd store (one `FDSTORE=1` + `FDNAME=` message each; systemd
/// ignores a socket it holds already). Our duplicates are closed afterwards.
pub(super) fn store(sockets: &[(SocketName, OwnedFd)]) {
    let Some(manager) = handover::systemd::ServiceManager::from_env() else {
        return;
    };
    if sockets.is_empty() {
        return;
    }
    let borrowed: Vec<(SocketName, BorrowedFd<'_>)> =
        sockets.iter().map(|(n, fd)| (*n, fd.as_fd())).collect();
    match manager.store(&borrowed) {
        Ok(()) => tracing::info!(
            sockets = sockets.len(),
            "listening sockets kept in systemd's fd store (a restart refuses no connection)"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot store the listening sockets in systemd's fd store")
        }
    }
}

/// The blocking steps of an upgrade, for a blocking thread: start the new binary, offer it
/// `sockets` and `state`, wait until it is ready, hand it the UDP flows (`flows`: this
/// process's workers stop reading UDP first), tell it to accept and wait until it does.
/// On success the new process accepts on the very same sockets; the caller then stops
/// accepting here, names the new main PID to systemd, calls [`Upgrade::finish`] and drains
/// (this process's UDP reading stays stopped: its flows end with the drain, their sockets
/// live on there). On an error the new process was stopped (rolled back), this process's
/// workers read UDP again, and nothing changed here.
pub fn stage(
    admitted: &Admitted,
    sockets: &[(SocketName, OwnedFd)],
    state: &CarriedState,
    flows: &FlowExporter,
    timeouts: Timeouts,
) -> Result<Upgrade, UpgradeError> {
    let mut up = Upgrade::start(&admitted.started, Some(&admitted.binary), timeouts)?;
    admitted.ticket.set_successor(up.pid());
    tracing::info!(
        by = admitted.by,
        binary = %admitted.binary.display(),
        pid = up.pid(),
        version = up.version(),
        sockets = sockets.len(),
        "upgrade: new process started; passing the sockets"
    );
    let borrowed: Vec<(SocketName, BorrowedFd<'_>)> =
        sockets.iter().map(|(n, fd)| (*n, fd.as_fd())).collect();
    up.offer(&borrowed, &state.to_json())?;
    up.wait_ready()?;
    if !up.takes_flows() {
        tracing::info!(
            version = up.version(),
            "the new process does not take UDP flows: they end with this one's drain"
        );
        up.go()?;
        return Ok(up);
    }
    match hand_flows(&mut up, flows, timeouts.step).and_then(|()| up.go()) {
        Ok(()) => Ok(up),
        Err(e) => {
            // Stop the new process first (it may have read datagrams after "go"): then
            // this one reads its UDP sockets again, its flows as they were.
            drop(up);
            flows.resume();
            Err(e)
        }
    }
}

/// This process's workers stop reading UDP; their flows go to the new process in batches
/// of at most 253 (one SCM_RIGHTS message each), the duplicates closed after each.
fn hand_flows(up: &mut Upgrade, flows: &FlowExporter, wait: Duration) -> Result<(), UpgradeError> {
    let pid = up.pid();
    let local = |detail: std::io::Error| UpgradeError::Protocol {
        pid,
        step: handover::Step::Flows,
        detail: format!("this process: {detail}"),
    };
    flows.pause(wait).map_err(local)?;
    let mut total = 0usize;
    for worker in 0..flows.workers() {
        let mut from = Some(0);
        while let Some(slot) = from {
            let (batch, next) = flows
                .batch(worker, slot, handover::channel::MAX_FDS_PER_MESSAGE, wait)
                .map_err(local)?;
            if !batch.is_empty() {
                up.send_flows(worker as u32, &batch)?;
                total += batch.len();
            }
            from = next;
        }
    }
    tracing::info!(
        flows = total,
        "upgrade: UDP flows handed to the new process"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::handover::channel::Channel;
    use crate::handover::inherit::Session;
    use crate::handover::{SocketKind, SocketName, Timeouts, Upgrade};
    use socket2::{Domain, Socket, Type};
    use std::net::{SocketAddr, TcpStream};
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
    use std::time::{Duration, Instant};

    /// The client-IP steering program belongs to the SO_REUSEPORT group: after the group's
    /// sockets were passed over a hand-over channel (and the sender's copies closed), one
    /// client IP still lands on one socket. (Here, not in `handover`: attaching the program
    /// is the data plane's.)
    #[test]
    fn the_client_ip_steering_program_stays_attached_to_a_passed_group() {
        let mut addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut fds = Vec::new();
        for _ in 0..4 {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.set_reuse_port(true).unwrap();
            s.bind(&addr.into()).unwrap();
            s.listen(64).unwrap();
            addr = s.local_addr().unwrap().as_socket().unwrap();
            fds.push(OwnedFd::from(s));
        }
        crate::dataplane::attach_client_ip_steering(fds[0].as_fd(), 4).unwrap();
        let mut clients: Vec<TcpStream> =
            (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let sockets: Vec<(SocketName, OwnedFd)> = fds
            .into_iter()
            .enumerate()
            .map(|(w, fd)| (SocketName::node_port(SocketKind::Tcp, addr, w as u32), fd))
            .collect();
        let timeouts = Timeouts {
            step: Duration::from_secs(5),
            ready: Duration::from_secs(5),
            abort_grace: Duration::from_millis(200),
        };
        let (old, new) = Channel::pair().unwrap();
        let old = std::thread::spawn(move || {
            let mut up = Upgrade::handshake(old, None, std::process::id(), timeouts)?;
            let borrowed: Vec<(SocketName, BorrowedFd<'_>)> =
                sockets.iter().map(|(n, fd)| (*n, fd.as_fd())).collect();
            up.offer(&borrowed, &serde_json::Value::Null)?;
            up.wait_ready()?;
            up.go()?;
            up.finish(None);
            drop(sockets);
            Ok::<(), crate::handover::UpgradeError>(())
        });
        let (mut session, mut inherited, _) = Session::receive(new, timeouts).unwrap();
        session.ready(4).unwrap();
        session.serving().unwrap();
        old.join().unwrap().unwrap();
        clients.extend((0..8).map(|_| TcpStream::connect(addr).unwrap()));
        let group = inherited.take_group(SocketKind::Tcp, addr).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut per_socket = [0usize; 4];
        while per_socket.iter().sum::<usize>() < 16 && Instant::now() < deadline {
            for (n, fd) in per_socket.iter_mut().zip(&group) {
                let s = socket2::SockRef::from(fd);
                s.set_nonblocking(true).unwrap();
                while s.accept().is_ok() {
                    *n += 1;
                }
            }
        }
        // One client IP, one socket: 16 connections from 16 source ports all in one queue.
        // Without the program the kernel's 4-tuple hash spreads them (all in one by chance:
        // 4 × 4^-16).
        per_socket.sort_unstable();
        assert_eq!(per_socket, [0, 0, 0, 16], "{per_socket:?}");
    }
}
