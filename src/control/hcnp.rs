//! The healthCheckNodePort servers: for every LoadBalancer Service with
//! `externalTrafficPolicy: Local` and a `healthCheckNodePort`, an HTTP listener on that
//! port that answers any path and method the way kube-proxy's service health server does
//! (`pkg/proxy/healthcheck/service_health.go`, written by Go's net/http), so a cloud load
//! balancer's health check cannot tell sluice from kube-proxy:
//!
//! ```text
//! HTTP/1.1 200 OK                          (503 Service Unavailable: no local ready endpoint,
//! Content-Type: application/json            or the proxy is unhealthy)
//! X-Content-Type-Options: nosniff
//! Date: Mon, 02 Jan 2006 15:04:05 GMT
//! Content-Length: 122
//!
//! {\n\t"service": {\n\t\t"namespace": "workshop",\n\t\t"name": "myfrontend"\n\t},\n\t"localEndpoints": 2,\n\t"serviceProxyHealthy": true\n}
//! ```
//!
//! `localEndpoints` counts the distinct IPs of the Service's local, ready endpoints across
//! its ports (terminating ones do not count); `serviceProxyHealthy` is what `/healthz`
//! reports (workers alive, not shutting down). Listeners follow the served model: opened and
//! closed by [`HealthCheckServers::sync`] after each publish; a port that cannot be bound is
//! logged and tried again at the next sync, never fatal. Owns only its sockets and tasks.

use super::metrics::SharedHealth;
use crate::model::{Model, ServiceName, TrafficPolicy};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Local ready endpoint IPs per Service, read by the HTTP tasks.
type Counts = Arc<Mutex<HashMap<ServiceName, usize>>>;

/// The open health-check listeners, one set per Service.
pub(super) struct HealthCheckServers {
    open: HashMap<ServiceName, Instance>,
    counts: Counts,
    health: SharedHealth,
}

struct Instance {
    port: u16,
    /// The addresses served on (`None`: every address).
    listen: Option<Vec<IpAddr>>,
    /// One accept task per address; aborting it closes the listener and its connections.
    tasks: Vec<JoinHandle<()>>,
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
    pub(super) fn new(health: SharedHealth) -> HealthCheckServers {
        HealthCheckServers {
            open: HashMap::new(),
            counts: Arc::default(),
            health,
        }
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
        &self,
        name: &ServiceName,
        port: u16,
        listen: Option<&[IpAddr]>,
    ) -> Result<Instance, (SocketAddr, std::io::Error)> {
        let mut instance = Instance {
            port,
            listen: listen.map(<[IpAddr]>::to_vec),
            tasks: Vec::new(),
        };
        let addrs: Vec<IpAddr> = match listen {
            None => vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)],
            Some(list) => list.to_vec(),
        };
        for ip in addrs {
            let addr = SocketAddr::new(ip, port);
            let listener = bind(addr).or_else(|e| match listen {
                // No IPv6 on this host: all IPv4 addresses.
                None => bind(SocketAddr::from(([0, 0, 0, 0], port))),
                Some(_) => Err(e),
            });
            let listener = listener.map_err(|e| (addr, e))?;
            let ctx = Handler {
                name: name.clone(),
                counts: Arc::clone(&self.counts),
                health: Arc::clone(&self.health),
            };
            instance
                .tasks
                .push(tokio::spawn(accept_loop(listener, ctx)));
        }
        Ok(instance)
    }
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
    health: SharedHealth,
}

impl Handler {
    fn answer(&self) -> (u16, String) {
        let count = self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&self.name)
            .copied()
            .unwrap_or(0);
        let healthy = {
            let h = self.health.lock().unwrap_or_else(|p| p.into_inner());
            h.workers_alive && !h.stopping
        };
        let code = if count != 0 && healthy { 200 } else { 503 };
        (code, body(&self.name, count, healthy))
    }
}

/// Most connections served at once per listener; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 64;
/// A connection with no complete request for this long is closed.
const IDLE: Duration = Duration::from_secs(60);
/// Longest request head accepted.
const MAX_HEAD: usize = 64 * 1024;

