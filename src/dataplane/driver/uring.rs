//! The io_uring driver: turns the worker's requests (watch, connect, cancel) into
//! submission entries, submits them in batches, and decodes completions.
//!
//! What it uses, as measured in shared/design/KERNEL.md: multishot POLL for readiness of
//! connection sockets and listeners (edge-triggered: a CQE per wake-up), CONNECT linked to a
//! LINK_TIMEOUT for a real connect timeout, ASYNC_CANCEL to stop them (never POLL_REMOVE: see
//! `Uring::remove_poll`). It does
//! NOT use IORING_OP_SPLICE for sockets (executed by io-wq helper threads on this kernel):
//! bulk bytes are moved by the worker with nonblocking splice(2) when a poll says a socket is
//! ready. Small transfers (a direction in the copy phase of `relay = "auto"`/`"copy"`) go
//! through the ring instead: a multishot RECV into the provided-buffer ring (`bufring`), armed
//! after a one-shot input poll, and a SEND (`MSG_DONTWAIT`, so it completes at submit and never
//! waits in the kernel) straight from the ring buffer (the worker's `ring` module decides).
//! Nor does it use multishot ACCEPT: that takes every connection of a burst before the worker
//! sees the first one, whatever `max_connections_per_worker` says; the worker accepts with
//! accept4(2) when a listener's poll fires, as many as it may take (see `driver`).
//!
//! Sockets are closed with CLOSE entries queued behind the cancels of their polls, and a backend
//! socket's TCP_NODELAY is set with a URING_CMD SETSOCKOPT entry ahead of its CONNECT
//! (Linux 6.7+; setsockopt(2) otherwise): a new connection makes no close(2) or
//! setsockopt(2) call. SHUTDOWN is not used: the kernel always hands it to an io-wq helper
//! thread (`io_shutdown` refuses the non-blocking issue), the worker calls shutdown(2).
//!
//! The ring is `SINGLE_ISSUER + COOP_TASKRUN`. `DEFER_TASKRUN` (with `TASKRUN_FLAG`) is kept
//! as a mode ([`Uring::with_taskrun`]) but off: on top of the ring SEND it did not win (see
//! [`Uring::new`]). In that mode, since Linux 6.13 an enter runs at most 2 × 20 deferred
//! items (`IO_LOCAL_TW_DEFAULT_MAX`), so a submit enters again without waiting while the
//! kernel flags deferred work left.
//!
//! Every entry carries a [`UserData`]: kind, slot and generation. A slot's generation changes
//! when the slot is reused, so a completion of an old connection (a late poll CQE, a connect
//! that finished after its connection was gone) can never be applied to a new one.
//!
//! Lifetimes: the kernel reads an entry's fd number and pointed-to arguments when the entry
//! is *submitted*. Connect arguments live in buffers this driver owns until the submit that
//! sent them; callers must keep fds open until [`Uring::submit_and_wait`] returned (the worker
//! defers closes until after the submit).

#![allow(unsafe_code)]

use super::bufring::{self, BufRing};
use super::{Completion, Driver, Kind, UserData};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::time::Duration;

struct ConnectArgs {
    addr: socket2::SockAddr,
    timeout: types::Timespec,
    /// The value of the TCP_NODELAY set through the ring before the connect (1).
    nodelay: libc::c_int,
}

