//! The rank and push tracker of one io loop: what the loop knows of each queue, the
//! rank batches not applied yet, and the position-push throttle. No runtime, no
//! sockets: the loop (and the bench's `core` scenario) drive it with plain calls and
//! do the sending themselves, so every rule here is unit-testable.
//!
//! Invariants:
//! - a session follows its rank through a [`Follow`]; a rank batch numbered `seq`
//!   moves it only if `seq >= since_batch` (its position already counted older ones);
//! - position pushes are throttled per session to one per `push_interval`, carrying the
//!   latest value; a deferred one waits in `pending_push`, each session at most once;
//! - `max_key` of a queue is an upper bound of the keys of this loop's waiting sessions
//!   in it: exact after each pass, only ever raised between passes.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::msg::{local_queue, queue_source, PlaceKey, QueueDelta, QueueId, RankBatch, SessionId};

/// Pending rank batches that force a pass at once (bounds the per-session work).
pub const RANKS_PENDING_MAX: usize = 64;

/// One session's rank state: where its place is and what the client was told.
#[derive(Debug)]
pub struct Follow {
    /// Queue of the place (valid once logged in).
    queue: Cell<QueueId>,
    /// Order key of the place (valid while waiting).
    key: Cell<PlaceKey>,
    /// Current position (valid while waiting).
    position: Cell<u64>,
    /// Number of the first rank batch newer than `position` (batches before it were
    /// already counted when `position` was set).
    since_batch: Cell<u64>,
    /// Position last pushed or answered to the client.
    pushed_position: Cell<u64>,
    /// When the last position push went out.
    last_push: Cell<Instant>,
    /// Queued in the tracker's deferred-push list.
    push_pending: Cell<bool>,
}

impl Follow {
    /// A session that follows nothing yet.
    pub fn new(now: Instant) -> Follow {
        Follow {
            queue: Cell::new(0),
            key: Cell::new(0),
            position: Cell::new(0),
            since_batch: Cell::new(0),
            pushed_position: Cell::new(0),
            last_push: Cell::new(now),
            push_pending: Cell::new(false),
        }
    }

    /// The place's queue.
    #[inline]
    pub fn queue(&self) -> QueueId {
        self.queue.get()
    }

    /// Sets the place's queue (login answered).
    pub fn set_queue(&self, queue: QueueId) {
        self.queue.set(queue);
    }

    /// Current position.
    #[inline]
    pub fn position(&self) -> u64 {
        self.position.get()
    }

    /// Position last sent to the client.
    pub fn pushed_position(&self) -> u64 {
        self.pushed_position.get()
    }

    /// `position` went to the client (a push or an answer).
    pub fn sent(&self, position: u64) {
        self.pushed_position.set(position);
    }

    /// True while a deferred push waits for this session.
    pub fn push_pending(&self) -> bool {
        self.push_pending.get()
    }
}

/// What the tracker needs of a session.
pub trait Follows {
    /// Its rank state.
    fn follow(&self) -> &Follow;
    /// True while it holds a place and follows its position.
    fn waits(&self) -> bool;
}

impl<T: Follows + ?Sized> Follows for &T {
    fn follow(&self) -> &Follow {
        (**self).follow()
    }
    fn waits(&self) -> bool {
        (**self).waits()
    }
}

impl<T: Follows + ?Sized> Follows for std::rc::Rc<T> {
    fn follow(&self) -> &Follow {
        (**self).follow()
    }
    fn waits(&self) -> bool {
        (**self).waits()
    }
}

/// What the caller does after a position changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Nothing: the client has this value, or a deferred push will carry it.
    None,
    /// Send a `position` push now (the throttle's clock is already set).
    Now,
    /// Deferred: wake the push flusher (it sends the latest value when due).
    Deferred,
}

/// What the caller does with a rank batch just received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStep {
    /// It moves nobody on this loop: nothing to do.
    Nothing,
    /// First of a coalesced run: apply the pending batches after the coalesce delay.
    Wait,
    /// Joined a coalesced run already waiting.
    Queued,
    /// Apply the pending batches now ([`Tracker::begin_pass`]).
    ApplyNow,
}

/// What a loop knows of one queue.
#[derive(Debug, Clone, Copy, Default)]
struct QueueView {
    /// Players waiting, as last reported.
    len: u64,
    /// Measured admission rate, players/s.
    rate_per_s: f64,
    /// Upper bound of the keys of this loop's waiting sessions in the queue (exact
    /// after each pass, only ever raised between passes); `None` = no session here.
    max_key: Option<PlaceKey>,
}

/// Rank batches, each with its number.
type Batches = Vec<(u64, Arc<RankBatch>)>;

/// The batches one pass applies, taken from the tracker by [`Tracker::begin_pass`].
pub struct Pass {
    /// The batches, oldest first.
    batches: Batches,
}

