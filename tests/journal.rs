//! The player journal and removal over a real server (issue 10, section 3):
//! `GET /v1/users/{user_id}?queue=Q` and `DELETE /v1/queues/{q}/players/{user_id}`.
//! Waits poll with a deadline; nothing asserts on timing.

mod common;

use std::time::{Duration, Instant};

use common::{http, TestServer, WAIT};
use serde_json::{json, Value};

/// Short push interval so pushes arrive quickly in tests.
const FAST: &str = "[server]\npush_interval_ms = 20\n";

/// `GET /v1/users/{user}` (default queue).
fn journal(s: &TestServer, user: u64) -> (u16, Value) {
    s.http("GET", &format!("/v1/users/{user}"), None)
}

/// Polls the journal of `user` until `pred` holds.
fn wait_journal(s: &TestServer, user: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = journal(s, user);
        if status == 200 && pred(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The events of a journal answer named `name`.
fn events<'a>(body: &'a Value, name: &str) -> Vec<&'a Value> {
    body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event"] == name)
        .collect()
}

/// Login, positions asked, disconnect and resume, admission and token use: the journal
/// shows each, and the state follows.
#[test]
fn the_journal_tells_what_happened_to_a_player() {
    let s = common::start(FAST);
    let (_a, _) = s.player(1);
    let (mut b, lb) = s.player(2);
    assert_eq!(lb["data"]["position"], 2);
    let peer = b.stream.local_addr().expect("local addr").to_string();

    let (status, body) = journal(&s, 2);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "waiting", "{body}");
    assert_eq!(body["position"], 2);
    assert_eq!(body["lane"], "normal");
    assert_eq!(body["queue"], "default");
    let connected = events(&body, "connected");
    assert_eq!(connected.len(), 1, "{body}");
    assert_eq!(connected[0]["peer"], peer.as_str(), "{body}");
    assert_eq!(connected[0]["loop"], 0);
    assert!(connected[0]["at_ms"].as_u64().expect("time") > 1_600_000_000_000);
    let logged_in = events(&body, "logged_in");
    assert_eq!(logged_in[0]["position"], 2, "{body}");

    for seq in 2..5 {
        let answer = b.request("position", seq, json!({}));
        assert_eq!(answer["data"]["position"], 2);
    }
    drop(b);
    let body = wait_journal(&s, 2, "grace", |b| b["state"] == "grace");
    assert!(body["grace_until_ms"].as_u64().is_some(), "{body}");
    assert_eq!(body["positions"]["answered"], 3, "{body}");
    assert_eq!(body["positions"]["last"], 2, "{body}");
    assert!(body["positions"]["as_of_ms"].as_u64().expect("time") > 0);
    assert_eq!(events(&body, "disconnected").len(), 1, "{body}");

    let mut b = s.client();
    let again = b.login(2);
    assert_eq!(again["data"]["resumed"], true, "{again}");
    let (_, body) = journal(&s, 2);
    assert_eq!(body["state"], "waiting", "{body}");
    assert_eq!(events(&body, "connected").len(), 2, "{body}");
    assert_eq!(events(&body, "resumed")[0]["position"], 2, "{body}");

    let (status, admitted) = s.http(
        "POST",
        "/v1/queues/default/admit",
        Some(json!({"count": 2})),
    );
    assert_eq!(status, 200, "{admitted}");
    let token = b.next_cmd("admitted")["data"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    let (_, body) = journal(&s, 2);
    assert_eq!(body["state"], "admitted", "{body}");
    assert_eq!(body["used"], false, "{body}");
    let jti = body["jti"].as_str().expect("jti").to_string();
    assert_eq!(events(&body, "admitted")[0]["jti"], jti.as_str());

    let (_, verified) = s.http("POST", "/v1/tokens/verify", Some(json!({"token": token})));
    assert_eq!(verified["valid"], true, "{verified}");
    let (_, body) = journal(&s, 2);
    assert_eq!(body["state"], "admitted", "{body}");
    assert_eq!(body["used"], true, "{body}");
    assert_eq!(body["jti"], jti.as_str());
    assert_eq!(events(&body, "token_verified")[0]["jti"], jti.as_str());

    let order: Vec<&str> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event"].as_str().expect("name"))
        .collect();
    assert_eq!(
        order,
        [
            "connected",
            "logged_in",
            "disconnected",
            "connected",
            "resumed",
            "admitted",
            "token_verified"
        ],
        "{body}"
    );
}

