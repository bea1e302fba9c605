//! The queue core thread: the only owner of [`QueueState`]. It drains every pending
//! message, applies them, and then flushes: one [`RankBatch`] shared by all loops, the
//! join answers, the admissions and kicks, one doorbell ring per loop.
//!
//! Invariants:
//! - per loop, a flush sends the rank batch first, then the resync slice, then join
//!   answers, then admissions and kicks, so a loop applies a batch only to sessions
//!   whose position predates it, and new sessions get positions computed at flush time;
//! - the exact resync (every `core.resync_secs`) is incremental: a cycle walks every
//!   queue in id order and each queue in key order, at most [`RESYNC_SLICE`] slots (live
//!   or left) and queues a round, with a cursor (queue, next key) that survives between
//!   rounds. A slice carries positions as of its own round, after every op of it: the
//!   loop gets it behind that round's rank batch and before any later one (one FIFO
//!   channel), so overwriting with it and then applying later batches is exact. Players
//!   who joined behind the cursor were answered with exact positions and are caught by
//!   the next cycle; places that left are dead slots or gone, both skipped; an expired
//!   queue is an empty tombstone. A round's resync work is O(slice), whatever the number
//!   of players (a full walk of a million stopped the core ~150 ms);
//! - join answers compute position at flush time, after every op of the round; a login
//!   that resumed an admission is answered with that admission even if its token was
//!   used later in the same round (the login came first; never INTERNAL for it);
//! - the core never blocks on a loop with events it has not rung for. Events go to a
//!   loop with `try_send`; what does not fit waits in that loop's FIFO backlog, and once
//!   a backlog is non-empty everything for that loop goes behind it (order per loop is
//!   kept). Every flush first moves backlogs into the channels, and rings every loop it
//!   sent to or found full; while a backlog is non-empty the core waits on its inbox for
//!   at most [`BACKLOG_POLL`], so the backlog drains as fast as the loop reads. Why not a
//!   blocking send: the loop only reads after its doorbell, which rang at the end of the
//!   flush, so blocking mid-flush on a full channel waited for a loop that slept (the
//!   deadlock of issue 7: 300 logins over a 16-event channel, or one large `admit`);
//! - a backlog holds at most [`BACKLOG_MAX`] events. Past it the core does wait for that
//!   loop (back-pressure, bounded memory), but rings it before every wait; the loop
//!   drains its channel to empty before it sleeps again, so the wait always ends while
//!   the loop runs (loops never block on the core);
//! - with durability on, every op that changed the state is appended to the log as it is
//!   applied, and the round is committed (`Durability::commit`: one write, at most one
//!   fsync) before the flush sends anything, control answers included, so nothing
//!   leaves the core before its record is as durable as `durability.fsync` promises;
//! - with [`Core::with_stats`], each round adds one observation to the round-time
//!   histogram (two relaxed atomic adds) and each tick checks whether a minute of the
//!   history ended (one division; the sampling itself once a minute, never waiting on
//!   a lock): the per-op path is unchanged;
//! - with a [`Journal`] (`[journal] enabled`), the core records into it where it already
//!   handles a fact (join answers at flush, disconnects with their `SessionReport`,
//!   grace expiries, leaves, admissions, kicks, token uses, removals): a few map
//!   operations per such op, bounded memory, nothing per frame; without one, one
//!   branch per op;
//! - once the log fails the core is *degraded* for good: it applies nothing more,
//!   answers joins SHUTTING_DOWN and control writes `Unavailable`, sends none of the
//!   failed round's answers, and sets the draining flag (`/healthz` 503).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TrySendError};

use super::durability::{logged, Durability};
use super::journal::{self, EventOut, Journal, PositionCounts, UserReport, What};
use super::rank::split_key;
use super::state::{Applied, Event, Grant, Op, QueueState};
use crate::doorbell::Bell;
use crate::msg::{
    AdmittedUser, ConnRef, ControlReply, ControlReq, CoreMsg, JoinError, JoinOk, LoopEvent,
    PlaceKey, QueueDelta, QueueId, QueueStats, RankBatch, SessionId, UserId,
};
use crate::stats::history::Sampler;
use crate::stats::{LoopStats, ServerStats};
use crate::token::TokenSigner;

/// Most messages applied before a flush, so answers keep flowing under a flood.
const DRAIN_MAX: usize = 4096;
/// Most players one control `admit` call may admit.
pub const ADMIT_MAX: u64 = 100_000;
/// Most events waiting in one loop's backlog (on top of its channel). One full `admit`
/// call of players all on that loop fits; worst case about 400 bytes an event (an
/// `admitted` push with its token), so some 40 MB per loop. Past it the core waits for
/// the loop (see the module invariants).
pub const BACKLOG_MAX: usize = ADMIT_MAX as usize;
/// Most slots (players, places left behind, queues) one round's resync slice walks.
/// Measured ~115 ns a slot at a million players (the place index lookup misses the
/// cache), so ~1.2 ms of core time a round, well under the 5 ms round budget with the
/// round's other work; a million players are resynced in 100 rounds (one second at the
/// default 10 ms tick, sooner under load: every round carries a slice).
pub const RESYNC_SLICE: usize = 10_000;
/// Longest wait on the inbox while a loop has a backlog: how soon the core retries.
pub const BACKLOG_POLL: Duration = Duration::from_millis(1);

/// The core's link to one io loop.
#[derive(Debug)]
pub struct LoopLink {
    /// Events for the loop (bounded).
    pub tx: Sender<LoopEvent>,
    /// Wakes the loop after a flush.
    pub bell: Bell,
}

/// Timing of the core.
#[derive(Debug, Clone, Copy)]
pub struct CoreTiming {
    /// Housekeeping tick.
    pub tick: Duration,
    /// Exact position resync period.
    pub resync: Duration,
}

/// Where the incremental resync stands (see the module invariants).
#[derive(Debug, Default, Clone, Copy)]
struct ResyncCursor {
    /// A cycle is under way.
    active: bool,
    /// The queue being walked (id).
    queue: usize,
    /// The first key of that queue not walked yet.
    from: PlaceKey,
}

