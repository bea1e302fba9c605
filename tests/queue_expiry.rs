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

/// Expiry is durable: a restart on the same directory keeps expired queues expired
/// (the quarantined tombstone of a queue that admitted a player keeps its counters for
/// its name) and a fresh name still fits.
#[test]
fn expiry_survives_a_restart() {
    let d = std::env::temp_dir().join(format!("qs-expiry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let toml = format!(
        "{CONFIG}[durability]\ndir = \"{}\"\nfsync = \"always\"\n",
        d.display()
    );
    let s = start(&toml);
    let (mut c, answer) = login(&s, 1, "adm");
    assert_eq!(answer["code"], 0, "{answer}");
    let (status, body) = s.http("POST", "/v1/queues/adm/admit", Some(json!({"count": 1})));
    assert_eq!(status, 200, "{body}");
    let token = body["admitted"][0]["token"].as_str().unwrap().to_string();
    c.next_cmd("admitted");
    let (status, body) = s.http("POST", "/v1/tokens/verify", Some(json!({"token": token})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(visit(&s, 2, "plain"), json!(0));
    // Both expire; "adm"'s player is still connected.
    let deadline = Instant::now() + WAIT;
    while queue_names(&s) != ["default"] {
        assert!(
            Instant::now() < deadline,
            "never expired: {:?}",
            queue_names(&s)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(s);
    let s = start(&toml);
    assert_eq!(queue_names(&s), ["default"]);
    // Both names fit again; "adm" is the same queue as before (1 admitted so far).
    assert_eq!(visit(&s, 3, "plain"), json!(0));
    let (_c2, answer) = login(&s, 4, "adm");
    assert_eq!(answer["code"], 0, "{answer}");
    assert_eq!(s.queue_stats("adm")["admitted_total"], 1);
    drop(c);
    drop(s);
    let _ = std::fs::remove_dir_all(&d);
}
