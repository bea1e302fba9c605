//! Failures of a cluster at the process level, on a real etcd (`etcd_support`) with real
//! sockets: the owner's process SIGKILLed (`cluster_process/node.rs` runs the real
//! binary as a child), etcd SIGSTOPped under full servers, a node joining a running
//! cluster, nodes whose shared settings differ, and token verifies piling up on a
//! silent etcd. TTL 2 s and recovery window 1 s keep each test to seconds; every wait
//! polls with a deadline and nothing asserts on timing.

mod common;
mod etcd_support;
#[path = "cluster_process/node.rs"]
mod node;
mod server_process;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{admit, wait_until, Client};
use etcd_support::{node_in_process, node_toml, with_etcd, Etcd};
use node::{agreed_owner, wait_routed, NodeProcess};
use serde_json::{json, Value};

/// The cluster's shared token key (32-byte Ed25519 seed, base64url).
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
const QUEUE: &str = "default";

/// The next frame on a waiting player's connection, which must be a `position` push or
/// the answer to request `seq`, or (when `admitted_ok`) an `admitted` push: a `kicked`,
/// or anything else, fails the test naming the player.
fn next_allowed(c: &mut Client, user: u64, admitted_ok: bool) -> Value {
    let v = c.next();
    let allowed =
        v["cmd"] == "position" || v["seq"] != 0 || (admitted_ok && v["cmd"] == "admitted");
    assert!(allowed, "player {user}: unexpected push {v}");
    v
}

/// The player's position by a `position` request on its connection; only `position`
/// pushes may come on the way.
fn position(c: &mut Client, user: u64) -> u64 {
    c.send(&json!({"cmd": "position", "seq": 7, "data": {}}));
    loop {
        let v = next_allowed(c, user, false);
        if v["seq"] == 7 {
            assert_eq!(v["code"], 0, "player {user}: {v}");
            return v["data"]["position"].as_u64().unwrap();
        }
    }
}

/// The token of the player's `admitted` push; only `position` pushes may come first.
fn admitted_token(c: &mut Client, user: u64) -> String {
    loop {
        let v = next_allowed(c, user, true);
        if v["cmd"] == "admitted" {
            return v["data"]["token"].as_str().unwrap().to_string();
        }
    }
}

/// Logs `user` in to `queue` on the node at `addr`; returns the connection and position.
fn login(addr: std::net::SocketAddr, user: u64, queue: &str) -> (Client, u64) {
    let mut c = Client::connect(addr);
    let answer = c.request("login", 1, json!({"user_id": user, "queue": queue}));
    assert_eq!(answer["code"], 0, "login of {user} to {queue}: {answer}");
    (c, answer["data"]["position"].as_u64().unwrap())
}

/// `POST /v1/tokens/verify` on `node`: (status, body).
fn verify(node: &NodeProcess, token: &str) -> (u16, Value) {
    node.http("POST", "/v1/tokens/verify", Some(json!({ "token": token })))
}

