//! The control API of a cluster: full servers (`ServerHandle`, real sockets, real HTTP)
//! as nodes of one cluster on a real etcd (`etcd_support`), in this process. Lease TTL
//! 2 s keeps the waits short; every wait polls with a deadline.
//!
//! Covered: a request about a queue owned by another node is forwarded to the owner and
//! takes effect there; a forwarded request is never forwarded again; a token consumed
//! on one node is refused on every other; verify answers 503 once etcd is gone; the
//! stats section and the metrics of the cluster; single-node answers have neither.

mod common;
mod etcd_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{http, start_node, TestServer, WAIT};
use etcd_support::{free_port, with_etcd, Etcd};
use queue_server::config::Config;
use serde_json::{json, Value};

/// 32 zero bytes, base64url: the Ed25519 seed every node shares.
const KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// A full server as node `id` of the cluster on `etcd_url`.
fn node(etcd_url: &str, id: &str) -> TestServer {
    node_keyed(etcd_url, id, "")
}

/// [`node`] with `control.api_key` = `api_key`.
fn node_keyed(etcd_url: &str, id: &str, api_key: &str) -> TestServer {
    start_node(|player_port, control_port, link_port| {
        format!(
            r#"
            [control]
            api_key = "{api_key}"
            [tokens]
            key = "{KEY}"
            [cluster]
            etcd = ["{etcd_url}"]
            node_id = "{id}"
            advertise_player = "127.0.0.1:{player_port}"
            advertise_control = "127.0.0.1:{control_port}"
            advertise_link = "127.0.0.1:{link_port}"
            lease_ttl_secs = 2
            prefix = "/qs-control"
            "#
        )
    })
}

/// Polls `check` until it gives a value; fails naming `what` after [`WAIT`].
fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `/v1/stats` `cluster` of a node.
fn cluster_stats(n: &TestServer) -> Value {
    let (status, body) = n.http("GET", "/v1/stats", None);
    assert_eq!(status, 200, "{body}");
    body["cluster"].clone()
}

/// Two nodes on one etcd, once both list both members and agree on the owner of
/// `default`; returns (owner, other).
fn two_nodes(etcd: &Etcd) -> (TestServer, TestServer) {
    let a = node(&etcd.url, "a");
    let b = node(&etcd.url, "b");
    let owner = wait_for("both nodes list a, b and one owner of `default`", || {
        let (sa, sb) = (cluster_stats(&a), cluster_stats(&b));
        let ids = |s: &Value| -> Vec<Value> {
            let members = s["members"].as_array().cloned().unwrap_or_default();
            members.iter().map(|m| m["node_id"].clone()).collect()
        };
        let owner = sa["queues"]["default"]["owner"].as_str()?.to_string();
        (ids(&sa) == ["a", "b"]
            && ids(&sb) == ["a", "b"]
            && sb["queues"]["default"]["owner"] == owner.as_str()
            && sa["queues"]["default"]["may_admit"] == (owner == "a")
            && sb["queues"]["default"]["may_admit"] == (owner == "b"))
            .then_some(owner)
    });
    if owner == "a" {
        (a, b)
    } else {
        (b, a)
    }
}

/// One request with extra headers; returns (status, head, body).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("control connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// `POST /v1/tokens/verify` of `token` on `n`.
fn verify(n: &TestServer, token: &str) -> (u16, Value) {
    n.http("POST", "/v1/tokens/verify", Some(json!({ "token": token })))
}

