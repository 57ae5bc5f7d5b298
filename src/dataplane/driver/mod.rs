//! Drivers execute the worker loop's requests against the kernel and report completions.
//!
//! The worker (and the connection core below it) never branches on the driver: it speaks
//! only the [`Driver`] trait. Two implementations:
//! - [`uring::Uring`] (default): multishot poll, connect linked to a timeout, batched
//!   submissions — see its module docs.
//! - [`epoll::Epoll`] (fallback when io_uring is unavailable: `kernel.io_uring_disabled`, a
//!   container seccomp profile, an old kernel): mio/epoll readiness, edge-triggered, with
//!   connect(2) done by the driver and connect timeouts kept in a timer heap.
//!
//! Sockets are closed through the driver ([`Driver::close`]), in the submit that removes
//! their polls: the io_uring driver puts a CLOSE entry in the ring, so a finished connection
//! costs no close(2) of its own.
//!
//! Both report readiness edge-triggered (a completion per wake-up), which is what the
//! connection core expects. Bytes are moved by the worker with splice(2)/read/write under
//! either driver, and connections are accepted by the worker with accept4(2) when a
//! listener is reported [`Completion::Acceptable`]: only the worker knows how many more it
//! may take (`max_connections_per_worker`), so no driver accepts on its own. (A multishot
//! ACCEPT keeps accepting until it is cancelled — a burst of 2,000 connects was taken whole
//! with a limit of 200 — and there is no way to give it a budget.)

mod bufring;
pub mod epoll;
pub mod uring;

/// Bytes a ring receive takes at most (one buffer of the io_uring driver's buffer ring).
pub const RING_BUFFER_SIZE: usize = bufring::STRIDE;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

/// Most connection slots a worker can address (24 bits of a completion tag).
pub const MAX_SLOTS: u32 = 1 << 24;

/// What a completion is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Readiness of a listener (its accept queue is not empty).
    Accept = 1,
    PollClient = 2,
    PollBackend = 3,
    Connect = 4,
    Wake = 5,
    /// Completions nobody waits for (link timeouts, cancels, poll removals).
    Ignore = 6,
    /// Readiness of a UDP flow's upstream socket.
    Flow = 7,
    /// Bytes received by the ring (multishot RECV) from a connection's client or backend.
    RecvClient = 8,
    RecvBackend = 9,
    /// Input readiness of a socket whose ring receive ended (`Driver::watch_input`).
    InputClient = 10,
    InputBackend = 11,
    /// A ring SEND to a connection's client or backend, from a ring buffer.
    SendClient = 12,
    SendBackend = 13,
}

impl Kind {
    /// The readiness kind of a connection's client (`client`) or backend socket.
    pub fn poll(client: bool) -> Kind {
        if client {
            Kind::PollClient
        } else {
            Kind::PollBackend
        }
    }

    /// The ring receive of a connection's client or backend socket.
    pub fn recv(client: bool) -> Kind {
        if client {
            Kind::RecvClient
        } else {
            Kind::RecvBackend
        }
    }

    /// The input-only poll of a connection's client or backend socket.
    pub fn input(client: bool) -> Kind {
        if client {
            Kind::InputClient
        } else {
            Kind::InputBackend
        }
    }

    /// A ring SEND to a connection's client or backend socket.
    pub fn send(client: bool) -> Kind {
        if client {
            Kind::SendClient
        } else {
            Kind::SendBackend
        }
    }
}

/// The 64-bit tag of a driver entry (io_uring user_data, epoll token): kind (8 bits) |
/// slot (24 bits) | generation (32 bits). Both drivers use it, so a stale report of a reused
/// slot is recognised the same way under either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserData {
    pub kind: Kind,
    pub slot: u32,
    pub generation: u32,
}

impl UserData {
    pub fn new(kind: Kind, slot: u32, generation: u32) -> UserData {
        UserData {
            kind,
            slot,
            generation,
        }
    }

    pub fn encode(self) -> u64 {
        (self.kind as u64) << 56
            | (u64::from(self.slot) & 0xFF_FFFF) << 32
            | u64::from(self.generation)
    }

