//! The data plane: per-core, shared-nothing workers that accept NodePort connections and
//! relay them to endpoints, and relay NodePort datagrams as UDP flows.
//!
//! The API, all of it here: [`Dataplane::start`] opens every listening socket first (so a
//! port that cannot be bound is an error before anything runs), then starts one worker thread
//! per configured CPU, each with its own driver (io_uring, or epoll where io_uring is not
//! usable: [`probe_uring`]) and its own SO_REUSEPORT socket per (address, NodePort); it
//! returns once every worker is ready. Then: [`Dataplane::prepare_listeners`] /
//! [`Dataplane::commit_listeners`] (a reload's listener plan), [`Dataplane::steer_client_ips`]
//! (ClientIP affinity), [`Dataplane::drain`] / [`Dataplane::stop`], a [`Monitor`] for other
//! threads, an [`Aborter`] for a second signal, [`on_worker_death`] for the process's answer
//! to a dead worker, and the helpers [`node_ports`], [`node_port_keys`],
//! [`wildcard_address`], [`default_workers`], [`effective_uid`], [`ignore_hangup`]. Routing
//! comes from the [`Publisher`]; this module never reads configuration and never imports
//! `control`, `config` or `watch`.
//!
//! Inside (all private): [`connections`] (the sans-IO connection table: slab, pins, retries,
//! holds, parking, idle sweep, drain) over [`conn`] (the sans-IO core of one connection);
//! beside it [`flow`] (the sans-IO UDP flow table: one flow per (client, node address),
//! Maglev-sticky, revalidated on every datagram, idle sweep, cap) with its IO in [`udp`];
//! [`worker`] (the thread's IO loop that executes both tables' outputs); [`driver`] (io_uring
//! and epoll behind one trait); [`listeners`] (the listening sockets: which a model calls
//! for, the listener plan and its commit, client-IP steering); [`relay`] (pipes and buffers
//! that hold bytes in flight); [`select`] (the `Picker`: endpoint choice per policy) and
//! [`affinity`] (ClientIP affinity tables); [`sys`] (syscall wrappers; with
//! `driver/uring.rs`, the only `unsafe` code of the crate); [`death`] (what a worker that
//! dies reports, so that no half-deaf process is left behind). [`testing`] opens the
//! connection table to the simulator (`tests/conn_simulation.rs`), and nothing else.

mod affinity;
mod carry;
mod conn;
mod connections;
mod death;
mod driver;
mod flow;
mod listeners;
mod live;
mod refusals;
mod relay;
mod select;
mod sys;
mod udp;
mod worker;

pub use carry::FlowExporter;
pub use death::{on_worker_death, WorkerDeath};
pub use listeners::{
    node_port_keys, node_ports, wildcard_address, ListenerPlan, Listeners, NodePorts,
};
pub use live::{LiveEntry, LiveQuery, LiveReport, LiveRequest, LiveTraffic};

use crate::model::{DriverSetting, Protocol, Settings};
use crate::publish::Publisher;
use crate::stats::LoopStats;
pub use connections::ListenerKey;
use connections::WorkerLimits;
use driver::epoll::Epoll;
use driver::uring::Uring;
use driver::{Driver, DriverChoice};
use listeners::open_listeners;
use socket2::Socket;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use worker::{Command, Listener, Worker, WorkerExit, WorkerSetup};

/// For the simulator (`tests/conn_simulation.rs`) only: the sans-IO connection table and
/// the vocabulary of its connection core. Not an API: it changes with the data plane.
#[doc(hidden)]
pub mod testing {
    pub use super::conn::{CloseReason, ConnEvent, ConnectFailure, Dir, Side};
    pub use super::connections::{
        ConnHandle, ConnTable, ConnectOutcome, NotStarted, Output, Refused, TableConfig,
        WorkerLimits, TICK,
    };
}

/// Errors starting the data plane or opening listeners.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A NodePort could not be opened on an address (in use, not a local address, …).
    #[error("cannot listen on {addr} (NodePort {node_port}/{protocol}): {cause}")]
    Listen {
        addr: SocketAddr,
        node_port: u16,
        protocol: Protocol,
        cause: io::Error,
    },
    /// io_uring is unavailable or lacks an operation sluice needs (with `driver = "uring"`).
    #[error("io_uring is unavailable: {0} (driver = \"auto\" or \"epoll\" runs on epoll)")]
    Uring(io::Error),
    /// A worker thread could not be started.
    #[error("cannot start worker {index}: {cause}")]
    Worker { index: usize, cause: io::Error },
}

