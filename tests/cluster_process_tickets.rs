//! Place tickets across real processes (issue 11): three `queue-server` child processes
//! (`cluster_process/node.rs`) on a real etcd (`etcd_support`), players on every node
//! holding the `place_ticket` of their `login` answer; the owner's process gets SIGKILL
//! (no revoke, no goodbye on its links, its players' connections gone); its players
//! log in again on the surviving processes within the recovery window presenting their
//! tickets and get `resumed: true`; admission then takes them in their old order
//! together with the survivors' players, each user once; a player the dead owner
//! admitted before the kill gets no place back (`resumed: false`, last). Every wait
//! polls with a deadline; nothing asserts on timing.

mod common;
mod etcd_support;
#[path = "cluster_process/node.rs"]
mod node;
mod server_process;

use common::{
    come_back_with_tickets, converge_and_admit, node_of, place_ticket, split_lost, Client,
};
use etcd_support::{admit_and_wait_published, Etcd};
use node::{agreed_owner, wait_routed, NodeProcess};
use serde_json::json;

/// The cluster's shared token key (32-byte Ed25519 seed, base64url).
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
const QUEUE: &str = "default";
const PREFIX: &str = "/qs-proc-tickets";
const IDS: [&str; 3] = ["pt1", "pt2", "pt3"];
/// The recovery window: long enough for the dead owner's players to come back on a
/// loaded box (claims are honored only in it), short enough to keep the test to
/// seconds (admission waits it out).
const WINDOW_SECS: u64 = 6;

/// Issue 11, place tickets with real processes: the owner process is SIGKILLed with
/// players of its own waiting; they come back on the survivors with their tickets and
/// get their places back; everyone is admitted in the old order, each once; the player
/// the owner admitted before the kill is not given a place back.
#[test]
fn the_killed_owner_process_players_get_their_places_back_with_tickets() {
    let etcd = Etcd::start();
    let mut nodes: Vec<NodeProcess> = IDS
        .iter()
        .map(|id| NodeProcess::start_with_window(&etcd.url, PREFIX, id, KEY, "", WINDOW_SECS))
        .collect();
    let dead = agreed_owner(&nodes, &[0, 1, 2], QUEUE, None);
    for (i, n) in nodes.iter().enumerate() {
        if i != dead {
            wait_routed(n);
        }
    }

    // Twelve players, one at a time, over the three processes: positions 1..=12, each
    // waiting answer with a ticket naming its place.
    let mut players: Vec<(u64, Client, String)> = Vec::new();
    for i in 1..=12u64 {
        let mut c = Client::connect(nodes[node_of(i)].player);
        let answer = c.request("login", 1, json!({"user_id": i, "queue": QUEUE}));
        players.push((i, c, place_ticket(&answer, i)));
    }

    // The owner admits players 1..=dead+1, the last of them connected to the owner
    // itself, and publishes how far it admitted before it is killed.
    let first_dead = dead as u64 + 1;
    let dead_control = nodes[dead].control;
    admit_and_wait_published(
        &etcd,
        (PREFIX, QUEUE),
        dead_control,
        first_dead,
        &players[dead].2,
    );
    players.retain(|(i, _, _)| *i > first_dead || node_of(*i) == dead);

    // SIGKILL: the owner's players lose their connections with it.
    nodes[dead].kill9();
    let (lost, survivors) = split_lost(players, dead);
    let alive: Vec<usize> = (0..3).filter(|&n| n != dead).collect();

    // They come back on the surviving processes, in turn, presenting their tickets
    // (answered 9 until a survivor owns the queue and read the watermark).
    let via: Vec<_> = alive.iter().map(|&n| nodes[n].player).collect();
    let (returned, again) = come_back_with_tickets(&via, QUEUE, &lost, first_dead);
    let owner = agreed_owner(&nodes, &alive, QUEUE, Some(IDS[dead]));

    // Everyone converges to the old relative order, the re-joined admitted player last;
    // admission after the window, through both survivors, takes them in that order,
    // each exactly once.
    let other = alive.iter().copied().find(|&n| n != owner).unwrap();
    let controls = (nodes[other].control, nodes[owner].control);
    converge_and_admit(survivors, returned, again, controls, QUEUE);
}