async fn accept_loop(listener: TcpListener, handler: Handler) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.len() >= MAX_CONNECTIONS {
            connections.join_next().await;
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let h = handler.clone();
                    connections.spawn(async move {
                        let _ = serve(stream, &h).await;
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// HTTP/1.x keep-alive: one answer per request until the client closes or asks to.
async fn serve(mut stream: TcpStream, handler: &Handler) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let head_end = loop {
            if let Some(i) = find_head_end(&buf) {
                break i;
            }
            if buf.len() > MAX_HEAD {
                let reply = go_error(431, "Request Header Fields Too Large");
                return stream.write_all(reply.as_bytes()).await;
            }
            let mut chunk = [0u8; 4096];
            let n = match tokio::time::timeout(IDLE, stream.read(&mut chunk)).await {
                Ok(r) => r?,
                Err(_) => return Ok(()),
            };
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let Some(request) = Request::parse(&buf[..head_end]) else {
            let reply = go_error(400, "Bad Request");
            return stream.write_all(reply.as_bytes()).await;
        };
        let (code, body) = handler.answer();
        let reply = response(&request, code, &body, SystemTime::now());
        stream.write_all(reply.as_bytes()).await?;
        if request.close || request.chunked {
            return stream.shutdown().await;
        }
        // Skip the request body, if any.
        buf.drain(..head_end);
        let mut left = request.content_length;
        let taken = left.min(buf.len());
        buf.drain(..taken);
        left -= taken;
        while left > 0 {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk[..left.min(4096)]).await?;
            if n == 0 {
                return Ok(());
            }
            left -= n;
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// What the answer depends on in a request head.
#[derive(Debug, PartialEq)]
struct Request {
    head: bool,
    http11: bool,
    /// Close after the answer (HTTP/1.1 `Connection: close`, HTTP/1.0 without keep-alive).
    close: bool,
    /// HTTP/1.0 with `Connection: keep-alive` (Go then says so in the answer).
    keep_alive_10: bool,
    content_length: usize,
    chunked: bool,
}

impl Request {
    fn parse(head: &[u8]) -> Option<Request> {
        let text = std::str::from_utf8(head).ok()?;
        let mut lines = text.split("\r\n");
        let mut first = lines.next()?.split(' ');
        let (method, target, version) = (first.next()?, first.next()?, first.next()?);
        if method.is_empty() || target.is_empty() || first.next().is_some() {
            return None;
        }
        let http11 = match version {
            "HTTP/1.1" => true,
            "HTTP/1.0" => false,
            _ => return None,
        };
        let mut connection = String::new();
        let mut content_length = 0usize;
        let mut chunked = false;
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':')?;
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "connection" => connection = value.to_ascii_lowercase(),
                "content-length" => content_length = value.parse().ok()?,
                "transfer-encoding" => chunked = true,
                _ => {}
            }
        }
        let has = |token: &str| connection.split(',').any(|t| t.trim() == token);
        let keep_alive_10 = !http11 && has("keep-alive");
        Some(Request {
            head: method == "HEAD",
            http11,
            close: has("close") || (!http11 && !keep_alive_10),
            keep_alive_10,
            content_length,
            chunked,
        })
    }
}

/// kube-proxy's body: tab-indented, no trailing newline (Go's `%q` for the names).
pub(super) fn body(name: &ServiceName, count: usize, healthy: bool) -> String {
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {count},\n\t\"serviceProxyHealthy\": {healthy}\n}}",
        go_quote(&name.namespace),
        go_quote(&name.name)
    )
}

/// The bytes Go's net/http writes for a handler that sets two headers, writes a status and
/// a small body: the handler's headers sorted, then `Date` and `Content-Length`.
fn response(request: &Request, code: u16, body: &str, now: SystemTime) -> String {
    let reason = if code == 200 {
        "OK"
    } else {
        "Service Unavailable"
    };
    let version = if request.http11 {
        "HTTP/1.1"
    } else {
        "HTTP/1.0"
    };
    let mut out = format!(
        "{version} {code} {reason}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nDate: {}\r\nContent-Length: {}\r\n",
        http_date(now),
        body.len()
    );
    if request.close && request.http11 {
        out.push_str("Connection: close\r\n");
    } else if request.keep_alive_10 {
        out.push_str("Connection: keep-alive\r\n");
    }
    out.push_str("\r\n");
    if !request.head {
        out.push_str(body);
    }
    out
}

/// Go's answer to a request it cannot parse.
fn go_error(code: u16, reason: &str) -> String {
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n{code} {reason}"
    )
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

    fn svc() -> ServiceName {
        ServiceName {
            namespace: "workshop".into(),
            name: "myfrontend".into(),
        }
    }

    fn get(text: &str) -> Request {
        Request::parse(text.as_bytes()).unwrap()
    }

    /// The exact bytes kube-proxy (Go net/http) sends, Date aside.
    #[test]
    fn golden_response() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_136_214_245); // 2006-01-02 15:04:05
        let body = body(&svc(), 2, true);
        let got = response(
            &get("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
            200,
            &body,
            t,
        );
        let golden = "HTTP/1.1 200 OK\r\n\
Content-Type: application/json\r\n\
X-Content-Type-Options: nosniff\r\n\
Date: Mon, 02 Jan 2006 15:04:05 GMT\r\n\
Content-Length: 122\r\n\
\r\n\
{\n\t\"service\": {\n\t\t\"namespace\": \"workshop\",\n\t\t\"name\": \"myfrontend\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}";
        assert_eq!(got, golden);

        let body = super::body(&svc(), 0, true);
        let got = response(
            &get("HEAD / HTTP/1.1\r\nConnection: close\r\n\r\n"),
            503,
            &body,
            t,
        );
        assert_eq!(
            got,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
X-Content-Type-Options: nosniff\r\nDate: Mon, 02 Jan 2006 15:04:05 GMT\r\n\
Content-Length: 122\r\nConnection: close\r\n\r\n"
        );
        let got = response(&get("POST /x HTTP/1.0\r\n\r\n"), 503, &body, t);
        assert!(
            got.starts_with("HTTP/1.0 503 Service Unavailable\r\n"),
            "{got}"
        );
        assert!(!got.contains("Connection:"), "{got}");
    }

    #[test]
    fn requests() {
        let r = get("GET / HTTP/1.1\r\nContent-Length: 5\r\nConnection: Keep-Alive\r\n\r\n");
        assert_eq!((r.close, r.content_length, r.head), (false, 5, false));
        assert!(get("GET / HTTP/1.0\r\n\r\n").close);
        assert!(!get("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").close);
        assert!(Request::parse(b"GARBAGE\r\n\r\n").is_none());
        assert!(Request::parse(b"GET / SPDY/3\r\n\r\n").is_none());
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
