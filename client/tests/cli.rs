//! The command line against a real server: `join --json` until an HTTP admit, the exit
//! codes (refused, kicked, gave up, interrupted), `swarm`, every `queuectl` command,
//! and the live bar in a pseudo-terminal (tmux), whose last frame is checked.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Server, BASE, WAIT};
use serde_json::Value;

const CLIENT: &str = env!("CARGO_BIN_EXE_queue-client");
const QUEUECTL: &str = env!("CARGO_BIN_EXE_queuectl");

/// A running CLI process whose stdout lines arrive on a channel.
struct Proc {
    /// The process (killed on drop).
    child: Child,
    /// Its stdout, line by line.
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn<S: AsRef<std::ffi::OsStr>>(bin: &str, args: &[S]) -> Proc {
        let mut child = Command::new(bin)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the CLI");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc { child, lines }
    }

    /// The next JSON line within [`WAIT`].
    fn next_json(&self) -> Value {
        let line = self
            .lines
            .recv_timeout(WAIT)
            .expect("a line from the CLI within WAIT");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Skips lines until an event named `event`.
    fn wait_event(&self, event: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no {event} event");
            let v = self.next_json();
            if v["event"] == event {
                return v;
            }
        }
    }

    /// The exit code within [`WAIT`].
    fn exit_code(&mut self) -> i32 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().expect("exited, not signalled");
            }
            assert!(Instant::now() < deadline, "the CLI did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fast join flags.
fn join_args(addr: &str, user: u64) -> Vec<String> {
    let user = user.to_string();
    [
        "join",
        "--addr",
        addr,
        "--user",
        &user,
        "--json",
        "--heartbeat-ms",
        "200",
        "--answer-timeout-ms",
        "2000",
    ]
    .map(str::to_string)
    .to_vec()
}

/// Runs a command to its end; (exit code, stdout, stderr).
fn run<S: AsRef<std::ffi::OsStr>>(
    bin: &str,
    args: &[S],
    env_key: Option<&str>,
) -> (i32, String, String) {
    let mut cmd = Command::new(bin);
    cmd.args(args).env_remove("QUEUE_API_KEY");
    if let Some(k) = env_key {
        cmd.env("QUEUE_API_KEY", k);
    }
    let out = cmd.output().expect("run the CLI");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn join_json_ends_with_the_token_after_an_http_admit() {
    let server = Server::start(BASE);
    let addr = server.addr();
    let mut join = Proc::spawn(CLIENT, &join_args(&addr, 42));
    let first = join.wait_event("position");
    assert_eq!(first["position"], 1, "{first}");
    assert_eq!(first["queue_len"], 1, "{first}");

    let admitted = server.admit(1);
    let last = join.wait_event("admitted");
    assert_eq!(last["token"], admitted[0]["token"], "{last}");
    assert_eq!(join.exit_code(), 0);
    // The printed token verifies at the control port.
    let token = last["token"].as_str().unwrap();
    let (status, body) = server.http(
        "POST",
        "/v1/tokens/verify",
        Some(&format!("{{\"token\":\"{token}\"}}")),
    );
    assert_eq!(
        (status, body["valid"].clone()),
        (200, Value::Bool(true)),
        "{body}"
    );
}

#[test]
fn join_exit_codes_say_refused_kicked_gave_up_and_interrupted() {
    let server = Server::start(BASE);
    let addr = server.addr();

    // Refused: no such queue.
    let mut args = join_args(&addr, 1);
    args.extend(["--queue".to_string(), "nope".to_string()]);
    let (code, out, _) = run(CLIENT, &args, None);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("UNKNOWN_QUEUE"), "{out}");

    // Gave up: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let (code, out, _) = run(CLIENT, &join_args(&closed, 1), None);
    assert_eq!(code, 5, "{out}");

    // Kicked: the same user logs in elsewhere.
    let mut first = Proc::spawn(CLIENT, &join_args(&addr, 9));
    first.wait_event("position");
    let _second = Proc::spawn(CLIENT, &join_args(&addr, 9));
    let kicked = first.wait_event("kicked");
    assert_eq!(kicked["reason"], "duplicate_login");
    assert_eq!(first.exit_code(), 4);

    // Interrupted: SIGINT sends `leave`, the place is given up.
    let mut third = Proc::spawn(CLIENT, &join_args(&addr, 10));
    third.wait_event("position");
    let left_before = stats(&server)["left_total"].as_u64().unwrap();
    let pid = third.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    third.wait_event("left");
    assert_eq!(third.exit_code(), 130);
    let deadline = Instant::now() + WAIT;
    while stats(&server)["left_total"].as_u64().unwrap() == left_before {
        assert!(
            Instant::now() < deadline,
            "the leave did not reach the server"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stats(server: &Server) -> Value {
    let (status, body) = server.http("GET", "/v1/stats", None);
    assert_eq!(status, 200, "{body}");
    body["queues"]["default"].clone()
}

#[test]
fn swarm_joins_everyone_and_reports_them_admitted() {
    let server = Server::start(BASE);
    let (status, body) = server.http(
        "PUT",
        "/v1/queues/default/rate",
        Some("{\"per_second\": 1000}"),
    );
    assert_eq!(status, 200, "{body}");
    let addr = server.addr();
    let mut swarm = Proc::spawn(
        CLIENT,
        &[
            "swarm",
            "--users",
            "20",
            "--addr",
            &addr,
            "--user-base",
            "500",
            "--json",
        ],
    );
    let deadline = Instant::now() + WAIT;
    let last = loop {
        assert!(Instant::now() < deadline, "swarm did not finish");
        let v = swarm.next_json();
        if v["done"] == true {
            break v;
        }
    };
    assert_eq!(last["admitted"], 20, "{last}");
    assert_eq!(last["waiting"], 0, "{last}");
    assert_eq!(swarm.exit_code(), 0);
}

/// A queuectl run with the test's URL and key: (exit code, stdout, stderr).
type Ctl<'a> = &'a dyn Fn(&[&str]) -> (i32, String, String);

/// One JSON line of output.
fn one_json(out: &str) -> Value {
    serde_json::from_str(out.trim()).expect("one JSON line")
}

#[test]
fn queuectl_round_trips_every_command() {
    let server = Server::start(&format!("{BASE}[control]\napi_key = \"sekret\"\n"));
    let url = format!("http://{}", server.control);
    let ctl = |args: &[&str]| {
        let mut all = vec!["--url", url.as_str(), "--api-key", "sekret"];
        all.extend_from_slice(args);
        run(QUEUECTL, &all, None)
    };

    // Players waiting, to admit.
    let mut raw = Vec::new();
    for user in 1..=3u64 {
        raw.push(Proc::spawn(CLIENT, &join_args(&server.addr(), user)));
    }
    for p in &raw {
        p.wait_event("position");
    }
    ctl_stats_admit_verify(&ctl);
    ctl_operations_and_keys(&ctl);
    ctl_errors(&ctl, &url);
}

/// `stats`, `admit` and `verify`, human and `--json`, with three players waiting.
fn ctl_stats_admit_verify(ctl: Ctl<'_>) {
    let (code, out, err) = ctl(&["stats"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("QUEUE"), "{out}");
    assert!(
        out.contains("default") && out.contains("connections: 3"),
        "{out}"
    );
    let (code, out, _) = ctl(&["stats", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(one_json(&out)["queues"]["default"]["waiting"], 3, "{out}");

    let (code, out, _) = ctl(&["admit", "1"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("admitted 1 from queue default"), "{out}");
    let (code, out, _) = ctl(&["admit", "1", "--queue", "default", "--json"]);
    assert_eq!(code, 0);
    let admitted = one_json(&out)["admitted"][0].clone();
    let token = admitted["token"].as_str().unwrap().to_string();

    let (code, out, _) = ctl(&["verify", &token]);
    let expect = format!("valid: user {} queue default\n", admitted["user_id"]);
    assert_eq!((code, out), (0, expect));
    let (code, out, _) = ctl(&["verify", &token, "--json"]);
    assert_eq!(code, 3, "a used token is not valid: {out}");
    assert_eq!(one_json(&out)["reason"], "already_used");
}

/// `rate`, `capacity`, `pause`, `resume` (seen in `stats`), and `keys`.
fn ctl_operations_and_keys(ctl: Ctl<'_>) {
    let (code, out, _) = ctl(&["rate", "2.5"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "queue default: automatic admission at 2.5 players/s\n")
    );
    let (code, out, _) = ctl(&["capacity", "10", "100", "--json"]);
    assert_eq!((code, one_json(&out)["ok"].clone()), (0, Value::Bool(true)));
    let (code, _, _) = ctl(&["pause"]);
    assert_eq!(code, 0);
    let (_, out, _) = ctl(&["stats", "--json"]);
    assert_eq!(one_json(&out)["queues"]["default"]["paused"], true, "{out}");
    let (code, out, _) = ctl(&["resume"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "queue default: automatic admission resumed\n")
    );
    let (_, out, _) = ctl(&["stats", "--json"]);
    assert_eq!(
        one_json(&out)["queues"]["default"]["paused"],
        false,
        "{out}"
    );

    let (code, out, _) = ctl(&["keys"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("KID") && out.contains("EdDSA") && out.contains("Ed25519"),
        "{out}"
    );
    let (code, out, _) = ctl(&["keys", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(one_json(&out)["keys"][0]["alg"], "EdDSA");
}

/// The server's own error text with exit 1; no key; the key from the environment;
/// `queue-client ctl`; an unreachable port (exit 5).
fn ctl_errors(ctl: Ctl<'_>, url: &str) {
    // Errors: the server's own message, a non-zero exit.
    let (code, _, err) = ctl(&["admit", "1", "--queue", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("HTTP 404: unknown queue"), "{err}");
    let (code, _, err) = ctl(&["rate", "-1"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("HTTP 400") && err.contains("per_second"),
        "{err}"
    );
    let (code, _, err) = run(QUEUECTL, &["--url", url, "stats"], None);
    assert_eq!(code, 1);
    assert!(err.contains("HTTP 401"), "{err}");
    // The key from the environment; and `queue-client ctl` is the same tool.
    let (code, out, err) = run(QUEUECTL, &["--url", url, "stats"], Some("sekret"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("default"));
    let (code, out, _) = run(
        CLIENT,
        &["ctl", "--url", url, "--json", "stats"],
        Some("sekret"),
    );
    assert_eq!(code, 0);
    assert_eq!(one_json(&out)["cores"], 1);
    // Unreachable.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, _, err) = run(
        QUEUECTL,
        &["--url", &format!("http://{closed}"), "stats"],
        None,
    );
    assert_eq!(code, 5, "{err}");
}

/// Starts `cmd` in a detached tmux session of its own server socket; returns the socket name.
fn tmux_start(name: &str, cmd: &str) -> String {
    let socket = format!("qc-{}-{name}", std::process::id());
    let ok = Command::new("tmux")
        .args([
            "-L",
            &socket,
            "new-session",
            "-d",
            "-x",
            "400",
            "-y",
            "12",
            "-s",
            "t",
        ])
        .arg(format!("{cmd}; sleep 600"))
        .status()
        .unwrap_or_else(|e| panic!("tmux is needed for the pseudo-terminal test: {e}"));
    assert!(ok.success(), "tmux new-session failed");
    socket
}

fn tmux_capture(socket: &str) -> String {
    let out = Command::new("tmux")
        .args(["-L", socket, "capture-pane", "-p", "-t", "t"])
        .output()
        .expect("tmux capture-pane");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Kills the tmux server of a test (named by its socket), whatever happens.
struct Tmux(String);

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .status();
    }
}

fn wait_screen(socket: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let screen = tmux_capture(socket);
        if pred(&screen) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "screen never showed {what}:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_progress_bar_moves_in_a_pseudo_terminal() {
    let server = Server::start(BASE);
    let addr = server.addr();
    // Three players ahead of ours.
    let ahead: Vec<Proc> = (1..=3u64)
        .map(|u| Proc::spawn(CLIENT, &join_args(&addr, u)))
        .collect();
    for p in &ahead {
        p.wait_event("position");
    }
    let cmd = format!("{CLIENT} join --addr {addr} --user 4 --heartbeat-ms 200");
    let tmux = Tmux(tmux_start("bar", &cmd));
    wait_screen(&tmux.0, "position 4 of 4", |s| {
        s.contains("position 4 of 4")
    });
    // One admitted: the bar moves, and with a measured rate the ETA is known.
    server.admit(1);
    let moved = wait_screen(&tmux.0, "position 3 with an ETA", |s| {
        s.contains("position 3 of 3") && !s.contains("ETA --")
    });
    assert!(moved.contains("ETA "), "{moved}");
    server.admit(1);
    server.admit(1);
    wait_screen(&tmux.0, "position 1", |s| s.contains("position 1 of 1"));
    server.admit(1);
    let last = wait_screen(&tmux.0, "the token", |s| s.contains("token: "));
    check_final_bar(&last);
    write_bar_capture(&addr, &moved, &last);
}

/// The last frame of the bar: full, with the last position and ETA, and admitted.
fn check_final_bar(last: &str) {
    let bar_line = last
        .lines()
        .find(|l| l.contains("admitted"))
        .unwrap_or_else(|| panic!("no final bar line:\n{last}"));
    assert!(bar_line.contains("position 1 of 1"), "{bar_line}");
    let eta = bar_line
        .split("ETA ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("");
    assert!(
        eta.ends_with('s')
            && eta[..eta.len() - 1]
                .chars()
                .all(|c| c.is_ascii_digit() || c == 'm'),
        "ETA {eta:?} in {bar_line}"
    );
    assert!(bar_line.contains("waited "), "{bar_line}");
    assert!(
        bar_line.contains("[=============================="),
        "{bar_line}"
    );
}

/// The captures (while waiting, and the last frame), token shortened, for the README.
fn write_bar_capture(addr: &str, moved: &str, last: &str) {
    let tidy = |screen: &str| -> String {
        let lines: Vec<String> = screen
            .lines()
            .map(|l| match l.find("token: ") {
                Some(i) if l.len() > i + 40 => {
                    format!("{}...{}", &l[..i + 40], &l[l.len() - 6..])
                }
                _ => l.trim_end().to_string(),
            })
            .collect();
        lines.join("\n").trim().to_string()
    };
    let text = format!(
        "$ queue-client join --addr {addr} --user 4\n{}\n\n(after the last admit)\n{}\n",
        tidy(moved),
        tidy(last)
    )
    .replace(addr, "127.0.0.1:7000");
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("README-bar.txt"),
        &text,
    )
    .unwrap();
    if std::env::var_os("QUEUE_CLIENT_UPDATE_BAR").is_some() {
        std::fs::write(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README-bar.txt"),
            &text,
        )
        .unwrap();
    }
}
