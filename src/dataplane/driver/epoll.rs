//! The epoll driver (through mio): the fallback when io_uring is unavailable.
//!
//! It gives the worker the same completions as the io_uring driver, built from readiness:
//! - listeners: registered for readability (edge-triggered); an edge is reported as
//!   `Acceptable` and the worker accepts (as many as it may) until EAGAIN;
//! - readiness of connection sockets: registered readable + writable, edge-triggered, like
//!   io_uring's multishot poll; `unwatch` needs no syscall because closing the fd (which the
//!   worker does right after) removes it from the epoll set;
//! - connect: nonblocking connect(2), completion on writability, result from SO_ERROR; the
//!   connect timeout is a deadline in a heap checked at every round.
//!
//! Completion tags are the drivers' shared [`UserData`] (kind/slot/generation), so a
//! stale event of a reused slot is ignored the same way. This module has no `unsafe`: the
//! raw syscalls it needs are in `dataplane::sys`.

use super::{Completion, Driver, Kind, UserData};
use crate::dataplane::sys;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

struct Connecting {
    generation: u32,
    fd: RawFd,
}

/// The epoll driver of one worker.
pub struct Epoll {
    poll: Poll,
    events: Events,
    /// Per listener index: (generation, fd) while watched.
    listeners: Vec<Option<(u32, RawFd)>>,
    connecting: HashMap<u32, Connecting, ahash::RandomState>,
    deadlines: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    /// Completions known without waiting (a connect that finished or failed at once).
    pending: Vec<Completion>,
    /// Sockets to close before the next wait ([`Driver::close`]).
    closing: Vec<OwnedFd>,
    /// Reused list of one round's finished connects (no allocation per round).
    connected: Vec<(u32, u32)>,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        Ok(Epoll {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            listeners: Vec::new(),
            connecting: HashMap::default(),
            deadlines: BinaryHeap::new(),
            pending: Vec::new(),
            closing: Vec::new(),
            connected: Vec::new(),
        })
    }

    fn token(kind: Kind, slot: u32, generation: u32) -> Token {
        Token(
            UserData {
                kind,
                slot,
                generation,
            }
            .encode() as usize,
        )
    }

    fn finish_connect(
        &mut self,
        slot: u32,
        generation: u32,
        timed_out: bool,
        out: &mut Vec<Completion>,
    ) {
        match self.connecting.get(&slot) {
            Some(c) if c.generation == generation => {}
            _ => return,
        }
        let c = self.connecting.remove(&slot).expect("checked above");
        let _ = self.poll.registry().deregister(&mut SourceFd(&c.fd));
        let result = if timed_out {
            Err(io::Error::from(io::ErrorKind::TimedOut))
        } else {
            match sys::socket_error(c.fd) {
                Ok(None) => Ok(()),
                Ok(Some(e)) | Err(e) => Err(e),
            }
        };
        out.push(Completion::Connected {
            slot,
            generation,
            result,
        });
    }
}

impl Driver for Epoll {
    fn watch_listener(
        &mut self,
        listener: u32,
        generation: u32,
        fd: BorrowedFd<'_>,
    ) -> io::Result<()> {
        let raw = fd.as_raw_fd();
        let i = listener as usize;
        if self.listeners.len() <= i {
            self.listeners.resize(i + 1, None);
        }
        if let Some((_, old)) = self.listeners[i].take() {
            let _ = self.poll.registry().deregister(&mut SourceFd(&old));
        }
        // Registering a listener that already has connections queued reports it at once.
        self.poll.registry().register(
            &mut SourceFd(&raw),
            Self::token(Kind::Accept, listener, generation),
            Interest::READABLE,
        )?;
        self.listeners[i] = Some((generation, raw));
        Ok(())
    }

    fn unwatch_listener(&mut self, listener: u32, generation: u32) -> io::Result<()> {
        if let Some(entry) = self.listeners.get_mut(listener as usize) {
            if let Some((g, fd)) = *entry {
                if g == generation {
                    *entry = None;
                    self.poll.registry().deregister(&mut SourceFd(&fd))?;
                }
            }
        }
        Ok(())
    }