/// Issue 11, kill -9 of the owner, with real processes: players on every node, three
/// admitted and their tokens used before the kill; after it another node owns the
/// queue, every player on a surviving node keeps its connection (only `position`
/// pushes) and its relative order, admission through any surviving node admits them in
/// that order, each user once in the whole run, and the tokens used before the kill
/// still answer `already_used` on every surviving node.
#[test]
fn kill_9_of_the_owner_process_keeps_survivors_order_and_used_tokens() {
    let etcd = Etcd::start();
    let mut nodes: Vec<NodeProcess> = ["k1", "k2", "k3"]
        .iter()
        .map(|id| NodeProcess::start(&etcd.url, "/qs-kill", id, KEY, ""))
        .collect();
    let dead = agreed_owner(&nodes, &[0, 1, 2], QUEUE, None);
    (0..3)
        .filter(|&i| i != dead)
        .for_each(|i| wait_routed(&nodes[i]));
    let node_of = |i: u64| ((i - 1) % 3) as usize;

    let mut players: Vec<(u64, Client)> = Vec::new();
    for i in 1..=12u64 {
        let (c, pos) = login(nodes[node_of(i)].player, i, QUEUE);
        assert_eq!(pos, i, "player {i} on {}", nodes[node_of(i)].id);
        players.push((i, c));
    }
    // Three admitted through a node that does not own the queue (forwarded); their
    // tokens used, each through another node (forwarded to the owner or answered there).
    let via = (dead + 1) % 3;
    assert_eq!(admit(nodes[via].control, QUEUE, 3), [1, 2, 3]);
    let mut used = Vec::new();
    for (i, c) in players.iter_mut().take(3) {
        let token = admitted_token(c, *i);
        let (status, body) = verify(&nodes[node_of(*i)], &token);
        assert_eq!((status, &body["valid"]), (200, &json!(true)), "{body}");
        used.push(token);
    }
    players.drain(..3);
    for (i, c) in players.iter_mut() {
        wait_until("positions after three admissions", || {
            position(c, *i) == *i - 3
        });
    }

    nodes[dead].kill9();
    players.retain(|(i, _)| node_of(*i) != dead);
    let alive: Vec<usize> = (0..3).filter(|&n| n != dead).collect();
    // Before anyone notices: the owner is still listed but refuses the forward; the
    // survivor answers itself from etcd.
    let (status, body) = verify(&nodes[alive[0]], &used[0]);
    assert_eq!(
        (status, &body["reason"]),
        (200, &json!("already_used")),
        "{body}"
    );
    let owner = agreed_owner(&nodes, &alive, QUEUE, Some(&nodes[dead].id.clone()));
    assert_ne!(owner, dead);
    for (rank, (i, c)) in players.iter_mut().enumerate() {
        let rank = rank as u64 + 1;
        wait_until("a survivor's exact rank among survivors", || {
            position(c, *i) == rank
        });
    }

    // Admission through the other survivor first (forwarded), then the owner.
    let other = alive.iter().copied().find(|&n| n != owner).unwrap();
    let mut admitted = admit(nodes[other].control, QUEUE, 2);
    admitted.extend(admit(nodes[owner].control, QUEUE, 100));
    let expected: Vec<u64> = players.iter().map(|(i, _)| *i).collect();
    assert_eq!(admitted, expected, "admitted in the old relative order");
    let everyone: HashSet<u64> = admitted.iter().copied().chain(1..=3).collect();
    assert_eq!(everyone.len(), admitted.len() + 3, "nobody admitted twice");
    for (i, c) in players.iter_mut() {
        admitted_token(c, *i);
    }
    assert!(
        admit(nodes[other].control, QUEUE, 100).is_empty(),
        "nobody left to admit"
    );

    for &n in &alive {
        for token in &used {
            let (status, body) = verify(&nodes[n], token);
            assert_eq!(status, 200, "{}: {body}", nodes[n].id);
            assert_eq!(body["reason"], "already_used", "{}: {body}", nodes[n].id);
        }
    }
}

// ---- In-process full servers (`common::start_node`) for the remaining failures ----

use common::TestServer;
use queue_server::server::ServerHandle;

fn handle(node: &TestServer) -> &ServerHandle {
    node.handle.as_ref().unwrap()
}

/// The owner of `queue` as node `node` last listed it: (node id, epoch).
fn listed_owner(node: &TestServer, queue: &str) -> Option<(String, u64)> {
    let cluster = handle(node).cluster.as_ref().unwrap();
    cluster.owner_of(queue).map(|o| (o.node_id, o.epoch))
}

/// Waits until every node names the same owner of each queue and routes its logins
/// there (owner: its own core; others: the link to the owner); returns the owners.
fn settled(nodes: &[&TestServer], queues: &[&str]) -> HashMap<String, (String, u64)> {
    let mut owners = HashMap::new();
    wait_until("every node names and routes to each queue's owner", || {
        owners.clear();
        queues.iter().all(|q| {
            let Some(owner) = listed_owner(nodes[0], q) else {
                return false;
            };
            let agreed = nodes.iter().all(|n| {
                let h = handle(n);
                let routed = h.routes.as_ref().unwrap().remote_owner(q);
                let me = h.cluster.as_ref().unwrap().node_id() == owner.0;
                listed_owner(n, q) == Some(owner.clone())
                    && routed == (!me).then(|| owner.0.clone())
            });
            owners.insert(q.to_string(), owner);
            agreed
        })
    });
    owners
}

/// `admitted_total` of `queue` on `node`'s core.
fn admitted_total(node: &TestServer, queue: &str) -> u64 {
    node.queue_stats(queue)["admitted_total"].as_u64().unwrap()
}

