//! The hand-over protocol's frames, as bytes: encoding and decoding with no IO, so every
//! way a peer can garble them is tested without sockets.
//!
//! A frame is a 5-byte header — the kind (1 byte) and the payload length (4 bytes, big
//! endian) — then the payload. Payloads are JSON (hello, manifest, state, ready), UTF-8
//! text (failed, abort), 6 bytes (fds: index of the first fd and how many follow, carried
//! by the same `sendmsg` as SCM_RIGHTS) or empty. Decoding never panics: an unknown kind,
//! a length above [`MAX_PAYLOAD`], a payload of the wrong size or bad JSON/UTF-8 is a
//! [`FrameError`] naming the frame.

use serde::{Deserialize, Serialize};

/// Bytes of a frame header.
pub const HEADER_LEN: usize = 5;
/// The largest payload accepted (the state blob of 10,000 Services is a few MiB).
pub const MAX_PAYLOAD: u32 = 64 << 20;
/// What [`Hello::magic`] must say.
pub const MAGIC: &str = "sluice-handover";

/// One message of the protocol (see the module doc of `handover` for the sequence).
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Who speaks, first thing each way.
    Hello(Hello),
    /// old → new: the names of the sockets that follow, in order.
    Manifest(Manifest),
    /// old → new: `count` fds, the manifest's entries `first..first + count`.
    Fds { first: u32, count: u16 },
    /// old → new: the state worth keeping (JSON).
    State(serde_json::Value),
    /// old → new: nothing more follows before "ready".
    OfferEnd,
    /// new → old: configuration loaded, workers started (not accepting yet).
    Ready { pid: u32 },
    /// new → old: the new process cannot serve, and why. It exits after sending this.
    Failed(String),
    /// old → new: start accepting.
    Go,
    /// new → old: accepting now.
    Serving,
    /// old → new, right before "done" and only to a new process whose hello says
    /// [`Hello::final_counters`]: the old process's counter totals once it stopped
    /// answering `/metrics` (JSON, [`super::state::Counters`]).
    Counters(serde_json::Value),
    /// old → new: the old process stopped accepting; the new one is the daemon now.
    Done,
    /// old → new: give up (the new process exits without having accepted anything).
    Abort(String),
    /// old → new, between "ready" and "go" (protocol 2): UDP flows of one worker, each
    /// with its upstream socket (the frame's descriptors, in order; see `flows`).
    Flows(super::flows::FlowBatch),
}

/// The first frame each way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`]: something else on the fd is not a sluice.
    pub magic: String,
    /// Protocol version ([`super::PROTOCOL_VERSION`]).
    pub protocol: u32,
    /// The sluice version (`CARGO_PKG_VERSION`), for the log.
    pub version: String,
    pub pid: u32,
    /// New process: it reads a `counters` frame before "done" (absent = false: an older
    /// sluice, which would take the frame for a protocol error).
    #[serde(default)]
    pub final_counters: bool,
}

/// The sockets of a hand-over, by name, in the order their fds follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub sockets: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct ReadyPayload {
    pid: u32,
}

