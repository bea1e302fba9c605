//! The scenarios and what they share: the target ([`Common`]), the measured result of
//! one process ([`Outcome`], merged across `--procs` workers), the phases that line up
//! client threads with the main thread, and the error type.
//!
//! - [`storm`]: N players connect and log in, at once or ramped;
//! - [`steady`]: every player sends one request per interval, spread evenly;
//! - [`pingpong`]: closed loop, one request in flight per connection;
//! - [`drain`]: fill a queue, admit through the control API, check every admission;
//! - [`core`]: the queue state machine and the rank broadcast in process, no sockets.
//!
//! Invariants:
//! - the main thread does all blocking control-port calls (allocation probes, admits);
//!   client threads only wait on [`Phase`]s, polling between short sleeps;
//! - user `i` always connects to the same player port ([`Common::player`]), so a
//!   cluster run spreads users round-robin over its nodes and a re-login lands where
//!   the first login did;
//! - an allocation window opens after setup (logins) and closes before teardown
//!   (`leave`), so it holds only the traffic being measured.

pub mod core;
pub mod drain;
pub mod pingpong;
pub mod steady;
pub mod storm;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::Threads;
use crate::counters::{AllocProbe, AllocReport};
use crate::http::{Control, HttpError};
use crate::limits::{self, CapacityError};
use crate::report::{Tally, TallyWire};

/// Why a scenario could not run.
#[derive(Debug)]
pub enum BenchError {
    /// The user count does not fit this machine's limits.
    Capacity(CapacityError),
    /// A control-port call failed.
    Http(HttpError),
    /// Anything else that stops the run before it measures (with the reason).
    Setup(String),
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchError::Capacity(e) => e.fmt(f),
            BenchError::Http(e) => e.fmt(f),
            BenchError::Setup(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for BenchError {}

impl From<CapacityError> for BenchError {
    fn from(e: CapacityError) -> Self {
        BenchError::Capacity(e)
    }
}

impl From<HttpError> for BenchError {
    fn from(e: HttpError) -> Self {
        BenchError::Http(e)
    }
}

/// What every socket scenario needs to know about its target.
#[derive(Clone, Debug)]
pub struct Common {
    /// Player ports (one server, or several nodes of a cluster): user `i` connects to
    /// `players[i % len]`, so a cluster gets its players spread round-robin. Never empty.
    pub players: Vec<SocketAddr>,
    /// Control port (allocation probes; required by `drain`).
    pub control: Option<SocketAddr>,
    /// Bearer key of the control API.
    pub bearer: Option<String>,
    /// Queue to log in to (None: the server's default queue).
    pub queue: Option<String>,
    /// Source addresses, dealt to connections round-robin (empty: the kernel picks).
    pub sources: Vec<IpAddr>,
    /// Client threads.
    pub threads: Threads,
    /// `user_id` of user 0; user `i` is `user_base + i`.
    pub user_base: u64,
    /// Label of the server build, for the allocation report.
    pub server_build: String,
    /// Processes the users are spread over (this one included), for the limits check.
    pub procs: u64,
}

impl Common {
    /// The player port user `i` connects to (round-robin over [`Common::players`]).
    pub fn player(&self, i: u64) -> SocketAddr {
        self.players[(i % self.players.len() as u64) as usize]
    }

    /// The source address of user `i`.
    pub fn source(&self, i: u64) -> Option<IpAddr> {
        (!self.sources.is_empty()).then(|| self.sources[(i % self.sources.len() as u64) as usize])
    }

    /// Refuses up front a user count this machine cannot open.
    pub fn check_capacity(&self, users: u64) -> Result<(), BenchError> {
        let fd_limit = limits::raise_fd_limit();
        limits::check(
            users * self.procs.max(1),
            self.procs,
            fd_limit,
            limits::ephemeral_ports(),
            &self.sources,
        )?;
        Ok(())
    }

    /// A control client, when a control address was given.
    pub fn control(&self) -> Option<Control> {
        self.control.map(|a| Control::new(a, self.bearer.clone()))
    }

    /// Opens an allocation window (None without a control address or when it fails).
    pub fn probe(&self, control: &mut Option<Control>) -> Option<AllocProbe> {
        control.as_mut().and_then(|c| AllocProbe::begin(c).ok())
    }

    /// Starts the client threads of a scenario: thread `t` runs `body(common, opts,
    /// shared, t)` on its own runtime; the handle yields each thread's result.
    pub fn spawn_clients<O, S, T, Fut>(
        &self,
        opts: &O,
        shared: &std::sync::Arc<S>,
        body: fn(Common, O, std::sync::Arc<S>, usize) -> Fut,
    ) -> std::thread::JoinHandle<Vec<T>>
    where
        O: Clone + Send + Sync + 'static,
        S: Send + Sync + 'static,
        T: Send + 'static,
        Fut: std::future::Future<Output = T> + 'static,
    {
        let (c, o, sh) = (self.clone(), opts.clone(), shared.clone());
        std::thread::spawn(move || {
            let threads = c.threads.clone();
            crate::client::run_threads(&threads, move |t| body(c.clone(), o.clone(), sh.clone(), t))
        })
    }

    /// Waits for the client threads started by [`Common::spawn_clients`] and merges
    /// their tallies into a fresh [`Outcome`].
    pub fn join_clients(
        &self,
        main: std::thread::JoinHandle<Vec<Tally>>,
    ) -> Result<Outcome, BenchError> {
        let tallies = main
            .join()
            .map_err(|_| BenchError::Setup("client thread panicked".into()))?;
        let mut out = Outcome::default();
        for t in &tallies {
            out.tally.merge(t);
        }
        Ok(out)
    }

    /// Connects player `i` (from its source address) and logs it in; a failure is
    /// counted in `tally` under `login: ...` and gives `None`.
    pub async fn logged_in(
        &self,
        i: u64,
        tally: &std::rc::Rc<std::cell::RefCell<Tally>>,
    ) -> Option<(
        monoio::net::TcpStream,
        crate::client::FrameReader,
        bytes::BytesMut,
    )> {
        let mut s = match crate::client::connect(self.player(i), self.source(i)).await {
            Ok(s) => s,
            Err(e) => {
                tally
                    .borrow_mut()
                    .error(format!("login: connect {:?}", e.kind()));
                return None;
            }
        };
        let (mut r, mut w) = (
            crate::client::FrameReader::default(),
            bytes::BytesMut::with_capacity(128),
        );
        match crate::client::login(
            &mut s,
            &mut r,
            &mut w,
            self.user_base + i,
            self.queue.as_deref(),
        )
        .await
        {
            Ok(_) => Some((s, r, w)),
            Err(f) => {
                tally.borrow_mut().error(format!("login: {}", f.key()));
                None
            }
        }
    }

    /// Closes an allocation window.
    pub fn probe_end(
        &self,
        control: &mut Option<Control>,
        probe: Option<AllocProbe>,
    ) -> Option<AllocReport> {
        let (c, p) = (control.as_mut()?, probe?);
        p.end(c, &self.server_build).ok()
    }
}

/// What one process measured in one scenario.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Counts and histograms.
    pub tally: Tally,
    /// Measured window, seconds.
    pub elapsed_s: f64,
    /// Operations completed in the window.
    pub ops: u64,
    /// Server allocations over the window, when probed.
    pub alloc: Option<AllocReport>,
    /// Scenario-specific numbers.
    pub values: std::collections::BTreeMap<String, f64>,
    /// Pass/fail checks (drain, core).
    pub checks: std::collections::BTreeMap<String, bool>,
    /// Hints for the reader.
    pub notes: Vec<String>,
}

/// An [`Outcome`] as a `--procs` worker prints it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OutcomeWire {
    /// Counts and histograms.
    pub tally: TallyWire,
    /// Measured window, seconds.
    pub elapsed_s: f64,
    /// Operations.
    pub ops: u64,
    /// Hints.
    pub notes: Vec<String>,
}

