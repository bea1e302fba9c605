//! The queue state machine: every queue, the user index, admission pacing and issued
//! admission grants. `apply(op, now) -> events`, nothing else: no sockets, no threads,
//! no clock of its own, no randomness, so it can be tested against a model and replayed
//! from a write-ahead log of [`Op`]s (`queue::durability::wal`); [`codec`] turns ops and the whole
//! state into bytes, canonically, so equal states give equal snapshots.
//!
//! Invariants:
//! - a (queue, user) pair holds at most one place, and a place is in exactly one lane;
//! - position = 1 + places ahead (priority lane first, then arrival), counting players
//!   in reconnect grace; positions only fall, except by a priority insertion;
//! - admission takes the head: priority lane first, FIFO within a lane;
//! - every change that moves positions emits `Departed` or `Inserted` with the place key;
//! - only the connection holding a place or an admission can act on it: a `leave` or a
//!   disconnect from any other (older, kicked) connection changes nothing. The newest
//!   login holds (an older connection still open is kicked `duplicate_login`);
//! - a grant whose token an HTTP `admit` answer returned is never given up by `leave`:
//!   only its use, its expiry or an operator's [`Op::Remove`] ends it (the login server
//!   may already hold it);
//! - [`Op::Remove`] is the one op that takes a place or grant from outside its
//!   connection: the place departs (`Departed`, counted in `left_total`) or the grant is
//!   voided (its `jti` marked used), and the connection holding it is kicked `removed`.
//! - queue ids are slots of the queue table. An auto-created queue that stays empty
//!   (nobody waiting or in grace, no unused grant) expires by [`Op::ExpireQueue`]: its
//!   memory is freed and its slot becomes a tombstone. A tombstone of a queue that never
//!   admitted anyone is reused by the next auto-created queue (no connection can still
//!   hold its id: every session of it ended with its place); one of a queue that
//!   admitted players (whose connections may stay open, holding the id) keeps its name
//!   and is reused only by that name, so a stale id never reaches a different queue;
//! - lane seqs continue across the incarnations of a slot, so a key never names two
//!   places.

use std::collections::{BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::pacing::{Pacer, RateMeter, CAPACITY_MAX, RATE_MAX_PER_S};
use super::rank::{place_key, split_key, Lane};
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
    /// `queues.auto_expire_secs`; see [`QueueState::next_expiry`]).
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

/// A place in a queue.
#[derive(Debug, Clone)]
pub struct Place {
    /// Order key (lane + seq).
    pub key: PlaceKey,
    /// The connection holding it; `None` while in reconnect grace.
    pub conn: Option<ConnRef>,
    /// When grace ends, ms (meaningful while `conn` is `None`).
    pub grace_deadline_ms: u64,
}

/// An admission that has not been used (verified) yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Grant number (rendered into the token's `jti`).
    pub jti: u64,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expires at, unix seconds.
    pub exp: u64,
    /// The connection holding the admission: the one it was pushed to, then the newest
    /// login of the player; `None` when disconnected at admission, or since a restart.
    pub conn: Option<ConnRef>,
    /// The token was returned by an HTTP `admit` answer: no `leave` voids it.
    pub returned: bool,
}

/// One named queue.
#[derive(Debug)]
pub struct Queue {
    /// Name.
    pub name: String,
    /// Most players holding a place.
    pub max_waiting: u64,
    /// Priority lane (ahead of `normal`).
    prio: Lane,
    /// Normal lane.
    normal: Lane,
    /// Automatic admission pacing.
    pub pacer: Pacer,
    /// Measured admissions per second (for ETA).
    pub meter: RateMeter,
    /// Players admitted since start.
    pub admitted_total: u64,
    /// Players who left or whose grace expired since start.
    pub left_total: u64,
    /// Grants issued and neither used nor expired.
    pub unused_grants: u64,
    /// Named in the configuration: never expires (not durable: set from the config at
    /// every start).
    configured: bool,
    /// Expired: a tombstone holding the slot (see the module invariants).
    expired: bool,
    /// Last time the queue was seen in use (created, joined, or in use at this tick or
    /// the one before, so the idle period starts no earlier than the queue emptied),
    /// unix ms. Not durable: a restart starts every idle period afresh.
    active_ms: u64,
    /// In use at the last tick.
    busy: bool,
}

