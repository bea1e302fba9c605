//! End to end: a real server on 127.0.0.1:0, players over TCP, operators over HTTP.
//! No timing assertions: waits are bounded by a generous deadline only to fail instead
//! of hanging.

mod common;

use std::time::{Duration, Instant};

use common::{start, start_cores, Client, TestServer};
use serde_json::{json, Value};

/// Short push interval so pushes arrive quickly in tests.
const FAST: &str = "[server]\npush_interval_ms = 20\n";

fn admit(s: &TestServer, n: u64) -> Value {
    let (status, body) = s.http(
        "POST",
        "/v1/queues/default/admit",
        Some(json!({"count": n})),
    );
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn login_then_positions_follow_leaves_and_admissions() {
    let s = start(FAST);
    let (mut a, la) = s.player(1);
    let (mut b, lb) = s.player(2);
    let (mut c, lc) = s.player(3);
    assert_eq!(la["data"]["state"], "waiting");
    assert_eq!(la["data"]["position"], 1);
    assert_eq!(lb["data"]["position"], 2);
    assert_eq!(lc["data"]["position"], 3);
    assert_eq!(lc["data"]["queue_len"], 3);
    assert_eq!(lc["data"]["resumed"], false);
    assert_eq!(lc["data"]["eta_secs"], Value::Null, "nothing admitted yet");

    // A leaves: B and C move up.
    let left = a.request("leave", 7, json!({}));
    assert_eq!(left["code"], 0);
    a.expect_closed();
    b.wait_position(1);
    let push = c.wait_position(2);
    assert_eq!(push["data"]["queue_len"], 2);

    // B is admitted: C is now first, and an ETA is known.
    admit(&s, 1);
    let adm = b.next_cmd("admitted");
    assert!(adm["data"]["token"].as_str().unwrap().len() > 20);
    let push = c.wait_position(1);
    assert!(push["data"]["eta_secs"].is_u64(), "{push}");
    let pos = c.request("position", 9, json!({}));
    assert_eq!(pos["data"]["position"], 1);
    assert_eq!(pos["data"]["queue_len"], 1);
}

#[test]
fn admitted_token_verifies_once_and_offline() {
    let s = start(FAST);
    let (mut p, _) = s.player(42);
    let body = admit(&s, 5);
    let list = body["admitted"].as_array().unwrap();
    assert_eq!(list.len(), 1, "only one player waiting: {body}");
    assert_eq!(list[0]["user_id"], 42);
    let pushed = p.next_cmd("admitted");
    let token = pushed["data"]["token"].as_str().unwrap().to_string();
    assert_eq!(list[0]["token"], token.as_str());
    assert_eq!(pushed["data"]["expires_at"], list[0]["expires_at"]);
    assert_eq!(pushed["data"]["login_addr"], Value::Null);

    // Offline: the JWKS public key verifies the signature and claims.
    let (status, jwks) = s.http("GET", "/v1/keys", None);
    assert_eq!(status, 200);
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(header.kid.as_deref(), key["kid"].as_str());
    let dk = jsonwebtoken::DecodingKey::from_ed_components(key["x"].as_str().unwrap()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_issuer(&["queue-server"]);
    let claims = jsonwebtoken::decode::<Value>(&token, &dk, &v)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "42");
    assert_eq!(claims["queue"], "default");
    assert!(claims["jti"].as_str().unwrap().len() >= 16);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        300
    );

    // Online: valid once, then already used.
    let (status, first) = s.http("POST", "/v1/tokens/verify", Some(json!({"token": token})));
    assert_eq!(status, 200);
    assert_eq!(first["valid"], true, "{first}");
    assert_eq!(first["user_id"], 42);
    assert_eq!(first["queue"], "default");
    let (_, second) = s.http("POST", "/v1/tokens/verify", Some(json!({"token": token})));
    assert_eq!(second["valid"], false, "{second}");

    // A tampered token is refused.
    let mut bad = token.clone().into_bytes();
    let last = bad.len() - 2;
    bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).unwrap();
    let (_, third) = s.http("POST", "/v1/tokens/verify", Some(json!({"token": bad})));
    assert_eq!(third["valid"], false, "{third}");
}

