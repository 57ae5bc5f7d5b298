//! The stable hash: the one place that turns client keys and endpoint names into numbers.
//!
//! Everything that must agree across nodes, processes and versions of sluice goes through
//! here: the canonical text of an endpoint (the Maglev "name"), the bytes of a client key,
//! and the fixed seeds. The algorithm is XXH3-64 (`xxhash-rust`), whose output is a frozen
//! specification, with the seeds below. Changing any seed, any key layout, or the canonical
//! endpoint text changes which pod every client lands on, on every node at once: the golden
//! tests at the bottom of this file exist to make such a change fail loudly. This module
//! must not use randomness, per-process state, `std`'s `Hash`/`Hasher` (its output is not
//! stable across Rust versions), or any formatting whose output std could change.

use crate::model::HashKey;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of the client-key hash (`pick`): ASCII "sluice" + 0x0001.
pub const CLIENT_KEY_SEED: u64 = 0x736c_7569_6365_0001;
/// Seed of a Maglev endpoint's `offset` hash: ASCII "sluice" + 0x0002.
pub const MAGLEV_OFFSET_SEED: u64 = 0x736c_7569_6365_0002;
/// Seed of a Maglev endpoint's `skip` hash: ASCII "sluice" + 0x0003.
pub const MAGLEV_SKIP_SEED: u64 = 0x736c_7569_6365_0003;

/// XXH3-64 of `bytes` with `seed`. Stable forever (frozen spec); the only hash function
/// the routing tables use.
#[inline]
pub fn stable_hash(bytes: &[u8], seed: u64) -> u64 {
    xxh3_64_with_seed(bytes, seed)
}