impl Queue {
    fn new(name: String, max_waiting: u64) -> Queue {
        Queue {
            name,
            max_waiting,
            prio: Lane::default(),
            normal: Lane::default(),
            pacer: Pacer::default(),
            meter: RateMeter::default(),
            admitted_total: 0,
            left_total: 0,
            unused_grants: 0,
            configured: false,
            expired: false,
            active_ms: 0,
            busy: false,
        }
    }

    /// The tombstone this queue leaves when it expires: no lanes, no settings, seqs
    /// continued; the name and counters are kept only when `quarantined`.
    fn tombstone(&self, quarantined: bool) -> Queue {
        let mut t = Queue::new(String::new(), 0);
        t.expired = true;
        t.prio = Lane::starting_at(self.prio.next_seq());
        t.normal = Lane::starting_at(self.normal.next_seq());
        if quarantined {
            t.name = self.name.clone();
            t.admitted_total = self.admitted_total;
            t.left_total = self.left_total;
        }
        t
    }

    /// True for the tombstone of an expired queue (not a queue any more).
    pub fn is_expired(&self) -> bool {
        self.expired
    }

    /// The tombstone may be reused only by a queue of the same name: this queue
    /// admitted players, whose connections may still hold its id.
    fn quarantined(&self) -> bool {
        self.admitted_total > 0
    }

    /// Nobody waiting or in grace and no unused grant.
    fn is_idle(&self) -> bool {
        self.waiting() == 0 && self.unused_grants == 0
    }

    /// Players holding a place.
    pub fn waiting(&self) -> u64 {
        (self.prio.len() + self.normal.len()) as u64
    }

    /// Players in the priority lane.
    pub fn waiting_priority(&self) -> u64 {
        self.prio.len() as u64
    }

    /// 1-based position of the place with `key`.
    pub fn position(&self, key: PlaceKey) -> u64 {
        let (priority, seq) = split_key(key);
        if priority {
            self.prio.rank(seq) + 1
        } else {
            self.prio.len() as u64 + self.normal.rank(seq) + 1
        }
    }

    /// The player at the head: (key, user).
    fn head(&self) -> Option<(PlaceKey, UserId)> {
        if let Some((seq, user)) = self.prio.front() {
            return Some((place_key(true, seq), user));
        }
        self.normal
            .front()
            .map(|(seq, user)| (place_key(false, seq), user))
    }

    fn remove(&mut self, key: PlaceKey) -> Option<UserId> {
        let (priority, seq) = split_key(key);
        if priority {
            self.prio.remove(seq)
        } else {
            self.normal.remove(seq)
        }
    }

    /// Places in order: (key, user).
    pub fn iter(&self) -> impl Iterator<Item = (PlaceKey, UserId)> + '_ {
        let p = self.prio.iter().map(|(s, u)| (place_key(true, s), u));
        let n = self.normal.iter().map(|(s, u)| (place_key(false, s), u));
        p.chain(n)
    }

    /// Places from key `from` on, in order: (key, the player, or `None` for a slot whose
    /// player left). For a bounded walk resumed at the next key (the core's resync);
    /// O(log n) to start, O(1) a step.
    pub fn walk_from(
        &self,
        from: PlaceKey,
    ) -> impl Iterator<Item = (PlaceKey, Option<UserId>)> + '_ {
        let (priority, seq) = split_key(from);
        let prio = priority
            .then(|| self.prio.walk_from(seq))
            .into_iter()
            .flatten();
        let normal_from = if priority { 0 } else { seq };
        let normal = self.normal.walk_from(normal_from);
        prio.map(|(s, u)| (place_key(true, s), u))
            .chain(normal.map(|(s, u)| (place_key(false, s), u)))
    }

    /// Bytes held by the lanes (memory reports).
    pub fn heap_bytes(&self) -> usize {
        self.prio.heap_bytes() + self.normal.heap_bytes()
    }
}

