//! Unit tests of the control port over real sockets, against a fake core this file
//! controls (its answers, its round clock, and whether it answers at all).

use super::routes::constant_time_eq;
use super::*;
use crate::config::{TokenAlg, TokenConfig};
use crate::msg::{AdmittedUser, QueueStats};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;

/// A running control thread with a fake core that records what it was asked.
struct Harness {
    /// Where the control port listens.
    addr: SocketAddr,
    /// Stops the control thread.
    stop: Arc<AtomicBool>,
    /// The control thread.
    control: Option<JoinHandle<()>>,
    /// The fake core thread, if any.
    core: Option<JoinHandle<()>>,
    /// To stop the fake core.
    core_tx: Sender<CoreMsg>,
    /// Requests the fake core received, in order.
    seen: Arc<Mutex<Vec<ControlReq>>>,
    /// The `/healthz` switch.
    draining: Arc<AtomicBool>,
    /// The signer the control thread verifies with.
    signer: Arc<TokenSigner>,
    /// While set, the fake core neither answers nor ends rounds (a wedged core).
    wedged: Arc<AtomicBool>,
    /// Set by the fake core once it has seen `wedged` and stopped.
    stuck: Arc<AtomicBool>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.wedged.store(false, Ordering::Release);
        let _ = self.core_tx.send(CoreMsg::Shutdown);
        self.control.take().unwrap().join().unwrap();
        if let Some(core) = self.core.take() {
            core.join().unwrap();
        }
    }
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn signer() -> Arc<TokenSigner> {
    let cfg = TokenConfig {
        alg: TokenAlg::EdDSA,
        key: String::new(),
        kid: String::new(),
        ttl_secs: 300,
        issuer: "queue-server".to_string(),
        login_addr: String::new(),
    };
    Arc::new(TokenSigner::from_config(&cfg).unwrap().0)
}

fn queue_stats(name: &str, waiting: u64) -> QueueStats {
    QueueStats {
        name: name.to_string(),
        waiting,
        waiting_priority: 1,
        admitted_total: 20,
        left_total: 3,
        admit_rate_per_s: 1.5,
        target_rate_per_s: 2.0,
        paused: name == "w-1",
        unused_tokens: 4,
        capacity: None,
    }
}

/// The fake core's canned answer; `None` drops the reply sender unanswered.
fn canned(
    req: &ControlReq,
    signer: &TokenSigner,
    used: &mut HashSet<String>,
) -> Option<ControlReply> {
    let queue = match req {
        ControlReq::Admit { queue, .. }
        | ControlReq::SetRate { queue, .. }
        | ControlReq::SetCapacity { queue, .. }
        | ControlReq::Pause { queue, .. } => queue.as_str(),
        _ => "",
    };
    match queue {
        "ghost" => return Some(ControlReply::UnknownQueue),
        "bad" => return Some(ControlReply::Invalid("capacity below online".into())),
        "silent" => return None,
        "confused" => return Some(ControlReply::Consumed(true)),
        _ => {}
    }
    Some(match req {
        ControlReq::Admit { queue, count } => ControlReply::Admitted(
            (0..(*count).min(3))
                .map(|i| AdmittedUser {
                    user: 100 + i,
                    token: signer.sign(100 + i, queue, &format!("jti-{i}"), now(), now() + 300),
                    expires_at: now() + 300,
                })
                .collect(),
        ),
        ControlReq::ConsumeJti { jti, .. } => ControlReply::Consumed(used.insert(jti.clone())),
        ControlReq::Stats => {
            ControlReply::Stats(vec![queue_stats("default", 12), queue_stats("w-1", 0)])
        }
        _ => ControlReply::Done,
    })
}

/// The fake core: answers with [`canned`] and ends a round every 10 ms, like the real
/// one, unless wedged.
struct FakeCore {
    /// Requests received, in order.
    seen: Arc<Mutex<Vec<ControlReq>>>,
    /// Signs the tokens of `admit` answers.
    signer: Arc<TokenSigner>,
    /// While set: no answer, no round.
    wedged: Arc<AtomicBool>,
    /// Whether it is stopped because of `wedged`.
    stuck: Arc<AtomicBool>,
    /// The round clock the control port reads.
    round_ms: Arc<AtomicU64>,
}

