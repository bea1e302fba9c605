//! The operator's endpoints of issue 10 over real sockets: the dashboard page, the
//! `/v1/events` stream (content, freshness, the stream cap, the key, the shutdown),
//! the additive `/v1/stats` fields, and the new `/metrics` families fed by real players;
//! on clustered nodes (a real etcd, `etcd_support`), the `cluster` section the
//! dashboard shows (members, owners, the recovery hold, the node links).

mod common;
mod etcd_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{http, http_text, WAIT};
use serde_json::{json, Value};

/// An open `/v1/events` stream.
struct Events {
    /// The connection.
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    buf: String,
    /// The status line and headers.
    head: String,
}

impl Events {
    /// Opens a stream, with the bearer key when given; returns it with its status.
    fn open(addr: SocketAddr, key: Option<&str>) -> (u16, Events) {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
        let req = format!("GET /v1/events HTTP/1.1\r\nHost: t\r\n{auth}\r\n");
        stream.write_all(req.as_bytes()).unwrap();
        let mut events = Events {
            stream,
            buf: String::new(),
            head: String::new(),
        };
        while !events.buf.contains("\r\n\r\n") {
            assert!(events.fill(), "stream closed before its headers");
        }
        let (head, rest) = events.buf.split_once("\r\n\r\n").unwrap();
        let (head, rest) = (head.to_string(), rest.to_string());
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        events.head = head.to_ascii_lowercase();
        events.buf = rest;
        (status, events)
    }

    /// Reads more; false at the end of the stream.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let read = loop {
            match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match read {
            Ok(0) => false,
            Ok(n) => {
                self.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
                true
            }
            Err(e) => panic!("event stream read failed (timeout?): {e}"),
        }
    }

    /// The next event as (name, data); None at the end of the stream. Each event is
    /// one chunk of the chunked body, so chunk-size lines fall between events only.
    fn next(&mut self) -> Option<(String, String)> {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf[..i].to_string();
                self.buf.drain(..i + 2);
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if !data.is_empty() || name != "message" {
                    return Some((name, data));
                }
                continue;
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// Snapshots until one satisfies `pred` (within [`WAIT`]).
    fn until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (name, data) = self.next().expect("stream open");
            if name == "snapshot" {
                let v: Value = serde_json::from_str(&data).expect("snapshot is JSON");
                if pred(&v) {
                    return v;
                }
            }
            assert!(Instant::now() < deadline, "no snapshot with {what}");
        }
    }
}

/// The value of the exposition line starting with `prefix` (`name{labels}`).
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn dashboard_page_is_one_self_contained_public_page() {
    let server = common::start("[control]\napi_key = \"k-1\"\n");
    for path in ["/", "/dashboard"] {
        let (status, page) = http_text(server.control, "GET", path, None, None);
        assert_eq!(status, 200, "{path} is public: it holds code, no data");
        assert!(page.starts_with("<!doctype html>"), "{path}: {page:.80}");
        // Offline: nothing is loaded from elsewhere.
        for outside in ["http://", "https://", "src=", "<link"] {
            assert!(!page.contains(outside), "{path} references `{outside}`");
        }
        assert!(page.contains("/v1/events") && page.contains("Authorization"));
    }
    let (status, _) = http(server.control, "POST", "/", None, None);
    assert_eq!(status, 405);
}

#[test]
fn stats_keeps_the_contract_fields_and_adds_figures_and_history() {
    let server = common::start("");
    let (_a, _) = server.player(1);
    let (_b, _) = server.player(2);
    let (status, body) = server.http(
        "PUT",
        "/v1/queues/default/capacity",
        // Full: no room, so no tick can admit the two players before the stats call.
        Some(json!({"online": 70, "capacity": 70})),
    );
    assert_eq!(status, 200, "{body}");
    let (status, s) = server.http("GET", "/v1/stats", None);
    assert_eq!(status, 200);
    let q = &s["queues"]["default"];
    // The contract's fields, unchanged.
    assert_eq!(q["waiting"], 2);
    assert_eq!(q["admitted_total"], 0);
    assert_eq!(q["left_total"], 0);
    assert!(q["admit_rate_per_s"].is_f64());
    assert_eq!(q["paused"], false);
    assert_eq!(s["connections"], 2);
    assert_eq!(s["cores"], 1);
    // Additions.
    assert_eq!(q["waiting_normal"], 2);
    assert_eq!(q["waiting_priority"], 0);
    assert_eq!(
        (q["online"].clone(), q["capacity"].clone()),
        (json!(70), json!(70))
    );
    assert!(q["eta_last_secs"].is_null(), "no rate measured yet: {q}");
    assert!(q["history"].is_array(), "{q}");
    assert!(s["history"].is_array(), "{s}");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["durability"], "off");
    assert_eq!(s["draining"], false);
    assert_eq!(s["loops"][0]["connections"], 2);
    assert_eq!(s["loops"][0]["logins"], 2);
}

