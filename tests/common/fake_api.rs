//! A fake Kubernetes API server on loopback, speaking the wire protocol kube-rs's watcher
//! uses, for Services (`/api/v1/…/services`) and EndpointSlices
//! (`/apis/discovery.k8s.io/v1/…/endpointslices`), cluster-wide and namespaced.
//!
//! What it answers, like kube-apiserver:
//! - lists: `?limit=N[&continue=T]` pages from a consistent snapshot, `kind: ServiceList`,
//!   `metadata.resourceVersion` (and `continue` while more pages remain); items carry their
//!   own `metadata.resourceVersion` (and, as in real lists, no kind/apiVersion). A
//!   `continue` token whose snapshot was compacted away: HTTP 410 `Expired`.
//! - watches: `?watch=true&resourceVersion=RV&allowWatchBookmarks=true&timeoutSeconds=S`:
//!   a chunked stream, one JSON event per line (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`
//!   every second while idle), ended cleanly after `timeoutSeconds`. From a version older
//!   than the history kept: HTTP 200 then one `ERROR` event with a `Status` of code 410
//!   (what the apiserver's watch cache does), then the end of the stream.
//! - Nodes (`/api/v1/nodes`, cluster-scoped) likewise, with `fieldSelector=metadata.name=N`
//!   (one node, as sluice watches its own).
//! - Event writes (`POST`/`PATCH` to `/apis/events.k8s.io/v1/namespaces/NS/events`, what
//!   kube-rs's event `Recorder` sends) are recorded ([`FakeApi::events`]) and echoed.
//! - `Authorization: Bearer <token>` is checked (401 otherwise).
//!
//! What tests can do: apply/delete objects (each bumps the global resourceVersion, like
//! etcd's revision), [`FakeApi::expire_watches`] (410 on every open watch),
//! [`FakeApi::drop_connections`] (cut every connection without an HTTP ending),
//! [`FakeApi::stop`] / [`FakeApi::start`] (a restart on the same port; the restarted server
//! has the same objects and versions but no watch history, so resuming watches get 410 —
//! what a real restart does, as the watch cache is rebuilt at the current revision).
//!
//! Threads: one accept thread, one per connection; all end on [`FakeApi::stop`] / drop.

use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The bearer token the fake accepts (written into the kubeconfig by [`FakeApi::kubeconfig`]).
pub const TOKEN: &str = "sluice-itest-token";

/// The kinds served (lists and watches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    /// Cluster-scoped: stored with namespace `""`.
    Node,
}

