//! The healthCheckNodePort servers: for every LoadBalancer Service with
//! `externalTrafficPolicy: Local` and a `healthCheckNodePort`, an HTTP listener on that
//! port that answers any path and method the way kube-proxy's service health server does
//! (`pkg/proxy/healthcheck/service_health.go`, written by Go's net/http), so a cloud load
//! balancer's health check cannot tell sluice from kube-proxy:
//!
//! ```text
//! HTTP/1.1 200 OK                           (503 Service Unavailable: no local ready
//! Content-Type: application/json             endpoint, or the proxy is unhealthy)
//! X-Content-Type-Options: nosniff
//! X-Load-Balancing-Endpoint-Weight: 2
//! Date: Mon, 02 Jan 2006 15:04:05 GMT
//! Content-Length: 122
//!
//! {\n\t"service": {\n\t\t"namespace": "workshop",\n\t\t"name": "myfrontend"\n\t},\n\t"localEndpoints": 2,\n\t"serviceProxyHealthy": true\n}
//! ```
//!
//! `localEndpoints` counts the distinct IPs of the Service's local, ready endpoints across
//! its ports (terminating ones do not count), and is also sent as
//! `X-Load-Balancing-Endpoint-Weight` (kube-proxy since 1.28: weighted load balancers read
//! it instead of the body); `serviceProxyHealthy` is kube-proxy's proxy health (no
//! source change waiting past the health timeout, workers alive: [`super::healthz`]) and,
//! unlike kube-proxy, false while sluice shuts down (it accepts no new connections then). Listeners follow the served model: opened and
//! closed by [`HealthCheckServers::sync`] after each publish; a port that cannot be bound is
//! logged and tried again at the next sync, never fatal. Owns only its sockets and tasks.

use super::healthz::SharedProcessHealth;
use crate::http;
use crate::model::{Model, ServiceName, TrafficPolicy};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONNECTION;
use hyper::{Request, Response, Version};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Local ready endpoint IPs per Service, read by the HTTP tasks.
type Counts = Arc<Mutex<HashMap<ServiceName, usize>>>;

/// The open health-check listeners, one set per Service.
pub(super) struct HealthCheckServers {
    open: HashMap<ServiceName, Instance>,
    counts: Counts,
    health: SharedProcessHealth,
    /// Listeners a previous process passed (`ctl upgrade`), by address, taken instead of
    /// binding until [`Self::release_inherited`].
    inherited: HashMap<SocketAddr, std::os::fd::OwnedFd>,
    /// Turns true once a new process took the listeners over: stop accepting, let the
    /// checks under way finish.
    handed_over: tokio::sync::watch::Receiver<bool>,
}

struct Instance {
    port: u16,
    /// The addresses served on (`None`: every address).
    listen: Option<Vec<IpAddr>>,
    /// One accept task per address; aborting it closes the listener and its connections.
    tasks: Vec<JoinHandle<()>>,
    /// A duplicate of each listener, by the address it is bound to (to hand over).
    sockets: Vec<(SocketAddr, std::os::fd::OwnedFd)>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What [`HealthCheckServers::sync`] derives from a model: the port and count per Service.
pub(super) fn wanted(model: &Model) -> HashMap<ServiceName, (u16, usize)> {
    let mut out: HashMap<ServiceName, (u16, BTreeSet<IpAddr>)> = HashMap::new();
    for s in &model.services {
        let Some(meta) = s.meta.as_deref() else {
            continue;
        };
        let Some(port) = meta.health_check_node_port else {
            continue;
        };
        if meta.service_type != "LoadBalancer" || s.traffic_policy != TrafficPolicy::Local {
            continue;
        }
        let entry = out
            .entry(s.key.service.clone())
            .or_insert_with(|| (port, BTreeSet::new()));
        entry.1.extend(
            s.endpoints
                .iter()
                .filter(|e| e.local && e.conditions.ready)
                .map(|e| e.addr.ip()),
        );
    }
    out.into_iter()
        .map(|(name, (port, ips))| (name, (port, ips.len())))
        .collect()
}

impl HealthCheckServers {
    pub(super) fn new(
        health: SharedProcessHealth,
        handed_over: tokio::sync::watch::Receiver<bool>,
    ) -> HealthCheckServers {
        HealthCheckServers {
            open: HashMap::new(),
            counts: Arc::default(),
            health,
            inherited: HashMap::new(),
            handed_over,
        }
    }

