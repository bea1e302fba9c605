//! The `queue-bench` command line (a module of the binary, not of the library): the
//! flags of every scenario ([`Scenario`]), the flags every socket scenario shares
//! ([`Target`]) and how they become a [`Common`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use queue_bench::client::Threads;
use queue_bench::limits;
use queue_bench::pace::parse_duration;
use queue_bench::scenario::core::CoreOpts;
use queue_bench::scenario::drain::DrainOpts;
use queue_bench::scenario::pingpong::PingpongOpts;
use queue_bench::scenario::steady::SteadyOpts;
use queue_bench::scenario::{BenchError, Common};

/// Load tool for queue-server.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Flags of every socket scenario.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Player port of the server; several (`--target A,B,C` or repeated) spread the
    /// users round-robin over them (the nodes of a cluster).
    #[arg(long, default_value = "127.0.0.1:7000", value_delimiter = ',')]
    pub target: Vec<SocketAddr>,
    /// Control port (allocation counters; admissions for `drain`); in a cluster any
    /// node's (it forwards to the queue's owner).
    #[arg(long, default_value = "127.0.0.1:7001")]
    pub control: SocketAddr,
    /// Do not touch the control port (e.g. against `echo-server`).
    #[arg(long)]
    pub no_control: bool,
    /// Bearer key of the control API, if it has one.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Queue to log in to (default: the server's `default`).
    #[arg(long)]
    pub queue: Option<String>,
    /// Client threads (default: one per CPU this process may run on).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Pin client threads to these CPUs, round-robin (e.g. `--cpus 1`).
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// Spread the users over this many bench processes (file-descriptor limit).
    #[arg(long, default_value_t = 1)]
    pub procs: u64,
    /// Loopback source addresses to spread connections over (ephemeral port limit).
    #[arg(long)]
    pub source_addrs: Option<String>,
    /// `user_id` of the first player (default: derived from the clock, so runs differ).
    #[arg(long)]
    pub user_base: Option<u64>,
    /// Label of the server build for the allocation report (e.g. `release+count-alloc`).
    #[arg(long, default_value = "unknown")]
    pub server_build: String,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// After the run, run the same load against the bench's own echo server (started
    /// in this process on a free port) and print this run / echo ratios.
    #[arg(long)]
    pub compare_echo: bool,
    /// Threads of that echo server.
    #[arg(long, default_value_t = 1)]
    pub echo_cores: usize,
    /// Pin that echo server's threads to these CPUs, round-robin (e.g. where the
    /// server under test ran).
    #[arg(long, value_delimiter = ',')]
    pub echo_cpus: Vec<usize>,
    /// Internal: run as worker I of N of a `--procs` parent.
    #[arg(long, hide = true)]
    pub worker: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Scenario {
    /// N players connect and log in, at once or ramped at --rate per second.
    Storm(StormArgs),
    /// Every player sends one request per interval, spread evenly, for a duration.
    Steady(SteadyArgs),
    /// Closed loop: one request in flight per connection, for the highest rate.
    Pingpong(PingpongArgs),
    /// Fill a queue, admit through the control API at --admit-rate, check every admission.
    Drain(DrainArgs),
    /// A bare frame echo server (same framing and threading, no JSON): the ceiling.
    EchoServer(EchoServerArgs),
    /// The queue core and rank broadcast in process, virtual sessions, no sockets.
    Core(CoreArgs),
}

/// Flags of `storm`.
#[derive(Args, Debug)]
pub struct StormArgs {
    #[command(flatten)]
    pub target: Target,
    /// Players.
    #[arg(long)]
    pub users: u64,
    /// Connects per second (0 = all at once).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Keep the places (do not send `leave` at the end).
    #[arg(long)]
    pub no_leave: bool,
}

/// Flags of `steady`.
#[derive(Args, Debug)]
pub struct SteadyArgs {
    #[command(flatten)]
    pub target: Target,
    /// Players.
    #[arg(long)]
    pub users: u64,
    /// Time between two requests of one player.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Measured window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Run the load this long before the measured window; its samples are dropped.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Request: position or heartbeat.
    #[arg(long, default_value = "position")]
    pub cmd: String,
    /// Logins per second during setup (0 = all at once).
    #[arg(long, default_value_t = 0.0)]
    pub login_rate: f64,
    /// Keep the places (do not send `leave` at the end).
    #[arg(long)]
    pub no_leave: bool,
}

