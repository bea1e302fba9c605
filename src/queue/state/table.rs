//! The queue table of [`QueueState`]: slots by id, names, tombstones. Creation (from the
//! config, or on a join when `queues.auto_create`), expiry of idle auto-created queues
//! ([`Op::ExpireQueue`](super::Op::ExpireQueue)) and reuse of their slots.
//!
//! Invariants (see the `state` module for the whole list):
//! - `live` counts the queues that are not tombstones; auto-creation stops at
//!   `max_queues` of them;
//! - a free tombstone (empty name) is in `free`; a quarantined one (it admitted
//!   players) keeps its name in `names` and is revived only by that name;
//! - configured queues never expire.

use super::op::Applied;
use super::queue::Queue;
use super::QueueState;
use crate::msg::QueueId;

impl QueueState {
    /// Appends a queue in a new slot.
    pub(super) fn create_queue(&mut self, name: String, max_waiting: u64) -> QueueId {
        let id = self.queues.len() as QueueId;
        self.names.insert(name.clone(), id);
        self.queues.push(Queue::new(name, max_waiting));
        self.live += 1;
        id
    }

    /// Appends a tombstone (snapshot decoding): quarantined when it has a name.
    pub(super) fn push_tombstone(&mut self, tombstone: Queue) -> QueueId {
        let id = self.queues.len() as QueueId;
        if tombstone.name.is_empty() {
            self.free.insert(id);
        } else {
            self.names.insert(tombstone.name.clone(), id);
        }
        self.queues.push(tombstone);
        id
    }

    /// Makes a live queue named `name` in tombstone slot `id` (quarantined tombstones
    /// only for their own name): seqs continue, a quarantined slot keeps its counters.
    pub(super) fn revive(&mut self, id: QueueId, name: &str, max_waiting: u64) {
        let q = &mut self.queues[id as usize];
        debug_assert!(q.expired && (q.name.is_empty() || q.name == name));
        if q.name.is_empty() {
            self.free.remove(&id);
            q.name = name.to_string();
            self.names.insert(name.to_string(), id);
        }
        q.expired = false;
        q.max_waiting = max_waiting;
        self.live += 1;
    }

    /// Creates the auto-created queue `name` (which has no live queue) at `now_ms`, or
    /// `None` at `max_queues`. Takes the name's own quarantined tombstone, else the
    /// lowest free tombstone, else a new slot, so ids stay below `max_queues` plus the
    /// quarantined tombstones.
    pub(super) fn auto_create(&mut self, name: &str, now_ms: u64) -> Option<QueueId> {
        if self.live >= self.limits.max_queues {
            return None;
        }
        let max_waiting = self.limits.auto_max_waiting;
        let id = match self.names.get(name) {
            Some(&id) => {
                self.revive(id, name, max_waiting);
                id
            }
            None => match self.free.first() {
                Some(&id) => {
                    self.revive(id, name, max_waiting);
                    id
                }
                None => self.create_queue(name.to_string(), max_waiting),
            },
        };
        self.queues[id as usize].active_ms = now_ms;
        Some(id)
    }

    /// The first queue at or after `from` that is due to expire at `now_ms`: auto-created,
    /// idle, and unused for `auto_expire_ms`. The core applies
    /// [`Op::ExpireQueue`](super::Op::ExpireQueue) to it.
    pub fn next_expiry(&self, now_ms: u64, from: usize) -> Option<QueueId> {
        let expire_ms = self.limits.auto_expire_ms;
        if expire_ms == 0 {
            return None;
        }
        let due = |q: &Queue| {
            !q.expired
                && !q.configured
                && q.is_idle()
                && now_ms.saturating_sub(q.active_ms) >= expire_ms
        };
        (from..self.queues.len())
            .find(|&id| due(&self.queues[id]))
            .map(|id| id as QueueId)
    }

    /// Expires queue `id` (see [`Op::ExpireQueue`]).
    pub(super) fn expire(&mut self, id: QueueId) -> Applied {
        let Some(q) = self.queues.get(id as usize) else {
            return Applied::UnknownQueue;
        };
        if q.expired || q.configured || !q.is_idle() {
            return Applied::Invalid("only an idle auto-created queue expires");
        }
        let quarantined = q.quarantined();
        let tombstone = q.tombstone(quarantined);
        let old = std::mem::replace(&mut self.queues[id as usize], tombstone);
        if !quarantined {
            self.names.remove(&old.name);
            self.free.insert(id);
        }
        self.live -= 1;
        Applied::Ok
    }

    /// Lays the configured queues over a restored state: queues the config names and
    /// the state lacks are added (with the configured rate; a quarantined tombstone of
    /// the name is revived); configured queues take the configured `max_waiting` and
    /// never expire. Rates, pauses and capacity reports set at run time are kept.
    /// Returns how many queues were added.
    pub fn configure_queues(&mut self, queues: &[(String, u64, f64)]) -> usize {
        let mut added = 0;
        for (name, max_waiting, rate) in queues {
            let id = match self.names.get(name) {
                Some(&id) if !self.queues[id as usize].expired => {
                    self.queues[id as usize].max_waiting = *max_waiting;
                    id
                }
                found => {
                    let id = match found {
                        Some(&id) => {
                            self.revive(id, name, *max_waiting);
                            id
                        }
                        None => self.create_queue(name.clone(), *max_waiting),
                    };
                    self.queues[id as usize].pacer.rate_per_s = *rate;
                    added += 1;
                    id
                }
            };
            self.queues[id as usize].configured = true;
        }
        added
    }
}
