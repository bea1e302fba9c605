//! The book an edge link keeps of the places behind it, for failover: which sessions
//! wait in which queue at which key, so that when the queue's owner dies they can be
//! re-submitted to the new owner (`CoreMsg::Resubmit`) without the players noticing,
//! and how the new owner's queue ids map onto the ids the sessions already hold.
//!
//! Invariants:
//! - `held` (a subset of `live`) are the places behind no connection since the link
//!   broke; each goes to its queue's new owner once the router names it (this link's
//!   connection, or another link that takes them with [`Book::split_off`]);
//! - `live` holds exactly the link's sessions that wait (joined, not admitted, not
//!   left, not kicked, not closed); locked once per frame by the link's two threads,
//!   never by an io loop;
//! - a join's queue name is interned (`names`): the writer allocates no string per
//!   join;
//! - queue ids held by sessions never change: after a re-submission the owner's new id
//!   is mapped onto the old one (`to_edge`, `to_owner`), per connection;
//! - `marks` holds, per queue id sessions hold, the latest admitted marks of the
//!   owner's rank batches (kept across connections: a key some owner admitted stays
//!   admitted); each re-submission carries its queue's, so the new owner refuses place
//!   tickets of places the dead owner admitted after its last etcd write. Updating them
//!   is a map lookup per queue in a batch: no allocation once a queue is known;
//! - `retry` (a subset of `held`) are places whose re-submission the owner never
//!   answered (the write failed, or the connection broke first): that owner process
//!   may not have them, so a re-dial to it re-submits them instead of kicking them;
//! - a session in `resubmitting` that ends (leave, disconnect) is taken out at once;
//!   its `Leave`/`Disconnect` waits in `deferred` until the answer maps the new owner's
//!   queue id, then goes to `late` for the writer; the answer itself is dropped;
//! - `joining` only holds joins on the current connection: a broken connection clears
//!   it (its joins were answered SHUTTING_DOWN);
//! - `connection` counts the writer's connections: a reader of an older one relays and
//!   holds nothing (the writer reconnected, or gave it up after a failed write and held
//!   the places itself).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use crate::msg::{local_queue, CoreMsg, PlaceKey, QueueId, SessionId, UserId};

/// Most queue names a book interns (the names a link carries are its owner's queues:
/// this bound only matters for a flood of auto-created names).
pub(super) const NAMES_MAX: usize = 4096;

/// One waiting place behind the link.
#[derive(Debug, Clone)]
pub(super) struct Live {
    /// The player.
    pub user: UserId,
    /// The queue's name (interned: one allocation per name, not per join).
    pub queue: Arc<str>,
    /// The place's key at the owner.
    pub key: PlaceKey,
    /// The queue id the session holds (the link bits cleared).
    pub edge_queue: QueueId,
}

/// The link's book (see the module doc).
#[derive(Debug, Default)]
pub(super) struct Book {
    /// Joins in flight: packed session -> queue name.
    joining: HashMap<SessionId, Arc<str>>,
    /// Every queue name a join named, once ([`NAMES_MAX`] at most: past that a join
    /// allocates its name).
    names: HashSet<Arc<str>>,
    /// Waiting places: packed session -> place.
    pub live: HashMap<SessionId, Live>,
    /// Re-submissions sent on this connection, not answered: packed session.
    resubmitting: HashMap<SessionId, QueueId>,
    /// Owner's queue id -> the id sessions hold (absent: the same).
    to_edge: HashMap<QueueId, QueueId>,
    /// The id sessions hold -> the owner's (absent: the same).
    to_owner: HashMap<QueueId, QueueId>,
    /// Places behind no connection (it broke): re-submitted when their queue's new
    /// owner is known, or given up.
    held: HashSet<SessionId>,
    /// When the connection broke with places behind it (until every held place is
    /// re-submitted or given up).
    pub orphaned_since: Option<Instant>,
    /// The id sessions hold (link bits cleared) -> the highest admitted key per lane
    /// [normal, priority] the owners' rank batches reported ([`MARKS_MAX`] queues).
    marks: HashMap<QueueId, [PlaceKey; 2]>,
    /// Held places whose re-submission was never answered (see the module doc).
    retry: HashSet<SessionId>,
    /// Ended sessions whose re-submission is unanswered -> their `Leave`/`Disconnect`
    /// (the session's queue id), sent once the answer maps the owner's id.
    deferred: HashMap<SessionId, CoreMsg>,
    /// `Leave`/`Disconnect` of `deferred` whose queue id is mapped now: the writer
    /// sends them on its next round.
    late: Vec<CoreMsg>,
    /// The writer's current connection (a count; see the module doc).
    connection: u64,
}

