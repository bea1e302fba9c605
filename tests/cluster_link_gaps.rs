//! The node link's gaps on a real etcd (`etcd_support`), two full servers in one
//! process: a login whose queue has no reachable owner is answered SHUTTING_DOWN (9)
//! with `retry_after_secs`, never queued in the local core (a place in a queue this
//! node does not own: never admitted, split from the real queue); once an owner is in
//! place the same login succeeds and the player is admitted through any node. With
//! `queues.auto_create`, a queue nobody has seen gets an owner the same way. Every wait
//! polls with a deadline.

mod common;
mod etcd_support;

use common::{admit, owner_seen_by, position, settled_owner, wait_until, TestServer};
use etcd_support::{node_in_process, two_queues_owned_by_d, with_etcd, Etcd};
use serde_json::{json, Value};

/// One login of `user` to `queue` on a new connection of `n`.
fn login(n: &TestServer, user: u64, queue: &str) -> Value {
    let mut c = n.client();
    c.request("login", 1, json!({"user_id": user, "queue": queue}))
}

/// Asserts `answer` is the "no owner yet, retry" answer.
fn assert_retry(answer: &Value) {
    assert_eq!(answer["code"], 9, "{answer}");
    assert!(
        answer["data"]["retry_after_secs"].as_u64().unwrap_or(0) >= 1,
        "{answer}"
    );
}

/// Logs `user` in to `queue` on `n`, retrying while the answer is 9 (with a retry
/// hint); returns the client and its position.
fn login_when_owned(n: &TestServer, user: u64, queue: &str) -> (common::Client, u64) {
    let mut out = None;
    wait_until("a login once the queue has an owner", || {
        let mut c = n.client();
        let answer = c.request("login", 1, json!({"user_id": user, "queue": queue}));
        if answer["code"] == 9 {
            assert_retry(&answer);
            return false;
        }
        assert_eq!(answer["code"], 0, "{answer}");
        out = Some((c, answer["data"]["position"].as_u64().unwrap()));
        true
    });
    out.unwrap()
}

/// Users 1 and 2 log in to `queue`, one on each node, retrying until it has an owner:
/// they wait in one queue, in arrival order; once both nodes list the owner, the node
/// that does not own it (`nodes[0]` is `first_id`) admits both, in that order.
fn two_players_in_one_queue(nodes: &[TestServer; 2], first_id: &str, queue: &str) {
    let (_c1, p1) = login_when_owned(&nodes[0], 1, queue);
    let (_c2, p2) = login_when_owned(&nodes[1], 2, queue);
    assert_eq!((p1, p2), (1, 2), "one queue, in arrival order");
    for n in nodes {
        wait_until("every node lists the owner", || {
            owner_seen_by(n, queue).is_some()
        });
    }
    let owner = owner_seen_by(&nodes[0], queue).unwrap();
    let other = if owner == first_id { 1 } else { 0 };
    assert_eq!(admit(nodes[other].control, queue, 10), vec![1, 2]);
}

/// The queue's owner key names a node that is no member (a dead owner whose key has
/// not run out, or views that disagree): no node may queue a login locally. The key is
/// written by the test under its own lease, so the gap lasts until the test ends it:
/// then a node takes the queue and the same logins succeed, one queue, admitted
/// through either node in order.
#[test]
fn a_login_while_the_queue_has_no_reachable_owner_is_answered_retry() {
    let etcd = Etcd::start();
    let prefix = "/qs-gap-owner";
    let lease = with_etcd(&etcd, async |c| {
        let lease = c.lease_grant(60, None).await.unwrap().id();
        let opts = etcd_client::PutOptions::new().with_lease(lease);
        c.put(format!("{prefix}/owners/default"), "ghost", Some(opts))
            .await
            .unwrap();
        lease
    });
    let nodes = [
        node_in_process(&etcd, prefix, "g1", ""),
        node_in_process(&etcd, prefix, "g2", ""),
    ];
    for n in &nodes {
        wait_until("the ghost owner is listed", || {
            owner_seen_by(n, "default").as_deref() == Some("ghost")
        });
    }
    for (i, n) in nodes.iter().enumerate() {
        assert_retry(&login(n, 10 + i as u64, "default"));
    }

    with_etcd(&etcd, async |c| c.lease_revoke(lease).await.unwrap());
    two_players_in_one_queue(&nodes, "g1", "default");
}

