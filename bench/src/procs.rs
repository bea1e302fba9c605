//! Spreading users over several bench processes (`--procs N`), for user counts past
//! one process's file-descriptor limit: the parent re-runs its own binary N times with
//! `--worker I/N`, each worker drives its slice of the users and prints its outcome as
//! one `OUTCOME {json}` line, and the parent merges them.
//!
//! Invariants:
//! - the slices are disjoint and cover `0..users`; worker I's user ids start at
//!   `user_base + offset(I)`, so no two processes log in the same player;
//! - workers start together and run the same schedule from their own start; the merged
//!   window is the longest worker's.

use std::process::{Command, Stdio};

use crate::scenario::{BenchError, OutcomeWire};

/// Prefix of the line a worker prints its outcome on.
pub const OUTCOME_PREFIX: &str = "OUTCOME ";

/// Worker `worker` of `workers`: (first user index, number of users).
pub fn slice(users: u64, worker: u64, workers: u64) -> (u64, u64) {
    let workers = workers.max(1);
    let lo = users * worker / workers;
    let hi = users * (worker + 1) / workers;
    (lo, hi - lo)
}

/// Parses `I/N`.
pub fn parse_worker(text: &str) -> Result<(u64, u64), String> {
    let (i, n) = text.split_once('/').ok_or("--worker takes I/N")?;
    let (i, n) = (
        i.parse::<u64>().map_err(|e| e.to_string())?,
        n.parse::<u64>().map_err(|e| e.to_string())?,
    );
    if n == 0 || i >= n {
        return Err(format!("--worker {text}: need I < N"));
    }
    Ok((i, n))
}

/// The parent's arguments for worker `i` of `n`: `--procs`, `--json` and
/// `--user-base` removed, the common user base and the worker's place added.
pub fn worker_args(args: &[String], i: u64, n: u64, user_base: u64) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
            continue;
        }
        if a == "--procs" || a == "--json" || a == "--user-base" {
            skip = true;
            continue;
        }
        if a.starts_with("--procs=") || a.starts_with("--json=") || a.starts_with("--user-base=") {
            continue;
        }
        out.push(a.clone());
    }
    out.push("--user-base".into());
    out.push(user_base.to_string());
    out.push("--worker".into());
    out.push(format!("{i}/{n}"));
    out
}

/// Runs `n` workers of this binary with `args` (without the program name) and
/// collects their outcomes.
pub fn run_workers(
    args: &[String],
    n: u64,
    user_base: u64,
) -> Result<Vec<OutcomeWire>, BenchError> {
    let exe = std::env::current_exe().map_err(|e| BenchError::Setup(format!("own binary: {e}")))?;
    let children = (0..n)
        .map(|i| {
            Command::new(&exe)
                .args(worker_args(args, i, n, user_base))
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| BenchError::Setup(format!("starting worker {i}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut outcomes = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        let output = child
            .wait_with_output()
            .map_err(|e| BenchError::Setup(format!("worker {i}: {e}")))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(OUTCOME_PREFIX))
            .ok_or_else(|| {
                BenchError::Setup(format!(
                    "worker {i} exited ({}) without an outcome",
                    output.status
                ))
            })?;
        outcomes.push(
            serde_json::from_str(line)
                .map_err(|e| BenchError::Setup(format!("worker {i} outcome: {e}")))?,
        );
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_every_user_once() {
        let mut next = 0;
        for w in 0..3 {
            let (lo, n) = slice(10, w, 3);
            assert_eq!(lo, next);
            next = lo + n;
        }
        assert_eq!(next, 10);
    }

    #[test]
    fn worker_args_drop_procs_and_json() {
        let args: Vec<String> = [
            "storm",
            "--users",
            "9",
            "--procs",
            "3",
            "--json=x.json",
            "--user-base",
            "7",
            "--rate",
            "5",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            worker_args(&args, 1, 3, 100),
            [
                "storm",
                "--users",
                "9",
                "--rate",
                "5",
                "--user-base",
                "100",
                "--worker",
                "1/3"
            ]
            .map(String::from)
            .to_vec()
        );
        assert_eq!(parse_worker("1/3"), Ok((1, 3)));
        assert!(parse_worker("3/3").is_err());
    }
}