/// Where a session's place was when it ended ([`Book::ended`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Was {
    /// Behind no connection: there is no owner to tell.
    Held,
    /// Re-submitted, not answered: the owner's queue id is not known yet.
    Resubmitting,
    /// Anywhere else (waiting at the owner, or unknown here).
    Other,
}

/// Most queues whose admitted marks a book keeps (past that, a new queue's marks are
/// not kept: its claims are judged on etcd's marks alone).
pub(super) const MARKS_MAX: usize = 4096;

/// What the reader does with a join answer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// A login's answer: relay it.
    Relay,
    /// A re-submission's answer: resync the session's position.
    Resynced(u64),
    /// A re-submission answered admitted at once (the player holds an unused admission
    /// at the owner): relay the admission (the answer carries the token).
    Admitted,
    /// A re-submission the owner could not keep: kick the session.
    Refused,
    /// A re-submission's answer for a session that ended meanwhile: nothing to relay.
    Dropped,
}

impl Book {
    /// A `Join` for `queue` left on `packed` (no allocation once the name is known and
    /// the maps have grown to the link's working size).
    pub fn sent_join(&mut self, packed: SessionId, queue: &str) {
        let name = self.name(queue);
        self.joining.insert(packed, name);
    }

    /// The interned `queue`.
    pub fn name(&mut self, queue: &str) -> Arc<str> {
        if let Some(name) = self.names.get(queue) {
            return name.clone();
        }
        let name: Arc<str> = queue.into();
        if self.names.len() < NAMES_MAX {
            self.names.insert(name.clone());
        }
        name
    }

    /// A rank batch reported `marks` for the queue sessions hold as `edge_queue` (link
    /// bits cleared): kept when higher (per lane). No allocation once the queue is known.
    #[inline]
    pub fn saw_marks(&mut self, edge_queue: QueueId, marks: [PlaceKey; 2]) {
        if marks == [0, 0] {
            return;
        }
        if let Some(m) = self.marks.get_mut(&edge_queue) {
            m[0] = m[0].max(marks[0]);
            m[1] = m[1].max(marks[1]);
        } else if self.marks.len() < MARKS_MAX {
            self.marks.insert(edge_queue, marks);
        }
    }

    /// The admitted marks last seen for the queue sessions hold as `edge_queue` ([0, 0]
    /// when none).
    pub fn marks_of(&self, edge_queue: QueueId) -> [PlaceKey; 2] {
        self.marks.get(&edge_queue).copied().unwrap_or([0, 0])
    }

    /// The session's place ended (leave, disconnect, admitted, kicked); where it was.
    pub fn ended(&mut self, packed: SessionId) -> Was {
        self.live.remove(&packed);
        self.joining.remove(&packed);
        self.retry.remove(&packed);
        // Admitted or kicked by the owner: a leave waiting for its answer is moot.
        self.deferred.remove(&packed);
        if self.held.remove(&packed) {
            return Was::Held;
        }
        if self.resubmitting.remove(&packed).is_some() {
            return Was::Resubmitting;
        }
        Was::Other
    }

    /// `msg` (a `Leave`/`Disconnect` of an ended session whose re-submission is not
    /// answered) waits for the answer to map the owner's queue id.
    pub fn defer(&mut self, packed: SessionId, msg: CoreMsg) {
        self.deferred.insert(packed, msg);
    }

