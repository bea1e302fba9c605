//! One named queue ([`Queue`]: two lanes, pacing, counters, its tombstone) and what a
//! player holds in it: a [`Place`] while waiting, a [`Grant`] once admitted.
//!
//! Invariants:
//! - a leaf of `state`: imports only the lanes (`rank`) and pacing (`pacing`);
//! - position = 1 + places ahead: the whole priority lane comes before the normal one;
//! - a tombstone (`expired`) has empty lanes whose seqs continue the queue's, so a key
//!   never names two places (see the `state` module invariants).

use crate::msg::{ConnRef, PlaceKey, UserId};
use crate::queue::pacing::{Pacer, RateMeter};
use crate::queue::rank::{place_key, split_key, Lane};

/// A place in a queue.
#[derive(Debug, Clone)]
pub struct Place {
    /// Order key (lane + seq).
    pub key: PlaceKey,
    /// The connection holding it; `None` while in reconnect grace.
    pub conn: Option<ConnRef>,
    /// When grace ends, ms (meaningful while `conn` is `None`).
    pub grace_deadline_ms: u64,
}

/// An admission that has not been used (verified) yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Grant number (rendered into the token's `jti`).
    pub jti: u64,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expires at, unix seconds.
    pub exp: u64,
    /// The connection holding the admission: the one it was pushed to, then the newest
    /// login of the player; `None` when disconnected at admission, or since a restart.
    pub conn: Option<ConnRef>,
    /// The token was returned by an HTTP `admit` answer: no `leave` voids it.
    pub returned: bool,
}

/// One named queue.
#[derive(Debug)]
pub struct Queue {
    /// Name.
    pub name: String,
    /// Most players holding a place.
    pub max_waiting: u64,
    /// Priority lane (ahead of `normal`).
    pub(super) prio: Lane,
    /// Normal lane.
    pub(super) normal: Lane,
    /// Automatic admission pacing.
    pub pacer: Pacer,
    /// Measured admissions per second (for ETA).
    pub meter: RateMeter,
    /// Players admitted since start.
    pub admitted_total: u64,
    /// Players who left or whose grace expired since start.
    pub left_total: u64,
    /// Grants issued and neither used nor expired.
    pub unused_grants: u64,
    /// Named in the configuration: never expires (not durable: set from the config at
    /// every start).
    pub(super) configured: bool,
    /// Expired: a tombstone holding the slot (see the module invariants).
    pub(super) expired: bool,
    /// Last time the queue was seen in use (created, joined, or in use at this tick or
    /// the one before, so the idle period starts no earlier than the queue emptied),
    /// unix ms. Not durable: a restart starts every idle period afresh.
    pub(super) active_ms: u64,
    /// In use at the last tick.
    pub(super) busy: bool,
    /// The highest key admitted per lane [normal, priority], 0 = none (cluster mode
    /// publishes it so the next owner honors no place ticket of an admitted place).
    /// Not durable: after a restart the published value (in etcd) remains.
    pub admitted_max: [PlaceKey; 2],
}

impl Queue {
    pub(super) fn new(name: String, max_waiting: u64) -> Queue {
        Queue {
            name,
            max_waiting,
            prio: Lane::default(),
            normal: Lane::default(),
            pacer: Pacer::default(),
            meter: RateMeter::default(),
            admitted_total: 0,
            left_total: 0,
            unused_grants: 0,
            configured: false,
            expired: false,
            active_ms: 0,
            busy: false,
            admitted_max: [0, 0],
        }
    }

    /// The tombstone this queue leaves when it expires: no lanes, no settings, seqs
    /// continued; the name and counters are kept only when `quarantined`.
    pub(super) fn tombstone(&self, quarantined: bool) -> Queue {
        let mut t = Queue::new(String::new(), 0);
        t.expired = true;
        t.prio = Lane::starting_at(self.prio.next_seq());
        t.normal = Lane::starting_at(self.normal.next_seq());
        if quarantined {
            t.name = self.name.clone();
            t.admitted_total = self.admitted_total;
            t.left_total = self.left_total;
        }
        t
    }

    /// True for the tombstone of an expired queue (not a queue any more).
    pub fn is_expired(&self) -> bool {
        self.expired
    }

    /// The tombstone may be reused only by a queue of the same name: this queue
    /// admitted players, whose connections may still hold its id.
    pub(super) fn quarantined(&self) -> bool {
        self.admitted_total > 0
    }

    /// Nobody waiting or in grace and no unused grant.
    pub(super) fn is_idle(&self) -> bool {
        self.waiting() == 0 && self.unused_grants == 0
    }

    /// Players holding a place.
    pub fn waiting(&self) -> u64 {
        (self.prio.len() + self.normal.len()) as u64
    }

    /// Players in the priority lane.
    pub fn waiting_priority(&self) -> u64 {
        self.prio.len() as u64
    }

    /// 1-based position of the place with `key`.
    pub fn position(&self, key: PlaceKey) -> u64 {
        let (priority, seq) = split_key(key);
        if priority {
            self.prio.rank(seq) + 1
        } else {
            self.prio.len() as u64 + self.normal.rank(seq) + 1
        }
    }

    /// The player at the head: (key, user).
    pub(super) fn head(&self) -> Option<(PlaceKey, UserId)> {
        if let Some((seq, user)) = self.prio.front() {
            return Some((place_key(true, seq), user));
        }
        self.normal
            .front()
            .map(|(seq, user)| (place_key(false, seq), user))
    }

    pub(super) fn remove(&mut self, key: PlaceKey) -> Option<UserId> {
        let (priority, seq) = split_key(key);
        if priority {
            self.prio.remove(seq)
        } else {
            self.normal.remove(seq)
        }
    }

    /// Places in order: (key, user).
    pub fn iter(&self) -> impl Iterator<Item = (PlaceKey, UserId)> + '_ {
        let p = self.prio.iter().map(|(s, u)| (place_key(true, s), u));
        let n = self.normal.iter().map(|(s, u)| (place_key(false, s), u));
        p.chain(n)
    }

    /// Places from key `from` on, in order: (key, the player, or `None` for a slot whose
    /// player left). For a bounded walk resumed at the next key (the core's resync);
    /// O(log n) to start, O(1) a step.
    pub fn walk_from(
        &self,
        from: PlaceKey,
    ) -> impl Iterator<Item = (PlaceKey, Option<UserId>)> + '_ {
        let (priority, seq) = split_key(from);
        let prio = priority
            .then(|| self.prio.walk_from(seq))
            .into_iter()
            .flatten();
        let normal_from = if priority { 0 } else { seq };
        let normal = self.normal.walk_from(normal_from);
        prio.map(|(s, u)| (place_key(true, s), u))
            .chain(normal.map(|(s, u)| (place_key(false, s), u)))
    }

    /// Bytes held by the lanes (memory reports).
    pub fn heap_bytes(&self) -> usize {
        self.prio.heap_bytes() + self.normal.heap_bytes()
    }
}

/// The per-minute history reads a queue through this (see `stats::history`).
impl crate::stats::history::QueueTotals for Queue {
    fn name(&self) -> &str {
        &self.name
    }
    fn admitted_total(&self) -> u64 {
        self.admitted_total
    }
    fn left_total(&self) -> u64 {
        self.left_total
    }
    fn waiting(&self) -> u64 {
        Queue::waiting(self)
    }
    fn is_expired(&self) -> bool {
        Queue::is_expired(self)
    }
}
