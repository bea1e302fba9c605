//! One lane of a queue: players in arrival order with O(log n) exact rank.
//!
//! A lane hands out sequence numbers in arrival order. Slots live in a ring indexed by
//! `seq & mask`; a Fenwick tree over the ring counts present players, so the rank of a
//! place (players ahead in this lane) is two prefix sums, removal from the middle is one
//! update, and the head advances past removed slots.
//!
//! Invariants:
//! - `head <= tail`, `tail - head <= capacity`; seqs in `head..tail` map to distinct slots;
//! - the slot of `head` is occupied unless the lane is empty (`head == tail`);
//! - the Fenwick tree counts exactly the occupied slots, `len` is their number.

use crate::msg::{PlaceKey, UserId};

/// Bit that puts normal-lane keys after every priority-lane key.
const NORMAL_LANE_BIT: u64 = 1 << 63;

/// The order key of a place: priority lane first, then arrival.
pub fn place_key(priority: bool, seq: u64) -> PlaceKey {
    debug_assert!(seq < NORMAL_LANE_BIT);
    if priority {
        seq
    } else {
        NORMAL_LANE_BIT | seq
    }
}

/// Splits a key into (priority lane?, seq).
pub fn split_key(key: PlaceKey) -> (bool, u64) {
    (key & NORMAL_LANE_BIT == 0, key & !NORMAL_LANE_BIT)
}

/// Smallest ring, slots.
const MIN_CAPACITY: usize = 1024;

/// One lane (priority or normal) of one queue.
#[derive(Debug, Clone)]
pub struct Lane {
    /// Oldest seq that may still be present.
    head: u64,
    /// Next seq to hand out.
    tail: u64,
    /// Ring of slots, `None` = left; length is a power of two.
    slots: Vec<Option<UserId>>,
    /// Fenwick tree over the ring (1-based, `slots.len() + 1` entries).
    tree: Vec<u32>,
    /// Occupied slots.
    len: usize,
}

impl Default for Lane {
    /// An empty lane holding no memory until its first player (auto-created queues
    /// cost nothing until used).
    fn default() -> Self {
        Lane {
            head: 0,
            tail: 0,
            slots: Vec::new(),
            tree: Vec::new(),
            len: 0,
        }
    }
}

impl Lane {
    fn with_capacity(capacity: usize) -> Lane {
        let capacity = capacity.next_power_of_two().max(MIN_CAPACITY);
        Lane {
            head: 0,
            tail: 0,
            slots: vec![None; capacity],
            tree: vec![0; capacity + 1],
            len: 0,
        }
    }

    /// Players in this lane.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nobody is in this lane.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Next seq to be handed out (all present seqs are below it).
    pub fn tail(&self) -> u64 {
        self.tail
    }

    fn mask(&self) -> u64 {
        self.slots.len() as u64 - 1
    }

    fn tree_add(&mut self, index: usize, delta: i32) {
        let mut i = index + 1;
        while i < self.tree.len() {
            self.tree[i] = self.tree[i].wrapping_add_signed(delta);
            i += i & i.wrapping_neg();
        }
    }

    /// Occupied slots with ring index < `index`.
    fn tree_prefix(&self, index: usize) -> u64 {
        let mut i = index;
        let mut sum = 0u64;
        while i > 0 {
            sum += u64::from(self.tree[i]);
            i &= i - 1;
        }
        sum
    }

    /// Appends a player; returns its seq.
    pub fn push(&mut self, user: UserId) -> u64 {
        if (self.tail - self.head) as usize == self.slots.len() {
            self.grow();
        }
        debug_assert!(!self.slots.is_empty());
        let seq = self.tail;
        let index = (seq & self.mask()) as usize;
        debug_assert!(self.slots[index].is_none());
        self.slots[index] = Some(user);
        self.tree_add(index, 1);
        self.tail += 1;
        self.len += 1;
        seq
    }

    /// Doubles the ring, re-laying the live range and rebuilding the tree in O(n).
    fn grow(&mut self) {
        let mut next = Lane::with_capacity(self.slots.len() * 2);
        if self.slots.is_empty() {
            next.head = self.head;
            next.tail = self.tail;
            *self = next;
            return;
        }
        next.head = self.head;
        next.tail = self.tail;
        next.len = self.len;
        let mask = next.mask();
        for seq in self.head..self.tail {
            let user = self.slots[(seq & self.mask()) as usize];
            next.slots[(seq & mask) as usize] = user;
        }
        // Linear Fenwick build.
        for i in 1..next.tree.len() {
            next.tree[i] += u32::from(next.slots[i - 1].is_some());
            let parent = i + (i & i.wrapping_neg());
            if parent < next.tree.len() {
                next.tree[parent] += next.tree[i];
            }
        }
        *self = next;
    }

