//! The player-port message layer (PROTOCOL.md 1.2-1.5): error codes, request parsing and
//! response/push encoding. Framing itself lives in [`crate::frame`].
//!
//! Owns: turning a frame body into a borrowed [`Request`] (and its `data` into per-command
//! shapes), and writing every response and push as a complete frame into a `BytesMut`.
//!
//! Invariants:
//! - Zero heap allocations on the hot path: parsing `heartbeat` / `position` requests
//!   (with or without `seq`, `data`, `ts`, unknown fields) borrows everything from the
//!   body, and every encoder writes JSON straight into the caller's buffer (which only
//!   grows if the caller gave it too little capacity). `tests/alloc_hot_path.rs` proves it.
//!   Only strings containing JSON escapes are copied (`Cow::Owned`), and only errors
//!   allocate their message.
//! - A body is accepted only if it is UTF-8, exactly one JSON object (nothing but
//!   whitespace after it) and nested at most [`MAX_JSON_DEPTH`] levels. The depth is
//!   checked by a byte scan *before* sonic-rs sees the body: sonic-rs skips ignored
//!   values and captures raw values recursively with no depth limit, so without the scan
//!   a 4 KiB frame of `[` overflows the stack (see [`MAX_JSON_DEPTH`]).
//! - A field that is present must have its type: `null` is not the same as absent (a
//!   `"seq": null` is `BadField`). Unknown fields are ignored; a known field given twice
//!   is `BadField`, so two parsers can never disagree about which copy counts.
//! - A `ver` other than [`PROTOCOL_VERSION`] parses fine; the caller answers `UNSUPPORTED`.
//! - Encoded strings are JSON-escaped; envelope fields are always written in the order
//!   `cmd, seq, code, msg, data`.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use bytes::{BufMut, BytesMut};
use serde::de::{self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use crate::frame::{begin_frame, end_frame};

/// The protocol version this server speaks; also the `ver` of a request that omits it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Deepest nesting of objects/arrays accepted in a request body (the envelope itself is
/// level 1, `data` level 2). Deeper bodies are refused before parsing. Why this small:
/// sonic-rs 0.5 skips ignored values and captures raw ones by unbounded recursion, which
/// in a debug build costs ~50 KiB of stack per level (a 2 MiB thread overflows at ~40
/// levels; in release ~10k-30k levels). 16 leaves room for clients' extension fields.
pub const MAX_JSON_DEPTH: u32 = 16;

/// Queue a `login` joins when its `data.queue` is absent.
pub const DEFAULT_QUEUE: &str = "default";

/// What [`Cmd::Unknown`] carries when the unknown command name contained JSON escapes:
/// the borrowed body holds only the escaped text, and copying it would allocate, so the
/// `UNSUPPORTED` answer echoes this fixed name instead.
pub const ESCAPED_CMD_FALLBACK: &str = "unknown";

/// Result code of a response (PROTOCOL.md 1.3); the discriminant is the wire value.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// Success.
    Ok = 0,
    /// Not a frame, not JSON, not an object, missing or ill-typed `cmd` or field.
    BadFrame = 1,
    /// Unknown `cmd` or `ver`.
    Unsupported = 2,
    /// Any command but `login` before a successful `login`.
    NotLoggedIn = 3,
    /// Ticket missing, malformed, badly signed or expired.
    AuthFailed = 4,
    /// The queue already holds `max_waiting` players.
    QueueFull = 5,
    /// No queue by that name (and auto-create is off).
    UnknownQueue = 6,
    /// A second `login` on the same connection.
    AlreadyLoggedIn = 7,
    /// Too many logins per second on this core, or connections from one address.
    RateLimited = 8,
    /// The server is draining; `data.retry_after_secs` says when to come back.
    ShuttingDown = 9,
    /// A bug; logged server-side.
    Internal = 10,
}

impl Code {
    /// The name used in PROTOCOL.md, e.g. `"BAD_FRAME"`.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::BadFrame => "BAD_FRAME",
            Code::Unsupported => "UNSUPPORTED",
            Code::NotLoggedIn => "NOT_LOGGED_IN",
            Code::AuthFailed => "AUTH_FAILED",
            Code::QueueFull => "QUEUE_FULL",
            Code::UnknownQueue => "UNKNOWN_QUEUE",
            Code::AlreadyLoggedIn => "ALREADY_LOGGED_IN",
            Code::RateLimited => "RATE_LIMITED",
            Code::ShuttingDown => "SHUTTING_DOWN",
            Code::Internal => "INTERNAL",
        }
    }

    /// Whether the server closes the connection after sending this code.
    pub fn closes(self) -> bool {
        match self {
            Code::BadFrame
            | Code::NotLoggedIn
            | Code::AuthFailed
            | Code::QueueFull
            | Code::UnknownQueue
            | Code::RateLimited
            | Code::ShuttingDown => true,
            Code::Ok | Code::Unsupported | Code::AlreadyLoggedIn | Code::Internal => false,
        }
    }
}

