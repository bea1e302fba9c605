//! The reference clients in `clients/` (Python, JavaScript on Node) against a real
//! server in this process: their examples wait, move up, get admitted over HTTP and exit
//! 0 with a token that verifies; their own check scripts (`test_client.py`,
//! `test_client.js`: resume after a dropped connection and after an idle kick,
//! heartbeats, duplicate login, leave, SHUTTING_DOWN, garbage from fake servers) pass
//! against it; and a durable server that drains, stops and starts again on the same
//! port is waited out and the place resumed.
//!
//! `python3` and `node` must be on PATH (`.ci/run` installs Node where missing): a test
//! whose interpreter is missing fails saying so, it is never skipped. Every wait is a
//! poll with a deadline.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{start, TestServer, WAIT};
use queue_server::config::Config;
use queue_server::server::ServerHandle;
use serde_json::{json, Value};

/// Push interval short enough that positions move at once in tests.
const FAST: &str = "[server]\npush_interval_ms = 20\n";

/// How long a whole check script may run (it takes seconds; CI boxes are shared).
const SCRIPT_WAIT: Duration = Duration::from_secs(180);

/// A reference client language: its interpreter and its directory under `clients/`.
#[derive(Clone, Copy)]
enum Lang {
    /// `python3 clients/python/*.py`.
    Python,
    /// `node clients/js/*.js`.
    Node,
}

impl Lang {
    /// The interpreter's name on PATH.
    fn interpreter(self) -> &'static str {
        match self {
            Lang::Python => "python3",
            Lang::Node => "node",
        }
    }

    /// `clients/<dir>/<name>.<ext>` in this repository.
    fn script(self, name: &str) -> PathBuf {
        let (dir, ext) = match self {
            Lang::Python => ("python", "py"),
            Lang::Node => ("js", "js"),
        };
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("clients")
            .join(dir)
            .join(format!("{name}.{ext}"))
    }

    /// The interpreter's path; fails (never skips) when it is not installed.
    fn find(self) -> PathBuf {
        let name = self.interpreter();
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "`{name}` is not on PATH: the reference client tests run the {name} client \
                     against the server and are never skipped; install it (Debian/Ubuntu: apt-get \
                     install {}; .ci/run does this)",
                    match self {
                        Lang::Python => "python3",
                        Lang::Node => "nodejs",
                    }
                )
            })
    }
}

/// A running client script; its output lines are collected as they come; killed on drop.
struct Script {
    /// The process.
    child: Child,
    /// What it printed to stdout, line by line.
    stdout: Arc<Mutex<Vec<String>>>,
    /// What it printed to stderr, line by line.
    stderr: Arc<Mutex<Vec<String>>>,
    /// For failure messages.
    name: String,
}

