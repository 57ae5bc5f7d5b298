//! The UDP syscalls of the data plane: NodePort sockets that learn which node address each
//! datagram was sent to (IP_PKTINFO / IPV6_RECVPKTINFO) and reply from exactly that address,
//! and connected upstream sockets whose sends carry an optional PROXY v2 header as a second
//! part of one message and whose receives detect truncation. NodePort sockets are read and
//! written in batches by [`super::udp_batch`] with the packet-info helpers here.
//!
//! Part of `sys` (the only module besides the io_uring driver that may hold `unsafe`): every
//! wrapper borrows the fd and the buffers it touches for the duration of one call; no fd is
//! opened or closed here.

use super::Transfer;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};

/// A datagram read from a NodePort socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes in the buffer (the datagram's length when it fit).
    pub len: usize,
    /// The datagram was longer than the buffer (MSG_TRUNC): the buffer holds a cut copy.
    pub truncated: bool,
    /// The client's address and port.
    pub from: SocketAddr,
    /// The node address the client sent to, from the packet-info control message (`None`
    /// when the socket did not deliver one).
    pub to: Option<IpAddr>,
}

/// Room for one IP_PKTINFO or IPV6_PKTINFO control message, aligned for `cmsghdr`.
#[repr(C, align(8))]
pub(super) struct Control(pub(super) [u8; 64]);