/// The command of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd<'a> {
    /// `login`: join (or rejoin) a queue; must be the first frame.
    Login,
    /// `heartbeat`: keep-alive, echoes `ts`.
    Heartbeat,
    /// `position`: ask for the current place in the queue.
    Position,
    /// `leave`: give up the place; the server then closes.
    Leave,
    /// Any other name, borrowed from the body so the `UNSUPPORTED` answer can echo it
    /// (or [`ESCAPED_CMD_FALLBACK`] if the name contained JSON escapes).
    Unknown(&'a str),
}

impl<'a> Cmd<'a> {
    /// The command named `name`; unknown names become [`Cmd::Unknown`].
    pub fn from_name(name: &'a str) -> Cmd<'a> {
        known_cmd(name).unwrap_or(Cmd::Unknown(name))
    }

    /// The wire name, to echo in the response.
    pub fn as_str(&self) -> &'a str {
        match *self {
            Cmd::Login => "login",
            Cmd::Heartbeat => "heartbeat",
            Cmd::Position => "position",
            Cmd::Leave => "leave",
            Cmd::Unknown(name) => name,
        }
    }
}

fn known_cmd(name: &str) -> Option<Cmd<'static>> {
    match name {
        "login" => Some(Cmd::Login),
        "heartbeat" => Some(Cmd::Heartbeat),
        "position" => Some(Cmd::Position),
        "leave" => Some(Cmd::Leave),
        _ => None,
    }
}

/// A parsed request envelope, borrowing from the frame body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// What the client asks for.
    pub cmd: Cmd<'a>,
    /// Client-chosen sequence number, echoed in the response (0 when absent).
    pub seq: u32,
    /// Protocol version the client speaks (1 when absent); the caller answers
    /// `UNSUPPORTED` to anything but [`PROTOCOL_VERSION`].
    pub ver: u32,
    /// Raw JSON text of `data` (always an object, `{` .. `}`), `None` when absent; the
    /// per-command parsers ([`parse_login`], [`parse_heartbeat`]) read it.
    pub data: Option<&'a str>,
}

/// Why a body is not an acceptable request; every variant is answered with `BAD_FRAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequest {
    /// The body is not valid UTF-8.
    NotUtf8,
    /// The body is not valid JSON (including trailing bytes after the object).
    NotJson,
    /// The body is JSON, but not an object.
    NotObject,
    /// Objects/arrays nested deeper than allowed.
    TooDeep {
        /// The deepest nesting accepted ([`MAX_JSON_DEPTH`]).
        max_depth: u32,
    },
    /// The envelope has no `cmd`.
    MissingCmd,
    /// A required field of a command's `data` is absent.
    MissingField {
        /// Name of the absent field.
        field: &'static str,
    },
    /// A field has the wrong type or is out of range (or is given twice).
    BadField {
        /// Name of the offending field.
        field: &'static str,
    },
}

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadRequest::NotUtf8 => f.write_str("body is not valid UTF-8"),
            BadRequest::NotJson => f.write_str("body is not valid JSON"),
            BadRequest::NotObject => f.write_str("body is not a JSON object"),
            BadRequest::TooDeep { max_depth } => {
                write!(f, "JSON nested deeper than {max_depth} levels")
            }
            BadRequest::MissingCmd => f.write_str("missing `cmd`"),
            BadRequest::MissingField { field } => write!(f, "missing field `{field}`"),
            BadRequest::BadField { field } => {
                write!(f, "field `{field}` has the wrong type or value")
            }
        }
    }
}

impl std::error::Error for BadRequest {}

/// Parses a frame body into a request envelope, borrowing from `body`.
/// Does not allocate unless a string contains JSON escapes or the body is refused.
pub fn parse_request(body: &[u8]) -> Result<Request<'_>, BadRequest> {
    let text = std::str::from_utf8(body).map_err(|_| BadRequest::NotUtf8)?;
    match text.bytes().find(|b| !is_json_space(*b)) {
        Some(b'{') => {}
        Some(b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
            return Err(BadRequest::NotObject)
        }
        _ => return Err(BadRequest::NotJson),
    }
    let env = parse_object(text, Envelope::default())?;
    Ok(Request {
        cmd: env.cmd.ok_or(BadRequest::MissingCmd)?,
        seq: env.seq.unwrap_or(0),
        ver: env.ver.unwrap_or(PROTOCOL_VERSION),
        data: env.data,
    })
}

/// `data` of a `login` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginData<'a> {
    /// The player's account id (required).
    pub user_id: u64,
    /// Queue to join; [`DEFAULT_QUEUE`] when absent. Owned only if it contained escapes.
    pub queue: Cow<'a, str>,
    /// Login ticket (a JWT) when given; required unless `auth.mode = "none"`, which the
    /// caller decides. Owned only if it contained escapes.
    pub ticket: Option<Cow<'a, str>>,
}

