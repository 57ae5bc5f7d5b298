//! Tests of `proxy_protocol`.

use super::*;
use proptest::prelude::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn v1(src: &str, dst: &str) -> String {
    let mut out = Vec::new();
    encode_v1(sa(src), sa(dst), &mut out);
    String::from_utf8(out).unwrap()
}

fn v2(src: &str, dst: &str, opts: &ProxyV2Options, id: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_v2(sa(src), sa(dst), opts, id, &mut out);
    out
}

// --- v1, against the spec's examples and limits -------------------------------------

#[test]
fn v1_tcp4_line() {
    assert_eq!(
        v1("192.168.0.1:56324", "192.168.0.11:443"),
        "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    );
}

#[test]
fn v1_tcp6_line() {
    assert_eq!(
        v1("[2001:db8::1]:56324", "[2001:db8::11]:443"),
        "PROXY TCP6 2001:db8::1 2001:db8::11 56324 443\r\n"
    );
}

#[test]
fn v1_longest_line_fits_107_bytes() {
    let max6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let line = v1(&format!("[{max6}]:65535"), &format!("[{max6}]:65535"));
    // "PROXY TCP6 " + 2×39 + 2×5 + 3 spaces + CRLF = 104; UNKNOWN would make it 107.
    assert_eq!(line.len(), 104);
    assert!(line.len() <= V1_MAX_LEN);
    let longest_unknown = format!("PROXY UNKNOWN {max6} {max6} 65535 65535\r\n");
    assert_eq!(longest_unknown.len(), V1_MAX_LEN);
    assert_eq!(decode(longest_unknown.as_bytes()).unwrap().1, 107);
}

#[test]
fn v1_mapped_addresses_are_tcp4() {
    assert_eq!(
        v1("[::ffff:10.0.0.2]:40000", "[::ffff:10.0.0.1]:30000"),
        "PROXY TCP4 10.0.0.2 10.0.0.1 40000 30000\r\n"
    );
}

#[test]
fn v1_mixed_families_are_tcp6_with_the_ipv4_one_mapped() {
    assert_eq!(
        v1("10.0.0.2:40000", "[fd00::1]:30000"),
        "PROXY TCP6 ::ffff:10.0.0.2 fd00::1 40000 30000\r\n"
    );
}

#[test]
fn v1_appends_after_what_is_there() {
    let mut out = b"keep".to_vec();
    encode_v1(sa("1.2.3.4:5"), sa("6.7.8.9:10"), &mut out);
    assert_eq!(out, b"keepPROXY TCP4 1.2.3.4 6.7.8.9 5 10\r\n");
}

// --- v2, byte for byte --------------------------------------------------------------

#[test]
fn v2_signature_is_the_spec_one() {
    assert_eq!(&V2_SIGNATURE, b"\r\n\r\n\0\r\nQUIT\n");
}

#[test]
fn v2_ipv4_layout() {
    let out = v2(
        "192.168.0.1:56324",
        "192.168.0.11:443",
        &Default::default(),
        b"",
    );
    let mut want = V2_SIGNATURE.to_vec();
    want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0C]);
    want.extend_from_slice(&[192, 168, 0, 1, 192, 168, 0, 11]);
    want.extend_from_slice(&[0xDC, 0x04, 0x01, 0xBB]); // 56324, 443
    assert_eq!(out, want);
    assert_eq!(out.len(), 28); // as nginx and HAProxy read it (tests/proxy_interop.rs)
}

#[test]
fn v2_ipv6_layout() {
    let out = v2(
        "[2001:db8::1]:1",
        "[2001:db8::2]:2",
        &Default::default(),
        b"",
    );
    assert_eq!(out.len(), 16 + 36);
    assert_eq!(&out[12..16], &[0x21, 0x21, 0x00, 0x24]);
    let db8_1: Ipv6Addr = "2001:db8::1".parse().unwrap();
    assert_eq!(&out[16..32], &db8_1.octets());
    assert_eq!(&out[16..18], &[0x20, 0x01]);
    assert_eq!(out[31], 1);
    assert_eq!(out[47], 2);
    assert_eq!(&out[48..52], &[0, 1, 0, 2]);
}

