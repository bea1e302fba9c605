//! Messages between the threads: io loops and the control thread talk to the queue
//! core with [`CoreMsg`]; the core answers io loops with [`LoopEvent`] and the control
//! thread with [`ControlReply`].
//!
//! Invariants:
//! - events for one loop travel on one FIFO channel, so a loop sees a [`RankBatch`]
//!   before the join answers and pushes produced in the same core flush;
//! - a [`RankBatch`] is built once per flush and shared by every loop (`Arc`), never one
//!   message per player;
//! - nothing here holds a lock; the only shared state is the `Arc` of a batch.

use std::net::SocketAddr;
use std::sync::Arc;

use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};

pub use self::report::{EventOut, PositionCounts, UserReport};

mod report;

/// Index of an io loop, 0-based.
pub type LoopId = u16;
/// A session's id within its loop: slot index in the low 32 bits, slot generation in
/// the high 32 bits, so an event for a closed session never reaches its slot's next user.
pub type SessionId = u64;
/// Index of a queue in the core's queue table. An id names one queue for as long as a
/// connection or message can hold it: an expired auto-created queue's slot is reused by
/// another name only if it never admitted anyone (see `queue::state`).
pub type QueueId = u32;
/// Bits of a [`QueueId`] that index a core's queue table; the bits above name the
/// core that holds the queue on a node of a cluster: 0 = this node's core, `k + 1` =
/// the owner reached over node link `k` (see [`queue_source`]). One core's queue ids
/// are always below `1 << QUEUE_SOURCE_SHIFT`.
pub const QUEUE_SOURCE_SHIFT: u32 = 24;

/// The core holding `queue`: 0 = this node's core, `k + 1` = node link `k`.
#[inline]
pub fn queue_source(queue: QueueId) -> usize {
    (queue >> QUEUE_SOURCE_SHIFT) as usize
}

/// The id a queue of the core behind node link `link` has on this node (disjoint from
/// local ids and from every other link's); `id` is the owner's own id.
#[inline]
pub fn remote_queue(link: usize, id: QueueId) -> QueueId {
    ((link as QueueId + 1) << QUEUE_SOURCE_SHIFT) | (id & local_queue_mask())
}

/// The queue's id in the core holding it (the source bits cleared).
#[inline]
pub fn local_queue(queue: QueueId) -> QueueId {
    queue & local_queue_mask()
}

const fn local_queue_mask() -> QueueId {
    (1 << QUEUE_SOURCE_SHIFT) - 1
}

/// A player's id, as sent in `login`.
pub type UserId = u64;
/// A place's order key within its queue: priority-lane keys sort before normal-lane
/// keys (see `queue::rank::place_key`), and within a lane by arrival.
pub type PlaceKey = u64;

/// Which connection a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConnRef {
    /// The loop owning the connection.
    pub loop_id: LoopId,
    /// The session within that loop.
    pub session: SessionId,
}

/// Why a connection is kicked (the `reason` of a `kicked` push).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickReason {
    /// Another connection logged in as the same user.
    DuplicateLogin,
    /// No frame from the client for `idle_timeout_secs`.
    IdleTimeout,
    /// The client does not read what it is sent.
    SlowConsumer,
    /// The server is stopping.
    Shutdown,
    /// An operator removed the player.
    Removed,
}

impl KickReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            KickReason::DuplicateLogin => "duplicate_login",
            KickReason::IdleTimeout => "idle_timeout",
            KickReason::SlowConsumer => "slow_consumer",
            KickReason::Shutdown => "shutdown",
            KickReason::Removed => "removed",
        }
    }
}

/// A queue name as a loop hands it to the core: held inline up to
/// [`QueueName::INLINE_BYTES`] bytes (every usual name), boxed past that, so a `login`
/// costs no allocation for it.
#[derive(Debug, Clone)]
pub enum QueueName {
    /// Short name, stored in place.
    Inline {
        /// Bytes used in `bytes`.
        len: u8,
        /// The name's UTF-8 bytes, then zeros.
        bytes: [u8; QueueName::INLINE_BYTES],
    },
    /// Longer name.
    Heap(Box<str>),
}

