//! Untrusted JWT headers are parsed within bounds: a login ticket or a token to verify
//! whose header is nested 16 Ki levels deep is refused as `malformed` (AUTH_FAILED on the
//! player port, `valid: false` on the control port) and the server keeps serving. Before
//! the bound, sonic-rs recursed once per level and overflowed the io loop's or the control
//! thread's stack, which aborts the whole process (this test binary included).

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::start;
use serde_json::json;

const SECRET: &str = "ticket-secret-ticket-secret-0123456789";

/// Nesting of the hostile header: far past any stack in a debug build, and past a
/// 2 MiB thread stack in release too.
const DEPTH: usize = 16 * 1024;

/// Frames large enough that the hostile ticket reaches the ticket check (the default
/// 1 KiB login frame limit would refuse it earlier, hiding the parser).
fn config() -> String {
    format!(
        "[server]\nmax_frame_bytes = 65536\nmax_login_frame_bytes = 65536\nmax_outbound_bytes = 262144\n\
         [auth]\nmode = \"jwt\"\nalg = \"HS256\"\nkey = \"{SECRET}\"\nissuer = \"accounts\"\n"
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `header.claims.sig` where the header is `DEPTH` nested arrays.
fn deep_token() -> String {
    let header = format!("{}{}", "[".repeat(DEPTH), "]".repeat(DEPTH));
    let claims = json!({"sub": "1", "exp": now() + 600, "iss": "accounts"}).to_string();
    format!(
        "{}.{}.AAAA",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    )
}

fn good_ticket(user: u64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user.to_string(), "exp": now() + 600, "iss": "accounts"}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[test]
fn deep_header_ticket_gets_auth_failed_and_the_server_serves() {
    let s = start(&config());
    let mut c = s.client();
    let answer = c.request("login", 1, json!({"user_id": 1, "ticket": deep_token()}));
    assert_eq!(answer["code"], 4, "AUTH_FAILED expected: {answer}");
    assert!(
        answer["msg"].as_str().unwrap_or("").contains("malformed"),
        "{answer}"
    );
    c.expect_closed();

    // Another player is still served, on a fresh connection.
    let mut other = s.client();
    let answer = other.request("login", 1, json!({"user_id": 2, "ticket": good_ticket(2)}));
    assert_eq!(answer["code"], 0, "{answer}");
    let (status, _) = s.http("GET", "/healthz", None);
    assert_eq!(status, 200);
}

#[test]
fn deep_header_token_to_verify_is_malformed_and_the_server_serves() {
    let s = start(&config());
    let (status, body) = s.http(
        "POST",
        "/v1/tokens/verify",
        Some(json!({"token": deep_token()})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"valid": false, "reason": "malformed"}));

    // The control port still answers, and so does the player port.
    let (status, body) = s.http("GET", "/v1/stats", None);
    assert_eq!(status, 200, "{body}");
    let mut c = s.client();
    let answer = c.request("login", 1, json!({"user_id": 3, "ticket": good_ticket(3)}));
    assert_eq!(answer["code"], 0, "{answer}");
}

#[test]
fn oversized_ticket_is_malformed() {
    let s = start(&config());
    // A correctly signed ticket, padded past the 4 KiB bound with an extra claim.
    let big = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "5", "exp": now() + 600, "iss": "accounts", "pad": "x".repeat(5000)}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut c = s.client();
    let answer = c.request("login", 1, json!({"user_id": 5, "ticket": big}));
    assert_eq!(answer["code"], 4, "{answer}");
    assert!(
        answer["msg"].as_str().unwrap_or("").contains("malformed"),
        "{answer}"
    );
}