    /// Listeners a previous process passed, to serve instead of binding (call before the
    /// first [`Self::sync`]).
    pub(super) fn inherit(&mut self, sockets: Vec<(SocketAddr, std::os::fd::OwnedFd)>) {
        self.inherited.extend(sockets);
    }

    /// The accept tasks of every listener, taken out (so that dropping the servers does
    /// not abort them): to await them once they stop accepting after a hand-over.
    pub(super) fn take_tasks(&mut self) -> Vec<JoinHandle<()>> {
        self.open
            .values_mut()
            .flat_map(|i| std::mem::take(&mut i.tasks))
            .collect()
    }

    /// Closes the inherited listeners no Service took.
    pub(super) fn release_inherited(&mut self) {
        self.inherited.clear();
    }

    /// A duplicate of every listener, by address (to hand over with `ctl upgrade`).
    pub(super) fn sockets(&self) -> std::io::Result<Vec<(SocketAddr, std::os::fd::OwnedFd)>> {
        let mut out = Vec::new();
        for i in self.open.values() {
            for (addr, fd) in &i.sockets {
                out.push((*addr, fd.try_clone()?));
            }
        }
        Ok(out)
    }

    /// Brings the listeners in line with `model` (inside the tokio runtime), on the
    /// addresses NodePorts are served on now (`listen`; `None`: every address).
    pub(super) fn sync(&mut self, model: &Model, listen: Option<&[IpAddr]>) {
        let wanted = wanted(model);
        {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            *counts = wanted.iter().map(|(n, (_, c))| (n.clone(), *c)).collect();
        }
        self.open.retain(|name, i| {
            let keep = wanted
                .get(name)
                .is_some_and(|(port, _)| *port == i.port && i.listen.as_deref() == listen);
            if !keep {
                tracing::info!(service = %name, port = i.port, "healthCheckNodePort closed");
            }
            keep
        });
        self.open_wanted(&wanted, listen);
    }

    /// Opens the listeners `model` adds and closes none, before its NodePorts take
    /// connections (at start and in a reload before the new NodePort listeners are opened):
    /// whoever reaches a NodePort finds its health check listening. A new one answers 503
    /// (no local endpoints counted yet) until [`sync`](Self::sync) after the publish; a
    /// reload that fails takes them back with a `sync` to the running model.
    pub(super) fn open_new(&mut self, model: &Model, listen: Option<&[IpAddr]>) {
        self.open_wanted(&wanted(model), listen);
    }

    fn open_wanted(
        &mut self,
        wanted: &HashMap<ServiceName, (u16, usize)>,
        listen: Option<&[IpAddr]>,
    ) {
        let mut names: Vec<&ServiceName> = wanted.keys().collect();
        names.sort();
        for name in names {
            if self.open.contains_key(name) {
                continue;
            }
            let port = wanted[name].0;
            match self.open_instance(name, port, listen) {
                Ok(i) => {
                    tracing::info!(service = %name, port, "healthCheckNodePort serving");
                    self.open.insert(name.clone(), i);
                }
                Err((addr, e)) => tracing::error!(
                    service = %name,
                    address = %addr,
                    error = %e,
                    "cannot open the healthCheckNodePort (tried again at the next reload)"
                ),
            }
        }
    }

    fn open_instance(
        &mut self,
        name: &ServiceName,
        port: u16,
        listen: Option<&[IpAddr]>,
    ) -> Result<Instance, (SocketAddr, std::io::Error)> {
        let mut instance = Instance {
            port,
            listen: listen.map(<[IpAddr]>::to_vec),
            tasks: Vec::new(),
            sockets: Vec::new(),
        };
        let addrs: Vec<IpAddr> = match listen {
            None => vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)],
            Some(list) => list.to_vec(),
        };
        for ip in addrs {
            let addr = SocketAddr::new(ip, port);
            let v4 = SocketAddr::from(([0, 0, 0, 0], port));
            let mut inherited = self.inherited.remove(&addr);
            if inherited.is_none() && listen.is_none() {
                inherited = self.inherited.remove(&v4);
            }
            let listener = match inherited {
                Some(fd) => adopt(fd),
                None => bind(addr).or_else(|e| match listen {
                    // No IPv6 on this host: all IPv4 addresses.
                    None => bind(v4),
                    Some(_) => Err(e),
                }),
            };
            let listener = listener.map_err(|e| (addr, e))?;
            {
                use std::os::fd::AsFd;
                if let (Ok(local), Ok(fd)) =
                    (listener.local_addr(), listener.as_fd().try_clone_to_owned())
                {
                    instance.sockets.push((local, fd));
                }
            }
            let ctx = Handler {
                name: name.clone(),
                counts: Arc::clone(&self.counts),
                health: Arc::clone(&self.health),
            };
            instance.tasks.push(tokio::spawn(accept_loop(
                listener,
                ctx,
                self.handed_over.clone(),
            )));
        }
        Ok(instance)
    }
}