/// What [`QueueState::dump`] shows: equal dumps mean equal observable state.
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

/// Every queue and everything about the players in them.
#[derive(Debug)]
pub struct QueueState {
    /// Limits from config.
    limits: Limits,
    /// Queues by id (ids are indices; expired queues leave tombstones, see the module
    /// invariants).
    queues: Vec<Queue>,
    /// Queue ids by name, of live queues and of quarantined tombstones.
    names: HashMap<String, QueueId>,
    /// Tombstones any new auto-created queue may take, lowest first.
    free: BTreeSet<QueueId>,
    /// Queues that are not tombstones (counted against `max_queues`).
    live: usize,
    /// Places by (queue, user).
    places: HashMap<(QueueId, UserId), Place>,
    /// Unused grants by (queue, user).
    grants: HashMap<(QueueId, UserId), Grant>,
    /// Owner of each unused grant, by grant number.
    issued: HashMap<u64, (QueueId, UserId)>,
    /// Grants in issue order, for expiry: (exp, jti).
    grant_expiry: VecDeque<(u64, u64)>,
    /// Consumed `jti`s with their `exp`, kept until they expire.
    used: HashMap<String, u64>,
    /// Consumed `jti`s in consumption order, for pruning: (exp, jti).
    used_expiry: VecDeque<(u64, String)>,
    /// Places entering grace, in deadline order: (deadline, queue, user, key).
    grace: VecDeque<(u64, QueueId, UserId, PlaceKey)>,
    /// Next grant number.
    next_jti: u64,
    /// Prefix making `jti`s unique across processes (32 hex digits in all).
    jti_prefix: u64,
    /// Last tick time, ms.
    last_tick_ms: u64,
}

/// "Newest connection wins", for a waiting place and an unused admission alike: the
/// login on `conn` now holds it; an older connection still holding it is kicked
/// `duplicate_login`.
fn newest_connection_wins(
    holder: &mut Option<ConnRef>,
    conn: ConnRef,
    queue: QueueId,
    user: UserId,
    out: &mut Vec<Event>,
) {
    if let Some(old) = holder.replace(conn) {
        if old != conn {
            out.push(Event::Kick {
                queue,
                user,
                conn: old,
                reason: KickReason::DuplicateLogin,
            });
        }
    }
}

impl QueueState {
    /// An empty state with the configured queues: (name, max_waiting, admit rate).
    pub fn new(limits: Limits, queues: &[(String, u64, f64)], jti_prefix: u64) -> QueueState {
        let mut state = QueueState {
            limits,
            queues: Vec::new(),
            names: HashMap::new(),
            free: BTreeSet::new(),
            live: 0,
            places: HashMap::new(),
            grants: HashMap::new(),
            issued: HashMap::new(),
            grant_expiry: VecDeque::new(),
            used: HashMap::new(),
            used_expiry: VecDeque::new(),
            grace: VecDeque::new(),
            next_jti: 1,
            jti_prefix,
            last_tick_ms: 0,
        };
        state.configure_queues(queues);
        state
    }

    /// Appends a queue in a new slot.
    fn create_queue(&mut self, name: String, max_waiting: u64) -> QueueId {
        let id = self.queues.len() as QueueId;
        self.names.insert(name.clone(), id);
        self.queues.push(Queue::new(name, max_waiting));
        self.live += 1;
        id
    }

    /// Appends a tombstone (snapshot decoding): quarantined when it has a name.
    fn push_tombstone(&mut self, tombstone: Queue) -> QueueId {
        let id = self.queues.len() as QueueId;
        if tombstone.name.is_empty() {
            self.free.insert(id);
        } else {
            self.names.insert(tombstone.name.clone(), id);
        }
        self.queues.push(tombstone);
        id
    }