/// A running data plane.
pub struct Dataplane {
    workers: Vec<WorkerHandle>,
    /// Listeners open now, in every worker.
    open: Vec<ListenerKey>,
    /// Listener groups whose connections are steered to workers by client IP.
    steered: Vec<ListenerKey>,
    monitor: Monitor,
    /// Listening sockets inherited from the previous process (a hand-over, systemd's fd
    /// store) and not used yet: a listener to open takes its group from here before
    /// anything is bound ([`Self::start_inheriting`], [`Self::release_inherited`]).
    inherited: HashMap<ListenerKey, Vec<Socket>>,
    /// While paused, the commands for each worker, held until [`Self::resume`]: a
    /// successor's workers run but accept nothing before the old process says "go".
    held: Option<Vec<Vec<Command>>>,
}

struct WorkerHandle {
    wake: Arc<OwnedFd>,
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<io::Result<WorkerExit>>>,
}

/// What a drain did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections open when the drain began that finished on their own.
    pub finished: u64,
    /// Connections still open at the drain deadline, reset.
    pub reset: u64,
}

/// Aborts the workers from another thread (see [`Dataplane::aborter`]).
#[derive(Debug, Clone)]
pub struct Aborter {
    workers: Vec<(mpsc::Sender<Command>, Arc<OwnedFd>)>,
}

impl Aborter {
    /// Make every worker reset its connections (both sides, SO_LINGER 0) and close every
    /// socket it has, now; returns once all have, or after `wait` at the latest (a wedged
    /// worker). For a process about to exit: an exit closes sockets with a FIN, which would
    /// make every cut stream look complete to its client. Returns how many workers
    /// confirmed.
    pub fn abort(&self, wait: Duration) -> usize {
        let (done, confirmed) = mpsc::channel();
        for (commands, wake) in &self.workers {
            let _ = commands.send(Command::Abort { done: done.clone() });
            let _ = sys::eventfd_signal(wake.as_fd());
        }
        drop(done);
        let deadline = crate::deadline::after(Instant::now(), wait);
        let mut n = 0;
        while n < self.workers.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match confirmed.recv_timeout(left) {
                Ok(()) => n += 1,
                Err(_) => break,
            }
        }
        n
    }
}

/// A cheap, clonable view of the workers for other threads (watchdog, metrics, status).
#[derive(Debug, Clone)]
pub struct Monitor {
    loops: Arc<[Arc<LoopStats>]>,
    driver: &'static str,
}

/// One worker's loop statistics, as numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub iterations: u64,
    pub completions: u64,
    pub accepted: u64,
    pub active: u64,
    pub accepting: bool,
}

impl Monitor {
    /// Per worker: a counter that advances at every loop iteration (at least every 100 ms
    /// while the worker is healthy). A worker whose heartbeat stops is wedged.
    pub fn heartbeats(&self) -> Vec<u64> {
        self.loops.iter().map(|l| l.iterations.get()).collect()
    }

    pub fn worker_stats(&self) -> Vec<WorkerStats> {
        use std::sync::atomic::Ordering::Relaxed;
        self.loops
            .iter()
            .map(|l| WorkerStats {
                iterations: l.iterations.get(),
                completions: l.completions.get(),
                accepted: l.accepted.get(),
                active: l.active.load(Relaxed),
                accepting: l.accepting.load(Relaxed) != 0,
            })
            .collect()
    }

    /// UDP flow counters summed over the workers.
    pub fn flow_totals(&self) -> crate::stats::FlowTotals {
        let mut t = crate::stats::FlowTotals::default();
        for l in self.loops.iter() {
            t.add(&l.flows);
        }
        t
    }

    /// Client connections open now, all workers.
    pub fn active(&self) -> u64 {
        self.worker_stats().iter().map(|w| w.active).sum()
    }

    /// The driver in use: "io_uring" or "epoll".
    pub fn driver(&self) -> &'static str {
        self.driver
    }

    pub fn workers(&self) -> usize {
        self.loops.len()
    }
}

impl Dataplane {
    /// Open the listeners `keys` (all or nothing) and start the workers.
    pub fn start(
        settings: &Settings,
        keys: &[ListenerKey],
        publisher: &Publisher,
    ) -> Result<Dataplane, StartError> {
        Dataplane::start_inheriting(settings, keys, publisher, HashMap::new(), false)
    }

