//! Result codes of responses (docs/protocol.md 1.3) and why a body is refused.
//!
//! Owns: [`Code`] (the discriminant is the wire value, so it must never be renumbered)
//! and [`BadRequest`], the parser's error, every variant of which is answered with
//! `BAD_FRAME`. Invariant: `Display` of `BadRequest` allocates nothing.

use std::fmt;

/// Result code of a response (docs/protocol.md 1.3); the discriminant is the wire value.
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
    /// Every code, indexed by its wire value.
    pub const ALL: [Code; 11] = [
        Code::Ok,
        Code::BadFrame,
        Code::Unsupported,
        Code::NotLoggedIn,
        Code::AuthFailed,
        Code::QueueFull,
        Code::UnknownQueue,
        Code::AlreadyLoggedIn,
        Code::RateLimited,
        Code::ShuttingDown,
        Code::Internal,
    ];

    /// The code with wire value `value`, if there is one.
    pub fn from_wire(value: u8) -> Option<Code> {
        Code::ALL.get(usize::from(value)).copied()
    }

    /// The name used in docs/protocol.md, e.g. `"BAD_FRAME"`.
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
        /// The deepest nesting accepted ([`super::MAX_JSON_DEPTH`]).
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