impl QueueName {
    /// Longest name held inline (keeps the type at 32 bytes, as `Box<str>` plus tag).
    pub const INLINE_BYTES: usize = 30;

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        match self {
            // Built from a `&str` only (`From`), cut at a length it had: valid UTF-8.
            QueueName::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..*len as usize]).unwrap_or_default()
            }
            QueueName::Heap(name) => name,
        }
    }
}

impl From<&str> for QueueName {
    fn from(name: &str) -> QueueName {
        if name.len() <= QueueName::INLINE_BYTES {
            let mut bytes = [0u8; QueueName::INLINE_BYTES];
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            QueueName::Inline {
                len: name.len() as u8,
                bytes,
            }
        } else {
            QueueName::Heap(name.into())
        }
    }
}

/// Into the queue core.
#[derive(Debug)]
pub enum CoreMsg {
    /// A `login` that passed ticket checks on its loop.
    Join {
        /// The connection logging in.
        conn: ConnRef,
        /// Request `seq`, echoed in the answer.
        seq: u32,
        /// The player.
        user: UserId,
        /// Queue name from the request (inline when short: no allocation per login).
        queue: QueueName,
        /// Ticket asked for the priority lane.
        prio: bool,
        /// The client's address (for the player's journal; `Copy`, no allocation).
        peer: SocketAddr,
        /// Cluster mode: the key of a verified place ticket the login presented, to be
        /// put back at that key if the owner honors it (`queue::core::claim`); `None`
        /// without a ticket (always on one node).
        claim: Option<PlaceKey>,
    },
    /// After a failover, a surviving edge puts back a place its session held at the
    /// previous owner, at the same key (cluster mode; from a node link only). Answered
    /// like a [`CoreMsg::Join`], with `seq` 0.
    Resubmit {
        /// The (link) session holding the place.
        conn: ConnRef,
        /// The player.
        user: UserId,
        /// Queue name.
        queue: QueueName,
        /// The place's key at the previous owner.
        key: PlaceKey,
        /// The queue's admitted marks [normal, priority] as the edge last saw them in
        /// the previous owner's rank batches (0 = none): the new owner refuses place
        /// tickets at or below them (`queue::core::claim`).
        admitted: [PlaceKey; 2],
    },
    /// The connection of a logged-in player closed (not a `leave`): grace starts.
    Disconnect {
        /// The closed connection.
        conn: ConnRef,
        /// Its queue.
        queue: QueueId,
        /// Its player.
        user: UserId,
        /// What the session saw, for the player's journal.
        report: SessionReport,
    },
    /// The player gave up the place (`leave`).
    Leave {
        /// The connection that sent `leave`.
        conn: ConnRef,
        /// Its queue.
        queue: QueueId,
        /// Its player.
        user: UserId,
    },
    /// A control API request; the answer goes to `reply`.
    Control(ControlReq, Sender<ControlReply>),
    /// A node link connected: from now on the core answers `loop_id` (a virtual loop
    /// above the io loops) on `events`, ringing `bell` once per flush, like an io loop.
    AttachLoop {
        /// The virtual loop's id (unused by any loop so far).
        loop_id: LoopId,
        /// Its event channel (bounded).
        events: Sender<LoopEvent>,
        /// Wakes the link's writer.
        bell: crate::doorbell::Bell,
    },
    /// A node link closed: the core sends nothing more to virtual loop `loop_id`, and
    /// the places its sessions held go into reconnect grace (as if each disconnected),
    /// so players who reconnect within the grace resume.
    DetachLoop {
        /// The virtual loop's id.
        loop_id: LoopId,
    },
    /// Stop: the core flushes and its thread returns.
    Shutdown,
}

/// What a session tells the core when it ends (the journal's loop-side facts; kept in
/// the session as plain counters, sent once, so there is no message per frame).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionReport {
    /// `position` requests answered.
    pub answered: u32,
    /// `position` pushes sent.
    pub pushed: u32,
    /// Last position answered or pushed (0: none).
    pub last_position: u64,
    /// Why the loop kicked the session itself (idle, slow consumer, shutdown), if it did.
    pub kicked: Option<KickReason>,
}