    /// [`Self::start`] on listening sockets a previous process passed (a hand-over, or
    /// systemd's fd store): each listener of `keys` (and of later listener plans, until
    /// [`Self::release_inherited`]) whose group of `settings.workers` sockets is in
    /// `inherited` takes it, socket *i* to worker *i*, instead of binding; the sockets are
    /// never re-bound, so their accept queues and the group's steering program stay. With
    /// `paused`, the workers start but accept nothing, and every listener and steering
    /// change waits, until [`Self::resume`].
    pub fn start_inheriting(
        settings: &Settings,
        keys: &[ListenerKey],
        publisher: &Publisher,
        inherited: HashMap<ListenerKey, Vec<OwnedFd>>,
        paused: bool,
    ) -> Result<Dataplane, StartError> {
        let driver = choose_driver(settings.driver)?;
        let cpus = sys::allowed_cpus();
        let n = settings.workers.unwrap_or_else(|| cpus.len().max(1)).max(1);
        let mut per_worker: Vec<Vec<Listener>> = (0..n).map(|_| Vec::new()).collect();
        let mut open = Vec::new();
        let wanted = Listeners {
            required: keys.to_vec(),
            optional: Vec::new(),
        };
        let mut inherited: HashMap<ListenerKey, Vec<Socket>> = inherited
            .into_iter()
            .map(|(k, fds)| (k, fds.into_iter().map(Socket::from).collect()))
            .collect();
        let (opened, _) = open_listeners(
            settings.backlog,
            &wanted,
            &HashSet::new(),
            n,
            &mut inherited,
        )?;
        for (key, sockets) in opened {
            for (listeners, socket) in per_worker.iter_mut().zip(sockets) {
                listeners.push(Listener { key, socket });
            }
            open.push(key);
        }
        let mut held = None;
        if paused {
            held = Some(
                per_worker
                    .iter_mut()
                    .map(|l| vec![Command::AddListeners(std::mem::take(l))])
                    .collect(),
            );
        }
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, io::Result<()>)>();
        let mut workers = Vec::with_capacity(n);
        let mut loops = Vec::with_capacity(n);
        for (index, listeners) in per_worker.into_iter().enumerate() {
            let wake =
                Arc::new(sys::eventfd().map_err(|cause| StartError::Worker { index, cause })?);
            let (commands, queue) = mpsc::channel();
            let loop_stats = Arc::new(LoopStats::default());
            let cpu = if settings.pin_workers && !cpus.is_empty() {
                Some(cpus[index % cpus.len()])
            } else {
                None
            };
            let setup = WorkerSetup {
                index,
                cpu,
                listeners,
                limits: WorkerLimits::of(settings),
                max_flows: settings.max_flows_per_worker,
                spare_pipes: relay::spare_pipes_for(sys::fd_limit(), n),
                relay: settings.relay,
                publisher: publisher.clone(),
                wake: Arc::clone(&wake),
                commands: queue,
                loop_stats: Arc::clone(&loop_stats),
            };
            let tx = ready_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sluice-w{index}"))
                .spawn(move || match driver {
                    DriverChoice::Uring => run_worker(setup, tx, || Uring::new(1024)),
                    DriverChoice::Epoll => run_worker(setup, tx, Epoll::new),
                })
                .map_err(|cause| StartError::Worker { index, cause })?;
            workers.push(WorkerHandle {
                wake,
                commands,
                thread: Some(thread),
            });
            loops.push(loop_stats);
        }
        drop(ready_tx);
        let dp = Dataplane {
            workers,
            open,
            steered: Vec::new(),
            monitor: Monitor {
                loops: loops.into(),
                driver: driver.name(),
            },
            inherited,
            held,
        };
        for _ in 0..n {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((index, Err(cause))) => return Err(StartError::Worker { index, cause }),
                Err(_) => {
                    return Err(StartError::Worker {
                        index: 0,
                        cause: io::Error::other("worker exited during start"),
                    })
                }
            }
        }
        Ok(dp)
    }

    /// Whether the workers wait for [`Self::resume`] to accept.
    pub fn is_paused(&self) -> bool {
        self.held.is_some()
    }

    /// The workers start accepting: every listener and steering change held since a paused
    /// start reaches them, in order.
    pub fn resume(&mut self) {
        let Some(held) = self.held.take() else { return };
        for (w, commands) in self.workers.iter().zip(held) {
            for c in commands {
                let _ = w.commands.send(c);
            }
            let _ = sys::eventfd_signal(w.wake.as_fd());
        }
    }

    /// Closes the inherited sockets no listener took (the new configuration no longer
    /// serves them); returns their keys.
    pub fn release_inherited(&mut self) -> Vec<ListenerKey> {
        let mut keys: Vec<ListenerKey> = self.inherited.drain().map(|(k, _)| k).collect();
        keys.sort();
        keys
    }

    /// A duplicate of every open listening socket, by key, socket *i* being worker *i*'s
    /// (for a hand-over to a new process, or systemd's fd store). The workers answer
    /// between two turns of their loops; an error when one does not within `wait` or
    /// cannot duplicate (out of descriptors). Not while paused.
    pub fn listening_sockets(
        &self,
        wait: Duration,
    ) -> io::Result<Vec<(ListenerKey, Vec<OwnedFd>)>> {
        if self.is_paused() {
            return Err(io::Error::other("the workers are paused"));
        }
        let (done, answers) = mpsc::channel();
        for w in &self.workers {
            let _ = w.commands.send(Command::Export { done: done.clone() });
            let _ = sys::eventfd_signal(w.wake.as_fd());
        }
        drop(done);
        let n = self.workers.len();
        let deadline = crate::deadline::after(Instant::now(), wait);
        let mut per_worker: Vec<Option<Vec<(ListenerKey, OwnedFd)>>> =
            (0..n).map(|_| None).collect();
        for _ in 0..n {
            let left = deadline.saturating_duration_since(Instant::now());
            match answers.recv_timeout(left) {
                Ok((index, fds)) if index < n => per_worker[index] = Some(fds),
                Ok(_) => {}
                Err(_) => {
                    return Err(io::Error::other(
                        "a worker did not hand out its listening sockets (out of descriptors, or wedged)",
                    ))
                }
            }
        }
        let mut groups: HashMap<ListenerKey, Vec<OwnedFd>> = HashMap::new();
        for fds in per_worker.into_iter().flatten() {
            for (key, fd) in fds {
                groups.entry(key).or_default().push(fd);
            }
        }
        let mut out: Vec<(ListenerKey, Vec<OwnedFd>)> = self
            .open
            .iter()
            .filter_map(|k| groups.remove(k).map(|fds| (*k, fds)))
            .filter(|(_, fds)| fds.len() == n)
            .collect();
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }

    /// Hands `command` to worker `index`, or holds it while paused.
    fn post(&mut self, index: usize, command: Command) {
        if let Some(held) = self.held.as_mut() {
            held[index].push(command);
            return;
        }
        let w = &self.workers[index];
        let _ = w.commands.send(command);
        let _ = sys::eventfd_signal(w.wake.as_fd());
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The (address, NodePort) pairs listened on.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.open.iter().map(|k| k.addr).collect()
    }

    /// Asks every worker for its live UDP flows and TCP connections (`ctl flows`; see
    /// [`live`]): returns at once, [`LiveRequest::wait`] collects the answers.
    pub fn live(&self, query: &LiveQuery) -> LiveRequest {
        let answers = self
            .workers
            .iter()
            .map(|w| {
                let (reply, answer) = mpsc::channel();
                let _ = w.commands.send(Command::Live {
                    query: query.clone(),
                    reply,
                });
                let _ = sys::eventfd_signal(w.wake.as_fd());
                answer
            })
            .collect();
        LiveRequest {
            limit: query.limit,
            answers,
        }
    }

    /// A handle for other threads: heartbeats, loop statistics, driver.
    pub fn monitor(&self) -> Monitor {
        self.monitor.clone()
    }

    /// A handle that can abort every worker from another thread, even while
    /// [`Self::drain`] runs (a second signal).
    pub fn aborter(&self) -> Aborter {
        Aborter {
            workers: self
                .workers
                .iter()
                .map(|w| (w.commands.clone(), Arc::clone(&w.wake)))
                .collect(),
        }
    }

    /// Stop accepting everywhere, let open connections finish until `timeout`, then reset
    /// the rest; returns once every worker has ended.
    pub fn drain(mut self, timeout: Duration) -> io::Result<DrainReport> {
        let before = self.monitor.active();
        let deadline = crate::deadline::after(Instant::now(), timeout);
        self.send_all(|| Command::Drain { deadline });
        let reset = self.join()?;
        Ok(DrainReport {
            finished: before.saturating_sub(reset),
            reset,
        })
    }

    /// Stop every worker now (open connections are reset) and wait for them.
    pub fn stop(mut self) -> io::Result<()> {
        self.send_all(|| Command::Stop);
        self.join().map(|_| ())
    }

    fn send_all(&self, command: impl Fn() -> Command) {
        for w in &self.workers {
            let _ = w.commands.send(command());
            let _ = sys::eventfd_signal(w.wake.as_fd());
        }
    }

    /// Wait for every worker; returns how many connections they reset at the end.
    fn join(&mut self) -> io::Result<u64> {
        let mut result = Ok(0);
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                match t.join() {
                    Ok(Ok(exit)) => {
                        if let Ok(n) = &mut result {
                            *n += exit.reset;
                        }
                    }
                    Ok(Err(e)) => result = Err(e),
                    Err(_) => result = Err(io::Error::other("worker panicked")),
                }
            }
        }
        result
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if self.workers.iter().any(|w| w.thread.is_some()) {
            self.send_all(|| Command::Stop);
            let _ = self.join();
        }
    }
}