/// A join waiting for its answer at the next flush.
struct PendingJoin {
    /// Who asked.
    conn: ConnRef,
    /// Request seq.
    seq: u32,
    /// The player.
    user: UserId,
    /// (queue, user, resumed, the admission it resumed) or why it failed.
    outcome: Result<(QueueId, UserId, bool, Option<Grant>), JoinError>,
    /// The client's address (journal).
    peer: SocketAddr,
    /// Asked for the priority lane (journal).
    prio: bool,
    /// The queue of a failed join, when it exists and the journal is on.
    refused_in: Option<QueueId>,
}

/// The queue core.
pub struct Core {
    /// All queue state.
    state: QueueState,
    /// Signs admission tokens.
    signer: Arc<TokenSigner>,
    /// Messages from loops and the control thread.
    inbox: Receiver<CoreMsg>,
    /// One link per io loop, by loop id.
    loops: Vec<LoopLink>,
    /// Loops sent something this flush, or found full (to ring).
    rung: Vec<bool>,
    /// Per loop, events that did not fit in its channel, oldest first (at most
    /// [`BACKLOG_MAX`] each).
    backlog: Vec<VecDeque<LoopEvent>>,
    /// Scratch for state machine events (reused).
    events: Vec<Event>,
    /// Per queue changes since the last flush (by queue id).
    deltas: Vec<QueueDelta>,
    /// Queues with changes since the last flush.
    touched: Vec<QueueId>,
    /// Joins to answer at flush.
    joins: Vec<PendingJoin>,
    /// Admissions and kicks to deliver at flush, in order.
    direct: Vec<(usize, LoopEvent)>,
    /// Timing.
    timing: CoreTiming,
    /// Set when the server drains (joins are refused by the loops, too).
    draining: Arc<AtomicBool>,
    /// The write-ahead log and snapshots, when durability is on.
    durability: Option<Durability>,
    /// Control answers held until the round is committed.
    replies: Vec<(Sender<ControlReply>, ControlReply)>,
    /// The log failed: nothing more is applied (see the module invariants).
    degraded: bool,
    /// Unix ms at the end of the last round, read by `/readyz` and `/metrics` to tell a
    /// wedged core from a live one.
    round_clock: Arc<AtomicU64>,
    /// Round times (histogram) and the per-minute history, when the server reports them.
    stats: Option<(Arc<ServerStats>, Sampler)>,
    /// The per-player journal, when `[journal] enabled`.
    journal: Option<Journal>,
    /// The resync cycle's cursor.
    resync: ResyncCursor,
    /// Slots a resync slice walks ([`RESYNC_SLICE`]; tests make it tiny).
    resync_slice: usize,
}

/// The answer to control writes while degraded.
fn degraded_reply() -> ControlReply {
    ControlReply::Unavailable(
        "durability degraded: the write-ahead log failed; restart the server".into(),
    )
}

