//! The etcd coordination layer against a real etcd process (`etcd_support`): nodes are
//! `Cluster` handles in this process, each with its own etcd client, lease and thread.
//! Lease TTL 2 s keeps the waits short; every wait polls with a deadline.

mod common;
mod etcd_support;

use common::wait_until;
use etcd_support::{with_etcd, Etcd};
use queue_server::cluster::ownership::preferred_owner;
use queue_server::cluster::used_tokens::{used_key, BUCKET_SECS, SLACK_SECS};
use queue_server::cluster::{now_ms, Cluster, ClusterConfig, ClusterHandle};

const TTL_SECS: u64 = 2;
const PREFIX: &str = "/qs-test";

fn config(etcd: &Etcd, node_id: &str) -> ClusterConfig {
    ClusterConfig {
        etcd: vec![etcd.url.clone()],
        node_id: node_id.to_string(),
        advertise_player: format!("127.0.0.1:{}", 7000 + node_id.len()),
        advertise_control: "127.0.0.1:8000".to_string(),
        advertise_link: "127.0.0.1:8001".to_string(),
        lease_ttl_secs: TTL_SECS,
        recovery_window_secs: 30,
        prefix: PREFIX.to_string(),
        fingerprint: None,
    }
}

fn node(etcd: &Etcd, node_id: &str, queues: &[&str]) -> ClusterHandle {
    Cluster::start(&config(etcd, node_id), queues).expect("cluster starts")
}

fn member_ids(handle: &ClusterHandle) -> Vec<String> {
    handle.members().into_iter().map(|m| m.node_id).collect()
}

/// A direct etcd client for checks from outside the nodes.
fn etcd_get(etcd: &Etcd, key: &str) -> Option<(String, i64)> {
    with_etcd(etcd, async |client| {
        let answer = client.get(key, None).await.unwrap();
        answer
            .kvs()
            .first()
            .map(|kv| (kv.value_str().unwrap().to_string(), kv.lease()))
    })
}

fn lease_ttl_secs(etcd: &Etcd, lease: i64) -> i64 {
    with_etcd(etcd, async |client| {
        client.lease_time_to_live(lease, None).await.unwrap().ttl()
    })
}

/// The first name `{stem}-{i}` whose preferred owner among `nodes` is `wanted`.
fn queue_hashing_to(stem: &str, nodes: &[&str], wanted: &str) -> String {
    (0..)
        .map(|i| format!("{stem}-{i}"))
        .find(|q| preferred_owner(q, nodes.iter().copied()) == Some(wanted))
        .unwrap()
}

#[test]
fn three_nodes_see_each_other_and_a_clean_stop() {
    let etcd = Etcd::start();
    let a = node(&etcd, "a", &[]);
    let b = node(&etcd, "b", &[]);
    let c = node(&etcd, "c", &[]);
    for n in [&a, &b, &c] {
        wait_until(&format!("{} sees a, b, c", n.node_id()), || {
            member_ids(n) == ["a", "b", "c"]
        });
    }
    let record = a.members().into_iter().find(|m| m.node_id == "c").unwrap();
    assert_eq!(record.advertise_player, "127.0.0.1:7001");
    c.stop();
    for n in [&a, &b] {
        wait_until(&format!("{} sees a, b", n.node_id()), || {
            member_ids(n) == ["a", "b"]
        });
    }
}

#[test]
fn one_queue_has_exactly_one_owner() {
    let etcd = Etcd::start();
    let nodes: Vec<ClusterHandle> = ["a", "b", "c"]
        .iter()
        .map(|id| node(&etcd, id, &["world"]))
        .collect();
    wait_until("one owner, seen by all", || {
        let admitting: Vec<&str> = nodes
            .iter()
            .filter(|n| n.may_admit("world"))
            .map(|n| n.node_id())
            .collect();
        admitting.len() == 1
            && nodes
                .iter()
                .all(|n| n.owner_of("world").map(|o| o.node_id).as_deref() == Some(admitting[0]))
    });
    let owner = nodes.iter().find(|n| n.may_admit("world")).unwrap();
    let (value, lease) = etcd_get(&etcd, &format!("{PREFIX}/owners/world")).unwrap();
    assert_eq!(value, owner.node_id());
    assert_eq!(Some(lease), owner.lease_id());
    for n in &nodes {
        assert_eq!(n.may_admit("world"), n.node_id() == owner.node_id());
        assert!(!n.may_admit("not-tracked"));
    }
}

