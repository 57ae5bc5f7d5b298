//! Tests of `maglev`.

use super::*;
use proptest::prelude::*;

fn ep(addr: &str, weight: u32) -> Endpoint {
    Endpoint::new(addr.parse().unwrap()).with_weight(weight)
}

/// Endpoints 10.0.<i/256>.<i%256>:8080, weight `w(i)`.
fn endpoints(n: usize, w: impl Fn(usize) -> u32) -> Vec<Endpoint> {
    (0..n)
        .map(|i| {
            Endpoint::new(SocketAddr::from((
                [10, 0, (i / 256) as u8, (i % 256) as u8],
                8080,
            )))
            .with_weight(w(i))
        })
        .collect()
}

/// The owner address of every slot.
fn owners(t: &MaglevTable, eps: &[Endpoint]) -> Vec<SocketAddr> {
    (0..t.size().get())
        .map(|s| eps[t.entry(s).unwrap() as usize].addr)
        .collect()
}

#[test]
fn table_sizes_are_prime() {
    assert_eq!(TableSize::new(65537).get(), 65537);
    assert_eq!(TableSize::new(65536).get(), 65537);
    assert_eq!(TableSize::new(0).get(), 2);
    assert_eq!(TableSize::new(1).get(), 2);
    assert_eq!(TableSize::new(100).get(), 101);
    assert!(is_prime(TableSize::new(u32::MAX).get()));
    assert!(TableSize::new(u32::MAX).get() >= MAX_TABLE_SIZE);
}

/// Golden fingerprint: every node and every version of sluice must build exactly this
/// table for this input. If this fails, the change would make nodes disagree on which
/// pod a client goes to — do not update the numbers unless that is intended and
/// announced.
#[test]
fn golden_table() {
    let eps = [
        ep("127.0.0.2:9000", 1),
        ep("127.0.0.3:9000", 1),
        ep("127.0.0.4:9000", 1),
    ];
    let t = MaglevTable::build(&eps, TableSize::new(65537));
    let first: Vec<u32> = (0..16).map(|s| t.entry(s).unwrap()).collect();
    assert_eq!(first, [0, 1, 0, 1, 1, 1, 0, 1, 2, 2, 2, 2, 1, 0, 2, 0]);
    assert_eq!(t.fingerprint(), 0x181f_d020_e2f4_a945);
    assert_eq!((t.slots(0), t.slots(1), t.slots(2)), (21846, 21846, 21845));
}

#[test]
fn golden_weighted_table() {
    let eps = [
        ep("127.0.0.2:9000", 1),
        ep("127.0.0.3:9000", 2),
        ep("[fd00::4]:9000", 3),
        ep("127.0.0.5:9000", 0),
    ];
    let t = MaglevTable::build(&eps, TableSize::new(65537));
    assert_eq!(t.fingerprint(), 0x3700_3e84_d732_af69);
    let slots: Vec<u32> = (0..4).map(|i| t.slots(i)).collect();
    assert_eq!(slots, [10923, 21846, 32768, 0]);
}

#[test]
fn no_weighted_endpoint_means_empty_table() {
    let t = MaglevTable::build(&[ep("10.0.0.1:1", 0)], TableSize::new(7));
    assert_eq!(t.usable(), 0);
    assert_eq!(t.entry(0), None);
    assert_eq!(t.walk(123, |_| true), None);
    let t = MaglevTable::build(&[], TableSize::new(7));
    assert_eq!(t.walk(0, |_| true), None);
}

#[test]
fn more_endpoints_than_slots_leaves_some_without_slots() {
    let eps = endpoints(10, |_| 1);
    let t = MaglevTable::build(&eps, TableSize::new(7));
    assert_eq!(t.usable(), 7);
    assert_eq!((0..10).map(|i| t.slots(i)).sum::<u32>(), 7);
}

#[test]
fn walk_visits_every_slot_once_then_gives_up() {
    let eps = endpoints(3, |_| 1);
    let t = MaglevTable::build(&eps, TableSize::new(13));
    let mut seen = 0;
    assert_eq!(
        t.walk(u64::MAX, |_| {
            seen += 1;
            false
        }),
        None
    );
    assert_eq!(seen, 13);
}

