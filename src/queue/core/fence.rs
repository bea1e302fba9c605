//! Fencing in cluster mode: the core admits for a queue only while this node may
//! (`ClusterHandle::may_admit`: it owns the queue and its lease deadline is ahead).
//!
//! - `POST /v1/queues/{q}/admit` on a node that may not admit for `q` makes no
//!   admission and answers `Unavailable` (503) naming the owner;
//! - automatic admission (rate and capacity, both in the tick): before each tick, a
//!   queue with players this node may not admit for is paused with a logged
//!   `Op::Pause` (so a replay of the log repeats exactly what happened), and resumed the
//!   first tick it may again, unless the operator paused it meanwhile (an operator's
//!   pause or resume while the fence holds the queue is remembered and applied then).
//!
//! Invariants: without a fence (single node) nothing here runs (one branch per tick
//! and per `admit`); the check is per admission op (each `admit` call, each tick), by
//! name: a scan of the cluster's queue table (at most 1024 names), only for queues
//! with players or held by the fence.

use std::sync::Arc;

use super::Core;
use crate::cluster::ClusterHandle;
use crate::msg::{ControlReply, PlaceKey, QueueId};
use crate::queue::state::Op;

/// Who may admit for a queue (the cluster layer; tests fake it).
pub trait AdmitFence: Send {
    /// True when this node may admit players of `queue` now.
    fn may_admit(&self, queue: &str) -> bool;
    /// The node that owns `queue`, as last listed (for the refusal's text).
    fn owner(&self, queue: &str) -> Option<String>;
    /// This node's ownership epoch of `queue`, when it owns it (the seq floor of a new
    /// owner, see `core::failover`).
    fn epoch(&self, _queue: &str) -> Option<u64> {
        None
    }
    /// While this node owns `queue` but holds its admission after a takeover (the
    /// recovery window): the ms left, for the refusal's text.
    fn recovery_left_ms(&self, _queue: &str) -> Option<u64> {
        None
    }
    /// What earlier owners of `queue` admitted, per lane [normal, priority] (the
    /// highest keys), once known for this node's current epoch (`core::claim`).
    fn admitted_before(&self, _queue: &str) -> Option<[PlaceKey; 2]> {
        None
    }
    /// This node admitted up to `marks` [normal, priority] in `queue` (published to
    /// the next owners, `cluster::watermark`).
    fn publish_admitted(&self, _queue: &str, _marks: [PlaceKey; 2]) {}
    /// A surviving edge reported that earlier owners admitted up to `marks` in `queue`
    /// (seen in their rank batches; raises [`AdmitFence::admitted_before`]).
    fn report_admitted(&self, _queue: &str, _marks: [PlaceKey; 2]) {}
    /// True when the cluster decides who owns `queue` (a configured queue); false for
    /// one it never owns anywhere (an auto-created queue: each node keeps its own).
    fn tracks(&self, _queue: &str) -> bool {
        true
    }
}

/// The cluster's fence with the failover hold: after a takeover, admission waits
/// `recovery_window_ms` from the winning campaign, so places re-submitted late, and
/// players coming back with place tickets, are in before anyone is admitted. A takeover
/// is decided from etcd when the campaign is won (`Ownership::takeover`): the queue's
/// last owner record named another process (another node, or this node before a
/// restart). A cold start (no last owner) or this process taking its queue back after
/// an etcd outage is not held.
pub struct ClusterFence {
    /// The cluster layer.
    pub cluster: Arc<ClusterHandle>,
    /// `cluster.recovery_window_secs` in ms.
    pub recovery_window_ms: u64,
}

impl ClusterFence {
    /// The fence of a node's cluster pieces, for `Core::with_fence`.
    pub fn boxed(link: &crate::cluster::link::start::NodeLink) -> Box<dyn AdmitFence> {
        Box::new(ClusterFence {
            cluster: link.cluster.clone(),
            recovery_window_ms: link.recovery_window_ms(),
        })
    }
}

impl AdmitFence for ClusterFence {
    fn may_admit(&self, queue: &str) -> bool {
        if !self.cluster.may_admit(queue) {
            return false;
        }
        if self.recovery_window_ms == 0 {
            return true;
        }
        self.cluster.ownership(queue).is_some_and(|o| {
            !o.takeover
                || crate::cluster::fence::now_ms()
                    >= o.campaign_sent_ms.saturating_add(self.recovery_window_ms)
        })
    }

    fn owner(&self, queue: &str) -> Option<String> {
        self.cluster.owner_of(queue).map(|o| o.node_id)
    }

    fn epoch(&self, queue: &str) -> Option<u64> {
        self.cluster.ownership(queue).map(|o| o.epoch)
    }

