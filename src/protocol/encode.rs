//! Response and push encoding (docs/protocol.md 1.3, 1.5): JSON written straight into the
//! caller's `BytesMut`, one complete frame per call.
//!
//! Owns: JSON string escaping and integer formatting without allocation, and the
//! envelope layout. Invariants: nothing here allocates (the buffer only grows if the
//! caller gave it too little capacity); strings are JSON-escaped; envelope fields are
//! always written in the order `cmd, seq, code, msg, data`.

use bytes::{BufMut, BytesMut};

use super::Code;
use crate::frame::{begin_frame, end_frame};

/// Writes `s` as a JSON string literal (quoted, escaped).
fn put_str(out: &mut BytesMut, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.put_u8(b'"');
    let mut plain_from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain_from..i]);
        plain_from = i + 1;
        if short.is_empty() {
            let hex = [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]];
            out.extend_from_slice(b"\\u00");
            out.extend_from_slice(&hex);
        } else {
            out.extend_from_slice(short);
        }
    }
    out.extend_from_slice(&bytes[plain_from..]);
    out.put_u8(b'"');
}

/// Writes `n` in decimal (also the bench's request encoders).
pub fn put_u64(out: &mut BytesMut, mut n: u64) {
    // u64::MAX has 20 digits.
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Writes `n` in decimal, or `null`.
fn put_opt_u64(out: &mut BytesMut, n: Option<u64>) {
    match n {
        Some(n) => put_u64(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// Starts a frame and writes the envelope up to and including `"data":`.
/// Returns the frame start for [`finish`].
fn begin(out: &mut BytesMut, cmd: &str, seq: u32, code: Code, msg: &str) -> usize {
    let start = begin_frame(out);
    out.extend_from_slice(b"{\"cmd\":");
    put_str(out, cmd);
    out.extend_from_slice(b",\"seq\":");
    put_u64(out, u64::from(seq));
    out.extend_from_slice(b",\"code\":");
    put_u64(out, u64::from(code as u8));
    out.extend_from_slice(b",\"msg\":");
    put_str(out, msg);
    out.extend_from_slice(b",\"data\":");
    start
}

/// Closes the envelope object and patches the frame header.
fn finish(out: &mut BytesMut, start: usize) {
    out.put_u8(b'}');
    end_frame(out, start);
}

/// Error response: `data` is `{}`. `cmd` is echoed from the request (see [`super::Cmd::as_str`]).
pub fn encode_error(out: &mut BytesMut, cmd: &str, seq: u32, code: Code, msg: &str) {
    debug_assert_ne!(code, Code::Ok, "encode_error with code OK");
    let start = begin(out, cmd, seq, code, msg);
    out.extend_from_slice(b"{}");
    finish(out, start);
}

/// Error response carrying `data.retry_after_secs` (for `SHUTTING_DOWN`).
pub fn encode_error_retry(
    out: &mut BytesMut,
    cmd: &str,
    seq: u32,
    code: Code,
    msg: &str,
    retry_after_secs: u64,
) {
    debug_assert_ne!(code, Code::Ok, "encode_error_retry with code OK");
    let start = begin(out, cmd, seq, code, msg);
    out.extend_from_slice(b"{\"retry_after_secs\":");
    put_u64(out, retry_after_secs);
    out.put_u8(b'}');
    finish(out, start);
}

/// What a successful `login` answer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginAnswer<'a> {
    /// `state` is `"admitted"` (else `"waiting"`).
    pub admitted: bool,
    /// `position`.
    pub position: u64,
    /// `queue_len`.
    pub queue_len: u64,
    /// `eta_secs` (`None` is `null`).
    pub eta_secs: Option<u64>,
    /// `resumed`.
    pub resumed: bool,
    /// `place_ticket` (cluster mode, waiting only; absent when `None`).
    pub place_ticket: Option<&'a str>,
}

/// Successful `login` response: `{"state","position","queue_len","eta_secs","resumed"}`,
/// then `"place_ticket"` when the answer has one (only in a cluster).
pub fn encode_login_ok(out: &mut BytesMut, seq: u32, a: &LoginAnswer<'_>) {
    let start = begin(out, "login", seq, Code::Ok, "ok");
    out.extend_from_slice(if a.admitted {
        b"{\"state\":\"admitted\",\"position\":"
    } else {
        b"{\"state\":\"waiting\",\"position\":"
    });
    put_u64(out, a.position);
    out.extend_from_slice(b",\"queue_len\":");
    put_u64(out, a.queue_len);
    out.extend_from_slice(b",\"eta_secs\":");
    put_opt_u64(out, a.eta_secs);
    out.extend_from_slice(if a.resumed {
        b",\"resumed\":true"
    } else {
        b",\"resumed\":false"
    });
    if let Some(ticket) = a.place_ticket {
        out.extend_from_slice(b",\"place_ticket\":");
        put_str(out, ticket);
    }
    out.put_u8(b'}');
    finish(out, start);
}

/// Successful `heartbeat` response: `{"ts","server_ms"}`. `ts` echoes the request's
/// `ts` and is always present: `null` when the request had none (a stable shape for
/// typed clients).
pub fn encode_heartbeat_ok(out: &mut BytesMut, seq: u32, ts: Option<u64>, server_ms: u64) {
    let start = begin(out, "heartbeat", seq, Code::Ok, "ok");
    out.extend_from_slice(b"{\"ts\":");
    put_opt_u64(out, ts);
    out.extend_from_slice(b",\"server_ms\":");
    put_u64(out, server_ms);
    out.put_u8(b'}');
    finish(out, start);
}

/// `position` response (seq from the request) or `position` push (seq 0):
/// `{"position","queue_len","eta_secs"}`, `eta_secs` `None` is `null`.
pub fn encode_position(
    out: &mut BytesMut,
    seq: u32,
    position: u64,
    queue_len: u64,
    eta_secs: Option<u64>,
) {
    let start = begin(out, "position", seq, Code::Ok, "ok");
    out.extend_from_slice(b"{\"position\":");
    put_u64(out, position);
    out.extend_from_slice(b",\"queue_len\":");
    put_u64(out, queue_len);
    out.extend_from_slice(b",\"eta_secs\":");
    put_opt_u64(out, eta_secs);
    out.put_u8(b'}');
    finish(out, start);
}

/// Successful `leave` response: `data` is `{}`.
pub fn encode_leave_ok(out: &mut BytesMut, seq: u32) {
    let start = begin(out, "leave", seq, Code::Ok, "ok");
    out.extend_from_slice(b"{}");
    finish(out, start);
}

/// `admitted` push: `{"token","expires_at","login_addr"}`, `login_addr` `None` is `null`.
pub fn encode_admitted(out: &mut BytesMut, token: &str, expires_at: u64, login_addr: Option<&str>) {
    let start = begin(out, "admitted", 0, Code::Ok, "ok");
    out.extend_from_slice(b"{\"token\":");
    put_str(out, token);
    out.extend_from_slice(b",\"expires_at\":");
    put_u64(out, expires_at);
    out.extend_from_slice(b",\"login_addr\":");
    match login_addr {
        Some(addr) => put_str(out, addr),
        None => out.extend_from_slice(b"null"),
    }
    out.put_u8(b'}');
    finish(out, start);
}

/// `kicked` push: `{"reason"}`, plus `"retry_after_secs"` only when given (omitted, not
/// `null`, when `None`: the protocol calls it optional).
pub fn encode_kicked(out: &mut BytesMut, reason: &str, retry_after_secs: Option<u64>) {
    let start = begin(out, "kicked", 0, Code::Ok, "ok");
    out.extend_from_slice(b"{\"reason\":");
    put_str(out, reason);
    if let Some(secs) = retry_after_secs {
        out.extend_from_slice(b",\"retry_after_secs\":");
        put_u64(out, secs);
    }
    out.put_u8(b'}');
    finish(out, start);
}
