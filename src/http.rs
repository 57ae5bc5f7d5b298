//! sluice's own small HTTP/1.1 servers — the metrics/health listener, the
//! healthCheckNodePort listeners and the demo pods — on hyper, with limits that no client
//! can get around:
//!
//! - **Header-read timeout** ([`Limits::header_read_timeout`]): a request head must arrive
//!   in full within it, counted from the moment the server waits for one — on a new
//!   connection, and between requests on a kept-alive one. A client that sends half a head
//!   and stalls (or idles after a response) is closed then.
//! - **Connection bound** ([`Limits::max_connections`], per listener): at the bound, the
//!   next accepted connection makes room by closing the connection that has been idle the
//!   longest (waiting for a request head, or done with its last response). Only when every
//!   connection is inside a handler does the listener wait — and handlers here are
//!   synchronous functions that return at once, so that wait is short. Slow or stalled
//!   clients therefore cannot keep a prompt client (a load balancer's probe) out.
//! - **Head size** ([`Limits::max_head_bytes`]): a larger request head is answered 431.
//! - **Keep-alive**: on (HTTP/1.1 by default, HTTP/1.0 with `Connection: keep-alive`).
//!
//! A handler is a plain function from the request to a complete response ([`Handler`]):
//! nothing here streams. The request body is never read; hyper drains a small one so the
//! connection can be reused. Owns the listener's accept loop and its connections' tasks
//! (they end when [`serve`]'s future is dropped). Runs on a tokio runtime on the control
//! thread (or the demo's), never on a data-plane worker.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinSet};

/// What bounds one listener. [`Limits::DEFAULT`] is what sluice's listeners use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; the one idle the longest is closed to make room.
    pub max_connections: usize,
    /// Longest wait for a complete request head (also the keep-alive idle time).
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers); at least 8 KiB (hyper's floor).
    pub max_head_bytes: usize,
}

impl Limits {
    /// The limits of every sluice HTTP listener (docs/operations.md, "Limits").
    pub const DEFAULT: Limits = Limits {
        max_connections: 128,
        header_read_timeout: Duration::from_secs(10),
        max_head_bytes: 64 * 1024,
    };
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::DEFAULT
    }
}

/// How responses are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub limits: Limits,
    /// hyper adds `Date` after the handler's headers. Off where the handler writes its own
    /// (the healthCheckNodePort answer puts it where Go's net/http does).
    pub date_header: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            limits: Limits::DEFAULT,
            date_header: true,
        }
    }
}

/// Answers one request. Header names are written in Go's canonical case
/// (`Content-Type`), in the order the handler inserted them.
pub type Handler = Arc<dyn Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync>;

/// What a listener did, for metrics; shared with the caller of [`serve`].
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections closed to make room at the bound.
    pub shed: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
}

/// How long [`serve_until`] lets the connections under way finish once told to stop.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Serves `listener` until this future is dropped (which closes the listener and every
/// connection it accepted).
pub async fn serve(
    listener: TcpListener,
    options: Options,
    handler: Handler,
    stats: Arc<ServerStats>,
) {
    serve_until(listener, options, handler, stats, std::future::pending()).await
}