/// A control API request the core answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlReq {
    /// `POST /v1/queues/{q}/admit`.
    Admit {
        /// Queue name.
        queue: String,
        /// Most players to admit.
        count: u64,
    },
    /// `PUT /v1/queues/{q}/rate`.
    SetRate {
        /// Queue name.
        queue: String,
        /// Players per second; 0 = manual only.
        per_second: f64,
    },
    /// `PUT /v1/queues/{q}/capacity`.
    SetCapacity {
        /// Queue name.
        queue: String,
        /// Players the login server has online.
        online: u64,
        /// Players it can hold.
        capacity: u64,
    },
    /// `POST /v1/queues/{q}/pause` (`true`) or `.../resume` (`false`).
    Pause {
        /// Queue name.
        queue: String,
        /// Paused after this call.
        paused: bool,
    },
    /// `POST /v1/tokens/verify` after the signature, `exp` and `iss` checked out:
    /// consume the `jti`.
    ConsumeJti {
        /// The token's `jti`.
        jti: String,
        /// The token's `exp` (unix seconds), to bound how long the used mark is kept.
        exp: u64,
    },
    /// `GET /v1/stats` and `/metrics`.
    Stats,
    /// `GET /v1/users/{user_id}?queue=Q`: the player's state and journal.
    User {
        /// Queue name.
        queue: String,
        /// The player.
        user: UserId,
    },
    /// `DELETE /v1/queues/{q}/players/{user_id}`.
    Remove {
        /// Queue name.
        queue: String,
        /// The player.
        user: UserId,
    },
}

/// The core's answer to a [`ControlReq`].
#[derive(Debug, Clone, PartialEq)]
pub enum ControlReply {
    /// Players admitted, in admission order.
    Admitted(Vec<AdmittedUser>),
    /// The request was applied.
    Done,
    /// Whether the `jti` was consumed now (false: already used).
    Consumed(bool),
    /// Per-queue counters.
    Stats(Vec<QueueStats>),
    /// A player's state and journal.
    User(Box<UserReport>),
    /// The player was removed; what it held (`waiting`, `grace`, `admitted`).
    Removed(&'static str),
    /// Nothing is known of the player (404 `no such player`).
    NoSuchPlayer,
    /// `[journal] enabled = false` (501).
    JournalOff,
    /// No queue by that name.
    UnknownQueue,
    /// The request's values cannot be used.
    Invalid(String),
    /// The core cannot serve this request now (the write-ahead log failed: see
    /// `queue::durability`); the text says why. Answered 503.
    Unavailable(String),
}

/// One admitted player, as returned by `admit`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmittedUser {
    /// The player.
    pub user: UserId,
    /// Signed admission token.
    pub token: String,
    /// Token expiry, unix seconds.
    pub expires_at: u64,
}

/// Counters of one queue, for `/v1/stats` and `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    /// Queue name.
    pub name: String,
    /// Players holding a place (both lanes, in grace included).
    pub waiting: u64,
    /// Of those, in the priority lane.
    pub waiting_priority: u64,
    /// Players admitted since start.
    pub admitted_total: u64,
    /// Players who left (leave, grace expiry) since start.
    pub left_total: u64,
    /// Measured admission rate, players/s.
    pub admit_rate_per_s: f64,
    /// Configured automatic rate, players/s.
    pub target_rate_per_s: f64,
    /// Automatic admission paused.
    pub paused: bool,
    /// Tokens issued, not yet used, not expired.
    pub unused_tokens: u64,
    /// The login server's last load report `(online, capacity)`, if any.
    pub capacity: Option<(u64, u64)>,
}

