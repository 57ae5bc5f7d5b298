//! Encoder → decoder round trip: whatever addresses, options and unique id the fuzzer picks,
//! the encoder's output (stream, or datagram for a UDP Service) decodes to the same
//! (normalised) addresses and TLVs, its length is what `v2_len` says, and every strict
//! prefix of it is `Incomplete`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::model::{Forwarding, ProxyV2Options};
use sluice::proxy_protocol::{
    decode, encode, encode_datagram, v2_len, DecodeError, PP2_TYPE_UNIQUE_ID, UNIQUE_ID_MAX,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Takes `n` bytes from the front of `data` (zero-padded when short).
fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = data.len().min(N);
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

fn addr(kind: u8, data: &mut &[u8]) -> SocketAddr {
    let port = u16::from_be_bytes(take::<2>(data));
    let ip = match kind % 3 {
        0 => IpAddr::V4(Ipv4Addr::from(take::<4>(data))),
        1 => IpAddr::V6(Ipv6Addr::from(take::<16>(data))),
        _ => IpAddr::V6(Ipv4Addr::from(take::<4>(data)).to_ipv6_mapped()),
    };
    SocketAddr::new(ip, port)
}

fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v) => match v.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::new(IpAddr::V4(ip), v.port()),
            None => SocketAddr::new(IpAddr::V6(*v.ip()), v.port()),
        },
        a => a,
    }
}

fn to_v6(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let [flags] = take::<1>(&mut data);
    let src = addr(flags, &mut data);
    let dst = addr(flags / 3, &mut data);
    let v2 = flags & 0x80 != 0;
    let unique_id_wanted = flags & 0x40 != 0;
    let [id_len, ntlv] = take::<2>(&mut data);
    // The top bit of the TLV count byte picks the datagram encoder (v2 only).
    let datagram = v2 && ntlv & 0x80 != 0;
    let id_len = usize::from(id_len).min(data.len());
    let (id, mut data) = data.split_at(id_len);
    let mut tlvs = Vec::new();
    for _ in 0..ntlv % 5 {
        let [kind, len] = take::<2>(&mut data);
        let len = usize::from(len).min(data.len());
        let (value, rest) = data.split_at(len);
        tlvs.push((0xE0 | (kind & 0x0F), value.to_vec()));
        data = rest;
    }
    let forwarding = if v2 {
        Forwarding::ProxyV2(ProxyV2Options {
            unique_id: unique_id_wanted,
            tlvs: tlvs.clone(),
        })
    } else {
        Forwarding::ProxyV1
    };
    let mut out = b"before".to_vec();
    if datagram {
        assert!(encode_datagram(&forwarding, src, dst, id, &mut out));
    } else {
        assert!(encode(&forwarding, src, dst, id, &mut out));
    }
    let header = &out[6..];
    if let Forwarding::ProxyV2(opts) = &forwarding {
        assert_eq!(header.len(), v2_len(src, dst, opts, id.len()));
        let transport = if datagram { 0x2 } else { 0x1 };
        assert_eq!(header[13] & 0x0F, transport);
    }
    let (h, used) = decode(header).expect("the encoder's own output decodes");
    assert_eq!(used, header.len());
    let (s, d) = (unmap(src), unmap(dst));
    let want = if s.is_ipv4() == d.is_ipv4() { (s, d) } else { (to_v6(s), to_v6(d)) };
    assert_eq!(h.addrs, Some(want));
    if v2 {
        let mut want_tlvs = Vec::new();
        if unique_id_wanted && !id.is_empty() {
            want_tlvs.push((PP2_TYPE_UNIQUE_ID, id[..id.len().min(UNIQUE_ID_MAX)].to_vec()));
        }
        want_tlvs.extend(tlvs);
        assert_eq!(h.tlvs, want_tlvs);
    } else {
        assert!(header.len() <= 107);
    }
    for cut in 0..header.len() {
        assert_eq!(decode(&header[..cut]).unwrap_err(), DecodeError::Incomplete, "cut {cut}");
    }
});
