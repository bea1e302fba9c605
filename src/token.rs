//! Admission tokens signed by this server ([`TokenSigner`], PROTOCOL.md section 2) and
//! login tickets signed by the game's account service ([`TicketVerifier`], section 1.7).
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

use std::fmt;

use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use ed25519_dalek::Signer as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, AuthMode, TokenAlg, TokenConfig};

/// Clock skew allowed on ticket `exp` and `nbf`: tickets are issued on the account
/// service's clock, not ours.
pub const TICKET_LEEWAY_SECS: u64 = 30;
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
/// Shortest HS256 secret accepted (RFC 7518 section 3.2: at least the hash size).
pub const HS256_SECRET_MIN_BYTES: usize = 32;
/// Length of an Ed25519 seed and of an Ed25519 public key.
const ED25519_KEY_BYTES: usize = 32;
/// Characters of the RFC 7638 thumbprint kept as a derived EdDSA `kid` (96 bits).
const DERIVED_KID_CHARS: usize = 16;
/// Message whose HMAC names an HS256 key without revealing anything about the secret.
const HS256_KID_MESSAGE: &[u8] = b"queue-server kid v1";

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

/// The private half used by [`TokenSigner::sign`].
enum SignKey {
    /// Ed25519 key held directly: signing with it does not re-parse a PKCS#8 document
    /// and re-derive the public key on every token, as `jsonwebtoken::encode` would.
    Ed(ed25519_dalek::SigningKey),
    /// HMAC secret.
    Hs(EncodingKey),
}

/// Signs admission tokens and verifies the ones it signed.
pub struct TokenSigner {
    /// Configured algorithm.
    alg: TokenAlg,
    /// Key id written in every header and required on verification.
    kid: String,
    /// `iss` written and required.
    issuer: String,
    /// base64url of the fixed header `{"alg","typ","kid"}`, encoded once.
    header_b64: String,
    /// Signing key.
    sign_key: SignKey,
    /// The verifying half (public key or the same secret).
    decoding: DecodingKey,
    /// Checks applied by `jsonwebtoken::decode`: our alg only, `exp`/`iss`/`sub` required.
    validation: Validation,
    /// `GET /v1/keys` answer, built once.
    jwks: String,
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// Header of every admission token, in this field order.
#[derive(Serialize)]
struct HeaderOut<'a> {
    /// `EdDSA` or `HS256`.
    alg: &'a str,
    /// Always `JWT`.
    typ: &'a str,
    /// Our key id.
    kid: &'a str,
}

/// Claims of an admission token, in this field order.
#[derive(Serialize)]
struct ClaimsOut<'a> {
    /// User id, decimal.
    sub: &'a str,
    /// Queue admitted from.
    queue: &'a str,
    /// Issued at, unix seconds.
    iat: u64,
    /// Expiry, unix seconds.
    exp: u64,
    /// Unique token id.
    jti: &'a str,
    /// Issuer.
    iss: &'a str,
}

/// Claims read back from an admission token.
#[derive(Deserialize)]
struct ClaimsIn {
    /// User id, decimal.
    sub: String,
    /// Queue admitted from.
    queue: String,
    /// Unique token id.
    jti: String,
    /// Expiry, unix seconds.
    exp: u64,
    /// Issued at, unix seconds (a token from the future is not valid yet).
    iat: u64,
}

/// The two header fields looked at before any signature check.
#[derive(Deserialize)]
struct HeaderPeek {
    /// Algorithm the token claims.
    alg: String,
    /// Key id, if any.
    #[serde(default)]
    kid: Option<String>,
}

/// One JWK of the JWKS, in this field order.
#[derive(Serialize)]
struct JwkOut<'a> {
    /// `OKP`.
    kty: &'a str,
    /// `Ed25519`.
    crv: &'a str,
    /// Public key, base64url.
    x: &'a str,
    /// Our key id.
    kid: &'a str,
    /// `EdDSA`.
    alg: &'a str,
    /// `sig`.
    #[serde(rename = "use")]
    use_: &'a str,
}

/// The JWKS document.
#[derive(Serialize)]
struct JwksOut<'a> {
    /// Zero or one key.
    keys: Vec<JwkOut<'a>>,
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

/// Reads `alg` and `kid` from the first segment, so that `alg: none` or an unknown
/// algorithm is reported as `wrong_alg` rather than as an unparsable header. Refuses,
/// as `malformed` and before decoding or parsing, a token longer than
/// [`TOKEN_BYTES_MAX`], a header longer than [`HEADER_BYTES_MAX`] decoded, and a header
/// nested deeper than [`HEADER_DEPTH_MAX`] (sonic-rs would recurse once per level).
fn peek_header(token: &str) -> Result<HeaderPeek, &'static str> {
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

