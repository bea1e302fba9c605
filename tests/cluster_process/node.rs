//! A cluster node as a child process: the real `queue-server` binary on a config file of
//! its own (loopback ports that were free a moment ago, `[cluster]` on the given etcd),
//! every stdout line kept (from the first, so no log line is missed), killed on drop.
//! `kill9` sends SIGKILL: no revoke, no goodbye on its links, as on a dead box.
//! Uses `crate::common`, `crate::etcd_support` and `crate::server_process`: a test that
//! includes this module includes those too.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest wait for a node to start.
const START_WAIT: Duration = Duration::from_secs(20);

/// A running node process.
pub struct NodeProcess {
    /// `cluster.node_id`.
    pub id: String,
    /// The child (SIGKILLed on drop).
    child: Child,
    /// Player port (also its `advertise_player`).
    pub player: SocketAddr,
    /// Control port (also its `advertise_control`).
    pub control: SocketAddr,
    /// Every stdout line so far.
    lines: Arc<Mutex<Vec<String>>>,
    /// Temp dir holding the config; removed on drop.
    dir: PathBuf,
}

impl NodeProcess {
    /// Starts node `id` of the cluster on `etcd_url` under `prefix`: TTL 2 s, recovery
    /// window 1 s, one io loop, JSON log lines; `extra` is appended to the config right
    /// after `[tokens] key` (bare keys there are `[tokens]` keys; then `[[queues.list]]`
    /// tables, never one written here). Returns once it logged "listening".
    pub fn start(etcd_url: &str, prefix: &str, id: &str, key: &str, extra: &str) -> NodeProcess {
        Self::start_with_window(etcd_url, prefix, id, key, extra, 1)
    }

    /// [`Self::start`] with `recovery_window_secs = window_secs` (place tickets are
    /// honored only in that hold after a takeover).
    pub fn start_with_window(
        etcd_url: &str,
        prefix: &str,
        id: &str,
        key: &str,
        extra: &str,
        window_secs: u64,
    ) -> NodeProcess {
        let (dir, config, player, control) =
            write_config(etcd_url, prefix, id, key, extra, window_secs);
        let (child, lines) = launch(&config);
        let mut node = NodeProcess {
            id: id.to_string(),
            child,
            player: format!("127.0.0.1:{player}").parse().unwrap(),
            control: format!("127.0.0.1:{control}").parse().unwrap(),
            lines,
            dir,
        };
        node.wait_listening();
        node
    }

    /// Waits for "listening"; fails if the process exits first.
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + START_WAIT;
        while !self.logged(|l| l.contains("queue-server listening")) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("node {} exited ({status}) before listening", self.id);
            }
            assert!(Instant::now() < deadline, "node {} did not start", self.id);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// After [`Self::kill9`]: the same binary on the same config (same node id, same
    /// ports), as a supervisor restarts a crashed server; the log starts afresh.
    pub fn restart(&mut self) {
        let (child, lines) = launch(&self.dir.join("config.toml"));
        self.child = child;
        self.lines = lines;
        self.wait_listening();
    }

    /// True when some stdout line so far satisfies `pred`.
    pub fn logged(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.lines.lock().unwrap().iter().any(|l| pred(l))
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) },
            0
        );
        let _ = self.child.wait();
    }

    /// SIGSTOP (a hung or partitioned host: its sockets stay open, nothing answers).
    pub fn freeze(&self) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGSTOP) },
            0
        );
    }

    /// `GET /v1/stats`.
    pub fn stats(&self) -> Value {
        let (status, body) = crate::common::http(self.control, "GET", "/v1/stats", None, None);
        assert_eq!(status, 200, "{}: {body}", self.id);
        body
    }

    /// The owner of `queue` in this node's `/v1/stats` `cluster` view.
    pub fn owner_of(&self, queue: &str) -> Option<String> {
        self.stats()["cluster"]["queues"][queue]["owner"]
            .as_str()
            .map(str::to_string)
    }

    /// A control request with a JSON body.
    pub fn http(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        crate::common::http(self.control, method, path, body.as_deref(), None)
    }
}

/// Writes node `id`'s config (see [`NodeProcess::start`]; recovery window
/// `window_secs`) to a fresh temp dir:
/// (dir, config path, player port, control port).
fn write_config(
    etcd_url: &str,
    prefix: &str,
    id: &str,
    key: &str,
    extra: &str,
    window_secs: u64,
) -> (PathBuf, PathBuf, u16, u16) {
    let (player, control, link) = (
        crate::etcd_support::free_port(),
        crate::etcd_support::free_port(),
        crate::etcd_support::free_port(),
    );
    let dir = std::env::temp_dir().join(format!("qs-proc-{}-{id}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{player}\"\npush_interval_ms = 20\n\
         [control]\nlisten = \"127.0.0.1:{control}\"\n\
         [log]\nformat = \"json\"\n\
         [cluster]\netcd = [\"{etcd_url}\"]\nnode_id = \"{id}\"\n\
         advertise_player = \"127.0.0.1:{player}\"\n\
         advertise_control = \"127.0.0.1:{control}\"\n\
         advertise_link = \"127.0.0.1:{link}\"\n\
         lease_ttl_secs = 2\nrecovery_window_secs = {window_secs}\nprefix = \"{prefix}\"\n\
         [tokens]\nkey = \"{key}\"\n{extra}\n"
    );
    std::fs::write(&config, text).unwrap();
    (dir, config, player, control)
}

/// Runs node `id` expecting it to refuse to start: its exit status must be a failure
/// within [`START_WAIT`] (it fails the test if it starts listening); returns stderr.
pub fn start_refused(etcd_url: &str, prefix: &str, id: &str, key: &str, extra: &str) -> String {
    let (dir, config, _, _) = write_config(etcd_url, prefix, id, key, extra, 1);
    let mut child = Command::new(env!("CARGO_BIN_EXE_queue-server"))
        .arg("--cores")
        .arg("1")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn queue-server");
    let deadline = Instant::now() + START_WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("node {id} did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!status.success(), "node {id} exited 0: {stderr}");
    stderr
}

/// Spawns the binary on `config`; every stdout line goes to the returned list.
fn launch(config: &std::path::Path) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_queue-server"))
        .arg("--cores")
        .arg("1")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn queue-server");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = BufReader::new(child.stdout.take().unwrap());
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in out.lines() {
            let Ok(line) = line else { return };
            sink.lock().unwrap().push(line);
        }
    });
    (child, lines)
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        crate::server_process::kill_and_clean(&mut self.child, &self.dir);
    }
}

/// The index of the node every node in `alive` names as `queue`'s owner, once they
/// agree on one that is not `not`.
pub fn agreed_owner(
    nodes: &[NodeProcess],
    alive: &[usize],
    queue: &str,
    not: Option<&str>,
) -> usize {
    let mut owner = None;
    crate::common::wait_until("every live node names the same owner", || {
        let named: Vec<Option<String>> = alive.iter().map(|&i| nodes[i].owner_of(queue)).collect();
        owner = named[0].clone().filter(|o| Some(o.as_str()) != not);
        owner.is_some() && named.iter().all(|n| *n == owner)
    });
    let owner = owner.unwrap();
    nodes.iter().position(|n| n.id == owner).unwrap()
}

/// Waits until `node` (not the owner) logged that its logins of its one queue go over
/// a node link (its router published a route to the owner).
pub fn wait_routed(node: &NodeProcess) {
    crate::common::wait_until(
        &format!("{} routes the queue to its owner", node.id),
        || {
            node.logged(|l| {
                l.contains("node link routes changed") && l.contains("\"remote_queues\":1")
            })
        },
    );
}
