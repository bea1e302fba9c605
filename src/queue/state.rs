//! The queue state machine: every queue, the user index, admission pacing and issued
//! admission grants. `apply(op, now) -> events`, nothing else: no sockets, no threads,
//! no clock of its own, no randomness, so it can be tested against a model and replayed
//! from a write-ahead log of [`Op`]s (`queue::durability::wal`); [`codec`] turns ops and
//! the whole state into bytes, canonically, so equal states give equal snapshots.
//!
//! The map (the leaves `op`, `queue`, `dump` import nothing of `state`; the other
//! files add `impl QueueState` blocks and import this file and the leaves, never the
//! other way):
//! - this file: [`QueueState`], [`QueueState::apply`] (the dispatch of every op), join
//!   (with "newest connection wins", the one home of that rule), leave, the pacing
//!   settings (rate, capacity, pause), operator removal, the tick, [`QueueState::dump`];
//! - `op.rs`: [`Op`], [`Event`], [`Applied`], [`Limits`], the refusal texts;
//! - `queue.rs`: one [`Queue`] (two lanes, position, tombstone), [`Place`], [`Grant`];
//! - `table.rs`: the queue table: configured and auto-created queues, expiry of idle
//!   ones, tombstones and slot reuse;
//! - `grants.rs`: admission from the head, grants and their expiry, `leave` of an
//!   admission, token use and used `jti`s;
//! - `grace.rs`: reconnect grace: disconnect, grace expiry, restart;
//! - `resubmit.rs`: failover: places put back at their old keys, the new owner's seq floor;
//! - `dump.rs`: [`Dump`], the comparable picture tests and tools compare;
//! - [`codec`]: ops (log records) and the whole state (snapshots) as bytes.
//!
//! Invariants:
//! - a (queue, user) pair holds at most one place, and a place is in exactly one lane;
//! - position = 1 + places ahead (priority lane first, then arrival), counting players
//!   in reconnect grace; positions only fall, except by a priority insertion;
//! - admission takes the head: priority lane first, FIFO within a lane;
//! - every change that moves positions emits `Departed` or `Inserted` with the place key;
//! - only the connection holding a place or an admission can act on it: a `leave` or a
//!   disconnect from any other (older, kicked) connection changes nothing. The newest
//!   login holds (an older connection still open is kicked `duplicate_login`);
//! - a grant whose token an HTTP `admit` answer returned is never given up by `leave`:
//!   only its use, its expiry or an operator's [`Op::Remove`] ends it (the login server
//!   may already hold it);
//! - [`Op::Remove`] is the one op that takes a place or grant from outside its
//!   connection: the place departs (`Departed`, counted in `left_total`) or the grant is
//!   voided (its `jti` marked used), and the connection holding it is kicked `removed`.
//! - queue ids are slots of the queue table. An auto-created queue that stays empty
//!   (nobody waiting or in grace, no unused grant) expires by [`Op::ExpireQueue`]: its
//!   memory is freed and its slot becomes a tombstone. A tombstone of a queue that never
//!   admitted anyone is reused by the next auto-created queue (no connection can still
//!   hold its id: every session of it ended with its place); one of a queue that
//!   admitted players (whose connections may stay open, holding the id) keeps its name
//!   and is reused only by that name, so a stale id never reaches a different queue;
//! - lane seqs continue across the incarnations of a slot, so a key never names two
//!   places.

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::pacing::{CAPACITY_MAX, RATE_MAX_PER_S};
use super::rank::{place_key, split_key};
use crate::msg::{ConnRef, JoinError, KickReason, PlaceKey, QueueId, UserId};

pub use self::dump::{Dump, GrantDump, QueueDump};
pub use self::op::{Applied, Event, Limits, Op, CAPACITY_INVALID, ONLINE_INVALID, RATE_INVALID};
pub use self::queue::{Grant, Place, Queue};

pub mod codec;
mod dump;
mod grace;
mod grants;
mod op;
mod queue;
mod resubmit;
mod table;

