//! Small TCP transfers through the io_uring ring (issue 18): a socket whose direction is in
//! the copy phase (`relay = "auto"` before a receive filled a buffer, or `"copy"`) has a
//! multishot RECV into the driver's buffer ring instead of input readiness + read(2).
//!
//! Each completion's bytes wait in the socket's backlog (ring buffers, in arrival order)
//! and the side is reported readable; the connection core then asks for `Receive` as
//! usual, and [`receive`] serves it from the backlog by moving the pieces of ring buffers
//! to the direction's outgoing queue ([`Outgoing`]) — no copy, no system call. `Send`
//! then sends the queue's front piece with a ring SEND straight from the ring buffer
//! ([`send`]); the core is told "would block" until the SEND completes ([`on_sent`]), and
//! only then `Sent` with the bytes it took, so its count of held bytes stays exact (a FIN
//! is passed on only after every held byte was sent). A short SEND puts the rest back at
//! the queue's front; the buffer returns to the ring when its last piece was sent.
//!
//! A socket leaves the ring for good (its receive is cancelled and, once the cancel's last
//! completion came, input readiness is polled as before) when
//! - a receive filled a whole ring buffer: a large transfer, which goes to splice as a full
//!   read does today (`bulk`);
//! - the other side's send would block: back-pressure, the poll path stops reading while
//!   bytes are held, the ring would keep taking them;
//! - the buffer ring ran dry (ENOBUFS) or the kernel refused the receive.
//!
//! Order is kept: no read(2)/splice(2) of a socket happens before its receive's last
//! completion was seen and its backlog was served. The FIN (result 0) and errors are
//! entries of the backlog, served after the bytes before them, as read(2) would report them.

use super::{Driver, Io};
use crate::dataplane::conn::{ConnEvent, Dir, Side};
use crate::dataplane::driver::RING_BUFFER_SIZE;
use crate::dataplane::sys;
use std::collections::VecDeque;

/// Where a socket's ring receive is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum RingState {
    /// Not receiving through the ring (never did, or its receive ended).
    #[default]
    Off,
    /// Waiting for the socket's first input (a one-shot input poll): the receive is armed
    /// only then, so that it never starts with a try that finds nothing.
    Waiting,
    /// A multishot receive is armed.
    Armed,
    /// Its receive was cancelled; its last completion has not come yet.
    Leaving,
}

/// Bytes of a ring buffer on their way to a direction's destination.
#[derive(Debug, Clone, Copy)]
pub(super) struct Piece {
    buf: u16,
    off: u32,
    len: u32,
    /// The buffer's last bytes: it goes back to the ring once this piece was sent.
    last: bool,
}

/// A direction's bytes taken from the ring: the core counts them as held.
#[derive(Debug, Default)]
pub(super) struct Outgoing {
    queue: VecDeque<Piece>,
    /// The piece of the SEND in flight.
    sending: Option<Piece>,
}

impl Outgoing {
    /// The ring buffer a SEND in flight reads.
    pub fn in_flight(&self) -> Option<u16> {
        self.sending.map(|p| p.buf)
    }
}

/// One entry of a socket's backlog.
#[derive(Debug, Clone, Copy)]
pub(super) enum Chunk {
    /// `len` bytes at `off` in ring buffer `buf`.
    Data { buf: u16, off: u32, len: u32 },
    /// End of stream: 0 for the peer's FIN, -errno for an error.
    End(i32),
}

/// The ring receive state of one socket of a connection.
#[derive(Debug, Default)]
pub(super) struct SideRing {
    pub state: RingState,
    /// Its main poll reports output only (`Driver::watch_ring`): re-armed as such.
    pub output_only: bool,
    /// Input readiness is polled (`Driver::watch_input`) since its receive ended.
    pub input_polled: bool,
    /// A receive filled a ring buffer: the direction goes to splice once the ring is left.
    pub to_bulk: bool,
    pub backlog: VecDeque<Chunk>,
}

impl SideRing {
    /// Bytes received by the ring and not yet given to the core, or an end not yet told:
    /// the source must not be read by a system call meanwhile.
    pub fn owns_input(&self) -> bool {
        self.state != RingState::Off || !self.backlog.is_empty()
    }
}

