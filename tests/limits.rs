//! Limits against bad or greedy clients: pre-login frame cap, connection limits,
//! slowloris crowds, slow consumers, desynchronised streams.

mod common;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{start, Client, WAIT};
use serde_json::json;

fn open_connections(s: &common::TestServer) -> u64 {
    s.handle
        .as_ref()
        .unwrap()
        .stats
        .iter()
        .map(|l| l.connections.load(Ordering::Relaxed))
        .sum()
}

fn wait_until(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn pre_login_frames_are_capped_lower_than_after_login() {
    let s = start("");
    let pad = "x".repeat(2000);
    // 2000 bytes before login: refused from the header (default cap 1024).
    let mut c = s.client();
    c.send_raw(&(2100u32).to_be_bytes());
    let v = c.next();
    assert_eq!(v["code"], 1, "{v}");
    c.expect_closed();
    // The same size after login is fine (cap 4096).
    let (mut p, _) = s.player(1);
    let v = p.request("heartbeat", 2, json!({"pad": pad}));
    assert_eq!(v["code"], 0, "{v}");
}

#[test]
fn connections_over_the_per_ip_limit_get_rate_limited() {
    let s = start("[server]\nmax_connections_per_ip = 3\n");
    let mut ok: Vec<Client> = (0..3).map(|_| s.client()).collect();
    wait_until("3 connections registered", || open_connections(&s) == 3);
    let mut over = s.client();
    let v = over.next();
    assert_eq!(v["code"], 8, "{v}");
    over.expect_closed();
    // The others are not affected.
    for (i, c) in ok.iter_mut().enumerate() {
        assert_eq!(c.login(i as u64)["code"], 0);
    }
    // A slot frees when one leaves.
    drop(ok.pop());
    wait_until("slot released", || open_connections(&s) == 2);
    let mut again = s.client();
    assert_eq!(again.login(9)["code"], 0);
}

#[test]
fn connections_over_the_total_limit_get_rate_limited() {
    let s = start("[server]\nmax_connections = 2\n");
    let _a = s.client();
    let _b = s.client();
    wait_until("2 connections registered", || open_connections(&s) == 2);
    let mut c = s.client();
    assert_eq!(c.next()["code"], 8);
    c.expect_closed();
    let stats = &s.handle.as_ref().unwrap().stats;
    assert_eq!(
        stats
            .iter()
            .map(|l| l.refused.load(Ordering::Relaxed))
            .sum::<u64>(),
        1
    );
}

#[test]
fn a_slowloris_crowd_is_closed_on_time_and_others_are_served() {
    let s = start("[server]\nlogin_timeout_secs = 1\n");
    let crowd: Vec<std::net::TcpStream> = (0..2000)
        .map(|_| std::net::TcpStream::connect(s.player).unwrap())
        .collect();
    // Half of them dribble a partial header: still not a login.
    for c in crowd.iter().step_by(2) {
        (&*c).write_all(&[0, 0]).unwrap();
    }
    wait_until("crowd accepted", || open_connections(&s) >= 2000);
    // A real player is served meanwhile.
    let (mut p, _) = s.player(1);
    assert_eq!(p.request("heartbeat", 2, json!({}))["code"], 0);
    // Every silent socket is closed by the server.
    for c in crowd {
        let mut c = Client { stream: c };
        assert!(c.recv().is_none());
    }
    wait_until("sessions freed", || open_connections(&s) == 1);
}

#[test]
fn a_client_that_stops_reading_is_cut_off_at_the_outbound_cap() {
    let s = start("[server]\nmax_outbound_bytes = 8192\n");
    let (mut other, _) = s.player(2);
    // A socket with a tiny receive buffer that never reads.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.player.into()).unwrap();
    let stream: std::net::TcpStream = sock.into();
    let mut greedy = Client { stream };
    assert_eq!(greedy.login(1)["code"], 0);
    let mut batch = Vec::new();
    for _ in 0..1000 {
        let body = json!({"cmd": "heartbeat", "seq": 1}).to_string();
        batch.extend_from_slice(&(body.len() as u32).to_be_bytes());
        batch.extend_from_slice(body.as_bytes());
    }
    // Keep asking, never read: the server must cut us off well before we are done.
    let mut sent = 0usize;
    let cut = loop {
        if greedy.stream.write_all(&batch).is_err() {
            break true;
        }
        sent += batch.len();
        if sent > 200 * 1024 * 1024 {
            break false;
        }
        // Meanwhile the other player is answered.
        if sent.is_multiple_of(batch.len() * 64) {
            assert_eq!(other.request("position", 3, json!({}))["code"], 0);
        }
    };
    assert!(cut, "server kept buffering for a client that does not read");
    assert_eq!(other.request("position", 4, json!({}))["code"], 0);
    // The cut-off player keeps the place (it is a disconnect, not a leave).
    assert_eq!(s.queue_stats("default")["waiting"], 2);
}

#[test]
fn garbage_after_a_bad_header_closes_at_once() {
    let s = start("");
    let mut c = s.client();
    c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let v = c.next();
    assert_eq!(v["code"], 1, "{v}");
    c.expect_closed();
    // Also after a valid login.
    let (mut p, _) = s.player(3);
    p.send_raw(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
    let v = p.next();
    assert_eq!(v["code"], 1, "{v}");
    p.expect_closed();
}
