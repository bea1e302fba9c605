//! The core's control side: the answers to the HTTP control API's requests
//! ([`ControlReq`]): admission by hand, pacing settings, token use, queue stats, a
//! player's report (`GET /v1/users/{user_id}`) and removal.
//!
//! Invariants (see the `core` module for the whole list):
//! - writes go through the state machine as ops (logged like any other); the answer is
//!   held until the round is committed and sent at flush;
//! - while degraded every write is answered `Unavailable`; stats and reports still
//!   answer (read-only).

use super::{degraded_reply, Core, ADMIT_MAX};
use crate::msg::{ControlReply, ControlReq, QueueId, QueueStats, UserId};
use crate::queue::journal::{EventOut, PlayerJournal, PositionCounts, UserReport, What};
use crate::queue::rank::split_key;
use crate::queue::state::{Applied, Op};

impl Core {
    /// Answers one control request (admission, pacing, token use, stats, a player's
    /// report, removal); writes are refused while degraded.
    pub(super) fn control(&mut self, req: ControlReq, now_ms: u64) -> ControlReply {
        let read_only = matches!(req, ControlReq::Stats | ControlReq::User { .. });
        if self.degraded && !read_only {
            return degraded_reply();
        }
        let applied = match req {
            ControlReq::Admit { queue, count } => return self.admit(&queue, count, now_ms),
            ControlReq::SetRate { queue, per_second } => {
                self.apply_to(&queue, now_ms, |queue| Op::SetRate { queue, per_second })
            }
            ControlReq::SetCapacity {
                queue,
                online,
                capacity,
            } => self.apply_to(&queue, now_ms, |queue| Op::SetCapacity {
                queue,
                online,
                capacity,
            }),
            ControlReq::Pause { queue, paused } => {
                let id = self.state.queue_id(&queue);
                if id.is_some_and(|id| self.fence_absorbs_pause(id, paused)) {
                    return ControlReply::Done;
                }
                self.apply_to(&queue, now_ms, |queue| Op::Pause { queue, paused })
            }
            ControlReq::ConsumeJti { jti, exp } => self.consume_jti(jti, exp, now_ms),
            ControlReq::Stats => return ControlReply::Stats(self.stats(now_ms)),
            ControlReq::User { queue, user } => return self.user_report(queue, user),
            ControlReq::Remove { queue, user } => return self.remove(&queue, user, now_ms),
        };
        match applied {
            Applied::Consumed(fresh) => ControlReply::Consumed(fresh),
            Applied::UnknownQueue => ControlReply::UnknownQueue,
            Applied::Invalid(why) => ControlReply::Invalid(why.to_string()),
            _ => ControlReply::Done,
        }
    }

    /// Applies the op `make` builds for the live queue named `name`.
    fn apply_to(&mut self, name: &str, now_ms: u64, make: impl FnOnce(QueueId) -> Op) -> Applied {
        match self.state.queue_id(name) {
            Some(queue) => self.apply(&make(queue), now_ms),
            None => Applied::UnknownQueue,
        }
    }

    /// `POST /v1/queues/{q}/admit`: admits up to `count` (at most [`ADMIT_MAX`]) and
    /// returns their tokens.
    fn admit(&mut self, name: &str, count: u64, now_ms: u64) -> ControlReply {
        let Some(queue) = self.state.queue_id(name) else {
            return ControlReply::UnknownQueue;
        };
        if count > ADMIT_MAX {
            return ControlReply::Invalid(format!("count must be at most {ADMIT_MAX}"));
        }
        if let Some(refused) = self.fenced_admit(name) {
            return refused;
        }
        let mut list = Vec::new();
        self.apply_collect(&Op::Admit { queue, count }, now_ms, Some(&mut list));
        ControlReply::Admitted(list)
    }

    /// `POST /v1/tokens/verify`: consumes the `jti` once; a use of one of this state's
    /// grants goes to its player's journal.
    fn consume_jti(&mut self, jti: String, exp: u64, now_ms: u64) -> Applied {
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

    /// `DELETE /v1/queues/{q}/players/{user_id}`: what the player held, or no such player.
    fn remove(&mut self, name: &str, user: UserId, now_ms: u64) -> ControlReply {
        let Some(queue) = self.state.queue_id(name) else {
            return ControlReply::NoSuchPlayer;
        };
        match self.apply(&Op::Remove { queue, user }, now_ms) {
            Applied::Removed(Some(held)) => {
                if let Some(journal) = &mut self.journal {
                    journal.record(queue, user, now_ms, What::Removed { held });
                }
                ControlReply::Removed(held)
            }
            _ => ControlReply::NoSuchPlayer,
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
        self.report_holding(&mut report, queue, user, player);
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

    /// What the player holds now: a place (waiting or in grace), an unused admission,
    /// or (from the journal) an admission whose token was used.
    fn report_holding(
        &self,
        report: &mut UserReport,
        queue: QueueId,
        user: UserId,
        player: Option<&PlayerJournal>,
    ) {
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
        } else if let Some(jti) = player.and_then(used_admission) {
            report.state = "admitted";
            report.jti = Some(self.state.jti_text(jti));
            report.used = Some(true);
        }
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
}

/// A used token leaves no grant: the journal remembers the admission. The `jti` of the
/// player's last admission when its token was used and nothing ended it since.
fn used_admission(player: &PlayerJournal) -> Option<u64> {
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
    match last {
        Some((jti, true)) => Some(jti),
        _ => None,
    }
}