/// Flags of `pingpong`.
#[derive(Args, Debug)]
pub struct PingpongArgs {
    #[command(flatten)]
    pub target: Target,
    /// Connections.
    #[arg(long)]
    pub conns: u64,
    /// Measured window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Run the load this long before the measured window; its samples are dropped.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Request: position or heartbeat.
    #[arg(long, default_value = "position")]
    pub cmd: String,
    /// Keep the places (do not send `leave` at the end).
    #[arg(long)]
    pub no_leave: bool,
}

/// Flags of `drain`.
#[derive(Args, Debug)]
pub struct DrainArgs {
    #[command(flatten)]
    pub target: Target,
    /// Players.
    #[arg(long)]
    pub users: u64,
    /// Admissions per second.
    #[arg(long)]
    pub admit_rate: f64,
    /// Wait this long for the last pushes after the last admit call.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Skip verifying every token through the control API.
    #[arg(long)]
    pub no_verify: bool,
}

/// Flags of `echo-server`.
#[derive(Args, Debug)]
pub struct EchoServerArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    /// Threads (one listener each, SO_REUSEPORT).
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// Pin the threads to these CPUs, round-robin.
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// Stop after this long (default: run until killed).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

/// Flags of `core`.
#[derive(Args, Debug)]
pub struct CoreArgs {
    /// Players to queue.
    #[arg(long, default_value_t = 1_000_000)]
    pub users: u64,
    /// Automatic admission, players per second.
    #[arg(long, default_value_t = 5000.0)]
    pub admit_rate: f64,
    /// Virtual io loops.
    #[arg(long, default_value_t = 2)]
    pub loops: usize,
    /// Core ticks after the joins.
    #[arg(long, default_value_t = 300)]
    pub ticks: u64,
    /// Virtual ms per tick (core.tick_ms).
    #[arg(long, default_value_t = 10)]
    pub tick_ms: u64,
    /// Push throttle, ms (server.push_interval_ms).
    #[arg(long, default_value_t = 1000)]
    pub push_interval_ms: u64,
    /// Do not sign tokens.
    #[arg(long)]
    pub no_sign: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The default user base: changes every second, so a run never resumes an earlier
/// run's places (which outlive their connections for the reconnect grace).
pub fn clock_user_base() -> u64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (secs % 1_000_000) * 10_000_000
}

impl Target {
    pub fn common(&self, user_base: u64) -> Result<Common, BenchError> {
        let cpus_allowed = core_affinity::get_core_ids().map_or(1, |c| c.len()).max(1);
        if self.target.is_empty() {
            return Err(BenchError::Setup(
                "--target: give at least one address".into(),
            ));
        }
        Ok(Common {
            players: self.target.clone(),
            control: (!self.no_control).then_some(self.control),
            bearer: self.api_key.clone(),
            queue: self.queue.clone(),
            sources: match &self.source_addrs {
                Some(s) => limits::parse_sources(s).map_err(BenchError::Setup)?,
                None => Vec::new(),
            },
            threads: Threads {
                count: self.threads.unwrap_or(cpus_allowed).max(1),
                cpus: self.cpus.clone(),
            },
            user_base,
            server_build: self.server_build.clone(),
            procs: self.procs.max(1),
        })
    }
}

impl SteadyArgs {
    /// The scenario's options.
    pub fn opts(&self) -> SteadyOpts {
        SteadyOpts {
            users: self.users,
            interval: self.interval,
            duration: self.duration,
            warmup: self.warmup,
            cmd: self.cmd.clone(),
            login_rate: self.login_rate,
            leave: !self.no_leave,
        }
    }
}

impl PingpongArgs {
    /// The scenario's options.
    pub fn opts(&self) -> PingpongOpts {
        PingpongOpts {
            conns: self.conns,
            duration: self.duration,
            warmup: self.warmup,
            cmd: self.cmd.clone(),
            leave: !self.no_leave,
        }
    }
}

impl DrainArgs {
    /// The scenario's options.
    pub fn opts(&self) -> DrainOpts {
        DrainOpts {
            users: self.users,
            admit_rate: self.admit_rate,
            settle: self.settle,
            verify: !self.no_verify,
        }
    }
}

impl CoreArgs {
    /// The scenario's options.
    pub fn opts(&self) -> CoreOpts {
        CoreOpts {
            users: self.users,
            admit_rate: self.admit_rate,
            loops: self.loops,
            ticks: self.ticks,
            tick_ms: self.tick_ms,
            push_interval_ms: self.push_interval_ms,
            sign: !self.no_sign,
        }
    }
}
