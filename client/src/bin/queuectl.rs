//! `queuectl`: the control port's commands (`stats`, `admit N`, `rate R`, `capacity
//! ONLINE CAP`, `pause`, `resume`, `verify TOKEN`, `keys`); `queuectl --help`.

fn main() -> std::process::ExitCode {
    queue_client::cli::main_ctl()
}
