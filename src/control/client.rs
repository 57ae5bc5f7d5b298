//! `sluice ctl`: sends one request to the control socket and prints the answer, for humans
//! (rendered by [`super::render`]) or, with `-o json`, the response's JSON as received.
//!
//! Blocking std IO under one deadline (`--timeout`) covering connect, send and answer: a
//! client needs no runtime, and a daemon that never answers (stopped, wedged, or a socket
//! nobody accepts on) costs seconds, not minutes.

use super::protocol::{
    request_line, FlowList, OverrideOutcome, ReloadOutcome, Request, Response, ServiceList, Status,
    UpgradeOutcome,
};
use super::render;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long `ctl` waits for an answer unless `--timeout` says otherwise. A reload answers
/// when it is done: a very large one (10,000 Services with 65,537-entry Maglev tables takes
/// ~16 s) needs a longer `--timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `ctl upgrade` waits unless `--timeout` says otherwise: the new process may take
/// up to its ready timeout (`handover::upgrade::READY_TIMEOUT`, 60 s) plus the other steps
/// (10 s each).
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(120);

/// The socket `ctl` talks to without `--socket`: the first of the daemon's default paths
/// (for this user, then the system-wide one) that exists, else the first.
pub fn default_socket() -> std::path::PathBuf {
    let paths = super::default_control_sockets();
    paths
        .iter()
        .find(|p| p.exists())
        .unwrap_or(&paths[0])
        .clone()
}

/// Exit status of `sluice ctl`: 0 success, 1 the daemon answered with an error, 2 no answer.
pub fn run(socket: &Path, json: bool, request: &Request, timeout: Duration) -> u8 {
    let response = match exchange(socket, request, timeout) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice ctl: {}: {e}", socket.display());
            return 2;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&response).expect("responses serialise")
        );
        return if response.ok { 0 } else { 1 };
    }
    if !response.ok {
        let e = response
            .error
            .unwrap_or_else(|| super::protocol::ErrorBody {
                kind: "unknown".into(),
                message: "no error given".into(),
            });
        eprintln!("Error ({}): {}", e.kind, e.message);
        return 1;
    }
    let result = response.result.unwrap_or_default();
    match human(request, result) {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => {
            eprintln!("sluice ctl: unexpected answer: {e}");
            2
        }
    }
}

/// Sends `request` and reads one response line, all within `timeout`.
pub fn exchange(socket: &Path, request: &Request, timeout: Duration) -> io::Result<Response> {
    let deadline = Instant::now() + timeout;
    let timed_out = |what: &str| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "{what} within {} (the daemon is stuck or very busy; --timeout sets how long \
                 to wait)",
                humantime::format_duration(timeout)
            ),
        )
    };
    let mut stream = connect(socket, deadline).map_err(|e| {
        if e.kind() == io::ErrorKind::TimedOut {
            timed_out("could not connect")
        } else {
            e
        }
    })?;
    stream.set_write_timeout(Some(left(deadline).ok_or_else(|| timed_out("no answer"))?))?;
    // A refused peer gets its refusal before the daemon reads anything: a failed write is
    // not the end, the answer may be waiting.
    let written = stream.write_all(request_line(request).as_bytes());
    let mut answer = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let read: io::Result<()> = loop {
        let Some(wait) = left(deadline) else {
            return Err(timed_out("no answer"));
        };
        stream.set_read_timeout(Some(wait))?;
        match stream.read(&mut chunk) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                answer.extend_from_slice(&chunk[..n]);
                if chunk[..n].contains(&b'\n') {
                    break Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out("no answer"));
            }
            Err(e) => break Err(e),
        }
    };
    let line = match answer.iter().position(|&b| b == b'\n') {
        Some(end) => &answer[..end],
        None => &answer[..],
    };
    if line.is_empty() {
        written?;
        read?;
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the daemon closed the connection without answering",
        ));
    }
    serde_json::from_slice(line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Time left until `deadline`; `None` once it passed.
fn left(deadline: Instant) -> Option<Duration> {
    Some(deadline.saturating_duration_since(Instant::now())).filter(|d| !d.is_zero())
}

/// Connects before `deadline`. A Unix socket whose backlog is full makes a blocking
/// connect wait with no limit: connect without blocking and retry while it is full.
fn connect(socket: &Path, deadline: Instant) -> io::Result<UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let address = SockAddr::unix(socket)?;
    let mut pause = Duration::from_millis(1);
    loop {
        let s = Socket::new(Domain::UNIX, Type::STREAM.cloexec().nonblocking(), None)?;
        match s.connect(&address) {
            Ok(()) => {
                s.set_nonblocking(false)?;
                return Ok(s.into());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if left(deadline).is_none() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "backlog full"));
                }
                std::thread::sleep(pause.min(left(deadline).unwrap_or_default()));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

fn human(request: &Request, result: serde_json::Value) -> Result<String, serde_json::Error> {
    Ok(match request {
        Request::Status => render::status(&serde_json::from_value::<Status>(result)?),
        Request::Services => render::services(&serde_json::from_value::<ServiceList>(result)?),
        Request::Describe { .. } => {
            render::describe(&serde_json::from_value::<ServiceList>(result)?.services)
        }
        Request::Endpoints { .. } => {
            render::endpoints(&serde_json::from_value::<ServiceList>(result)?)
        }
        Request::Stats => render::stats(&serde_json::from_value::<ServiceList>(result)?),
        Request::Reload => render::reload(&serde_json::from_value::<ReloadOutcome>(result)?),
        Request::Endpoint { .. } => {
            render::override_outcome(&serde_json::from_value::<OverrideOutcome>(result)?)
        }
        Request::LogLevel { level } => format!("log level: {level}\n"),
        Request::Upgrade { .. } => {
            render::upgrade(&serde_json::from_value::<UpgradeOutcome>(result)?)
        }
        Request::Flows { .. } => render::flows(&serde_json::from_value::<FlowList>(result)?),
    })
}