/// One loop's rank and push tracker (see the module invariants).
pub struct Tracker {
    /// Least time between position pushes to one session.
    push_interval: Duration,
    /// Sessions from which rank batches are coalesced instead of applied at once.
    coalesce_min_sessions: usize,
    /// Per core (0 = this node's, `k + 1` = node link `k`: `msg::queue_source`), per
    /// queue id in that core: what this loop knows of it, from rank batches and join
    /// answers. Two levels so remote ids (`(k + 1) << 24 | id`) stay dense.
    queues: RefCell<Vec<Vec<QueueView>>>,
    /// Rank batches received so far (numbers them).
    batches_seen: Cell<u64>,
    /// Rank batches not applied yet, with their numbers.
    pending_ranks: RefCell<Batches>,
    /// The emptied vector of the previous pass, reused (no allocation per pass).
    ranks_spare: RefCell<Batches>,
    /// Sessions with a deferred position push.
    pending_push: RefCell<Vec<SessionId>>,
}

impl Tracker {
    /// A tracker throttling pushes to one per `push_interval`, coalescing batches on
    /// loops with at least `coalesce_min_sessions` sessions.
    pub fn new(push_interval: Duration, coalesce_min_sessions: usize) -> Tracker {
        Tracker {
            push_interval,
            coalesce_min_sessions,
            queues: RefCell::new(Vec::new()),
            batches_seen: Cell::new(0),
            pending_ranks: RefCell::new(Vec::new()),
            ranks_spare: RefCell::new(Vec::new()),
            pending_push: RefCell::new(Vec::new()),
        }
    }

    /// (players waiting, admit rate) of a queue as last reported.
    pub fn queue_view(&self, queue: QueueId) -> (u64, f64) {
        self.view(queue).map_or((0, 0.0), |v| (v.len, v.rate_per_s))
    }

    fn view(&self, queue: QueueId) -> Option<QueueView> {
        let queues = self.queues.borrow();
        let source = queues.get(queue_source(queue))?;
        source.get(local_queue(queue) as usize).copied()
    }

    fn with_queue_view<R>(&self, queue: QueueId, f: impl FnOnce(&mut QueueView) -> R) -> R {
        let mut queues = self.queues.borrow_mut();
        let (source, id) = (queue_source(queue), local_queue(queue) as usize);
        if queues.len() <= source {
            queues.resize_with(source + 1, Vec::new);
        }
        let views = &mut queues[source];
        if views.len() <= id {
            views.resize(id + 1, QueueView::default());
        }
        f(&mut views[id])
    }

    /// Records a queue's length and admission rate.
    pub fn set_queue_view(&self, queue: QueueId, len: u64, rate: f64) {
        self.with_queue_view(queue, |v| {
            v.len = len;
            v.rate_per_s = rate;
        });
    }

    fn raise_max_key(&self, queue: QueueId, key: PlaceKey) {
        self.with_queue_view(queue, |v| {
            v.max_key = Some(v.max_key.map_or(key, |m| m.max(key)));
        });
    }

    /// A login was answered with a place at `position`, exact as of every batch
    /// received so far: the session follows it from the next batch on.
    pub fn start(
        &self,
        follow: &Follow,
        queue: QueueId,
        key: PlaceKey,
        position: u64,
        now: Instant,
    ) {
        follow.queue.set(queue);
        follow.key.set(key);
        follow.since_batch.set(self.batches_seen.get());
        self.raise_max_key(queue, key);
        follow.position.set(position);
        follow.pushed_position.set(position);
        follow.last_push.set(now);
    }

    /// True when some change in `delta` lies ahead of a waiting session of this loop,
    /// i.e. the batch can move someone here (departures and insertions behind every
    /// local session, the common churn at the tail, move nobody).
    fn moves_someone(&self, delta: &QueueDelta) -> bool {
        let Some(max) = self.view(delta.queue).and_then(|v| v.max_key) else {
            return false;
        };
        delta.departed.first().is_some_and(|&k| k < max)
            || delta.inserted.first().is_some_and(|&k| k < max)
    }

    /// Takes a rank batch from the core on a loop of `live` sessions: numbers it,
    /// records the queues' lengths and rates, and keeps it for the next pass if it can
    /// move anyone here.
    pub fn on_batch(&self, batch: Arc<RankBatch>, live: usize) -> BatchStep {
        for delta in &batch.queues {
            self.set_queue_view(delta.queue, delta.queue_len, delta.rate_per_s);
        }
        let seq = self.batches_seen.get();
        self.batches_seen.set(seq + 1);
        if !batch.queues.iter().any(|d| self.moves_someone(d)) {
            // Only appends, or changes behind everyone here: nobody moves.
            return BatchStep::Nothing;
        }
        let mut pending = self.pending_ranks.borrow_mut();
        pending.push((seq, batch));
        if pending.len() >= RANKS_PENDING_MAX || live < self.coalesce_min_sessions {
            BatchStep::ApplyNow
        } else if pending.len() == 1 {
            BatchStep::Wait
        } else {
            BatchStep::Queued
        }
    }