#[test]
fn v2_mapped_addresses_are_family_0x11() {
    let out = v2(
        "[::ffff:10.0.0.2]:40000",
        "[::ffff:10.0.0.1]:30000",
        &Default::default(),
        b"",
    );
    assert_eq!(&out[12..16], &[0x21, 0x11, 0x00, 0x0C]);
    assert_eq!(&out[16..24], &[10, 0, 0, 2, 10, 0, 0, 1]);
}

#[test]
fn v2_mixed_families_are_family_0x21() {
    let out = v2(
        "10.0.0.2:40000",
        "[fd00::1]:30000",
        &Default::default(),
        b"",
    );
    assert_eq!(out[13], FAM_TCP6);
    let (h, _) = decode(&out).unwrap();
    assert_eq!(
        h.addrs,
        Some((sa("[::ffff:10.0.0.2]:40000"), sa("[fd00::1]:30000")))
    );
}

#[test]
fn v2_tlvs_unique_id_then_custom_in_order() {
    let opts = ProxyV2Options {
        unique_id: true,
        tlvs: vec![(0xE0, b"workshop/myfrontend".to_vec()), (0xEF, Vec::new())],
    };
    let out = v2("1.2.3.4:1", "5.6.7.8:2", &opts, b"conn-42");
    let len = 12 + (3 + 7) + (3 + 19) + 3;
    assert_eq!(u16::from_be_bytes([out[14], out[15]]) as usize, len);
    assert_eq!(out.len(), 16 + len);
    assert_eq!(&out[28..31], &[0x05, 0x00, 0x07]);
    assert_eq!(&out[31..38], b"conn-42");
    assert_eq!(&out[38..41], &[0xE0, 0x00, 19]);
    assert_eq!(&out[41..60], b"workshop/myfrontend");
    assert_eq!(&out[60..63], &[0xEF, 0x00, 0x00]);
    let (h, n) = decode(&out).unwrap();
    assert_eq!(n, out.len());
    assert_eq!(h.tlv(PP2_TYPE_UNIQUE_ID), Some(&b"conn-42"[..]));
    assert_eq!(h.tlv(0xE0), Some(&b"workshop/myfrontend"[..]));
}

#[test]
fn v2_unique_id_is_cut_to_128_and_left_out_when_empty_or_not_asked() {
    let opts = ProxyV2Options {
        unique_id: true,
        tlvs: vec![],
    };
    let out = v2("1.2.3.4:1", "5.6.7.8:2", &opts, &[7u8; 300]);
    assert_eq!(out.len(), 28 + 3 + 128);
    assert_eq!(decode(&out).unwrap().0.tlv(5).map(<[u8]>::len), Some(128));
    assert_eq!(v2("1.2.3.4:1", "5.6.7.8:2", &opts, b"").len(), 28);
    assert_eq!(
        v2("1.2.3.4:1", "5.6.7.8:2", &Default::default(), b"id").len(),
        28
    );
}

#[test]
fn v2_tlvs_past_the_16_bit_length_are_left_out_whole() {
    let opts = ProxyV2Options {
        unique_id: false,
        tlvs: vec![
            (0xE0, vec![1; 40_000]),
            (0xE1, vec![2; 40_000]),
            (0xE2, vec![3; 10]),
        ],
    };
    let out = v2("1.2.3.4:1", "5.6.7.8:2", &opts, b"");
    let (h, n) = decode(&out).unwrap();
    assert_eq!(n, out.len());
    assert_eq!(h.tlvs.len(), 1);
    assert_eq!(h.tlv(0xE0).map(<[u8]>::len), Some(40_000));
}

