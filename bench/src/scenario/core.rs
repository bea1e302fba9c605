//! `core`: the queue core and the rank broadcast in process, without sockets, at a
//! scale no single process can reach with real connections (a million players; the
//! descriptor limit stops sockets at ~20,000 per process). It drives the server's own
//! [`QueueState`] (joins, then automatic admission at R/s, tick by tick in virtual
//! time, tokens signed as the core thread signs them) and applies each tick's
//! [`QueueDelta`] to virtual sessions split over virtual io loops with the server's
//! own rank/push tracker ([`Tracker`], one per virtual loop, as `io_loop` uses it):
//! two binary searches per session, a throttled `position` push (at once or deferred,
//! then flushed when due) encoded with the server's encoder where the position changed.
//!
//! Reports joins per second, the cost of one core tick and of one broadcast pass per
//! loop, memory per queued player, an exact resync (its longest slice: the core's
//! stall), and (the bench runs on the counting
//! allocator) allocations per join and per tick.
//!
//! Invariants:
//! - time is virtual (`tick_ms` per tick) so the numbers are CPU cost, not sleeps;
//! - the virtual sessions' positions are checked against the state's exact positions
//!   at the end: a broadcast that drifted is a failed check, not a number.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use queue_server::alloc_count;
use queue_server::config::Config;
use queue_server::msg::{ConnRef, QueueDelta, RankBatch};
use queue_server::queue::core::RESYNC_SLICE;
use queue_server::queue::state::{Event, Limits, Op, QueueState};
use queue_server::shard::tracker::{Follow, Follows, Push, Tracker};
use queue_server::token::TokenSigner;

use super::{BenchError, Outcome};
use crate::hist::Latency;

/// Flags of `core`.
#[derive(Clone, Debug)]
pub struct CoreOpts {
    /// Players to queue.
    pub users: u64,
    /// Automatic admission rate, players per second.
    pub admit_rate: f64,
    /// Virtual io loops the sessions are split over.
    pub loops: usize,
    /// Core ticks to run after the joins.
    pub ticks: u64,
    /// Virtual time per tick, ms (the server's `core.tick_ms`).
    pub tick_ms: u64,
    /// Least time between two pushes to one session, ms (`server.push_interval_ms`).
    pub push_interval_ms: u64,
    /// Sign a token per admission, as the core thread does.
    pub sign: bool,
}

/// One virtual session: what an io loop keeps per waiting player to follow its rank.
struct VSession {
    /// Its place, position and push throttle, as a server session holds them.
    follow: Follow,
    /// Admitted: no longer follows ranks.
    admitted: Cell<bool>,
}

impl Follows for VSession {
    fn follow(&self) -> &Follow {
        &self.follow
    }
    fn waits(&self) -> bool {
        !self.admitted.get()
    }
}

/// Resident set size of this process, bytes.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

/// The simulation: the core's state, the virtual sessions and the tick buffers.
struct Sim {
    /// The server's queue state machine.
    state: QueueState,
    /// Virtual sessions per virtual io loop (a session's id is its index).
    sessions: Vec<Vec<VSession>>,
    /// Each virtual loop's rank/push tracker.
    trackers: Vec<Tracker>,
    /// Virtual time 0 as an `Instant` (the tracker's clock).
    epoch: Instant,
    /// Signs a token per admission, when asked.
    signer: Option<TokenSigner>,
    /// Events of one `apply`.
    events: Vec<Event>,
    /// Virtual clock, ms.
    now_ms: u64,
    /// Per loop: sessions admitted by the current tick.
    per_loop_admits: Vec<Vec<u64>>,
    /// The current tick's broadcast (its one queue's delta).
    batch: Arc<RankBatch>,
    /// Where position pushes are encoded (cleared before it grows large).
    push_buf: BytesMut,
    /// Pushes sent (position and admitted).
    pushes: u64,
    /// Players admitted.
    admitted: u64,
}

/// Allocations and timings measured around the ticks.
#[derive(Default)]
struct TickCosts {
    /// One core tick.
    tick: Latency,
    /// One broadcast pass of one loop.
    pass: Latency,
    /// Allocations during the core's tick work.
    allocs: u64,
}

impl Sim {
    /// An empty queue for `users` players, sessions split over `loops` loops.
    fn new(o: &CoreOpts, users: u64, loops: usize) -> Result<Sim, BenchError> {
        let push_interval = Duration::from_millis(o.push_interval_ms);
        let signer = if o.sign {
            let (s, _) = TokenSigner::from_config(&Config::default().tokens)
                .map_err(|e| BenchError::Setup(format!("token signer: {e}")))?;
            Some(s)
        } else {
            None
        };
        let limits = Limits {
            reconnect_grace_ms: 60_000,
            token_ttl_secs: 300,
            auto_create: false,
            auto_max_waiting: users,
            max_queues: 1000,
            auto_expire_ms: 0,
        };
        Ok(Sim {
            state: QueueState::new(limits, &[("default".to_string(), users, 0.0)], 0x5eed),
            sessions: (0..loops)
                .map(|_| Vec::with_capacity(users as usize / loops + 1))
                .collect(),
            // Every batch applied at once (no coalescing: the bench times each pass).
            trackers: (0..loops)
                .map(|_| Tracker::new(push_interval, usize::MAX))
                .collect(),
            epoch: Instant::now(),
            signer,
            events: Vec::new(),
            now_ms: 1_700_000_000_000,
            per_loop_admits: vec![Vec::new(); loops],
            batch: Arc::new(RankBatch {
                queues: vec![QueueDelta::default()],
            }),
            push_buf: BytesMut::with_capacity(1 << 16),
            pushes: 0,
            admitted: 0,
        })
    }

