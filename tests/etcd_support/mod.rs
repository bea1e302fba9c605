//! A real etcd for one test: Debian's `etcd` binary (package `etcd-server`) on loopback
//! ports that were free a moment ago, with a temp data dir; answering (`/health`) before
//! `start` returns; killed, and its dir removed, on drop. A missing binary fails the
//! test with what to install (never a skip).
//!
//! Also the cluster helpers that read etcd or start in-process nodes on it; these use
//! `crate::common`, so a test that includes this module includes `common` too.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Longest wait for etcd to answer.
pub const ETCD_WAIT: Duration = Duration::from_secs(20);

/// A running etcd process.
pub struct Etcd {
    /// The child (killed on drop).
    child: Child,
    /// Temp dir: `data/` and `etcd.log`; removed on drop.
    dir: PathBuf,
    /// Client URL, `http://127.0.0.1:port`.
    pub url: String,
    /// Client port.
    port: u16,
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `etcd` binary on PATH, or a failure naming the package.
fn etcd_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the `etcd` binary is not on PATH: the cluster tests need a real etcd; \
                 install Debian's etcd-server (apt-get install -y etcd-server)"
            )
        })
}

impl Etcd {
    /// Starts etcd on fresh ports and a fresh data dir and waits until it is healthy.
    pub fn start() -> Etcd {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "queue-server-etcd-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let peer = format!("http://127.0.0.1:{}", free_port());
        let url = format!("http://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let child = Command::new(etcd_binary())
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        let mut etcd = Etcd {
            child,
            dir,
            url,
            port,
        };
        etcd.wait_healthy();
        etcd
    }

    /// Polls `GET /health` until it says true; fails with the log on timeout or exit.
    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + ETCD_WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("etcd exited ({status}) before answering:\n{}", self.log());
            }
            if self.healthy() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy within {ETCD_WAIT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One `GET /health` over a raw socket.
    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        if s.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }

    /// The process id (for signals).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGSTOP: etcd stops answering, its connections stay open.
    /// Returns once the kernel shows the process stopped (`T` in /proc/PID/stat): a
    /// signal is delivered asynchronously, and on a loaded box etcd could still answer
    /// a request sent right after `kill` returned.
    pub fn pause(&self) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGSTOP) }, 0);
        let stat = format!("/proc/{}/stat", self.pid());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&stat).unwrap_or_default();
            // The state follows the command name, which is in parentheses.
            let state = text
                .rsplit(") ")
                .next()
                .and_then(|rest| rest.chars().next());
            if state == Some('T') {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "etcd not stopped: {text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGCONT) }, 0);
    }

    /// The end of etcd's log, for failure messages.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text[text.floor_char_boundary_compat(start)..].to_string()
    }
}