/// Reads the `data` of a `login` request (whatever `req.cmd` says).
pub fn parse_login<'a>(req: &Request<'a>) -> Result<LoginData<'a>, BadRequest> {
    const USER_ID: &str = "user_id";
    let Some(data) = req.data else {
        return Err(BadRequest::MissingField { field: USER_ID });
    };
    let login = parse_object(data, LoginFields::default())?;
    Ok(LoginData {
        user_id: login
            .user_id
            .ok_or(BadRequest::MissingField { field: USER_ID })?,
        queue: login.queue.unwrap_or(Cow::Borrowed(DEFAULT_QUEUE)),
        ticket: login.ticket,
    })
}

/// Reads the `data` of a `heartbeat` request: the optional `ts` to echo.
/// Never allocates on success.
pub fn parse_heartbeat(req: &Request<'_>) -> Result<Option<u64>, BadRequest> {
    match req.data {
        None => Ok(None),
        Some(data) => Ok(parse_object(data, HeartbeatFields::default())?.ts),
    }
}

// ---------------------------------------------------------------------------------------
// Parsing machinery: one generic object visitor, a field table per shape.

/// JSON insignificant whitespace.
fn is_json_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Whether no object/array in `body` is nested deeper than `max_depth`. Brackets inside
/// strings do not count. On malformed JSON the answer may be wrong, but only past the
/// point where the parser stops with an error anyway, so the parser never recurses
/// deeper than `max_depth`.
pub fn depth_within(body: &[u8], max_depth: u32) -> bool {
    // Fast path, vectorised: with few brackets in total, no nesting can be deep.
    let brackets = body.iter().filter(|&&b| b == b'{' || b == b'[').count();
    if brackets <= max_depth as usize {
        return true;
    }
    let mut depth = 0u32;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// A JSON object shape: the field names it knows and how to read each one.
trait Fields<'de> {
    /// Known field names; a field's index in this list is passed to [`Fields::read`].
    const NAMES: &'static [&'static str];
    /// Reads the value of known field `NAMES[index]` from `map`.
    fn read<A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error>;
}

/// Parses `text` as exactly one JSON object of shape `T` (after the depth check).
fn parse_object<'de, T: Fields<'de>>(text: &'de str, fields: T) -> Result<T, BadRequest> {
    if !depth_within(text.as_bytes(), MAX_JSON_DEPTH) {
        return Err(BadRequest::TooDeep {
            max_depth: MAX_JSON_DEPTH,
        });
    }
    // Name of the field whose value is being read, to attribute a type error to it.
    let current = Cell::new(None);
    let mut de = sonic_rs::Deserializer::from_str(text);
    let parsed = (&mut de)
        .deserialize_map(ObjectVisitor {
            current: &current,
            fields,
        })
        .and_then(|fields| de.end().map(|()| fields));
    parsed.map_err(|err| match current.get() {
        Some(field) if !err.is_syntax() && !err.is_eof() => BadRequest::BadField { field },
        _ => BadRequest::NotJson,
    })
}

/// Serde visitor driving a [`Fields`] shape over one object.
struct ObjectVisitor<'c, T> {
    /// Set to the field being read while its value is parsed, `None` otherwise.
    current: &'c Cell<Option<&'static str>>,
    /// The shape being filled in.
    fields: T,
}

impl<'de, T: Fields<'de>> Visitor<'de> for ObjectVisitor<'_, T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<T, A::Error> {
        let mut seen = 0u64;
        while let Some(key) = map.next_key_seed(KeySeed(T::NAMES))? {
            let Some(index) = key else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            self.current.set(Some(T::NAMES[index]));
            if seen & (1 << index) != 0 {
                return Err(de::Error::custom("duplicate field"));
            }
            seen |= 1 << index;
            self.fields.read(index, &mut map)?;
            self.current.set(None);
        }
        Ok(self.fields)
    }
}

/// Reads an object key as its index in a field table (`None`: unknown, to be skipped).
/// Works for escaped keys too (the deserializer hands over the unescaped text).
struct KeySeed(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|name| *name == key))
    }
}

/// The envelope's known fields, as read.
#[derive(Default)]
struct Envelope<'a> {
    /// `cmd`, required.
    cmd: Option<Cmd<'a>>,
    /// `seq`, default 0.
    seq: Option<u32>,
    /// `ver`, default 1.
    ver: Option<u32>,
    /// Raw text of `data`, an object.
    data: Option<&'a str>,
}

impl<'de> Fields<'de> for Envelope<'de> {
    const NAMES: &'static [&'static str] = &["cmd", "seq", "ver", "data"];

    fn read<A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error> {
        match index {
            0 => self.cmd = Some(map.next_value::<CmdName<'de>>()?.0),
            1 => self.seq = Some(map.next_value()?),
            2 => self.ver = Some(map.next_value()?),
            _ => self.data = Some(map.next_value::<RawObject<'de>>()?.0),
        }
        Ok(())
    }
}

/// `login` data fields, as read.
#[derive(Default)]
struct LoginFields<'a> {
    /// `user_id`, required.
    user_id: Option<u64>,
    /// `queue`, default [`DEFAULT_QUEUE`].
    queue: Option<Cow<'a, str>>,
    /// `ticket`, optional here.
    ticket: Option<Cow<'a, str>>,
}

