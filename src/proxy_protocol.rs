//! HAProxy PROXY protocol, versions 1 (text) and 2 (binary): the header sluice writes first on
//! a backend connection so that the pod learns the client's address and port.
//!
//! Owns the wire format only (HAProxy's `doc/proxy-protocol.txt`): [`encode`] and friends for
//! the data plane, [`decode`] for tests, fuzzing and any future receiver. A leaf module: it
//! uses [`crate::model`] and std, nothing else; it opens no socket.
//!
//! The encoders run on every backend connection, so they never allocate beyond appending to
//! the caller's reusable `Vec` (one `reserve`), never panic, and always append either a whole
//! valid header or nothing. Choices where the spec leaves room (see `docs/client-address.md`):
//! - IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a dual-stack socket reports for an
//!   IPv4 client) are written as IPv4: `TCP4` / family `0x11`.
//! - Source and destination of different families after that (only possible with unusual
//!   listeners) are both written as IPv6, the IPv4 one mapped (`::ffff:a.b.c.d`): `TCP6` /
//!   `0x21`. The client's address is kept; `UNKNOWN`/`AF_UNSPEC` would make the receiver fall
//!   back to the node's address, which is what the operator asked to avoid.
//! - `PP2_TYPE_UNIQUE_ID` is written only when asked for and `unique_id` is non-empty; longer
//!   than 128 bytes (the spec's limit) it is cut to 128.
//! - Custom TLVs that would push the header length past 65535 are left out (configuration
//!   checks keep them far below that: see `config`).
//!
//! Datagrams (UDP Services): [`encode_datagram`] writes the same v2 header with the DGRAM
//! transport (family `0x12` / `0x22`), to be prepended to **every** datagram — stateless and
//! loss-tolerant, as dnsdist does: the receiver never has to remember which datagram of a
//! flow carried it. It costs 28 bytes per datagram over IPv4 (16 + 12) and 52 over IPv6
//! (16 + 36), plus any TLVs ([`v2_len`]); v1 has no datagram form.

use crate::model::{Forwarding, ProxyV2Options};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Longest v1 line the spec allows, CRLF included (`PROXY UNKNOWN` + two full IPv6 + ports).
pub const V1_MAX_LEN: usize = 107;
/// Version 2, command LOCAL (health checks: "use the real connection endpoints").
pub const V2_LOCAL: u8 = 0x20;
/// Version 2, command PROXY (a relayed connection).
pub const V2_PROXY: u8 = 0x21;
/// Family byte: unspecified address family and protocol.
pub const FAM_UNSPEC: u8 = 0x00;
/// Family byte: TCP over IPv4.
pub const FAM_TCP4: u8 = 0x11;
/// Family byte: TCP over IPv6.
pub const FAM_TCP6: u8 = 0x21;
/// Family byte: UDP over IPv4 (a header on a datagram).
pub const FAM_UDP4: u8 = 0x12;
/// Family byte: UDP over IPv6.
pub const FAM_UDP6: u8 = 0x22;
/// TLV type of the unique connection id.
pub const PP2_TYPE_UNIQUE_ID: u8 = 0x05;
/// The spec's limit on the unique id's length.
pub const UNIQUE_ID_MAX: usize = 128;
/// Custom TLV types reserved for applications: `0xE0..=0xEF`.
pub const PP2_TYPE_CUSTOM: std::ops::RangeInclusive<u8> = 0xE0..=0xEF;

/// Appends the header `forwarding` calls for to `out`; returns false (and appends nothing)
/// for [`Forwarding::None`] and [`Forwarding::Transparent`].
///
/// `src` is the client's address, `dst` the address and port the client connected to (node
/// address, NodePort). `unique_id` is used only when the options ask for `PP2_TYPE_UNIQUE_ID`.
pub fn encode(
    forwarding: &Forwarding,
    src: SocketAddr,
    dst: SocketAddr,
    unique_id: &[u8],
    out: &mut Vec<u8>,
) -> bool {
    match forwarding {
        Forwarding::None | Forwarding::Transparent => false,
        Forwarding::ProxyV1 => {
            encode_v1(src, dst, out);
            true
        }
        Forwarding::ProxyV2(opts) => {
            encode_v2(src, dst, opts, unique_id, out);
            true
        }
    }
}

/// Appends a v1 line: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n` (or `TCP6`), at most
/// [`V1_MAX_LEN`] bytes.
pub fn encode_v1(src: SocketAddr, dst: SocketAddr, out: &mut Vec<u8>) {
    let start = out.len();
    out.reserve(V1_MAX_LEN);
    let (src, dst) = normalise(src, dst);
    let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    // Writing into a Vec cannot fail; Display of IP addresses needs no allocation.
    let written = write!(
        out,
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    );
    if written.is_err() {
        out.truncate(start);
    }
}