#[test]
fn wide_entries_above_65535_endpoints() {
    let eps: Vec<Endpoint> = (0..70_000u32)
        .map(|i| {
            Endpoint::new(SocketAddr::from((i.to_be_bytes(), 80)))
                .with_weight(u32::from(i >= 69_990))
        })
        .collect();
    let t = MaglevTable::build(&eps, TableSize::new(1009));
    assert!(matches!(t.entries, Entries::Wide(_)));
    assert_eq!(t.usable(), 10);
    assert!((0..1009).all(|s| t.entry(s).unwrap() >= 69_990));
}

/// The heap schedule with all weights equal takes the same decisions as round-robin.
#[test]
fn scheduled_fill_equals_round_robin_for_equal_weights() {
    let eps = endpoints(37, |_| 5);
    let m = 1009;
    let order: Vec<u32> = (0..37).collect();
    let perms: Vec<Permutation> = eps.iter().map(|e| Permutation::new(e.addr, m)).collect();
    let (mut s1, mut s2) = (vec![0; 37], vec![0; 37]);
    let mut rr = Filler::<u32>::new(&order, &perms, m, &mut s1);
    rr.round_robin();
    let mut sched = Filler::<u32>::new(&order, &perms, m, &mut s2);
    sched.scheduled(&[5; 37]);
    assert_eq!(rr.table, sched.table);
    drop((rr, sched));
    assert_eq!(s1, s2);
}

fn fill_all_ways(weights: &[u32], m: u32) -> [(Box<[u32]>, Vec<u32>); 2] {
    let n = weights.len();
    let eps = endpoints(n, |i| weights[i]);
    let order: Vec<u32> = (0..n as u32).collect();
    let perms: Vec<Permutation> = eps.iter().map(|e| Permutation::new(e.addr, m)).collect();
    let (mut s1, mut s2) = (vec![0; n], vec![0; n]);
    let mut a = Filler::<u32>::new(&order, &perms, m, &mut s1);
    a.rounds(weights);
    let mut b = Filler::<u32>::new(&order, &perms, m, &mut s2);
    b.scheduled(weights);
    let (ta, tb) = (a.table, b.table);
    [(ta, s1), (tb, s2)]
}