#[test]
fn duplicate_login_kicks_the_older_connection_and_keeps_the_place() {
    let s = start(FAST);
    let (_a, _) = s.player(1);
    let (mut old, first) = s.player(2);
    assert_eq!(first["data"]["position"], 2);
    let (_new, again) = s.player(2);
    assert_eq!(again["data"]["position"], 2);
    assert_eq!(again["data"]["resumed"], true);
    let kicked = old.next_cmd("kicked");
    assert_eq!(kicked["data"]["reason"], "duplicate_login");
    old.expect_closed();
    assert_eq!(s.queue_stats("default")["waiting"], 2);
}

/// Polls `/v1/stats` until the server counts `n` open player connections.
fn wait_connections(s: &TestServer, n: u64) {
    let deadline = Instant::now() + common::WAIT;
    loop {
        let (status, body) = s.http("GET", "/v1/stats", None);
        assert_eq!(status, 200, "{body}");
        if body["connections"] == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {n} connections: {body}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn reconnect_within_grace_resumes_the_place() {
    let s = start(FAST);
    let (_a, _) = s.player(1);
    let (b, _) = s.player(2);
    let (mut c, _) = s.player(3);
    drop(b);
    // Wait until B's loop has seen the close: it told the core (grace starts) before it
    // stopped counting the connection. Logging in earlier could take the duplicate-login
    // path instead, which also answers `resumed: true`.
    wait_connections(&s, 2);
    // B is in grace: C does not move, and B's place is still counted.
    assert_eq!(s.queue_stats("default")["waiting"], 3);
    let (_b2, again) = s.player(2);
    assert_eq!(again["data"]["resumed"], true, "{again}");
    assert_eq!(again["data"]["position"], 2, "{again}");
    assert_eq!(c.request("position", 2, json!({}))["data"]["position"], 3);
}

#[test]
fn grace_expiry_releases_the_place() {
    let s = start("[server]\npush_interval_ms = 20\nreconnect_grace_secs = 1\n");
    let (b, _) = s.player(2);
    let (mut c, _) = s.player(3);
    drop(b);
    c.wait_position(1);
    let stats = s.wait_stats("default", "grace expiry", |q| q["waiting"] == 1);
    assert_eq!(stats["left_total"], 1);
    let (_b2, again) = s.player(2);
    assert_eq!(again["data"]["resumed"], false);
    assert_eq!(again["data"]["position"], 2);
}

#[test]
fn idle_timeout_kicks_but_keeps_the_place() {
    let s = start("[server]\nidle_timeout_secs = 1\n");
    let (mut p, _) = s.player(5);
    let kicked = p.next_cmd("kicked");
    assert_eq!(kicked["data"]["reason"], "idle_timeout");
    p.expect_closed();
    let (_p2, again) = s.player(5);
    assert_eq!(again["data"]["resumed"], true);
}

#[test]
fn heartbeats_keep_a_connection_alive() {
    let s = start("[server]\nidle_timeout_secs = 1\n");
    let (mut p, _) = s.player(5);
    for i in 0..6u32 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let hb = p.request("heartbeat", 10 + i, json!({"ts": 77}));
        assert_eq!(hb["code"], 0, "{hb}");
        assert_eq!(hb["data"]["ts"], 77);
        assert!(hb["data"]["server_ms"].as_u64().unwrap() > 1_600_000_000_000);
    }
}

#[test]
fn login_timeout_closes_silent_connections() {
    let s = start("[server]\nlogin_timeout_secs = 1\n");
    let mut c = s.client();
    assert!(c.recv().is_none(), "closed without a frame");
}

fn expect_error(c: &mut common::Client, code: u64, closes: bool) -> Value {
    let v = c.next();
    assert_eq!(v["code"], code, "{v}");
    if closes {
        c.expect_closed();
    }
    v
}

#[test]
fn bad_frames_get_bad_frame_and_close() {
    let s = start("");
    // Not JSON.
    let mut c = s.client();
    c.send_body(b"hello");
    expect_error(&mut c, 1, true);
    // JSON but not an object.
    let mut c = s.client();
    c.send_body(b"[1,2]");
    expect_error(&mut c, 1, true);
    // Missing cmd.
    let mut c = s.client();
    c.send_body(br#"{"seq":1}"#);
    expect_error(&mut c, 1, true);
    // Ill-typed field.
    let mut c = s.client();
    c.send_body(br#"{"cmd":"login","seq":1,"data":{"user_id":"x"}}"#);
    expect_error(&mut c, 1, true);
    // Zero length.
    let mut c = s.client();
    c.send_raw(&[0, 0, 0, 0]);
    expect_error(&mut c, 1, true);
    // Over the limit: refused from the header alone, no body sent.
    let mut c = s.client();
    c.send_raw(&(1_000_000u32).to_be_bytes());
    expect_error(&mut c, 1, true);
}

#[test]
fn frames_split_byte_by_byte_and_batched_are_understood() {
    let s = start("");
    let mut c = s.client();
    let login = json!({"cmd":"login","seq":1,"data":{"user_id":9}}).to_string();
    let mut frame = (login.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(login.as_bytes());
    for byte in frame {
        c.send_raw(&[byte]);
    }
    assert_eq!(c.next()["code"], 0);
    let mut many = Vec::new();
    for seq in 2..12u32 {
        let body = json!({"cmd":"heartbeat","seq":seq}).to_string();
        many.extend_from_slice(&(body.len() as u32).to_be_bytes());
        many.extend_from_slice(body.as_bytes());
    }
    c.send_raw(&many);
    for seq in 2..12u32 {
        let v = c.next();
        assert_eq!(v["seq"], seq, "answers in request order");
        assert_eq!(v["cmd"], "heartbeat");
    }
}

#[test]
fn unsupported_already_logged_in_and_not_logged_in() {
    let s = start("");
    let mut c = s.client();
    // Unknown cmd and unknown version: code 2, connection stays open.
    c.send(&json!({"cmd":"dance","seq":3}));
    let v = expect_error(&mut c, 2, false);
    assert_eq!(v["seq"], 3);
    assert_eq!(v["cmd"], "dance");
    c.send(&json!({"cmd":"login","seq":4,"ver":2,"data":{"user_id":1}}));
    expect_error(&mut c, 2, false);
    // Still open: login works, a second login is code 7 and the connection stays.
    assert_eq!(c.login(1)["code"], 0);
    c.send(&json!({"cmd":"login","seq":5,"data":{"user_id":1}}));
    expect_error(&mut c, 7, false);
    assert_eq!(c.request("position", 6, json!({}))["code"], 0);

    // Any other command before login: code 3 and closed.
    let mut d = s.client();
    d.send(&json!({"cmd":"position","seq":1}));
    expect_error(&mut d, 3, true);
}

#[test]
fn queue_full_and_unknown_queue() {
    let s = start("[[queues.list]]\nname = \"default\"\nmax_waiting = 1\n");
    let (_a, _) = s.player(1);
    let mut b = s.client();
    let v = b.login(2);
    assert_eq!(v["code"], 5, "{v}");
    b.expect_closed();
    let mut c = s.client();
    let v = c.request("login", 1, json!({"user_id": 3, "queue": "nope"}));
    assert_eq!(v["code"], 6, "{v}");
    c.expect_closed();
}

#[test]
fn auto_create_makes_a_queue_on_first_login() {
    let s = start("[queues]\nauto_create = true\n");
    let mut c = s.client();
    let v = c.request("login", 1, json!({"user_id": 3, "queue": "world-9"}));
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(s.queue_stats("world-9")["waiting"], 1);
}

#[test]
fn login_rate_limit_per_core() {
    let s = start("[server]\nmax_logins_per_sec_per_core = 1\n");
    let (_a, _) = s.player(1);
    let mut b = s.client();
    let v = b.login(2);
    assert_eq!(v["code"], 8, "{v}");
    b.expect_closed();
}

#[test]
fn draining_server_refuses_logins_with_retry_after() {
    let s = start("");
    let mut c = s.client();
    s.handle.as_ref().unwrap().begin_drain();
    let (status, _) = s.http("GET", "/healthz", None);
    assert_eq!(status, 503);
    let v = c.login(1);
    assert_eq!(v["code"], 9, "{v}");
    assert_eq!(v["data"]["retry_after_secs"], 10);
    c.expect_closed();
}

#[test]
fn shutdown_kicks_every_session() {
    let mut s = start("");
    let (mut a, _) = s.player(1);
    let (status, _) = s.http("GET", "/healthz", None);
    assert_eq!(status, 200);
    s.handle.take().unwrap().shutdown();
    let kicked = a.next_cmd("kicked");
    assert_eq!(kicked["data"]["reason"], "shutdown");
    assert_eq!(kicked["data"]["retry_after_secs"], 10);
    a.expect_closed();
}

#[test]
fn two_cores_all_sessions_see_exact_positions() {
    let s = start_cores(FAST, 2);
    let mut players = Vec::new();
    for user in 0..60u64 {
        let (c, login) = s.player(user);
        assert_eq!(login["data"]["position"], user + 1);
        players.push(c);
    }
    let stats = &s.handle.as_ref().unwrap().stats;
    let per_loop: Vec<u64> = stats
        .iter()
        .map(|l| l.connections.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    assert!(
        per_loop.iter().all(|&n| n > 0),
        "sessions on both loops: {per_loop:?}"
    );

    // Leaves from the middle and admissions from the head.
    for user in [10u64, 20, 30] {
        let c = &mut players[user as usize];
        assert_eq!(c.request("leave", 2, json!({}))["code"], 0);
    }
    admit(&s, 5);
    let gone = |u: u64| u < 5 || u == 10 || u == 20 || u == 30;
    for user in 0..60u64 {
        if gone(user) {
            continue;
        }
        let ahead = (0..user).filter(|&u| !gone(u)).count() as u64;
        let c = &mut players[user as usize];
        // The push converges to the exact value...
        c.wait_position(ahead + 1);
        // ...and a query agrees.
        let v = c.request("position", 3, json!({}));
        assert_eq!(v["data"]["position"], ahead + 1, "user {user}");
        assert_eq!(v["data"]["queue_len"], 52);
    }
}

#[test]
fn rate_driven_admission() {
    let s = start(FAST);
    let mut players: Vec<_> = (0..20u64).map(|u| s.player(u).0).collect();
    let (status, _) = s.http(
        "PUT",
        "/v1/queues/default/rate",
        Some(json!({"per_second": 200})),
    );
    assert_eq!(status, 200);
    for p in &mut players {
        p.next_cmd("admitted");
    }
    let stats = s.wait_stats("default", "all admitted", |q| q["admitted_total"] == 20);
    assert_eq!(stats["waiting"], 0);
    assert!(stats["admit_rate_per_s"].as_f64().unwrap() > 0.0);
}

/// A player logged in to queue `queue`.
fn player_in(s: &TestServer, user: u64, queue: &str) -> Client {
    let mut c = s.client();
    let v = c.request("login", 1, json!({"user_id": user, "queue": queue}));
    assert_eq!(v["code"], 0, "login of {user} to {queue}: {v}");
    c
}

#[test]
fn pause_stops_rate_admission() {
    // Two queues: `default` is paused, `probe` admits one player every five ticks. The
    // probe's admissions prove that many ticks ran while `default` was paused with a
    // rate that would have admitted all of its players at the first one.
    let s = start(
        "[server]\npush_interval_ms = 20\n[core]\ntick_ms = 10\n\
         [[queues.list]]\nname = \"default\"\n[[queues.list]]\nname = \"probe\"\n",
    );
    let mut waiting: Vec<Client> = (1..=3).map(|u| s.player(u).0).collect();
    let mut probes: Vec<Client> = (101..=105).map(|u| player_in(&s, u, "probe")).collect();
    let (status, _) = s.http("POST", "/v1/queues/default/pause", None);
    assert_eq!(status, 200);
    let rate = |q: &str, per_second: u64| {
        let path = format!("/v1/queues/{q}/rate");
        let (status, body) = s.http("PUT", &path, Some(json!({"per_second": per_second})));
        assert_eq!(status, 200, "{body}");
    };
    rate("default", 1000);
    rate("probe", 20);
    for p in &mut probes {
        p.next_cmd("admitted");
    }
    s.wait_stats("probe", "5 probes admitted", |q| q["admitted_total"] == 5);
    let stats = s.queue_stats("default");
    assert_eq!(stats["paused"], true);
    assert_eq!(stats["admitted_total"], 0, "admitted while paused: {stats}");
    assert_eq!(stats["waiting"], 3, "{stats}");

    // Manual admission still works while paused.
    let body = admit(&s, 1);
    assert_eq!(body["admitted"].as_array().unwrap().len(), 1);
    waiting[0].next_cmd("admitted");

    // Resumed: the rate admits the other two.
    let (status, _) = s.http("POST", "/v1/queues/default/resume", None);
    assert_eq!(status, 200);
    assert_eq!(s.queue_stats("default")["paused"], false);
    for p in &mut waiting[1..] {
        p.next_cmd("admitted");
    }
    s.wait_stats("default", "all admitted", |q| q["admitted_total"] == 3);
}

/// Sends `position` requests until the answer says `expected`, collecting the positions
/// of the pushes that arrive meanwhile (a push is written before a later answer).
fn ask_position_until(p: &mut Client, expected: u64, seq: &mut u32, pushes: &mut Vec<u64>) {
    let deadline = Instant::now() + common::WAIT;
    loop {
        *seq += 1;
        p.send(&json!({"cmd": "position", "seq": *seq}));
        let answer = loop {
            let v = p.next();
            if v["seq"] == 0 {
                assert_eq!(v["cmd"], "position", "unexpected push {v}");
                pushes.push(v["data"]["position"].as_u64().unwrap());
            } else {
                assert_eq!(v["seq"], *seq, "{v}");
                break v;
            }
        };
        if answer["data"]["position"] == expected {
            return;
        }
        assert!(Instant::now() < deadline, "position stuck at {answer}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn position_pushes_are_throttled_to_one_per_interval() {
    // The login answer starts the push interval; at 100 s no push may follow it during
    // this test, however often the position changes.
    let s = start("[server]\npush_interval_ms = 100000\n");
    let _ahead: Vec<Client> = (1..=10).map(|u| s.player(u).0).collect();
    let (mut p, login) = s.player(11);
    assert_eq!(login["data"]["position"], 11);
    let (mut seq, mut pushes, mut admitted) = (1, Vec::new(), 0);
    for _batch in 0..5 {
        admitted += admit(&s, 2)["admitted"].as_array().unwrap().len() as u64;
        // The loop has applied this batch once the (local) answer shows it.
        ask_position_until(&mut p, 11 - admitted, &mut seq, &mut pushes);
    }
    assert_eq!(admitted, 10);
    assert_eq!(pushes, Vec::<u64>::new(), "pushed within one interval");
}

#[test]
fn deferred_position_push_carries_the_latest_value() {
    let s = start(FAST);
    let _ahead: Vec<Client> = (1..=10).map(|u| s.player(u).0).collect();
    let (mut p, _) = s.player(11);
    for _batch in 0..5 {
        admit(&s, 2);
    }
    // Pushes until the latest position: each newer than the one before, at most one
    // per change the loop saw (5 batches), and the last one is the latest value.
    let mut pushes = Vec::new();
    loop {
        let v = p.next();
        assert_eq!(
            (v["cmd"].as_str(), v["seq"].as_u64()),
            (Some("position"), Some(0)),
            "{v}"
        );
        let position = v["data"]["position"].as_u64().unwrap();
        pushes.push(position);
        if position == 1 {
            break;
        }
    }
    assert!(
        pushes.windows(2).all(|w| w[0] > w[1]),
        "out of order: {pushes:?}"
    );
    assert!(pushes.len() <= 5, "more pushes than changes: {pushes:?}");
}

#[test]
fn capacity_driven_admission_keeps_within_capacity() {
    let s = start(FAST);
    let mut players: Vec<_> = (0..10u64).map(|u| s.player(u).0).collect();
    // Login server: 0 online, room for 3.
    let (status, _) = s.http(
        "PUT",
        "/v1/queues/default/capacity",
        Some(json!({"online": 0, "capacity": 3})),
    );
    assert_eq!(status, 200);
    let mut tokens = Vec::new();
    for p in players.iter_mut().take(3) {
        tokens.push(
            p.next_cmd("admitted")["data"]["token"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    s.wait_stats("default", "3 admitted", |q| q["admitted_total"] == 3);
    // The three use their tokens: they are online now, still no room.
    for t in &tokens {
        let (_, v) = s.http("POST", "/v1/tokens/verify", Some(json!({"token": t})));
        assert_eq!(v["valid"], true);
    }
    // Another report: 1 online (two logged off), capacity 3: two more.
    s.http(
        "PUT",
        "/v1/queues/default/capacity",
        Some(json!({"online": 1, "capacity": 3})),
    );
    players[3].next_cmd("admitted");
    players[4].next_cmd("admitted");
    let stats = s.wait_stats("default", "5 admitted", |q| q["admitted_total"] == 5);
    assert_eq!(stats["waiting"], 5);
    // Full again (1 online + 2 unused = 3): later ticks admit nobody.
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(s.queue_stats("default")["admitted_total"], 5);
}

#[test]
fn control_api_errors_are_json() {
    let s = start("");
    let (status, body) = s.http("POST", "/v1/queues/nope/admit", Some(json!({"count": 1})));
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
    let (status, body) = s.http(
        "PUT",
        "/v1/queues/default/rate",
        Some(json!({"per_second": -1})),
    );
    assert_eq!(status, 400, "{body}");
    let (status, _) = s.http("GET", "/metrics", None);
    assert_eq!(status, 200);
}

#[test]
fn huge_declared_http_body_does_not_kill_the_server() {
    use std::io::{Read, Write};
    let s = start("");
    let mut c = std::net::TcpStream::connect(s.control).unwrap();
    c.set_read_timeout(Some(common::WAIT)).unwrap();
    write!(
        c,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000000\r\n\r\nab"
    )
    .unwrap();
    let mut buf = [0u8; 512];
    let n = c.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 413"));
    drop(c);
    // Still serving (the unpatched tiny_http aborted the process here).
    for _ in 0..3 {
        let (status, _) = s.http("GET", "/healthz", None);
        assert_eq!(status, 200);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn legacy_epoll_driver_serves_the_same_protocol() {
    let s = start_cores("[server]\ndriver = \"legacy\"\npush_interval_ms = 20\n", 2);
    let mut players: Vec<_> = (1..=4u64).map(|u| s.player(u).0).collect();
    assert_eq!(players[0].request("leave", 2, json!({}))["code"], 0);
    admit(&s, 1);
    players[1].next_cmd("admitted");
    players[2].wait_position(1);
    players[3].wait_position(2);
    let hb = players[3].request("heartbeat", 5, json!({}));
    assert_eq!(hb["data"]["ts"], Value::Null);
}

#[test]
fn a_half_closed_client_still_gets_every_answer() {
    let s = start("");
    let mut c = s.client();
    let mut batch = Vec::new();
    for (seq, cmd, data) in [
        (1, "login", json!({"user_id": 8})),
        (2, "position", json!({})),
        (3, "heartbeat", json!({"ts": 5})),
    ] {
        let body = json!({"cmd": cmd, "seq": seq, "data": data}).to_string();
        batch.extend_from_slice(&(body.len() as u32).to_be_bytes());
        batch.extend_from_slice(body.as_bytes());
    }
    c.send_raw(&batch);
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    for seq in 1..=3 {
        let v = c.next();
        assert_eq!(v["seq"], seq, "{v}");
        assert_eq!(v["code"], 0, "{v}");
    }
    assert!(c.recv().is_none());
    // The player disconnected without `leave`: the place is kept for the grace period.
    assert_eq!(s.queue_stats("default")["waiting"], 1);
}

#[test]
fn duplicate_login_after_admission_kicks_the_older_connection() {
    let s = start(FAST);
    let (mut a, _) = s.player(7);
    admit(&s, 1);
    let token = a.next_cmd("admitted")["data"]["token"].clone();
    let (mut b, again) = s.player(7);
    assert_eq!(again["data"]["state"], "admitted");
    assert_eq!(again["data"]["resumed"], true);
    assert_eq!(b.next_cmd("admitted")["data"]["token"], token);
    let kicked = a.next_cmd("kicked");
    assert_eq!(kicked["data"]["reason"], "duplicate_login");
    a.expect_closed();
}

#[test]
fn leave_after_admission_frees_capacity_and_voids_the_token() {
    let s = start(FAST);
    let (mut a, _) = s.player(1);
    let (mut b, _) = s.player(2);
    s.http(
        "PUT",
        "/v1/queues/default/capacity",
        Some(json!({"online": 0, "capacity": 1})),
    );
    let token = a.next_cmd("admitted")["data"]["token"].clone();
    // A gives up: its slot goes to B.
    assert_eq!(a.request("leave", 5, json!({}))["code"], 0);
    b.next_cmd("admitted");
    let (_, v) = s.http("POST", "/v1/tokens/verify", Some(json!({"token": token})));
    assert_eq!(v["valid"], false, "{v}");
}

/// Random leaves, admissions, joins and reconnects over two loops; afterwards every
/// connected player's own view converges to the exact position of a plain model.
#[test]
fn random_churn_over_two_loops_keeps_exact_positions() {
    random_churn(FAST);
}

/// The same with every loop coalescing rank batches (the path large loops take).
#[test]
fn random_churn_with_coalesced_rank_batches_keeps_exact_positions() {
    random_churn("[server]\npush_interval_ms = 20\n[core]\nbroadcast_coalesce_min_sessions = 0\n");
}

fn random_churn(config: &str) {
    let s = start_cores(config, 2);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut order: Vec<u64> = Vec::new();
    let mut clients: std::collections::HashMap<u64, common::Client> = Default::default();
    for user in 0..40u64 {
        clients.insert(user, s.player(user).0);
        order.push(user);
    }
    let mut new_user = 100u64;
    for _ in 0..60 {
        match next() % 4 {
            0 if !order.is_empty() => {
                let user = order.remove((next() % order.len() as u64) as usize);
                let mut c = clients.remove(&user).unwrap();
                assert_eq!(c.request("leave", 9, json!({}))["code"], 0);
            }
            1 => {
                let n = next() % 3;
                admit(&s, n);
                for user in order.drain(..(n as usize).min(order.len())) {
                    clients.remove(&user).unwrap().next_cmd("admitted");
                }
            }
            2 if !order.is_empty() => {
                // Drop the connection and log in again: same place.
                let user = order[(next() % order.len() as u64) as usize];
                drop(clients.remove(&user));
                let (c, again) = s.player(user);
                assert_eq!(again["data"]["resumed"], true);
                clients.insert(user, c);
            }
            _ => {
                clients.insert(new_user, s.player(new_user).0);
                order.push(new_user);
                new_user += 1;
            }
        }
    }
    for (i, user) in order.iter().enumerate() {
        let c = clients.get_mut(user).unwrap();
        let deadline = std::time::Instant::now() + common::WAIT;
        loop {
            let v = c.request("position", 7, json!({}));
            // Both converge (a batch that only appends changes queue_len alone).
            if v["data"]["position"] == i as u64 + 1 && v["data"]["queue_len"] == order.len() as u64
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "user {user}: {v}, want {}",
                i + 1
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