/// The owner is frozen rather than killed: to etcd both look the same (no keep-alive, no
/// revoke; a killed process's connection closing does not end its lease), and a frozen
/// node keeps answering `may_admit`, the case fencing exists for (a live node cut off).
#[test]
fn a_frozen_owner_is_fenced_before_the_next_owner_takes_over() {
    let etcd = Etcd::start();
    let nodes: Vec<ClusterHandle> = ["a", "b", "c"]
        .iter()
        .map(|id| node(&etcd, id, &["world"]))
        .collect();
    wait_until("an owner", || nodes.iter().any(|n| n.may_admit("world")));
    let old = nodes.iter().position(|n| n.may_admit("world")).unwrap();
    let old_epoch = nodes[old].ownership("world").unwrap().epoch;
    // As kill -9 or a partition: no keep-alive, no revoke; its fence keeps answering.
    nodes[old].freeze_for_test();
    let mut new = None;
    wait_until("another node owns the queue", || {
        let admitting: Vec<usize> = (0..3).filter(|&i| nodes[i].may_admit("world")).collect();
        // Sampled invariant: never two nodes admitting at once.
        assert!(admitting.len() <= 1, "two admitting owners: {admitting:?}");
        new = admitting.first().copied().filter(|&i| i != old);
        new.is_some()
    });
    let new = new.unwrap();
    let taken = nodes[new].ownership("world").unwrap();
    let old_deadline_ms = nodes[old].fence_deadline_ms();
    assert!(
        taken.epoch > old_epoch,
        "epoch {} after {old_epoch}",
        taken.epoch
    );
    // The correctness invariant (not a speed claim): the frozen owner had stopped
    // admitting before the new owner even sent the campaign that won.
    assert!(
        old_deadline_ms < taken.campaign_sent_ms,
        "old owner admits until {old_deadline_ms}, new owner campaigned at {}",
        taken.campaign_sent_ms
    );
    assert!(!nodes[old].may_admit("world"));
    assert!(now_ms() > old_deadline_ms);
}

#[test]
fn etcd_paused_stops_admission_and_resumed_restores_it() {
    let etcd = Etcd::start();
    let solo = node(&etcd, "solo", &["world"]);
    wait_until("solo owns world", || solo.may_admit("world"));
    let epoch = solo.ownership("world").unwrap().epoch;
    let old_lease = solo.lease_id().unwrap();
    etcd.pause();
    wait_until("solo stops admitting while etcd is paused", || {
        !solo.may_admit("world")
    });
    // Stay paused past the etcd-side TTL too, so etcd expires the lease when it runs
    // again and the node must notice, re-register on a new lease and campaign again.
    let expired_ms = solo.fence_deadline_ms() + TTL_SECS * 1000 + 500;
    wait_until("the lease is past its etcd-side TTL", || {
        now_ms() > expired_ms
    });
    etcd.resume();
    wait_until("solo admits again after etcd is back", || {
        solo.may_admit("world")
    });
    assert!(solo.ownership("world").unwrap().epoch > epoch);
    let lease = solo.lease_id().expect("a lease");
    assert_ne!(lease, old_lease, "etcd expired the old lease");
    let (record, record_lease) = etcd_get(&etcd, &format!("{PREFIX}/nodes/solo")).unwrap();
    assert!(record.contains("\"node_id\":\"solo\""), "{record}");
    assert_eq!(record_lease, lease, "registered on the current lease");
}

#[test]
fn a_token_is_consumed_once_across_the_cluster() {
    let etcd = Etcd::start();
    let a = node(&etcd, "a", &[]);
    let b = node(&etcd, "b", &[]);
    let now = queue_server::cluster::used_tokens::unix_now_secs();
    let expires = now + 30;
    assert_eq!(a.consume("jti-1", expires), Ok(true));
    assert_eq!(b.consume("jti-1", expires), Ok(false));
    assert_eq!(a.consume("jti-1", expires), Ok(false));
    assert_eq!(b.consume("jti-2", expires), Ok(true));
    assert_eq!(a.consume("jti-old", now.saturating_sub(1)), Ok(false));
    assert!(a.consume("", expires).is_err());
    // The key lives at least as long as the token, at most a bucket and the slack more.
    let (value, lease) = etcd_get(&etcd, &used_key(PREFIX, "jti-1")).unwrap();
    assert_eq!(value, "a");
    let ttl = lease_ttl_secs(&etcd, lease) as u64;
    let remaining = expires - queue_server::cluster::used_tokens::unix_now_secs();
    assert!(
        ttl >= remaining && ttl <= remaining + BUCKET_SECS + SLACK_SECS,
        "lease ttl {ttl} for a token with {remaining} s left"
    );
    assert_eq!(etcd_get(&etcd, &used_key(PREFIX, "jti-old")), None);
}