/// Workers to start when the settings do not say: one per CPU this process may run on.
pub fn default_workers() -> usize {
    sys::allowed_cpus().len().max(1)
}

/// Whether io_uring is usable here with every operation sluice needs (`driver = "uring"`
/// refuses to start otherwise, `"auto"` falls back to epoll); the error says what is missing.
pub fn probe_uring() -> io::Result<()> {
    Uring::probe()
}

/// Takes ownership of a descriptor this process inherited by number across exec (systemd's
/// `LISTEN_FDS`, the hand-over socket of `ctl upgrade`); each number at most once per
/// process (see `sys::adopt_inherited_fd`).
pub fn adopt_inherited_fd(fd: std::os::fd::RawFd) -> io::Result<OwnedFd> {
    sys::adopt_inherited_fd(fd)
}

/// Attaches the client-IP steering program to the SO_REUSEPORT group of `fd` (for the
/// hand-over's tests in `control`: a passed socket keeps its group's program).
#[cfg(test)]
pub(crate) fn attach_client_ip_steering(
    fd: std::os::fd::BorrowedFd<'_>,
    groups: u32,
) -> io::Result<()> {
    sys::attach_client_ip_steering(fd, groups)
}

/// The process's effective user id (the control socket's peer checks).
pub fn effective_uid() -> u32 {
    sys::effective_uid()
}

