//! Checking an inherited socket before it is used: a descriptor received under a name must
//! be the socket that name says — its type, that it listens, that it is in a SO_REUSEPORT
//! group where the data plane needs one, and the address it is bound to. Anything else (a
//! mix-up in the sender, a stray fd in `LISTEN_FDS`, another version's idea of a name) is
//! a clear error, and the new process refuses to start on it, so the old one serves on.
//!
//! The checks are getsockopt(2)/getsockname(2) through socket2's `SockRef` (no `unsafe`).

use super::name::{SocketKind, SocketName};
use socket2::{Domain, SockRef, Type};
use std::os::fd::AsFd;
use std::path::Path;

/// An inherited socket that is not what its name says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("inherited socket {name}: {problem}")]
pub struct InvalidSocket {
    pub name: String,
    pub problem: String,
}

/// Checks that `fd` is the socket `name` says (for `control`, see also
/// [`check_control_path`]).
pub fn check(name: &SocketName, fd: impl AsFd) -> Result<(), InvalidSocket> {
    let invalid = |problem: String| InvalidSocket {
        name: name.to_string(),
        problem,
    };
    let sock = SockRef::from(&fd);
    let ty = sock.r#type().map_err(|e| {
        invalid(match e.raw_os_error() {
            Some(libc::ENOTSOCK) => "is not a socket".to_owned(),
            _ => format!("cannot read its type: {e}"),
        })
    })?;
    let domain = sock
        .domain()
        .map_err(|e| invalid(format!("cannot read its address family: {e}")))?;
    let (want_type, listening) = match name.kind() {
        Some(SocketKind::Udp) => (Type::DGRAM, false),
        _ => (Type::STREAM, true),
    };
    if ty != want_type {
        return Err(invalid(format!(
            "is a {} socket, not {}",
            type_name(ty),
            type_name(want_type)
        )));
    }
    let Some(addr) = name.addr() else {
        // The control socket.
        if domain != Domain::UNIX {
            return Err(invalid(format!(
                "its address family is {}, not Unix",
                domain_name(domain)
            )));
        }
        return check_listening(&sock, &invalid);
    };
    let want_domain = Domain::for_address(addr);
    if domain != want_domain {
        return Err(invalid(format!(
            "its address family is {}, not {}",
            domain_name(domain),
            domain_name(want_domain)
        )));
    }
    if listening {
        check_listening(&sock, &invalid)?;
    }
    if name.kind().is_some_and(SocketKind::is_node_port) {
        let on = sock
            .reuse_port()
            .map_err(|e| invalid(format!("cannot read SO_REUSEPORT: {e}")))?;
        if !on {
            return Err(invalid(
                "does not have SO_REUSEPORT (not a member of a NodePort's group)".into(),
            ));
        }
    }
    let local = sock
        .local_addr()
        .map_err(|e| invalid(format!("cannot read its address: {e}")))?;
    match local.as_socket() {
        Some(bound) if bound.ip() == addr.ip() && bound.port() == addr.port() => Ok(()),
        Some(bound) => Err(invalid(format!("is bound to {bound}, not {addr}"))),
        None => Err(invalid("is not bound to an IP address".into())),
    }
}

/// Checks that the inherited control socket is bound to `path` (the configured one).
pub fn check_control_path(fd: impl AsFd, path: &Path) -> Result<(), InvalidSocket> {
    let invalid = |problem: String| InvalidSocket {
        name: SocketName::Control.to_string(),
        problem,
    };
    let local = SockRef::from(&fd)
        .local_addr()
        .map_err(|e| invalid(format!("cannot read its address: {e}")))?;
    match local.as_pathname() {
        Some(p) if p == path => Ok(()),
        Some(p) => Err(invalid(format!(
            "is bound to {}, not {}",
            p.display(),
            path.display()
        ))),
        None => Err(invalid(format!(
            "is not bound to a path (the configuration says {})",
            path.display()
        ))),
    }
}

fn check_listening(
    sock: &SockRef<'_>,
    invalid: &dyn Fn(String) -> InvalidSocket,
) -> Result<(), InvalidSocket> {
    match sock.is_listener() {
        Ok(true) => Ok(()),
        Ok(false) => Err(invalid("is not listening".into())),
        Err(e) => Err(invalid(format!("cannot read SO_ACCEPTCONN: {e}"))),
    }
}

