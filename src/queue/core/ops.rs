//! The core's apply side: each inbox message ([`CoreMsg`]) becomes state machine ops;
//! each op is applied, logged when it changed the state, and its events routed into
//! the round's outputs (rank deltas, admissions and kicks, the journal).
//!
//! Invariants (see the `core` module for the whole list):
//! - an op is appended to the log right after it is applied, in apply order, and only
//!   when [`logged`] says it may have changed the state;
//! - nothing here sends to a loop: events wait in the round's outputs until the flush,
//!   after the round is committed;
//! - cluster mode: a join for a queue the cluster tracks is queued only by its owner
//!   (fenced or not); on any other node it is answered SHUTTING_DOWN;
//! - per op: no allocation in steady state (the event scratch and the deltas are
//!   reused), except a token's signature for an admission.

use std::sync::atomic::Ordering;

use super::{Core, JoinOutcome, PendingJoin};
use crate::msg::{
    AdmittedUser, ConnRef, CoreMsg, JoinError, LoopEvent, PlaceKey, QueueDelta, QueueId, UserId,
};
use crate::queue::durability::logged;
use crate::queue::journal::What;
use crate::queue::state::{Applied, Event, Op};

impl Core {
    /// Applies one message; false on shutdown.
    pub(super) fn handle(&mut self, msg: CoreMsg, now_ms: u64) -> bool {
        match msg {
            CoreMsg::Join {
                conn,
                seq,
                user,
                queue,
                prio,
                peer,
                claim,
            } => {
                let outcome = self.join(queue.as_str(), user, prio, claim, conn, now_ms);
                let refused_in = match (&outcome, &self.journal) {
                    (Err(_), Some(_)) => self.state.queue_id(queue.as_str()),
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
            CoreMsg::Resubmit {
                conn,
                user,
                queue,
                key,
                admitted,
            } => self.resubmit_msg(conn, (user, queue.as_str(), key), admitted, now_ms),
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
            CoreMsg::AttachLoop {
                loop_id,
                events,
                bell,
            } => self.attach_loop(loop_id, events, bell),
            CoreMsg::DetachLoop { loop_id } => self.detach_loop(loop_id, now_ms),
            CoreMsg::Shutdown => return false,
        }
        true
    }

    /// A login to the queue named `name`: [`Op::Join`] (or, with a place ticket's
    /// `claim` the owner honors, the old place back: `core::claim`), unless the core is
    /// degraded or draining, or (cluster mode) the cluster tracks the queue and this node
    /// does not own it: SHUTTING_DOWN, which the loop answers with a retry hint. The
    /// outcome is answered at flush.
    fn join(
        &mut self,
        name: &str,
        user: UserId,
        prio: bool,
        claim: Option<PlaceKey>,
        conn: ConnRef,
        now_ms: u64,
    ) -> JoinOutcome {
        if self.degraded || self.draining.load(Ordering::Relaxed) {
            return Err(JoinError::ShuttingDown);
        }
        if let Some(f) = &self.fence {
            // A queue the cluster tracks and another node owns (or nobody yet): a stale
            // route, or a link join racing an ownership change. Queued here it would be
            // fenced for good and split from the real queue: come back. An owner cut
            // off from etcd keeps its epoch (fenced, not disowned) and keeps queueing.
            let epoch = f.fence.epoch(name);
            if epoch.is_none() && f.fence.tracks(name) {
                return Err(JoinError::ShuttingDown);
            }
            if let Some(outcome) = claim.and_then(|key| self.claim(name, user, key, conn, now_ms)) {
                return outcome;
            }
            if let Some(epoch) = epoch {
                self.epoch_floor(name, epoch, now_ms);
            }
        }
        let op = Op::Join {
            queue: name.to_string(),
            user,
            prio,
            conn,
        };
        self.apply_join(&op, user, now_ms)
    }

    /// Applies a join-like op (`Join`, `Resubmit`) of `user` and makes its answer.
    pub(super) fn apply_join(&mut self, op: &Op, user: UserId, now_ms: u64) -> JoinOutcome {
        match self.apply(op, now_ms) {
            Applied::Joined { queue, resumed } => {
                self.touch(queue);
                // Kept for the answer: a token use later in this round must not turn
                // the answer into INTERNAL (the login was resumed before the use; the
                // answer tells the truth of that moment).
                let grant = self.state.grant(queue, user);
                Ok((queue, user, resumed, grant))
            }
            Applied::JoinFailed(e) => Err(e),
            other => unreachable!("join applied as {other:?}"),
        }
    }

    /// Applies `op`, logs it, and routes its events; returns the direct result.
    pub(super) fn apply(&mut self, op: &Op, now_ms: u64) -> Applied {
        self.apply_collect(op, now_ms, None)
    }

    /// Like [`Core::apply`], also collecting admissions into `admitted`.
    pub(super) fn apply_collect(
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
    pub(super) fn route(
        &mut self,
        event: Event,
        admitted: Option<&mut Vec<AdmittedUser>>,
        now_ms: u64,
    ) {
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

    pub(super) fn sign(
        &self,
        queue: QueueId,
        user: UserId,
        jti: u64,
        iat: u64,
        exp: u64,
    ) -> String {
        let name = &self.state.queues()[queue as usize].name;
        self.signer
            .sign(user, name, &self.state.jti_text(jti), iat, exp)
    }

    pub(super) fn touch(&mut self, queue: QueueId) {
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
}