/// One io_uring instance, owned by one worker thread.
// The connect arguments are boxed on purpose: entries hold raw pointers into them until
// the next submit, so they must not move when the vectors grow.
#[allow(clippy::vec_box)]
pub struct Uring {
    ring: IoUring,
    /// Connect arguments referenced by entries not yet submitted.
    args_pending: Vec<Box<ConnectArgs>>,
    /// Reusable argument buffers (no allocation per connect after warm-up).
    args_free: Vec<Box<ConnectArgs>>,
    raw: Vec<(u64, i32, u32)>,
    /// Built with `IORING_SETUP_DEFER_TASKRUN`: completions are produced only inside an
    /// `io_uring_enter` with GETEVENTS on this thread (see [`Uring::new`]).
    deferred: bool,
    /// Extra no-wait enters made to run deferred completion work left over
    /// (`reap_deferred`), for the tests.
    #[cfg(test)]
    reaps: u64,
    /// The ring sets socket options (URING_CMD SETSOCKOPT, Linux 6.7+): TCP_NODELAY of a
    /// backend socket rides the connect's submission instead of a setsockopt(2).
    sockopts: bool,
    /// The provided-buffer ring of small TCP transfers (group [`BUFFER_GROUP`]); `None`
    /// when the kernel refused it (sockets are then polled for input as before).
    bufs: Option<BufRing>,
}

/// The buffer group of the TCP receive ring.
const BUFFER_GROUP: u16 = 0;
/// Deferred completion work one pass of an enter runs at most (the kernel's
/// `IO_LOCAL_TW_DEFAULT_MAX`, Linux 6.13+); an enter makes at most two passes.
const TW_PER_PASS: usize = 20;
/// Extra no-wait enters per submit at most, to run deferred completion work left over
/// (`Uring::reap_deferred`): up to 64 × 40 completions, so a flood of wake-ups cannot keep
/// the worker from its other work.
const MAX_REAPS: usize = 64;

const POLL_MASK: u32 = (libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP) as u32;
/// The main poll of a socket whose input comes through the ring: output (and, always,
/// errors and hang-ups) only, so that arriving bytes wake the receive, not the poll.
const OUTPUT_MASK: u32 = libc::POLLOUT as u32;
const INPUT_MASK: u32 = (libc::POLLIN | libc::POLLRDHUP) as u32;

impl Uring {
    /// A ring with `entries` submission slots (a power of two) and 4× as many completion
    /// slots: `SINGLE_ISSUER + COOP_TASKRUN`.
    ///
    /// Not `DEFER_TASKRUN` (docs/benchmarks.md, "DEFER_TASKRUN without the UDP loss"): with
    /// the re-enter of `reap_deferred` (an enter runs at most 20 deferred items per pass,
    /// two passes, since Linux 6.13) it won 1.5–4.6% on TCP rows with UDP within ±2% before
    /// the ring SEND; on top of the ring SEND the same A/B was mixed (default row's
    /// keep-alive 0.965×, new connections 1.01–1.03×, UDP 0.99–1.09×), so the default stays.
    /// [`Uring::with_taskrun`] keeps the deferred mode, tested, for whoever takes it further.
    pub fn new(entries: u32) -> io::Result<Uring> {
        Uring::with_taskrun(entries, false)
    }

    /// A ring as [`Uring::new`], with `DEFER_TASKRUN` only if `deferred` (and the kernel takes
    /// it; `COOP_TASKRUN` otherwise): the kernel's completion work is then queued and run
    /// in batches inside the worker's `io_uring_enter(GETEVENTS)`, which needs every
    /// submission and every wait on the thread that created the ring, and a GETEVENTS on
    /// every enter of [`Driver::submit_and_wait`] (even the one that does not wait).
    pub fn with_taskrun(entries: u32, deferred: bool) -> io::Result<Uring> {
        let build = |deferred: bool| {
            let mut b = IoUring::builder();
            b.setup_single_issuer().setup_cqsize(entries * 4);
            if deferred {
                b.setup_defer_taskrun().setup_taskrun_flag();
            } else {
                b.setup_coop_taskrun();
            }
            b.build(entries)
        };
        let (ring, deferred) = match build(deferred) {
            Ok(ring) => (ring, deferred),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (build(false)?, false),
            Err(e) => return Err(e),
        };
        let mut uring = Uring {
            ring,
            args_pending: Vec::new(),
            args_free: Vec::new(),
            raw: Vec::with_capacity(entries as usize * 4),
            deferred,
            #[cfg(test)]
            reaps: 0,
            sockopts: false,
            bufs: None,
        };
        uring.sockopts = uring.try_ring_sockopt();
        uring.bufs = uring.try_buffer_ring();
        Ok(uring)
    }

