//! Maglev consistent hashing (Eisenbud et al., NSDI'16) as a pure function of
//! (endpoint set with weights, table size M).
//!
//! This module owns the lookup table: its size ([`TableSize`], always a prime), how it is
//! filled, how wide its entries are, and walking it. The table depends only on the *set*
//! of endpoints (address + weight) and M — not on the order it is given in, the process,
//! the node, or the time — so every node running any version of sluice builds the same
//! one (guarded by a golden test below). It knows nothing of Services, snapshots, clients
//! or counters, and must not allocate or panic when read.
//!
//! Filling (weighted, as katran's `MaglevHashV2` in `lib/MaglevHashV2.cpp`): endpoints are
//! put in canonical order (by canonical address). Each endpoint `i` with weight `w_i > 0`
//! has a permutation of the slots, `offset_i + j·skip_i (mod M)`, where
//! `offset_i = h1(name_i) % M`, `skip_i = h2(name_i) % (M-1) + 1`, `name_i` the canonical
//! `ip:port` text ([`super::hash::EndpointName`]). Turns proceed in rounds; in round `r`
//! (1, 2, …) endpoint `i` accumulates `w_i` and, each time its accumulator reaches
//! `max_w`, claims its next free slot along its permutation. So its `k`-th claim comes in
//! round `⌈k·max_w / w_i⌉`; ties inside a round go in canonical order. Three loops carry
//! out that one schedule and produce identical tables (property-tested): plain round-robin
//! when all weights are equal; katran's round loop when it is cheap (it costs about
//! `M·max_w/mean_w` visits); and a binary heap keyed by (round, canonical position),
//! O(M log N), when one weight dwarfs the mean and the round loop would spin O(M·N).

use super::hash::{stable_hash, EndpointName, MAGLEV_OFFSET_SEED, MAGLEV_SKIP_SEED};
use crate::model::{Endpoint, DEFAULT_MAGLEV_TABLE_SIZE};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;

/// Largest table size requested sizes are clamped to (before rounding up to a prime):
/// 2^22 entries, 8 MiB per table with 16-bit entries.
pub const MAX_TABLE_SIZE: u32 = 1 << 22;

/// A Maglev table size: a prime in `2..=`[`MAX_TABLE_SIZE`] (rounded up to the next prime).
///
/// Parse, don't validate: the model's `maglev_table_size` is already meant to be prime,
/// but the fill loop only terminates for a prime M (every `skip` must be coprime with M),
/// so the type makes any other value unrepresentable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableSize(u32);

