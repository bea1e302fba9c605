//! A hung owner (issue 11, "host dead, or cut off"): the owner's process is SIGSTOPped,
//! so its sockets stay open (the kernel still accepts and acknowledges) but nothing
//! answers, as with a hung or partitioned host; a `kill -9` closes the sockets and is
//! tested in `cluster_process.rs`. The lease runs out, another node owns the queue, and
//! the surviving nodes' players must keep their places there, in order, without a
//! kick: the links may not wait for a connection that will never break by itself.

mod common;
mod etcd_support;
#[path = "cluster_process/node.rs"]
mod node;
mod server_process;

use common::{admit, wait_until, Client};
use etcd_support::Etcd;
use node::{agreed_owner, wait_routed, NodeProcess};
use serde_json::json;

/// The cluster's shared token key (32-byte Ed25519 seed, base64url).
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
const QUEUE: &str = "default";

/// The player's position by a `position` request; any push but `position` fails.
fn position(c: &mut Client, user: u64) -> u64 {
    c.send(&json!({"cmd": "position", "seq": 7, "data": {}}));
    loop {
        let v = c.next();
        assert!(
            v["cmd"] == "position" || v["seq"] == 7,
            "player {user}: unexpected push {v}"
        );
        if v["seq"] == 7 {
            assert_eq!(v["code"], 0, "player {user}: {v}");
            return v["data"]["position"].as_u64().unwrap();
        }
    }
}

#[test]
fn a_hung_owner_loses_no_survivors_place() {
    let etcd = Etcd::start();
    let nodes: Vec<NodeProcess> = ["h1", "h2", "h3"]
        .iter()
        .map(|id| NodeProcess::start(&etcd.url, "/qs-hung", id, KEY, ""))
        .collect();
    let hung = agreed_owner(&nodes, &[0, 1, 2], QUEUE, None);
    let alive: Vec<usize> = (0..3).filter(|&i| i != hung).collect();
    alive.iter().for_each(|&i| wait_routed(&nodes[i]));
    let node_of = |i: u64| ((i - 1) % 3) as usize;

    let mut players = Vec::new();
    for i in 1..=9u64 {
        let mut c = Client::connect(nodes[node_of(i)].player);
        let answer = c.request("login", 1, json!({"user_id": i, "queue": QUEUE}));
        assert_eq!(answer["code"], 0, "login of {i}: {answer}");
        assert_eq!(answer["data"]["position"], i, "player {i}");
        players.push((i, c));
    }

    nodes[hung].freeze();
    players.retain(|(i, _)| node_of(*i) != hung);
    let owner = agreed_owner(&nodes, &alive, QUEUE, Some(&nodes[hung].id.clone()));
    assert_ne!(owner, hung);
    for (rank, (i, c)) in players.iter_mut().enumerate() {
        let rank = rank as u64 + 1;
        wait_until(
            "a survivor's exact rank among survivors at the new owner",
            || position(c, *i) == rank,
        );
    }
    let expected: Vec<u64> = players.iter().map(|(i, _)| *i).collect();
    // The hold after the takeover (1 s here) answers 503: come back until it is over.
    let mut admitted = Vec::new();
    wait_until("admission after the recovery hold", || {
        let (status, body) = common::http(
            nodes[owner].control,
            "POST",
            &format!("/v1/queues/{QUEUE}/admit"),
            Some(r#"{"count":100}"#),
            None,
        );
        if status == 200 {
            admitted = common::admitted_ids(&body);
        }
        status == 200
    });
    assert_eq!(admitted, expected, "admitted in the old relative order");
    assert!(admit(nodes[alive[0]].control, QUEUE, 100).is_empty());
}
