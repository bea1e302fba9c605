//! The `queue-bench` binary: parses flags, runs one scenario (or spreads it over
//! `--procs` worker processes), prints the report and writes it with `--json FILE`.
//! Everything else is in the library (`queue_bench`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use queue_bench::client::Threads;
use queue_bench::echo::EchoServer;
use queue_bench::pace::parse_duration;
use queue_bench::report::Report;
use queue_bench::scenario::{self, core::CoreOpts, drain::DrainOpts, pingpong::PingpongOpts};
use queue_bench::scenario::{steady::SteadyOpts, storm::StormOpts, BenchError, Common, Outcome};
use queue_bench::{limits, procs};

// The counting allocator (mimalloc underneath, as in the server): `core` reports
// allocations per join and per tick from it.
#[global_allocator]
static GLOBAL: queue_server::alloc_count::CountingAlloc = queue_server::alloc_count::CountingAlloc;

/// Load tool for queue-server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

/// Flags of every socket scenario.
#[derive(Args, Debug, Clone)]
struct Target {
    /// Player port of the server.
    #[arg(long, default_value = "127.0.0.1:7000")]
    target: SocketAddr,
    /// Control port (allocation counters; admissions for `drain`).
    #[arg(long, default_value = "127.0.0.1:7001")]
    control: SocketAddr,
    /// Do not touch the control port (e.g. against `echo-server`).
    #[arg(long)]
    no_control: bool,
    /// Bearer key of the control API, if it has one.
    #[arg(long)]
    api_key: Option<String>,
    /// Queue to log in to (default: the server's `default`).
    #[arg(long)]
    queue: Option<String>,
    /// Client threads (default: one per CPU this process may run on).
    #[arg(long)]
    threads: Option<usize>,
    /// Pin client threads to these CPUs, round-robin (e.g. `--cpus 1`).
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Spread the users over this many bench processes (file-descriptor limit).
    #[arg(long, default_value_t = 1)]
    procs: u64,
    /// Loopback source addresses to spread connections over (ephemeral port limit).
    #[arg(long)]
    source_addrs: Option<String>,
    /// `user_id` of the first player (default: derived from the clock, so runs differ).
    #[arg(long)]
    user_base: Option<u64>,
    /// Label of the server build for the allocation report (e.g. `release+count-alloc`).
    #[arg(long, default_value = "unknown")]
    server_build: String,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Internal: run as worker I of N of a `--procs` parent.
    #[arg(long, hide = true)]
    worker: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// N players connect and log in, at once or ramped at --rate per second.
    Storm {
        #[command(flatten)]
        target: Target,
        /// Players.
        #[arg(long)]
        users: u64,
        /// Connects per second (0 = all at once).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Keep the places (do not send `leave` at the end).
        #[arg(long)]
        no_leave: bool,
    },
    /// Every player sends one request per interval, spread evenly, for a duration.
    Steady {
        #[command(flatten)]
        target: Target,
        /// Players.
        #[arg(long)]
        users: u64,
        /// Time between two requests of one player.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        interval: Duration,
        /// Measured window.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Request: position or heartbeat.
        #[arg(long, default_value = "position")]
        cmd: String,
        /// Logins per second during setup (0 = all at once).
        #[arg(long, default_value_t = 0.0)]
        login_rate: f64,
        /// Keep the places (do not send `leave` at the end).
        #[arg(long)]
        no_leave: bool,
    },
    /// Closed loop: one request in flight per connection, for the highest rate.
    Pingpong {
        #[command(flatten)]
        target: Target,
        /// Connections.
        #[arg(long)]
        conns: u64,
        /// Measured window.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Request: position or heartbeat.
        #[arg(long, default_value = "position")]
        cmd: String,
        /// Keep the places (do not send `leave` at the end).
        #[arg(long)]
        no_leave: bool,
    },
    /// Fill a queue, admit through the control API at --admit-rate, check every admission.
    Drain {
        #[command(flatten)]
        target: Target,
        /// Players.
        #[arg(long)]
        users: u64,
        /// Admissions per second.
        #[arg(long)]
        admit_rate: f64,
        /// Wait this long for the last pushes after the last admit call.
        #[arg(long, default_value = "15s", value_parser = parse_duration)]
        settle: Duration,
        /// Skip verifying every token through the control API.
        #[arg(long)]
        no_verify: bool,
    },
    /// A bare frame echo server (same framing and threading, no JSON): the ceiling.
    EchoServer {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:7100")]
        listen: SocketAddr,
        /// Threads (one listener each, SO_REUSEPORT).
        #[arg(long, default_value_t = 1)]
        cores: usize,
        /// Pin the threads to these CPUs, round-robin.
        #[arg(long, value_delimiter = ',')]
        cpus: Vec<usize>,
        /// Stop after this long (default: run until killed).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// The queue core and rank broadcast in process, virtual sessions, no sockets.
    Core {
        /// Players to queue.
        #[arg(long, default_value_t = 1_000_000)]
        users: u64,
        /// Automatic admission, players per second.
        #[arg(long, default_value_t = 5000.0)]
        admit_rate: f64,
        /// Virtual io loops.
        #[arg(long, default_value_t = 2)]
        loops: usize,
        /// Core ticks after the joins.
        #[arg(long, default_value_t = 300)]
        ticks: u64,
        /// Virtual ms per tick (core.tick_ms).
        #[arg(long, default_value_t = 10)]
        tick_ms: u64,
        /// Push throttle, ms (server.push_interval_ms).
        #[arg(long, default_value_t = 1000)]
        push_interval_ms: u64,
        /// Do not sign tokens.
        #[arg(long)]
        no_sign: bool,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// The default user base: changes every second, so a run never resumes an earlier
/// run's places (which outlive their connections for the reconnect grace).
fn clock_user_base() -> u64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (secs % 1_000_000) * 10_000_000
}

impl Target {
    fn common(&self, user_base: u64) -> Result<Common, BenchError> {
        let cpus_allowed = core_affinity::get_core_ids().map_or(1, |c| c.len()).max(1);
        Ok(Common {
            player: self.target,
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

/// Runs a socket scenario here, as a `--procs` parent, or as a worker.
fn socket_scenario(
    t: &Target,
    users: u64,
    run: impl Fn(&Common, u64) -> Result<Outcome, BenchError>,
) -> Result<Option<Outcome>, BenchError> {
    let base = t.user_base.unwrap_or_else(clock_user_base);
    if let Some(w) = &t.worker {
        let (i, n) = procs::parse_worker(w).map_err(BenchError::Setup)?;
        let (lo, count) = procs::slice(users, i, n);
        let mut c = t.common(base + lo)?;
        c.procs = n;
        c.control = None; // the parent measures allocations around all workers
        let out = run(&c, count)?;
        let line =
            serde_json::to_string(&out.to_wire()).map_err(|e| BenchError::Setup(e.to_string()))?;
        println!("{}{line}", procs::OUTCOME_PREFIX);
        return Ok(None);
    }
    let c = t.common(base)?;
    if t.procs <= 1 {
        return run(&c, users).map(Some);
    }
    c.check_capacity(users.div_ceil(t.procs))?;
    let mut control = c.control();
    let probe = c.probe(&mut control);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wires = procs::run_workers(&args, t.procs, base)?;
    let mut out = Outcome::default();
    for w in &wires {
        out.merge_wire(w);
    }
    out.alloc = c.probe_end(&mut control, probe);
    if out.alloc.is_some() {
        out.notes.push(
            "with --procs the allocation window spans the workers' whole runs (setup included)"
                .into(),
        );
    }
    Ok(Some(out))
}

fn report(scenario: &str, op: &str, out: Outcome) -> Report {
    let mut r = Report::from_tally(scenario, op, out.elapsed_s, out.ops, &out.tally);
    r.values.extend(out.values);
    r.checks = out.checks;
    r.server_alloc = out.alloc;
    r.notes = out.notes;
    r
}

fn run(cli: Cli) -> Result<(), BenchError> {
    let (report, json) = match cli.scenario {
        Scenario::Storm {
            target,
            users,
            rate,
            no_leave,
        } => {
            let o = |users| StormOpts {
                users,
                rate,
                leave: !no_leave,
            };
            let Some(out) = socket_scenario(&target, users, |c, n| scenario::storm::run(c, &o(n)))?
            else {
                return Ok(());
            };
            let mut r = report("storm", "logins answered OK", out);
            r.param("users", users);
            r.param("rate", rate);
            r.param("procs", target.procs);
            if r.elapsed_s > 0.0 {
                r.values
                    .insert("logins_per_s".into(), r.ops as f64 / r.elapsed_s);
            }
            r.notes
                .push("rtt = intended connect time -> login answer (first position)".into());
            (r, target.json)
        }
        Scenario::Steady {
            target,
            users,
            interval,
            duration,
            cmd,
            login_rate,
            no_leave,
        } => {
            let o = |users| SteadyOpts {
                users,
                interval,
                duration,
                cmd: cmd.clone(),
                login_rate,
                leave: !no_leave,
            };
            let Some(out) =
                socket_scenario(&target, users, |c, n| scenario::steady::run(c, &o(n)))?
            else {
                return Ok(());
            };
            let mut r = report("steady", "answers", out);
            r.param("users", users);
            r.param("interval_s", interval.as_secs_f64());
            r.param("duration_s", duration.as_secs_f64());
            r.param("cmd", &cmd);
            r.param("procs", target.procs);
            r.notes.push(
                "rtt = intended send time -> answer (open loop, coordinated omission corrected)"
                    .into(),
            );
            (r, target.json)
        }
        Scenario::Pingpong {
            target,
            conns,
            duration,
            cmd,
            no_leave,
        } => {
            let o = |conns| PingpongOpts {
                conns,
                duration,
                cmd: cmd.clone(),
                leave: !no_leave,
            };
            let Some(out) =
                socket_scenario(&target, conns, |c, n| scenario::pingpong::run(c, &o(n)))?
            else {
                return Ok(());
            };
            let mut r = report("pingpong", "answers", out);
            r.param("conns", conns);
            r.param("duration_s", duration.as_secs_f64());
            r.param("cmd", &cmd);
            r.param("target", target.target.to_string());
            r.param("procs", target.procs);
            (r, target.json)
        }
        Scenario::Drain {
            target,
            users,
            admit_rate,
            settle,
            no_verify,
        } => {
            if target.procs > 1 {
                return Err(BenchError::Setup(
                    "drain runs in one process (it matches every push to its admit call); \
                     one process opens up to ~19,900 players here"
                        .into(),
                ));
            }
            let o = DrainOpts {
                users,
                admit_rate,
                settle,
                verify: !no_verify,
            };
            let Some(out) = socket_scenario(&target, users, |c, n| {
                scenario::drain::run(
                    c,
                    &DrainOpts {
                        users: n,
                        ..o.clone()
                    },
                )
            })?
            else {
                return Ok(());
            };
            let mut r = report("drain", "admitted pushes delivered", out);
            r.param("users", users);
            r.param("admit_rate", admit_rate);
            r.notes
                .push("rtt = admit call sent -> `admitted` push received".into());
            (r, target.json)
        }
        Scenario::EchoServer {
            listen,
            cores,
            cpus,
            duration,
        } => {
            let server = EchoServer::start(listen, cores, &cpus)
                .map_err(|e| BenchError::Setup(format!("echo server on {listen}: {e}")))?;
            eprintln!(
                "echo-server listening on {} ({} thread(s))",
                server.addr, cores
            );
            match duration {
                Some(d) => {
                    std::thread::sleep(d);
                    server.stop();
                }
                None => server.wait(),
            }
            return Ok(());
        }
        Scenario::Core {
            users,
            admit_rate,
            loops,
            ticks,
            tick_ms,
            push_interval_ms,
            no_sign,
            json,
        } => {
            let o = CoreOpts {
                users,
                admit_rate,
                loops,
                ticks,
                tick_ms,
                push_interval_ms,
                sign: !no_sign,
            };
            let out = scenario::core::run(&o)?;
            let mut r = report("core", "joins", out);
            r.param("users", users);
            r.param("admit_rate", admit_rate);
            r.param("loops", loops);
            r.param("ticks", ticks);
            r.param("tick_ms", tick_ms);
            r.param("sign", !no_sign);
            r.notes.push("rtt = one core tick (apply, sort departures, sign tokens); broadcast_pass_per_loop = one loop applying it to its sessions".into());
            (r, json)
        }
    };
    print!("{}", report.render());
    if let Some(path) = json {
        report
            .write_json(&path)
            .map_err(|e| BenchError::Setup(format!("writing {}: {e}", path.display())))?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("queue-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