/// Bytes that are not a frame of this protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The kind byte is not one this version knows.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// The header announces more than [`MAX_PAYLOAD`] bytes.
    #[error("a {kind} frame of {len} bytes is larger than the {MAX_PAYLOAD}-byte limit")]
    TooLarge { kind: &'static str, len: u32 },
    /// The payload does not have the size its kind requires.
    #[error("a {kind} frame must carry {expected} bytes, not {got}")]
    Size {
        kind: &'static str,
        expected: usize,
        got: usize,
    },
    /// The payload does not parse (JSON, UTF-8).
    #[error("a {kind} frame does not parse: {detail}")]
    Payload { kind: &'static str, detail: String },
}

/// The kind byte of each frame.
mod kind {
    pub const HELLO: u8 = 1;
    pub const MANIFEST: u8 = 2;
    pub const FDS: u8 = 3;
    pub const STATE: u8 = 4;
    pub const OFFER_END: u8 = 5;
    pub const READY: u8 = 6;
    pub const FAILED: u8 = 7;
    pub const GO: u8 = 8;
    pub const SERVING: u8 = 9;
    pub const DONE: u8 = 10;
    pub const ABORT: u8 = 11;
    pub const FLOWS: u8 = 12;
    pub const COUNTERS: u8 = 13;
}

/// The name of a kind byte, for messages.
pub fn kind_name(k: u8) -> &'static str {
    match k {
        kind::HELLO => "hello",
        kind::MANIFEST => "manifest",
        kind::FDS => "fds",
        kind::STATE => "state",
        kind::OFFER_END => "offer-end",
        kind::READY => "ready",
        kind::FAILED => "failed",
        kind::GO => "go",
        kind::SERVING => "serving",
        kind::DONE => "done",
        kind::ABORT => "abort",
        kind::FLOWS => "flows",
        kind::COUNTERS => "counters",
        _ => "unknown",
    }
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Frame::Hello(_) => kind::HELLO,
            Frame::Manifest(_) => kind::MANIFEST,
            Frame::Fds { .. } => kind::FDS,
            Frame::State(_) => kind::STATE,
            Frame::OfferEnd => kind::OFFER_END,
            Frame::Ready { .. } => kind::READY,
            Frame::Failed(_) => kind::FAILED,
            Frame::Go => kind::GO,
            Frame::Serving => kind::SERVING,
            Frame::Done => kind::DONE,
            Frame::Abort(_) => kind::ABORT,
            Frame::Flows(_) => kind::FLOWS,
            Frame::Counters(_) => kind::COUNTERS,
        }
    }

    /// The frame's name, for messages ("a ready frame").
    pub fn name(&self) -> &'static str {
        kind_name(self.kind())
    }

    /// Header and payload. Fails only when the payload would exceed [`MAX_PAYLOAD`].
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let payload: Vec<u8> = match self {
            Frame::Hello(h) => json_bytes(h),
            Frame::Manifest(m) => json_bytes(m),
            Frame::Fds { first, count } => {
                let mut p = first.to_be_bytes().to_vec();
                p.extend_from_slice(&count.to_be_bytes());
                p
            }
            Frame::State(v) | Frame::Counters(v) => json_bytes(v),
            Frame::Flows(b) => json_bytes(b),
            Frame::Ready { pid } => json_bytes(&ReadyPayload { pid: *pid }),
            Frame::Failed(text) | Frame::Abort(text) => text.as_bytes().to_vec(),
            Frame::OfferEnd | Frame::Go | Frame::Serving | Frame::Done => Vec::new(),
        };
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&l| l <= MAX_PAYLOAD)
            .ok_or(FrameError::TooLarge {
                kind: self.name(),
                len: payload.len().min(u32::MAX as usize) as u32,
            })?;
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.push(self.kind());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }
}

/// Checks a header: returns the kind byte and the payload length to read.
pub fn decode_header(header: [u8; HEADER_LEN]) -> Result<(u8, u32), FrameError> {
    let k = header[0];
    if kind_name(k) == "unknown" {
        return Err(FrameError::UnknownKind(k));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge {
            kind: kind_name(k),
            len,
        });
    }
    let fixed = match k {
        kind::FDS => Some(6),
        kind::OFFER_END | kind::GO | kind::SERVING | kind::DONE => Some(0),
        _ => None,
    };
    if let Some(expected) = fixed.filter(|&e| e != len as usize) {
        return Err(FrameError::Size {
            kind: kind_name(k),
            expected,
            got: len as usize,
        });
    }
    Ok((k, len))
}

/// The frame of kind `k` (from [`decode_header`]) with this payload.
pub fn decode(k: u8, payload: &[u8]) -> Result<Frame, FrameError> {
    let name = kind_name(k);
    let bad = |detail: String| FrameError::Payload { kind: name, detail };
    let text = || {
        std::str::from_utf8(payload)
            .map(str::to_owned)
            .map_err(|e| bad(e.to_string()))
    };
    fn json<T: serde::de::DeserializeOwned>(p: &[u8]) -> Result<T, String> {
        serde_json::from_slice(p).map_err(|e| e.to_string())
    }
    Ok(match k {
        kind::HELLO => Frame::Hello(json(payload).map_err(bad)?),
        kind::MANIFEST => Frame::Manifest(json(payload).map_err(bad)?),
        kind::FDS => match payload {
            [a, b, c, d, e, f] => Frame::Fds {
                first: u32::from_be_bytes([*a, *b, *c, *d]),
                count: u16::from_be_bytes([*e, *f]),
            },
            _ => {
                return Err(FrameError::Size {
                    kind: name,
                    expected: 6,
                    got: payload.len(),
                })
            }
        },
        kind::STATE => Frame::State(json(payload).map_err(bad)?),
        kind::OFFER_END => Frame::OfferEnd,
        kind::READY => Frame::Ready {
            pid: json::<ReadyPayload>(payload).map_err(bad)?.pid,
        },
        kind::FAILED => Frame::Failed(text()?),
        kind::GO => Frame::Go,
        kind::SERVING => Frame::Serving,
        kind::DONE => Frame::Done,
        kind::ABORT => Frame::Abort(text()?),
        kind::FLOWS => Frame::Flows(json(payload).map_err(bad)?),
        kind::COUNTERS => Frame::Counters(json(payload).map_err(bad)?),
        other => return Err(FrameError::UnknownKind(other)),
    })
}

