//! Counters the io loops keep for `/metrics` and `/v1/stats`, and the server-wide
//! figures the core keeps for them ([`ServerStats`]: round times, per-minute history).
//!
//! Invariants:
//! - each [`LoopStats`] is written by its own loop only (relaxed stores and adds on a
//!   cache line of its own), read by the control thread at scrape time: no lock, no
//!   shared write on the hot path; every per-frame counter is one relaxed `fetch_add`
//!   into memory allocated at start ([`LoopStats::new`] sizes the per-queue table);
//! - values are monotonic counters except `connections`, a gauge;
//! - [`ServerStats::core_round`] is written by the core only; [`history`] is written
//!   by the core once a minute with `try_lock` (never waits) and read by the control
//!   thread.

pub mod histogram;
pub mod history;
pub mod process;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::msg::{KickReason, QueueId};
use crate::protocol::Code;
use histogram::Histogram;
use history::History;

/// Every kick reason, in the order of [`kick_index`] (and of the JSON `kicks` objects).
pub const KICK_REASONS: [KickReason; 5] = [
    KickReason::DuplicateLogin,
    KickReason::IdleTimeout,
    KickReason::SlowConsumer,
    KickReason::Shutdown,
    KickReason::Removed,
];

/// Position of `reason` in [`KICK_REASONS`].
#[inline]
pub fn kick_index(reason: KickReason) -> usize {
    match reason {
        KickReason::DuplicateLogin => 0,
        KickReason::IdleTimeout => 1,
        KickReason::SlowConsumer => 2,
        KickReason::Shutdown => 3,
        KickReason::Removed => 4,
    }
}

/// What one loop counts for one queue (the queue of a logged-in session).
#[derive(Debug, Default)]
pub struct QueueCounters {
    /// Frames read from logged-in clients of the queue.
    pub requests_in: AtomicU64,
    /// Pushes sent to them (`position`, `admitted`, `kicked`).
    pub pushes_out: AtomicU64,
    /// Successful logins into the queue.
    pub logins: AtomicU64,
    /// Kicks, by [`kick_index`].
    pub kicks: [AtomicU64; 5],
}

/// Counters of one io loop, padded to its own cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct LoopStats {
    /// Open player connections (gauge).
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Successful logins.
    pub logins: AtomicU64,
    /// Frames read from clients.
    pub frames_in: AtomicU64,
    /// Frames written to clients (responses and pushes).
    pub frames_out: AtomicU64,
    /// Pushes (`position`, `admitted`, `kicked`).
    pub pushes: AtomicU64,
    /// Error responses sent (any non-zero code).
    pub errors: AtomicU64,
    /// Connections refused at accept (connection limits).
    pub refused: AtomicU64,
    /// Kicks sent, by [`kick_index`].
    pub kicks: [AtomicU64; 5],
    /// Error answers, by code number (index 0 unused).
    pub errors_by_code: [AtomicU64; Code::ALL.len()],
    /// Time from reading a `login` frame to writing its answer, for logins that went to
    /// the core.
    pub login_answer: Histogram,
    /// Per queue id (a table sized at start, so no allocation while serving); ids past
    /// its end are counted in the loop totals only.
    pub queues: Box<[QueueCounters]>,
}

impl LoopStats {
    /// Counters for a loop of a server with at most `queues` queues.
    pub fn new(queues: usize) -> LoopStats {
        LoopStats {
            queues: (0..queues).map(|_| QueueCounters::default()).collect(),
            ..LoopStats::default()
        }
    }

    /// Adds `n` to a counter owned by this loop (relaxed: only the owner writes).
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    #[inline]
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// The counters of `queue`, if the table has it.
    #[inline]
    fn queue(&self, queue: Option<QueueId>) -> Option<&QueueCounters> {
        queue.and_then(|q| self.queues.get(q as usize))
    }

    /// One frame read, from a session of `queue` (None before its login is answered).
    #[inline]
    pub fn frame_in(&self, queue: Option<QueueId>) {
        Self::add(&self.frames_in, 1);
        if let Some(q) = self.queue(queue) {
            Self::add(&q.requests_in, 1);
        }
    }

    /// One push sent to a session of `queue`.
    #[inline]
    pub fn pushed(&self, queue: Option<QueueId>) {
        Self::add(&self.pushes, 1);
        if let Some(q) = self.queue(queue) {
            Self::add(&q.pushes_out, 1);
        }
    }

    /// One `kicked` push for `reason` (also counted as a push).
    #[inline]
    pub fn kicked(&self, queue: Option<QueueId>, reason: KickReason) {
        self.pushed(queue);
        Self::add(&self.kicks[kick_index(reason)], 1);
        if let Some(q) = self.queue(queue) {
            Self::add(&q.kicks[kick_index(reason)], 1);
        }
    }

    /// One successful login into `queue`.
    #[inline]
    pub fn logged_in(&self, queue: QueueId) {
        Self::add(&self.logins, 1);
        if let Some(q) = self.queue(Some(queue)) {
            Self::add(&q.logins, 1);
        }
    }

    /// One error answer with `code`.
    #[inline]
    pub fn error(&self, code: Code) {
        Self::add(&self.errors, 1);
        Self::add(&self.errors_by_code[code as usize], 1);
    }
}

/// Server-wide figures beyond the loops' counters, shared by the core (writer) and the
/// control thread (reader).
#[derive(Debug)]
pub struct ServerStats {
    /// Duration of each core round, from the first message taken (or the tick) to the
    /// end of its flush.
    pub core_round: Histogram,
    /// The last hour, minute by minute (see [`history`]).
    pub history: History,
    /// When the server started (uptime).
    pub started: Instant,
    /// When the server started, unix seconds.
    pub started_unix_secs: u64,
}

impl Default for ServerStats {
    fn default() -> ServerStats {
        ServerStats {
            core_round: Histogram::default(),
            history: History::default(),
            started: Instant::now(),
            started_unix_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}
