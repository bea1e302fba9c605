//! Cluster mode: a control request about a queue this node does not own is forwarded to
//! the owner's control port (`advertise_control` of its etcd record) and the owner's
//! answer is passed back as it is. Runs as a middleware inside the gate (auth, size and
//! the whole-request deadline already applied); without `[cluster]` it passes every
//! request straight on, so single-node answers are unchanged.
//!
//! `POST /v1/tokens/verify` goes to the token's queue owner too, but falls back to an
//! answer here on any failure ([`verify_at_owner`], decisions in `super::verify`).
//!
//! Which requests: `POST /v1/queues/{q}/admit|pause|resume`, `PUT
//! /v1/queues/{q}/rate|capacity`, `DELETE /v1/queues/{q}/players/{u}` (queue from the
//! path, percent-decoded), `GET /v1/users/{u}?queue=Q` (queue from the query, default
//! `default`). Everything else is answered here (`/v1/stats` is this node's, verify is
//! cluster-wide through etcd on any node).
//!
//! Decisions (by this node's last listing of owners, at most a tick old):
//! - owner is this node, or nobody owns the queue and this node does not track it (it
//!   exists nowhere, or only as a local auto-created queue): answered here, as on one
//!   node (404 `unknown queue` when the local core does not have it either);
//! - owner is another live member: forwarded with the `Authorization` and
//!   `Content-Type` headers, the body, and [`FORWARDED_BY`] = this node's id; the answer
//!   carries [`SERVED_BY`] = the owner's id. Within [`FORWARD_TIMEOUT`] (504 past it:
//!   the owner may have applied the request); connection failure: 503 + `Retry-After`;
//! - a request that already carries [`FORWARDED_BY`] is never forwarded again: 503
//!   naming the owner this node sees (two stale views cannot bounce a request);
//! - a tracked queue with no owner yet (failover in progress, etcd away), or an owner
//!   that is not a live member: 503 + `Retry-After: 1`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::cluster::{ClusterControl, RETRY_AFTER_SECS};
use super::routes::Reply;
use super::{BODY_BYTES_MAX, BODY_READ_TIMEOUT};
use crate::control::ControlContext;

/// Set on a forwarded request: the id of the node that forwarded it.
pub const FORWARDED_BY: HeaderName = HeaderName::from_static("x-queue-forwarded-by");
/// Set on a forwarded answer: the id of the node that answered it.
pub const SERVED_BY: HeaderName = HeaderName::from_static("x-queue-served-by");
/// Longest time from connecting to the owner to the end of its answer.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
// A slow body (408) or a silent owner (504) is answered before the gate's 408 backstop.
const _: () = assert!(
    super::BODY_READ_TIMEOUT.as_millis() + FORWARD_TIMEOUT.as_millis()
        < super::REQUEST_TIMEOUT.as_millis()
);
/// `Content-Type` of a verify answer passed back.
const JSON: &str = "application/json";
/// Largest answer passed back, bytes: an `admit` of 100000 players is some 30 MB.
const ANSWER_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The queue operations of `/v1/queues/{q}/{op}` and their methods.
const QUEUE_OPS: [(&str, Method); 5] = [
    ("admit", Method::POST),
    ("rate", Method::PUT),
    ("capacity", Method::PUT),
    ("pause", Method::POST),
    ("resume", Method::POST),
];

/// Where a request goes.
enum Route {
    /// Answered here.
    Local,
    /// Answered here with this refusal.
    Refuse(Reply),
    /// Forwarded to this owner.
    To {
        /// The owner's node id.
        owner: String,
        /// Its control address.
        addr: String,
    },
}

/// The middleware: forwards, refuses, or runs the route here.
pub(super) async fn forward(
    State(ctx): State<std::sync::Arc<ControlContext>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(cluster) = &ctx.cluster else {
        return next.run(request).await;
    };
    let Some(queue) = queue_of(request.method(), request.uri()) else {
        return next.run(request).await;
    };
    let forwarded_by = request.headers().get(&FORWARDED_BY).cloned();
    match route(cluster, &queue, forwarded_by.as_ref()) {
        Route::Local => next.run(request).await,
        Route::Refuse(reply) => reply.into_response(),
        Route::To { owner, addr } => send(cluster, request, &owner, &addr).await,
    }
}

