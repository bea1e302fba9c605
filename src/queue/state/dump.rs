//! What [`super::QueueState::dump`] returns: a comparable picture of everything a
//! player or login server can observe (tests and tools compare states with it).
//!
//! Invariants:
//! - a leaf: plain data, imports nothing of `state`;
//! - connections and grace deadlines are left out (a restart resets them), so a
//!   replayed state dumps equal to the live one.

use serde::Serialize;

use crate::msg::UserId;

/// What [`QueueState::dump`](super::QueueState::dump) shows: equal dumps mean equal
/// observable state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dump {
    /// Prefix of every `jti` this state issues.
    pub jti_prefix: u64,
    /// Next grant number.
    pub next_jti: u64,
    /// Queues by id.
    pub queues: Vec<QueueDump>,
    /// Unused grants, by (queue, user).
    pub grants: Vec<GrantDump>,
    /// Used `jti`s with their `exp`, sorted.
    pub used: Vec<(String, u64)>,
}

/// One queue in a [`Dump`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueDump {
    /// Name (empty for a reusable tombstone).
    pub name: String,
    /// A tombstone of an expired queue.
    pub expired: bool,
    /// Most players waiting.
    pub max_waiting: u64,
    /// Automatic admission rate.
    pub rate_per_s: f64,
    /// Automatic admission paused.
    pub paused: bool,
    /// Last capacity report: (online, capacity, used since).
    pub capacity: Option<(u64, u64, u64)>,
    /// Players in order: (user, priority lane).
    pub waiting: Vec<(UserId, bool)>,
    /// Players admitted.
    pub admitted_total: u64,
    /// Players who left.
    pub left_total: u64,
    /// Grants neither used nor expired.
    pub unused_grants: u64,
}

/// One unused grant in a [`Dump`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GrantDump {
    /// Queue name.
    pub queue: String,
    /// Player.
    pub user: UserId,
    /// The token's `jti`.
    pub jti: String,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expires at, unix seconds.
    pub exp: u64,
    /// The token was returned by an HTTP `admit` answer (no `leave` voids it).
    pub returned: bool,
}