    /// Makes a live queue named `name` in tombstone slot `id` (quarantined tombstones
    /// only for their own name): seqs continue, a quarantined slot keeps its counters.
    fn revive(&mut self, id: QueueId, name: &str, max_waiting: u64) {
        let q = &mut self.queues[id as usize];
        debug_assert!(q.expired && (q.name.is_empty() || q.name == name));
        if q.name.is_empty() {
            self.free.remove(&id);
            q.name = name.to_string();
            self.names.insert(name.to_string(), id);
        }
        q.expired = false;
        q.max_waiting = max_waiting;
        self.live += 1;
    }

    /// Creates the auto-created queue `name` (which has no live queue) at `now_ms`, or
    /// `None` at `max_queues`. Takes the name's own quarantined tombstone, else the
    /// lowest free tombstone, else a new slot, so ids stay below `max_queues` plus the
    /// quarantined tombstones.
    fn auto_create(&mut self, name: &str, now_ms: u64) -> Option<QueueId> {
        if self.live >= self.limits.max_queues {
            return None;
        }
        let max_waiting = self.limits.auto_max_waiting;
        let id = match self.names.get(name) {
            Some(&id) => {
                self.revive(id, name, max_waiting);
                id
            }
            None => match self.free.first() {
                Some(&id) => {
                    self.revive(id, name, max_waiting);
                    id
                }
                None => self.create_queue(name.to_string(), max_waiting),
            },
        };
        self.queues[id as usize].active_ms = now_ms;
        Some(id)
    }

    /// The first queue at or after `from` that is due to expire at `now_ms`: auto-created,
    /// idle, and unused for `auto_expire_ms`. The core applies [`Op::ExpireQueue`] to it.
    pub fn next_expiry(&self, now_ms: u64, from: usize) -> Option<QueueId> {
        let expire_ms = self.limits.auto_expire_ms;
        if expire_ms == 0 {
            return None;
        }
        let due = |q: &Queue| {
            !q.expired
                && !q.configured
                && q.is_idle()
                && now_ms.saturating_sub(q.active_ms) >= expire_ms
        };
        (from..self.queues.len())
            .find(|&id| due(&self.queues[id]))
            .map(|id| id as QueueId)
    }

    /// Expires queue `id` (see [`Op::ExpireQueue`]).
    fn expire(&mut self, id: QueueId) -> Applied {
        let Some(q) = self.queues.get(id as usize) else {
            return Applied::UnknownQueue;
        };
        if q.expired || q.configured || !q.is_idle() {
            return Applied::Invalid("only an idle auto-created queue expires");
        }
        let quarantined = q.quarantined();
        let tombstone = q.tombstone(quarantined);
        let old = std::mem::replace(&mut self.queues[id as usize], tombstone);
        if !quarantined {
            self.names.remove(&old.name);
            self.free.insert(id);
        }
        self.live -= 1;
        Applied::Ok
    }

    /// All queue slots, by id; tombstones of expired queues included
    /// ([`Queue::is_expired`]).
    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    /// The id of the live queue named `name`.
    pub fn queue_id(&self, name: &str) -> Option<QueueId> {
        self.names
            .get(name)
            .copied()
            .filter(|&id| !self.queues[id as usize].expired)
    }

    /// The place of `user` in `queue`.
    pub fn place(&self, queue: QueueId, user: UserId) -> Option<&Place> {
        self.places.get(&(queue, user))
    }

    /// The unused grant of `user` in `queue`.
    pub fn grant(&self, queue: QueueId, user: UserId) -> Option<Grant> {
        self.grants.get(&(queue, user)).copied()
    }

    /// The `jti` text of grant number `jti`.
    pub fn jti_text(&self, jti: u64) -> String {
        format!("{:016x}{:016x}", self.jti_prefix, jti)
    }

