//! The control socket server: a Unix stream socket, peers checked with SO_PEERCRED, requests
//! bounded in size and time, each handed to the daemon loop and answered in order.
//!
//! This module owns the socket file (created with the configured mode and group, removed on
//! drop when it is still ours) and the per-client tasks. It knows the protocol only as
//! "a line in, a [`Response`] out": what a request does is the daemon loop's business.

use super::protocol::{parse_request, ProtocolError, Request, Response, MAX_REQUEST_BYTES};
use crate::model::ControlSettings;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// How long a client may take to send a whole request line (and to read a response).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients served at once; more wait in the socket's backlog.
const MAX_CLIENTS: usize = 32;

/// A request and where its response goes.
pub type Job = (Request, oneshot::Sender<Response>);

/// Why the control socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process answers on this path.
    #[error("{0}: another sluice is listening on this control socket")]
    InUse(PathBuf),
    /// Binding, chmod or chown failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
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
    /// Binds `settings.path()`: a stale socket file (nobody answering) is replaced; a live
    /// one is an error. The file gets `settings.mode` and, if set, `settings.group`.
    pub fn bind(settings: &ControlSettings) -> Result<ControlSocket, SocketError> {
        let path = settings.path();
        let io_err = |source| SocketError::Io {
            path: path.clone(),
            source,
        };
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
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(settings.mode))
            .map_err(io_err)?;
        if let Some(gid) = settings.group {
            std::os::unix::fs::chown(&path, None, Some(gid)).map_err(io_err)?;
        }
        let meta = std::fs::metadata(&path).map_err(io_err)?;
        Ok(ControlSocket {
            listener: Some(listener),
            path,
            inode: meta.ino(),
            owner: meta.uid(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The socket file as bound, to remove it where this value cannot be dropped (a process
    /// exiting from another thread).
    pub fn file(&self) -> SocketFile {
        SocketFile {
            path: self.path.clone(),
            inode: self.inode,
        }
    }

    /// Serves clients until the task is dropped: each request line goes to `jobs`.
    pub async fn serve(mut self, settings: ControlSettings, jobs: mpsc::Sender<Job>) {
        let listener = self.listener.take().expect("serve is called once");
        let permits = Arc::new(Semaphore::new(MAX_CLIENTS));
        let access = Arc::new(Access {
            owner: self.owner,
            uids: settings.allowed_uids,
            gids: settings.allowed_gids,
        });
        // Keep `self` (the file's owner) alive as long as we serve.
        let _socket = self;
        loop {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let jobs = jobs.clone();
            let access = Arc::clone(&access);
            tokio::spawn(async move {
                client(stream, &access, jobs).await;
                drop(permit);
            });
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.file().remove_if_ours();
    }
}

/// A bound control socket's path and inode.
#[derive(Debug, Clone)]
pub struct SocketFile {
    path: PathBuf,
    inode: u64,
}

impl SocketFile {
    /// Remove the file if it is still ours (not replaced by a newer daemon).
    pub fn remove_if_ours(&self) {
        if let Ok(m) = std::fs::metadata(&self.path) {
            if m.ino() == self.inode {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Who may talk to the daemon.
struct Access {
    owner: u32,
    uids: Vec<u32>,
    gids: Vec<u32>,
}

impl Access {
    fn allows(&self, uid: u32, gid: u32) -> bool {
        uid == 0 || uid == self.owner || self.uids.contains(&uid) || self.gids.contains(&gid)
    }
}

async fn client(stream: UnixStream, access: &Access, jobs: mpsc::Sender<Job>) {
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
        let _ = tokio::time::timeout(
            CLIENT_TIMEOUT,
            write.write_all(refusal.to_line().as_bytes()),
        )
        .await;
        return;
    }
    let mut read = BufReader::new(read);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let mut limited = (&mut read).take(MAX_REQUEST_BYTES as u64 + 1);
        let n = match tokio::time::timeout(CLIENT_TIMEOUT, limited.read_until(b'\n', &mut line))
            .await
        {
            Err(_) => {
                let r = Response::error("timeout", "no complete request within 10s: closing");
                let _ = write.write_all(r.to_line().as_bytes()).await;
                return;
            }
            Ok(Err(_)) | Ok(Ok(0)) => return,
            Ok(Ok(n)) => n,
        };
        if n > MAX_REQUEST_BYTES || (!line.ends_with(b"\n") && n == MAX_REQUEST_BYTES + 1) {
            let r = Response::failed(&ProtocolError::TooLarge);
            let _ = write.write_all(r.to_line().as_bytes()).await;
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
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
        let sent = tokio::time::timeout(
            CLIENT_TIMEOUT,
            write.write_all(response.to_line().as_bytes()),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
    }
}