/// Which transport a v2 header announces: the low nibble of its family byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A TCP connection (`0x11`, `0x21`): the header is sent once, first.
    Stream,
    /// A UDP datagram (`0x12`, `0x22`): the header starts every datagram.
    Datagram,
}

/// Appends a v2 PROXY header (`0x21`) for a TCP connection: signature, command, family,
/// length, addresses, ports, then the TLVs `opts` asks for (unique id first, then the
/// custom ones in order).
pub fn encode_v2(
    src: SocketAddr,
    dst: SocketAddr,
    opts: &ProxyV2Options,
    unique_id: &[u8],
    out: &mut Vec<u8>,
) {
    encode_v2_for(Transport::Stream, src, dst, opts, unique_id, out);
}

/// Appends the header [`Forwarding::ProxyV2`] puts before a UDP datagram from `src` (the
/// client) to `dst` (node address and NodePort); returns false (and appends nothing) for
/// every other mode — [`Forwarding::ProxyV1`] has no datagram form (configuration refuses
/// it on UDP Services). Append the datagram's payload after it, or send both as two parts
/// of one message.
pub fn encode_datagram(
    forwarding: &Forwarding,
    src: SocketAddr,
    dst: SocketAddr,
    unique_id: &[u8],
    out: &mut Vec<u8>,
) -> bool {
    match forwarding {
        Forwarding::ProxyV2(opts) => {
            encode_v2_for(Transport::Datagram, src, dst, opts, unique_id, out);
            true
        }
        Forwarding::None | Forwarding::Transparent | Forwarding::ProxyV1 => false,
    }
}

/// The length in bytes of the v2 header [`encode_v2`] or [`encode_datagram`] writes for
/// these arguments (with a unique id of `unique_id_len` bytes): 28 for IPv4 and 52 for
/// IPv6 without TLVs. What a datagram grows by, so what must fit under the largest UDP
/// payload.
pub fn v2_len(
    src: SocketAddr,
    dst: SocketAddr,
    opts: &ProxyV2Options,
    unique_id_len: usize,
) -> usize {
    let (src, _) = normalise(src, dst);
    let addr_len: usize = if src.is_ipv4() { 12 } else { 36 };
    let id_len = unique_id_len.min(UNIQUE_ID_MAX);
    let with_id = opts.unique_id && id_len > 0;
    let (len, _) = tlv_budget(addr_len + if with_id { 3 + id_len } else { 0 }, opts);
    16 + len
}

/// The body length with the custom TLVs that fit under the 16-bit length (in order; the
/// rest is left out), and how many fit.
fn tlv_budget(mut len: usize, opts: &ProxyV2Options) -> (usize, usize) {
    let mut fitting = 0;
    for (_, value) in &opts.tlvs {
        let more = 3 + value.len();
        if len + more > usize::from(u16::MAX) {
            break;
        }
        len += more;
        fitting += 1;
    }
    (len, fitting)
}

fn encode_v2_for(
    transport: Transport,
    src: SocketAddr,
    dst: SocketAddr,
    opts: &ProxyV2Options,
    unique_id: &[u8],
    out: &mut Vec<u8>,
) {
    let (src, dst) = normalise(src, dst);
    let addr_len: usize = if src.is_ipv4() { 12 } else { 36 };
    let unique_id = &unique_id[..unique_id.len().min(UNIQUE_ID_MAX)];
    let with_id = opts.unique_id && !unique_id.is_empty();
    let (len, fitting) = tlv_budget(
        addr_len + if with_id { 3 + unique_id.len() } else { 0 },
        opts,
    );
    out.reserve(16 + len);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(V2_PROXY);
    out.push(match (src.is_ipv4(), transport) {
        (true, Transport::Stream) => FAM_TCP4,
        (false, Transport::Stream) => FAM_TCP6,
        (true, Transport::Datagram) => FAM_UDP4,
        (false, Transport::Datagram) => FAM_UDP6,
    });
    // `len` ≤ u16::MAX by construction above.
    out.extend_from_slice(&(len as u16).to_be_bytes());
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
        }
        (s, d) => {
            out.extend_from_slice(&v6(s.ip()).octets());
            out.extend_from_slice(&v6(d.ip()).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    if with_id {
        push_tlv(out, PP2_TYPE_UNIQUE_ID, unique_id);
    }
    for (kind, value) in opts.tlvs.iter().take(fitting) {
        push_tlv(out, *kind, value);
    }
}

/// Appends the 16-byte v2 LOCAL header (`0x20`, family `AF_UNSPEC`, length 0) that a health
/// check sends: the receiver uses the connection's own endpoints.
pub fn encode_v2_local(out: &mut Vec<u8>) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.extend_from_slice(&[V2_LOCAL, FAM_UNSPEC, 0, 0]);
}

