//! The JSON shapes of the control API's answers (docs/protocol.md section 3), built from
//! the core's plain values.
//!
//! Invariants: field names are exactly the contract's; numbers are finite (JSON has no
//! NaN or infinity); `/v1/stats` lists queues sorted by name.

use std::collections::BTreeMap;

use serde::Serialize;

use super::ControlContext;
use crate::msg::{eta_secs, AdmittedUser, QueueStats};
use crate::stats::history::Sample;
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

/// One queue in the `stats` answer. The first five fields are the contract's; the rest
/// are additions (the dashboard's and operators' figures).
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
    /// Of `waiting`, in the normal lane.
    waiting_normal: u64,
    /// Of `waiting`, in the priority lane.
    waiting_priority: u64,
    /// Configured automatic admission rate, players/s (0 = manual only).
    target_rate_per_s: f64,
    /// Admission tokens issued, not yet used, not expired.
    unused_tokens: u64,
    /// Players online at the login server, as last reported (null: no report).
    online: Option<u64>,
    /// Players the login server can hold, as last reported (null: no report).
    capacity: Option<u64>,
    /// Estimated wait of the last player in line, seconds, at the measured rate (null
    /// while that rate is 0 or nobody waits).
    eta_last_secs: Option<u64>,
    /// The last hour, one sample a minute, oldest first (not in the dashboard's
    /// events, which carry the server's history only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) history: Option<Vec<Sample>>,
}

/// One io loop in the `stats` answer (an addition to the contract).
#[derive(Serialize)]
pub(super) struct LoopOut {
    /// Open player connections.
    connections: u64,
    /// Connections accepted since start.
    accepted: u64,
    /// Successful logins since start.
    logins: u64,
    /// Frames read since start.
    frames_in: u64,
    /// Frames written since start.
    frames_out: u64,
    /// Pushes sent since start.
    pushes: u64,
    /// Error answers since start.
    errors: u64,
    /// Logins per second over the last interval (dashboard events only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) logins_per_s: Option<f64>,
    /// Frames read per second over the last interval (dashboard events only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) frames_in_per_s: Option<f64>,
    /// Frames written per second over the last interval (dashboard events only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) frames_out_per_s: Option<f64>,
}

/// The `stats` answer. `queues`, `connections` and `cores` are the contract's; the
/// rest are additions.
#[derive(Serialize)]
pub(super) struct StatsOut<'a> {
    /// Per queue, by name (sorted).
    pub(super) queues: BTreeMap<&'a str, QueueOut>,
    /// Open player connections over all loops.
    connections: u64,
    /// Number of io loops.
    cores: usize,
    /// The server's version.
    version: &'static str,
    /// Seconds since the server started.
    uptime_secs: u64,
    /// The server drains (stops).
    draining: bool,
    /// `"off"` (no write-ahead log), `"ok"` or `"degraded"` (the log failed).
    durability: &'static str,
    /// Messages waiting in the core's inbox.
    core_inbox_depth: u64,
    /// Per io loop, by index.
    pub(super) loops: Vec<LoopOut>,
    /// The whole server's last hour, one sample a minute, oldest first.
    pub(super) history: Vec<Sample>,
    /// This node's view of the cluster (cluster mode only; absent on one node).
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<super::cluster::ClusterOut>,
}

/// A finite rate (JSON has no NaN or infinity).
fn finite(rate: f64) -> f64 {
    if rate.is_finite() {
        rate
    } else {
        0.0
    }
}

/// The `stats` answer for these queues and the context's counters; per-queue history
/// is filled in by the caller.
pub(super) fn stats<'a>(ctx: &ControlContext, queues: &'a [QueueStats]) -> StatsOut<'a> {
    let durability = match &ctx.durability {
        None => "off",
        Some(_) if ctx.degraded() => "degraded",
        Some(_) => "ok",
    };
    StatsOut {
        queues: queues
            .iter()
            .map(|q| {
                let rate = finite(q.admit_rate_per_s);
                let out = QueueOut {
                    waiting: q.waiting,
                    admitted_total: q.admitted_total,
                    left_total: q.left_total,
                    admit_rate_per_s: rate,
                    paused: q.paused,
                    waiting_normal: q.waiting.saturating_sub(q.waiting_priority),
                    waiting_priority: q.waiting_priority,
                    target_rate_per_s: finite(q.target_rate_per_s),
                    unused_tokens: q.unused_tokens,
                    online: q.capacity.map(|c| c.0),
                    capacity: q.capacity.map(|c| c.1),
                    eta_last_secs: (q.waiting > 0).then(|| eta_secs(q.waiting, rate)).flatten(),
                    history: None,
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
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: ctx.server_stats.started.elapsed().as_secs(),
        draining: ctx.is_draining(),
        durability,
        core_inbox_depth: ctx.core.len() as u64,
        loops: ctx
            .loops
            .iter()
            .map(|l| LoopOut {
                connections: LoopStats::get(&l.connections),
                accepted: LoopStats::get(&l.accepted),
                logins: LoopStats::get(&l.logins),
                frames_in: LoopStats::get(&l.frames_in),
                frames_out: LoopStats::get(&l.frames_out),
                pushes: LoopStats::get(&l.pushes),
                errors: LoopStats::get(&l.errors),
                logins_per_s: None,
                frames_in_per_s: None,
                frames_out_per_s: None,
            })
            .collect(),
        history: ctx.server_stats.history.server(),
        cluster: ctx
            .cluster
            .as_ref()
            .map(|c| super::cluster::section(c, queues)),
    }
}