impl Kind {
    fn of(v: &Value) -> Kind {
        match v["kind"].as_str() {
            Some("Service") => Kind::Service,
            Some("EndpointSlice") => Kind::EndpointSlice,
            Some("Node") => Kind::Node,
            k => panic!("fake API: unsupported kind {k:?}"),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }
}

/// One write to `events.k8s.io/v1` (what kube-rs's event `Recorder` sends).
#[derive(Debug, Clone)]
pub struct EventWrite {
    /// `POST` (a new Event) or `PATCH` (a repeat: the series count).
    pub method: String,
    pub namespace: String,
    /// The Event's name (from the body for a POST, the path for a PATCH).
    pub name: String,
    pub body: Value,
}

type Key = (Kind, String, String);

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    kind: Kind,
    namespace: String,
    /// ADDED / MODIFIED / DELETED
    what: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    /// The last resourceVersion given out.
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// Changes after `history_from` (exclusive), in order.
    history: Vec<Change>,
    /// Watches from a version below this get 410.
    history_from: u64,
    /// List snapshots being paged through: id → (rv, items).
    pages: HashMap<u64, (u64, Vec<Value>)>,
    next_page_id: u64,
    /// Bumped to make open watches send 410 and end.
    expire_epoch: u64,
    /// Bumped to cut every open connection.
    drop_epoch: u64,
    /// Every request target, in order (`GET /api/v1/services?limit=500`).
    requests: Vec<String>,
    uid: u64,
    /// Events written, in order.
    events: Vec<EventWrite>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Server {
    stop: Arc<AtomicBool>,
    accept: JoinHandle<()>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

/// The fake API server. Dropping it stops it.
pub struct FakeApi {
    shared: Arc<Shared>,
    port: u16,
    server: Option<Server>,
}

impl FakeApi {
    /// Starts on 127.0.0.1 with a kernel-chosen port.
    pub fn start_new() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake API");
        let port = listener.local_addr().unwrap().port();
        let mut api = FakeApi {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
            }),
            port,
            server: None,
        };
        api.serve(listener);
        api
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A kubeconfig pointing at this server (plain HTTP, bearer token).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: itest\n    namespace: default\ncurrent-context: fake\nusers:\n- name: itest\n  user:\n    token: {TOKEN}\n",
            self.port
        )
    }

    /// Adds or replaces an object (by kind, namespace, name); returns its resourceVersion.
    pub fn apply(&self, object: Value) -> u64 {
        let mut s = self.shared.lock();
        let rv = apply_locked(&mut s, object);
        drop(s);
        self.shared.changed.notify_all();
        rv
    }

    /// Applies many objects at once (one lock; each still gets its own version and event).
    pub fn apply_all(&self, objects: impl IntoIterator<Item = Value>) -> u64 {
        let mut s = self.shared.lock();
        let mut rv = s.rv;
        for o in objects {
            rv = apply_locked(&mut s, o);
        }
        drop(s);
        self.shared.changed.notify_all();
        rv
    }

    /// Deletes an object; panics when it does not exist.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> u64 {
        let mut s = self.shared.lock();
        let key = (kind, namespace.to_owned(), name.to_owned());
        let mut object = s
            .objects
            .remove(&key)
            .unwrap_or_else(|| panic!("fake API: no {kind:?} {namespace}/{name} to delete"));
        s.rv += 1;
        let rv = s.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        s.history.push(Change {
            rv,
            kind,
            namespace: namespace.to_owned(),
            what: "DELETED",
            object,
        });
        drop(s);
        self.shared.changed.notify_all();
        rv
    }

    /// The stored object, if any.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let s = self.shared.lock();
        s.objects
            .get(&(kind, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Forgets the watch history (compaction): watches resuming from an older version get
    /// 410, and paged lists in progress are expired.
    pub fn compact(&self) {
        let mut s = self.shared.lock();
        s.history.clear();
        s.history_from = s.rv;
        s.pages.clear();
    }

    /// Compacts, then sends every open watch an `ERROR` event with a 410 `Expired` Status
    /// and ends it: clients must relist.
    pub fn expire_watches(&self) {
        self.compact();
        self.shared.lock().expire_epoch += 1;
        self.shared.changed.notify_all();
    }

    /// Cuts every open connection (no final chunk): clients see a broken stream.
    pub fn drop_connections(&self) {
        self.shared.lock().drop_epoch += 1;
        self.shared.changed.notify_all();
        if let Some(server) = &self.server {
            for c in lock(&server.conns).drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }

    /// Stops serving: the listener closes (connections are refused) and every connection
    /// is cut. The objects stay for [`start`](Self::start).
    pub fn stop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        server.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        let _ = server.accept.join();
        for c in lock(&server.conns).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        // A restarted API server has no watch history: its cache starts at the current
        // revision.
        self.compact();
    }

    /// Serves again on the same port (after [`stop`](Self::stop)). Changes applied while
    /// stopped (etcd kept being written) are in the lists, not in any watch history.
    pub fn start(&mut self) {
        assert!(self.server.is_none(), "fake API already running");
        let addr = self.addr();
        let listener = super::wait_for("the fake API's port to bind again", super::SOON, || {
            TcpListener::bind(addr).ok()
        });
        // Its watch cache starts at the current revision: older versions get 410.
        self.compact();
        self.serve(listener);
    }

    /// Events written so far (POSTs and PATCHes to `events.k8s.io/v1`), in order.
    pub fn events(&self) -> Vec<EventWrite> {
        self.shared.lock().events.clone()
    }

    /// Request targets received so far (`/api/v1/services?limit=500`, …).
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// Number of received requests whose target contains `part`.
    pub fn count_requests(&self, part: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.contains(part))
            .count()
    }

    fn serve(&mut self, listener: TcpListener) {
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
        let shared = Arc::clone(&self.shared);
        let (stop2, conns2) = (Arc::clone(&stop), Arc::clone(&conns));
        let accept = std::thread::Builder::new()
            .name("fake-api-accept".into())
            .spawn(move || {
                while !stop2.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let _ = stream.set_nonblocking(false);
                            if let Ok(c) = stream.try_clone() {
                                let mut v = lock(&conns2);
                                v.retain(|c| c.peer_addr().is_ok());
                                v.push(c);
                            }
                            let shared = Arc::clone(&shared);
                            let stop = Arc::clone(&stop2);
                            let _ = std::thread::Builder::new()
                                .name("fake-api-conn".into())
                                .spawn(move || connection(stream, &shared, &stop));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
            .expect("spawn fake API accept thread");
        self.server = Some(Server {
            stop,
            accept,
            conns,
        });
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn apply_locked(s: &mut State, mut object: Value) -> u64 {
    let kind = Kind::of(&object);
    let ns = match kind {
        Kind::Node => String::new(),
        _ => object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned(),
    };
    let name = object["metadata"]["name"]
        .as_str()
        .expect("fixture objects have metadata.name")
        .to_owned();
    let key = (kind, ns.clone(), name);
    s.rv += 1;
    let rv = s.rv;
    let old = s.objects.get(&key);
    let uid = match old.and_then(|o| o["metadata"]["uid"].as_str()) {
        Some(u) => u.to_owned(),
        None => {
            s.uid += 1;
            format!("00000000-0000-4000-8000-{:012x}", s.uid)
        }
    };
    let what = if s.objects.contains_key(&key) {
        "MODIFIED"
    } else {
        "ADDED"
    };
    if kind != Kind::Node {
        object["metadata"]["namespace"] = json!(ns);
    }
    object["metadata"]["uid"] = json!(uid);
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    if object["metadata"]["creationTimestamp"].is_null() {
        object["metadata"]["creationTimestamp"] = json!("2026-11-21T10:00:00Z");
    }
    s.objects.insert(key, object.clone());
    s.history.push(Change {
        rv,
        kind,
        namespace: ns,
        what,
        object,
    });
    rv
}

/// What a request asks for.
struct Target {
    kind: Kind,
    namespace: Option<String>,
    query: HashMap<String, String>,
}

impl Target {
    /// Whether an object of this kind in `namespace` is selected (namespace, and a
    /// `fieldSelector=metadata.name=NAME` as kube-rs sends it for one object).
    fn selects(&self, namespace: &str, object: &Value) -> bool {
        let name_ok = match self
            .query
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("metadata.name="))
        {
            Some(want) => object["metadata"]["name"].as_str() == Some(want),
            None => true,
        };
        name_ok && self.namespace.as_ref().is_none_or(|want| want == namespace)
    }
}

fn parse_target(target: &str) -> Option<Target> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (kind, namespace) = match parts.as_slice() {
        ["api", "v1", "services"] => (Kind::Service, None),
        ["api", "v1", "nodes"] => (Kind::Node, None),
        ["api", "v1", "namespaces", ns, "services"] => (Kind::Service, Some(ns.to_string())),
        ["apis", "discovery.k8s.io", "v1", "endpointslices"] => (Kind::EndpointSlice, None),
        ["apis", "discovery.k8s.io", "v1", "namespaces", ns, "endpointslices"] => {
            (Kind::EndpointSlice, Some(ns.to_string()))
        }
        _ => return None,
    };
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), percent_decode(v))
        })
        .collect();
    Some(Target {
        kind,
        namespace,
        query,
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves one connection: requests one after another (keep-alive) until the client or the
/// server closes it. A watch takes the connection until it ends.
fn connection(stream: TcpStream, shared: &Shared, stop: &AtomicBool) {
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = stream;
    serve_requests(&mut reader, &mut out, shared, stop);
    // The accept thread keeps a clone of the socket (to cut it on demand): close for real.
    let _ = out.shutdown(Shutdown::Both);
}

fn serve_requests(
    reader: &mut BufReader<TcpStream>,
    out: &mut TcpStream,
    shared: &Shared,
    stop: &AtomicBool,
) {
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut auth = None;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("authorization") {
                    auth = Some(value.trim().to_owned());
                }
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut body = vec![0u8; length];
        if std::io::Read::read_exact(reader, &mut body).is_err() {
            return;
        }
        let mut words = request_line.split_whitespace();
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        shared.lock().requests.push(format!("{method} {target}"));
        if auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
            let _ = respond(out, 401, &status_json(401, "Unauthorized", "Unauthorized"));
            continue;
        }
        if let Some(result) = event_write(shared, method, target, &body) {
            let _ = match result {
                Ok(object) => respond(out, if method == "POST" { 201 } else { 200 }, &object),
                Err(e) => respond(out, 400, &status_json(400, "BadRequest", &e)),
            };
            continue;
        }
        let Some(t) = parse_target(target).filter(|_| method == "GET") else {
            let _ = respond(
                out,
                404,
                &status_json(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            );
            continue;
        };
        let keep_alive = if t
            .query
            .get("watch")
            .is_some_and(|v| v == "true" || v == "1")
        {
            // A watch that ended with its final chunk leaves the connection usable.
            watch(out, shared, stop, &t)
        } else {
            list(out, shared, &t).is_ok()
        };
        if !keep_alive {
            return;
        }
    }
}

/// A write to `/apis/events.k8s.io/v1/namespaces/NS/events[/NAME]` (POST or PATCH),
/// recorded and echoed back as the apiserver does; `None` for any other request.
fn event_write(
    shared: &Shared,
    method: &str,
    target: &str,
    body: &[u8],
) -> Option<Result<String, String>> {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (namespace, name) = match (method, parts.as_slice()) {
        ("POST", ["apis", "events.k8s.io", "v1", "namespaces", ns, "events"]) => (*ns, None),
        ("PATCH", ["apis", "events.k8s.io", "v1", "namespaces", ns, "events", name]) => {
            (*ns, Some(*name))
        }
        _ => return None,
    };
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Some(Err(format!("body is not JSON: {e}"))),
    };
    let name = name
        .map(str::to_owned)
        .or_else(|| parsed["metadata"]["name"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut s = shared.lock();
    s.events.push(EventWrite {
        method: method.to_owned(),
        namespace: namespace.to_owned(),
        name,
        body: parsed.clone(),
    });
    s.rv += 1;
    let mut echoed = parsed;
    echoed["kind"] = json!("Event");
    echoed["apiVersion"] = json!("events.k8s.io/v1");
    echoed["metadata"]["resourceVersion"] = json!(s.rv.to_string());
    Some(Ok(echoed.to_string()))
}

fn status_json(code: u16, reason: &str, message: &str) -> String {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
    .to_string()
}

fn respond(out: &mut TcpStream, code: u16, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        410 => "Gone",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    out.write_all(head.as_bytes())?;
    out.write_all(body.as_bytes())?;
    out.flush()
}

fn list(out: &mut TcpStream, shared: &Shared, t: &Target) -> std::io::Result<()> {
    let limit: usize = t
        .query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|&l| l > 0)
        .unwrap_or(usize::MAX);
    let mut s = shared.lock();
    let (id, rv, offset) = match t.query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let parsed = token
                .split_once(':')
                .and_then(|(id, off)| Some((id.parse::<u64>().ok()?, off.parse::<usize>().ok()?)));
            match parsed.and_then(|(id, off)| s.pages.get(&id).map(|p| (id, p.0, off))) {
                Some(p) => p,
                None => {
                    drop(s);
                    return respond(
                        out,
                        410,
                        &status_json(
                            410,
                            "Expired",
                            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                        ),
                    );
                }
            }
        }
        None => {
            let items: Vec<Value> = s
                .objects
                .iter()
                .filter(|((k, ns, _), o)| *k == t.kind && t.selects(ns, o))
                .map(|(_, o)| {
                    let mut o = o.clone();
                    if let Some(m) = o.as_object_mut() {
                        m.remove("kind");
                        m.remove("apiVersion");
                    }
                    o
                })
                .collect();
            s.next_page_id += 1;
            let id = s.next_page_id;
            let rv = s.rv;
            s.pages.insert(id, (rv, items));
            (id, rv, 0)
        }
    };
    let items = &s.pages[&id].1;
    let end = offset.saturating_add(limit).min(items.len());
    let page: Vec<Value> = items[offset.min(end)..end].to_vec();
    let more = end < items.len();
    if !more {
        s.pages.remove(&id);
    }
    drop(s);
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if more {
        metadata["continue"] = json!(format!("{id}:{end}"));
    }
    let body = json!({
        "kind": format!("{}List", t.kind.name()),
        "apiVersion": t.kind.api_version(),
        "metadata": metadata,
        "items": page,
    });
    respond(out, 200, &body.to_string())
}