fn push_tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    // Callers keep every value under u16::MAX.
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// IPv4-mapped IPv6 → IPv4 on both; then, if the families still differ, both as IPv6.
fn normalise(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (src, dst) = (unmap(src), unmap(dst));
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        let as_v6 = |a: SocketAddr| SocketAddr::V6(SocketAddrV6::new(v6(a.ip()), a.port(), 0, 0));
        (as_v6(src), as_v6(dst))
    }
}

fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v) => match v.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::V4(SocketAddrV4::new(ip, v.port())),
            None => a,
        },
        SocketAddr::V4(_) => a,
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

// ---------------------------------------------------------------------------------------
// Decoding (tests, fuzzing; allocation is fine here)
// ---------------------------------------------------------------------------------------

/// What a v2 header's command says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// The connection was made by the proxy itself (health check): use its real endpoints.
    Local,
    /// A relayed connection: the header's addresses are the client's.
    Proxy,
}

/// A decoded PROXY header, v1 or v2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 1 or 2.
    pub version: u8,
    /// Always [`Command::Proxy`] for v1.
    pub command: Command,
    /// The v2 family/transport byte (`0x11`, `0x21`, `0x00`, …); for v1: `0x11` for `TCP4`,
    /// `0x21` for `TCP6`, `0x00` for `UNKNOWN`.
    pub family: u8,
    /// (source, destination); `None` for v1 `UNKNOWN`, v2 LOCAL, `AF_UNSPEC` and `AF_UNIX`.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
    /// v2 TLVs in order (type, value); empty for v1 and LOCAL.
    pub tlvs: Vec<(u8, Vec<u8>)>,
}

impl Header {
    /// The value of the first TLV of `kind`.
    pub fn tlv(&self, kind: u8) -> Option<&[u8]> {
        self.tlvs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
    }
}

