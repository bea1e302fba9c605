//! One player connection on an io loop: its state, its reader (frames in, answers
//! out) and its writer (one write per batch of ready frames).
//!
//! Invariants:
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

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::frame::{check_frame, HEADER_BYTES};
use crate::io_loop::Shard;
use crate::limits::Refused;
use crate::msg::{
    eta_secs, CoreMsg, KickReason, PlaceKey, QueueId, SessionId, SessionReport, UserId,
};
use crate::protocol::{self, Cmd, Code, Request};
use crate::stats::LoopStats;
use crate::wake::Notify;

/// Spare room a read is given at least (bytes).
const READ_SPARE_BYTES: usize = 64;

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
    pub id: SessionId,
    /// The client's address (sent with `login` for the player's journal).
    pub peer: SocketAddr,
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
    /// Life cycle.
    pub phase: Cell<Phase>,
    /// Queue of the place (valid from `Waiting`).
    pub queue: Cell<QueueId>,
    /// Logged-in player (valid from `LoginPending`).
    pub user: Cell<UserId>,
    /// Order key of the place (valid in `Waiting`).
    pub key: Cell<PlaceKey>,
    /// Current position (valid in `Waiting`).
    pub position: Cell<u64>,
    /// Number of the first rank batch newer than `position` (batches before it were
    /// already counted by the core when it answered the login).
    pub since_batch: Cell<u64>,
    /// Position last pushed or answered to the client.
    pub pushed_position: Cell<u64>,
    /// When the last position push went out.
    pub last_push: Cell<Instant>,
    /// Queued in the loop's deferred-push list.
    pub push_pending: Cell<bool>,
    /// When the connection was accepted (login timeout).
    pub connected_at: Instant,
    /// Last frame from the client (idle timeout).
    pub last_frame: Cell<Instant>,
    /// The player said `leave`: no disconnect to report.
    pub left: Cell<bool>,
    /// The core holds a place for this connection (disconnect must be reported).
    pub holds_place: Cell<bool>,
    /// `queue` is set: the login was answered OK (per-queue counters apply).
    pub in_queue: Cell<bool>,
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
            queue: Cell::new(0),
            user: Cell::new(0),
            key: Cell::new(0),
            position: Cell::new(0),
            since_batch: Cell::new(0),
            pushed_position: Cell::new(0),
            last_push: Cell::new(now),
            push_pending: Cell::new(false),
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

    /// The session's queue, once its login was answered OK (for per-queue counters).
    #[inline]
    pub fn queue_id(&self) -> Option<QueueId> {
        self.in_queue.get().then(|| self.queue.get())
    }

    /// True once the session is going away.
    pub fn closing(&self) -> bool {
        self.phase.get() == Phase::Closing
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
                *out = shard.pool_get();
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

    /// Closes once what is queued has been written.
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
    pub fn flush_overdue(&self, now: Instant, limit: std::time::Duration) -> bool {
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
        self.pushed_position.set(position);
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
            last_position: self.pushed_position.get(),
            kicked: self.kicked.get(),
        }
    }

    /// (position, queue_len, eta) as the client sees it now.
    pub fn view(&self, shard: &Shard) -> (u64, u64, Option<u64>) {
        let (queue_len, rate) = shard.queue_view(self.queue.get());
        if self.phase.get() == Phase::Admitted {
            return (0, queue_len, Some(0));
        }
        let position = self.position.get();
        (position, queue_len, eta_secs(position, rate))
    }
}

/// Answers a connection over the connection limits with RATE_LIMITED and closes it.
pub async fn refuse(mut stream: TcpStream, why: Refused) {
    let mut out = BytesMut::with_capacity(128);
    protocol::encode_error(&mut out, "", 0, Code::RateLimited, why.message());
    let (_, _) = stream.write_all(out).await;
    let _ = stream.shutdown().await;
}

/// Serves one accepted connection from `peer` (its IP already counted in the
/// connection limits) until it closes, then releases it.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream, peer: SocketAddr) {
    serve_counted(&shard, stream, peer).await;
    shard.limits.release(peer.ip());
}

async fn serve_counted(shard: &Rc<Shard>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    // Bound the kernel's share of a slow reader too (default autotuning allows MBs).
    let sndbuf = shard.cfg.max_outbound_bytes as libc::c_int;
    // SAFETY: setsockopt on our own socket with a correctly sized int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&sndbuf as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let Some(session) = shard.insert_session(stream, peer) else {
        return;
    };
    // Both tasks use the session's stream: the writer writes, the reader waits for
    // readability and reads (see `Session::stream`).
    let writer = monoio::spawn(write_loop(shard.clone(), session.clone()));
    if let Some(buf) = read_loop(shard, &session).await {
        shard.read_buf_put(buf);
    }
    // End of input (or we are closing): answer what was asked, then close. A writer
    // stuck on a client that does not read is cut by the sweeper (`flush_overdue`).
    session.close();
    writer.await;
    if session.phase.get() != Phase::LoginPending {
        shard.release(&session);
    } else {
        // The core's answer is still coming; the event task releases the place then.
        shard.forget(&session);
    }
}