/// A listener a previous process passed.
fn adopt(fd: std::os::fd::OwnedFd) -> std::io::Result<TcpListener> {
    let l = std::net::TcpListener::from(fd);
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}

#[derive(Clone)]
struct Handler {
    name: ServiceName,
    counts: Counts,
    health: SharedProcessHealth,
}

impl Handler {
    /// (status, body, local endpoints) as kube-proxy's handler computes them.
    fn answer(&self) -> (u16, String, usize) {
        let count = self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&self.name)
            .copied()
            .unwrap_or(0);
        let healthy = {
            let h = super::healthz::lock(&self.health);
            h.healthy(Instant::now()) && !h.stopping
        };
        let code = if count != 0 && healthy { 200 } else { 503 };
        (code, body(&self.name, count, healthy), count)
    }

    /// The hyper answer to `request` at `now`.
    fn respond(&self, request: &Request<Incoming>, now: SystemTime) -> Response<Full<Bytes>> {
        let (code, body, count) = self.answer();
        response(request, code, body, count, now)
    }
}

async fn accept_loop(
    listener: TcpListener,
    handler: Handler,
    mut handed_over: tokio::sync::watch::Receiver<bool>,
) {
    let options = http::Options {
        limits: http::Limits::DEFAULT,
        // Date goes before Content-Length, where Go's net/http writes it.
        date_header: false,
    };
    let handler: http::Handler =
        Arc::new(move |request| handler.respond(request, SystemTime::now()));
    let stop = async move {
        let _ = handed_over.wait_for(|h| *h).await;
    };
    http::serve_until(listener, options, handler, Arc::default(), stop).await
}

/// HTTP/1.0 with `Connection: keep-alive` (Go then says so in the answer, and keeps the
/// connection; hyper keeps it only if the answer says so).
fn keep_alive_10(request: &Request<Incoming>) -> bool {
    request.version() == Version::HTTP_10
        && request
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("keep-alive"))
}

/// kube-proxy's body: tab-indented, no trailing newline (Go's `%q` for the names).
pub(super) fn body(name: &ServiceName, count: usize, healthy: bool) -> String {
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {count},\n\t\"serviceProxyHealthy\": {healthy}\n}}",
        go_quote(&name.namespace),
        go_quote(&name.name)
    )
}

/// The answer Go's net/http writes for kube-proxy's handler: the handler's headers sorted
/// (`X-Load-Balancing-Endpoint-Weight`: the local endpoints, since Kubernetes 1.28), then
/// `Date` and `Content-Length` (and `Connection`, which hyper appends after them: `close`
/// when the client asked to close, `keep-alive` for HTTP/1.0 keep-alive). hyper writes the
/// status line for the request's version and leaves the body out for HEAD.
fn response(
    request: &Request<Incoming>,
    code: u16,
    body: String,
    count: usize,
    now: SystemTime,
) -> Response<Full<Bytes>> {
    let date = http_date(now);
    let length = body.len().to_string();
    let weight = count.to_string();
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Load-Balancing-Endpoint-Weight", weight.as_str()),
        ("Date", date.as_str()),
        ("Content-Length", length.as_str()),
    ];
    if keep_alive_10(request) {
        headers.push(("Connection", "keep-alive"));
    }
    http::response(code, &headers, body)
}

