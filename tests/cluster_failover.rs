//! Failover of places on a real etcd (`etcd_support`), three full servers in one
//! process: the owner of the queue dies as with `kill -9` (its cluster side stops
//! without revoking its lease and its link port closes: `kill_node_for_test`), another
//! node takes the queue after the lease runs out, and every player connected to a
//! surviving node keeps its place and relative order on the same connection (no
//! `kicked`, no new login); admission waits out the recovery window, then admits the
//! survivors in their old order, each once. Every wait polls with a deadline.

mod common;
mod etcd_support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{start_node, Client, TestServer};
use etcd_support::Etcd;
use queue_server::server::ServerHandle;
use serde_json::json;

/// The cluster's shared token key (32-byte Ed25519 seed, base64url).
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
/// Longest wait for the cluster to settle (a lease, a tick, a listing, a window).
const SETTLE: Duration = Duration::from_secs(20);
const QUEUE: &str = "default";
const IDS: [&str; 3] = ["f1", "f2", "f3"];

fn node(etcd: &Etcd, id: &str) -> TestServer {
    start_node(|player, control, link| {
        format!(
            "[server]\npush_interval_ms = 20\n\
             [tokens]\nkey = \"{KEY}\"\n\
             [cluster]\netcd = [\"{}\"]\nnode_id = \"{id}\"\n\
             advertise_player = \"127.0.0.1:{player}\"\nadvertise_control = \"127.0.0.1:{control}\"\n\
             advertise_link = \"127.0.0.1:{link}\"\nlease_ttl_secs = 2\n\
             recovery_window_secs = 1\nprefix = \"/qs-failover\"\n",
            etcd.url,
        )
    })
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn handle(nodes: &[TestServer], i: usize) -> &ServerHandle {
    nodes[i].handle.as_ref().unwrap()
}

/// The owner's index once every node routes its logins to it.
fn settled_owner(nodes: &[TestServer], alive: &[usize], not: Option<&str>) -> usize {
    let mut owner = String::new();
    wait_until("the queue has an owner every live node routes to", || {
        let Some(o) = handle(nodes, alive[0])
            .cluster
            .as_ref()
            .unwrap()
            .owner_of(QUEUE)
        else {
            return false;
        };
        owner = o.node_id;
        if Some(owner.as_str()) == not {
            return false;
        }
        alive.iter().all(|&i| {
            let routed = handle(nodes, i)
                .routes
                .as_ref()
                .unwrap()
                .remote_owner(QUEUE);
            if IDS[i] == owner {
                routed.is_none()
            } else {
                routed.as_deref() == Some(owner.as_str())
            }
        })
    });
    IDS.iter().position(|n| *n == owner).unwrap()
}

/// Player `i` (1-based) connects to node `(i - 1) % 3`.
fn node_of(i: u64) -> usize {
    ((i - 1) % 3) as usize
}

/// The player's position by a `position` request on its connection; any push but a
/// `position` on the way (a `kicked`) fails.
fn position(c: &mut Client, user: u64) -> u64 {
    c.send(&json!({"cmd": "position", "seq": 7, "data": {}}));
    loop {
        let v = c.next();
        if v["seq"] == 7 {
            assert_eq!(v["code"], 0, "player {user}: {v}");
            return v["data"]["position"].as_u64().unwrap();
        }
        assert_eq!(v["cmd"], "position", "player {user}: unexpected push {v}");
    }
}

/// Admits `count` through node `via`, retrying while the queue is between owners or
/// held for the recovery window (503); returns the admitted user ids.
fn admit(nodes: &[TestServer], via: usize, count: u64) -> Vec<u64> {
    let mut admitted = Vec::new();
    wait_until("an admission through a surviving node", || {
        let (status, body) = nodes[via].http(
            "POST",
            &format!("/v1/queues/{QUEUE}/admit"),
            Some(json!({ "count": count })),
        );
        if status != 200 {
            assert_eq!(status, 503, "{body}");
            return false;
        }
        admitted = body["admitted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["user_id"].as_u64().unwrap())
            .collect();
        true
    });
    admitted
}

#[test]
fn players_on_surviving_nodes_keep_their_order_when_the_owner_dies() {
    let etcd = Etcd::start();
    let mut nodes: Vec<TestServer> = IDS.iter().map(|id| node(&etcd, id)).collect();
    let dead = settled_owner(&nodes, &[0, 1, 2], None);

    // Twelve players, one at a time, spread over the nodes: positions 1..=12.
    let mut players: Vec<(u64, Client)> = Vec::new();
    for i in 1..=12u64 {
        let mut c = nodes[node_of(i)].client();
        let answer = c.login(i);
        assert_eq!(answer["code"], 0, "login of {i}: {answer}");
        assert_eq!(answer["data"]["position"], i, "player {i}: {answer}");
        players.push((i, c));
    }

    // The owner dies; its own players are gone with it (they log in again: a new place
    // at the end, out of scope here).
    nodes[dead].handle.as_mut().unwrap().kill_node_for_test();
    players.retain(|(i, _)| node_of(*i) != dead);
    let alive: Vec<usize> = (0..3).filter(|&n| n != dead).collect();
    let owner = settled_owner(&nodes, &alive, Some(IDS[dead]));
    assert_ne!(owner, dead);

    // Every survivor, on the same connection, converges to its rank among survivors
    // (a `kicked` push fails `wait_position`), and a position request answers it.
    for (rank, (i, c)) in players.iter_mut().enumerate() {
        let rank = rank as u64 + 1;
        wait_until("a survivor's exact rank", || position(c, *i) == rank);
    }

    // Admission (after the recovery window) through each surviving node in turn
    // admits the survivors in their old order, each exactly once.
    let expected: Vec<u64> = players.iter().map(|(i, _)| *i).collect();
    let other = alive.iter().copied().find(|&n| n != owner).unwrap();
    let mut admitted = admit(&nodes, other, 3);
    admitted.extend(admit(&nodes, owner, 100));
    assert_eq!(admitted, expected, "admitted in the old relative order");
    let unique: HashSet<u64> = admitted.iter().copied().collect();
    assert_eq!(unique.len(), admitted.len(), "nobody admitted twice");
    let mut pushed = HashSet::new();
    for (i, c) in players.iter_mut() {
        let push = c.next_cmd("admitted");
        assert!(push["data"]["token"].is_string(), "player {i}: {push}");
        assert!(pushed.insert(*i));
    }
    assert!(admit(&nodes, other, 100).is_empty(), "nobody left to admit");
}