#[test]
fn v2_local_is_16_bytes() {
    let mut out = Vec::new();
    encode_v2_local(&mut out);
    let mut want = V2_SIGNATURE.to_vec();
    want.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    assert_eq!(out, want);
    let (h, n) = decode(&out).unwrap();
    assert_eq!((h.command, h.addrs, n), (Command::Local, None, 16));
}

#[test]
fn encode_by_mode() {
    let (s, d) = (sa("1.2.3.4:1"), sa("5.6.7.8:2"));
    let mut out = Vec::new();
    assert!(!encode(&Forwarding::None, s, d, b"", &mut out));
    assert!(!encode(&Forwarding::Transparent, s, d, b"", &mut out));
    assert!(out.is_empty());
    assert!(encode(&Forwarding::ProxyV1, s, d, b"", &mut out));
    assert!(out.starts_with(b"PROXY TCP4 "));
    out.clear();
    assert!(encode(
        &Forwarding::ProxyV2(Default::default()),
        s,
        d,
        b"",
        &mut out
    ));
    assert!(out.starts_with(&V2_SIGNATURE));
}

// --- datagrams (UDP Services) -------------------------------------------------------

/// The whole header of a DNS query from 192.0.2.1:53000 to the NodePort 203.0.113.7:30053,
/// byte for byte: 28 bytes, family 0x12 (IPv4, DGRAM).
#[test]
fn v2_datagram_ipv4_bytes() {
    let mut out = Vec::new();
    let f = Forwarding::ProxyV2(Default::default());
    assert!(encode_datagram(
        &f,
        sa("192.0.2.1:53000"),
        sa("203.0.113.7:30053"),
        b"",
        &mut out
    ));
    #[rustfmt::skip]
    let want: [u8; 28] = [
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, // signature
        0x21,                   // version 2, PROXY
        0x12,                   // AF_INET, DGRAM
        0x00, 0x0C,             // 12 bytes follow
        192, 0, 2, 1,           // source address
        203, 0, 113, 7,         // destination address
        0xCF, 0x08,             // source port 53000
        0x75, 0x65,             // destination port 30053
    ];
    assert_eq!(out, want);
    assert_eq!(out.len(), 16 + 12);
    assert_eq!(
        v2_len(
            sa("192.0.2.1:53000"),
            sa("203.0.113.7:30053"),
            &Default::default(),
            0
        ),
        28
    );
    let (h, _) = decode(&out).unwrap();
    assert_eq!((h.family, h.command), (FAM_UDP4, Command::Proxy));
}

/// IPv6: 52 bytes, family 0x22 (IPv6, DGRAM); a mapped IPv4 client is written as IPv4.
#[test]
fn v2_datagram_ipv6_bytes() {
    let mut out = Vec::new();
    let f = Forwarding::ProxyV2(Default::default());
    assert!(encode_datagram(
        &f,
        sa("[2001:db8::1]:1234"),
        sa("[2001:db8::ff]:30053"),
        b"",
        &mut out
    ));
    #[rustfmt::skip]
    let want: [u8; 52] = [
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
        0x21, 0x22, 0x00, 0x24, // PROXY, AF_INET6 + DGRAM, 36 bytes follow
        0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // 2001:db8::1
        0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, // 2001:db8::ff
        0x04, 0xD2,             // 1234
        0x75, 0x65,             // 30053
    ];
    assert_eq!(out, want);
    assert_eq!(out.len(), 16 + 36);
    out.clear();
    encode_datagram(
        &f,
        sa("[::ffff:192.0.2.1]:1"),
        sa("[::ffff:192.0.2.2]:2"),
        b"",
        &mut out,
    );
    assert_eq!((out.len(), out[13]), (28, FAM_UDP4));
}

