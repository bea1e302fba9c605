//! The admission watermark over the node link, on a real etcd (`etcd_support`), two
//! full servers in one process: the owner's rank batches carry each queue's admitted
//! marks, the edge remembers them in its book and hands them to the new owner with its
//! re-submitted places, so a player the dead owner admitted gets no place back with its
//! ticket even when the owner died before writing that admission to etcd (here every
//! etcd write of the marks is held back: `watermark::hold_writes_for_test`). Every wait
//! polls with a deadline.

mod common;
mod etcd_support;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::{Client, TestServer};
use etcd_support::Etcd;
use queue_server::cluster::watermark;
use queue_server::server::ServerHandle;
use serde_json::json;

const QUEUE: &str = "default";
const PREFIX: &str = "/qs-wm-link";
const IDS: [&str; 2] = ["w1", "w2"];

fn node(etcd: &Etcd, id: &str) -> TestServer {
    common::ticket_node(&etcd.url, id, PREFIX, 10)
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + common::SETTLE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn handle(nodes: &[TestServer], i: usize) -> &ServerHandle {
    nodes[i].handle.as_ref().unwrap()
}

/// The owner's index once every live node routes its logins to it.
fn settled_owner(nodes: &[TestServer], alive: &[usize], not: Option<&str>) -> usize {
    let mut owner = String::new();
    wait_until("the queue has an owner every live node routes to", || {
        let cluster = handle(nodes, alive[0]).cluster.as_ref().unwrap();
        let Some(o) = cluster.owner_of(QUEUE) else {
            return false;
        };
        owner = o.node_id;
        if Some(owner.as_str()) == not {
            return false;
        }
        alive.iter().all(|&i| {
            let routes = handle(nodes, i).routes.as_ref().unwrap();
            let routed = routes.remote_owner(QUEUE);
            if IDS[i] == owner {
                routed.is_none()
            } else {
                routed.as_deref() == Some(owner.as_str())
            }
        })
    });
    IDS.iter().position(|n| *n == owner).unwrap()
}

/// The admission watermark in etcd (`{prefix}/admitted/{queue}`), if any.
fn published_marks(etcd: &Etcd) -> Option<String> {
    let addr = etcd.url.trim_start_matches("http://").parse().unwrap();
    let key = STANDARD.encode(format!("{PREFIX}/admitted/{QUEUE}"));
    let body = json!({ "key": key }).to_string();
    let (status, v) = common::http(addr, "POST", "/v3/kv/range", Some(&body), None);
    assert_eq!(status, 200, "{v}");
    let value = v["kvs"].as_array()?.first()?["value"].as_str()?.to_string();
    Some(String::from_utf8(STANDARD.decode(value).unwrap()).unwrap())
}

/// A waiting login: its client and its place ticket.
fn join(node: &TestServer, user: u64, position: u64) -> (Client, String) {
    let mut c = node.client();
    let answer = c.login(user);
    assert_eq!(answer["code"], 0, "login of {user}: {answer}");
    assert_eq!(
        answer["data"]["position"], position,
        "player {user}: {answer}"
    );
    let ticket = answer["data"]["place_ticket"].as_str();
    let ticket = ticket.unwrap_or_else(|| panic!("player {user}: no place_ticket: {answer}"));
    (c, ticket.to_string())
}

/// A login to `node` presenting `ticket`, retried while the answer is SHUTTING_DOWN
/// (9: between owners, or the etcd marks not read yet); the answer.
#[test]
fn an_admission_missing_from_etcd_is_refused_thanks_to_the_edges_report() {
    let etcd = Etcd::start();
    // No node writes its marks to etcd: the dead owner's admission is in its last,
    // unwritten interval, forever.
    watermark::hold_writes_for_test(true);
    let mut nodes: Vec<TestServer> = IDS.iter().map(|id| node(&etcd, id)).collect();
    let dead = settled_owner(&nodes, &[0, 1], None);
    let edge = 1 - dead;

    // Player 1 on the owner, 2 behind the edge's link, 3 on the owner.
    let (c1, ticket1) = join(&nodes[dead], 1, 1);
    let (mut c2, _) = join(&nodes[edge], 2, 2);
    let (c3, ticket3) = join(&nodes[dead], 3, 3);

    // The owner admits player 1; the rank batch that moves player 2 to the front has
    // crossed the link (and with it, the owner's admitted mark).
    let (status, body) = nodes[dead].http(
        "POST",
        &format!("/v1/queues/{QUEUE}/admit"),
        Some(json!({"count": 1})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["admitted"][0]["user_id"], 1, "{body}");
    c2.wait_position(1);
    assert_eq!(published_marks(&etcd), None, "the marks reached etcd");

    // The owner dies; the edge's node takes the queue over and player 2's place is
    // re-submitted there (with the marks the edge saw).
    nodes[dead].handle.as_mut().unwrap().kill_node_for_test();
    drop((c1, c3));
    let owner = settled_owner(&nodes, &[edge], Some(IDS[dead]));
    assert_eq!(owner, edge);
    nodes[edge].wait_stats(QUEUE, "player 2 re-submitted", |s| s["waiting"] == 1);

    // Player 3 (waiting when the owner died) gets its place back; player 1 (admitted)
    // does not, though etcd never heard of its admission.
    let (answer3, _c3) = common::login_with_ticket(nodes[edge].player, QUEUE, 3, &ticket3);
    assert_eq!(answer3["code"], 0, "player 3: {answer3}");
    assert_eq!(answer3["data"]["resumed"], true, "player 3: {answer3}");
    let (answer1, _c1) = common::login_with_ticket(nodes[edge].player, QUEUE, 1, &ticket1);
    assert_eq!(answer1["code"], 0, "player 1: {answer1}");
    assert_eq!(
        answer1["data"]["resumed"], false,
        "admitted player 1 got its place back: {answer1}"
    );

    // Both claims were judged in the hold (else a refusal proves nothing).
    let (status, body) = nodes[edge].http(
        "POST",
        &format!("/v1/queues/{QUEUE}/admit"),
        Some(json!({"count": 1})),
    );
    assert_eq!(
        status, 503,
        "the recovery window ended before the claims: {body}"
    );
    watermark::hold_writes_for_test(false);
}