/// `str::floor_char_boundary` is unstable; this is the same for our use.
trait FloorCompat {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorCompat for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while i > 0 && !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // SIGKILL ends a stopped (SIGSTOP) process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The cluster's shared token key in [`node_toml`] (32-byte Ed25519 seed, base64url).
pub const NODE_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// The config of node `id` on `etcd` under `prefix` (TTL 2 s, window 1 s) at `ports`
/// (player, control, link); `extra` is appended right after `[tokens] key`: bare keys
/// there are `[tokens]` keys, then any tables.
pub fn node_toml(
    etcd: &Etcd,
    prefix: &str,
    id: &str,
    extra: &str,
    ports: (u16, u16, u16),
) -> String {
    let (player, control, link) = ports;
    format!(
        "[server]\npush_interval_ms = 20\n\
         [cluster]\netcd = [\"{}\"]\nnode_id = \"{id}\"\n\
         advertise_player = \"127.0.0.1:{player}\"\nadvertise_control = \"127.0.0.1:{control}\"\n\
         advertise_link = \"127.0.0.1:{link}\"\nlease_ttl_secs = 2\n\
         recovery_window_secs = 1\nprefix = \"{prefix}\"\n\
         [tokens]\nkey = \"{NODE_KEY}\"\n{extra}\n",
        etcd.url,
    )
}

/// A full in-process node ([`crate::common::start_node`]) with [`node_toml`]'s config.
pub fn node_in_process(
    etcd: &Etcd,
    prefix: &str,
    id: &str,
    extra: &str,
) -> crate::common::TestServer {
    crate::common::start_node(|player, control, link| {
        node_toml(etcd, prefix, id, extra, (player, control, link))
    })
}

/// Two queues rendezvous gives to different survivors: nodes `[d, b, c]` start under
/// `prefix`, each listing both queues, `d` alone first, so that it owns both (a live
/// owner is never displaced by b or c). Returns the nodes (in that order) and the two
/// queue names, the one `b` prefers over `c` first.
pub fn two_queues_owned_by_d(
    etcd: &Etcd,
    prefix: &str,
    [d, b, c]: [&str; 3],
) -> (Vec<crate::common::TestServer>, String, String) {
    use queue_server::cluster::ownership::preferred_owner;
    let name = |wanted: &str| {
        (0..)
            .map(|i| format!("w{i}"))
            .find(|q| preferred_owner(q, [b, c]) == Some(wanted))
            .unwrap()
    };
    let (qb, qc) = (name(b), name(c));
    let extra = format!("[[queues.list]]\nname = \"{qb}\"\n[[queues.list]]\nname = \"{qc}\"\n");
    let mut nodes = vec![node_in_process(etcd, prefix, d, &extra)];
    crate::common::wait_until("d owns both queues", || {
        [&qb, &qc]
            .iter()
            .all(|q| crate::common::owner_seen_by(&nodes[0], q).as_deref() == Some(d))
    });
    nodes.push(node_in_process(etcd, prefix, b, &extra));
    nodes.push(node_in_process(etcd, prefix, c, &extra));
    (nodes, qb, qc)
}

/// The admission watermark of `queue` published in etcd (`{prefix}/admitted/{queue}`,
/// "normal,priority"), read through etcd's JSON gateway.
pub fn published_marks(etcd: &Etcd, prefix: &str, queue: &str) -> Option<(u64, u64)> {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    let addr = etcd.url.trim_start_matches("http://").parse().unwrap();
    let key = STANDARD.encode(format!("{prefix}/admitted/{queue}"));
    let body = serde_json::json!({ "key": key }).to_string();
    let (status, v) = crate::common::http(addr, "POST", "/v3/kv/range", Some(&body), None);
    assert_eq!(status, 200, "{v}");
    let value = v["kvs"].as_array()?.first()?["value"].as_str()?.to_string();
    let text = String::from_utf8(STANDARD.decode(value).unwrap()).unwrap();
    let (n, p) = text.split_once(',')?;
    Some((n.parse().unwrap(), p.parse().unwrap()))
}

/// Runs `f` on a throw-away etcd client (its own current-thread runtime), for checks
/// and changes made from outside the nodes.
pub fn with_etcd<T>(etcd: &Etcd, f: impl AsyncFnOnce(&mut etcd_client::Client) -> T) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = etcd_client::Client::connect([etcd.url.as_str()], None)
            .await
            .unwrap();
        f(&mut client).await
    })
}

/// Admits players `1..=count` of `queue` through the owner at `control` (they logged
/// in one at a time, in order: the first `count` in the queue), and waits until the
/// owner published in etcd a watermark at or past `last_ticket`'s place (player
/// `count`'s).
pub fn admit_and_wait_published(
    etcd: &Etcd,
    (prefix, queue): (&str, &str),
    control: std::net::SocketAddr,
    count: u64,
    last_ticket: &str,
) {
    let early = crate::common::admit(control, queue, count);
    assert_eq!(early, (1..=count).collect::<Vec<_>>());
    let admitted_key = crate::common::ticket_key(last_ticket);
    crate::common::wait_until("the owner's admission watermark in etcd", || {
        published_marks(etcd, prefix, queue).is_some_and(|(normal, _)| normal >= admitted_key)
    });
}
