//! The edge's side of the node link: one client per remote owner node, acting like a
//! core for the sessions whose queue that node owns. Loops `try_send` it their
//! `Join`/`Leave`/`Disconnect` (bounded inbox, each loop with its own ordered backlog,
//! as into the local core); its writer thread batches what is queued into one frame
//! per round; its reader thread relays the owner's events to the right loop's channel
//! and rings that loop's doorbell once per frame.
//!
//! Invariants:
//! - sessions cross as packed ids (`codec::pack_session`: the loop in bits 24..32);
//!   answers are unpacked and go to that loop only; rank batches (queue ids mapped into
//!   this link's range) go to every loop, one `Arc` for all;
//! - per loop, events keep the owner's order (one reader thread, FIFO channels; a full
//!   loop channel makes the reader wait, ringing the loop, never reorder);
//! - while the owner is unreachable a `Join` is answered SHUTTING_DOWN at once (the
//!   client retries later), never left waiting; `Leave`/`Disconnect` are not sent
//!   (the owner's places of a broken link are not released: see the module `link`)
//!   but end the place in the book, so it is never re-submitted;
//! - the book (`places`) knows every waiting place behind the link, and each queue's
//!   latest admitted marks from the owner's rank batches (the reader updates them with
//!   the frame's lock, no allocation), sent with every re-submission; after a broken
//!   connection they are re-submitted to a new owner the router names ([`Retarget`]),
//!   each queue's to its own new owner (`follow`), or kicked once the same owner
//!   process answers or `orphan_max` passed (`relay`);
//! - the owner's incarnation (`hello`) is remembered per address: another one after a
//!   re-dial is a restarted owner, not a cut link: its places are not in that process's
//!   grace, so they wait for the router to name each queue's owner (a new epoch) and go
//!   there (`relay`, `EdgeLink::owner_restarted`), never kicked to resume from nothing;
//! - a broken connection (the reader saw it, or a write failed) holds the places once,
//!   before the writer re-dials: re-submissions it never answered go again, even to
//!   the same owner process (it may not have them), never kicked; its joins in flight
//!   leave the book; its reader relays nothing more (`places::Book::broke`);
//! - a `Leave`/`Disconnect` of a place whose re-submission is unanswered waits for the
//!   answer to map the new owner's queue id and then goes out (at most one idle poll
//!   later); the answer is not relayed to the ended session.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TrySendError};

use self::places::{Book, Was};
use super::codec::{self, pack_session, FrameBuf, PREAMBLE};
use super::hello::{read_incarnation, write_hello};
use super::stats::LinkStats;
use crate::doorbell::Bell;
use crate::msg::{local_queue, CoreMsg, JoinError, LoopEvent, SessionId, UserId};

mod follow;
mod places;
mod relay;

use self::follow::Follow;
use self::relay::Relay;

/// How often a stopping or idle writer looks at the stop flag.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Least time between two failed connection attempts to an unreachable owner.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
/// Longest a connection attempt (and its preamble exchange) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most messages in one frame from the edge.
const BATCH_MAX: usize = 4096;

/// One local io loop as the link's reader sees it.
pub struct LoopOut {
    /// The loop's event channel.
    pub events: Sender<LoopEvent>,
    /// Its doorbell.
    pub bell: Bell,
}

/// What a link client starts with.
pub struct EdgeLink {
    /// The link's index (its queue id range, see `msg::remote_queue`).
    pub index: usize,
    /// This node's id (sent in the hello after the preambles).
    pub me: String,
    /// The link's counters (`/metrics`).
    pub stats: Arc<LinkStats>,
    /// The owner node's id (for logs).
    pub node: String,
    /// The owner's `advertise_link`.
    pub addr: String,
    /// Messages from the loops.
    pub inbox: Receiver<CoreMsg>,
    /// Every local loop, by loop id.
    pub loops: Arc<Vec<LoopOut>>,
    /// Set when the server stops.
    pub stop: Arc<AtomicBool>,
    /// Set by the router when the owner died and another node took its queues: the
    /// new owner's `advertise_link` (see [`Retarget`]).
    pub retarget: Retarget,
    /// Longest the link's waiting places are held, unanswered, after the connection
    /// broke, waiting for the owner or a new owner; then they are kicked.
    pub orphan_max: Duration,
}

