//! Place tickets in the core (cluster mode): a `login` that presented a verified place
//! ticket ([`CoreMsg::Join`](crate::msg::CoreMsg::Join)'s `claim`) gets its old place
//! back, and the owner publishes what it admitted so the next owner can tell.
//!
//! A claim is honored (the place put back at its key, logged as [`Op::Resubmit`], the
//! answer `resumed: true`) only when all hold:
//! - this node owns the queue and holds its admission in the recovery window after a
//!   takeover (so nobody was admitted here since, and places come back before anyone
//!   is admitted);
//! - the key was handed out under an earlier epoch (`seq >> 32` below this node's
//!   epoch): a place of this owner is resumed from grace as usual, never claimed; and
//!   not under epoch 0, which no owner uses (every owner's keys are floored at its
//!   epoch, at least 1): a place a node that never owned the queue gave during an
//!   ownerless gap is not a place in the queue;
//! - the user holds no place and no admission here (else it is a normal resume), and
//!   no one holds the key;
//! - the key is above the lane's admission watermark (what earlier owners admitted: the
//!   max of etcd's value, read for this epoch, and the marks surviving edges reported
//!   with their re-submitted places, `core::failover`): every key an owner admitted and
//!   either wrote to etcd or sent in a rank batch a surviving edge re-submits with is at
//!   most it, so such a place is never given back.
//!
//! Reports arrive whenever each edge's re-submission does, possibly after some claims
//! were judged: a report only raises the mark, so it can only refuse more claims (the
//! marks are true facts, "some owner admitted up to here", never stale in the unsafe
//! direction). A claim honored before a higher report arrived was above every mark
//! known then; if the report shows its key was admitted, that is the residual window
//! (`cluster::watermark`), not a wrong judgment of what was known.
//!
//! Otherwise the login is a normal join (a place at the end, `resumed: false`), never an
//! error, except when it cannot be told yet: on a node that does not own the queue (a
//! login routed here while the queue has no owner, or by a stale route; a queue the
//! cluster does not track is a normal join), or in the hold
//! before the watermark was read (at most `cluster::watermark::SYNC_MS` after the
//! takeover while etcd answers): SHUTTING_DOWN with `retry_after_secs`, so the player
//! comes back, ticket in hand.
//!
//! Invariants: one node (no fence): claims are never made (the loop ignores the field)
//! and nothing here runs; the marks are published once per core tick, only for queues
//! whose marks moved (one name scan each).

use super::failover::EPOCH_SEQ_SHIFT;
use super::{Core, JoinOutcome};
use crate::msg::{ConnRef, JoinError, PlaceKey, UserId};
use crate::queue::rank::split_key;

impl Core {
    /// A join that claims the place at `key`: `Some(outcome)` when it was taken back
    /// (or refused on a non-owner), `None` for a normal join.
    pub(super) fn claim(
        &mut self,
        name: &str,
        user: UserId,
        key: PlaceKey,
        conn: ConnRef,
        now_ms: u64,
    ) -> Option<JoinOutcome> {
        let f = self.fence.as_ref()?;
        let Some(epoch) = f.fence.epoch(name) else {
            // Owned by nobody yet: come back. A queue the cluster does not track: no
            // claim to judge, a normal join.
            return f.fence.tracks(name).then_some(Err(JoinError::ShuttingDown));
        };
        match self.honors(name, user, key, epoch) {
            Some(true) => {}
            Some(false) => return None,
            None => return Some(Err(JoinError::ShuttingDown)),
        }
        // Taken back exactly as a failover re-submission (logged as `Op::Resubmit`).
        Some(self.resubmit(name, user, key, conn, now_ms))
    }

    /// Whether a claim of `key` by `user` in `name`, owned here at `epoch`, is honored
    /// (the module's list); `None` while that cannot be told yet (in the hold, the
    /// earlier owners' marks not read from etcd yet).
    fn honors(&self, name: &str, user: UserId, key: PlaceKey, epoch: u64) -> Option<bool> {
        let f = self.fence.as_ref()?;
        let (prio, seq) = split_key(key);
        let key_epoch = seq >> EPOCH_SEQ_SHIFT;
        if f.fence.recovery_left_ms(name).is_none() || key_epoch == 0 || key_epoch >= epoch {
            return Some(false);
        }
        let before = f.fence.admitted_before(name)?;
        Some(key > before[usize::from(prio)] && self.state.can_take_back(name, user, key))
    }

    /// Publishes each queue's highest admitted keys where they moved since the last
    /// time (cluster mode; once per tick).
    pub(super) fn publish_admitted(&mut self) {
        let Some(f) = self.fence.as_mut() else {
            return;
        };
        let queues = self.state.queues();
        if f.published.len() < queues.len() {
            f.published.resize(queues.len(), [0, 0]);
        }
        for (q, published) in queues.iter().zip(f.published.iter_mut()) {
            if q.admitted_max != *published && !q.name.is_empty() {
                f.fence.publish_admitted(&q.name, q.admitted_max);
                *published = q.admitted_max;
            }
        }
    }
}
