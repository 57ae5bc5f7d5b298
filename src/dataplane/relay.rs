//! Where the bytes of one direction wait between `Receive` and `Send`: a pipe (splice mode,
//! bytes never enter user space) or a buffer (copy mode), taken from a per-worker pool when a
//! direction first has bytes to move and given back as soon as it is empty again.
//!
//! Holding nothing while idle matters: a direction gives its holder back as soon as it is
//! drained (a `Send` emptied it, or a `Receive` found nothing or the FIN), so a keep-alive
//! connection that waits between requests holds no pipe, and a worker needs pipes only for
//! connections with bytes in flight (fds are the scarce resource of a splice relay, see
//! shared/design/KERNEL.md). When no pipe can be created (fd limit), a direction falls back
//! to a buffer instead of failing the connection.
//!
//! The pool of spare pipes is small ([`spare_pipes_for`]: at most [`SPARE_PIPES_MAX`] per
//! worker, and never more than about 1/8 of the fd limit over all workers), and it yields
//! under fd pressure: when the process runs out of fds, the worker closes every spare pipe
//! before it refuses or parks a connection ([`HolderPool::release_spares`]), and for a
//! second after that freed pipes are closed instead of kept.
//!
//! This module executes `Op::Receive` / `Op::Send` of the connection core and turns the
//! syscall result into the core's `ConnEvent`; it does not decide anything.

use super::conn::{ConnEvent, Dir};
use super::sys::{self, Pipe, Transfer};
use crate::model::RelayMode;
use std::os::fd::{AsFd, BorrowedFd};

/// Bytes a holder takes: the default pipe size, and the buffer size of copy mode.
pub const HOLDER_CAPACITY: usize = 64 * 1024;

/// Spare pipes a worker keeps at most, whatever the fd limit.
pub const SPARE_PIPES_MAX: usize = 64;

/// Spare buffers (copy relay) a worker keeps at most; beyond that, freed ones are dropped.
const SPARE_BUFFERS_MAX: usize = 1024;

/// Ticks (of the worker's 100 ms) after fd pressure during which freed pipes are closed.
const LEAN_TICKS: u32 = 10;

/// Spare pipes each of `workers` workers may keep under an fd limit of `fd_limit`: all
/// workers' spares together take at most 1/8 of the fds (2 fds a pipe), and at most
/// [`SPARE_PIPES_MAX`] each.
pub fn spare_pipes_for(fd_limit: u64, workers: usize) -> usize {
    let share = fd_limit / 16 / workers.max(1) as u64;
    share.min(SPARE_PIPES_MAX as u64) as usize
}

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
    /// Spare pipes kept at most.
    spare_pipes: usize,
    buffers: Vec<Box<[u8]>>,
    /// Ticks left during which freed pipes are closed (the process ran short of fds).
    lean_ticks: u32,
    /// Pipes that could not be created since start (fd limit): reported in stats.
    pub pipe_failures: u64,
}

impl HolderPool {
    /// A pool keeping at most `spare_pipes` empty pipes (see [`spare_pipes_for`]).
    pub fn new(mode: RelayMode, spare_pipes: usize) -> HolderPool {
        HolderPool {
            mode,
            pipes: Vec::new(),
            spare_pipes,
            buffers: Vec::new(),
            lean_ticks: 0,
            pipe_failures: 0,
        }
    }

    /// Spare pipes kept now.
    #[cfg(test)]
    pub fn spare_pipes(&self) -> usize {
        self.pipes.len()
    }

    /// The process ran out of fds: close every spare pipe, and close freed pipes instead of
    /// keeping them for a while. Returns the fds closed.
    pub fn release_spares(&mut self) -> usize {
        self.lean_ticks = LEAN_TICKS;
        let fds = self.pipes.len() * 2;
        self.pipes.clear();
        fds
    }

