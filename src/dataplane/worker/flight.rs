//! A connection's byte state (`Flight`: its holders and ring queues) and the worker's pool
//! of them: taken at accept, given back emptied at close, so that a new connection
//! allocates nothing once the worker has warmed up (issue 18; `tests/allocations.rs`).

use super::ring;
use crate::dataplane::relay::Holder;

/// The state of a connection's bytes in flight, reused from connection to connection (a
/// [`FlightPool`]): its ring queues keep their memory, so a new connection allocates
/// nothing once the worker has warmed up.
#[derive(Debug, Default)]
pub(super) struct Flight {
    pub holders: [Holder; 2],
    /// Per direction: a read filled a whole buffer (`RelayMode::Auto` then uses a pipe).
    pub bulk: [bool; 2],
    /// Per side (socket): its input through the io_uring ring (`ring`).
    pub ring: [ring::SideRing; 2],
    /// Per direction: bytes taken from the ring, sent by ring SENDs (`ring`).
    pub out: [ring::Outgoing; 2],
}

/// Spare [`Flight`]s of a worker's closed connections, for its next ones.
#[derive(Debug, Default)]
pub(super) struct FlightPool {
    /// Boxed: each goes to a connection's `Io` whole, without a copy or an allocation.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<Flight>>,
}

/// Spare flights a worker keeps at most. Past a surge of connections the rest are freed;
/// below it, opening and closing connections moves boxes in and out of the pool.
const SPARE_FLIGHTS_MAX: usize = 1024;

impl FlightPool {
    pub fn take(&mut self) -> Box<Flight> {
        self.spare.pop().unwrap_or_default()
    }

    /// Take back the flight of a closed connection whose holders and ring buffers were
    /// given back: its state is reset, its queues keep their memory.
    pub fn give(&mut self, mut flight: Box<Flight>) {
        if self.spare.len() >= SPARE_FLIGHTS_MAX {
            return;
        }
        debug_assert!(flight.holders.iter().all(|h| matches!(h, Holder::Empty)));
        flight.bulk = [false; 2];
        for r in &mut flight.ring {
            r.reset();
        }
        for o in &mut flight.out {
            o.reset();
        }
        self.spare.push(flight);
    }
}
