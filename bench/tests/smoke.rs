//! One short run of each scenario with tiny sizes against a server started in process
//! (`ServerHandle` on 127.0.0.1:0), the echo server, and the binary's `--procs` and
//! capacity paths. No timing is asserted: only that every scenario runs, counts what
//! it should and reports no error.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use queue_bench::client::Threads;
use queue_bench::echo::EchoServer;
use queue_bench::scenario::{self, Common};
use queue_server::config::Config;
use queue_server::server::ServerHandle;

fn server() -> ServerHandle {
    let mut config = Config::from_toml_str("").expect("default config");
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.control.listen = "127.0.0.1:0".parse().unwrap();
    config.server.cores = 1;
    ServerHandle::start(&config).expect("server starts")
}

fn common(player: SocketAddr, control: Option<SocketAddr>) -> Common {
    Common {
        players: vec![player],
        control,
        bearer: None,
        queue: None,
        sources: Vec::new(),
        threads: Threads {
            count: 2,
            cpus: Vec::new(),
        },
        user_base: 1_000,
        server_build: "test".into(),
        procs: 1,
    }
}

#[test]
fn storm_logs_everyone_in() {
    let s = server();
    let c = common(s.player_addr, Some(s.control_addr));
    let o = scenario::storm::StormOpts {
        users: 20,
        rate: 0.0,
        leave: true,
    };
    let out = scenario::storm::run(&c, &o).unwrap();
    assert_eq!(out.ops, 20, "{:?}", out.tally.errors);
    assert!(out.tally.errors.is_empty(), "{:?}", out.tally.errors);
    assert_eq!(out.tally.named["connect"].count(), 20);
    let alloc = out.alloc.expect("metrics read");
    assert!(alloc.requests >= 20, "{alloc:?}");
    s.shutdown();
}

#[test]
fn storm_at_a_rate_and_from_a_source_address() {
    let s = server();
    let mut c = common(s.player_addr, None);
    c.sources = vec!["127.0.0.1".parse().unwrap()];
    let o = scenario::storm::StormOpts {
        users: 10,
        rate: 200.0,
        leave: true,
    };
    let out = scenario::storm::run(&c, &o).unwrap();
    assert_eq!(out.ops, 10, "{:?}", out.tally.errors);
    s.shutdown();
}

#[test]
fn steady_answers_on_schedule() {
    let s = server();
    let c = common(s.player_addr, Some(s.control_addr));
    for cmd in ["position", "heartbeat"] {
        let o = scenario::steady::SteadyOpts {
            users: 10,
            interval: Duration::from_millis(200),
            duration: Duration::from_millis(600),
            warmup: Duration::ZERO,
            cmd: cmd.into(),
            login_rate: 0.0,
            leave: true,
        };
        let out = scenario::steady::run(&c, &o).unwrap();
        assert!(out.tally.errors.is_empty(), "{:?}", out.tally.errors);
        // 3 intended sends per player in the window.
        assert_eq!(out.ops, 30, "{cmd}");
        assert_eq!(out.tally.rtt.count(), 30);
    }
    s.shutdown();
}

#[test]
fn steady_drops_the_warmup_and_reports_send_lag_per_answer() {
    let s = server();
    let c = common(s.player_addr, Some(s.control_addr));
    let o = scenario::steady::SteadyOpts {
        users: 10,
        interval: Duration::from_millis(200),
        duration: Duration::from_millis(600),
        warmup: Duration::from_millis(400),
        cmd: "position".into(),
        login_rate: 0.0,
        leave: true,
    };
    let out = scenario::steady::run(&c, &o).unwrap();
    assert!(out.tally.errors.is_empty(), "{:?}", out.tally.errors);
    // 2 sends per player in the warm-up (dropped), 3 in the window (measured).
    assert_eq!(out.tally.get("warmup_answers"), 20);
    assert_eq!(out.ops, 30);
    assert_eq!(out.tally.rtt.count(), 30);
    assert_eq!(out.tally.named["send_lag"].count(), 30);
    assert_eq!(out.tally.named["rtt_from_send"].count(), 30);
    let per_second: u64 = out.tally.series.points().iter().map(|p| p.rate).sum();
    assert_eq!(per_second, 30);
    s.shutdown();
}

