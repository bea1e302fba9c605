//! The binary: starts on a config file, and on SIGTERM / SIGINT kicks every session
//! `shutdown` and exits 0.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Client;

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the binary with `args`; returns once it logged "listening". Its log keeps
/// being drained so it never blocks on a full pipe.
fn spawn_server(args: &[&std::ffi::OsStr]) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_queue-server"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn queue-server");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let deadline = Instant::now() + common::WAIT;
    while !line.contains("listening") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "server exited early");
        assert!(Instant::now() < deadline);
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    child
}

/// Sends `signal` to the server (its sessions get `kicked` `shutdown`).
fn signal(child: &Child, signal: i32) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
}

/// Waits for the server to exit and asserts it exited 0.
fn expect_exit_zero(mut child: Child) {
    let deadline = Instant::now() + common::WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            return;
        }
        assert!(Instant::now() < deadline, "server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_and_signal(sig: i32) {
    let player = free_port();
    let control = free_port();
    let dir = std::env::temp_dir().join(format!("qs-signal-{}-{sig}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:{player}\"\nshutdown_retry_after_secs = 7\n[control]\nlisten = \"127.0.0.1:{control}\"\n"),
    )
    .unwrap();
    let child = spawn_server(&[
        "--cores".as_ref(),
        "2".as_ref(),
        "--config".as_ref(),
        config.as_ref(),
    ]);
    let addr = format!("127.0.0.1:{player}").parse().unwrap();
    let mut c = Client::connect(addr);
    assert_eq!(c.login(1)["code"], 0);

    signal(&child, sig);
    let kicked = c.next_cmd("kicked");
    assert_eq!(kicked["data"]["reason"], "shutdown");
    assert_eq!(kicked["data"]["retry_after_secs"], 7);
    c.expect_closed();
    expect_exit_zero(child);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_drains_and_exits_zero() {
    run_and_signal(libc::SIGTERM);
}

#[test]
fn sigint_drains_and_exits_zero() {
    run_and_signal(libc::SIGINT);
}

#[test]
fn bad_config_fails_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("qs-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("bad.toml");
    std::fs::write(&config, "[server]\nidle_timeout_secs = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_queue-server"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.idle_timeout_secs"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM with durability on: the stop writes a final snapshot, and the next start
/// gives every waiting player the same place back.
#[test]
fn sigterm_with_durability_keeps_every_place_across_the_restart() {
    let dir = std::env::temp_dir().join(format!("qs-signal-durable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let player = free_port();
    let control = free_port();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{player}\"\n[control]\nlisten = \"127.0.0.1:{control}\"\n\
             [tokens]\nkey = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\"\n\
             [durability]\ndir = \"{}\"\nfsync = \"always\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let start = || spawn_server(&["--config".as_ref(), config.as_ref()]);
    let stop = |child: Child| {
        signal(&child, libc::SIGTERM);
        expect_exit_zero(child);
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{player}").parse().unwrap();
    let control_addr: std::net::SocketAddr = format!("127.0.0.1:{control}").parse().unwrap();

    let child = start();
    let mut clients = Vec::new();
    for user in 1..=5u64 {
        let mut c = Client::connect(addr);
        assert_eq!(c.login(user)["data"]["position"], user);
        clients.push(c);
    }
    // Player 3 leaves for good before the stop.
    assert_eq!(
        clients[2].request("leave", 2, serde_json::json!({}))["code"],
        0
    );
    let (_, before) = common::http(control_addr, "GET", "/v1/stats", None, None);
    stop(child);
    for c in &mut clients {
        c.expect_closed();
    }

    let child = start();
    let (_, after) = common::http(control_addr, "GET", "/v1/stats", None, None);
    assert_eq!(
        before["queues"], after["queues"],
        "stats before and after the restart"
    );
    for (user, position) in [(1u64, 1u64), (2, 2), (4, 3), (5, 4)] {
        let mut c = Client::connect(addr);
        let v = c.login(user);
        assert_eq!(v["data"]["resumed"], true, "{v}");
        assert_eq!(v["data"]["position"], position, "{v}");
    }
    stop(child);
    let _ = std::fs::remove_dir_all(&dir);
}