/// v1 has no datagram form: nothing is written, as for none and transparent.
#[test]
fn datagram_headers_by_mode() {
    let (s, d) = (sa("1.2.3.4:1"), sa("5.6.7.8:2"));
    let mut out = Vec::new();
    for f in [
        Forwarding::None,
        Forwarding::Transparent,
        Forwarding::ProxyV1,
    ] {
        assert!(!encode_datagram(&f, s, d, b"id", &mut out), "{f:?}");
    }
    assert!(out.is_empty());
    let with_id = Forwarding::ProxyV2(ProxyV2Options {
        unique_id: true,
        tlvs: vec![(0xE0, b"ns/dns".to_vec())],
    });
    assert!(encode_datagram(&with_id, s, d, &[7; 16], &mut out));
    let opts = match &with_id {
        Forwarding::ProxyV2(o) => o,
        _ => unreachable!(),
    };
    assert_eq!(out.len(), 28 + (3 + 16) + (3 + 6));
    assert_eq!(out.len(), v2_len(s, d, opts, 16));
    let (h, _) = decode(&out).unwrap();
    assert_eq!(h.tlv(PP2_TYPE_UNIQUE_ID), Some(&[7u8; 16][..]));
    assert_eq!(h.tlv(0xE0), Some(&b"ns/dns"[..]));
}

// --- decoder ------------------------------------------------------------------------

#[test]
fn decode_incomplete_versus_invalid() {
    assert_eq!(decode(b"").unwrap_err(), DecodeError::Incomplete);
    assert_eq!(decode(b"PRO").unwrap_err(), DecodeError::Incomplete);
    assert_eq!(
        decode(b"PROXY TCP4 1.2.3.4").unwrap_err(),
        DecodeError::Incomplete
    );
    assert_eq!(
        decode(&V2_SIGNATURE[..5]).unwrap_err(),
        DecodeError::Incomplete
    );
    let full = v2("1.2.3.4:1", "5.6.7.8:2", &Default::default(), b"");
    assert_eq!(decode(&full[..27]).unwrap_err(), DecodeError::Incomplete);
    assert!(matches!(
        decode(b"GET / HTTP/1.1\r\n"),
        Err(DecodeError::Invalid(_))
    ));
    assert!(matches!(decode(&[b'P'; 200]), Err(DecodeError::Invalid(_))));
    assert!(matches!(
        decode(&[b'x'; 200][..]),
        Err(DecodeError::Invalid(_))
    ));
    let long = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
    assert!(matches!(
        decode(long.as_bytes()),
        Err(DecodeError::Invalid(_))
    ));
}

