//! A real etcd for one test: Debian's `etcd` binary (package `etcd-server`) on loopback
//! ports that were free a moment ago, with a temp data dir; answering (`/health`) before
//! `start` returns; killed, and its dir removed, on drop. A missing binary fails the
//! test with what to install (never a skip).

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