/// Issue 11, etcd stopped under full servers: the owner stops admitting within the TTL
/// (manual admit 503, rate admission stops), and once etcd runs again the same node
/// owns the queue and admits again, every player kept on its connection and admitted
/// exactly once.
#[test]
fn etcd_stopped_stops_admission_and_resumed_restores_it_with_players_kept() {
    let etcd = Etcd::start();
    let queue = "[[queues.list]]\nname = \"default\"\nmax_waiting = 1000\nadmit_rate_per_s = 4.0\n";
    let nodes = [
        node_in_process(&etcd, "/qs-pause", "e1", queue),
        node_in_process(&etcd, "/qs-pause", "e2", queue),
    ];
    let owners = settled(&[&nodes[0], &nodes[1]], &[QUEUE]);
    let owner_id = owners[QUEUE].0.clone();
    let o = if owner_id == "e1" { 0 } else { 1 };
    let mut players: Vec<(u64, Client)> = (1..=40u64)
        .map(|i| (i, login(nodes[(i % 2) as usize].player, i, QUEUE).0))
        .collect();
    let before = admitted_total(&nodes[o], QUEUE);
    wait_until("rate admission runs", || {
        admitted_total(&nodes[o], QUEUE) > before
    });

    etcd.pause();
    wait_until("the owner is fenced while etcd is stopped", || {
        let stats = nodes[o].http("GET", "/v1/stats", None).1;
        stats["cluster"]["queues"][QUEUE]["may_admit"] == false
    });
    let admit_path = format!("/v1/queues/{QUEUE}/admit");
    let (status, body) = nodes[o].http("POST", &admit_path, Some(json!({"count": 1})));
    assert_eq!(status, 503, "a manual admit while fenced: {body}");
    // Stay stopped past the fence and past the etcd-side TTL: etcd expires every lease
    // when it runs again, so the owner must win its queue back, not just renew.
    let cluster = handle(&nodes[o]).cluster.as_ref().unwrap();
    let held = admitted_total(&nodes[o], QUEUE);
    let expired_ms = cluster.fence_deadline_ms() + 2_500;
    wait_until("leases past their etcd-side TTL", || {
        // Sampled while stopped: rate admission made no admission after the 503.
        assert_eq!(
            admitted_total(&nodes[o], QUEUE),
            held,
            "admitted while fenced"
        );
        queue_server::cluster::now_ms() > expired_ms
    });
    etcd.resume();
    wait_until("the owner admits again", || {
        // One answer must not say both "may admit" and "no owner" (or another owner).
        let stats = nodes[o].http("GET", "/v1/stats", None).1;
        let queue = &stats["cluster"]["queues"][QUEUE];
        let may_admit = queue["may_admit"] == true;
        assert!(!may_admit || queue["owner"] == owner_id.as_str(), "{queue}");
        may_admit
    });
    wait_until("rate admission runs again", || {
        admitted_total(&nodes[o], QUEUE) > held
    });
    assert_eq!(
        listed_owner(&nodes[o], QUEUE).unwrap().0,
        owner_id,
        "same owner"
    );

    // Everyone left is admitted (through the other node), and every player, on its
    // first connection, saw only positions and then exactly one admission.
    wait_until("everyone admitted", || {
        admit(nodes[1 - o].control, QUEUE, 100);
        admitted_total(&nodes[o], QUEUE) == 40
    });
    for (i, c) in players.iter_mut() {
        admitted_token(c, *i);
    }
}

/// `[[queues.list]]` tables for these names (manual admission).
fn queue_tables(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("[[queues.list]]\nname = \"{n}\"\nmax_waiting = 1000\n"))
        .collect()
}

/// A waiting player: user id, position last checked, connection.
type Waiting = (u64, u64, Client);

/// Issue 11, a node joins a running cluster: it displaces no live owner (every queue
/// keeps its owner and epoch, every waiting player its position, with only `position`
/// frames on its connection), it takes the queue nobody owned (a world only it lists),
/// and it serves logins of every queue with exact positions, as the others serve its
/// new queue.
#[test]
fn a_joining_node_moves_no_player_takes_the_unowned_queue_and_serves_every_queue() {
    let etcd = Etcd::start();
    join_scenario(&etcd, "/qs-join");
}

