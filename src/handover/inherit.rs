//! The new process's side of a hand-over: what it inherits at start, and the steps it
//! answers to.
//!
//! At start, [`from_env`] looks for a hand-over channel (`SLUICE_HANDOVER_FD`, set by an
//! old sluice running `ctl upgrade`) and, without one, for systemd's `LISTEN_FDS` (a
//! restart through the fd store). Over a channel it receives the manifest, the fds and the
//! state ([`Session::receive`]), checks every socket against its name
//! ([`validate`](super::validate)), and gives them to the caller as [`Inherited`]; then the
//! caller loads its configuration, starts its workers *without accepting*, and calls
//! [`Session::ready`] (or [`Session::failed`] and exits), which returns on the old process's
//! "go"; once its workers accept, [`Session::serving`] waits for "done" — from then on it
//! is the daemon.

use super::channel::{Channel, ChannelError, Deadline};
use super::flows::{self, ReceivedFlow};
use super::name::{NameError, SocketKind, SocketName};
use super::systemd::{self, ListenFdsError};
use super::validate::{self, InvalidSocket};
use super::wire::{Frame, Hello};
use super::{hello, Step, Timeouts, HANDOVER_FD_ENV};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Why the new process cannot take over.
#[derive(Debug, thiserror::Error)]
pub enum InheritError {
    /// `SLUICE_HANDOVER_FD` does not name a usable hand-over socket.
    #[error("{HANDOVER_FD_ENV}={value:?}: {problem}")]
    Env { value: String, problem: String },
    /// The channel failed during a step.
    #[error("hand-over ({step}): {cause}")]
    Channel { step: Step, cause: ChannelError },
    /// The other process does not speak this protocol, or broke its order.
    #[error("hand-over ({step}): {detail}")]
    Protocol { step: Step, detail: String },
    /// A name in the manifest is not one of ours.
    #[error("hand-over manifest: {0}")]
    Name(#[from] NameError),
    /// An inherited socket is not what its name says.
    #[error(transparent)]
    Invalid(#[from] InvalidSocket),
    /// The old process gave up (its reason).
    #[error("the old process aborted the hand-over: {0}")]
    Aborted(String),
    /// A `flows` frame that cannot be taken.
    #[error("hand-over of the UDP flows: {0}")]
    Flows(#[from] flows::FlowsError),
    /// `LISTEN_*` are malformed.
    #[error(transparent)]
    ListenFds(#[from] ListenFdsError),
}

/// Sockets received by name, checked, not yet used.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: BTreeMap<SocketName, OwnedFd>,
}

impl Inherited {
    /// The socket of that name, now the caller's.
    pub fn take(&mut self, name: &SocketName) -> Option<OwnedFd> {
        self.sockets.remove(name)
    }

    /// Every worker's socket of one NodePort address, in worker order. `None` unless
    /// workers `0..n` are all there (a group with a gap cannot be given to workers by
    /// position); the sockets then stay for [`Self::into_rest`].
    pub fn take_group(&mut self, kind: SocketKind, addr: SocketAddr) -> Option<Vec<OwnedFd>> {
        let n = self.group_len(kind, addr);
        let names: Vec<SocketName> = (0..n as u32)
            .map(|w| SocketName::node_port(kind, addr, w))
            .collect();
        if n == 0 || !names.iter().all(|k| self.sockets.contains_key(k)) {
            return None;
        }
        Some(
            names
                .iter()
                .filter_map(|k| self.sockets.remove(k))
                .collect(),
        )
    }

    fn group_len(&self, kind: SocketKind, addr: SocketAddr) -> usize {
        self.sockets
            .keys()
            .filter_map(|k| match k {
                SocketName::Bound {
                    kind: k2,
                    addr: a,
                    worker,
                } if *k2 == kind && *a == addr => Some(*worker as usize + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// How many workers the old process had: one more than the highest worker index of
    /// the NodePort sockets (`None` without any). The new process keeps that number, as
    /// each socket's position in its SO_REUSEPORT group is its worker.
    pub fn workers(&self) -> Option<usize> {
        self.sockets
            .keys()
            .filter_map(|k| match k {
                SocketName::Bound { kind, worker, .. } if kind.is_node_port() => {
                    Some(*worker as usize + 1)
                }
                _ => None,
            })
            .max()
    }

    pub fn names(&self) -> impl Iterator<Item = &SocketName> {
        self.sockets.keys()
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// What nobody took (to close, and under systemd to remove from the fd store).
    pub fn into_rest(self) -> Vec<(SocketName, OwnedFd)> {
        self.sockets.into_iter().collect()
    }

    /// Adds a socket after checking it against its name. A second socket of the same
    /// name is an error (the first stays).
    fn insert_checked(&mut self, name: SocketName, fd: OwnedFd) -> Result<(), InvalidSocket> {
        validate::check(&name, &fd)?;
        if self.sockets.contains_key(&name) {
            return Err(InvalidSocket {
                name: name.to_string(),
                problem: "was passed twice".into(),
            });
        }
        self.sockets.insert(name, fd);
        Ok(())
    }
}

/// A socket from `LISTEN_FDS` that is not used, and why (logged, closed, and removed from
/// the fd store by the caller).
#[derive(Debug)]
pub struct Rejected {
    pub name: String,
    pub fd: OwnedFd,
    pub reason: String,
}

/// How this process started.
#[derive(Debug)]
pub enum Start {
    /// Nothing inherited: bind everything.
    Fresh,
    /// Started by `ctl upgrade`: the channel, the sockets, the state.
    Upgrade {
        session: Session,
        sockets: Inherited,
        state: serde_json::Value,
    },
    /// Restarted by systemd with sockets from its fd store.
    FdStore {
        sockets: Inherited,
        /// Fds with a name that is not ours or a socket that is not what its name says:
        /// not used.
        rejected: Vec<Rejected>,
    },
}

/// Call once at start, before opening any descriptor: the channel of an upgrade (which
/// takes precedence), else systemd's fds, else nothing. On an error of a channel the
/// process must exit with it (the old process is told, and serves on).
pub fn from_env(adopt: super::Adopt) -> Result<Start, InheritError> {
    if let Some(value) = std::env::var_os(HANDOVER_FD_ENV) {
        let value = value.to_string_lossy().into_owned();
        let channel = adopt_channel(&value, adopt)?;
        let (session, sockets, state) = Session::receive(channel, Timeouts::default())?;
        return Ok(Start::Upgrade {
            session,
            sockets,
            state,
        });
    }
    let fds = systemd::listen_fds(adopt)?;
    if fds.is_empty() {
        return Ok(Start::Fresh);
    }
    let (sockets, rejected) = sort_listen_fds(fds);
    Ok(Start::FdStore { sockets, rejected })
}

/// Checks systemd's fds: named and valid ones are inherited, the others rejected.
pub fn sort_listen_fds(fds: Vec<(OwnedFd, String)>) -> (Inherited, Vec<Rejected>) {
    let mut sockets = Inherited::default();
    let mut rejected = Vec::new();
    for (fd, name) in fds {
        let parsed = match name.parse::<SocketName>() {
            Ok(n) => n,
            Err(e) => {
                rejected.push(Rejected {
                    name,
                    fd,
                    reason: e.problem.to_owned(),
                });
                continue;
            }
        };
        if let Err(e) = validate::check(&parsed, &fd) {
            rejected.push(Rejected {
                name,
                fd,
                reason: e.problem,
            });
            continue;
        }
        if sockets.sockets.contains_key(&parsed) {
            rejected.push(Rejected {
                name,
                fd,
                reason: "a second descriptor of this name".into(),
            });
            continue;
        }
        sockets.sockets.insert(parsed, fd);
    }
    (sockets, rejected)
}

fn adopt_channel(value: &str, adopt: super::Adopt) -> Result<Channel, InheritError> {
    let env_err = |problem: String| InheritError::Env {
        value: value.to_owned(),
        problem,
    };
    let fd: i32 = value
        .trim()
        .parse()
        .map_err(|_| env_err("not a descriptor number".into()))?;
    let owned = adopt(fd).map_err(|e| env_err(e.to_string()))?;
    let sock = socket2::SockRef::from(&owned);
    let unix_stream = sock.domain().ok() == Some(socket2::Domain::UNIX)
        && sock.r#type().ok() == Some(socket2::Type::STREAM);
    if !unix_stream {
        return Err(env_err("not a Unix stream socket".into()));
    }
    Channel::new(UnixStream::from(owned)).map_err(|e| env_err(e.to_string()))
}

/// The new process's end of the channel, between "offer received" and "done".
#[derive(Debug)]
pub struct Session {
    channel: Channel,
    predecessor: Hello,
    timeouts: Timeouts,
}

impl Session {
    /// Hellos, then the offer: manifest, fds (checked against their names), state.
    pub fn receive(
        mut channel: Channel,
        timeouts: Timeouts,
    ) -> Result<(Session, Inherited, serde_json::Value), InheritError> {
        let step = Step::Hello;
        let deadline = Deadline::after(timeouts.step);
        let chan = |step| move |cause| InheritError::Channel { step, cause };
        let predecessor = match channel
            .recv(deadline, "the old process's hello")
            .map_err(chan(step))?
        {
            Frame::Hello(h) => h,
            other => return Err(unexpected(step, "hello", &other)),
        };
        let checked = super::check_hello(&predecessor);
        let sent = channel.send(&Frame::Hello(hello()), &[], deadline);
        let mut session = Session {
            channel,
            predecessor,
            timeouts,
        };
        if let Err(detail) = checked {
            // Told, if it still listens; the version problem is the error either way.
            let e = InheritError::Protocol { step, detail };
            session.failed(&e.to_string());
            return Err(e);
        }
        sent.map_err(chan(step))?;
        match session.receive_offer() {
            Ok((sockets, state)) => Ok((session, sockets, state)),
            Err(e) => {
                session.failed(&e.to_string());
                Err(e)
            }
        }
    }

    fn receive_offer(&mut self) -> Result<(Inherited, serde_json::Value), InheritError> {
        let step = Step::Offer;
        let deadline = Deadline::after(self.timeouts.step);
        let chan = |cause| InheritError::Channel { step, cause };
        let names = match self.channel.recv(deadline, "the manifest").map_err(chan)? {
            Frame::Manifest(m) => m.sockets,
            other => return Err(unexpected(step, "manifest", &other)),
        };
        let names: Vec<SocketName> = names
            .iter()
            .map(|n| n.parse())
            .collect::<Result<_, NameError>>()?;
        let mut sockets = Inherited::default();
        let mut next = 0usize;
        let state = loop {
            match self.channel.recv(deadline, "sockets").map_err(chan)? {
                Frame::Fds { first, count } => {
                    let end = first as usize + count as usize;
                    if first as usize != next || end > names.len() {
                        return Err(InheritError::Protocol {
                            step,
                            detail: format!(
                                "fds {first}..{end} do not follow the {next} received of the {} in the manifest",
                                names.len()
                            ),
                        });
                    }
                    for (name, fd) in names[next..end].iter().zip(self.channel.recv_fds()) {
                        sockets.insert_checked(*name, fd)?;
                    }
                    next = end;
                }
                Frame::State(state) => break state,
                other => return Err(unexpected(step, "fds or state", &other)),
            }
        };
        if next != names.len() {
            return Err(InheritError::Protocol {
                step,
                detail: format!(
                    "{next} sockets arrived of the {} in the manifest",
                    names.len()
                ),
            });
        }
        match self
            .channel
            .recv(deadline, "the end of the offer")
            .map_err(chan)?
        {
            Frame::OfferEnd => Ok((sockets, state)),
            other => Err(unexpected(step, "offer-end", &other)),
        }
    }

    /// The old process's hello (its version and pid, for the log).
    pub fn predecessor(&self) -> &Hello {
        &self.predecessor
    }

    /// Tells the old process that this one cannot serve, and why (best effort: it may be
    /// gone). The caller exits afterwards without having accepted anything.
    pub fn failed(&mut self, error: &str) {
        let _ = self.channel.send(
            &Frame::Failed(error.to_owned()),
            &[],
            Deadline::after(Duration::from_secs(1)),
        );
    }

    /// "Ready" (configuration loaded, workers started but not accepting), then takes the
    /// UDP flows the old process sends (checked: [`flows::check_batch`]; `workers` is the
    /// number of workers it had) until its "go" (all within the step timeout), and returns
    /// them. Any other answer, or none, is an error: exit without accepting.
    pub fn ready(&mut self, workers: usize) -> Result<Vec<ReceivedFlow>, InheritError> {
        let step = Step::Ready;
        let deadline = Deadline::after(self.timeouts.step);
        let chan = |cause| InheritError::Channel { step, cause };
        let ready = Frame::Ready {
            pid: std::process::id(),
        };
        self.send_or_hear(step, &ready, deadline)?;
        let mut received = Vec::new();
        loop {
            match self.channel.recv(deadline, "go").map_err(chan)? {
                Frame::Go => return Ok(received),
                Frame::Flows(batch) => {
                    let fds = self.channel.recv_fds();
                    received.extend(flows::check_batch(batch, fds, workers)?);
                }
                Frame::Abort(reason) => return Err(InheritError::Aborted(reason)),
                other => return Err(unexpected(step, "flows or go", &other)),
            }
        }
    }

    /// "Serving" (the workers accept now), then waits for "done": the old process has
    /// stopped accepting and, under systemd, made this one the main process. Returns the
    /// old process's final counter totals when it sent them (a `counters` frame before
    /// "done"). An error here comes after this process began to serve: log it and serve on
    /// (the old one kills this one if it has not heard "serving").
    pub fn serving(mut self) -> Result<Option<serde_json::Value>, InheritError> {
        let step = Step::Serving;
        let deadline = Deadline::after(self.timeouts.step);
        let chan = |cause| InheritError::Channel { step, cause };
        self.send_or_hear(step, &Frame::Serving, deadline)?;
        let mut counters = None;
        loop {
            match self.channel.recv(deadline, "done").map_err(chan)? {
                Frame::Counters(c) if counters.is_none() => counters = Some(c),
                Frame::Done => return Ok(counters),
                Frame::Abort(reason) => return Err(InheritError::Aborted(reason)),
                other => return Err(unexpected(step, "done", &other)),
            }
        }
    }
}

impl Session {
    /// Sends `frame`; when the old process has closed the channel, what it said last (an
    /// abort and its reason) is the better error.
    fn send_or_hear(
        &mut self,
        step: Step,
        frame: &Frame,
        deadline: Deadline,
    ) -> Result<(), InheritError> {
        match self.channel.send(frame, &[], deadline) {
            Ok(()) => Ok(()),
            Err(cause) => {
                let last = self
                    .channel
                    .recv(Deadline::after(Duration::from_millis(200)), "last words");
                match last {
                    Ok(Frame::Abort(reason)) => Err(InheritError::Aborted(reason)),
                    _ => Err(InheritError::Channel { step, cause }),
                }
            }
        }
    }
}

fn unexpected(step: Step, expected: &str, got: &Frame) -> InheritError {
    let detail = match got {
        Frame::Abort(reason) => return InheritError::Aborted(reason.clone()),
        Frame::Failed(e) => format!("expected {expected}, got failed: {e}"),
        other => format!("expected {expected}, got {}", other.name()),
    };
    InheritError::Protocol { step, detail }
}