fn type_name(t: Type) -> &'static str {
    if t == Type::STREAM {
        "stream (SOCK_STREAM)"
    } else if t == Type::DGRAM {
        "datagram (SOCK_DGRAM)"
    } else {
        "other"
    }
}

fn domain_name(d: Domain) -> &'static str {
    if d == Domain::IPV4 {
        "IPv4"
    } else if d == Domain::IPV6 {
        "IPv6"
    } else if d == Domain::UNIX {
        "Unix"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::Socket;
    use std::net::SocketAddr;

    fn listener(addr: &str, reuseport: bool) -> (Socket, SocketAddr) {
        let addr: SocketAddr = addr.parse().unwrap();
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
        s.set_reuse_port(reuseport).unwrap();
        s.bind(&addr.into()).unwrap();
        s.listen(16).unwrap();
        let bound = s.local_addr().unwrap().as_socket().unwrap();
        (s, bound)
    }

    fn problem(name: SocketName, fd: impl AsFd) -> String {
        check(&name, fd).unwrap_err().to_string()
    }

    #[test]
    fn the_socket_a_name_says_passes() {
        let (s, addr) = listener("127.0.0.1:0", true);
        check(&SocketName::node_port(SocketKind::Tcp, addr, 0), &s).unwrap();
        check(&SocketName::listener(SocketKind::Metrics, addr), &s).unwrap();
        let u = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        u.set_reuse_port(true).unwrap();
        u.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let uaddr = u.local_addr().unwrap().as_socket().unwrap();
        check(&SocketName::node_port(SocketKind::Udp, uaddr, 2), &u).unwrap();
    }

    #[test]
    fn a_mismatch_is_an_error_naming_the_socket_and_what_differs() {
        let (s, addr) = listener("127.0.0.1:0", true);
        let other: SocketAddr = format!("127.0.0.1:{}", addr.port().wrapping_add(1))
            .parse()
            .unwrap();
        let e = problem(SocketName::node_port(SocketKind::Tcp, other, 1), &s);
        assert!(e.starts_with(&format!(
            "inherited socket tcp/127.0.0.1/{}/w1",
            other.port()
        )));
        assert!(
            e.contains(&format!("is bound to {addr}, not {other}")),
            "{e}"
        );

        let e = problem(SocketName::node_port(SocketKind::Udp, addr, 0), &s);
        assert!(
            e.contains("is a stream (SOCK_STREAM) socket, not datagram"),
            "{e}"
        );

        let v6: SocketAddr = format!("[::1]:{}", addr.port()).parse().unwrap();
        let e = problem(SocketName::node_port(SocketKind::Tcp, v6, 0), &s);
        assert!(e.contains("its address family is IPv4, not IPv6"), "{e}");

        let (plain, paddr) = listener("127.0.0.1:0", false);
        let e = problem(SocketName::node_port(SocketKind::Tcp, paddr, 0), &plain);
        assert!(e.contains("does not have SO_REUSEPORT"), "{e}");
        // The control plane's listeners need no reuseport group.
        check(&SocketName::listener(SocketKind::Health, paddr), &plain).unwrap();

        let bound_only = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        bound_only.set_reuse_port(true).unwrap();
        bound_only
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let baddr = bound_only.local_addr().unwrap().as_socket().unwrap();
        let e = problem(
            SocketName::node_port(SocketKind::Tcp, baddr, 0),
            &bound_only,
        );
        assert!(e.contains("is not listening"), "{e}");

        let file = std::fs::File::open("/proc/self/status").unwrap();
        let e = problem(SocketName::node_port(SocketKind::Tcp, addr, 0), &file);
        assert!(e.ends_with("is not a socket"), "{e}");

        let e = problem(SocketName::Control, &s);
        assert!(e.contains("its address family is IPv4, not Unix"), "{e}");
    }

    #[test]
    fn the_control_socket_is_checked_with_its_path() {
        let dir = std::env::temp_dir().join(format!("sluice-validate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        let _ = std::fs::remove_file(&path);
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        check(&SocketName::Control, &l).unwrap();
        check_control_path(&l, &path).unwrap();
        let e = check_control_path(&l, &dir.join("other.sock"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is bound to") && e.contains("other.sock"), "{e}");
        let (tcp, addr) = listener("127.0.0.1:0", false);
        let e = problem(SocketName::listener(SocketKind::Metrics, addr), &l);
        assert!(e.contains("its address family is Unix, not IPv4"), "{e}");
        drop(tcp);
        drop(l);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
