//! Request parsing (docs/protocol.md 1.2, 1.4): a frame body into a borrowed [`Request`],
//! and its `data` into the per-command shapes.
//!
//! Owns: the depth scan ([`depth_within`]) that runs before sonic-rs sees any body, the
//! one generic object visitor and the field table of each shape.
//!
//! Invariants: nothing here allocates unless a string contains JSON escapes or the body
//! is refused; a body deeper than [`MAX_JSON_DEPTH`] never reaches sonic-rs; a known
//! field given twice or present with the wrong type (`null` included) is `BadField`.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use super::{BadRequest, DEFAULT_QUEUE, ESCAPED_CMD_FALLBACK, MAX_JSON_DEPTH, PROTOCOL_VERSION};

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
    /// Place ticket from an earlier `login` answer (cluster mode), when given. Owned
    /// only if it contained escapes.
    pub place_ticket: Option<Cow<'a, str>>,
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
        place_ticket: login.place_ticket,
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
    /// `place_ticket`, optional.
    place_ticket: Option<Cow<'a, str>>,
}

impl<'de> Fields<'de> for LoginFields<'de> {
    const NAMES: &'static [&'static str] = &["user_id", "queue", "ticket", "place_ticket"];

    fn read<A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error> {
        match index {
            0 => self.user_id = Some(map.next_value()?),
            1 => self.queue = Some(map.next_value::<CowStr<'de>>()?.0),
            2 => self.ticket = Some(map.next_value::<CowStr<'de>>()?.0),
            _ => self.place_ticket = Some(map.next_value::<CowStr<'de>>()?.0),
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