    fn watch(
        &mut self,
        slot: u32,
        generation: u32,
        client: bool,
        fd: BorrowedFd<'_>,
    ) -> io::Result<()> {
        let kind = Kind::poll(client);
        self.poll.registry().register(
            &mut SourceFd(&fd.as_raw_fd()),
            Self::token(kind, slot, generation),
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    fn unwatch(&mut self, _slot: u32, _generation: u32, _client: bool) -> io::Result<()> {
        // Closing the fd (the worker does, right after) removes it from the epoll set.
        Ok(())
    }

    fn connect(
        &mut self,
        slot: u32,
        generation: u32,
        fd: BorrowedFd<'_>,
        addr: SocketAddr,
        timeout: Duration,
    ) -> io::Result<()> {
        let socket = socket2::SockRef::from(&fd);
        let _ = socket.set_nodelay(true);
        match socket.connect(&addr.into()) {
            Ok(()) => self.pending.push(Completion::Connected {
                slot,
                generation,
                result: Ok(()),
            }),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                let raw = fd.as_raw_fd();
                self.poll.registry().register(
                    &mut SourceFd(&raw),
                    Self::token(Kind::Connect, slot, generation),
                    Interest::WRITABLE,
                )?;
                self.connecting.insert(
                    slot,
                    Connecting {
                        generation,
                        fd: raw,
                    },
                );
                self.deadlines.push(Reverse((
                    crate::deadline::after(Instant::now(), timeout),
                    slot,
                    generation,
                )));
            }
            Err(e) => self.pending.push(Completion::Connected {
                slot,
                generation,
                result: Err(e),
            }),
        }
        Ok(())
    }

    fn cancel_connect(&mut self, slot: u32, generation: u32) -> io::Result<()> {
        if self
            .connecting
            .get(&slot)
            .is_some_and(|c| c.generation == generation)
        {
            let c = self.connecting.remove(&slot).expect("checked above");
            let _ = self.poll.registry().deregister(&mut SourceFd(&c.fd));
        }
        Ok(())
    }

    fn watch_flow(&mut self, flow: u64, fd: BorrowedFd<'_>) -> io::Result<()> {
        let token = Self::token(Kind::Flow, (flow as u32) & 0xFF_FFFF, (flow >> 32) as u32);
        self.poll
            .registry()
            .register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)
    }

    fn unwatch_flow(&mut self, _flow: u64) -> io::Result<()> {
        // Closing the fd (the worker does, right after) removes it from the epoll set.
        Ok(())
    }

    fn watch_wake(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let token = Self::token(Kind::Wake, 0, 0);
        let mut source = SourceFd(&fd.as_raw_fd());
        match self
            .poll
            .registry()
            .register(&mut source, token, Interest::READABLE)
        {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    fn close(&mut self, fd: OwnedFd) -> io::Result<()> {
        self.closing.push(fd);
        Ok(())
    }

    fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        // Closing removes the fds from the epoll set: nothing else to do for them.
        self.closing.clear();
        let mut wait = timeout;
        if !self.pending.is_empty() {
            wait = Some(Duration::ZERO);
        } else if let Some(Reverse((deadline, _, _))) = self.deadlines.peek() {
            let until = deadline.saturating_duration_since(Instant::now());
            wait = Some(wait.map_or(until, |w| w.min(until)));
        }
        match self.poll.poll(&mut self.events, wait) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            r => r,
        }
    }

    fn completions(&mut self, out: &mut Vec<Completion>) {
        out.clear();
        out.append(&mut self.pending);
        let mut connected = std::mem::take(&mut self.connected);
        for event in self.events.iter() {
            let Some(tag) = UserData::decode(event.token().0 as u64) else {
                continue;
            };
            match tag.kind {
                Kind::Accept => {
                    let current = self.listeners.get(tag.slot as usize).copied().flatten();
                    if current.is_some_and(|(g, _)| g == tag.generation) {
                        out.push(Completion::Acceptable {
                            listener: tag.slot,
                            generation: tag.generation,
                            ended: false,
                        });
                    }
                }
                Kind::PollClient | Kind::PollBackend => {
                    let error = event.is_error();
                    out.push(Completion::Ready {
                        slot: tag.slot,
                        generation: tag.generation,
                        client: tag.kind == Kind::PollClient,
                        readable: error || event.is_readable() || event.is_read_closed(),
                        writable: error || event.is_writable() || event.is_write_closed(),
                        hangup: error || event.is_read_closed(),
                        ended: false,
                        input: false,
                    });
                }
                Kind::Connect => connected.push((tag.slot, tag.generation)),
                Kind::Wake => out.push(Completion::Wake { ended: false }),
                Kind::Flow => out.push(Completion::FlowReadable {
                    flow: u64::from(tag.generation) << 32 | u64::from(tag.slot),
                    ended: false,
                }),
                // Ring receives exist only under io_uring.
                Kind::Ignore
                | Kind::RecvClient
                | Kind::RecvBackend
                | Kind::InputClient
                | Kind::InputBackend
                | Kind::SendClient
                | Kind::SendBackend => {}
            }
        }
        for &(slot, generation) in &connected {
            self.finish_connect(slot, generation, false, out);
        }
        connected.clear();
        self.connected = connected;
        let now = Instant::now();
        while let Some(&Reverse((deadline, slot, generation))) = self.deadlines.peek() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            self.finish_connect(slot, generation, true, out);
        }
    }
}