impl TokenSigner {
    /// From `[tokens]` config. `generated` = true when `tokens.key` was empty and a fresh
    /// key was made (the caller warns: tokens then do not survive a restart).
    pub fn from_config(cfg: &TokenConfig) -> Result<(TokenSigner, bool), TokenError> {
        let generated = cfg.key.is_empty();
        let (sign_key, decoding, jwk_x, derived_kid) = match cfg.alg {
            TokenAlg::EdDSA => {
                let seed: [u8; ED25519_KEY_BYTES] = if generated {
                    let mut seed = [0u8; ED25519_KEY_BYTES];
                    rand::rngs::OsRng.fill_bytes(&mut seed);
                    seed
                } else {
                    decode_fixed("tokens.key", &cfg.key)?
                };
                let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
                let x = URL_SAFE_NO_PAD.encode(signing.verifying_key().to_bytes());
                let decoding = DecodingKey::from_ed_components(&x)
                    .expect("32 bytes just encoded as base64url");
                let jwk = Jwk::from_decoding_key(&decoding, Some(Algorithm::EdDSA))
                    .expect("a 32-byte Ed25519 key is a valid OKP JWK");
                let thumbprint = jwk
                    .thumbprint(ThumbprintHash::SHA256)
                    .expect("OKP Ed25519 thumbprint is defined (RFC 8037)");
                let kid = thumbprint[..DERIVED_KID_CHARS].to_string();
                (SignKey::Ed(signing), decoding, Some(x), kid)
            }
            TokenAlg::HS256 => {
                let secret: Vec<u8> = if generated {
                    let mut secret = vec![0u8; HS256_SECRET_MIN_BYTES];
                    rand::rngs::OsRng.fill_bytes(&mut secret);
                    secret
                } else {
                    cfg.key.as_bytes().to_vec()
                };
                check_secret("tokens.key", &secret)?;
                let encoding = EncodingKey::from_secret(&secret);
                let mac =
                    jsonwebtoken::crypto::sign(HS256_KID_MESSAGE, &encoding, Algorithm::HS256)
                        .expect("HMAC-SHA256 accepts any key");
                let mac = URL_SAFE_NO_PAD
                    .decode(mac)
                    .expect("jsonwebtoken writes base64url");
                let kid = format!(
                    "hs256-{:02x}{:02x}{:02x}{:02x}",
                    mac[0], mac[1], mac[2], mac[3]
                );
                (
                    SignKey::Hs(encoding),
                    DecodingKey::from_secret(&secret),
                    None,
                    kid,
                )
            }
        };
        let kid = if cfg.kid.is_empty() {
            derived_kid
        } else {
            cfg.kid.clone()
        };
        let header_json = sonic_rs::to_vec(&HeaderOut {
            alg: alg_name(cfg.alg),
            typ: "JWT",
            kid: &kid,
        })
        .expect("a struct of strings serializes");
        let jwks = sonic_rs::to_string(&JwksOut {
            keys: jwk_x
                .as_deref()
                .map(|x| JwkOut {
                    kty: "OKP",
                    crv: "Ed25519",
                    x,
                    kid: &kid,
                    alg: "EdDSA",
                    use_: "sig",
                })
                .into_iter()
                .collect(),
        })
        .expect("a struct of strings serializes");
        let mut validation = Validation::new(jwt_alg(cfg.alg));
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.set_issuer(&[cfg.issuer.as_str()]);
        let signer = TokenSigner {
            alg: cfg.alg,
            issuer: cfg.issuer.clone(),
            header_b64: URL_SAFE_NO_PAD.encode(header_json),
            kid,
            sign_key,
            decoding,
            validation,
            jwks,
        };
        Ok((signer, generated))
    }

    /// The key id written in every token header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The signing algorithm.
    pub fn alg(&self) -> TokenAlg {
        self.alg
    }

    /// Compact JWS with header `{alg, typ: "JWT", kid}` and claims
    /// `{sub: user as decimal string, queue, iat, exp, jti, iss}`. Deterministic for equal
    /// inputs, so a reconnecting admitted player is sent the same token again.
    pub fn sign(&self, user: u64, queue: &str, jti: &str, iat: u64, exp: u64) -> String {
        let sub = user.to_string();
        let claims = sonic_rs::to_vec(&ClaimsOut {
            sub: &sub,
            queue,
            iat,
            exp,
            jti,
            iss: &self.issuer,
        })
        .expect("a struct of strings and integers serializes");
        let mut token = String::with_capacity(self.header_b64.len() + claims.len() * 4 / 3 + 100);
        token.push_str(&self.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims, &mut token);
        let signature = match &self.sign_key {
            SignKey::Ed(key) => URL_SAFE_NO_PAD.encode(key.sign(token.as_bytes()).to_bytes()),
            SignKey::Hs(key) => jsonwebtoken::crypto::sign(token.as_bytes(), key, Algorithm::HS256)
                .expect("HMAC-SHA256 accepts any key"),
        };
        token.push('.');
        token.push_str(&signature);
        token
    }

