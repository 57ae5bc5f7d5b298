//! Where the bytes of one direction wait between `Receive` and `Send`: a pipe (splice mode,
//! bytes never enter user space) or a buffer (copy mode), taken from a per-worker pool when a
//! direction first has bytes to move and given back as soon as it is empty again.
//!
//! Holding nothing while idle matters: a keep-alive connection that waits between requests
//! holds no pipe, so a worker needs pipes only for connections with bytes in flight (fds are
//! the scarce resource of a splice relay, see shared/design/KERNEL.md). When no pipe can be
//! created (fd limit), a direction falls back to a buffer instead of failing the connection.
//!
//! This module executes `Op::Receive` / `Op::Send` of the connection core and turns the
//! syscall result into the core's `Event`; it does not decide anything.

use super::conn::{Dir, Event};
use super::sys::{self, Pipe, Transfer};
use crate::model::RelayMode;
use std::os::fd::{AsFd, BorrowedFd};

/// Bytes a holder takes: the default pipe size, and the buffer size of copy mode.
pub const HOLDER_CAPACITY: usize = 64 * 1024;

/// Holders pooled per worker at most; beyond that, freed ones are closed.
const POOL_MAX: usize = 1024;

/// The holder of one direction of one connection.
#[derive(Debug, Default)]
pub enum Holder {
    #[default]
    Empty,
    Pipe(Pipe),
    Buffer {
        buf: Box<[u8]>,
        start: usize,
        end: usize,
    },
}

/// Per-worker pools of empty pipes and buffers.
#[derive(Debug)]
pub struct HolderPool {
    mode: RelayMode,
    pipes: Vec<Pipe>,
    buffers: Vec<Box<[u8]>>,
    /// Pipes that could not be created since start (fd limit): reported in stats.
    pub pipe_failures: u64,
}

impl HolderPool {
    pub fn new(mode: RelayMode) -> HolderPool {
        HolderPool {
            mode,
            pipes: Vec::new(),
            buffers: Vec::new(),
            pipe_failures: 0,
        }
    }

    /// An empty holder for a direction; `bulk` = that direction has seen a read fill a
    /// whole buffer (only `Auto` looks at it).
    fn take(&mut self, bulk: bool) -> Holder {
        let splice = match self.mode {
            RelayMode::Splice => true,
            RelayMode::Copy => false,
            RelayMode::Auto => bulk,
        };
        if splice {
            if let Some(p) = self.pipes.pop() {
                return Holder::Pipe(p);
            }
            match sys::pipe(HOLDER_CAPACITY) {
                // A pipe smaller than a holder would break the core's accounting of how
                // much it may receive; use a buffer then.
                Ok(p) if p.capacity >= HOLDER_CAPACITY => return Holder::Pipe(p),
                Ok(_) => {}
                Err(_) => self.pipe_failures += 1,
            }
        }
        let buf = self
            .buffers
            .pop()
            .unwrap_or_else(|| vec![0u8; HOLDER_CAPACITY].into_boxed_slice());
        Holder::Buffer {
            buf,
            start: 0,
            end: 0,
        }
    }

    /// Give back an empty holder. A holder that still holds bytes is dropped (its pipe
    /// closed) — only happens when a connection closes with bytes in flight.
    pub fn give(&mut self, holder: Holder, held: usize) {
        match holder {
            Holder::Empty => {}
            Holder::Pipe(p) if held == 0 && self.pipes.len() < POOL_MAX => self.pipes.push(p),
            Holder::Buffer { buf, .. } if self.buffers.len() < POOL_MAX => self.buffers.push(buf),
            _ => {}
        }
    }
}

/// Execute `Op::Receive { dir, max }`: move up to `max` bytes from `src` into `holder`.
/// `bulk` is the direction's flag for `RelayMode::Auto`: set when a read fills the buffer
/// (the next holder of this direction is then a pipe).
pub fn receive(
    pool: &mut HolderPool,
    holder: &mut Holder,
    bulk: &mut bool,
    src: BorrowedFd<'_>,
    dir: Dir,
    max: usize,
) -> Event {
    if matches!(holder, Holder::Empty) {
        *holder = pool.take(*bulk);
    }
    let (result, room) = match holder {
        Holder::Empty => unreachable!("just filled"),
        Holder::Pipe(p) => (sys::splice(src, p.write.as_fd(), max), None),
        Holder::Buffer { buf, start, end } => {
            if *end == buf.len() && *start > 0 {
                buf.copy_within(*start..*end, 0);
                *end -= *start;
                *start = 0;
            }
            let room = (buf.len() - *end).min(max);
            let r = sys::read(src, &mut buf[*end..*end + room]);
            if let Ok(Transfer::Moved(n)) = r {
                *end += n;
            }
            (r, Some(room))
        }
    };
    match (result, room) {
        // A short read(2) from a TCP socket took everything it had.
        (Ok(Transfer::Moved(bytes)), Some(room)) if bytes > 0 && bytes < room => {
            Event::ReceivedDrained { dir, bytes }
        }
        (Ok(Transfer::Moved(bytes)), room) => {
            if room.is_some_and(|r| bytes == r && r == HOLDER_CAPACITY) {
                *bulk = true;
            }
            Event::Received { dir, bytes }
        }
        (Ok(Transfer::WouldBlock), _) => Event::ReceiveWouldBlock { dir },
        (Err(e), _) => Event::Failed {
            side: dir.src(),
            reset: sys::is_reset(&e),
        },
    }
}

/// Execute `Op::Send { dir, held }`: move the held bytes from `holder` to `dst`.
pub fn send(holder: &mut Holder, dst: BorrowedFd<'_>, dir: Dir, held: usize) -> Event {
    let result = match holder {
        Holder::Empty => Ok(Transfer::WouldBlock),
        Holder::Pipe(p) => sys::splice(p.read.as_fd(), dst, held),
        Holder::Buffer { buf, start, end } => {
            let r = sys::write(dst, &buf[*start..*end]);
            if let Ok(Transfer::Moved(n)) = r {
                *start += n;
                if start == end {
                    *start = 0;
                    *end = 0;
                }
            }
            r
        }
    };
    match result {
        Ok(Transfer::Moved(0)) | Ok(Transfer::WouldBlock) => Event::SendWouldBlock { dir },
        Ok(Transfer::Moved(bytes)) => Event::Sent { dir, bytes },
        Err(e) => Event::Failed {
            side: dir.dst(),
            reset: sys::is_reset(&e),
        },
    }
}
