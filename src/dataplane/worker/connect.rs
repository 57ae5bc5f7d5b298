//! Connecting to an endpoint: picking one not tried yet, opening the backend socket
//! (IP_TRANSPARENT + bind to the client for transparent forwarding), holding a connection
//! while its Service has no usable endpoint (`hold_when_empty`, within the hold budgets),
//! parking a connection when the process is out of fds, and what happens when the connect
//! completes (the PROXY header, counters, the transparent-mode routing hint).
//!
//! Hold budgets: a worker holds at most `max_held_per_service` connections per Service port
//! and `max_held_per_worker` in all. Held connections are not relayed ones: they do not count
//! against `max_connections_per_worker`, so clients waiting on an empty Service never keep
//! the clients of other Services in the accept queue. A client beyond a budget is reset at
//! once, as without `hold_when_empty`, and counted (`holds_refused`). A held connection
//! whose Service gets an endpoint becomes a relayed one when a relayed slot is free, and
//! waits held (within its hold time) until then.

use super::*;

impl<D: Driver> Worker<D> {
    /// Pick an endpoint and start connecting; returns an event when the attempt could not
    /// even start.
    pub(super) fn start_connect(
        &mut self,
        slot: u32,
        generation: u32,
        live: &mut Live,
    ) -> io::Result<Option<Event>> {
        let worker = self.index;
        let now = self.now;
        // Borrow `pins` and `selector` separately (not all of self).
        let entry = self.pins[live.pin]
            .as_ref()
            .expect("pinned snapshot")
            .snapshot
            .service(live.service);
        let Some(endpoint) =
            self.selector
                .choose(entry, live.client_addr, live.from_node, &live.tried, now)
        else {
            // No usable endpoint at all (not: every endpoint tried and failed): the Service
            // may hold the connection until one appears (scale from zero).
            let hold = entry.port.timeouts.hold_when_empty;
            if let (Some(hold), true) = (hold, live.tried.is_empty()) {
                let since = *live.held_since.get_or_insert(now);
                if now.duration_since(since) < hold {
                    if self.take_hold(live) {
                        self.holding.push((slot, generation));
                        return Ok(None);
                    }
                    self.service_of(live.pin, live.service)
                        .stats
                        .worker(worker)
                        .holds_refused
                        .add(1);
                }
            }
            return Ok(Some(Event::NoEndpoint));
        };
        self.release_hold(live);
        live.held_since = None;
        let entry = self.pins[live.pin]
            .as_ref()
            .expect("pinned snapshot")
            .snapshot
            .service(live.service);
        let addr = entry.endpoint(endpoint).endpoint.addr;
        let timeout = entry.port.timeouts.connect;
        let retry = !live.tried.is_empty();
        let socket = match Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking().cloexec(),
            None,
        ) {
            Ok(s) => s,
            Err(e) if sys::is_fd_exhaustion(&e) && self.release_spare_fds() > 0 => {
                // The spare pipes gave their fds back: try again at once.
                match Socket::new(
                    Domain::for_address(addr),
                    Type::STREAM.nonblocking().cloexec(),
                    None,
                ) {
                    Ok(s) => s,
                    Err(e) => return self.park(slot, generation, live, &e, timeout),
                }
            }
            Err(e) if sys::is_resource_exhaustion(&e) => {
                return self.park(slot, generation, live, &e, timeout)
            }
            Err(e) => {
                tracing::debug!(worker, error = %e, "cannot open a backend socket");
                return Ok(Some(Event::ConnectFailed(ConnectFailure::Local)));
            }
        };
        live.parked_since = None;
        let transparent = matches!(
            self.service_of(live.pin, live.service).port.forwarding,
            Forwarding::Transparent
        );
        if transparent {
            if let Err(e) = bind_to_client(&socket, live.client_addr, addr) {
                tracing::warn!(worker, client = %live.client_addr, endpoint = %addr, error = %e,
                    "transparent forwarding: cannot leave from the client's address (needs CAP_NET_ADMIN and a client of the endpoint's address family)");
                return Ok(Some(Event::ConnectFailed(ConnectFailure::Local)));
            }
        }
        if retry {
            self.service_of(live.pin, live.service)
                .stats
                .worker(worker)
                .retries
                .add(1);
        }
        live.tried.push(endpoint);
        live.endpoint = Some(endpoint);
        if let Some(old) = live.backend.take() {
            self.to_close.push(old);
        }
        let _ = socket.set_nodelay(true);
        let fd: OwnedFd = socket.into();
        self.ring
            .connect(slot, generation, fd.as_fd(), addr, timeout)?;
        live.backend = Some(fd);
        live.connect_in_flight = true;
        Ok(None)
    }

    /// Out of resources opening a backend socket: the client waits (parked) instead of being
    /// reset, until fds free up or its connect timeout has passed.
    fn park(
        &mut self,
        slot: u32,
        generation: u32,
        live: &mut Live,
        e: &io::Error,
        timeout: Duration,
    ) -> io::Result<Option<Event>> {
        self.enter_backoff(e);
        let since = *live.parked_since.get_or_insert(self.now);
        if self.now.duration_since(since) >= timeout {
            live.parked_since = None;
            return Ok(Some(Event::ConnectFailed(ConnectFailure::Local)));
        }
        self.parked.push_back((slot, generation));
        Ok(None)
    }

    /// Count `live` in the hold budgets (if it is not yet); false when a budget is spent.
    fn take_hold(&mut self, live: &mut Live) -> bool {
        if live.held {
            return true;
        }
        let port = (live.listener.protocol, live.listener.node_port());
        let of_service = self.held_per_port.get(&port).copied().unwrap_or(0);
        if self.held >= self.max_held || of_service >= self.max_held_per_service {
            return false;
        }
        self.held += 1;
        self.held_per_port.insert(port, of_service + 1);
        live.held = true;
        true
    }

    /// Take `live` out of the hold budgets (it connects, or it ends).
    pub(super) fn release_hold(&mut self, live: &mut Live) {
        if !live.held {
            return;
        }
        live.held = false;
        self.held -= 1;
        let port = (live.listener.protocol, live.listener.node_port());
        if let Some(n) = self.held_per_port.get_mut(&port) {
            *n -= 1;
            if *n == 0 {
                self.held_per_port.remove(&port);
            }
        }
    }

    /// Try the held connections again (every tick): each moves to the snapshot published
    /// now, finds its Service again by NodePort, and connects if an endpoint is usable and a
    /// relayed slot is free; it is reset once its hold time has passed or its NodePort is no
    /// longer served.
    pub(super) fn retry_held(&mut self) -> io::Result<()> {
        let now = self.now;
        for (slot, generation) in std::mem::take(&mut self.holding) {
            let s = &mut self.slots[slot as usize];
            if s.generation != generation {
                continue;
            }
            let Some(mut live) = s.live.take() else {
                continue;
            };
            let current = self.pin_current();
            if current != live.pin {
                self.pins[current].as_mut().expect("current pin").live += 1;
                self.unpin(live.pin);
                live.pin = current;
                let snapshot = &self.pins[current].as_ref().expect("current pin").snapshot;
                match snapshot.lookup(live.listener.protocol, live.listener.node_port()) {
                    Some(service) => live.service = service,
                    None => {
                        live.conn.handle(now, Event::NoEndpoint);
                        self.slots[slot as usize].live = Some(live);
                        self.drive(slot)?;
                        continue;
                    }
                }
            }
            if self.relayed() >= self.max_connections {
                // No relayed slot for it yet: it keeps waiting, within its hold time.
                let hold = self
                    .service_of(live.pin, live.service)
                    .port
                    .timeouts
                    .hold_when_empty
                    .unwrap_or_default();
                let waited = live
                    .held_since
                    .map_or(Duration::MAX, |t| now.duration_since(t));
                self.slots[slot as usize].live = Some(live);
                if waited < hold {
                    self.holding.push((slot, generation));
                } else {
                    let live = self.slots[slot as usize].live.as_mut().expect("just put");
                    live.conn.handle(now, Event::NoEndpoint);
                    self.drive(slot)?;
                }
                continue;
            }
            let result = self.start_connect(slot, generation, &mut live);
            if let Ok(Some(event)) = result {
                live.conn.handle(now, event);
            }
            self.slots[slot as usize].live = Some(live);
            result?;
            self.drive(slot)?;
        }
        Ok(())
    }

    /// Try again to connect the connections parked for lack of fds, oldest first; stop at
    /// the first that is still short of fds.
    pub(super) fn retry_parked(&mut self) -> io::Result<()> {
        let now = self.now;
        for _ in 0..self.parked.len() {
            let Some((slot, generation)) = self.parked.pop_front() else {
                break;
            };
            let s = &mut self.slots[slot as usize];
            if s.generation != generation {
                continue;
            }
            let Some(mut live) = s.live.take() else {
                continue;
            };
            let result = self.start_connect(slot, generation, &mut live);
            let still_parked = live.parked_since.is_some();
            if let Ok(Some(event)) = result {
                live.conn.handle(now, event);
            }
            self.slots[slot as usize].live = Some(live);
            result?;
            self.drive(slot)?;
            if still_parked {
                break;
            }
        }
        Ok(())
    }

    /// A connect finished: tell the endpoint's PROXY header if the Service wants one, count,
    /// and let the connection go on (relay, or retry elsewhere).
    pub(super) fn on_connected(
        &mut self,
        slot: u32,
        generation: u32,
        result: io::Result<()>,
    ) -> io::Result<()> {
        let worker = self.index;
        let now = self.now;
        let s = &mut self.slots[slot as usize];
        if s.generation != generation {
            return Ok(());
        }
        let Some(mut live) = s.live.take() else {
            return Ok(());
        };
        live.connect_in_flight = false;
        let endpoint = live.endpoint.expect("connecting to an endpoint");
        // Borrow only `pins` (not all of self): the header buffer and hint clock are used below.
        let entry = self.pins[live.pin]
            .as_ref()
            .expect("pinned snapshot")
            .snapshot
            .service(live.service);
        let addr = entry.endpoint(endpoint).endpoint.addr;
        let tcp_connected = result.is_ok();
        let event = match result {
            Ok(()) => {
                live.connected = true;
                match write_proxy_header(&mut self.header, &entry.port.forwarding, &live, worker) {
                    Ok(()) => Event::Connected,
                    Err(e) => {
                        tracing::debug!(worker, endpoint = %addr, error = %e, "cannot send the PROXY header");
                        Event::Failed {
                            side: Side::Backend,
                            reset: sys::is_reset(&e),
                        }
                    }
                }
            }
            Err(e) => {
                let failure = match e.raw_os_error() {
                    Some(libc::ECONNREFUSED) => ConnectFailure::Refused,
                    _ if e.kind() == io::ErrorKind::TimedOut => ConnectFailure::TimedOut,
                    _ => ConnectFailure::Network,
                };
                tracing::debug!(worker, endpoint = %addr, error = %e, ?failure, "connect to endpoint failed");
                if failure == ConnectFailure::TimedOut
                    && matches!(entry.port.forwarding, Forwarding::Transparent)
                    && self
                        .last_hint
                        .is_none_or(|t| now.duration_since(t) >= HINT_EVERY)
                {
                    self.last_hint = Some(now);
                    tracing::warn!(
                        worker,
                        service = %entry.port.key,
                        endpoint = %addr,
                        client = %live.client_addr,
                        "transparent forwarding: connect to the endpoint timed out. Replies to the client's address must come back to this node: apply the rules `sluice tproxy-rules` prints, and route the pod's default route through this node (see docs/client-address.md)"
                    );
                }
                Event::ConnectFailed(failure)
            }
        };
        let stats = &entry.endpoint(endpoint).stats;
        let c = stats.worker(worker);
        c.count_connect(tcp_connected);
        live.shutdown_epoch = stats.shutdown_epoch();
        if event == Event::Connected {
            c.opened.add(1);
        } else {
            c.failed.add(1);
        }
        live.conn.handle(now, event);
        self.slots[slot as usize].live = Some(live);
        self.drive(slot)
    }
}

/// Write the PROXY header the Service calls for (if any) to the just-connected backend, in
/// one send, before any client byte. A fresh connection's send buffer is empty, so anything
/// short of the whole header is an error: the connection is then reset, and no client byte
/// ever follows a partial header.
fn write_proxy_header(
    buf: &mut Vec<u8>,
    forwarding: &Forwarding,
    live: &Live,
    worker: usize,
) -> io::Result<()> {
    if !matches!(forwarding, Forwarding::ProxyV1 | Forwarding::ProxyV2(_)) {
        return Ok(());
    }
    let dst = SockRef::from(&live.client)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("client socket has no IP address"))?;
    let mut unique_id = [0u8; 16];
    unique_id[..8].copy_from_slice(&(worker as u64).to_be_bytes());
    unique_id[8..].copy_from_slice(&live.id.to_be_bytes());
    buf.clear();
    crate::proxy_protocol::encode(forwarding, live.client_addr, dst, &unique_id, buf);
    let backend = live.backend.as_ref().expect("connected backend");
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