impl TableSize {
    /// The smallest prime ≥ `requested` clamped to `2..=MAX_TABLE_SIZE`.
    pub fn new(requested: u32) -> TableSize {
        let mut m = requested.clamp(2, MAX_TABLE_SIZE);
        while !is_prime(m) {
            m += 1;
        }
        TableSize(m)
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for TableSize {
    fn default() -> Self {
        TableSize(DEFAULT_MAGLEV_TABLE_SIZE)
    }
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d.saturating_mul(d) <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

/// A filled Maglev lookup table. Entries are indices into the endpoint slice the table
/// was built from.
///
/// Entry width: 16 bits while the endpoint list has at most 65,535 entries (indices
/// 0..=65534; `u16::MAX` marks a free slot during the fill), 32 bits beyond. At M = 65537
/// a 16-bit table is 128 KiB instead of 256 KiB: it halves both the memory of 10,000
/// Services (1.3 GB instead of 2.6 GB at the default M) and the cache footprint of
/// `pick` and of the fill's random probes. No Kubernetes Service comes near 65,535 pods,
/// but a larger one still works (at 32 bits) instead of being refused.
#[derive(Clone)]
pub struct MaglevTable {
    size: TableSize,
    entries: Entries,
    /// Slots owned, per endpoint index.
    slots: Box<[u32]>,
    /// Endpoints owning at least one slot.
    usable: u32,
}

#[derive(Clone)]
enum Entries {
    /// No endpoint has weight > 0: nothing can be picked.
    Empty,
    Narrow(Box<[u16]>),
    Wide(Box<[u32]>),
}

impl MaglevTable {
    /// Fill a table of `size` slots for `endpoints`. Weight-0 endpoints get no slot;
    /// others get slots in proportion to their weight. Entries index `endpoints` as
    /// given, but which *address* owns which slot does not depend on the order of
    /// `endpoints` (they are put in canonical order first). Endpoints should be unique by
    /// canonical address; duplicates share one permutation and split its slots.
    pub fn build(endpoints: &[Endpoint], size: TableSize) -> MaglevTable {
        let m = size.get();
        let mut slots = vec![0u32; endpoints.len()].into_boxed_slice();
        let mut order: Vec<u32> = (0..endpoints.len() as u32)
            .filter(|&i| endpoints[i as usize].weight > 0)
            .collect();
        if order.is_empty() {
            return MaglevTable {
                size,
                entries: Entries::Empty,
                slots,
                usable: 0,
            };
        }
        order.sort_by_key(|&i| canonical_order_key(&endpoints[i as usize]));
        let perms: Vec<Permutation> = order
            .iter()
            .map(|&i| Permutation::new(endpoints[i as usize].addr, m))
            .collect();
        let weights: Vec<u32> = order
            .iter()
            .map(|&i| endpoints[i as usize].weight)
            .collect();
        let entries = if endpoints.len() <= usize::from(u16::MAX) {
            Entries::Narrow(fill::<u16>(&order, &perms, &weights, m, &mut slots))
        } else {
            Entries::Wide(fill::<u32>(&order, &perms, &weights, m, &mut slots))
        };
        debug_assert_eq!(
            slots.iter().map(|&s| u64::from(s)).sum::<u64>(),
            u64::from(m)
        );
        let usable = slots.iter().filter(|&&s| s > 0).count() as u32;
        MaglevTable {
            size,
            entries,
            slots,
            usable,
        }
    }

    pub fn size(&self) -> TableSize {
        self.size
    }

    /// The endpoint index owning `slot`; `None` for an empty table or `slot >= M`.
    #[inline]
    pub fn entry(&self, slot: u32) -> Option<u32> {
        match &self.entries {
            Entries::Empty => None,
            Entries::Narrow(t) => t.get(slot as usize).map(|&e| u32::from(e)),
            Entries::Wide(t) => t.get(slot as usize).copied(),
        }
    }

    /// Slots owned by endpoint `index` (0 for weight 0, or an index out of range).
    pub fn slots(&self, index: u32) -> u32 {
        self.slots.get(index as usize).copied().unwrap_or(0)
    }

    /// Number of endpoints owning at least one slot: what `pick` can ever return.
    pub fn usable(&self) -> u32 {
        self.usable
    }

    /// Starting at slot `hash % M`, the first entry (walking forward, wrapping) that
    /// `accept` takes. Visits each slot at most once; `None` if no entry is accepted or
    /// the table is empty. Never allocates or panics.
    #[inline]
    pub fn walk(&self, hash: u64, accept: impl FnMut(u32) -> bool) -> Option<u32> {
        let m = self.size.get();
        let start = (hash % u64::from(m)) as u32;
        match &self.entries {
            Entries::Empty => None,
            Entries::Narrow(t) => walk_slice(t, start, accept),
            Entries::Wide(t) => walk_slice(t, start, accept),
        }
    }

    /// XXH3-64 (seed 0) of the table as little-endian `u32` entries, independent of the
    /// entry width. Two tables with the same fingerprint route identically.
    pub fn fingerprint(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::with_seed(0);
        let m = self.size.get();
        for slot in 0..m {
            let e = self.entry(slot).unwrap_or(u32::MAX);
            h.update(&e.to_le_bytes());
        }
        h.digest()
    }
}

impl std::fmt::Debug for MaglevTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let width = match self.entries {
            Entries::Empty => 0,
            Entries::Narrow(_) => 16,
            Entries::Wide(_) => 32,
        };
        f.debug_struct("MaglevTable")
            .field("size", &self.size.get())
            .field("entry_bits", &width)
            .field("usable", &self.usable)
            .field("slots", &self.slots)
            .finish()
    }
}

/// The canonical order of endpoints: by canonical address (IPv4 before IPv6, then by
/// bytes, then port), then by weight — a total order on (address, weight).
fn canonical_order_key(e: &Endpoint) -> (SocketAddr, u32) {
    (super::hash::canonical_addr(e.addr), e.weight)
}

/// Where one endpoint's permutation of the slots starts and how it steps.
#[derive(Debug, Clone, Copy)]
struct Permutation {
    offset: u32,
    skip: u32,
}

impl Permutation {
    fn new(addr: SocketAddr, m: u32) -> Permutation {
        let name = EndpointName::new(addr);
        let m64 = u64::from(m);
        Permutation {
            offset: (stable_hash(name.as_bytes(), MAGLEV_OFFSET_SEED) % m64) as u32,
            skip: (stable_hash(name.as_bytes(), MAGLEV_SKIP_SEED) % (m64 - 1)) as u32 + 1,
        }
    }
}

/// A table entry type: an endpoint index, with one value reserved for "free".
trait Entry: Copy + Eq {
    const FREE: Self;
    fn from_index(i: u32) -> Self;
}

impl Entry for u16 {
    const FREE: u16 = u16::MAX;
    fn from_index(i: u32) -> u16 {
        i as u16
    }
}

impl Entry for u32 {
    const FREE: u32 = u32::MAX;
    fn from_index(i: u32) -> u32 {
        i
    }
}

/// Fill all `m` slots. `order[j]` is the endpoint index at canonical position `j`, with
/// permutation `perms[j]` and weight `weights[j] > 0`. Counts claims into `slots`.
fn fill<E: Entry>(
    order: &[u32],
    perms: &[Permutation],
    weights: &[u32],
    m: u32,
    slots: &mut [u32],
) -> Box<[E]> {
    let mut filler = Filler::new(order, perms, m, slots);
    let max_w = weights.iter().copied().max().unwrap_or(1);
    if weights.iter().all(|&w| w == max_w) {
        filler.round_robin();
    } else if rounds_are_cheap(weights, max_w, m) {
        filler.rounds(weights);
    } else {
        filler.scheduled(weights);
    }
    filler.table
}

/// Whether katran's round loop, which visits every endpoint in every round, costs at most
/// a few visits per slot. It needs about `M·max_w/Σw` rounds of `N` visits each, i.e.
/// `M·max_w/mean_w` visits: cheap unless one weight dwarfs the mean.
fn rounds_are_cheap(weights: &[u32], max_w: u32, m: u32) -> bool {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let visits = u64::from(m) * u64::from(max_w) * weights.len() as u64 / total.max(1);
    visits <= 8 * u64::from(m)
}

/// The state of one fill: the table so far and each permutation's next candidate slot.
struct Filler<'a, E> {
    table: Box<[E]>,
    order: &'a [u32],
    perms: &'a [Permutation],
    /// Next candidate slot along each permutation (`offset + next·skip`, kept reduced).
    cursor: Vec<u32>,
    slots: &'a mut [u32],
    m: u32,
}

