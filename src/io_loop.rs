//! One io loop: a pinned thread running a monoio runtime (io_uring, or the legacy
//! epoll driver where io_uring is unavailable) with its own SO_REUSEPORT listener. It
//! owns its sessions ([`Shard`]), forwards queue operations to the core and applies the
//! core's events: join answers, admissions, kicks and rank batches.
//!
//! Invariants:
//! - everything here is touched by this loop's thread only (`Rc`, `Cell`, `RefCell`);
//!   the only cross-thread traffic is the two channels and the stats atomics;
//! - the loop never blocks on the core: `to_core` uses `try_send` and keeps what does
//!   not fit in an ordered backlog, retried before any newer message and on each sweep;
//! - the loop sleeps on its doorbell only after arming it and re-checking its channel;
//! - position pushes are throttled per session to one per `push_interval_ms`, carrying
//!   the latest value; deferred ones wait in `pending_push` (each session once).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use monoio::io::AsyncReadRent;

use crate::config::Config;
use crate::doorbell::{self, BellRx};
use crate::limits::ConnLimits;
use crate::msg::{ConnRef, CoreMsg, JoinError, KickReason, LoopEvent, LoopId, QueueId, SessionId};
use crate::protocol::{self, Code};
use crate::session::{self, Phase, Session};
use crate::stats::LoopStats;
use crate::token::TicketVerifier;
use crate::wake::Notify;

/// Capacity of a pooled read buffer: a steady-state request fits many times over;
/// a larger frame grows the buffer to fit (up to `max_frame_bytes` + header).
pub const READ_BUF_BYTES: usize = 512;
/// Capacity of a pooled write buffer: a few responses or pushes (a `position` push is
/// about 90 bytes); larger batches grow it.
const WRITE_BUF_BYTES: usize = 512;
/// Most write buffers kept in a loop's pool (16 MiB at most): a rank batch can make
/// every session of a loop push at once, and each needs a buffer until its write is
/// done; sized so such bursts reuse buffers instead of allocating.
const POOL_MAX: usize = 32 * 1024;
/// Longest a rank batch waits to be applied together with later ones, on loops with
/// at least `core.broadcast_coalesce_min_sessions` sessions. Below that a loop applies
/// each batch at once: a pass is cheap and coalescing would only add latency (10,000
/// players in `queue-bench drain`: same server CPU either way, max position-push lag
/// 62 -> 116 ms when always coalescing). Above it a pass costs O(sessions) (2.4 ms at
/// 500,000 sessions in `queue-bench core`), one per core flush (up to ~100/s).
const RANKS_COALESCE: Duration = Duration::from_millis(50);
/// Pending rank batches that force a pass at once (bounds the per-session work).
const RANKS_PENDING_MAX: usize = 64;
/// Most time a closing session gets to flush before its socket is shut.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// How often timeouts are checked and the core backlog retried.
const SWEEP: Duration = Duration::from_millis(250);

/// What an io loop needs from the config.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Largest frame body accepted.
    pub max_frame_bytes: u32,
    /// Largest frame body accepted before login.
    pub max_login_frame_bytes: u32,
    /// Most time a stopping loop waits for sessions to flush `kicked` `shutdown`.
    pub drain_timeout: Duration,
    /// Connect-to-login limit.
    pub login_timeout: Duration,
    /// Silence limit after login.
    pub idle_timeout: Duration,
    /// Least time between position pushes to one session.
    pub push_interval: Duration,
    /// Outbound bytes limit per session.
    pub max_outbound_bytes: usize,
    /// `retry_after_secs` for `shutdown` kicks and SHUTTING_DOWN answers.
    pub retry_after_secs: u64,
    /// Logins per second on this loop; 0 = unlimited.
    pub logins_per_sec: u32,
    /// Sessions from which rank batches are coalesced (see `RANKS_COALESCE`).
    pub coalesce_min_sessions: usize,
    /// Login server address for `admitted` pushes.
    pub login_addr: Option<String>,
}

