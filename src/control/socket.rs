//! The control socket server: a Unix stream socket, peers checked with SO_PEERCRED, requests
//! bounded in size and time, each handed to the daemon loop and answered in order.
//!
//! This module owns the socket file (its directory created when missing, the file created
//! with the configured mode and group, removed on every exit path while it is still ours:
//! see [`remove_control_socket`]) and the per-client tasks. It knows the protocol only as
//! "a line in, a [`Response`] out": what a request does is the daemon loop's business.
//!
//! # Fairness
//! Allowed peers share [`MAX_CLIENTS`] connections; root and the daemon's own uid may use
//! [`RESERVED_CLIENTS`] more when those are taken, and their requests go to the daemon loop
//! through a queue it serves first ([`Queues::priority`]). A connection with no request under
//! way is closed after [`IDLE_TIMEOUT`] (before its first request and between requests), a
//! request must be complete [`REQUEST_TIMEOUT`] after its first byte, and a client beyond
//! the limit is told `busy` at once instead of waiting in the backlog. So no number of
//! allowed clients, idle or busy, can keep root waiting for more than one request.

use super::protocol::{parse_request, ProtocolError, Request, Response, MAX_REQUEST_BYTES};
use crate::model::{ControlSettings, DEFAULT_CONTROL_SOCKET};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// How long a client may take to complete a request line once its first byte arrived, and
/// to take a response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request under way (before the first, or after a response) is
/// closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once, from any allowed peer. Further ones are answered `busy`.
pub const MAX_CLIENTS: usize = 32;
/// Connections beyond [`MAX_CLIENTS`] that only root and the daemon's own uid may use.
pub const RESERVED_CLIENTS: usize = 4;
/// Mode of the socket's directory when sluice creates it.
const DIRECTORY_MODE: u32 = 0o750;

/// Requests read from a client whose response is not written yet (see [`replies_written`]).
static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Woken when [`IN_FLIGHT`] goes down.
static REPLIES: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Counts one request from the moment it is read until its response is written (or the
/// client is gone).
struct InFlight;

impl InFlight {
    fn new() -> Self {
        IN_FLIGHT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        REPLIES.notify_waiters();
    }
}

/// Waits, at most `bound`, until every request read so far has its response written: the
/// daemon calls this before it exits, so that the client of the request that ended it (an
/// upgrade's `ctl upgrade`) gets its answer instead of a closed connection. Returns the
/// number still unanswered.
pub async fn replies_written(bound: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let woken = REPLIES.notified();
        let left = IN_FLIGHT.load(std::sync::atomic::Ordering::SeqCst);
        if left == 0 {
            return 0;
        }
        if tokio::time::timeout_at(deadline, woken).await.is_err() {
            return IN_FLIGHT.load(std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A request and where its response goes.
pub type Job = (Request, oneshot::Sender<Response>);

/// Where client tasks hand their requests to the daemon loop.
#[derive(Clone)]
pub struct Queues {
    /// Requests of root and the daemon's own uid: the loop takes these first.
    pub priority: mpsc::Sender<Job>,
    /// Everyone else's.
    pub normal: mpsc::Sender<Job>,
}

/// Why the control socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process answers on this path.
    #[error("control socket {0}: another sluice is listening on this control socket")]
    InUse(PathBuf),
    /// Creating the directory, binding, chmod or chown failed.
    #[error("control socket {path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
}

/// The control socket path when `control_socket` is not set: [`DEFAULT_CONTROL_SOCKET`]
/// (`/run/sluice/control.sock`, systemd's `RuntimeDirectory=sluice`) for root, and for
/// another user `$XDG_RUNTIME_DIR/sluice/control.sock` when it has a runtime directory (a
/// service user without one, like the unit's `sluice`, also gets the `/run/sluice` path).
pub fn default_path() -> PathBuf {
    default_paths()
        .into_iter()
        .next()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET))
}

/// Where `sluice ctl` looks when not given `--socket`: the first of these that exists
/// (the daemon's default for this user first, then the system-wide one), else the first.
pub fn default_paths() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if crate::dataplane::effective_uid() != 0 {
        if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                paths.push(dir.join("sluice").join("control.sock"));
            }
        }
    }
    paths.push(PathBuf::from(DEFAULT_CONTROL_SOCKET));
    paths
}

