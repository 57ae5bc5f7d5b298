//! `sluice ctl`: sends one request to the control socket and prints the answer, for humans
//! (rendered by [`super::render`]) or, with `-o json`, the response's JSON as received.
//!
//! Blocking std IO with timeouts: a client needs no runtime.

use super::protocol::{
    request_line, OverrideOutcome, ReloadOutcome, Request, Response, ServiceList, Status,
    UpgradeOutcome,
};
use super::render;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long `ctl` waits for an answer (a reload builds Maglev tables: give it time).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `ctl upgrade` waits: the new process may take up to its ready timeout
/// (`handover::upgrade::READY_TIMEOUT`, 60 s) plus the other steps (10 s each).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(120);

/// Exit status of `sluice ctl`: 0 success, 1 the daemon answered with an error, 2 no answer.
pub fn run(socket: &Path, json: bool, request: &Request) -> u8 {
    let response = match exchange(socket, request) {
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

/// Sends `request` and reads one response line.
pub fn exchange(socket: &Path, request: &Request) -> std::io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    let timeout = match request {
        Request::Upgrade { .. } => UPGRADE_TIMEOUT,
        _ => ANSWER_TIMEOUT,
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    // A refused peer gets its refusal before the daemon reads anything: a failed write is
    // not the end, the answer may be waiting.
    let written = stream.write_all(request_line(request).as_bytes());
    let mut line = String::new();
    let read = BufReader::new(stream).read_line(&mut line);
    if line.is_empty() {
        written?;
        read?;
    }
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the daemon closed the connection without answering",
        ));
    }
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
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
    })
}