#[test]
fn decode_rejects_malformed_v1() {
    for bad in [
        "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        "PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
        "PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
        "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
    ] {
        assert!(
            matches!(decode(bad.as_bytes()), Err(DecodeError::Invalid(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn decode_rejects_malformed_v2() {
    let good = v2("1.2.3.4:1", "5.6.7.8:2", &Default::default(), b"");
    let bad = |i: usize, b: u8| {
        let mut x = good.clone();
        x[i] = b;
        x
    };
    for (what, bytes) in [
        ("version 1", bad(12, 0x11)),
        ("command 2", bad(12, 0x22)),
        ("family 4", bad(13, 0x41)),
        ("transport 3", bad(13, 0x13)),
        ("length 11", bad(15, 11)),
        ("TLV cut short", {
            let mut x = bad(15, 14);
            x.extend_from_slice(&[0xE0, 0]);
            x
        }),
        ("TLV overrun", {
            let mut x = bad(15, 15);
            x.extend_from_slice(&[0xE0, 0, 9]);
            x
        }),
    ] {
        assert!(
            matches!(decode(&bytes), Err(DecodeError::Invalid(_))),
            "{what}"
        );
    }
}

#[test]
fn decode_leaves_the_payload_after_the_header() {
    let mut bytes = Vec::new();
    encode_v1(sa("1.2.3.4:5"), sa("6.7.8.9:10"), &mut bytes);
    let n1 = bytes.len();
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
    assert_eq!(decode(&bytes).unwrap().1, n1);
}

// --- properties ---------------------------------------------------------------------

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, p)| { SocketAddr::from((Ipv4Addr::from(ip).to_ipv6_mapped(), p)) }),
    ]
}

fn options() -> impl Strategy<Value = ProxyV2Options> {
    (
        any::<bool>(),
        proptest::collection::vec(
            (0xE0u8..=0xEF, proptest::collection::vec(any::<u8>(), 0..64)),
            0..4,
        ),
    )
        .prop_map(|(unique_id, tlvs)| ProxyV2Options { unique_id, tlvs })
}

proptest! {
    #[test]
    fn v1_round_trip(src in addr(), dst in addr(), tail in proptest::collection::vec(any::<u8>(), 0..32)) {
        let mut out = Vec::new();
        encode_v1(src, dst, &mut out);
        prop_assert!(out.len() <= V1_MAX_LEN);
        let n = out.len();
        out.extend_from_slice(&tail);
        let (h, used) = decode(&out).unwrap();
        prop_assert_eq!(used, n);
        prop_assert_eq!(h.addrs, Some(normalise(src, dst)));
        prop_assert_eq!(h.family, if normalise(src, dst).0.is_ipv4() { FAM_TCP4 } else { FAM_TCP6 });
    }

    #[test]
    fn v2_round_trip(src in addr(), dst in addr(), opts in options(),
                     id in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut out = Vec::new();
        encode_v2(src, dst, &opts, &id, &mut out);
        prop_assert_eq!(out.len(), v2_len(src, dst, &opts, id.len()));
        let (h, used) = decode(&out).unwrap();
        prop_assert_eq!(used, out.len());
        prop_assert_eq!(h.command, Command::Proxy);
        prop_assert_eq!(h.family & 0x0F, 0x1, "STREAM");
        prop_assert_eq!(h.addrs, Some(normalise(src, dst)));
        let mut want = Vec::new();
        if opts.unique_id && !id.is_empty() {
            want.push((PP2_TYPE_UNIQUE_ID, id[..id.len().min(128)].to_vec()));
        }
        want.extend(opts.tlvs.iter().cloned());
        prop_assert_eq!(h.tlvs, want);
        // Any strict prefix is Incomplete, never Invalid and never a header.
        for cut in [0, 1, 11, 12, 15, 16, out.len() - 1] {
            prop_assert_eq!(decode(&out[..cut]).unwrap_err(), DecodeError::Incomplete);
        }
    }

    /// A datagram's header is the stream header with the DGRAM transport: same length
    /// (as `v2_len` says), same addresses and TLVs, family 0x12 / 0x22; the payload
    /// after it is left as it was.
    #[test]
    fn v2_datagram_round_trip(src in addr(), dst in addr(), opts in options(),
                              id in proptest::collection::vec(any::<u8>(), 0..200),
                              payload in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut stream = Vec::new();
        encode_v2(src, dst, &opts, &id, &mut stream);
        let mut out = Vec::new();
        let forwarding = Forwarding::ProxyV2(opts.clone());
        prop_assert!(encode_datagram(&forwarding, src, dst, &id, &mut out));
        prop_assert_eq!(out.len(), v2_len(src, dst, &opts, id.len()));
        prop_assert_eq!(out.len(), stream.len());
        prop_assert_eq!(&out[..13], &stream[..13]);
        prop_assert_eq!(out[13], stream[13] + 1, "DGRAM instead of STREAM");
        prop_assert_eq!(&out[14..], &stream[14..]);
        let header_len = out.len();
        out.extend_from_slice(&payload);
        let (h, used) = decode(&out).unwrap();
        prop_assert_eq!(used, header_len);
        prop_assert_eq!(h.family & 0x0F, 0x2);
        prop_assert_eq!(h.addrs, Some(normalise(src, dst)));
        prop_assert_eq!(&out[used..], &payload[..]);
    }

    #[test]
    fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn decoder_never_panics_after_a_signature(
        v2sig in any::<bool>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut b = if v2sig { V2_SIGNATURE.to_vec() } else { b"PROXY ".to_vec() };
        b.extend_from_slice(&bytes);
        if let Ok((_, used)) = decode(&b) {
            prop_assert!(used <= b.len());
        }
    }
}
