//! Admission tokens signed by this server ([`TokenSigner`], docs/protocol.md section 2) and
//! login tickets signed by the game's account service ([`TicketVerifier`], section 1.7).
//!
//! Layout: `signer` (admission tokens and the JWKS), `ticket` (login tickets),
//! `bounds` (the size and depth limits every untrusted token passes first); this
//! module holds the error types, the verified results and the helpers both sides share,
//! and re-exports the public API so callers name everything as `token::X`.
//!
//! Invariants:
//! - a token or ticket is checked with the configured algorithm and key only: the
//!   token's own `alg` never chooses (`none`, another algorithm, or a key of another
//!   family are rejected before any signature check);
//! - an admission token verifies only when its `kid` is ours, its signature is good,
//!   `exp` is in the future (no leeway: the signer and the verifier share one clock) and
//!   `iss` is the configured issuer; tickets get [`TICKET_LEEWAY_SECS`] of clock skew;
//! - [`TokenSigner::sign`] is deterministic (Ed25519 and HMAC are), so the core can send
//!   an admitted player who reconnects the very same token;
//! - a shared HS256 secret is never published: the JWKS is empty and the derived `kid`
//!   is an HMAC of a constant, not a hash of the secret;
//! - both types are immutable after construction (`Send + Sync`, shared by `Arc`);
//! - untrusted input is parsed within bounds: a token or ticket longer than
//!   [`TOKEN_BYTES_MAX`], a header that decodes to more than [`HEADER_BYTES_MAX`] or that
//!   nests deeper than [`HEADER_DEPTH_MAX`] is `malformed` before any JSON parser sees it
//!   (sonic-rs recurses once per nesting level: a 16 Ki-deep header overflowed the io
//!   loop's or control thread's stack and aborted the process). The claims are parsed by
//!   `jsonwebtoken` (serde_json, recursion limit 128) only after the signature checked,
//!   and are bounded by [`TOKEN_BYTES_MAX`] too.

mod bounds;
mod signer;
#[cfg(test)]
mod tests;
mod ticket;

pub use bounds::{HEADER_BYTES_MAX, HEADER_DEPTH_MAX, TOKEN_BYTES_MAX};
pub use signer::TokenSigner;
pub use ticket::TicketVerifier;

use std::fmt;

use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Algorithm;

use crate::config::TokenAlg;

/// Clock skew allowed on ticket `exp` and `nbf`: tickets are issued on the account
/// service's clock, not ours.
pub const TICKET_LEEWAY_SECS: u64 = 30;
/// Shortest HS256 secret accepted (RFC 7518 section 3.2: at least the hash size).
pub const HS256_SECRET_MIN_BYTES: usize = 32;
/// Length of an Ed25519 seed and of an Ed25519 public key.
const ED25519_KEY_BYTES: usize = 32;

/// base64url, padding optional on input (`=` is accepted, never written).
const BASE64URL_ANY_PAD: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A key in the configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The value is not base64url.
    NotBase64Url {
        /// Dotted config key, e.g. `tokens.key`.
        key: &'static str,
    },
    /// The decoded value has the wrong length.
    WrongLength {
        /// Dotted config key.
        key: &'static str,
        /// Bytes required.
        expected_bytes: usize,
        /// Bytes found after decoding.
        actual_bytes: usize,
    },
    /// An HS256 secret shorter than [`HS256_SECRET_MIN_BYTES`].
    SecretTooShort {
        /// Dotted config key.
        key: &'static str,
        /// Bytes required at least.
        min_bytes: usize,
        /// Bytes given.
        actual_bytes: usize,
    },
    /// 32 bytes that are not an Ed25519 public key (not a curve point).
    InvalidPublicKey {
        /// Dotted config key.
        key: &'static str,
    },
}

