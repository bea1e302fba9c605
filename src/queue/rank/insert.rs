//! Re-submitted places ([`Lane::insert_at`]): a place put back at the seq an earlier
//! owner gave it, after a failover (`state::resubmit`), anywhere in the lane.
//!
//! Past the last slot of the span it is an append. Before it, the place takes a free
//! (dead) slot where it belongs, or shifts at most [`SHIFT_MAX`] neighbours by one to the
//! nearest free slot; failing that, the ring is laid out again (O(n)) with a free slot
//! after every live slot whose successor's seq leaves room, and a hole of up to
//! [`HOLE_MAX`] free slots right after the new place. So several edges' batches, each
//! sorted by key and interleaved over the lane, cost about one layout per batch, and a
//! run of ascending keys into one spot one layout per hole, instead of O(n) per key.
//!
//! Invariants: those of the lane (`rank`): seqs strictly increase over the span, dead
//! slots included (a free slot holds a seq strictly between its neighbours'); the head
//! is live; dead slots in the span at most the live ones; the Fenwick tree counts the
//! live slots (a shift moves live slots only, so one update, where the free slot was).

use super::{Lane, Slot, DEAD, MIN_CAPACITY};
use crate::msg::UserId;

/// Farthest a re-submitted place shifts its neighbours (by one slot each) to reach a
/// free slot before the ring is laid out again with gaps: a few microseconds of copying
/// at most, far below one O(n) layout of a large lane.
pub const SHIFT_MAX: u64 = 256;
/// Most free slots a gapped layout leaves where the insertion that asked for it goes (a
/// run of ascending keys into one spot: a new owner's own arrivals behind a batch).
pub const HOLE_MAX: u64 = 4096;
impl Lane {
    /// Puts `user` at `seq` (a place re-submitted after a failover keeps the seq the
    /// previous owner gave it); false when a live place holds `seq` already or the seq
    /// cannot be a lane's. Past the last slot of the span it is an append (O(log n):
    /// one edge's batch, sorted by key, into an empty lane). Before it, the place takes
    /// a free slot next to where it belongs, or shifts at most [`SHIFT_MAX`] neighbours
    /// by one to the nearest free slot (O(log n + SHIFT_MAX)); when none is that near,
    /// the ring is laid out again with a free slot wherever a seq fits between two
    /// neighbours (O(n), see [`Lane::relayout_gapped`]), so the next insertions between
    /// other neighbours are O(log n): batches of several edges, each sorted by key,
    /// cost one such layout per batch, not O(n) per key. Failover only, never a
    /// steady-state join.
    pub fn insert_at(&mut self, seq: u64, user: UserId) -> bool {
        if seq >= DEAD - 1 {
            return false;
        }
        if self.past_tail(seq) {
            self.append_at(seq, user);
            return true;
        }
        if self.find(seq).is_some() {
            return false;
        }
        if !self.insert_near(seq, user) {
            self.relayout_gapped(seq, user);
        }
        true
    }

    /// True when `seq` sorts after every slot of the span.
    fn past_tail(&self, seq: u64) -> bool {
        self.head == self.tail || self.slot(self.tail - 1).seq & !DEAD < seq
    }

    /// Appends the place at `seq`, past every slot of the span (a batch sorted by key).
    fn append_at(&mut self, seq: u64, user: UserId) {
        let next = self.next_seq.max(seq + 1);
        self.next_seq = seq;
        self.push(user);
        self.next_seq = next;
    }

    /// Puts `seq` (below the span's last seq, held by nobody) into a free slot where it
    /// belongs, shifting at most [`SHIFT_MAX`] slots by one; false when no free slot is
    /// that near.
    fn insert_near(&mut self, seq: u64, user: UserId) -> bool {
        let p = self.lower_bound(seq);
        debug_assert!(p < self.tail);
        let room = self.tail - self.head < self.slots.len() as u64;
        // A free slot right there: `p` (a dead slot whose seq is `seq` or more: the next
        // one's is higher) or `p - 1` (its seq is lower, `p`'s is higher: live).
        if !self.slot(p).live() {
            self.put(p, seq, user);
            return true;
        }
        if p > self.head && !self.slot(p - 1).live() {
            self.put(p - 1, seq, user);
            return true;
        }
        // The nearest free slot on either side: a dead one in the span, or one just
        // outside it while the ring has room.
        let right = (p..self.tail.min(p + SHIFT_MAX))
            .find(|&d| !self.slot(d).live())
            .or_else(|| (room && self.tail - p <= SHIFT_MAX).then_some(self.tail));
        let left = (self.head.max(p.saturating_sub(SHIFT_MAX))..p)
            .rev()
            .find(|&d| !self.slot(d).live())
            .or_else(|| {
                (room && self.head > 0 && p - self.head < SHIFT_MAX).then(|| self.head - 1)
            });
        match (left, right) {
            (Some(l), Some(r)) if p - l - 1 < r - p => self.shift_left(l, p, seq, user),
            (_, Some(r)) => self.shift_right(p, r, seq, user),
            (Some(l), None) => self.shift_left(l, p, seq, user),
            (None, None) => return false,
        }
        true
    }

