//! A restarted node and the recovery hold, with real processes on a real etcd
//! (`etcd_support`): the hold after a takeover is decided from etcd (the queue's last
//! owner record names the owner's incarnation), so a node that is `kill -9`ed and
//! restarted at once, and wins its queue back, holds admission like any new owner, and
//! its own old players coming back with their place tickets are not overtaken. Every
//! wait polls with a deadline.

mod common;
mod etcd_support;
#[path = "cluster_process/node.rs"]
mod node;
mod server_process;

use common::{owner_seen_by, position, wait_until, Client, TestServer};
use etcd_support::{two_queues_owned_by_d, Etcd};
use node::NodeProcess;
use serde_json::{json, Value};

/// The cluster's shared token key (32-byte Ed25519 seed, base64url).
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
const QUEUE: &str = "default";
/// The restarted node's recovery window: long enough that the checks made while it
/// holds (one admit, four logins) fit in it on a loaded box.
const WINDOW_SECS: u64 = 6;

/// The queue's (owner, epoch) in the node's `/v1/stats`.
fn owner_epoch(node: &NodeProcess) -> (Option<String>, u64) {
    let q = &node.stats()["cluster"]["queues"][QUEUE];
    let owner = q["owner"].as_str().map(str::to_string);
    (owner, q["epoch"].as_u64().unwrap_or(0))
}

/// `POST /v1/queues/{QUEUE}/admit` with `count`: (status, body).
fn admit(node: &NodeProcess, count: u64) -> (u16, Value) {
    let path = format!("/v1/queues/{QUEUE}/admit");
    node.http("POST", &path, Some(json!({ "count": count })))
}

/// A login presenting `ticket` (none: a new arrival), retried while it is answered
/// SHUTTING_DOWN (9: the new owner has not read the admission watermark yet).
fn login(node: &NodeProcess, user: u64, ticket: Option<&str>) -> (Value, Client) {
    let mut data = json!({"user_id": user, "queue": QUEUE});
    if let Some(t) = ticket {
        data["place_ticket"] = json!(t);
    }
    let mut answer = None;
    wait_until("a login that is not SHUTTING_DOWN", || {
        let mut c = Client::connect(node.player);
        let v = c.request("login", 1, data.clone());
        if v["code"] == 9 {
            return false;
        }
        assert_eq!(v["code"], 0, "login of {user}: {v}");
        answer = Some((v, c));
        true
    });
    answer.unwrap()
}

/// Sets the node's `recovery_window_secs` in its config file (read at its restart).
fn set_window(node: &NodeProcess, secs: u64) {
    let path = std::env::temp_dir()
        .join(format!("qs-proc-{}-{}", std::process::id(), node.id))
        .join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("recovery_window_secs = 1\n"), "{text}");
    let text = text.replace(
        "recovery_window_secs = 1\n",
        &format!("recovery_window_secs = {secs}\n"),
    );
    std::fs::write(&path, text).unwrap();
}

/// A one-node cluster: three players wait; the node is killed (-9) and restarted at
/// once. The new process wins the queue back at a new epoch; its last owner record
/// names the old process, so admission is held: an admit answers 503 naming the
/// recovery window; a new arrival logs in meanwhile; the three old players come back
/// with their tickets and get `resumed: true`; then admission admits them in their old
/// order before the new arrival. Failed before (the hold was known only to the process
/// that saw another node own the queue): the admit answered 200 at once.
#[test]
fn a_restarted_owner_holds_admission_and_its_players_come_back_first() {
    let etcd = Etcd::start();
    let mut node = NodeProcess::start(&etcd.url, "/qs-restart-hold", "s1", KEY, "");
    let mut epoch = 0;
    wait_until("s1 owns the queue", || {
        let (owner, e) = owner_epoch(&node);
        epoch = e;
        owner.as_deref() == Some("s1")
    });
    let mut tickets = Vec::new();
    for user in 1..=3u64 {
        let (answer, _) = login(&node, user, None);
        assert_eq!(answer["data"]["position"], user, "{answer}");
        let ticket = answer["data"]["place_ticket"].as_str().unwrap();
        tickets.push((user, ticket.to_string()));
    }
    set_window(&node, WINDOW_SECS);
    node.kill9();
    node.restart();
    wait_until("the restarted s1 owns the queue at a new epoch", || {
        let (owner, e) = owner_epoch(&node);
        owner.as_deref() == Some("s1") && e > epoch
    });

    let (status, body) = admit(&node, 10);
    assert_eq!(status, 503, "admission not held after the restart: {body}");
    assert!(body.to_string().contains("recovery window"), "{body}");
    let (answer, _newcomer) = login(&node, 99, None);
    assert_eq!(answer["data"]["resumed"], false, "{answer}");
    let mut back = Vec::new();
    for (user, ticket) in &tickets {
        let (answer, c) = login(&node, *user, Some(ticket));
        assert_eq!(answer["data"]["resumed"], true, "player {user}: {answer}");
        back.push(c);
    }
    let mut admitted = Vec::new();
    wait_until("admission after the recovery window", || {
        let (status, body) = admit(&node, 10);
        if status == 503 {
            return false;
        }
        assert_eq!(status, 200, "{body}");
        admitted = common::admitted_ids(&body);
        true
    });
    assert_eq!(admitted, [1, 2, 3, 99], "the old players first, in order");
}

