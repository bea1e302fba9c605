//! Fencing: may this node admit for a queue right now? Answered without locks or
//! allocation, from any thread (the queue core asks per admission).
//!
//! A node may admit for a queue only while (a) it holds the queue's ownership key in
//! etcd, recorded here as a non-zero epoch (the key's create_revision), and (b) its
//! local lease deadline is in the future. The deadline is `sent + granted TTL - margin`,
//! where `sent` is the instant the successful grant or keep-alive request was *sent*:
//! etcd counts the TTL from when it *received* it, so etcd cannot expire the lease, and
//! no other node can take the key, before this node has stopped admitting (see
//! docs/cluster.md "Fencing" and the module doc of `cluster` for the argument). Each
//! queue's slot also keeps the last epoch this node held and whether it was won in a
//! takeover (`ownership::is_takeover`), which the core's recovery hold reads.
//!
//! Invariants:
//! - [`now_ms`] is CLOCK_BOOTTIME in milliseconds: it never goes back, does not jump
//!   with wall-clock changes, keeps counting while the machine is suspended (unlike
//!   CLOCK_MONOTONIC, which would let a node wake from a suspend believing its lease
//!   still runs), and is the same clock for every process on one machine (tests compare
//!   instants across nodes with it);
//! - the deadline only moves forward within one lease; losing the lease stores 0 first,
//!   then clears the epochs, so no reader sees "owned" with a stale live deadline;
//! - the queue table only grows (names are written once, before `len` publishes them).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Most queues one cluster handle tracks (the table is allocated once, so the lookup
/// needs no lock); far above any sane number of worlds.
pub const QUEUES_MAX: usize = 1024;

/// Milliseconds of CLOCK_BOOTTIME (shared by all processes of one machine, counts
/// suspend).
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Elsewhere (no CLOCK_BOOTTIME) the monotonic clock, without the suspend guarantee.
    #[cfg(target_os = "linux")]
    const CLOCK: libc::clockid_t = libc::CLOCK_BOOTTIME;
    #[cfg(not(target_os = "linux"))]
    const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;
    // SAFETY: `ts` is a valid, writable timespec; the clock exists (Linux >= 2.6.39).
    let rc = unsafe { libc::clock_gettime(CLOCK, &mut ts) };
    debug_assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// The lease deadline, in [`now_ms`] milliseconds (0 = no lease).
#[derive(Debug, Default)]
pub struct Fence {
    /// Admission stops at this instant; written by the cluster thread only.
    deadline_ms: AtomicU64,
}

impl Fence {
    /// True while the lease deadline is in the future.
    pub fn is_live(&self) -> bool {
        now_ms() < self.deadline_ms.load(Ordering::Acquire)
    }

    /// The current deadline (0 = none).
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms.load(Ordering::Acquire)
    }

    /// Sets the deadline after a grant or keep-alive answered.
    pub fn set(&self, deadline_ms: u64) {
        self.deadline_ms.store(deadline_ms, Ordering::Release);
    }

    /// Stops admission at once (lease lost, node stopping).
    pub fn clear(&self) {
        self.deadline_ms.store(0, Ordering::Release);
    }
}

/// One queue this node tracks.
#[derive(Debug, Default)]
struct Slot {
    /// The queue's name, written once.
    name: OnceLock<Box<str>>,
    /// Ownership epoch (the owner key's create_revision) while this node owns the
    /// queue, else 0.
    epoch: AtomicU64,
    /// [`now_ms`] when this node sent the campaign that won the current epoch (or first
    /// saw the key as its own), 0 when not owned.
    acquired_ms: AtomicU64,
    /// The epoch this node owned last (kept when the ownership is cleared).
    last_epoch: AtomicU64,
    /// Whether `last_epoch` was won in a takeover (kept with it).
    takeover: std::sync::atomic::AtomicBool,
}

/// Ownership of a queue by this node, as the table holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    /// The owner key's create_revision: grows with every change of owner.
    pub epoch: u64,
    /// [`now_ms`] when the winning campaign was sent: the new owner cannot have
    /// acquired the key before this instant.
    pub campaign_sent_ms: u64,
    /// True when the epoch was won while the queue's last owner was another process
    /// (`ownership::is_takeover`): admission waits out the recovery window.
    pub takeover: bool,
}

/// The queues this node tracks and which of them it owns: fixed capacity, append-only,
/// lock-free to read.
#[derive(Debug)]
pub struct QueueTable {
    /// `QUEUES_MAX` slots; the first `len` have a name.
    slots: Box<[Slot]>,
    /// Slots in use.
    len: AtomicUsize,
    /// Serializes appends (never taken by readers).
    append: Mutex<()>,
}

