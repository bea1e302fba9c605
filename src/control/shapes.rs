//! The JSON shapes of the control API's answers (PROTOCOL.md section 3), built from
//! the core's plain values.
//!
//! Invariants: field names are exactly the contract's; numbers are finite (JSON has no
//! NaN or infinity); `/v1/stats` lists queues sorted by name.

use std::collections::BTreeMap;

use serde::Serialize;

use super::ControlContext;
use crate::msg::{AdmittedUser, QueueStats};
use crate::stats::LoopStats;

/// One entry of the `admit` answer.
#[derive(Serialize)]
pub(super) struct AdmittedOut<'a> {
    /// The admitted player.
    user_id: u64,
    /// The player's admission token.
    token: &'a str,
    /// Token expiry, unix seconds.
    expires_at: u64,
}

/// The `admit` answer.
#[derive(Serialize)]
pub(super) struct AdmitOut<'a> {
    /// Players admitted, in admission order.
    admitted: Vec<AdmittedOut<'a>>,
}

/// The `admit` answer for these players.
pub(super) fn admitted(users: &[AdmittedUser]) -> AdmitOut<'_> {
    AdmitOut {
        admitted: users
            .iter()
            .map(|u| AdmittedOut {
                user_id: u.user,
                token: &u.token,
                expires_at: u.expires_at,
            })
            .collect(),
    }
}

/// The answer of `rate`, `capacity`, `pause`, `resume`.
#[derive(Serialize)]
pub(super) struct DoneOut {
    /// Always true: the core applied the request.
    pub(super) ok: bool,
}

/// The `tokens/verify` answer.
#[derive(Serialize)]
pub(super) struct VerifyOut<'a> {
    /// Signature, expiry, issuer good and `jti` not used before.
    pub(super) valid: bool,
    /// The token's player, when valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) user_id: Option<u64>,
    /// The token's queue, when valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) queue: Option<&'a str>,
    /// Why not, when invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) reason: Option<&'a str>,
}

impl<'a> VerifyOut<'a> {
    /// `{"valid": false, "reason": reason}`.
    pub(super) fn invalid(reason: &'a str) -> VerifyOut<'a> {
        VerifyOut {
            valid: false,
            user_id: None,
            queue: None,
            reason: Some(reason),
        }
    }
}

/// One queue in the `stats` answer.
#[derive(Serialize)]
pub(super) struct QueueOut {
    /// Players holding a place.
    waiting: u64,
    /// Players admitted since start.
    admitted_total: u64,
    /// Players who left since start.
    left_total: u64,
    /// Measured admission rate, players/s (finite).
    admit_rate_per_s: f64,
    /// Automatic admission paused.
    paused: bool,
}

/// The `stats` answer.
#[derive(Serialize)]
pub(super) struct StatsOut<'a> {
    /// Per queue, by name (sorted).
    queues: BTreeMap<&'a str, QueueOut>,
    /// Open player connections over all loops.
    connections: u64,
    /// Number of io loops.
    cores: usize,
}

/// The `stats` answer for these queues and the context's loop counters.
pub(super) fn stats<'a>(ctx: &ControlContext, queues: &'a [QueueStats]) -> StatsOut<'a> {
    StatsOut {
        queues: queues
            .iter()
            .map(|q| {
                let rate = q.admit_rate_per_s;
                let out = QueueOut {
                    waiting: q.waiting,
                    admitted_total: q.admitted_total,
                    left_total: q.left_total,
                    // JSON has no NaN or infinity.
                    admit_rate_per_s: if rate.is_finite() { rate } else { 0.0 },
                    paused: q.paused,
                };
                (q.name.as_str(), out)
            })
            .collect(),
        connections: ctx
            .loops
            .iter()
            .map(|l| LoopStats::get(&l.connections))
            .sum(),
        cores: ctx.loops.len(),
    }
}