async fn write_loop(shard: Rc<Shard>, session: Rc<Session>) {
    loop {
        if session.out.borrow().is_empty() {
            if session.closing() {
                break;
            }
            session.write_ready.wait().await;
            continue;
        }
        let buf = std::mem::take(&mut *session.out.borrow_mut());
        let (res, mut buf) = session.stream().write_all(buf).await;
        buf.clear();
        shard.pool_put(buf);
        if res.is_err() {
            break;
        }
    }
    // SAFETY: see `Session::abort`.
    unsafe { libc::shutdown(session.fd, libc::SHUT_RDWR) };
}

/// Reads and handles frames until the connection ends; returns the read buffer it
/// holds then, if any.
///
/// An idle connection holds no read buffer: once every frame read so far is handled,
/// the buffer goes back to the loop's pool and the reader waits for readability (an
/// io_uring poll, no buffer attached); it takes a buffer again only when bytes are
/// there. A partial frame keeps its buffer until the frame is complete.
async fn read_loop(shard: &Rc<Shard>, session: &Rc<Session>) -> Option<BytesMut> {
    let mut held: Option<BytesMut> = None;
    loop {
        if let Some(buf) = held.as_mut() {
            loop {
                if session.phase.get() == Phase::LoginPending {
                    session.login_answered.wait().await;
                    continue;
                }
                if session.closing() {
                    return held;
                }
                // A stranger may not make us buffer a full-size frame.
                let max = if session.phase.get() == Phase::Connected {
                    shard.cfg.max_login_frame_bytes
                } else {
                    shard.cfg.max_frame_bytes
                };
                match check_frame(buf, max) {
                    Ok(Some(len)) => {
                        handle_frame(shard, session, &buf[HEADER_BYTES..HEADER_BYTES + len]);
                        buf.advance(HEADER_BYTES + len);
                    }
                    Ok(None) => {
                        if buf.len() >= HEADER_BYTES {
                            let need = HEADER_BYTES
                                + u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                            buf.reserve(need - buf.len());
                        }
                        break;
                    }
                    Err(e) => {
                        reply_error(shard, session, "", 0, Code::BadFrame, &e.to_string());
                        session.close();
                        return held;
                    }
                }
            }
        }
        if held.as_ref().is_some_and(|b| b.is_empty()) {
            // Nothing pending: do not hold a buffer while the client is quiet.
            if let Some(buf) = held.take() {
                shard.read_buf_put(buf);
            }
        }
        if held.is_none() {
            if session.stream().readable(false).await.is_err() {
                return None;
            }
            held = Some(shard.read_buf_get());
        }
        let mut buf = held.take()?;
        if buf.capacity() - buf.len() < READ_SPARE_BYTES {
            buf.reserve(crate::io_loop::READ_BUF_BYTES);
        }
        // monoio reads at the buffer's start: hand it the spare tail only.
        let filled = buf.len();
        let (res, tail) = session.stream().read(buf.slice_mut(filled..)).await;
        let buf = tail.into_inner();
        match res {
            Ok(0) | Err(_) => return Some(buf),
            Ok(_) => held = Some(buf),
        }
    }
}

/// Wire name of a command, for echoing in answers.
fn cmd_name<'a>(cmd: &Cmd<'a>) -> &'a str {
    match cmd {
        Cmd::Login => "login",
        Cmd::Heartbeat => "heartbeat",
        Cmd::Position => "position",
        Cmd::Leave => "leave",
        Cmd::Unknown(name) => name,
    }
}

/// Answers with an error; closes when the code says so.
pub fn reply_error(shard: &Shard, session: &Session, cmd: &str, seq: u32, code: Code, msg: &str) {
    shard.stats().error(code);
    session.send(shard, 1, |out| {
        protocol::encode_error(out, cmd, seq, code, msg)
    });
    if code.closes() {
        session.close();
    }
}

