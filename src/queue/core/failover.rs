//! Failover in the core (cluster mode): places re-submitted by surviving edges
//! ([`CoreMsg::Resubmit`](crate::msg::CoreMsg::Resubmit) -> [`Op::Resubmit`]) and the
//! seq floor of a newly owned queue ([`Op::SeqFloor`]).
//!
//! Invariants:
//! - before any join or re-submission to a queue this node owns at epoch `e`, both of
//!   its lanes hand out seqs from at least `e << 32` (one logged `Op::SeqFloor`, only
//!   when a lane is below it), so a new arrival sorts after every place an earlier
//!   owner handed out: epochs are etcd revisions (below 2^31 for years) and one owner
//!   hands out fewer than 2^32 seqs per lane;
//! - a re-submission is answered like a join (at flush, with the position), to the
//!   link session that sent it;
//! - a re-submission is taken only by a node that owns the queue now (an epoch from
//!   the fence); any other node (and one node without a fence) refuses it;
//! - the admitted marks a re-submission carries (what the edge last saw in the old
//!   owner's rank batches) reach the fence before the place is applied, whatever the
//!   place's fate: they are true of the queue (keys some owner admitted) and only ever
//!   raise the mark claims are judged against (`core::claim`).

use std::sync::atomic::Ordering;

use super::{Core, JoinOutcome, PendingJoin};
use crate::msg::{ConnRef, JoinError, PlaceKey, UserId};
use crate::queue::state::Op;

/// Bits a seq floor is shifted by from the ownership epoch.
pub const EPOCH_SEQ_SHIFT: u32 = 32;

impl Core {
    /// [`CoreMsg::Resubmit`](crate::msg::CoreMsg::Resubmit): the edge's admitted
    /// marks are reported first (they only raise what claims are judged against), then
    /// the place is applied now and answered at flush like a join (`seq` 0).
    pub(super) fn resubmit_msg(
        &mut self,
        conn: ConnRef,
        (user, name, key): (UserId, &str, PlaceKey),
        admitted: [PlaceKey; 2],
        now_ms: u64,
    ) {
        if let Some(f) = &self.fence {
            if admitted != [0, 0] {
                f.fence.report_admitted(name, admitted);
            }
        }
        let outcome = self.resubmit(name, user, key, conn, now_ms);
        self.joins.push(PendingJoin {
            conn,
            seq: 0,
            user,
            outcome,
            peer: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            prio: crate::queue::rank::split_key(key).0,
            refused_in: None,
        });
    }

    /// A place re-submitted after a failover: [`Op::Resubmit`] after the queue's seq
    /// floor. Answered at flush like a join.
    pub(super) fn resubmit(
        &mut self,
        name: &str,
        user: UserId,
        key: PlaceKey,
        conn: ConnRef,
        now_ms: u64,
    ) -> JoinOutcome {
        if self.degraded || self.draining.load(Ordering::Relaxed) {
            return Err(JoinError::ShuttingDown);
        }
        // Only the owner takes places back: a link that followed the wrong node (the
        // dead node's queues went to several) gets a refusal, and its player a kick
        // with a retry hint, never a place stranded on a node that does not own it.
        let Some(epoch) = self.fence.as_ref().and_then(|f| f.fence.epoch(name)) else {
            return Err(JoinError::ShuttingDown);
        };
        self.epoch_floor(name, epoch, now_ms);
        let op = Op::Resubmit {
            queue: name.to_string(),
            user,
            key,
            conn,
        };
        self.apply_join(&op, user, now_ms)
    }

    /// Raises the seq floor of `name` to this node's ownership epoch of it, if it owns
    /// it (at `epoch`, which the caller read from the fence once) and a lane is below (see
    /// the module invariants).
    pub(super) fn epoch_floor(&mut self, name: &str, epoch: u64, now_ms: u64) {
        let Some(queue) = self.state.queue_id(name) else {
            return;
        };
        let floor = epoch << EPOCH_SEQ_SHIFT;
        if self.state.seq_floor_of(queue) < floor {
            self.apply(&Op::SeqFloor { queue, floor }, now_ms);
        }
    }
}
