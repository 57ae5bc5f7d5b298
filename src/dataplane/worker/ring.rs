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

use super::{Driver, Io, Worker};
use crate::dataplane::conn::{ConnEvent, Dir, Side};
use crate::dataplane::connections::ConnHandle;
use crate::dataplane::driver::RING_BUFFER_SIZE;
use crate::dataplane::sys;
use std::collections::VecDeque;
use std::io;

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
    /// Empty, for another connection; the queue keeps its memory.
    pub fn reset(&mut self) {
        self.queue.clear();
        self.sending = None;
    }

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
    /// As new, for another connection; the backlog keeps its memory.
    pub fn reset(&mut self) {
        let mut backlog = std::mem::take(&mut self.backlog);
        backlog.clear();
        *self = SideRing {
            backlog,
            ..SideRing::default()
        };
    }

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
    let busy = [io.flight.out[0].in_flight(), io.flight.out[1].in_flight()];
    let mut give = |buf: u16| {
        if !busy.contains(&Some(buf)) {
            driver.recycle(buf);
        }
    };
    for r in &mut io.flight.ring {
        for c in r.backlog.drain(..) {
            if let Chunk::Data { buf, .. } = c {
                give(buf);
            }
        }
    }
    for o in &mut io.flight.out {
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
    let r = &mut io.flight.ring[side as usize];
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
    io.flight.ring[side as usize].state = RingState::Armed;
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
    let chunk = match (result, buf) {
        (n, Some(buf)) if n > 0 => Some(Chunk::Data {
            buf,
            off: 0,
            len: n as u32,
        }),
        // A receive of the ring always names its buffer; without one the bytes are lost:
        // the stream cannot go on intact.
        (n, None) if n > 0 => Some(Chunk::End(-libc::EIO)),
        (0, _) => Some(Chunk::End(0)),
        (e, _) if -e == libc::ENOBUFS || -e == libc::ECANCELED || -e == libc::EINVAL => None,
        (e, _) => Some(Chunk::End(e)),
    };
    let stream_ends = matches!(chunk, Some(Chunk::End(_)));
    if let Some(chunk) = chunk {
        io.flight.ring[side as usize].backlog.push_back(chunk);
    }
    if buf.is_some() && result > 0 && result as usize >= RING_BUFFER_SIZE {
        io.flight.ring[side as usize].to_bulk = true;
        leave(driver, io, slot, generation, side)?;
    }
    let r = &mut io.flight.ring[side as usize];
    if ended {
        r.state = RingState::Off;
        if r.backlog.is_empty() && r.to_bulk {
            r.to_bulk = false;
            io.flight.bulk[side_dir(side) as usize] = true;
        }
        let r = &mut io.flight.ring[side as usize];
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
    let r = &mut io.flight.ring[side as usize];
    let out = &mut io.flight.out[dir as usize];
    let mut moved = 0;
    while moved < max {
        let Some(chunk) = r.backlog.front_mut() else {
            break;
        };
        match chunk {
            Chunk::Data { buf, off, len } => {
                let n = (*len as usize).min(max - moved);
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
        io.flight.bulk[dir as usize] = true;
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
    let out = &mut io.flight.out[dir as usize];
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
    let out = &mut io.flight.out[dir as usize];
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

impl<D: Driver> Worker<D> {
    /// A ring receive's completion (`Completion::Received`): bytes, FIN or error of the
    /// connection's `client` or backend socket.
    pub(super) fn on_ring_received(
        &mut self,
        slot: u32,
        generation: u32,
        client: bool,
        result: i32,
        buf: Option<u16>,
        ended: bool,
    ) -> io::Result<()> {
        let conn = ConnHandle::from_parts(slot, generation);
        let side = if client { Side::Client } else { Side::Backend };
        let Some(io) = self.table.resources_mut(conn) else {
            // A late completion of a connection that is gone.
            if let Some(buf) = buf {
                self.driver.recycle(buf);
            }
            return Ok(());
        };
        on_received(
            &mut self.driver,
            io,
            slot,
            generation,
            side,
            result,
            buf,
            ended,
        )?;
        self.table.handle(
            self.now,
            conn,
            ConnEvent::Ready {
                side,
                readable: true,
                writable: false,
            },
        );
        Ok(())
    }

    /// A ring SEND's completion (`Completion::Sent`) to the connection's `client` or
    /// backend socket.
    pub(super) fn on_ring_sent(
        &mut self,
        slot: u32,
        generation: u32,
        client: bool,
        result: i32,
    ) -> io::Result<()> {
        let conn = ConnHandle::from_parts(slot, generation);
        let (dst, dir) = if client {
            (Side::Client, Dir::ToClient)
        } else {
            (Side::Backend, Dir::ToBackend)
        };
        let Some(io) = self.table.resources_mut(conn) else {
            // The connection closed while its SEND was in flight.
            if let Some(i) = self
                .orphan_sends
                .iter()
                .position(|o| (o.0, o.1, o.2) == (slot, generation, client))
            {
                let (.., buf) = self.orphan_sends.swap_remove(i);
                self.driver.recycle(buf);
            }
            return Ok(());
        };
        let (event, writable) = on_sent(&mut self.driver, io, slot, generation, dir, result)?;
        let now = self.now;
        self.table.handle(now, conn, event);
        if writable {
            self.table.handle(
                now,
                conn,
                ConnEvent::Ready {
                    side: dst,
                    readable: false,
                    writable: true,
                },
            );
        }
        self.give_back_if_drained(conn, dir);
        Ok(())
    }

    /// A closing connection's ring state: cancel its receives and input polls, give its
    /// ring buffers back, and remember the buffers of SENDs still in flight (recycled when
    /// they complete, [`Self::on_ring_sent`]).
    pub(super) fn stop_ring(&mut self, slot: u32, generation: u32, io: &mut Io) -> io::Result<()> {
        for side in [Side::Client, Side::Backend] {
            let client = side == Side::Client;
            let r = &io.flight.ring[side as usize];
            if r.state == RingState::Armed {
                self.driver.stop_receive(slot, generation, client)?;
            }
            if r.input_polled || r.state == RingState::Waiting {
                self.driver.unwatch_input(slot, generation, client)?;
            }
        }
        let busy = release(&mut self.driver, io);
        for dir in Dir::BOTH {
            if let Some(buf) = busy[dir as usize] {
                let client = dir.dst() == Side::Client;
                self.orphan_sends.push((slot, generation, client, buf));
            }
        }
        Ok(())
    }
}

/// The direction that reads from `side`.
fn side_dir(side: Side) -> Dir {
    match side {
        Side::Client => Dir::ToBackend,
        Side::Backend => Dir::ToClient,
    }
}