/// Ignore SIGHUP until the control plane installs its handler: a reload request that
/// arrives while sluice is still starting must not end it (SIGHUP's default action).
pub fn ignore_hangup() -> io::Result<()> {
    sys::ignore_hangup()
}

/// Resolve the driver setting: `Auto` probes io_uring once and falls back to epoll with one
/// log line saying why; `Uring` refuses to start with that reason instead.
fn choose_driver(setting: DriverSetting) -> Result<DriverChoice, StartError> {
    match setting {
        DriverSetting::Epoll => Ok(DriverChoice::Epoll),
        DriverSetting::Uring => Uring::probe()
            .map(|()| DriverChoice::Uring)
            .map_err(StartError::Uring),
        DriverSetting::Auto => match Uring::probe() {
            Ok(()) => Ok(DriverChoice::Uring),
            Err(e) => {
                tracing::warn!("io_uring is unavailable ({e}); using the epoll driver");
                Ok(DriverChoice::Epoll)
            }
        },
    }
}

fn run_worker<D: Driver>(
    setup: WorkerSetup,
    ready: mpsc::Sender<(usize, io::Result<()>)>,
    driver: impl FnOnce() -> io::Result<D>,
) -> io::Result<WorkerExit> {
    let index = setup.index;
    if let Some(cpu) = setup.cpu {
        if let Err(e) = sys::pin_current_thread(cpu) {
            tracing::warn!(worker = index, cpu, error = %e, "cannot pin worker to its CPU");
        }
    }
    let worker = match driver().and_then(|d| Worker::new(setup, d)) {
        Ok(w) => {
            let _ = ready.send((index, Ok(())));
            // From here on a panic is a worker death (see `death`).
            death::mark_worker(index);
            w
        }
        Err(e) => {
            let _ = ready.send((index, Err(io::Error::new(e.kind(), e.to_string()))));
            return Err(e);
        }
    };
    let result = worker.run();
    if let Err(e) = &result {
        tracing::error!(worker = index, error = %e, "worker stopped on an error");
        death::report(death::WorkerDeath {
            worker: index,
            cause: format!("stopped on an error: {e}"),
        });
    }
    result
}

#[cfg(test)]
mod adopt_tests {
    use super::*;

    #[test]
    fn inherited_numbers_are_adopted_once() {
        use std::os::fd::IntoRawFd;
        let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        // Give up ownership, as exec does: the number is then only an inherited one.
        let raw = s.into_raw_fd();
        let owned = adopt_inherited_fd(raw).unwrap();
        let got = socket2::SockRef::from(&owned).local_addr().unwrap();
        assert_eq!(got.as_socket(), Some(addr));
        let e = adopt_inherited_fd(raw).unwrap_err();
        assert!(e.to_string().contains("not an inherited descriptor"), "{e}");
        assert!(adopt_inherited_fd(1).is_err());
        drop(owned);
    }
}