/// An owner stops cleanly and its worlds go to two different nodes (names picked so
/// that rendezvous hashing splits them): no player of another node may move back or
/// see anything but `position` frames ("clean stop: nothing lost", docs/cluster.md).
/// Failed while a link followed only one new owner (a player waiting on j3 in a world
/// that moved to j3 was kicked `shutdown`); each queue now follows its own new owner.
#[test]
fn a_clean_stop_whose_worlds_split_over_two_nodes_moves_no_other_player() {
    let etcd = Etcd::start();
    let (j1, mut j2, j3, mut players, all) = join_scenario(&etcd, "/qs-split");
    j2.handle.take().unwrap().shutdown();
    players.retain(|(user, _, _)| user % 100 != 1);
    wait_until("j2's worlds owned by j1 or j3", || {
        all.iter().all(|q| {
            [&j1, &j3]
                .iter()
                .all(|n| listed_owner(n, q).is_some_and(|o| o.0 != "j2"))
        })
    });
    settled(&[&j1, &j3], &all);
    for (user, pos, c) in players.iter_mut() {
        // j2's player ahead may leave (grace): a player moves up, never back.
        let now = position(c, *user);
        assert!(
            now >= 1 && now <= *pos,
            "player {user}: position {pos} -> {now}"
        );
    }
}

/// j1 and j2 own six worlds with a player of each node waiting in each; j3 joins with
/// one more world; checks what a join may not change and what it must serve. Returns
/// the nodes, every player still waiting (on all three) and the seven worlds.
fn join_scenario(
    etcd: &Etcd,
    prefix: &str,
) -> (
    TestServer,
    TestServer,
    TestServer,
    Vec<Waiting>,
    Vec<&'static str>,
) {
    let (qa, qb) = (split_world("j1"), split_world("j3"));
    let worlds: [&'static str; 6] = [qa, qb, "w2", "w3", "w4", "w5"];
    let tables = queue_tables(&worlds);
    let j1 = node_in_process(etcd, prefix, "j1", &tables);
    let j2 = node_in_process(etcd, prefix, "j2", &tables);
    let before = settled(&[&j1, &j2], &worlds);
    // Two players per world, one on each node: positions 1 and 2.
    let mut players: Vec<Waiting> = Vec::new();
    for (w, world) in worlds.iter().enumerate() {
        for (k, node) in [&j1, &j2].iter().enumerate() {
            let user = 100 * (w as u64 + 1) + k as u64;
            let (c, pos) = login(node.player, user, world);
            assert_eq!(pos, k as u64 + 1, "player {user} in {world}");
            players.push((user, pos, c));
        }
    }

    let mut all = worlds.to_vec();
    all.push("wnew");
    let j3 = node_in_process(etcd, prefix, "j3", &queue_tables(&all));
    let after = settled(&[&j1, &j2, &j3], &all);
    for world in worlds {
        assert_eq!(
            after[world], before[world],
            "{world} kept its owner and epoch"
        );
    }
    assert_eq!(
        after["wnew"].0, "j3",
        "the new node owns the queue nobody owned"
    );
    for (user, pos, c) in players.iter_mut() {
        assert_eq!(position(c, *user), *pos, "player {user} kept its position");
    }
    // The new node serves every world (forwarded to its owner), the others its world.
    for (w, world) in worlds.iter().enumerate() {
        let user = 100 * (w as u64 + 1) + 2;
        let (c, pos) = login(j3.player, user, world);
        assert_eq!(pos, 3, "player {user} in {world}");
        players.push((user, pos, c));
    }
    for (k, node) in [&j1, &j2, &j3].iter().enumerate() {
        let user = 900 + k as u64;
        let (c, pos) = login(node.player, user, "wnew");
        assert_eq!(pos, k as u64 + 1, "player {user} in wnew");
        players.push((user, pos, c));
    }
    for (user, pos, c) in players.iter_mut() {
        assert_eq!(position(c, *user), *pos, "player {user} kept its position");
    }
    (j1, j2, j3, players, all)
}

/// A world j2 owns while only j1 and j2 are members, and `then` owns once j2 has gone
/// and j3 is there (j3 never preferred while j2 lives, so it never campaigns for it).
fn split_world(then: &str) -> &'static str {
    use queue_server::cluster::ownership::preferred_owner;
    let name = (0..)
        .map(|i| format!("q{i}"))
        .find(|q| {
            preferred_owner(q, ["j1", "j2"]) == Some("j2")
                && preferred_owner(q, ["j1", "j2", "j3"]) == Some("j2")
                && preferred_owner(q, ["j1", "j3"]) == Some(then)
        })
        .unwrap();
    Box::leak(name.into_boxed_str())
}

