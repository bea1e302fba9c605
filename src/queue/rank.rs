//! One lane of a queue: players in arrival order with O(log n) exact rank.
//!
//! A lane hands out sequence numbers (seqs) in arrival order; a seq never changes while
//! its player is in the lane (the io loops and the core hold it inside `PlaceKey`s).
//! Players live in a ring of *positions*: each push takes the next position, and a slot
//! remembers its seq, so seqs increase with positions and the position of a seq is a
//! binary search. A Fenwick tree over the ring counts present players, so the rank of a
//! place (players ahead in this lane) is a search and two prefix sums, and a removal from
//! the middle is one update. Removal leaves a dead slot; the head position advances past
//! dead slots, and once the dead slots inside the live span outnumber the live players
//! (and at least [`COMPACT_MIN`]) the live slots are moved together in place and the tree
//! rebuilt. Seqs are kept, positions are internal, so compaction renumbers nothing
//! anybody holds.
//!
//! A place re-submitted after a failover (`insert_at`, in `rank::insert`) goes where its
//! seq belongs: into a dead slot there, or by shifting at most [`SHIFT_MAX`] neighbours
//! to the nearest one; failing that, the ring is laid out again with a dead slot (a gap)
//! after every live slot whose successor's seq leaves room, in O(n), so the keys of the
//! next batch find their gaps in O(log n).
//!
//! Costs: `rank`, `get` O(log n); `push` O(log n), amortized O(1) extra for growth;
//! `insert_at` O(log n) at the end, else O(log n + SHIFT_MAX) or one O(n) gapped layout
//! (several edges' sorted batches: about one layout per batch);
//! `remove` O(log n) plus amortized O(1) for compaction and head advance (each dead slot
//! is walked over a bounded number of times); `front` O(1); `iter` O(live + dead) with
//! dead <= max(live, COMPACT_MIN); `walk_from` O(log n) to start, O(1) a slot. Memory: 20 bytes per slot, and the ring holds at most
//! `max(MIN_CAPACITY, 4 x span)` slots, span <= 2 x live + COMPACT_MIN, so about
//! 8 x live + 256 slots whatever the arrival history (the ring shrinks once it is 4 times
//! its span). No allocation in steady state: compaction is
//! in place, only growth and shrinking reallocate.
//!
//! Invariants:
//! - `head <= tail`, `tail - head <= capacity`; positions in `head..tail` map to distinct
//!   slots, and the seqs in them strictly increase;
//! - the slot at `head` is live unless the lane is empty (`head == tail`); every slot
//!   outside `head..tail` is dead;
//! - the dead slots in `head..tail` number at most `max(len, COMPACT_MIN - 1)` after every
//!   operation;
//! - the Fenwick tree counts exactly the live slots, `len` is their number;
//! - every seq handed out is below `next_seq`.

use crate::msg::{PlaceKey, UserId};

mod insert;

pub use insert::{HOLE_MAX, SHIFT_MAX};

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
pub const MIN_CAPACITY: usize = 1024;
/// Dead slots inside the live span that trigger a compaction (with more dead than live),
/// so a small lane is not compacted on every removal.
pub const COMPACT_MIN: usize = 64;
/// Marks a slot whose player left (seqs stay below 2^63, see [`place_key`]).
const DEAD: u64 = 1 << 63;

/// One slot of the ring.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The seq of the place, with [`DEAD`] set once the player left.
    seq: u64,
    /// The player.
    user: UserId,
}

impl Default for Slot {
    /// Dead: every slot outside the live span is dead.
    fn default() -> Slot {
        Slot { seq: DEAD, user: 0 }
    }
}

impl Slot {
    fn live(&self) -> bool {
        self.seq & DEAD == 0
    }
}

/// One lane (priority or normal) of one queue.
#[derive(Debug, Clone, Default)]
pub struct Lane {
    /// Position of the first slot that may be live.
    head: u64,
    /// Next position to fill.
    tail: u64,
    /// Next seq to hand out.
    next_seq: u64,
    /// Ring of slots indexed by `position & mask`; length 0 or a power of two.
    slots: Vec<Slot>,
    /// Fenwick tree over the ring (1-based, `slots.len() + 1` entries).
    tree: Vec<u32>,
    /// Live slots.
    len: usize,
}

