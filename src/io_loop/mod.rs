//! One io loop: a pinned thread running a monoio runtime (io_uring, or the legacy
//! epoll driver where io_uring is unavailable) with its own SO_REUSEPORT listener. It
//! owns its sessions (a [`table::SessionTable`]), runs their tasks, and applies the
//! core's events ([`events`]: join answers, admissions, kicks, rank batches, resync
//! slices). What its sessions share (settings, core link, pools, login budget, rank
//! tracker) is its [`Shard`].
//!
//! Invariants:
//! - everything here is touched by this loop's thread only (`Rc`, `Cell`, `RefCell`);
//!   the only cross-thread traffic is the two channels and the stats atomics;
//! - the loop never blocks on the core (see [`crate::shard::core_link`]);
//! - the loop sleeps on its doorbell only after arming it and re-checking its channel;
//! - position pushes are throttled per session (see [`crate::shard::tracker`]).

mod events;
mod placement;
mod table;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;

use crate::cluster::routes::Routes;
use crate::doorbell::{self, BellRx};
use crate::limits::ConnLimits;
use crate::msg::{CoreMsg, KickReason, LoopEvent, LoopId};
use crate::session::{self, Phase, Session};
use crate::shard::{Shard, ShardParts};
use crate::stats::LoopStats;
use crate::token::TicketVerifier;
use crate::wake::Notify;
use table::SessionTable;

pub use crate::shard::LoopConfig;
pub use placement::{connection_budget, Placement};

/// Longest a rank batch waits to be applied together with later ones, on loops with
/// at least `core.broadcast_coalesce_min_sessions` sessions. Below that a loop applies
/// each batch at once: a pass is cheap and coalescing would only add latency (10,000
/// players in `queue-bench drain`: same server CPU either way, max position-push lag
/// 62 -> 116 ms when always coalescing). Above it a pass costs O(sessions) (2.4 ms at
/// 500,000 sessions in `queue-bench core`), one per core flush (up to ~100/s).
const RANKS_COALESCE: Duration = Duration::from_millis(50);
/// Most time a closing session gets to flush before its socket is shut.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// How often timeouts are checked and the core backlog retried.
const SWEEP: Duration = Duration::from_millis(250);

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
    /// Routes to remote owners (`Some` in cluster mode).
    pub routes: Option<Arc<Routes>>,
    /// Loop settings.
    pub cfg: LoopConfig,
    /// Core to pin to, if any.
    pub pin: Option<core_affinity::CoreId>,
    /// Use the legacy (epoll) driver instead of io_uring.
    pub legacy: bool,
    /// When io_uring cannot be built on this thread, fall back to the legacy driver.
    pub fallback: bool,
}

/// The loop's own state, shared by its tasks.
struct Loop {
    /// What its sessions share.
    shard: Rc<Shard>,
    /// Its sessions.
    table: SessionTable,
    /// Wakes the push flusher.
    push_wake: Notify,
    /// Wakes the acceptor to stop.
    stop_accept: Notify,
    /// Wakes the rank applier.
    ranks_wake: Notify,
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
            run_thread(setup, &ready_tx);
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(std::io::Error::other(e)),
        Err(_) => Err(std::io::Error::other("io loop thread died while starting")),
    }
}

/// Builds the runtime (io_uring, else legacy when allowed), says so, and runs the loop.
fn run_thread(setup: LoopSetup, ready: &Sender<Result<(), String>>) {
    if !setup.legacy {
        match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
        {
            Ok(mut rt) => {
                let _ = ready.send(Ok(()));
                return rt.block_on(run(setup));
            }
            Err(e) if setup.fallback => tracing::warn!(
                loop_id = setup.id,
                "io_uring runtime failed ({e}): using the legacy epoll driver"
            ),
            Err(e) => {
                let _ = ready.send(Err(format!("io_uring runtime: {e}")));
                return;
            }
        }
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut rt) => {
            let _ = ready.send(Ok(()));
            rt.block_on(run(setup));
        }
        Err(e) => {
            let _ = ready.send(Err(format!("legacy runtime: {e}")));
        }
    }
}

async fn run(setup: LoopSetup) {
    let shard = Shard::new(ShardParts {
        id: setup.id,
        cfg: setup.cfg,
        stats: setup.stats,
        core: setup.core,
        tickets: setup.tickets,
        limits: setup.limits,
        draining: setup.draining,
        routes: setup.routes,
    });
    let lp = Rc::new(Loop {
        shard: Rc::new(shard),
        table: SessionTable::default(),
        push_wake: Notify::default(),
        stop_accept: Notify::default(),
        ranks_wake: Notify::default(),
    });
    let listener = match monoio::net::TcpListener::from_std(setup.listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("io loop {}: listener: {e}", lp.shard.id);
            return;
        }
    };
    let acceptor = monoio::spawn(accept(lp.clone(), listener));
    monoio::spawn(sweeper(lp.clone()));
    monoio::spawn(push_flusher(lp.clone()));
    monoio::spawn(rank_applier(lp.clone()));
    events(&lp, setup.events, setup.bell).await;
    drain(&lp, acceptor).await;
    tracing::debug!(loop_id = lp.shard.id, "io loop stopped");
}

