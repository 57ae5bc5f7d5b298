//! The data plane: per-core, shared-nothing workers that accept NodePort connections and
//! relay them to endpoints.
//!
//! [`Dataplane::start`] opens every listening socket first (so a port that cannot be bound
//! is an error before anything runs), then starts one worker thread per configured CPU, each
//! with its own io_uring ring and its own SO_REUSEPORT socket per (address, NodePort). It
//! returns once every worker has set up its ring. Routing comes from the [`Publisher`]; this
//! module never reads configuration files and never imports the control side.
//!
//! Submodules: [`conn`] (the sans-IO connection core), [`relay`] (pipes and buffers that hold
//! bytes in flight), [`worker`] (the per-thread loop), [`driver`] (io_uring), [`sys`]
//! (syscall wrappers; with the driver, the only `unsafe` code).

pub mod conn;
pub mod driver;
pub mod relay;
pub mod sys;
pub mod worker;

use crate::model::{ListenAddresses, Protocol, Settings};
use crate::publish::Publisher;
use socket2::{Domain, Socket, Type};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use worker::{Listener, Worker, WorkerSetup};

/// Errors starting the data plane.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A NodePort could not be opened on an address (in use, not a local address, …).
    #[error("cannot listen on {addr} (NodePort {node_port}/{protocol}): {source}")]
    Listen {
        addr: SocketAddr,
        node_port: u16,
        protocol: Protocol,
        source: io::Error,
    },
    /// io_uring is unavailable or lacks an operation sluice needs.
    #[error("io_uring is unavailable: {0}")]
    Uring(io::Error),
    /// A worker thread could not be started.
    #[error("cannot start worker {index}: {source}")]
    Worker { index: usize, source: io::Error },
}

/// The NodePorts to open: (protocol, port) pairs.
pub type NodePorts = Vec<(Protocol, u16)>;

/// A running data plane.
pub struct Dataplane {
    workers: Vec<WorkerHandle>,
    listen_addrs: Vec<SocketAddr>,
}

struct WorkerHandle {
    wake: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Dataplane {
    /// Open the listeners for `node_ports` and start the workers.
    pub fn start(
        settings: &Settings,
        node_ports: &NodePorts,
        publisher: &Publisher,
    ) -> Result<Dataplane, StartError> {
        driver::uring::Uring::probe().map_err(StartError::Uring)?;
        let cpus = sys::allowed_cpus();
        let n = settings.workers.unwrap_or_else(|| cpus.len().max(1)).max(1);
        let addrs = listen_addresses(&settings.listen);
        let mut per_worker: Vec<Vec<Listener>> = (0..n).map(|_| Vec::new()).collect();
        let mut bound = Vec::new();
        for &(protocol, node_port) in node_ports {
            for &ip in &addrs {
                let addr = SocketAddr::new(ip, node_port);
                for listeners in per_worker.iter_mut() {
                    let socket = open_listener(addr, settings.backlog).map_err(|source| {
                        StartError::Listen {
                            addr,
                            node_port,
                            protocol,
                            source,
                        }
                    })?;
                    listeners.push(Listener {
                        socket,
                        protocol,
                        node_port,
                    });
                }
                bound.push(addr);
            }
        }
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, io::Result<()>)>();
        let mut workers = Vec::with_capacity(n);
        for (index, listeners) in per_worker.into_iter().enumerate() {
            let wake =
                Arc::new(sys::eventfd().map_err(|source| StartError::Worker { index, source })?);
            let stop = Arc::new(AtomicBool::new(false));
            let cpu = if settings.pin_workers && !cpus.is_empty() {
                Some(cpus[index % cpus.len()])
            } else {
                None
            };
            let setup = WorkerSetup {
                index,
                cpu,
                listeners,
                max_connections: settings.max_connections_per_worker,
                relay: settings.relay,
                publisher: publisher.clone(),
                wake: Arc::clone(&wake),
                stop: Arc::clone(&stop),
            };
            let tx = ready_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sluice-w{index}"))
                .spawn(move || run_worker(setup, tx))
                .map_err(|source| StartError::Worker { index, source })?;
            workers.push(WorkerHandle {
                wake,
                stop,
                thread: Some(thread),
            });
        }
        drop(ready_tx);
        let dp = Dataplane {
            workers,
            listen_addrs: bound,
        };
        for _ in 0..n {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((index, Err(source))) => return Err(StartError::Worker { index, source }),
                Err(_) => {
                    return Err(StartError::Worker {
                        index: 0,
                        source: io::Error::other("worker exited during start"),
                    })
                }
            }
        }
        Ok(dp)
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The (address, NodePort) pairs listened on.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen_addrs
    }

    /// Stop every worker (open connections are reset) and wait for them.
    pub fn stop(mut self) -> io::Result<()> {
        self.stop_workers()
    }

    fn stop_workers(&mut self) -> io::Result<()> {
        for w in &self.workers {
            w.stop.store(true, Ordering::Release);
            let _ = sys::eventfd_signal(std::os::fd::AsFd::as_fd(&*w.wake));
        }
        let mut result = Ok(());
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                match t.join() {
                    Ok(Ok(())) => {}
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
        let _ = self.stop_workers();
    }
}

fn run_worker(setup: WorkerSetup, ready: mpsc::Sender<(usize, io::Result<()>)>) -> io::Result<()> {
    let index = setup.index;
    if let Some(cpu) = setup.cpu {
        if let Err(e) = sys::pin_current_thread(cpu) {
            tracing::warn!(worker = index, cpu, error = %e, "cannot pin worker to its CPU");
        }
    }
    let worker = match Worker::new(setup) {
        Ok(w) => {
            let _ = ready.send((index, Ok(())));
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
    }
    result
}

/// The addresses to bind for a listen setting: `All` → one dual-stack `[::]` socket when
/// the host has IPv6, else `0.0.0.0`.
pub fn listen_addresses(listen: &ListenAddresses) -> Vec<IpAddr> {
    match listen {
        ListenAddresses::Only(ips) => ips.clone(),
        ListenAddresses::All => {
            if Socket::new(Domain::IPV6, Type::STREAM, None).is_ok() {
                vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)]
            } else {
                vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
            }
        }
    }
}

/// One member of a SO_REUSEPORT group listening on `addr`.
fn open_listener(addr: SocketAddr, backlog: u32) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    // Accepted sockets inherit TCP_NODELAY: no Nagle delay on relayed small writes.
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket)
}
