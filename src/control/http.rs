//! Accepts control connections and runs each one as its own task on the control
//! thread's runtime: hyper's HTTP/1.1 connection (keep-alive, pipelining) serving the
//! axum router of [`super::routes`].
//!
//! Invariants:
//! - at most [`CONNECTIONS_MAX`] connections are open; one accepted over it is closed at
//!   once, unanswered (nothing of it is read), so the cap costs nothing to enforce;
//! - a connection sends its headers within [`HEADER_READ_TIMEOUT`] (hyper's timer; it
//!   also runs while a kept-alive connection waits for its next request), lives at most
//!   [`CONNECTION_LIFETIME`], and then gets [`REQUEST_TIMEOUT`] to finish the answer in
//!   flight before it is dropped;
//! - a request head is at most [`HEADER_BYTES_MAX`] (431 past it) and a connection
//!   buffers at most [`CONNECTION_BUFFER_BYTES_MAX`];
//! - every request carries its connection's peer address (`audit::Peer` extension);
//! - an accept error (e.g. no descriptor left) is logged and retried after
//!   [`ACCEPT_ERROR_BACKOFF`]: the listener is never given up;
//! - once `stop` is set the listener closes, every connection shuts down gracefully
//!   (answer in flight finished, then closed) and [`serve`] returns within twice
//!   [`SHUTDOWN_GRACE`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::{Extension, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::audit::Peer;
use super::{
    routes, ControlContext, CONNECTIONS_MAX, CONNECTION_LIFETIME, HEADER_READ_TIMEOUT,
    REQUEST_TIMEOUT, SHUTDOWN_GRACE, STOP_POLL_INTERVAL,
};

/// Pause after a failed accept, so a process out of descriptors does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Least time between two log lines about connections refused over the cap.
const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// Largest request head (start line and headers), bytes; past it: 431 and closed.
const HEADER_BYTES_MAX: usize = 16 * 1024;
/// Largest read or write buffer of one connection, bytes: bounds the memory of
/// [`CONNECTIONS_MAX`] open connections (16 MiB of read buffers in all).
const CONNECTION_BUFFER_BYTES_MAX: usize = 64 * 1024;

/// Serves `listener` until `stop` is set, then shuts every connection down.
pub(super) async fn serve(
    listener: std::net::TcpListener,
    ctx: Arc<ControlContext>,
    stop: Arc<AtomicBool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "control port cannot serve its listener");
            return;
        }
    };
    let router = routes::router(ctx);
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut refused = Refused::default();
    let stopped = stopped(stop);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let router = router.clone();
                        let conn = connection(stream, peer, router, shutdown_rx.clone(), slot);
                        connections.spawn(conn);
                    }
                    Err(_) => {
                        drop(stream);
                        refused.note(peer);
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, "control port accept failed; retrying");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = shutdown_tx.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE * 2, drained)
        .await
        .is_err()
    {
        tracing::warn!("control connections still open at shutdown: dropped");
    }
}

/// Connections closed over the cap, logged at most once per [`REFUSED_LOG_INTERVAL`]
/// so a flood of them cannot flood the log.
#[derive(Default)]
struct Refused {
    /// Closed since the last log line.
    count: u64,
    /// When the last log line was written.
    logged_at: Option<Instant>,
}

impl Refused {
    /// Counts one refused connection from `peer`; logs when due.
    fn note(&mut self, peer: SocketAddr) {
        self.count += 1;
        if self
            .logged_at
            .is_some_and(|t| t.elapsed() < REFUSED_LOG_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            %peer,
            refused = self.count,
            max = CONNECTIONS_MAX,
            "control connections over the cap: closed unanswered"
        );
        self.count = 0;
        self.logged_at = Some(Instant::now());
    }
}

/// Resolves once `stop` is set (looked at every [`STOP_POLL_INTERVAL`]).
async fn stopped(stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Acquire) {
        tokio::time::sleep(STOP_POLL_INTERVAL).await;
    }
}

/// One connection, holding its `slot` until it ends.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    slot: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    // The peer address, for the audit trail.
    let service = TowerToHyperService::new(router.layer(Extension(Peer(peer))));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .max_buf_size(CONNECTION_BUFFER_BYTES_MAX)
        .max_header_size(HEADER_BYTES_MAX)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let grace = tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "control connection ended");
            }
            drop(slot);
            return;
        }
        () = tokio::time::sleep(CONNECTION_LIFETIME) => REQUEST_TIMEOUT,
        _ = shutdown.wait_for(|stop| *stop) => SHUTDOWN_GRACE,
    };
    // Finish the answer in flight, then close; a peer that does not read it is dropped.
    conn.as_mut().graceful_shutdown();
    if tokio::time::timeout(grace, conn).await.is_err() {
        tracing::debug!("control connection did not finish in time: dropped");
    }
    drop(slot);
}
