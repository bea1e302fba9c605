//! The reader side of an edge link ([`Relay`]: the owner's events to the loops, the
//! book of places kept up to date) and what the writer does with the places when the
//! connection comes back ([`EdgeLink::connected`]: re-submit to a new owner, wait for a
//! restarted owner's queues to be named, or kick after a cut).

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::follow::Follow;
use super::places::{Answer, Book};
use super::{book, lock, relay, ring, EdgeLink, LinkStats, LoopOut, Pending};
use crate::cluster::link::codec::{self, unpack_session, Reader};
use crate::msg::{
    local_queue, remote_queue, ConnRef, CoreMsg, JoinError, JoinOk, KickReason, LoopEvent, QueueId,
    SessionId, UserId,
};

impl EdgeLink {
    /// Connected again while places wait behind the link: to a new owner (`moved`),
    /// the places of the queues it owns are re-submitted first, in one batch sorted by
    /// key, and the players notice nothing; to the same owner (a cut link), they are
    /// kicked as before (their places wait in grace there: logging in again resumes
    /// them).
    fn reattach(&self, places: &Mutex<Book>, moved: bool, f: &Follow, batch: &mut Vec<CoreMsg>) {
        if !moved {
            // Re-submissions this process never answered: it may not have them (no
            // grace to resume from), so they go again; the others wait in its grace.
            self.resubmit_where(places, (false, true), f, batch);
            self.give_up(places, f.moved);
            return;
        }
        self.resubmit(places, true, f, batch);
    }

    /// A connection was made to owner process `incarnation` (`seen`: the one last
    /// connected at this address, updated); `fresh`: to a new address (the link followed
    /// a new owner). Places behind the link go to the new owner, wait for a restarted
    /// one's queues to be named, or are kicked after a cut to the same process.
    pub(super) fn connected(
        &self,
        (incarnation, seen): (u64, &mut Option<u64>),
        fresh: bool,
        places: &Mutex<Book>,
        f: &mut Follow,
        batch: &mut Vec<CoreMsg>,
    ) {
        let restarted = !fresh && seen.is_some_and(|s| s != incarnation);
        *seen = Some(incarnation);
        if fresh || restarted {
            // Another process: the old one's queue ids mean nothing here.
            book(places).forget_ids();
        }
        if book(places).orphaned_since.is_none() {
            return;
        }
        if restarted {
            self.owner_restarted(places, f, batch);
        } else {
            self.reattach(places, fresh, f, batch);
        }
    }

    /// Connected again to the same address, but another owner process answered (the
    /// owner was restarted): its places are in no grace there, so they are held, not
    /// kicked, until the router names each queue's owner after the restart (a new epoch:
    /// this process, or another node) and are re-submitted to it; names already given
    /// since the connection broke are used at once.
    fn owner_restarted(&self, places: &Mutex<Book>, f: &mut Follow, batch: &mut Vec<CoreMsg>) {
        let since = book(places).orphaned_since;
        tracing::info!(node = %self.node, addr = %f.addr, "node link: the owner process was replaced; its places wait for each queue's owner");
        f.restarted(since);
        self.resubmit(places, true, f, batch);
    }

    /// Puts re-submissions of the held places whose queue's new owner is the one this
    /// link dials in front of `batch` (`fresh`: a new connection).
    pub(super) fn resubmit(
        &self,
        places: &Mutex<Book>,
        fresh: bool,
        f: &Follow,
        batch: &mut Vec<CoreMsg>,
    ) {
        self.resubmit_where(places, (fresh, false), f, batch);
    }

    /// [`EdgeLink::resubmit`]; `unanswered_only`: only the places whose last
    /// re-submission was never answered.
    fn resubmit_where(
        &self,
        places: &Mutex<Book>,
        (fresh, unanswered_only): (bool, bool),
        f: &Follow,
        batch: &mut Vec<CoreMsg>,
    ) {
        let (all, marks): (Vec<_>, Vec<_>) = {
            let mut b = book(places);
            let all = b.take_resubmissions((fresh, unanswered_only), |q| f.here(q));
            let marks = all.iter().map(|(_, l)| b.marks_of(l.edge_queue)).collect();
            (all, marks)
        };
        if all.is_empty() {
            return;
        }
        self.stats.resubmitted(all.len() as u64);
        tracing::info!(node = %self.node, places = all.len(), "re-submitting places to the new owner");
        // Each place carries its queue's admitted marks (the new owner takes the max).
        let resubmits = all
            .into_iter()
            .zip(marks)
            .map(|((packed, live), admitted)| {
                let (loop_id, session) = unpack_session(packed);
                CoreMsg::Resubmit {
                    conn: ConnRef { loop_id, session },
                    user: live.user,
                    queue: (&*live.queue).into(),
                    key: live.key,
                    admitted,
                }
            });
        batch.splice(0..0, resubmits);
    }

