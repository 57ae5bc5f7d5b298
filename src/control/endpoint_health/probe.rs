//! One active check of one endpoint over the network: connect, send the PROXY preamble the
//! Service's forwarding asks for, and for HTTP checks send `GET path` with hyper's
//! HTTP/1.1 client (`Host`, `User-Agent: sluice-health-check`, `Connection: close`) and
//! judge the answer's status. Holds no state: the tracker records the result. Every
//! failure comes back as a short reason (`connection refused`, `HTTP status 500 (expected
//! 200-299)`, `no answer within 2s`) for `ctl endpoints` and the log.

use super::{Preamble, ProbeConfig};
use crate::model::CheckKind;
use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// One check of `addr`: Ok, or why it failed. Bounded by the check's `timeout`.
pub(super) async fn probe(addr: SocketAddr, config: &ProbeConfig) -> Result<(), String> {
    let timeout = config.check.timeout;
    match tokio::time::timeout(timeout, probe_unbounded(addr, config)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        )),
    }
}

async fn probe_unbounded(addr: SocketAddr, config: &ProbeConfig) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| io_reason("connect", &e))?;
    let _ = stream.set_nodelay(true);
    let mut preamble = Vec::with_capacity(32);
    match config.preamble {
        Preamble::None => {}
        Preamble::ProxyV1Unknown => preamble.extend_from_slice(b"PROXY UNKNOWN\r\n"),
        Preamble::ProxyV2Local => crate::proxy_protocol::encode_v2_local(&mut preamble),
    }
    if !preamble.is_empty() {
        stream
            .write_all(&preamble)
            .await
            .map_err(|e| io_reason("send", &e))?;
    }
    let CheckKind::Http {
        path,
        expect: (lo, hi),
    } = &config.check.kind
    else {
        let _ = stream.shutdown().await;
        return Ok(());
    };
    let status = http_status(stream, addr, path).await?;
    if (*lo..=*hi).contains(&status) {
        Ok(())
    } else if lo == hi {
        Err(format!("HTTP status {status} (expected {lo})"))
    } else {
        Err(format!("HTTP status {status} (expected {lo}-{hi})"))
    }
}

/// Sends `GET path` on `stream` and returns the answer's status code.
async fn http_status(stream: TcpStream, addr: SocketAddr, path: &str) -> Result<u16, String> {
    let request = Request::get(path)
        .header(HOST, addr.to_string())
        .header(USER_AGENT, "sluice-health-check")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("path {path:?} is not a valid request target: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http_reason(&e))?;
    let mut conn = std::pin::pin!(conn);
    let mut response = std::pin::pin!(sender.send_request(request));
    let response = tokio::select! {
        response = &mut response => response,
        // The connection can end (the server closed after its answer) before the answer
        // is taken: it is delivered all the same.
        closed = &mut conn => match closed {
            Ok(()) => response.await,
            Err(e) => return Err(http_reason(&e)),
        },
    };
    response
        .map(|r| r.status().as_u16())
        .map_err(|e| http_reason(&e))
}

/// A short reason for a failed HTTP exchange.
fn http_reason(e: &hyper::Error) -> String {
    use std::error::Error as _;
    if e.is_incomplete_message() {
        return "connection closed without an answer".to_owned();
    }
    if e.is_parse() || e.is_parse_status() {
        return format!("not an HTTP response ({e})");
    }
    if e.is_timeout() {
        return "receive timed out".to_owned();
    }
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io_reason("receive", io);
        }
        source = s.source();
    }
    format!("HTTP: {e}")
}

fn io_reason(what: &str, e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".to_owned(),
        ConnectionReset => format!("connection reset ({what})"),
        TimedOut => format!("{what} timed out"),
        _ => match e.raw_os_error() {
            Some(libc::EHOSTUNREACH) => "host unreachable".to_owned(),
            Some(libc::ENETUNREACH) => "network unreachable".to_owned(),
            _ => format!("{what}: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ActiveCheck;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    /// Checks a one-shot server that reads a request head and answers `answer` (then
    /// closes); returns the check's result and the head the server received.
    fn check_against(answer: &'static [u8], expect: (u16, u16)) -> (Result<(), String>, String) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 512];
                while !head.ends_with(b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                s.write_all(answer).await.unwrap();
                let _ = s.shutdown().await;
                String::from_utf8(head).unwrap()
            });
            let config = ProbeConfig {
                check: ActiveCheck {
                    kind: CheckKind::Http {
                        path: "/healthz?full=1".into(),
                        expect,
                    },
                    interval: Duration::from_secs(1),
                    timeout: Duration::from_secs(5),
                    rise: 1,
                    fall: 1,
                    port: None,
                },
                preamble: Preamble::None,
            };
            let result = probe(addr, &config).await;
            let head = server.await.unwrap();
            (result, head.replace(&addr.to_string(), "ADDR"))
        })
    }

    #[test]
    fn http_statuses_and_the_request_sent() {
        let (r, head) = check_against(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", (200, 299));
        assert_eq!(r, Ok(()));
        assert_eq!(
            head,
            "GET /healthz?full=1 HTTP/1.1\r\nHost: ADDR\r\nUser-Agent: sluice-health-check\r\nConnection: close\r\n\r\n"
        );
        let (r, _) = check_against(b"HTTP/1.0 204 No Content\r\n\r\n", (200, 299));
        assert_eq!(r, Ok(()));
        // No reason phrase, body until close.
        let (r, _) = check_against(b"HTTP/1.1 503\r\n\r\ndown", (200, 299));
        assert_eq!(r, Err("HTTP status 503 (expected 200-299)".into()));
        let (r, _) = check_against(
            b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n",
            (200, 200),
        );
        assert_eq!(r, Err("HTTP status 302 (expected 200)".into()));
    }

    #[test]
    fn answers_that_are_not_http() {
        let (r, _) = check_against(b"", (200, 299));
        assert_eq!(r, Err("connection closed without an answer".into()));
        let (r, _) = check_against(b"SSH-2.0-OpenSSH_9.2\r\n", (200, 299));
        let reason = r.unwrap_err();
        assert!(reason.starts_with("not an HTTP response"), "{reason}");
        let (r, _) = check_against(b"HTTP/1.1 20x OK\r\n\r\n", (200, 299));
        let reason = r.unwrap_err();
        assert!(reason.starts_with("not an HTTP response"), "{reason}");
    }
}