#[test]
fn a_joining_node_takes_new_queues_but_never_steals() {
    let etcd = Etcd::start();
    // `old` hashes to c once c is there, but is owned before c joins.
    let old = queue_hashing_to("old", &["a", "b", "c"], "c");
    let a = node(&etcd, "a", &[&old]);
    let b = node(&etcd, "b", &[&old]);
    wait_until("old has an owner, seen by a", || {
        (a.may_admit(&old) || b.may_admit(&old)) && a.owner_of(&old).is_some()
    });
    let before = a.owner_of(&old);
    let c = node(&etcd, "c", &[&old]);
    for n in [&a, &b, &c] {
        wait_until(&format!("{} sees a, b, c", n.node_id()), || {
            member_ids(n) == ["a", "b", "c"]
        });
    }
    let new = queue_hashing_to("new", &["a", "b", "c"], "c");
    for n in [&c, &a, &b] {
        n.add_queue(&new).unwrap();
    }
    wait_until("c owns the new queue", || c.may_admit(&new));
    wait_until("everyone sees c own the new queue", || {
        [&a, &b]
            .iter()
            .all(|n| n.owner_of(&new).map(|o| o.node_id).as_deref() == Some("c"))
    });
    assert!(!a.may_admit(&new) && !b.may_admit(&new));
    // The old queue did not move: same owner, same epoch, and c does not admit for it.
    assert_eq!(c.owner_of(&old), before);
    assert!(!c.may_admit(&old));
    assert!(a.may_admit(&old) || b.may_admit(&old));
}

#[test]
fn after_an_etcd_outage_the_last_owner_gets_its_queue_back() {
    let etcd = Etcd::start();
    // `world` hashes to b, but a owns it (a was alone); b joins and does not steal it.
    let world = queue_hashing_to("world", &["a", "b"], "b");
    let a = node(&etcd, "a", &[&world]);
    wait_until("a owns the queue", || a.may_admit(&world));
    let b = node(&etcd, "b", &[&world]);
    wait_until("b sees a own the queue", || {
        member_ids(&b) == ["a", "b"]
            && b.owner_of(&world).map(|o| o.node_id).as_deref() == Some("a")
    });
    let old_lease = a.lease_id().unwrap();
    etcd.pause();
    // Past both fences and past the etcd-side TTL of every lease, so etcd expires them
    // all when it runs again.
    let expired_ms = a.fence_deadline_ms().max(b.fence_deadline_ms()) + TTL_SECS * 1000 + 500;
    wait_until("every lease expired (etcd paused)", || {
        !a.may_admit(&world) && !b.may_admit(&world) && now_ms() > expired_ms
    });
    etcd.resume();
    wait_until("a node owns the queue again", || {
        a.may_admit(&world) || b.may_admit(&world)
    });
    assert!(
        a.may_admit(&world),
        "the last owner a should win it back, not b"
    );
    assert_ne!(a.lease_id(), Some(old_lease), "the old lease expired");
}

#[test]
fn a_second_process_with_the_same_node_id_takes_nothing_while_the_first_lives() {
    let etcd = Etcd::start();
    let first = node(&etcd, "a", &["world"]);
    wait_until("the first a owns the queue", || first.may_admit("world"));
    let epoch = first.ownership("world").unwrap().epoch;
    let second = node(&etcd, "a", &["world"]);
    wait_until("the second a is refused its registration", || {
        second.node_id_in_use()
    });
    assert!(!second.may_admit("world"));
    assert!(first.may_admit("world"));
    assert_eq!(first.ownership("world").unwrap().epoch, epoch);
    let (_, lease) = etcd_get(&etcd, &format!("{PREFIX}/nodes/a")).unwrap();
    assert_eq!(
        Some(lease),
        first.lease_id(),
        "the record stays the first's"
    );
    // Once the first is gone (clean stop: lease revoked), the second takes over.
    first.stop();
    wait_until("the second a registers and owns the queue", || {
        !second.node_id_in_use() && second.may_admit("world")
    });
}