    /// Starts a pass over the sessions applying every pending batch; `None` when none
    /// is pending. Call [`Tracker::apply`] for each session, then [`Tracker::end_pass`].
    pub fn begin_pass(&self) -> Option<Pass> {
        if self.pending_ranks.borrow().is_empty() {
            return None;
        }
        let batches = std::mem::replace(
            &mut *self.pending_ranks.borrow_mut(),
            std::mem::take(&mut *self.ranks_spare.borrow_mut()),
        );
        // The pass recomputes the exact largest waiting key of each queue it touches.
        for (_, batch) in &batches {
            for delta in &batch.queues {
                self.with_queue_view(delta.queue, |v| v.max_key = None);
            }
        }
        Some(Pass { batches })
    }

    /// Moves one session by the sum of the shifts of the pass's batches that came
    /// after its position was set; returns what to do about its push. A session whose
    /// place left in one of them is not moved: the admission or kick that follows on
    /// the same channel settles it ("position 1 of 0" would be a lie).
    pub fn apply<S: Follows>(&self, pass: &Pass, id: SessionId, s: &S, now: Instant) -> Push {
        if !s.waits() {
            return Push::None;
        }
        let f = s.follow();
        let (queue, key, since) = (f.queue.get(), f.key.get(), f.since_batch.get());
        let mut touched = false;
        let mut shift = 0i64;
        let mut gone = false;
        for (seq, batch) in &pass.batches {
            if let Some(delta) = batch.queues.iter().find(|d| d.queue == queue) {
                touched = true;
                if *seq >= since {
                    let (by, left) = delta.shift_or_gone(key);
                    shift += by;
                    gone |= left;
                }
            }
        }
        if gone {
            return Push::None;
        }
        if touched {
            self.raise_max_key(queue, key);
        }
        if shift == 0 {
            return Push::None;
        }
        f.position
            .set(f.position.get().saturating_add_signed(shift));
        self.position_changed(id, f, now)
    }

    /// Ends a pass: keeps its emptied vector for the next one.
    pub fn end_pass(&self, pass: Pass) {
        let mut batches = pass.batches;
        batches.clear();
        *self.ranks_spare.borrow_mut() = batches;
    }

    /// Overwrites a waiting session's position with an exact one from a resync slice;
    /// returns what to do about its push.
    ///
    /// The slice's positions are as of its core round, after every op of it, and the
    /// loop receives it behind that round's rank batch and before any later one (see
    /// `queue::core`): it counts every batch received so far, pending ones included.
    /// So the session is marked as following from the next batch on (`since_batch`)
    /// instead of the pending batches being applied first: a slice costs O(slice), not
    /// a pass over every session of the loop (which a million players made 100 passes
    /// per resync cycle). The pending batches still move the other sessions at the next
    /// pass, and still raise `max_key` for this one.
    pub fn resync(&self, id: SessionId, f: &Follow, position: u64, now: Instant) -> Push {
        f.since_batch.set(self.batches_seen.get());
        if f.position.get() == position {
            return Push::None;
        }
        f.position.set(position);
        self.position_changed(id, f, now)
    }

    /// A position changed: push now, or defer to keep one push per interval.
    pub fn position_changed(&self, id: SessionId, f: &Follow, now: Instant) -> Push {
        if f.position.get() == f.pushed_position.get() || f.push_pending.get() {
            return Push::None;
        }
        if now.duration_since(f.last_push.get()) >= self.push_interval {
            f.last_push.set(now);
            Push::Now
        } else {
            f.push_pending.set(true);
            self.pending_push.borrow_mut().push(id);
            Push::Deferred
        }
    }

    /// Sends the deferred pushes that are due at `now`: `lookup` finds a session by id
    /// (`None` once it is gone), `push` sends its `position` push (the throttle's clock
    /// is already set). Returns the earliest next due time.
    pub fn flush_due<S: Follows>(
        &self,
        now: Instant,
        mut lookup: impl FnMut(SessionId) -> Option<S>,
        mut push: impl FnMut(&S),
    ) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        self.pending_push.borrow_mut().retain(|&id| {
            let Some(s) = lookup(id) else {
                return false;
            };
            let f = s.follow();
            if !s.waits() {
                f.push_pending.set(false);
                return false;
            }
            let due = f.last_push.get() + self.push_interval;
            if due <= now {
                f.push_pending.set(false);
                if f.position.get() != f.pushed_position.get() {
                    f.last_push.set(now);
                    push(&s);
                }
                false
            } else {
                next = Some(next.map_or(due, |n| n.min(due)));
                true
            }
        });
        next
    }
}

#[cfg(test)]
mod tests;
