//! Unit tests of admission tokens, the JWKS, login tickets and the bounds on untrusted input.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::ThumbprintHash;
use jsonwebtoken::{DecodingKey, EncodingKey, Validation};

use super::signer::DERIVED_KID_CHARS;
use super::*;
use crate::config::{AuthConfig, AuthMode, TokenConfig};

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
    let hs =
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(x.as_bytes())).unwrap();
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
    let (p, generated) = TokenSigner::from_config(&token_cfg(TokenAlg::EdDSA, &padded)).unwrap();
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
    let v = TicketVerifier::from_config(&auth_cfg(TokenAlg::HS256, HS_SECRET, "accounts")).unwrap();
    let good = ticket(serde_json::json!({"sub":"42","exp":now()+60,"iss":"accounts"}));
    assert_eq!(v.verify(Some(&good), 42), Ok(Ticket { prio: false }));
    assert_eq!(v.verify(Some(&good), 43).unwrap_err().reason, "wrong_user");
    assert_eq!(v.verify(None, 42).unwrap_err().reason, "missing_ticket");
    assert_eq!(v.verify(Some(""), 42).unwrap_err().reason, "missing_ticket");
    let old = ticket(serde_json::json!({"sub":"42","exp":now()-3600,"iss":"accounts"}));
    assert_eq!(v.verify(Some(&old), 42).unwrap_err().reason, "expired");
    let vip = ticket(serde_json::json!({"sub":"42","exp":now()+60,"iss":"accounts","prio":"vip"}));
    assert_eq!(v.verify(Some(&vip), 42), Ok(Ticket { prio: true }));
    let other_prio =
        ticket(serde_json::json!({"sub":"42","exp":now()+60,"iss":"accounts","prio":"gold"}));
    assert_eq!(v.verify(Some(&other_prio), 42), Ok(Ticket { prio: false }));
    let no_exp = ticket(serde_json::json!({"sub":"42","iss":"accounts"}));
    assert_eq!(
        v.verify(Some(&no_exp), 42).unwrap_err().reason,
        "missing_claim"
    );
    let later =
        ticket(serde_json::json!({"sub":"42","exp":now()+7200,"nbf":now()+3600,"iss":"accounts"}));
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
            let v = TicketVerifier::from_config(&auth_cfg(TokenAlg::HS256, HS_SECRET, "")).unwrap();
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
            let v = TicketVerifier::from_config(&auth_cfg(TokenAlg::HS256, HS_SECRET, "")).unwrap();
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
