//! `GET /debug/pprof/profile`: a CPU profile of a live server under player load, as a
//! pprof protobuf and as a flamegraph SVG, behind the API key, one at a time, without
//! holding up the control port or the io loops (no client sees an error while SIGPROF
//! interrupts the loops' io_uring / epoll waits).

mod common;
mod server_process;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use pprof::protos::Message;
use serde_json::json;
use server_process::{request, ServerProcess};

const KEY: &str = "pprof-test-key";

/// Players sending `heartbeat` and `position` in a loop from two threads until `stop`;
/// every answer must be a success. Returns the threads and the count of answers.
fn load(
    server: &ServerProcess,
    stop: &Arc<AtomicBool>,
) -> (Vec<std::thread::JoinHandle<()>>, Arc<AtomicU64>) {
    let answered = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for t in 0..2u64 {
        let mut clients: Vec<common::Client> = (0..4u64)
            .map(|i| {
                let mut c = common::Client::connect(server.player);
                let v = c.login(100 + t * 10 + i);
                assert_eq!(v["code"], 0, "login: {v}");
                c
            })
            .collect();
        let (stop, answered) = (stop.clone(), answered.clone());
        threads.push(std::thread::spawn(move || {
            let mut seq = 2u32;
            while !stop.load(Ordering::Relaxed) {
                for c in &mut clients {
                    let cmd = if seq.is_multiple_of(2) {
                        "heartbeat"
                    } else {
                        "position"
                    };
                    let v = c.request(cmd, seq, json!({}));
                    assert_eq!(v["code"], 0, "{cmd} during a profile: {v}");
                    answered.fetch_add(1, Ordering::Relaxed);
                    seq = seq.wrapping_add(1).max(2);
                }
            }
        }));
    }
    (threads, answered)
}

#[test]
fn cpu_profile_of_a_loaded_server_shows_the_io_loop_and_blocks_nothing() {
    let server = ServerProcess::start("pprof", 2, &format!("api_key = \"{KEY}\""), "");
    let profile = "/debug/pprof/profile";

    // Behind the key like /v1/; bounded seconds; typos refused.
    assert_eq!(
        request(server.control, "GET", profile, None, "").status,
        401
    );
    assert_eq!(
        request(server.control, "GET", profile, Some("wrong"), "").status,
        401
    );
    for bad in [
        "?seconds=0",
        "?seconds=61",
        "?seconds=x",
        "?format=png",
        "?secs=2",
    ] {
        let a = request(
            server.control,
            "GET",
            &format!("{profile}{bad}"),
            Some(KEY),
            "",
        );
        assert_eq!(a.status, 400, "{bad}: {}", String::from_utf8_lossy(&a.body));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (threads, answered) = load(&server, &stop);

    // The protobuf profile, taken in the background.
    let control = server.control;
    let first = std::thread::spawn(move || {
        request(
            control,
            "GET",
            "/debug/pprof/profile?seconds=3",
            Some(KEY),
            "",
        )
    });
    server.wait_line("cpu profile started", |l| l.contains("cpu profile started"));
    let during = answered.load(Ordering::Relaxed);
    // The control port still answers while the profile runs ...
    let stats = request(server.control, "GET", "/v1/stats", Some(KEY), "");
    assert_eq!(stats.status, 200);
    // ... and a second profile is refused meanwhile (which also shows the first one is
    // still running after /v1/stats was answered).
    let second = request(
        server.control,
        "GET",
        "/debug/pprof/profile?seconds=1",
        Some(KEY),
        "",
    );
    assert_eq!(
        second.status,
        409,
        "{}",
        String::from_utf8_lossy(&second.body)
    );

    let first = first.join().unwrap();
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert!(
        first
            .head
            .contains("content-type: application/octet-stream"),
        "{}",
        first.head
    );
    assert!(
        answered.load(Ordering::Relaxed) > during,
        "players were answered while the profile ran"
    );
    let proto = pprof::protos::Profile::decode(first.body.as_slice()).expect("pprof protobuf");
    let strings: HashSet<&str> = proto.string_table.iter().map(String::as_str).collect();
    let total: i64 = proto.sample.iter().map(|s| s.value[0]).sum();
    assert!(total > 0, "no samples");
    let thread_names: HashSet<&str> = proto
        .sample
        .iter()
        .flat_map(|s| &s.label)
        .filter(|l| proto.string_table[l.key as usize] == "thread")
        .map(|l| proto.string_table[l.str as usize].as_str())
        .collect();
    assert!(
        thread_names.iter().any(|t| t.starts_with("io-")),
        "no io loop thread among {thread_names:?}"
    );
    assert!(
        strings.iter().any(|s| s.contains("io_loop")),
        "no io_loop frame in the profile ({} strings)",
        strings.len()
    );

    // The flamegraph: one SVG, with the io loop's frames in it.
    let svg = request(
        server.control,
        "GET",
        "/debug/pprof/profile?seconds=2&format=svg",
        Some(KEY),
        "",
    );
    assert_eq!(svg.status, 200, "{}", String::from_utf8_lossy(&svg.body));
    assert!(
        svg.head.contains("content-type: image/svg+xml"),
        "{}",
        svg.head
    );
    let text = String::from_utf8(svg.body).expect("utf-8 svg");
    assert!(text.contains("<svg"), "not an svg");
    assert!(
        text.contains("io_loop"),
        "no io_loop frame in the flamegraph"
    );

    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a player saw an error during a profile");
    }
    // Each profile and refusal left an audit line naming this test's connection.
    server.wait_line("audit of the profile", |l| {
        l.contains("control action") && l.contains("/debug/pprof/profile") && l.contains("200")
    });
}

/// A profile whose client goes away stops at once and frees the profiler for the next.
#[test]
fn a_profile_whose_client_left_is_cancelled() {
    use std::io::Write;
    let server = ServerProcess::start("pprof-cancel", 1, "", "");
    let mut s = std::net::TcpStream::connect(server.control).unwrap();
    s.write_all(b"GET /debug/pprof/profile?seconds=60 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    server.wait_line("cpu profile started", |l| l.contains("cpu profile started"));
    drop(s);
    server.wait_line("cpu profile cancelled", |l| {
        l.contains("cpu profile cancelled")
    });
    // The next profile may start (the flag was cleared by the thread's end).
    let deadline = std::time::Instant::now() + server_process::WAIT;
    loop {
        let a = request(
            server.control,
            "GET",
            "/debug/pprof/profile?seconds=1",
            None,
            "",
        );
        if a.status == 200 {
            break;
        }
        assert_eq!(a.status, 409);
        assert!(std::time::Instant::now() < deadline, "profiler never freed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