/// Every queue and everything about the players in them.
#[derive(Debug)]
pub struct QueueState {
    /// Limits from config.
    limits: Limits,
    /// Queues by id (ids are indices; expired queues leave tombstones, see the module
    /// invariants).
    queues: Vec<Queue>,
    /// Queue ids by name, of live queues and of quarantined tombstones.
    names: HashMap<String, QueueId>,
    /// Tombstones any new auto-created queue may take, lowest first.
    free: BTreeSet<QueueId>,
    /// Queues that are not tombstones (counted against `max_queues`).
    live: usize,
    /// Places by (queue, user).
    places: HashMap<(QueueId, UserId), Place>,
    /// Unused grants by (queue, user).
    grants: HashMap<(QueueId, UserId), Grant>,
    /// Owner of each unused grant, by grant number.
    issued: HashMap<u64, (QueueId, UserId)>,
    /// Grants in issue order, for expiry: (exp, jti).
    grant_expiry: VecDeque<(u64, u64)>,
    /// Consumed `jti`s with their `exp`, kept until they expire.
    used: HashMap<String, u64>,
    /// Consumed `jti`s in consumption order, for pruning: (exp, jti).
    used_expiry: VecDeque<(u64, String)>,
    /// Places entering grace, in deadline order: (deadline, queue, user, key).
    grace: VecDeque<(u64, QueueId, UserId, PlaceKey)>,
    /// Next grant number.
    next_jti: u64,
    /// Prefix making `jti`s unique across processes (32 hex digits in all).
    jti_prefix: u64,
    /// Last tick time, ms.
    last_tick_ms: u64,
}

/// "Newest connection wins", for a waiting place and an unused admission alike: the
/// login on `conn` now holds it; an older connection still holding it is kicked
/// `duplicate_login`.
fn newest_connection_wins(
    holder: &mut Option<ConnRef>,
    conn: ConnRef,
    queue: QueueId,
    user: UserId,
    out: &mut Vec<Event>,
) {
    if let Some(old) = holder.replace(conn) {
        if old != conn {
            out.push(Event::Kick {
                queue,
                user,
                conn: old,
                reason: KickReason::DuplicateLogin,
            });
        }
    }
}

impl QueueState {
    /// An empty state with the configured queues: (name, max_waiting, admit rate).
    pub fn new(limits: Limits, queues: &[(String, u64, f64)], jti_prefix: u64) -> QueueState {
        let mut state = QueueState {
            limits,
            queues: Vec::new(),
            names: HashMap::new(),
            free: BTreeSet::new(),
            live: 0,
            places: HashMap::new(),
            grants: HashMap::new(),
            issued: HashMap::new(),
            grant_expiry: VecDeque::new(),
            used: HashMap::new(),
            used_expiry: VecDeque::new(),
            grace: VecDeque::new(),
            next_jti: 1,
            jti_prefix,
            last_tick_ms: 0,
        };
        state.configure_queues(queues);
        state
    }

    /// All queue slots, by id; tombstones of expired queues included
    /// ([`Queue::is_expired`]).
    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    /// The id of the live queue named `name`.
    pub fn queue_id(&self, name: &str) -> Option<QueueId> {
        self.names
            .get(name)
            .copied()
            .filter(|&id| !self.queues[id as usize].expired)
    }

    /// The place of `user` in `queue`.
    pub fn place(&self, queue: QueueId, user: UserId) -> Option<&Place> {
        self.places.get(&(queue, user))
    }

    /// The unused grant of `user` in `queue`.
    pub fn grant(&self, queue: QueueId, user: UserId) -> Option<Grant> {
        self.grants.get(&(queue, user)).copied()
    }

    /// The `jti` text of grant number `jti`.
    pub fn jti_text(&self, jti: u64) -> String {
        format!("{:016x}{:016x}", self.jti_prefix, jti)
    }

    /// Applies one op at time `now_ms` (unix ms); side effects go to `out`.
    pub fn apply(&mut self, op: &Op, now_ms: u64, out: &mut Vec<Event>) -> Applied {
        match op {
            Op::Join {
                queue,
                user,
                prio,
                conn,
            } => self.join(queue, *user, *prio, *conn, now_ms, out),
            Op::Disconnect { queue, user, conn } => {
                self.disconnect(*queue, *user, *conn, now_ms);
                Applied::Ok
            }
            Op::Leave { queue, user, conn } => {
                self.leave(*queue, *user, *conn, out);
                Applied::Ok
            }
            Op::Admit { queue, count } => {
                if *queue as usize >= self.queues.len() {
                    return Applied::UnknownQueue;
                }
                self.admit(*queue, *count, now_ms, true, out);
                Applied::Ok
            }
            Op::SetRate { queue, .. } | Op::SetCapacity { queue, .. } | Op::Pause { queue, .. } => {
                self.set_pacing(*queue, op)
            }
            Op::ConsumeJti { jti, exp } => self.consume(jti, *exp),
            Op::Tick => {
                self.tick(now_ms, out);
                Applied::Ok
            }
            Op::ExpireQueue { queue } => self.expire(*queue),
            Op::Restart => {
                self.restart(now_ms);
                Applied::Ok
            }
            Op::Remove { queue, user } => {
                if *queue as usize >= self.queues.len() {
                    return Applied::UnknownQueue;
                }
                Applied::Removed(self.remove(*queue, *user, out))
            }
            Op::Resubmit {
                queue,
                user,
                key,
                conn,
            } => self.resubmit(queue, *user, *key, *conn, now_ms, out),
            Op::SeqFloor { queue, floor } => self.seq_floor(*queue, *floor),
        }
    }

