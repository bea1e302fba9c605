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
//! - an accept error (e.g. no descriptor left) is logged and retried after
//!   [`ACCEPT_ERROR_BACKOFF`]: the listener is never given up;
//! - once `stop` is set the listener closes, every connection shuts down gracefully
//!   (answer in flight finished, then closed) and [`serve`] returns within
//!   [`REQUEST_TIMEOUT`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::{
    routes, ControlContext, CONNECTIONS_MAX, CONNECTION_LIFETIME, HEADER_READ_TIMEOUT,
    REQUEST_TIMEOUT, STOP_POLL_INTERVAL,
};

/// Pause after a failed accept, so a process out of descriptors does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

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
    let stopped = stopped(stop);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let conn = connection(stream, router.clone(), shutdown_rx.clone(), slot);
                        connections.spawn(conn);
                    }
                    Err(_) => {
                        tracing::warn!(%peer, max = CONNECTIONS_MAX, "control connection over the cap: closed");
                        drop(stream);
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
    if tokio::time::timeout(REQUEST_TIMEOUT, drained)
        .await
        .is_err()
    {
        tracing::warn!("control connections still open at shutdown: dropped");
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
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    slot: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let service = TowerToHyperService::new(router);
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "control connection ended");
            }
            drop(slot);
            return;
        }
        () = tokio::time::sleep(CONNECTION_LIFETIME) => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    // Finish the answer in flight, then close; a peer that does not read it is dropped.
    conn.as_mut().graceful_shutdown();
    if tokio::time::timeout(REQUEST_TIMEOUT, conn).await.is_err() {
        tracing::debug!("control connection did not finish in time: dropped");
    }
    drop(slot);
}