impl FakeCore {
    fn run(self, inbox: crossbeam_channel::Receiver<CoreMsg>) {
        let mut used = HashSet::new();
        loop {
            let wedged = self.wedged.load(Ordering::Acquire);
            self.stuck.store(wedged, Ordering::Release);
            if wedged {
                // Stuck: the inbox is not read, the round clock stands still.
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            self.round_ms
                .store(crate::queue::core::unix_ms(), Ordering::Relaxed);
            match inbox.recv_timeout(Duration::from_millis(10)) {
                Ok(CoreMsg::Control(req, reply)) => {
                    self.seen.lock().unwrap().push(req.clone());
                    if let Some(answer) = canned(&req, &self.signer, &mut used) {
                        let _ = reply.send(answer);
                    }
                }
                Ok(CoreMsg::Shutdown) => break,
                Ok(_) | Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
        }
    }
}

/// Starts the control thread; `with_core = false` leaves the core channel dead.
fn start(api_key: &str, with_core: bool) -> Harness {
    let signer = signer();
    let (core_tx, core_rx) = crossbeam_channel::bounded::<CoreMsg>(16);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let wedged = Arc::new(AtomicBool::new(false));
    let stuck = Arc::new(AtomicBool::new(false));
    let round_ms = Arc::new(AtomicU64::new(crate::queue::core::unix_ms()));
    let core = if with_core {
        let fake = FakeCore {
            seen: seen.clone(),
            signer: signer.clone(),
            wedged: wedged.clone(),
            stuck: stuck.clone(),
            round_ms: round_ms.clone(),
        };
        Some(std::thread::spawn(move || fake.run(core_rx)))
    } else {
        drop(core_rx);
        None
    };
    let loops: Vec<LoopStats> = (0..2).map(|_| LoopStats::default()).collect();
    LoopStats::add(&loops[0].connections, 3);
    LoopStats::add(&loops[1].connections, 4);
    let draining = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = ControlContext {
        core: core_tx.clone(),
        signer: signer.clone(),
        loops: Arc::new(loops),
        durability: None,
        draining: draining.clone(),
        api_key: api_key.to_string(),
        core_round_ms: round_ms,
        server_stats: Arc::default(),
        cluster: None,
    };
    let (addr, control) = spawn("127.0.0.1:0".parse().unwrap(), ctx, stop.clone()).unwrap();
    Harness {
        addr,
        stop,
        control: Some(control),
        core,
        core_tx,
        seen,
        draining,
        signer,
        wedged,
        stuck,
    }
}

impl Harness {
    /// Wedges the fake core and waits (bounded) until it has really stopped.
    fn wedge(&self) {
        self.wedged.store(true, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.stuck.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "fake core did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A response as seen by the test client.
struct Resp {
    /// Status code.
    status: u16,
    /// Headers, names lowercased.
    headers: HashMap<String, String>,
    /// Body text.
    body: String,
}

impl Resp {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One HTTP/1.1 exchange over a fresh TCP connection (`Connection: close`).
fn call(h: &Harness, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_string(),
    }
}

fn get(h: &Harness, path: &str) -> Resp {
    call(h, "GET", path, &[], b"")
}

fn post(h: &Harness, path: &str, body: &str) -> Resp {
    call(h, "POST", path, &[], body.as_bytes())
}

fn put(h: &Harness, path: &str, body: &str) -> Resp {
    call(h, "PUT", path, &[], body.as_bytes())
}

#[track_caller]
fn assert_error(r: &Resp, status: u16, text: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/json");
    // Always a Content-Length, never chunked: the length is known.
    assert_eq!(r.headers["content-length"], r.body.len().to_string());
    assert!(!r.headers.contains_key("transfer-encoding"));
    let error = r.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains(text), "`{error}` lacks `{text}`");
}

#[test]
fn healthz_flips_while_draining() {
    let h = start("", true);
    let r = get(&h, "/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let r = call(&h, "HEAD", "/healthz", &[], b"");
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    assert_eq!(r.headers["content-length"], "2");
    h.draining.store(true, Ordering::Release);
    let r = get(&h, "/healthz");
    assert_eq!((r.status, r.body.as_str()), (503, "draining"));
    h.draining.store(false, Ordering::Release);
    assert_eq!(get(&h, "/healthz").status, 200);
}

#[test]
fn stats_sums_loops_and_lists_queues() {
    let h = start("", true);
    let r = get(&h, "/v1/stats?pretty=no");
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    let v = r.json();
    assert_eq!(v["connections"], 7);
    assert_eq!(v["cores"], 2);
    let d = &v["queues"]["default"];
    assert_eq!(d["waiting"], 12);
    assert_eq!(d["admitted_total"], 20);
    assert_eq!(d["left_total"], 3);
    assert_eq!(d["admit_rate_per_s"], 1.5);
    assert_eq!(d["paused"], false);
    assert_eq!(v["queues"]["w-1"]["paused"], true);
    assert_eq!(h.seen.lock().unwrap().as_slice(), &[ControlReq::Stats]);
}

#[test]
fn metrics_render_loops_and_queues() {
    let h = start("", true);
    let r = get(&h, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], crate::metrics::CONTENT_TYPE);
    assert!(
        r.body.contains("queue_connections{core=\"1\"} 4\n"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("queue_waiting{queue=\"default\"} 12\n"),
        "{}",
        r.body
    );
    assert_eq!(
        r.body.contains("queue_server_allocations_total"),
        cfg!(feature = "count-alloc")
    );
    assert!(r.body.ends_with("# EOF\n"));
}

#[test]
fn keys_serve_the_jwks() {
    let h = start("", true);
    let r = get(&h, "/v1/keys");
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.body, h.signer.jwks_json());
    assert_eq!(r.json()["keys"][0]["kid"], h.signer.kid());
}

#[test]
fn admit_returns_tokens_that_verify() {
    let h = start("", true);
    let r = post(
        &h,
        "/v1/queues/default/admit",
        r#"{"count": 2, "extra": true}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let admitted = r.json()["admitted"].as_array().unwrap().clone();
    assert_eq!(admitted.len(), 2);
    assert_eq!(admitted[0]["user_id"], 100);
    assert!(admitted[0]["expires_at"].as_u64().unwrap() > now());
    let token = h
        .signer
        .verify(admitted[1]["token"].as_str().unwrap())
        .unwrap();
    assert_eq!((token.user, token.queue.as_str()), (101, "default"));
    assert_eq!(
        h.seen.lock().unwrap().as_slice(),
        &[ControlReq::Admit {
            queue: "default".into(),
            count: 2
        }]
    );
}

#[test]
fn queue_controls_reach_the_core() {
    let h = start("", true);
    for r in [
        put(&h, "/v1/queues/w-1/rate", r#"{"per_second": 2.5}"#),
        put(&h, "/v1/queues/w-1/rate", r#"{"per_second": 0}"#),
        put(
            &h,
            "/v1/queues/w-1/capacity",
            r#"{"online": 10, "capacity": 100}"#,
        ),
        post(&h, "/v1/queues/w-1/pause", ""),
        post(&h, "/v1/queues/w-1/resume", ""),
    ] {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["ok"], true);
    }
    let q = || "w-1".to_string();
    assert_eq!(
        h.seen.lock().unwrap().as_slice(),
        &[
            ControlReq::SetRate {
                queue: q(),
                per_second: 2.5
            },
            ControlReq::SetRate {
                queue: q(),
                per_second: 0.0
            },
            ControlReq::SetCapacity {
                queue: q(),
                online: 10,
                capacity: 100
            },
            ControlReq::Pause {
                queue: q(),
                paused: true
            },
            ControlReq::Pause {
                queue: q(),
                paused: false
            },
        ]
    );
}

#[test]
fn core_answers_map_to_statuses() {
    let h = start("", true);
    assert_error(
        &post(&h, "/v1/queues/ghost/admit", r#"{"count":1}"#),
        404,
        "unknown queue",
    );
    assert_error(
        &post(&h, "/v1/queues/ghost/pause", ""),
        404,
        "unknown queue",
    );
    assert_error(
        &put(
            &h,
            "/v1/queues/bad/capacity",
            r#"{"online":5,"capacity":1}"#,
        ),
        400,
        "capacity below online",
    );
    assert_error(
        &post(&h, "/v1/queues/silent/admit", r#"{"count":1}"#),
        503,
        "core unavailable",
    );
    assert_error(
        &post(&h, "/v1/queues/confused/pause", ""),
        500,
        "unexpected",
    );
    // A name that cannot be a queue never reaches the core.
    let before = h.seen.lock().unwrap().len();
    assert_error(
        &post(&h, "/v1/queues/a%20b/admit", r#"{"count":1}"#),
        404,
        "unknown queue",
    );
    assert_error(
        &post(&h, "/v1/queues//admit", r#"{"count":1}"#),
        404,
        "unknown queue",
    );
    assert_eq!(h.seen.lock().unwrap().len(), before);
}

#[test]
fn bad_requests_are_refused_before_the_core() {
    let h = start("", true);
    let admit = "/v1/queues/default/admit";
    assert_error(&post(&h, admit, ""), 400, "invalid JSON");
    assert_error(&post(&h, admit, "{"), 400, "invalid JSON");
    assert_error(&post(&h, admit, "[1]"), 400, "invalid JSON");
    assert_error(&post(&h, admit, r#"{"cnt":1}"#), 400, "count");
    assert_error(&post(&h, admit, r#"{"count":"3"}"#), 400, "invalid JSON");
    assert_error(&post(&h, admit, r#"{"count":-1}"#), 400, "count must be");
    let rate = "/v1/queues/default/rate";
    assert_error(&put(&h, rate, r#"{"per_second":-1}"#), 400, "per_second");
    assert_error(&put(&h, rate, r#"{"per_second":NaN}"#), 400, "");
    assert_error(&put(&h, rate, r#"{"per_second":1e999}"#), 400, "");
    assert_error(
        &put(&h, "/v1/queues/default/capacity", r#"{"online":1}"#),
        400,
        "capacity",
    );
    assert_error(
        &post(&h, "/v1/tokens/verify", r#"{"token":5}"#),
        400,
        "invalid JSON",
    );
    // Over 64 KiB: refused whether the length is declared or streamed in chunks.
    let big = format!(r#"{{"count":1,"pad":"{}"}}"#, "x".repeat(BODY_BYTES_MAX));
    assert_error(&post(&h, admit, &big), 413, "65536");
    let mut chunked = format!("{:x}\r\n", big.len()).into_bytes();
    chunked.extend_from_slice(big.as_bytes());
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let r = call(
        &h,
        "POST",
        admit,
        &[("Transfer-Encoding", "chunked")],
        &chunked,
    );
    assert_error(&r, 413, "65536");
    let r = call(&h, "GET", "/healthz", &[], big.as_bytes());
    assert_error(&r, 413, "65536");
    // Just under the limit is fine.
    let fits = format!(
        r#"{{"count":1,"pad":"{}"}}"#,
        "x".repeat(BODY_BYTES_MAX - 30)
    );
    assert_eq!(post(&h, admit, &fits).status, 200);
    assert_eq!(
        h.seen.lock().unwrap().as_slice(),
        &[ControlReq::Admit {
            queue: "default".into(),
            count: 1
        }]
    );
}

#[test]
fn unknown_routes_and_wrong_methods() {
    let h = start("", true);
    // `/` is the dashboard now (issue 10); any other unknown path is still 404.
    assert_error(&get(&h, "/nope"), 404, "not found");
    assert_error(&get(&h, "/v1/stats/"), 404, "not found");
    assert_error(&get(&h, "/v1/queues/default/kick"), 404, "not found");
    assert_error(&get(&h, "/v2/stats"), 404, "not found");
    let r = get(&h, "/v1/queues/default/admit");
    assert_error(&r, 405, "method");
    assert_eq!(r.headers["allow"], "POST");
    let r = post(&h, "/v1/queues/default/rate", r#"{"per_second":1}"#);
    assert_error(&r, 405, "method");
    assert_eq!(r.headers["allow"], "PUT");
    let r = call(&h, "DELETE", "/healthz", &[], b"");
    assert_error(&r, 405, "method");
    assert_eq!(r.headers["allow"], "GET, HEAD");
    assert_error(&get(&h, "/v1/tokens/verify"), 405, "method");
    assert!(h.seen.lock().unwrap().is_empty());
}

#[test]
fn verify_consumes_the_jti_once() {
    let h = start("", true);
    let token = h.signer.sign(77, "world-1", "jti-77", now(), now() + 300);
    let body = format!(r#"{{"token":"{token}"}}"#);
    let r = post(&h, "/v1/tokens/verify", &body);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["valid"], true);
    assert_eq!(v["user_id"], 77);
    assert_eq!(v["queue"], "world-1");
    let v = post(&h, "/v1/tokens/verify", &body).json();
    assert_eq!(v["valid"], false);
    assert_eq!(v["reason"], "already_used");
    assert!(v.get("user_id").is_none());
    let consume = ControlReq::ConsumeJti {
        jti: "jti-77".into(),
        exp: h.signer.verify(&token).unwrap().exp,
    };
    assert_eq!(
        h.seen.lock().unwrap().as_slice(),
        &[consume.clone(), consume]
    );
    // Bad tokens never reach the core.
    let expired = h.signer.sign(1, "q", "jti-old", now() - 900, now() - 600);
    for (tok, reason) in [("garbage", "malformed"), (expired.as_str(), "expired")] {
        let r = post(&h, "/v1/tokens/verify", &format!(r#"{{"token":"{tok}"}}"#));
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["valid"], false);
        assert_eq!(r.json()["reason"], reason);
    }
    assert_eq!(h.seen.lock().unwrap().len(), 2);
}

#[test]
fn bearer_key_guards_v1_except_keys() {
    let h = start("s3cret-key", true);
    let auth = [("Authorization", "Bearer s3cret-key")];
    for r in [
        get(&h, "/v1/stats"),
        call(
            &h,
            "GET",
            "/v1/stats",
            &[("Authorization", "Bearer s3cret-kex")],
            b"",
        ),
        call(
            &h,
            "GET",
            "/v1/stats",
            &[("Authorization", "Bearer s3cret-key-and-more")],
            b"",
        ),
        call(
            &h,
            "GET",
            "/v1/stats",
            &[("Authorization", "Basic s3cret-key")],
            b"",
        ),
        call(
            &h,
            "GET",
            "/v1/stats",
            &[("Authorization", "s3cret-key")],
            b"",
        ),
        post(&h, "/v1/queues/default/admit", r#"{"count":1}"#),
        post(&h, "/v1/tokens/verify", r#"{"token":"x"}"#),
        post(&h, "/v1/keys", ""),
        get(&h, "/v1/nothing-here"),
    ] {
        assert_error(&r, 401, "bearer");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
    }
    assert!(h.seen.lock().unwrap().is_empty());
    assert_eq!(call(&h, "GET", "/v1/stats", &auth, b"").status, 200);
    let lower = [("authorization", "bearer s3cret-key")];
    assert_eq!(call(&h, "GET", "/v1/stats", &lower, b"").status, 200);
    let r = call(
        &h,
        "POST",
        "/v1/queues/default/admit",
        &auth,
        br#"{"count":1}"#,
    );
    assert_eq!(r.status, 200);
    assert_error(&call(&h, "POST", "/v1/keys", &auth, b""), 405, "method");
    // Public without the key: the JWKS, health and metrics.
    assert_eq!(get(&h, "/v1/keys").status, 200);
    assert_eq!(get(&h, "/healthz").status, 200);
    assert_eq!(get(&h, "/metrics").status, 200);
}

#[test]
fn no_key_means_no_auth() {
    let h = start("", true);
    let r = call(
        &h,
        "GET",
        "/v1/stats",
        &[("Authorization", "Bearer whatever")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(get(&h, "/v1/stats").status, 200);
}

#[test]
fn dead_core_gives_503() {
    let h = start("", false);
    assert_error(&get(&h, "/v1/stats"), 503, "core unavailable");
    assert_error(&get(&h, "/metrics"), 503, "core unavailable");
    assert_error(
        &post(&h, "/v1/queues/default/admit", r#"{"count":1}"#),
        503,
        "core",
    );
    let token = h.signer.sign(1, "q", "j", now(), now() + 60);
    let r = post(
        &h,
        "/v1/tokens/verify",
        &format!(r#"{{"token":"{token}"}}"#),
    );
    assert_error(&r, 503, "core unavailable");
    // What needs no core still works.
    assert_eq!(get(&h, "/healthz").status, 200);
    assert_eq!(get(&h, "/v1/keys").status, 200);
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let h = start("", true);
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /v1/keys HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert_eq!(raw.matches("HTTP/1.1 200").count(), 2, "{raw}");
    assert!(raw.contains(&h.signer.jwks_json()));
}

/// An accept error (no descriptor left) must not end the accept loop: the port serves
/// again once descriptors are back. Runs itself in a child process, because it lowers
/// the process's fd limit.
#[test]
fn port_comes_back_after_accept_error() {
    const CHILD: &str = "QUEUE_SERVER_TEST_REBIND_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "control::tests::port_comes_back_after_accept_error",
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
        assert!(stdout.contains("1 passed"), "{stdout}");
        assert!(stderr.contains("accept failed"), "{stderr}");
        return;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .init();
    let h = start("", true);
    // Use up every free descriptor number below the highest one in use, then allow
    // exactly one more: the client socket gets it and the server's accept() fails.
    use std::os::fd::AsRawFd;
    let max_in_use = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    let mut fillers = Vec::new();
    loop {
        let f = std::fs::File::open("/dev/null").unwrap();
        let fd = f.as_raw_fd() as u64;
        fillers.push(f);
        if fd > max_in_use {
            break;
        }
    }
    let highest = fillers.last().unwrap().as_raw_fd() as u64;
    let mut saved = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut saved) },
        0
    );
    let low = libc::rlimit {
        rlim_cur: highest + 2,
        rlim_max: saved.rlim_max,
    };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
    let mut client = TcpStream::connect(h.addr).unwrap();
    client
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    // No descriptor is left for the server's accept: the connection waits in the
    // backlog, unanswered, while the accept loop logs the error and retries.
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = client.read(&mut byte);
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &saved) }, 0);
    drop(fillers);
    assert!(
        early.as_ref().is_err_and(|e| matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
        "the server answered with no descriptor to spare: {early:?}"
    );
    // With descriptors back, a retried accept takes the waiting connection.
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut raw = String::new();
    client.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert_eq!(get(&h, "/healthz").status, 200);
}

#[test]
fn constant_time_eq_compares() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
    assert!(constant_time_eq(b"", b""));
}

/// Polls `path` until it answers `status`, within 15 s.
#[track_caller]
fn wait_for_status(h: &Harness, path: &str, status: u16) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = get(h, path);
        if r.status == status {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{path} stayed {}: {}",
            r.status,
            r.body
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn readyz_follows_the_core_round_clock() {
    let h = start("", true);
    let r = wait_for_status(&h, "/readyz", 200);
    assert_eq!(r.body, "ready");
    assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(call(&h, "HEAD", "/readyz", &[], b"").status, 200);
    h.wedge();
    let r = wait_for_status(&h, "/readyz", 503);
    assert!(r.body.contains("core stalled"), "{}", r.body);
    // Liveness and what needs no core still answer.
    assert_eq!(get(&h, "/healthz").status, 200);
    assert_eq!(get(&h, "/v1/keys").status, 200);
    h.wedged.store(false, Ordering::Release);
    assert_eq!(wait_for_status(&h, "/readyz", 200).body, "ready");
    h.draining.store(true, Ordering::Release);
    let r = get(&h, "/readyz");
    assert_eq!((r.status, r.body.as_str()), (503, "not ready: draining"));
}

#[test]
fn wedged_core_gives_503_and_stalls_nobody_else() {
    let h = start("", true);
    h.wedge();
    // More core calls at once than the blocking pool has threads, and than the fake
    // core's inbox holds: each ends in 503, none blocks the port.
    let addr = h.addr;
    let calls: Vec<_> = (0..CORE_CALLS_MAX + 12)
        .map(|i| {
            std::thread::spawn(move || {
                let path = if i % 2 == 0 { "/v1/stats" } else { "/metrics" };
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
                s.write_all(req.as_bytes()).unwrap();
                let mut raw = String::new();
                s.read_to_string(&mut raw).unwrap();
                raw
            })
        })
        .collect();
    for _ in 0..5 {
        let mut s = TcpStream::connect(h.addr).unwrap();
        // Well under CORE_REPLY_TIMEOUT: these must not queue behind the core calls.
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    }
    for call in calls {
        let raw = call.join().unwrap();
        assert!(raw.starts_with("HTTP/1.1 503"), "{raw}");
        assert!(raw.contains("core unavailable"), "{raw}");
    }
    h.wedged.store(false, Ordering::Release);
    assert_eq!(get(&h, "/v1/stats").status, 200);
}

#[test]
fn body_bounds_match_their_constants() {
    use crate::queue::core::ADMIT_MAX;
    use crate::queue::pacing::{CAPACITY_MAX, RATE_MAX_PER_S};
    use body::{parse_body, BodyError, BodyKind, ControlBody};
    let range = |kind, body: String| match parse_body(kind, body.as_bytes()) {
        Err(BodyError::OutOfRange { field, range }) => Some((field, range)),
        _ => None,
    };
    let admit = |n: u64| format!(r#"{{"count":{n}}}"#);
    assert!(parse_body(BodyKind::Admit, admit(ADMIT_MAX).as_bytes()).is_ok());
    let (_, words) = range(BodyKind::Admit, admit(ADMIT_MAX + 1)).unwrap();
    assert!(words.ends_with(&format!(" {ADMIT_MAX}")), "{words}");
    let rate = |r: f64| format!(r#"{{"per_second":{r}}}"#);
    assert!(parse_body(BodyKind::Rate, rate(RATE_MAX_PER_S).as_bytes()).is_ok());
    let (_, words) = range(BodyKind::Rate, rate(RATE_MAX_PER_S * 1.5)).unwrap();
    assert!(words.ends_with(&format!(" {RATE_MAX_PER_S}")), "{words}");
    let cap = |c: u64| format!(r#"{{"online":0,"capacity":{c}}}"#);
    assert!(parse_body(BodyKind::Capacity, cap(CAPACITY_MAX).as_bytes()).is_ok());
    let (field, words) = range(BodyKind::Capacity, cap(CAPACITY_MAX + 1)).unwrap();
    assert_eq!(field, "capacity");
    assert!(words.ends_with(&format!(" {CAPACITY_MAX}")), "{words}");
    assert_eq!(
        parse_body(BodyKind::Rate, br#"{"per_second":-0.0}"#),
        Ok(ControlBody::Rate { per_second: 0.0 })
    );
    let deep = format!(
        r#"{{"token":"t","x":{}{}}}"#,
        "[".repeat(17),
        "]".repeat(17)
    );
    assert_eq!(
        parse_body(BodyKind::Verify, deep.as_bytes()),
        Err(BodyError::TooDeep)
    );
    let big = vec![b' '; BODY_BYTES_MAX + 1];
    assert_eq!(parse_body(BodyKind::Admit, &big), Err(BodyError::TooLarge));
}

/// Sends `head` (and nothing more) and reads the answer, which must come within 3 s:
/// well under the header and request deadlines, so it was not waiting for the body.
fn answer_without_body(h: &Harness, head: &str) -> String {
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&raw).to_string()
}

#[test]
fn refusals_come_before_the_body_is_read() {
    let h = start("s3cret-key", true);
    let raw = answer_without_body(
        &h,
        "POST /v1/queues/default/admit HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n",
    );
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    assert!(raw.contains("www-authenticate: Bearer"), "{raw}");
    let raw = answer_without_body(
        &h,
        "POST /v1/queues/default/admit HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer s3cret-key\r\nContent-Length: 70000\r\n\r\n",
    );
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    // Headers over the connection's buffer are refused too.
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(20 * 1024)
    );
    let raw = answer_without_body(&h, &head);
    assert!(raw.starts_with("HTTP/1.1 431"), "{raw}");
    assert_eq!(get(&h, "/healthz").status, 200);
    assert!(h.seen.lock().unwrap().is_empty());
}
