//! Test harness for the client: a real queue-server in-process (as the server's own
//! tests start it), restartable on the same ports; a raw HTTP/1.1 call to its control
//! port; and a TCP proxy that can cut or freeze the connections through it (a dropped
//! connection, a dead server).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use queue_client::{Client, Error, Event};
use queue_server::config::Config;
use queue_server::server::ServerHandle;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How long any single wait in a test may take before it fails (generous: CI is slow).
pub const WAIT: Duration = Duration::from_secs(20);

/// A fixed Ed25519 seed, so tokens survive restarts.
pub const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// A running server.
pub struct Server {
    /// The server (None once stopped).
    pub handle: Option<ServerHandle>,
    /// Player address.
    pub player: SocketAddr,
    /// Control address.
    pub control: SocketAddr,
    /// Its config text (for restarts).
    pub toml: String,
}

/// Test settings every server here gets: fast pushes, one core.
pub const BASE: &str = "[server]\npush_interval_ms = 20\n";

impl Server {
    /// Starts a server from `toml` (laid over the default) on loopback port 0.
    pub fn start(toml: &str) -> Server {
        Server::start_at(
            toml,
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
    }

    /// Starts on these addresses.
    pub fn start_at(toml: &str, player: SocketAddr, control: SocketAddr) -> Server {
        let mut config = Config::from_toml_str(toml).expect("test config");
        config.server.listen = player;
        config.control.listen = control;
        config.server.cores = 1;
        let handle = ServerHandle::start(&config).expect("server starts");
        Server {
            player: handle.player_addr,
            control: handle.control_addr,
            handle: Some(handle),
            toml: toml.to_string(),
        }
    }

    /// Stops it (players get `kicked shutdown`) and starts it again on the same ports.
    pub fn restart(&mut self) {
        self.stop();
        *self = Server::start_at(&self.toml, self.player, self.control);
    }

    /// Stops it.
    pub fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
        }
    }

    /// `host:port` of the player port.
    pub fn addr(&self) -> String {
        self.player.to_string()
    }

    /// An HTTP call to the control port (blocking; call from `spawn_blocking` or a
    /// plain test thread).
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        http(self.control, method, path, body, None)
    }

    /// `POST /v1/queues/default/admit {count}`; the admitted players.
    pub fn admit(&self, count: u64) -> Vec<Value> {
        let (status, body) = self.http(
            "POST",
            "/v1/queues/default/admit",
            Some(&format!("{{\"count\":{count}}}")),
        );
        assert_eq!(status, 200, "{body}");
        body["admitted"].as_array().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A durable server's config: `[durability] dir` in a fresh temp dir, a fixed
/// `tokens.key`, a long reconnect grace, a 1 s `retry_after_secs`.
pub fn durable_toml(name: &str) -> (String, PathBuf) {
    let dir = std::env::temp_dir().join(format!("qc-durable-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let toml = format!(
        "[server]\npush_interval_ms = 20\nreconnect_grace_secs = 600\nshutdown_retry_after_secs = 1\ndrain_timeout_secs = 1\n[durability]\ndir = \"{}\"\nfsync = \"always\"\n[tokens]\nkey = \"{KEY}\"\n",
        dir.display()
    );
    (toml, dir)
}

/// One HTTP/1.1 request on a fresh connection; (status, JSON body or string).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    bearer: Option<&str>,
) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("control connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let body = body.unwrap_or("");
    let auth = bearer.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("http response");
    let text = String::from_utf8_lossy(&raw).to_string();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {text}"));
    let (_, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let value = serde_json::from_str(rest).unwrap_or(Value::String(rest.to_string()));
    (status, value)
}

/// Runs a blocking closure (HTTP to the server, a restart) off the async test's thread.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking part")
}

/// The next event within [`WAIT`]; fails on the end of the stream or an error.
pub async fn next(client: &mut Client) -> Event {
    match tokio::time::timeout(WAIT, client.next_event()).await {
        Ok(Some(Ok(e))) => e,
        Ok(Some(Err(e))) => panic!("client stopped with an error: {e}"),
        Ok(None) => panic!("client stream ended"),
        Err(_) => panic!("no event within {WAIT:?}"),
    }
}

/// The next item within [`WAIT`], whatever it is.
pub async fn next_item(client: &mut Client) -> Option<Result<Event, Error>> {
    tokio::time::timeout(WAIT, client.next_event())
        .await
        .expect("an item within WAIT")
}

/// Skips events until `pred` matches one; returns it.
pub async fn wait_for(client: &mut Client, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        let e = next(client).await;
        if pred(&e) {
            return e;
        }
    }
}

/// Waits for a `Position` event with this position.
pub async fn wait_position(client: &mut Client, position: u64) {
    wait_for(
        client,
        &format!("position {position}"),
        |e| matches!(e, Event::Position { position: p, .. } if *p == position),
    )
    .await;
}

/// A TCP proxy in front of `target`: it can cut every connection through it (the
/// client sees a reset/close) or freeze them (bytes are swallowed both ways, as with a
/// server that hangs or a path that blackholes).
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Swallow everything while set.
    frozen: Arc<AtomicBool>,
    /// Live connection tasks.
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// The accept loop.
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `target` (in the current tokio runtime).
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (f, c) = (frozen.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let frozen = f.clone();
                let task = tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    // Either direction ending (or an abort by `cut`) drops both sockets.
                    tokio::select! {
                        _ = pump(cr, sw, frozen.clone()) => {}
                        _ = pump(sr, cw, frozen) => {}
                    }
                });
                c.lock().unwrap().push(task);
            }
        });
        Proxy {
            addr,
            frozen,
            conns,
            accept,
        }
    }

    /// Drops every connection through the proxy (new ones still work).
    pub fn cut(&self) {
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Swallows (or passes again) every byte through the proxy.
    pub fn freeze(&self, on: bool) {
        self.frozen.store(on, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Copies `from` to `to` until EOF, dropping bytes while `frozen`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
