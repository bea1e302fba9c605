//! Test harness: a server on 127.0.0.1:0, a raw-frame player client and a raw HTTP/1.1
//! client for the control port. Everything goes over real sockets.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use queue_server::config::Config;
use queue_server::server::ServerHandle;
use serde_json::{json, Value};

/// How long any single wait in a test may take before it fails (generous: CI is slow).
pub const WAIT: Duration = Duration::from_secs(15);

/// A running server for one test.
pub struct TestServer {
    /// The server (None after `shutdown`).
    pub handle: Option<ServerHandle>,
    /// Player address.
    pub player: SocketAddr,
    /// Control address.
    pub control: SocketAddr,
}

/// Starts a server: the built-in default, then `toml` over it, on loopback port 0.
pub fn start(toml: &str) -> TestServer {
    start_cores(toml, 1)
}

/// Like [`start`] with `cores` io loops.
pub fn start_cores(toml: &str, cores: usize) -> TestServer {
    let mut config = Config::from_toml_str(toml).expect("test config");
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.control.listen = "127.0.0.1:0".parse().unwrap();
    config.server.cores = cores;
    let handle = ServerHandle::start(&config).expect("server starts");
    TestServer {
        player: handle.player_addr,
        control: handle.control_addr,
        handle: Some(handle),
    }
}

/// A cluster node: a full server (one io loop) whose player and control ports are the
/// ones its `[cluster]` table advertises (the control API forwards to a queue's owner at
/// its `advertise_control`); `toml(player, control, link)` writes its config.
pub fn start_node(toml: impl FnOnce(u16, u16, u16) -> String) -> TestServer {
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port()
    };
    let (player, control, link) = (port(), port(), port());
    let mut config = Config::from_toml_str(&toml(player, control, link)).expect("node config");
    config.server.listen = format!("127.0.0.1:{player}").parse().unwrap();
    config.control.listen = format!("127.0.0.1:{control}").parse().unwrap();
    config.server.cores = 1;
    let handle = ServerHandle::start(&config).expect("node starts");
    TestServer {
        player: handle.player_addr,
        control: handle.control_addr,
        handle: Some(handle),
    }
}

impl TestServer {
    /// A new player connection.
    pub fn client(&self) -> Client {
        Client::connect(self.player)
    }

    /// A logged-in player of the default queue; returns the client and the login answer.
    pub fn player(&self, user: u64) -> (Client, Value) {
        let mut c = self.client();
        let answer = c.login(user);
        assert_eq!(answer["code"], 0, "login of {user}: {answer}");
        (c, answer)
    }

    /// An HTTP request to the control port.
    pub fn http(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        http(
            self.control,
            method,
            path,
            body.map(|b| b.to_string()).as_deref(),
            None,
        )
    }

    /// `/v1/stats` of queue `q`.
    pub fn queue_stats(&self, q: &str) -> Value {
        let (status, body) = self.http("GET", "/v1/stats", None);
        assert_eq!(status, 200, "{body}");
        body["queues"][q].clone()
    }

    /// Polls `/v1/stats` until `pred` holds for queue `q`.
    pub fn wait_stats(&self, q: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let stats = self.queue_stats(q);
            if pred(&stats) {
                return stats;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {stats}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
        }
    }
}

/// A player connection speaking raw frames.
pub struct Client {
    /// The socket.
    pub stream: TcpStream,
}

impl Client {
    /// Connects.
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client { stream }
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends one frame with this body.
    pub fn send_body(&mut self, body: &[u8]) {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        self.send_raw(&frame);
    }

    /// Sends a JSON frame.
    pub fn send(&mut self, v: &Value) {
        self.send_body(v.to_string().as_bytes());
    }

    /// The next frame, or None when the server closed the connection.
    pub fn recv(&mut self) -> Option<Value> {
        let mut header = [0u8; 4];
        if let Err(e) = self.stream.read_exact(&mut header) {
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ),
                "read failed (timeout?): {e}"
            );
            return None;
        }
        let len = u32::from_be_bytes(header) as usize;
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).expect("frame body");
        Some(serde_json::from_slice(&body).expect("server sent JSON"))
    }

    /// The next frame; fails on close.
    pub fn next(&mut self) -> Value {
        self.recv().expect("connection open")
    }

    /// Skips frames until one with `cmd` (and, for pushes, seq 0) arrives.
    pub fn next_cmd(&mut self, cmd: &str) -> Value {
        loop {
            let v = self.next();
            if v["cmd"] == cmd {
                return v;
            }
        }
    }

    /// Waits for a `position` push carrying `position`, skipping older ones.
    pub fn wait_position(&mut self, position: u64) -> Value {
        loop {
            let v = self.next();
            assert_eq!(v["seq"], 0, "unexpected response {v}");
            if v["cmd"] == "position" && v["data"]["position"] == position {
                return v;
            }
            assert_eq!(v["cmd"], "position", "unexpected push {v}");
        }
    }

    /// Sends a request and returns its response (skipping pushes).
    pub fn request(&mut self, cmd: &str, seq: u32, data: Value) -> Value {
        self.send(&json!({"cmd": cmd, "seq": seq, "data": data}));
        loop {
            let v = self.next();
            if v["seq"] == seq && v["cmd"] == cmd {
                return v;
            }
            assert_eq!(v["seq"], 0, "out of order answer {v}");
        }
    }

    /// Logs in to the default queue without a ticket.
    pub fn login(&mut self, user: u64) -> Value {
        self.request("login", 1, json!({"user_id": user}))
    }

    /// Asserts the server closes the connection (after any frames still in flight).
    pub fn expect_closed(&mut self) {
        while let Some(v) = self.recv() {
            assert!(v["seq"] == 0 || v["code"] != 0, "frame before close: {v}");
        }
    }
}

/// One HTTP/1.1 request over a fresh connection; returns (status, JSON body or string).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    bearer: Option<&str>,
) -> (u16, Value) {
    let (status, text) = http_text(addr, method, path, body, bearer);
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// Like [`http`], returning the body as text.
pub fn http_text(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    bearer: Option<&str>,
) -> (u16, String) {
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
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

/// A raw connection to `addr` that sent `bytes` and nothing more (a slow or silent
/// client); reads on it time out after [`WAIT`].
pub fn raw_connection(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(bytes).expect("write");
    s
}

/// What a raw connection got before it ended: the bytes read, and whether the server
/// closed it (EOF or reset) rather than the read timing out.
pub fn read_until_closed(s: &mut TcpStream) -> (String, bool) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&raw).to_string(), true),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => {
                let timed_out = matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
                return (String::from_utf8_lossy(&raw).to_string(), !timed_out);
            }
        }
    }
}

/// `GET path` on a fresh connection, answered within `within`: `Some((status, body))`,
/// or `None` when no whole answer came in time (or the connection was refused/closed).
pub fn get_within(addr: SocketAddr, path: &str, within: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(within)).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    Some((status, body.to_string()))
}
