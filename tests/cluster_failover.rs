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

use common::{
    admit, admit_all_in_order, node_of, position, settled_owner, start_node, wait_until, Client,
    TestServer,
};
use etcd_support::Etcd;

/// The cluster's shared token key (32-byte Ed25519 seed, base64url).
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
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

#[test]
fn players_on_surviving_nodes_keep_their_order_when_the_owner_dies() {
    let etcd = Etcd::start();
    let mut nodes: Vec<TestServer> = IDS.iter().map(|id| node(&etcd, id)).collect();
    let dead = settled_owner(&nodes, &IDS, &[0, 1, 2], QUEUE, None);

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
    let owner = settled_owner(&nodes, &IDS, &alive, QUEUE, Some(IDS[dead]));
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
    admit_all_in_order(nodes[other].control, nodes[owner].control, QUEUE, &expected);
    let mut pushed = HashSet::new();
    for (i, c) in players.iter_mut() {
        let push = c.next_cmd("admitted");
        assert!(push["data"]["token"].is_string(), "player {i}: {push}");
        assert!(pushed.insert(*i));
    }
    assert!(
        admit(nodes[other].control, QUEUE, 100).is_empty(),
        "nobody left to admit"
    );
}
