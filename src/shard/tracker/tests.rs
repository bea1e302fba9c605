//! The tracker's rules without a runtime: the push throttle and rank batches.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{BatchStep, Follow, Follows, Push, Tracker};
use crate::msg::{QueueDelta, RankBatch};

const INTERVAL: Duration = Duration::from_millis(100);

/// A session as the tracker sees it.
struct Fake {
    /// Its rank state.
    follow: Follow,
    /// Still waiting in its queue.
    waits: Cell<bool>,
}

impl Follows for Fake {
    fn follow(&self) -> &Follow {
        &self.follow
    }
    fn waits(&self) -> bool {
        self.waits.get()
    }
}

fn waiting(tracker: &Tracker, key: u64, position: u64, t0: Instant) -> Fake {
    let s = Fake {
        follow: Follow::new(t0),
        waits: Cell::new(true),
    };
    tracker.start(&s.follow, 0, key, position, t0);
    s
}

fn at(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

/// Moves `s` to `position` as a rank pass would.
fn moved(tracker: &Tracker, s: &Fake, position: u64, now: Instant) -> Push {
    s.follow.position.set(position);
    tracker.position_changed(7, &s.follow, now)
}

/// Flushes at `now`; returns the positions pushed (and marks them sent, as the
/// session's `send_position` does) and the next due time.
fn flush(tracker: &Tracker, s: &Fake, now: Instant) -> (Vec<u64>, Option<Instant>) {
    let pushed = RefCell::new(Vec::new());
    let next = tracker.flush_due(
        now,
        |id| (id == 7).then_some(s),
        |s| {
            let p = s.follow.position();
            s.follow.sent(p);
            pushed.borrow_mut().push(p);
        },
    );
    (pushed.into_inner(), next)
}

#[test]
fn one_push_per_interval_carrying_the_latest_value() {
    let tracker = Tracker::new(INTERVAL, 0);
    let t0 = Instant::now();
    let s = waiting(&tracker, 50, 10, t0);
    // Within the interval of the login answer: deferred, once.
    assert_eq!(moved(&tracker, &s, 9, at(t0, 10)), Push::Deferred);
    assert_eq!(moved(&tracker, &s, 8, at(t0, 20)), Push::None);
    assert_eq!(moved(&tracker, &s, 7, at(t0, 30)), Push::None);
    assert_eq!(tracker.pending_push.borrow().len(), 1, "deferred once");
    // Not due yet: nothing sent, due at the end of the interval.
    assert_eq!(flush(&tracker, &s, at(t0, 50)), (vec![], Some(at(t0, 100))));
    // Due: one push with the latest value.
    assert_eq!(flush(&tracker, &s, at(t0, 100)), (vec![7], None));
    assert!(!s.follow.push_pending());
    assert!(tracker.pending_push.borrow().is_empty());
    // The throttle's clock restarted at that push.
    assert_eq!(moved(&tracker, &s, 6, at(t0, 150)), Push::Deferred);
    assert_eq!(
        flush(&tracker, &s, at(t0, 199)),
        (vec![], Some(at(t0, 200)))
    );
    assert_eq!(flush(&tracker, &s, at(t0, 200)), (vec![6], None));
    // A whole interval after the last push: at once.
    assert_eq!(moved(&tracker, &s, 5, at(t0, 300)), Push::Now);
    s.follow.sent(5);
    assert_eq!(moved(&tracker, &s, 4, at(t0, 310)), Push::Deferred);
}

#[test]
fn a_deferred_push_back_to_the_sent_value_or_of_a_gone_session_sends_nothing() {
    let tracker = Tracker::new(INTERVAL, 0);
    let t0 = Instant::now();
    let s = waiting(&tracker, 50, 10, t0);
    assert_eq!(moved(&tracker, &s, 9, at(t0, 10)), Push::Deferred);
    s.follow.position.set(10);
    assert_eq!(flush(&tracker, &s, at(t0, 100)), (vec![], None));
    assert_eq!(moved(&tracker, &s, 9, at(t0, 110)), Push::Now);
    s.follow.sent(9);
    assert_eq!(moved(&tracker, &s, 8, at(t0, 120)), Push::Deferred);
    s.waits.set(false);
    assert_eq!(flush(&tracker, &s, at(t0, 300)), (vec![], None));
    assert!(!s.follow.push_pending());
    // A session gone from the table leaves the list too.
    s.waits.set(true);
    assert_eq!(moved(&tracker, &s, 7, at(t0, 310)), Push::Now);
    s.follow.sent(7);
    assert_eq!(moved(&tracker, &s, 6, at(t0, 320)), Push::Deferred);
    let next = tracker.flush_due(at(t0, 400), |_| None::<&Fake>, |_| panic!("gone"));
    assert_eq!(next, None);
    assert!(tracker.pending_push.borrow().is_empty());
}

fn batch(departed: Vec<u64>, inserted: Vec<u64>) -> Arc<RankBatch> {
    Arc::new(RankBatch {
        queues: vec![QueueDelta {
            queue: 0,
            departed,
            inserted,
            queue_len: 100,
            rate_per_s: 0.0,
            admitted_max: [0, 0],
        }],
    })
}

#[test]
fn batches_move_only_sessions_whose_position_predates_them() {
    // Coalescing from 10 sessions on: these batches wait for a pass.
    let tracker = Tracker::new(Duration::ZERO, 2);
    let t0 = Instant::now();
    let old = waiting(&tracker, 50, 10, t0);
    assert_eq!(tracker.on_batch(batch(vec![5], vec![]), 2), BatchStep::Wait);
    // Joined after that batch: its position already counts it.
    let new = waiting(&tracker, 60, 11, t0);
    assert_eq!(
        tracker.on_batch(batch(vec![6], vec![7]), 2),
        BatchStep::Queued
    );
    assert_eq!(
        tracker.on_batch(batch(vec![8], vec![]), 2),
        BatchStep::Queued
    );
    // Behind everyone here: moves nobody.
    assert_eq!(
        tracker.on_batch(batch(vec![70], vec![71]), 2),
        BatchStep::Nothing
    );
    let pass = tracker.begin_pass().expect("pending batches");
    assert_eq!(tracker.apply(&pass, 1, &old, t0), Push::Now);
    assert_eq!(tracker.apply(&pass, 2, &new, t0), Push::Now);
    tracker.end_pass(pass);
    assert!(tracker.begin_pass().is_none());
    assert_eq!(old.follow.position(), 10 - 1 - 1 + 1 - 1);
    assert_eq!(new.follow.position(), 11 - 1 + 1 - 1);
    // A place that left in a batch is not moved: its admission or kick follows.
    assert_eq!(
        tracker.on_batch(batch(vec![1, 50], vec![]), 2),
        BatchStep::Wait
    );
    let pass = tracker.begin_pass().expect("pending");
    assert_eq!(tracker.apply(&pass, 1, &old, t0), Push::None);
    assert_eq!(old.follow.position(), 8);
    tracker.end_pass(pass);
}

#[test]
fn small_loops_apply_at_once_and_large_ones_after_a_bounded_run() {
    let tracker = Tracker::new(Duration::ZERO, 10);
    let t0 = Instant::now();
    let s = waiting(&tracker, 1000, 10, t0);
    assert_eq!(
        tracker.on_batch(batch(vec![1], vec![]), 9),
        BatchStep::ApplyNow
    );
    let pass = tracker.begin_pass().expect("pending");
    assert_eq!(tracker.apply(&pass, 1, &s, t0), Push::Now);
    tracker.end_pass(pass);
    assert_eq!(
        tracker.on_batch(batch(vec![2], vec![]), 10),
        BatchStep::Wait
    );
    for _ in 2..super::RANKS_PENDING_MAX {
        assert_eq!(
            tracker.on_batch(batch(vec![3], vec![]), 10),
            BatchStep::Queued
        );
    }
    assert_eq!(
        tracker.on_batch(batch(vec![4], vec![]), 10),
        BatchStep::ApplyNow
    );
}

/// 1-based position of `key` in `keys`.
fn exact(keys: &std::collections::BTreeSet<u64>, key: u64) -> u64 {
    keys.range(..key).count() as u64 + 1
}

/// A pass over every session, as the loop's rank applier makes it.
fn pass_all(tracker: &Tracker, sessions: &[(u64, Fake)], now: Instant) {
    if let Some(pass) = tracker.begin_pass() {
        for (id, (_, s)) in sessions.iter().enumerate() {
            tracker.apply(&pass, id as u64, s, now);
        }
        tracker.end_pass(pass);
    }
}

/// The model's queue: its keys, and where appends go next.
struct ModelQueue {
    /// Keys of the places waiting.
    keys: std::collections::BTreeSet<u64>,
    /// Last key appended behind everyone.
    tail: u64,
}

impl ModelQueue {
    /// One core round of churn: up to 3 departures, up to 2 insertions anywhere
    /// (as the priority lane does), up to 2 appends behind everyone (in no delta).
    fn churn(&mut self, rng: &mut crate::test_rng::Rng) -> QueueDelta {
        let mut departed = Vec::new();
        for _ in 0..rng.below(4) {
            let nth = rng.below(self.keys.len() as u64) as usize;
            if let Some(&k) = self.keys.iter().nth(nth) {
                self.keys.remove(&k);
                departed.push(k);
            }
        }
        let mut inserted = Vec::new();
        for _ in 0..rng.below(3) {
            let k = 1 + rng.below(1_400_000);
            if self.keys.insert(k) {
                inserted.push(k);
            }
        }
        for _ in 0..rng.below(3) {
            self.tail += 7;
            self.keys.insert(self.tail);
        }
        departed.sort_unstable();
        inserted.sort_unstable();
        QueueDelta {
            queue: 0,
            departed,
            inserted,
            queue_len: self.keys.len() as u64,
            rate_per_s: 0.0,
            admitted_max: [0, 0],
        }
    }
}

/// One seeded run of the model: a queue of keys churned by batches (departures,
/// insertions ahead of others, appends behind everyone), sessions that join between
/// batches, coalesced passes, and resync slices carrying exact positions as of the
/// latest batch (as the core sends them: behind that round's batch). After a last
/// pass every waiting session must be at its exact position.
fn resync_model(seed: u64) {
    let mut rng = crate::test_rng::Rng::new(seed);
    // Coalescing from one session on: batches pend until a pass (or 64 of them).
    let tracker = Tracker::new(Duration::ZERO, 1);
    let t0 = Instant::now();
    let mut q = ModelQueue {
        keys: (0..300).map(|i| 1_000_000 + i * 1000).collect(),
        tail: 2_000_000,
    };
    let mut sessions: Vec<(u64, Fake)> = Vec::new();
    for &key in q.keys.iter().step_by(3) {
        sessions.push((key, waiting(&tracker, key, exact(&q.keys, key), t0)));
    }
    for _ in 0..400 {
        let delta = q.churn(&mut rng);
        for (key, s) in &sessions {
            if delta.departed.contains(key) {
                // Its admission or kick follows the batch on the same channel.
                s.waits.set(false);
            }
        }
        let newcomer = delta.inserted.first().copied();
        let batch = Arc::new(RankBatch {
            queues: vec![delta],
        });
        if tracker.on_batch(batch, sessions.len()) == BatchStep::ApplyNow || rng.below(5) == 0 {
            pass_all(&tracker, &sessions, t0);
        }
        if rng.below(3) == 0 {
            // A resync slice: exact positions of some waiting sessions, as of now.
            let from = rng.below(sessions.len() as u64) as usize;
            for (id, (key, s)) in sessions.iter().enumerate().skip(from).take(20) {
                if s.waits() {
                    tracker.resync(id as u64, &s.follow, exact(&q.keys, *key), t0);
                }
            }
        }
        // A join answer of this round's newcomer: exact as of every batch so far.
        if let Some(key) = newcomer {
            sessions.push((key, waiting(&tracker, key, exact(&q.keys, key), t0)));
        }
    }
    pass_all(&tracker, &sessions, t0);
    let mut checked = 0;
    for (key, s) in sessions.iter().filter(|(_, s)| s.waits()) {
        let want = exact(&q.keys, *key);
        assert_eq!(s.follow.position(), want, "seed {seed}: key {key}");
        checked += 1;
    }
    assert!(checked > 30, "seed {seed}: only {checked} sessions checked");
}

#[test]
fn resync_slices_between_coalesced_batches_leave_exact_positions() {
    for seed in 1..=30 {
        resync_model(seed);
    }
}