/// `queues.auto_create` in a cluster: the first login for a name nobody has seen is
/// answered 9 (retry) while the cluster gets the queue an owner; then logins on both
/// nodes wait in the owner's one queue and are admitted through either node.
#[test]
fn an_auto_created_queue_gets_one_owner_in_the_cluster() {
    let etcd = Etcd::start();
    let prefix = "/qs-gap-auto";
    let extra = "[queues]\nauto_create = true\n";
    let nodes = [
        node_in_process(&etcd, prefix, "h1", extra),
        node_in_process(&etcd, prefix, "h2", extra),
    ];
    for n in &nodes {
        wait_until("the configured queue is owned", || {
            owner_seen_by(n, "default").is_some()
        });
    }
    assert_retry(&login(&nodes[0], 1, "world-7"));
    two_players_in_one_queue(&nodes, "h1", "world-7");
}

/// The queue's owner dies as with `kill -9` (`kill_node_for_test`: no keep-alive, no
/// revoke, its link port closed): logins on the survivors during the failover are
/// answered 9 with a retry hint (link down, then no owner) until a survivor owns the
/// queue; then they succeed, and the players are in the new owner's one queue (both
/// admitted, in order, through a survivor), never in a survivor's own fenced queue.
#[test]
fn logins_during_a_failover_wait_for_the_new_owner() {
    let etcd = Etcd::start();
    let prefix = "/qs-gap-kill";
    let ids = ["k1", "k2", "k3"];
    let mut nodes: Vec<TestServer> = ids
        .iter()
        .map(|id| node_in_process(&etcd, prefix, id, ""))
        .collect();
    let dead = settled_owner(&nodes, &ids, &[0, 1, 2], "default", None);
    nodes[dead].handle.as_mut().unwrap().kill_node_for_test();
    let alive: Vec<usize> = (0..3).filter(|&i| i != dead).collect();
    let (_c1, p1) = login_when_owned(&nodes[alive[0]], 1, "default");
    let (_c2, p2) = login_when_owned(&nodes[alive[1]], 2, "default");
    assert_eq!((p1, p2), (1, 2), "one queue, in arrival order");
    assert_eq!(admit(nodes[alive[0]].control, "default", 10), vec![1, 2]);
}

