//! The last hour of the server and of each queue, one sample per wall-clock minute:
//! requests in, pushes out, logins, admissions, leaves, kicks by reason, and players
//! waiting at the minute's end (`/v1/stats` `history`, the dashboard's charts).
//!
//! The core owns a [`Sampler`]; at most once per core tick it checks whether the
//! minute changed (one division) and, when it did, turns cumulative counters (the
//! loops' atomics and the core's own queue totals) into the minute's deltas and pushes
//! them into the shared [`History`].
//!
//! Invariants:
//! - each ring holds at most [`MINUTES`] samples, oldest first; a queue's ring goes
//!   when the queue does (expired or gone), so memory is bounded by `max_queues` x
//!   [`MINUTES`] samples (about 7 KB a queue);
//! - the core never waits for the lock: it uses `try_lock`, and when the control thread
//!   holds it the minute is closed at the next tick instead (its sample then covers a
//!   few ms more); a minute in which the core did not run at all has no sample (the
//!   `start_unix_secs` of the samples show the gap);
//! - the first sample after a start covers the part of the minute the server ran.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{LoopStats, KICK_REASONS};

/// What the sampler reads of one queue. The queue core's `Queue` implements it (in
/// `queue::state::queue`), so this module needs nothing from the queue module and the
/// two form no import cycle.
pub trait QueueTotals {
    /// The queue's name (the ring's key).
    fn name(&self) -> &str;
    /// Admissions since the start, cumulative.
    fn admitted_total(&self) -> u64;
    /// Leaves since the start, cumulative.
    fn left_total(&self) -> u64;
    /// Players waiting now.
    fn waiting(&self) -> u64;
    /// An expired auto-created queue (a tombstone): it has no ring.
    fn is_expired(&self) -> bool;
}

/// Samples kept per ring: one hour.
pub const MINUTES: usize = 60;
/// Length of a sample, ms.
pub const MINUTE_MS: u64 = 60_000;

/// Kicks by reason (the `kicked` push's `reason` names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Kicks {
    /// Another connection logged in as the same user.
    pub duplicate_login: u64,
    /// Silent past `idle_timeout_secs`.
    pub idle_timeout: u64,
    /// Did not read what it was sent.
    pub slow_consumer: u64,
    /// The server stopped.
    pub shutdown: u64,
    /// An operator removed the player.
    pub removed: u64,
}

impl Kicks {
    /// From counts by `kick_index`.
    fn from_counts(n: [u64; 5]) -> Kicks {
        Kicks {
            duplicate_login: n[0],
            idle_timeout: n[1],
            slow_consumer: n[2],
            shutdown: n[3],
            removed: n[4],
        }
    }
}

/// One minute of one queue, or of the whole server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Start of the minute, unix seconds (a multiple of 60).
    pub start_unix_secs: u64,
    /// Frames read from players (for a queue: from its logged-in players).
    pub requests_in: u64,
    /// Pushes sent (`position`, `admitted`, `kicked`).
    pub pushes_out: u64,
    /// Successful logins.
    pub logins: u64,
    /// Players admitted.
    pub admissions: u64,
    /// Players who left (leave or reconnect grace expired).
    pub leaves: u64,
    /// Kicks by reason.
    pub kicks: Kicks,
    /// Players waiting at the end of the minute.
    pub waiting: u64,
}

/// Cumulative counts, from which a minute's deltas are taken.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    /// Frames in.
    requests_in: u64,
    /// Pushes out.
    pushes_out: u64,
    /// Logins.
    logins: u64,
    /// Admissions.
    admissions: u64,
    /// Leaves.
    leaves: u64,
    /// Kicks by `kick_index`.
    kicks: [u64; 5],
}

impl Totals {
    /// `self - before` as a sample (saturating: a reused queue slot restarts the core's
    /// totals at zero).
    fn minus(&self, before: &Totals, start_unix_secs: u64, waiting: u64) -> Sample {
        let mut kicks = [0; 5];
        for (i, k) in kicks.iter_mut().enumerate() {
            *k = self.kicks[i].saturating_sub(before.kicks[i]);
        }
        Sample {
            start_unix_secs,
            requests_in: self.requests_in.saturating_sub(before.requests_in),
            pushes_out: self.pushes_out.saturating_sub(before.pushes_out),
            logins: self.logins.saturating_sub(before.logins),
            admissions: self.admissions.saturating_sub(before.admissions),
            leaves: self.leaves.saturating_sub(before.leaves),
            kicks: Kicks::from_counts(kicks),
            waiting,
        }
    }
}

