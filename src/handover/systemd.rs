//! systemd's side of the hand-over: the file-descriptor store and the main PID.
//!
//! - **Storing** ([`ServiceManager::store`]): each socket goes to the store in its own
//!   `FDSTORE=1` + `FDNAME=<name>` message (systemd gives one name to all the fds of a
//!   message, and keeps no order among them, so one fd per message is the only way for
//!   each to keep its [`SocketName`]). A socket the daemon closes for good (a reload that
//!   removes a NodePort) leaves the store with `FDSTOREREMOVE=1` ([`ServiceManager::remove`]),
//!   or systemd would keep it listening.
//! - **Taking back** ([`listen_fds`]): at start, `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES`
//!   name the fds from 3 on. Only the variables meant for this process count (`LISTEN_PID`
//!   is its pid); a malformed one is an error naming it.
//! - **Main PID** ([`ServiceManager::main_pid`] then [`ServiceManager::barrier`]): after a
//!   `ctl upgrade`, the old process (still the main one, so `NotifyAccess=main` suffices)
//!   names the new one, then waits until systemd has read that message (`BARRIER=1` with a
//!   pipe systemd closes; handled before any access check) before it may exit.
//!
//! Messages are sent with rustix's `sendmsg` (SCM_RIGHTS from `BorrowedFd`s). Without
//! `NOTIFY_SOCKET` every call does nothing. Versions: the fd store and `FDNAME=` need
//! systemd 233, `FDSTOREREMOVE=1` 236, `BARRIER=1` 246, `MAINPID=` any; systemd 252
//! (Debian 12) keeps the store across `systemctl restart`.

use super::name::{is_valid_fdname, SocketName};
use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// Where sd_notify messages go (`NOTIFY_SOCKET`).
#[derive(Debug, Clone)]
pub struct ServiceManager {
    target: Target,
}

#[derive(Debug, Clone)]
enum Target {
    Path(PathBuf),
    /// `@name`: a socket in the abstract namespace.
    Abstract(Vec<u8>),
}

impl ServiceManager {
    /// The service manager named by `NOTIFY_SOCKET`, if any.
    pub fn from_env() -> Option<ServiceManager> {
        let value = std::env::var_os("NOTIFY_SOCKET")?;
        ServiceManager::at(&value.to_string_lossy())
    }

    /// The notify socket at `address` (a path, or `@name` for the abstract namespace).
    pub fn at(address: &str) -> Option<ServiceManager> {
        let target = match address.strip_prefix('@') {
            Some(name) => Target::Abstract(name.as_bytes().to_vec()),
            None if address.starts_with('/') => Target::Path(PathBuf::from(address)),
            None => return None,
        };
        Some(ServiceManager { target })
    }

    /// Puts each socket in the fd store under its name. Stops at the first failure
    /// (systemd refuses more than `FileDescriptorStoreMax=` without telling the sender, so
    /// the caller cannot learn of that here; docs/operations.md says how to size it).
    pub fn store(&self, sockets: &[(SocketName, BorrowedFd<'_>)]) -> io::Result<()> {
        let socket = self.connect()?;
        for (name, fd) in sockets {
            let name = fdname(name)?;
            send(&socket, &format!("FDSTORE=1\nFDNAME={name}\n"), &[*fd])?;
        }
        Ok(())
    }

    /// Takes these sockets out of the fd store (systemd closes its copies).
    pub fn remove(&self, names: &[SocketName]) -> io::Result<()> {
        let socket = self.connect()?;
        for name in names {
            let name = fdname(name)?;
            send(&socket, &format!("FDSTOREREMOVE=1\nFDNAME={name}\n"), &[])?;
        }
        Ok(())
    }

    /// Tells systemd that `pid` is the service's main process from now on.
    pub fn main_pid(&self, pid: u32) -> io::Result<()> {
        send(&self.connect()?, &format!("MAINPID={pid}\n"), &[])
    }

    /// Returns once systemd has processed every message sent before (`BARRIER=1`: systemd
    /// closes the pipe end it receives after handling what came earlier), or fails after
    /// `timeout`.
    pub fn barrier(&self, timeout: Duration) -> io::Result<()> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        send(&self.connect()?, "BARRIER=1\n", &[write.as_fd()])?;
        drop(write);
        wait_hangup(&read, timeout)
    }

    fn connect(&self) -> io::Result<UnixDatagram> {
        let socket = UnixDatagram::unbound()?;
        match &self.target {
            Target::Path(p) => socket.connect(p)?,
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                socket.connect_addr(&UnixAddr::from_abstract_name(name)?)?
            }
        }
        Ok(socket)
    }
}

fn fdname(name: &SocketName) -> io::Result<String> {
    let text = name.to_string();
    if is_valid_fdname(&text) {
        Ok(text)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{text:?} is not a name systemd accepts"),
        ))
    }
}