    /// The pacing settings of `queue` ([`Op::SetRate`], [`Op::SetCapacity`],
    /// [`Op::Pause`]): the values are checked first, then the queue.
    fn set_pacing(&mut self, queue: QueueId, op: &Op) -> Applied {
        let invalid = match op {
            Op::SetRate { per_second, .. }
                if !(per_second.is_finite() && (0.0..=RATE_MAX_PER_S).contains(per_second)) =>
            {
                Some(RATE_INVALID)
            }
            Op::SetCapacity { online, .. } if *online > CAPACITY_MAX => Some(ONLINE_INVALID),
            Op::SetCapacity { capacity, .. } if *capacity > CAPACITY_MAX => Some(CAPACITY_INVALID),
            _ => None,
        };
        if let Some(why) = invalid {
            return Applied::Invalid(why);
        }
        let Some(q) = self.queues.get_mut(queue as usize) else {
            return Applied::UnknownQueue;
        };
        match op {
            Op::SetRate { per_second, .. } => q.pacer.rate_per_s = *per_second,
            Op::SetCapacity {
                online, capacity, ..
            } => q.pacer.report_capacity(*online, *capacity),
            Op::Pause { paused, .. } => q.pacer.paused = *paused,
            _ => debug_assert!(false, "not a pacing op: {op:?}"),
        }
        Applied::Ok
    }

    /// [`Op::Leave`]: the place departs when `conn` holds it; a player without a place
    /// may give up its admission (see `leave_grant`).
    fn leave(&mut self, queue: QueueId, user: UserId, conn: ConnRef, out: &mut Vec<Event>) {
        match self.places.get(&(queue, user)) {
            Some(p) if p.conn == Some(conn) => {
                self.depart(queue, user, out);
                self.queues[queue as usize].left_total += 1;
            }
            // A stale connection (kicked by a newer login): not its place.
            Some(_) => {}
            None => self.leave_grant(queue, user, conn),
        }
    }

