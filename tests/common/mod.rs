//! Test harness: a server on 127.0.0.1:0, a raw-frame player client and a raw HTTP/1.1
//! client for the control port. Everything goes over real sockets.
//!
//! Also the helpers the cluster_* tests share (waits with [`SETTLE`], admission, place
//! tickets, owner views): one copy each, whatever the node kind (in-process or child).

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

// ---- Cluster helpers (the cluster_* tests) ----

/// Longest wait for a cluster to settle (a lease, a tick, a listing, a recovery
/// window): the longest any cluster test needed on a loaded box.
pub const SETTLE: Duration = Duration::from_secs(30);

/// Polls `check` every 20 ms until it is true; fails naming `what` after [`SETTLE`].
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Player `i` (1-based) connects to node `(i - 1) % 3`.
pub fn node_of(i: u64) -> usize {
    ((i - 1) % 3) as usize
}

/// The player's position by a `position` request on its connection; any push but a
/// `position` on the way (a `kicked`) fails the test.
pub fn position(c: &mut Client, user: u64) -> u64 {
    c.send(&json!({"cmd": "position", "seq": 7, "data": {}}));
    loop {
        let v = c.next();
        if v["seq"] == 7 {
            assert_eq!(v["code"], 0, "player {user}: {v}");
            return v["data"]["position"].as_u64().unwrap();
        }
        assert_eq!(v["cmd"], "position", "player {user}: unexpected push {v}");
    }
}

/// Admits `count` of `queue` through the control port at `control`, retrying while the
/// queue is between owners or held for the recovery window (503); returns the admitted
/// user ids in order.
pub fn admit(control: SocketAddr, queue: &str, count: u64) -> Vec<u64> {
    let mut admitted = Vec::new();
    wait_until("an admission", || {
        let path = format!("/v1/queues/{queue}/admit");
        let body = json!({ "count": count }).to_string();
        let (status, body) = http(control, "POST", &path, Some(&body), None);
        if status != 200 {
            assert_eq!(status, 503, "{control}: {body}");
            return false;
        }
        admitted = admitted_ids(&body);
        true
    });
    admitted
}

/// The owner of `queue` as the in-process node `n` last listed it.
pub fn owner_seen_by(n: &TestServer, queue: &str) -> Option<String> {
    let cluster = n.handle.as_ref().unwrap().cluster.as_ref().unwrap();
    cluster.owner_of(queue).map(|o| o.node_id)
}

/// The key a place ticket names (its payload's bytes 10..18, little-endian).
pub fn ticket_key(ticket: &str) -> u64 {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let payload = URL_SAFE_NO_PAD
        .decode(ticket.split_once('.').unwrap().0)
        .unwrap();
    u64::from_le_bytes(payload[10..18].try_into().unwrap())
}

/// A login of `user` to `queue` at `addr` presenting `ticket`, retried while the answer
/// is SHUTTING_DOWN (9: the queue is between owners, or the new owner has not read the
/// watermark yet); the answer and the connection.
pub fn login_with_ticket(
    addr: SocketAddr,
    queue: &str,
    user: u64,
    ticket: &str,
) -> (Value, Client) {
    let data = json!({"user_id": user, "queue": queue, "place_ticket": ticket});
    let mut answer = None;
    wait_until(
        "a login with a place ticket that is not SHUTTING_DOWN",
        || {
            let mut c = Client::connect(addr);
            let v = c.request("login", 1, data.clone());
            if v["code"] == 9 {
                return false;
            }
            answer = Some((v, c));
            true
        },
    );
    answer.unwrap()
}

/// The user ids of an admit answer (`{"admitted": [{"user_id": ..}, ..]}`), in order.
pub fn admitted_ids(body: &Value) -> Vec<u64> {
    let admitted = body["admitted"].as_array().unwrap();
    admitted
        .iter()
        .map(|a| a["user_id"].as_u64().unwrap())
        .collect()
}

/// The index in `nodes` (named `ids`) of `queue`'s owner, once every node in `alive`
/// routes its logins to it (the owner: its own core; the others: the link to it) and
/// it is not `not`.
pub fn settled_owner(
    nodes: &[TestServer],
    ids: &[&str],
    alive: &[usize],
    queue: &str,
    not: Option<&str>,
) -> usize {
    let handle = |i: usize| nodes[i].handle.as_ref().unwrap();
    let mut owner = String::new();
    wait_until("the queue has an owner every live node routes to", || {
        let cluster = handle(alive[0]).cluster.as_ref().unwrap();
        let Some(o) = cluster.owner_of(queue) else {
            return false;
        };
        owner = o.node_id;
        if Some(owner.as_str()) == not {
            return false;
        }
        alive.iter().all(|&i| {
            let routed = handle(i).routes.as_ref().unwrap().remote_owner(queue);
            if ids[i] == owner {
                routed.is_none()
            } else {
                routed.as_deref() == Some(owner.as_str())
            }
        })
    });
    ids.iter().position(|n| *n == owner).unwrap()
}

/// The place ticket of player `user`'s first `login` answer, which must be OK at
/// position `user` (players log in one at a time, in order).
pub fn place_ticket(answer: &Value, user: u64) -> String {
    assert_eq!(answer["code"], 0, "login of {user}: {answer}");
    assert_eq!(answer["data"]["position"], user, "player {user}: {answer}");
    let ticket = answer["data"]["place_ticket"].as_str();
    let ticket = ticket.unwrap_or_else(|| panic!("player {user}: no place_ticket: {answer}"));
    ticket.to_string()
}