fn handle_frame(shard: &Rc<Shard>, session: &Rc<Session>, body: &[u8]) {
    shard.stats().frame_in(session.queue_id());
    session.last_frame.set(Instant::now());
    let req = match protocol::parse_request(body) {
        Ok(req) => req,
        Err(e) => {
            reply_error(shard, session, "", 0, Code::BadFrame, &e.to_string());
            return;
        }
    };
    let name = cmd_name(&req.cmd);
    if req.ver != 1 {
        reply_error(
            shard,
            session,
            name,
            req.seq,
            Code::Unsupported,
            "unsupported protocol version",
        );
        return;
    }
    let phase = session.phase.get();
    match (&req.cmd, phase) {
        (Cmd::Unknown(_), _) => {
            reply_error(
                shard,
                session,
                name,
                req.seq,
                Code::Unsupported,
                "unknown cmd",
            );
        }
        (Cmd::Login, Phase::Connected) => login(shard, session, &req),
        (Cmd::Login, _) => {
            reply_error(
                shard,
                session,
                name,
                req.seq,
                Code::AlreadyLoggedIn,
                "already logged in",
            );
        }
        (_, Phase::Connected) => {
            reply_error(
                shard,
                session,
                name,
                req.seq,
                Code::NotLoggedIn,
                "login first",
            );
        }
        (Cmd::Heartbeat, _) => match protocol::parse_heartbeat(&req) {
            Ok(ts) => {
                let server_ms = crate::queue::core::unix_ms();
                session.send(shard, 1, |out| {
                    protocol::encode_heartbeat_ok(out, req.seq, ts, server_ms)
                });
            }
            Err(e) => reply_error(
                shard,
                session,
                name,
                req.seq,
                Code::BadFrame,
                &e.to_string(),
            ),
        },
        (Cmd::Position, _) => session.send_position(shard, req.seq),
        (Cmd::Leave, _) => {
            // Also once admitted: the player gives the unused token up (it stops
            // counting against capacity, and cannot be used any more).
            if matches!(phase, Phase::Waiting | Phase::Admitted) {
                shard.to_core(CoreMsg::Leave {
                    conn: shard.conn(session.id),
                    queue: session.queue.get(),
                    user: session.user.get(),
                });
            }
            session.left.set(true);
            session.send(shard, 1, |out| protocol::encode_leave_ok(out, req.seq));
            session.close();
        }
    }
}

fn login(shard: &Rc<Shard>, session: &Rc<Session>, req: &Request<'_>) {
    let data = match protocol::parse_login(req) {
        Ok(data) => data,
        Err(e) => {
            reply_error(
                shard,
                session,
                "login",
                req.seq,
                Code::BadFrame,
                &e.to_string(),
            );
            return;
        }
    };
    if shard.draining() {
        let retry = shard.cfg.retry_after_secs;
        shard.stats().error(Code::ShuttingDown);
        session.send(shard, 1, |out| {
            protocol::encode_error_retry(
                out,
                "login",
                req.seq,
                Code::ShuttingDown,
                "server is shutting down",
                retry,
            )
        });
        session.close();
        return;
    }
    if !shard.take_login() {
        reply_error(
            shard,
            session,
            "login",
            req.seq,
            Code::RateLimited,
            "too many logins, retry later",
        );
        return;
    }
    let ticket = match shard.tickets.verify(data.ticket.as_deref(), data.user_id) {
        Ok(ticket) => ticket,
        Err(e) => {
            reply_error(
                shard,
                session,
                "login",
                req.seq,
                Code::AuthFailed,
                &e.to_string(),
            );
            return;
        }
    };
    session.user.set(data.user_id);
    session.phase.set(Phase::LoginPending);
    shard.to_core(CoreMsg::Join {
        conn: shard.conn(session.id),
        seq: req.seq,
        user: data.user_id,
        queue: data.queue.as_ref().into(),
        prio: ticket.prio,
        peer: session.peer,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Size of what `f` returns, without calling it (the future of an async fn).
    fn returned_bytes<A, B, C, R>(_f: impl FnOnce(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// Size of what a two-argument `f` returns, without calling it.
    fn returned_bytes_2<A, B, R>(_f: impl FnOnce(A, B) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// The per-connection heap objects of an idle logged-in session stay small: this
    /// is what each one costs on top of its read buffer (see
    /// `bench/results/conn-memory-2026-11-26.md` for the whole breakdown).
    #[test]
    fn per_connection_objects_stay_small() {
        let session = std::mem::size_of::<Session>();
        let serve_future = returned_bytes(serve);
        let write_future = returned_bytes_2(write_loop);
        let read_future =
            returned_bytes_2(|shard: &'static Rc<Shard>, session: &'static Rc<Session>| {
                read_loop(shard, session)
            });
        let stream = std::mem::size_of::<TcpStream>();
        eprintln!(
            "TcpStream {stream} B, Session {session} B, serve future {serve_future} B (read loop {read_future} B), \
             write future {write_future} B"
        );
        // Measured 2026-11-26 (debug and release alike): 336, 672, 312. Headroom of
        // about 15%: growing past these bounds costs every idle player (10,000 players
        // x 100 B = 1 MB) and must be a decision, not an accident.
        assert!(session <= 384, "Session grew to {session} B");
        assert!(serve_future <= 768, "serve future grew to {serve_future} B");
        assert!(write_future <= 384, "write future grew to {write_future} B");
    }
}
