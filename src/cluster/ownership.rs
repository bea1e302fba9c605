//! Who should own a queue: rendezvous (highest-random-weight) hashing of the queue name
//! over the live members, the etcd keys that record the actual and the last owner, and
//! the campaign transaction, which also tells whether its win is a takeover (the last
//! owner record named another process: [`is_takeover`]).
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

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse};

/// `{prefix}/owners/{queue}`: value = owner node id, attached to the owner's lease.
pub fn owner_key(prefix: &str, queue: &str) -> String {
    format!("{prefix}/owners/{queue}")
}

/// `{prefix}/last_owner/{queue}`: value = the node that won the latest campaign and
/// its process's incarnation ([`last_owner_value`]), with no lease (it outlives its
/// owner). After an etcd outage cost every lease, the last owner, which still holds the
/// queue's players in memory, gets the queue back first; a campaign won while the last
/// owner was another process (another node, or this node before a restart) is a
/// takeover, whose admission waits out the recovery window.
pub fn last_owner_key(prefix: &str, queue: &str) -> String {
    format!("{prefix}/last_owner/{queue}")
}

/// A last owner record: `"<node_id> <incarnation>"` (decimal; node ids have no space).
pub fn last_owner_value(node_id: &str, incarnation: u64) -> String {
    format!("{node_id} {incarnation}")
}

/// A last owner record's node id and incarnation (`None`: a record of an older build,
/// the bare node id, or an incarnation that does not parse).
pub fn parse_last_owner(value: &str) -> (&str, Option<u64>) {
    match value.split_once(' ') {
        Some((node, incarnation)) => (node, incarnation.parse().ok()),
        None => (value, None),
    }
}

/// True when a campaign won by (`node_id`, `incarnation`) over the last owner record
/// `previous` is a takeover (admission held for the recovery window): any last owner
/// but this very process. No record (a cold start) is none; this process taking its
/// queue back after an etcd outage is none.
pub fn is_takeover(previous: Option<&str>, node_id: &str, incarnation: u64) -> bool {
    previous.is_some_and(|p| parse_last_owner(p) != (node_id, Some(incarnation)))
}

/// The prefix of every last-owner key.
pub fn last_owners_prefix(prefix: &str) -> String {
    format!("{prefix}/last_owner/")
}

/// The prefix of every owner key.
pub fn owners_prefix(prefix: &str) -> String {
    format!("{prefix}/owners/")
}

/// A campaign for `queue` by process (`node_id`, `incarnation`) on `lease`: if the owner
/// key does not exist, put it on the lease, read the last owner record and replace it
/// with this process's (one transaction: the read is the record this win replaced).
pub fn campaign_txn(prefix: &str, queue: &str, node_id: &str, incarnation: u64, lease: i64) -> Txn {
    let key = owner_key(prefix, queue);
    let last = last_owner_key(prefix, queue);
    Txn::new()
        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
        .and_then([
            TxnOp::put(
                key.as_str(),
                node_id,
                Some(PutOptions::new().with_lease(lease)),
            ),
            TxnOp::get(last.as_str(), None),
            TxnOp::put(last.as_str(), last_owner_value(node_id, incarnation), None),
        ])
}

/// The last owner record a won [`campaign_txn`] replaced (`None`: there was none).
pub fn previous_last_owner(answer: TxnResponse) -> Option<String> {
    answer.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(get) => get
            .kvs()
            .first()
            .and_then(|kv| kv.value_str().ok().map(str::to_string)),
        _ => None,
    })
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
    fn a_takeover_is_any_last_owner_but_this_process() {
        let me = last_owner_value("n1", 7);
        assert_eq!(parse_last_owner(&me), ("n1", Some(7)));
        assert_eq!(parse_last_owner("n1"), ("n1", None));
        assert!(!is_takeover(None, "n1", 7), "cold start");
        assert!(
            !is_takeover(Some(&me), "n1", 7),
            "back after an etcd outage"
        );
        assert!(
            is_takeover(Some("n1 8"), "n1", 7),
            "this node before a restart"
        );
        assert!(is_takeover(Some("n1"), "n1", 7), "an older build's record");
        assert!(is_takeover(Some("n2 7"), "n1", 7), "another node");
    }

    #[test]
    fn no_members_no_owner() {
        assert_eq!(preferred_owner("q", []), None);
    }
}