    /// Applies one op at time `now_ms` (unix ms); side effects go to `out`.
    pub fn apply(&mut self, op: &Op, now_ms: u64, out: &mut Vec<Event>) -> Applied {
        match op {
            Op::Join {
                queue,
                user,
                prio,
                conn,
            } => self.join(queue, *user, *prio, *conn, now_ms, out),
            Op::Disconnect { queue, user, conn } => {
                let deadline = now_ms.saturating_add(self.limits.reconnect_grace_ms);
                if let Some(place) = self.places.get_mut(&(*queue, *user)) {
                    if place.conn == Some(*conn) {
                        place.conn = None;
                        place.grace_deadline_ms = deadline;
                        self.grace.push_back((deadline, *queue, *user, place.key));
                    }
                } else if let Some(grant) = self.grants.get_mut(&(*queue, *user)) {
                    // The holder of an admission went away: nobody holds it until the
                    // player logs in again.
                    if grant.conn == Some(*conn) {
                        grant.conn = None;
                    }
                }
                Applied::Ok
            }
            Op::Leave { queue, user, conn } => {
                match self.places.get(&(*queue, *user)) {
                    Some(p) if p.conn == Some(*conn) => {
                        self.depart(*queue, *user, out);
                        self.queues[*queue as usize].left_total += 1;
                    }
                    // A stale connection (kicked by a newer login): not its place.
                    Some(_) => {}
                    None => self.leave_grant(*queue, *user, *conn),
                }
                Applied::Ok
            }
            Op::Admit { queue, count } => {
                if *queue as usize >= self.queues.len() {
                    return Applied::UnknownQueue;
                }
                self.admit(*queue, *count, now_ms, true, out);
                Applied::Ok
            }
            Op::SetRate { queue, per_second } => {
                if !(per_second.is_finite() && (0.0..=RATE_MAX_PER_S).contains(per_second)) {
                    return Applied::Invalid(RATE_INVALID);
                }
                let Some(q) = self.queues.get_mut(*queue as usize) else {
                    return Applied::UnknownQueue;
                };
                q.pacer.rate_per_s = *per_second;
                Applied::Ok
            }
            Op::SetCapacity {
                queue,
                online,
                capacity,
            } => {
                if *online > CAPACITY_MAX {
                    return Applied::Invalid(ONLINE_INVALID);
                }
                if *capacity > CAPACITY_MAX {
                    return Applied::Invalid(CAPACITY_INVALID);
                }
                let Some(q) = self.queues.get_mut(*queue as usize) else {
                    return Applied::UnknownQueue;
                };
                q.pacer.report_capacity(*online, *capacity);
                Applied::Ok
            }
            Op::Pause { queue, paused } => {
                let Some(q) = self.queues.get_mut(*queue as usize) else {
                    return Applied::UnknownQueue;
                };
                q.pacer.paused = *paused;
                Applied::Ok
            }
            Op::ConsumeJti { jti, exp } => self.consume(jti, *exp),
            Op::Tick => {
                self.tick(now_ms, out);
                Applied::Ok
            }
            Op::ExpireQueue { queue } => self.expire(*queue),
            Op::Restart => {
                self.restart(now_ms);
                Applied::Ok
            }
            Op::Remove { queue, user } => {
                if *queue as usize >= self.queues.len() {
                    return Applied::UnknownQueue;
                }
                Applied::Removed(self.remove(*queue, *user, out))
            }
        }
    }

