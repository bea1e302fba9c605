//! Bounds on untrusted token text (docs/protocol.md section 2 and 1.7): every token or
//! ticket passes [`peek_header`] before any JSON parser or signature check sees it.
//!
//! Owns: the size and depth limits and the header peek. Invariant: a token longer than
//! [`TOKEN_BYTES_MAX`], a header that decodes to more than [`HEADER_BYTES_MAX`] or nests
//! deeper than [`HEADER_DEPTH_MAX`] is `malformed` without being parsed, so sonic-rs
//! never recurses more than [`HEADER_DEPTH_MAX`] levels on attacker input.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;

/// Longest token or ticket accepted, in bytes (longer ones are `malformed`, unparsed).
/// Our admission tokens are ~300 bytes, account-service tickets well under 1 KiB; the
/// bound keeps every parse of untrusted text (base64, JSON, signature) small.
pub const TOKEN_BYTES_MAX: usize = 4096;
/// Largest decoded JWT header accepted, in bytes. A header is `alg`, `typ`, `kid` and
/// perhaps a thumbprint: ~100 bytes.
pub const HEADER_BYTES_MAX: usize = 1024;
/// Deepest nesting of objects/arrays accepted in a JWT header (checked by a byte scan,
/// [`crate::protocol::depth_within`], before sonic-rs parses it). A header is one flat
/// object; an embedded `jwk` with an `x5c` array is 3 levels.
pub const HEADER_DEPTH_MAX: u32 = 4;

/// The two header fields looked at before any signature check.
#[derive(Deserialize)]
pub(super) struct HeaderPeek {
    /// Algorithm the token claims.
    pub(super) alg: String,
    /// Key id, if any.
    #[serde(default)]
    pub(super) kid: Option<String>,
}

/// Reads `alg` and `kid` from the first segment, so that `alg: none` or an unknown
/// algorithm is reported as `wrong_alg` rather than as an unparsable header. Refuses,
/// as `malformed` and before decoding or parsing, a token longer than
/// [`TOKEN_BYTES_MAX`], a header longer than [`HEADER_BYTES_MAX`] decoded, and a header
/// nested deeper than [`HEADER_DEPTH_MAX`] (sonic-rs would recurse once per level).
pub(super) fn peek_header(token: &str) -> Result<HeaderPeek, &'static str> {
    if token.len() > TOKEN_BYTES_MAX {
        return Err("malformed");
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed");
    };
    // Unpadded base64 of n bytes is ceil(4n / 3) characters.
    if header.len() > HEADER_BYTES_MAX.div_ceil(3) * 4 {
        return Err("malformed");
    }
    let json = URL_SAFE_NO_PAD.decode(header).map_err(|_| "malformed")?;
    if json.len() > HEADER_BYTES_MAX || !crate::protocol::depth_within(&json, HEADER_DEPTH_MAX) {
        return Err("malformed");
    }
    sonic_rs::from_slice(&json).map_err(|_| "malformed")
}