    /// The writer's look at the book each round (one lock): when `connected`, moves
    /// the deferred messages whose queue id is mapped now to the end of `batch` (no
    /// allocation when there are none); returns `orphaned_since`.
    pub fn next_round(&mut self, connected: bool, batch: &mut Vec<CoreMsg>) -> Option<Instant> {
        if connected && !self.late.is_empty() {
            batch.append(&mut self.late);
        }
        self.orphaned_since
    }

    /// The writer made a new connection: its number (for its reader).
    pub fn connect(&mut self) -> u64 {
        self.connection += 1;
        self.connection
    }

    /// True while `connection` is the writer's current one.
    #[inline]
    pub fn is_current(&self, connection: u64) -> bool {
        self.connection == connection
    }

    /// Connection `connection` broke: if it is the current one, its places are held
    /// ([`Book::hold_all`]) and it stops being current (its reader relays no more);
    /// a later call for it (the reader after the writer, or the other way) does nothing.
    pub fn broke(&mut self, connection: u64) {
        if self.connection == connection {
            self.hold_all();
            self.connection += 1;
        }
    }

    /// The owner's id of the queue a session holds as `edge` (link bits cleared).
    pub fn owner_queue(&self, edge: QueueId) -> QueueId {
        self.to_owner.get(&edge).copied().unwrap_or(edge)
    }

    /// The id sessions hold for the owner's queue id `owner` (link bits cleared).
    #[inline]
    pub fn edge_queue_of(&self, owner: QueueId) -> QueueId {
        self.to_edge.get(&owner).copied().unwrap_or(owner)
    }

    /// A join answer for `packed`: `ok` is (the queue id as decoded through the map,
    /// the owner's own id as on the wire, key, position, admitted at once). The wire id
    /// is what a re-submission's mapping needs: once one answer mapped the new owner's
    /// id, later answers decode to the session's id already.
    pub fn answered(
        &mut self,
        packed: SessionId,
        user: UserId,
        ok: Option<(QueueId, QueueId, PlaceKey, u64, bool)>,
    ) -> Answer {
        if let Some(msg) = self.deferred.remove(&packed) {
            // The session ended while its re-submission was in flight: its leave or
            // disconnect goes out now with the owner's id (the place is there).
            let edge = match &msg {
                CoreMsg::Leave { queue, .. } | CoreMsg::Disconnect { queue, .. } => {
                    Some(local_queue(*queue))
                }
                _ => None,
            };
            if let (Some(edge), Some((_, owner, _, _, false))) = (edge, ok) {
                self.to_edge.insert(owner, edge);
                self.to_owner.insert(edge, owner);
                self.late.push(msg);
            }
            return Answer::Dropped;
        }
        if let Some(edge) = self.resubmitting.remove(&packed) {
            let Some((_, owner, _, position, admitted)) = ok else {
                self.live.remove(&packed);
                return Answer::Refused;
            };
            self.to_edge.insert(owner, edge);
            self.to_owner.insert(edge, owner);
            if admitted {
                self.live.remove(&packed);
                return Answer::Admitted;
            }
            return Answer::Resynced(position);
        }
        let name = self.joining.remove(&packed);
        if let (Some(queue), Some((mapped, _, key, _, false))) = (name, ok) {
            let edge_queue = local_queue(mapped);
            self.live.insert(
                packed,
                Live {
                    user,
                    queue,
                    key,
                    edge_queue,
                },
            );
        }
        Answer::Relay
    }

    /// The connection broke: every waiting place is held (not behind any connection)
    /// until it is re-submitted or given up; the re-submissions it never answered are
    /// to be sent again (`retry`); its joins in flight were answered SHUTTING_DOWN, and
    /// the leaves waiting for its answers are dropped (like any leave while the owner
    /// is unreachable).
    fn hold_all(&mut self) {
        self.joining.clear();
        for (s, _) in self.resubmitting.drain() {
            if self.live.contains_key(&s) {
                self.retry.insert(s);
            }
        }
        self.deferred.clear();
        self.late.clear();
        self.held.extend(self.live.keys().copied());
        if !self.held.is_empty() && self.orphaned_since.is_none() {
            self.orphaned_since = Some(Instant::now());
        }
    }

