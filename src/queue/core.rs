//! The queue core thread: the only owner of [`QueueState`]. It drains every pending
//! message, applies them, and then flushes: one [`RankBatch`](crate::msg::RankBatch)
//! shared by all loops, the join answers, the admissions and kicks, one doorbell ring
//! per loop.
//!
//! The map (the files below add `impl Core` blocks and import this file; it imports
//! none of them):
//! - this file: [`Core`], its builder, the round loop ([`Core::run`]: drain, tick and
//!   queue expiry, commit, flush, snapshot), the commit and degraded mode;
//! - `ops.rs`: inbox messages into ops (join, leave, disconnect), applying and logging
//!   each op, routing its events;
//! - `control.rs`: the control API's requests (admit, rate, capacity, pause, token use,
//!   stats, a player's report, removal);
//! - `flush.rs`: the flush (rank batch, resync slice, join answers, admissions and
//!   kicks, control answers, doorbells) and the incremental resync;
//! - `backlog.rs`: delivery to a loop's bounded channel and its FIFO backlog, and the
//!   attachment of node links as virtual loops;
//! - `fence.rs`: cluster mode: no admission for a queue this node may not admit for;
//! - `failover.rs`, `claim.rs`: cluster mode: places re-submitted by surviving edges,
//!   places claimed with a place ticket, and the admission marks the next owner reads.
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

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::durability::Durability;
use super::journal::Journal;
use super::state::{Event, Grant, Op, QueueState};
use crate::doorbell::Bell;
use crate::msg::{
    ConnRef, ControlReply, CoreMsg, JoinError, LoopEvent, PlaceKey, QueueDelta, QueueId, UserId,
};
use crate::stats::history::Sampler;
use crate::stats::{LoopStats, ServerStats};
use crate::token::TokenSigner;

mod backlog;
mod claim;
mod control;
mod failover;
mod fence;
mod flush;
mod ops;

pub use fence::{AdmitFence, ClusterFence};

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

/// What a join did: (queue, user, resumed, the admission it resumed) or why it failed.
type JoinOutcome = Result<(QueueId, UserId, bool, Option<Grant>), JoinError>;

/// A join waiting for its answer at the next flush.
struct PendingJoin {
    /// Who asked.
    conn: ConnRef,
    /// Request seq.
    seq: u32,
    /// The player.
    user: UserId,
    /// (queue, user, resumed, the admission it resumed) or why it failed.
    outcome: JoinOutcome,
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
    /// Cluster mode: who may admit, and the queues it holds paused (see `fence.rs`).
    fence: Option<fence::FenceState>,
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
            fence: None,
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
                    self.fence_tick(now_ms);
                    self.apply(&Op::Tick, now_ms);
                    self.publish_admitted();
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
}

#[cfg(test)]
mod tests;