impl<'de> Fields<'de> for LoginFields<'de> {
    const NAMES: &'static [&'static str] = &["user_id", "queue", "ticket"];

    fn read<A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error> {
        match index {
            0 => self.user_id = Some(map.next_value()?),
            1 => self.queue = Some(map.next_value::<CowStr<'de>>()?.0),
            _ => self.ticket = Some(map.next_value::<CowStr<'de>>()?.0),
        }
        Ok(())
    }
}

/// `heartbeat` data fields, as read.
#[derive(Default)]
struct HeartbeatFields {
    /// `ts`, the client's clock, echoed.
    ts: Option<u64>,
}

impl<'de> Fields<'de> for HeartbeatFields {
    const NAMES: &'static [&'static str] = &["ts"];

    fn read<A: MapAccess<'de>>(&mut self, _index: usize, map: &mut A) -> Result<(), A::Error> {
        self.ts = Some(map.next_value()?);
        Ok(())
    }
}

/// A `cmd` value: must be a string.
struct CmdName<'a>(Cmd<'a>);

impl<'de> Deserialize<'de> for CmdName<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CmdName<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a command name")
            }
            fn visit_borrowed_str<E: de::Error>(self, name: &'de str) -> Result<Self::Value, E> {
                Ok(CmdName(Cmd::from_name(name)))
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
                // Unescaped into scratch space that we cannot keep: see ESCAPED_CMD_FALLBACK.
                Ok(CmdName(
                    known_cmd(name).unwrap_or(Cmd::Unknown(ESCAPED_CMD_FALLBACK)),
                ))
            }
        }
        d.deserialize_str(V)
    }
}

/// A string value, borrowed unless it contained escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The raw text of an object value, validated but not parsed.
struct RawObject<'a>(&'a str);

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = sonic_rs::LazyValue::deserialize(d)?;
        if value.as_raw_str().starts_with('{') {
            // sonic-rs copies a raw value only for a top-level string with escapes, so
            // an object is always borrowed from the body.
            if let Cow::Borrowed(raw) = value.as_raw_cow() {
                return Ok(RawObject(raw));
            }
        }
        Err(de::Error::invalid_type(
            de::Unexpected::Other("a non-object value"),
            &"a JSON object",
        ))
    }
}

// ---------------------------------------------------------------------------------------
// Encoding: JSON written straight into the output buffer, one complete frame per call.

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