/// Stops accepting, kicks everyone `shutdown`, gives writers a moment to flush.
async fn drain(lp: &Loop, acceptor: monoio::task::JoinHandle<()>) {
    let shard = &lp.shard;
    lp.stop_accept.notify();
    acceptor.await;
    let retry = shard.cfg.retry_after_secs;
    lp.table
        .for_each(|s| s.kick(shard, KickReason::Shutdown, Some(retry)));
    let deadline = Instant::now() + shard.cfg.drain_timeout;
    while lp.table.live() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    lp.table.for_each(|s| s.abort());
    shard.retry();
}

async fn accept(lp: Rc<Loop>, listener: monoio::net::TcpListener) {
    loop {
        monoio::select! {
            _ = lp.stop_accept.wait() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match lp.shard.limits.acquire(peer.ip()) {
                    Ok(()) => start_session(&lp, stream, peer),
                    Err(refused) => {
                        LoopStats::add(&lp.shard.stats().refused, 1);
                        monoio::spawn(session::refuse(stream, refused));
                    }
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(loop_id = lp.shard.id, "accept failed: {e}");
                    monoio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Registers an accepted connection from `peer` (its IP already counted in the
/// connection limits) and spawns its task. Done here, not in the task, so the task's
/// future holds only two `Rc`s for the connection's whole life, not the stream and
/// address it started from (about 400 bytes less per connection).
fn start_session(lp: &Rc<Loop>, stream: TcpStream, peer: SocketAddr) {
    let shard = &lp.shard;
    session::io::tune_socket(&stream, shard.cfg.max_outbound_bytes);
    let Some(session) = lp.table.insert(|id| Session::new(id, stream, peer)) else {
        shard.limits.release(peer.ip());
        return;
    };
    LoopStats::add(&shard.stats().connections, 1);
    LoopStats::add(&shard.stats().accepted, 1);
    monoio::spawn(serve(lp.clone(), session));
}

/// Serves one registered connection until it closes, then releases it (its place to
/// the core, its slot, its count in the connection limits).
async fn serve(lp: Rc<Loop>, session: Rc<Session>) {
    let shard = &lp.shard;
    // Both tasks use the session's stream: the writer writes, the reader waits for
    // readability and reads (see `Session::stream`).
    let writer = monoio::spawn(session::write_loop(shard.clone(), session.clone()));
    if let Some(buf) = session::read_loop(shard, &session).await {
        shard.pools.read_put(buf);
    }
    // End of input (or we are closing): answer what was asked, then close. A writer
    // stuck on a client that does not read is cut by the sweeper (`flush_overdue`).
    session.close();
    writer.await;
    if session.phase() != Phase::LoginPending {
        lp.release(&session);
    } else {
        // The core's answer is still coming; the event task releases the place then.
        lp.forget(&session);
    }
    shard.limits.release(session.peer().ip());
}

async fn events(lp: &Loop, rx: Receiver<LoopEvent>, bell: BellRx) {
    let (armed, bell) = bell.into_parts();
    let mut bell = match monoio::net::UnixStream::from_std(bell) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("io loop {}: doorbell: {e}", lp.shard.id);
            return;
        }
    };
    let mut buf = vec![0u8; 64];
    loop {
        while let Ok(event) = rx.try_recv() {
            if !lp.handle_event(event) {
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
            tracing::error!("io loop {}: doorbell read: {e}", lp.shard.id);
            return;
        }
    }
}

async fn sweeper(lp: Rc<Loop>) {
    loop {
        monoio::time::sleep(SWEEP).await;
        lp.sweep();
    }
}

/// Applies rank batches at most every `RANKS_COALESCE` (capped below the push interval):
/// under a stream of admissions and leaves this is one pass over the sessions per
/// period instead of one per core flush.
async fn rank_applier(lp: Rc<Loop>) {
    let delay = (lp.shard.cfg.push_interval / 4).min(RANKS_COALESCE);
    loop {
        lp.ranks_wake.wait().await;
        monoio::time::sleep(delay).await;
        lp.apply_ranks();
    }
}

async fn push_flusher(lp: Rc<Loop>) {
    loop {
        match lp.flush_pushes() {
            None => lp.push_wake.wait().await,
            Some(due) => {
                // A newly deferred session may be due sooner than `due`: wake for it too.
                let sleep = monoio::time::sleep(due.saturating_duration_since(Instant::now()));
                monoio::select! {
                    _ = sleep => {},
                    _ = lp.push_wake.wait() => {},
                }
            }
        }
    }
}
