//! The player port's wire format from the client's side (docs/protocol.md 1.1, 1.2,
//! 1.4, 1.5): 4-byte big-endian length framing, the JSON envelope, and the typed
//! shapes of the answers and pushes the SDK reads.
//!
//! Owns: turning server bytes into [`ServerFrame`]s and [`Message`]s, and client
//! requests into frames. Pure: no sockets, no runtime, so it can be fuzzed alone
//! (`client/fuzz`, and the seeded randomized test in `tests/decoder_random.rs`).
//!
//! Invariants:
//! - No server bytes make anything here panic: every malformed input is a
//!   [`DecodeError`].
//! - A frame is refused from its 4 header bytes alone (zero length, or longer than the
//!   client's `max_frame_bytes`), so a hostile length never makes the client buffer or
//!   allocate a body it will refuse.
//! - "Need more bytes" is `Ok(None)`, never an error: frames may arrive split across
//!   any number of reads, and many may arrive in one.
//! - Unknown fields are ignored and unknown push `cmd`s decode to [`Push::Other`], so a
//!   newer server does not break an older client.

use std::fmt;

use serde::Deserialize;
use serde_json::{Map, Value};

/// Size of the length header in front of every body.
pub const HEADER_BYTES: usize = 4;

/// Largest server frame body the client accepts by default. The server's largest
/// frames (an `admitted` push with a token of at most a few KiB) are far below it.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 64 * 1024;

/// Why server bytes could not be understood. The connection is then dropped (and the
/// client reconnects: a garbled stream is treated like a broken one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The header says 0 bytes; the protocol forbids empty bodies.
    ZeroLength,
    /// The header announces a body longer than the client accepts.
    TooLong {
        /// Announced body length.
        len: u32,
        /// The client's limit (`max_frame_bytes`).
        max: u32,
    },
    /// The body is not a JSON object with the envelope's fields well typed.
    Json(String),
    /// A field of `data` is missing or ill-typed for this `cmd`.
    Field {
        /// The frame's `cmd`.
        cmd: String,
        /// The field.
        field: &'static str,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::ZeroLength => f.write_str("server frame length is 0"),
            DecodeError::TooLong { len, max } => {
                write!(
                    f,
                    "server frame length {len} exceeds the client's maximum of {max}"
                )
            }
            DecodeError::Json(e) => write!(f, "server frame is not a valid envelope: {e}"),
            DecodeError::Field { cmd, field } => {
                write!(
                    f,
                    "server `{cmd}` frame: field `{field}` missing or ill-typed"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Looks at the front of `buf`: `Ok(None)` needs more bytes, `Ok(Some(len))` means a
/// whole frame with a body of `len` bytes is at `buf[HEADER_BYTES..HEADER_BYTES + len]`.
/// Errors as soon as the 4 header bytes are there and say 0 or more than `max_body`.
pub fn check_frame(buf: &[u8], max_body: u32) -> Result<Option<usize>, DecodeError> {
    let Some(header) = buf.first_chunk::<HEADER_BYTES>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*header);
    if len == 0 {
        return Err(DecodeError::ZeroLength);
    }
    if len > max_body {
        return Err(DecodeError::TooLong { len, max: max_body });
    }
    let len = len as usize;
    if buf.len() - HEADER_BYTES < len {
        return Ok(None);
    }
    Ok(Some(len))
}

/// Takes the first whole frame off the front of `buf` and parses it; `Ok(None)` when
/// no whole frame is there yet (nothing is consumed then).
pub fn take_frame(buf: &mut Vec<u8>, max_body: u32) -> Result<Option<ServerFrame>, DecodeError> {
    let Some(len) = check_frame(buf, max_body)? else {
        return Ok(None);
    };
    let frame = parse_frame(&buf[HEADER_BYTES..HEADER_BYTES + len]);
    buf.drain(..HEADER_BYTES + len);
    frame.map(Some)
}

/// One server frame: the envelope of docs/protocol.md 1.2.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerFrame {
    /// The command answered or pushed (`""` for errors to unparsable requests).
    pub cmd: String,
    /// The request's `seq` for an answer; 0 for a push.
    pub seq: u32,
    /// Error code (docs/protocol.md 1.3), 0 = OK.
    pub code: u32,
    /// Human text accompanying the code.
    pub msg: String,
    /// The `data` object (empty when absent or null).
    pub data: Map<String, Value>,
}

/// The envelope as it comes off the wire: every field optional, so a frame missing one
/// still decodes (with the protocol's defaults), while an ill-typed one is an error.
#[derive(Deserialize)]
struct RawFrame {
    /// Command name.
    #[serde(default)]
    cmd: String,
    /// Echoed request number.
    #[serde(default)]
    seq: u32,
    /// Error code.
    #[serde(default)]
    code: u32,
    /// Error text.
    #[serde(default)]
    msg: String,
    /// Payload.
    #[serde(default)]
    data: Option<Map<String, Value>>,
}

/// Parses one frame body (the bytes after the length header).
pub fn parse_frame(body: &[u8]) -> Result<ServerFrame, DecodeError> {
    // serde_json bounds its recursion (128 levels), so deep nesting is an error, not a
    // stack overflow.
    let raw: RawFrame =
        serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))?;
    Ok(ServerFrame {
        cmd: raw.cmd,
        seq: raw.seq,
        code: raw.code,
        msg: raw.msg,
        data: raw.data.unwrap_or_default(),
    })
}