/// Unix time in ms.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Core {
    /// A core over `state`, fed by `inbox`, answering `loops`.
    pub fn new(
        state: QueueState,
        signer: Arc<TokenSigner>,
        inbox: Receiver<CoreMsg>,
        loops: Vec<LoopLink>,
        timing: CoreTiming,
        draining: Arc<AtomicBool>,
    ) -> Core {
        let n = loops.len();
        Core {
            state,
            signer,
            inbox,
            loops,
            rung: vec![false; n],
            backlog: (0..n).map(|_| VecDeque::new()).collect(),
            events: Vec::new(),
            deltas: Vec::new(),
            touched: Vec::new(),
            joins: Vec::new(),
            direct: Vec::new(),
            timing,
            draining,
            durability: None,
            replies: Vec::new(),
            degraded: false,
            round_clock: Arc::new(AtomicU64::new(unix_ms())),
            stats: None,
            journal: None,
            resync: ResyncCursor::default(),
            resync_slice: RESYNC_SLICE,
        }
    }

    /// Keeps a per-player journal (`None`: journaling off).
    pub fn with_journal(mut self, journal: Option<Journal>) -> Core {
        self.journal = journal;
        self
    }

    /// Records every round's duration into `stats.core_round` and closes the minutes of
    /// `stats.history` from the queues and the `loops`' counters.
    pub fn with_stats(mut self, stats: Arc<ServerStats>, loops: Arc<Vec<LoopStats>>) -> Core {
        let sampler = Sampler::new(stats.clone(), loops, unix_ms());
        self.stats = Some((stats, sampler));
        self
    }

    /// Publishes the end time of every round (unix ms) into `clock`.
    pub fn with_round_clock(mut self, clock: Arc<AtomicU64>) -> Core {
        clock.store(unix_ms(), Ordering::Relaxed);
        self.round_clock = clock;
        self
    }

    /// Logs every state change to `durability` (from `queue::durability::open`, with
    /// `state` the state it recovered).
    pub fn with_durability(mut self, durability: Option<Durability>) -> Core {
        self.durability = durability;
        self
    }

    /// Runs until [`CoreMsg::Shutdown`] or every sender is gone.
    pub fn run(mut self) {
        let mut next_tick = Instant::now() + self.timing.tick;
        let mut next_resync = Instant::now() + self.timing.resync;
        let mut running = true;
        while running {
            let mut timeout = next_tick.saturating_duration_since(Instant::now());
            if self.backlogged() {
                timeout = timeout.min(BACKLOG_POLL);
            }
            let first = match self.inbox.recv_timeout(timeout) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let started = Instant::now();
            let now_ms = unix_ms();
            if let Some(msg) = first {
                running = self.handle(msg, now_ms);
                let mut n = 1;
                while running && n < DRAIN_MAX {
                    let Ok(msg) = self.inbox.try_recv() else {
                        break;
                    };
                    running = self.handle(msg, now_ms);
                    n += 1;
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                if !self.degraded {
                    self.apply(&Op::Tick, now_ms);
                    self.expire_queues(now_ms);
                }
                if let Some((_, sampler)) = &mut self.stats {
                    sampler.tick(now_ms, self.state.queues());
                }
                next_tick = now + self.timing.tick;
            }
            let resync = now >= next_resync;
            if resync {
                next_resync = now + self.timing.resync;
            }
            self.commit(resync || self.resync.active);
            self.flush(now_ms, resync && !self.degraded);
            self.maybe_snapshot(now);
            self.round_clock.store(unix_ms(), Ordering::Relaxed);
            if let Some((stats, _)) = &self.stats {
                stats.core_round.observe(started.elapsed());
            }
        }
        self.commit(false);
        self.flush(unix_ms(), false);
        if let Some(durability) = self.durability.take() {
            match durability.close(&self.state) {
                Ok(()) => tracing::info!("final snapshot written"),
                Err(e) => {
                    tracing::error!(error = %e, "no final snapshot; the next start replays the log")
                }
            }
        }
    }

    /// Expires the auto-created queues that have been idle long enough (each is a
    /// logged op, so replay repeats exactly these expiries).
    fn expire_queues(&mut self, now_ms: u64) {
        let mut from = 0;
        while let Some(queue) = self.state.next_expiry(now_ms, from) {
            self.apply(&Op::ExpireQueue { queue }, now_ms);
            from = queue as usize + 1;
            // A freed slot will name another queue: its journals are not that queue's.
            if self.state.queues()[queue as usize].name.is_empty() {
                if let Some(journal) = &mut self.journal {
                    journal.forget_queue(queue);
                }
            }
        }
    }

    /// Commits the round's log records before anything of the round is sent.
    fn commit(&mut self, resync: bool) {
        if self.degraded {
            return;
        }
        let Some(durability) = self.durability.as_mut() else {
            return;
        };
        let output = resync
            || !self.touched.is_empty()
            || !self.joins.is_empty()
            || !self.direct.is_empty()
            || !self.replies.is_empty();
        if let Err(e) = durability.commit(output) {
            self.degrade(&e);
        }
    }

    /// Takes a periodic snapshot when one is due.
    fn maybe_snapshot(&mut self, now: Instant) {
        let Some(durability) = self.durability.as_mut() else {
            return;
        };
        if self.degraded || !durability.snapshot_due(now) {
            return;
        }
        if let Err(e) = durability.snapshot(&self.state) {
            self.degrade(&e);
        }
    }

    /// The log failed: withdraw this round's answers and refuse from now on.
    fn degrade(&mut self, error: &io::Error) {
        tracing::error!(%error, "write-ahead log failed: durability degraded; joins, admissions and token checks are refused until a restart");
        self.degraded = true;
        if let Some(d) = &self.durability {
            d.status().degraded.store(true, Ordering::SeqCst);
        }
        self.draining.store(true, Ordering::SeqCst);
        for join in &mut self.joins {
            if join.outcome.is_ok() {
                join.outcome = Err(JoinError::ShuttingDown);
            }
        }
        self.direct.clear();
        for &queue in &self.touched {
            let delta = &mut self.deltas[queue as usize];
            delta.departed.clear();
            delta.inserted.clear();
        }
        self.touched.clear();
        for (_, reply) in &mut self.replies {
            if !matches!(reply, ControlReply::Stats(_)) {
                *reply = degraded_reply();
            }
        }
    }

    /// Applies one message; false on shutdown.
    fn handle(&mut self, msg: CoreMsg, now_ms: u64) -> bool {
        match msg {
            CoreMsg::Join {
                conn,
                seq,
                user,
                queue,
                prio,
                peer,
            } => {
                let name = queue;
                let outcome = if self.degraded || self.draining.load(Ordering::Relaxed) {
                    Err(JoinError::ShuttingDown)
                } else {
                    let op = Op::Join {
                        queue: name.as_str().to_string(),
                        user,
                        prio,
                        conn,
                    };
                    match self.apply(&op, now_ms) {
                        Applied::Joined { queue, resumed } => {
                            self.touch(queue);
                            // Kept for the answer: a token use later in this round must
                            // not turn the answer into INTERNAL (the login was resumed
                            // before the use; the answer tells the truth of that moment).
                            let grant = self.state.grant(queue, user);
                            Ok((queue, user, resumed, grant))
                        }
                        Applied::JoinFailed(e) => Err(e),
                        other => unreachable!("join applied as {other:?}"),
                    }
                };
                let refused_in = match (&outcome, &self.journal) {
                    (Err(_), Some(_)) => self.state.queue_id(name.as_str()),
                    _ => None,
                };
                self.joins.push(PendingJoin {
                    conn,
                    seq,
                    user,
                    outcome,
                    peer,
                    prio,
                    refused_in,
                });
            }
            CoreMsg::Disconnect { .. } | CoreMsg::Leave { .. } if self.degraded => {}
            CoreMsg::Disconnect {
                conn,
                queue,
                user,
                report,
            } => {
                self.apply(&Op::Disconnect { queue, user, conn }, now_ms);
                if let Some(journal) = &mut self.journal {
                    journal.disconnected(queue, user, now_ms, report);
                }
            }
            CoreMsg::Leave { conn, queue, user } => {
                self.apply(&Op::Leave { queue, user, conn }, now_ms);
                if let Some(journal) = &mut self.journal {
                    journal.record(queue, user, now_ms, What::Left);
                }
            }
            CoreMsg::Control(req, reply) => {
                let answer = self.control(req, now_ms);
                // Sent at flush, once the round is committed.
                self.replies.push((reply, answer));
            }
            CoreMsg::Shutdown => return false,
        }
        true
    }

    /// Applies `op`, logs it, and routes its events; returns the direct result.
    fn apply(&mut self, op: &Op, now_ms: u64) -> Applied {
        self.apply_collect(op, now_ms, None)
    }

    /// Like [`Core::apply`], also collecting admissions into `admitted`.
    fn apply_collect(
        &mut self,
        op: &Op,
        now_ms: u64,
        mut admitted: Option<&mut Vec<AdmittedUser>>,
    ) -> Applied {
        let applied = self.state.apply(op, now_ms, &mut self.events);
        if let Some(durability) = self.durability.as_mut() {
            if logged(&applied) {
                durability.append(op, now_ms);
            }
        }
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            self.route(event, admitted.as_deref_mut(), now_ms);
        }
        self.events = events;
        applied
    }

    /// Routes one state machine event; admissions are also collected into `admitted`.
    fn route(&mut self, event: Event, admitted: Option<&mut Vec<AdmittedUser>>, now_ms: u64) {
        match event {
            Event::Departed { queue, key } => {
                self.touch(queue);
                self.deltas[queue as usize].departed.push(key);
            }
            Event::Inserted { queue, key } => {
                self.touch(queue);
                self.deltas[queue as usize].inserted.push(key);
            }
            Event::Admitted {
                queue,
                user,
                conn,
                jti,
                iat,
                exp,
            } => {
                if let Some(journal) = &mut self.journal {
                    journal.record(queue, user, now_ms, What::Admitted { jti });
                }
                let token = self.sign(queue, user, jti, iat, exp);
                if let Some(list) = admitted {
                    list.push(AdmittedUser {
                        user,
                        token: token.clone(),
                        expires_at: exp,
                    });
                }
                if let Some(conn) = conn {
                    self.direct.push((
                        conn.loop_id as usize,
                        LoopEvent::Admitted {
                            session: conn.session,
                            token,
                            expires_at: exp,
                        },
                    ));
                }
            }
            Event::GraceExpired { queue, user } => {
                if let Some(journal) = &mut self.journal {
                    journal.record(queue, user, now_ms, What::GraceExpired);
                }
            }
            Event::Kick {
                queue,
                user,
                conn,
                reason,
            } => {
                if let Some(journal) = &mut self.journal {
                    journal.record(queue, user, now_ms, What::Kicked { reason });
                }
                self.direct.push((
                    conn.loop_id as usize,
                    LoopEvent::Kick {
                        session: conn.session,
                        reason,
                    },
                ));
            }
        }
    }

    fn sign(&self, queue: QueueId, user: UserId, jti: u64, iat: u64, exp: u64) -> String {
        let name = &self.state.queues()[queue as usize].name;
        self.signer
            .sign(user, name, &self.state.jti_text(jti), iat, exp)
    }

    fn touch(&mut self, queue: QueueId) {
        let q = queue as usize;
        while self.deltas.len() <= q {
            self.deltas.push(QueueDelta {
                queue: self.deltas.len() as QueueId,
                ..QueueDelta::default()
            });
        }
        if !self.touched.contains(&queue) {
            self.touched.push(queue);
        }
    }

    fn control(&mut self, req: ControlReq, now_ms: u64) -> ControlReply {
        let id = |state: &QueueState, name: &str| state.queue_id(name);
        let read_only = matches!(req, ControlReq::Stats | ControlReq::User { .. });
        if self.degraded && !read_only {
            return degraded_reply();
        }
        let applied = match req {
            ControlReq::Admit { queue, count } => {
                let Some(queue) = id(&self.state, &queue) else {
                    return ControlReply::UnknownQueue;
                };
                if count > ADMIT_MAX {
                    return ControlReply::Invalid(format!("count must be at most {ADMIT_MAX}"));
                }
                let mut list = Vec::new();
                self.apply_collect(&Op::Admit { queue, count }, now_ms, Some(&mut list));
                return ControlReply::Admitted(list);
            }
            ControlReq::SetRate { queue, per_second } => match id(&self.state, &queue) {
                Some(queue) => self.apply(&Op::SetRate { queue, per_second }, now_ms),
                None => Applied::UnknownQueue,
            },
            ControlReq::SetCapacity {
                queue,
                online,
                capacity,
            } => match id(&self.state, &queue) {
                Some(queue) => self.apply(
                    &Op::SetCapacity {
                        queue,
                        online,
                        capacity,
                    },
                    now_ms,
                ),
                None => Applied::UnknownQueue,
            },
            ControlReq::Pause { queue, paused } => match id(&self.state, &queue) {
                Some(queue) => self.apply(&Op::Pause { queue, paused }, now_ms),
                None => Applied::UnknownQueue,
            },
            ControlReq::ConsumeJti { jti, exp } => {
                let owner = self
                    .journal
                    .as_ref()
                    .and_then(|_| self.state.grant_owner(&jti));
                let applied = self.apply(&Op::ConsumeJti { jti, exp }, now_ms);
                if let (Some((queue, user, jti)), Applied::Consumed(true)) = (owner, &applied) {
                    if let Some(journal) = &mut self.journal {
                        journal.record(queue, user, now_ms, What::TokenVerified { jti });
                    }
                }
                applied
            }
            ControlReq::Stats => return ControlReply::Stats(self.stats(now_ms)),
            ControlReq::User { queue, user } => return self.user_report(queue, user),
            ControlReq::Remove { queue, user } => {
                let Some(queue) = id(&self.state, &queue) else {
                    return ControlReply::NoSuchPlayer;
                };
                return match self.apply(&Op::Remove { queue, user }, now_ms) {
                    Applied::Removed(Some(held)) => {
                        if let Some(journal) = &mut self.journal {
                            journal.record(queue, user, now_ms, What::Removed { held });
                        }
                        ControlReply::Removed(held)
                    }
                    _ => ControlReply::NoSuchPlayer,
                };
            }
        };
        match applied {
            Applied::Consumed(fresh) => ControlReply::Consumed(fresh),
            Applied::UnknownQueue => ControlReply::UnknownQueue,
            Applied::Invalid(why) => ControlReply::Invalid(why.to_string()),
            _ => ControlReply::Done,
        }
    }

    /// `GET /v1/users/{user_id}?queue=Q`: the state machine's view of the player (the
    /// truth) and its journal (what happened, possibly evicted or from before a restart:
    /// not durable).
    fn user_report(&self, name: String, user: UserId) -> ControlReply {
        let Some(journal) = &self.journal else {
            return ControlReply::JournalOff;
        };
        let Some(queue) = self.state.queue_id(&name) else {
            return ControlReply::NoSuchPlayer;
        };
        let player = journal.get(queue, user);
        let mut report = UserReport {
            user_id: user,
            queue: name,
            state: "unknown",
            position: None,
            lane: None,
            grace_until_ms: None,
            jti: None,
            used: None,
            positions: PositionCounts::default(),
            events: Vec::new(),
            events_dropped: 0,
        };
        if let Some(place) = self.state.place(queue, user) {
            let q = &self.state.queues()[queue as usize];
            report.position = Some(q.position(place.key));
            report.lane = Some(if split_key(place.key).0 {
                "priority"
            } else {
                "normal"
            });
            if place.conn.is_some() {
                report.state = "waiting";
            } else {
                report.state = "grace";
                report.grace_until_ms = Some(place.grace_deadline_ms);
            }
        } else if let Some(grant) = self.state.grant(queue, user) {
            report.state = "admitted";
            report.jti = Some(self.state.jti_text(grant.jti));
            report.used = Some(false);
        } else if let Some(player) = player {
            // A used token leaves no grant: the journal remembers the admission.
            let mut last = None;
            for entry in &player.events {
                match entry.what {
                    What::Admitted { jti } => last = Some((jti, false)),
                    What::TokenVerified { jti } if last.map(|(j, _)| j) == Some(jti) => {
                        last = Some((jti, true));
                    }
                    What::Left | What::Removed { .. } | What::LoggedIn { .. } => last = None,
                    _ => {}
                }
            }
            if let Some((jti, true)) = last {
                report.state = "admitted";
                report.jti = Some(self.state.jti_text(jti));
                report.used = Some(true);
            }
        }
        match player {
            Some(player) => {
                report.positions = PositionCounts {
                    answered: player.answered,
                    pushed: player.pushed,
                    last: player.last_position,
                    as_of_ms: player.reported_at_ms,
                };
                report.events = player
                    .events
                    .iter()
                    .map(|e| EventOut::from_entry(e, |n| self.state.jti_text(n)))
                    .collect();
                report.events_dropped = player.dropped;
            }
            None if report.state == "unknown" => return ControlReply::NoSuchPlayer,
            None => {}
        }
        ControlReply::User(Box::new(report))
    }

    fn stats(&self, now_ms: u64) -> Vec<QueueStats> {
        self.state
            .queues()
            .iter()
            .filter(|q| !q.is_expired())
            .map(|q| QueueStats {
                name: q.name.clone(),
                waiting: q.waiting(),
                waiting_priority: q.waiting_priority(),
                admitted_total: q.admitted_total,
                left_total: q.left_total,
                admit_rate_per_s: q.meter.rate(now_ms),
                target_rate_per_s: q.pacer.rate_per_s,
                paused: q.pacer.paused,
                unused_tokens: q.unused_grants,
                capacity: q.pacer.capacity.map(|c| (c.online, c.capacity)),
            })
            .collect()
    }

    /// True when some loop has events waiting for room in its channel.
    fn backlogged(&self) -> bool {
        self.backlog.iter().any(|b| !b.is_empty())
    }

    /// Queues `event` for `loop_id`: into its channel if it has room and nothing is
    /// waiting before it, else at the back of its backlog. Never blocks, unless the
    /// backlog is over [`BACKLOG_MAX`] (then see [`Core::wait_for_loop`]).
    fn send(&mut self, loop_id: usize, event: LoopEvent) {
        let Some(link) = self.loops.get(loop_id) else {
            return;
        };
        let backlog = &mut self.backlog[loop_id];
        if backlog.is_empty() {
            match link.tx.try_send(event) {
                Ok(()) => {
                    self.rung[loop_id] = true;
                    return;
                }
                // A loop that has stopped (shutdown) dropped its receiver: nothing to
                // deliver.
                Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(event)) => {
                    self.rung[loop_id] = true;
                    backlog.push_back(event);
                }
            }
        } else {
            backlog.push_back(event);
        }
        if backlog.len() > BACKLOG_MAX {
            self.wait_for_loop(loop_id);
        }
    }

    /// Moves what fits of every backlog into its channel, oldest first; a loop sent to
    /// or found full is rung at the end of the flush, so it wakes and makes room.
    fn drain_backlogs(&mut self) {
        for (loop_id, backlog) in self.backlog.iter_mut().enumerate() {
            if backlog.is_empty() {
                continue;
            }
            let tx = &self.loops[loop_id].tx;
            while let Some(event) = backlog.pop_front() {
                match tx.try_send(event) {
                    Ok(()) => self.rung[loop_id] = true,
                    Err(TrySendError::Full(event)) => {
                        backlog.push_front(event);
                        self.rung[loop_id] = true;
                        break;
                    }
                    // The loop has stopped (shutdown): nothing to deliver, nobody to ring.
                    Err(TrySendError::Disconnected(_)) => {
                        backlog.clear();
                        break;
                    }
                }
            }
        }
    }

    /// The backlog of `loop_id` is over [`BACKLOG_MAX`]: waits until the loop has taken
    /// enough to bring it back to the bound. Rings the loop before every wait: a loop
    /// reads its channel to empty before it sleeps, so each wait ends while it runs.
    fn wait_for_loop(&mut self, loop_id: usize) {
        let link = &self.loops[loop_id];
        let backlog = &mut self.backlog[loop_id];
        while backlog.len() > BACKLOG_MAX {
            let mut event = backlog.pop_front().expect("backlog over its bound");
            loop {
                match link.tx.try_send(event) {
                    Ok(()) => break,
                    Err(TrySendError::Disconnected(_)) => {
                        backlog.clear();
                        return;
                    }
                    Err(TrySendError::Full(e)) => event = e,
                }
                link.bell.ring();
                match link.tx.send_timeout(event, BACKLOG_POLL) {
                    Ok(()) => break,
                    Err(SendTimeoutError::Timeout(e)) => event = e,
                    Err(SendTimeoutError::Disconnected(_)) => {
                        backlog.clear();
                        return;
                    }
                }
            }
        }
        self.rung[loop_id] = true;
    }

    /// Sends everything this round produced, then rings each loop once. `resync`
    /// starts a resync cycle unless one is under way; a cycle under way sends its next
    /// slice.
    fn flush(&mut self, now_ms: u64, resync: bool) {
        // Older events first: everything below goes behind them.
        self.drain_backlogs();
        if resync && !self.resync.active {
            self.resync = ResyncCursor {
                active: true,
                queue: 0,
                from: 0,
            };
            // Every queue's length and rate reach the loops once a cycle.
            for q in 0..self.state.queues().len() {
                self.touch(q as QueueId);
            }
        }
        if !self.touched.is_empty() {
            let mut batch = RankBatch {
                queues: Vec::with_capacity(self.touched.len()),
            };
            for &queue in &self.touched {
                let delta = &mut self.deltas[queue as usize];
                let q = &self.state.queues()[queue as usize];
                let mut d = std::mem::take(delta);
                delta.queue = queue;
                d.departed.sort_unstable();
                d.inserted.sort_unstable();
                d.queue_len = q.waiting();
                d.rate_per_s = q.meter.rate(now_ms);
                batch.queues.push(d);
            }
            self.touched.clear();
            let batch = Arc::new(batch);
            for loop_id in 0..self.loops.len() {
                self.send(loop_id, LoopEvent::Ranks(batch.clone()));
            }
        }
        if self.resync.active && !self.degraded {
            self.resync_slice();
        }
        let joins = std::mem::take(&mut self.joins);
        for join in joins {
            let result = self.answer_join(&join, now_ms);
            if self.journal.is_some() {
                self.journal_join(&join, &result, now_ms);
            }
            self.send(
                join.conn.loop_id as usize,
                LoopEvent::Joined {
                    session: join.conn.session,
                    seq: join.seq,
                    user: join.user,
                    result,
                },
            );
        }
        let direct = std::mem::take(&mut self.direct);
        for (loop_id, event) in direct {
            self.send(loop_id, event);
        }
        for (reply, answer) in self.replies.drain(..) {
            // The control thread may have timed out and gone; nothing to do then.
            let _ = reply.try_send(answer);
        }
        for (loop_id, rung) in self.rung.iter_mut().enumerate() {
            if std::mem::take(rung) {
                self.loops[loop_id].bell.ring();
            }
        }
    }

    /// Sends the next slice of the resync cycle: exact positions, as of now, of the
    /// connected players in the next (at most) `resync_slice` slots from the cursor, each
    /// to its loop; ends the cycle after the last queue.
    fn resync_slice(&mut self) {
        let mut per_loop: Vec<Vec<(SessionId, u64)>> = vec![Vec::new(); self.loops.len()];
        let mut cursor = self.resync;
        // At least one queue visit and one slot, so every slice makes progress.
        let mut budget = self.resync_slice.max(2);
        let queues = self.state.queues();
        while budget > 0 {
            let Some(q) = queues.get(cursor.queue) else {
                cursor.active = false;
                break;
            };
            budget -= 1;
            let mut finished = true;
            // Position of the next live place: one rank, then counting.
            let mut next_position = None;
            for (key, user) in q.walk_from(cursor.from) {
                if budget == 0 {
                    cursor.from = key;
                    finished = false;
                    break;
                }
                budget -= 1;
                let Some(user) = user else {
                    continue;
                };
                let position = next_position.unwrap_or_else(|| q.position(key));
                next_position = Some(position + 1);
                let place = self
                    .state
                    .place(cursor.queue as QueueId, user)
                    .expect("indexed");
                if let Some(conn) = place.conn {
                    if let Some(list) = per_loop.get_mut(conn.loop_id as usize) {
                        list.push((conn.session, position));
                    }
                }
            }
            if finished {
                cursor.queue += 1;
                cursor.from = 0;
            }
        }
        self.resync = cursor;
        for (loop_id, list) in per_loop.into_iter().enumerate() {
            if !list.is_empty() {
                self.send(loop_id, LoopEvent::Resync(list));
            }
        }
    }

    /// Records a login and its answer: connected (peer, loop), then logged in, resumed
    /// or refused.
    fn journal_join(
        &mut self,
        join: &PendingJoin,
        result: &Result<JoinOk, JoinError>,
        now_ms: u64,
    ) {
        let Some(journal) = &mut self.journal else {
            return;
        };
        let (queue, what) = match (result, &join.outcome) {
            (Ok(ok), _) if ok.resumed => (
                ok.queue,
                What::Resumed {
                    position: ok.position,
                },
            ),
            (Ok(ok), _) => (
                ok.queue,
                What::LoggedIn {
                    position: ok.position,
                    priority: join.prio && split_key(ok.key).0,
                },
            ),
            (Err(error), Ok((queue, ..))) => (*queue, What::Refused { error: *error }),
            (Err(error), Err(_)) => match join.refused_in {
                Some(queue) => (queue, What::Refused { error: *error }),
                None => return,
            },
        };
        let connected = journal::connected(join.peer, join.conn.loop_id);
        journal.record(queue, join.user, now_ms, connected);
        journal.record(queue, join.user, now_ms, what);
    }

    fn answer_join(&self, join: &PendingJoin, now_ms: u64) -> Result<JoinOk, JoinError> {
        let (queue, user, resumed, resumed_grant) = join.outcome?;
        let q = &self.state.queues()[queue as usize];
        let rate_per_s = q.meter.rate(now_ms);
        if let Some(place) = self.state.place(queue, user) {
            return Ok(JoinOk {
                queue,
                key: place.key,
                position: q.position(place.key),
                queue_len: q.waiting(),
                rate_per_s,
                resumed,
                admitted: None,
            });
        }
        if let Some(grant) = self.state.grant(queue, user).or(resumed_grant) {
            let token = self.sign(queue, user, grant.jti, grant.iat, grant.exp);
            return Ok(JoinOk {
                queue,
                key: 0,
                position: 0,
                queue_len: q.waiting(),
                rate_per_s,
                resumed,
                admitted: Some((token, grant.exp)),
            });
        }
        Err(JoinError::Gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::doorbell;
    use crate::msg::KickReason;
    use crate::queue::state::Limits;

    /// A core with one loop whose channel holds `capacity` events; the loop's end.
    fn core_with_loop(capacity: usize) -> (Core, Receiver<LoopEvent>, doorbell::BellRx) {
        let (core, mut rxs, mut bells) = core_with_loops(1, capacity);
        (core, rxs.remove(0), bells.remove(0))
    }

    /// A core with `n` loops whose channels hold `capacity` events each; the loops' ends.
    fn core_with_loops(
        n: usize,
        capacity: usize,
    ) -> (Core, Vec<Receiver<LoopEvent>>, Vec<doorbell::BellRx>) {
        let config = Config::default();
        let state = QueueState::new(Limits::from_config(&config), &[], 1);
        let (signer, _) = TokenSigner::from_config(&config.tokens).expect("signer");
        let (_inbox_tx, inbox) = crossbeam_channel::bounded(16);
        let (mut links, mut rxs, mut bells) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n {
            let (tx, rx) = crossbeam_channel::bounded(capacity);
            let (bell, bell_rx) = doorbell::pair().expect("doorbell");
            links.push(LoopLink { tx, bell });
            rxs.push(rx);
            bells.push(bell_rx);
        }
        let timing = CoreTiming {
            tick: Duration::from_millis(10),
            resync: Duration::from_secs(10),
        };
        let core = Core::new(
            state,
            Arc::new(signer),
            inbox,
            links,
            timing,
            Arc::new(AtomicBool::new(false)),
        );
        (core, rxs, bells)
    }

    fn kick(session: SessionId) -> LoopEvent {
        LoopEvent::Kick {
            session,
            reason: KickReason::DuplicateLogin,
        }
    }

    fn session_of(event: LoopEvent) -> SessionId {
        match event {
            LoopEvent::Kick { session, .. } => session,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The "ConsumeJti + resume in the same round answers INTERNAL" race: a player
    /// resumes its admission and the token is used in the same round. The login answer
    /// is the admission it resumed, not `Gone` (INTERNAL).
    #[test]
    fn a_resume_and_a_token_use_in_one_round_answer_admitted() {
        let (mut core, rx, _bell) = core_with_loop(64);
        core.state = QueueState::new(
            Limits::from_config(&Config::default()),
            &[("q".into(), 100, 0.0)],
            1,
        );
        let now = unix_ms();
        let join = |session| CoreMsg::Join {
            conn: ConnRef {
                loop_id: 0,
                session,
            },
            seq: 1,
            user: 5,
            queue: "q".into(),
            prio: false,
            peer: "127.0.0.1:1".parse().expect("addr"),
        };
        let answer = |rx: &Receiver<LoopEvent>| -> Result<JoinOk, JoinError> {
            rx.try_iter()
                .find_map(|e| match e {
                    LoopEvent::Joined { result, .. } => Some(result),
                    _ => None,
                })
                .expect("a login answer")
        };
        core.handle(join(1), now);
        core.flush(now, false);
        assert!(answer(&rx).expect("joined").admitted.is_none());
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        let admit = ControlReq::Admit {
            queue: "q".into(),
            count: 1,
        };
        core.handle(CoreMsg::Control(admit, reply_tx.clone()), now);
        core.flush(now, false);
        let grant = core.state.grant(0, 5).expect("admitted");
        assert!(matches!(reply_rx.try_recv(), Ok(ControlReply::Admitted(_))));
        let _ = rx.try_iter().count();
        // One round: the player logs in again, and its token is used.
        core.handle(join(2), now);
        let consume = ControlReq::ConsumeJti {
            jti: core.state.jti_text(grant.jti),
            exp: grant.exp,
        };
        core.handle(CoreMsg::Control(consume, reply_tx), now);
        core.flush(now, false);
        assert!(matches!(
            reply_rx.try_recv(),
            Ok(ControlReply::Consumed(true))
        ));
        let resumed = answer(&rx).expect("not INTERNAL");
        assert!(resumed.resumed);
        assert!(resumed.admitted.is_some());
    }

    /// A full channel never blocks the core: the rest waits in order, and once anything
    /// waits, later events go behind it even when the channel has room again.
    #[test]
    fn a_full_loop_channel_backs_up_in_order_without_blocking() {
        let (mut core, rx, _bell) = core_with_loop(2);
        for s in 0..10 {
            core.send(0, kick(s));
        }
        assert_eq!(rx.len(), 2);
        assert_eq!(core.backlog[0].len(), 8);
        let mut seen: Vec<SessionId> = rx.try_iter().map(session_of).collect();
        core.send(0, kick(10));
        assert!(rx.is_empty(), "a new event must not pass the backlog");
        while core.backlogged() {
            core.drain_backlogs();
            seen.extend(rx.try_iter().map(session_of));
        }
        assert_eq!(seen, (0..=10).collect::<Vec<_>>());
    }

    /// Past `BACKLOG_MAX` the core waits for the loop, ringing it first: a loop that
    /// only reads after its doorbell (as the io loops do) still takes everything.
    #[test]
    fn a_backlog_over_its_bound_waits_for_a_loop_that_sleeps_on_its_bell() {
        use std::io::Read;
        let (mut core, rx, bell) = core_with_loop(16);
        let total = BACKLOG_MAX as u64 + 100;
        let reader = std::thread::spawn(move || {
            let (armed, mut bell) = bell.into_parts();
            bell.set_nonblocking(false).expect("blocking bell");
            let mut next = 0;
            let mut buf = [0u8; 64];
            while next < total {
                while let Ok(event) = rx.try_recv() {
                    assert_eq!(session_of(event), next);
                    next += 1;
                }
                doorbell::arm(&armed);
                if rx.is_empty() && next < total {
                    let _rings = bell.read(&mut buf).expect("bell read");
                } else {
                    doorbell::disarm(&armed);
                }
            }
        });
        for s in 0..total {
            core.send(0, kick(s));
            assert!(core.backlog[0].len() <= BACKLOG_MAX);
        }
        while core.backlogged() {
            core.flush(unix_ms(), false);
            std::thread::yield_now();
        }
        core.flush(unix_ms(), false);
        reader.join().expect("loop got every event in order");
    }

    /// The core's round time at a million players, resync rounds included: 300 rounds
    /// of churn (50 joins, 50 leaves, a tick), a resync started every 100 rounds, the
    /// loops' channels drained between rounds outside the timing. A measurement, not a
    /// check (no timing assert); numbers in `bench/results/resync-2026-11-26.md`.
    #[test]
    #[ignore = "measurement: cargo test --release --lib resync_round_times -- --ignored --nocapture"]
    fn resync_round_times_at_a_million_players() {
        const PLAYERS: u64 = 1_000_000;
        const LOOPS: u64 = 4;
        const ROUNDS: u64 = 300;
        const RESYNC_EVERY: u64 = 100;
        const CHURN: u64 = 50;
        let (mut core, rxs, _bells) = core_with_loops(LOOPS as usize, 1 << 16);
        core.state = QueueState::new(
            Limits::from_config(&Config::default()),
            &[("q".into(), 4 * PLAYERS, 0.0)],
            1,
        );
        let now = unix_ms();
        let conn = |user: u64| ConnRef {
            loop_id: (user % LOOPS) as _,
            session: user,
        };
        let join = |user: u64| Op::Join {
            queue: "q".into(),
            user,
            prio: user.is_multiple_of(10),
            conn: conn(user),
        };
        for user in 0..PLAYERS {
            core.apply(&join(user), now);
        }
        core.flush(now, false);
        let drain = |rxs: &[Receiver<LoopEvent>]| {
            for rx in rxs {
                while rx.try_recv().is_ok() {}
            }
        };
        drain(&rxs);
        let mut rounds = Vec::new();
        let mut resync_rounds = Vec::new();
        let mut slice_rounds = Vec::new();
        let mut resync_was_active = false;
        let mut next_user = PLAYERS;
        for round in 0..ROUNDS {
            let started = Instant::now();
            for i in 0..CHURN {
                core.apply(&join(next_user), now);
                next_user += 1;
                let gone = (round * CHURN + i) * 7919 % PLAYERS;
                let leave = Op::Leave {
                    queue: 0,
                    user: gone,
                    conn: conn(gone),
                };
                core.apply(&leave, now);
            }
            core.apply(&Op::Tick, now);
            let resync = round.is_multiple_of(RESYNC_EVERY);
            core.commit(resync || core.resync.active);
            core.flush(now, resync);
            let took = started.elapsed();
            rounds.push(took);
            if resync {
                resync_rounds.push(took);
            }
            if resync || core.resync.active || resync_was_active {
                slice_rounds.push(took);
            }
            resync_was_active = core.resync.active;
            drain(&rxs);
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut sorted = rounds.clone();
        sorted.sort_unstable();
        let at = |p: f64| ms(sorted[((sorted.len() - 1) as f64 * p).round() as usize]);
        println!(
            "rounds={} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} over_5ms={} resync_start_rounds_ms={:?}",
            rounds.len(),
            at(0.5),
            at(0.99),
            ms(*sorted.last().expect("rounds")),
            rounds.iter().filter(|&&d| ms(d) > 5.0).count(),
            resync_rounds.iter().map(|&d| (ms(d) * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
        );
        slice_rounds.sort_unstable();
        println!(
            "slice_size={} rounds_with_a_resync_slice={} their_p50_ms={:.3} their_max_ms={:.3}",
            core.resync_slice,
            slice_rounds.len(),
            ms(slice_rounds[slice_rounds.len() / 2]),
            ms(*slice_rounds.last().expect("slices")),
        );
    }

    /// What an io loop keeps of its waiting sessions, for the resync tests: applies
    /// rank batches and resync lists exactly as `io_loop.rs` does (by session id).
    #[derive(Default)]
    struct FakeLoop {
        /// Session -> (queue, key, position).
        sessions: std::collections::HashMap<SessionId, (QueueId, PlaceKey, u64)>,
    }

    impl FakeLoop {
        fn take(&mut self, rx: &Receiver<LoopEvent>) {
            for event in rx.try_iter() {
                match event {
                    LoopEvent::Ranks(batch) => {
                        for (queue, key, position) in self.sessions.values_mut() {
                            if let Some(d) = batch.queues.iter().find(|d| d.queue == *queue) {
                                *position = position.saturating_add_signed(d.shift(*key));
                            }
                        }
                    }
                    LoopEvent::Resync(list) => {
                        for (session, position) in list {
                            if let Some(s) = self.sessions.get_mut(&session) {
                                s.2 = position;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The drift the resync exists for: every loop's positions are corrupted, players
    /// join, leave and are admitted between slices, and a resync cycle walks three
    /// slots a round over a queue with both lanes, an empty queue and a queue of
    /// players in grace. After the cycle every loop holds the exact positions.
    #[test]
    fn an_incremental_resync_leaves_every_loop_at_the_exact_positions() {
        const LOOPS: usize = 2;
        let (mut core, rxs, _bells) = core_with_loops(LOOPS, 1 << 12);
        core.state = QueueState::new(
            Limits::from_config(&Config::default()),
            &[
                ("a".into(), 1000, 0.0),
                ("b".into(), 1000, 0.0),
                ("c".into(), 1000, 0.0),
            ],
            1,
        );
        core.resync_slice = 3;
        let now = unix_ms();
        let conn = |user: u64| ConnRef {
            loop_id: (user % LOOPS as u64) as _,
            session: user,
        };
        let queue_of = |user: u64| if user.is_multiple_of(3) { "c" } else { "a" };
        let join = |user: u64| Op::Join {
            queue: queue_of(user).into(),
            user,
            prio: user.is_multiple_of(4),
            conn: conn(user),
        };
        let mut loops: Vec<FakeLoop> = (0..LOOPS).map(|_| FakeLoop::default()).collect();
        // The loop side learns a new session with its exact position at flush time,
        // behind that round's batch (as a join answer is).
        let learn = |core: &Core, loops: &mut [FakeLoop], user: u64, drift: u64| {
            let queue = if queue_of(user) == "c" { 2 } else { 0 };
            if let Some(place) = core.state.place(queue, user) {
                let position = core.state.queues()[queue as usize].position(place.key);
                loops[conn(user).loop_id as usize]
                    .sessions
                    .insert(user, (queue, place.key, position + drift));
            }
        };
        for user in 0..60 {
            core.apply(&join(user), now);
        }
        // Players 100.. are in grace: no connection, nothing to resync.
        for user in 100..105 {
            core.apply(&join(user), now);
            let disconnect = Op::Disconnect {
                queue: 0,
                user,
                conn: conn(user),
            };
            core.apply(&disconnect, now);
        }
        core.flush(now, false);
        for (l, rx) in loops.iter_mut().zip(&rxs) {
            l.take(rx);
        }
        for user in 0..60 {
            // Drift: every loop's bookkeeping is off, by a different amount each.
            learn(&core, &mut loops, user, 1 + user % 7);
        }
        let mut next_user = 1000;
        let mut rounds = 0;
        let mut resync = true;
        while resync || core.resync.active {
            // Churn between slices: a leave near the head, a join at the tail and one
            // in the priority lane, an admission.
            let gone = rounds * 5 % 60;
            let leave = Op::Leave {
                queue: if queue_of(gone) == "c" { 2 } else { 0 },
                user: gone,
                conn: conn(gone),
            };
            core.apply(&leave, now);
            let joined = [next_user, next_user + 1];
            next_user += 3;
            for &user in &joined {
                core.apply(&join(user), now);
            }
            core.apply(&Op::Admit { queue: 0, count: 1 }, now);
            core.flush(now, std::mem::take(&mut resync));
            for (l, rx) in loops.iter_mut().zip(&rxs) {
                l.take(rx);
            }
            for &user in &joined {
                learn(&core, &mut loops, user, 0);
            }
            // Sessions whose player no longer waits stop following ranks.
            for l in &mut loops {
                l.sessions
                    .retain(|&user, s| core.state.place(s.0, user).is_some());
            }
            rounds += 1;
            assert!(rounds < 1000, "the resync cycle never ends");
        }
        assert!(
            rounds > 10,
            "the cycle took {rounds} rounds: not incremental"
        );
        let mut checked = 0;
        for l in &loops {
            for (&user, &(queue, key, position)) in &l.sessions {
                let exact = core.state.queues()[queue as usize].position(key);
                assert_eq!(position, exact, "player {user} of queue {queue}");
                checked += 1;
            }
        }
        assert!(checked > 40, "only {checked} sessions checked");
    }
}
