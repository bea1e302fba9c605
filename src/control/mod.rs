//! The HTTP control port (docs/protocol.md section 3): a thread named `control` that owns a
//! tokio current-thread runtime and serves the port with hyper + axum, one task per
//! connection. Queue state is only ever reached through the core, with a
//! [`ControlReq`] and a bounded wait for its [`ControlReply`].
//!
//! Map: this file holds the context, the limits, [`spawn`] and the core round trip;
//! `http` accepts and runs connections (caps and deadlines); `routes` answers
//! requests (auth, routing, deadlines); `dashboard` serves the operator's page, the
//! `/v1/events` stream and `/v1/stats`; `players` answers one player's state and
//! journal and removes players; [`body`] parses and range-checks request
//! bodies; `shapes` holds the JSON answers; `audit` logs every action with its peer;
//! [`pprof`] takes CPU profiles (`/debug/pprof/profile`); `verify` answers
//! `POST /v1/tokens/verify`; `cluster` and `forward` are the cluster mode (cluster-wide token use, the stats section, forwarding to a queue's
//! owner; nothing of them runs without `[cluster]`); `tests` drives all of it over
//! sockets against a fake core.
//!
//! Invariants:
//! - tokio runs on the control thread only (never on an io loop or the core), and the
//!   core round trip never blocks it: the blocking crossbeam send/receive runs on a
//!   blocking pool of at most [`CORE_CALLS_MAX`] threads, bounded by
//!   [`CORE_REPLY_TIMEOUT`]; a core that does not answer in time gives 503, and
//!   requests that need no core (`/healthz`, `/readyz`, `/v1/keys`) are never delayed;
//! - no client can hold up another: every connection has its own task, at most
//!   [`CONNECTIONS_MAX`] are open (more are closed at once, unanswered), headers must
//!   arrive within [`HEADER_READ_TIMEOUT`], a body within [`BODY_READ_TIMEOUT`] (408
//!   otherwise), a whole request is answered within [`REQUEST_TIMEOUT`] (408), and a
//!   connection lives at most [`CONNECTION_LIFETIME`];
//! - with an API key set, every `/v1/` call except `GET /v1/keys`, and every `/debug/`
//!   call, is checked against it (constant time) before any body is read;
//! - no more than [`BODY_BYTES_MAX`] of a body is read (413 past it), and a body nested
//!   deeper than [`body::JSON_DEPTH_MAX`] is refused (400) before it is parsed;
//! - answers are JSON (`{"error": ..}` with a 4xx/5xx on failure) with a
//!   `Content-Length`, except `/healthz` and `/readyz` (plain text), `/metrics`
//!   (OpenMetrics text), `/` and `/dashboard` (the page, public: it holds no data),
//!   `/v1/events` (a Server-Sent Events stream, at most 16 open, each ending within
//!   50 s: see `dashboard`) and `/debug/pprof/profile` (protobuf or SVG).

mod audit;
pub mod body;
mod cluster;
mod dashboard;
mod forward;
mod http;
mod players;
pub mod pprof;
mod routes;
mod shapes;
#[cfg(test)]
mod tests;
mod verify;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::msg::{ControlReply, ControlReq, CoreMsg};
use crate::queue::durability::DurabilityStatus;
use crate::stats::{LoopStats, ServerStats};
use crate::token::TokenSigner;

pub use body::BODY_BYTES_MAX;
pub use cluster::{cluster_fingerprint, ClusterControl};
pub use forward::{FORWARDED_BY, FORWARD_TIMEOUT, SERVED_BY};