/// Where a waiting player stands (`position` push and answer, `login` answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// 1-based place; 1 is admitted next (0 once admitted).
    pub position: u64,
    /// Players waiting in the queue.
    pub queue_len: u64,
    /// Estimated wait in seconds; `None` while the server has measured no admissions.
    pub eta_secs: Option<u64>,
}

/// A `login` answer's `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginAnswer {
    /// `state: "admitted"`: the `admitted` push follows.
    pub admitted: bool,
    /// Where the player stands.
    pub standing: Standing,
    /// The user already held a place and got it back.
    pub resumed: bool,
    /// A cluster's place ticket: presented at the next `login`, it gets the place back
    /// on any node even if this one dies (absent on one node).
    pub place_ticket: Option<String>,
}

/// Why the server kicked a connection (`kicked` push, docs/protocol.md 1.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KickReason {
    /// Another connection logged in as the same user; this one must stop.
    DuplicateLogin,
    /// No frame from the client for `idle_timeout_secs`; the place is kept for the grace.
    IdleTimeout,
    /// The client did not read what it was sent.
    SlowConsumer,
    /// The server is stopping; come back after `retry_after_secs`.
    Shutdown,
    /// An operator removed the player.
    Removed,
    /// A reason this client does not know (a newer server).
    Other(String),
}

impl KickReason {
    /// The reason as the wire spells it.
    pub fn as_str(&self) -> &str {
        match self {
            KickReason::DuplicateLogin => "duplicate_login",
            KickReason::IdleTimeout => "idle_timeout",
            KickReason::SlowConsumer => "slow_consumer",
            KickReason::Shutdown => "shutdown",
            KickReason::Removed => "removed",
            KickReason::Other(s) => s,
        }
    }

    /// From the wire name.
    pub fn parse(s: &str) -> KickReason {
        match s {
            "duplicate_login" => KickReason::DuplicateLogin,
            "idle_timeout" => KickReason::IdleTimeout,
            "slow_consumer" => KickReason::SlowConsumer,
            "shutdown" => KickReason::Shutdown,
            "removed" => KickReason::Removed,
            other => KickReason::Other(other.to_string()),
        }
    }

    /// True when the client must not come back on its own: another connection holds
    /// the place now (`duplicate_login`) or an operator removed it (`removed`).
    pub fn is_final(&self) -> bool {
        matches!(self, KickReason::DuplicateLogin | KickReason::Removed)
    }
}