/// Give every ring buffer still held by `io`'s backlogs and outgoing queues back (the
/// connection closes), but those a SEND in flight still reads: per direction, the buffer
/// of its SEND in flight, for the caller to recycle when that SEND completes.
pub(super) fn release<D: Driver>(driver: &mut D, io: &mut Io) -> [Option<u16>; 2] {
    let busy = [io.out[0].in_flight(), io.out[1].in_flight()];
    let mut give = |buf: u16| {
        if !busy.contains(&Some(buf)) {
            driver.recycle(buf);
        }
    };
    for r in &mut io.ring {
        for c in r.backlog.drain(..) {
            if let Chunk::Data { buf, .. } = c {
                give(buf);
            }
        }
    }
    for o in &mut io.out {
        for p in o.queue.drain(..) {
            if p.last {
                give(p.buf);
            }
        }
        o.sending = None;
    }
    busy
}

/// Leave the ring on `side`: cancel its receive (its last completion comes later).
pub(super) fn leave<D: Driver>(
    driver: &mut D,
    io: &mut Io,
    slot: u32,
    generation: u32,
    side: Side,
) -> std::io::Result<()> {
    let r = &mut io.ring[side as usize];
    match r.state {
        RingState::Armed => {
            r.state = RingState::Leaving;
            driver.stop_receive(slot, generation, side == Side::Client)?;
        }
        RingState::Waiting => {
            // No receive yet: its one-shot input poll becomes the input poll of the
            // readiness path (re-armed as such when it fires).
            r.state = RingState::Off;
            r.input_polled = true;
        }
        RingState::Off | RingState::Leaving => {}
    }
    Ok(())
}

/// The first input poll of a `Waiting` side fired (bytes, FIN or an error): arm its
/// multishot receive, which reports whichever it was.
pub(super) fn first_input<D: Driver>(
    driver: &mut D,
    io: &mut Io,
    slot: u32,
    generation: u32,
    side: Side,
) -> std::io::Result<()> {
    io.ring[side as usize].state = RingState::Armed;
    driver.arm_receive(slot, generation, side == Side::Client, io.side(side))
}

/// A ring receive completion of `side`: queue its bytes (or end) in the backlog, leave the
/// ring when the transfer is large, and when the receive ended, poll input if the stream
/// goes on. The caller then reports the side readable.
#[allow(clippy::too_many_arguments)]
pub(super) fn on_received<D: Driver>(
    driver: &mut D,
    io: &mut Io,
    slot: u32,
    generation: u32,
    side: Side,
    result: i32,
    buf: Option<u16>,
    ended: bool,
) -> std::io::Result<()> {
    let client = side == Side::Client;
    let mut stream_ends = false;
    match (result, buf) {
        (n, Some(buf)) if n > 0 => {
            io.ring[side as usize].backlog.push_back(Chunk::Data {
                buf,
                off: 0,
                len: n as u32,
            });
            if n as usize >= RING_BUFFER_SIZE {
                io.ring[side as usize].to_bulk = true;
                leave(driver, io, slot, generation, side)?;
            }
        }
        (n, None) if n > 0 => {
            // A receive of the ring always names its buffer; without one the bytes are
            // lost: the stream cannot go on intact.
            io.ring[side as usize]
                .backlog
                .push_back(Chunk::End(-libc::EIO));
            stream_ends = true;
        }
        (0, _) => {
            io.ring[side as usize].backlog.push_back(Chunk::End(0));
            stream_ends = true;
        }
        (e, _) if -e == libc::ENOBUFS || -e == libc::ECANCELED || -e == libc::EINVAL => {}
        (e, _) => {
            io.ring[side as usize].backlog.push_back(Chunk::End(e));
            stream_ends = true;
        }
    }
    let r = &mut io.ring[side as usize];
    if ended {
        r.state = RingState::Off;
        if r.backlog.is_empty() && r.to_bulk {
            r.to_bulk = false;
            io.bulk[side_dir(side) as usize] = true;
        }
        let r = &mut io.ring[side as usize];
        if !stream_ends && !r.input_polled {
            r.input_polled = true;
            driver.watch_input(slot, generation, client, io.side(side))?;
        }
    }
    Ok(())
}