    /// Joins: the core applies each and answers with the exact position.
    fn join_all(&mut self, users: u64) -> Result<(), BenchError> {
        let loops = self.sessions.len();
        let mut op = Op::Join {
            queue: "default".to_string(),
            user: 0,
            prio: false,
            conn: ConnRef {
                loop_id: 0,
                session: 0,
            },
        };
        for u in 0..users {
            let l = (u % loops as u64) as usize;
            if let Op::Join { user, conn, .. } = &mut op {
                *user = u;
                *conn = ConnRef {
                    loop_id: l as u16,
                    session: self.sessions[l].len() as u64,
                };
            }
            self.state.apply(&op, self.now_ms, &mut self.events);
            let place = self
                .state
                .place(0, u)
                .ok_or_else(|| BenchError::Setup(format!("join of {u} failed")))?;
            let position = self.state.queues()[0].position(place.key);
            let session = VSession {
                follow: Follow::new(self.instant()),
                admitted: Cell::new(false),
            };
            let now = self.instant();
            self.trackers[l].start(&session.follow, 0, place.key, position, now);
            self.sessions[l].push(session);
        }
        self.events.clear();
        Ok(())
    }

    /// The virtual clock as an `Instant`.
    fn instant(&self) -> Instant {
        self.epoch + Duration::from_millis(self.now_ms)
    }

    /// Starts automatic admission (a first tick sets the state's clock).
    fn start_admission(&mut self, admit_rate: f64) {
        self.state.apply(&Op::Tick, self.now_ms, &mut self.events);
        self.events.clear();
        let op = Op::SetRate {
            queue: 0,
            per_second: admit_rate,
        };
        self.state.apply(&op, self.now_ms, &mut self.events);
    }

    /// One core tick: admissions (tokens signed), departures sorted into the delta.
    fn tick(&mut self) {
        self.events.clear();
        self.state.apply(&Op::Tick, self.now_ms, &mut self.events);
        // The loops dropped their references after the previous pass: reuse the batch.
        let delta = &mut Arc::get_mut(&mut self.batch).expect("batch shared").queues[0];
        delta.departed.clear();
        for e in self.events.drain(..) {
            match e {
                Event::Departed { key, .. } => delta.departed.push(key),
                Event::Admitted {
                    user,
                    conn,
                    jti,
                    iat,
                    exp,
                    ..
                } => {
                    if let Some(s) = &self.signer {
                        let token = s.sign(user, "default", &self.state.jti_text(jti), iat, exp);
                        std::hint::black_box(token);
                    }
                    if let Some(c) = conn {
                        self.per_loop_admits[c.loop_id as usize].push(c.session);
                    }
                    self.admitted += 1;
                }
                _ => {}
            }
        }
        delta.departed.sort_unstable();
        delta.queue_len = self.state.queues()[0].waiting();
    }

    /// Loop `l` applies the tick's batch to its sessions and sends the deferred pushes
    /// now due, as an io loop does.
    fn broadcast(&mut self, l: usize) {
        let now = self.instant();
        let Sim {
            sessions,
            trackers,
            batch,
            per_loop_admits,
            push_buf,
            pushes,
            ..
        } = self;
        let (own, tracker) = (&sessions[l], &trackers[l]);
        for s in per_loop_admits[l].drain(..) {
            own[s as usize].admitted.set(true);
            *pushes += 1;
        }
        let queue_len = batch.queues[0].queue_len;
        let mut push = |s: &VSession| {
            if push_buf.len() > 60_000 {
                push_buf.clear();
            }
            let position = s.follow.position();
            queue_server::protocol::encode_position(push_buf, 0, position, queue_len, None);
            s.follow.sent(position);
            *pushes += 1;
        };
        // Ignoring the step: trackers here never coalesce, so a batch that can move
        // someone is pending now and the pass applies it.
        let _ = tracker.on_batch(batch.clone(), own.len());
        if let Some(pass) = tracker.begin_pass() {
            for (id, s) in own.iter().enumerate() {
                if tracker.apply(&pass, id as u64, s, now) == Push::Now {
                    push(s);
                }
            }
            tracker.end_pass(pass);
        }
        tracker.flush_due(now, |id| own.get(id as usize), |s| push(s));
    }

