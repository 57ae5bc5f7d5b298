//! Batched UDP syscalls (issue 14): many datagrams per call.
//!
//! - [`recv_batch`]: `recvmmsg(2)` on a NodePort socket into fixed slots of one buffer, with
//!   each datagram's source, the node address it was sent to (packet info) and truncation.
//! - [`send_replies`]: `sendmmsg(2)` of replies on a NodePort socket, each to its client and
//!   from the node address that client used (IP_PKTINFO / IPV6_PKTINFO per message).
//! - [`send_connected`]: `sendmmsg(2)` of datagrams on a connected upstream socket, each
//!   made of an optional PROXY v2 header and the payload.
//!
//! The message headers, addresses and control buffers live on the stack for one call (at
//! most [`MAX_BATCH`] messages); the payloads are borrowed. Part of `sys`: the only module
//! besides the io_uring driver that may hold `unsafe`.

use super::udp::{pktinfo_destination, socket_form, write_pktinfo, Control, Received};
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Messages per call at most.
pub const MAX_BATCH: usize = 32;

/// Read up to `MAX_BATCH` datagrams waiting on a nonblocking NodePort socket: datagram `i`
/// goes to `bufs[i * slot .. (i + 1) * slot]` and `(i, its description)` to `out` (`out` is
/// cleared first; empty when none was waiting). A datagram longer than `slot` is cut and
/// marked `truncated`. An error is returned only when not even the first datagram could be
/// read (a later one's error is reported by the next call, as recvmmsg does).
pub fn recv_batch(
    fd: BorrowedFd<'_>,
    bufs: &mut [u8],
    slot: usize,
    out: &mut Vec<(usize, Received)>,
) -> io::Result<()> {
    out.clear();
    let n = (bufs.len() / slot.max(1)).min(MAX_BATCH);
    if n == 0 {
        return Ok(());
    }
    // SAFETY: zeroed sockaddr_storage, iovec and mmsghdr are valid plain data (null
    // pointers, zero lengths) until filled in below.
    let mut names: [libc::sockaddr_storage; MAX_BATCH] = unsafe { zeroed() };
    let mut controls: [Control; MAX_BATCH] = std::array::from_fn(|_| Control([0; 64]));
    // SAFETY: as above.
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
    for (i, chunk) in bufs.chunks_exact_mut(slot).take(n).enumerate() {
        iovs[i].iov_base = chunk.as_mut_ptr().cast();
        iovs[i].iov_len = slot;
        let h = &mut msgs[i].msg_hdr;
        h.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
        h.msg_control = controls[i].0.as_mut_ptr().cast();
        h.msg_controllen = controls[i].0.len() as _;
    }
    let got = loop {
        // SAFETY: the first `n` headers point at live, exclusively borrowed buffers of the
        // lengths given (address storage, one slot of `bufs` each through its iovec,
        // control buffer), all of which outlive the call; the fd is borrowed; no timeout.
        let r = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r >= 0 {
            break r as usize;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(()),
            _ => return Err(err),
        }
    };
    for (i, m) in msgs.iter().take(got.min(n)).enumerate() {
        let h = &m.msg_hdr;
        // SAFETY: recvmmsg filled at most `msg_namelen` bytes of `names[i]`, a
        // sockaddr_storage, valid for any family.
        let from = unsafe { socket2::SockAddr::new(names[i], h.msg_namelen) }.as_socket();
        let Some(from) = from else {
            continue; // not an IP source (cannot happen on an IP socket): skipped
        };
        let len = m.msg_len as usize;
        out.push((
            i,
            Received {
                len: len.min(slot),
                truncated: h.msg_flags & libc::MSG_TRUNC != 0 || len > slot,
                from,
                to: pktinfo_destination(h),
            },
        ));
    }
    Ok(())
}

/// A reply to send on a NodePort socket.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    pub payload: &'a [u8],
    /// The client.
    pub to: SocketAddr,
    /// The node address the client sent to: the reply leaves from it.
    pub from: IpAddr,
}

