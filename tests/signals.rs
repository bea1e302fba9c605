//! The binary: starts on a config file, and on SIGTERM / SIGINT kicks every session
//! `shutdown` and exits 0; a second SIGTERM / SIGINT during that stop exits at once with
//! 128 + the signal number.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
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
    spawn_server_logged(args).0
}

/// Like [`spawn_server`], also handing back every later log line.
fn spawn_server_logged(args: &[&std::ffi::OsStr]) -> (Child, mpsc::Receiver<String>) {
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
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines() {
            let Ok(line) = line else { return };
            // The receiver may be gone: keep draining anyway.
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Kills the child on drop unless it exited: a failing test leaves no server behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
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

/// A stop that cannot finish is cut short by a second signal. What can hold a stop: not
/// player sessions (a closing session that does not read is cut after 2 s whatever
/// `drain_timeout_secs` says) but the final snapshot, on a disk that stalls. The test
/// stalls it for good: once the server runs, `snapshot.bin.tmp` is made a FIFO that
/// nobody reads, so the final snapshot's open(2) blocks forever. The first signal starts
/// the drain (`/healthz` turns 503), the second must end the process at once with
/// 128 + its number; before, it was ignored and only SIGKILL ended the process.
fn second_signal_exits_at_once(second: i32) {
    let dir = std::env::temp_dir().join(format!("qs-signal-twice-{}-{second}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let player = free_port();
    let control = free_port();
    let data = dir.join("data");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{player}\"\ndrain_timeout_secs = 60\n\
             [control]\nlisten = \"127.0.0.1:{control}\"\n\
             [tokens]\nkey = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\"\n\
             [durability]\ndir = \"{}\"\n",
            data.display()
        ),
    )
    .unwrap();
    let (child, log) = spawn_server_logged(&["--config".as_ref(), config.as_ref()]);
    let mut child = KillOnDrop(child);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{player}").parse().unwrap();
    let control_addr: std::net::SocketAddr = format!("127.0.0.1:{control}").parse().unwrap();
    let mut c = Client::connect(addr);
    assert_eq!(c.login(1)["code"], 0);

    // The start-up snapshot is written and its temp file gone: stall the final one.
    let fifo = std::ffi::CString::new(
        data.join("snapshot.bin.tmp")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: mkfifo(3) with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");

    signal(&child.0, libc::SIGTERM);
    assert_eq!(c.next_cmd("kicked")["data"]["reason"], "shutdown");
    let deadline = Instant::now() + common::WAIT;
    loop {
        let (status, _) = common::http_text(control_addr, "GET", "/healthz", None, None);
        if status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "drain never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the stop finished by itself"
    );

    signal(&child.0, second);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "a second signal did not end the stop (drain_timeout_secs = 60, snapshot stalled)"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(128 + second), "exit status {status}");
    let deadline = Instant::now() + common::WAIT;
    loop {
        let line = log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a log line saying why the server exited");
        if line.contains("second signal") {
            break;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn second_sigterm_during_a_stuck_stop_exits_at_once() {
    second_signal_exits_at_once(libc::SIGTERM);
}

#[test]
fn sigint_during_a_stuck_stop_exits_at_once() {
    second_signal_exits_at_once(libc::SIGINT);
}