// ---- A new owner that dies too (in-process full servers, `common::start_node`) ----

/// Logs `user` in to `queue` on `n`, retrying while the answer is 9 (no owner yet).
fn login_in_process(n: &TestServer, user: u64, queue: &str) -> (Client, u64) {
    let mut out = None;
    wait_until("a login once the queue has an owner", || {
        let mut c = n.client();
        let answer = c.request("login", 1, json!({"user_id": user, "queue": queue}));
        if answer["code"] == 9 {
            return false;
        }
        assert_eq!(answer["code"], 0, "{answer}");
        out = Some((c, answer["data"]["position"].as_u64().unwrap()));
        true
    });
    out.unwrap()
}

/// d owns two queues; b's players wait in both. d dies: each queue goes to its
/// preferred survivor (qb to b itself, qc to c), b's link to d re-submits each queue's
/// places to its new owner (one of them through a second connection, a child link).
/// Then c dies too: qc goes to b, and b's places in qc, which went to c, follow again:
/// the players keep their connections (only `position` frames) and their order, and
/// are admitted there. Failed before (`kicked` after 3 x TTL + 5 s): places that went
/// to a new owner were never followed again when it died.
#[test]
fn places_follow_again_when_their_new_owner_dies_too() {
    let etcd = Etcd::start();
    let prefix = "/qs-refollow";
    let (d, b, c) = ("f-d", "f-b", "f-c");
    // d starts alone and owns both; a live owner is never displaced by b or c.
    let (mut nodes, qb, qc) = two_queues_owned_by_d(&etcd, prefix, [d, b, c]);
    wait_until("b routes both queues to d", || {
        let routes = nodes[1].handle.as_ref().unwrap().routes.as_ref().unwrap();
        [&qb, &qc]
            .iter()
            .all(|q| routes.remote_owner(q).as_deref() == Some(d))
    });
    let plan = [(1, &qb), (2, &qc), (3, &qc)];
    let mut players = Vec::new();
    for (user, q) in plan {
        let (client, pos) = login_in_process(&nodes[1], user, q);
        players.push((user, client, pos));
    }
    assert_eq!(players.iter().map(|p| p.2).collect::<Vec<_>>(), [1, 1, 2]);

    nodes[0].handle.as_mut().unwrap().kill_node_for_test();
    wait_until("each queue owned by its preferred survivor", || {
        owner_seen_by(&nodes[1], &qb).as_deref() == Some(b)
            && owner_seen_by(&nodes[1], &qc).as_deref() == Some(c)
    });
    for (user, client, pos) in players.iter_mut() {
        wait_until("a place at its queue's new owner", || {
            position(client, *user) == *pos
        });
    }

    nodes[2].handle.as_mut().unwrap().kill_node_for_test();
    wait_until("b owns qc too", || {
        owner_seen_by(&nodes[1], &qc).as_deref() == Some(b)
    });
    for (user, client, pos) in players.iter_mut() {
        wait_until("a place at its queue's third owner", || {
            position(client, *user) == *pos
        });
    }
    assert_eq!(common::admit(nodes[1].control, &qc, 10), vec![2, 3]);
    assert_eq!(common::admit(nodes[1].control, &qb, 10), vec![1]);
    for (user, client, _) in players.iter_mut() {
        let push = client.next_cmd("admitted");
        assert!(push["data"]["token"].is_string(), "player {user}: {push}");
    }
}