    /// JWKS JSON text: `{"keys":[{"kty":"OKP","crv":"Ed25519","x":..,"kid":..,"alg":"EdDSA","use":"sig"}]}`;
    /// for HS256 `{"keys":[]}` (a shared secret is never published).
    pub fn jwks_json(&self) -> String {
        self.jwks.clone()
    }

    /// Checks the token with the configured algorithm and key only, our `kid`, `exp`
    /// strictly in the future (no leeway), `iss` equal to the configured issuer, and the
    /// claims `sub` (decimal user id), `queue`, `jti`. Returns the claims.
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, VerifyError> {
        let fail = |reason| VerifyError { reason };
        let header = peek_header(token).map_err(fail)?;
        if header.alg != alg_name(self.alg) {
            return Err(fail("wrong_alg"));
        }
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(fail("unknown_kid"));
        }
        let data = jsonwebtoken::decode::<ClaimsIn>(token, &self.decoding, &self.validation)
            .map_err(|e| fail(reason_of(&e)))?;
        let claims = data.claims;
        // `jsonwebtoken` accepts `exp == now`; RFC 7519 4.1.4 says "on or after" is expired.
        let now = unix_now();
        if claims.exp <= now {
            return Err(fail("expired"));
        }
        // Our own clock issued it: anything stamped later than now (plus skew between
        // restarts on different hosts) was not issued by this key holder as claimed.
        if claims.iat > now + TICKET_LEEWAY_SECS {
            return Err(fail("not_yet_valid"));
        }
        let user = claims.sub.parse::<u64>().map_err(|_| fail("malformed"))?;
        Ok(VerifiedToken {
            user,
            queue: claims.queue,
            jti: claims.jti,
            exp: claims.exp,
        })
    }
}

/// Claims of a login ticket that matter here (`exp`, `nbf`, `iss` are checked by
/// `jsonwebtoken::decode`).
#[derive(Deserialize)]
struct TicketClaims {
    /// User id, decimal; must equal the `login`'s `user_id`.
    sub: String,
    /// `"vip"` = priority lane; anything else or absent = normal lane.
    #[serde(default)]
    prio: Option<String>,
}

/// How `auth.mode = "jwt"` tickets are checked.
struct JwtTickets {
    /// The configured algorithm's name, compared with the header before decoding.
    alg: &'static str,
    /// Account service key (HS256 secret or Ed25519 public key).
    key: DecodingKey,
    /// Configured alg only, `exp` and `sub` required, `nbf` honoured, `iss` if set.
    validation: Validation,
}

/// Checks `login` tickets; shared by every io loop.
pub struct TicketVerifier {
    /// `None` for `auth.mode = "none"`: everyone passes, in the normal lane.
    jwt: Option<JwtTickets>,
}

impl fmt::Debug for TicketVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = self.jwt.as_ref().map_or("none", |j| j.alg);
        f.debug_struct("TicketVerifier")
            .field("mode", &mode)
            .finish_non_exhaustive()
    }
}

impl TicketVerifier {
    /// From `[auth]` config. With `mode = "jwt"`, `auth.key` is the HS256 secret (at
    /// least 32 bytes) or the Ed25519 public key in base64url (32 bytes).
    pub fn from_config(cfg: &AuthConfig) -> Result<TicketVerifier, TokenError> {
        if cfg.mode == AuthMode::None {
            return Ok(TicketVerifier { jwt: None });
        }
        let key = match cfg.alg {
            TokenAlg::HS256 => {
                check_secret("auth.key", cfg.key.as_bytes())?;
                DecodingKey::from_secret(cfg.key.as_bytes())
            }
            TokenAlg::EdDSA => {
                let public: [u8; ED25519_KEY_BYTES] = decode_fixed("auth.key", &cfg.key)?;
                ed25519_dalek::VerifyingKey::from_bytes(&public)
                    .map_err(|_| TokenError::InvalidPublicKey { key: "auth.key" })?;
                DecodingKey::from_ed_components(&URL_SAFE_NO_PAD.encode(public))
                    .expect("32 bytes just encoded as base64url")
            }
        };
        let mut validation = Validation::new(jwt_alg(cfg.alg));
        validation.leeway = TICKET_LEEWAY_SECS;
        validation.validate_nbf = true;
        if cfg.issuer.is_empty() {
            validation.set_required_spec_claims(&["exp", "sub"]);
        } else {
            validation.set_required_spec_claims(&["exp", "sub", "iss"]);
            validation.set_issuer(&[cfg.issuer.as_str()]);
        }
        Ok(TicketVerifier {
            jwt: Some(JwtTickets {
                alg: alg_name(cfg.alg),
                key,
                validation,
            }),
        })
    }

