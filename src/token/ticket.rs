//! Login tickets signed by the game's account service (docs/protocol.md section 1.7).
//!
//! Owns: [`TicketVerifier`], built from `[auth]`. Invariants: immutable after
//! construction and shared by every io loop; with `mode = "jwt"` a ticket is checked with
//! the configured algorithm and key only (its own `alg` never chooses), gets
//! [`TICKET_LEEWAY_SECS`] of clock skew, and must name the `login`'s `user_id` as `sub`.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;

use super::bounds::peek_header;
use super::{
    alg_name, check_secret, decode_fixed, jwt_alg, reason_of, Ticket, TicketError, TokenError,
    ED25519_KEY_BYTES, TICKET_LEEWAY_SECS,
};
use crate::config::{AuthConfig, AuthMode, TokenAlg};

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
