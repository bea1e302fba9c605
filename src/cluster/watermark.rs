//! Admission watermarks (cluster mode): per queue and lane, the highest place key its
//! owners have admitted, kept in etcd at `{prefix}/admitted/{queue}` (value
//! `"<normal>,<priority>"`, decimal keys, 0 = none), so that a new owner never honors
//! a place ticket for a place an earlier owner may have admitted (`queue::core::claim`).
//!
//! Admission takes each lane in key order, so every key an owner admitted is at most
//! that lane's watermark; a ticket whose key is at most it may have been admitted and
//! is not honored.
//!
//! - the owner's core raises this node's marks as it admits ([`ClusterHandle::publish_admitted`],
//!   every core tick, lock-free);
//! - one task on the cluster thread ([`spawn`]: [`sync`] every [`SYNC_MS`]): for each
//!   queue this node owns, first reads the key once per epoch (what earlier owners
//!   admitted: until that read is in, the core answers claims "come back shortly"),
//!   then writes the greater of that and its own marks when they moved, in a
//!   transaction that succeeds only while the owner key's create_revision is still
//!   this node's epoch (a stale owner never writes). Nothing moved, nothing sent: etcd
//!   sees one read per takeover and at most one small write per [`SYNC_MS`] per queue
//!   while it admits. A frozen node (test hook) sends nothing.
//!
//! The marks also travel over the node link, which closes most of etcd's window: the
//! owner's rank batches (`Ranks`, per queue, every flush that touched the queue) carry
//! its admitted marks; each edge's book keeps the latest per queue; an edge's
//! `Resubmit` batch to the new owner carries them, and the new owner's core reports
//! them here ([`ClusterHandle::report_admitted`]) before it applies the places.
//! [`ClusterHandle::admitted_before`] is the max of etcd's value and every report; the
//! reports are written to etcd with this node's marks (a next owner sees them).
//!
//! The value only grows: one task writes, in order, the max of what was read at
//! takeover, what edges reported and what this node admitted since. Residual window:
//! an admission is missing from both when the owner died after admitting it and
//! before (a) its next successful etcd write (up to [`SYNC_MS`] plus a core tick and an
//! etcd round trip) and (b) the rank batch of that round reached a surviving edge that
//! re-submits places of that queue (a batch leaves in the same flush as the
//! admission's answers, so (b) is one link write and read); or when that edge's
//! re-submission reaches the new owner only after the ticket was judged (a report only
//! raises the mark: it refuses later claims, and a claim honored earlier was above every
//! mark known then). A player admitted in that window who presents its ticket to the
//! next owner within the recovery window gets its place back and can be admitted a
//! second time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use super::error::{within, ClusterError};
use super::fence::QUEUES_MAX;
use super::node::Shared;
use super::ownership::owner_key;
use super::{ClusterConfig, ClusterHandle};
use crate::msg::PlaceKey;

/// How often the marks are synced with etcd: the residual window's bound (see the
/// module doc), and the delay from a takeover to the read that lets claims in.
pub const SYNC_MS: u64 = 100;

/// Test hook ([`hold_writes_for_test`]): no mark is written to etcd in this process
/// (reads still happen), as if every owner died before its next write.
static WRITES_HELD: AtomicBool = AtomicBool::new(false);

/// Test hook: `true` stops every node of this process from writing its marks to etcd
/// (the residual window made as long as the test needs; reads go on), `false` lets
/// them write again.
#[doc(hidden)]
pub fn hold_writes_for_test(held: bool) {
    WRITES_HELD.store(held, Ordering::Release);
}

/// `{prefix}/admitted/{queue}`.
pub fn admitted_key(prefix: &str, queue: &str) -> String {
    format!("{prefix}/admitted/{queue}")
}

/// The value's text: `"<normal>,<priority>"`.
pub fn format_marks(marks: [PlaceKey; 2]) -> String {
    format!("{},{}", marks[0], marks[1])
}

/// Reads a value; `None` when it is not two decimal keys.
pub fn parse_marks(value: &[u8]) -> Option<[PlaceKey; 2]> {
    let text = std::str::from_utf8(value).ok()?;
    let (normal, prio) = text.split_once(',')?;
    Some([normal.trim().parse().ok()?, prio.trim().parse().ok()?])
}

/// One queue's marks.
#[derive(Debug, Default)]
struct Mark {
    /// This node's highest admitted key per lane [normal, priority] (0 = none).
    admitted: [AtomicU64; 2],
    /// What earlier owners admitted, as read at `read_epoch`.
    before: [AtomicU64; 2],
    /// What surviving edges reported earlier owners admitted (from the rank batches
    /// they saw, carried by their re-submissions), raised, never lowered or reset: each
    /// report is a key some owner admitted, true at any later epoch too.
    reported: [AtomicU64; 2],
    /// The epoch `before` was read for (0 = not read).
    read_epoch: AtomicU64,
    /// The last value written to etcd (cluster thread only).
    written: [AtomicU64; 2],
}

/// Every tracked queue's marks, by the queue table's index.
#[derive(Debug)]
pub struct Watermarks {
    /// `QUEUES_MAX` marks.
    slots: Box<[Mark]>,
}

