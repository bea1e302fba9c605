//! The dashboard in a real browser: a server in-process with players logged in over
//! real sockets, headless Chromium driven over the W3C WebDriver HTTP API (through
//! `chromedriver`, with the small client below), checks that the numbers the page
//! shows are those of `/v1/stats`, that its buttons act on the queue, that it asks for
//! the API key when one is set, and takes a screenshot (`docs/dashboard.png`, the
//! README's, when `QUEUE_UPDATE_SCREENSHOT=1`); then one page load of a clustered node
//! (a real etcd, `etcd_support`) shows its cluster panel: this node, the members, the
//! owner of `default` (a single node's page has no panel).
//!
//! Needs `chromedriver` and `chromium` on PATH (Debian packages `chromium-driver` and
//! `chromium`; `.ci/run` installs them): without them this test fails, it never skips.

mod common;
mod etcd_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{http, TestServer};
use serde_json::{json, Value};

/// Longest wait for the page to show something.
const PAGE_WAIT: Duration = Duration::from_secs(10);
/// The API key of the second server.
const KEY: &str = "dashboard-test-key-7f3a";

/// `name` on PATH, or a failure saying what to install.
fn on_path(names: &[&str], package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "{} not found on PATH: the dashboard browser test needs it; install the Debian \
         package `{package}` (apt-get install chromium chromium-driver; .ci/run does)",
        names[0]
    );
}

/// One HTTP/1.1 request to chromedriver: it keeps connections open whatever the
/// request says, so the answer is read by its `Content-Length`, not to the end.
fn wd_http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("connect to chromedriver");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send to chromedriver");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("chromedriver status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad chromedriver answer: {line:?}"));
    let mut length = None;
    loop {
        line.clear();
        r.read_line(&mut line).expect("chromedriver header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse::<usize>().ok();
            }
        }
    }
    let mut raw = vec![0; length.expect("chromedriver answers with a Content-Length")];
    r.read_exact(&mut raw).expect("chromedriver body");
    (status, serde_json::from_slice(&raw).unwrap_or(Value::Null))
}