/// Starts node `id` like [`node_in_process`], but returns the start error as text.
fn try_node(etcd: &Etcd, prefix: &str, id: &str, extra: &str) -> Result<TestServer, String> {
    let port = etcd_support::free_port;
    let (player, control, link) = (port(), port(), port());
    let text = node_toml(etcd, prefix, id, extra, (player, control, link));
    let mut config = queue_server::config::Config::from_toml_str(&text).expect("node config");
    config.server.listen = format!("127.0.0.1:{player}").parse().unwrap();
    config.control.listen = format!("127.0.0.1:{control}").parse().unwrap();
    config.server.cores = 1;
    let handle = ServerHandle::start(&config).map_err(|e| e.to_string())?;
    Ok(TestServer {
        player: handle.player_addr,
        control: handle.control_addr,
        handle: Some(handle),
    })
}

fn member_ids(node: &TestServer) -> Vec<String> {
    let cluster = handle(node).cluster.as_ref().unwrap();
    cluster.members().into_iter().map(|m| m.node_id).collect()
}

/// One key's value read straight from etcd.
fn etcd_value(etcd: &Etcd, key: &str) -> Option<String> {
    with_etcd(etcd, async |client| {
        let answer = client.get(key, None).await.unwrap();
        answer
            .kvs()
            .first()
            .map(|kv| kv.value_str().unwrap().to_string())
    })
}

/// Issue 11, config mismatch: nodes must share `tokens.alg/key/kid/issuer` and
/// `control.api_key`. A node whose settings differ from a live member's refuses to
/// start, naming the member and what differs (values for the public settings, only
/// the key for the secrets); one started while etcd could not be read is refused its
/// registration instead (shown in `/v1/stats` `cluster.config_mismatch`); etcd holds
/// no secret; a node with the same settings joins.
#[test]
fn a_node_whose_shared_settings_differ_is_refused_naming_what_differs() {
    let etcd = Etcd::start();
    let p = "/qs-mismatch";
    let base = "kid = \"k1\"\n[control]\napi_key = \"secret-one\"\n";
    let m1 = node_in_process(&etcd, p, "m1", base);
    wait_until("m1 registered", || member_ids(&m1) == ["m1"]);

    let e = try_node(&etcd, p, "m2", &base.replace("k1", "k2"))
        .err()
        .expect("refused");
    assert!(
        e.contains("live member m1") && e.contains("tokens.kid (\"k2\" here, \"k1\" on m1)"),
        "{e}"
    );
    assert!(!e.contains("control.api_key ("), "{e}");
    let e = try_node(&etcd, p, "m3", &base.replace("secret-one", "secret-two"))
        .err()
        .expect("refused");
    assert!(
        e.contains("control.api_key (differs from m1's)") && !e.contains("tokens.kid ("),
        "{e}"
    );
    assert!(!e.contains("secret"), "no secret in the error: {e}");
    let other_key = "issuer = \"other\"\n".to_string() + base;
    let e = try_node(&etcd, p, "m4", &other_key).err().expect("refused");
    assert!(
        e.contains("tokens.issuer (\"other\" here, \"queue-server\" on m1)"),
        "{e}"
    );

    // The binary says so on stderr and exits with a failure.
    let stderr = node::start_refused(&etcd.url, p, "m9", KEY, "kid = \"k9\"\n");
    assert!(
        stderr.contains("tokens.kid (\"k9\" here, \"k1\" on m1)"),
        "{stderr}"
    );

    let record = etcd_value(&etcd, &format!("{p}/nodes/m1")).unwrap();
    assert!(record.contains("\"tokens_kid\":\"k1\""), "{record}");
    assert!(
        !record.contains("secret-one") && !record.contains(KEY),
        "{record}"
    );

    // Started while etcd cannot answer: the start goes on, the registration is refused.
    etcd.pause();
    let m5 = try_node(&etcd, p, "m5", &base.replace("k1", "k5"));
    etcd.resume();
    let m5 = m5.expect("starts while etcd is away");
    wait_until("m5 sees the mismatch", || {
        let (_, stats) = common::http(m5.control, "GET", "/v1/stats", None, Some("secret-one"));
        let text = stats["cluster"]["config_mismatch"]
            .as_str()
            .unwrap_or("")
            .to_string();
        text.contains("tokens.kid (\"k5\" here, \"k1\" on m1)")
    });

    let m6 = node_in_process(&etcd, p, "m6", base);
    wait_until("m1 sees m6 join", || member_ids(&m1) == ["m1", "m6"]);
    assert_eq!(member_ids(&m6), ["m1", "m6"], "m5 never registered");
    assert!(!member_ids(&m1).contains(&"m5".to_string()));
}

