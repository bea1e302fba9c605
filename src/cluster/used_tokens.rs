//! Used tokens, cluster-wide: `{prefix}/used/{jti}` is created once (put-if-absent in a
//! Txn), so `consume` answers true exactly once per jti across every node, for as long as
//! the token could still verify.
//!
//! Lifetime: the key is attached to a lease shared by every token whose expiry falls in
//! the same [`BUCKET_SECS`] bucket (one lease per bucket per node, not one per token).
//! The lease TTL is `bucket end + SLACK_SECS - now`, so the key outlives the token: a key
//! that vanished before the token expired would let it be used twice. `SLACK_SECS`
//! covers wall-clock skew between the node that wrote the key and the one verifying.
//!
//! Invariants: a token already expired is never recorded and `consume` answers false
//! (it would not verify anyway); an etcd error is an error, never "unused".

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::error::{with_timeout, ClusterError};

/// Width of an expiry bucket, seconds: tokens expiring in the same minute share a lease.
pub const BUCKET_SECS: u64 = 60;
/// Extra life of every used-token key past the end of its bucket, seconds (clock skew).
pub const SLACK_SECS: u64 = 60;
/// Longest jti accepted as a key component, bytes.
pub const JTI_BYTES_MAX: usize = 256;

/// Wall-clock Unix seconds.
pub fn unix_now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `{prefix}/used/{jti}`.
pub fn used_key(prefix: &str, jti: &str) -> String {
    format!("{prefix}/used/{jti}")
}

/// The per-bucket leases this node granted: bucket number -> lease id.
#[derive(Debug, Default)]
pub struct BucketLeases {
    /// Never held across an await.
    leases: Mutex<HashMap<u64, i64>>,
}

impl BucketLeases {
    fn get(&self, bucket: u64) -> Option<i64> {
        self.lock().get(&bucket).copied()
    }

    fn insert(&self, bucket: u64, lease: i64, now_secs: u64) {
        let mut map = self.lock();
        // Buckets whose lease has run out are of no use: forget them.
        map.retain(|b, _| (b + 1) * BUCKET_SECS + SLACK_SECS > now_secs);
        map.insert(bucket, lease);
    }

    fn forget(&self, bucket: u64) {
        self.lock().remove(&bucket);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, i64>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Marks `jti` (expiring at `expires_at_unix_secs`) used; true only the first time.
pub async fn consume(
    client: &mut Client,
    leases: &BucketLeases,
    prefix: &str,
    node_id: &str,
    jti: &str,
    expires_at_unix_secs: u64,
) -> Result<bool, ClusterError> {
    if jti.is_empty() || jti.len() > JTI_BYTES_MAX {
        return Err(ClusterError::InvalidJti);
    }
    let now = unix_now_secs();
    if expires_at_unix_secs <= now {
        return Ok(false);
    }
    let bucket = expires_at_unix_secs / BUCKET_SECS;
    let key = used_key(prefix, jti);
    // Twice at most: a cached lease may have been lost (etcd restored from an old
    // snapshot, or revoked by an operator); then grant a fresh one and retry once.
    for _ in 0..2 {
        let lease = match leases.get(bucket) {
            Some(lease) => lease,
            None => {
                let ttl = (bucket + 1) * BUCKET_SECS + SLACK_SECS - now;
                let granted = with_timeout(client.lease_grant(ttl as i64, None)).await?;
                leases.insert(bucket, granted.id(), now);
                granted.id()
            }
        };
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                node_id,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        match with_timeout(client.txn(txn)).await {
            Ok(response) => return Ok(response.succeeded()),
            Err(ClusterError::Etcd(message)) if message.contains("lease not found") => {
                leases.forget(bucket);
            }
            Err(e) => return Err(e),
        }
    }
    Err(ClusterError::Etcd("used-token lease lost twice".into()))
}
