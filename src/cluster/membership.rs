//! Membership records: `{prefix}/nodes/{node_id}` = JSON [`Member`], attached to the
//! node's lease, so a node that stops renewing drops out of every listing when etcd
//! expires the lease, and a clean stop (revoke) drops it at once.
//!
//! Invariants: one key per node id; the value is written only by that node; a value
//! that does not parse is skipped by readers (a newer node may add fields, which serde
//! ignores), never fatal.

use serde::{Deserialize, Serialize};

/// One live node, as registered in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Unique node name (`cluster.node_id`).
    pub node_id: String,
    /// Where players and nodes reach its player port.
    pub advertise_player: String,
    /// Where nodes and operators reach its control port.
    pub advertise_control: String,
    /// Where nodes dial its node link (`cluster.advertise_link`; empty from a node
    /// that has none).
    #[serde(default)]
    pub advertise_link: String,
    /// Wall-clock start of the node, Unix milliseconds (for operators; never compared).
    pub started_at_unix_ms: u64,
}

/// `{prefix}/nodes/{node_id}`.
pub fn node_key(prefix: &str, node_id: &str) -> String {
    format!("{prefix}/nodes/{node_id}")
}

/// The prefix of every node key.
pub fn nodes_prefix(prefix: &str) -> String {
    format!("{prefix}/nodes/")
}

impl Member {
    /// The JSON value stored in etcd.
    pub fn to_json(&self) -> String {
        sonic_rs::to_string(self).unwrap_or_default()
    }

    /// Parses a stored value; None when it is not a member record.
    pub fn from_json(bytes: &[u8]) -> Option<Member> {
        sonic_rs::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_skips_garbage() {
        let m = Member {
            node_id: "a".into(),
            advertise_player: "h:1".into(),
            advertise_control: "h:2".into(),
            advertise_link: "h:3".into(),
            started_at_unix_ms: 5,
        };
        assert_eq!(Member::from_json(m.to_json().as_bytes()), Some(m));
        assert_eq!(Member::from_json(b"{"), None);
    }
}