    /// Gives the held places up: after a failover (`moved`) each held session is
    /// kicked `shutdown` (the others wait at their new owner); otherwise every session
    /// behind the link is (`LinkLost`, with a retry hint).
    pub(super) fn give_up(&self, places: &Mutex<Book>, moved: bool) {
        let mut rung = vec![false; self.loops.len()];
        if moved {
            for packed in book(places).give_up_held() {
                let (l, session) = unpack_session(packed);
                let kick = LoopEvent::Kick {
                    session,
                    reason: KickReason::Shutdown,
                };
                self.relay(l as usize, kick, &mut rung);
            }
        } else {
            book(places).give_up();
            for loop_id in 0..self.loops.len() {
                let lost = LoopEvent::LinkLost { link: self.index };
                self.relay(loop_id, lost, &mut rung);
            }
        }
        self.ring(&mut rung);
    }
}

/// The link's two locks, held for one frame.
struct Locked<'a> {
    /// Joins in flight on the connection.
    pending: MutexGuard<'a, HashMap<SessionId, (u32, UserId)>>,
    /// The link's book of places.
    places: MutexGuard<'a, Book>,
}

/// The reader of one connection: owner events to the loops.
pub(super) struct Relay {
    /// Its connection's number in the book: once it is not the current one, the
    /// reader stops (the writer reconnected or gave it up).
    pub(super) connection: u64,
    /// The link's index.
    pub(super) index: usize,
    /// Every local loop.
    pub(super) loops: Arc<Vec<LoopOut>>,
    /// Server stop.
    pub(super) stop: Arc<AtomicBool>,
    /// Set when this connection ends.
    pub(super) broken: Arc<AtomicBool>,
    /// Joins in flight on this connection.
    pub(super) pending: Pending,
    /// The link's places (kept across connections).
    pub(super) places: Arc<Mutex<Book>>,
    /// The link's counters.
    pub(super) stats: Arc<LinkStats>,
}

impl Relay {
    pub(super) fn run(self, mut stream: TcpStream) {
        let mut body = Vec::new();
        let mut rung = vec![false; self.loops.len()];
        let why = loop {
            match codec::read_frame(&mut stream, &mut body) {
                Ok(true) => {}
                Ok(false) => break "closed by the owner".to_string(),
                Err(e) => break e.to_string(),
            }
            match self.frame(&body, &mut rung) {
                Ok(Some(events)) => self.stats.received(body.len() + 4, events),
                Ok(None) => break "given up by the writer".to_string(),
                Err(e) => break e.to_string(),
            }
            ring(&self.loops, &mut rung);
        };
        tracing::info!(link = self.index, why, "node link closed");
        self.stats.closed();
        let _ = stream.shutdown(Shutdown::Both);
        // Logins in flight get SHUTTING_DOWN (retry), not silence.
        let lost: Vec<_> = lock(&self.pending).drain().collect();
        for (packed, (seq, user)) in lost {
            let (l, session) = unpack_session(packed);
            let e = LoopEvent::Joined {
                session,
                seq,
                user,
                result: Err(JoinError::ShuttingDown),
            };
            relay(&self.loops, &self.stop, l as usize, e, &mut rung);
        }
        // The waiting places are held (unless the writer did after a failed write):
        // the writer re-dials, and re-submits them to a new owner or kicks them (see
        // `EdgeLink::reattach`). Held before `broken` is set, so the writer never
        // re-dials with places behind a dead connection that are not held yet.
        book(&self.places).broke(self.connection);
        self.broken.store(true, Ordering::SeqCst);
        ring(&self.loops, &mut rung);
    }