impl<'a, E: Entry> Filler<'a, E> {
    fn new(order: &'a [u32], perms: &'a [Permutation], m: u32, slots: &'a mut [u32]) -> Self {
        Filler {
            table: vec![E::FREE; m as usize].into_boxed_slice(),
            order,
            perms,
            cursor: perms.iter().map(|p| p.offset).collect(),
            slots,
            m,
        }
    }

    /// Canonical position `j` takes the next free slot along its permutation. There is
    /// one: the table is not full, and a prime M makes every permutation visit every slot.
    #[inline]
    fn claim(&mut self, j: usize) {
        let skip = self.perms[j].skip;
        let mut c = self.cursor[j];
        while self.table[c as usize] != E::FREE {
            c = advance(c, skip, self.m);
        }
        self.table[c as usize] = E::from_index(self.order[j]);
        self.cursor[j] = advance(c, skip, self.m);
        self.slots[self.order[j] as usize] += 1;
    }

    /// Equal weights: claims go round-robin in canonical order.
    fn round_robin(&mut self) {
        let mut filled = 0u32;
        loop {
            for j in 0..self.order.len() {
                self.claim(j);
                filled += 1;
                if filled == self.m {
                    return;
                }
            }
        }
    }

    /// Any weights > 0, katran's way: each round, every position in canonical order adds
    /// its weight to an accumulator and claims a slot when that reaches `max_w`. The k-th
    /// claim of position j thus comes in round ⌈k·max_w / w_j⌉ — the same schedule as
    /// [`Filler::scheduled`], at a cost of N visits per round.
    fn rounds(&mut self, weights: &[u32]) {
        let max_w = weights.iter().copied().max().unwrap_or(1);
        let mut acc = vec![0u32; self.order.len()];
        let mut filled = 0u32;
        loop {
            for j in 0..self.order.len() {
                // acc < max_w and w ≤ max_w, so this cannot overflow u64 and, after the
                // subtraction, fits u32 again.
                let a = u64::from(acc[j]) + u64::from(weights[j]);
                if a >= u64::from(max_w) {
                    acc[j] = (a - u64::from(max_w)) as u32;
                    self.claim(j);
                    filled += 1;
                    if filled == self.m {
                        return;
                    }
                } else {
                    acc[j] = a as u32;
                }
            }
        }
    }

    /// Any weights > 0, the same schedule as [`Filler::rounds`] from a heap: the k-th
    /// claim of position j comes in round ⌈k·max_w / w_j⌉, ties in canonical order.
    /// O(M log N) whatever the weights.
    fn scheduled(&mut self, weights: &[u32]) {
        let max_w = u64::from(weights.iter().copied().max().unwrap_or(1));
        let round = |k: u64, w: u32| (k * max_w).div_ceil(u64::from(w));
        let mut claims = vec![0u64; self.order.len()];
        let mut heap: BinaryHeap<Reverse<(u64, u32)>> = (0..self.order.len() as u32)
            .map(|j| Reverse((round(1, weights[j as usize]), j)))
            .collect();
        let mut filled = 0u32;
        while let Some(Reverse((_, j))) = heap.pop() {
            let j = j as usize;
            self.claim(j);
            filled += 1;
            if filled == self.m {
                return;
            }
            claims[j] += 1;
            heap.push(Reverse((round(claims[j] + 1, weights[j]), j as u32)));
        }
    }
}

#[inline(always)]
fn advance(c: u32, skip: u32, m: u32) -> u32 {
    // c < m and skip < m, so c + skip < 2m ≤ 2^23: no overflow.
    let n = c + skip;
    if n >= m {
        n - m
    } else {
        n
    }
}

#[inline]
fn walk_slice<E: Copy + Into<u32>>(
    table: &[E],
    start: u32,
    mut accept: impl FnMut(u32) -> bool,
) -> Option<u32> {
    let start = start as usize;
    let (head, tail) = (table.get(start..)?, table.get(..start)?);
    head.iter()
        .chain(tail)
        .map(|&e| e.into())
        .find(|&e| accept(e))
}

#[cfg(test)]
mod tests;
