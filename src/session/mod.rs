//! One player connection on an io loop: its state machine ([`Phase`], changed only by
//! the transition methods below), its outbound buffer and what it tells the core when
//! it ends. Its tasks live in [`io`] (reader and writer) and its request handling in
//! [`frames`]. A session sees its loop only through a [`Shard`] (pools, core link,
//! tracker, counters): it never needs the loop's session table or tasks.
//!
//! Invariants:
//! - life cycle: `Connected` -> `LoginPending` ([`Session::begin_login`]) -> `Waiting`
//!   ([`Session::wait_in_queue`]) or `Admitted` ([`Session::admitted_at_login`]) or
//!   back to `Connected` ([`Session::login_refused`]); `Waiting` -> `Admitted`
//!   ([`Session::admit`]); any -> `Closing` ([`Session::close`]), for good;
//! - exactly one response per request, in request order: while a `login` waits for the
//!   queue core the reader handles no further frame of this connection;
//! - every frame written goes through `Session::out`, which holds a pooled buffer only
//!   while it has bytes to send; the writer swaps it out, writes it whole, clears it
//!   and gives it back to the pool: no allocation per message in steady state;
//! - reads the same way: a connection holds a pooled read buffer only while it has
//!   unhandled bytes (a partial frame); an idle one waits for readability with no
//!   buffer (about 530 bytes less per idle connection);
//! - a session in `Closing` accepts no new frames to send except what closes it, and
//!   its socket is shut down once the writer has flushed (or at once when it cannot).

pub mod frames;
pub mod io;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::net::TcpStream;

use crate::msg::{eta_secs, KickReason, PlaceKey, QueueId, SessionId, SessionReport, UserId};
use crate::protocol;
use crate::shard::tracker::{Follow, Follows};
use crate::shard::Shard;
use crate::stats::LoopStats;
use crate::wake::Notify;

pub use frames::reply_error;
pub use io::{read_loop, refuse, write_loop};

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connected, no `login` yet.
    Connected,
    /// `login` sent to the queue core, answer not back yet.
    LoginPending,
    /// Holds a place and follows its position.
    Waiting,
    /// Admitted; the `admitted` push was (or is being) sent.
    Admitted,
    /// Going away: flushing what it was sent, then closed.
    Closing,
}

/// One connection's state, shared by its reader, its writer and the loop's event task.
pub struct Session {
    /// Id within the loop (slot + generation).
    id: SessionId,
    /// The client's address (sent with `login` for the player's journal).
    peer: SocketAddr,
    /// `position` requests answered (journal; reported with the disconnect).
    answered: Cell<u32>,
    /// `position` pushes sent (journal; reported with the disconnect).
    pushed: Cell<u32>,
    /// Why this loop kicked the session, if it did (journal).
    kicked: Cell<Option<KickReason>>,
    /// The socket, for `shutdown(2)` from any task of the loop.
    fd: i32,
    /// The connection, used by its reader and its writer task (see [`Session::stream`]);
    /// held here rather than split so it costs no allocation of its own.
    stream: std::cell::UnsafeCell<TcpStream>,
    /// Life cycle (see the module invariants).
    phase: Cell<Phase>,
    /// Logged-in player (valid from `LoginPending`).
    user: Cell<UserId>,
    /// The place's queue, position and push throttle (valid from `Waiting`).
    follow: Follow,
    /// When the connection was accepted (login timeout).
    connected_at: Instant,
    /// Last frame from the client (idle timeout).
    last_frame: Cell<Instant>,
    /// The player said `leave`: no disconnect to report.
    left: Cell<bool>,
    /// The core holds a place for this connection (disconnect must be reported).
    holds_place: Cell<bool>,
    /// The place's queue is set: the login was answered OK (per-queue counters apply).
    in_queue: Cell<bool>,
    /// When the session started closing (flush deadline).
    closing_since: Cell<Option<Instant>>,
    /// The socket was shut down already.
    aborted: Cell<bool>,
    /// Frames ready to be written (a pooled buffer, or empty with no capacity).
    out: RefCell<BytesMut>,
    /// Wakes the writer.
    write_ready: Notify,
    /// Wakes the reader when the login answer is in.
    login_answered: Notify,
}