/// Longest wait for the core to take a request and answer it.
pub const CORE_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest time a client may take to send a request's headers (and, on a kept-alive
/// connection, to start the next request): a slow or silent client is cut off.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest time from a request's headers to the end of its body (past it: 408). Kept
/// apart from the core round trip, so a request the core may have applied is never
/// answered 408.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(4);
/// Longest time from a request's headers to its answer (past it: 408): a backstop
/// above [`BODY_READ_TIMEOUT`] + [`CORE_REPLY_TIMEOUT`], so a slow body gets its 408
/// and a slow core its 503 first.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const _: () = assert!(
    REQUEST_TIMEOUT.as_millis() > BODY_READ_TIMEOUT.as_millis() + CORE_REPLY_TIMEOUT.as_millis()
);
/// Longest life of one connection: it is then closed after the answer in flight (or
/// dropped [`REQUEST_TIMEOUT`] later if that answer cannot be written), so a client
/// that never reads its answers cannot hold a connection slot for ever.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Most control connections open at once; one over it is closed at once, unanswered.
pub const CONNECTIONS_MAX: usize = 256;
/// Most core round trips waiting at once (threads of the blocking pool); more wait for
/// a free thread, within their own [`CORE_REPLY_TIMEOUT`].
pub const CORE_CALLS_MAX: usize = 8;
/// Oldest core round accepted by `/readyz`; the core ends a round at least every tick
/// (10 ms by default), so 2 s means it is wedged.
pub const CORE_ROUND_AGE_MAX: Duration = Duration::from_secs(2);
/// Time a connection gets at shutdown to finish the answer in flight (the core is
/// already stopped then, so only a client too slow to send or read is cut short).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// How often the serving thread looks at the stop flag.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What the control thread needs from the rest of the server.
pub struct ControlContext {
    /// The core's inbound channel; requests go as `CoreMsg::Control(req, reply_tx)`.
    pub core: Sender<CoreMsg>,
    /// Verifies tokens for `POST /v1/tokens/verify` and publishes `GET /v1/keys`.
    pub signer: Arc<TokenSigner>,
    /// Per-loop counters, summed for `/v1/stats` and rendered for `/metrics`.
    pub loops: Arc<Vec<LoopStats>>,
    /// Set while the server drains: `/healthz` and `/readyz` answer 503.
    pub draining: Arc<AtomicBool>,
    /// The write-ahead log's status when durability is on (degraded flag, counters).
    pub durability: Option<Arc<DurabilityStatus>>,
    /// Bearer key for `/v1/` calls; empty = no auth.
    pub api_key: String,
    /// Unix ms at the end of the core's last round (`Core::with_round_clock`).
    pub core_round_ms: Arc<AtomicU64>,
    /// Core round times and the per-minute history (`Core::with_stats`).
    pub server_stats: Arc<ServerStats>,
    /// The cluster layer, with `[cluster]` only (None: one node, answers unchanged).
    pub cluster: Option<ClusterControl>,
}

impl ControlContext {
    /// Time since the core's last round (zero if that round's clock is ahead of ours).
    pub fn core_round_age(&self) -> Duration {
        let last = self.core_round_ms.load(Ordering::Relaxed);
        let now = crate::queue::core::unix_ms();
        Duration::from_millis(now.saturating_sub(last))
    }

    /// True once the write-ahead log failed.
    fn degraded(&self) -> bool {
        self.durability
            .as_ref()
            .is_some_and(|d| d.degraded.load(Ordering::Acquire))
    }

    /// True while the server drains.
    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// Why a core round trip gave no answer (both are answered 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreError {
    /// The core's inbox stayed full, or the core is gone.
    NotTaken,
    /// The core took the request but did not answer in time (or dropped it).
    NoAnswer,
}

impl std::fmt::Display for CoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CoreError::NotTaken => f.write_str("control request not taken by the core"),
            CoreError::NoAnswer => f.write_str("no core answer to a control request"),
        }
    }
}

impl std::error::Error for CoreError {}

/// Sends `req` to the core and waits for its answer, both within [`CORE_REPLY_TIMEOUT`]
/// from now. The blocking channel calls run on the runtime's bounded blocking pool, so
/// the serving thread goes on with other connections meanwhile.
async fn ask_core(ctx: &Arc<ControlContext>, req: ControlReq) -> Result<ControlReply, CoreError> {
    let deadline = Instant::now() + CORE_REPLY_TIMEOUT;
    let core = ctx.core.clone();
    let call = tokio::task::spawn_blocking(move || {
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        core.send_deadline(CoreMsg::Control(req, reply_tx), deadline)
            .map_err(|_| CoreError::NotTaken)?;
        reply_rx
            .recv_deadline(deadline)
            .map_err(|_| CoreError::NoAnswer)
    });
    // A call queued behind busy pool threads starts late and finds its deadline passed.
    let answer = tokio::time::timeout_at(deadline.into(), call)
        .await
        .map_err(|_| CoreError::NoAnswer)
        .and_then(|joined| joined.unwrap_or(Err(CoreError::NoAnswer)));
    if let Err(e) = answer {
        tracing::warn!(error = %e, "core round trip failed");
    }
    answer
}

/// Binds `addr` and serves it on a thread named `control`; returns the bound address
/// (useful with port 0) and the thread, which returns once `stop` is set and open
/// connections have finished their answer in flight (within two seconds).
pub fn spawn(
    addr: SocketAddr,
    ctx: ControlContext,
    stop: Arc<AtomicBool>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(CORE_CALLS_MAX)
        .thread_name("control-core-call")
        .build()?;
    let handle = std::thread::Builder::new()
        .name("control".to_string())
        .spawn(move || {
            let ctx = Arc::new(ctx);
            runtime.block_on(http::serve(listener, ctx, stop));
            // Core calls still blocked end by their own deadline; do not wait for them.
            runtime.shutdown_background();
        })?;
    Ok((bound, handle))
}
