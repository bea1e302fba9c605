//! queue-bench: load tool for queue-server. Reserved: the scenarios (storm, steady,
//! pingpong, drain, echo-server, core) arrive with the bench issue.

fn main() {
    eprintln!("queue-bench: no scenarios yet; see bench/README.md");
    std::process::exit(2);
}