/// Go's `%q` for a string: double quotes, backslash escapes for `"`, `\` and control
/// characters.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// RFC 7231 IMF-fixdate (`Mon, 02 Jan 2006 15:04:05 GMT`), as Go's `http.TimeFormat`.
fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days.rem_euclid(7)) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::testing::TestServer;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    fn svc() -> ServiceName {
        ServiceName {
            namespace: "workshop".into(),
            name: "myfrontend".into(),
        }
    }

    /// The healthCheckNodePort server for `svc()` with `count` local endpoints, answering
    /// at a fixed time (2006-01-02 15:04:05 UTC, Go's reference time).
    fn server(count: usize) -> TestServer {
        let health: SharedProcessHealth =
            Arc::new(Mutex::new(super::super::healthz::ProcessHealth::new(1)));
        let counts: Counts = Arc::default();
        counts.lock().unwrap().insert(svc(), count);
        let h = Handler {
            name: svc(),
            counts,
            health,
        };
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_136_214_245);
        let options = http::Options {
            limits: http::Limits::DEFAULT,
            date_header: false,
        };
        TestServer::start(options, Arc::new(move |req| h.respond(req, t)))
    }

    /// Sends `request` and reads until `want` bytes arrived (or the server closed).
    fn exchange(s: &mut TcpStream, request: &str, want: usize) -> String {
        s.write_all(request.as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while got.len() < want {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    }

    fn connect(t: &TestServer) -> TcpStream {
        let s = TcpStream::connect(t.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    const BODY_2: &str = "{\n\t\"service\": {\n\t\t\"namespace\": \"workshop\",\n\t\t\"name\": \"myfrontend\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}";

    /// The exact bytes kube-proxy (Go net/http) sends, on the wire from the hyper server.
    #[test]
    fn golden_response() {
        let t = server(2);
        let golden = format!(
            "HTTP/1.1 200 OK\r\n\
Content-Type: application/json\r\n\
X-Content-Type-Options: nosniff\r\n\
X-Load-Balancing-Endpoint-Weight: 2\r\n\
Date: Mon, 02 Jan 2006 15:04:05 GMT\r\n\
Content-Length: 122\r\n\
\r\n\
{BODY_2}"
        );
        let mut s = connect(&t);
        let got = exchange(
            &mut s,
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            golden.len(),
        );
        assert_eq!(got, golden);
        // Kept alive: a second request (with a body) on the same connection, same bytes.
        let got = exchange(
            &mut s,
            "POST /anything HTTP/1.1\r\nHost: lb\r\nContent-Length: 3\r\n\r\nabc",
            golden.len(),
        );
        assert_eq!(got, golden);

        // HEAD with Connection: close: no body, `Connection: close` last, then closed
        // (reading one byte more than the head ends at EOF, not at the read timeout).
        let t = server(0);
        let mut s = connect(&t);
        let want = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
X-Content-Type-Options: nosniff\r\nX-Load-Balancing-Endpoint-Weight: 0\r\nDate: Mon, 02 Jan 2006 15:04:05 GMT\r\n\
Content-Length: 122\r\nConnection: close\r\n\r\n";
        let got = exchange(
            &mut s,
            "HEAD / HTTP/1.1\r\nConnection: close\r\n\r\n",
            want.len() + 1,
        );
        assert_eq!(got, want);

        // HTTP/1.0: answered in HTTP/1.0, no Connection header, then closed.
        let mut s = connect(&t);
        let got = exchange(&mut s, "POST /x HTTP/1.0\r\n\r\n", usize::MAX);
        assert!(
            got.starts_with("HTTP/1.0 503 Service Unavailable\r\n"),
            "{got}"
        );
        assert!(!got.contains("Connection:"), "{got}");

        // HTTP/1.0 keep-alive: Go says `Connection: keep-alive` after Content-Length and
        // keeps the connection.
        let t = server(2);
        let mut s = connect(&t);
        let want = "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\
X-Content-Type-Options: nosniff\r\nX-Load-Balancing-Endpoint-Weight: 2\r\nDate: Mon, 02 Jan 2006 15:04:05 GMT\r\n\
Content-Length: 122\r\nConnection: keep-alive\r\n\r\n";
        let request = "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        let got = exchange(&mut s, request, want.len() + BODY_2.len());
        assert_eq!(got, format!("{want}{BODY_2}"));
        let got = exchange(&mut s, request, want.len() + BODY_2.len());
        assert_eq!(got, format!("{want}{BODY_2}"));
    }

    #[test]
    fn dates_and_quotes() {
        let at = |s: u64| http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(at(1_767_225_599), "Wed, 31 Dec 2025 23:59:59 GMT");
        assert_eq!(go_quote("a\"b\\c\u{1}"), "\"a\\\"b\\\\c\\x01\"");
    }
}