impl LoopConfig {
    /// The loop's part of `config`.
    pub fn from_config(config: &Config) -> LoopConfig {
        let s = &config.server;
        LoopConfig {
            max_frame_bytes: s.max_frame_bytes,
            max_login_frame_bytes: s.max_login_frame_bytes,
            drain_timeout: Duration::from_secs(s.drain_timeout_secs),
            login_timeout: Duration::from_secs(s.login_timeout_secs),
            idle_timeout: Duration::from_secs(s.idle_timeout_secs),
            push_interval: Duration::from_millis(s.push_interval_ms),
            max_outbound_bytes: s.max_outbound_bytes,
            retry_after_secs: s.shutdown_retry_after_secs,
            logins_per_sec: s.max_logins_per_sec_per_core,
            coalesce_min_sessions: config.core.broadcast_coalesce_min_sessions,
            login_addr: (!config.tokens.login_addr.is_empty())
                .then(|| config.tokens.login_addr.clone()),
        }
    }
}

/// Everything one loop thread starts with.
pub struct LoopSetup {
    /// This loop's index.
    pub id: LoopId,
    /// Its own SO_REUSEPORT listener (non-blocking).
    pub listener: std::net::TcpListener,
    /// Events from the core.
    pub events: Receiver<LoopEvent>,
    /// Doorbell paired with `events`.
    pub bell: BellRx,
    /// Into the core.
    pub core: Sender<CoreMsg>,
    /// Counters of all loops (this loop writes `stats[id]`).
    pub stats: Arc<Vec<LoopStats>>,
    /// Login ticket checks.
    pub tickets: Arc<TicketVerifier>,
    /// Open-connection limits shared by all loops.
    pub limits: Arc<ConnLimits>,
    /// Set while the server drains.
    pub draining: Arc<AtomicBool>,
    /// Loop settings.
    pub cfg: LoopConfig,
    /// Core to pin to, if any.
    pub pin: Option<core_affinity::CoreId>,
    /// Use the legacy (epoll) driver instead of io_uring.
    pub legacy: bool,
    /// When io_uring cannot be built on this thread, fall back to the legacy driver.
    pub fallback: bool,
}

/// What a loop knows of one queue.
#[derive(Debug, Clone, Copy, Default)]
struct QueueView {
    /// Players waiting, as last reported.
    len: u64,
    /// Measured admission rate, players/s.
    rate_per_s: f64,
    /// Upper bound of the keys of this loop's waiting sessions in the queue (exact
    /// after each scan, only ever raised between scans); `None` = no session here.
    max_key: Option<crate::msg::PlaceKey>,
}

/// A slot of the session table.
struct Slot {
    /// Bumped each time the slot is reused.
    generation: u32,
    /// The session living here, if any.
    session: Option<Rc<Session>>,
}

/// The loop's own state, shared by its tasks.
pub struct Shard {
    /// Loop index.
    pub id: LoopId,
    /// Settings.
    pub cfg: LoopConfig,
    /// All loops' counters.
    stats: Arc<Vec<LoopStats>>,
    /// Session table.
    slots: RefCell<Vec<Slot>>,
    /// Free slot indexes.
    free: RefCell<Vec<u32>>,
    /// Live sessions.
    live: Cell<usize>,
    /// Write buffers not in use.
    pool: RefCell<Vec<BytesMut>>,
    /// Read buffers not in use: a connection takes one when bytes arrive and gives it
    /// back once every frame in it is handled.
    read_pool: RefCell<Vec<BytesMut>>,
    /// Into the core.
    core: Sender<CoreMsg>,
    /// Messages the core inbox had no room for, oldest first.
    backlog: RefCell<VecDeque<CoreMsg>>,
    /// Ticket checks.
    pub tickets: Arc<TicketVerifier>,
    /// Open-connection limits shared by all loops.
    pub limits: Arc<ConnLimits>,
    /// Server drains.
    draining: Arc<AtomicBool>,
    /// Per queue: what this loop knows of it, from rank batches and join answers.
    queues: RefCell<Vec<QueueView>>,
    /// Sessions with a deferred position push.
    pending_push: RefCell<Vec<SessionId>>,
    /// Wakes the push flusher.
    push_wake: Notify,
    /// Wakes the acceptor to stop.
    stop_accept: Notify,
    /// Rank batches received so far (numbers them).
    batches_seen: Cell<u64>,
    /// Rank batches not applied yet, with their numbers (coalesced: one pass over the
    /// sessions applies them all).
    pending_ranks: RefCell<Vec<(u64, Arc<crate::msg::RankBatch>)>>,
    /// The emptied vector of the previous pass, reused (no allocation per pass).
    ranks_spare: RefCell<Vec<(u64, Arc<crate::msg::RankBatch>)>>,
    /// Wakes the rank applier.
    ranks_wake: Notify,
    /// Login token bucket: (tokens, last refill).
    login_bucket: Cell<(f64, Instant)>,
}