/// Ask the kernel to tell, with every datagram, which local address it was sent to: on an
/// IPv6 socket IPV6_RECVPKTINFO (it covers IPv4 datagrams of a dual-stack socket too, as
/// IPv4-mapped addresses), on an IPv4 socket IP_PKTINFO.
pub fn set_recv_pktinfo(fd: BorrowedFd<'_>, ipv6: bool) -> io::Result<()> {
    let (level, name) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    let on: libc::c_int = 1;
    // SAFETY: passes a pointer to a c_int on the stack with its exact size; the fd is borrowed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The destination address in the packet-info control message of a received `msg`.
pub(super) fn pktinfo_destination(msg: &libc::msghdr) -> Option<IpAddr> {
    // SAFETY: `msg` was filled by recvmsg; the CMSG_* macros walk its control buffer within
    // `msg_controllen` (which the kernel set to what it wrote), and each message's data is
    // read unaligned with the size its type defines, after checking its length.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            let data = libc::CMSG_DATA(cmsg);
            if c.cmsg_level == libc::IPPROTO_IP
                && c.cmsg_type == libc::IP_PKTINFO
                && c.cmsg_len as usize
                    >= libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize
            {
                let info = std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                return Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    info.ipi_addr.s_addr,
                ))));
            }
            if c.cmsg_level == libc::IPPROTO_IPV6
                && c.cmsg_type == libc::IPV6_PKTINFO
                && c.cmsg_len as usize
                    >= libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as usize
            {
                let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                return Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

/// `to` as a socket of the family `ipv6_socket` says addresses it (an IPv4 client of a
/// dual-stack socket: IPv4-mapped).
pub(super) fn socket_form(to: SocketAddr, ipv6_socket: bool) -> socket2::SockAddr {
    socket2::SockAddr::from(match (ipv6_socket, to) {
        (true, SocketAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        (_, to) => to,
    })
}

/// Write the packet-info control message that makes a datagram leave from `from` into
/// `control`; the control length to give the kernel.
pub(super) fn write_pktinfo(
    control: &mut Control,
    from: IpAddr,
    ipv6_socket: bool,
) -> io::Result<usize> {
    // SAFETY: a zeroed msghdr is valid plain data.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_control = control.0.as_mut_ptr().cast();
    // SAFETY: the control buffer is 64 bytes, aligned for cmsghdr, and CMSG_SPACE of either
    // pktinfo struct (≤ 40 bytes) fits; CMSG_FIRSTHDR of a msghdr with that buffer and
    // length is its start; the pktinfo is written unaligned within it.
    unsafe {
        match (ipv6_socket, from) {
            (false, IpAddr::V4(ip)) => {
                msg.msg_controllen = libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as _;
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(ip).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
            }
            (_, ip) => {
                let v6 = match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                if !ipv6_socket {
                    return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
                }
                msg.msg_controllen = libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as _;
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as _;
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: v6.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
            }
        }
    }
    Ok(msg.msg_controllen as usize)
}

/// Send one datagram made of `parts` (a PROXY v2 header, then the payload) on a connected
/// socket, without blocking.
pub fn send_parts(fd: BorrowedFd<'_>, parts: &[&[u8]]) -> io::Result<Transfer> {
    let mut iov: [libc::iovec; 2] = [
        libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        },
        libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        },
    ];
    let n = parts.len().min(2);
    for (v, p) in iov.iter_mut().zip(parts) {
        v.iov_base = p.as_ptr() as *mut libc::c_void;
        v.iov_len = p.len();
    }
    // SAFETY: a zeroed msghdr is valid plain data.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = n as _;
    loop {
        // SAFETY: the iovecs point at the borrowed parts (only read), alive for the call.
        let r = unsafe {
            libc::sendmsg(
                fd.as_raw_fd(),
                &msg,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        match transfer(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Read one datagram from a connected socket: `Ok(Some((len, truncated)))`, or `Ok(None)`
/// when none is waiting. `truncated` when the datagram was longer than `buf` (MSG_TRUNC
/// makes recv return the real length).
pub fn recv_connected(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<(usize, bool)>> {
    loop {
        // SAFETY: `buf` is a valid, exclusively borrowed region of `buf.len()` bytes; the fd
        // is borrowed and open.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        match transfer(n) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(Transfer::WouldBlock) => return Ok(None),
            Ok(Transfer::Moved(len)) => {
                return Ok(Some((len.min(buf.len()), len > buf.len())));
            }
        }
    }
}

fn transfer(n: isize) -> io::Result<Transfer> {
    if n >= 0 {
        return Ok(Transfer::Moved(n as usize));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) => Ok(Transfer::WouldBlock),
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::sys::udp_batch::{recv_batch, send_replies, Reply};
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    /// One datagram read as the worker reads them (`recvmmsg` with `buf.len()` slots).
    fn recv_from(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Received>> {
        let mut out = Vec::new();
        recv_batch(fd, buf, buf.len(), &mut out)?;
        Ok(out.first().map(|&(_, r)| r))
    }

    fn send_to_from(
        fd: BorrowedFd<'_>,
        payload: &[u8],
        to: SocketAddr,
        from: IpAddr,
        ipv6_socket: bool,
    ) -> io::Result<usize> {
        send_replies(fd, &[Reply { payload, to, from }], ipv6_socket)
    }

    #[test]
    fn a_wildcard_socket_learns_the_destination_and_replies_from_it() {
        let server = UdpSocket::bind("0.0.0.0:0").unwrap();
        server.set_nonblocking(true).unwrap();
        set_recv_pktinfo(server.as_fd(), false).unwrap();
        let port = server.local_addr().unwrap().port();
        let client = UdpSocket::bind("127.0.0.5:0").unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        client.send_to(b"hello", ("127.0.0.3", port)).unwrap();
        let mut buf = [0u8; 16];
        let got = loop {
            if let Some(r) = recv_from(server.as_fd(), &mut buf).unwrap() {
                break r;
            }
            std::thread::yield_now();
        };
        assert_eq!(got.len, 5);
        assert!(!got.truncated);
        assert_eq!(got.from, client.local_addr().unwrap());
        assert_eq!(got.to, Some(IpAddr::from([127, 0, 0, 3])));
        send_to_from(server.as_fd(), b"hi", got.from, got.to.unwrap(), false).unwrap();
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(
            from,
            SocketAddr::from(([127, 0, 0, 3], port)),
            "from the address used"
        );
    }

    #[test]
    fn a_dual_stack_socket_replies_to_ipv4_clients_from_the_address_used() {
        let Ok(server) = UdpSocket::bind("[::]:0") else {
            eprintln!("SKIPPED: no IPv6 on this host");
            return;
        };
        server.set_nonblocking(true).unwrap();
        set_recv_pktinfo(server.as_fd(), true).unwrap();
        let port = server.local_addr().unwrap().port();
        let client = UdpSocket::bind("127.0.0.5:0").unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        client.send_to(&[7u8; 40], ("127.0.0.4", port)).unwrap();
        let mut buf = [0u8; 16];
        let got = loop {
            if let Some(r) = recv_from(server.as_fd(), &mut buf).unwrap() {
                break r;
            }
            std::thread::yield_now();
        };
        assert!(got.truncated, "40 bytes into 16");
        assert_eq!(got.len, 16);
        let to = got.to.unwrap();
        assert_eq!(to.to_canonical(), IpAddr::from([127, 0, 0, 4]));
        send_to_from(server.as_fd(), b"hi", got.from, to, true).unwrap();
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(from, SocketAddr::from(([127, 0, 0, 4], port)));
    }

    #[test]
    fn connected_sockets_send_parts_as_one_datagram_and_see_truncation() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        b.set_nonblocking(true).unwrap();
        send_parts(a.as_fd(), &[b"head", b"body"]).unwrap();
        let mut buf = [0u8; 6];
        let got = loop {
            if let Some(r) = recv_connected(b.as_fd(), &mut buf).unwrap() {
                break r;
            }
            std::thread::yield_now();
        };
        assert_eq!(got, (6, true));
        assert_eq!(&buf, b"headbo");
        assert_eq!(recv_connected(b.as_fd(), &mut buf).unwrap(), None);
    }
}