impl Follows for Session {
    fn follow(&self) -> &Follow {
        &self.follow
    }

    fn waits(&self) -> bool {
        self.phase.get() == Phase::Waiting
    }
}

impl Session {
    /// A session for a fresh connection.
    pub fn new(id: SessionId, stream: TcpStream, peer: SocketAddr) -> Session {
        let now = Instant::now();
        let fd = stream.as_raw_fd();
        Session {
            id,
            peer,
            answered: Cell::new(0),
            pushed: Cell::new(0),
            kicked: Cell::new(None),
            fd,
            stream: std::cell::UnsafeCell::new(stream),
            phase: Cell::new(Phase::Connected),
            user: Cell::new(0),
            follow: Follow::new(now),
            connected_at: now,
            last_frame: Cell::new(now),
            left: Cell::new(false),
            holds_place: Cell::new(false),
            in_queue: Cell::new(false),
            closing_since: Cell::new(None),
            aborted: Cell::new(false),
            out: RefCell::new(BytesMut::new()),
            write_ready: Notify::default(),
            login_answered: Notify::default(),
        }
    }

    /// The stream, for one read-side or one write-side operation.
    ///
    /// Invariant (what makes the `UnsafeCell` sound, as in monoio's own `into_split`,
    /// which offers no readiness wait on its halves): all on one thread, and only the
    /// reader task reads or polls for readability and only the writer task writes, so
    /// the two never touch the same part of the stream.
    #[allow(clippy::mut_from_ref)]
    fn stream(&self) -> &mut TcpStream {
        // SAFETY: see above.
        unsafe { &mut *self.stream.get() }
    }

    /// Id within the loop.
    #[inline]
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Where it is in its life.
    #[inline]
    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    /// The session's queue, once its login was answered OK (for per-queue counters).
    #[inline]
    pub fn queue_id(&self) -> Option<QueueId> {
        self.in_queue.get().then(|| self.follow.queue())
    }

    /// True once the session is going away.
    pub fn closing(&self) -> bool {
        self.phase.get() == Phase::Closing
    }

    /// When the connection was accepted.
    pub fn connected_at(&self) -> Instant {
        self.connected_at
    }

    /// When the last frame from the client was read.
    pub fn last_frame(&self) -> Instant {
        self.last_frame.get()
    }

    /// `Connected` -> `LoginPending`: `login` from `user` goes to the core.
    pub fn begin_login(&self, user: UserId) {
        debug_assert_eq!(self.phase.get(), Phase::Connected);
        self.user.set(user);
        self.phase.set(Phase::LoginPending);
    }

    /// The login was answered OK in `queue` (before `wait_in_queue` or
    /// `admitted_at_login`, so the answer is counted for that queue).
    pub fn logged_in(&self, queue: QueueId) {
        self.follow.set_queue(queue);
        self.in_queue.set(true);
    }

    /// `LoginPending` -> `Waiting`: the place at `key`, `position` now (exact as of every
    /// rank batch the loop received), is followed from the next batch on.
    pub fn wait_in_queue(&self, shard: &Shard, key: PlaceKey, position: u64, now: Instant) {
        let queue = self.follow.queue();
        shard.tracker.start(&self.follow, queue, key, position, now);
        self.holds_place.set(true);
        self.phase.set(Phase::Waiting);
    }

    /// `LoginPending` -> `Admitted`: the login resumed an unused admission.
    pub fn admitted_at_login(&self) {
        self.phase.set(Phase::Admitted);
    }

    /// `LoginPending` -> `Connected`: the login was refused; the client may try again.
    pub fn login_refused(&self) {
        self.phase.set(Phase::Connected);
    }

    /// `Waiting` -> `Admitted` (the core gave the place its admission); false in any
    /// other phase (nothing to push then).
    pub fn admit(&self) -> bool {
        if self.phase.get() != Phase::Waiting {
            return false;
        }
        self.phase.set(Phase::Admitted);
        self.holds_place.set(false);
        true
    }

    /// The core gave the place to another connection: nothing to release.
    pub fn place_taken(&self) {
        self.holds_place.set(false);
    }

