//! Admission tokens signed by this server (docs/protocol.md section 2) and the JWKS that
//! lets a game server verify them offline.
//!
//! Owns: [`TokenSigner`]: key material from `[tokens]` (given or generated), the derived
//! `kid`, the fixed header, the JWKS text and the verification rules. Invariants: the
//! signer is immutable after [`TokenSigner::from_config`]; signing is deterministic; an
//! HS256 secret is never published (empty JWKS, `kid` is an HMAC of a constant); a token
//! verifies only with our algorithm, our `kid`, `exp` strictly in the future and our
//! `iss`.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::Signer as _;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};

use super::bounds::peek_header;
use super::{
    alg_name, check_secret, decode_fixed, jwt_alg, reason_of, unix_now, TokenError, VerifiedToken,
    VerifyError, ED25519_KEY_BYTES, HS256_SECRET_MIN_BYTES, TICKET_LEEWAY_SECS,
};
use crate::config::{TokenAlg, TokenConfig};

/// Characters of the RFC 7638 thumbprint kept as a derived EdDSA `kid` (96 bits).
pub(super) const DERIVED_KID_CHARS: usize = 16;
/// Message whose HMAC names an HS256 key without revealing anything about the secret.
const HS256_KID_MESSAGE: &[u8] = b"queue-server kid v1";

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

/// The key material of one algorithm, before the configured `kid` overrides the derived one.
struct KeyMaterial {
    /// The private half.
    sign_key: SignKey,
    /// The verifying half (public key or the same secret).
    decoding: DecodingKey,
    /// Ed25519 public key in base64url, published in the JWKS; `None` for HS256.
    jwk_x: Option<String>,
    /// `kid` derived from the key: a thumbprint prefix (EdDSA) or an HMAC of a constant
    /// (HS256, so nothing about the secret leaks).
    derived_kid: String,
}

/// Ed25519 key from `tokens.key` (a base64url seed), or a fresh one when `generate`.
fn ed25519_keys(cfg: &TokenConfig, generate: bool) -> Result<KeyMaterial, TokenError> {
    let seed: [u8; ED25519_KEY_BYTES] = if generate {
        let mut seed = [0u8; ED25519_KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        seed
    } else {
        decode_fixed("tokens.key", &cfg.key)?
    };
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let x = URL_SAFE_NO_PAD.encode(signing.verifying_key().to_bytes());
    let decoding = DecodingKey::from_ed_components(&x).expect("32 bytes just encoded as base64url");
    let jwk = Jwk::from_decoding_key(&decoding, Some(Algorithm::EdDSA))
        .expect("a 32-byte Ed25519 key is a valid OKP JWK");
    let thumbprint = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .expect("OKP Ed25519 thumbprint is defined (RFC 8037)");
    Ok(KeyMaterial {
        sign_key: SignKey::Ed(signing),
        decoding,
        jwk_x: Some(x),
        derived_kid: thumbprint[..DERIVED_KID_CHARS].to_string(),
    })
}

/// HS256 secret from `tokens.key` (its bytes), or a fresh random one when `generate`.
fn hs256_keys(cfg: &TokenConfig, generate: bool) -> Result<KeyMaterial, TokenError> {
    let secret: Vec<u8> = if generate {
        let mut secret = vec![0u8; HS256_SECRET_MIN_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        secret
    } else {
        cfg.key.as_bytes().to_vec()
    };
    check_secret("tokens.key", &secret)?;
    let encoding = EncodingKey::from_secret(&secret);
    let mac = jsonwebtoken::crypto::sign(HS256_KID_MESSAGE, &encoding, Algorithm::HS256)
        .expect("HMAC-SHA256 accepts any key");
    let mac = URL_SAFE_NO_PAD
        .decode(mac)
        .expect("jsonwebtoken writes base64url");
    Ok(KeyMaterial {
        sign_key: SignKey::Hs(encoding),
        decoding: DecodingKey::from_secret(&secret),
        jwk_x: None,
        derived_kid: format!(
            "hs256-{:02x}{:02x}{:02x}{:02x}",
            mac[0], mac[1], mac[2], mac[3]
        ),
    })
}

/// base64url of the fixed header `{"alg","typ":"JWT","kid"}`, written once.
fn header_b64(alg: TokenAlg, kid: &str) -> String {
    let header_json = sonic_rs::to_vec(&HeaderOut {
        alg: alg_name(alg),
        typ: "JWT",
        kid,
    })
    .expect("a struct of strings serializes");
    URL_SAFE_NO_PAD.encode(header_json)
}

/// The `GET /v1/keys` document: the Ed25519 public key, or no key at all for HS256.
fn jwks_text(jwk_x: Option<&str>, kid: &str) -> String {
    sonic_rs::to_string(&JwksOut {
        keys: jwk_x
            .map(|x| JwkOut {
                kty: "OKP",
                crv: "Ed25519",
                x,
                kid,
                alg: "EdDSA",
                use_: "sig",
            })
            .into_iter()
            .collect(),
    })
    .expect("a struct of strings serializes")
}

/// What `verify` requires of a token: our alg only, no leeway, `exp`/`iss`/`sub`, our `iss`.
fn token_validation(cfg: &TokenConfig) -> Validation {
    let mut validation = Validation::new(jwt_alg(cfg.alg));
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "iss", "sub"]);
    validation.set_issuer(&[cfg.issuer.as_str()]);
    validation
}

impl TokenSigner {
    /// From `[tokens]` config. `generated` = true when `tokens.key` was empty and a fresh
    /// key was made (the caller warns: tokens then do not survive a restart).
    pub fn from_config(cfg: &TokenConfig) -> Result<(TokenSigner, bool), TokenError> {
        let generated = cfg.key.is_empty();
        let keys = match cfg.alg {
            TokenAlg::EdDSA => ed25519_keys(cfg, generated)?,
            TokenAlg::HS256 => hs256_keys(cfg, generated)?,
        };
        let kid = if cfg.kid.is_empty() {
            keys.derived_kid
        } else {
            cfg.kid.clone()
        };
        let signer = TokenSigner {
            alg: cfg.alg,
            issuer: cfg.issuer.clone(),
            header_b64: header_b64(cfg.alg, &kid),
            jwks: jwks_text(keys.jwk_x.as_deref(), &kid),
            kid,
            sign_key: keys.sign_key,
            decoding: keys.decoding,
            validation: token_validation(cfg),
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