/// Admits everyone waiting in `queue`, three through the node at `first` (a non-owner:
/// forwarded) and then the rest through `then`; asserts they come in `expected`'s
/// order, each once.
pub fn admit_all_in_order(first: SocketAddr, then: SocketAddr, queue: &str, expected: &[u64]) {
    let mut admitted = admit(first, queue, 3);
    admitted.extend(admit(then, queue, 100));
    assert_eq!(admitted, expected, "admitted in the old relative order");
    let unique: std::collections::HashSet<u64> = admitted.iter().copied().collect();
    assert_eq!(unique.len(), admitted.len(), "nobody admitted twice");
}

/// The players a dead owner lost, `(user, ticket)`, log in again presenting their
/// tickets, in turn on the nodes at `players`: each gets a new ticket and its place back
/// (`resumed`), except `admitted` (admitted by the dead owner: at most the watermark,
/// never given back). Returns the ones given their place back, and `admitted`'s.
pub fn come_back_with_tickets(
    players: &[SocketAddr],
    queue: &str,
    lost: &[(u64, String)],
    admitted: u64,
) -> (Vec<(u64, Client)>, (u64, Client)) {
    let mut returned: Vec<(u64, Client)> = Vec::new();
    let mut again = None;
    for (n, (i, ticket)) in lost.iter().enumerate() {
        let via = players[n % players.len()];
        let (answer, c) = login_with_ticket(via, queue, *i, ticket);
        assert_eq!(answer["code"], 0, "player {i}: {answer}");
        assert!(answer["data"]["place_ticket"].is_string(), "{answer}");
        if *i == admitted {
            assert_eq!(
                answer["data"]["resumed"], false,
                "admitted player {i}: {answer}"
            );
            again = Some((*i, c));
        } else {
            assert_eq!(answer["data"]["resumed"], true, "player {i}: {answer}");
            returned.push((*i, c));
        }
    }
    (returned, again.expect("the admitted player came back"))
}

/// The end of a place-ticket failover: the `survivors` (kept their connections) and the
/// `returned` (came back with tickets) converge to their old relative order, `again`
/// (admitted by the dead owner, came back) last; then admission, three through
/// `first` and the rest through `then`, takes them in that order, each exactly once,
/// and each gets its `admitted` push.
pub fn converge_and_admit(
    mut survivors: Vec<(u64, Client)>,
    returned: Vec<(u64, Client)>,
    again: (u64, Client),
    (first, then): (SocketAddr, SocketAddr),
    queue: &str,
) {
    survivors.extend(returned);
    survivors.sort_by_key(|(i, _)| *i);
    let mut expected: Vec<u64> = survivors.iter().map(|(i, _)| *i).collect();
    expected.push(again.0);
    survivors.push(again);
    for (rank, (i, c)) in survivors.iter_mut().enumerate() {
        let rank = rank as u64 + 1;
        wait_until("a player's exact rank", || position(c, *i) == rank);
    }
    admit_all_in_order(first, then, queue, &expected);
    for (i, c) in survivors.iter_mut() {
        let push = c.next_cmd("admitted");
        assert!(push["data"]["token"].is_string(), "player {i}: {push}");
    }
}

/// A player who lost its connection: (user, place ticket).
pub type Ticketed = (u64, String);
/// A player waiting on its connection: (user, connection).
pub type Waiting = (u64, Client);

/// Splits `players` (user, connection, ticket; player `i` on node [`node_of`]`(i)`)
/// once node `dead` died: those on it lost their connection (dropped here) and keep
/// their ticket; the others keep their connection.
pub fn split_lost(
    players: Vec<(u64, Client, String)>,
    dead: usize,
) -> (Vec<Ticketed>, Vec<Waiting>) {
    let (lost, survivors): (Vec<_>, Vec<_>) = players
        .into_iter()
        .partition(|(i, _, _)| node_of(*i) == dead);
    let survivors = survivors.into_iter().map(|(i, c, _)| (i, c)).collect();
    let lost = lost
        .into_iter()
        .map(|(i, c, t)| {
            drop(c);
            (i, t)
        })
        .collect();
    (lost, survivors)
}

/// A cluster node for the place-ticket tests: shared test key, lease TTL 2 s, 20 ms
/// pushes, retry hints of 1 s, and a recovery window of `window_secs` (long enough for
/// returners to log in again on a loaded box; the tests never assert on time).
pub fn ticket_node(etcd_url: &str, id: &str, prefix: &str, window_secs: u64) -> TestServer {
    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
    start_node(|player, control, link| {
        format!(
            "[server]\npush_interval_ms = 20\nshutdown_retry_after_secs = 1\n\
             [tokens]\nkey = \"{KEY}\"\n\
             [cluster]\netcd = [\"{etcd_url}\"]\nnode_id = \"{id}\"\n\
             advertise_player = \"127.0.0.1:{player}\"\nadvertise_control = \"127.0.0.1:{control}\"\n\
             advertise_link = \"127.0.0.1:{link}\"\nlease_ttl_secs = 2\n\
             recovery_window_secs = {window_secs}\nprefix = \"{prefix}\"\n",
        )
    })
}