/// JSON of a payload. Serializing these types (strings, numbers, `serde_json::Value`)
/// cannot fail.
fn json_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) {
        let bytes = frame.encode().unwrap();
        let header: [u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().unwrap();
        let (k, len) = decode_header(header).unwrap();
        assert_eq!(len as usize, bytes.len() - HEADER_LEN);
        assert_eq!(decode(k, &bytes[HEADER_LEN..]).unwrap(), frame);
    }

    #[test]
    fn every_frame_round_trips() {
        round_trip(Frame::Hello(Hello {
            magic: MAGIC.into(),
            protocol: 1,
            version: "0.1.0".into(),
            pid: 42,
            final_counters: true,
        }));
        round_trip(Frame::Manifest(Manifest {
            sockets: vec!["tcp/0.0.0.0/30000/w0".into(), "control".into()],
        }));
        round_trip(Frame::Fds {
            first: 506,
            count: 253,
        });
        round_trip(Frame::State(serde_json::json!({"overrides": [1, 2]})));
        round_trip(Frame::OfferEnd);
        round_trip(Frame::Ready { pid: 7 });
        round_trip(Frame::Failed("config.toml:3:1: unknown key".into()));
        round_trip(Frame::Go);
        round_trip(Frame::Serving);
        round_trip(Frame::Done);
        round_trip(Frame::Counters(serde_json::json!({"reloads_ok": 3})));
        round_trip(Frame::Abort("timed out".into()));
        round_trip(Frame::Flows(super::super::flows::FlowBatch {
            worker: 1,
            flows: vec![serde_json::from_value(serde_json::json!({
                "client": "127.0.0.9:4000", "node": "127.0.0.1:30053",
                "bound": "0.0.0.0:30053", "service": 77, "endpoint": "[::1]:53",
                "idle_ms": 30000, "age_ms": 5, "quiet_ms": 1
            }))
            .unwrap()],
        }));
    }

    #[test]
    fn garbled_headers_are_errors() {
        assert_eq!(
            decode_header([0xff, 0, 0, 0, 0]),
            Err(FrameError::UnknownKind(0xff))
        );
        assert_eq!(
            decode_header([0, 0, 0, 0, 0]),
            Err(FrameError::UnknownKind(0))
        );
        let e = decode_header([kind::STATE, 0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(
            e.to_string().contains("state frame of 4294967295 bytes"),
            "{e}"
        );
        let e = decode_header([kind::GO, 0, 0, 0, 1]).unwrap_err();
        assert_eq!(e.to_string(), "a go frame must carry 0 bytes, not 1");
        let e = decode_header([kind::FDS, 0, 0, 0, 2]).unwrap_err();
        assert_eq!(e.to_string(), "a fds frame must carry 6 bytes, not 2");
    }

    #[test]
    fn garbled_payloads_are_errors_naming_the_frame() {
        for (k, payload, what) in [
            (kind::HELLO, &b"{not json"[..], "hello frame does not parse"),
            (
                kind::HELLO,
                &b"{\"magic\":1}"[..],
                "hello frame does not parse",
            ),
            (kind::MANIFEST, &b"[]"[..], "manifest frame does not parse"),
            (kind::READY, &b"{}"[..], "ready frame does not parse"),
            (kind::STATE, &b""[..], "state frame does not parse"),
            (
                kind::FAILED,
                &[0xff, 0xfe][..],
                "failed frame does not parse",
            ),
            (kind::ABORT, &[0xc3][..], "abort frame does not parse"),
            (kind::FDS, &[0, 0, 0][..], "must carry 6 bytes"),
            (
                kind::FLOWS,
                &b"{\"worker\":0}"[..],
                "flows frame does not parse",
            ),
            (
                kind::FLOWS,
                &b"{\"worker\":0,\"flows\":[{\"client\":\"nowhere\"}]}"[..],
                "flows frame does not parse",
            ),
            (
                kind::FLOWS,
                &b"{\"worker\":-1,\"flows\":[]}"[..],
                "flows frame does not parse",
            ),
            (kind::FLOWS, &[0xff, 0x00][..], "flows frame does not parse"),
        ] {
            let e = decode(k, payload).unwrap_err();
            assert!(e.to_string().contains(what), "{e}");
        }
    }

    #[test]
    fn a_payload_over_the_limit_is_not_encoded() {
        let big = "x".repeat(MAX_PAYLOAD as usize + 1);
        let e = Frame::Failed(big).encode().unwrap_err();
        assert!(
            matches!(e, FrameError::TooLarge { kind: "failed", .. }),
            "{e}"
        );
    }
}