/// The value of `name{peer="peer",side="side"}` on `n`'s `/metrics` (None: no series).
fn link_metric(n: &TestServer, name: &str, peer: &str, side: &str) -> Option<u64> {
    let (status, text) = common::http_text(n.control, "GET", "/metrics", None, None);
    assert_eq!(status, 200, "{text}");
    let series = format!("{name}{{peer=\"{peer}\",side=\"{side}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.parse().unwrap())
}

/// Node-link metrics on two nodes: after players joined over the link, each side's
/// counters name the other node (`peer`) and its side, are above 0, and the link is
/// connected; a cut link is re-dialled (`reconnects` grows on both sides); the owner
/// dying leaves the edge's link disconnected (`connected` 0).
#[test]
fn node_link_metrics_name_the_peer_and_follow_cuts() {
    let etcd = Etcd::start();
    let prefix = "/qs-gap-metrics";
    let ids = ["m1", "m2"];
    let mut nodes: Vec<TestServer> = ids
        .iter()
        .map(|id| node_in_process(&etcd, prefix, id, ""))
        .collect();
    let o = settled_owner(&nodes, &ids, &[0, 1], "default", None);
    let e = 1 - o;
    let (o_id, e_id) = (ids[o], ids[e]);
    let (_p1, _) = login_when_owned(&nodes[e], 1, "default");
    let (_p2, _) = login_when_owned(&nodes[e], 2, "default");

    // (A frame is counted once handled: a player may see its effect first.)
    for (n, peer, side) in [(&nodes[e], o_id, "edge"), (&nodes[o], e_id, "owner")] {
        wait_until("every link counter above 0, connected", || {
            let counters = [
                "queue_cluster_link_frames_sent_total",
                "queue_cluster_link_frames_received_total",
                "queue_cluster_link_bytes_sent_total",
                "queue_cluster_link_bytes_received_total",
                "queue_cluster_link_messages_relayed_total",
            ];
            counters
                .iter()
                .all(|name| link_metric(n, name, peer, side).unwrap_or(0) > 0)
                && link_metric(n, "queue_cluster_link_connected", peer, side) == Some(1)
        });
        let reconnects = "queue_cluster_link_reconnects_total";
        assert_eq!(link_metric(n, reconnects, peer, side), Some(0));
    }

    // A cut: the edge's waiting places make it re-dial at once.
    nodes[o]
        .handle
        .as_ref()
        .unwrap()
        .close_node_links_for_test();
    for (n, peer, side) in [(&nodes[e], o_id, "edge"), (&nodes[o], e_id, "owner")] {
        wait_until("a reconnect counted", || {
            let r = link_metric(n, "queue_cluster_link_reconnects_total", peer, side);
            r.unwrap_or(0) >= 1
        });
    }

    // The owner dies: nothing answers the edge's dials any more.
    nodes[o].handle.as_mut().unwrap().kill_node_for_test();
    wait_until("the edge's link is down", || {
        link_metric(&nodes[e], "queue_cluster_link_connected", o_id, "edge") == Some(0)
    });
}

/// The dead owner held two queues, and rendezvous gives them to two different
/// survivors: every survivor's players keep their connection and their place, each in
/// its own queue's new owner (each survivor's link to the dead node re-submits to both
/// new owners, one of them itself), and are admitted there in their old order.
#[test]
fn each_queue_of_a_dead_owner_follows_its_own_new_owner() {
    let etcd = Etcd::start();
    let prefix = "/qs-gap-split";
    let (d, b, c) = ("s-d", "s-b", "s-c");
    // d starts alone and owns both; a live owner is never displaced by b or c.
    let (mut nodes, qb, qc) = two_queues_owned_by_d(&etcd, prefix, [d, b, c]);
    wait_until("b and c route both queues to d", || {
        nodes[1..].iter().all(|n| {
            let routes = n.handle.as_ref().unwrap().routes.as_ref().unwrap();
            [&qb, &qc]
                .iter()
                .all(|q| routes.remote_owner(q).as_deref() == Some(d))
        })
    });
    // (user, node, queue): each survivor has a player in each queue.
    let plan = [(1, 1, &qb), (2, 1, &qc), (3, 2, &qb), (4, 2, &qc)];
    let mut players = Vec::new();
    for (user, n, q) in plan {
        let (client, pos) = login_when_owned(&nodes[n], user, q);
        assert_eq!(pos, if user <= 2 { 1 } else { 2 }, "user {user}");
        players.push((user, client, pos));
    }

    nodes[0].handle.as_mut().unwrap().kill_node_for_test();
    for n in &nodes[1..] {
        wait_until("each queue owned by its preferred survivor", || {
            owner_seen_by(n, &qb).as_deref() == Some(b)
                && owner_seen_by(n, &qc).as_deref() == Some(c)
        });
    }
    for (user, client, pos) in players.iter_mut() {
        wait_until("a survivor's place at its queue's new owner", || {
            position(client, *user) == *pos
        });
    }
    assert_eq!(admit(nodes[1].control, &qb, 10), vec![1, 3]);
    assert_eq!(
        admit(nodes[1].control, &qc, 10),
        vec![2, 4],
        "forwarded to c"
    );
    for (user, client, _) in players.iter_mut() {
        let push = client.next_cmd("admitted");
        assert!(push["data"]["token"].is_string(), "player {user}: {push}");
    }
}
