//! Connecting, as IO: opening the backend socket the table asked for (IP_TRANSPARENT +
//! bind to the client for transparent forwarding), giving the spare pipes back when fds run
//! out, handing the connect to the driver, and, when it completes, writing the PROXY header
//! and telling the table how it went. What to connect to, holding, parking and retrying are
//! the table's decisions (`connections/connect.rs`).

use super::*;
use crate::dataplane::conn::ConnectFailure;
use crate::dataplane::connections::{ConnectOutcome, NotStarted, ProxyHeader};
use socket2::{Domain, Socket, Type};

impl<D: Driver> Worker<D> {
    /// Execute `Output::Connect`: open a socket and start connecting; the table is told
    /// whether the attempt started.
    pub(super) fn start_connect(
        &mut self,
        conn: ConnHandle,
        addr: SocketAddr,
        timeout: Duration,
        transparent_from: Option<SocketAddr>,
    ) -> io::Result<()> {
        let worker = self.index;
        let now = self.now;
        let open = || {
            Socket::new(
                Domain::for_address(addr),
                Type::STREAM.nonblocking().cloexec(),
                None,
            )
        };
        let socket = match open() {
            Ok(s) => s,
            Err(e) if sys::is_fd_exhaustion(&e) && self.release_spare_fds() > 0 => {
                // The spare pipes gave their fds back: try again at once.
                match open() {
                    Ok(s) => s,
                    Err(e) => {
                        self.not_started_exhausted(conn, &e);
                        return Ok(());
                    }
                }
            }
            Err(e) if sys::is_resource_exhaustion(&e) => {
                self.not_started_exhausted(conn, &e);
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(worker, error = %e, "cannot open a backend socket");
                self.table.connect_not_started(now, conn, NotStarted::Local);
                return Ok(());
            }
        };
        if let Some(client) = transparent_from {
            if let Err(e) = bind_to_client(&socket, client, addr) {
                tracing::warn!(worker, client = %client, endpoint = %addr, error = %e,
                    "transparent forwarding: cannot leave from the client's address (needs CAP_NET_ADMIN and a client of the endpoint's address family)");
                self.table.connect_not_started(now, conn, NotStarted::Local);
                return Ok(());
            }
        }
        // TCP_NODELAY: set by the driver with the connect (through the ring where it can).
        let fd: OwnedFd = socket.into();
        self.driver
            .connect(conn.slot(), conn.generation(), fd.as_fd(), addr, timeout)?;
        let io = self.table.resources_mut(conn).expect("live connection");
        if let Some(old) = io.backend.replace(fd) {
            self.to_close.push(old);
        }
        self.table.connect_started(now, conn);
        Ok(())
    }

    fn not_started_exhausted(&mut self, conn: ConnHandle, e: &io::Error) {
        self.enter_backoff(e);
        self.table
            .connect_not_started(self.now, conn, NotStarted::Exhausted);
    }

    /// A connect finished: write the PROXY header if the Service wants one, and tell the
    /// table (which counts and lets the connection go on: relay, or retry elsewhere).
    pub(super) fn on_connected(&mut self, conn: ConnHandle, result: io::Result<()>) {
        let worker = self.index;
        let Some(io) = self.table.resources(conn) else {
            return; // the connection is gone
        };
        let endpoint = self.table.endpoint_addr(conn);
        let outcome = match result {
            Ok(()) => match self.table.proxy_header(conn) {
                None => ConnectOutcome::Connected,
                Some(header) => match write_proxy_header(&mut self.header, header, io) {
                    Ok(()) => ConnectOutcome::Connected,
                    Err(e) => {
                        tracing::debug!(worker, endpoint = ?endpoint, error = %e, "cannot send the PROXY header");
                        ConnectOutcome::HeaderFailed {
                            reset: sys::is_reset(&e),
                        }
                    }
                },
            },
            Err(e) => {
                let failure = match e.raw_os_error() {
                    Some(libc::ECONNREFUSED) => ConnectFailure::Refused,
                    _ if e.kind() == io::ErrorKind::TimedOut => ConnectFailure::TimedOut,
                    _ => ConnectFailure::Network,
                };
                tracing::debug!(worker, endpoint = ?endpoint, error = %e, ?failure, "connect to endpoint failed");
                ConnectOutcome::Failed(failure)
            }
        };
        self.table.connect_finished(self.now, conn, outcome);
    }
}

/// Write the PROXY header to the just-connected backend, in one send, before any client
/// byte. A fresh connection's send buffer is empty, so anything short of the whole header
/// is an error: the connection is then reset, and no client byte ever follows a partial
/// header.
fn write_proxy_header(buf: &mut Vec<u8>, header: ProxyHeader<'_>, io: &Io) -> io::Result<()> {
    let dst = SockRef::from(&io.client)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("client socket has no IP address"))?;
    buf.clear();
    crate::proxy_protocol::encode(
        header.forwarding,
        header.client,
        dst,
        &header.unique_id,
        buf,
    );
    let backend = io.backend.as_ref().expect("connected backend");
    match sys::write(backend.as_fd(), buf)? {
        sys::Transfer::Moved(n) if n == buf.len() => Ok(()),
        _ => Err(io::Error::other("PROXY header not sent whole")),
    }
}

/// Make `socket` leave from the client's IP (port chosen by the kernel): IP_TRANSPARENT +
/// bind. The client's IPv4-mapped address (dual-stack listener) is bound as IPv4.
fn bind_to_client(socket: &Socket, client: SocketAddr, endpoint: SocketAddr) -> io::Result<()> {
    let ip = match client.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(std::net::IpAddr::V6(v6)),
        v4 => v4,
    };
    if ip.is_ipv4() != endpoint.is_ipv4() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "client and endpoint are of different address families",
        ));
    }
    sys::set_transparent(socket.as_fd(), ip.is_ipv6())?;
    socket.bind(&SocketAddr::new(ip, 0).into())
}
