//! Place tickets on a real etcd (`etcd_support`), three full servers in one process:
//! every waiting player's `login` answer carries a `place_ticket`; the owner of the
//! queue dies as with `kill -9` (`kill_node_for_test`: no keep-alive, no revoke, link
//! port closed); its own players reconnect to the other nodes presenting their tickets
//! within the recovery window and get their places back (`resumed: true`), so admission
//! takes everyone, survivors and returners, in the old order, each once. A player the
//! dead owner admitted before it died gets no place back (the admission watermark it
//! published in etcd), a tampered or someone else's ticket is refused AUTH_FAILED, and
//! a single node's login answer has no `place_ticket`. Every wait polls with a deadline.

mod common;
mod etcd_support;

use common::{
    come_back_with_tickets, converge_and_admit, node_of, place_ticket, settled_owner, split_lost,
    Client, TestServer,
};
use etcd_support::{admit_and_wait_published, Etcd};
use serde_json::json;

const QUEUE: &str = "default";
const PREFIX: &str = "/qs-tickets";
const IDS: [&str; 3] = ["t1", "t2", "t3"];

fn node(etcd: &Etcd, id: &str) -> TestServer {
    common::ticket_node(&etcd.url, id, PREFIX, 6)
}

/// Ticket checks on the io loop: a changed byte, or another user's ticket, is refused
/// AUTH_FAILED with the reason, and the connection closed.
fn bad_tickets_are_refused(nodes: &[TestServer], via: usize, user: u64, ticket: &str) {
    let mut forged = ticket.as_bytes().to_vec();
    forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let cases = [
        (
            user,
            forged.as_str(),
            "place ticket rejected: bad signature",
        ),
        (
            user + 1000,
            ticket,
            "place ticket rejected: issued to another user",
        ),
        (user, "not-a-ticket", "place ticket rejected: malformed"),
    ];
    for (who, t, msg) in cases {
        let mut c = nodes[via].client();
        let v = c.request("login", 1, json!({"user_id": who, "place_ticket": t}));
        assert_eq!(
            (v["code"].as_u64(), v["msg"].as_str()),
            (Some(4), Some(msg)),
            "{v}"
        );
        c.expect_closed();
    }
}

#[test]
fn the_dead_owners_players_get_their_places_back_with_tickets() {
    let etcd = Etcd::start();
    let mut nodes: Vec<TestServer> = IDS.iter().map(|id| node(&etcd, id)).collect();
    let dead = settled_owner(&nodes, &IDS, &[0, 1, 2], QUEUE, None);

    // Twelve players, one at a time, over the three nodes: positions 1..=12, each
    // waiting answer with a ticket naming its place.
    let mut players: Vec<(u64, Client, String)> = Vec::new();
    for i in 1..=12u64 {
        let mut c = nodes[node_of(i)].client();
        let answer = c.login(i);
        players.push((i, c, place_ticket(&answer, i)));
    }

    // The owner admits players 1..=dead+1, the last of them on the owner itself, and
    // publishes how far it admitted before it dies.
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

    // The owner dies; its players' connections are gone with it.
    nodes[dead].handle.as_mut().unwrap().kill_node_for_test();
    let (lost, survivors) = split_lost(players, dead);
    let alive: Vec<usize> = (0..3).filter(|&n| n != dead).collect();
    let owner = settled_owner(&nodes, &IDS, &alive, QUEUE, Some(IDS[dead]));

    // They come back on the surviving nodes, in turn, presenting their tickets.
    let via: Vec<_> = alive.iter().map(|&n| nodes[n].player).collect();
    let (returned, again) = come_back_with_tickets(&via, QUEUE, &lost, first_dead);
    bad_tickets_are_refused(&nodes, alive[0], lost[1].0, &lost[1].1);

    // Everyone converges to the old relative order, the re-joined admitted player last;
    // admission after the window, through both survivors, takes them in that order,
    // each exactly once.
    let other = alive.iter().copied().find(|&n| n != owner).unwrap();
    let controls = (nodes[other].control, nodes[owner].control);
    converge_and_admit(survivors, returned, again, controls, QUEUE);
}

/// One node: the protocol is unchanged: no `place_ticket` in the answer, and one
/// presented is ignored like any unknown field.
#[test]
fn a_single_node_login_has_no_place_ticket() {
    let server = common::start("");
    let (_c, answer) = server.player(1);
    assert_eq!(answer["code"], 0, "{answer}");
    assert!(answer["data"].get("place_ticket").is_none(), "{answer}");
    let mut c = server.client();
    let v = c.request("login", 1, json!({"user_id": 2, "place_ticket": "x.y"}));
    assert_eq!(v["code"], 0, "{v}");
    assert!(v["data"].get("place_ticket").is_none(), "{v}");
}