    /// [`Op::Remove`]: what `user` held, if anything.
    fn remove(
        &mut self,
        queue: QueueId,
        user: UserId,
        out: &mut Vec<Event>,
    ) -> Option<&'static str> {
        let kick = |conn: Option<ConnRef>, out: &mut Vec<Event>| {
            if let Some(conn) = conn {
                out.push(Event::Kick {
                    queue,
                    user,
                    conn,
                    reason: KickReason::Removed,
                });
            }
        };
        if let Some(place) = self.depart(queue, user, out) {
            // Counted with those who left: joined = waiting + admitted + left holds.
            self.queues[queue as usize].left_total += 1;
            kick(place.conn, out);
            return Some(if place.conn.is_some() {
                "waiting"
            } else {
                "grace"
            });
        }
        let conn = self.grants.get(&(queue, user))?.conn;
        self.withdraw_grant(queue, user);
        kick(conn, out);
        Some("admitted")
    }

    /// The owner of the unused grant whose `jti` text is `jti`, with its number.
    pub fn grant_owner(&self, jti: &str) -> Option<(QueueId, UserId, u64)> {
        let number = own_jti_number(jti, self.jti_prefix)?;
        let &(queue, user) = self.issued.get(&number)?;
        (self.grants.get(&(queue, user)).map(|g| g.jti) == Some(number))
            .then_some((queue, user, number))
    }

    /// Every place enters reconnect grace until `now_ms` + grace, in queue order; the
    /// downtime earns no admission credit.
    fn restart(&mut self, now_ms: u64) {
        let deadline = now_ms.saturating_add(self.limits.reconnect_grace_ms);
        self.grace.clear();
        // Connection ids of the last process mean nothing (and may be reused).
        for grant in self.grants.values_mut() {
            grant.conn = None;
        }
        for (id, q) in self.queues.iter_mut().enumerate() {
            let id = id as QueueId;
            // Downtime is not idle time.
            q.active_ms = now_ms;
            for (key, user) in q.iter() {
                let place = self.places.get_mut(&(id, user)).expect("indexed place");
                place.conn = None;
                place.grace_deadline_ms = deadline;
                self.grace.push_back((deadline, id, user, key));
            }
        }
        self.last_tick_ms = now_ms;
    }

    /// Lays the configured queues over a restored state: queues the config names and
    /// the state lacks are added (with the configured rate; a quarantined tombstone of
    /// the name is revived); configured queues take the configured `max_waiting` and
    /// never expire. Rates, pauses and capacity reports set at run time are kept.
    /// Returns how many queues were added.
    pub fn configure_queues(&mut self, queues: &[(String, u64, f64)]) -> usize {
        let mut added = 0;
        for (name, max_waiting, rate) in queues {
            let id = match self.names.get(name) {
                Some(&id) if !self.queues[id as usize].expired => {
                    self.queues[id as usize].max_waiting = *max_waiting;
                    id
                }
                found => {
                    let id = match found {
                        Some(&id) => {
                            self.revive(id, name, *max_waiting);
                            id
                        }
                        None => self.create_queue(name.clone(), *max_waiting),
                    };
                    self.queues[id as usize].pacer.rate_per_s = *rate;
                    added += 1;
                    id
                }
            };
            self.queues[id as usize].configured = true;
        }
        added
    }

    /// A comparable picture of everything a player or login server can observe: queues
    /// in order with their users and lanes, settings, counters, unused grants and used
    /// `jti`s. Connections and grace deadlines are left out (a restart resets them).
    pub fn dump(&self) -> Dump {
        let queues = self
            .queues
            .iter()
            .map(|q| QueueDump {
                name: q.name.clone(),
                expired: q.expired,
                max_waiting: q.max_waiting,
                rate_per_s: q.pacer.rate_per_s,
                paused: q.pacer.paused,
                capacity: q
                    .pacer
                    .capacity
                    .map(|c| (c.online, c.capacity, c.used_since)),
                waiting: q
                    .iter()
                    .map(|(key, user)| (user, split_key(key).0))
                    .collect(),
                admitted_total: q.admitted_total,
                left_total: q.left_total,
                unused_grants: q.unused_grants,
            })
            .collect();
        let mut grants: Vec<GrantDump> = self
            .grants
            .iter()
            .map(|(&(queue, user), g)| GrantDump {
                queue: self.queues[queue as usize].name.clone(),
                user,
                jti: self.jti_text(g.jti),
                iat: g.iat,
                exp: g.exp,
                returned: g.returned,
            })
            .collect();
        grants.sort_by(|a, b| (&a.queue, a.user).cmp(&(&b.queue, b.user)));
        let mut used: Vec<(String, u64)> =
            self.used.iter().map(|(j, &exp)| (j.clone(), exp)).collect();
        used.sort();
        Dump {
            jti_prefix: self.jti_prefix,
            next_jti: self.next_jti,
            queues,
            grants,
            used,
        }
    }

    fn join(
        &mut self,
        name: &str,
        user: UserId,
        prio: bool,
        conn: ConnRef,
        now_ms: u64,
        out: &mut Vec<Event>,
    ) -> Applied {
        let created = match self.queue_id(name) {
            Some(id) => Some(id),
            None if self.limits.auto_create && crate::config::valid_queue_name(name) => {
                self.auto_create(name, now_ms)
            }
            None => None,
        };
        let Some(queue) = created else {
            return Applied::JoinFailed(JoinError::UnknownQueue);
        };
        self.queues[queue as usize].active_ms = now_ms;
        if let Some(grant) = self.grants.get_mut(&(queue, user)) {
            newest_connection_wins(&mut grant.conn, conn, queue, user, out);
            return Applied::Joined {
                queue,
                resumed: true,
            };
        }
        if let Some(place) = self.places.get_mut(&(queue, user)) {
            newest_connection_wins(&mut place.conn, conn, queue, user, out);
            return Applied::Joined {
                queue,
                resumed: true,
            };
        }
        let q = &mut self.queues[queue as usize];
        if q.waiting() >= q.max_waiting {
            return Applied::JoinFailed(JoinError::QueueFull);
        }
        let key = if prio {
            let key = place_key(true, q.prio.push(user));
            out.push(Event::Inserted { queue, key });
            key
        } else {
            place_key(false, q.normal.push(user))
        };
        self.places.insert(
            (queue, user),
            Place {
                key,
                conn: Some(conn),
                grace_deadline_ms: 0,
            },
        );
        Applied::Joined {
            queue,
            resumed: false,
        }
    }

    /// Removes the place of `user` (which must exist) and reports the departure.
    fn depart(&mut self, queue: QueueId, user: UserId, out: &mut Vec<Event>) -> Option<Place> {
        let place = self.places.remove(&(queue, user))?;
        let removed = self.queues[queue as usize].remove(place.key);
        debug_assert_eq!(removed, Some(user));
        out.push(Event::Departed {
            queue,
            key: place.key,
        });
        Some(place)
    }

    /// Admits up to `count` players from the head of `queue`; returns how many.
    /// `returned`: the tokens go back in an HTTP answer too (see [`Grant::returned`]).
    fn admit(
        &mut self,
        queue: QueueId,
        count: u64,
        now_ms: u64,
        returned: bool,
        out: &mut Vec<Event>,
    ) -> u64 {
        let iat = now_ms / 1000;
        let exp = iat.saturating_add(self.limits.token_ttl_secs);
        let mut admitted = 0;
        while admitted < count {
            let Some((_, user)) = self.queues[queue as usize].head() else {
                break;
            };
            let place = self.depart(queue, user, out).expect("head has a place");
            let jti = self.next_jti;
            self.next_jti += 1;
            let grant = Grant {
                jti,
                iat,
                exp,
                conn: place.conn,
                returned,
            };
            self.grants.insert((queue, user), grant);
            self.issued.insert(jti, (queue, user));
            self.grant_expiry.push_back((exp, jti));
            let q = &mut self.queues[queue as usize];
            q.unused_grants += 1;
            q.admitted_total += 1;
            out.push(Event::Admitted {
                queue,
                user,
                conn: place.conn,
                jti,
                iat,
                exp,
            });
            admitted += 1;
        }
        if admitted > 0 {
            self.queues[queue as usize].meter.record(now_ms, admitted);
        }
        admitted
    }

    /// A `leave` from `conn` of a player without a place: it gives up the unused
    /// admission if `conn` holds it and its token was only pushed to the player. A
    /// stale connection's leave, or one racing an HTTP `admit` that returned the token,
    /// changes nothing (the grant then ends by use or expiry).
    fn leave_grant(&mut self, queue: QueueId, user: UserId, conn: ConnRef) {
        let gives_up = matches!(self.grants.get(&(queue, user)),
            Some(g) if !g.returned && g.conn == Some(conn));
        if gives_up {
            self.withdraw_grant(queue, user);
        }
    }

    /// Cancels the unused grant of `user`, if any: its `jti` is marked used.
    fn withdraw_grant(&mut self, queue: QueueId, user: UserId) {
        let Some(grant) = self.grants.remove(&(queue, user)) else {
            return;
        };
        self.issued.remove(&grant.jti);
        self.queues[queue as usize].unused_grants -= 1;
        let jti = self.jti_text(grant.jti);
        self.used.insert(jti.clone(), grant.exp);
        self.used_expiry.push_back((grant.exp, jti));
    }

    fn consume(&mut self, jti: &str, exp: u64) -> Applied {
        if self.used.contains_key(jti) {
            return Applied::Consumed(false);
        }
        self.used.insert(jti.to_string(), exp);
        self.used_expiry.push_back((exp, jti.to_string()));
        if let Some(number) = own_jti_number(jti, self.jti_prefix) {
            if let Some((queue, user)) = self.issued.remove(&number) {
                if self.grants.get(&(queue, user)).map(|g| g.jti) == Some(number) {
                    self.grants.remove(&(queue, user));
                    let q = &mut self.queues[queue as usize];
                    q.unused_grants -= 1;
                    q.pacer.token_used();
                }
            }
        }
        Applied::Consumed(true)
    }

    fn tick(&mut self, now_ms: u64, out: &mut Vec<Event>) {
        let dt_ms = now_ms.saturating_sub(self.last_tick_ms);
        self.last_tick_ms = now_ms;
        // Reconnect grace expiry.
        while let Some(&(deadline, queue, user, key)) = self.grace.front() {
            if deadline > now_ms {
                break;
            }
            self.grace.pop_front();
            let expired = matches!(self.places.get(&(queue, user)),
                Some(p) if p.key == key && p.conn.is_none() && p.grace_deadline_ms == deadline);
            if expired {
                self.depart(queue, user, out);
                self.queues[queue as usize].left_total += 1;
                out.push(Event::GraceExpired { queue, user });
            }
        }
        // Grant expiry.
        let now_s = now_ms / 1000;
        while let Some(&(exp, jti)) = self.grant_expiry.front() {
            if exp > now_s {
                break;
            }
            self.grant_expiry.pop_front();
            if let Some((queue, user)) = self.issued.remove(&jti) {
                if self.grants.get(&(queue, user)).map(|g| g.jti) == Some(jti) {
                    self.grants.remove(&(queue, user));
                    self.queues[queue as usize].unused_grants -= 1;
                }
            }
        }
        while let Some((exp, _)) = self.used_expiry.front() {
            if *exp > now_s {
                break;
            }
            let (_, jti) = self.used_expiry.pop_front().expect("front exists");
            self.used.remove(&jti);
        }
        // Automatic admission; queues in use are not idle.
        for id in 0..self.queues.len() {
            let q = &mut self.queues[id];
            let busy = !q.is_idle();
            if busy || q.busy {
                q.active_ms = now_ms;
            }
            q.busy = busy;
            let n = q.pacer.allowance(dt_ms, q.waiting(), q.unused_grants);
            if n > 0 {
                self.admit(id as QueueId, n, now_ms, false, out);
            }
        }
    }
}

/// The grant number of a `jti` this state (prefix `prefix`) issued.
fn own_jti_number(jti: &str, prefix: u64) -> Option<u64> {
    jti.get(..16)
        .and_then(|p| u64::from_str_radix(p, 16).ok())
        .filter(|&p| p == prefix)
        .and_then(|_| jti.get(16..))
        .and_then(|n| u64::from_str_radix(n, 16).ok())
}

pub mod codec;

#[cfg(test)]
mod tests;