/// At most [`MINUTES`] samples, oldest first.
#[derive(Debug, Default)]
struct Ring {
    /// The samples.
    samples: VecDeque<Sample>,
}

impl Ring {
    fn push(&mut self, sample: Sample) {
        if self.samples.len() == MINUTES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }
}

/// The rings, behind the lock.
#[derive(Debug, Default)]
struct Rings {
    /// The whole server.
    server: Ring,
    /// Per queue, by name.
    queues: BTreeMap<String, Ring>,
}

/// The shared history: written by the core's [`Sampler`], read by the control thread.
#[derive(Debug, Default)]
pub struct History {
    /// The rings.
    rings: Mutex<Rings>,
}

impl History {
    /// The server's samples, oldest first.
    pub fn server(&self) -> Vec<Sample> {
        let rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        rings.server.samples.iter().copied().collect()
    }

    /// Every queue's samples, oldest first, by queue name.
    pub fn queues(&self) -> BTreeMap<String, Vec<Sample>> {
        let rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        rings
            .queues
            .iter()
            .map(|(name, ring)| (name.clone(), ring.samples.iter().copied().collect()))
            .collect()
    }
}

/// The core's side: closes minutes.
pub struct Sampler {
    /// Where samples go (`stats.history`).
    stats: Arc<super::ServerStats>,
    /// The loops' counters.
    loops: Arc<Vec<LoopStats>>,
    /// The minute being counted (unix ms / [`MINUTE_MS`]).
    minute: u64,
    /// Per queue id, totals at the start of the minute.
    queue_before: Vec<Totals>,
    /// Server totals at the start of the minute.
    server_before: Totals,
}

impl Sampler {
    /// A sampler writing into `stats.history`, reading `loops`; counting starts at
    /// `now_ms`.
    pub fn new(stats: Arc<super::ServerStats>, loops: Arc<Vec<LoopStats>>, now_ms: u64) -> Sampler {
        Sampler {
            stats,
            loops,
            minute: now_ms / MINUTE_MS,
            queue_before: Vec::new(),
            server_before: Totals::default(),
        }
    }

    /// Closes the minute if `now_ms` is past it (cheap otherwise: one division).
    #[inline]
    pub fn tick<Q: QueueTotals>(&mut self, now_ms: u64, queues: &[Q]) {
        if now_ms / MINUTE_MS != self.minute {
            self.close(now_ms, queues);
        }
    }

    /// Turns the minute's counts into samples; retried at the next tick when the
    /// control thread holds the lock.
    fn close<Q: QueueTotals>(&mut self, now_ms: u64, queues: &[Q]) {
        let Ok(mut rings) = self.stats.history.rings.try_lock() else {
            return;
        };
        let start = self.minute * (MINUTE_MS / 1000);
        if self.queue_before.len() < queues.len() {
            self.queue_before.resize(queues.len(), Totals::default());
        }
        let mut server = self.loop_totals(None);
        let mut waiting = 0;
        for (id, q) in queues.iter().enumerate() {
            let mut now = self.loop_totals(Some(id));
            now.admissions = q.admitted_total();
            now.leaves = q.left_total();
            server.admissions += q.admitted_total();
            server.leaves += q.left_total();
            let sample = now.minus(&self.queue_before[id], start, q.waiting());
            self.queue_before[id] = now;
            if q.is_expired() {
                continue;
            }
            waiting += q.waiting();
            match rings.queues.get_mut(q.name()) {
                Some(ring) => ring.push(sample),
                None => {
                    let mut ring = Ring::default();
                    ring.push(sample);
                    rings.queues.insert(q.name().to_owned(), ring);
                }
            }
        }
        rings
            .queues
            .retain(|name, _| queues.iter().any(|q| !q.is_expired() && q.name() == name));
        let sample = server.minus(&self.server_before, start, waiting);
        self.server_before = server;
        rings.server.push(sample);
        self.minute = now_ms / MINUTE_MS;
    }

