//! One tick's reads from etcd: the live members, the owner keys and the last owners,
//! each one range request under the prefix (no watch: a periodic list needs no resume
//! logic after an outage, and costs a node three small ranges per tick).
//!
//! The last listing is kept as a [`View`] for readers off the hot path; a campaign this
//! node wins is written into it at once (`Node::campaign`), so the view never says
//! "no owner" while this node may admit.
//!
//! Invariants: a value that does not parse is skipped, never fatal; this node's own
//! record under a lease other than its current one is not counted as live.

use std::collections::HashMap;

use etcd_client::{Client, GetOptions, GetResponse};

use super::error::{within, ClusterError};
use super::membership::{nodes_prefix, Member};
use super::ownership::{last_owners_prefix, owners_prefix};

/// The owner of a queue as last listed from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The owning node.
    pub node_id: String,
    /// The ownership epoch (the key's create_revision).
    pub epoch: u64,
}

/// The last listing of members and owners (for readers off the hot path).
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Live members, sorted by node id.
    pub members: Vec<Member>,
    /// Queue name -> owner, for every owned queue under the prefix.
    pub owners: HashMap<String, Owner>,
}

/// An owner key as listed, with what is needed to judge it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The owning node.
    pub node_id: String,
    /// The key's create_revision: the ownership epoch.
    pub epoch: u64,
    /// The lease the key is attached to.
    pub lease: i64,
    /// The key's mod_revision (for a delete-if-unchanged).
    pub mod_revision: i64,
}

async fn range(client: &mut Client, op_ms: u64, prefix: &str) -> Result<GetResponse, ClusterError> {
    within(
        op_ms,
        client.get(prefix, Some(GetOptions::new().with_prefix())),
    )
    .await
}

/// Live members sorted by id; `me` counts only under `my_lease`.
pub async fn members(
    client: &mut Client,
    op_ms: u64,
    prefix: &str,
    me: &str,
    my_lease: i64,
) -> Result<Vec<Member>, ClusterError> {
    let answer = range(client, op_ms, &nodes_prefix(prefix)).await?;
    let mut members: Vec<Member> = answer
        .kvs()
        .iter()
        .filter_map(|kv| {
            let member = Member::from_json(kv.value())?;
            // Our record under a dead lease: not us.
            (member.node_id != me || kv.lease() == my_lease).then_some(member)
        })
        .collect();
    members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(members)
}

/// Every owner key under the prefix, by queue name.
pub async fn owners(
    client: &mut Client,
    op_ms: u64,
    prefix: &str,
) -> Result<HashMap<String, Listed>, ClusterError> {
    let owners_prefix = owners_prefix(prefix);
    let answer = range(client, op_ms, &owners_prefix).await?;
    let mut listed = HashMap::new();
    for kv in answer.kvs() {
        let (Ok(key), Ok(node)) = (kv.key_str(), kv.value_str()) else {
            continue;
        };
        let queue = key.strip_prefix(owners_prefix.as_str()).unwrap_or(key);
        let entry = Listed {
            node_id: node.to_string(),
            epoch: kv.create_revision() as u64,
            lease: kv.lease(),
            mod_revision: kv.mod_revision(),
        };
        listed.insert(queue.to_string(), entry);
    }
    Ok(listed)
}

/// Queue -> the node that won its latest campaign (its incarnation left out: see
/// `ownership::last_owner_value`).
pub async fn last_owners(
    client: &mut Client,
    op_ms: u64,
    prefix: &str,
) -> Result<HashMap<String, String>, ClusterError> {
    let last_prefix = last_owners_prefix(prefix);
    let answer = range(client, op_ms, &last_prefix).await?;
    let mut last = HashMap::new();
    for kv in answer.kvs() {
        if let (Ok(key), Ok(node)) = (kv.key_str(), kv.value_str()) {
            let queue = key.strip_prefix(last_prefix.as_str()).unwrap_or(key);
            let (node, _) = super::ownership::parse_last_owner(node);
            last.insert(queue.to_string(), node.to_string());
        }
    }
    Ok(last)
}
