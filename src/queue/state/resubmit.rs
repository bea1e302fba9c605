//! Failover in the state machine: [`Op::Resubmit`] (a surviving edge puts a place back
//! at its old key at the new owner) and [`Op::SeqFloor`] (a new owner's arrivals sort
//! after every place of earlier owners).
//!
//! Invariants (with those of `state`):
//! - a re-submitted place keeps its key, so relative order across every surviving node
//!   is the previous owner's; it is inserted whatever `max_waiting` (it held a place);
//! - the same user re-submitted twice, or re-submitted while it holds a place here:
//!   newest connection wins (the older connection is kicked `duplicate_login`), and the
//!   place keeps the lower of the two keys only by staying where it is (no move);
//! - an insertion reports `Inserted` (it moves the places behind it), like a priority
//!   join.

use super::QueueState;
use crate::msg::{ConnRef, JoinError, PlaceKey, QueueId, UserId};
use crate::queue::rank::split_key;
use crate::queue::state::{Applied, Event};

impl QueueState {
    /// [`Op::Resubmit`].
    pub(super) fn resubmit(
        &mut self,
        name: &str,
        user: UserId,
        key: PlaceKey,
        conn: ConnRef,
        now_ms: u64,
        out: &mut Vec<Event>,
    ) -> Applied {
        let queue = match self.queue_for_join(name, user, conn, now_ms, out) {
            Ok(queue) => queue,
            Err(answered) => return answered,
        };
        let (prio, seq) = split_key(key);
        let q = &mut self.queues[queue as usize];
        let lane = if prio { &mut q.prio } else { &mut q.normal };
        if !lane.insert_at(seq, user) {
            // The key is another player's here: cannot be kept; the player logs in again.
            return Applied::JoinFailed(JoinError::Gone);
        }
        out.push(Event::Inserted { queue, key });
        self.seat(queue, user, key, conn, true)
    }

    /// [`Op::SeqFloor`].
    pub(super) fn seq_floor(&mut self, queue: QueueId, floor: u64) -> Applied {
        let Some(q) = self.queues.get_mut(queue as usize) else {
            return Applied::UnknownQueue;
        };
        q.prio.raise_floor(floor);
        q.normal.raise_floor(floor);
        Applied::Ok
    }

    /// True when `user`'s place at `key` in `name` can be put back as it was: the queue
    /// exists, the user holds neither a place nor an admission there, and no one holds
    /// `key` (a place ticket's claim, `core::claim`).
    pub fn can_take_back(&self, name: &str, user: UserId, key: PlaceKey) -> bool {
        let Some(queue) = self.queue_id(name) else {
            return false;
        };
        if self.places.contains_key(&(queue, user)) || self.grants.contains_key(&(queue, user)) {
            return false;
        }
        let (prio, seq) = split_key(key);
        let q = &self.queues[queue as usize];
        let lane = if prio { &q.prio } else { &q.normal };
        lane.get(seq).is_none()
    }

    /// The least next seq of `queue`'s two lanes (0 for an unknown queue).
    pub fn seq_floor_of(&self, queue: QueueId) -> u64 {
        self.queues
            .get(queue as usize)
            .map_or(0, |q| q.prio.next_seq().min(q.normal.next_seq()))
    }
}