/// The queue a request is about, if it is one this module may forward.
fn queue_of(method: &Method, uri: &Uri) -> Option<String> {
    let path = uri.path();
    if let Some(user) = path.strip_prefix("/v1/users/") {
        let is_get = matches!(*method, Method::GET | Method::HEAD);
        let queue = uri
            .query()
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|pair| pair.strip_prefix("queue="))
            .unwrap_or("default");
        return (is_get && !user.contains('/')).then(|| percent_decoded(queue))?;
    }
    let rest = path.strip_prefix("/v1/queues/")?;
    let (queue, op) = rest.split_once('/')?;
    let known = match op.split_once('/') {
        Some(("players", user)) => *method == Method::DELETE && !user.contains('/'),
        Some(_) => false,
        None => QUEUE_OPS.iter().any(|(o, m)| *o == op && m == method),
    };
    known.then(|| percent_decoded(queue))?
}

/// `text` percent-decoded, if it then is a valid queue name (others are answered here).
fn percent_decoded(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(out).ok()?;
    crate::config::valid_queue_name(&name).then_some(name)
}

/// A 503 that a retry soon may cure.
fn unavailable(text: &str) -> Reply {
    Reply::error(503, text).with(header::RETRY_AFTER, RETRY_AFTER_SECS)
}

/// Decides where a request about `queue` goes (see the module doc).
fn route(cluster: &ClusterControl, queue: &str, forwarded_by: Option<&HeaderValue>) -> Route {
    let handle = &cluster.handle;
    let me = handle.node_id();
    let Some(owner) = handle.owner_of(queue) else {
        if handle.queue_index(queue).is_none() {
            return Route::Local;
        }
        return Route::Refuse(unavailable(&format!(
            "queue `{queue}` has no owner yet (a node takes it within the lease TTL); retry"
        )));
    };
    if owner.node_id == me {
        return Route::Local;
    }
    if let Some(by) = forwarded_by {
        let by = String::from_utf8_lossy(by.as_bytes());
        return Route::Refuse(unavailable(&format!(
            "queue `{queue}` is owned by node `{}` as node `{me}` sees it; not forwarding \
             a request node `{by}` already forwarded",
            owner.node_id
        )));
    }
    match handle
        .members()
        .into_iter()
        .find(|m| m.node_id == owner.node_id)
    {
        Some(member) => Route::To {
            owner: owner.node_id,
            addr: member.advertise_control,
        },
        None => Route::Refuse(unavailable(&format!(
            "queue `{queue}` is owned by node `{}`, which is not a live member; retry",
            owner.node_id
        ))),
    }
}

/// Reads the body, forwards the request to `owner` at `addr`, and passes its answer back.
async fn send(cluster: &ClusterControl, request: Request, owner: &str, addr: &str) -> Response {
    let (parts, body) = request.into_parts();
    let body = match read(body).await {
        Ok(body) => body,
        Err(reply) => return reply.into_response(),
    };
    cluster.note_forwarded();
    let me = cluster.handle.node_id();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let exchange = exchange(&parts.method, target, &parts.headers, body, me, addr);
    match tokio::time::timeout(FORWARD_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => answer.into_response(owner),
        Ok(Err(e)) => {
            tracing::warn!(owner, addr, error = %e, "control: forwarding failed");
            unavailable(&format!(
                "cannot reach node `{owner}` at {addr}, the owner of this queue: {e}; retry"
            ))
            .into_response()
        }
        Err(_) => {
            tracing::warn!(
                owner,
                addr,
                "control: forwarded request not answered in time"
            );
            let text = format!(
                "node `{owner}` at {addr}, the owner of this queue, did not answer within {} s \
                 (it may have applied the request)",
                FORWARD_TIMEOUT.as_secs()
            );
            Reply::error(504, &text).into_response()
        }
    }
}

