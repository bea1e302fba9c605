//! Durability end to end: a server with `[durability]` on a temp dir, stopped (or
//! "crashed": its directory copied while it runs, which is what a power cut leaves with
//! `fsync = "always"`) and started again on it. Players log in again and get their
//! places back; tokens and used `jti`s survive; a failed fsync degrades the server.

mod common;

use std::path::{Path, PathBuf};

use common::{start, TestServer};
use queue_server::config::Config;
use queue_server::queue::durability;
use queue_server::queue::state::{Dump, Limits};
use queue_server::server::ServerHandle;
use serde_json::{json, Value};

/// A fixed Ed25519 seed, so tokens survive restarts.
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qs-durability-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn toml(dir: &Path) -> String {
    format!(
        "[durability]\ndir = \"{}\"\nfsync = \"always\"\n[tokens]\nkey = \"{KEY}\"\n[server]\nreconnect_grace_secs = 600\n",
        dir.display()
    )
}

/// The dump of what `dir` holds (read-only, like a tool would).
fn dump(dir: &Path) -> Dump {
    let c = Config::from_toml_str(&toml(dir)).unwrap();
    let limits = Limits::from_config(&c);
    durability::recover(dir, limits)
        .expect("loads")
        .expect("something on disk")
        .state
        .dump()
}

/// Copies the durability directory of a running server: what a crash would leave.
fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn admit(s: &TestServer, count: u64) -> Vec<Value> {
    let (status, body) = s.http(
        "POST",
        "/v1/queues/default/admit",
        Some(json!({ "count": count })),
    );
    assert_eq!(status, 200, "{body}");
    body["admitted"].as_array().unwrap().clone()
}

fn verify(s: &TestServer, token: &str) -> Value {
    let (status, body) = s.http("POST", "/v1/tokens/verify", Some(json!({ "token": token })));
    assert_eq!(status, 200, "{body}");
    body
}

/// A login that must resume a waiting place at `position`.
fn resumes_at(s: &TestServer, user: u64, position: u64) -> common::Client {
    let (c, answer) = s.player(user);
    let data = &answer["data"];
    assert_eq!(data["state"], "waiting", "user {user}: {answer}");
    assert_eq!(data["resumed"], true, "user {user}: {answer}");
    assert_eq!(data["position"], position, "user {user}: {answer}");
    c
}

/// Eight players, user 3 leaves, users 1 and 2 are admitted, 1's token is verified,
/// user 5 disconnects. Returns (token of 1, token of 2) and the open clients.
fn populate(s: &TestServer) -> (String, String, Vec<common::Client>) {
    let mut players = Vec::new();
    for user in 1..=8 {
        let (c, answer) = s.player(user);
        assert_eq!(answer["data"]["position"], user, "{answer}");
        players.push(c);
    }
    let answer = players[2].request("leave", 2, json!({}));
    assert_eq!(answer["code"], 0, "{answer}");
    let admitted = admit(s, 2);
    assert_eq!(admitted[0]["user_id"], 1);
    assert_eq!(admitted[1]["user_id"], 2);
    let t1 = admitted[0]["token"].as_str().unwrap().to_string();
    let t2 = admitted[1]["token"].as_str().unwrap().to_string();
    assert_eq!(verify(s, &t1)["valid"], true);
    let dropped = players.remove(4);
    drop(dropped);
    (t1, t2, players)
}

/// After a restart: waiting players 4..=8 resume at 1..=5, user 2 finds its token,
/// token 1 stays used, token 2 still verifies, users 1 and 3 join afresh.
fn check_restarted(s: &TestServer, t1: &str, t2: &str) {
    let _held: Vec<_> = (4..=8).map(|u| resumes_at(s, u, u - 3)).collect();
    let mut c = s.client();
    let answer = c.login(2);
    assert_eq!(answer["data"]["state"], "admitted", "{answer}");
    assert_eq!(answer["data"]["resumed"], true, "{answer}");
    assert_eq!(c.next_cmd("admitted")["data"]["token"], t2);
    assert_eq!(verify(s, t1)["valid"], false, "a used jti stays used");
    assert_eq!(verify(s, t1)["reason"], "already_used");
    assert_eq!(verify(s, t2)["valid"], true, "an issued token stays valid");
    for (user, position) in [(3, 6), (1, 7)] {
        let (_c, answer) = s.player(user);
        assert_eq!(answer["data"]["resumed"], false, "{answer}");
        assert_eq!(answer["data"]["position"], position, "{answer}");
    }
}