impl Shard {
    /// This loop's counters.
    pub fn stats(&self) -> &LoopStats {
        &self.stats[self.id as usize]
    }

    /// True while the server drains.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Takes one login from this loop's per-second budget; false when it is spent.
    pub fn take_login(&self) -> bool {
        let rate = f64::from(self.cfg.logins_per_sec);
        if rate == 0.0 {
            return true;
        }
        let (tokens, last) = self.login_bucket.get();
        let now = Instant::now();
        let tokens = (tokens + rate * now.duration_since(last).as_secs_f64()).min(rate);
        if tokens >= 1.0 {
            self.login_bucket.set((tokens - 1.0, now));
            true
        } else {
            self.login_bucket.set((tokens, now));
            false
        }
    }

    /// The connection reference of a session of this loop.
    pub fn conn(&self, session: SessionId) -> ConnRef {
        ConnRef {
            loop_id: self.id,
            session,
        }
    }

    /// A write buffer from the pool (allocates only when the pool is empty).
    pub fn pool_get(&self) -> BytesMut {
        self.pool
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(WRITE_BUF_BYTES))
    }

    /// Returns a cleared write buffer to the pool.
    pub fn pool_put(&self, buf: BytesMut) {
        let mut pool = self.pool.borrow_mut();
        if buf.capacity() >= WRITE_BUF_BYTES
            && buf.capacity() <= 4 * WRITE_BUF_BYTES
            && pool.len() < POOL_MAX
        {
            pool.push(buf);
        }
    }

    /// A read buffer for bytes that arrived (allocates only when the pool is empty).
    pub fn read_buf_get(&self) -> BytesMut {
        self.read_pool
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(READ_BUF_BYTES))
    }

    /// Returns a read buffer with nothing left to handle to the pool.
    pub fn read_buf_put(&self, mut buf: BytesMut) {
        buf.clear();
        let mut pool = self.read_pool.borrow_mut();
        if buf.capacity() <= 4 * WRITE_BUF_BYTES && pool.len() < POOL_MAX {
            pool.push(buf);
        }
    }

    /// (players waiting, admit rate) of a queue as last reported.
    pub fn queue_view(&self, queue: QueueId) -> (u64, f64) {
        self.queues
            .borrow()
            .get(queue as usize)
            .map_or((0, 0.0), |v| (v.len, v.rate_per_s))
    }

    fn with_queue_view<R>(&self, queue: QueueId, f: impl FnOnce(&mut QueueView) -> R) -> R {
        let mut queues = self.queues.borrow_mut();
        if queues.len() <= queue as usize {
            queues.resize(queue as usize + 1, QueueView::default());
        }
        f(&mut queues[queue as usize])
    }

    fn set_queue_view(&self, queue: QueueId, len: u64, rate: f64) {
        self.with_queue_view(queue, |v| {
            v.len = len;
            v.rate_per_s = rate;
        });
    }

    /// True when some change in `delta` lies ahead of a waiting session of this loop,
    /// i.e. the batch can move someone here (departures and insertions behind every
    /// local session, the common churn at the tail, move nobody).
    fn moves_someone(&self, delta: &crate::msg::QueueDelta) -> bool {
        let Some(max) = self
            .queues
            .borrow()
            .get(delta.queue as usize)
            .and_then(|v| v.max_key)
        else {
            return false;
        };
        delta.departed.first().is_some_and(|&k| k < max)
            || delta.inserted.first().is_some_and(|&k| k < max)
    }

    /// Sends to the core without blocking; keeps order through the backlog.
    pub fn to_core(&self, msg: CoreMsg) {
        let mut backlog = self.backlog.borrow_mut();
        if backlog.is_empty() {
            match self.core.try_send(msg) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(msg)) => backlog.push_back(msg),
            }
        } else {
            backlog.push_back(msg);
        }
    }

    fn retry_backlog(&self) {
        let mut backlog = self.backlog.borrow_mut();
        while let Some(msg) = backlog.pop_front() {
            match self.core.try_send(msg) {
                Ok(()) => {}
                Err(TrySendError::Full(msg)) => {
                    backlog.push_front(msg);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => backlog.clear(),
            }
        }
    }

    /// Registers a new connection; `None` when the table cannot grow.
    pub fn insert_session(
        &self,
        stream: monoio::net::TcpStream,
        peer: std::net::SocketAddr,
    ) -> Option<Rc<Session>> {
        let mut slots = self.slots.borrow_mut();
        let index = match self.free.borrow_mut().pop() {
            Some(i) => i,
            None => {
                if slots.len() >= u32::MAX as usize {
                    return None;
                }
                slots.push(Slot {
                    generation: 0,
                    session: None,
                });
                (slots.len() - 1) as u32
            }
        };
        let slot = &mut slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        let id = (u64::from(slot.generation) << 32) | u64::from(index);
        let session = Rc::new(Session::new(id, stream, peer));
        slot.session = Some(session.clone());
        self.live.set(self.live.get() + 1);
        LoopStats::add(&self.stats().connections, 1);
        LoopStats::add(&self.stats().accepted, 1);
        Some(session)
    }

    /// The live session with this id.
    pub fn session(&self, id: SessionId) -> Option<Rc<Session>> {
        let slots = self.slots.borrow();
        let slot = slots.get((id & 0xffff_ffff) as usize)?;
        if u64::from(slot.generation) != id >> 32 {
            return None;
        }
        slot.session.clone()
    }

    /// Drops a closed session from the table, telling the core its place is in grace.
    pub fn release(&self, session: &Session) {
        if !session.left.get() && session.holds_place.get() {
            self.to_core(CoreMsg::Disconnect {
                conn: self.conn(session.id),
                queue: session.queue.get(),
                user: session.user.get(),
                report: session.report(),
            });
        }
        self.forget(session);
    }

    /// Drops a session from the table without telling the core.
    pub fn forget(&self, session: &Session) {
        let index = (session.id & 0xffff_ffff) as u32;
        let mut slots = self.slots.borrow_mut();
        if let Some(slot) = slots.get_mut(index as usize) {
            if slot.session.as_ref().is_some_and(|s| s.id == session.id) {
                slot.session = None;
                self.free.borrow_mut().push(index);
                self.live.set(self.live.get() - 1);
                self.stats().connections.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    fn for_each_session(&self, mut f: impl FnMut(&Rc<Session>)) {
        // Collecting would allocate; iterate by index and re-borrow per slot so `f` may
        // touch the table (e.g. `send` never does, but a kick may close).
        let n = self.slots.borrow().len();
        for i in 0..n {
            let session = self.slots.borrow().get(i).and_then(|s| s.session.clone());
            if let Some(session) = session {
                f(&session);
            }
        }
    }

    /// A position changed: push now, or defer to keep one push per interval.
    fn position_changed(&self, session: &Session, now: Instant) {
        if session.position.get() == session.pushed_position.get() || session.push_pending.get() {
            return;
        }
        if now.duration_since(session.last_push.get()) >= self.cfg.push_interval {
            self.push_position(session, now);
        } else {
            session.push_pending.set(true);
            self.pending_push.borrow_mut().push(session.id);
            self.push_wake.notify();
        }
    }

    fn push_position(&self, session: &Session, now: Instant) {
        session.last_push.set(now);
        self.stats().pushed(session.queue_id());
        session.send_position(self, 0);
    }

    fn handle_event(&self, event: LoopEvent) -> bool {
        match event {
            LoopEvent::Ranks(batch) => {
                for delta in &batch.queues {
                    self.set_queue_view(delta.queue, delta.queue_len, delta.rate_per_s);
                }
                let seq = self.batches_seen.get();
                self.batches_seen.set(seq + 1);
                if !batch.queues.iter().any(|d| self.moves_someone(d)) {
                    // Only appends, or changes behind everyone here: nobody moves.
                    return true;
                }
                let mut pending = self.pending_ranks.borrow_mut();
                pending.push((seq, batch));
                if pending.len() >= RANKS_PENDING_MAX
                    || self.live.get() < self.cfg.coalesce_min_sessions
                {
                    drop(pending);
                    self.apply_ranks();
                } else if pending.len() == 1 {
                    self.ranks_wake.notify();
                }
            }
            LoopEvent::Resync(list) => {
                // Exact positions as of after every batch sent before it.
                self.apply_ranks();
                let now = Instant::now();
                for (id, position) in list {
                    if let Some(s) = self.session(id) {
                        if s.phase.get() == Phase::Waiting && s.position.get() != position {
                            tracing::debug!(
                                session = id,
                                was = s.position.get(),
                                position,
                                "position resynced"
                            );
                            s.position.set(position);
                            self.position_changed(&s, now);
                        }
                    }
                }
            }
            LoopEvent::Joined {
                session,
                seq,
                user,
                result,
            } => self.joined(session, seq, user, result),
            LoopEvent::Admitted {
                session,
                token,
                expires_at,
            } => {
                if let Some(s) = self.session(session) {
                    if s.phase.get() == Phase::Waiting {
                        s.phase.set(Phase::Admitted);
                        s.holds_place.set(false);
                        self.send_admitted(&s, &token, expires_at);
                    }
                }
            }
            LoopEvent::Kick { session, reason } => {
                if let Some(s) = self.session(session) {
                    // The core gave the place to another connection: nothing to release.
                    s.holds_place.set(false);
                    s.kick(self, reason, None);
                }
            }
            LoopEvent::Shutdown => return false,
        }
        true
    }

    /// Applies every pending rank batch in one pass over the sessions: each session
    /// moves by the sum of the shifts of the batches that came after its own join
    /// answer (its position already counted the earlier ones). The pass also
    /// recomputes the exact largest waiting key of each queue it touched.
    fn apply_ranks(&self) {
        let pending = std::mem::replace(
            &mut *self.pending_ranks.borrow_mut(),
            std::mem::take(&mut *self.ranks_spare.borrow_mut()),
        );
        if pending.is_empty() {
            *self.ranks_spare.borrow_mut() = pending;
            return;
        }
        for (_, batch) in &pending {
            for delta in &batch.queues {
                self.with_queue_view(delta.queue, |v| v.max_key = None);
            }
        }
        let now = Instant::now();
        self.for_each_session(|s| {
            if s.phase.get() != Phase::Waiting {
                return;
            }
            let (queue, key, since) = (s.queue.get(), s.key.get(), s.since_batch.get());
            let mut touched = false;
            let mut shift = 0i64;
            let mut gone = false;
            for (seq, batch) in &pending {
                if let Some(delta) = batch.queues.iter().find(|d| d.queue == queue) {
                    touched = true;
                    if *seq >= since {
                        let (by, left) = delta.shift_or_gone(key);
                        shift += by;
                        gone |= left;
                    }
                }
            }
            if gone {
                // Its place left the queue: the admission or kick that follows on this
                // channel settles the session; "position 1 of 0" would be a lie.
                return;
            }
            if touched {
                self.with_queue_view(queue, |v| {
                    v.max_key = Some(v.max_key.map_or(key, |m| m.max(key)));
                });
            }
            if shift != 0 {
                s.position
                    .set(s.position.get().saturating_add_signed(shift));
                self.position_changed(s, now);
            }
        });
        let mut pending = pending;
        pending.clear();
        *self.ranks_spare.borrow_mut() = pending;
    }

    fn send_admitted(&self, s: &Session, token: &str, expires_at: u64) {
        self.stats().pushed(s.queue_id());
        let addr = self.cfg.login_addr.as_deref();
        s.send(self, 1, |out| {
            protocol::encode_admitted(out, token, expires_at, addr)
        });
    }

    fn joined(
        &self,
        id: SessionId,
        seq: u32,
        user: u64,
        result: Result<crate::msg::JoinOk, JoinError>,
    ) {
        let Some(s) = self
            .session(id)
            .filter(|s| s.phase.get() == Phase::LoginPending)
        else {
            // The connection closed while its login was with the core.
            if let Ok(ok) = result {
                if ok.admitted.is_none() {
                    self.to_core(CoreMsg::Disconnect {
                        conn: self.conn(id),
                        queue: ok.queue,
                        user,
                        report: crate::msg::SessionReport::default(),
                    });
                }
            }
            return;
        };
        match result {
            Ok(ok) => {
                self.stats().logged_in(ok.queue);
                s.queue.set(ok.queue);
                s.in_queue.set(true);
                self.set_queue_view(ok.queue, ok.queue_len, ok.rate_per_s);
                let eta = crate::msg::eta_secs(ok.position, ok.rate_per_s);
                let admitted = ok.admitted.is_some();
                s.send(self, 1, |out| {
                    protocol::encode_login_ok(
                        out,
                        seq,
                        admitted,
                        ok.position,
                        ok.queue_len,
                        eta,
                        ok.resumed,
                    )
                });
                if let Some((token, expires_at)) = ok.admitted {
                    s.phase.set(Phase::Admitted);
                    self.send_admitted(&s, &token, expires_at);
                } else {
                    s.key.set(ok.key);
                    // Batches received so far are older than this position.
                    s.since_batch.set(self.batches_seen.get());
                    self.with_queue_view(ok.queue, |v| {
                        v.max_key = Some(v.max_key.map_or(ok.key, |m| m.max(ok.key)));
                    });
                    s.holds_place.set(true);
                    s.position.set(ok.position);
                    s.pushed_position.set(ok.position);
                    s.last_push.set(Instant::now());
                    s.phase.set(Phase::Waiting);
                }
                s.login_done();
            }
            Err(e) => {
                let (code, msg) = match e {
                    JoinError::QueueFull => (Code::QueueFull, "queue is full"),
                    JoinError::UnknownQueue => (Code::UnknownQueue, "no such queue"),
                    JoinError::ShuttingDown => (Code::ShuttingDown, "server is shutting down"),
                    JoinError::Gone => (Code::Internal, "place lost, log in again"),
                };
                s.phase.set(Phase::Connected);
                if code == Code::ShuttingDown {
                    self.stats().error(code);
                    let retry = self.cfg.retry_after_secs;
                    s.send(self, 1, |out| {
                        protocol::encode_error_retry(out, "login", seq, code, msg, retry)
                    });
                    s.close();
                } else {
                    session::reply_error(self, &s, "login", seq, code, msg);
                }
                s.login_done();
            }
        }
        // The reader reads nothing while the login is with the core, so `last_frame`
        // is still the time the `login` frame was read.
        self.stats()
            .login_answer
            .observe(s.last_frame.get().elapsed());
    }

    /// Kicks idle sessions and closes those that never logged in.
    fn sweep(&self) {
        self.retry_backlog();
        let now = Instant::now();
        self.for_each_session(|s| match s.phase.get() {
            Phase::Connected if now.duration_since(s.connected_at) >= self.cfg.login_timeout => {
                s.close();
            }
            Phase::Waiting | Phase::Admitted
                if now.duration_since(s.last_frame.get()) >= self.cfg.idle_timeout =>
            {
                s.kick(self, KickReason::IdleTimeout, None);
            }
            Phase::Closing if s.flush_overdue(now, CLOSE_FLUSH) => s.abort(),
            _ => {}
        });
    }

    /// Sends deferred pushes that are due; returns the earliest next due time.
    fn flush_pushes(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut pending = self.pending_push.borrow_mut();
        pending.retain(|&id| {
            let Some(s) = self.session(id) else {
                return false;
            };
            if s.phase.get() != Phase::Waiting {
                s.push_pending.set(false);
                return false;
            }
            let due = s.last_push.get() + self.cfg.push_interval;
            if due <= now {
                s.push_pending.set(false);
                if s.position.get() != s.pushed_position.get() {
                    self.push_position(&s, now);
                }
                false
            } else {
                next = Some(next.map_or(due, |n| n.min(due)));
                true
            }
        });
        next
    }
}

/// Starts the loop thread; returns once its runtime is up (or failed to come up).
pub fn spawn(setup: LoopSetup) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), String>>(1);
    let handle = std::thread::Builder::new()
        .name(format!("io-{}", setup.id))
        .spawn(move || {
            if let Some(core) = setup.pin {
                if !core_affinity::set_for_current(core) {
                    tracing::warn!(
                        loop_id = setup.id,
                        "could not pin io loop to core {}",
                        core.id
                    );
                }
            }
            if !setup.legacy {
                match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .enable_timer()
                    .build()
                {
                    Ok(mut rt) => {
                        let _ = ready_tx.send(Ok(()));
                        return rt.block_on(run(setup));
                    }
                    Err(e) if setup.fallback => tracing::warn!(
                        loop_id = setup.id,
                        "io_uring runtime failed ({e}): using the legacy epoll driver"
                    ),
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("io_uring runtime: {e}")));
                        return;
                    }
                }
            }
            match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
            {
                Ok(mut rt) => {
                    let _ = ready_tx.send(Ok(()));
                    rt.block_on(run(setup));
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("legacy runtime: {e}")));
                }
            }
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(std::io::Error::other(e)),
        Err(_) => Err(std::io::Error::other("io loop thread died while starting")),
    }
}