/// Issue 11, verifies on a silent etcd: with etcd stopped, many concurrent
/// `POST /v1/tokens/verify` each answer 503 with `Retry-After` (never "valid"), and
/// meanwhile the control port keeps answering `/healthz` and a core round trip
/// (`/v1/stats`): the cluster-wide consumes wait for one of `CONSUMES_MAX` permits
/// instead of taking every blocking thread. When etcd runs again each token verifies
/// at most once (a stalled first try may have taken it: `already_used`, never twice).
#[test]
fn verifies_on_a_stopped_etcd_answer_503_and_the_control_port_keeps_answering() {
    let etcd = Etcd::start();
    let s1 = node_in_process(&etcd, "/qs-verify", "s1", "");
    wait_until("s1 owns the queue", || {
        handle(&s1).cluster.as_ref().unwrap().may_admit(QUEUE)
    });
    // Tokens signed with the cluster's key, as any node would sign them.
    let text = node_toml(&etcd, "/qs-verify", "s1", "", (1, 2, 3));
    let config = queue_server::config::Config::from_toml_str(&text).unwrap();
    let (signer, _) = queue_server::token::TokenSigner::from_config(&config.tokens).unwrap();
    let now = queue_server::cluster::used_tokens::unix_now_secs();
    let tokens: Vec<String> = (0..41u64)
        .map(|i| signer.sign(i + 1, QUEUE, &format!("jti-{i}"), now, now + 120))
        .collect();
    let verify_at = |token: &str| {
        let body = json!({ "token": token }).to_string();
        let answer = server_process::request(s1.control, "POST", "/v1/tokens/verify", None, &body);
        let value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        (answer.status, value, answer.head)
    };
    assert_eq!(verify_at(&tokens[0]).1["valid"], true);
    assert_eq!(verify_at(&tokens[0]).1["reason"], "already_used");

    etcd.pause();
    let answers: Vec<(u16, Value, String)> = std::thread::scope(|scope| {
        let calls: Vec<_> = tokens[1..]
            .iter()
            .map(|t| scope.spawn(move || verify_at(t)))
            .collect();
        // While the verifies wait on etcd, the port answers what needs no etcd, and
        // core round trips too: the waiting verifies hold at most `CONSUMES_MAX` of its
        // blocking threads, never all of them.
        while calls.iter().any(|c| !c.is_finished()) {
            let (status, body) = common::http(s1.control, "GET", "/healthz", None, None);
            assert_eq!(status, 200, "/healthz while verifies wait: {body}");
            let (status, body) = common::http(s1.control, "GET", "/v1/stats", None, None);
            assert_eq!(status, 200, "/v1/stats while verifies wait: {body}");
            std::thread::sleep(Duration::from_millis(20));
        }
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for (status, body, head) in &answers {
        assert_eq!(*status, 503, "a verify on a stopped etcd: {body}");
        assert!(head.contains("retry-after: 1"), "{head}");
    }
    etcd.resume();
    // The first verify after a stopped etcd comes back may wait for the client's new
    // connection: it may answer 503 too; retried, it answers.
    let settled = |token: &str| {
        let mut answer = Value::Null;
        wait_until("a verify answered", || {
            let (status, body, _) = verify_at(token);
            answer = body;
            status == 200
        });
        answer
    };
    for token in &tokens[1..] {
        let first = settled(token);
        let again = settled(token);
        assert_eq!(again["reason"], "already_used", "{again}");
        assert!(
            first["valid"] == true || first["reason"] == "already_used",
            "{first}"
        );
    }
}

/// A node cut off from etcd (its lease lapsed: `cluster.fenced`) answers token verifies
/// 503 at once, saying so, instead of queueing each for the used-token store's whole
/// wait (up to 9 s, holding its connection: a storm of more than `CONNECTIONS_MAX`
/// verifies from login servers during an outage filled the control port's connection
/// cap, and the ones over it were reset unanswered). Many at once are all answered so,
/// and `/healthz` keeps answering; when etcd is back a verify succeeds again.
#[test]
fn a_node_cut_off_from_etcd_fails_verifies_fast_and_keeps_its_control_port() {
    let etcd = Etcd::start();
    let s2 = node_in_process(&etcd, "/qs-storm", "s2", "");
    let cluster = handle(&s2).cluster.as_ref().unwrap();
    wait_until("s2 owns the queue", || cluster.may_admit(QUEUE));
    let text = node_toml(&etcd, "/qs-storm", "s2", "", (1, 2, 3));
    let config = queue_server::config::Config::from_toml_str(&text).unwrap();
    let (signer, _) = queue_server::token::TokenSigner::from_config(&config.tokens).unwrap();
    let now = queue_server::cluster::used_tokens::unix_now_secs();
    let tokens: Vec<String> = (0..64u64)
        .map(|i| signer.sign(i + 1, QUEUE, &format!("storm-{i}"), now, now + 120))
        .collect();
    etcd.pause();
    wait_until("s2 fenced", || cluster.fenced());
    let control = s2.control;
    let verify = |t: &str| {
        let body = json!({ "token": t }).to_string();
        let answer = server_process::request(control, "POST", "/v1/tokens/verify", None, &body);
        (
            answer.status,
            String::from_utf8_lossy(&answer.body).to_string(),
            answer.head,
        )
    };
    std::thread::scope(|scope| {
        let calls: Vec<_> = tokens
            .iter()
            .map(|t| scope.spawn(move || verify(t)))
            .collect();
        while calls.iter().any(|c| !c.is_finished()) {
            let health = common::get_within(control, "/healthz", common::WAIT);
            assert_eq!(
                health.map(|h| h.0),
                Some(200),
                "/healthz during a verify storm"
            );
        }
        for call in calls {
            let (status, body, head) = call.join().unwrap();
            assert_eq!(status, 503, "{body}");
            assert!(
                body.contains("cut off from etcd"),
                "answered without waiting: {body}"
            );
            assert!(head.contains("retry-after: 1"), "{head}");
        }
    });
    etcd.resume();
    wait_until("a verify succeeds once etcd is back", || {
        let (status, body, _) = verify(&tokens[0]);
        status == 200 && body.contains("\"valid\":true")
    });
}

/// kill -9 of the owner and an immediate restart of the same node (same config, so
/// the same node id and ports), as a supervisor does: the players waiting on the other
/// node must keep their connection and order (only `position` frames) and be admitted
/// in that order, whoever owns the queue next. Failed before the link's incarnations
/// (player 2 `kicked` `shutdown`): the other node's link re-dialled the owner's address,
/// found the restarted process there and took it for the same owner after a cut, so it
/// kicked its players to resume from a grace the new process never had. Now the owner
/// answers the hello with its incarnation and the link re-submits its places to each
/// queue's owner after the restart (`src/cluster/link/edge/relay.rs`).
#[test]
fn kill_9_and_an_immediate_restart_of_the_owner_keeps_survivors_places() {
    let etcd = Etcd::start();
    let mut nodes: Vec<NodeProcess> = ["r1", "r2"]
        .iter()
        .map(|id| NodeProcess::start(&etcd.url, "/qs-restart", id, KEY, ""))
        .collect();
    let dead = agreed_owner(&nodes, &[0, 1], QUEUE, None);
    let alive = 1 - dead;
    wait_routed(&nodes[alive]);
    let node_of = |i: u64| ((i - 1) % 2) as usize;
    let mut players: Vec<(u64, Client)> = Vec::new();
    for i in 1..=8u64 {
        let (c, pos) = login(nodes[node_of(i)].player, i, QUEUE);
        assert_eq!(pos, i, "player {i}");
        players.push((i, c));
    }
    nodes[dead].kill9();
    nodes[dead].restart();
    players.retain(|(i, _)| node_of(*i) != dead);
    agreed_owner(&nodes, &[0, 1], QUEUE, None);
    for (rank, (i, c)) in players.iter_mut().enumerate() {
        let rank = rank as u64 + 1;
        wait_until("a survivor's exact rank among survivors", || {
            position(c, *i) == rank
        });
    }
    let expected: Vec<u64> = players.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        admit(nodes[alive].control, QUEUE, 100),
        expected,
        "old relative order"
    );
}