impl Lane {
    /// An empty lane holding no memory whose first seq is `next_seq`: a queue slot
    /// reused after expiry continues its seqs, so a key never means two places.
    pub fn starting_at(next_seq: u64) -> Lane {
        Lane {
            next_seq,
            ..Lane::default()
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
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Slots in the ring (memory is proportional to it).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn mask(&self) -> u64 {
        (self.slots.len() as u64).wrapping_sub(1)
    }

    fn slot(&self, pos: u64) -> &Slot {
        &self.slots[(pos & self.mask()) as usize]
    }

    fn tree_add(&mut self, index: usize, delta: i32) {
        let mut i = index + 1;
        while i < self.tree.len() {
            self.tree[i] = self.tree[i].wrapping_add_signed(delta);
            i += i & i.wrapping_neg();
        }
    }

    /// Live slots with ring index < `index`.
    fn tree_prefix(&self, index: usize) -> u64 {
        let mut i = index;
        let mut sum = 0u64;
        while i > 0 {
            sum += u64::from(self.tree[i]);
            i &= i - 1;
        }
        sum
    }

    /// Rebuilds the Fenwick tree from the slots in O(capacity).
    fn rebuild_tree(&mut self) {
        self.tree.fill(0);
        for i in 1..self.tree.len() {
            self.tree[i] += u32::from(self.slots[i - 1].live());
            let parent = i + (i & i.wrapping_neg());
            if parent < self.tree.len() {
                self.tree[parent] += self.tree[i];
            }
        }
    }

    /// Appends a player; returns its seq.
    pub fn push(&mut self, user: UserId) -> u64 {
        if (self.tail - self.head) as usize == self.slots.len() {
            let dead = (self.tail - self.head) as usize - self.len;
            if dead > 0 && dead >= self.slots.len() / 2 {
                self.compact();
            } else {
                self.relayout((self.slots.len() * 2).max(MIN_CAPACITY));
            }
        }
        let seq = self.next_seq;
        debug_assert!(seq < DEAD);
        let pos = self.tail;
        let index = (pos & self.mask()) as usize;
        self.slots[index] = Slot { seq, user };
        self.tree_add(index, 1);
        self.tail += 1;
        self.next_seq += 1;
        self.len += 1;
        seq
    }

    /// Makes every later seq at least `floor` (a new owner's arrivals sort after every
    /// place of an earlier owner: see `QueueState::seq_floor`).
    pub fn raise_floor(&mut self, floor: u64) {
        self.next_seq = self.next_seq.max(floor.min(DEAD - 2));
    }

    /// Moves the live slots into a fresh ring of `capacity` slots (a power of two at
    /// least the live count), dropping dead ones, and rebuilds the tree in O(capacity).
    fn relayout(&mut self, capacity: usize) {
        debug_assert!(capacity.is_power_of_two() && capacity >= self.len);
        let mut slots = vec![Slot::default(); capacity];
        let mut n = 0usize;
        for pos in self.head..self.tail {
            let slot = *self.slot(pos);
            if slot.live() {
                slots[n] = slot;
                n += 1;
            }
        }
        self.slots = slots;
        self.tree = vec![0; capacity + 1];
        self.head = 0;
        self.tail = n as u64;
        self.rebuild_tree();
    }

    /// Moves the live slots of `head..tail` together in place (order kept), so the span
    /// holds no dead slot, and rebuilds the tree. No allocation.
    fn compact(&mut self) {
        let mut write = self.head;
        for read in self.head..self.tail {
            let slot = *self.slot(read);
            if slot.live() {
                if write != read {
                    let index = (write & self.mask()) as usize;
                    self.slots[index] = slot;
                }
                write += 1;
            }
        }
        for pos in write..self.tail {
            let index = (pos & self.mask()) as usize;
            self.slots[index].seq |= DEAD;
        }
        self.tail = write;
        self.rebuild_tree();
    }

    /// First position in `head..tail` whose seq is at least `seq` (`tail` if none).
    fn lower_bound(&self, seq: u64) -> u64 {
        let (mut lo, mut hi) = (self.head, self.tail);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.slot(mid).seq & !DEAD < seq {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The position of the live slot of `seq`, if present.
    fn find(&self, seq: u64) -> Option<u64> {
        if self.len == 0 || seq >= self.next_seq {
            return None;
        }
        if self.slot(self.head).seq == seq {
            // Admission takes the head: no search.
            return Some(self.head);
        }
        let pos = self.lower_bound(seq);
        (pos < self.tail && self.slot(pos).seq == seq).then_some(pos)
    }

    /// The player at `seq`, if still present.
    pub fn get(&self, seq: u64) -> Option<UserId> {
        self.find(seq).map(|pos| self.slot(pos).user)
    }

    /// Removes the player at `seq`; returns it. Advances the head past dead slots and
    /// compacts or shrinks the ring when dead slots dominate.
    pub fn remove(&mut self, seq: u64) -> Option<UserId> {
        let pos = self.find(seq)?;
        let index = (pos & self.mask()) as usize;
        let user = self.slots[index].user;
        self.slots[index].seq |= DEAD;
        self.tree_add(index, -1);
        self.len -= 1;
        while self.head < self.tail && !self.slot(self.head).live() {
            self.head += 1;
        }
        let span = (self.tail - self.head) as usize;
        let dead = span - self.len;
        if self.slots.len() > MIN_CAPACITY && span * 4 <= self.slots.len() {
            // Most of the ring is unused: give memory back. Amortized: the new ring is
            // 2 to 4 times the span, so the span must halve again before the next
            // shrink, or double before the next growth.
            self.relayout((span * 2).next_power_of_two().max(MIN_CAPACITY));
        } else if dead >= COMPACT_MIN && dead > self.len {
            self.compact();
        }
        Some(user)
    }

    /// Players ahead of `seq` in this lane (its 0-based rank if present).
    pub fn rank(&self, seq: u64) -> u64 {
        if self.len == 0 {
            return 0;
        }
        let pos = self.lower_bound(seq);
        if pos == self.head {
            return 0;
        }
        let h = (self.head & self.mask()) as usize;
        let s = (pos & self.mask()) as usize;
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
        let slot = self.slot(self.head);
        debug_assert!(slot.live());
        Some((slot.seq, slot.user))
    }

    /// Present players in order: (seq, user). Walks at most `2 x len + COMPACT_MIN` slots.
    pub fn iter(&self) -> impl Iterator<Item = (u64, UserId)> + '_ {
        (self.head..self.tail).filter_map(move |pos| {
            let slot = self.slot(pos);
            slot.live().then_some((slot.seq, slot.user))
        })
    }

    /// The slots from the first one whose seq is `seq` or more, in order: (seq, the
    /// player, or `None` for a player who left). O(log n) to start, O(1) a slot; dead
    /// slots are yielded so a caller that bounds its work per call counts them too.
    pub fn walk_from(&self, seq: u64) -> impl Iterator<Item = (u64, Option<UserId>)> + '_ {
        let start = if self.head == self.tail {
            self.tail
        } else {
            self.lower_bound(seq)
        };
        (start..self.tail).map(move |pos| {
            let slot = self.slot(pos);
            (slot.seq & !DEAD, slot.live().then_some(slot.user))
        })
    }

    /// Bytes held by this lane's arrays (for memory-per-player reports).
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.tree.capacity() * std::mem::size_of::<u32>()
    }

    /// Checks the invariants (tests).
    #[cfg(test)]
    fn check(&self) {
        assert!(self.head <= self.tail);
        assert!((self.tail - self.head) as usize <= self.slots.len());
        let mut last = None;
        let mut live = 0;
        for pos in self.head..self.tail {
            let s = self.slot(pos);
            let seq = s.seq & !DEAD;
            assert!(last.is_none_or(|l| l < seq));
            assert!(seq < self.next_seq);
            last = Some(seq);
            live += usize::from(s.live());
        }
        assert_eq!(live, self.len);
        if self.len > 0 {
            assert!(self.slot(self.head).live());
        }
        let dead = (self.tail - self.head) as usize - self.len;
        assert!(
            dead <= self.len.max(COMPACT_MIN - 1),
            "dead {dead} len {}",
            self.len
        );
        assert_eq!(self.tree_prefix(self.slots.len()), self.len as u64);
        let live_anywhere = self.slots.iter().filter(|s| s.live()).count();
        assert_eq!(live_anywhere, self.len, "a live slot outside the span");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_rng::Rng;

    /// A walk resumed from any seq, present, left or never handed out, yields the
    /// slots from there in order and the live ones with their players.
    #[test]
    fn walk_from_resumes_at_any_seq() {
        let mut lane = Lane::default();
        for user in 0..200 {
            lane.push(user);
        }
        for seq in (0..200).filter(|s| s % 3 == 1) {
            lane.remove(seq);
        }
        lane.remove(0);
        for from in [0, 1, 2, 3, 100, 199, 200, 500] {
            let live: Vec<(u64, UserId)> = lane
                .walk_from(from)
                .filter_map(|(seq, user)| user.map(|u| (seq, u)))
                .collect();
            let expected: Vec<(u64, UserId)> = lane.iter().filter(|&(s, _)| s >= from).collect();
            assert_eq!(live, expected, "from {from}");
            let seqs: Vec<u64> = lane.walk_from(from).map(|(s, _)| s).collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "from {from}");
            assert!(seqs.iter().all(|&s| s >= from), "from {from}");
        }
        assert_eq!(Lane::default().walk_from(0).count(), 0);
    }

    /// Places put back at their old seqs, in any order, keep seq order; ranks and the
    /// head follow; a taken seq is refused; later pushes come after the floor.
    #[test]
    fn insert_at_keeps_seq_order() {
        let mut lane = Lane::default();
        for seq in [50, 10, 30, 20, 40] {
            assert!(lane.insert_at(seq, seq * 100));
            lane.check();
        }
        assert!(!lane.insert_at(30, 1));
        let order: Vec<u64> = lane.iter().map(|(s, _)| s).collect();
        assert_eq!(order, vec![10, 20, 30, 40, 50]);
        assert_eq!(lane.rank(40), 3);
        assert_eq!(lane.front(), Some((10, 1000)));
        lane.raise_floor(1 << 32);
        assert_eq!(lane.push(7), 1 << 32);
        assert!(lane.insert_at(35, 3500));
        lane.check();
        assert_eq!(lane.rank(1 << 32), 6);
        assert_eq!(lane.remove(10), Some(1000));
        assert_eq!(lane.rank(35), 2);
        lane.check();
    }

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
                lane.check();
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

    /// Issue 7: a head that never leaves (paused queue, manual admission) with players
    /// joining and leaving behind it must not grow the ring.
    #[test]
    fn join_leave_behind_a_fixed_head_keeps_the_ring_bounded() {
        let mut lane = Lane::default();
        let head = lane.push(u64::MAX);
        let mut max_capacity = 0;
        for user in 0..1_000_000u64 {
            let seq = lane.push(user);
            assert_eq!(lane.rank(seq), 1);
            assert_eq!(lane.remove(seq), Some(user));
            max_capacity = max_capacity.max(lane.capacity());
        }
        assert_eq!(lane.front(), Some((head, u64::MAX)));
        assert_eq!(lane.len(), 1);
        // Live count is 1 or 2 throughout: a small multiple of it plus a constant.
        assert!(
            max_capacity <= 4 * 2 + MIN_CAPACITY,
            "capacity {max_capacity}"
        );
    }

    /// A pinned head (paused queue) and heavy churn behind it, against a plain Vec:
    /// order, rank, lookups and the capacity bound hold through compactions, growth and
    /// shrinking.
    #[test]
    fn pinned_head_churn_matches_a_vec() {
        for seed in [1u64, 2, 3, 0xdead_beef] {
            let mut rng = Rng::new(seed);
            let mut lane = Lane::default();
            let mut model: Vec<(u64, UserId)> = Vec::new();
            let pinned = lane.push(u64::MAX);
            model.push((pinned, u64::MAX));
            // Phases: grow to a crowd, churn, shrink back, churn again.
            let mut target = 1usize;
            for step in 0..120_000u64 {
                if step % 20_000 == 0 {
                    target = [1, 3000, 50, 5000, 2, 200][(step / 20_000) as usize];
                }
                let join =
                    model.len() < target || (model.len() == target && rng.next().is_multiple_of(2));
                if join || model.len() == 1 {
                    let seq = lane.push(step);
                    model.push((seq, step));
                } else {
                    // Anyone but the pinned head.
                    let i = 1 + (rng.next() % (model.len() as u64 - 1)) as usize;
                    let (seq, user) = model.remove(i);
                    assert_eq!(lane.remove(seq), Some(user));
                    assert_eq!(lane.remove(seq), None);
                    assert_eq!(lane.get(seq), None);
                }
                assert_eq!(lane.len(), model.len());
                assert_eq!(lane.front(), Some((pinned, u64::MAX)));
                assert!(
                    lane.capacity() <= (8 * model.len() + 4 * COMPACT_MIN).max(MIN_CAPACITY),
                    "seed {seed} step {step}: capacity {} for {} players",
                    lane.capacity(),
                    model.len()
                );
                if step % 211 == 0 {
                    lane.check();
                    for (i, &(seq, user)) in model.iter().enumerate() {
                        assert_eq!(lane.rank(seq), i as u64, "seed {seed} step {step}");
                        assert_eq!(lane.get(seq), Some(user));
                    }
                    let listed: Vec<_> = lane.iter().collect();
                    assert_eq!(listed, model);
                    // Absent seqs rank as the players ahead of where they were.
                    let probe = rng.next() % lane.next_seq();
                    let ahead = model.iter().filter(|&&(s, _)| s < probe).count();
                    assert_eq!(lane.rank(probe), ahead as u64);
                }
            }
        }
    }

    #[test]
    fn a_lane_starting_at_a_seq_continues_from_it() {
        let mut lane = Lane::starting_at(500);
        assert_eq!(lane.heap_bytes(), 0);
        assert_eq!(lane.push(9), 500);
        assert_eq!(lane.rank(500), 0);
        assert_eq!(lane.next_seq(), 501);
    }

    /// Re-submission batches of `edges` edges, each sorted by key, arriving one after
    /// the other into one lane: the old owner handed seqs out in arrival order over
    /// every edge, so edge `e` holds the seqs `e, e + edges, ...`; `arrivals` players
    /// joined the new owner first (after its seq floor, so behind every batch). Returns
    /// the lane.
    fn interleaved_batches(edges: u64, keys_per_edge: u64, arrivals: u64) -> Lane {
        let mut lane = Lane::default();
        lane.raise_floor(1 << 32);
        for user in 0..arrivals {
            lane.push(user);
        }
        for edge in 0..edges {
            for i in 0..keys_per_edge {
                let seq = i * edges + edge;
                assert!(lane.insert_at(seq, seq + 1_000_000));
            }
        }
        lane
    }

    /// Interleaved batches end in seq order, every place found and ranked exactly.
    #[test]
    fn interleaved_resubmission_batches_keep_seq_order() {
        for arrivals in [0, 1_000] {
            let lane = interleaved_batches(3, 2_000, arrivals);
            lane.check();
            assert_eq!(lane.len() as u64, 6_000 + arrivals);
            for (i, (seq, user)) in lane.iter().enumerate().take(6_000) {
                assert_eq!((seq, user), (i as u64, i as u64 + 1_000_000));
                assert_eq!(lane.rank(seq), i as u64);
            }
            assert_eq!(lane.rank(1 << 32), 6_000);
        }
    }

    /// Measurement (no assertion on time): `RESUBMIT_EDGES=3 RESUBMIT_KEYS=100000
    /// [RESUBMIT_ARRIVALS=1000] cargo test --release --lib interleaved_resubmission_cost
    /// -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn interleaved_resubmission_cost() {
        let env = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let (edges, keys) = (env("RESUBMIT_EDGES", 3), env("RESUBMIT_KEYS", 100_000));
        let arrivals = env("RESUBMIT_ARRIVALS", 0);
        let started = std::time::Instant::now();
        let lane = interleaved_batches(edges, keys, arrivals);
        let took = started.elapsed();
        assert_eq!(lane.len() as u64, edges * keys + arrivals);
        println!(
            "{edges} batches x {keys} keys interleaved, {arrivals} arrivals behind: {:.3} s \
             ({:.0} ns a key)",
            took.as_secs_f64(),
            took.as_nanos() as f64 / (edges * keys) as f64
        );
    }