/// The new owners the router named for the dead owner's queues: queue name -> the new
/// owner's `advertise_link` (see `follow`).
pub type Retarget = Arc<Mutex<HashMap<String, String>>>;

/// Locks the book.
fn book(b: &Mutex<Book>) -> MutexGuard<'_, Book> {
    b.lock().unwrap_or_else(|e| e.into_inner())
}

/// Joins sent on a connection and not answered yet: packed session -> (seq, user).
/// Whoever takes an entry answers it (the reader with the owner's answer, or with
/// SHUTTING_DOWN when the connection breaks; the writer when its write fails), so a
/// login is answered exactly once. Locked by the link's two threads only, once a
/// frame, never by an io loop.
type Pending = Arc<Mutex<HashMap<SessionId, (u32, UserId)>>>;

/// A live connection to the owner.
struct Conn {
    /// The socket (write side; the reader thread holds a clone).
    stream: TcpStream,
    /// Set by the reader when the owner closed or sent garbage.
    broken: Arc<AtomicBool>,
    /// Joins in flight on this connection.
    pending: Pending,
    /// The owner process's incarnation, as it answered the hello.
    incarnation: u64,
    /// Its number in the book (`Book::connect`).
    connection: u64,
}

fn lock(p: &Pending) -> MutexGuard<'_, HashMap<SessionId, (u32, UserId)>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl EdgeLink {
    /// Starts the link's writer thread (it starts a reader per connection).
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("link-to-{}", self.node))
            .spawn(move || self.run())
    }

    fn run(self) {
        let follow = Follow::new(self.addr.clone(), &Default::default());
        self.run_with(Book::default(), follow);
    }

    /// The writer's loop, from `places` and `f` (a child link starts with held places).
    fn run_with(self, places: Book, f: Follow) {
        self.run_shared(Arc::new(Mutex::new(places)), f);
    }

    /// [`EdgeLink::run_with`] on a book shared with the caller (tests look into it).
    fn run_shared(self, places: Arc<Mutex<Book>>, mut f: Follow) {
        let mut conn: Option<Conn> = None;
        let mut last_try: Option<Instant> = None;
        let (mut batch, mut kept) = (Vec::new(), Vec::new());
        let mut frame = FrameBuf::default();
        let mut moved = f.moved;
        // The incarnation of the owner process last connected at `f.addr`.
        let mut seen: Option<u64> = None;
        while !self.stop.load(Ordering::Relaxed) {
            match self.inbox.recv_timeout(IDLE_POLL) {
                Ok(msg) => batch.push(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < BATCH_MAX {
                let Ok(msg) = self.inbox.try_recv() else {
                    break;
                };
                batch.push(msg);
            }
            if !f.children.is_empty() {
                kept.extend(batch.drain(..).filter_map(|m| f.forward(m)));
                std::mem::swap(&mut batch, &mut kept);
            }
            moved |= self.follow_and_check(&mut f, &places, &mut conn);
            let orphaned = book(&places).next_round(conn.is_some(), &mut batch);
            if batch.is_empty() && orphaned.is_none() {
                continue;
            }
            if orphaned.is_some_and(|t| t.elapsed() >= self.orphan_max) {
                self.give_up(&places, f.moved);
            }
            // Only failed attempts are spaced out: a link that broke is re-dialled at once.
            if conn.is_none() && last_try.is_none_or(|t| t.elapsed() >= RECONNECT_MIN) {
                conn = self.connect(&f.addr, &places);
                last_try = conn.is_none().then(Instant::now);
                if let Some(c) = &conn {
                    let fresh = std::mem::take(&mut moved);
                    let owner = (c.incarnation, &mut seen);
                    self.connected(owner, fresh, &places, &mut f, &mut batch);
                }
            } else if conn.is_some() && f.moved && orphaned.is_some() {
                // A queue's new owner named since: it may be the one this link follows.
                self.resubmit(&places, false, &f, &mut batch);
            }
            if batch.is_empty() {
                continue;
            }
            let sent = conn
                .as_mut()
                .is_some_and(|c| self.write(c, &places, &mut batch, &mut frame));
            if !sent {
                if let Some(c) = conn.take() {
                    let _ = c.stream.shutdown(Shutdown::Both);
                }
                self.refuse(&places, &mut batch);
            }
            batch.clear();
        }
        if let Some(c) = conn {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
    }

    /// Follows the router's new owners ([`EdgeLink::follow`]); when this link's own
    /// owner lost its queues, shuts the connection down: a hung or partitioned host
    /// keeps its socket open and would never break it, so the reader then holds the
    /// places and the re-dial re-submits them to the new owner. Drops `conn` once its
    /// reader saw it broken. True when this link's owner changed.
    fn follow_and_check(
        &self,
        f: &mut Follow,
        places: &Arc<Mutex<Book>>,
        conn: &mut Option<Conn>,
    ) -> bool {
        let moved = self.follow(f, places);
        if let Some(c) = conn.as_ref().filter(|_| moved) {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
        if conn
            .as_ref()
            .is_some_and(|c| c.broken.load(Ordering::SeqCst))
        {
            *conn = None;
        }
        moved
    }

    /// Encodes `batch` as one frame and writes it; false when the link is broken, with
    /// `batch` left holding the joins nobody answered yet (for [`EdgeLink::refuse`]).
    fn write(
        &self,
        conn: &mut Conn,
        places: &Mutex<Book>,
        batch: &mut Vec<CoreMsg>,
        frame: &mut FrameBuf,
    ) -> bool {
        frame.clear();
        let mut pending = lock(&conn.pending);
        let mut book = book(places);
        for msg in batch.iter_mut() {
            let conn_ref = match msg {
                CoreMsg::Join { conn, .. }
                | CoreMsg::Leave { conn, .. }
                | CoreMsg::Disconnect { conn, .. }
                | CoreMsg::Resubmit { conn, .. } => *conn,
                _ => continue,
            };
            match pack_session(conn_ref.loop_id, conn_ref.session) {
                Some(session) => {
                    let ends = matches!(msg, CoreMsg::Leave { .. } | CoreMsg::Disconnect { .. });
                    if let CoreMsg::Join {
                        seq, user, queue, ..
                    } = msg
                    {
                        pending.insert(session, (*seq, *user));
                        book.sent_join(session, queue.as_str());
                    } else if ends && !leaving(&mut book, session, msg) {
                        continue;
                    }
                    frame.put_core(msg, session);
                }
                None => tracing::error!(
                    loop_id = conn_ref.loop_id,
                    "session id does not fit a link frame: message dropped"
                ),
            }
        }
        drop(book);
        drop(pending);
        if frame.is_empty() {
            return true;
        }
        let bytes = frame.finish();
        if conn.stream.write_all(bytes).is_ok() {
            self.stats.sent(bytes.len());
            return true;
        }
        // Not sent: the joins the reader has not answered yet are answered by `refuse`;
        // the places are held here, now (re-submissions included: sent again on the
        // next connection), and the connection's reader relays nothing more.
        let mut pending = lock(&conn.pending);
        batch.retain(|msg| match msg {
            CoreMsg::Join { conn: c, .. } => pack_session(c.loop_id, c.session)
                .is_some_and(|packed| pending.remove(&packed).is_some()),
            _ => false,
        });
        self::book(places).broke(conn.connection);
        false
    }

    /// The owner is unreachable: answers the batch's joins SHUTTING_DOWN; a leave or
    /// a disconnect ends its place in the book (never re-submitted later).
    fn refuse(&self, places: &Mutex<Book>, batch: &mut Vec<CoreMsg>) {
        let mut rung = vec![false; self.loops.len()];
        for msg in batch.drain(..) {
            if let CoreMsg::Leave { conn, .. } | CoreMsg::Disconnect { conn, .. } = &msg {
                if let Some(packed) = pack_session(conn.loop_id, conn.session) {
                    book(places).ended(packed);
                }
            }
            if let CoreMsg::Join {
                conn, seq, user, ..
            } = msg
            {
                let event = LoopEvent::Joined {
                    session: conn.session,
                    seq,
                    user,
                    result: Err(JoinError::ShuttingDown),
                };
                self.relay(conn.loop_id as usize, event, &mut rung);
            }
        }
        self.ring(&mut rung);
    }

    /// Dials the owner, exchanges preambles, starts the reader.
    fn connect(&self, target: &str, places: &Arc<Mutex<Book>>) -> Option<Conn> {
        let attempt = || -> std::io::Result<Conn> {
            let addr = target
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| std::io::Error::other("no address"))?;
            let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
            stream.set_write_timeout(Some(super::owner::LINK_IO_TIMEOUT))?;
            stream.write_all(PREAMBLE)?;
            let mut preamble = [0u8; 4];
            stream.read_exact(&mut preamble)?;
            if &preamble != PREAMBLE {
                return Err(std::io::Error::other(codec::CodecError::BadPreamble));
            }
            write_hello(&mut stream, &self.me)?;
            let incarnation = read_incarnation(&mut stream)?;
            stream.set_read_timeout(None)?;
            let broken = Arc::new(AtomicBool::new(false));
            let pending = Pending::default();
            let connection = book(places).connect();
            let reader = Relay {
                connection,
                index: self.index,
                loops: self.loops.clone(),
                stop: self.stop.clone(),
                broken: broken.clone(),
                pending: pending.clone(),
                places: places.clone(),
                stats: self.stats.clone(),
            };
            let read = stream.try_clone()?;
            // Counted closed by the reader when the connection ends.
            self.stats.opened();
            let stats = self.stats.clone();
            std::thread::Builder::new()
                .name(format!("link-from-{}", self.node))
                .spawn(move || reader.run(read))
                .inspect_err(|_| stats.closed())?;
            Ok(Conn {
                stream,
                broken,
                pending,
                incarnation,
                connection,
            })
        };
        match attempt() {
            Ok(conn) => {
                tracing::info!(node = %self.node, addr = %target, "node link connected");
                Some(conn)
            }
            Err(e) => {
                tracing::warn!(node = %self.node, addr = %target, error = %e, "node link: owner unreachable");
                None
            }
        }
    }

    fn relay(&self, loop_id: usize, event: LoopEvent, rung: &mut [bool]) {
        relay(&self.loops, &self.stop, loop_id, event, rung);
    }

    fn ring(&self, rung: &mut [bool]) {
        ring(&self.loops, rung);
    }
}

/// A `Leave`/`Disconnect` of `session`: its place ends in the book; true when it is to
/// be sent now (its queue id mapped to the owner's); a held place has no owner to
/// tell, and one whose re-submission is unanswered waits for the owner's queue id.
fn leaving(book: &mut Book, session: SessionId, msg: &mut CoreMsg) -> bool {
    match book.ended(session) {
        Was::Held => false,
        Was::Resubmitting => {
            if let Some(copy) = ending(msg) {
                book.defer(session, copy);
            }
            false
        }
        Was::Other => {
            if let CoreMsg::Leave { queue, .. } | CoreMsg::Disconnect { queue, .. } = msg {
                *queue = book.owner_queue(local_queue(*queue));
            }
            true
        }
    }
}

/// A copy of a `Leave`/`Disconnect` (to send later: `Book::defer`).
fn ending(msg: &CoreMsg) -> Option<CoreMsg> {
    match *msg {
        CoreMsg::Leave { conn, queue, user } => Some(CoreMsg::Leave { conn, queue, user }),
        CoreMsg::Disconnect {
            conn,
            queue,
            user,
            report,
        } => Some(CoreMsg::Disconnect {
            conn,
            queue,
            user,
            report,
        }),
        _ => None,
    }
}

/// Puts `event` into loop `loop_id`'s channel, in order: when it is full, rings the
/// loop (it drains its channel to empty before sleeping) and waits for room.
fn relay(
    loops: &[LoopOut],
    stop: &AtomicBool,
    loop_id: usize,
    event: LoopEvent,
    rung: &mut [bool],
) {
    let Some(out) = loops.get(loop_id) else {
        return;
    };
    rung[loop_id] = true;
    let mut event = match out.events.try_send(event) {
        Ok(()) => return,
        Err(TrySendError::Disconnected(_)) => return,
        Err(TrySendError::Full(e)) => e,
    };
    while !stop.load(Ordering::Relaxed) {
        out.bell.ring();
        match out.events.send_timeout(event, Duration::from_millis(5)) {
            Ok(()) | Err(SendTimeoutError::Disconnected(_)) => return,
            Err(SendTimeoutError::Timeout(e)) => event = e,
        }
    }
}

fn ring(loops: &[LoopOut], rung: &mut [bool]) {
    for (loop_id, r) in rung.iter_mut().enumerate() {
        if std::mem::take(r) {
            loops[loop_id].bell.ring();
        }
    }
}

#[cfg(test)]
mod tests;