/// From the core to one io loop.
#[derive(Debug)]
pub enum LoopEvent {
    /// What changed in the queues since the previous batch; shared by all loops.
    Ranks(Arc<RankBatch>),
    /// Exact positions of this loop's sessions (periodic resync).
    Resync(Vec<(SessionId, u64)>),
    /// The answer to a [`CoreMsg::Join`].
    Joined {
        /// The session that sent `login`.
        session: SessionId,
        /// Request `seq`.
        seq: u32,
        /// The player (so a loop can release a place whose connection already closed).
        user: UserId,
        /// Outcome.
        result: Result<JoinOk, JoinError>,
    },
    /// The session's player was admitted: push `admitted`.
    Admitted {
        /// The session.
        session: SessionId,
        /// Signed admission token.
        token: String,
        /// Token expiry, unix seconds.
        expires_at: u64,
    },
    /// Push `kicked` and close.
    Kick {
        /// The session.
        session: SessionId,
        /// Why.
        reason: KickReason,
    },
    /// The server drains: stop accepting, kick every session `shutdown`, stop the loop.
    Shutdown,
    /// Node link `link` broke (edge side; never crosses a link): the sessions whose
    /// place is behind it are kicked `shutdown` with `retry_after_secs`, so they log in
    /// again (their places wait in grace at the owner).
    LinkLost {
        /// The link's index.
        link: usize,
    },
}

/// A successful join.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinOk {
    /// The queue joined.
    pub queue: QueueId,
    /// The place's key, to follow [`RankBatch`]es.
    pub key: PlaceKey,
    /// Position now (1-based); 0 when admitted.
    pub position: u64,
    /// Players waiting in the queue now.
    pub queue_len: u64,
    /// Measured admission rate of the queue, players per second (0 = none yet).
    pub rate_per_s: f64,
    /// The user already held a place (or an unused admission).
    pub resumed: bool,
    /// Set when the user was already admitted and the token is still unused.
    pub admitted: Option<(String, u64)>,
}

/// Why a join failed; each maps to a protocol error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    /// The queue holds `max_waiting` players.
    QueueFull,
    /// No such queue and auto-create is off (or the name is invalid).
    UnknownQueue,
    /// The server is draining.
    ShuttingDown,
    /// The place vanished between the join and its answer (a bug if it ever shows).
    Gone,
}

/// What changed in every queue since the previous batch.
#[derive(Debug, Default)]
pub struct RankBatch {
    /// One entry per queue that changed.
    pub queues: Vec<QueueDelta>,
}

/// What changed in one queue.
#[derive(Debug, Default)]
pub struct QueueDelta {
    /// The queue.
    pub queue: QueueId,
    /// Keys of places that left (admitted, left, grace expired), sorted ascending.
    pub departed: Vec<PlaceKey>,
    /// Keys of places inserted ahead of existing ones (priority lane), sorted ascending.
    pub inserted: Vec<PlaceKey>,
    /// Players waiting after this batch.
    pub queue_len: u64,
    /// Measured admission rate after this batch, players/s.
    pub rate_per_s: f64,
    /// The queue's highest admitted key per lane [normal, priority] after this batch
    /// (0 = none): edges keep the latest and hand it to a new owner with their
    /// re-submitted places (`cluster::watermark`); io loops ignore it.
    pub admitted_max: [PlaceKey; 2],
}

impl QueueDelta {
    /// How far a place with key `key` moves: negative = forward. Both lists are sorted,
    /// so this is two binary searches.
    pub fn shift(&self, key: PlaceKey) -> i64 {
        self.shift_or_gone(key).0
    }

    /// [`QueueDelta::shift`], and whether `key` itself departed in this batch (the
    /// player was admitted, left or removed: its `admitted` push or kick follows on the
    /// same channel, and no position must be pushed for the place it left). The same
    /// two binary searches.
    pub fn shift_or_gone(&self, key: PlaceKey) -> (i64, bool) {
        let ahead_gone = self.departed.partition_point(|&k| k < key);
        let gone = self.departed.get(ahead_gone) == Some(&key);
        let ahead_new = self.inserted.partition_point(|&k| k < key) as i64;
        (ahead_new - ahead_gone as i64, gone)
    }
}

/// Estimated wait in seconds for `position` at `rate_per_s`; `None` while no rate is known.
pub fn eta_secs(position: u64, rate_per_s: f64) -> Option<u64> {
    if rate_per_s > 0.0 && rate_per_s.is_finite() {
        Some((position as f64 / rate_per_s).ceil() as u64)
    } else {
        None
    }
}