    pub fn decode(v: u64) -> Option<UserData> {
        let kind = match (v >> 56) as u8 {
            1 => Kind::Accept,
            2 => Kind::PollClient,
            3 => Kind::PollBackend,
            4 => Kind::Connect,
            5 => Kind::Wake,
            6 => Kind::Ignore,
            7 => Kind::Flow,
            8 => Kind::RecvClient,
            9 => Kind::RecvBackend,
            10 => Kind::InputClient,
            11 => Kind::InputBackend,
            12 => Kind::SendClient,
            13 => Kind::SendBackend,
            _ => return None,
        };
        Some(UserData {
            kind,
            slot: ((v >> 32) & 0xFF_FFFF) as u32,
            generation: v as u32,
        })
    }
}

/// Which driver to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverChoice {
    Uring,
    Epoll,
}

impl DriverChoice {
    pub fn name(self) -> &'static str {
        match self {
            DriverChoice::Uring => "io_uring",
            DriverChoice::Epoll => "epoll",
        }
    }
}

/// A decoded completion.
#[derive(Debug)]
pub enum Completion {
    /// A listener may have connections waiting to be accepted. `ended` when the multishot
    /// poll stopped (it must be armed again to keep being told).
    Acceptable {
        listener: u32,
        generation: u32,
        ended: bool,
    },
    /// Readiness of a connection's socket (`client` or backend). `ended` when the multishot
    /// poll stopped (it must be re-armed if the connection still lives).
    Ready {
        slot: u32,
        generation: u32,
        client: bool,
        readable: bool,
        writable: bool,
        /// The peer shut down sending, or the socket failed (POLLRDHUP/POLLHUP/POLLERR).
        hangup: bool,
        ended: bool,
        /// From the input poll of [`Driver::watch_input`] (re-armed as such), not the
        /// socket's main one.
        input: bool,
    },
    /// A ring receive of a connection's socket (`client` or backend) completed: `result`
    /// bytes (> 0) in buffer `buf` (sent by [`Driver::send_ring`], given back with
    /// [`Driver::recycle`]), 0 for the peer's FIN, or -errno (ENOBUFS: the buffer ring ran
    /// dry, ECANCELED: stopped). `ended` when the multishot receive stopped.
    Received {
        slot: u32,
        generation: u32,
        client: bool,
        result: i32,
        buf: Option<u16>,
        ended: bool,
    },
    /// A ring SEND ([`Driver::send_ring`]) to a connection's `client` or backend socket
    /// completed: `result` bytes sent (maybe fewer than asked), or -errno.
    Sent {
        slot: u32,
        generation: u32,
        client: bool,
        result: i32,
    },
    /// A connect finished: `Ok(())` or the error (`TimedOut` when the link timeout fired).
    Connected {
        slot: u32,
        generation: u32,
        result: io::Result<()>,
    },
    /// The worker's eventfd was signalled; `ended` as for `Ready`.
    Wake { ended: bool },
    /// A UDP flow's upstream socket has replies (or an error) to read; `flow` is the token
    /// given to [`Driver::watch_flow`]; `ended` as for `Ready`.
    FlowReadable { flow: u64, ended: bool },
}