    /// Mode none: `Ok(Ticket { prio: false })` whatever the ticket. Mode jwt: the ticket
    /// is required, signed with the configured algorithm and key, `exp` present and not
    /// passed, `nbf` (if present) reached, `iss` equal to `auth.issuer` when that is set,
    /// and `sub` equal to `user_id` as a decimal string; `prio: "vip"` asks for the
    /// priority lane.
    pub fn verify(&self, ticket: Option<&str>, user_id: u64) -> Result<Ticket, TicketError> {
        let Some(JwtTickets {
            alg,
            key,
            validation,
        }) = &self.jwt
        else {
            return Ok(Ticket { prio: false });
        };
        let fail = |reason| TicketError { reason };
        let ticket = match ticket {
            Some(t) if !t.is_empty() => t,
            _ => return Err(fail("missing_ticket")),
        };
        let header = peek_header(ticket).map_err(fail)?;
        if header.alg != *alg {
            return Err(fail("wrong_alg"));
        }
        let data = jsonwebtoken::decode::<TicketClaims>(ticket, key, validation)
            .map_err(|e| fail(reason_of(&e)))?;
        if data.claims.sub != user_id.to_string() {
            return Err(fail("wrong_user"));
        }
        Ok(Ticket {
            prio: data.claims.prio.as_deref() == Some("vip"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HS_SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    fn token_cfg(alg: TokenAlg, key: &str) -> TokenConfig {
        TokenConfig {
            alg,
            key: key.to_string(),
            kid: String::new(),
            ttl_secs: 300,
            issuer: "queue-server".to_string(),
            login_addr: String::new(),
        }
    }

    fn ed_signer() -> TokenSigner {
        let seed = URL_SAFE_NO_PAD.encode([7u8; 32]);
        TokenSigner::from_config(&token_cfg(TokenAlg::EdDSA, &seed))
            .unwrap()
            .0
    }

    fn hs_signer() -> TokenSigner {
        TokenSigner::from_config(&token_cfg(TokenAlg::HS256, HS_SECRET))
            .unwrap()
            .0
    }

    fn now() -> u64 {
        unix_now()
    }

    /// Replaces the character at `i` with another base64url character.
    fn flip(token: &str, i: usize) -> String {
        let mut b = token.as_bytes().to_vec();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    }

    /// A token with an arbitrary header and claims, signed with `key`.
    fn forge(header: &serde_json::Value, claims: &serde_json::Value, sig: &str) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            sig
        )
    }

    #[test]
    fn eddsa_round_trip_and_deterministic() {
        let s = ed_signer();
        let t = s.sign(42, "world-1", "j1", now(), now() + 300);
        assert_eq!(t, s.sign(42, "world-1", "j1", now(), now() + 300));
        let v = s.verify(&t).unwrap();
        assert_eq!(v.user, 42);
        assert_eq!(v.queue, "world-1");
        assert_eq!(v.jti, "j1");
        let h = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(h.alg, Algorithm::EdDSA);
        assert_eq!(h.typ.as_deref(), Some("JWT"));
        assert_eq!(h.kid.as_deref(), Some(s.kid()));
        assert_eq!(s.kid().len(), DERIVED_KID_CHARS);
        assert_eq!(s.alg(), TokenAlg::EdDSA);
    }

    #[test]
    fn hs256_round_trip_and_kid_hides_secret() {
        let s = hs_signer();
        let t = s.sign(7, "default", "j2", now(), now() + 60);
        assert_eq!(s.verify(&t).unwrap().user, 7);
        assert!(
            s.kid().starts_with("hs256-") && s.kid().len() == 14,
            "{}",
            s.kid()
        );
        assert_eq!(s.jwks_json(), r#"{"keys":[]}"#);
        // A plain HMAC check with the shared secret (what a login server does) agrees.
        let mut val = Validation::new(Algorithm::HS256);
        val.set_issuer(&["queue-server"]);
        let d = jsonwebtoken::decode::<serde_json::Value>(
            &t,
            &DecodingKey::from_secret(HS_SECRET.as_bytes()),
            &val,
        )
        .unwrap();
        assert_eq!(d.claims["sub"], "7");
        assert_eq!(d.claims["iss"], "queue-server");
    }

    #[test]
    fn verifies_offline_from_jwks_alone() {
        let s = ed_signer();
        let t = s.sign(99, "q", "j3", now(), now() + 300);
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&s.jwks_json()).unwrap();
        let raw: serde_json::Value = serde_json::from_str(&s.jwks_json()).unwrap();
        assert_eq!(raw["keys"][0]["kty"], "OKP");
        assert_eq!(raw["keys"][0]["crv"], "Ed25519");
        assert_eq!(raw["keys"][0]["alg"], "EdDSA");
        assert_eq!(raw["keys"][0]["use"], "sig");
        let kid = jsonwebtoken::decode_header(&t).unwrap().kid.unwrap();
        let jwk = set.find(&kid).expect("kid in JWKS");
        // The derived kid is a prefix of the RFC 7638 thumbprint of that very JWK.
        assert!(jwk
            .thumbprint(ThumbprintHash::SHA256)
            .unwrap()
            .starts_with(&kid));
        let x = raw["keys"][0]["x"].as_str().unwrap();
        let key = DecodingKey::from_ed_components(x).unwrap();
        let mut val = Validation::new(Algorithm::EdDSA);
        val.set_issuer(&["queue-server"]);
        let d = jsonwebtoken::decode::<serde_json::Value>(&t, &key, &val).unwrap();
        assert_eq!(d.claims["sub"], "99");
        assert_eq!(d.claims["queue"], "q");
        assert!(jsonwebtoken::decode::<serde_json::Value>(
            &t,
            &DecodingKey::from_jwk(jwk).unwrap(),
            &val
        )
        .is_ok());
    }

    #[test]
    fn expired_and_wrong_issuer_rejected() {
        let s = ed_signer();
        let t = s.sign(1, "q", "j", now() - 600, now() - 300);
        assert_eq!(s.verify(&t).unwrap_err().reason, "expired");
        let t = s.sign(1, "q", "j", now() - 600, now());
        assert_eq!(s.verify(&t).unwrap_err().reason, "expired");
        let seed = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let mut cfg = token_cfg(TokenAlg::EdDSA, &seed);
        cfg.issuer = "someone-else".into();
        let other = TokenSigner::from_config(&cfg).unwrap().0;
        let t = other.sign(1, "q", "j", now(), now() + 300);
        assert_eq!(other.kid(), s.kid(), "same key, same derived kid");
        assert_eq!(s.verify(&t).unwrap_err().reason, "wrong_issuer");
    }

    #[test]
    fn token_issued_in_the_future_rejected() {
        let s = ed_signer();
        let t = s.sign(1, "q", "j", now() + 3600, now() + 3900);
        assert_eq!(s.verify(&t).unwrap_err().reason, "not_yet_valid");
        let t = s.sign(1, "q", "j", now() + 5, now() + 300);
        assert!(s.verify(&t).is_ok(), "small clock skew tolerated");
    }

    #[test]
    fn alg_none_and_foreign_alg_rejected() {
        let s = ed_signer();
        let claims = serde_json::json!({"sub":"1","queue":"q","iat":now(),"exp":now()+300,"jti":"j","iss":"queue-server"});
        let none = forge(
            &serde_json::json!({"alg":"none","typ":"JWT","kid":s.kid()}),
            &claims,
            "",
        );
        assert_eq!(s.verify(&none).unwrap_err().reason, "wrong_alg");
        // An HS256 token keyed with the public key (the classic confusion attack).
        let x = serde_json::from_str::<serde_json::Value>(&s.jwks_json()).unwrap()["keys"][0]["x"]
            .as_str()
            .unwrap()
            .to_string();
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some(s.kid().to_string());
        let hs = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(x.as_bytes()))
            .unwrap();
        assert_eq!(s.verify(&hs).unwrap_err().reason, "wrong_alg");
        // And an HS256 signer's token shown to an EdDSA signer.
        let hs = hs_signer().sign(1, "q", "j", now(), now() + 300);
        assert!(s.verify(&hs).is_err());
    }

    #[test]
    fn unknown_or_missing_kid_rejected() {
        let s = ed_signer();
        let mut cfg = token_cfg(TokenAlg::EdDSA, &URL_SAFE_NO_PAD.encode([7u8; 32]));
        cfg.kid = "other".into();
        let t = TokenSigner::from_config(&cfg)
            .unwrap()
            .0
            .sign(1, "q", "j", now(), now() + 300);
        assert_eq!(s.verify(&t).unwrap_err().reason, "unknown_kid");
        let claims = serde_json::json!({"sub":"1","queue":"q","iat":now(),"exp":now()+300,"jti":"j","iss":"queue-server"});
        let t = forge(
            &serde_json::json!({"alg":"EdDSA","typ":"JWT"}),
            &claims,
            "AAAA",
        );
        assert_eq!(s.verify(&t).unwrap_err().reason, "unknown_kid");
    }

    #[test]
    fn any_flipped_character_rejected() {
        for s in [ed_signer(), hs_signer()] {
            let t = s.sign(5, "q", "jti-5", now(), now() + 300);
            let dots: Vec<usize> = t.match_indices('.').map(|(i, _)| i).collect();
            let picks = [
                0,
                dots[0] / 2,
                dots[0] - 1,
                dots[0] + 1,
                (dots[0] + dots[1]) / 2,
                dots[1] - 1,
                dots[1] + 1,
                (dots[1] + t.len()) / 2,
                t.len() - 1,
            ];
            for i in picks {
                let bad = flip(&t, i);
                assert!(s.verify(&bad).is_err(), "flip at {i} accepted");
            }
            assert!(s.verify(&format!("{t}.")).is_err());
            assert!(s.verify("").is_err());
            assert_eq!(s.verify("a.b").unwrap_err().reason, "malformed");
        }
    }

    #[test]
    fn key_config_errors_name_the_key() {
        let e = TokenSigner::from_config(&token_cfg(TokenAlg::EdDSA, "not*base64")).unwrap_err();
        assert_eq!(e, TokenError::NotBase64Url { key: "tokens.key" });
        let e = TokenSigner::from_config(&token_cfg(TokenAlg::EdDSA, "AAAA")).unwrap_err();
        assert!(matches!(
            e,
            TokenError::WrongLength {
                actual_bytes: 3,
                ..
            }
        ));
        assert!(e.to_string().contains("tokens.key"), "{e}");
        let e = TokenSigner::from_config(&token_cfg(TokenAlg::HS256, "short")).unwrap_err();
        assert!(matches!(
            e,
            TokenError::SecretTooShort {
                actual_bytes: 5,
                ..
            }
        ));
        let ce: crate::config::ConfigError = e.into();
        assert_eq!(ce.key, "tokens.key");
        // Padding is accepted on input.
        let padded = BASE64URL_ANY_PAD.encode([7u8; 32]) + "=";
        let (p, generated) =
            TokenSigner::from_config(&token_cfg(TokenAlg::EdDSA, &padded)).unwrap();
        assert!(!generated);
        assert_eq!(p.kid(), ed_signer().kid());
    }

    #[test]
    fn empty_key_generates_distinct_keys() {
        for alg in [TokenAlg::EdDSA, TokenAlg::HS256] {
            let (a, ga) = TokenSigner::from_config(&token_cfg(alg, "")).unwrap();
            let (b, gb) = TokenSigner::from_config(&token_cfg(alg, "")).unwrap();
            assert!(ga && gb);
            assert_ne!(a.kid(), b.kid());
            let t = a.sign(1, "q", "j", now(), now() + 10);
            assert!(a.verify(&t).is_ok());
        }
    }

    fn auth_cfg(alg: TokenAlg, key: &str, issuer: &str) -> AuthConfig {
        AuthConfig {
            mode: AuthMode::Jwt,
            alg,
            key: key.to_string(),
            issuer: issuer.to_string(),
        }
    }

    fn ticket(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn ticket_hs256_checks() {
        let v =
            TicketVerifier::from_config(&auth_cfg(TokenAlg::HS256, HS_SECRET, "accounts")).unwrap();
        let good = ticket(serde_json::json!({"sub":"42","exp":now()+60,"iss":"accounts"}));
        assert_eq!(v.verify(Some(&good), 42), Ok(Ticket { prio: false }));
        assert_eq!(v.verify(Some(&good), 43).unwrap_err().reason, "wrong_user");
        assert_eq!(v.verify(None, 42).unwrap_err().reason, "missing_ticket");
        assert_eq!(v.verify(Some(""), 42).unwrap_err().reason, "missing_ticket");
        let old = ticket(serde_json::json!({"sub":"42","exp":now()-3600,"iss":"accounts"}));
        assert_eq!(v.verify(Some(&old), 42).unwrap_err().reason, "expired");
        let vip =
            ticket(serde_json::json!({"sub":"42","exp":now()+60,"iss":"accounts","prio":"vip"}));
        assert_eq!(v.verify(Some(&vip), 42), Ok(Ticket { prio: true }));
        let other_prio =
            ticket(serde_json::json!({"sub":"42","exp":now()+60,"iss":"accounts","prio":"gold"}));
        assert_eq!(v.verify(Some(&other_prio), 42), Ok(Ticket { prio: false }));
        let no_exp = ticket(serde_json::json!({"sub":"42","iss":"accounts"}));
        assert_eq!(
            v.verify(Some(&no_exp), 42).unwrap_err().reason,
            "missing_claim"
        );
        let later = ticket(
            serde_json::json!({"sub":"42","exp":now()+7200,"nbf":now()+3600,"iss":"accounts"}),
        );
        assert_eq!(
            v.verify(Some(&later), 42).unwrap_err().reason,
            "not_yet_valid"
        );
        let wrong_iss = ticket(serde_json::json!({"sub":"42","exp":now()+60,"iss":"evil"}));
        assert_eq!(
            v.verify(Some(&wrong_iss), 42).unwrap_err().reason,
            "wrong_issuer"
        );
        let numeric_sub = ticket(serde_json::json!({"sub":42,"exp":now()+60,"iss":"accounts"}));
        assert!(v.verify(Some(&numeric_sub), 42).is_err());
        let none = forge(
            &serde_json::json!({"alg":"none","typ":"JWT"}),
            &serde_json::json!({"sub":"42","exp":now()+60,"iss":"accounts"}),
            "",
        );
        assert_eq!(v.verify(Some(&none), 42).unwrap_err().reason, "wrong_alg");
        assert_eq!(
            v.verify(Some(&flip(&good, good.len() - 2)), 42)
                .unwrap_err()
                .reason,
            "bad_signature"
        );
        assert_eq!(
            v.verify(Some("garbage"), 42).unwrap_err().reason,
            "malformed"
        );
    }

    #[test]
    fn ticket_eddsa_and_mode_none() {
        let account = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        let public = URL_SAFE_NO_PAD.encode(account.verifying_key().to_bytes());
        let v = TicketVerifier::from_config(&auth_cfg(TokenAlg::EdDSA, &public, "")).unwrap();
        let der = ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_der(&account).unwrap();
        let t = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::EdDSA),
            &serde_json::json!({"sub":"8","exp":now()+60,"prio":"vip"}),
            &EncodingKey::from_ed_der(der.as_bytes()),
        )
        .unwrap();
        assert_eq!(v.verify(Some(&t), 8), Ok(Ticket { prio: true }));
        // An HS256 ticket keyed with the public key text is refused.
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"sub":"8","exp":now()+60}),
            &EncodingKey::from_secret(public.as_bytes()),
        )
        .unwrap();
        assert_eq!(v.verify(Some(&hs), 8).unwrap_err().reason, "wrong_alg");

        let e = TicketVerifier::from_config(&auth_cfg(TokenAlg::EdDSA, "AAAA", "")).unwrap_err();
        assert_eq!(e.key(), "auth.key");
        let e = TicketVerifier::from_config(&auth_cfg(TokenAlg::HS256, "short", "")).unwrap_err();
        assert!(matches!(
            e,
            TokenError::SecretTooShort {
                key: "auth.key",
                ..
            }
        ));

        let open = TicketVerifier::from_config(&AuthConfig {
            mode: AuthMode::None,
            alg: TokenAlg::HS256,
            key: String::new(),
            issuer: String::new(),
        })
        .unwrap();
        assert_eq!(open.verify(None, 1), Ok(Ticket { prio: false }));
        assert_eq!(open.verify(Some("anything"), 1), Ok(Ticket { prio: false }));
    }

    /// `header.claims.sig` whose header is `depth` nested arrays (or `{"a":` objects).
    fn deep_header_token(depth: usize, objects: bool) -> String {
        let header = if objects {
            format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
        } else {
            format!("{}{}", "[".repeat(depth), "]".repeat(depth))
        };
        format!(
            "{}.{}.AAAA",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(r#"{"sub":"1","exp":99999999999}"#)
        )
    }

    /// Runs `f` on a thread with a 256 KiB stack: an unbounded recursive parse of a
    /// 16 Ki-deep header overflows it for sure (the old code aborted this test binary,
    /// which `cargo test` reports as a failure).
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn deep_header_token_is_malformed_without_recursing() {
        for objects in [false, true] {
            let token = deep_header_token(16 * 1024, objects);
            let reason = on_small_stack(move || ed_signer().verify(&token).unwrap_err().reason);
            assert_eq!(reason, "malformed");
        }
        // Just past the bound is refused; at the bound it parses (and fails later, on kid).
        let reason = ed_signer()
            .verify(&deep_header_token(HEADER_DEPTH_MAX as usize + 1, false))
            .unwrap_err()
            .reason;
        assert_eq!(reason, "malformed");
        let s = ed_signer();
        let nested =
            "[".repeat(HEADER_DEPTH_MAX as usize - 1) + &"]".repeat(HEADER_DEPTH_MAX as usize - 1);
        let header: serde_json::Value = serde_json::from_str(&format!(
            r#"{{"alg":"EdDSA","kid":"{}","x":{nested}}}"#,
            s.kid()
        ))
        .unwrap();
        let claims = serde_json::json!({"sub":"1","queue":"q","iat":now(),"exp":now()+300,"jti":"j","iss":"queue-server"});
        let t = forge(&header, &claims, "AAAA");
        assert_eq!(s.verify(&t).unwrap_err().reason, "bad_signature");
    }

    #[test]
    fn deep_header_ticket_is_malformed_without_recursing() {
        for objects in [false, true] {
            let ticket = deep_header_token(16 * 1024, objects);
            let reason = on_small_stack(move || {
                let v =
                    TicketVerifier::from_config(&auth_cfg(TokenAlg::HS256, HS_SECRET, "")).unwrap();
                v.verify(Some(&ticket), 1).unwrap_err().reason
            });
            assert_eq!(reason, "malformed");
        }
    }

    /// The claims are parsed by `jsonwebtoken` (serde_json) only after the signature
    /// checked, and within [`TOKEN_BYTES_MAX`] (~1,500 levels at most). serde_json skips
    /// an unknown value without recursing and stops a parsed one at 128 levels, so even a
    /// key holder's deeply nested claims cannot overflow a thread stack of the default
    /// 2 MiB (io loops and the control thread get that).
    #[test]
    fn deep_claims_from_a_key_holder_do_not_recurse() {
        let depth = 1400;
        let signed = |field: &str| {
            let claims = format!(
                r#"{{"sub":"1","exp":{},"{field}":{}{}}}"#,
                now() + 60,
                "[".repeat(depth),
                "]".repeat(depth)
            );
            let head = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
            let message = format!("{head}.{}", URL_SAFE_NO_PAD.encode(claims));
            let sig = jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &EncodingKey::from_secret(HS_SECRET.as_bytes()),
                Algorithm::HS256,
            )
            .unwrap();
            let token = format!("{message}.{sig}");
            assert!(token.len() <= TOKEN_BYTES_MAX);
            token
        };
        let (unknown, aud) = (signed("x"), signed("aud"));
        let (unknown, aud) = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || {
                let v =
                    TicketVerifier::from_config(&auth_cfg(TokenAlg::HS256, HS_SECRET, "")).unwrap();
                (v.verify(Some(&unknown), 1), v.verify(Some(&aud), 1))
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(unknown, Ok(Ticket { prio: false }), "unknown claim skipped");
        assert!(aud.is_err(), "a parsed claim stops at serde_json's limit");
    }

    #[test]
    fn oversized_token_or_header_is_malformed() {
        let s = ed_signer();
        // Correctly signed, but longer than the bound.
        let long = s.sign(1, &"q".repeat(TOKEN_BYTES_MAX), "j", now(), now() + 300);
        assert!(long.len() > TOKEN_BYTES_MAX);
        assert_eq!(s.verify(&long).unwrap_err().reason, "malformed");
        let fits = s.sign(1, &"q".repeat(1000), "j", now(), now() + 300);
        assert!(s.verify(&fits).is_ok());
        // A flat header past HEADER_BYTES_MAX, in a token under TOKEN_BYTES_MAX.
        let header =
            serde_json::json!({"alg":"EdDSA","kid":s.kid(),"pad":"x".repeat(HEADER_BYTES_MAX)});
        let claims = serde_json::json!({"sub":"1","queue":"q","iat":now(),"exp":now()+300,"jti":"j","iss":"queue-server"});
        let t = forge(&header, &claims, "AAAA");
        assert!(t.len() <= TOKEN_BYTES_MAX);
        assert_eq!(s.verify(&t).unwrap_err().reason, "malformed");
        let v = TicketVerifier::from_config(&auth_cfg(TokenAlg::HS256, HS_SECRET, "")).unwrap();
        let big =
            ticket(serde_json::json!({"sub":"1","exp":now()+60,"pad":"x".repeat(TOKEN_BYTES_MAX)}));
        assert_eq!(v.verify(Some(&big), 1).unwrap_err().reason, "malformed");
    }

    #[test]
    fn types_are_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<TokenSigner>();
        check::<TicketVerifier>();
    }
}
