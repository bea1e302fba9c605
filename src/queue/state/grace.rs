//! Reconnect grace of [`QueueState`]: a disconnect puts the place in grace, the tick
//! expires grace that ran out, and a restart from the log puts every place in grace.
//!
//! Invariants (see the `state` module for the whole list):
//! - a place in grace keeps its position (positions count players in grace);
//! - `grace` is in deadline order; an entry whose place was resumed, left or entered
//!   grace again since is stale and skipped (its key or deadline no longer match);
//! - a restart gives every place a fresh grace period from its time: the downtime
//!   earns no admission credit and is not idle time.

use super::op::Event;
use super::QueueState;
use crate::msg::{ConnRef, QueueId, UserId};

impl QueueState {
    /// [`Op::Disconnect`](super::Op::Disconnect): the place `conn` holds enters reconnect
    /// grace; an admission it holds is held by nobody. From any other connection: nothing.
    pub(super) fn disconnect(&mut self, queue: QueueId, user: UserId, conn: ConnRef, now_ms: u64) {
        let deadline = now_ms.saturating_add(self.limits.reconnect_grace_ms);
        if let Some(place) = self.places.get_mut(&(queue, user)) {
            if place.conn == Some(conn) {
                place.conn = None;
                place.grace_deadline_ms = deadline;
                self.grace.push_back((deadline, queue, user, place.key));
            }
        } else if let Some(grant) = self.grants.get_mut(&(queue, user)) {
            // The holder of an admission went away: nobody holds it until the
            // player logs in again.
            if grant.conn == Some(conn) {
                grant.conn = None;
            }
        }
    }

    /// Reconnect grace expiry at `now_ms`: a place whose grace ran out (and that was not
    /// resumed since it entered it) departs, counted with those who left.
    pub(super) fn expire_grace(&mut self, now_ms: u64, out: &mut Vec<Event>) {
        while let Some(&(deadline, queue, user, key)) = self.grace.front() {
            if deadline > now_ms {
                break;
            }
            self.grace.pop_front();
            let expired = matches!(self.places.get(&(queue, user)),
                Some(p) if p.key == key && p.conn.is_none() && p.grace_deadline_ms == deadline);
            if expired {
                self.depart(queue, user, out);
                self.queues[queue as usize].left_total += 1;
                out.push(Event::GraceExpired { queue, user });
            }
        }
    }

    /// Every place enters reconnect grace until `now_ms` + grace, in queue order; the
    /// downtime earns no admission credit.
    pub(super) fn restart(&mut self, now_ms: u64) {
        let deadline = now_ms.saturating_add(self.limits.reconnect_grace_ms);
        self.grace.clear();
        // Connection ids of the last process mean nothing (and may be reused).
        for grant in self.grants.values_mut() {
            grant.conn = None;
        }
        for (id, q) in self.queues.iter_mut().enumerate() {
            let id = id as QueueId;
            // Downtime is not idle time.
            q.active_ms = now_ms;
            for (key, user) in q.iter() {
                let place = self.places.get_mut(&(id, user)).expect("indexed place");
                place.conn = None;
                place.grace_deadline_ms = deadline;
                self.grace.push_back((deadline, id, user, key));
            }
        }
        self.last_tick_ms = now_ms;
    }
}
