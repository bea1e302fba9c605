//! The `queue-server` binary as a child process, for tests that need a whole process
//! (a CPU profile samples the process; log lines go to its stdout): started on a config
//! written to a temp dir, with every stdout line handed back on a channel, and killed
//! on drop unless it exited.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest wait for anything from the child.
pub const WAIT: Duration = Duration::from_secs(15);

/// A running server process.
pub struct ServerProcess {
    /// The child (killed on drop).
    pub child: Child,
    /// Player port.
    pub player: SocketAddr,
    /// Control port.
    pub control: SocketAddr,
    /// Every stdout line after "listening".
    pub lines: mpsc::Receiver<String>,
    /// Its temp dir (config), removed on drop.
    dir: PathBuf,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl ServerProcess {
    /// Starts the binary with `cores` io loops on a config of the two listen addresses
    /// followed by `extra_toml` (which must not repeat `[server]` or `[control]`
    /// tables: pass `control_toml` for keys of `[control]`).
    pub fn start(name: &str, cores: usize, control_toml: &str, extra_toml: &str) -> Self {
        let (player, control) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!("qs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{player}\"\n\
                 [control]\nlisten = \"127.0.0.1:{control}\"\n{control_toml}\n{extra_toml}\n"
            ),
        )
        .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_queue-server"));
        command
            .arg("--cores")
            .arg(cores.to_string())
            .arg("--config")
            .arg(&config);
        Self::spawn(command, player, control, dir)
    }

    /// Runs `command` (which starts a server on these ports) and returns once it logged
    /// "listening"; `dir` is removed on drop.
    pub fn spawn(mut command: Command, player: u16, control: u16, dir: PathBuf) -> Self {
        let mut child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn queue-server");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let deadline = Instant::now() + WAIT;
        while !line.contains("listening") {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "server exited early");
            assert!(Instant::now() < deadline, "server did not start");
        }
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { return };
                // The receiver may be gone: keep draining so the child never blocks.
                let _ = tx.send(line);
            }
        });
        ServerProcess {
            child,
            player: format!("127.0.0.1:{player}").parse().unwrap(),
            control: format!("127.0.0.1:{control}").parse().unwrap(),
            lines,
            dir,
        }
    }

    /// Waits for a stdout line for which `pred` holds; fails after [`WAIT`].
    pub fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line {what} within {WAIT:?}"),
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        kill_and_clean(&mut self.child, &self.dir);
    }
}

/// Kills `child` unless it exited, reaps it, and removes its temp dir `dir` (what a
/// dropped child process of a test leaves behind).
pub fn kill_and_clean(child: &mut Child, dir: &std::path::Path) {
    if child.try_wait().ok().flatten().is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// One HTTP answer, body as raw bytes.
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Header block, lower-cased.
    pub head: String,
    /// Body bytes (the server always sends a `Content-Length`).
    pub body: Vec<u8>,
    /// The local address the request was sent from (the server's peer address).
    pub local: SocketAddr,
}

/// `method path` on a fresh connection with an optional bearer key and JSON body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> Answer {
    let mut s = TcpStream::connect(addr).expect("control connect");
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    let auth = bearer.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("http answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    Answer {
        status,
        head,
        body: raw[split + 4..].to_vec(),
        local: s.local_addr().unwrap(),
    }
}