    /// Re-submissions in any order (interleaved sorted batches, clustered runs between
    /// two neighbours, before the head, around dead slots) mixed with pushes and
    /// removals, against a sorted map: order, ranks, lookups and the invariants hold.
    #[test]
    fn insert_at_anywhere_matches_a_map() {
        for seed in [7u64, 8, 9, 0xfeed] {
            let mut rng = Rng::new(seed);
            let mut lane = Lane::default();
            let mut model = std::collections::BTreeMap::new();
            for step in 0..30_000u64 {
                let r = rng.next() % 20;
                if r < 3 {
                    let seq = lane.push(step);
                    model.insert(seq, step);
                } else if r < 5 {
                    let probe = rng.next() % (lane.next_seq() + 1);
                    if let Some((&seq, _)) = model.range(probe..).next() {
                        assert_eq!(lane.remove(seq), model.remove(&seq));
                    }
                } else {
                    // Mostly clustered near a few spots, sometimes anywhere.
                    let spread = if r < 15 { 50 } else { lane.next_seq() + 10 };
                    let spot = [1000, 5000, 20_000][(rng.next() % 3) as usize];
                    let seq = if r < 15 {
                        spot + rng.next() % spread
                    } else {
                        rng.next() % spread
                    };
                    let taken = model.contains_key(&seq);
                    assert_eq!(lane.insert_at(seq, step), !taken, "step {step} seq {seq}");
                    model.entry(seq).or_insert(step);
                }
                assert_eq!(lane.len(), model.len());
                if step % 499 == 0 {
                    lane.check();
                    let listed: Vec<(u64, UserId)> = lane.iter().collect();
                    let expected: Vec<(u64, UserId)> =
                        model.iter().map(|(&s, &u)| (s, u)).collect();
                    assert_eq!(listed, expected, "seed {seed} step {step}");
                    for (i, (&seq, &user)) in model.iter().enumerate().step_by(7) {
                        assert_eq!(lane.rank(seq), i as u64, "seed {seed} step {step}");
                        assert_eq!(lane.get(seq), Some(user));
                    }
                }
            }
            lane.check();
        }
    }
}
