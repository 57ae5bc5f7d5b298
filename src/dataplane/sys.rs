//! Thin, safe wrappers over the Linux syscalls the data plane uses outside io_uring:
//! splice(2), pipes, read/write on raw fds, accept4(2), socket queue sizes, eventfd, CPU
//! pinning, fd-limit queries (and, for the control plane, the effective uid and SIGHUP's
//! disposition at start); UDP datagrams with packet info in [`udp`].
//!
//! This is one of the two places in the crate that may contain `unsafe` (the other is the
//! io_uring driver). Every wrapper borrows the fds it touches; ownership stays with the
//! caller (`OwnedFd`), so no wrapper can close or leak a descriptor.

#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

pub mod udp;
pub mod udp_batch;

/// Result of a nonblocking transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// Moved this many bytes (0 from a socket source = EOF).
    Moved(usize),
    /// Nothing could move now (EAGAIN).
    WouldBlock,
}

fn transfer_result(n: isize) -> io::Result<Transfer> {
    if n >= 0 {
        return Ok(Transfer::Moved(n as usize));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) => Ok(Transfer::WouldBlock),
        _ => Err(err),
    }
}

/// splice(2) up to `len` bytes from `from` to `to`, never blocking (both fds must be
/// O_NONBLOCK for socket ends; `SPLICE_F_NONBLOCK` covers the pipe end).
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<Transfer> {
    loop {
        // SAFETY: both fds are borrowed, so open for the duration of the call; null offsets
        // are valid for pipes and sockets; no memory is passed.
        let n = unsafe {
            libc::splice(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                to.as_raw_fd(),
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        match transfer_result(n) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// read(2) into `buf` without blocking (the fd must be O_NONBLOCK).
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Transfer> {
    loop {
        // SAFETY: `buf` is a valid, exclusively borrowed region of `buf.len()` bytes for the
        // duration of the call; the fd is borrowed and open.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match transfer_result(n) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// send(2) of `buf` without blocking and without SIGPIPE.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<Transfer> {
    loop {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        match transfer_result(n) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// A pipe used as a splice holder: (read end, write end), both nonblocking.
#[derive(Debug)]
pub struct Pipe {
    pub read: OwnedFd,
    pub write: OwnedFd,
    /// Capacity in bytes as the kernel reports it.
    pub capacity: usize,
}

/// Create a pipe and try to size it to `size` bytes (the kernel may round or refuse; the
/// actual capacity is returned in `Pipe::capacity`).
pub fn pipe(size: usize) -> io::Result<Pipe> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on an fd we own; F_SETPIPE_SZ takes an int argument.
    let set = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
    let capacity = if set > 0 {
        set as usize
    } else {
        // SAFETY: as above; F_GETPIPE_SZ takes no argument.
        let got = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        if got > 0 {
            got as usize
        } else {
            64 * 1024
        }
    };
    Ok(Pipe {
        read,
        write,
        capacity,
    })
}

/// An eventfd used to wake a worker from another thread.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant flags.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: eventfd succeeded; the fd is ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add 1 to an eventfd (wakes whoever polls it).
pub fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 on the stack.
    let n = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    if n == 8 || io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Drain an eventfd's counter.
pub fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into a valid u64 on the stack.
    unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
}

/// The CPUs this process may run on, in ascending order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set; sched_getaffinity fills
    // at most size_of::<cpu_set_t>() bytes.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pin the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: as in `allowed_cpus`; pid 0 = the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The soft RLIMIT_NOFILE of this process.
pub fn fd_limit() -> u64 {
    // SAFETY: getrlimit fills a plain struct on the stack.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur
        } else {
            0
        }
    }
}

/// The effective uid of this process (the owner of the files it creates).
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Ignores SIGHUP until a handler is installed (the control plane's, which replaces this):
/// a reload request that arrives while sluice is still starting must not end it, which is
/// SIGHUP's default action.
pub fn ignore_hangup() -> io::Result<()> {
    // SAFETY: sets the disposition of one signal to SIG_IGN; no handler code is involved.
    if unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) } == libc::SIG_ERR {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// True for errors that mean "this process or node ran out of a resource" (fds, memory,
/// buffers): back off, do not spin.
pub fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// True for errors that mean "no fd left" (process or system limit).
pub fn is_fd_exhaustion(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// True for errors that mean the peer reset or vanished.
pub fn is_reset(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED | libc::ETIMEDOUT)
    )
}

/// Set IP_TRANSPARENT (IPv4) or IPV6_TRANSPARENT (IPv6) on a socket, so it can bind to a
/// non-local address (the client's). Needs CAP_NET_ADMIN.
pub fn set_transparent(fd: BorrowedFd<'_>, ipv6: bool) -> io::Result<()> {
    let on: libc::c_int = 1;
    let (level, name) = if ipv6 {
        (libc::SOL_IPV6, libc::IPV6_TRANSPARENT)
    } else {
        (libc::SOL_IP, libc::IP_TRANSPARENT)
    };
    // SAFETY: passes a pointer to a c_int on the stack with its exact size; the fd is borrowed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// accept4(2) on a nonblocking listener: the new socket (nonblocking, close-on-exec) and the
/// client's address, or `Ok(None)` when no connection is waiting.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<Option<(OwnedFd, Option<SocketAddr>)>> {
    loop {
        // SAFETY: `try_init` hands accept4 a zeroed sockaddr_storage and its length, which
        // accept4 fills with at most that many bytes; the listener is borrowed, so open for
        // the duration of the call.
        let accepted = unsafe {
            socket2::SockAddr::try_init(|storage, len| {
                let fd = libc::accept4(
                    listener.as_raw_fd(),
                    storage.cast(),
                    len,
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                );
                if fd >= 0 {
                    Ok(fd)
                } else {
                    Err(io::Error::last_os_error())
                }
            })
        };
        match accepted {
            Ok((fd, addr)) => {
                // SAFETY: accept4 returned a new fd that nothing else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                return Ok(Some((fd, addr.as_socket())));
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(None),
                _ => return Err(e),
            },
        }
    }
}

/// True for accept4(2) errors that concern only the connection being accepted (it was reset
/// or failed while queued): take the next one.
pub fn is_transient_accept_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

/// Bytes a socket still holds for the connection: unread in its receive queue plus not yet
/// acknowledged by the peer in its send queue (SIOCINQ + SIOCOUTQ). Errors count as none.
pub fn queued_bytes(fd: BorrowedFd<'_>) -> usize {
    let mut total = 0usize;
    for request in [libc::FIONREAD, libc::TIOCOUTQ] {
        let mut n: libc::c_int = 0;
        // SAFETY: both ioctls write one c_int to the pointer given; the fd is borrowed.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, &mut n as *mut libc::c_int) };
        if rc == 0 && n > 0 {
            total += n as usize;
        }
    }
    total
}

/// Take the pending error of a socket (SO_ERROR): how a nonblocking connect ended.
pub fn socket_error(fd: RawFd) -> io::Result<Option<io::Error>> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the c_int on the stack; the caller
    // keeps `fd` open for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

/// Classic BPF opcodes (linux/filter.h), spelled out so the program below reads as a listing.
mod bpf {
    // BPF_LD (0x00) | BPF_W (0x00) | BPF_ABS (0x20)
    pub const LD_W_ABS: u16 = 0x20;
    // BPF_LD (0x00) | BPF_B (0x10) | BPF_ABS (0x20)
    pub const LD_B_ABS: u16 = 0x10 | 0x20;
    pub const ALU_RSH_K: u16 = 0x04 | 0x70;
    pub const ALU_MUL_K: u16 = 0x04 | 0x20;
    pub const ALU_MOD_K: u16 = 0x04 | 0x90;
    pub const ALU_XOR_X: u16 = 0x04 | 0xa0 | 0x08;
    pub const JMP_JA: u16 = 0x05;
    pub const JMP_JEQ_K: u16 = 0x05 | 0x10;
    pub const MISC_TAX: u16 = 0x07;
    pub const RET_A: u16 = 0x06 | 0x10;
    /// SKF_NET_OFF: the program runs with the packet pointer at the TCP payload; the IP
    /// header is reached through this negative base (a plain offset reads the payload).
    pub const NET: u32 = 0xFFF0_0000;
}

/// The SO_REUSEPORT program that sends every connection from one client IP to the same
/// socket of the group: index = (hash of the source address) mod `groups`. IPv4: the source
/// word; IPv6: the four source words XORed. (shared/design/KERNEL.md, verified on this
/// kernel for IPv4; the index is the socket's position in the group = order of listen().)
fn client_ip_steering_program(groups: u32) -> Vec<libc::sock_filter> {
    use bpf::*;
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    vec![
        op(LD_B_ABS, 0, 0, NET),            // 0: A = first byte of the IP header
        op(ALU_RSH_K, 0, 0, 4),             // 1: A = IP version
        op(JMP_JEQ_K, 0, 2, 4),             // 2: IPv4 → 3, else → 5
        op(LD_W_ABS, 0, 0, NET + 12),       // 3: A = IPv4 source address
        op(JMP_JA, 0, 0, 10),               // 4: → 15
        op(LD_W_ABS, 0, 0, NET + 8),        // 5: IPv6 source, word 0
        op(MISC_TAX, 0, 0, 0),              // 6
        op(LD_W_ABS, 0, 0, NET + 12),       // 7: word 1
        op(ALU_XOR_X, 0, 0, 0),             // 8
        op(MISC_TAX, 0, 0, 0),              // 9
        op(LD_W_ABS, 0, 0, NET + 16),       // 10: word 2
        op(ALU_XOR_X, 0, 0, 0),             // 11
        op(MISC_TAX, 0, 0, 0),              // 12
        op(LD_W_ABS, 0, 0, NET + 20),       // 13: word 3
        op(ALU_XOR_X, 0, 0, 0),             // 14
        op(ALU_MUL_K, 0, 0, 0x9E37_79B1),   // 15: spread the bits
        op(ALU_RSH_K, 0, 0, 16),            // 16
        op(ALU_MOD_K, 0, 0, groups.max(1)), // 17
        op(RET_A, 0, 0, 0),                 // 18: index into the group
    ]
}

/// Attach the client-IP steering program to the SO_REUSEPORT group `fd` belongs to (it
/// applies to the whole group; attach again when the group's size changes).
pub fn attach_client_ip_steering(fd: BorrowedFd<'_>, groups: u32) -> io::Result<()> {
    let mut program = client_ip_steering_program(groups);
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: the kernel copies the program during the call; `program` outlives it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Remove the steering program of `fd`'s group (back to the kernel's 4-tuple hash).
pub fn detach_steering(fd: BorrowedFd<'_>) -> io::Result<()> {
    let zero: libc::c_int = 0;
    // SAFETY: passes a c_int on the stack with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DETACH_REUSEPORT_BPF,
            (&zero as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Descriptor numbers [`adopt_inherited_fd`] has handed out, for the life of the process.
static ADOPTED: std::sync::Mutex<Vec<RawFd>> = std::sync::Mutex::new(Vec::new());

/// Takes ownership of a descriptor this process inherited by number across exec — systemd's
/// `LISTEN_FDS` (fds 3, 4, …) or the hand-over socket named by `SLUICE_HANDOVER_FD` — and
/// marks it close-on-exec. Errors: the number is stdin/stdout/stderr or not an open
/// descriptor (EBADF), or it was adopted before (each number is adopted at most once per
/// process, so two `OwnedFd`s can never own one descriptor, even after the first closed it
/// and the number was reused).
///
/// Only for numbers the environment names at start (`LISTEN_FDS`, `SLUICE_HANDOVER_FD`),
/// read before this process opens descriptors of its own: such a number can only be an
/// inherited descriptor.
pub(crate) fn adopt_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    let mut adopted = ADOPTED.lock().unwrap_or_else(|p| p.into_inner());
    if fd < 3 || adopted.contains(&fd) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is not an inherited descriptor left to adopt"),
        ));
    }
    // SAFETY: F_GETFD on an integer touches no memory; a closed number yields EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (checked above) and was inherited across exec, so no
    // `OwnedFd`/`File` of this process was created for it by an open or socket call, and
    // `ADOPTED` (held locked) guarantees this function returns it only once: the returned
    // `OwnedFd` is its only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    adopted.push(fd);
    drop(adopted);
    // SAFETY: fcntl(F_SETFD) on a descriptor we own; no memory is passed.
    if unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}