impl Default for QueueTable {
    fn default() -> Self {
        QueueTable {
            slots: (0..QUEUES_MAX).map(|_| Slot::default()).collect(),
            len: AtomicUsize::new(0),
            append: Mutex::new(()),
        }
    }
}

impl QueueTable {
    /// Index of `queue`, if tracked.
    pub fn index(&self, queue: &str) -> Option<usize> {
        let len = self.len.load(Ordering::Acquire);
        self.slots[..len]
            .iter()
            .position(|s| s.name.get().is_some_and(|n| &**n == queue))
    }

    /// Tracks `queue` (idempotent); false when the table is full.
    pub fn add(&self, queue: &str) -> bool {
        let _guard = self.append.lock().unwrap_or_else(|e| e.into_inner());
        if self.index(queue).is_some() {
            return true;
        }
        let len = self.len.load(Ordering::Acquire);
        if len == self.slots.len() {
            return false;
        }
        let _ = self.slots[len].name.set(queue.into());
        self.len.store(len + 1, Ordering::Release);
        true
    }

    /// Number of tracked queues.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// True when no queue is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Name of the queue at `index` (< `len`).
    pub fn name(&self, index: usize) -> &str {
        self.slots[index].name.get().map_or("", |n| n)
    }

    /// This node's ownership of the queue at `index`, if any.
    pub fn ownership(&self, index: usize) -> Option<Ownership> {
        let slot = self.slots.get(index)?;
        let epoch = slot.epoch.load(Ordering::Acquire);
        (epoch != 0).then(|| Ownership {
            epoch,
            campaign_sent_ms: slot.acquired_ms.load(Ordering::Acquire),
            takeover: slot.takeover.load(Ordering::Acquire),
        })
    }

    /// Records that this node owns the queue at `index` with `epoch`; `takeover` as the
    /// winning campaign decided it, or `None` when the key is adopted as found (the
    /// campaign's answer was lost, or the fence lapsed): then as decided for that epoch
    /// before, and a takeover for an epoch this node never held (the cautious side: a
    /// hold only delays admission).
    pub fn set_owned(
        &self,
        index: usize,
        epoch: u64,
        campaign_sent_ms: u64,
        takeover: Option<bool>,
    ) {
        let slot = &self.slots[index];
        let takeover = takeover.unwrap_or_else(|| {
            slot.last_epoch.load(Ordering::Acquire) != epoch
                || slot.takeover.load(Ordering::Acquire)
        });
        slot.takeover.store(takeover, Ordering::Release);
        slot.last_epoch.store(epoch, Ordering::Release);
        slot.acquired_ms.store(campaign_sent_ms, Ordering::Release);
        slot.epoch.store(epoch, Ordering::Release);
    }

    /// Records that this node does not own the queue at `index`.
    pub fn clear(&self, index: usize) {
        let slot = &self.slots[index];
        slot.epoch.store(0, Ordering::Release);
        slot.acquired_ms.store(0, Ordering::Release);
    }

    /// Drops every ownership (lease lost or node stopping).
    pub fn clear_all(&self) {
        for i in 0..self.len() {
            self.clear(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_is_live_only_before_the_deadline() {
        let f = Fence::default();
        assert!(!f.is_live());
        f.set(now_ms() + 60_000);
        assert!(f.is_live());
        f.set(now_ms().saturating_sub(1));
        assert!(!f.is_live());
        f.clear();
        assert_eq!(f.deadline_ms(), 0);
    }

    #[test]
    fn table_appends_and_owns() {
        let t = QueueTable::default();
        assert!(t.add("a") && t.add("b") && t.add("a"));
        assert_eq!(t.len(), 2);
        assert_eq!(t.index("b"), Some(1));
        assert_eq!(t.index("c"), None);
        assert_eq!(t.ownership(1), None);
        t.set_owned(1, 7, 5, Some(false));
        assert_eq!(
            t.ownership(1).map(|o| (o.epoch, o.takeover)),
            Some((7, false))
        );
        t.clear_all();
        assert_eq!(t.ownership(1), None);
        // Adopted again after a lapse: as decided for that epoch; an unknown epoch holds.
        t.set_owned(1, 7, 9, None);
        assert_eq!(t.ownership(1).map(|o| o.takeover), Some(false));
        t.set_owned(1, 8, 9, None);
        assert_eq!(t.ownership(1).map(|o| o.takeover), Some(true));
    }

    #[test]
    fn clock_does_not_go_back() {
        let a = now_ms();
        assert!(now_ms() >= a);
    }
}