    /// A join answer: a login's goes to its loop (unless answered already); a
    /// re-submission's becomes a resync of the position, the admission it carries, or
    /// a kick when refused; one for a session that ended meanwhile is dropped.
    fn joined(
        &self,
        locked: &mut Locked<'_>,
        (session, wire_queue): (SessionId, QueueId),
        seq: u32,
        user: UserId,
        result: Result<JoinOk, JoinError>,
        rung: &mut [bool],
    ) {
        let ok = result.as_ref().ok().map(|ok| {
            let admitted = ok.admitted.is_some();
            (ok.queue, wire_queue, ok.key, ok.position, admitted)
        });
        let answer = locked.places.answered(session, user, ok);
        let (l, s) = unpack_session(session);
        let result = match (answer, result) {
            (Answer::Relay, result) => result,
            (Answer::Dropped, _) => return,
            (Answer::Resynced(p), _) => {
                return self.to_loop(l, LoopEvent::Resync(vec![(s, p)]), rung)
            }
            (
                Answer::Admitted,
                Ok(JoinOk {
                    admitted: Some((token, expires_at)),
                    ..
                }),
            ) => {
                let e = LoopEvent::Admitted {
                    session: s,
                    token,
                    expires_at,
                };
                return self.to_loop(l, e, rung);
            }
            (Answer::Admitted | Answer::Refused, _) => {
                let e = LoopEvent::Kick {
                    session: s,
                    reason: KickReason::Shutdown,
                };
                return self.to_loop(l, e, rung);
            }
        };
        if locked.pending.remove(&session).is_none() {
            return; // answered SHUTTING_DOWN already (write failed)
        }
        let e = LoopEvent::Joined {
            session: s,
            seq,
            user,
            result,
        };
        relay(&self.loops, &self.stop, l as usize, e, rung);
    }

    /// Relays `e` to loop `l`.
    fn to_loop(&self, l: u16, e: LoopEvent, rung: &mut [bool]) {
        relay(&self.loops, &self.stop, l as usize, e, rung);
    }

    /// A resync of positions: split by loop, ids unpacked.
    fn resync(&self, list: Vec<(SessionId, u64)>, rung: &mut [bool]) {
        let mut per_loop: Vec<Vec<(SessionId, u64)>> = vec![Vec::new(); self.loops.len()];
        for (s, position) in list {
            let (l, s) = unpack_session(s);
            if let Some(v) = per_loop.get_mut(l as usize) {
                v.push((s, position));
            }
        }
        for (l, v) in per_loop.into_iter().enumerate() {
            if !v.is_empty() {
                relay(&self.loops, &self.stop, l, LoopEvent::Resync(v), rung);
            }
        }
    }

    /// Relays one frame's events; returns how many. The joins in flight and the book
    /// are locked once for the frame (in the writer's order: pending, then book); a
    /// loop never takes them, so waiting here for a full loop channel cannot deadlock.
    /// `None` when the connection is not the writer's current one any more.
    fn frame(&self, body: &[u8], rung: &mut [bool]) -> Result<Option<u64>, codec::CodecError> {
        let index = self.index;
        let mut locked = Locked {
            pending: lock(&self.pending),
            places: book(&self.places),
        };
        if !locked.places.is_current(self.connection) {
            return Ok(None);
        }
        let mut r = Reader::new(body)?;
        let mut events = 0;
        while r.more() {
            events += 1;
            let places = &locked.places;
            // The owner's own id of the (last) queue decoded: a join answer's.
            let wire_queue = std::cell::Cell::new(0);
            let event = r.event(|q| {
                wire_queue.set(q);
                remote_queue(index, places.edge_queue_of(q))
            })?;
            let one = |s: SessionId| unpack_session(s);
            match event {
                LoopEvent::Ranks(batch) => {
                    for d in &batch.queues {
                        locked
                            .places
                            .saw_marks(local_queue(d.queue), d.admitted_max);
                    }
                    for loop_id in 0..self.loops.len() {
                        let e = LoopEvent::Ranks(batch.clone());
                        relay(&self.loops, &self.stop, loop_id, e, rung);
                    }
                }
                LoopEvent::Resync(list) => self.resync(list, rung),
                LoopEvent::Joined {
                    session,
                    seq,
                    user,
                    result,
                } => {
                    let ids = (session, wire_queue.get());
                    self.joined(&mut locked, ids, seq, user, result, rung)
                }
                LoopEvent::Admitted {
                    session,
                    token,
                    expires_at,
                } => {
                    locked.places.ended(session);
                    let (l, session) = one(session);
                    let e = LoopEvent::Admitted {
                        session,
                        token,
                        expires_at,
                    };
                    relay(&self.loops, &self.stop, l as usize, e, rung);
                }
                LoopEvent::Kick { session, reason } => {
                    locked.places.ended(session);
                    let (l, session) = one(session);
                    let e = LoopEvent::Kick { session, reason };
                    relay(&self.loops, &self.stop, l as usize, e, rung);
                }
                // The owner stopping is a closed link, not this node's shutdown.
                LoopEvent::Shutdown | LoopEvent::LinkLost { .. } => {}
            }
        }
        Ok(Some(events))
    }
}