    /// The player at `seq`, if still present.
    pub fn get(&self, seq: u64) -> Option<UserId> {
        if seq < self.head || seq >= self.tail {
            return None;
        }
        self.slots[(seq & self.mask()) as usize]
    }

    /// Removes the player at `seq`; returns it. Advances the head past empty slots.
    pub fn remove(&mut self, seq: u64) -> Option<UserId> {
        if seq < self.head || seq >= self.tail {
            return None;
        }
        let index = (seq & self.mask()) as usize;
        let user = self.slots[index].take()?;
        self.tree_add(index, -1);
        self.len -= 1;
        while self.head < self.tail && self.slots[(self.head & self.mask()) as usize].is_none() {
            self.head += 1;
        }
        Some(user)
    }

    /// Players ahead of `seq` in this lane (its 0-based rank if present).
    pub fn rank(&self, seq: u64) -> u64 {
        let seq = seq.clamp(self.head, self.tail);
        if seq == self.head {
            return 0;
        }
        let h = (self.head & self.mask()) as usize;
        let s = (seq & self.mask()) as usize;
        if h < s {
            self.tree_prefix(s) - self.tree_prefix(h)
        } else {
            // The range wraps around the end of the ring.
            self.tree_prefix(self.slots.len()) - self.tree_prefix(h) + self.tree_prefix(s)
        }
    }

    /// The first player in the lane, if any: (seq, user).
    pub fn front(&self) -> Option<(u64, UserId)> {
        if self.head == self.tail {
            return None;
        }
        let user = self.slots[(self.head & self.mask()) as usize]?;
        Some((self.head, user))
    }

    /// Present players in order: (seq, user).
    pub fn iter(&self) -> impl Iterator<Item = (u64, UserId)> + '_ {
        // An empty lane may hold no ring at all (then head == tail and nothing is read).
        let mask = (self.slots.len() as u64).wrapping_sub(1);
        (self.head..self.tail)
            .filter_map(move |seq| self.slots[(seq & mask) as usize].map(|u| (seq, u)))
    }

    /// Bytes held by this lane's arrays (for memory-per-player reports).
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Option<UserId>>()
            + self.tree.capacity() * std::mem::size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_rng::Rng;

    #[test]
    fn keys_order_priority_first() {
        assert!(place_key(true, u64::MAX >> 2) < place_key(false, 0));
        assert_eq!(split_key(place_key(false, 7)), (false, 7));
        assert_eq!(split_key(place_key(true, 7)), (true, 7));
    }

    #[test]
    fn rank_matches_a_vec_through_growth_and_wraparound() {
        let mut rng = Rng::new(0x9e3779b97f4a7c15);
        let mut lane = Lane::default();
        let mut model: Vec<(u64, UserId)> = Vec::new();
        for step in 0..60_000u64 {
            let r = rng.next() % 10;
            if r < 5 || model.is_empty() {
                let seq = lane.push(step);
                model.push((seq, step));
            } else if r < 8 {
                let i = (rng.next() % model.len() as u64) as usize;
                let (seq, user) = model.remove(i);
                assert_eq!(lane.remove(seq), Some(user));
            } else {
                let (seq, user) = model.remove(0);
                assert_eq!(lane.front(), Some((seq, user)));
                assert_eq!(lane.remove(seq), Some(user));
            }
            assert_eq!(lane.len(), model.len());
            if step % 97 == 0 {
                for (i, &(seq, user)) in model.iter().enumerate() {
                    assert_eq!(lane.rank(seq), i as u64, "step {step}");
                    assert_eq!(lane.get(seq), Some(user));
                }
                let listed: Vec<_> = lane.iter().collect();
                assert_eq!(listed, model);
            }
        }
    }

    #[test]
    fn removing_twice_is_none() {
        let mut lane = Lane::default();
        let a = lane.push(1);
        let b = lane.push(2);
        assert_eq!(lane.remove(a), Some(1));
        assert_eq!(lane.remove(a), None);
        assert_eq!(lane.rank(b), 0);
        assert_eq!(lane.front(), Some((b, 2)));
    }
}
