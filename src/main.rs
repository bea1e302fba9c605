//! The `queue-server` binary: flags, config, logging, signals. Everything else is in
//! the library (`queue_server::server`).
//!
//! Signals: the first SIGINT / SIGTERM starts a graceful stop (drain, final snapshot,
//! exit 0). A second one during that stop exits at once with 128 + its number
//! ([`FORCED_EXIT_BASE`]), skipping whatever of the stop is left: an operator must never
//! need SIGKILL to stop a stop that hangs (say, a final snapshot on a stalled disk).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use queue_server::config::{Config, LogFormat};
use queue_server::server::ServerHandle;

#[cfg(feature = "count-alloc")]
#[global_allocator]
static GLOBAL: queue_server::alloc_count::CountingAlloc = queue_server::alloc_count::CountingAlloc;

#[cfg(not(feature = "count-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A forced exit (second signal) exits with this plus the signal number, as a shell
/// reports a process killed by that signal (130 for SIGINT, 143 for SIGTERM).
const FORCED_EXIT_BASE: i32 = 128;

/// Thread-per-core login queue for online games.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Config file laid over the built-in default (config/default.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Number of io loops (threads), overrides server.cores.
    #[arg(long)]
    cores: Option<usize>,
    /// Player port address, overrides server.listen.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Control port address, overrides control.listen.
    #[arg(long)]
    control: Option<SocketAddr>,
    /// Print the built-in default config and exit.
    #[arg(long)]
    print_default_config: bool,
}

fn main() -> std::process::ExitCode {
    // No transparent huge pages for this process: mimalloc (v3 allows them by default)
    // madvises its arena, and every 2 MiB page touched is then resident whole. Measured
    // with scripts/conn-memory.py at 10,000 idle players: 3.1-4.4 KB per player in
    // 2 MiB steps with them, 1.7-1.8 KB without (bench/results/conn-memory-2026-11-26b.md).
    // SAFETY: plain prctl(2) on this process; an old kernel without it just says EINVAL.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("queue-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.print_default_config {
        print!("{}", queue_server::config::DEFAULT_TOML);
        return Ok(());
    }
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(cores) = args.cores {
        config.server.cores = cores;
    }
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(control) = args.control {
        config.control.listen = control;
    }
    config.validate()?;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log.format {
        LogFormat::Text => logs.with_target(false).init(),
        // The target tells audit lines ("audit") from the rest in a collector.
        LogFormat::Json => logs.json().init(),
    }
    tracing::info!(
        config = args.config.as_ref().map_or("built-in default".to_string(), |p| p.display().to_string()),
        loops = config.loop_count(),
        queues = ?config.queues.list.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(),
        auth = ?config.auth.mode,
        token_alg = ?config.tokens.alg,
        grace_secs = config.server.reconnect_grace_secs,
        idle_secs = config.server.idle_timeout_secs,
        "starting"
    );

    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let server = ServerHandle::start(&config)?;
    if let Some(signal) = signals.forever().next() {
        tracing::info!(
            signal,
            "stopping: draining sessions (a second SIGINT / SIGTERM exits at once)"
        );
    }
    // The stop may hang on things no timeout covers (a final snapshot on a stalled disk):
    // a second signal ends the process, without the rest of the stop.
    std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let code = FORCED_EXIT_BASE + signal;
                tracing::warn!(
                    signal,
                    code,
                    "second signal during the stop: exiting now, drain and final snapshot not finished"
                );
                std::process::exit(code);
            }
        })?;
    server.shutdown();
    tracing::info!("stopped");
    Ok(())
}