    /// Called every worker tick (100 ms): ends the lean period after fd pressure.
    pub fn tick(&mut self) {
        self.lean_ticks = self.lean_ticks.saturating_sub(1);
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
                Err(e) => {
                    self.pipe_failures += 1;
                    if sys::is_fd_exhaustion(&e) {
                        self.lean_ticks = LEAN_TICKS;
                    }
                }
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

    /// Whether holders may be buffers (`copy`, or `auto` before a direction goes bulk): a
    /// direction can then take its input from the io_uring ring.
    pub fn copies(&self) -> bool {
        self.mode != RelayMode::Splice
    }

    /// Give back an empty holder. A holder that still holds bytes is dropped (its pipe
    /// closed) — only happens when a connection closes with bytes in flight — and so is a
    /// pipe beyond the spares kept, or while fds are short.
    pub fn give(&mut self, holder: Holder, held: usize) {
        match holder {
            Holder::Empty => {}
            Holder::Pipe(p)
                if held == 0 && self.lean_ticks == 0 && self.pipes.len() < self.spare_pipes =>
            {
                self.pipes.push(p)
            }
            Holder::Buffer { buf, .. } if self.buffers.len() < SPARE_BUFFERS_MAX => {
                self.buffers.push(buf)
            }
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
) -> ConnEvent {
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
            ConnEvent::ReceivedDrained { dir, bytes }
        }
        (Ok(Transfer::Moved(bytes)), room) => {
            if room.is_some_and(|r| bytes == r && r == HOLDER_CAPACITY) {
                *bulk = true;
            }
            ConnEvent::Received { dir, bytes }
        }
        (Ok(Transfer::WouldBlock), _) => ConnEvent::ReceiveWouldBlock { dir },
        (Err(e), _) => ConnEvent::Failed {
            side: dir.src(),
            reset: sys::is_reset(&e),
        },
    }
}

/// Execute `Op::Send { dir, held }`: move the held bytes from `holder` to `dst`.
pub fn send(holder: &mut Holder, dst: BorrowedFd<'_>, dir: Dir, held: usize) -> ConnEvent {
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
        Ok(Transfer::Moved(0)) | Ok(Transfer::WouldBlock) => ConnEvent::SendWouldBlock { dir },
        Ok(Transfer::Moved(bytes)) => ConnEvent::Sent { dir, bytes },
        Err(e) => ConnEvent::Failed {
            side: dir.dst(),
            reset: sys::is_reset(&e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_pipes_take_at_most_an_eighth_of_the_fds() {
        assert_eq!(spare_pipes_for(512, 1), 32);
        assert_eq!(spare_pipes_for(512, 2), 16);
        assert_eq!(spare_pipes_for(64, 8), 0);
        assert_eq!(spare_pipes_for(1_048_576, 2), SPARE_PIPES_MAX);
        assert_eq!(spare_pipes_for(20_000, 0), SPARE_PIPES_MAX);
    }

    #[test]
    fn freed_pipes_are_kept_up_to_the_limit_and_closed_under_fd_pressure() {
        let mut pool = HolderPool::new(RelayMode::Splice, 2);
        let holders: Vec<Holder> = (0..3).map(|_| pool.take(true)).collect();
        assert!(holders.iter().all(|h| matches!(h, Holder::Pipe(_))));
        for h in holders {
            pool.give(h, 0);
        }
        assert_eq!(pool.spare_pipes(), 2, "at most the spares allowed");
        assert_eq!(pool.release_spares(), 4, "two pipes, four fds");
        assert_eq!(pool.spare_pipes(), 0);
        let h = pool.take(true);
        pool.give(h, 0);
        assert_eq!(pool.spare_pipes(), 0, "closed while fds are short");
        for _ in 0..LEAN_TICKS {
            pool.tick();
        }
        let h = pool.take(true);
        pool.give(h, 0);
        assert_eq!(pool.spare_pipes(), 1, "kept again after the lean period");
    }
}