/// Writes `n` in decimal.
fn put_u64(out: &mut BytesMut, mut n: u64) {
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

/// Error response: `data` is `{}`. `cmd` is echoed from the request (see [`Cmd::as_str`]).
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

/// Successful `login` response: `{"state","position","queue_len","eta_secs","resumed"}`;
/// `state` is `"admitted"` when `admitted`, else `"waiting"`; `eta_secs` `None` is `null`.
pub fn encode_login_ok(
    out: &mut BytesMut,
    seq: u32,
    admitted: bool,
    position: u64,
    queue_len: u64,
    eta_secs: Option<u64>,
    resumed: bool,
) {
    let start = begin(out, "login", seq, Code::Ok, "ok");
    out.extend_from_slice(if admitted {
        b"{\"state\":\"admitted\",\"position\":"
    } else {
        b"{\"state\":\"waiting\",\"position\":"
    });
    put_u64(out, position);
    out.extend_from_slice(b",\"queue_len\":");
    put_u64(out, queue_len);
    out.extend_from_slice(b",\"eta_secs\":");
    put_opt_u64(out, eta_secs);
    out.extend_from_slice(if resumed {
        b",\"resumed\":true}"
    } else {
        b",\"resumed\":false}"
    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{check_frame, HEADER_BYTES};
    use serde_json::{json, Value};

    fn parse(body: &str) -> Result<Request<'_>, BadRequest> {
        parse_request(body.as_bytes())
    }

    fn bad_field(field: &'static str) -> Result<Request<'static>, BadRequest> {
        Err(BadRequest::BadField { field })
    }

    #[test]
    fn valid_login() {
        let body =
            r#"{"cmd":"login","seq":1,"data":{"user_id":42,"queue":"world-1","ticket":"t.k.n"}}"#;
        let req = parse(body).unwrap();
        assert_eq!(req.cmd, Cmd::Login);
        assert_eq!(req.seq, 1);
        assert_eq!(req.ver, 1);
        assert_eq!(
            req.data,
            Some(r#"{"user_id":42,"queue":"world-1","ticket":"t.k.n"}"#)
        );
        let login = parse_login(&req).unwrap();
        assert_eq!(login.user_id, 42);
        assert_eq!(login.queue, "world-1");
        assert!(matches!(login.queue, Cow::Borrowed(_)));
        assert_eq!(login.ticket.as_deref(), Some("t.k.n"));
    }

    #[test]
    fn login_defaults_and_errors() {
        let req = parse(r#"{"cmd":"login","data":{"user_id":18446744073709551615}}"#).unwrap();
        let login = parse_login(&req).unwrap();
        assert_eq!(login.user_id, u64::MAX);
        assert_eq!(login.queue, DEFAULT_QUEUE);
        assert_eq!(login.ticket, None);

        let missing = Err(BadRequest::MissingField { field: "user_id" });
        assert_eq!(parse_login(&parse(r#"{"cmd":"login"}"#).unwrap()), missing);
        assert_eq!(
            parse_login(&parse(r#"{"cmd":"login","data":{"queue":"q"}}"#).unwrap()),
            missing
        );
        for (data, field) in [
            (r#"{"user_id":"42"}"#, "user_id"),
            (r#"{"user_id":-1}"#, "user_id"),
            (r#"{"user_id":1.5}"#, "user_id"),
            (r#"{"user_id":18446744073709551616}"#, "user_id"),
            (r#"{"user_id":null}"#, "user_id"),
            (r#"{"user_id":1,"queue":7}"#, "queue"),
            (r#"{"user_id":1,"ticket":{}}"#, "ticket"),
            (r#"{"user_id":1,"ticket":null}"#, "ticket"),
            (r#"{"user_id":1,"user_id":2}"#, "user_id"),
        ] {
            let body = format!(r#"{{"cmd":"login","data":{data}}}"#);
            let req = parse(&body).unwrap();
            assert_eq!(
                parse_login(&req),
                Err(BadRequest::BadField { field }),
                "{data}"
            );
        }
    }

    #[test]
    fn escaped_strings_in_queue_and_ticket() {
        let body = r#"{"cmd":"login","data":{"user_id":7,"queue":"w\u00f6rld-\"1\"","ticket":"a\/b\\c\n"}}"#;
        let req = parse(body).unwrap();
        let login = parse_login(&req).unwrap();
        assert_eq!(login.queue, "wörld-\"1\"");
        assert_eq!(login.ticket.as_deref(), Some("a/b\\c\n"));
        // Escaped keys are matched by their unescaped name.
        let req = parse(r#"{"c\u006dd":"login","data":{"user_\u0069d":9}}"#).unwrap();
        assert_eq!(req.cmd, Cmd::Login);
        assert_eq!(parse_login(&req).unwrap().user_id, 9);
    }

    #[test]
    fn valid_heartbeat() {
        let req =
            parse(r#"{"cmd":"heartbeat","seq":4294967295,"data":{"ts":1700000000123}}"#).unwrap();
        assert_eq!(req.cmd, Cmd::Heartbeat);
        assert_eq!(req.seq, u32::MAX);
        assert_eq!(parse_heartbeat(&req), Ok(Some(1_700_000_000_123)));

        let req = parse(r#" { "cmd" : "heartbeat" } "#).unwrap();
        assert_eq!((req.seq, req.ver, req.data), (0, 1, None));
        assert_eq!(parse_heartbeat(&req), Ok(None));

        let req = parse(r#"{"cmd":"heartbeat","data":{}}"#).unwrap();
        assert_eq!(parse_heartbeat(&req), Ok(None));

        for data in [
            r#"{"ts":-5}"#,
            r#"{"ts":"5"}"#,
            r#"{"ts":null}"#,
            r#"{"ts":1e3}"#,
        ] {
            let body = format!(r#"{{"cmd":"heartbeat","data":{data}}}"#);
            assert_eq!(
                parse_heartbeat(&parse(&body).unwrap()),
                Err(BadRequest::BadField { field: "ts" }),
                "{data}"
            );
        }
    }

    #[test]
    fn valid_position_and_leave() {
        let req = parse(r#"{"cmd":"position","seq":3}"#).unwrap();
        assert_eq!((req.cmd, req.seq), (Cmd::Position, 3));
        let req = parse(r#"{"seq":9,"cmd":"leave","data":{}}"#).unwrap();
        assert_eq!((req.cmd, req.seq, req.data), (Cmd::Leave, 9, Some("{}")));
    }

    #[test]
    fn unknown_cmd_and_version_are_not_parse_errors() {
        let req = parse(r#"{"cmd":"dance","seq":5}"#).unwrap();
        assert_eq!(req.cmd, Cmd::Unknown("dance"));
        assert_eq!(req.cmd.as_str(), "dance");
        let req = parse(r#"{"cmd":"d\u0061nce"}"#).unwrap();
        assert_eq!(req.cmd, Cmd::Unknown(ESCAPED_CMD_FALLBACK));
        let req = parse(r#"{"cmd":"heartbe\u0061t"}"#).unwrap();
        assert_eq!(req.cmd, Cmd::Heartbeat);
        let req = parse(r#"{"cmd":"position","ver":2}"#).unwrap();
        assert_eq!(req.ver, 2);
    }

    #[test]
    fn unknown_fields_ignored() {
        let body = r#"{"x":[1,{"y":"}]\"["}],"cmd":"position","z":null,"data":{"q":[true,false],"r":{}},"w":-1.5e3}"#;
        let req = parse(body).unwrap();
        assert_eq!(req.cmd, Cmd::Position);
        assert_eq!(req.data, Some(r#"{"q":[true,false],"r":{}}"#));
    }

    #[test]
    fn missing_or_ill_typed_cmd() {
        assert_eq!(parse(r#"{"seq":1}"#), Err(BadRequest::MissingCmd));
        assert_eq!(parse("{}"), Err(BadRequest::MissingCmd));
        assert_eq!(parse(r#"{"cmd":1}"#), bad_field("cmd"));
        assert_eq!(parse(r#"{"cmd":null}"#), bad_field("cmd"));
        assert_eq!(parse(r#"{"cmd":["login"]}"#), bad_field("cmd"));
        assert_eq!(parse(r#"{"cmd":"login","cmd":"leave"}"#), bad_field("cmd"));
    }

    #[test]
    fn seq_and_ver_types() {
        for seq in [
            "-1",
            "1.5",
            "1.0",
            "4294967296",
            "99999999999999999999",
            "\"1\"",
            "null",
            "true",
            "{}",
        ] {
            let body = format!(r#"{{"cmd":"position","seq":{seq}}}"#);
            assert_eq!(parse(&body), bad_field("seq"), "seq {seq}");
        }
        for ver in ["-1", "\"1\"", "1.5", "null"] {
            let body = format!(r#"{{"cmd":"position","ver":{ver}}}"#);
            assert_eq!(parse(&body), bad_field("ver"), "ver {ver}");
        }
        assert_eq!(parse(r#"{"cmd":"position","seq":0}"#).unwrap().seq, 0);
    }

    #[test]
    fn data_must_be_an_object() {
        for data in ["[]", "1", "\"x\"", "\"\\u0041\"", "null", "true"] {
            let body = format!(r#"{{"cmd":"login","data":{data}}}"#);
            assert_eq!(parse(&body), bad_field("data"), "data {data}");
        }
    }

    #[test]
    fn not_json_not_object() {
        assert_eq!(parse(""), Err(BadRequest::NotJson));
        assert_eq!(parse("   "), Err(BadRequest::NotJson));
        assert_eq!(parse("hello"), Err(BadRequest::NotJson));
        assert_eq!(parse(r#"{"cmd":"login""#), Err(BadRequest::NotJson));
        assert_eq!(parse(r#"{"cmd":"login",}"#), Err(BadRequest::NotJson));
        assert_eq!(parse(r#"{cmd:"login"}"#), Err(BadRequest::NotJson));
        assert_eq!(
            parse(r#"{"cmd":"login","seq":1x}"#),
            Err(BadRequest::NotJson)
        );
        assert_eq!(
            parse(r#"{"cmd":"x","data":{"a":}}"#),
            Err(BadRequest::NotJson)
        );
        assert_eq!(parse(r#"["cmd","login"]"#), Err(BadRequest::NotObject));
        assert_eq!(parse(r#"[{"cmd":"login"}]"#), Err(BadRequest::NotObject));
        assert_eq!(parse(r#""login""#), Err(BadRequest::NotObject));
        assert_eq!(parse("42"), Err(BadRequest::NotObject));
        assert_eq!(parse("null"), Err(BadRequest::NotObject));
    }

    #[test]
    fn invalid_utf8() {
        assert_eq!(
            parse_request(b"{\"cmd\":\"\xff\"}"),
            Err(BadRequest::NotUtf8)
        );
        assert_eq!(parse_request(b"\xc3"), Err(BadRequest::NotUtf8));
    }

    #[test]
    fn trailing_garbage() {
        assert_eq!(parse(r#"{"cmd":"position"}x"#), Err(BadRequest::NotJson));
        assert_eq!(
            parse(r#"{"cmd":"position"}{"cmd":"position"}"#),
            Err(BadRequest::NotJson)
        );
        assert_eq!(parse(r#"{"cmd":"position"}}"#), Err(BadRequest::NotJson));
        assert!(parse("{\"cmd\":\"position\"} \r\n\t").is_ok());
        let req = parse(r#"{"cmd":"heartbeat","data":{"ts":1}}"#).unwrap();
        // The data parsers also refuse trailing bytes (they only see `data`'s own text).
        assert_eq!(parse_heartbeat(&req), Ok(Some(1)));
    }

    /// Runs `f` on a thread with a stack no bigger than a default spawned thread's, so a
    /// recursion bug shows up as a crash here rather than passing on a big main stack.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn deep_nesting_rejected_without_crashing() {
        let too_deep = BadRequest::TooDeep {
            max_depth: MAX_JSON_DEPTH,
        };
        on_small_stack(move || {
            let n = 100_000;
            let deep = format!("{}{}", "[".repeat(n), "]".repeat(n));
            let bodies = [
                format!(r#"{{"cmd":"position","junk":{deep}}}"#),
                format!(r#"{{"cmd":"position","data":{{"a":{deep}}}}}"#),
                format!(r#"{{"cmd":"position","junk":{}"#, "[".repeat(n)),
                format!(r#"{{"cmd":"position","junk":{}"#, "{\"a\":".repeat(n)),
                "{".repeat(n),
                deep.clone(),
            ];
            for body in &bodies {
                let got = parse(body);
                assert!(
                    got == Err(too_deep) || got == Err(BadRequest::NotObject),
                    "{got:?}"
                );
            }
            assert_eq!(parse(&bodies[0]), Err(too_deep));
            assert_eq!(parse(&bodies[1]), Err(too_deep));
        });
    }

    #[test]
    fn nesting_up_to_the_limit_parses_on_a_small_stack() {
        on_small_stack(|| {
            // Envelope is level 1; `junk` adds MAX_JSON_DEPTH - 1 more.
            let inner = MAX_JSON_DEPTH as usize - 1;
            let ok = format!(
                r#"{{"cmd":"position","junk":{}{}}}"#,
                "[".repeat(inner),
                "]".repeat(inner)
            );
            assert_eq!(parse(&ok).unwrap().cmd, Cmd::Position);
            let data = format!(
                r#"{{"cmd":"heartbeat","data":{{"ts":1,"x":{}0{}}}}}"#,
                "{\"a\":".repeat(inner - 1),
                "}".repeat(inner - 1)
            );
            assert_eq!(parse_heartbeat(&parse(&data).unwrap()), Ok(Some(1)));

            let one_more = format!(
                r#"{{"cmd":"position","junk":{}{}}}"#,
                "[".repeat(inner + 1),
                "]".repeat(inner + 1)
            );
            assert_eq!(
                parse(&one_more),
                Err(BadRequest::TooDeep {
                    max_depth: MAX_JSON_DEPTH
                })
            );
            // Brackets inside strings do not count.
            let in_string = format!(
                r#"{{"cmd":"position","s":"{}\"{}"}}"#,
                "[".repeat(100),
                "{".repeat(100)
            );
            assert_eq!(parse(&in_string).unwrap().cmd, Cmd::Position);
        });
    }

    #[test]
    fn code_table() {
        let all = [
            (Code::Ok, 0, "OK", false),
            (Code::BadFrame, 1, "BAD_FRAME", true),
            (Code::Unsupported, 2, "UNSUPPORTED", false),
            (Code::NotLoggedIn, 3, "NOT_LOGGED_IN", true),
            (Code::AuthFailed, 4, "AUTH_FAILED", true),
            (Code::QueueFull, 5, "QUEUE_FULL", true),
            (Code::UnknownQueue, 6, "UNKNOWN_QUEUE", true),
            (Code::AlreadyLoggedIn, 7, "ALREADY_LOGGED_IN", false),
            (Code::RateLimited, 8, "RATE_LIMITED", true),
            (Code::ShuttingDown, 9, "SHUTTING_DOWN", true),
            (Code::Internal, 10, "INTERNAL", false),
        ];
        for (code, value, name, closes) in all {
            assert_eq!(code as u8, value);
            assert_eq!(code.name(), name);
            assert_eq!(code.closes(), closes, "{name}");
        }
    }

    #[test]
    fn bad_request_display() {
        assert_eq!(BadRequest::NotUtf8.to_string(), "body is not valid UTF-8");
        assert_eq!(
            BadRequest::BadField { field: "seq" }.to_string(),
            "field `seq` has the wrong type or value"
        );
        assert_eq!(
            BadRequest::TooDeep { max_depth: 16 }.to_string(),
            "JSON nested deeper than 16 levels"
        );
    }

    // --- encoders -------------------------------------------------------------------

    /// Checks `out` holds exactly one frame and decodes its body.
    fn decode(out: &BytesMut) -> Value {
        let len = check_frame(out, u32::MAX).unwrap().expect("whole frame");
        assert_eq!(HEADER_BYTES + len, out.len(), "exactly one frame");
        serde_json::from_slice(&out[HEADER_BYTES..]).unwrap()
    }

    fn encoded(f: impl FnOnce(&mut BytesMut)) -> Value {
        let mut out = BytesMut::new();
        f(&mut out);
        decode(&out)
    }

    /// Checks the envelope's keys come in protocol order.
    fn assert_envelope_order(out: &BytesMut) {
        let body = std::str::from_utf8(&out[HEADER_BYTES..]).unwrap();
        let at = |k: &str| body.find(&format!("\"{k}\":")).unwrap();
        assert!(at("cmd") < at("seq") && at("seq") < at("code"));
        assert!(at("code") < at("msg") && at("msg") < at("data"));
        assert!(body.starts_with("{\"cmd\":"));
    }

    #[test]
    fn error_round_trip() {
        let mut out = BytesMut::new();
        encode_error(&mut out, "da\"nce", 77, Code::Unsupported, "unknown cmd");
        assert_envelope_order(&out);
        assert_eq!(
            decode(&out),
            json!({"cmd":"da\"nce","seq":77,"code":2,"msg":"unknown cmd","data":{}})
        );
        let v = encoded(|o| encode_error_retry(o, "login", 1, Code::ShuttingDown, "draining", 30));
        assert_eq!(
            v,
            json!({"cmd":"login","seq":1,"code":9,"msg":"draining","data":{"retry_after_secs":30}})
        );
    }

    #[test]
    fn login_ok_round_trip() {
        let v = encoded(|o| encode_login_ok(o, 1, false, 1234, 5000, Some(60), true));
        assert_eq!(
            v,
            json!({"cmd":"login","seq":1,"code":0,"msg":"ok","data":{
                "state":"waiting","position":1234,"queue_len":5000,"eta_secs":60,"resumed":true}})
        );
        let v = encoded(|o| encode_login_ok(o, u32::MAX, true, 0, u64::MAX, None, false));
        assert_eq!(
            v,
            json!({"cmd":"login","seq":u32::MAX,"code":0,"msg":"ok","data":{
                "state":"admitted","position":0,"queue_len":u64::MAX,"eta_secs":null,"resumed":false}})
        );
    }

    #[test]
    fn heartbeat_position_leave_round_trip() {
        let v = encoded(|o| encode_heartbeat_ok(o, 8, Some(1_700_000_000_123), 1_700_000_000_456));
        assert_eq!(
            v,
            json!({"cmd":"heartbeat","seq":8,"code":0,"msg":"ok","data":{
                "ts":1_700_000_000_123u64,"server_ms":1_700_000_000_456u64}})
        );
        let v = encoded(|o| encode_heartbeat_ok(o, 0, None, 5));
        assert_eq!(v["data"], json!({"ts":null,"server_ms":5}));

        let v = encoded(|o| encode_position(o, 3, 10, 20, Some(7)));
        assert_eq!(
            v,
            json!({"cmd":"position","seq":3,"code":0,"msg":"ok","data":{
                "position":10,"queue_len":20,"eta_secs":7}})
        );
        let v = encoded(|o| encode_position(o, 0, 1, 1, None));
        assert_eq!(v["seq"], 0);
        assert_eq!(v["data"]["eta_secs"], Value::Null);

        let v = encoded(|o| encode_leave_ok(o, 12));
        assert_eq!(
            v,
            json!({"cmd":"leave","seq":12,"code":0,"msg":"ok","data":{}})
        );
    }

    #[test]
    fn pushes_round_trip() {
        let v = encoded(|o| encode_admitted(o, "eyJ.a.b", 1_700_000_300, Some("10.0.0.1:9000")));
        assert_eq!(
            v,
            json!({"cmd":"admitted","seq":0,"code":0,"msg":"ok","data":{
                "token":"eyJ.a.b","expires_at":1_700_000_300u64,"login_addr":"10.0.0.1:9000"}})
        );
        let v = encoded(|o| encode_admitted(o, "t", 1, None));
        assert_eq!(v["data"]["login_addr"], Value::Null);

        let v = encoded(|o| encode_kicked(o, "shutdown", Some(15)));
        assert_eq!(
            v,
            json!({"cmd":"kicked","seq":0,"code":0,"msg":"ok","data":{
                "reason":"shutdown","retry_after_secs":15}})
        );
        let v = encoded(|o| encode_kicked(o, "idle_timeout", None));
        assert_eq!(v["data"], json!({"reason":"idle_timeout"}));
    }

    #[test]
    fn strings_are_escaped() {
        let nasty: String =
            (0u8..0x20).map(char::from).collect::<String>() + "\"\\/\u{7f}é\u{2028}😀 end";
        let v = encoded(|o| encode_error(o, &nasty, 1, Code::Internal, &nasty));
        assert_eq!(v["cmd"], nasty.as_str());
        assert_eq!(v["msg"], nasty.as_str());
        let v = encoded(|o| encode_kicked(o, "", None));
        assert_eq!(v["data"]["reason"], "");
    }

    #[test]
    fn integers_format_exactly() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            12345,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = BytesMut::new();
            put_u64(&mut out, n);
            assert_eq!(&out[..], n.to_string().as_bytes());
        }
    }

    #[test]
    fn frames_append_after_existing_bytes() {
        let mut out = BytesMut::with_capacity(512);
        encode_position(&mut out, 1, 2, 3, None);
        let first = out.len();
        encode_heartbeat_ok(&mut out, 4, Some(5), 6);
        let len = check_frame(&out, 4096).unwrap().unwrap();
        assert_eq!(HEADER_BYTES + len, first);
        let second = decode(&BytesMut::from(&out[first..]));
        assert_eq!(second["cmd"], "heartbeat");
    }

    #[test]
    fn encoded_request_shapes_parse_back() {
        // What we write is what we accept (cmd echo path).
        let mut out = BytesMut::new();
        encode_error(&mut out, "login", 5, Code::BadFrame, "x");
        let req = parse_request(&out[HEADER_BYTES..]).unwrap();
        assert_eq!((req.cmd, req.seq, req.data), (Cmd::Login, 5, Some("{}")));
    }
}
