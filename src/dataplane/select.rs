//! Which endpoint a new connection goes to, per the Service port's policy, with the state
//! some policies keep per worker: affinity tables, round-robin positions, a PRNG.
//!
//! The state is private to one worker and keyed by the Service port's stable id, so it
//! survives snapshot swaps (a reload does not forget affinities or restart round-robin).
//! Pure given its inputs: time comes in as `now`, randomness from a seeded xorshift.

use super::affinity::AffinityTable;
use crate::model::Policy;
use crate::table::{EndpointId, ServiceEntry};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// Per-worker selection state.
#[derive(Debug)]
pub struct Selector {
    rng: u64,
    positions: HashMap<u64, usize, ahash::RandomState>,
    affinity: HashMap<u64, AffinityTable, ahash::RandomState>,
}

impl Selector {
    /// `seed` must not be 0 (it is forced odd).
    pub fn new(seed: u64) -> Selector {
        Selector {
            rng: seed | 1,
            positions: HashMap::default(),
            affinity: HashMap::default(),
        }
    }

    /// The endpoint for a connection from `client`, not one of `tried`; `None` when no
    /// usable endpoint is left.
    pub fn choose(
        &mut self,
        entry: &ServiceEntry,
        client: SocketAddr,
        tried: &[EndpointId],
        now: Instant,
    ) -> Option<EndpointId> {
        match entry.port.policy {
            Policy::Maglev { .. } => entry.pick(client, tried),
            Policy::ClientIp {
                timeout,
                max_entries,
            } => {
                let table = self
                    .affinity
                    .entry(entry.stable_id())
                    .or_insert_with(|| AffinityTable::new(max_entries));
                let ip = canonical_ip(client.ip());
                let remembered = table
                    .lookup(ip, now)
                    .and_then(|addr| entry.endpoint_by_addr(addr))
                    .filter(|&id| entry.usable(id) && !tried.contains(&id));
                let id = match remembered {
                    Some(id) => id,
                    None => entry.pick(client, tried)?,
                };
                table.remember(ip, entry.endpoint(id).endpoint.addr, now, now + timeout);
                Some(id)
            }
            Policy::RoundRobin => {
                let len = entry.schedule_len();
                if len == 0 {
                    return None;
                }
                let position = self.positions.entry(entry.stable_id()).or_insert(0);
                let at = *position % len;
                *position = (at + 1) % len;
                entry.round_robin(at, tried)
            }
            Policy::Random => {
                let r = self.next();
                entry.weighted(r, tried)
            }
            Policy::LeastConnections => {
                let a = entry.weighted(self.next(), tried)?;
                let b = entry.weighted(self.next(), tried)?;
                // Compare active/weight without dividing: active_a · w_b vs active_b · w_a.
                let load = |id: EndpointId| {
                    let e = entry.endpoint(id);
                    (
                        u128::from(e.stats.active()),
                        u128::from(e.endpoint.weight.max(1)),
                    )
                };
                let ((la, wa), (lb, wb)) = (load(a), load(b));
                Some(if lb * wa < la * wb { b } else { a })
            }
        }
    }

    /// Clients remembered for affinity, all Service ports (for stats and tests).
    pub fn affinity_entries(&self) -> usize {
        self.affinity.values().map(AffinityTable::len).sum()
    }

    /// xorshift64*.
    fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}