/// Send `replies` (at most [`MAX_BATCH`] are looked at) on a NodePort socket with one
/// `sendmmsg(2)`: `Ok(n)`, the first `n` were sent (n ≥ 1 unless `replies` is empty); `Err`
/// when the first could not be (EAGAIN included: the caller decides what the rest become).
/// `ipv6_socket` as for [`super::udp::send_to_from`].
pub fn send_replies(
    fd: BorrowedFd<'_>,
    replies: &[Reply<'_>],
    ipv6_socket: bool,
) -> io::Result<usize> {
    let n = replies.len().min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    let mut names: [Option<socket2::SockAddr>; MAX_BATCH] = std::array::from_fn(|_| None);
    let mut controls: [Control; MAX_BATCH] = std::array::from_fn(|_| Control([0; 64]));
    let mut lens = [0usize; MAX_BATCH];
    for (i, r) in replies.iter().take(n).enumerate() {
        names[i] = Some(socket_form(r.to, ipv6_socket));
        lens[i] = write_pktinfo(&mut controls[i], r.from, ipv6_socket)?;
    }
    // SAFETY: zeroed iovec and mmsghdr are valid plain data until filled in below.
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
    for (i, r) in replies.iter().take(n).enumerate() {
        iovs[i].iov_base = r.payload.as_ptr() as *mut libc::c_void;
        iovs[i].iov_len = r.payload.len();
        let name = names[i].as_ref().expect("set above");
        let h = &mut msgs[i].msg_hdr;
        h.msg_name = name.as_ptr() as *mut libc::c_void;
        h.msg_namelen = name.len();
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
        h.msg_control = controls[i].0.as_mut_ptr().cast();
        h.msg_controllen = lens[i] as _;
    }
    send_mmsg(fd, &mut msgs[..n])
}

/// Send datagrams on a connected socket with one `sendmmsg(2)`, each made of `(header,
/// payload)` (an empty header is left out); at most [`MAX_BATCH`] are looked at. `Ok(n)` and
/// `Err` as for [`send_replies`].
pub fn send_connected(fd: BorrowedFd<'_>, datagrams: &[(&[u8], &[u8])]) -> io::Result<usize> {
    let n = datagrams.len().min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: zeroed iovec and mmsghdr are valid plain data until filled in below.
    let mut iovs: [[libc::iovec; 2]; MAX_BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
    for (i, (header, payload)) in datagrams.iter().take(n).enumerate() {
        let parts: &[&[u8]] = if header.is_empty() {
            &[payload]
        } else {
            &[header, payload]
        };
        for (v, p) in iovs[i].iter_mut().zip(parts) {
            v.iov_base = p.as_ptr() as *mut libc::c_void;
            v.iov_len = p.len();
        }
        let h = &mut msgs[i].msg_hdr;
        h.msg_iov = iovs[i].as_mut_ptr();
        h.msg_iovlen = parts.len() as _;
    }
    send_mmsg(fd, &mut msgs[..n])
}

fn send_mmsg(fd: BorrowedFd<'_>, msgs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    loop {
        // SAFETY: every header points at buffers (addresses, iovecs, payloads, control
        // messages) that the caller keeps alive and unmoved for the call; the kernel only
        // reads them (and writes each header's msg_len); the fd is borrowed.
        let r = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    /// Reads until `want` datagrams came: each with a copy of its bytes.
    fn wait_batch(fd: BorrowedFd<'_>, slot: usize, want: usize) -> Vec<(Received, Vec<u8>)> {
        let mut bufs = vec![0u8; slot * MAX_BATCH];
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut all = Vec::new();
        let mut out = Vec::new();
        while all.len() < want {
            assert!(
                Instant::now() < deadline,
                "only {} of {want} datagrams",
                all.len()
            );
            recv_batch(fd, &mut bufs, slot, &mut out).unwrap();
            for &(i, r) in &out {
                all.push((r, bufs[i * slot..i * slot + r.len].to_vec()));
            }
            if out.is_empty() {
                std::thread::yield_now();
            }
        }
        all
    }

    #[test]
    fn a_batch_of_datagrams_from_many_clients_is_read_and_answered_in_one_call_each() {
        let server = UdpSocket::bind("0.0.0.0:0").unwrap();
        server.set_nonblocking(true).unwrap();
        super::super::udp::set_recv_pktinfo(server.as_fd(), false).unwrap();
        let port = server.local_addr().unwrap().port();
        let clients: Vec<UdpSocket> = (0..8)
            .map(|i| {
                let c = UdpSocket::bind(("127.0.0.5", 0)).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                c.send_to(&[i as u8; 10], ("127.0.0.3", port)).unwrap();
                c
            })
            .collect();
        let got = wait_batch(server.as_fd(), 2048, 8);
        for (r, payload) in &got {
            assert_eq!(r.len, 10);
            assert!(!r.truncated);
            assert_eq!(r.to, Some(IpAddr::from([127, 0, 0, 3])));
            assert!(payload.iter().all(|&b| b == payload[0]));
        }
        let out: Vec<Reply<'_>> = got
            .iter()
            .map(|(r, p)| Reply {
                payload: p,
                to: r.from,
                from: IpAddr::from([127, 0, 0, 3]),
            })
            .collect();
        assert_eq!(send_replies(server.as_fd(), &out, false).unwrap(), 8);
        for (i, c) in clients.iter().enumerate() {
            let mut buf = [0u8; 32];
            let (n, from) = c.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[i as u8; 10], "its own bytes back");
            assert_eq!(from, SocketAddr::from(([127, 0, 0, 3], port)));
        }
    }

    #[test]
    fn the_largest_datagram_passes_whole_and_a_longer_one_is_marked_truncated() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        super::super::udp::set_recv_pktinfo(server.as_fd(), false).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let big: Vec<u8> = (0..65_507u32).map(|i| (i % 251) as u8).collect();
        client.send_to(&big, server.local_addr().unwrap()).unwrap();
        let got = wait_batch(server.as_fd(), 65_536, 1);
        assert_eq!((got[0].0.len, got[0].0.truncated), (65_507, false));
        assert_eq!(got[0].1, big);
        client
            .send_to(&big[..3000], server.local_addr().unwrap())
            .unwrap();
        let got = wait_batch(server.as_fd(), 2048, 1);
        assert_eq!((got[0].0.len, got[0].0.truncated), (2048, true));
        assert_eq!(got[0].1, &big[..2048]);
    }

    #[test]
    fn connected_batches_carry_header_and_payload_as_one_datagram_each() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let sent = send_connected(
            a.as_fd(),
            &[(b"head", b"one"), (b"", b"two"), (b"", b""), (b"h", b"")],
        )
        .unwrap();
        assert_eq!(sent, 4);
        let mut buf = [0u8; 16];
        for want in [&b"headone"[..], b"two", b"", b"h"] {
            let n = b.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], want);
        }
    }
}