    /// [`Op::Remove`]: what `user` held, if anything.
    fn remove(
        &mut self,
        queue: QueueId,
        user: UserId,
        out: &mut Vec<Event>,
    ) -> Option<&'static str> {
        let kick = |conn: Option<ConnRef>, out: &mut Vec<Event>| {
            if let Some(conn) = conn {
                out.push(Event::Kick {
                    queue,
                    user,
                    conn,
                    reason: KickReason::Removed,
                });
            }
        };
        if let Some(place) = self.depart(queue, user, out) {
            // Counted with those who left: joined = waiting + admitted + left holds.
            self.queues[queue as usize].left_total += 1;
            kick(place.conn, out);
            return Some(if place.conn.is_some() {
                "waiting"
            } else {
                "grace"
            });
        }
        let conn = self.grants.get(&(queue, user))?.conn;
        self.withdraw_grant(queue, user);
        kick(conn, out);
        Some("admitted")
    }

    /// A comparable picture of everything a player or login server can observe: queues
    /// in order with their users and lanes, settings, counters, unused grants and used
    /// `jti`s. Connections and grace deadlines are left out (a restart resets them).
    pub fn dump(&self) -> Dump {
        let queues = self
            .queues
            .iter()
            .map(|q| QueueDump {
                name: q.name.clone(),
                expired: q.expired,
                max_waiting: q.max_waiting,
                rate_per_s: q.pacer.rate_per_s,
                paused: q.pacer.paused,
                capacity: q
                    .pacer
                    .capacity
                    .map(|c| (c.online, c.capacity, c.used_since)),
                waiting: q
                    .iter()
                    .map(|(key, user)| (user, split_key(key).0))
                    .collect(),
                admitted_total: q.admitted_total,
                left_total: q.left_total,
                unused_grants: q.unused_grants,
            })
            .collect();
        let mut grants: Vec<GrantDump> = self
            .grants
            .iter()
            .map(|(&(queue, user), g)| GrantDump {
                queue: self.queues[queue as usize].name.clone(),
                user,
                jti: self.jti_text(g.jti),
                iat: g.iat,
                exp: g.exp,
                returned: g.returned,
            })
            .collect();
        grants.sort_by(|a, b| (&a.queue, a.user).cmp(&(&b.queue, b.user)));
        let mut used: Vec<(String, u64)> =
            self.used.iter().map(|(j, &exp)| (j.clone(), exp)).collect();
        used.sort();
        Dump {
            jti_prefix: self.jti_prefix,
            next_jti: self.next_jti,
            queues,
            grants,
            used,
        }
    }

    /// The first steps of a join and of a re-submitted place: the queue by name
    /// (auto-created when allowed), marked active; `Err` with the answer when the queue
    /// is unknown or the player already holds a place or an admission there (newest
    /// connection wins, answered `resumed`).
    pub(super) fn queue_for_join(
        &mut self,
        name: &str,
        user: UserId,
        conn: ConnRef,
        now_ms: u64,
        out: &mut Vec<Event>,
    ) -> Result<QueueId, Applied> {
        let created = match self.queue_id(name) {
            Some(id) => Some(id),
            None if self.limits.auto_create && crate::config::valid_queue_name(name) => {
                self.auto_create(name, now_ms)
            }
            None => None,
        };
        let Some(queue) = created else {
            return Err(Applied::JoinFailed(JoinError::UnknownQueue));
        };
        self.queues[queue as usize].active_ms = now_ms;
        let held = match self.grants.get_mut(&(queue, user)) {
            Some(grant) => Some(&mut grant.conn),
            None => self.places.get_mut(&(queue, user)).map(|p| &mut p.conn),
        };
        if let Some(held) = held {
            newest_connection_wins(held, conn, queue, user, out);
            return Err(Applied::Joined {
                queue,
                resumed: true,
            });
        }
        Ok(queue)
    }

    fn join(
        &mut self,
        name: &str,
        user: UserId,
        prio: bool,
        conn: ConnRef,
        now_ms: u64,
        out: &mut Vec<Event>,
    ) -> Applied {
        let queue = match self.queue_for_join(name, user, conn, now_ms, out) {
            Ok(queue) => queue,
            Err(answered) => return answered,
        };
        let q = &mut self.queues[queue as usize];
        if q.waiting() >= q.max_waiting {
            return Applied::JoinFailed(JoinError::QueueFull);
        }
        let key = if prio {
            let key = place_key(true, q.prio.push(user));
            out.push(Event::Inserted { queue, key });
            key
        } else {
            place_key(false, q.normal.push(user))
        };
        self.seat(queue, user, key, conn, false)
    }

    /// Records `user`'s new place at `key` in `queue` (already in its lane), held by
    /// `conn`: the end of a join and of a re-submission.
    fn seat(
        &mut self,
        queue: QueueId,
        user: UserId,
        key: PlaceKey,
        conn: ConnRef,
        resumed: bool,
    ) -> Applied {
        let place = Place {
            key,
            conn: Some(conn),
            grace_deadline_ms: 0,
        };
        self.places.insert((queue, user), place);
        Applied::Joined { queue, resumed }
    }

    /// Removes the place of `user` (which must exist) and reports the departure.
    pub(super) fn depart(
        &mut self,
        queue: QueueId,
        user: UserId,
        out: &mut Vec<Event>,
    ) -> Option<Place> {
        let place = self.places.remove(&(queue, user))?;
        let removed = self.queues[queue as usize].remove(place.key);
        debug_assert_eq!(removed, Some(user));
        out.push(Event::Departed {
            queue,
            key: place.key,
        });
        Some(place)
    }

    /// [`Op::Tick`]: grace expiry, grant expiry, then automatic admission.
    fn tick(&mut self, now_ms: u64, out: &mut Vec<Event>) {
        let dt_ms = now_ms.saturating_sub(self.last_tick_ms);
        self.last_tick_ms = now_ms;
        self.expire_grace(now_ms, out);
        self.expire_grants(now_ms / 1000);
        // Automatic admission; queues in use are not idle.
        for id in 0..self.queues.len() {
            let q = &mut self.queues[id];
            let busy = !q.is_idle();
            if busy || q.busy {
                q.active_ms = now_ms;
            }
            q.busy = busy;
            let n = q.pacer.allowance(dt_ms, q.waiting(), q.unused_grants);
            if n > 0 {
                self.admit(id as QueueId, n, now_ms, false, out);
            }
        }
    }
}

#[cfg(test)]
mod tests;