    /// The TCP buffer ring, registered (Linux 5.19+; multishot RECV needs 6.0): `None`, and
    /// connection sockets are polled for input as before, when the kernel refuses it.
    fn try_buffer_ring(&mut self) -> Option<BufRing> {
        let bufs = match BufRing::new() {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "no memory for the TCP buffer ring: input is polled");
                return None;
            }
        };
        // SAFETY: the ring's memory (a page-aligned mapping of `bufring::COUNT` entries)
        // lives in `self.bufs`, which is unregistered in `Drop for Uring` before it is freed.
        let registered = unsafe {
            self.ring.submitter().register_buf_ring_with_flags(
                bufs.ring_addr(),
                bufring::COUNT,
                BUFFER_GROUP,
                0,
            )
        };
        if let Err(e) = registered {
            tracing::debug!(error = %e, "the kernel refused the TCP buffer ring: input is polled");
            return None;
        }
        Some(bufs)
    }

    fn poll(&mut self, tag: UserData, fd: BorrowedFd<'_>, mask: u32) -> io::Result<()> {
        let entry = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), mask)
            .multi(true)
            .build()
            .user_data(tag.encode());
        self.push(entry)
    }

    /// Whether a TCP_NODELAY set through the ring (URING_CMD SETSOCKOPT) works here: tried
    /// once on a throw-away socket when the ring is built (a kernel before 6.7 answers
    /// EINVAL/EOPNOTSUPP; the driver then uses setsockopt(2)).
    fn try_ring_sockopt(&mut self) -> bool {
        let Ok(socket) = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        else {
            return false;
        };
        let one: libc::c_int = 1;
        let entry = opcode::SetSockOpt::new(
            types::Fd(socket.as_raw_fd()),
            libc::IPPROTO_TCP as u32,
            libc::TCP_NODELAY as u32,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
        .build()
        .user_data(ignore_tag());
        // SAFETY: the socket and `one` outlive the wait below, which returns only once the
        // entry completed (it is the only one in flight on this new ring).
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            return false;
        }
        if self.ring.submit_and_wait(1).is_err() {
            return false;
        }
        let result = self.ring.completion().next().map(|c| c.result());
        result == Some(0) && socket.nodelay().unwrap_or(false)
    }

    /// Whether the ring sets TCP_NODELAY of backend sockets (see `try_ring_sockopt`).
    #[cfg(test)]
    pub fn sets_sockopts(&self) -> bool {
        self.sockopts
    }

    /// Whether this ring defers the kernel's completion work to the worker's waits
    /// (`IORING_SETUP_DEFER_TASKRUN`; false on kernels that refuse it).
    #[cfg(test)]
    pub fn defers_taskrun(&self) -> bool {
        self.deferred
    }

    /// Submit what is queued and collect the completions ready now, without waiting: an
    /// enter with GETEVENTS and no minimum, which runs the deferred completion work of a
    /// DEFER_TASKRUN ring (a plain submit would leave it queued until the next wait).
    fn submit_and_reap(&mut self) -> io::Result<()> {
        if !self.deferred {
            return self.ring.submit().map(|_| ());
        }
        // Dropping the queue handle publishes the entries pushed so far (its tail).
        let queued = self.ring.submission().len() as u32;
        // SAFETY: no argument pointer is passed (`arg` is None, size ignored); the queued
        // entries point only at fds and buffers that stay valid until this call returned
        // (module docs); GETEVENTS with min_complete 0 never blocks.
        unsafe {
            self.ring.submitter().enter::<libc::sigset_t>(
                queued,
                0,
                io_uring::EnterFlags::GETEVENTS.bits(),
                None,
            )
        }
        .map(|_| ())
    }

    /// Run the deferred completion work the last enter left: a DEFER_TASKRUN enter runs at
    /// most [`TW_PER_PASS`] items per pass, two passes (Linux 6.13+), and keeps the rest
    /// queued for the next enter; the kernel then keeps IORING_SQ_TASKRUN up (it also
    /// raises it for work that arrived since). Entered again, GETEVENTS without waiting,
    /// while the flag is up and the completion queue has room, at most [`MAX_REAPS`] times:
    /// the round then sees every completion ready now, as with COOP_TASKRUN, for the cost
    /// of one enter per 40 (measured: cheaper than leaving them to the next round, on UDP
    /// flows and on keep-alive requests).
    fn reap_deferred(&mut self) -> io::Result<()> {
        for _ in 0..MAX_REAPS {
            let room = {
                let cq = self.ring.completion();
                cq.capacity() - cq.len()
            };
            if room < 2 * TW_PER_PASS || !self.ring.submission().taskrun() {
                return Ok(());
            }
            #[cfg(test)]
            {
                self.reaps += 1;
            }
            self.submit_and_reap()?;
        }
        Ok(())
    }

    /// Probe that the operations sluice relies on are supported by this kernel.
    pub fn probe() -> io::Result<()> {
        // The exact setup the workers use, then every opcode they submit.
        let uring = Uring::new(8)?;
        let ring = &uring.ring;
        let mut probe = io_uring::register::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (name, code) in [
            ("POLL_ADD", opcode::PollAdd::CODE),
            ("CONNECT", opcode::Connect::CODE),
            ("LINK_TIMEOUT", opcode::LinkTimeout::CODE),
            ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
            ("CLOSE", opcode::Close::CODE),
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring operation {name} is not supported by this kernel"),
                ));
            }
        }
        Ok(())
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the entry names fds the caller keeps open until the submit after this
            // push (see module docs), or, for a CLOSE, an fd this driver took over; for
            // connects (and their TCP_NODELAY), argument buffers this driver keeps in
            // `args_pending` until that submit.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            // Queue full: submit what is there (fds stay open until the next full submit
            // returns, which is later than this one) and retry.
            self.submit_pending()?;
        }
    }

    fn submit_pending(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn cancel(&mut self, target: u64) -> io::Result<()> {
        let entry = opcode::AsyncCancel::new(target)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(ignore_tag());
        self.push(entry)
    }

    /// Remove the poll armed with `tag` (its removal reports nothing).
    ///
    /// With ASYNC_CANCEL, never POLL_REMOVE: POLL_REMOVE fails with EALREADY when it meets
    /// a multishot poll in the middle of a wake-up (`io_poll_disarm` cannot take the
    /// poll's ownership), and the poll then stays armed for ever, holding its socket open
    /// after the worker closed the fd — a removed listener went on taking datagrams and
    /// connections. ASYNC_CANCEL marks the poll cancelled, which its owner honours.
    fn remove_poll(&mut self, tag: UserData) -> io::Result<()> {
        self.cancel(tag.encode())
    }
}

