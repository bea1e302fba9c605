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
//!   unhandled bytes (a partial frame, or frames behind a pending login); an idle one,
//!   or one whose login is with the core, waits with no buffer (about 530 bytes less
//!   per idle connection; a login storm does not grow the pool to the logins in flight);
//! - what an idle connection keeps is small (`io_loop::tests::per_connection_objects_
//!   stay_small` bounds it): timestamps are 4- or 8-byte readings of a process-wide
//!   clock ([`clock_ms`], [`clock_ns`]), not 16-byte `Instant`s, and the tasks'
//!   futures keep no buffer beside the io_uring operation that owns it;
//! - a session in `Closing` accepts no new frames to send except what closes it, and
//!   its socket is shut down once the writer has flushed (or at once when it cannot).

pub mod frames;
pub mod io;

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
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
    /// [`clock_ms`] when the connection was accepted (login timeout, read only while
    /// `Connected`) and, from the first [`Session::close`] on, when it started closing
    /// (flush deadline): the two are never needed at once, so one 4-byte field.
    since_ms: Cell<u32>,
    /// [`clock_ns`] of the last frame from the client (idle timeout; the login answer
    /// latency, which needs sub-millisecond precision).
    last_frame_ns: Cell<u64>,
    /// The player said `leave`: no disconnect to report.
    left: Cell<bool>,
    /// The core holds a place for this connection (disconnect must be reported).
    holds_place: Cell<bool>,
    /// The place's queue is set: the login was answered OK (per-queue counters apply).
    in_queue: Cell<bool>,
    /// The socket was shut down already.
    aborted: Cell<bool>,
    /// Frames ready to be written (a pooled buffer, or empty with no capacity). A `Cell`
    /// (take, change, put back) rather than a `RefCell`: no borrow flag, 8 bytes less.
    out: Cell<BytesMut>,
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
            since_ms: Cell::new(clock_ms(now)),
            last_frame_ns: Cell::new(clock_ns(now)),
            left: Cell::new(false),
            holds_place: Cell::new(false),
            in_queue: Cell::new(false),
            aborted: Cell::new(false),
            out: Cell::new(BytesMut::new()),
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

    /// How long ago (as of `now`) the connection was accepted; meaningful while
    /// `Connected` (the login timeout).
    pub fn connected_for(&self, now: Instant) -> Duration {
        ms_since(self.since_ms.get(), now)
    }

    /// How long ago (as of `now`) the last frame from the client was read.
    pub fn since_last_frame(&self, now: Instant) -> Duration {
        Duration::from_nanos(clock_ns(now).saturating_sub(self.last_frame_ns.get()))
    }

    /// A frame from the client was read at `now`.
    pub fn frame_read(&self, now: Instant) {
        self.last_frame_ns.set(clock_ns(now));
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
            let mut out = self.out.take();
            if out.capacity() == 0 {
                out = shard.pools.write_get();
            }
            f(&mut out);
            let over = out.len() > shard.cfg.max_outbound_bytes;
            self.out.set(out);
            over
        };
        LoopStats::add(&shard.stats().frames_out, frames);
        if over {
            // Drop what it did not read, leave it only the `kicked` frame; the writer
            // delivers that if the client ever reads again, the sweeper cuts the socket
            // after `CLOSE_FLUSH` otherwise. Memory stays within the cap either way.
            tracing::debug!(session = self.id, "slow consumer cut off");
            {
                let mut out = self.out.take();
                out.clear();
                protocol::encode_kicked(&mut out, KickReason::SlowConsumer.as_str(), None);
                self.out.set(out);
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
        if self.phase.replace(Phase::Closing) != Phase::Closing {
            // From now on `since_ms` is the start of closing (see its doc).
            self.since_ms.set(clock_ms(Instant::now()));
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
        self.closing() && ms_since(self.since_ms.get(), now) >= limit
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

/// The sessions' clock origin: the first time any session read the clock (process-wide,
/// so sessions of every loop agree; read with one atomic load afterwards, no lock).
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Time since [`EPOCH`] (zero for an instant before it).
fn since_epoch(now: Instant) -> Duration {
    now.saturating_duration_since(*EPOCH.get_or_init(|| now))
}

/// `now` in milliseconds since [`EPOCH`], wrapping every 49.7 days (4 bytes instead of a
/// 16-byte `Instant`); read back only through [`ms_since`].
fn clock_ms(now: Instant) -> u32 {
    since_epoch(now).as_millis() as u32
}

/// `now` in nanoseconds since [`EPOCH`] (8 bytes; wraps after 584 years).
fn clock_ns(now: Instant) -> u64 {
    u64::try_from(since_epoch(now).as_nanos()).unwrap_or(u64::MAX)
}

/// Time from the [`clock_ms`] reading `then` to `now`. Wrapping arithmetic, exact for
/// any interval under 24.8 days (the intervals read are a login timeout and a flush
/// deadline: seconds); a `then` that is after `now` (another thread's newer reading)
/// reads as zero rather than as a huge interval.
fn ms_since(then: u32, now: Instant) -> Duration {
    ms_between(then, clock_ms(now))
}

/// [`ms_since`] on two [`clock_ms`] readings.
fn ms_between(then: u32, now: u32) -> Duration {
    let ms = now.wrapping_sub(then);
    if ms > u32::MAX / 2 {
        Duration::ZERO
    } else {
        Duration::from_millis(u64::from(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 4-byte clock reads intervals right across its wrap, and a reading newer
    /// than `now` (taken later by another task) as zero, never as ~49 days.
    #[test]
    fn compact_clock_reads_intervals() {
        let now = Instant::now();
        let t = clock_ms(now);
        let later = now + Duration::from_millis(1500);
        assert_eq!(ms_since(t, later), Duration::from_millis(1500));
        assert_eq!(ms_since(t.wrapping_add(5), now), Duration::ZERO);
        assert_eq!(ms_between(u32::MAX - 9, 20), Duration::from_millis(30));
        assert_eq!(ms_between(25, 20), Duration::ZERO);
        assert!(clock_ns(now + Duration::from_micros(300)) - clock_ns(now) >= 300_000);
    }
}