    /// Forgets the id maps and the re-submissions in flight: the connection now goes to
    /// another owner process (whose queue ids are its own).
    pub fn forget_ids(&mut self) {
        self.to_edge.clear();
        self.to_owner.clear();
        self.resubmitting.clear();
        self.retry.clear();
        self.deferred.clear();
        self.late.clear();
    }

    /// The held places whose queue `wanted` names, to re-submit on the connection (to
    /// a new owner), sorted by key, each marked as re-submitted; the others stay held.
    /// `fresh`: a new connection (the old owner's id maps are forgotten);
    /// `unanswered_only`: only the places in `retry`.
    pub fn take_resubmissions(
        &mut self,
        (fresh, unanswered_only): (bool, bool),
        wanted: impl Fn(&str) -> bool,
    ) -> Vec<(SessionId, Live)> {
        if fresh {
            self.forget_ids();
        }
        let mut all: Vec<(SessionId, Live)> = Vec::new();
        for s in &self.held {
            if unanswered_only && !self.retry.contains(s) {
                continue;
            }
            if let Some(l) = self.live.get(s).filter(|l| wanted(&l.queue)) {
                all.push((*s, l.clone()));
            }
        }
        all.sort_by_key(|(_, l)| l.key);
        for (s, l) in &all {
            self.held.remove(s);
            self.retry.remove(s);
            self.resubmitting.insert(*s, l.edge_queue);
        }
        if self.held.is_empty() {
            self.orphaned_since = None;
        }
        all
    }

    /// Moves the held places of `queues` into a new book (for a link to their new
    /// owner: another node than the one this link follows), held there.
    pub fn split_off(&mut self, queues: &HashSet<String>) -> Book {
        let mut out = Book {
            orphaned_since: self.orphaned_since,
            marks: self.marks.clone(),
            ..Book::default()
        };
        let moving: Vec<SessionId> = self
            .held
            .iter()
            .copied()
            .filter(|s| self.live.get(s).is_some_and(|l| queues.contains(&*l.queue)))
            .collect();
        for s in moving {
            self.held.remove(&s);
            self.retry.remove(&s);
            if let Some(l) = self.live.remove(&s) {
                out.held.insert(s);
                out.live.insert(s, l);
            }
        }
        if self.held.is_empty() {
            self.orphaned_since = None;
        }
        out
    }

    /// The queue ids (link bits cleared) sessions hold for the places here.
    pub fn edge_queues(&self) -> HashSet<QueueId> {
        self.live.values().map(|l| l.edge_queue).collect()
    }

    /// How many joins are in flight (tests).
    #[cfg(test)]
    pub fn joins_in_flight(&self) -> usize {
        self.joining.len()
    }

    /// Forgets every place (they are kicked).
    pub fn give_up(&mut self) {
        self.live.clear();
        self.held.clear();
        self.retry.clear();
        self.resubmitting.clear();
        self.orphaned_since = None;
    }

    /// Forgets the held places; returns their sessions (to kick one by one).
    pub fn give_up_held(&mut self) -> Vec<SessionId> {
        let held: Vec<SessionId> = self.held.drain().collect();
        self.retry.clear();
        for s in &held {
            self.live.remove(s);
        }
        self.orphaned_since = None;
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A join names its queue without a new string: every join of a queue shares the
    /// one interned name (the place's too, once answered).
    #[test]
    fn joins_share_one_interned_queue_name() {
        let mut book = Book::default();
        book.sent_join(1, "world-1");
        book.sent_join(2, "world-1");
        book.sent_join(3, "world-2");
        let a = book.joining[&1].clone();
        assert!(Arc::ptr_eq(&a, &book.joining[&2]));
        assert!(!Arc::ptr_eq(&a, &book.joining[&3]));
        book.answered(1, 7, Some((5, 5, 9, 1, false)));
        assert!(Arc::ptr_eq(&a, &book.live[&1].queue));
        assert_eq!(book.names.len(), 2);
    }
}
