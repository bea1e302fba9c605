//! Issue 7: auto-created queues expire once empty and idle, so a client inventing queue
//! names cannot use up `queues.max_queues` for good. Real server, real sockets.

mod common;

use std::time::{Duration, Instant};

use common::{start, Client, TestServer, WAIT};
use serde_json::{json, Value};

const CONFIG: &str = "[queues]\nauto_create = true\nmax_queues = 3\nauto_expire_secs = 1\n\
                      [server]\nreconnect_grace_secs = 600\n";

/// Logs `user` in to `queue` on a fresh connection; returns the client and the answer.
fn login(s: &TestServer, user: u64, queue: &str) -> (Client, Value) {
    let mut c = s.client();
    let answer = c.request("login", 1, json!({"user_id": user, "queue": queue}));
    (c, answer)
}

/// Logs in to `queue` and leaves at once; returns the login answer's code.
fn visit(s: &TestServer, user: u64, queue: &str) -> Value {
    let (mut c, answer) = login(s, user, queue);
    if answer["code"] == 0 {
        let left = c.request("leave", 2, json!({}));
        assert_eq!(left["code"], 0, "{left}");
        c.expect_closed();
    }
    answer["code"].clone()
}

/// Retries a visit of `queue` until it is accepted (an earlier queue must expire first).
fn visit_until_accepted(s: &TestServer, user: u64, queue: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let code = visit(s, user, queue);
        if code == 0 {
            return;
        }
        assert_eq!(code, json!(6), "refused {queue} with an unexpected code");
        assert!(Instant::now() < deadline, "{queue} never accepted");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn queue_names(s: &TestServer) -> Vec<String> {
    let (status, body) = s.http("GET", "/v1/stats", None);
    assert_eq!(status, 200, "{body}");
    let mut names: Vec<String> = body["queues"]
        .as_object()
        .expect("queues object")
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}

#[test]
fn fresh_queue_names_are_accepted_once_empty_ones_expire() {
    let s = start(CONFIG);
    // "default" is configured: it takes one of the 3 and never expires.
    for i in 0..8 {
        visit_until_accepted(&s, 100 + i, &format!("fresh-{i}"));
        assert!(queue_names(&s).len() <= 3);
    }
    assert!(queue_names(&s).contains(&"default".to_string()));
    // An expired name can be made again.
    visit_until_accepted(&s, 200, "fresh-0");
}

#[test]
fn a_queue_with_a_player_in_grace_does_not_expire() {
    let s = start(CONFIG);
    let (c, answer) = login(&s, 7, "kept");
    assert_eq!(answer["code"], 0, "{answer}");
    drop(c); // disconnect without leave: the place is in reconnect grace (600 s)
    s.wait_stats("kept", "grace", |q| q["waiting"] == 1);
    // Churn fresh names past the expiry time: "kept" must stay, waiting 1.
    for i in 0..4 {
        visit_until_accepted(&s, 300 + i, &format!("churn-{i}"));
    }
    assert_eq!(s.queue_stats("kept")["waiting"], 1);
    // The player resumes the place.
    let (_c, answer) = login(&s, 7, "kept");
    assert_eq!(answer["code"], 0, "{answer}");
    assert_eq!(answer["data"]["resumed"], true, "{answer}");
}