impl Outcome {
    /// The worker's printed form.
    pub fn to_wire(&self) -> OutcomeWire {
        OutcomeWire {
            tally: self.tally.to_wire(),
            elapsed_s: self.elapsed_s,
            ops: self.ops,
            notes: self.notes.clone(),
        }
    }

    /// Adds a worker's outcome: counts add up, the window is the longest one.
    pub fn merge_wire(&mut self, w: &OutcomeWire) {
        self.tally.merge(&Tally::from_wire(&w.tally));
        self.elapsed_s = self.elapsed_s.max(w.elapsed_s);
        self.ops += w.ops;
        for n in &w.notes {
            if !self.notes.contains(n) {
                self.notes.push(n.clone());
            }
        }
    }

    /// Adds the notes every socket scenario may need.
    pub fn hint(&mut self) {
        if self.tally.errors.contains_key("8 RATE_LIMITED") {
            self.notes.push(
                "RATE_LIMITED: the server caps logins per io loop (server.max_logins_per_sec_per_core, default 20000); \
                 raise it in a config file (--config) for big storms, or ramp with --rate"
                    .into(),
            );
        }
        if self
            .tally
            .errors
            .keys()
            .any(|k| k.contains("EMFILE") || k.contains("Uncategorized"))
        {
            self.notes.push("descriptor errors: the server or the bench ran out of file descriptors (ulimit -n)".into());
        }
    }
}

/// A point where every client thread arrives and the main thread releases them all.
#[derive(Debug, Default)]
pub struct Phase {
    /// Threads arrived.
    arrived: AtomicUsize,
    /// Set by the main thread: the instant the next phase starts.
    go: OnceLock<Instant>,
}

impl Phase {
    /// A client thread arrives and waits (without blocking its runtime) for the release.
    pub async fn arrive(&self) -> Instant {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        loop {
            if let Some(at) = self.go.get() {
                return *at;
            }
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The main thread waits for `n` arrivals (blocking; not on a client thread).
    pub fn wait_all(&self, n: usize) {
        while self.arrived.load(Ordering::SeqCst) < n {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Releases the waiting threads; the next phase starts at `at`.
    pub fn release(&self, at: Instant) {
        let _ = self.go.set(at);
    }
}

/// Nanoseconds from `epoch` to now (a timestamp comparable across threads).
pub fn ns_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Raises `slot` to `v` if larger.
pub fn fetch_max(slot: &AtomicU64, v: u64) {
    slot.fetch_max(v, Ordering::Relaxed);
}
