//! Login tickets (`auth.mode = "jwt"`): AUTH_FAILED cases and the priority lane.

mod common;

use common::start;
use serde_json::json;

const SECRET: &str = "ticket-secret-ticket-secret-0123456789";

fn config() -> String {
    format!(
        "[server]\npush_interval_ms = 20\n[auth]\nmode = \"jwt\"\nalg = \"HS256\"\nkey = \"{SECRET}\"\nissuer = \"accounts\"\n"
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn ticket(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn good(user: u64, prio: Option<&str>) -> String {
    let mut claims = json!({"sub": user.to_string(), "exp": now() + 600, "iss": "accounts"});
    if let Some(p) = prio {
        claims["prio"] = json!(p);
    }
    ticket(claims, SECRET)
}

#[test]
fn bad_tickets_get_auth_failed_and_close() {
    let s = start(&config());
    let cases = [
        ("missing", None),
        ("garbage", Some("not.a.jwt".to_string())),
        (
            "wrong secret",
            Some(ticket(
                json!({"sub": "1", "exp": now() + 600, "iss": "accounts"}),
                "another-secret-another-secret-0000",
            )),
        ),
        (
            "expired",
            Some(ticket(
                json!({"sub": "1", "exp": now() - 600, "iss": "accounts"}),
                SECRET,
            )),
        ),
        ("other user", Some(good(2, None))),
        (
            "wrong issuer",
            Some(ticket(
                json!({"sub": "1", "exp": now() + 600, "iss": "evil"}),
                SECRET,
            )),
        ),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#),
                b64(&json!({"sub":"1","exp":now()+600,"iss":"accounts"}).to_string())
            )),
        ),
    ];
    for (name, t) in cases {
        let mut c = s.client();
        let mut data = json!({"user_id": 1});
        if let Some(t) = t {
            data["ticket"] = json!(t);
        }
        let v = c.request("login", 1, data);
        assert_eq!(v["code"], 4, "{name}: {v}");
        c.expect_closed();
    }
    // And a good one is accepted.
    let mut c = s.client();
    let v = c.request("login", 1, json!({"user_id": 1, "ticket": good(1, None)}));
    assert_eq!(v["code"], 0, "{v}");
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[test]
fn vip_ticket_goes_to_the_priority_lane() {
    let s = start(&config());
    let mut normal = Vec::new();
    for user in 1..=3u64 {
        let mut c = s.client();
        let v = c.request(
            "login",
            1,
            json!({"user_id": user, "ticket": good(user, None)}),
        );
        assert_eq!(v["data"]["position"], user);
        normal.push(c);
    }
    let mut vip = s.client();
    let v = vip.request(
        "login",
        1,
        json!({"user_id": 99, "ticket": good(99, Some("vip"))}),
    );
    assert_eq!(v["data"]["position"], 1, "{v}");
    // Everyone behind moved back by one: the only way a position may rise.
    for (i, c) in normal.iter_mut().enumerate() {
        c.wait_position(i as u64 + 2);
    }
    // The priority player is admitted first.
    let (_, body) = s.http(
        "POST",
        "/v1/queues/default/admit",
        Some(json!({"count": 1})),
    );
    assert_eq!(body["admitted"][0]["user_id"], 99);
    assert_eq!(s.queue_stats("default")["waiting"], 3);
}