fn chunk(out: &mut TcpStream, line: &Value) -> std::io::Result<()> {
    let mut data = line.to_string();
    data.push('\n');
    write!(out, "{:x}\r\n", data.len())?;
    out.write_all(data.as_bytes())?;
    out.write_all(b"\r\n")?;
    out.flush()
}

/// Streams watch events from the requested version until `timeoutSeconds`, an expiry, a
/// cut, or the server stopping. True when the stream ended properly (final chunk sent), so
/// the connection can carry another request.
fn watch(out: &mut TcpStream, shared: &Shared, stop: &AtomicBool, t: &Target) -> bool {
    let from: u64 = t
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = Duration::from_secs(
        t.query
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290),
    );
    let bookmarks = t
        .query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    if out.write_all(head.as_bytes()).is_err() {
        return false;
    }
    let started = Instant::now();
    let (expire0, drop0, too_old) = {
        let s = shared.lock();
        (s.expire_epoch, s.drop_epoch, from < s.history_from)
    };
    // What the watch cache sends for a version it no longer has: an ERROR event holding a
    // 410 Status, then the end of the stream.
    let expired = |out: &mut TcpStream, from: u64, oldest: u64| -> bool {
        let status: Value = serde_json::from_str(&status_json(
            410,
            "Expired",
            &format!("too old resource version: {from} ({oldest})"),
        ))
        .unwrap();
        chunk(out, &json!({ "type": "ERROR", "object": status })).is_ok()
            && out.write_all(b"0\r\n\r\n").is_ok()
    };
    if too_old {
        let oldest = shared.lock().history_from;
        return expired(out, from, oldest);
    }
    let mut sent = from;
    let mut last_write = Instant::now();
    loop {
        let s = shared.lock();
        if stop.load(Ordering::SeqCst) || s.drop_epoch != drop0 {
            return false;
        }
        if s.expire_epoch != expire0 {
            let oldest = s.history_from;
            drop(s);
            return expired(out, sent, oldest);
        }
        let pending: Vec<Change> = s
            .history
            .iter()
            .filter(|c| c.rv > sent && c.kind == t.kind && t.selects(&c.namespace, &c.object))
            .cloned()
            .collect();
        let rv_now = s.rv;
        if pending.is_empty() {
            if started.elapsed() >= timeout {
                drop(s);
                return out.write_all(b"0\r\n\r\n").is_ok();
            }
            if bookmarks && last_write.elapsed() >= Duration::from_secs(1) && rv_now > sent {
                drop(s);
                let bm = json!({
                    "type": "BOOKMARK",
                    "object": {
                        "kind": t.kind.name(),
                        "apiVersion": t.kind.api_version(),
                        "metadata": { "resourceVersion": rv_now.to_string() },
                    },
                });
                if chunk(out, &bm).is_err() {
                    return false;
                }
                sent = rv_now;
                last_write = Instant::now();
                continue;
            }
            let _ = shared
                .changed
                .wait_timeout(s, Duration::from_millis(200))
                .map(|_| ());
            continue;
        }
        drop(s);
        for c in pending {
            let ev = json!({ "type": c.what, "object": c.object });
            if chunk(out, &ev).is_err() {
                return false;
            }
            sent = c.rv;
        }
        last_write = Instant::now();
    }
}