/// [`serve`] until `stop` resolves: then the listener is closed (this process's copy: a
/// new process that took the socket over serves on) and the connections under way may
/// finish for up to [`STOP_GRACE`], so that a request being answered is not cut. They
/// shut down gracefully: a request under way is answered, then the connection closes; a
/// new connection's first request is awaited and answered (its bytes may be in flight);
/// an idle kept-alive one closes at once (its client's next request goes to a new
/// connection, so to the new process). Once this returns, no request is answered here.
pub async fn serve_until(
    listener: TcpListener,
    options: Options,
    handler: Handler,
    stats: Arc<ServerStats>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let table = Arc::new(Table::default());
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.limits.header_read_timeout)
        .keep_alive(true)
        .title_case_headers(true)
        .auto_date_header(options.date_header)
        .max_buf_size(options.limits.max_head_bytes.max(8192));
    let mut connections = JoinSet::new();
    let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // EMFILE, ECONNABORTED, ...: back off a little and keep serving.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        make_room(&table, options.limits.max_connections, &stats).await;
        let _ = stream.set_nodelay(true);
        let id = table.insert();
        // Told at each request: after `stop`, a connection closes only once it has had one.
        let requested = Arc::new(tokio::sync::Notify::new());
        let conn = {
            let table = Arc::clone(&table);
            let handler = Arc::clone(&handler);
            let stats = Arc::clone(&stats);
            let requested = Arc::clone(&requested);
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                requested.notify_one();
                table.set_busy(id);
                stats.requests.fetch_add(1, Ordering::Relaxed);
                let (parts, body) = handler(&request).into_parts();
                let body = TrackedBody {
                    inner: body,
                    _idle_on_drop: IdleOnDrop {
                        table: Arc::clone(&table),
                        id,
                    },
                };
                std::future::ready(Ok::<_, Infallible>(Response::from_parts(parts, body)))
            });
            builder.serve_connection(TokioIo::new(stream), service)
        };
        let guard = RemoveOnDrop {
            table: Arc::clone(&table),
            id,
        };
        let mut stop = stopping_rx.clone();
        let abort = connections.spawn(async move {
            let _guard = guard;
            // Errors (a header-read timeout, a reset, a bad request already answered 400)
            // end only this connection.
            tokio::pin!(conn);
            let mut had_request = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = requested.notified(), if !had_request => had_request = true,
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            // Stopping. A connection that has not had a request yet may hold one not read
            // yet (hyper would take it for idle and close it unanswered): wait for it.
            if !had_request {
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = requested.notified() => {}
                }
            }
            // A request under way is answered, then the connection closes; an idle kept-
            // alive one closes at once.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
        table.set_abort(id, abort);
    }
    drop(listener);
    stopping.send_replace(true);
    let _ = tokio::time::timeout(STOP_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

/// Waits until the listener may hold one more connection: closes the one idle the
/// longest when at the bound; if every connection is busy in a handler, waits for one to
/// finish.
async fn make_room(table: &Table, max: usize, stats: &ServerStats) {
    loop {
        let notified = table.changed.notified();
        match table.shed_for(max.max(1)) {
            Room::Free => return,
            Room::Shed => {
                stats.shed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Room::Busy => {
                // Bounded: a missed wake-up costs at most this long.
                let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
            }
        }
    }
}

/// The open connections of one listener: since when each has been idle (None while a
/// handler runs) and how to close it.
#[derive(Default)]
struct Table {
    inner: Mutex<TableInner>,
    changed: Notify,
}

#[derive(Default)]
struct TableInner {
    next_id: u64,
    open: HashMap<u64, Slot>,
}

struct Slot {
    idle_since: Option<Instant>,
    abort: Option<AbortHandle>,
}

enum Room {
    Free,
    Shed,
    Busy,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, TableInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self) -> u64 {
        let mut t = self.lock();
        let id = t.next_id;
        t.next_id += 1;
        t.open.insert(
            id,
            Slot {
                idle_since: Some(Instant::now()),
                abort: None,
            },
        );
        id
    }

    fn set_abort(&self, id: u64, abort: AbortHandle) {
        if let Some(slot) = self.lock().open.get_mut(&id) {
            slot.abort = Some(abort);
        }
    }

    fn set_busy(&self, id: u64) {
        if let Some(slot) = self.lock().open.get_mut(&id) {
            slot.idle_since = None;
        }
    }

    fn set_idle(&self, id: u64) {
        if let Some(slot) = self.lock().open.get_mut(&id) {
            slot.idle_since = Some(Instant::now());
        }
        self.changed.notify_waiters();
    }

    fn remove(&self, id: u64) {
        self.lock().open.remove(&id);
        self.changed.notify_waiters();
    }

    /// Room for one more below `max`, making it by closing the longest-idle connection.
    fn shed_for(&self, max: usize) -> Room {
        let mut t = self.lock();
        if t.open.len() < max {
            return Room::Free;
        }
        let oldest = t
            .open
            .iter()
            .filter_map(|(id, s)| s.idle_since.map(|since| (since, *id)))
            .min();
        let Some((_, id)) = oldest else {
            return Room::Busy;
        };
        if let Some(slot) = t.open.remove(&id) {
            if let Some(abort) = slot.abort {
                abort.abort();
            }
        }
        Room::Shed
    }
}

/// Removes a connection from its table when its task ends or is aborted.
struct RemoveOnDrop {
    table: Arc<Table>,
    id: u64,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        self.table.remove(self.id);
    }
}

/// Marks the connection idle once hyper has taken the whole response body.
struct IdleOnDrop {
    table: Arc<Table>,
    id: u64,
}

impl Drop for IdleOnDrop {
    fn drop(&mut self) {
        self.table.set_idle(self.id);
    }
}

/// A complete response body that marks its connection idle when hyper drops it.
pub struct TrackedBody {
    inner: Full<Bytes>,
    _idle_on_drop: IdleOnDrop,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response with `code`, the given headers in order, and `body`.
pub fn response(
    code: u16,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(code);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(body.into())).unwrap_or_else(|_| {
        let mut r = Response::new(Full::new(Bytes::from_static(b"bad response\n")));
        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