/// The path `settings` binds: the configured one or [`default_path`].
pub fn socket_path(settings: &ControlSettings) -> PathBuf {
    settings.socket.clone().unwrap_or_else(default_path)
}

/// The socket files this process made (path, inode), for [`remove_control_socket`].
static BOUND: Mutex<Vec<(PathBuf, u64)>> = Mutex::new(Vec::new());
/// Set once the control socket was handed to a new process (`ctl upgrade`): the file is
/// that one's now, and this process never removes it.
static HANDED_OVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A control socket taken over from the previous process ([`ControlSocket::adopt`]) that is
/// not this process's file yet: until the hand-over is done a failure here must leave the
/// file to the old process, which serves on ([`claim_adopted_control_socket`]).
static ADOPTED: Mutex<Option<(PathBuf, u64)>> = Mutex::new(None);

/// The hand-over is done (this process is the daemon): the adopted control socket's file is
/// this process's to remove when it exits.
pub fn claim_adopted_control_socket() {
    let adopted = ADOPTED.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(entry) = adopted {
        BOUND.lock().unwrap_or_else(|p| p.into_inner()).push(entry);
    }
}

/// The control socket now belongs to the process it was handed to: this one forgets the
/// file (no exit path removes it).
pub fn forget_control_socket() {
    HANDED_OVER.store(true, std::sync::atomic::Ordering::SeqCst);
    BOUND.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// Removes the control socket file(s) this process made, where the file is still the one it
/// made (not replaced by a newer daemon). Idempotent and callable from any thread on any
/// exit path: a normal or failed exit, the second signal's immediate exit, a panic hook
/// before the process is taken down.
pub fn remove_control_socket() {
    let mut bound = BOUND.lock().unwrap_or_else(|p| p.into_inner());
    for (path, inode) in bound.drain(..) {
        remove_if_ours(&path, inode);
    }
}

fn remove_if_ours(path: &Path, inode: u64) {
    if HANDED_OVER.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.ino() == inode {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The bound control socket. Dropping it removes the file if it is still the one we made.
pub struct ControlSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
    inode: u64,
    /// The daemon's uid (owner of the socket file): always allowed.
    owner: u32,
}

impl ControlSocket {
    /// Binds [`socket_path`]: its directory is created when missing (mode 0750, group
    /// `settings.group`), a stale socket file (nobody answering) is replaced, a live one is
    /// an error. The file gets `settings.mode` and, if set, `settings.group`.
    pub fn bind(settings: &ControlSettings) -> Result<ControlSocket, SocketError> {
        let path = socket_path(settings);
        let io_err = |cause| SocketError::Io {
            path: path.clone(),
            cause,
        };
        create_directory(&path, settings.group).map_err(io_err)?;
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(io_err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a socket",
                )));
            }
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(SocketError::InUse(path));
            }
            std::fs::remove_file(&path).map_err(io_err)?;
        }
        let listener = UnixListener::bind(&path).map_err(io_err)?;
        let meta = std::fs::metadata(&path).map_err(io_err)?;
        let socket = ControlSocket {
            listener: Some(listener),
            path: path.clone(),
            inode: meta.ino(),
            owner: meta.uid(),
        };
        BOUND
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((path.clone(), socket.inode));
        // From here on, an error drops `socket`, which removes the file.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(settings.mode))
            .map_err(io_err)?;
        if let Some(gid) = settings.group {
            std::os::unix::fs::chown(&path, None, Some(gid)).map_err(io_err)?;
        }
        Ok(socket)
    }

    /// Takes over the listening control socket a previous process passed (`ctl upgrade`):
    /// it must be bound to [`socket_path`] (never unlinked or re-bound in between, so a
    /// client never finds no socket there). The file keeps its mode and group.
    pub fn adopt(
        fd: std::os::fd::OwnedFd,
        settings: &ControlSettings,
    ) -> Result<ControlSocket, SocketError> {
        let path = socket_path(settings);
        let io_err = |cause| SocketError::Io {
            path: path.clone(),
            cause,
        };
        crate::handover::validate::check_control_path(&fd, &path)
            .map_err(|e| io_err(io::Error::new(io::ErrorKind::InvalidInput, e.to_string())))?;
        let std_listener = std::os::unix::net::UnixListener::from(fd);
        std_listener.set_nonblocking(true).map_err(io_err)?;
        let listener = UnixListener::from_std(std_listener).map_err(io_err)?;
        let meta = std::fs::metadata(&path).map_err(io_err)?;
        *ADOPTED.lock().unwrap_or_else(|p| p.into_inner()) = Some((path.clone(), meta.ino()));
        Ok(ControlSocket {
            listener: Some(listener),
            path,
            inode: meta.ino(),
            owner: meta.uid(),
        })
    }

    /// A duplicate of the listening socket (to hand over with `ctl upgrade`).
    pub fn duplicate(&self) -> io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        match &self.listener {
            Some(l) => l.as_fd().try_clone_to_owned(),
            None => Err(io::Error::other("the control socket is served already")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves clients until the task is dropped: each request line goes to `queues`.
    pub async fn serve(mut self, settings: ControlSettings, queues: Queues) {
        let listener = self.listener.take().expect("serve is called once");
        let slots = Slots {
            shared: Arc::new(Semaphore::new(MAX_CLIENTS)),
            reserved: Arc::new(Semaphore::new(RESERVED_CLIENTS)),
        };
        let access = Arc::new(Access {
            owner: self.owner,
            uids: settings.allowed_uids,
            gids: settings.allowed_gids,
        });
        // Keep `self` (the file's owner) alive as long as we serve.
        let _socket = self;
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let queues = queues.clone();
            let access = Arc::clone(&access);
            let slots = slots.clone();
            tokio::spawn(async move {
                admit(stream, &access, &slots, queues).await;
            });
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        // Not an adopted file before the hand-over is done (the old process serves on).
        let adopted = ADOPTED.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if adopted.is_some_and(|(p, i)| p == self.path && i == self.inode) {
            return;
        }
        // Only remove the file if it is still ours (not replaced by a newer daemon).
        remove_if_ours(&self.path, self.inode);
        BOUND
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(p, i)| !(p == &self.path && *i == self.inode));
    }
}