impl fmt::Display for KickReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A server push (a frame with `seq` 0 and `code` 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// `position`: the player's place changed.
    Position(Standing),
    /// `admitted`: the player may log in with `token`.
    Admitted {
        /// The admission token (a JWT) for the login server.
        token: String,
        /// When the token expires, unix seconds.
        expires_at: u64,
        /// Where to log in, when the server is configured with it.
        login_addr: Option<String>,
    },
    /// `kicked`: the server closes the connection right after.
    Kicked {
        /// Why.
        reason: KickReason,
        /// Seconds to wait before coming back (sent with `shutdown`).
        retry_after_secs: Option<u64>,
    },
    /// A push this client does not know; ignored.
    Other(String),
}

/// What a server frame is.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Not an answer.
    Push(Push),
    /// The answer to the request with this `seq` (the frame, for its code and data).
    Answer(ServerFrame),
}

/// Classifies a frame: `seq` 0 with `code` 0 is a push (the client never sends seq 0),
/// anything else answers a request.
pub fn classify(frame: ServerFrame) -> Result<Message, DecodeError> {
    if frame.seq != 0 || frame.code != 0 {
        return Ok(Message::Answer(frame));
    }
    let field = |field| DecodeError::Field {
        cmd: frame.cmd.clone(),
        field,
    };
    let push = match frame.cmd.as_str() {
        "position" => Push::Position(standing(&frame)?),
        "admitted" => Push::Admitted {
            token: frame
                .data
                .get("token")
                .and_then(Value::as_str)
                .ok_or_else(|| field("token"))?
                .to_string(),
            expires_at: frame
                .data
                .get("expires_at")
                .and_then(Value::as_u64)
                .ok_or_else(|| field("expires_at"))?,
            login_addr: opt_str(&frame, "login_addr")?,
        },
        "kicked" => Push::Kicked {
            reason: KickReason::parse(
                frame
                    .data
                    .get("reason")
                    .and_then(Value::as_str)
                    .ok_or_else(|| field("reason"))?,
            ),
            retry_after_secs: opt_u64(&frame, "retry_after_secs")?,
        },
        other => Push::Other(other.to_string()),
    };
    Ok(Message::Push(push))
}

/// `position`, `queue_len`, `eta_secs` of a frame's data.
pub fn standing(frame: &ServerFrame) -> Result<Standing, DecodeError> {
    Ok(Standing {
        position: req_u64(frame, "position")?,
        queue_len: req_u64(frame, "queue_len")?,
        eta_secs: opt_u64(frame, "eta_secs")?,
    })
}

/// The data of a successful `login` answer.
pub fn login_answer(frame: &ServerFrame) -> Result<LoginAnswer, DecodeError> {
    let admitted = match frame.data.get("state").and_then(Value::as_str) {
        Some("waiting") => false,
        Some("admitted") => true,
        _ => {
            return Err(DecodeError::Field {
                cmd: frame.cmd.clone(),
                field: "state",
            })
        }
    };
    // After admission the server answers position 0 and eta 0; tolerate absent fields
    // there (the push carries what matters).
    let standing = if admitted {
        Standing {
            position: 0,
            queue_len: opt_u64(frame, "queue_len")?.unwrap_or(0),
            eta_secs: Some(0),
        }
    } else {
        standing(frame)?
    };
    Ok(LoginAnswer {
        admitted,
        standing,
        resumed: frame
            .data
            .get("resumed")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        place_ticket: frame
            .data
            .get("place_ticket")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

fn req_u64(frame: &ServerFrame, field: &'static str) -> Result<u64, DecodeError> {
    frame
        .data
        .get(field)
        .and_then(Value::as_u64)
        .ok_or_else(|| DecodeError::Field {
            cmd: frame.cmd.clone(),
            field,
        })
}

/// Absent or null is `None`; anything but an unsigned integer is an error.
fn opt_u64(frame: &ServerFrame, field: &'static str) -> Result<Option<u64>, DecodeError> {
    match frame.data.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| DecodeError::Field {
            cmd: frame.cmd.clone(),
            field,
        }),
    }
}

/// Absent, null or empty is `None`.
fn opt_str(frame: &ServerFrame, field: &'static str) -> Result<Option<String>, DecodeError> {
    match frame.data.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(DecodeError::Field {
            cmd: frame.cmd.clone(),
            field,
        }),
    }
}