fn send(socket: &UnixDatagram, text: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("sd_notify: no room for the descriptors"));
    }
    let n = sendmsg(
        socket,
        &[IoSlice::new(text.as_bytes())],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if n != text.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "sd_notify: message cut short",
        ));
    }
    Ok(())
}

fn wait_hangup(read: &OwnedFd, timeout: Duration) -> io::Result<()> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the service manager did not confirm it had read our messages within {timeout:?} (BARRIER=1)"
                ),
            ));
        }
        let mut fds = [PollFd::new(read, PollFlags::IN)];
        let ts = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        match poll(&mut fds, Some(&ts)) {
            Ok(0) => {}
            Ok(_) if fds[0].revents().contains(PollFlags::HUP) => return Ok(()),
            // Readable without a hangup: someone wrote to it; keep waiting for the close.
            Ok(_) => {
                let mut buf = [0u8; 64];
                let _ = rustix::io::read(read, &mut buf);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// `LISTEN_*` variables that are malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenFdsError {
    /// A variable is not a number, or out of range.
    #[error("{var}={value:?} is not {expected}")]
    Malformed {
        var: &'static str,
        value: String,
        expected: &'static str,
    },
    /// `LISTEN_FDNAMES` has another number of names than `LISTEN_FDS` says.
    #[error("LISTEN_FDNAMES has {names} names for LISTEN_FDS={fds} descriptors")]
    NameCount { names: usize, fds: usize },
}

/// The `(fd, name)` pairs the `LISTEN_*` values give this process (`pid`): none when
/// `LISTEN_PID` is unset or names another process (the variables were meant for a parent);
/// names are `unknown` without `LISTEN_FDNAMES`, as in libsystemd.
pub fn parse_listen_fds(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    pid: u32,
) -> Result<Vec<(RawFd, String)>, ListenFdsError> {
    let Some(listen_pid) = listen_pid else {
        return Ok(Vec::new());
    };
    let for_pid = listen_pid
        .trim()
        .parse::<u32>()
        .map_err(|_| ListenFdsError::Malformed {
            var: "LISTEN_PID",
            value: listen_pid.to_owned(),
            expected: "a process id",
        })?;
    if for_pid != pid {
        return Ok(Vec::new());
    }
    let Some(listen_fds) = listen_fds else {
        return Ok(Vec::new());
    };
    let n = listen_fds
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|&n| n <= (i32::MAX - LISTEN_FDS_START) as u32)
        .ok_or_else(|| ListenFdsError::Malformed {
            var: "LISTEN_FDS",
            value: listen_fds.to_owned(),
            expected: "a number of descriptors",
        })? as usize;
    let names: Vec<String> = match listen_fdnames {
        Some(names) if n > 0 => names.split(':').map(str::to_owned).collect(),
        Some(_) => Vec::new(),
        None => vec!["unknown".to_owned(); n],
    };
    if names.len() != n {
        return Err(ListenFdsError::NameCount {
            names: names.len(),
            fds: n,
        });
    }
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(i, name)| (LISTEN_FDS_START + i as RawFd, name))
        .collect())
}