/// Creates the socket's directory when it is missing (only the last component: a missing
/// parent of it is an error), mode [`DIRECTORY_MODE`], with `group` when one is set so
/// that its members can reach a group-accessible socket.
fn create_directory(path: &Path, group: Option<u32>) -> io::Result<()> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.exists() {
        return Ok(());
    }
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(DIRECTORY_MODE).create(dir) {
        Ok(()) => {}
        // Another daemon made it at the same moment.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot create the directory {}: {e}", dir.display()),
            ))
        }
    }
    // The umask may have taken bits away.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIRECTORY_MODE))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(dir, None, Some(gid))?;
    }
    tracing::info!(directory = %dir.display(), "created the control socket's directory");
    Ok(())
}

/// Who may talk to the daemon.
struct Access {
    owner: u32,
    uids: Vec<u32>,
    gids: Vec<u32>,
}

impl Access {
    fn allows(&self, uid: u32, gid: u32) -> bool {
        self.privileged(uid) || self.uids.contains(&uid) || self.gids.contains(&gid)
    }

    /// Root and the daemon's own uid: reserved connections, requests served first.
    fn privileged(&self, uid: u32) -> bool {
        uid == 0 || uid == self.owner
    }
}

/// The connection slots: shared by every allowed peer, and reserved for privileged ones.
#[derive(Clone)]
struct Slots {
    shared: Arc<Semaphore>,
    reserved: Arc<Semaphore>,
}

impl Slots {
    fn take(&self, privileged: bool) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.shared)
            .try_acquire_owned()
            .ok()
            .or_else(|| {
                privileged
                    .then(|| Arc::clone(&self.reserved).try_acquire_owned().ok())
                    .flatten()
            })
    }
}