/// `POST /v1/tokens/verify` of `token` (of `queue`) answered by the queue's owner, when
/// that is another live member, the request was not forwarded already, and the owner
/// answers 200 in time; None otherwise (this node then answers: etcd decides either way).
pub(super) async fn verify_at_owner(
    cluster: &ClusterControl,
    queue: &str,
    headers: &HeaderMap,
    token: &str,
) -> Option<Reply> {
    #[derive(serde::Serialize)]
    struct VerifyIn<'a> {
        /// The token, as received.
        token: &'a str,
    }
    let handle = &cluster.handle;
    let owner = handle.owner_of(queue)?;
    if headers.contains_key(&FORWARDED_BY) || owner.node_id == handle.node_id() {
        return None;
    }
    let member = handle
        .members()
        .into_iter()
        .find(|m| m.node_id == owner.node_id)?;
    let body = Bytes::from(sonic_rs::to_vec(&VerifyIn { token }).ok()?);
    cluster.note_forwarded();
    let addr = member.advertise_control.as_str();
    let exchange = exchange(
        &Method::POST,
        "/v1/tokens/verify",
        headers,
        body,
        handle.node_id(),
        addr,
    );
    match tokio::time::timeout(FORWARD_TIMEOUT, exchange).await {
        Ok(Ok(answer)) if answer.status == StatusCode::OK => {
            let served_by = HeaderValue::from_str(&owner.node_id).ok()?;
            Some(Reply::text(200, JSON, answer.body.to_vec()).with_value(SERVED_BY, served_by))
        }
        other => {
            let status = other
                .as_ref()
                .ok()
                .and_then(|a| a.as_ref().ok())
                .map(|a| a.status);
            tracing::warn!(owner = %owner.node_id, addr, ?status, "verify: the owner did not answer; answering here");
            None
        }
    }
}

/// The request body, bounded as the routes bound it (413, 408, 400).
async fn read(body: Body) -> Result<Bytes, Reply> {
    let read = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(body, BODY_BYTES_MAX).collect(),
    );
    match read.await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            Err(Reply::from(super::body::BodyError::TooLarge))
        }
        Ok(Err(_)) => Err(Reply::error(400, "cannot read request body")),
        Err(_) => {
            Err(Reply::error(408, "request not complete in time").with(header::CONNECTION, "close"))
        }
    }
}

/// The owner's answer, read whole.
struct Answer {
    /// Its status.
    status: StatusCode,
    /// Its headers.
    headers: HeaderMap,
    /// Its body (at most [`ANSWER_BYTES_MAX`]).
    body: Bytes,
}

impl Answer {
    /// The answer as this node's, naming the node that served it.
    fn into_response(self, owner: &str) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        for name in [
            header::CONTENT_TYPE,
            header::RETRY_AFTER,
            header::ALLOW,
            header::WWW_AUTHENTICATE,
        ] {
            if let Some(value) = self.headers.get(&name) {
                headers.insert(name, value.clone());
            }
        }
        if let Ok(value) = HeaderValue::from_str(owner) {
            headers.insert(SERVED_BY, value);
        }
        response
    }
}

/// One HTTP/1.1 exchange with the node at `addr` on a fresh connection, carrying the
/// `Authorization` and `Content-Type` of `headers` and [`FORWARDED_BY`] = `me`.
async fn exchange(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body: Bytes,
    me: &str,
    addr: &str,
) -> Result<Answer, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    // Ends once the answer is read and `sender` dropped (or with this task's runtime).
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut outgoing = hyper::Request::builder()
        .method(method.clone())
        .uri(target)
        .header(header::HOST, addr)
        .header(FORWARDED_BY, me);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(value) = headers.get(&name) {
            outgoing = outgoing.header(name, value);
        }
    }
    let outgoing = outgoing.body(Full::new(body)).map_err(|e| e.to_string())?;
    let answer = sender
        .send_request(outgoing)
        .await
        .map_err(|e| e.to_string())?;
    let (answer, answer_body) = answer.into_parts();
    let body = Limited::new(answer_body, ANSWER_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Answer {
        status: answer.status,
        headers: answer.headers,
        body,
    })
}