#[test]
fn restart_keeps_places_positions_tokens_and_used_jtis() {
    let d = dir("restart");
    let s = start(&toml(&d));
    let (t1, t2, players) = populate(&s);
    drop(players);
    drop(s);
    let before = dump(&d);
    assert_eq!(before.queues[0].waiting.len(), 5);
    assert_eq!(before.grants.len(), 1);
    assert_eq!(before.used.len(), 1);

    // A start and a stop with nothing in between change nothing observable.
    drop(start(&toml(&d)));
    assert_eq!(
        dump(&d),
        before,
        "queue dumped before the stop = queue after restart"
    );

    let s = start(&toml(&d));
    check_restarted(&s, &t1, &t2);
    drop(s);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn crash_keeps_everything_acknowledged() {
    let d = dir("crash");
    let copy = dir("crash-copy");
    let s = start(&toml(&d));
    let (t1, t2, players) = populate(&s);
    // Every answer above was sent after its fsync: a copy now is what a crash leaves.
    copy_dir(&d, &copy);
    let live = dump(&d);
    drop(players);
    drop(s);
    assert_eq!(dump(&copy), live);
    let s = start(&toml(&copy));
    check_restarted(&s, &t1, &t2);
    drop(s);
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&copy);
}

#[test]
fn corrupt_log_refuses_to_start_naming_file_and_offset() {
    let d = dir("corrupt");
    let copy = dir("corrupt-copy");
    let s = start(&toml(&d));
    let players: Vec<_> = (1..=4).map(|u| s.player(u).0).collect();
    copy_dir(&d, &copy);
    drop(players);
    drop(s);
    let log = std::fs::read_dir(&copy)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .expect("a log file");
    let mut bytes = std::fs::read(&log).unwrap();
    // The header is 20 bytes; damage the first record's payload (more follow it).
    bytes[20 + 8 + 3] ^= 0x10;
    std::fs::write(&log, &bytes).unwrap();
    let mut config = Config::from_toml_str(&toml(&copy)).unwrap();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.control.listen = "127.0.0.1:0".parse().unwrap();
    let err = match ServerHandle::start(&config) {
        Ok(_) => panic!("started on a corrupt log"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&log.display().to_string()), "{err}");
    assert!(err.contains("byte offset 20"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&copy);
}

#[test]
fn failed_fsync_refuses_joins_and_admissions_until_restart() {
    let d = dir("degraded");
    let s = start(&toml(&d));
    let (_c1, answer) = s.player(1);
    assert_eq!(answer["data"]["position"], 1);
    let status = s
        .handle
        .as_ref()
        .unwrap()
        .durability
        .clone()
        .expect("durability status");
    status
        .fail_next_sync
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut c2 = s.client();
    let answer = c2.login(2);
    assert_eq!(answer["code"], 9, "not acknowledged: {answer}");
    assert!(status.degraded.load(std::sync::atomic::Ordering::SeqCst));
    let (code, body) = s.http(
        "POST",
        "/v1/queues/default/admit",
        Some(json!({ "count": 1 })),
    );
    assert_eq!(code, 503, "{body}");
    let (code, body) = common::http_text(s.control, "GET", "/healthz", None, None);
    assert_eq!((code, body.as_str()), (503, "durability degraded"));
    let (_, metrics) = common::http_text(s.control, "GET", "/metrics", None, None);
    assert!(metrics.contains("queue_durability_degraded 1"), "{metrics}");
    let mut c3 = s.client();
    assert_eq!(c3.login(3)["code"], 9);
    drop(s);

    // The operator restarts: what was acknowledged is there.
    let s = start(&toml(&d));
    let _c = resumes_at(&s, 1, 1);
    let (code, _) = s.http("GET", "/healthz", None);
    assert_eq!(code, 200);
    drop(s);
    let _ = std::fs::remove_dir_all(&d);
}
