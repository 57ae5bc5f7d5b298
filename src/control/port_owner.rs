//! One sluice per NodePort: before sluice opens NodePorts (at start and when a reload adds
//! some) it looks for listening sockets of other processes on them, and refuses, naming the
//! process, when it finds one.
//!
//! Why looking is needed: NodePort listeners use SO_REUSEPORT (one socket per worker), and
//! the kernel lets any socket of the same uid join that group. A second `sluice run` with
//! another control socket binds the same NodePorts without an error and silently takes part
//! of their connections, routing them by its own configuration.
//!
//! How: the listening TCP sockets of this network namespace are in `/proc/self/net/tcp` and
//! `tcp6` (with uid and socket inode). One on a port we are about to serve, on an
//! overlapping address (the same, or a wildcard on either side), whose inode is not one of
//! this process's fds (`/proc/self/fd`) but is among another process's, belongs to that
//! process. (A listener no process holds is on its way out: closed, but still referenced by
//! an io_uring accept being cancelled, ours after a reload or that of a process that just
//! ended; it does not count.) The check runs before listeners are opened, so no
//! connection ever reaches a second instance, and once more right after start: two
//! instances started at the same moment see each other there, and both stop.
//!
//! Why not a lock (a file, an abstract socket per port): nothing here can outlive a crash
//! (the kernel closes a dead process's listeners, and that is all the check sees); nothing
//! is placed on a file system, so root, other users, parallel tests and containers that
//! share the host's network but not its `/run` are all covered; no fd per NodePort (10,000
//! Services would double the fds); the scope is exactly the ports' own (the network
//! namespace); and the holder is named from the evidence itself, the socket that would
//! share the traffic.
//!
//! # Hand-over (the hitless upgrade)
//! A successor that inherits the listeners (SCM_RIGHTS from the running daemon, or systemd's
//! `LISTEN_FDS`) holds the very same sockets (same inodes) among its own fds, so they count
//! as its own and the check passes with no flag and no lock to pass along; the old process's
//! copies are those same sockets. What the check still refuses is a socket the successor was
//! not given, which is exactly a third process. During such a hand-over the successor starts
//! with its inherited sockets in place and only opens (and checks) NodePorts it lacks.
//!
//! Limits: only TCP (sluice serves nothing else); `/proc` must be mounted (without it the
//! check is skipped with a warning); a reload that adds a NodePort at the same instant as
//! another process binds it is checked before opening only.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{self, BufRead};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Another process listens on a NodePort this daemon is about to serve.
#[derive(Debug, thiserror::Error)]
#[error(
    "NodePort {port}/TCP is already listened on ({addr}) by {holder}: a second sluice on the \
     same NodePorts would silently take part of their connections (SO_REUSEPORT); stop that \
     one first, or give each instance its own NodePorts{more}"
)]
pub struct PortTaken {
    /// The first NodePort found taken.
    pub port: u16,
    /// The address the other socket listens on.
    pub addr: SocketAddr,
    /// `pid 1234 (sluice run --config /etc/sluice/a.toml)`, or what is known of it.
    pub holder: String,
    /// ` (NodePorts taken: …)` when there are more.
    more: String,
}