/// Execute `Op::Receive { dir, max }` for a source socket that owns its input
/// ([`SideRing::owns_input`]): move pieces of its backlog to the direction's outgoing
/// queue (no copy: the bytes stay in their ring buffers).
pub(super) fn receive(io: &mut Io, dir: Dir, max: usize) -> ConnEvent {
    let side = dir.src();
    let r = &mut io.ring[side as usize];
    let out = &mut io.out[dir as usize];
    let room = max;
    let mut moved = 0;
    while moved < room {
        let Some(chunk) = r.backlog.front_mut() else {
            break;
        };
        match chunk {
            Chunk::Data { buf, off, len } => {
                let n = (*len as usize).min(room - moved);
                let whole = n == *len as usize;
                out.queue.push_back(Piece {
                    buf: *buf,
                    off: *off,
                    len: n as u32,
                    last: whole,
                });
                moved += n;
                if whole {
                    r.backlog.pop_front();
                } else {
                    *off += n as u32;
                    *len -= n as u32;
                }
            }
            Chunk::End(code) => {
                if moved > 0 {
                    break;
                }
                let code = *code;
                r.backlog.pop_front();
                if code == 0 {
                    return ConnEvent::Received { dir, bytes: 0 };
                }
                return ConnEvent::Failed {
                    side,
                    reset: sys::is_reset(&std::io::Error::from_raw_os_error(-code)),
                };
            }
        }
    }
    if r.backlog.is_empty() && r.state == RingState::Off && r.to_bulk {
        r.to_bulk = false;
        io.bulk[dir as usize] = true;
    }
    if moved == 0 {
        // Nothing came yet, or (room 0) the holder is full.
        return ConnEvent::ReceiveWouldBlock { dir };
    }
    if r.backlog.is_empty() && r.state != RingState::Off {
        // All the ring had: the next completion reports the side readable again.
        ConnEvent::ReceivedDrained { dir, bytes: moved }
    } else {
        ConnEvent::Received { dir, bytes: moved }
    }
}

/// Execute `Op::Send { dir }` when the direction has bytes from the ring (queued or in
/// flight): start a ring SEND of the front piece if none is in flight. The core is told
/// "would block" until the SEND completes ([`on_sent`]). `None`: nothing from the ring,
/// the holder's bytes are sent as usual.
pub(super) fn send<D: Driver>(
    driver: &mut D,
    io: &mut Io,
    slot: u32,
    generation: u32,
    dir: Dir,
) -> std::io::Result<Option<ConnEvent>> {
    let out = &mut io.out[dir as usize];
    if out.sending.is_some() {
        return Ok(Some(ConnEvent::SendWouldBlock { dir }));
    }
    let Some(p) = out.queue.pop_front() else {
        return Ok(None);
    };
    out.sending = Some(p);
    let dst = dir.dst();
    let fd = io.side(dst);
    driver.send_ring(
        slot,
        generation,
        dst == Side::Client,
        fd,
        p.buf,
        p.off,
        p.len,
    )?;
    Ok(Some(ConnEvent::SendWouldBlock { dir }))
}

/// The ring SEND of `dir` completed with `result`: the event for the core, and whether
/// the destination may take more now (a SEND that took everything).
pub(super) fn on_sent<D: Driver>(
    driver: &mut D,
    io: &mut Io,
    slot: u32,
    generation: u32,
    dir: Dir,
    result: i32,
) -> std::io::Result<(ConnEvent, bool)> {
    let out = &mut io.out[dir as usize];
    let Some(p) = out.sending.take() else {
        // Not ours (cannot happen: one SEND per direction, reported once).
        return Ok((ConnEvent::Sent { dir, bytes: 0 }, false));
    };
    if result > 0 && result as u32 >= p.len {
        if p.last {
            driver.recycle(p.buf);
        }
        return Ok((
            ConnEvent::Sent {
                dir,
                bytes: p.len as usize,
            },
            true,
        ));
    }
    if result > 0 {
        // Short: the socket is full. The rest goes first when it has room again.
        let n = result as u32;
        out.queue.push_front(Piece {
            off: p.off + n,
            len: p.len - n,
            ..p
        });
        leave(driver, io, slot, generation, dir.src())?;
        return Ok((
            ConnEvent::Sent {
                dir,
                bytes: n as usize,
            },
            false,
        ));
    }
    out.queue.push_front(p);
    if -result == libc::EAGAIN {
        // Back-pressure: the source stops being received from while bytes are held.
        leave(driver, io, slot, generation, dir.src())?;
        return Ok((ConnEvent::SendWouldBlock { dir }, false));
    }
    let code = if result == 0 { -libc::EIO } else { result };
    Ok((
        ConnEvent::Failed {
            side: dir.dst(),
            reset: sys::is_reset(&std::io::Error::from_raw_os_error(-code)),
        },
        false,
    ))
}

/// The direction that reads from `side`.
fn side_dir(side: Side) -> Dir {
    match side {
        Side::Client => Dir::ToBackend,
        Side::Backend => Dir::ToClient,
    }
}
