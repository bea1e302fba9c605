//! The `queue-bench` binary: parses flags ([`cli`]), runs one scenario (or spreads it
//! over `--procs` worker processes), with `--compare-echo` runs the same load against
//! the bench's echo server, prints the report and writes it with `--json FILE` (plus
//! the full latency spectra as `.hgrm` files beside it). Everything else is in the
//! library (`queue_bench`).

mod cli;

use std::net::SocketAddr;
use std::path::Path;

use clap::Parser;
use cli::{clock_user_base, Cli, Scenario, Target};
use queue_bench::echo::EchoServer;
use queue_bench::procs;
use queue_bench::report::{write_spectra, Report, Tally};
use queue_bench::scenario::{self, core::CoreOpts, drain::DrainOpts, pingpong::PingpongOpts};
use queue_bench::scenario::{steady::SteadyOpts, storm::StormOpts, BenchError, Common, Outcome};

// The counting allocator (mimalloc underneath, as in the server): `core` reports
// allocations per join and per tick from it.
#[global_allocator]
static GLOBAL: queue_server::alloc_count::CountingAlloc = queue_server::alloc_count::CountingAlloc;

/// A finished run: the report and the histograms behind it (for the `.hgrm` files).
struct Measured {
    /// What is printed and written as JSON.
    report: Report,
    /// The merged tally (whole histograms).
    tally: Tally,
    /// The echo server's tally, with `--compare-echo`.
    echo: Option<Tally>,
}

/// Runs a socket scenario here, as a `--procs` parent, or as a worker (`None`: the
/// worker printed its outcome for the parent).
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

/// The same load against the bench's echo server, started in this process on a free
/// port: the machine's ceiling for this scenario, measured in the same run.
fn echo_run(
    t: &Target,
    users: u64,
    run: &impl Fn(&Common, u64) -> Result<Outcome, BenchError>,
) -> Result<Outcome, BenchError> {
    if t.procs > 1 {
        return Err(BenchError::Setup(
            "--compare-echo runs in one process: drop --procs (or run the echo server \
             yourself: queue-bench echo-server)"
                .into(),
        ));
    }
    let echo = EchoChild::start(t.echo_cores, &t.echo_cpus)?;
    let mut c = t.common(t.user_base.unwrap_or_else(clock_user_base))?;
    c.players = vec![echo.addr];
    c.control = None;
    run(&c, users)
}

/// The echo server of `--compare-echo`, in a child process (`queue-bench echo-server`):
/// in this process its accepted sockets would share the open-file limit with the
/// bench's own, and 10,000 users need 20,000 descriptors (past the usual 20,000 limit,
/// the echo server's accepts failed and the run never finished). Killed on drop.
struct EchoChild {
    /// Where it listens.
    addr: SocketAddr,
    /// The child process.
    child: std::process::Child,
}