    /// `ticks` ticks of `tick_ms`, each followed by every loop's broadcast pass.
    fn run_ticks(&mut self, o: &CoreOpts) -> TickCosts {
        let mut costs = TickCosts::default();
        for _ in 0..o.ticks {
            self.now_ms += o.tick_ms;
            let a0 = alloc_count::allocations();
            let t = Instant::now();
            self.tick();
            costs.tick.record(t.elapsed());
            costs.allocs += alloc_count::allocations() - a0;
            if self.batch.queues[0].departed.is_empty() {
                continue;
            }
            for l in 0..self.sessions.len() {
                let t = Instant::now();
                self.broadcast(l);
                costs.pass.record(t.elapsed());
            }
        }
        costs
    }

    /// One exact resync cycle as the core runs it every `core.resync_secs`: slices of
    /// at most [`RESYNC_SLICE`] slots from a cursor (`Queue::walk_from`), one slice a
    /// core round. Returns each slice's time (ms, sorted: what it adds to a core round)
    /// and the sessions whose position drifted from it.
    fn resync_and_drift(&self) -> (Vec<f64>, usize) {
        let mut per_loop: Vec<Vec<(u64, u64)>> = vec![Vec::new(); self.sessions.len()];
        let q = &self.state.queues()[0];
        let (mut from, mut slice_ms) = (Some(0), Vec::new());
        while let Some(start) = from.take() {
            let t = Instant::now();
            let mut next_position = None;
            for (walked, (key, user)) in q.walk_from(start).enumerate() {
                if walked == RESYNC_SLICE {
                    from = Some(key);
                    break;
                }
                let Some(user) = user else { continue };
                let position = next_position.unwrap_or_else(|| q.position(key));
                next_position = Some(position + 1);
                if let Some(conn) = self.state.place(0, user).and_then(|p| p.conn) {
                    per_loop[conn.loop_id as usize].push((conn.session, position));
                }
            }
            slice_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let drift = per_loop
            .iter()
            .enumerate()
            .flat_map(|(l, list)| list.iter().map(move |&(s, p)| (l, s, p)))
            .filter(|&(l, s, p)| self.sessions[l][s as usize].follow.position() != p)
            .count();
        slice_ms.sort_unstable_by(f64::total_cmp);
        (slice_ms, drift)
    }
}

/// Runs the scenario.
pub fn run(o: &CoreOpts) -> Result<Outcome, BenchError> {
    let loops = o.loops.max(1);
    let users = o.users.max(1);
    let rss0 = rss_bytes();
    let mut sim = Sim::new(o, users, loops)?;
    let allocs0 = alloc_count::allocations();
    let started = Instant::now();
    sim.join_all(users)?;
    let join_s = started.elapsed().as_secs_f64();
    let join_allocs = alloc_count::allocations() - allocs0;
    let rss1 = rss_bytes();
    sim.start_admission(o.admit_rate);
    let costs = sim.run_ticks(o);
    let (slice_ms, drift) = sim.resync_and_drift();
    let slice_at = |p: f64| slice_ms[((slice_ms.len() - 1) as f64 * p).round() as usize];

    let mut out = Outcome::default();
    out.tally.rtt = costs.tick;
    out.tally
        .named
        .insert("broadcast_pass_per_loop".into(), costs.pass);
    out.ops = users;
    out.elapsed_s = join_s;
    // RSS growth over the joins, less the virtual sessions' arrays: the core's state.
    let vsession_bytes = (sim.sessions.iter().map(Vec::capacity).sum::<usize>()
        * std::mem::size_of::<VSession>()) as u64;
    let core_bytes = rss1.saturating_sub(rss0).saturating_sub(vsession_bytes);
    let per_player = |b: u64| b as f64 / users as f64;
    let per_tick = |n: u64| n as f64 / o.ticks.max(1) as f64;
    let session_bytes = std::mem::size_of::<queue_server::session::Session>();
    out.values = BTreeMap::from([
        ("joins_per_s".to_string(), users as f64 / join_s),
        ("admitted".to_string(), sim.admitted as f64),
        ("pushes".to_string(), sim.pushes as f64),
        ("pushes_per_tick".to_string(), per_tick(sim.pushes)),
        (
            "core_bytes_per_player_rss".to_string(),
            per_player(core_bytes),
        ),
        (
            "lane_bytes_per_player".to_string(),
            per_player(sim.state.queues()[0].heap_bytes() as u64),
        ),
        (
            "server_session_struct_bytes".to_string(),
            session_bytes as f64,
        ),
        ("resync_slice_ms_p50".to_string(), slice_at(0.5)),
        ("resync_slice_ms_p99".to_string(), slice_at(0.99)),
        ("resync_slice_ms_max".to_string(), slice_at(1.0)),
        ("resync_slices".to_string(), slice_ms.len() as f64),
        ("allocs_per_join".to_string(), per_player(join_allocs)),
        ("allocs_per_tick".to_string(), per_tick(costs.allocs)),
    ]);
    out.checks
        .insert("positions_match_state".into(), drift == 0);
    if alloc_count::allocations() == 0 {
        out.notes.push(
            "allocation counts need the counting allocator (the queue-bench binary installs it)"
                .into(),
        );
    }
    out.notes.push(format!(
        "virtual sessions hold {} bytes each; a real server session is a `Session` ({session_bytes} bytes) behind an Rc plus its buffers",
        std::mem::size_of::<VSession>(),
    ));
    Ok(out)
}