    /// Puts a place into the free slot at `pos` (in the span, or `head - 1`).
    fn put(&mut self, pos: u64, seq: u64, user: UserId) {
        let index = (pos & self.mask()) as usize;
        debug_assert!(!self.slots[index].live());
        self.slots[index] = Slot { seq, user };
        self.tree_add(index, 1);
        self.len += 1;
        if pos < self.head {
            self.head = pos;
        }
    }

    /// Moves the live slots `p..d` one position up into the free slot `d` (in the span,
    /// or `tail`) and puts the place at `p`. One tree update: only `d` turns live.
    fn shift_right(&mut self, p: u64, d: u64, seq: u64, user: UserId) {
        let mask = self.mask();
        for pos in (p..d).rev() {
            self.slots[((pos + 1) & mask) as usize] = self.slots[(pos & mask) as usize];
        }
        self.slots[(p & mask) as usize] = Slot { seq, user };
        self.tree_add((d & mask) as usize, 1);
        self.len += 1;
        self.tail = self.tail.max(d + 1);
    }

    /// Moves the live slots `d + 1..p` one position down into the free slot `d` (in
    /// the span, or `head - 1`) and puts the place at `p - 1`. One tree update.
    fn shift_left(&mut self, d: u64, p: u64, seq: u64, user: UserId) {
        let mask = self.mask();
        for pos in d + 1..p {
            self.slots[((pos - 1) & mask) as usize] = self.slots[(pos & mask) as usize];
        }
        self.slots[((p - 1) & mask) as usize] = Slot { seq, user };
        self.tree_add((d & mask) as usize, 1);
        self.len += 1;
        self.head = self.head.min(d);
    }

    /// Lays the live slots and the new place (`seq`, held by nobody) out again in a
    /// fresh ring with free (dead) slots where seqs fit: one after each live slot whose
    /// next seq is more than one higher, and right after the new place a hole of up to
    /// [`HOLE_MAX`] free slots holding the highest seqs below its successor's, so a run
    /// of ascending insertions behind it (a batch going in ahead of a new owner's own
    /// arrivals) fills the hole left to right in O(log n) each. The dead slots stay at
    /// most the live ones (the invariant's bound), the head is live (no free slot comes
    /// first), the ring is at most 4 x the span, and positions start at the capacity,
    /// so a place before the first has a slot too. O(capacity).
    fn relayout_gapped(&mut self, seq: u64, user: UserId) {
        let at = self.iter().position(|(s, _)| s > seq).unwrap_or(self.len);
        let mut live: Vec<(u64, UserId)> = Vec::with_capacity(self.len + 1);
        live.extend(self.iter().take(at));
        live.push((seq, user));
        live.extend(self.iter().skip(at));
        // Free seqs before each slot (none before the first), the hole's aside.
        let room = |i: usize| live[i].0 - live[i - 1].0 - 1;
        let gaps = (1..live.len())
            .filter(|&i| i != at + 1 && room(i) > 0)
            .count();
        let hole = if at + 1 < live.len() {
            room(at + 1).min(HOLE_MAX).min((live.len() - gaps) as u64)
        } else {
            0
        };
        let span = live.len() + gaps + hole as usize;
        let capacity = (2 * span).next_power_of_two().max(MIN_CAPACITY);
        let mask = capacity as u64 - 1;
        let mut slots = vec![Slot::default(); capacity];
        let base = capacity as u64;
        let mut pos = base;
        let mut put = |seq: u64, user: UserId| {
            slots[(pos & mask) as usize] = Slot { seq, user };
            pos += 1;
        };
        for (i, &(s, u)) in live.iter().enumerate() {
            if i == at + 1 {
                for free in s - hole..s {
                    put(free | DEAD, 0);
                }
            } else if i > 0 && room(i) > 0 {
                put((live[i - 1].0 + 1) | DEAD, 0);
            }
            put(s, u);
        }
        self.slots = slots;
        self.tree = vec![0; capacity + 1];
        self.head = base;
        self.tail = base + span as u64;
        self.len = live.len();
        self.rebuild_tree();
    }
}