/// DELETE of a waiting player: its socket gets `kicked` `removed` and closes, the one
/// behind moves up, the journal says so; 404 when there is nothing to remove or know.
/// An admitted player's unused token is voided.
#[test]
fn delete_removes_a_player_and_moves_the_one_behind() {
    let s = common::start(FAST);
    let (_a, _) = s.player(1);
    let (mut b, _) = s.player(2);
    let (mut c, lc) = s.player(3);
    assert_eq!(lc["data"]["position"], 3);

    let (status, body) = s.http("DELETE", "/v1/queues/default/players/2", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"removed": true, "state": "waiting"}));
    let kicked = b.next_cmd("kicked");
    assert_eq!(kicked["data"]["reason"], "removed", "{kicked}");
    b.expect_closed();
    c.wait_position(2);

    let (status, body) = journal(&s, 2);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "unknown", "{body}");
    assert_eq!(events(&body, "kicked")[0]["reason"], "removed", "{body}");
    assert_eq!(events(&body, "removed")[0]["held"], "waiting", "{body}");

    let (status, body) = s.http("DELETE", "/v1/queues/default/players/2", None);
    assert_eq!((status, &body), (404, &json!({"error": "no such player"})));
    let (status, _) = s.http("DELETE", "/v1/queues/nope/players/1", None);
    assert_eq!(status, 404);
    let (status, body) = journal(&s, 999);
    assert_eq!((status, &body), (404, &json!({"error": "no such player"})));
    let (status, _) = s.http("GET", "/v1/users/1?queue=nope", None);
    assert_eq!(status, 404);
    let (status, _) = s.http("GET", "/v1/users/not-a-number", None);
    assert_eq!(status, 400);
    let (status, _) = s.http("GET", "/v1/queues/default/players/1", None);
    assert_eq!(status, 405);

    // Player 1 admitted by HTTP (the token came back in the answer): removal voids it.
    let (_, admitted) = s.http(
        "POST",
        "/v1/queues/default/admit",
        Some(json!({"count": 1})),
    );
    let token = admitted["admitted"][0]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("a token: {admitted}"))
        .to_string();
    let (status, body) = s.http("DELETE", "/v1/queues/default/players/1", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "admitted");
    let (_, verified) = s.http("POST", "/v1/tokens/verify", Some(json!({"token": token})));
    assert_eq!(verified["valid"], false, "{verified}");
}

/// The bearer key guards both routes; with the journal off the GET answers 501 and the
/// DELETE still works.
#[test]
fn api_key_required_and_journal_off_answers_501() {
    const KEY: &str = "journal-test-key";
    let s = common::start(&format!("[control]\napi_key = \"{KEY}\"\n"));
    let (_p, _) = s.player(5);
    for (method, path) in [
        ("GET", "/v1/users/5"),
        ("DELETE", "/v1/queues/default/players/5"),
    ] {
        let (status, _) = http(s.control, method, path, None, None);
        assert_eq!(status, 401, "{method} {path}");
        let (status, _) = http(s.control, method, path, None, Some("wrong"));
        assert_eq!(status, 401, "{method} {path}");
    }
    let (status, body) = http(s.control, "GET", "/v1/users/5", None, Some(KEY));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "waiting");

    let off = common::start("[journal]\nenabled = false\n");
    let (mut p, _) = off.player(5);
    let (status, body) = journal(&off, 5);
    assert_eq!(status, 501, "{body}");
    assert!(body["error"].as_str().expect("error").contains("journal"));
    let (status, body) = off.http("DELETE", "/v1/queues/default/players/5", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(p.next_cmd("kicked")["data"]["reason"], "removed");
}

/// A disconnected player whose reconnect grace runs out: the journal shows the
/// disconnect, then the expiry, and the state is unknown.
#[test]
fn the_journal_shows_grace_running_out() {
    let s = common::start("[server]\nreconnect_grace_secs = 0\n");
    let (mut p, _) = s.player(3);
    let answer = p.request("position", 2, json!({}));
    assert_eq!(answer["data"]["position"], 1);
    drop(p);
    let body = wait_journal(&s, 3, "grace expiry", |b| {
        !events(b, "grace_expired").is_empty()
    });
    assert_eq!(body["state"], "unknown", "{body}");
    assert_eq!(body["positions"]["answered"], 1, "{body}");
    let order: Vec<&str> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event"].as_str().expect("name"))
        .collect();
    assert_eq!(
        order,
        ["connected", "logged_in", "disconnected", "grace_expired"],
        "{body}"
    );
}
