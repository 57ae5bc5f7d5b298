//! [`SourceRanges`]: a Service's `loadBalancerSourceRanges` made ready for the accept path —
//! per family, the prefixes sorted and with those covered by another dropped, so that they
//! are disjoint and one binary search says whether a client is inside. Built off the hot
//! path; `admits` never allocates, locks or panics.

use crate::model::{canonical_ip, Cidr};
use std::net::IpAddr;

/// Who may connect, by client address (see [`SourceRanges::admits`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceRanges {
    /// Disjoint IPv4 prefixes as (first, last) addresses, sorted.
    v4: Box<[(u32, u32)]>,
    /// Disjoint IPv6 prefixes as (first, last) addresses, sorted.
    v6: Box<[(u128, u128)]>,
}

impl SourceRanges {
    /// The ranges of `cidrs` (any order, overlaps and duplicates allowed).
    pub fn new(cidrs: &[Cidr]) -> SourceRanges {
        let mut v4: Vec<(u32, u32)> = Vec::new();
        let mut v6: Vec<(u128, u128)> = Vec::new();
        for c in cidrs {
            match c.addr() {
                IpAddr::V4(a) => {
                    let first = u32::from(a);
                    let span = u32::MAX.checked_shr(u32::from(c.prefix())).unwrap_or(0);
                    v4.push((first, first | span));
                }
                IpAddr::V6(a) => {
                    let first = u128::from(a);
                    let span = u128::MAX.checked_shr(u32::from(c.prefix())).unwrap_or(0);
                    v6.push((first, first | span));
                }
            }
        }
        SourceRanges {
            v4: disjoint(v4),
            v6: disjoint(v6),
        }
    }

    /// No range at all: every client is admitted.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `client` may connect: it is inside a range, or no range is of its family
    /// (kube-proxy runs one proxier per family, and each sees its family's ranges only: a
    /// Service restricted to IPv4 ranges is open to every IPv6 client). IPv4-mapped
    /// addresses are IPv4.
    #[inline]
    pub fn admits(&self, client: IpAddr) -> bool {
        match canonical_ip(client) {
            IpAddr::V4(a) => inside(&self.v4, u32::from(a)),
            IpAddr::V6(a) => inside(&self.v6, u128::from(a)),
        }
    }

    /// Whether some range of `ip`'s family holds `ip` (false when there is none).
    pub fn holds(&self, ip: IpAddr) -> bool {
        match canonical_ip(ip) {
            IpAddr::V4(a) => !self.v4.is_empty() && inside(&self.v4, u32::from(a)),
            IpAddr::V6(a) => !self.v6.is_empty() && inside(&self.v6, u128::from(a)),
        }
    }
}

/// `ranges` sorted by first address, each dropped when an earlier one covers it. Prefixes
/// are either nested or disjoint, so the result is disjoint.
fn disjoint<T: Copy + Ord>(mut ranges: Vec<(T, T)>) -> Box<[(T, T)]> {
    // Same first address: the wider (larger last) first, so it covers the rest.
    ranges.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last() {
            Some(&(_, last)) if r.1 <= last => {} // inside the previous one
            _ => out.push(r),
        }
    }
    out.into_boxed_slice()
}

/// Empty: no range of this family, admitted. Else the last range starting at or before
/// `a` must end at or after it.
#[inline]
fn inside<T: Copy + Ord>(ranges: &[(T, T)], a: T) -> bool {
    if ranges.is_empty() {
        return true;
    }
    let after = ranges.partition_point(|&(first, _)| first <= a);
    after > 0 && a <= ranges[after - 1].1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(list: &[&str]) -> SourceRanges {
        let cidrs: Vec<Cidr> = list.iter().map(|s| s.parse().unwrap()).collect();
        SourceRanges::new(&cidrs)
    }

    /// Each row: the ranges, clients admitted, clients refused.
    #[test]
    fn admits_by_family_like_kube_proxy() {
        #[rustfmt::skip]
        let rows: &[(&[&str], &[&str], &[&str])] = &[
            (&[], &["192.0.2.1", "2001:db8::1"], &[]),
            (&["10.0.0.0/8"], &["10.0.0.0", "10.255.255.255", "::ffff:10.1.2.3", "2001:db8::1"],
                &["9.255.255.255", "11.0.0.0", "192.0.2.1"]),
            (&["127.0.0.2/32"], &["127.0.0.2"], &["127.0.0.3", "127.0.0.1"]),
            // Nested and duplicate prefixes: the widest holds.
            (&["10.1.0.0/16", "10.0.0.0/8", "10.1.2.0/24", "10.0.0.0/8"], &["10.200.0.1", "10.1.2.3"],
                &["11.0.0.1"]),
            // Disjoint prefixes in any order.
            (&["192.0.2.128/25", "198.51.100.0/24", "192.0.2.0/26"],
                &["192.0.2.1", "192.0.2.200", "198.51.100.9"], &["192.0.2.64", "192.0.2.127", "203.0.113.1"]),
            (&["0.0.0.0/0"], &["1.2.3.4", "255.255.255.255"], &[]),
            (&["2001:db8::/32"], &["2001:db8:ffff::1", "10.0.0.1"], &["2001:db9::1", "::1"]),
            (&["::/0", "10.0.0.0/8"], &["fe80::1"], &["192.0.2.1"]),
            (&["2001:db8::1/128", "2001:db8::/127"], &["2001:db8::", "2001:db8::1"], &["2001:db8::2"]),
        ];
        for (list, admitted, refused) in rows {
            let r = ranges(list);
            for c in *admitted {
                assert!(r.admits(c.parse().unwrap()), "{list:?} admits {c}");
            }
            for c in *refused {
                assert!(!r.admits(c.parse().unwrap()), "{list:?} refuses {c}");
            }
        }
    }

    #[test]
    fn holds_needs_a_range_of_the_family() {
        let r = ranges(&["10.0.0.0/8"]);
        assert!(r.holds("10.0.0.5".parse().unwrap()));
        assert!(!r.holds("2001:db8::1".parse().unwrap()));
        assert!(!ranges(&[]).holds("10.0.0.5".parse().unwrap()));
    }
}
