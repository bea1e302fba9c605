//! What the sessions of one io loop share: the loop's settings and counters, its link
//! into the core, its buffer pools, its login budget and its rank/push tracker. A
//! session's code sees its loop only through a [`Shard`]; the loop's own machinery
//! (session table, tasks, event handling) lives in [`crate::io_loop`], which builds
//! one `Shard` per loop. Nothing here knows a session or a runtime: the pieces are
//! plain single-threaded state, testable on their own.
//!
//! - [`tracker`]: queue views, rank batches not applied yet, the push throttle;
//! - [`core_link`]: `try_send` into the core and its bounded, ordered backlog;
//! - [`pools`]: write and read buffer pools;
//! - [`login_bucket`]: logins per second on this loop.
//!
//! Invariant: everything here is touched by its loop's thread only (`Cell`,
//! `RefCell`); the cross-thread parts are the core channel and the stats atomics.

pub mod core_link;
pub mod login_bucket;
pub mod pools;
pub mod remote;
pub mod tracker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::cluster::routes::Routes;
use crate::config::Config;
use crate::limits::ConnLimits;
use crate::msg::{queue_source, ConnRef, CoreMsg, LoopId, SessionId};
use crate::stats::LoopStats;
use crate::token::TicketVerifier;

pub use core_link::CoreLink;
pub use login_bucket::LoginBucket;
pub use pools::BufPools;
pub use remote::Remote;
pub use tracker::Tracker;

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
    /// Sessions from which rank batches are coalesced (see `io_loop::RANKS_COALESCE`).
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

/// One loop's shared pieces (see the module doc).
pub struct Shard {
    /// Loop index.
    pub id: LoopId,
    /// Settings.
    pub cfg: LoopConfig,
    /// All loops' counters (this loop writes `stats[id]`).
    stats: Arc<Vec<LoopStats>>,
    /// Into the core.
    pub link: CoreLink,
    /// Write and read buffers.
    pub pools: BufPools,
    /// Logins per second on this loop.
    pub logins: LoginBucket,
    /// Queue views, rank batches, the push throttle.
    pub tracker: Tracker,
    /// Ticket checks.
    pub tickets: Arc<TicketVerifier>,
    /// Open-connection limits shared by all loops.
    pub limits: Arc<ConnLimits>,
    /// Set while the server drains.
    draining: Arc<AtomicBool>,
    /// Routes to remote owners (cluster mode only).
    remote: Option<Remote>,
}

/// What a [`Shard`] is built from.
pub struct ShardParts {
    /// Loop index.
    pub id: LoopId,
    /// Settings.
    pub cfg: LoopConfig,
    /// All loops' counters.
    pub stats: Arc<Vec<LoopStats>>,
    /// Into the core.
    pub core: Sender<CoreMsg>,
    /// Ticket checks.
    pub tickets: Arc<TicketVerifier>,
    /// Open-connection limits.
    pub limits: Arc<ConnLimits>,
    /// Set while the server drains.
    pub draining: Arc<AtomicBool>,
    /// Routes to remote owners (`Some` in cluster mode).
    pub routes: Option<Arc<Routes>>,
}

impl Shard {
    /// A loop's shard, its login bucket full.
    pub fn new(p: ShardParts) -> Shard {
        Shard {
            id: p.id,
            logins: LoginBucket::new(p.cfg.logins_per_sec, Instant::now()),
            tracker: Tracker::new(p.cfg.push_interval, p.cfg.coalesce_min_sessions),
            cfg: p.cfg,
            stats: p.stats,
            link: CoreLink::new(p.core, core_link::JOINS_BACKLOG_MAX),
            pools: BufPools::default(),
            tickets: p.tickets,
            limits: p.limits,
            draining: p.draining,
            remote: p.routes.map(Remote::new),
        }
    }

    /// The core a login to `queue` goes to: 0 = this node's, `k + 1` = node link `k`,
    /// `cluster::routes::NO_OWNER` = no owner now (single node: always 0, one branch).
    #[inline]
    pub fn join_source(&self, queue: &str) -> usize {
        match &self.remote {
            None => 0,
            Some(r) => r.source_of(queue),
        }
    }

    /// Place tickets (cluster mode only; see `cluster::ticket`).
    #[inline]
    pub fn place_tickets(&self) -> Option<&crate::cluster::ticket::LoopTickets> {
        self.remote.as_ref().and_then(|r| r.tickets.as_ref())
    }

    /// True when the core `source` may take a `Join` (its backlog is under its bound).
    pub fn room_for_join(&self, source: usize) -> bool {
        match (source, &self.remote) {
            (0, _) => self.link.room_for_join(),
            (s, Some(r)) => r.room_for_join(s - 1),
            (_, None) => false,
        }
    }

    /// Sends `msg` to the core `source` (see [`Shard::join_source`]).
    pub fn send_to(&self, source: usize, msg: CoreMsg) {
        match (source, &self.remote) {
            (0, _) => self.link.send(msg),
            (s, Some(r)) => r.send(s - 1, msg),
            (_, None) => {}
        }
    }

    /// Sends a `Leave` or `Disconnect` to the core holding its queue (by the queue id's
    /// source bits, see `msg::queue_source`).
    pub fn send_core(&self, msg: CoreMsg) {
        let source = match &msg {
            CoreMsg::Leave { queue, .. } | CoreMsg::Disconnect { queue, .. } => {
                queue_source(*queue)
            }
            _ => 0,
        };
        self.send_to(source, msg);
    }

    /// Retries every backlog into a core (local and links).
    pub fn retry(&self) {
        self.link.retry();
        if let Some(r) = &self.remote {
            r.retry();
        }
    }

    /// This loop's counters.
    #[inline]
    pub fn stats(&self) -> &LoopStats {
        &self.stats[self.id as usize]
    }

    /// True while the server drains.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The connection reference of a session of this loop.
    pub fn conn(&self, session: SessionId) -> ConnRef {
        ConnRef {
            loop_id: self.id,
            session,
        }
    }
}
