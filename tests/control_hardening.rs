//! Issue 7, control port: nothing a client sends to the control port can stall it for
//! others or stop the server. Real server, real sockets, raw HTTP/1.1.

mod common;

use std::time::{Duration, Instant};

use common::{get_within, raw_connection, read_until_closed, start, WAIT};
use queue_server::control::CONNECTIONS_MAX;
use serde_json::{json, Value};

/// How long a control request may take while a misbehaving client is connected: well
/// under the misbehaving client's own lifetime (headers 5 s, body 4 s).
const PROMPT: Duration = Duration::from_secs(2);

/// `GET /healthz` on another connection answers 200 within [`PROMPT`].
#[track_caller]
fn healthz_answers_promptly(addr: std::net::SocketAddr) {
    let answer = get_within(addr, "/healthz", PROMPT);
    assert_eq!(
        answer.as_ref().map(|(status, _)| *status),
        Some(200),
        "healthz did not answer while another client was slow: {answer:?}"
    );
}

#[test]
fn slow_body_does_not_stall_other_requests() {
    let s = start("");
    // Declares 5000 bytes, sends one, then nothing.
    let mut slow_post = raw_connection(
        s.control,
        b"POST /v1/queues/default/admit HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n{",
    );
    // A route that reads no body, declared one anyway; needs no API key.
    let mut slow_get = raw_connection(
        s.control,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\nx",
    );
    for _ in 0..3 {
        healthz_answers_promptly(s.control);
    }
    let (status, _) = s.http("GET", "/v1/stats", None);
    assert_eq!(status, 200);
    // The slow POST is cut off by the body deadline with a 408.
    let (raw, closed) = read_until_closed(&mut slow_post);
    assert!(raw.starts_with("HTTP/1.1 408"), "{raw}");
    assert!(closed, "connection left open after its 408");
    // The GET was answered without its body, then its connection closed.
    let (raw, closed) = read_until_closed(&mut slow_get);
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(closed);
}

#[test]
fn silent_client_is_cut_off_at_the_header_deadline() {
    let s = start("");
    let mut silent = raw_connection(s.control, b"GET /heal");
    let mut idle = raw_connection(s.control, b"");
    healthz_answers_promptly(s.control);
    for conn in [&mut silent, &mut idle] {
        let (raw, closed) = read_until_closed(conn);
        assert!(closed, "half-sent headers kept the connection open: {raw}");
    }
    healthz_answers_promptly(s.control);
}