/// The hash of a client's key, as Maglev `pick` reduces it modulo the table size.
///
/// Key bytes (after [`canonical_ip`]):
/// - [`HashKey::ClientIpPort`]: IP bytes (4 for IPv4, 16 for IPv6) then the source port,
///   big-endian (6 or 18 bytes);
/// - [`HashKey::ClientIp`]: IP bytes only (4 or 16 bytes).
///
/// Never allocates.
#[inline]
pub fn client_hash(key: HashKey, client: SocketAddr) -> u64 {
    let mut buf = [0u8; 18];
    let mut len = match canonical_ip(client.ip()) {
        IpAddr::V4(v4) => {
            buf[..4].copy_from_slice(&v4.octets());
            4
        }
        IpAddr::V6(v6) => {
            buf[..16].copy_from_slice(&v6.octets());
            16
        }
    };
    match key {
        HashKey::ClientIpPort => {
            buf[len..len + 2].copy_from_slice(&client.port().to_be_bytes());
            len += 2;
        }
        HashKey::ClientIp => {}
    }
    stable_hash(&buf[..len], CLIENT_KEY_SEED)
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket reports for an
/// IPv4 peer) becomes the IPv4 address; anything else is returned unchanged. IPv4-*compatible*
/// addresses (`::a.b.c.d`, deprecated) are left as IPv6.
#[inline]
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// `addr` with its IP made canonical (see [`canonical_ip`]) and any IPv6 flow info and
/// scope id dropped: the identity of an endpoint for hashing, sorting and counters.
pub fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

/// Longest canonical endpoint text, 47 bytes (`[` + 39 for a full IPv6 + `]:` + 5 for a port), rounded up.
const NAME_CAPACITY: usize = 48;

/// The canonical text of an endpoint, `ip:port`, on the stack: the Maglev name.
///
/// - IPv4 (and IPv4-mapped IPv6): dotted decimal, e.g. `10.0.0.7:8080`;
/// - IPv6: `[addr]:port` with `addr` in RFC 5952 form (lowercase hex, no leading zeros,
///   the longest run of two or more zero groups — the first one on a tie — written `::`),
///   e.g. `[fd00::7]:8080`. Scope ids are not part of the name.
///
/// Written here rather than with `SocketAddr`'s `Display` so the bytes cannot change with
/// the Rust version: std documents its IPv6 text as RFC 5952 but does not freeze it (and a
/// property test checks we agree with today's std).
#[derive(Clone, Copy)]
pub struct EndpointName {
    buf: [u8; NAME_CAPACITY],
    len: usize,
}

impl EndpointName {
    pub fn new(addr: SocketAddr) -> EndpointName {
        let mut name = EndpointName {
            buf: [0; NAME_CAPACITY],
            len: 0,
        };
        // Writing integers into a buffer that is large enough cannot fail.
        let _ = match canonical_ip(addr.ip()) {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                write!(name, "{a}.{b}.{c}.{d}:{}", addr.port())
            }
            IpAddr::V6(v6) => {
                let _ = name.write_char('[');
                let _ = write_rfc5952(&mut name, v6);
                write!(name, "]:{}", addr.port())
            }
        };
        name
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for EndpointName {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > NAME_CAPACITY {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl std::fmt::Debug for EndpointName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only ASCII is ever written.
        f.write_str(std::str::from_utf8(self.as_bytes()).unwrap_or("<invalid>"))
    }
}

/// RFC 5952 text of an IPv6 address, without the mapped-IPv4 dotted form (callers
/// normalise mapped addresses to IPv4 first).
fn write_rfc5952(out: &mut impl std::fmt::Write, ip: Ipv6Addr) -> std::fmt::Result {
    let groups = ip.segments();
    // Longest run of zero groups of length >= 2; the first one wins a tie.
    let (mut best_start, mut best_len) = (0usize, 0usize);
    let mut i = 0;
    while i < 8 {
        if groups[i] == 0 {
            let start = i;
            while i < 8 && groups[i] == 0 {
                i += 1;
            }
            if i - start > best_len {
                (best_start, best_len) = (start, i - start);
            }
        } else {
            i += 1;
        }
    }
    if best_len < 2 {
        best_len = 0;
    }
    let write_groups = |out: &mut dyn std::fmt::Write, gs: &[u16]| -> std::fmt::Result {
        for (k, g) in gs.iter().enumerate() {
            if k > 0 {
                out.write_char(':')?;
            }
            write!(out, "{g:x}")?;
        }
        Ok(())
    };
    if best_len == 0 {
        return write_groups(out, &groups);
    }
    write_groups(out, &groups[..best_start])?;
    out.write_str("::")?;
    write_groups(out, &groups[best_start + best_len..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn name(s: &str) -> String {
        String::from_utf8(EndpointName::new(sa(s)).as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn endpoint_names_are_canonical_text() {
        assert_eq!(name("10.0.0.7:8080"), "10.0.0.7:8080");
        assert_eq!(name("[::ffff:10.0.0.7]:8080"), "10.0.0.7:8080");
        assert_eq!(name("[fd00:0:0:0:0:0:0:7]:80"), "[fd00::7]:80");
        assert_eq!(name("[::]:1"), "[::]:1");
        assert_eq!(name("[::1]:1"), "[::1]:1");
        assert_eq!(name("[1:0:0:2:0:0:0:3]:9"), "[1:0:0:2::3]:9");
        assert_eq!(name("[1:0:0:2:0:0:3:4]:9"), "[1::2:0:0:3:4]:9");
        assert_eq!(name("[1:0:2:3:4:5:6:7]:9"), "[1:0:2:3:4:5:6:7]:9");
        assert_eq!(name("[fe80::1%3]:65535"), "[fe80::1]:65535");
        assert_eq!(
            name("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535").len(),
            NAME_CAPACITY - 1
        );
    }

    /// Golden values: if one of these changes, every node picks different pods than nodes
    /// running an older sluice. Do not "fix" these numbers; fix the code.
    #[test]
    fn golden_client_hashes() {
        let v4 = sa("192.0.2.10:40000");
        let mapped = sa("[::ffff:192.0.2.10]:40000");
        let v6 = sa("[2001:db8::10]:40000");
        assert_eq!(
            client_hash(HashKey::ClientIpPort, v4),
            0x7d50_e520_8646_095c
        );
        assert_eq!(client_hash(HashKey::ClientIp, v4), 0x0ff2_3f27_d979_e3be);
        assert_eq!(
            client_hash(HashKey::ClientIpPort, v6),
            0x860d_e14e_a71c_cbcb
        );
        assert_eq!(client_hash(HashKey::ClientIp, v6), 0x3072_651f_3145_f1f3);
        // A dual-stack socket reports IPv4 clients as mapped: same hash as IPv4.
        assert_eq!(
            client_hash(HashKey::ClientIpPort, mapped),
            client_hash(HashKey::ClientIpPort, v4)
        );
        assert_eq!(
            client_hash(HashKey::ClientIp, mapped),
            client_hash(HashKey::ClientIp, v4)
        );
        // The layout is documented: IP bytes then big-endian port.
        assert_eq!(
            client_hash(HashKey::ClientIpPort, v4),
            stable_hash(&[192, 0, 2, 10, 0x9c, 0x40], CLIENT_KEY_SEED)
        );
        assert_eq!(
            stable_hash(b"127.0.0.2:9000", MAGLEV_OFFSET_SEED),
            0x1010_4d0f_5000_7118
        );
    }

    #[test]
    fn client_ip_key_ignores_port() {
        assert_eq!(
            client_hash(HashKey::ClientIp, sa("10.1.2.3:1")),
            client_hash(HashKey::ClientIp, sa("10.1.2.3:2"))
        );
        assert_ne!(
            client_hash(HashKey::ClientIpPort, sa("10.1.2.3:1")),
            client_hash(HashKey::ClientIpPort, sa("10.1.2.3:2"))
        );
    }

    proptest! {
        /// Our frozen writer agrees with today's std on every non-mapped address (std is
        /// the reference now; the golden tests keep us from following it if it changes).
        #[test]
        fn ipv6_names_match_rfc5952_as_std_writes_it_today(segs in any::<[u16; 8]>(), port: u16) {
            let ip = Ipv6Addr::from(segs);
            prop_assume!(ip.to_ipv4_mapped().is_none());
            let addr = SocketAddr::new(IpAddr::V6(ip), port);
            let ours = String::from_utf8(EndpointName::new(addr).as_bytes().to_vec()).unwrap();
            prop_assert_eq!(ours, format!("[{ip}]:{port}"));
        }

        #[test]
        fn mapped_clients_hash_like_ipv4(octets in any::<[u8; 4]>(), port: u16) {
            let v4 = SocketAddr::new(IpAddr::from(octets), port);
            let mapped = SocketAddr::new(IpAddr::V6(std::net::Ipv4Addr::from(octets).to_ipv6_mapped()), port);
            for key in [HashKey::ClientIp, HashKey::ClientIpPort] {
                prop_assert_eq!(client_hash(key, v4), client_hash(key, mapped));
            }
        }
    }
}