/// Why [`decode`] gave no header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes so far are a valid beginning: read more and try again.
    Incomplete,
    /// Not a PROXY header, or a malformed one; the text says what is wrong.
    Invalid(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Incomplete => f.write_str("incomplete PROXY header"),
            DecodeError::Invalid(why) => write!(f, "invalid PROXY header: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes the PROXY header at the start of `bytes`; returns it and how many bytes it took.
/// Never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<(Header, usize), DecodeError> {
    const V1_PREFIX: &[u8] = b"PROXY ";
    if bytes.len() < V1_PREFIX.len() && V1_PREFIX.starts_with(bytes)
        || bytes.len() < V2_SIGNATURE.len() && V2_SIGNATURE.starts_with(bytes)
    {
        return Err(DecodeError::Incomplete);
    }
    if bytes.starts_with(V1_PREFIX) {
        decode_v1(bytes)
    } else if bytes.starts_with(&V2_SIGNATURE) {
        decode_v2(bytes)
    } else {
        Err(DecodeError::Invalid(
            "neither the v1 \"PROXY \" nor the v2 signature",
        ))
    }
}

fn decode_v1(bytes: &[u8]) -> Result<(Header, usize), DecodeError> {
    let window = &bytes[..bytes.len().min(V1_MAX_LEN)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return Err(if bytes.len() >= V1_MAX_LEN {
            DecodeError::Invalid("v1 line longer than 107 bytes")
        } else if window.contains(&b'\n') {
            DecodeError::Invalid("v1 line ends without CR LF")
        } else {
            DecodeError::Incomplete
        });
    };
    let line = std::str::from_utf8(&bytes[6..end])
        .map_err(|_| DecodeError::Invalid("v1 line is not ASCII"))?;
    let consumed = end + 2;
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        let header = Header {
            version: 1,
            command: Command::Proxy,
            family: FAM_UNSPEC,
            addrs: None,
            tlvs: Vec::new(),
        };
        return Ok((header, consumed));
    }
    let mut parts = line.split(' ');
    let (Some(proto), Some(s), Some(d), Some(sp), Some(dp), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(DecodeError::Invalid(
            "v1 line needs exactly: protocol, two addresses, two ports",
        ));
    };
    let port = |p: &str| -> Result<u16, DecodeError> {
        if p.is_empty()
            || (p.len() > 1 && p.starts_with('0'))
            || !p.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(DecodeError::Invalid("v1 port is not a decimal number"));
        }
        p.parse()
            .map_err(|_| DecodeError::Invalid("v1 port is out of range"))
    };
    let (sp, dp) = (port(sp)?, port(dp)?);
    let (family, src, dst) = match proto {
        "TCP4" => {
            let ip = |t: &str| {
                t.parse::<Ipv4Addr>()
                    .map(IpAddr::V4)
                    .map_err(|_| DecodeError::Invalid("v1 TCP4 address is not IPv4"))
            };
            (FAM_TCP4, ip(s)?, ip(d)?)
        }
        "TCP6" => {
            let ip = |t: &str| {
                t.parse::<Ipv6Addr>()
                    .map(IpAddr::V6)
                    .map_err(|_| DecodeError::Invalid("v1 TCP6 address is not IPv6"))
            };
            (FAM_TCP6, ip(s)?, ip(d)?)
        }
        _ => {
            return Err(DecodeError::Invalid(
                "v1 protocol is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    let header = Header {
        version: 1,
        command: Command::Proxy,
        family,
        addrs: Some((SocketAddr::new(src, sp), SocketAddr::new(dst, dp))),
        tlvs: Vec::new(),
    };
    Ok((header, consumed))
}

fn decode_v2(bytes: &[u8]) -> Result<(Header, usize), DecodeError> {
    let Some(fixed) = bytes.get(..16) else {
        return Err(DecodeError::Incomplete);
    };
    let ver_cmd = fixed[12];
    let family = fixed[13];
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if ver_cmd >> 4 != 2 {
        return Err(DecodeError::Invalid("v2 version is not 2"));
    }
    let command = match ver_cmd & 0x0F {
        0 => Command::Local,
        1 => Command::Proxy,
        _ => {
            return Err(DecodeError::Invalid(
                "v2 command is neither LOCAL nor PROXY",
            ))
        }
    };
    let addr_len = match family >> 4 {
        0 => 0,
        1 => 12,
        2 => 36,
        3 => 216,
        _ => return Err(DecodeError::Invalid("v2 address family is unknown")),
    };
    if family & 0x0F > 2 {
        return Err(DecodeError::Invalid("v2 transport protocol is unknown"));
    }
    let Some(body) = bytes.get(16..16 + len) else {
        return Err(DecodeError::Incomplete);
    };
    let consumed = 16 + len;
    if command == Command::Local {
        // The spec: discard the protocol block, family included.
        let header = Header {
            version: 2,
            command,
            family,
            addrs: None,
            tlvs: Vec::new(),
        };
        return Ok((header, consumed));
    }
    let Some(addr) = body.get(..addr_len) else {
        return Err(DecodeError::Invalid(
            "v2 length is shorter than the addresses",
        ));
    };
    let addrs = match family >> 4 {
        1 => {
            let ip = |i: usize| Ipv4Addr::new(addr[i], addr[i + 1], addr[i + 2], addr[i + 3]);
            let port = |i: usize| u16::from_be_bytes([addr[i], addr[i + 1]]);
            Some((
                SocketAddr::new(IpAddr::V4(ip(0)), port(8)),
                SocketAddr::new(IpAddr::V4(ip(4)), port(10)),
            ))
        }
        2 => {
            let ip = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&addr[i..i + 16]);
                Ipv6Addr::from(o)
            };
            let port = |i: usize| u16::from_be_bytes([addr[i], addr[i + 1]]);
            Some((
                SocketAddr::new(IpAddr::V6(ip(0)), port(32)),
                SocketAddr::new(IpAddr::V6(ip(16)), port(34)),
            ))
        }
        _ => None,
    };
    let mut tlvs = Vec::new();
    let mut rest = &body[addr_len..];
    while !rest.is_empty() {
        let [kind, hi, lo, ..] = *rest else {
            return Err(DecodeError::Invalid("v2 TLV header is cut short"));
        };
        let n = usize::from(u16::from_be_bytes([hi, lo]));
        let Some(value) = rest.get(3..3 + n) else {
            return Err(DecodeError::Invalid("v2 TLV value runs past the header"));
        };
        if kind == PP2_TYPE_UNIQUE_ID && n > UNIQUE_ID_MAX {
            return Err(DecodeError::Invalid(
                "v2 unique id is longer than 128 bytes",
            ));
        }
        tlvs.push((kind, value.to_vec()));
        rest = &rest[3 + n..];
    }
    let header = Header {
        version: 2,
        command,
        family,
        addrs,
        tlvs,
    };
    Ok((header, consumed))
}

#[cfg(test)]
mod tests;