/// The fds systemd passed to this process (see [`parse_listen_fds`]), owned and
/// close-on-exec. Call it once, at start, before opening anything.
/// `adopt` takes ownership of an inherited descriptor number (the data plane's
/// `adopt_inherited_fd`: the one place allowed the `unsafe` this needs).
pub fn listen_fds(adopt: super::Adopt) -> Result<Vec<(OwnedFd, String)>, ListenFdsError> {
    let var = |name| std::env::var(name).ok();
    let pairs = parse_listen_fds(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    )?;
    let mut out = Vec::with_capacity(pairs.len());
    for (fd, name) in pairs {
        match adopt(fd) {
            Ok(owned) => out.push((owned, name)),
            Err(e) => {
                tracing::warn!(fd, name, error = %e, "LISTEN_FDS names a descriptor this process does not have")
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handover::name::SocketKind;
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::io::IoSliceMut;

    #[test]
    fn listen_fds_are_parsed_with_their_names() {
        let me = 4242;
        assert_eq!(
            parse_listen_fds(
                Some("4242"),
                Some("3"),
                Some("tcp/0.0.0.0/30000/w0:tcp/0.0.0.0/30000/w1:control"),
                me
            ),
            Ok(vec![
                (3, "tcp/0.0.0.0/30000/w0".into()),
                (4, "tcp/0.0.0.0/30000/w1".into()),
                (5, "control".into()),
            ])
        );
        assert_eq!(
            parse_listen_fds(Some("4242"), Some("2"), None, me),
            Ok(vec![(3, "unknown".into()), (4, "unknown".into())])
        );
        // Meant for another process (a parent): nothing.
        assert_eq!(parse_listen_fds(Some("1"), Some("2"), None, me), Ok(vec![]));
        assert_eq!(parse_listen_fds(None, Some("2"), None, me), Ok(vec![]));
        assert_eq!(parse_listen_fds(Some("4242"), None, None, me), Ok(vec![]));
        assert_eq!(
            parse_listen_fds(Some("4242"), Some("0"), Some(""), me),
            Ok(vec![])
        );
    }

    #[test]
    fn malformed_listen_variables_are_errors_naming_the_variable() {
        let me = 7;
        let e = parse_listen_fds(Some("seven"), Some("1"), None, me).unwrap_err();
        assert_eq!(e.to_string(), "LISTEN_PID=\"seven\" is not a process id");
        let e = parse_listen_fds(Some("7"), Some("-1"), None, me).unwrap_err();
        assert_eq!(
            e.to_string(),
            "LISTEN_FDS=\"-1\" is not a number of descriptors"
        );
        let e = parse_listen_fds(Some("7"), Some("99999999999"), None, me).unwrap_err();
        assert!(e.to_string().starts_with("LISTEN_FDS="), "{e}");
        let e = parse_listen_fds(Some("7"), Some("2"), Some("a:b:c"), me).unwrap_err();
        assert_eq!(
            e.to_string(),
            "LISTEN_FDNAMES has 3 names for LISTEN_FDS=2 descriptors"
        );
    }

    /// A stand-in for systemd's notify socket: receives datagrams and their fds.
    struct FakeSystemd {
        socket: UnixDatagram,
        dir: PathBuf,
    }

    impl FakeSystemd {
        fn new(tag: &str) -> FakeSystemd {
            let dir =
                std::env::temp_dir().join(format!("sluice-notify-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let socket = UnixDatagram::bind(dir.join("notify")).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            FakeSystemd { socket, dir }
        }

        fn manager(&self) -> ServiceManager {
            ServiceManager::at(self.dir.join("notify").to_str().unwrap()).unwrap()
        }

        fn recv(&self) -> (String, Vec<OwnedFd>) {
            let mut buf = [0u8; 4096];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let msg = recvmsg(
                &self.socket,
                &mut [IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
            .unwrap();
            let mut fds = Vec::new();
            for m in control.drain() {
                if let RecvAncillaryMessage::ScmRights(f) = m {
                    fds.extend(f);
                }
            }
            (String::from_utf8_lossy(&buf[..msg.bytes]).into_owned(), fds)
        }
    }

    impl Drop for FakeSystemd {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn the_fd_store_gets_one_message_per_socket_with_its_name() {
        let systemd = FakeSystemd::new("store");
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let name_a = SocketName::node_port(SocketKind::Tcp, a.local_addr().unwrap(), 0);
        let name_b = SocketName::node_port(SocketKind::Tcp, "[::]:30000".parse().unwrap(), 1);
        systemd
            .manager()
            .store(&[(name_a, a.as_fd()), (name_b, b.as_fd())])
            .unwrap();
        for (name, listener) in [(name_a, &a), (name_b, &b)] {
            let (text, fds) = systemd.recv();
            assert_eq!(text, format!("FDSTORE=1\nFDNAME={name}\n"));
            assert_eq!(fds.len(), 1);
            // The very same socket: same address (and same inode, via its local address).
            let got = socket2::SockRef::from(&fds[0]).local_addr().unwrap();
            assert_eq!(got.as_socket(), Some(listener.local_addr().unwrap()));
        }
        systemd.manager().remove(&[name_b]).unwrap();
        let (text, fds) = systemd.recv();
        assert_eq!(text, format!("FDSTOREREMOVE=1\nFDNAME={name_b}\n"));
        assert!(fds.is_empty());
        systemd.manager().main_pid(1234).unwrap();
        assert_eq!(systemd.recv().0, "MAINPID=1234\n");
    }

    #[test]
    fn the_barrier_returns_once_the_manager_has_read_and_times_out_otherwise() {
        let systemd = FakeSystemd::new("barrier");
        let manager = systemd.manager();
        let reader = std::thread::spawn(move || {
            let (text, fds) = systemd.recv();
            // systemd closes the fd once it has handled what came before.
            drop(fds);
            (text, systemd)
        });
        manager.barrier(Duration::from_secs(5)).unwrap();
        let (text, systemd) = reader.join().unwrap();
        assert_eq!(text, "BARRIER=1\n");

        // Nobody reads: the barrier gives up, and says why.
        let e = manager.barrier(Duration::from_millis(50)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("BARRIER=1"), "{e}");
        drop(systemd);
    }

    #[test]
    fn an_abstract_notify_socket_is_reached() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("sluice-test-notify-{}", std::process::id());
        let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        ServiceManager::at(&format!("@{name}"))
            .unwrap()
            .main_pid(77)
            .unwrap();
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"MAINPID=77\n");
        assert!(ServiceManager::at("relative/path").is_none());
    }
}
