//! The audit trail of the control port: every action (a request other than `GET` /
//! `HEAD`, and every `/debug/` request) is logged at info once answered, with the peer
//! address, method, path (which names the queue and the action), what the body asked
//! for, and the answer's status; refused ones (401, 400, 404 ...) too.
//!
//! Invariants:
//! - the peer address comes from the [`Peer`] extension, set per connection by `http`;
//! - a body is described by [`describe`], never logged raw: a token to verify is not
//!   written to the log (it would let a log reader use a fresh admission);
//! - the description travels in a task-local ([`DETAIL`]) that only exists while this
//!   layer runs the request; `routes::read_body` fills it with [`note_body`], a no-op
//!   elsewhere.

use std::cell::RefCell;
use std::net::SocketAddr;

use axum::extract::Request;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use super::body::ControlBody;

/// The peer address of a control connection, put in every request's extensions by
/// `http` (axum's own `ConnectInfo` needs its `tokio` serving feature, unused here).
#[derive(Debug, Clone, Copy)]
pub(super) struct Peer(pub(super) SocketAddr);

tokio::task_local! {
    /// What the body of the request being answered asked for.
    static DETAIL: RefCell<Option<String>>;
}

/// Middleware: answers the request, then logs it if it is an action.
pub(super) async fn record(request: Request, next: Next) -> Response {
    let action = !matches!(*request.method(), Method::GET | Method::HEAD)
        || request.uri().path().starts_with("/debug/");
    if !action {
        return next.run(request).await;
    }
    let peer = request.extensions().get::<Peer>().map(|Peer(peer)| *peer);
    let method = request.method().clone();
    let uri = request.uri().clone();
    let (detail, response) = DETAIL
        .scope(RefCell::new(None), async {
            let response = next.run(request).await;
            (DETAIL.with(|d| d.borrow_mut().take()), response)
        })
        .await;
    tracing::info!(
        target: "audit",
        peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string()),
        %method,
        uri = %uri,
        asked = detail.as_deref().unwrap_or(""),
        status = response.status().as_u16(),
        "control action"
    );
    response
}

/// Records what a parsed body asked for, for the audit line of the request being run.
pub(super) fn note_body(body: &ControlBody) {
    let _ = DETAIL.try_with(|d| *d.borrow_mut() = Some(describe(body)));
}

/// A loggable description of a body (a token is not included).
pub(super) fn describe(body: &ControlBody) -> String {
    match body {
        ControlBody::Admit { count } => format!("count={count}"),
        ControlBody::Rate { per_second } => format!("per_second={per_second}"),
        ControlBody::Capacity { online, capacity } => {
            format!("online={online} capacity={capacity}")
        }
        ControlBody::Verify { token } => format!("token ({} bytes, not logged)", token.len()),
    }
}
