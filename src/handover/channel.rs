//! The hand-over channel: [`wire`](super::wire) frames over a Unix stream socket, file
//! descriptors as SCM_RIGHTS (at most [`MAX_FDS_PER_MESSAGE`] per `sendmsg`), every send
//! and receive bounded by a deadline.
//!
//! It uses rustix's `sendmsg`/`recvmsg`, whose ancillary-data API takes `BorrowedFd`s and
//! yields `OwnedFd`s, so passing descriptors needs no `unsafe` here. Received descriptors
//! are close-on-exec (`MSG_CMSG_CLOEXEC`) and owned from the moment they arrive: whatever
//! the outcome (a garbled frame, a timeout, an error), none is leaked and none stays open
//! past the channel. The kernel attaches a message's descriptors to its first byte and never
//! merges them into a read of another message's bytes, so a `fds` frame and its descriptors
//! arrive together; a frame of another kind that arrives with descriptors is an error.

use super::wire::{self, Frame, FrameError, HEADER_LEN};
use rustix::io::Errno;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// The most descriptors one SCM_RIGHTS message may carry (`SCM_MAX_FD`, KERNEL.md).
pub const MAX_FDS_PER_MESSAGE: usize = 253;

/// What went wrong on the channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// Nothing (or not all of a frame) arrived, or the peer took nothing, before the deadline.
    #[error("timed out after {after:.1?} waiting for {waiting_for}")]
    Timeout {
        waiting_for: &'static str,
        after: Duration,
    },
    /// The other process closed its end (it exited, or gave up).
    #[error("the other process closed the hand-over channel while this one waited for {waiting_for}{partial}")]
    Closed {
        waiting_for: &'static str,
        /// ` (after 3 of 120 bytes of a state frame)` when it closed mid-frame.
        partial: String,
    },
    /// A socket call failed.
    #[error("hand-over channel: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that are not a frame of this protocol.
    #[error("bad bytes on the hand-over channel: {0}")]
    Frame(#[from] FrameError),
    /// The kernel could not install every descriptor sent (MSG_CTRUNC): this process is at
    /// its RLIMIT_NOFILE (or the buffer was short).
    #[error(
        "the kernel dropped file descriptors passed to this process (MSG_CTRUNC): raise its \
         file descriptor limit (RLIMIT_NOFILE, LimitNOFILE= in the unit)"
    )]
    FdsDropped,
    /// Descriptors arrived with a frame that carries none, or a `fds` frame with another count.
    #[error("a {frame} frame arrived with {got} file descriptors; it should carry {expected}")]
    FdCount {
        frame: &'static str,
        expected: usize,
        got: usize,
    },
    /// A caller asked to send more descriptors in one message than SCM_RIGHTS allows.
    #[error("{0} file descriptors in one message: at most {MAX_FDS_PER_MESSAGE}")]
    TooManyFds(usize),
}

/// One end of the hand-over channel.
#[derive(Debug)]
pub struct Channel {
    stream: UnixStream,
    /// Descriptors received and not yet taken by [`Self::recv_fds`].
    received: VecDeque<OwnedFd>,
}

impl Channel {
    /// A channel over a connected Unix stream socket (blocking; timeouts are set per call).
    pub fn new(stream: UnixStream) -> io::Result<Channel> {
        stream.set_nonblocking(false)?;
        Ok(Channel {
            stream,
            received: VecDeque::new(),
        })
    }

