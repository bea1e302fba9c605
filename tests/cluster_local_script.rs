//! The README's "a 3-node cluster on one machine" for real: runs
//! `scripts/cluster-local.sh` (its own etcd and three `queue-server` processes), with
//! this build's binary (`QUEUE_SERVER_BIN`: no release build) and ports that were free
//! a moment ago (`CLUSTER_PORT_BASE`, `ETCD_CLIENT_PORT`, `ETCD_PEER_PORT`). Waits until
//! the three nodes answer and agree on the owner of `default`, logs a player in on a
//! node that does not own it, admits it through the third node's control port and
//! checks the `admitted` push; then stops the script as Ctrl-C does (SIGINT to its
//! process group) and checks that no etcd or queue-server it started is left.
//!
//! Needs `etcd` (Debian `etcd-server`), `bash` and `python3` on PATH: without them the
//! script exits at once and the test fails with its output, never skips.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Longest wait for the cluster to answer and settle (etcd start, three registrations,
/// a campaign, every node's listing), or for the script to stop.
const SETTLE: Duration = Duration::from_secs(60);

/// The running script; on drop (a failed test) its process group and every process
/// started with its run dir are killed, so a failure leaks nothing either.
struct Script {
    /// `bash scripts/cluster-local.sh`, leader of its own process group.
    child: Child,
    /// Its stdout and stderr so far.
    output: Arc<Mutex<String>>,
    /// The run dir it printed (configs, logs, etcd data), once known.
    run: Option<PathBuf>,
}

