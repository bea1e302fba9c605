//! What goes into the state machine and what comes out: [`Op`] (one serializable
//! state change), [`Event`] (what an op did to the outside world), [`Applied`] (its
//! direct result), the refusal texts, and the static [`Limits`].
//!
//! Invariants:
//! - a leaf: imports nothing of `state`, so every part of the machine can name these;
//! - `Op` is the unit of the write-ahead log: adding a variant needs a new codec tag
//!   (`codec`), never a changed one.

use serde::{Deserialize, Serialize};

use crate::msg::{ConnRef, JoinError, KickReason, PlaceKey, QueueId, UserId};

/// Why a `SetRate` is refused (names the field; the bound is `RATE_MAX_PER_S`).
pub const RATE_INVALID: &str = "per_second must be a finite number in 0..=1000000";
/// Why a `SetCapacity` is refused for its `online` (the bound is `CAPACITY_MAX`).
pub const ONLINE_INVALID: &str = "online must be at most 1000000000";
/// Why a `SetCapacity` is refused for its `capacity` (the bound is `CAPACITY_MAX`).
pub const CAPACITY_INVALID: &str = "capacity must be at most 1000000000";

/// One state change. Serializable so a log of them can rebuild the state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// A player logs in to a queue (joins, or resumes its place).
    Join {
        /// Queue name (auto-created when allowed).
        queue: String,
        /// The player.
        user: UserId,
        /// Priority lane (ticket claim).
        prio: bool,
        /// The connection now holding the place.
        conn: ConnRef,
    },
    /// The connection closed without `leave`: the place enters reconnect grace.
    Disconnect {
        /// Queue.
        queue: QueueId,
        /// Player.
        user: UserId,
        /// The connection that closed (ignored if it no longer holds the place).
        conn: ConnRef,
    },
    /// The player gives up the place, or the unused admission whose token was only
    /// pushed to it.
    Leave {
        /// Queue.
        queue: QueueId,
        /// Player.
        user: UserId,
        /// The connection that sent `leave` (ignored if it no longer holds the place or
        /// the admission).
        conn: ConnRef,
    },
    /// Admit up to `count` players from the head now (manual admission, whose answer
    /// returns the tokens: a later `leave` does not void them).
    Admit {
        /// Queue.
        queue: QueueId,
        /// Most players.
        count: u64,
    },
    /// Set the automatic admission rate.
    SetRate {
        /// Queue.
        queue: QueueId,
        /// Players per second, 0 = manual only.
        per_second: f64,
    },
    /// The login server reports its load.
    SetCapacity {
        /// Queue.
        queue: QueueId,
        /// Players online at the login server.
        online: u64,
        /// Players it can hold.
        capacity: u64,
    },
    /// Pause or resume automatic admission.
    Pause {
        /// Queue.
        queue: QueueId,
        /// Paused after this op.
        paused: bool,
    },
    /// A token was presented to `/v1/tokens/verify`: consume its `jti` once.
    ConsumeJti {
        /// The `jti`.
        jti: String,
        /// Its `exp`, unix seconds.
        exp: u64,
    },
    /// Housekeeping: automatic admission, grace and grant expiry.
    Tick,
    /// An empty auto-created queue is removed (the core decides when, from
    /// `queues.auto_expire_secs`; see
    /// [`QueueState::next_expiry`](super::QueueState::next_expiry)).
    ExpireQueue {
        /// Queue.
        queue: QueueId,
    },
    /// The server restarted from its log: every place lost its connection and keeps
    /// its position for a fresh reconnect grace period from now.
    Restart,
    /// An operator removes the player (`DELETE /v1/queues/{q}/players/{user_id}`): its
    /// place (waiting or in grace) departs, or its unused admission is voided (even one
    /// whose token an HTTP `admit` returned); the connection holding it is kicked
    /// `removed`.
    Remove {
        /// Queue.
        queue: QueueId,
        /// Player.
        user: UserId,
    },
    /// After a failover, a surviving edge node puts back a place its session held at
    /// the previous owner, at the place's old key, so the order across all surviving
    /// nodes is kept (design: `docs/cluster.md`). Newest connection wins as for a join.
    Resubmit {
        /// Queue name (auto-created when allowed).
        queue: String,
        /// The player.
        user: UserId,
        /// The place's key at the previous owner (the lane is its top bit).
        key: PlaceKey,
        /// The connection (edge link session) now holding the place.
        conn: ConnRef,
    },
    /// This node took `queue` at a new ownership epoch: every later seq of both lanes
    /// is at least `floor` (`epoch << 32`), so new arrivals sort after every place an
    /// earlier owner handed out, re-submitted late or not.
    SeqFloor {
        /// Queue.
        queue: QueueId,
        /// Least seq handed out from now on.
        floor: u64,
    },
}