#[test]
fn events_stream_snapshots_that_follow_changes() {
    let server = common::start("");
    let (status, mut events) = Events::open(server.control, None);
    assert_eq!(status, 200);
    assert!(
        events.head.contains("content-type: text/event-stream"),
        "{}",
        events.head
    );
    assert!(events.head.contains("connection: close"), "{}", events.head);
    let first = events.until("the queue", |v| v["queues"]["default"].is_object());
    assert_eq!(first["queues"]["default"]["waiting"], 0);
    assert!(
        first.get("cluster").is_none(),
        "one node has no cluster: {first}"
    );
    assert!(first["recent"].is_array() && first["history"].is_array());
    let (_p, _) = server.player(9);
    let (status, _) = server.http("POST", "/v1/queues/default/pause", None);
    assert_eq!(status, 200);
    let v = events.until("the login and the pause", |v| {
        v["queues"]["default"]["waiting"] == 1 && v["queues"]["default"]["paused"] == true
    });
    assert_eq!(v["connections"], 1);
    // Loops carry rates once two snapshots were taken.
    let v = events.until("loop rates", |v| v["loops"][0]["logins_per_s"].is_f64());
    assert!(v["loops"][0]["frames_in_per_s"].is_f64(), "{v}");
    assert!(v["recent"].as_array().is_some_and(|r| !r.is_empty()), "{v}");
}

#[test]
fn events_need_the_key_in_the_header_never_in_the_url() {
    let server = common::start("[control]\napi_key = \"k-2\"\n");
    let (status, _) = Events::open(server.control, None);
    assert_eq!(status, 401);
    let (status, _) = http(server.control, "GET", "/v1/events?key=k-2", None, None);
    assert_eq!(status, 401, "a key in the URL is not accepted");
    let (status, _) = http(server.control, "GET", "/v1/stats", None, None);
    assert_eq!(status, 401);
    let (status, mut events) = Events::open(server.control, Some("k-2"));
    assert_eq!(status, 200);
    events.until("a snapshot", |v| v["queues"]["default"].is_object());
}