/// Fails when a listening TCP socket of another process overlaps one of `wanted`. Sockets
/// of this process (its listeners, inherited ones) do not count.
pub fn check(wanted: &[SocketAddr]) -> Result<(), PortTaken> {
    if wanted.is_empty() {
        return Ok(());
    }
    let mut by_port: HashMap<u16, Vec<IpAddr>> = HashMap::new();
    for a in wanted {
        by_port.entry(a.port()).or_default().push(a.ip());
    }
    let listening = match listening_sockets() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(
                error = %e,
                "cannot read /proc/self/net/tcp: not checking for another process on the NodePorts"
            );
            return Ok(());
        }
    };
    let mut candidates: Vec<Listening> = listening
        .into_iter()
        .filter(|l| {
            by_port
                .get(&l.addr.port())
                .is_some_and(|ips| ips.iter().any(|&ip| overlap(ip, l.addr.ip())))
        })
        .collect();
    if candidates.is_empty() {
        return Ok(());
    }
    let own = own_socket_inodes();
    candidates.retain(|l| !own.contains(&l.inode));
    if candidates.is_empty() {
        return Ok(());
    }
    // A listener no process holds as an fd is on its way out: closed by its owner but still
    // referenced by an io_uring accept being cancelled (ours, after a reload removed the
    // NodePort), or by the ring of a process that just ended. Only processes this user
    // cannot see (another uid, for a user other than root) leave that open: those count.
    let holders = holders(candidates.iter().map(|l| l.inode).collect());
    let me = crate::dataplane::effective_uid();
    candidates.retain(|l| holders.contains_key(&l.inode) || (me != 0 && l.uid != me));
    let Some(first) = candidates.first() else {
        return Ok(());
    };
    let ports: BTreeSet<u16> = candidates.iter().map(|l| l.addr.port()).collect();
    let more = if ports.len() > 1 {
        let list: Vec<String> = ports.iter().take(10).map(u16::to_string).collect();
        let etc = if ports.len() > 10 { ", …" } else { "" };
        format!(" (NodePorts taken: {}{etc})", list.join(", "))
    } else {
        String::new()
    };
    Err(PortTaken {
        port: first.addr.port(),
        addr: first.addr,
        holder: describe(first, holders.get(&first.inode).map(String::as_str)),
        more,
    })
}

/// One listening TCP socket of this network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listening {
    addr: SocketAddr,
    uid: u32,
    inode: u64,
}

/// The TCP state `/proc/net/tcp` prints for a listener.
const LISTEN: u8 = 0x0A;

fn listening_sockets() -> io::Result<Vec<Listening>> {
    let mut out = listening_in("/proc/self/net/tcp", false)?;
    match listening_in("/proc/self/net/tcp6", true) {
        Ok(v6) => out.extend(v6),
        // No IPv6 in this kernel or namespace.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(out)
}

/// The listeners of one of those files. The kernel prints listeners first (the listening
/// hash, then the established one: `tcp_get_idx` in net/ipv4/tcp_ipv4.c), so reading stops
/// at the first other state: the file can hold every connection of a busy node.
fn listening_in(path: &str, v6: bool) -> io::Result<Vec<Listening>> {
    let file = std::fs::File::open(path)?;
    let mut out = Vec::new();
    for line in io::BufReader::new(file).lines().skip(1) {
        let line = line?;
        match parse_line(&line, v6) {
            Some((l, LISTEN)) => out.push(l),
            Some(_) => break,
            None => {}
        }
    }
    Ok(out)
}

/// `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...`: the
/// socket and its state. Addresses are hex words in host byte order, ports hex.
fn parse_line(line: &str, v6: bool) -> Option<(Listening, u8)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let (ip_hex, port_hex) = f.get(1)?.split_once(':')?;
    let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
    let uid = f.get(7)?.parse().ok()?;
    let inode = f.get(9)?.parse().ok()?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip_hex.get(8 * i..8 * i + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = if v6 {
        if ip_hex.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for i in 0..4 {
            bytes[4 * i..4 * i + 4].copy_from_slice(&word(i)?);
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        if ip_hex.len() != 8 {
            return None;
        }
        IpAddr::V4(Ipv4Addr::from(word(0)?))
    };
    Some((
        Listening {
            addr: SocketAddr::new(ip.to_canonical(), port),
            uid,
            inode,
        },
        state,
    ))
}

/// Whether connections to `a` and to `b` (same port) can meet the same listener group: the
/// same address, or a wildcard that covers the other (`[::]` may be dual-stack: it covers
/// IPv4 too).
fn overlap(a: IpAddr, b: IpAddr) -> bool {
    let (a, b) = (a.to_canonical(), b.to_canonical());
    a == b || covers(a, b) || covers(b, a)
}

fn covers(wildcard: IpAddr, other: IpAddr) -> bool {
    match wildcard {
        IpAddr::V6(w) => w.is_unspecified(),
        IpAddr::V4(w) => w.is_unspecified() && other.is_ipv4(),
    }
}

/// Socket inodes among the fds of process `pid` (`self` for this one).
fn socket_inodes(pid: &str) -> impl Iterator<Item = u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let target = std::fs::read_link(entry.ok()?.path()).ok()?;
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
}

fn own_socket_inodes() -> HashSet<u64> {
    socket_inodes("self").collect()
}

/// The pid of the process holding each of `inodes` that some process this user can see
/// holds (one pass over /proc; this process excluded).
fn holders(mut inodes: HashSet<u64>) -> HashMap<u64, String> {
    let me = std::process::id().to_string();
    let mut found = HashMap::new();
    let pids = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()) && *n != me);
    for pid in pids {
        for inode in socket_inodes(&pid) {
            if inodes.remove(&inode) {
                found.insert(inode, pid.clone());
            }
        }
        if inodes.is_empty() {
            break;
        }
    }
    found
}

