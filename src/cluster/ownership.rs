//! Who should own a queue: rendezvous (highest-random-weight) hashing of the queue name
//! over the live members, and the etcd key that records the actual owner.
//!
//! Who tries first: the queue's last owner when it is a live member (it still holds the
//! queue's places), else the rendezvous choice. The hash only decides which node *tries
//! first*; etcd decides who owns (a put-if-absent
//! on `{prefix}/owners/{queue}` attached to the owner's lease). So nodes that briefly
//! disagree on the member set cost a short delay, never two owners.
//!
//! Invariants: the weight is a fixed function of the bytes (FNV-1a then a SplitMix64
//! finalizer), identical across builds, platforms and processes; it never uses the
//! std hasher, whose algorithm may change between Rust releases.

/// `{prefix}/owners/{queue}`: value = owner node id, attached to the owner's lease.
pub fn owner_key(prefix: &str, queue: &str) -> String {
    format!("{prefix}/owners/{queue}")
}

/// `{prefix}/last_owner/{queue}`: value = the node that won the latest campaign, with
/// no lease (it outlives its owner). After an etcd outage cost every lease, the last
/// owner, which still holds the queue's players in memory, gets the queue back first.
pub fn last_owner_key(prefix: &str, queue: &str) -> String {
    format!("{prefix}/last_owner/{queue}")
}

/// The prefix of every last-owner key.
pub fn last_owners_prefix(prefix: &str) -> String {
    format!("{prefix}/last_owner/")
}

/// The prefix of every owner key.
pub fn owners_prefix(prefix: &str) -> String {
    format!("{prefix}/owners/")
}

/// Rendezvous weight of `node` for `queue`.
pub fn weight(node: &str, queue: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut h = OFFSET;
    // 0xff never occurs in UTF-8, so ("ab","c") and ("a","bc") hash apart.
    for b in node.bytes().chain([0xff]).chain(queue.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    // SplitMix64 finalizer: spreads FNV's weak low bits over the whole word.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The member that should own `queue`: highest weight, ties broken by the larger id.
pub fn preferred_owner<'a, I>(queue: &str, nodes: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    nodes
        .into_iter()
        .max_by_key(|node| (weight(node, queue), *node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_is_fixed() {
        // A change here re-homes every new queue in a mixed-version cluster: keep it.
        assert_eq!(weight("a", "q"), weight("a", "q"));
        assert_ne!(weight("ab", "c"), weight("a", "bc"));
    }

    #[test]
    fn queues_spread_and_survive_a_removal() {
        let nodes = ["n1", "n2", "n3"];
        let mut counts = [0usize; 3];
        let mut moved = 0;
        for q in 0..3000 {
            let q = format!("world-{q}");
            let owner = preferred_owner(&q, nodes).unwrap();
            counts[nodes.iter().position(|n| *n == owner).unwrap()] += 1;
            let without_n3 = preferred_owner(&q, ["n1", "n2"]).unwrap();
            if owner != "n3" && without_n3 != owner {
                moved += 1;
            }
        }
        // Each node gets a fair share; removing n3 moves only n3's queues.
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
        assert_eq!(moved, 0);
    }

    #[test]
    fn no_members_no_owner() {
        assert_eq!(preferred_owner("q", []), None);
    }
}
