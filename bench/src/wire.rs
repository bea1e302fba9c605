//! The client side of the player protocol: request frames encoded straight into a
//! buffer (with the server's own frame codec) and server frames decoded with sonic-rs,
//! borrowing from the read buffer.
//!
//! Invariants:
//! - encoders append whole frames (header patched by `queue_server::frame::end_frame`);
//! - decoding reads only the fields the bench needs; unknown fields are ignored, as
//!   the protocol requires of every client.

use bytes::BytesMut;
use queue_server::frame::{begin_frame, end_frame};
use queue_server::protocol::encode::put_u64;
use queue_server::protocol::Code;
use serde::Deserialize;

/// `{"cmd":"login","seq":seq,"data":{"user_id":user,"queue":queue}}`; `queue` is
/// omitted when it is the default one. Queue names are plain (the server's config
/// rules), so they need no escaping.
pub fn encode_login(out: &mut BytesMut, seq: u32, user: u64, queue: Option<&str>) {
    let start = begin_frame(out);
    out.extend_from_slice(b"{\"cmd\":\"login\",\"seq\":");
    put_u64(out, u64::from(seq));
    out.extend_from_slice(b",\"data\":{\"user_id\":");
    put_u64(out, user);
    if let Some(q) = queue {
        out.extend_from_slice(b",\"queue\":\"");
        out.extend_from_slice(q.as_bytes());
        out.extend_from_slice(b"\"");
    }
    out.extend_from_slice(b"}}");
    end_frame(out, start);
}

/// A request without data: `{"cmd":cmd,"seq":seq}` (`position`, `heartbeat`, `leave`).
pub fn encode_cmd(out: &mut BytesMut, cmd: &str, seq: u32) {
    let start = begin_frame(out);
    out.extend_from_slice(b"{\"cmd\":\"");
    out.extend_from_slice(cmd.as_bytes());
    out.extend_from_slice(b"\",\"seq\":");
    put_u64(out, u64::from(seq));
    out.extend_from_slice(b"}");
    end_frame(out, start);
}

/// One frame from the server (response or push). An echo server returns the request
/// itself: `code` then defaults to 0 and `data` to nothing, which reads as success.
#[derive(Debug, Deserialize)]
pub struct Reply<'a> {
    /// Command answered or pushed (`""` for unparsable requests).
    #[serde(borrow)]
    pub cmd: &'a str,
    /// Request seq; 0 for pushes.
    #[serde(default)]
    pub seq: u32,
    /// Protocol code.
    #[serde(default)]
    pub code: u8,
    /// The fields of `data` the bench reads.
    #[serde(default, borrow)]
    pub data: Option<ReplyData<'a>>,
}

/// Fields of `data` used by the scenarios.
#[derive(Debug, Default, Deserialize)]
pub struct ReplyData<'a> {
    /// `login`, `position`: 1-based position (0 once admitted).
    #[serde(default)]
    pub position: Option<u64>,
    /// `login`, `position`: players waiting.
    #[serde(default)]
    pub queue_len: Option<u64>,
    /// `admitted`: the token.
    #[serde(default, borrow)]
    pub token: Option<&'a str>,
    /// `kicked`: why.
    #[serde(default, borrow)]
    pub reason: Option<&'a str>,
}

/// Decodes one frame body; `None` when it is not a JSON object of that shape.
pub fn decode(body: &[u8]) -> Option<Reply<'_>> {
    sonic_rs::from_slice(body).ok()
}

/// `"8 RATE_LIMITED"`: the key errors are counted under.
pub fn code_key(code: u8) -> String {
    match Code::from_wire(code) {
        Some(c) => format!("{code} {}", c.name()),
        None => format!("{code} UNKNOWN_CODE"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use queue_server::frame::{check_frame, HEADER_BYTES};

    fn body(buf: &BytesMut) -> serde_json::Value {
        let len = check_frame(buf, 4096).unwrap().unwrap();
        assert_eq!(len + HEADER_BYTES, buf.len());
        serde_json::from_slice(&buf[HEADER_BYTES..]).unwrap()
    }

    #[test]
    fn requests_are_framed_json() {
        let mut b = BytesMut::new();
        encode_login(&mut b, 1, 18_446_744_073_709_551_615, None);
        assert_eq!(
            body(&b),
            serde_json::json!({"cmd":"login","seq":1,"data":{"user_id":18_446_744_073_709_551_615u64}})
        );
        let mut b = BytesMut::new();
        encode_login(&mut b, 7, 0, Some("world-1"));
        assert_eq!(body(&b)["data"]["queue"], "world-1");
        let mut b = BytesMut::new();
        encode_cmd(&mut b, "position", u32::MAX);
        assert_eq!(
            body(&b),
            serde_json::json!({"cmd":"position","seq":4_294_967_295u32})
        );
    }

    #[test]
    fn replies_decode_and_echoes_read_as_success() {
        let r = decode(br#"{"cmd":"login","seq":1,"code":0,"msg":"ok","data":{"state":"waiting","position":3,"queue_len":9,"eta_secs":null,"resumed":false}}"#).unwrap();
        assert_eq!((r.cmd, r.seq, r.code), ("login", 1, 0));
        assert_eq!(r.data.unwrap().position, Some(3));
        let r = decode(br#"{"cmd":"position","seq":5}"#).unwrap();
        assert_eq!((r.seq, r.code), (5, 0));
        let r = decode(br#"{"cmd":"admitted","seq":0,"code":0,"msg":"ok","data":{"token":"a.b.c","expires_at":1,"login_addr":null}}"#).unwrap();
        assert_eq!(r.data.unwrap().token, Some("a.b.c"));
        assert!(decode(b"not json").is_none());
    }

    #[test]
    fn code_keys_name_the_protocol_code() {
        assert_eq!(code_key(8), "8 RATE_LIMITED");
        assert_eq!(code_key(200), "200 UNKNOWN_CODE");
    }
}