/// Checks the peer, gives it a slot (or tells it why not), then serves it.
async fn admit(stream: UnixStream, access: &Access, slots: &Slots, queues: Queues) {
    let (uid, gid) = match stream.peer_cred() {
        Ok(c) => (c.uid(), c.gid()),
        Err(e) => {
            tracing::warn!(error = %e, "control client without credentials: refused");
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    if !access.allows(uid, gid) {
        tracing::warn!(uid, gid, "control client refused");
        let refusal = Response::error(
            "forbidden",
            format!("uid {uid} (gid {gid}) is not allowed to use this control socket"),
        );
        send(&mut write, &refusal).await;
        return;
    }
    let privileged = access.privileged(uid);
    let Some(_slot) = slots.take(privileged) else {
        tracing::debug!(uid, "control client over the limit: busy");
        let busy = Response::error(
            "busy",
            format!(
                "{MAX_CLIENTS} control clients are connected, the most this socket serves: \
                 try again (idle ones are closed after {}s)",
                IDLE_TIMEOUT.as_secs()
            ),
        );
        send(&mut write, &busy).await;
        return;
    };
    let jobs = if privileged {
        queues.priority
    } else {
        queues.normal
    };
    serve_client(BufReader::new(read), write, jobs).await;
}

/// Writes one response, bounded by [`REQUEST_TIMEOUT`]; false when it could not.
async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, response: &Response) -> bool {
    let sent = tokio::time::timeout(
        REQUEST_TIMEOUT,
        write.write_all(response.to_line().as_bytes()),
    )
    .await;
    matches!(sent, Ok(Ok(())))
}

async fn serve_client(
    mut read: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut write: tokio::net::unix::OwnedWriteHalf,
    jobs: mpsc::Sender<Job>,
) {
    let mut line = Vec::with_capacity(256);
    loop {
        // Idle until the first byte of the next request.
        match tokio::time::timeout(IDLE_TIMEOUT, read.fill_buf()).await {
            Err(_) => {
                let r = Response::error(
                    "timeout",
                    format!(
                        "no request within {}s: closing (idle connections are not kept)",
                        IDLE_TIMEOUT.as_secs()
                    ),
                );
                send(&mut write, &r).await;
                return;
            }
            Ok(Err(_)) => return,
            Ok(Ok([])) => return,
            Ok(Ok(_)) => {}
        }
        line.clear();
        let mut limited = (&mut read).take(MAX_REQUEST_BYTES as u64 + 1);
        let n = match tokio::time::timeout(REQUEST_TIMEOUT, limited.read_until(b'\n', &mut line))
            .await
        {
            Err(_) => {
                let r = Response::error(
                    "timeout",
                    format!(
                        "no complete request within {}s: closing",
                        REQUEST_TIMEOUT.as_secs()
                    ),
                );
                send(&mut write, &r).await;
                return;
            }
            Ok(Err(_)) | Ok(Ok(0)) => return,
            Ok(Ok(n)) => n,
        };
        if n > MAX_REQUEST_BYTES || (!line.ends_with(b"\n") && n == MAX_REQUEST_BYTES + 1) {
            send(&mut write, &Response::failed(&ProtocolError::TooLarge)).await;
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let _in_flight = InFlight::new();
        let response = match parse_request(text) {
            Err(e) => Response::failed(&e),
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if jobs.send((request, tx)).await.is_err() {
                    Response::error("busy", "the daemon is shutting down")
                } else {
                    rx.await
                        .unwrap_or_else(|_| Response::error("busy", "the daemon is shutting down"))
                }
            }
        };
        if !send(&mut write, &response).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileged_peers_get_the_reserved_slots_and_others_do_not() {
        let slots = Slots {
            shared: Arc::new(Semaphore::new(2)),
            reserved: Arc::new(Semaphore::new(1)),
        };
        let a = slots.take(false).unwrap();
        let _b = slots.take(false).unwrap();
        assert!(slots.take(false).is_none(), "the shared slots are taken");
        let root = slots.take(true).expect("root has a reserved slot");
        assert!(slots.take(true).is_none(), "and only that many");
        drop(root);
        drop(a);
        assert!(slots.take(false).is_some(), "a freed slot is given again");
    }

    #[test]
    fn the_default_path_is_one_ctl_looks_at() {
        let paths = default_paths();
        assert_eq!(paths.first(), Some(&default_path()));
        assert_eq!(paths.last(), Some(&PathBuf::from(DEFAULT_CONTROL_SOCKET)));
    }

    #[test]
    fn a_missing_directory_is_created_with_mode_0750_and_removed_files_stay_removed() {
        let base = std::env::temp_dir().join(format!("sluice-ctl-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).unwrap();
        let path = base.join("sub").join("control.sock");
        let settings = ControlSettings {
            socket: Some(path.clone()),
            ..ControlSettings::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let socket = runtime
            .block_on(async { ControlSocket::bind(&settings) })
            .unwrap();
        let mode = std::fs::metadata(base.join("sub")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o750);
        assert!(path.exists());
        remove_control_socket();
        assert!(!path.exists(), "remove_control_socket removes it");
        drop(socket);
        assert!(!path.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
