//! Errors of the cluster layer, and the deadline every etcd call runs under.
//!
//! Invariants: every etcd call of this module goes through [`within`] (no call without a
//! deadline); an etcd error is carried as text, never mistaken for an answer.

use std::fmt;
use std::future::Future;
use std::time::Duration;

/// Deadline of a used-token etcd call (grant or txn), ms.
pub const TOKEN_OP_MS: u64 = 2000;

/// What went wrong in the cluster layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterError {
    /// etcd answered with an error, or the connection failed.
    Etcd(String),
    /// etcd did not answer in time.
    Timeout,
    /// The cluster thread has stopped.
    Stopped,
    /// Too many pending requests to the cluster thread.
    Busy,
    /// A jti that is empty or longer than `used_tokens::JTI_BYTES_MAX`.
    InvalidJti,
    /// More than `fence::QUEUES_MAX` queues tracked.
    QueueTableFull,
    /// The cluster thread could not start.
    Start(String),
    /// Another live lease holds this node id (two processes with one `node_id`, or a
    /// restart within the TTL of a kill -9): the node waits for that lease to go.
    NodeIdInUse,
    /// This node's config differs from a live member's in a setting every node must
    /// share (the text names the member and the keys; see `membership::config_mismatch`).
    ConfigMismatch(String),
    /// This node's lease deadline has passed (etcd has not answered a keep-alive in
    /// time): it is cut off from etcd, and calls are not even tried.
    Fenced,
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterError::Etcd(e) => write!(f, "etcd: {e}"),
            ClusterError::Timeout => write!(f, "etcd did not answer in time"),
            ClusterError::Stopped => write!(f, "the cluster thread has stopped"),
            ClusterError::Busy => write!(f, "too many pending cluster requests"),
            ClusterError::InvalidJti => write!(f, "jti must be 1 to 256 bytes"),
            ClusterError::QueueTableFull => write!(f, "too many queues for the cluster table"),
            ClusterError::Start(e) => write!(f, "cluster thread did not start: {e}"),
            ClusterError::NodeIdInUse => write!(f, "node_id is held by another live lease"),
            ClusterError::ConfigMismatch(text) => f.write_str(text),
            ClusterError::Fenced => write!(f, "this node is cut off from etcd (lease lapsed)"),
        }
    }
}

impl std::error::Error for ClusterError {}

impl From<etcd_client::Error> for ClusterError {
    fn from(e: etcd_client::Error) -> Self {
        ClusterError::Etcd(e.to_string())
    }
}

/// Runs an etcd call with a deadline of `ms` milliseconds.
pub async fn within<T, F>(ms: u64, call: F) -> Result<T, ClusterError>
where
    F: Future<Output = Result<T, etcd_client::Error>>,
{
    match tokio::time::timeout(Duration::from_millis(ms), call).await {
        Ok(answer) => answer.map_err(ClusterError::from),
        Err(_) => Err(ClusterError::Timeout),
    }
}

/// [`within`] with the used-token deadline.
pub async fn with_timeout<T, F>(call: F) -> Result<T, ClusterError>
where
    F: Future<Output = Result<T, etcd_client::Error>>,
{
    within(TOKEN_OP_MS, call).await
}