/// Collects the lines of `from` on a thread.
fn collect(from: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

impl Script {
    /// Runs `clients/<lang>/<name>` with `args`.
    fn spawn(lang: Lang, name: &str, args: &[String]) -> Script {
        let mut child = Command::new(lang.find())
            .arg(lang.script(name))
            .args(args)
            // No __pycache__ left in the source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", lang.interpreter()));
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Script {
            child,
            stdout,
            stderr,
            name: format!("{} {name} {}", lang.interpreter(), args.join(" ")),
        }
    }

    /// The example, waiting in `queue` as `user` at `addr`.
    fn example(lang: Lang, addr: SocketAddr, user: u64) -> Script {
        let args = [
            "--addr",
            &addr.to_string(),
            "--user",
            &user.to_string(),
            "--queue",
            "default",
            "--heartbeat",
            "1",
            "--timeout",
            "120",
        ];
        Script::spawn(lang, "example", &args.map(String::from))
    }

    /// Everything printed so far, for failure messages.
    fn output(&self) -> String {
        format!(
            "{}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.name,
            self.stdout.lock().unwrap().join("\n"),
            self.stderr.lock().unwrap().join("\n")
        )
    }

    /// Waits for a stderr line containing `text`; returns it.
    fn wait_line(&self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(l) = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(text))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {text:?} from {}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to end (within `within`); its status and stdout.
    fn wait_exit(&mut self, within: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // The reader threads finish at EOF, shortly after the exit.
                let eof = Instant::now() + WAIT;
                while Arc::strong_count(&self.stdout) > 1 || Arc::strong_count(&self.stderr) > 1 {
                    if Instant::now() > eof {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                return (status, self.stdout.lock().unwrap().join("\n"));
            }
            assert!(
                Instant::now() < deadline,
                "still running after {within:?}: {}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for a successful exit with a token on stdout; returns the token.
    fn token(&mut self) -> String {
        let (status, stdout) = self.wait_exit(WAIT);
        assert!(status.success(), "exit {status}: {}", self.output());
        let token = stdout.trim().to_string();
        assert_eq!(token.split('.').count(), 3, "not a JWT: {}", self.output());
        token
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn admit(s: &TestServer, n: u64) -> Value {
    let (status, body) = s.http(
        "POST",
        "/v1/queues/default/admit",
        Some(json!({"count": n})),
    );
    assert_eq!(status, 200, "{body}");
    body
}

/// The token verifies (once) for `user` in the default queue.
fn assert_verifies(s: &TestServer, token: &str, user: u64) {
    let (status, v) = s.http("POST", "/v1/tokens/verify", Some(json!({"token": token})));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["user_id"], user, "{v}");
    assert_eq!(v["queue"], "default", "{v}");
}

/// The example joins behind two players, prints each position as they leave and are
/// admitted, and exits 0 with its token once admitted over HTTP.
fn example_moves_up_and_is_admitted(lang: Lang) {
    let s = start(FAST);
    let (mut first, _) = s.player(1);
    let (mut second, _) = s.player(2);
    let ex = &mut Script::example(lang, s.player, 42);
    ex.wait_line("position 3 of 3");
    s.wait_stats("default", "3 waiting", |q| q["waiting"] == 3);

    let left = first.request("leave", 7, json!({}));
    assert_eq!(left["code"], 0, "{left}");
    ex.wait_line("position 2 of 2");
    admit(&s, 1);
    second.next_cmd("admitted");
    ex.wait_line("position 1 of 1");

    let listed = admit(&s, 1);
    assert_eq!(listed["admitted"][0]["user_id"], 42, "{listed}");
    let token = ex.token();
    assert_eq!(listed["admitted"][0]["token"], token.as_str());
    ex.wait_line("admitted");
    assert_verifies(&s, &token, 42);
}

#[test]
fn python_example_moves_up_and_is_admitted() {
    example_moves_up_and_is_admitted(Lang::Python);
}

#[test]
fn node_example_moves_up_and_is_admitted() {
    example_moves_up_and_is_admitted(Lang::Node);
}

/// The client's own check script, against a server with a 2 s idle timeout (short, so
/// the idle kick comes quickly; 10 times the checks' 0.2 s heartbeat, so a stalled
/// box does not kick a heartbeating client) and auto-created queues (each check uses
/// its own queue).
fn client_checks_pass(lang: Lang) {
    let s = start(
        "[server]\npush_interval_ms = 20\nidle_timeout_secs = 2\n[queues]\nauto_create = true\n",
    );
    let args = [
        "--addr".to_string(),
        s.player.to_string(),
        "--control".to_string(),
        s.control.to_string(),
    ];
    let mut run = Script::spawn(lang, "test_client", &args);
    let (status, _) = run.wait_exit(SCRIPT_WAIT);
    assert!(status.success(), "exit {status}: {}", run.output());
}

#[test]
fn python_client_checks_pass() {
    client_checks_pass(Lang::Python);
}

#[test]
fn node_client_checks_pass() {
    client_checks_pass(Lang::Node);
}

/// A fixed Ed25519 seed, so tokens survive the restart.
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// A durable server on `dir` whose player port is `player` (port 0: any).
fn start_durable(dir: &Path, player: SocketAddr) -> TestServer {
    let toml = format!(
        "[durability]\ndir = \"{}\"\nfsync = \"always\"\n[tokens]\nkey = \"{KEY}\"\n\
         [server]\nreconnect_grace_secs = 600\nshutdown_retry_after_secs = 1\npush_interval_ms = 20\n",
        dir.display()
    );
    let mut config = Config::from_toml_str(&toml).expect("test config");
    config.server.listen = player;
    config.control.listen = "127.0.0.1:0".parse().unwrap();
    config.server.cores = 1;
    let handle = ServerHandle::start(&config).expect("server starts");
    TestServer {
        player: handle.player_addr,
        control: handle.control_addr,
        handle: Some(handle),
    }
}

/// A waiting client is kicked `shutdown` (retry after 1 s) and a new one is answered
/// SHUTTING_DOWN while the server drains; both come back to the restarted server on the
/// same port, the first with its place (`resumed`), and both are admitted.
fn shutdown_is_waited_out(lang: Lang) {
    let dir = std::env::temp_dir().join(format!(
        "qs-refclients-{}-{}",
        std::process::id(),
        lang.interpreter()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let mut s = start_durable(&dir, "127.0.0.1:0".parse().unwrap());
    let player = s.player;
    let waiting = &mut Script::example(lang, player, 1);
    waiting.wait_line("joined: position 1 of 1");
    s.wait_stats("default", "1 waiting", |q| q["waiting"] == 1);

    let handle = s.handle.take().expect("running");
    handle.begin_drain();
    let refused = &mut Script::example(lang, player, 2);
    refused.wait_line("SHUTTING_DOWN");
    handle.shutdown();
    waiting.wait_line("kicked: shutdown, retry after 1 s");
    drop(s);

    let s = start_durable(&dir, player);
    // Whichever comes back first, the resumed place is ahead of the new one.
    waiting.wait_line("joined (resumed): position 1 of");
    refused.wait_line("joined: position 2 of");
    let listed = admit(&s, 2);
    assert_eq!(listed["admitted"].as_array().unwrap().len(), 2, "{listed}");
    let first = waiting.token();
    let second = refused.token();
    assert_verifies(&s, &first, 1);
    assert_verifies(&s, &second, 2);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn python_waits_out_shutdown_and_resumes_after_restart() {
    shutdown_is_waited_out(Lang::Python);
}

#[test]
fn node_waits_out_shutdown_and_resumes_after_restart() {
    shutdown_is_waited_out(Lang::Node);
}