async fn run(setup: LoopSetup) {
    let login_burst = f64::from(setup.cfg.logins_per_sec);
    let shard = Rc::new(Shard {
        id: setup.id,
        cfg: setup.cfg,
        stats: setup.stats,
        slots: RefCell::new(Vec::new()),
        free: RefCell::new(Vec::new()),
        live: Cell::new(0),
        pool: RefCell::new(Vec::new()),
        read_pool: RefCell::new(Vec::new()),
        core: setup.core,
        backlog: RefCell::new(VecDeque::new()),
        tickets: setup.tickets,
        limits: setup.limits,
        draining: setup.draining,
        queues: RefCell::new(Vec::new()),
        pending_push: RefCell::new(Vec::new()),
        push_wake: Notify::default(),
        stop_accept: Notify::default(),
        login_bucket: Cell::new((login_burst, Instant::now())),
        batches_seen: Cell::new(0),
        pending_ranks: RefCell::new(Vec::new()),
        ranks_spare: RefCell::new(Vec::new()),
        ranks_wake: Notify::default(),
    });
    let listener = match monoio::net::TcpListener::from_std(setup.listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("io loop {}: listener: {e}", shard.id);
            return;
        }
    };
    let acceptor = monoio::spawn(accept(shard.clone(), listener));
    monoio::spawn(sweeper(shard.clone()));
    monoio::spawn(push_flusher(shard.clone()));
    monoio::spawn(rank_applier(shard.clone()));
    events(&shard, setup.events, setup.bell).await;

    // Drain: stop accepting, kick everyone, give writers a moment to flush.
    shard.stop_accept.notify();
    acceptor.await;
    let retry = shard.cfg.retry_after_secs;
    shard.for_each_session(|s| s.kick(&shard, KickReason::Shutdown, Some(retry)));
    let deadline = Instant::now() + shard.cfg.drain_timeout;
    while shard.live.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    shard.for_each_session(|s| s.abort());
    shard.retry_backlog();
    tracing::debug!(loop_id = shard.id, "io loop stopped");
}