/// Every frame in `bytes` decoded as the client decodes a stream: what the fuzz target
/// and the randomized test drive. Stops at the first error (the client would drop the
/// connection there) or when the rest is an incomplete frame.
pub fn decode_stream(bytes: &[u8], max_body: u32) -> (Vec<Message>, Option<DecodeError>) {
    let mut buf = bytes.to_vec();
    let mut out = Vec::new();
    loop {
        match take_frame(&mut buf, max_body) {
            Ok(Some(frame)) => {
                let answer_data = match classify(frame) {
                    Ok(Message::Answer(f)) => f,
                    Ok(push) => {
                        out.push(push);
                        continue;
                    }
                    Err(e) => return (out, Some(e)),
                };
                // Answers are decoded further by what asked for them; exercise those too.
                if answer_data.code == 0 {
                    let _ = login_answer(&answer_data);
                    let _ = standing(&answer_data);
                }
                out.push(Message::Answer(answer_data));
            }
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// One request frame: header + `{"cmd", "seq", "data"}`.
pub fn encode_request(cmd: &str, seq: u32, data: Value) -> Vec<u8> {
    let body = serde_json::json!({"cmd": cmd, "seq": seq, "data": data}).to_string();
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: Value) -> Vec<u8> {
        let body = v.to_string();
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(body.as_bytes());
        out
    }

    #[test]
    fn split_and_batched_frames_decode() {
        let mut bytes = frame(
            serde_json::json!({"cmd":"position","seq":0,"code":0,"msg":"ok",
            "data":{"position":3,"queue_len":9,"eta_secs":null}}),
        );
        bytes.extend(frame(
            serde_json::json!({"cmd":"kicked","seq":0,"code":0,"msg":"ok",
            "data":{"reason":"shutdown","retry_after_secs":7}}),
        ));
        for cut in 0..bytes.len() {
            let mut buf = bytes[..cut].to_vec();
            let mut got = Vec::new();
            while let Some(f) = take_frame(&mut buf, 4096).unwrap() {
                got.push(classify(f).unwrap());
            }
            buf.extend_from_slice(&bytes[cut..]);
            while let Some(f) = take_frame(&mut buf, 4096).unwrap() {
                got.push(classify(f).unwrap());
            }
            assert_eq!(got.len(), 2);
            assert_eq!(
                got[1],
                Message::Push(Push::Kicked {
                    reason: KickReason::Shutdown,
                    retry_after_secs: Some(7)
                })
            );
        }
    }

    #[test]
    fn bad_headers_are_refused_from_the_header() {
        assert_eq!(check_frame(&[0, 0, 0, 0], 10), Err(DecodeError::ZeroLength));
        assert_eq!(
            check_frame(&[0, 0, 0, 11], 10),
            Err(DecodeError::TooLong { len: 11, max: 10 })
        );
        assert_eq!(check_frame(&[0, 0, 0], 10), Ok(None));
    }

    #[test]
    fn ill_typed_fields_are_errors() {
        let f =
            parse_frame(br#"{"cmd":"position","data":{"position":"x","queue_len":1}}"#).unwrap();
        assert!(matches!(
            classify(f),
            Err(DecodeError::Field {
                field: "position",
                ..
            })
        ));
        assert!(parse_frame(br#"{"cmd":1}"#).is_err());
        assert!(parse_frame(b"[1]").is_err());
        assert!(parse_frame(b"\xff\xfe").is_err());
    }
}