impl Default for Watermarks {
    fn default() -> Self {
        Watermarks {
            slots: (0..QUEUES_MAX).map(|_| Mark::default()).collect(),
        }
    }
}

fn load(a: &[AtomicU64; 2]) -> [u64; 2] {
    [a[0].load(Ordering::Acquire), a[1].load(Ordering::Acquire)]
}

fn store(a: &[AtomicU64; 2], v: [u64; 2]) {
    a[0].store(v[0], Ordering::Release);
    a[1].store(v[1], Ordering::Release);
}

impl ClusterHandle {
    /// This node's core admitted up to `marks` [normal, priority] in `queue` (raised,
    /// never lowered; an untracked queue is ignored). Lock-free.
    pub fn publish_admitted(&self, queue: &str, marks: [PlaceKey; 2]) {
        let Some(index) = self.shared.queues.index(queue) else {
            return;
        };
        let m = &self.shared.watermarks.slots[index];
        m.admitted[0].fetch_max(marks[0], Ordering::AcqRel);
        m.admitted[1].fetch_max(marks[1], Ordering::AcqRel);
    }

    /// A surviving edge's report: earlier owners of `queue` admitted up to `marks`
    /// [normal, priority] (raised, never lowered; an untracked queue is ignored; synced
    /// to etcd with this node's own marks). Lock-free.
    pub fn report_admitted(&self, queue: &str, marks: [PlaceKey; 2]) {
        let Some(index) = self.shared.queues.index(queue) else {
            return;
        };
        let m = &self.shared.watermarks.slots[index];
        m.reported[0].fetch_max(marks[0], Ordering::AcqRel);
        m.reported[1].fetch_max(marks[1], Ordering::AcqRel);
    }

    /// What earlier owners of `queue` admitted [normal, priority]: the greater of
    /// etcd's value, once read for this node's current ownership epoch, and every
    /// edge's report so far; `None` before that read (or not owned).
    pub fn admitted_before(&self, queue: &str) -> Option<[PlaceKey; 2]> {
        let index = self.shared.queues.index(queue)?;
        let epoch = self.shared.queues.ownership(index)?.epoch;
        let m = &self.shared.watermarks.slots[index];
        if m.read_epoch.load(Ordering::Acquire) != epoch {
            return None;
        }
        let (before, reported) = (load(&m.before), load(&m.reported));
        Some([before[0].max(reported[0]), before[1].max(reported[1])])
    }
}

/// Starts the marks' task on the cluster thread's runtime (ends with the runtime). An
/// etcd error is counted and retried at the next round.
pub fn spawn(mut client: Client, shared: Arc<Shared>, config: &ClusterConfig) {
    let op_ms = super::node::tick_ms(config);
    let prefix = config.prefix.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(SYNC_MS));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if shared.frozen.load(Ordering::Acquire) {
                continue;
            }
            if let Err(e) = sync(&mut client, op_ms, &prefix, &shared).await {
                shared.etcd_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = %shared.node_id, error = %e, "cluster: admission marks not synced");
            }
        }
    });
}

/// One round (see the module doc): reads what earlier owners admitted for newly owned
/// queues, writes this node's marks where they moved.
pub async fn sync(
    client: &mut Client,
    op_ms: u64,
    prefix: &str,
    shared: &Shared,
) -> Result<(), ClusterError> {
    for index in 0..shared.queues.len() {
        let Some(own) = shared.queues.ownership(index) else {
            continue;
        };
        let name = shared.queues.name(index);
        let m = &shared.watermarks.slots[index];
        let key = admitted_key(prefix, name);
        if m.read_epoch.load(Ordering::Acquire) != own.epoch {
            let answer = within(op_ms, client.get(key.as_str(), None)).await?;
            let before = answer
                .kvs()
                .first()
                .and_then(|kv| parse_marks(kv.value()))
                .unwrap_or([0, 0]);
            store(&m.before, before);
            store(&m.written, before);
            m.read_epoch.store(own.epoch, Ordering::Release);
        }
        let (before, admitted) = (load(&m.before), load(&m.admitted));
        let reported = load(&m.reported);
        let want = [
            before[0].max(admitted[0]).max(reported[0]),
            before[1].max(admitted[1]).max(reported[1]),
        ];
        if want == load(&m.written) || WRITES_HELD.load(Ordering::Acquire) {
            continue;
        }
        let txn = Txn::new()
            .when([Compare::create_revision(
                owner_key(prefix, name),
                CompareOp::Equal,
                own.epoch as i64,
            )])
            .and_then([TxnOp::put(key.as_str(), format_marks(want), None)]);
        if within(op_ms, client.txn(txn)).await?.succeeded() {
            store(&m.written, want);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip() {
        let marks = [(1 << 63) | (7 << 32) | 5, 3 << 32];
        assert_eq!(parse_marks(format_marks(marks).as_bytes()), Some(marks));
        assert_eq!(parse_marks(b"1"), None);
        assert_eq!(parse_marks(b"x,2"), None);
        assert_eq!(admitted_key("/p", "w"), "/p/admitted/w");
    }
}