    /// Sums of the loops' counters: of queue `id`, or of the whole loop when `None`.
    fn loop_totals(&self, id: Option<usize>) -> Totals {
        let mut t = Totals::default();
        for l in self.loops.iter() {
            let get = LoopStats::get;
            match id {
                None => {
                    t.requests_in += get(&l.frames_in);
                    t.pushes_out += get(&l.pushes);
                    t.logins += get(&l.logins);
                    for (i, k) in t.kicks.iter_mut().enumerate() {
                        *k += get(&l.kicks[i]);
                    }
                }
                Some(id) => {
                    let Some(q) = l.queues.get(id) else { continue };
                    t.requests_in += get(&q.requests_in);
                    t.pushes_out += get(&q.pushes_out);
                    t.logins += get(&q.logins);
                    for (i, k) in t.kicks.iter_mut().enumerate() {
                        *k += get(&q.kicks[i]);
                    }
                }
            }
        }
        debug_assert_eq!(KICK_REASONS.len(), t.kicks.len());
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::msg::{ConnRef, KickReason};
    use crate::queue::state::{Limits, Op, QueueState};
    use crate::stats::ServerStats;

    /// A state with queues `a` and `b`, and one loop of counters.
    fn setup() -> (QueueState, Arc<ServerStats>, Arc<Vec<LoopStats>>) {
        let state = QueueState::new(
            Limits::from_config(&Config::default()),
            &[("a".into(), 100, 0.0), ("b".into(), 100, 0.0)],
            1,
        );
        (
            state,
            Arc::new(ServerStats::default()),
            Arc::new(vec![LoopStats::new(8)]),
        )
    }

    fn join(state: &mut QueueState, queue: &str, user: u64, now_ms: u64) {
        let op = Op::Join {
            queue: queue.into(),
            user,
            prio: false,
            conn: ConnRef {
                loop_id: 0,
                session: user,
            },
        };
        state.apply(&op, now_ms, &mut Vec::new());
    }

    #[test]
    fn a_minute_becomes_one_sample_per_queue_and_one_for_the_server() {
        let (mut state, stats, loops) = setup();
        let t0 = 1_700_000_000_000 / MINUTE_MS * MINUTE_MS + 5_000;
        let mut sampler = Sampler::new(stats.clone(), loops.clone(), t0);
        for user in 1..=3 {
            join(&mut state, "a", user, t0);
            loops[0].logged_in(0);
        }
        join(&mut state, "b", 9, t0);
        loops[0].logged_in(1);
        for _ in 0..5 {
            loops[0].frame_in(Some(0));
        }
        loops[0].frame_in(None);
        loops[0].pushed(Some(1));
        loops[0].kicked(Some(0), KickReason::IdleTimeout);
        state.apply(&Op::Admit { queue: 0, count: 2 }, t0, &mut Vec::new());

        // Same minute: nothing closes.
        sampler.tick(t0 + 50_000, state.queues());
        assert!(stats.history.server().is_empty());

        sampler.tick(t0 + MINUTE_MS, state.queues());
        let start = t0 / 1000 / 60 * 60;
        let queues = stats.history.queues();
        let a = queues["a"][0];
        assert_eq!(a.start_unix_secs, start);
        assert_eq!(
            (
                a.requests_in,
                a.pushes_out,
                a.logins,
                a.admissions,
                a.waiting
            ),
            (5, 1, 3, 2, 1)
        );
        assert_eq!(a.kicks.idle_timeout, 1);
        let b = queues["b"][0];
        assert_eq!(
            (b.requests_in, b.pushes_out, b.logins, b.waiting),
            (0, 1, 1, 1)
        );
        let server = stats.history.server();
        assert_eq!(server.len(), 1);
        assert_eq!(
            (
                server[0].requests_in,
                server[0].logins,
                server[0].admissions
            ),
            (6, 4, 2)
        );
        assert_eq!(server[0].waiting, 2);

        // The next minute holds only what happened in it.
        loops[0].frame_in(Some(0));
        sampler.tick(t0 + 2 * MINUTE_MS, state.queues());
        let a = stats.history.queues()["a"][1];
        assert_eq!(a.start_unix_secs, start + 60);
        assert_eq!((a.requests_in, a.logins, a.admissions), (1, 0, 0));
    }

    #[test]
    fn a_ring_keeps_the_last_hour_and_a_busy_lock_delays_the_sample() {
        let (state, stats, loops) = setup();
        let t0 = 1_700_000_000_000 / MINUTE_MS * MINUTE_MS;
        let mut sampler = Sampler::new(stats.clone(), loops.clone(), t0);
        {
            let _held = stats.history.rings.lock().unwrap();
            sampler.tick(t0 + MINUTE_MS, state.queues());
        }
        assert!(
            stats.history.server().is_empty(),
            "held lock: no sample yet"
        );
        loops[0].frame_in(None);
        sampler.tick(t0 + MINUTE_MS + 10, state.queues());
        assert_eq!(stats.history.server()[0].requests_in, 1);
        for m in 2..100 {
            sampler.tick(t0 + m * MINUTE_MS, state.queues());
        }
        let server = stats.history.server();
        assert_eq!(server.len(), MINUTES);
        assert_eq!(server[MINUTES - 1].start_unix_secs, (t0 / 1000) + 98 * 60);
        assert_eq!(stats.history.queues()["a"].len(), MINUTES);
    }
}
