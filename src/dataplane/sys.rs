//! Thin, safe wrappers over the Linux syscalls the data plane uses outside io_uring:
//! splice(2), pipes, read/write on raw fds, eventfd, CPU pinning, fd-limit queries.
//!
//! This is one of the two places in the crate that may contain `unsafe` (the other is the
//! io_uring driver). Every wrapper borrows the fds it touches; ownership stays with the
//! caller (`OwnedFd`), so no wrapper can close or leak a descriptor.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

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

/// True for errors that mean "this process or node ran out of a resource" (fds, memory,
/// buffers): back off, do not spin.
pub fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
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