/// A player of `default` on `owner`, admitted by an `admit` sent to `via`; its token.
fn admitted_token(owner: &TestServer, via: &TestServer, user: u64) -> String {
    let (mut player, _) = owner.player(user);
    let (status, body) = via.http(
        "POST",
        "/v1/queues/default/admit",
        Some(json!({"count": 1})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["admitted"][0]["user_id"], user, "{body}");
    let push = player.next_cmd("admitted");
    let token = body["admitted"][0]["token"].as_str().unwrap().to_string();
    assert_eq!(push["data"]["token"], token.as_str(), "{push}");
    token
}

#[test]
fn a_request_to_a_non_owner_is_forwarded_to_the_owner_and_never_forwarded_again() {
    let etcd = Etcd::start();
    let (owner, other) = two_nodes(&etcd);
    // admit through the other node: the owner's player is admitted.
    admitted_token(&owner, &other, 7);
    // The player's report and its removal, through the other node: the owner's.
    let (status, body) = other.http("GET", "/v1/users/7?queue=default", None);
    assert_eq!(
        (status, &body["state"]),
        (200, &json!("admitted")),
        "{body}"
    );
    let (status, body) = other.http("DELETE", "/v1/queues/default/players/7", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"removed": true, "state": "admitted"}));
    // pause through the other node: the owner's queue is paused.
    let (status, body) = other.http("POST", "/v1/queues/default/pause", None);
    assert_eq!((status, body), (200, json!({"ok": true})));
    assert_eq!(owner.queue_stats("default")["paused"], true);
    let (status, head, _) = request(other.control, "POST", "/v1/queues/default/resume", "", &[]);
    assert_eq!(status, 200);
    let owner_id = cluster_stats(&owner)["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        head.contains(&format!("x-queue-served-by: {owner_id}")),
        "{head}"
    );
    assert_eq!(owner.queue_stats("default")["paused"], false);
    // A forwarded request reaching a node that does not own the queue: 503, not again.
    let forwarded = [("X-Queue-Forwarded-By", "z")];
    let path = "/v1/queues/default/pause";
    let (status, head, body) = request(other.control, "POST", path, "", &forwarded);
    assert_eq!(status, 503, "{body}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(
        body.contains(&format!("owned by node `{owner_id}`")),
        "{body}"
    );
    assert_eq!(owner.queue_stats("default")["paused"], false);
    // The owner answers a forwarded request itself.
    let (status, _, body) = request(owner.control, "POST", path, "", &forwarded);
    assert_eq!((status, body.as_str()), (200, r#"{"ok":true}"#));
    // Counted on the node that forwarded (admit, report, remove, pause, resume), not on
    // the owner.
    assert_eq!(cluster_stats(&other)["forwarded_total"], 5);
    assert_eq!(cluster_stats(&owner)["forwarded_total"], 0);
    // A queue that exists nowhere: answered here, 404 as on one node.
    let (status, body) = other.http(
        "POST",
        "/v1/queues/nowhere/admit",
        Some(json!({"count": 1})),
    );
    assert_eq!((status, body), (404, json!({"error": "unknown queue"})));
}

#[test]
fn a_token_consumed_on_one_node_is_refused_on_every_other_and_verify_needs_etcd() {
    let etcd = Etcd::start();
    let (owner, other) = two_nodes(&etcd);
    // Every node publishes the same JWKS (the one configured key).
    let (_, keys_owner) = owner.http("GET", "/v1/keys", None);
    let (_, keys_other) = other.http("GET", "/v1/keys", None);
    assert_eq!(keys_owner, keys_other);
    assert_eq!(keys_owner["keys"].as_array().map(Vec::len), Some(1));
    let token = admitted_token(&owner, &owner, 7);
    assert_eq!(owner.queue_stats("default")["unused_tokens"], 1);
    let verify_body = json!({ "token": token }).to_string();
    let (status, head, body) = request(
        other.control,
        "POST",
        "/v1/tokens/verify",
        &verify_body,
        &[],
    );
    assert_eq!(status, 200);
    assert_eq!(body, r#"{"valid":true,"user_id":7,"queue":"default"}"#);
    // Verified at the owner, whose core holds the grant: it no longer counts as unused.
    let owner_id = cluster_stats(&owner)["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        head.contains(&format!("x-queue-served-by: {owner_id}")),
        "{head}"
    );
    assert_eq!(owner.queue_stats("default")["unused_tokens"], 0);
    for n in [&owner, &other] {
        let (status, body) = verify(n, &token);
        assert_eq!(status, 200);
        assert_eq!(body, json!({"valid": false, "reason": "already_used"}));
    }
    // etcd stopped: a token nobody used cannot be said unused: 503, on every node.
    let fresh = admitted_token(&owner, &owner, 8);
    drop(etcd);
    for n in [&other, &owner] {
        let (status, head, body) = request(
            n.control,
            "POST",
            "/v1/tokens/verify",
            &json!({ "token": fresh }).to_string(),
            &[("Content-Type", "application/json")],
        );
        assert_eq!(status, 503, "{body}");
        assert!(head.contains("retry-after: 1"), "{head}");
        assert!(body.contains("\"error\""), "{body}");
    }
}

#[test]
fn stats_and_metrics_show_the_cluster() {
    let etcd = Etcd::start();
    let (owner, other) = two_nodes(&etcd);
    let stats = cluster_stats(&other);
    let members = stats["members"].as_array().unwrap();
    let controls: Vec<String> = [&owner, &other]
        .iter()
        .map(|n| n.control.to_string())
        .collect();
    for m in members {
        assert!(controls.contains(&m["advertise_control"].as_str().unwrap().to_string()));
    }
    assert_eq!(stats["fenced"], false);
    let queue = &stats["queues"]["default"];
    assert_eq!(queue["owned_here"], false);
    assert!(queue["epoch"].as_u64().unwrap() > 0, "{queue}");
    let owned = &cluster_stats(&owner)["queues"]["default"];
    assert_eq!(
        (&owned["owned_here"], &owned["epoch"]),
        (&json!(true), &queue["epoch"])
    );
    let (status, text) = common::http_text(owner.control, "GET", "/metrics", None, None);
    assert_eq!(status, 200);
    for line in [
        "queue_cluster_members 2",
        "queue_cluster_queues_owned 1",
        "queue_cluster_fenced 0",
        "queue_cluster_forwarded_total 0",
        "# TYPE queue_cluster_etcd_errors counter",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    let (_, text) = common::http_text(other.control, "GET", "/metrics", None, None);
    assert!(
        text.lines().any(|l| l == "queue_cluster_queues_owned 0"),
        "{text}"
    );
}

#[test]
fn one_node_has_no_cluster_section_nor_cluster_metrics() {
    let server = common::start("");
    let (status, body) = server.http("GET", "/v1/stats", None);
    assert_eq!(status, 200);
    assert!(body.get("cluster").is_none(), "{body}");
    let (_, text) = common::http_text(server.control, "GET", "/metrics", None, None);
    assert!(!text.contains("queue_cluster_"), "{text}");
    let (status, head, _) = request(
        server.control,
        "POST",
        "/v1/queues/default/pause",
        "",
        &[("X-Queue-Forwarded-By", "z")],
    );
    assert_eq!(status, 200);
    assert!(!head.contains("x-queue-served-by"), "{head}");
}

#[test]
fn a_node_that_cannot_reach_etcd_answers_503_for_its_queues_and_for_verify() {
    // Nothing listens there: the node never holds a lease, so `default` has no owner.
    let n = node(&format!("http://127.0.0.1:{}", free_port()), "lonely");
    let (status, head, body) = request(
        n.control,
        "POST",
        "/v1/queues/default/admit",
        r#"{"count": 1}"#,
        &[],
    );
    assert_eq!(status, 503, "{body}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(body.contains("no owner yet"), "{body}");
    // The token is good (signed with the cluster's key) but its use cannot be checked.
    let signer = queue_server::token::TokenSigner::from_config(
        &Config::from_toml_str(&format!("[tokens]\nkey = \"{KEY}\""))
            .unwrap()
            .tokens,
    )
    .unwrap()
    .0;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    let token = signer.sign(9, "default", "jti-1", exp - 300, exp);
    let (status, body) = verify(&n, &token);
    assert_eq!(status, 503, "{body}");
    // A queue that exists nowhere is still answered here.
    let (status, _) = n.http("POST", "/v1/queues/nowhere/pause", None);
    assert_eq!(status, 404);
}

/// Puts `key` = `value` in etcd (no lease), from outside the nodes.
fn etcd_put(etcd: &Etcd, key: &str, value: &str) {
    with_etcd(etcd, async |client| {
        client.put(key, value, None).await.unwrap();
    });
}

#[test]
fn an_owner_that_does_not_answer_gives_504_and_one_that_refuses_gives_503() {
    let etcd = Etcd::start();
    let n = node(&etcd.url, "a");
    // Two members that exist only in etcd: one accepts and never answers, one is gone.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("127.0.0.1:{}", free_port());
    for (id, control) in [
        ("mute", silent.local_addr().unwrap().to_string()),
        ("gone", gone),
    ] {
        let member = json!({"node_id": id, "advertise_player": "127.0.0.1:1",
            "advertise_control": control, "started_at_unix_ms": 0});
        etcd_put(
            &etcd,
            &format!("/qs-control/nodes/{id}"),
            &member.to_string(),
        );
        etcd_put(&etcd, &format!("/qs-control/owners/q-{id}"), id);
    }
    wait_for("node a lists both fake owners", || {
        let s = cluster_stats(&n);
        (s["queues"]["q-mute"]["owner"] == "mute" && s["queues"]["q-gone"]["owner"] == "gone")
            .then_some(())
    });
    let started = Instant::now();
    let (status, _, body) = request(n.control, "POST", "/v1/queues/q-mute/pause", "", &[]);
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("did not answer within 5 s"), "{body}");
    assert!(started.elapsed() < WAIT);
    let (status, head, body) = request(n.control, "POST", "/v1/queues/q-gone/pause", "", &[]);
    assert_eq!(status, 503, "{body}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(body.contains("cannot reach node `gone`"), "{body}");
    drop(silent);
}

#[test]
fn a_forwarded_request_carries_the_bearer_key_and_an_unauthorized_one_is_not_forwarded() {
    let etcd = Etcd::start();
    let a = node_keyed(&etcd.url, "a", "k");
    let b = node_keyed(&etcd.url, "b", "k");
    let get = |n: &TestServer, path: &str| http(n.control, "GET", path, None, Some("k")).1;
    let owner = wait_for("both nodes agree on the owner of `default`", || {
        let o = get(&a, "/v1/stats")["cluster"]["queues"]["default"]["owner"].clone();
        let o = o.as_str()?.to_string();
        (get(&b, "/v1/stats")["cluster"]["queues"]["default"]["owner"] == o.as_str()).then_some(o)
    });
    let (owner, other) = if owner == "a" { (a, b) } else { (b, a) };
    let path = "/v1/queues/default/pause";
    let (status, _) = http(other.control, "POST", path, None, None);
    assert_eq!(status, 401);
    assert_eq!(get(&other, "/v1/stats")["cluster"]["forwarded_total"], 0);
    let (status, body) = http(other.control, "POST", path, None, Some("k"));
    assert_eq!((status, body), (200, json!({"ok": true})));
    assert_eq!(
        get(&owner, "/v1/stats")["queues"]["default"]["paused"],
        true
    );
}