impl EchoChild {
    fn start(cores: usize, cpus: &[usize]) -> Result<EchoChild, BenchError> {
        let setup = |e: std::io::Error| BenchError::Setup(format!("echo server: {e}"));
        // A free loopback port: bound here and released for the child to take.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr());
        let addr = addr.map_err(setup)?;
        let mut cmd = std::process::Command::new(std::env::current_exe().map_err(setup)?);
        cmd.args(["echo-server", "--listen", &addr.to_string()]);
        cmd.args(["--cores", &cores.max(1).to_string()]);
        if !cpus.is_empty() {
            let list: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
            cmd.args(["--cpus", &list.join(",")]);
        }
        let child = cmd
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(setup)?;
        let echo = EchoChild { addr, child };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if std::time::Instant::now() > deadline {
                return Err(BenchError::Setup(format!(
                    "echo server did not listen on {addr}"
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(echo)
    }
}

impl Drop for EchoChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a socket scenario (and its echo twin with `--compare-echo`) and makes the
/// report with `finish` (which adds the scenario's params and notes).
fn measured(
    t: &Target,
    users: u64,
    run: impl Fn(&Common, u64) -> Result<Outcome, BenchError>,
    finish: impl Fn(Outcome) -> Report,
) -> Result<Option<Measured>, BenchError> {
    let Some(out) = socket_scenario(t, users, &run)? else {
        return Ok(None);
    };
    let tally = out.tally.clone();
    let mut report = finish(out);
    if t.target.len() > 1 {
        report.param("targets", join_addrs(&t.target));
    }
    let mut echo = None;
    if t.compare_echo {
        let began = std::time::Instant::now();
        let out = echo_run(t, users, &run)?;
        // How long the echo phase took (setup included): scripts that time the whole
        // command (server CPU % in scripts/bench.sh) take it off.
        report
            .values
            .insert("echo_run_s".into(), began.elapsed().as_secs_f64());
        echo = Some(out.tally.clone());
        let mut e = finish(out);
        e.param("target", "echo-server");
        e.notes.clear(); // the same notes as the run it is nested in
        report.compare_echo(e);
    }
    Ok(Some(Measured {
        report,
        tally,
        echo,
    }))
}

/// Player addresses as the report shows them (`A,B,C`).
fn join_addrs(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// A report from a merged outcome.
fn report(scenario: &str, op: &str, out: Outcome) -> Report {
    let mut r = Report::from_tally(scenario, op, out.elapsed_s, out.ops, &out.tally);
    r.values.extend(out.values);
    r.checks = out.checks;
    r.server_alloc = out.alloc;
    r.notes = out.notes;
    r
}

fn storm(
    t: &Target,
    users: u64,
    rate: f64,
    no_leave: bool,
) -> Result<Option<Measured>, BenchError> {
    let o = |users| StormOpts {
        users,
        rate,
        leave: !no_leave,
    };
    measured(
        t,
        users,
        |c, n| scenario::storm::run(c, &o(n)),
        |out| {
            let mut r = report("storm", "logins answered OK", out);
            r.param("users", users);
            r.param("rate", rate);
            r.param("procs", t.procs);
            if r.elapsed_s > 0.0 {
                r.values
                    .insert("logins_per_s".into(), r.ops as f64 / r.elapsed_s);
            }
            r.notes
                .push("rtt = intended connect time -> login answer (first position)".into());
            r
        },
    )
}

fn steady(t: &Target, o: SteadyOpts) -> Result<Option<Measured>, BenchError> {
    let users = o.users;
    let run = |c: &Common, n| {
        scenario::steady::run(
            c,
            &SteadyOpts {
                users: n,
                ..o.clone()
            },
        )
    };
    measured(t, users, run, |out| {
        let mut r = report("steady", "answers", out);
        r.param("users", users);
        r.param("interval_s", o.interval.as_secs_f64());
        r.param("duration_s", o.duration.as_secs_f64());
        r.param("warmup_s", o.warmup.as_secs_f64());
        r.param("cmd", &o.cmd);
        r.param("procs", t.procs);
        r.notes.push(
            "rtt = intended send time -> answer (open loop, coordinated omission corrected); \
             send_lag = actual - intended send time; rtt_from_send = actual send -> answer"
                .into(),
        );
        r
    })
}

fn pingpong(t: &Target, o: PingpongOpts) -> Result<Option<Measured>, BenchError> {
    let conns = o.conns;
    let run = |c: &Common, n| {
        scenario::pingpong::run(
            c,
            &PingpongOpts {
                conns: n,
                ..o.clone()
            },
        )
    };
    measured(t, conns, run, |out| {
        let mut r = report("pingpong", "answers", out);
        r.param("conns", conns);
        r.param("duration_s", o.duration.as_secs_f64());
        r.param("warmup_s", o.warmup.as_secs_f64());
        r.param("cmd", &o.cmd);
        r.param("target", join_addrs(&t.target));
        r.param("procs", t.procs);
        r.notes
            .push("closed loop: rtt is from the actual send (no schedule, no send lag)".into());
        r
    })
}

fn drain(t: &Target, o: DrainOpts) -> Result<Option<Measured>, BenchError> {
    if t.procs > 1 {
        return Err(BenchError::Setup(
            "drain runs in one process (it matches every push to its admit call); \
             one process opens up to ~19,900 players here"
                .into(),
        ));
    }
    if t.compare_echo {
        return Err(BenchError::Setup(
            "drain admits through the control API, which the echo server does not have: \
             --compare-echo does not apply"
                .into(),
        ));
    }
    let users = o.users;
    let run = |c: &Common, n| {
        scenario::drain::run(
            c,
            &DrainOpts {
                users: n,
                ..o.clone()
            },
        )
    };
    measured(t, users, run, |out| {
        let mut r = report("drain", "admitted pushes delivered", out);
        r.param("users", users);
        r.param("admit_rate", o.admit_rate);
        r.notes.push(
            "rtt = admit call sent -> `admitted` push received; send_lag = admit call sent - \
             the instant the schedule made that admission due"
                .into(),
        );
        r
    })
}

fn core(o: &CoreOpts) -> Result<Measured, BenchError> {
    let out = scenario::core::run(o)?;
    let tally = out.tally.clone();
    let mut r = report("core", "joins", out);
    r.param("users", o.users);
    r.param("admit_rate", o.admit_rate);
    r.param("loops", o.loops);
    r.param("ticks", o.ticks);
    r.param("tick_ms", o.tick_ms);
    r.param("sign", o.sign);
    r.notes.push("rtt = one core tick (apply, sort departures, sign tokens); broadcast_pass_per_loop = one loop applying it to its sessions".into());
    Ok(Measured {
        report: r,
        tally,
        echo: None,
    })
}

fn echo_server(
    listen: SocketAddr,
    cores: usize,
    cpus: &[usize],
    duration: Option<std::time::Duration>,
) -> Result<(), BenchError> {
    let server = EchoServer::start(listen, cores, cpus)
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
    Ok(())
}

/// Prints the report; with `--json FILE` writes it and the `.hgrm` spectra beside it.
fn output(m: &Measured, json: Option<&Path>) -> Result<(), BenchError> {
    print!("{}", m.report.render());
    let Some(path) = json else {
        return Ok(());
    };
    let io =
        |e: std::io::Error| BenchError::Setup(format!("writing beside {}: {e}", path.display()));
    m.report.write_json(path).map_err(io)?;
    write_spectra(path, None, &m.tally).map_err(io)?;
    if let Some(e) = &m.echo {
        write_spectra(path, Some("echo"), e).map_err(io)?;
    }
    Ok(())
}

fn run(cli: Cli) -> Result<(), BenchError> {
    let (m, json) = match cli.scenario {
        Scenario::Storm(a) => {
            let t = &a.target;
            (storm(t, a.users, a.rate, a.no_leave)?, t.json.clone())
        }
        Scenario::Steady(a) => (steady(&a.target, a.opts())?, a.target.json.clone()),
        Scenario::Pingpong(a) => (pingpong(&a.target, a.opts())?, a.target.json.clone()),
        Scenario::Drain(a) => (drain(&a.target, a.opts())?, a.target.json.clone()),
        Scenario::EchoServer(a) => return echo_server(a.listen, a.cores, &a.cpus, a.duration),
        Scenario::Core(a) => (Some(core(&a.opts())?), a.json.clone()),
    };
    // `None`: a `--procs` worker, which already printed its outcome for the parent.
    match m {
        Some(m) => output(&m, json.as_deref()),
        None => Ok(()),
    }
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