impl Driver for Uring {
    /// Report (multishot poll) when `listener`'s accept queue is not empty.
    fn watch_listener(
        &mut self,
        listener: u32,
        generation: u32,
        fd: BorrowedFd<'_>,
    ) -> io::Result<()> {
        let entry = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(UserData::new(Kind::Accept, listener, generation).encode());
        self.push(entry)
    }

    /// Stop the poll of `listener` armed as `generation`.
    fn unwatch_listener(&mut self, listener: u32, generation: u32) -> io::Result<()> {
        self.remove_poll(UserData::new(Kind::Accept, listener, generation))
    }

    /// Report readiness of a connection's socket until `unwatch`.
    fn watch(
        &mut self,
        slot: u32,
        generation: u32,
        client: bool,
        fd: BorrowedFd<'_>,
    ) -> io::Result<()> {
        let kind = Kind::poll(client);
        let entry = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), POLL_MASK)
            .multi(true)
            .build()
            .user_data(UserData::new(kind, slot, generation).encode());
        self.push(entry)
    }

    /// Stop reporting readiness of a connection's socket.
    fn unwatch(&mut self, slot: u32, generation: u32, client: bool) -> io::Result<()> {
        self.remove_poll(UserData::new(Kind::poll(client), slot, generation))
    }

    /// Connect `fd` to `addr`, giving up after `timeout`.
    fn connect(
        &mut self,
        slot: u32,
        generation: u32,
        fd: BorrowedFd<'_>,
        addr: SocketAddr,
        timeout: Duration,
    ) -> io::Result<()> {
        let mut args = self.args_free.pop().unwrap_or_else(|| {
            Box::new(ConnectArgs {
                addr: socket2::SockAddr::from(addr),
                timeout: types::Timespec::new(),
                nodelay: 1,
            })
        });
        args.addr = socket2::SockAddr::from(addr);
        // Capped: seconds beyond the kernel's signed field would fail every connect (EINVAL).
        let (sec, nsec) = crate::deadline::timespec(timeout);
        args.timeout = types::Timespec::new().sec(sec).nsec(nsec);
        let connect = opcode::Connect::new(
            types::Fd(fd.as_raw_fd()),
            args.addr.as_ptr().cast(),
            args.addr.len(),
        )
        .build()
        .flags(squeue::Flags::IO_LINK)
        .user_data(UserData::new(Kind::Connect, slot, generation).encode());
        let timeout = opcode::LinkTimeout::new(&args.timeout)
            .build()
            .user_data(ignore_tag());
        // TCP_NODELAY first (executed in order, before the connect is issued), best effort
        // as before: its failure reports nothing.
        let nodelay = if self.sockopts {
            Some(
                opcode::SetSockOpt::new(
                    types::Fd(fd.as_raw_fd()),
                    libc::IPPROTO_TCP as u32,
                    libc::TCP_NODELAY as u32,
                    (&args.nodelay as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
                .build()
                .flags(squeue::Flags::SKIP_SUCCESS)
                .user_data(ignore_tag()),
            )
        } else {
            let _ = socket2::SockRef::from(&fd).set_nodelay(true);
            None
        };
        // The connect and its timeout must be adjacent in the queue for the link to hold.
        let free = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if free < 3 {
            self.submit_pending()?;
        }
        self.args_pending.push(args);
        if let Some(nodelay) = nodelay {
            self.push(nodelay)?;
        }
        self.push(connect)?;
        self.push(timeout)
    }

    /// Cancel an in-flight connect of a connection that is going away.
    fn cancel_connect(&mut self, slot: u32, generation: u32) -> io::Result<()> {
        self.cancel(UserData::new(Kind::Connect, slot, generation).encode())
    }

    /// Report (multishot poll) when a flow's upstream socket is readable or has an error.
    fn watch_flow(&mut self, flow: u64, fd: BorrowedFd<'_>) -> io::Result<()> {
        let entry = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(flow_tag(flow));
        self.push(entry)
    }

    /// Stop the poll of a flow's upstream socket.
    fn unwatch_flow(&mut self, flow: u64) -> io::Result<()> {
        self.cancel(flow_tag(flow)) // not POLL_REMOVE: see `remove_poll`
    }

    fn receives_streams(&self) -> bool {
        self.bufs.is_some()
    }

    /// An output-only poll (the input comes from `arm_receive`).
    fn watch_ring(
        &mut self,
        slot: u32,
        generation: u32,
        client: bool,
        fd: BorrowedFd<'_>,
    ) -> io::Result<()> {
        if self.bufs.is_none() {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        let tag = UserData::new(Kind::poll(client), slot, generation);
        self.poll(tag, fd, OUTPUT_MASK)
    }

    /// A one-shot input poll (tagged as [`Driver::watch_input`]'s).
    fn watch_first_input(
        &mut self,
        slot: u32,
        generation: u32,
        client: bool,
        fd: BorrowedFd<'_>,
    ) -> io::Result<()> {
        let tag = UserData::new(Kind::input(client), slot, generation);
        let entry = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), INPUT_MASK)
            .build()
            .user_data(tag.encode());
        self.push(entry)
    }

    fn arm_receive(
        &mut self,
        slot: u32,
        generation: u32,
        client: bool,
        fd: BorrowedFd<'_>,
    ) -> io::Result<()> {
        if self.bufs.is_none() {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        let tag = UserData::new(Kind::recv(client), slot, generation);
        let entry = opcode::RecvMulti::new(types::Fd(fd.as_raw_fd()), BUFFER_GROUP)
            .build()
            .user_data(tag.encode());
        self.push(entry)
    }

    fn stop_receive(&mut self, slot: u32, generation: u32, client: bool) -> io::Result<()> {
        self.cancel(UserData::new(Kind::recv(client), slot, generation).encode())
    }

    fn watch_input(
        &mut self,
        slot: u32,
        generation: u32,
        client: bool,
        fd: BorrowedFd<'_>,
    ) -> io::Result<()> {
        let tag = UserData::new(Kind::input(client), slot, generation);
        self.poll(tag, fd, INPUT_MASK)
    }

    fn unwatch_input(&mut self, slot: u32, generation: u32, client: bool) -> io::Result<()> {
        self.remove_poll(UserData::new(Kind::input(client), slot, generation))
    }

    fn send_ring(
        &mut self,
        slot: u32,
        generation: u32,
        client: bool,
        fd: BorrowedFd<'_>,
        buf: u16,
        off: u32,
        len: u32,
    ) -> io::Result<()> {
        let Some(bufs) = &self.bufs else {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        };
        let data = &bufs.get(buf, (off + len) as usize)[off as usize..];
        let tag = UserData::new(Kind::send(client), slot, generation);
        // The kernel reads `data` until the completion: the worker recycles the ring buffer
        // only after it (or, for a connection closed meanwhile, when it comes).
        let entry = opcode::Send::new(types::Fd(fd.as_raw_fd()), data.as_ptr(), data.len() as u32)
            .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            .build()
            .user_data(tag.encode());
        self.push(entry)
    }

    fn recycle(&mut self, buf: u16) {
        if let Some(b) = self.bufs.as_mut() {
            b.recycle(buf);
        }
    }

    /// Report when `fd` (an eventfd) becomes readable.
    fn watch_wake(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let entry = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(UserData::new(Kind::Wake, 0, 0).encode());
        self.push(entry)
    }

    /// Close `fd` with a CLOSE entry at the end of the queue: the kernel closes it when the
    /// next submit reaches it, after the entries before it (the removal of its polls). Its
    /// success reports nothing; a failure (none expected: the fd is ours) is ignored.
    fn close(&mut self, fd: OwnedFd) -> io::Result<()> {
        let raw = fd.into_raw_fd();
        let entry = opcode::Close::new(types::Fd(raw))
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(ignore_tag());
        match self.push(entry) {
            Ok(()) => Ok(()),
            Err(e) => {
                // SAFETY: the entry was not queued (push failed before taking it), so the fd
                // taken out of its OwnedFd above is still ours alone: close it here.
                drop(unsafe { OwnedFd::from_raw_fd(raw) });
                Err(e)
            }
        }
    }

    /// Submit everything queued and wait for at least one completion, or until `timeout`
    /// (`Some(ZERO)`: do not wait).
    fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let result = match timeout {
            Some(t) if t.is_zero() => self.submit_and_reap(),
            Some(t) => {
                let (sec, nsec) = crate::deadline::timespec(t);
                let ts = types::Timespec::new().sec(sec).nsec(nsec);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args).map(|_| ())
            }
            None => self.ring.submit_and_wait(1).map(|_| ()),
        };
        // Submitted (or failed before reading them): argument buffers may be reused.
        self.args_free.append(&mut self.args_pending);
        let result = match result {
            Ok(()) if self.deferred => self.reap_deferred(),
            other => other,
        };
        match result {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Decode every completion available now into `out` (cleared first).
    fn completions(&mut self, out: &mut Vec<Completion>) {
        out.clear();
        self.raw.clear();
        for cqe in self.ring.completion() {
            self.raw.push((cqe.user_data(), cqe.result(), cqe.flags()));
        }
        for &(ud, res, flags) in &self.raw {
            let Some(tag) = UserData::decode(ud) else {
                continue;
            };
            let more = cqueue::more(flags);
            let c = match tag.kind {
                Kind::Ignore => continue,
                Kind::Accept => Completion::Acceptable {
                    listener: tag.slot,
                    generation: tag.generation,
                    ended: !more,
                },
                Kind::PollClient | Kind::PollBackend | Kind::InputClient | Kind::InputBackend => {
                    let mask = if res >= 0 { res as u32 } else { 0 };
                    let err = res < 0 || mask & (libc::POLLERR | libc::POLLHUP) as u32 != 0;
                    Completion::Ready {
                        slot: tag.slot,
                        generation: tag.generation,
                        client: matches!(tag.kind, Kind::PollClient | Kind::InputClient),
                        input: matches!(tag.kind, Kind::InputClient | Kind::InputBackend),
                        readable: err || mask & (libc::POLLIN | libc::POLLRDHUP) as u32 != 0,
                        writable: err || mask & libc::POLLOUT as u32 != 0,
                        hangup: err || mask & libc::POLLRDHUP as u32 != 0,
                        ended: !more,
                    }
                }
                Kind::Connect => Completion::Connected {
                    slot: tag.slot,
                    generation: tag.generation,
                    result: match res {
                        0.. => Ok(()),
                        r if -r == libc::ECANCELED => Err(io::Error::from(io::ErrorKind::TimedOut)),
                        r => Err(io::Error::from_raw_os_error(-r)),
                    },
                },
                Kind::RecvClient | Kind::RecvBackend => Completion::Received {
                    slot: tag.slot,
                    generation: tag.generation,
                    client: tag.kind == Kind::RecvClient,
                    result: res,
                    buf: if res > 0 {
                        cqueue::buffer_select(flags)
                    } else {
                        None
                    },
                    ended: !more,
                },
                Kind::SendClient | Kind::SendBackend => Completion::Sent {
                    slot: tag.slot,
                    generation: tag.generation,
                    client: tag.kind == Kind::SendClient,
                    result: res,
                },
                Kind::Wake => Completion::Wake { ended: !more },
                Kind::Flow => Completion::FlowReadable {
                    flow: u64::from(tag.generation) << 32 | u64::from(tag.slot),
                    ended: !more,
                },
            };
            out.push(c);
        }
    }
}

impl Drop for Uring {
    /// Entries still queued are submitted (CLOSE entries among them own their fds): a worker
    /// that ends on an error leaks no socket.
    fn drop(&mut self) {
        if !self.ring.submission().is_empty() {
            let _ = self.ring.submit();
        }
        if self.bufs.is_some() {
            // No receive takes a buffer after this (one still armed fails with ENOBUFS);
            // the buffers are freed with `bufs` after it.
            let _ = self.ring.submitter().unregister_buf_ring(BUFFER_GROUP);
        }
    }
}

/// The user data of a flow's poll: its token's slot (low 24 bits) and generation.
fn flow_tag(flow: u64) -> u64 {
    UserData::new(Kind::Flow, (flow as u32) & 0xFF_FFFF, (flow >> 32) as u32).encode()
}

fn ignore_tag() -> u64 {
    UserData::new(Kind::Ignore, 0, 0).encode()
}

#[cfg(test)]
mod tests;