/// `{"x":[[[...]]]}` nested `depth` deep, with `fields` before it.
fn nested(fields: &str, depth: usize) -> String {
    format!(
        "{{{fields}\"x\":{}{}}}",
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

#[test]
fn deep_nesting_is_refused_and_the_server_lives() {
    let s = start("");
    let cases = [
        ("POST", "/v1/queues/default/admit", r#""count":1,"#),
        ("PUT", "/v1/queues/default/rate", r#""per_second":1,"#),
        (
            "PUT",
            "/v1/queues/default/capacity",
            r#""online":1,"capacity":2,"#,
        ),
        ("POST", "/v1/tokens/verify", r#""token":"t","#),
    ];
    for (method, path, fields) in cases {
        let body = nested(fields, 32_000);
        assert!(body.len() < 64 * 1024);
        let (status, text) = common::http_text(s.control, method, path, Some(&body), None);
        assert_eq!(status, 400, "{path}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"], "JSON nested deeper than 16 levels", "{path}");
        healthz_answers_promptly(s.control);
    }
    // Nesting within the limit in an ignored field is fine.
    let (status, body) = common::http_text(
        s.control,
        "POST",
        "/v1/queues/default/admit",
        Some(&nested(r#""count":1,"#, 15)),
        None,
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn out_of_range_numbers_are_refused_naming_the_field() {
    let s = start("");
    let rate = "/v1/queues/default/rate";
    let capacity = "/v1/queues/default/capacity";
    let admit = "/v1/queues/default/admit";
    let max = u64::MAX;
    let refused = [
        ("PUT", rate, json!({"per_second": 1e300}), "per_second"),
        ("PUT", rate, json!({"per_second": 1_000_001}), "per_second"),
        ("PUT", rate, json!({"per_second": -0.5}), "per_second"),
        (
            "PUT",
            capacity,
            json!({"online": 1, "capacity": max}),
            "capacity",
        ),
        (
            "PUT",
            capacity,
            json!({"online": max, "capacity": 1}),
            "online",
        ),
        (
            "PUT",
            capacity,
            json!({"online": 1, "capacity": 1_000_000_001u64}),
            "capacity",
        ),
        (
            "PUT",
            capacity,
            json!({"online": -1, "capacity": 5}),
            "online",
        ),
        (
            "PUT",
            capacity,
            json!({"online": 1.5, "capacity": 5}),
            "online",
        ),
        ("POST", admit, json!({"count": 100_001}), "count"),
        ("POST", admit, json!({"count": max}), "count"),
        ("POST", admit, json!({"count": 2.5}), "count"),
    ];
    for (method, path, body, field) in refused {
        let (status, answer) = s.http(method, path, Some(body.clone()));
        assert_eq!(status, 400, "{path} {body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with(&format!("{field} must be")),
            "{body}: {error}"
        );
    }
    // The edges themselves are accepted; count 0 admits nobody, as before.
    let accepted = [
        ("PUT", rate, json!({"per_second": 1_000_000})),
        ("PUT", rate, json!({"per_second": 0})),
        (
            "PUT",
            capacity,
            json!({"online": 0, "capacity": 1_000_000_000u64}),
        ),
        ("POST", admit, json!({"count": 100_000})),
    ];
    for (method, path, body) in accepted {
        let (status, answer) = s.http(method, path, Some(body.clone()));
        assert_eq!(status, 200, "{path} {body}: {answer}");
    }
    let (status, answer) = s.http("POST", admit, Some(json!({"count": 0})));
    assert_eq!((status, answer), (200, json!({"admitted": []})));
}

#[test]
fn readyz_is_ready_while_serving_and_not_while_draining() {
    let s = start("");
    let (status, body) = common::http_text(s.control, "GET", "/readyz", None, None);
    assert_eq!((status, body.as_str()), (200, "ready"));
    s.handle.as_ref().unwrap().begin_drain();
    let (status, body) = common::http_text(s.control, "GET", "/readyz", None, None);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    let (status, _) = common::http_text(s.control, "GET", "/healthz", None, None);
    assert_eq!(status, 503);
}

#[test]
fn metrics_show_the_core_round_age() {
    let s = start("");
    let (status, text) = common::http_text(s.control, "GET", "/metrics", None, None);
    assert_eq!(status, 200);
    let age: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("queue_core_round_age_seconds "))
        .unwrap_or_else(|| panic!("no core round age in:\n{text}"))
        .parse()
        .unwrap();
    assert!(age < 60.0, "{age}");
}

#[test]
fn connection_cap_closes_extra_connections_and_the_server_lives() {
    let s = start("");
    // Fill every slot (and a few more) with connections that send nothing.
    let holders: Vec<_> = (0..CONNECTIONS_MAX + 4)
        .map(|_| raw_connection(s.control, b""))
        .collect();
    // A fresh connection over the cap is closed at once, unanswered.
    let mut fresh = raw_connection(
        s.control,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let (raw, closed) = read_until_closed(&mut fresh);
    assert!(closed && raw.is_empty(), "over the cap yet answered: {raw}");
    drop(holders);
    // Slots come back as soon as the holders are gone.
    let deadline = Instant::now() + WAIT;
    while get_within(s.control, "/healthz", PROMPT).map(|(status, _)| status) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "control port did not serve again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
