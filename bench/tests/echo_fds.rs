//! `--compare-echo` under a tight open-file limit: the echo server must not share the
//! bench's descriptors. With 10,000 users and the box's 20,000 limit, the in-process
//! echo server's accepts failed (EMFILE), its accept loop spun and the run never
//! ended; here the same happens at a limit of 320 with 200 users (the bench keeps 100 for itself). The bench runs as a
//! child under `prlimit` and must finish by a deadline (a hang fails the test, nothing
//! is asserted about speed).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use queue_server::config::Config;
use queue_server::server::ServerHandle;

#[test]
fn compare_echo_fits_in_the_benchs_open_file_limit() {
    let mut config =
        Config::from_toml_str("[server]\nmax_logins_per_sec_per_core = 0\n").expect("config");
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.control.listen = "127.0.0.1:0".parse().unwrap();
    config.server.cores = 1;
    let s = ServerHandle::start(&config).expect("server starts");
    let mut child = Command::new("prlimit")
        .arg("--nofile=320")
        .arg(env!("CARGO_BIN_EXE_queue-bench"))
        .args(["steady", "--users", "200", "--interval", "200ms"])
        .args(["--duration", "400ms", "--threads", "1", "--compare-echo"])
        .args(["--target", &s.player_addr.to_string()])
        .args(["--control", &s.control_addr.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("prlimit (util-linux) runs queue-bench");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("queue-bench --compare-echo did not finish within 60 s under 320 open files");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "{status}: {stdout}");
    assert!(
        stdout.contains("vs echo (this / echo): rate 1.00"),
        "{stdout}"
    );
    s.shutdown();
}
