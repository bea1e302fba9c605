//! The answer to `GET /v1/users/{user_id}` as it crosses from the queue core to the
//! control thread ([`super::ControlReply::User`]): the state machine's view of a
//! player, position counters and the journal's events, in their JSON shape. The core
//! fills it (`queue::core::control`, `queue::journal` renders each event).
//!
//! Invariants:
//! - a leaf: imports nothing of the crate (ids are spelled as their primitive types),
//!   so `msg` needs no import of the queue modules that import it;
//! - field names and the omitted `None`s are the API's JSON (docs/protocol.md section 4).

use serde::Serialize;

/// `GET /v1/users/{user_id}`: the answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserReport {
    /// The player (a `UserId`).
    pub user_id: u64,
    /// The queue asked about.
    pub queue: String,
    /// `waiting`, `grace`, `admitted` or `unknown`.
    pub state: &'static str,
    /// Position (waiting, grace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// `priority` or `normal` (waiting, grace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lane: Option<&'static str>,
    /// End of reconnect grace, unix ms (grace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_until_ms: Option<u64>,
    /// The admission token's `jti` (admitted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The token was verified (admitted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used: Option<bool>,
    /// Position answers and pushes, as of the last session report.
    pub positions: PositionCounts,
    /// The last events, oldest first.
    pub events: Vec<EventOut>,
    /// Older events dropped from the ring.
    pub events_dropped: u64,
}

/// Counters of positions a player was told.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PositionCounts {
    /// `position` requests answered.
    pub answered: u64,
    /// `position` pushes sent.
    pub pushed: u64,
    /// Last value answered or pushed (0: none).
    pub last: u64,
    /// When a session last reported (its disconnect), unix ms; 0 = never: counts of a
    /// connected session arrive when it ends.
    pub as_of_ms: u64,
}

/// One event in a [`UserReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventOut {
    /// When, unix ms.
    pub at_ms: u64,
    /// `connected`, `logged_in`, `resumed`, `refused`, `disconnected`,
    /// `grace_expired`, `kicked`, `admitted`, `token_verified`, `left`, `removed`.
    pub event: &'static str,
    /// Peer address (`connected`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// io loop (`connected`; a `LoopId`).
    #[serde(rename = "loop", skip_serializing_if = "Option::is_none")]
    pub loop_id: Option<u16>,
    /// Position answered (`logged_in`, `resumed`; 0 = resumed an admission).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// Lane (`logged_in`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lane: Option<&'static str>,
    /// Kick reason (`kicked`, `disconnected` after a loop's kick).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Error code (`refused`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    /// Token `jti` (`admitted`, `token_verified`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// What was removed (`removed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<&'static str>,
}