async fn accept(shard: Rc<Shard>, listener: monoio::net::TcpListener) {
    loop {
        monoio::select! {
            _ = shard.stop_accept.wait() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match shard.limits.acquire(peer.ip()) {
                    Ok(()) => {
                        monoio::spawn(session::serve(shard.clone(), stream, peer));
                    }
                    Err(refused) => {
                        LoopStats::add(&shard.stats().refused, 1);
                        monoio::spawn(session::refuse(stream, refused));
                    }
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(loop_id = shard.id, "accept failed: {e}");
                    monoio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

async fn events(shard: &Rc<Shard>, rx: Receiver<LoopEvent>, bell: BellRx) {
    let (armed, bell) = bell.into_parts();
    let mut bell = match monoio::net::UnixStream::from_std(bell) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("io loop {}: doorbell: {e}", shard.id);
            return;
        }
    };
    let mut buf = vec![0u8; 64];
    loop {
        while let Ok(event) = rx.try_recv() {
            if !shard.handle_event(event) {
                return;
            }
        }
        doorbell::arm(&armed);
        if !rx.is_empty() {
            doorbell::disarm(&armed);
            continue;
        }
        let (res, b) = bell.read(buf).await;
        buf = b;
        if let Err(e) = res {
            tracing::error!("io loop {}: doorbell read: {e}", shard.id);
            return;
        }
    }
}

async fn sweeper(shard: Rc<Shard>) {
    loop {
        monoio::time::sleep(SWEEP).await;
        shard.sweep();
    }
}

/// Applies rank batches at most every `RANKS_COALESCE` (capped below the push interval):
/// under a stream of admissions and leaves this is one pass over the sessions per
/// period instead of one per core flush.
async fn rank_applier(shard: Rc<Shard>) {
    let delay = (shard.cfg.push_interval / 4).min(RANKS_COALESCE);
    loop {
        shard.ranks_wake.wait().await;
        monoio::time::sleep(delay).await;
        shard.apply_ranks();
    }
}

async fn push_flusher(shard: Rc<Shard>) {
    loop {
        match shard.flush_pushes() {
            None => shard.push_wake.wait().await,
            Some(due) => {
                // A newly deferred session may be due sooner than `due`: wake for it too.
                let sleep = monoio::time::sleep(due.saturating_duration_since(Instant::now()));
                monoio::select! {
                    _ = sleep => {},
                    _ = shard.push_wake.wait() => {},
                }
            }
        }
    }
}