    fn recovery_left_ms(&self, queue: &str) -> Option<u64> {
        if !self.cluster.may_admit(queue) {
            return None;
        }
        let o = self.cluster.ownership(queue).filter(|o| o.takeover)?;
        let end = o.campaign_sent_ms.saturating_add(self.recovery_window_ms);
        end.checked_sub(crate::cluster::fence::now_ms())
            .filter(|left| *left > 0)
    }

    // Named in full: `self.cluster.x()` would pick the trait's no-op default through
    // the `AdmitFence for Arc<ClusterHandle>` impl below.
    fn admitted_before(&self, queue: &str) -> Option<[PlaceKey; 2]> {
        ClusterHandle::admitted_before(&self.cluster, queue)
    }

    fn publish_admitted(&self, queue: &str, marks: [PlaceKey; 2]) {
        ClusterHandle::publish_admitted(&self.cluster, queue, marks);
    }

    fn report_admitted(&self, queue: &str, marks: [PlaceKey; 2]) {
        ClusterHandle::report_admitted(&self.cluster, queue, marks);
    }

    fn tracks(&self, queue: &str) -> bool {
        self.cluster.queue_index(queue).is_some()
    }
}

impl AdmitFence for Arc<ClusterHandle> {
    fn may_admit(&self, queue: &str) -> bool {
        ClusterHandle::may_admit(self, queue)
    }

    fn owner(&self, queue: &str) -> Option<String> {
        self.owner_of(queue).map(|o| o.node_id)
    }
}

/// The fence and the queues it holds paused.
pub(super) struct FenceState {
    /// Who may admit.
    pub(super) fence: Box<dyn AdmitFence>,
    /// Per queue id: `Some(operator's pause wish)` while the fence holds it paused.
    held: Vec<Option<bool>>,
    /// Per queue id: the admission marks last published (`core::claim`).
    pub(super) published: Vec<[PlaceKey; 2]>,
}

impl Core {
    /// Admits only while `fence` allows (cluster mode); `None`: always (one node).
    pub fn with_fence(mut self, fence: Option<Box<dyn AdmitFence>>) -> Core {
        self.fence = fence.map(|fence| FenceState {
            fence,
            held: Vec::new(),
            published: Vec::new(),
        });
        self
    }

    /// The refusal of a manual admission for `name` when this node may not admit.
    pub(super) fn fenced_admit(&self, name: &str) -> Option<ControlReply> {
        let f = self.fence.as_ref()?;
        if f.fence.may_admit(name) {
            return None;
        }
        if let Some(left_ms) = f.fence.recovery_left_ms(name) {
            return Some(ControlReply::Unavailable(format!(
                "queue {name} was just taken over from a failed node: admission waits out \
                 the recovery window ({:.1} s left) so that players whose places are being \
                 restored are not overtaken",
                left_ms as f64 / 1000.0
            )));
        }
        let owner = f.fence.owner(name).unwrap_or_else(|| "none yet".into());
        Some(ControlReply::Unavailable(format!(
            "not the owner of queue {name}: this node may not admit for it (owner: {owner})"
        )))
    }

    /// An operator's pause or resume of a queue the fence holds: remembered, applied
    /// when the fence lets go. True when it was absorbed that way.
    pub(super) fn fence_absorbs_pause(&mut self, queue: QueueId, paused: bool) -> bool {
        let Some(f) = self.fence.as_mut() else {
            return false;
        };
        match f.held.get_mut(queue as usize) {
            Some(Some(wish)) => {
                *wish = paused;
                true
            }
            _ => false,
        }
    }

    /// Before a tick: holds (pauses) queues with players this node may not admit for,
    /// lets go of those it may again.
    pub(super) fn fence_tick(&mut self, now_ms: u64) {
        let Some(mut f) = self.fence.take() else {
            return;
        };
        let n = self.state.queues().len();
        if f.held.len() < n {
            f.held.resize(n, None);
        }
        for id in 0..n {
            let q = &self.state.queues()[id];
            if q.name.is_empty() {
                // A freed slot: whatever it held is not the next name's.
                f.held[id] = None;
                continue;
            }
            let held = f.held[id];
            if held.is_none() && q.waiting() == 0 {
                continue;
            }
            let queue = id as QueueId;
            match (f.fence.may_admit(&q.name), held) {
                (false, None) => {
                    let wish = q.pacer.paused;
                    if !wish {
                        self.apply(
                            &Op::Pause {
                                queue,
                                paused: true,
                            },
                            now_ms,
                        );
                    }
                    f.held[id] = Some(wish);
                }
                (true, Some(wish)) => {
                    if !wish {
                        self.apply(
                            &Op::Pause {
                                queue,
                                paused: false,
                            },
                            now_ms,
                        );
                    }
                    f.held[id] = None;
                }
                _ => {}
            }
        }
        self.fence = Some(f);
    }
}
