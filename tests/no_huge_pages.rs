//! The server process runs without transparent huge pages: with them, mimalloc's
//! arena is resident in whole 2 MiB pages, and an idle player cost 3.1-4.4 KB of RSS
//! (in 2 MiB steps from run to run) instead of 1.7-1.8 KB
//! (`bench/results/conn-memory-2026-11-26b.md`).

mod server_process;

use server_process::ServerProcess;

#[test]
fn server_process_has_transparent_huge_pages_off() {
    let server = ServerProcess::start("no-thp", 1, "", "");
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))
        .expect("the server's /proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("THP_enabled:"))
        .expect("a THP_enabled line (Linux 5.0 or later)");
    assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
}
