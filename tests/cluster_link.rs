//! Three full servers in one process on one real etcd (`etcd_support`): players
//! connected to any node wait in the one queue held by its owner's core, over the node
//! link, with exact positions. Every wait polls with a deadline.

mod common;
mod etcd_support;

use common::{node_of, start_node, wait_until, Client, TestServer};
use etcd_support::Etcd;
use serde_json::json;

/// The cluster's shared token key (32-byte Ed25519 seed, base64url): with `[cluster]`
/// every node must sign with the same key.
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

const QUEUE: &str = "default";

/// Node `id` as a full server whose player, control and link addresses are the ones it
/// advertises (the control API forwards to a queue's owner at its `advertise_control`).
fn node(etcd: &Etcd, id: &str) -> TestServer {
    start_node(|player, control, link| {
        format!(
            "[server]\npush_interval_ms = 20\n\
             [tokens]\nkey = \"{KEY}\"\n\
             [cluster]\netcd = [\"{}\"]\nnode_id = \"{id}\"\n\
             advertise_player = \"127.0.0.1:{player}\"\nadvertise_control = \"127.0.0.1:{control}\"\n\
             advertise_link = \"127.0.0.1:{link}\"\nlease_ttl_secs = 2\nprefix = \"/qs-link\"\n",
            etcd.url,
        )
    })
}

/// Starts three nodes and waits until the queue has an owner that every other node
/// routes its logins to; returns the nodes and the owner's index.
fn cluster(etcd: &Etcd) -> (Vec<TestServer>, usize) {
    let nodes: Vec<TestServer> = ["n1", "n2", "n3"].iter().map(|id| node(etcd, id)).collect();
    let handle = |i: usize| nodes[i].handle.as_ref().unwrap();
    let mut owner = None;
    wait_until("the queue has an owner", || {
        owner = handle(0).cluster.as_ref().unwrap().owner_of(QUEUE);
        owner.is_some()
    });
    let owner = owner.unwrap().node_id;
    let owner_index = ["n1", "n2", "n3"].iter().position(|n| *n == owner).unwrap();
    wait_until("every node routes to the owner", || {
        (0..3).all(|i| {
            let routed = handle(i).routes.as_ref().unwrap().remote_owner(QUEUE);
            let mine = handle(i).cluster.as_ref().unwrap().may_admit(QUEUE);
            if i == owner_index {
                mine && routed.is_none()
            } else {
                routed.as_deref() == Some(owner.as_str())
            }
        })
    });
    (nodes, owner_index)
}

#[test]
fn players_on_every_node_wait_in_one_queue_with_exact_positions() {
    let etcd = Etcd::start();
    let (nodes, owner) = cluster(&etcd);

    // Nine players, one at a time, spread over the nodes: positions 1..=9 in order.
    let mut players: Vec<(u64, Client)> = Vec::new();
    for i in 1..=9u64 {
        let mut c = nodes[node_of(i)].client();
        let answer = c.login(i);
        assert_eq!(answer["code"], 0, "login of {i}: {answer}");
        assert_eq!(
            answer["data"]["position"],
            i,
            "player {i} on node {}: {answer}",
            node_of(i)
        );
        players.push((i, c));
    }

    // Two admitted through a node that does not own the queue: the control API
    // forwards the request to the owner (docs/cluster.md), whose core admits the first
    // two (on nodes 0 and 1); everyone else moves by two, on every node.
    let other = (owner + 1) % 3;
    let (status, body) = nodes[other].http(
        "POST",
        &format!("/v1/queues/{QUEUE}/admit"),
        Some(json!({"count": 2})),
    );
    assert_eq!(status, 200, "{body}");
    let admitted: Vec<u64> = common::admitted_ids(&body);
    assert_eq!(admitted, vec![1, 2], "{body}");
    for (i, c) in players.iter_mut().take(2) {
        let push = c.next_cmd("admitted");
        assert!(push["data"]["token"].is_string(), "player {i}: {push}");
    }
    for (i, c) in players.iter_mut().skip(2) {
        c.wait_position(*i - 2);
    }

    // Player 5 (node 1) leaves: those behind it, on every node, move up by one.
    let (_, mut five) = players.remove(4);
    assert_eq!(five.request("leave", 2, json!({}))["code"], 0);
    for (i, c) in players.iter_mut().skip(2) {
        if *i > 5 {
            c.wait_position(*i - 3);
        }
    }
    // And a position request anywhere answers the exact value.
    let expect = |i: u64| if i > 5 { i - 3 } else { i - 2 };
    for (n, (i, c)) in players.iter_mut().skip(2).enumerate() {
        let answer = c.request("position", 10 + n as u32, json!({}));
        assert_eq!(
            answer["data"]["position"],
            expect(*i),
            "player {i}: {answer}"
        );
    }

    // The links into the owner break: players behind them are kicked `shutdown` with a
    // retry hint, log in again on their node and get their exact place back.
    nodes[owner]
        .handle
        .as_ref()
        .unwrap()
        .close_node_links_for_test();
    for (i, c) in players.iter_mut().skip(2) {
        if node_of(*i) == owner {
            continue;
        }
        let kick = c.next_cmd("kicked");
        assert_eq!(kick["data"]["reason"], "shutdown", "player {i}: {kick}");
        c.expect_closed();
        let mut again = nodes[node_of(*i)].client();
        let answer = again.login(*i);
        assert_eq!(answer["code"], 0, "player {i}: {answer}");
        assert_eq!(
            answer["data"]["position"],
            expect(*i),
            "player {i}: {answer}"
        );
        assert_eq!(answer["data"]["resumed"], true, "player {i}: {answer}");
        *c = again;
    }
}