/// What an op did to the outside world; the core thread routes these.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A place left its queue (admitted, left, grace expired).
    Departed {
        /// Queue.
        queue: QueueId,
        /// The place's key.
        key: PlaceKey,
    },
    /// A place was inserted ahead of existing ones (priority lane).
    Inserted {
        /// Queue.
        queue: QueueId,
        /// The place's key.
        key: PlaceKey,
    },
    /// A player was admitted; the core signs its token.
    Admitted {
        /// Queue.
        queue: QueueId,
        /// Player.
        user: UserId,
        /// Its connection, if connected.
        conn: Option<ConnRef>,
        /// Grant number, unique for this state's lifetime.
        jti: u64,
        /// Issued at, unix seconds.
        iat: u64,
        /// Expires at, unix seconds.
        exp: u64,
    },
    /// A player's reconnect grace ran out (its place departed too: `Departed`); for
    /// its journal.
    GraceExpired {
        /// Queue.
        queue: QueueId,
        /// Player.
        user: UserId,
    },
    /// Close this connection with a `kicked` push.
    Kick {
        /// Queue of the player kicked.
        queue: QueueId,
        /// The player kicked (for its journal).
        user: UserId,
        /// Connection.
        conn: ConnRef,
        /// Reason.
        reason: KickReason,
    },
}

/// The direct result of one op.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Done, nothing to report.
    Ok,
    /// `Join` succeeded.
    Joined {
        /// The queue joined.
        queue: QueueId,
        /// The user already held a place or an unused grant.
        resumed: bool,
    },
    /// `Join` failed.
    JoinFailed(JoinError),
    /// `ConsumeJti`: true when consumed now, false when used before.
    Consumed(bool),
    /// The op names a queue that does not exist.
    UnknownQueue,
    /// The op's values cannot be used.
    Invalid(&'static str),
    /// `Remove`: what the player held (`waiting`, `grace`, `admitted`), or `None` when
    /// it held nothing (nothing changed).
    Removed(Option<&'static str>),
}

/// Static limits the state machine enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Milliseconds a disconnected player keeps the place.
    pub reconnect_grace_ms: u64,
    /// Admission token lifetime, seconds.
    pub token_ttl_secs: u64,
    /// Create unknown queues on join.
    pub auto_create: bool,
    /// `max_waiting` of auto-created queues.
    pub auto_max_waiting: u64,
    /// Most queues in all: auto-creation stops there (a stranger inventing queue
    /// names must not grow the server without bound).
    pub max_queues: usize,
    /// Milliseconds an auto-created queue stays empty before it expires; 0 = never.
    pub auto_expire_ms: u64,
}

impl Limits {
    /// The limits `config` sets.
    pub fn from_config(config: &crate::config::Config) -> Limits {
        Limits {
            reconnect_grace_ms: config.server.reconnect_grace_secs * 1000,
            token_ttl_secs: config.tokens.ttl_secs,
            auto_create: config.queues.auto_create,
            auto_max_waiting: config.queues.max_waiting,
            max_queues: config.queues.max_queues,
            auto_expire_ms: config.queues.auto_expire_secs * 1000,
        }
    }
}