    /// Both ends, connected (tests; the daemon's pair is made by `process`).
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = UnixStream::pair()?;
        Ok((Channel::new(a)?, Channel::new(b)?))
    }

    /// Sends `frame` with `fds` attached (only a `fds` frame carries any).
    pub fn send(
        &mut self,
        frame: &Frame,
        fds: &[BorrowedFd<'_>],
        deadline: Deadline,
    ) -> Result<(), ChannelError> {
        if fds.len() > MAX_FDS_PER_MESSAGE {
            return Err(ChannelError::TooManyFds(fds.len()));
        }
        let bytes = frame.encode()?;
        let waiting_for = "the other process to take a frame";
        let mut sent = 0;
        let mut pending = fds;
        while sent < bytes.len() {
            let left = deadline.left(waiting_for)?;
            self.stream.set_write_timeout(Some(left))?;
            let mut space =
                vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(pending.len()))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !pending.is_empty() && !control.push(SendAncillaryMessage::ScmRights(pending)) {
                return Err(ChannelError::TooManyFds(pending.len()));
            }
            let iov = [IoSlice::new(&bytes[sent..])];
            match sendmsg(&self.stream, &iov, &mut control, SendFlags::NOSIGNAL) {
                Ok(n) => {
                    sent += n;
                    // The descriptors went with the first byte.
                    pending = &[];
                }
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => return Err(deadline.expired(waiting_for)),
                Err(Errno::PIPE | Errno::CONNRESET) => {
                    return Err(ChannelError::Closed {
                        waiting_for,
                        partial: String::new(),
                    })
                }
                Err(e) => return Err(io::Error::from(e).into()),
            }
        }
        Ok(())
    }

    /// Receives the next frame. `waiting_for` names it in errors ("the new process's ready").
    /// A `fds` frame's descriptors are then taken with [`Self::recv_fds`].
    pub fn recv(
        &mut self,
        deadline: Deadline,
        waiting_for: &'static str,
    ) -> Result<Frame, ChannelError> {
        let before = self.received.len();
        let mut header = [0u8; HEADER_LEN];
        self.read_exact(&mut header, deadline, waiting_for, None)?;
        let (kind, len) = wire::decode_header(header)?;
        let mut payload = vec![0u8; len as usize];
        self.read_exact(&mut payload, deadline, waiting_for, Some(kind))?;
        let frame = wire::decode(kind, &payload)?;
        let arrived = self.received.len() - before;
        let expected = match frame {
            Frame::Fds { count, .. } => count as usize,
            Frame::Flows(ref batch) => batch.flows.len(),
            _ => 0,
        };
        if arrived != expected {
            // Close what came: it belongs to no frame we accept.
            self.received.clear();
            return Err(ChannelError::FdCount {
                frame: frame.name(),
                expected,
                got: arrived,
            });
        }
        Ok(frame)
    }

    /// The descriptors of the last `fds` (or `flows`) frame, in the order they were sent.
    pub fn recv_fds(&mut self) -> Vec<OwnedFd> {
        self.received.drain(..).collect()
    }

    fn read_exact(
        &mut self,
        buf: &mut [u8],
        deadline: Deadline,
        waiting_for: &'static str,
        kind: Option<u8>,
    ) -> Result<(), ChannelError> {
        let mut got = 0;
        let mut space =
            [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
        while got < buf.len() {
            let left = deadline.left(waiting_for)?;
            self.stream.set_read_timeout(Some(left))?;
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut iov = [IoSliceMut::new(&mut buf[got..])];
            let result = recvmsg(
                &self.stream,
                &mut iov,
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            );
            // Take ownership of whatever descriptors came, before anything can fail.
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = message {
                    self.received.extend(fds);
                }
            }
            match result {
                Ok(msg) => {
                    if msg.flags.contains(ReturnFlags::CTRUNC) {
                        self.received.clear();
                        return Err(ChannelError::FdsDropped);
                    }
                    if msg.bytes == 0 {
                        let partial = match kind {
                            None if got == 0 => String::new(),
                            None => format!(" (after {got} bytes of a frame header)"),
                            Some(k) => format!(
                                " (after {got} of {} bytes of a {} frame)",
                                buf.len(),
                                wire::kind_name(k)
                            ),
                        };
                        return Err(ChannelError::Closed {
                            waiting_for,
                            partial,
                        });
                    }
                    got += msg.bytes;
                }
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => return Err(deadline.expired(waiting_for)),
                Err(Errno::CONNRESET) => {
                    return Err(ChannelError::Closed {
                        waiting_for,
                        partial: String::new(),
                    })
                }
                Err(e) => return Err(io::Error::from(e).into()),
            }
        }
        Ok(())
    }
}

impl std::os::fd::AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.stream)
    }
}

/// When a step of the hand-over must be done by, and how long the step was given (for
/// "timed out after 10.0s waiting for …").
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    span: Duration,
}

impl Deadline {
    /// `span` from now.
    pub fn after(span: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + span,
            span,
        }
    }

    /// Time left until the deadline (zero once it passed).
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Time left (at least 1 ms, as a zero socket timeout means "forever"), or a timeout
    /// error naming what was awaited once the deadline has passed.
    fn left(&self, waiting_for: &'static str) -> Result<Duration, ChannelError> {
        let left = self.at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.expired(waiting_for));
        }
        Ok(left.max(Duration::from_millis(1)))
    }

    fn expired(&self, waiting_for: &'static str) -> ChannelError {
        ChannelError::Timeout {
            waiting_for,
            after: self.span,
        }
    }
}