impl TokenError {
    /// The dotted config key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            TokenError::NotBase64Url { key }
            | TokenError::WrongLength { key, .. }
            | TokenError::SecretTooShort { key, .. }
            | TokenError::InvalidPublicKey { key } => key,
        }
    }

    fn reason(&self) -> String {
        match self {
            TokenError::NotBase64Url { .. } => "not base64url".to_string(),
            TokenError::WrongLength {
                expected_bytes,
                actual_bytes,
                ..
            } => format!("must decode to {expected_bytes} bytes, got {actual_bytes}"),
            TokenError::SecretTooShort {
                min_bytes,
                actual_bytes,
                ..
            } => format!("an HS256 secret must be at least {min_bytes} bytes, got {actual_bytes}"),
            TokenError::InvalidPublicKey { .. } => "not an Ed25519 public key".to_string(),
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config key `{}`: {}", self.key(), self.reason())
    }
}

impl std::error::Error for TokenError {}

impl From<TokenError> for crate::config::ConfigError {
    fn from(e: TokenError) -> Self {
        crate::config::ConfigError {
            key: e.key().to_string(),
            reason: e.reason(),
        }
    }
}

/// Why an admission token did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyError {
    /// Short machine-readable reason: `malformed`, `wrong_alg`, `unknown_kid`,
    /// `bad_signature`, `expired`, `not_yet_valid`, `wrong_issuer`, `missing_claim`.
    pub reason: &'static str,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token rejected: {}", self.reason)
    }
}

impl std::error::Error for VerifyError {}

/// Why a login ticket was refused (the player gets `AUTH_FAILED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketError {
    /// Short machine-readable reason: `missing_ticket`, `malformed`, `wrong_alg`,
    /// `bad_signature`, `expired`, `not_yet_valid`, `wrong_issuer`, `wrong_user`,
    /// `missing_claim`.
    pub reason: &'static str,
}

impl fmt::Display for TicketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ticket rejected: {}", self.reason)
    }
}

impl std::error::Error for TicketError {}

/// The claims of a verified admission token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The admitted player (`sub`).
    pub user: u64,
    /// The queue the player was admitted from.
    pub queue: String,
    /// Unique token id, consumed once by `POST /v1/tokens/verify`.
    pub jti: String,
    /// Expiry, unix seconds.
    pub exp: u64,
}

/// A ticket that passed: what it grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The ticket carries `prio: "vip"`: the player joins the priority lane.
    pub prio: bool,
}

fn jwt_alg(alg: TokenAlg) -> Algorithm {
    match alg {
        TokenAlg::EdDSA => Algorithm::EdDSA,
        TokenAlg::HS256 => Algorithm::HS256,
    }
}

fn alg_name(alg: TokenAlg) -> &'static str {
    match alg {
        TokenAlg::EdDSA => "EdDSA",
        TokenAlg::HS256 => "HS256",
    }
}

/// Decodes base64url (padding optional, surrounding blanks ignored) into exactly `N` bytes.
fn decode_fixed<const N: usize>(key: &'static str, text: &str) -> Result<[u8; N], TokenError> {
    let bytes = BASE64URL_ANY_PAD
        .decode(text.trim())
        .map_err(|_| TokenError::NotBase64Url { key })?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| TokenError::WrongLength {
        key,
        expected_bytes: N,
        actual_bytes: bytes.len(),
    })
}

fn check_secret(key: &'static str, secret: &[u8]) -> Result<(), TokenError> {
    if secret.len() < HS256_SECRET_MIN_BYTES {
        return Err(TokenError::SecretTooShort {
            key,
            min_bytes: HS256_SECRET_MIN_BYTES,
            actual_bytes: secret.len(),
        });
    }
    Ok(())
}

/// Maps a `jsonwebtoken` error to a short reason.
fn reason_of(e: &jsonwebtoken::errors::Error) -> &'static str {
    match e.kind() {
        ErrorKind::InvalidSignature => "bad_signature",
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not_yet_valid",
        ErrorKind::InvalidIssuer => "wrong_issuer",
        ErrorKind::InvalidSubject => "wrong_user",
        ErrorKind::InvalidAudience => "wrong_audience",
        ErrorKind::MissingRequiredClaim(_) => "missing_claim",
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => "wrong_alg",
        _ => "malformed",
    }
}

fn unix_now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}