/// Names the holder of `l`: `pid 1234 (sluice run --config …), uid 0`, or its uid when this
/// user cannot see it.
fn describe(l: &Listening, pid: Option<&str>) -> String {
    let Some(pid) = pid else {
        return format!(
            "a process of uid {} that this user cannot see (socket inode {})",
            l.uid, l.inode
        );
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let words: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    let mut command = words.join(" ");
    if command.chars().count() > 200 {
        command = command.chars().take(200).collect::<String>() + "…";
    }
    format!("pid {pid} ({command}), uid {}", l.uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn proc_net_lines_parse() {
        let (l, state) = parse_line(
            "   0: 0300007F:9613 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 45007 1 00000000cb7188da 100 0 0 10 0",
            false,
        )
        .unwrap();
        assert_eq!(state, LISTEN);
        assert_eq!(l.addr, "127.0.0.3:38419".parse().unwrap());
        assert_eq!((l.uid, l.inode), (0, 45007));
        let (l, _) = parse_line(
            "   1: 00000000000000000000000000000000:7530 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 991 1 0000000000000000 100 0 0 10 0",
            true,
        )
        .unwrap();
        assert_eq!(l.addr, "[::]:30000".parse().unwrap());
        assert_eq!(l.uid, 1000);
        // ::ffff:127.0.0.1 is 127.0.0.1.
        let (l, _) = parse_line(
            "   2: 0000000000000000FFFF00000100007F:7530 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 992 1 0000000000000000 100 0 0 10 0",
            true,
        )
        .unwrap();
        assert_eq!(l.addr, "127.0.0.1:30000".parse().unwrap());
        assert!(parse_line("  sl  local_address rem_address   st", false).is_none());
    }

    #[test]
    fn wildcards_overlap_what_they_cover() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        assert!(overlap(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(!overlap(ip("127.0.0.1"), ip("127.0.0.2")));
        assert!(overlap(ip("0.0.0.0"), ip("127.0.0.2")));
        assert!(overlap(ip("127.0.0.2"), ip("0.0.0.0")));
        assert!(overlap(ip("::"), ip("127.0.0.2")), "dual-stack [::]");
        assert!(overlap(ip("::"), ip("0.0.0.0")));
        assert!(!overlap(ip("0.0.0.0"), ip("::1")));
        assert!(overlap(ip("::ffff:127.0.0.1"), ip("127.0.0.1")));
    }

    #[test]
    fn own_listeners_pass_and_another_process_is_named() {
        // Our own listener: not a conflict.
        let mine = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = mine.local_addr().unwrap();
        check(&[addr]).expect("this process's own listener does not count");
        // Nothing listening: fine.
        let free = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        check(&[free]).unwrap();
        // Another process's: found and named (a child `sleep` holding our listener as its
        // stdin, after we closed ours).
        let child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(mine)))
            .spawn()
            .unwrap();
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let child = Kill(child);
        // Asked for by a wildcard: it covers 127.0.0.1.
        let e = check(&[SocketAddr::new(IpAddr::from([0, 0, 0, 0]), addr.port())]).unwrap_err();
        assert_eq!(e.port, addr.port());
        assert!(
            e.holder
                .starts_with(&format!("pid {} (sleep 30)", child.0.id())),
            "{e}"
        );
        assert!(e.to_string().contains("a second sluice"), "{e}");
    }
}
