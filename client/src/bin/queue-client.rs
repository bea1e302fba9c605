//! `queue-client`: `join`, `swarm` and `ctl`. See the crate docs (`queue_client`) and
//! `queue-client --help` for the flags and exit codes.

fn main() -> std::process::ExitCode {
    queue_client::cli::main_client()
}