    /// What the core must be told when this session ends: (queue, user, report) when
    /// it holds a place it did not leave.
    pub fn place_to_release(&self) -> Option<(QueueId, UserId, SessionReport)> {
        (!self.left.get() && self.holds_place.get())
            .then(|| (self.follow.queue(), self.user.get(), self.report()))
    }

    /// Encodes frames into the outbound buffer with `f` and wakes the writer. A client
    /// that lets more than `max_outbound_bytes` pile up is cut off (`slow_consumer`).
    pub fn send(&self, shard: &Shard, frames: u64, f: impl FnOnce(&mut BytesMut)) {
        if self.closing() {
            return;
        }
        let over = {
            let mut out = self.out.borrow_mut();
            if out.capacity() == 0 {
                *out = shard.pools.write_get();
            }
            f(&mut out);
            out.len() > shard.cfg.max_outbound_bytes
        };
        LoopStats::add(&shard.stats().frames_out, frames);
        if over {
            // Drop what it did not read, leave it only the `kicked` frame; the writer
            // delivers that if the client ever reads again, the sweeper cuts the socket
            // after `CLOSE_FLUSH` otherwise. Memory stays within the cap either way.
            tracing::debug!(session = self.id, "slow consumer cut off");
            {
                let mut out = self.out.borrow_mut();
                out.clear();
                protocol::encode_kicked(&mut out, KickReason::SlowConsumer.as_str(), None);
            }
            self.kicked.set(Some(KickReason::SlowConsumer));
            shard
                .stats()
                .kicked(self.queue_id(), KickReason::SlowConsumer);
            self.close();
            return;
        }
        self.write_ready.notify();
    }

    /// Sends a `kicked` push and closes after it is flushed.
    pub fn kick(&self, shard: &Shard, reason: KickReason, retry_after_secs: Option<u64>) {
        shard.stats().kicked(self.queue_id(), reason);
        if !self.closing() {
            self.kicked.set(Some(reason));
        }
        self.send(shard, 1, |out| {
            protocol::encode_kicked(out, reason.as_str(), retry_after_secs)
        });
        self.close();
    }

    /// Any phase -> `Closing`: closes once what is queued has been written.
    pub fn close(&self) {
        self.phase.set(Phase::Closing);
        if self.closing_since.get().is_none() {
            self.closing_since.set(Some(Instant::now()));
        }
        self.login_answered.notify();
        self.write_ready.notify();
    }

    /// Closes now, dropping anything unsent (also unblocks a writer stuck on a client
    /// that does not read).
    pub fn abort(&self) {
        self.close();
        if !self.aborted.replace(true) {
            // SAFETY: plain syscall on a descriptor this session owns until both halves drop.
            unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        }
    }

    /// True when a closing session has had `limit` to flush and has not finished.
    pub fn flush_overdue(&self, now: Instant, limit: Duration) -> bool {
        self.closing_since
            .get()
            .is_some_and(|since| now.duration_since(since) >= limit)
    }

    /// The login answer arrived: let the reader go on.
    pub fn login_done(&self) {
        self.login_answered.notify();
    }

    /// Sends a `position` frame (response when `seq` > 0 or a push) with the latest value.
    pub fn send_position(&self, shard: &Shard, seq: u32) {
        let (position, queue_len, eta) = self.view(shard);
        self.follow.sent(position);
        let counter = if seq > 0 {
            &self.answered
        } else {
            &self.pushed
        };
        counter.set(counter.get().saturating_add(1));
        self.send(shard, 1, |out| {
            protocol::encode_position(out, seq, position, queue_len, eta)
        });
    }

    /// What the session tells the core when it ends (the player's journal).
    pub fn report(&self) -> SessionReport {
        SessionReport {
            answered: self.answered.get(),
            pushed: self.pushed.get(),
            last_position: self.follow.pushed_position(),
            kicked: self.kicked.get(),
        }
    }

    /// (position, queue_len, eta) as the client sees it now.
    pub fn view(&self, shard: &Shard) -> (u64, u64, Option<u64>) {
        let (queue_len, rate) = shard.tracker.queue_view(self.follow.queue());
        if self.phase.get() == Phase::Admitted {
            return (0, queue_len, Some(0));
        }
        let position = self.follow.position();
        (position, queue_len, eta_secs(position, rate))
    }
}