impl Drop for Script {
    fn drop(&mut self) {
        // Only while the script is unreaped: its pid (the group's id) cannot have been
        // reused meanwhile.
        if let Ok(None) = self.child.try_wait() {
            let pgid = self.child.id() as i32;
            // SAFETY: kill(2) on the process group this test started.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = self.child.wait();
        }
        if let Some(run) = &self.run {
            for pid in processes_using(run) {
                // SAFETY: kill(2) on a process the script started (its run dir is in
                // the command line).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = std::fs::remove_dir_all(run);
        }
    }
}

impl Script {
    /// The script's output so far.
    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

/// Pids of live processes whose command line mentions `run` (the script's etcd and
/// nodes: `--data-dir RUN/etcd`, `--config RUN/nodeI.toml`); zombies have none.
fn processes_using(run: &Path) -> Vec<i32> {
    let needle = run.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

/// A port base whose nine node ports (`base + 100 * i + {0, 1, 2}`, i = 1..3) are free
/// now, below the ephemeral range so no outgoing connection takes one meanwhile.
fn free_base() -> u16 {
    let start = 20_000 + (std::process::id() % 90) as u16 * 100;
    (0..90u16)
        .map(|k| 20_000 + (start - 20_000 + k * 100) % 9_000)
        .find(|base| {
            (1..=3u16).all(|i| {
                (0..3).all(|d| TcpListener::bind(("127.0.0.1", base + 100 * i + d)).is_ok())
            })
        })
        .expect("no free port base in 20000-29000")
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `/v1/stats` of the node on control port `port`, or None while it does not answer.
fn stats(port: u16) -> Option<Value> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    let (status, body) = common::http(addr, "GET", "/v1/stats", None, None);
    (status == 200).then_some(body)
}

/// Starts the script with this build's binary on `base` and two etcd ports.
fn start(base: u16) -> Script {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new("bash");
    command
        .arg(root.join("scripts/cluster-local.sh"))
        .env("QUEUE_SERVER_BIN", env!("CARGO_BIN_EXE_queue-server"))
        .env("CLUSTER_PORT_BASE", base.to_string())
        .env("ETCD_CLIENT_PORT", free_port().to_string())
        .env("ETCD_PEER_PORT", free_port().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, as a shell started from a terminal: Ctrl-C is a
        // SIGINT to this group.
        .process_group(0);
    // SAFETY: only async-signal-safe calls between fork and exec. A shell cannot trap
    // a signal ignored when it started, and a test runner started in the background
    // of a non-interactive shell ignores SIGINT: give the script a terminal's default.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = command.spawn().expect("bash scripts/cluster-local.sh");
    let output = Arc::new(Mutex::new(String::new()));
    for mut pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let output = output.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                output
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
    }
    Script {
        child,
        output,
        run: None,
    }
}

/// Polls `check` until it gives a value; fails with the script's output after
/// [`SETTLE`], or at once when the script exited.
fn wait_for<T>(script: &mut Script, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if let Ok(Some(status)) = script.child.try_wait() {
            panic!(
                "the script exited ({status}) before {what}:\n{}",
                script.output()
            );
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; script output:\n{}",
            script.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_readme_three_node_cluster_starts_admits_across_nodes_and_stops_clean() {
    let base = free_base();
    let mut script = start(base);
    let output = script.output.clone();
    let run = wait_for(&mut script, "the run dir", || {
        let out = output.lock().unwrap();
        let line = out.lines().find_map(|l| l.strip_prefix("run dir: "))?;
        Some(PathBuf::from(line.trim()))
    });
    script.run = Some(run.clone());
    let control = |i: u16| base + 100 * i + 1;
    let player = |i: u16| -> SocketAddr { ([127, 0, 0, 1], base + 100 * i).into() };

    // Three members, and every node names the same owner of `default`.
    let owner = wait_for(
        &mut script,
        "three members and one owner of default",
        || {
            let views: Vec<Value> = (1..=3).map(|i| stats(control(i))).collect::<Option<_>>()?;
            let owners: Vec<&Value> = views
                .iter()
                .map(|s| &s["cluster"]["queues"]["default"]["owner"])
                .collect();
            let settled = views
                .iter()
                .all(|s| s["cluster"]["members"].as_array().map(Vec::len) == Some(3));
            (settled && owners[0].is_string() && owners.iter().all(|o| *o == owners[0]))
                .then(|| owners[0].as_str().unwrap().to_string())
        },
    );
    let owner: u16 = owner
        .strip_prefix("node")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("owner {owner:?} is not node1..3"));
    // Log in on a node that does not own the queue, admit through the third one.
    let (login, admit) = match owner {
        1 => (2, 3),
        2 => (3, 1),
        _ => (1, 2),
    };
    let mut client = wait_for(&mut script, "a routed login", || {
        let mut c = common::Client::connect(player(login));
        let answer = c.request("login", 1, json!({"user_id": 4242}));
        // 9: this node's router has not listed the owner yet; log in again.
        assert!(answer["code"] == 0 || answer["code"] == 9, "{answer}");
        (answer["code"] == 0).then_some(c)
    });
    let addr: SocketAddr = ([127, 0, 0, 1], control(admit)).into();
    let (status, body) = common::http(
        addr,
        "POST",
        "/v1/queues/default/admit",
        Some(r#"{"count":1}"#),
        None,
    );
    assert_eq!(status, 200, "admit through node{admit}: {body}");
    let admitted = client.next_cmd("admitted");
    assert!(admitted["data"]["token"].is_string(), "{admitted}");

    // Ctrl-C: every process the script started ends, and the script itself.
    let started = processes_using(&run);
    assert_eq!(
        started.len(),
        4,
        "etcd and three nodes: {started:?}\n{}",
        script.output()
    );
    let pgid = script.child.id() as i32;
    // SAFETY: kill(2) on the process group this test started.
    assert_eq!(unsafe { libc::kill(-pgid, libc::SIGINT) }, 0);
    let deadline = Instant::now() + SETTLE;
    let status = loop {
        if let Some(status) = script.child.try_wait().expect("wait for the script") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the script did not stop:\n{}",
            script.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let left = processes_using(&run);
    assert!(
        left.is_empty(),
        "left running: {left:?} (started {started:?})"
    );
    assert_eq!(
        status.code(),
        Some(130),
        "exit status:\n{}",
        script.output()
    );
    // Each node got one signal (from the script, not the Ctrl-C) and stopped gracefully.
    for i in 1..=3 {
        let log = std::fs::read_to_string(run.join(format!("node{i}.log"))).unwrap_or_default();
        assert!(
            log.contains("stopped") && !log.contains("second signal"),
            "node{i} did not stop gracefully:\n{log}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !script.output().contains("stopped; logs and configs in") {
        assert!(
            Instant::now() < deadline,
            "no stop line:\n{}",
            script.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