/// The operations a worker needs from its event source. Fds passed in must stay open until
/// the next [`Driver::submit_and_wait`] has returned (the worker defers closes until then).
pub trait Driver {
    /// Report when listener `listener` has connections waiting (`Completion::Acceptable`,
    /// edge-triggered: once per wake-up, and at once if some are waiting already) until
    /// `unwatch_listener`; `generation` tells this arm from earlier ones.
    fn watch_listener(
        &mut self,
        listener: u32,
        generation: u32,
        fd: BorrowedFd<'_>,
    ) -> io::Result<()>;
    /// Stop reporting the listener armed as `generation`.
    fn unwatch_listener(&mut self, listener: u32, generation: u32) -> io::Result<()>;
    /// Report readiness of a connection's socket until `unwatch` (or the fd is closed).
    fn watch(
        &mut self,
        slot: u32,
        generation: u32,
        client: bool,
        fd: BorrowedFd<'_>,
    ) -> io::Result<()>;
    fn unwatch(&mut self, slot: u32, generation: u32, client: bool) -> io::Result<()>;
    /// Set TCP_NODELAY on `fd` (a new nonblocking backend socket; the relay forwards small
    /// writes at once) and connect it to `addr`, reporting `Completion::Connected` within
    /// `timeout`. The option is best effort, as a setsockopt(2) whose error is ignored.
    fn connect(
        &mut self,
        slot: u32,
        generation: u32,
        fd: BorrowedFd<'_>,
        addr: SocketAddr,
        timeout: Duration,
    ) -> io::Result<()>;
    /// Forget an in-flight connect of a connection that is going away.
    fn cancel_connect(&mut self, slot: u32, generation: u32) -> io::Result<()>;
    /// Report when a UDP flow's upstream socket becomes readable (replies, or an ICMP
    /// error to collect) until `unwatch_flow` (or the fd is closed). `flow` is the flow's
    /// token: slot in the low 24 bits, generation in the high 32.
    fn watch_flow(&mut self, flow: u64, fd: BorrowedFd<'_>) -> io::Result<()>;
    /// Stop reporting the flow's socket (before it is closed).
    fn unwatch_flow(&mut self, flow: u64) -> io::Result<()>;
    /// Whether [`Driver::watch_ring`] works (io_uring with a buffer ring).
    fn receives_streams(&self) -> bool {
        false
    }
    /// As [`Driver::watch`], but the socket's input comes through the ring: report only
    /// output readiness (and errors); its bytes come from [`Driver::arm_receive`].
    fn watch_ring(
        &mut self,
        _slot: u32,
        _generation: u32,
        _client: bool,
        _fd: BorrowedFd<'_>,
    ) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// Report, once, input readiness of a socket watched with [`Driver::watch_ring`]
    /// (`Completion::Ready` with `input`, ended).
    fn watch_first_input(
        &mut self,
        _slot: u32,
        _generation: u32,
        _client: bool,
        _fd: BorrowedFd<'_>,
    ) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// Start the ring receive of a socket watched with [`Driver::watch_ring`].
    fn arm_receive(
        &mut self,
        _slot: u32,
        _generation: u32,
        _client: bool,
        _fd: BorrowedFd<'_>,
    ) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// Stop the ring receive of a socket (its last completion still reports).
    fn stop_receive(&mut self, _slot: u32, _generation: u32, _client: bool) -> io::Result<()> {
        Ok(())
    }
    /// Report input readiness of a socket watched with [`Driver::watch_ring`] whose ring
    /// receive ended (`Completion::Ready` with `input`), until [`Driver::unwatch_input`].
    fn watch_input(
        &mut self,
        _slot: u32,
        _generation: u32,
        _client: bool,
        _fd: BorrowedFd<'_>,
    ) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    fn unwatch_input(&mut self, _slot: u32, _generation: u32, _client: bool) -> io::Result<()> {
        Ok(())
    }
    /// Send `len` bytes at `off` of ring buffer `buf` to the socket (`Completion::Sent`),
    /// without waiting for room (a full socket answers EAGAIN). The buffer must not be
    /// recycled before the completion.
    #[allow(clippy::too_many_arguments)]
    fn send_ring(
        &mut self,
        _slot: u32,
        _generation: u32,
        _client: bool,
        _fd: BorrowedFd<'_>,
        _buf: u16,
        _off: u32,
        _len: u32,
    ) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// Give ring buffer `buf` back to the kernel.
    fn recycle(&mut self, _buf: u16) {}
    /// Report when `fd` (the worker's eventfd) becomes readable.
    fn watch_wake(&mut self, fd: BorrowedFd<'_>) -> io::Result<()>;
    /// Close `fd` after the entries queued before it (the removal of its polls, the cancel
    /// of its connect) took effect: in the next [`Driver::submit_and_wait`], before it
    /// sleeps. io_uring: a CLOSE entry at the end of that submission (no close(2) of the
    /// worker's own); epoll: close(2) before its wait.
    fn close(&mut self, fd: OwnedFd) -> io::Result<()>;
    /// Submit what is queued (closes included) and wait for something to report, at most
    /// `timeout`.
    fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()>;
    /// Move every completion available now into `out` (cleared first).
    fn completions(&mut self, out: &mut Vec<Completion>);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        for kind in [
            Kind::Accept,
            Kind::PollClient,
            Kind::PollBackend,
            Kind::Connect,
            Kind::Wake,
            Kind::Ignore,
            Kind::Flow,
            Kind::RecvClient,
            Kind::RecvBackend,
            Kind::InputClient,
            Kind::InputBackend,
            Kind::SendClient,
            Kind::SendBackend,
        ] {
            let u = UserData {
                kind,
                slot: MAX_SLOTS - 1,
                generation: u32::MAX,
            };
            assert_eq!(UserData::decode(u.encode()), Some(u));
        }
        assert_eq!(UserData::decode(0), None);
    }
}