/// A free loopback port (bound then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A running chromedriver and one browser session on it; both end on drop.
struct Browser {
    /// chromedriver's address.
    addr: SocketAddr,
    /// The WebDriver session.
    session: String,
    /// The chromedriver process (started here, killed here).
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() && TcpStream::connect(self.addr).is_ok() {
            let path = format!("/session/{}", self.session);
            // Not `call`: a panic while a failed test unwinds would abort the run.
            let _ = std::panic::catch_unwind(|| wd_http(self.addr, "DELETE", &path, None));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session.
    fn start() -> Browser {
        let driver_bin = on_path(&["chromedriver"], "chromium-driver");
        let chromium = on_path(&["chromium", "chromium-browser"], "chromium");
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver_bin.display()));
        let mut browser = Browser {
            addr,
            session: String::new(),
            driver,
        };
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            if TcpStream::connect(addr).is_ok() {
                let (status, body) = wd_http(addr, "GET", "/status", None);
                if status == 200 && body["value"]["ready"] == true {
                    break;
                }
            }
            if let Ok(Some(exit)) = browser.driver.try_wait() {
                panic!("chromedriver exited at start: {exit}");
            }
            assert!(Instant::now() < deadline, "chromedriver not ready in time");
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900",
                         "--hide-scrollbars", "--force-device-scale-factor=1"]
            }
        }}});
        let (status, body) = wd_http(addr, "POST", "/session", Some(&caps.to_string()));
        assert_eq!(status, 200, "new WebDriver session: {body}");
        browser.session = body["value"]["sessionId"]
            .as_str()
            .expect("session id")
            .to_string();
        browser
    }

    /// One WebDriver command on this session; returns its `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("/session/{}{path}", self.session);
        let body = body.map(|b| b.to_string());
        let (status, answer) = wd_http(self.addr, method, &url, body.as_deref());
        assert_eq!(status, 200, "WebDriver {method} {path}: {answer}");
        answer["value"].clone()
    }

    fn open(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// The text of the element with this id, or None while it does not exist.
    fn text(&self, id: &str) -> Option<String> {
        let script = "const e = document.getElementById(arguments[0]); \
                      return e ? e.textContent : null;";
        let v = self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": [id]})),
        );
        v.as_str().map(str::to_string)
    }

    /// Whether the element with this id is displayed (`display` not `none`).
    fn shown(&self, id: &str) -> bool {
        let script = "const e = document.getElementById(arguments[0]); \
                      return !!e && getComputedStyle(e).display !== 'none';";
        let v = self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": [id]})),
        );
        v == true
    }

    /// The WebDriver reference of the element with this id (waits for it).
    fn element(&self, id: &str) -> String {
        let deadline = Instant::now() + PAGE_WAIT;
        let selector = format!("[id=\"{id}\"]");
        loop {
            let url = format!("/session/{}/element", self.session);
            let body = json!({"using": "css selector", "value": selector}).to_string();
            let (status, answer) = wd_http(self.addr, "POST", &url, Some(&body));
            if status == 200 {
                let value = &answer["value"];
                return value["element-6066-11e4-a52e-4f735466cecf"]
                    .as_str()
                    .unwrap_or_else(|| panic!("element reference in {answer}"))
                    .to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no element #{id} on the page: {answer}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Clicks the element with this id, as a user would.
    fn click(&self, id: &str) {
        let e = self.element(id);
        self.call("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    /// Types `text` into the element with this id.
    fn type_into(&self, id: &str, text: &str) {
        let e = self.element(id);
        self.call("POST", &format!("/element/{e}/clear"), Some(json!({})));
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Waits until `check` holds, polling; fails naming `what`, with the last values.
    fn wait_until(&self, what: &str, mut check: impl FnMut(&Browser) -> Result<(), String>) {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            match check(self) {
                Ok(()) => return,
                Err(last) => assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {what}; last: {last}"
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a PNG of the viewport.
    fn screenshot(&self, path: &std::path::Path) {
        let v = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 screenshot"))
            .expect("screenshot decodes");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).expect("write screenshot");
    }
}

/// `/v1/stats` of `server`, with the bearer key when given.
fn stats(server: &TestServer, key: Option<&str>) -> Value {
    let (status, body) = http(server.control, "GET", "/v1/stats", None, key);
    assert_eq!(status, 200, "{body}");
    body
}

/// The page's figures for queue `q` equal `/v1/stats`'s.
fn page_matches_stats(b: &Browser, s: &Value, q: &str) -> Result<(), String> {
    let queue = &s["queues"][q];
    let pairs = [
        (format!("q-{q}-waiting"), queue["waiting"].to_string()),
        (
            format!("q-{q}-waiting-normal"),
            queue["waiting_normal"].to_string(),
        ),
        (
            format!("q-{q}-waiting-priority"),
            queue["waiting_priority"].to_string(),
        ),
        (
            format!("q-{q}-admitted"),
            queue["admitted_total"].to_string(),
        ),
        (
            format!("q-{q}-paused"),
            if queue["paused"] == true {
                "paused"
            } else {
                "running"
            }
            .to_string(),
        ),
        ("connections".to_string(), s["connections"].to_string()),
        (
            "version".to_string(),
            s["version"].as_str().unwrap().to_string(),
        ),
        (
            "durability".to_string(),
            s["durability"].as_str().unwrap().to_string(),
        ),
    ];
    for (id, want) in pairs {
        let shown = b.text(&id);
        if shown.as_deref() != Some(want.as_str()) {
            return Err(format!("#{id} shows {shown:?}, /v1/stats says {want}"));
        }
    }
    Ok(())
}

/// The page's cluster panel shows what `/v1/stats` `cluster` says: this node, its
/// lease, every member with its addresses, the owner and epoch of queue `q`.
fn page_shows_cluster(b: &Browser, s: &Value, q: &str) -> Result<(), String> {
    let c = &s["cluster"];
    if !b.shown("cluster") {
        return Err("the cluster panel is hidden".into());
    }
    let owner = &c["queues"][q];
    let mut pairs = vec![
        (
            "cluster-node".to_string(),
            c["node_id"].as_str().unwrap().to_string(),
        ),
        (
            "cluster-fenced".to_string(),
            if c["fenced"] == true {
                "fenced"
            } else {
                "live"
            }
            .to_string(),
        ),
        (
            format!("cluster-q-owner-{q}"),
            owner["owner"].as_str().unwrap_or("-").to_string(),
        ),
        (format!("cluster-q-epoch-{q}"), owner["epoch"].to_string()),
    ];
    for m in c["members"].as_array().unwrap() {
        let id = m["node_id"].as_str().unwrap();
        for field in ["node_id", "advertise_player", "advertise_control"] {
            pairs.push((
                format!("cluster-m-{field}-{id}"),
                m[field].as_str().unwrap().to_string(),
            ));
        }
    }
    for (id, want) in pairs {
        let shown = b.text(&id);
        if shown.as_deref() != Some(want.as_str()) {
            return Err(format!("#{id} shows {shown:?}, /v1/stats says {want}"));
        }
    }
    Ok(())
}

/// The token key of the clustered node (with `[cluster]` a key is required).
const CLUSTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

#[test]
fn dashboard_in_headless_chromium_shows_stats_acts_and_asks_for_the_key() {
    let browser = Browser::start();

    // A server without a key, 30 players in line.
    let open = common::start("");
    let players: Vec<_> = (1..=30).map(|u| open.player(u).0).collect();
    open.wait_stats("default", "30 waiting", |q| q["waiting"] == 30);
    browser.open(&format!("http://{}/", open.control));
    browser.wait_until("the page to show /v1/stats", |b| {
        page_matches_stats(b, &stats(&open, None), "default")
    });
    assert!(!browser.shown("keybox"), "no key asked when none is set");
    assert!(
        !browser.shown("cluster"),
        "a single node's page has no cluster panel"
    );
    assert_eq!(browser.text("loop-0-connections").as_deref(), Some("30"));

    // Pause from the page: the queue is paused, and the page says so.
    browser.click("q-default-pause");
    open.wait_stats("default", "paused by the page", |q| q["paused"] == true);
    browser.wait_until("the page to show paused", |b| {
        page_matches_stats(b, &stats(&open, None), "default")
    });

    // The login server reports its load: the page shows it.
    let (status, body) = open.http(
        "PUT",
        "/v1/queues/default/capacity",
        Some(json!({"online": 1200, "capacity": 5000})),
    );
    assert_eq!(status, 200, "{body}");
    browser.wait_until("the page to show the capacity report", |b| {
        match b.text("q-default-capacity").as_deref() {
            Some("1200 / 5000") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // Admit 3 by hand, then resume at 4 players/s; the page follows.
    browser.type_into("q-default-admit-input", "3");
    browser.click("q-default-admit-go");
    open.wait_stats("default", "3 admitted by the page", |q| {
        q["admitted_total"] == 3
    });
    browser.type_into("q-default-rate-input", "4");
    browser.click("q-default-rate-set");
    browser.click("q-default-resume");
    open.wait_stats("default", "resumed at 4/s", |q| {
        q["paused"] == false && q["admitted_total"].as_u64().unwrap() >= 8
    });
    browser.wait_until("the page's target rate and admissions", |b| {
        let s = stats(&open, None);
        let shown: u64 = b
            .text("q-default-admitted")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let target = b.text("q-default-target").unwrap_or_default();
        if target == "/ 4.00" && shown >= 8 && b.text("q-default-eta").unwrap_or_default() != "-" {
            Ok(())
        } else {
            Err(format!("admitted {shown}, target {target:?}, stats {s}"))
        }
    });
    // Some traffic for the charts, then the screenshot once they hold a few seconds.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let chatty = {
        let stop = stop.clone();
        let mut clients: Vec<_> = (500..510).map(|u| open.player(u).0).collect();
        std::thread::spawn(move || {
            let mut seq = 2;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for c in &mut clients {
                    let answer = c.request("heartbeat", seq, json!({}));
                    assert_eq!(answer["code"], 0, "{answer}");
                }
                seq += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    browser.wait_until("the charts to hold 8 seconds", |b| {
        let script = "return document.querySelectorAll('#chart-qps polyline').length \
                      && last && last.recent.length;";
        let n = b.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        );
        if n.as_u64().unwrap_or(0) >= 8 {
            Ok(())
        } else {
            Err(format!("{n} points"))
        }
    });
    // Every run takes the screenshot (so a page that cannot render fails here); it
    // replaces the README's copy only when asked, so a test run leaves the tree clean.
    let shot = if std::env::var_os("QUEUE_UPDATE_SCREENSHOT").is_some() {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png")
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png")
    };
    browser.screenshot(&shot);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    chatty.join().expect("heartbeats answered");
    drop(players);

    // A server with an API key: the page asks for it, then works as before.
    let keyed = common::start(&format!("[control]\napi_key = \"{KEY}\"\n"));
    let _keyed_players: Vec<_> = (100..105).map(|u| keyed.player(u).0).collect();
    let (status, _) = http(keyed.control, "GET", "/v1/events", None, None);
    assert_eq!(status, 401, "events need the key");
    browser.open(&format!("http://{}/dashboard", keyed.control));
    browser.wait_until("the key prompt", |b| {
        if b.shown("keybox") {
            Ok(())
        } else {
            Err("keybox hidden".into())
        }
    });
    browser.type_into("key-input", KEY);
    browser.click("key-submit");
    browser.wait_until("the keyed page to show /v1/stats", |b| {
        page_matches_stats(b, &stats(&keyed, Some(KEY)), "default")
    });
    browser.click("q-default-pause");
    browser.wait_until("the keyed queue paused", |b| {
        let s = stats(&keyed, Some(KEY));
        if s["queues"]["default"]["paused"] == true {
            page_matches_stats(b, &s, "default")
        } else {
            Err(format!("not paused: {s}"))
        }
    });
    // The key never went into a URL.
    let url = browser.call("GET", "/url", None);
    assert!(!url.to_string().contains(KEY), "key in the URL: {url}");

    // A clustered node (one member on a real etcd): the page shows its cluster panel.
    let etcd = etcd_support::Etcd::start();
    let node = common::start_node(|player, control, link| {
        format!(
            "[tokens]\nkey = \"{CLUSTER_KEY}\"\n\
             [cluster]\netcd = [\"{}\"]\nnode_id = \"dash-b1\"\n\
             advertise_player = \"127.0.0.1:{player}\"\nadvertise_control = \"127.0.0.1:{control}\"\n\
             advertise_link = \"127.0.0.1:{link}\"\nlease_ttl_secs = 2\nprefix = \"/qs-dash-b\"\n",
            etcd.url,
        )
    });
    let deadline = Instant::now() + 2 * common::WAIT;
    while stats(&node, None)["cluster"]["queues"]["default"]["owner"] != "dash-b1" {
        assert!(Instant::now() < deadline, "the node never owned default");
        std::thread::sleep(Duration::from_millis(50));
    }
    browser.open(&format!("http://{}/", node.control));
    browser.wait_until("the page to show the cluster", |b| {
        page_shows_cluster(b, &stats(&node, None), "default")
    });
    assert_eq!(
        browser.text("cluster-q-owner-default").as_deref(),
        Some("dash-b1")
    );
}
