//! The player-port message layer (docs/protocol.md 1.2-1.5): error codes, request parsing
//! and response/push encoding. Framing itself lives in [`crate::frame`].
//!
//! Owns: turning a frame body into a borrowed [`Request`] (and its `data` into per-command
//! shapes), and writing every response and push as a complete frame into a `BytesMut`.
//! The work is split by concern: [`codes`] (result codes and why a body is refused),
//! [`parse`] (request parsing behind the depth check), [`encode`] (JSON encoders writing
//! into the caller's buffer). This module re-exports their public API, so callers name
//! everything as `protocol::X`.
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

pub mod codes;
pub mod encode;
pub mod parse;
#[cfg(test)]
mod tests;

pub use codes::{BadRequest, Code};
pub use encode::{
    encode_admitted, encode_error, encode_error_retry, encode_heartbeat_ok, encode_kicked,
    encode_leave_ok, encode_login_ok, encode_position, LoginAnswer,
};
pub use parse::{
    depth_within, parse_heartbeat, parse_login, parse_request, Cmd, LoginData, Request,
};

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