#[test]
fn event_streams_are_capped_and_a_closed_one_frees_its_slot() {
    let server = common::start("");
    let mut open: Vec<Events> = (0..16)
        .map(|i| {
            let (status, e) = Events::open(server.control, None);
            assert_eq!(status, 200, "stream {i}");
            e
        })
        .collect();
    let (status, body) = http(server.control, "GET", "/v1/events", None, None);
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("too many event streams"));
    // Other calls still work meanwhile.
    assert_eq!(server.http("GET", "/v1/stats", None).0, 200);
    drop(open.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, mut e) = Events::open(server.control, None);
        if status == 200 {
            e.until("a snapshot", |v| v["queues"].is_object());
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_open_stream_ends_when_the_server_stops() {
    let mut server = common::start("");
    let (_, mut events) = Events::open(server.control, None);
    events.until("a snapshot", |v| v["queues"].is_object());
    server.handle.take().unwrap().shutdown();
    // The stream ends (EOF), it is not cut by the read timeout.
    while events.next().is_some() {}
}

#[test]
fn metrics_export_histograms_kicks_errors_process_and_build_info() {
    let dir = std::env::temp_dir().join(format!("qs-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = common::start(&format!(
        "[durability]\ndir = \"{}\"\nfsync = \"always\"\n",
        dir.display()
    ));
    let (mut first, _) = server.player(1);
    let (_second, _) = server.player(1); // duplicate login: the first is kicked
    let kicked = first.next_cmd("kicked");
    assert_eq!(kicked["data"]["reason"], "duplicate_login");
    let mut bad = server.client();
    bad.send_body(b"not json");
    bad.expect_closed();
    let (_third, _) = server.player(3);

    let deadline = Instant::now() + WAIT;
    let text = loop {
        let (status, text) = http_text(server.control, "GET", "/metrics", None, None);
        assert_eq!(status, 200);
        let ready = metric(&text, "queue_kicks_total{reason=\"duplicate_login\"}") == Some(1.0)
            && metric(&text, "queue_errors_by_code_total{code=\"BAD_FRAME\"}") == Some(1.0)
            && metric(&text, "queue_login_answer_seconds_count") == Some(3.0);
        if ready {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never caught up:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    for family in [
        "# TYPE queue_core_round_seconds histogram",
        "# TYPE queue_wal_fsync_seconds histogram",
        "# TYPE queue_login_answer_seconds histogram",
        "# TYPE queue_core_inbox_depth gauge",
        "# TYPE queue_kicks counter",
        "# TYPE queue_errors_by_code counter",
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE process_open_fds gauge",
        "# TYPE process_max_fds gauge",
        "# TYPE process_cpu_seconds counter",
        "# TYPE process_start_time_seconds gauge",
        "# TYPE queue_build_info gauge",
    ] {
        assert!(text.contains(family), "missing `{family}` in:\n{text}");
    }
    assert!(metric(&text, "queue_core_round_seconds_count").unwrap() > 0.0);
    assert!(metric(&text, "queue_wal_fsync_seconds_count").unwrap() > 0.0);
    assert!(metric(&text, "queue_login_answer_seconds_bucket{le=\"+Inf\"}") == Some(3.0));
    assert!(metric(&text, "process_resident_memory_bytes").unwrap() > 1e6);
    assert!(metric(&text, "process_open_fds").unwrap() >= 3.0);
    let build = format!(
        "queue_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(metric(&text, &build), Some(1.0));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The token key every node of the test cluster shares (32-byte seed, base64url).
const CLUSTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// A cluster node `id` on `etcd` (TTL 2 s: a takeover within a couple of seconds).
fn cluster_node(etcd: &etcd_support::Etcd, id: &str) -> common::TestServer {
    common::start_node(|player, control, link| {
        format!(
            "[tokens]\nkey = \"{CLUSTER_KEY}\"\n\
             [cluster]\netcd = [\"{}\"]\nnode_id = \"{id}\"\n\
             advertise_player = \"127.0.0.1:{player}\"\nadvertise_control = \"127.0.0.1:{control}\"\n\
             advertise_link = \"127.0.0.1:{link}\"\nlease_ttl_secs = 2\nprefix = \"/qs-dash\"\n",
            etcd.url,
        )
    })
}

/// `/v1/stats` `cluster` of `node`.
fn cluster_stats(node: &common::TestServer) -> Value {
    let (status, s) = node.http("GET", "/v1/stats", None);
    assert_eq!(status, 200, "{s}");
    s["cluster"].clone()
}

/// Polls `/v1/stats` `cluster` of `node` until `pred` holds (a cluster settles within
/// a few ticks; 2 x [`WAIT`] on a loaded box).
fn wait_cluster(node: &common::TestServer, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + 2 * WAIT;
    loop {
        let c = cluster_stats(node);
        if pred(&c) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {c}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The link of `cluster` with `peer` on `side`, if listed.
fn link<'a>(cluster: &'a Value, peer: &str, side: &str) -> Option<&'a Value> {
    cluster["links"]
        .as_array()?
        .iter()
        .find(|l| l["peer"] == peer && l["side"] == side)
}

#[test]
fn a_clustered_nodes_dashboard_data_carries_the_cluster() {
    let etcd = etcd_support::Etcd::start();
    let nodes = [cluster_node(&etcd, "dash-1"), cluster_node(&etcd, "dash-2")];
    let ids = ["dash-1", "dash-2"];
    let settled = |c: &Value| {
        c["members"].as_array().is_some_and(|m| m.len() == 2)
            && c["queues"]["default"]["owner"].is_string()
    };
    let owner_id = wait_cluster(&nodes[0], "two members and an owner", settled)["queues"]
        ["default"]["owner"]
        .as_str()
        .unwrap()
        .to_string();
    let owner = ids.iter().position(|i| *i == owner_id).unwrap();
    let edge = 1 - owner;
    wait_cluster(&nodes[edge], "the edge's view of the owner", |c| {
        settled(c) && c["queues"]["default"]["owner"] == owner_id.as_str()
    });

    // A player on the edge node waits at the owner, over the node link.
    let deadline = Instant::now() + 2 * WAIT;
    let _player = loop {
        let mut c = nodes[edge].client();
        let answer = c.login(7);
        if answer["code"] == 0 {
            break c;
        }
        // 9: the edge's router has not listed the owner yet; retry.
        assert_eq!(answer["code"], 9, "{answer}");
        assert!(Instant::now() < deadline, "login never routed: {answer}");
        std::thread::sleep(Duration::from_millis(50));
    };

    // The dashboard's data on the edge: this node, the members, the owner, the link.
    let (status, mut events) = Events::open(nodes[edge].control, None);
    assert_eq!(status, 200);
    let snap = events.until("the edge's link to the owner", |v| {
        link(&v["cluster"], &owner_id, "edge")
            .is_some_and(|l| l["connected"] == 1 && l["frames_sent_total"].as_u64() >= Some(1))
    });
    let c = &snap["cluster"];
    assert_eq!(c["node_id"], ids[edge]);
    assert_eq!(c["fenced"], false);
    assert!(c["config_mismatch"].is_null(), "{c}");
    let members: Vec<&str> = c["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(members, ids, "{c}");
    for m in c["members"].as_array().unwrap() {
        assert!(
            m["advertise_player"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:"),
            "{m}"
        );
        assert!(
            m["advertise_control"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:"),
            "{m}"
        );
        assert!(m["started_at_unix_ms"].as_u64().unwrap() > 0, "{m}");
    }
    let q = &c["queues"]["default"];
    assert_eq!(q["owner"], owner_id.as_str());
    assert!(q["epoch"].as_u64().unwrap() > 0, "{q}");
    assert_eq!(
        (q["owned_here"].clone(), q["may_admit"].clone()),
        (json!(false), json!(false))
    );
    assert!(q["recovery_left_ms"].is_null(), "no hold on an edge: {q}");
    // The link's figures are /metrics' (read after: counters only grow).
    let l = link(c, &owner_id, "edge").unwrap().clone();
    let (_, text) = http_text(nodes[edge].control, "GET", "/metrics", None, None);
    let labels = format!("{{peer=\"{owner_id}\",side=\"edge\"}}");
    for (field, family) in [
        ("frames_sent_total", "queue_cluster_link_frames_sent_total"),
        (
            "frames_received_total",
            "queue_cluster_link_frames_received_total",
        ),
        ("bytes_sent_total", "queue_cluster_link_bytes_sent_total"),
        (
            "bytes_received_total",
            "queue_cluster_link_bytes_received_total",
        ),
        (
            "messages_relayed_total",
            "queue_cluster_link_messages_relayed_total",
        ),
        ("reconnects_total", "queue_cluster_link_reconnects_total"),
        ("resubmitted_total", "queue_cluster_link_resubmitted_total"),
    ] {
        let scraped = metric(&text, &format!("{family}{labels}"))
            .unwrap_or_else(|| panic!("no {family}{labels} in:\n{text}"));
        let shown = l[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} in {l}"));
        assert!(
            shown as f64 <= scraped,
            "{field}: {shown} > /metrics {scraped}"
        );
    }
    assert_eq!(
        metric(&text, &format!("queue_cluster_link_connected{labels}")),
        Some(1.0)
    );
    // The owner lists the same link from its side.
    wait_cluster(&nodes[owner], "the owner's side of the link", |c| {
        link(c, ids[edge], "owner").is_some_and(|l| l["connected"] == 1)
    });

    // The owner stops: the edge takes the queue over and holds admission (recovery).
    let [a, b] = nodes;
    let (survivor, stopped) = if edge == 0 { (a, b) } else { (b, a) };
    drop(stopped);
    let c = wait_cluster(&survivor, "the takeover", |c| {
        c["queues"]["default"]["owner"] == ids[edge] && c["queues"]["default"]["may_admit"] == true
    });
    let left = c["queues"]["default"]["recovery_left_ms"].as_u64();
    assert!(
        left.is_some_and(|ms| ms > 0 && ms <= 30_000),
        "recovery hold: {c}"
    );
    let snap = events.until("the hold in the dashboard's data", |v| {
        v["cluster"]["queues"]["default"]["recovery_left_ms"].as_u64() > Some(0)
    });
    assert_eq!(
        snap["cluster"]["members"].as_array().map(Vec::len),
        Some(1),
        "{snap}"
    );
}