#[test]
fn binary_compares_with_the_echo_server_and_writes_spectra() {
    let s = server();
    let dir = std::env::temp_dir().join(format!("queue-bench-echo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("steady.json");
    let out = Command::new(env!("CARGO_BIN_EXE_queue-bench"))
        .args(["steady", "--users", "5", "--interval", "200ms"])
        .args(["--duration", "400ms", "--threads", "1", "--compare-echo"])
        .args([
            "--target",
            &s.player_addr.to_string(),
            "--control",
            &s.control_addr.to_string(),
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("vs echo (this / echo): rate 1.00"),
        "{stdout}"
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["ops"], 10, "{report}");
    assert_eq!(report["echo"]["ops"], 10, "{report}");
    assert_eq!(report["echo"]["params"]["target"], "echo-server");
    assert_eq!(report["vs_echo"]["qps"], 1.0);
    assert!(report["rtt"]["p9999_us"].as_f64().unwrap() > 0.0);
    assert_eq!(report["latencies"]["send_lag"]["count"], 10);
    let rates: u64 = report["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rate"].as_u64().unwrap())
        .sum();
    assert_eq!(rates, 10);
    for f in ["steady.hgrm", "steady.send_lag.hgrm", "steady.echo.hgrm"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        assert!(
            text.contains("Total count    =           10]"),
            "{f}: {text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    s.shutdown();
}

#[test]
fn pingpong_against_the_server_and_the_echo_server() {
    let s = server();
    let o = scenario::pingpong::PingpongOpts {
        conns: 4,
        duration: Duration::from_millis(300),
        warmup: Duration::ZERO,
        cmd: "position".into(),
        leave: true,
    };
    let out = scenario::pingpong::run(&common(s.player_addr, Some(s.control_addr)), &o).unwrap();
    assert!(
        out.ops > 0 && out.tally.errors.is_empty(),
        "{:?}",
        out.tally.errors
    );
    s.shutdown();

    let echo = EchoServer::start("127.0.0.1:0".parse().unwrap(), 1, &[]).unwrap();
    let out = scenario::pingpong::run(&common(echo.addr, None), &o).unwrap();
    assert!(
        out.ops > 0 && out.tally.errors.is_empty(),
        "{:?}",
        out.tally.errors
    );
    echo.stop();
}

#[test]
fn drain_admits_everyone_once_with_valid_tokens() {
    let s = server();
    let c = common(s.player_addr, Some(s.control_addr));
    let o = scenario::drain::DrainOpts {
        users: 20,
        admit_rate: 400.0,
        settle: Duration::from_secs(10),
        verify: true,
    };
    let out = scenario::drain::run(&c, &o).unwrap();
    assert_eq!(out.ops, 20, "{:?} {:?}", out.tally.errors, out.tally.counts);
    assert!(out.tally.errors.is_empty(), "{:?}", out.tally.errors);
    assert_eq!(out.checks.len(), 3);
    assert!(out.checks.values().all(|&ok| ok), "{:?}", out.checks);
    assert_eq!(out.tally.get("tokens_verified"), 20);
    s.shutdown();
}

#[test]
fn core_in_process_keeps_positions_exact() {
    let o = scenario::core::CoreOpts {
        users: 5_000,
        admit_rate: 10_000.0,
        loops: 2,
        ticks: 30,
        tick_ms: 10,
        push_interval_ms: 100,
        sign: true,
    };
    let out = scenario::core::run(&o).unwrap();
    assert_eq!(out.ops, 5_000);
    assert!(out.checks["positions_match_state"]);
    assert_eq!(out.values["admitted"], 3_000.0);
    assert!(out.values["pushes"] > 0.0);
}

#[test]
fn binary_spreads_users_over_procs_and_writes_json() {
    let s = server();
    let dir = std::env::temp_dir().join(format!("queue-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("storm.json");
    let out = Command::new(env!("CARGO_BIN_EXE_queue-bench"))
        .args(["storm", "--users", "12", "--procs", "2", "--threads", "1"])
        .args([
            "--target",
            &s.player_addr.to_string(),
            "--control",
            &s.control_addr.to_string(),
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["ops"], 12, "{report}");
    assert_eq!(report["rtt"]["count"], 12);
    assert!(report["errors"].as_object().unwrap().is_empty(), "{report}");
    let _ = std::fs::remove_dir_all(&dir);
    s.shutdown();
}

#[test]
fn binary_refuses_more_users_than_one_process_can_open() {
    let out = Command::new(env!("CARGO_BIN_EXE_queue-bench"))
        .args([
            "storm",
            "--users",
            "1000000",
            "--target",
            "127.0.0.1:9",
            "--no-control",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ulimit -n") && err.contains("--procs"),
        "{err}"
    );
}

/// `waiting` of queue `default` on one server, from `GET /v1/stats`.
fn waiting(control: SocketAddr) -> u64 {
    let mut c = queue_bench::http::Control::new(control, None);
    let stats: serde_json::Value = serde_json::from_str(&c.get("/v1/stats").unwrap()).unwrap();
    stats["queues"]["default"]["waiting"].as_u64().unwrap_or(0)
}

#[test]
fn binary_spreads_users_round_robin_over_several_targets() {
    let (a, b) = (server(), server());
    let targets = format!("{},{}", a.player_addr, b.player_addr);
    let out = Command::new(env!("CARGO_BIN_EXE_queue-bench"))
        .args(["storm", "--users", "12", "--threads", "1", "--no-leave"])
        .args(["--target", &targets, "--no-control"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&targets),
        "the report names both targets: {text}"
    );
    // Places outlive the connections (reconnect grace): each server keeps its half.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let counts = loop {
        let counts = (waiting(a.control_addr), waiting(b.control_addr));
        if counts == (6, 6) || std::time::Instant::now() > deadline {
            break counts;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(counts, (6, 6), "12 users over two targets, round-robin");
    a.shutdown();
    b.shutdown();
}
