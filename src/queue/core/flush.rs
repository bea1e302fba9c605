//! The core's flush, once per round after the commit: the rank batch shared by all
//! loops, the next slice of the incremental resync, the join answers, then admissions,
//! kicks and control answers; one doorbell ring per loop.
//!
//! Invariants (see the `core` module for the whole list):
//! - per loop: rank batch, then resync slice, then join answers, then admissions and
//!   kicks, so a loop applies a batch only to sessions whose position predates it;
//! - join answers compute positions now, after every op of the round; a login that
//!   resumed an admission is answered with it even if its token was used since;
//! - a resync slice walks at most `resync_slice` slots and queues from the cursor, and
//!   carries positions as of this round.

use std::sync::Arc;

use super::{Core, PendingJoin, ResyncCursor};
use crate::msg::{JoinError, JoinOk, LoopEvent, QueueId, RankBatch, SessionId};
use crate::queue::journal::{self, What};
use crate::queue::rank::split_key;

impl Core {
    /// Sends everything this round produced, then rings each loop once. `resync`
    /// starts a resync cycle unless one is under way; a cycle under way sends its next
    /// slice.
    pub(super) fn flush(&mut self, now_ms: u64, resync: bool) {
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
                d.admitted_max = q.admitted_max;
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
    pub(super) fn resync_slice(&mut self) {
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
    pub(super) fn journal_join(
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

    pub(super) fn answer_join(&self, join: &PendingJoin, now_ms: u64) -> Result<JoinOk, JoinError> {
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