#[test]
fn round_loop_is_cheap_unless_one_weight_dwarfs_the_mean() {
    assert!(rounds_are_cheap(&[1, 2, 3, 4], 4, 65537));
    assert!(!rounds_are_cheap(
        &[1000, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        1000,
        65537
    ));
}

/// Over every possible victim, removing one endpoint moves on average well under 1%
/// of the table beyond the victim's own slots.
#[test]
fn removal_disrupts_under_1pct_on_average() {
    let size = TableSize::new(65537);
    for n in [5usize, 15, 24] {
        let eps = endpoints(n, |_| 1);
        let before = owners(&MaglevTable::build(&eps, size), &eps);
        let mut total = 0;
        for victim in &eps {
            let after_eps: Vec<Endpoint> = eps
                .iter()
                .copied()
                .filter(|e| e.addr != victim.addr)
                .collect();
            let after = owners(&MaglevTable::build(&after_eps, size), &after_eps);
            total += before
                .iter()
                .zip(&after)
                .filter(|(b, a)| **b != victim.addr && b != a)
                .count();
        }
        let mean = total as f64 / n as f64 / f64::from(size.get());
        assert!(mean < 0.01, "n={n}: mean extra disruption {mean}");
    }
}

fn small_prime_at_least(n: u32) -> TableSize {
    TableSize::new(n)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// With M ≥ 100·N every endpoint's share is within 1% (relative) of M/N.
    #[test]
    fn equal_weights_share_evenly(n in 1usize..60, extra in 0u32..2000) {
        let eps = endpoints(n, |_| 1);
        let t = MaglevTable::build(&eps, small_prime_at_least(100 * n as u32 + extra));
        let m = f64::from(t.size().get());
        for i in 0..n as u32 {
            let expected = m / n as f64;
            let rel = (f64::from(t.slots(i)) - expected).abs() / expected;
            prop_assert!(rel <= 0.01, "endpoint {i}: {} slots, expected {expected}", t.slots(i));
        }
    }

    /// With M ≥ 100·Σw, shares are proportional to weight within 2% (relative). The
    /// bound: a share is off by < 1 + N·w_i/Σw slots (see the module doc's schedule).
    #[test]
    fn weighted_shares_are_proportional(ws in prop::collection::vec(0u32..5, 1..40)) {
        let total: u32 = ws.iter().sum();
        prop_assume!(total > 0);
        let eps = endpoints(ws.len(), |i| ws[i]);
        let t = MaglevTable::build(&eps, small_prime_at_least(100 * total));
        let m = f64::from(t.size().get());
        for (i, &w) in ws.iter().enumerate() {
            let got = f64::from(t.slots(i as u32));
            if w == 0 {
                prop_assert_eq!(got, 0.0);
                continue;
            }
            let expected = m * f64::from(w) / f64::from(total);
            let rel = (got - expected).abs() / expected;
            prop_assert!(rel <= 0.02, "endpoint {i} w={w}: {got} slots, expected {expected}");
        }
    }

    /// The round loop and the heap carry out the same schedule.
    #[test]
    fn round_loop_and_heap_fill_identically(ws in prop::collection::vec(1u32..50, 1..40)) {
        let [a, b] = fill_all_ways(&ws, 2003);
        prop_assert_eq!(a, b);
    }

    /// The table is a function of the endpoint *set*: any input order gives the same
    /// slot → address mapping.
    #[test]
    fn input_order_does_not_matter(n in 1usize..30, seed: u64, weighted: bool) {
        let eps = endpoints(n, |i| if weighted { 1 + (i as u32 % 3) } else { 1 });
        let mut shuffled = eps.clone();
        // Deterministic Fisher–Yates from `seed`.
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let size = TableSize::new(1009);
        prop_assert_eq!(
            owners(&MaglevTable::build(&eps, size), &eps),
            owners(&MaglevTable::build(&shuffled, size), &shuffled)
        );
    }

    /// Removing one of N endpoints moves its own slots, and few others: Maglev is
    /// near-minimal, not minimal. Measured at M = 65537 over every victim for
    /// N = 2..60: mean 0.45% of the table, worst 1.84% (N = 15; one victim). Bound 2%
    /// here; the average is held to 1% by `removal_disrupts_under_1pct_on_average`.
    #[test]
    fn removal_disrupts_little(n in 2usize..40, victim in any::<prop::sample::Index>()) {
        let size = TableSize::new(65537);
        let before_eps = endpoints(n, |_| 1);
        let gone = before_eps[victim.index(n)].addr;
        let after_eps: Vec<Endpoint> =
            before_eps.iter().copied().filter(|e| e.addr != gone).collect();
        let before = owners(&MaglevTable::build(&before_eps, size), &before_eps);
        let after = owners(&MaglevTable::build(&after_eps, size), &after_eps);
        let extra = before.iter().zip(&after).filter(|(b, a)| **b != gone && b != a).count();
        let bound = 0.02 * f64::from(size.get());
        prop_assert!((extra as f64) <= bound, "n={n}: {extra} extra slots moved");
    }

    /// Adding one endpoint moves the slots it takes, and few others: measured at most
    /// 0.5% of the table for N = 2..60. Bound 1%.
    #[test]
    fn addition_disrupts_little(n in 1usize..40) {
        let size = TableSize::new(65537);
        let before_eps = endpoints(n, |_| 1);
        let after_eps = endpoints(n + 1, |_| 1);
        let new = after_eps[n].addr;
        let before = owners(&MaglevTable::build(&before_eps, size), &before_eps);
        let after = owners(&MaglevTable::build(&after_eps, size), &after_eps);
        let extra = before.iter().zip(&after).filter(|(b, a)| **a != new && b != a).count();
        let bound = 0.01 * f64::from(size.get());
        prop_assert!((extra as f64) <= bound, "n={n}: {extra} extra slots moved");
    }
}
