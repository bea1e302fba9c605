//! Answers control requests: the axum router of docs/protocol.md section 3 plus `/readyz`,
//! the gate every request passes first (API key, declared body size, whole-request
//! deadline) and the handlers (answer shapes are in `shapes`).
//!
//! Invariants:
//! - the gate runs before any handler, 404 or 405 answers and before any body is
//!   read: with an API key set, every `/v1/` path except `GET`/`HEAD /v1/keys`, and
//!   every `/debug/` path, needs it (401 with
//!   `WWW-Authenticate: Bearer`, compared in constant time); a declared body over
//!   [`BODY_BYTES_MAX`] gets 413; a request not answered within [`REQUEST_TIMEOUT`]
//!   (`/debug/pprof/`: [`super::pprof::REQUEST_TIMEOUT`]) gets 408 and its connection
//!   is closed;
//! - every action is logged by `audit`, which wraps the gate (refused ones too);
//! - a body not read whole within [`BODY_READ_TIMEOUT`] gets 408 (connection closed),
//!   before anything reaches the core;
//! - a body is read through `Limited` (never more than [`BODY_BYTES_MAX`] bytes, even
//!   chunked) and parsed by [`super::body::parse_body`]; nothing invalid reaches the core;
//! - a wrong method gets 405 with `Allow`, an unknown path 404, both JSON;
//! - every answer has a `Content-Length` (bodies are whole buffers, never streamed),
//!   except the `/v1/events` stream of `super::dashboard` (bounded there: a cap on
//!   open streams and a lifetime of its own);
//! - the player routes (`GET /v1/users/{user_id}`, `DELETE
//!   /v1/queues/{q}/players/{user_id}`) live in `super::players`;
//! - `POST /v1/tokens/verify` lives in `super::verify`;
//! - in cluster mode, requests about a queue owned by another node are forwarded to it
//!   by `super::forward`, a middleware inside the gate;
//! - the dashboard's routes (`/`, `/dashboard`, `/v1/stats`, `/v1/events`) live in
//!   `super::dashboard` and are merged here, behind the same gate.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;

use super::body::{parse_body, BodyError, BodyKind, ControlBody};
use super::shapes;
use super::{
    ask_core, ControlContext, CoreError, BODY_BYTES_MAX, BODY_READ_TIMEOUT, REQUEST_TIMEOUT,
};
use crate::msg::{ControlReply, ControlReq};

/// `Content-Type` of every JSON answer.
const JSON: &str = "application/json";
/// `Content-Type` of `/healthz` and `/readyz`.
const TEXT: &str = "text/plain; charset=utf-8";
/// The queue operations, last path segment of `/v1/queues/{q}/{op}`.
const QUEUE_OPS: [&str; 5] = ["admit", "rate", "capacity", "pause", "resume"];

/// Shared state of every handler.
type Ctx = State<Arc<ControlContext>>;

/// One answer, before it becomes an HTTP response.
pub(super) struct Reply {
    /// HTTP status code.
    pub(super) status: u16,
    /// `Content-Type` value.
    content_type: &'static str,
    /// Body bytes.
    body: Vec<u8>,
    /// Extra headers (`Allow`, `WWW-Authenticate`, `Connection`).
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Reply {
    pub(super) fn json<T: Serialize>(status: u16, value: &T) -> Reply {
        Reply {
            status,
            content_type: JSON,
            body: sonic_rs::to_vec(value).expect("answer shapes serialize"),
            headers: Vec::new(),
        }
    }

    pub(super) fn text(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    pub(super) fn error(status: u16, text: &str) -> Reply {
        #[derive(Serialize)]
        struct ErrorBody<'a> {
            /// What went wrong.
            error: &'a str,
        }
        Reply::json(status, &ErrorBody { error: text })
    }

    /// The reply with one more header (a computed value: [`Reply::with`] for constants).
    pub(super) fn with_value(mut self, name: header::HeaderName, value: HeaderValue) -> Reply {
        self.headers.push((name, value));
        self
    }

    pub(super) fn with(mut self, name: header::HeaderName, value: &'static str) -> Reply {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }
}

impl From<CoreError> for Reply {
    fn from(_: CoreError) -> Reply {
        Reply::error(503, "core unavailable")
    }
}

impl From<BodyError> for Reply {
    fn from(e: BodyError) -> Reply {
        Reply::error(e.status(), &e.to_string())
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}

/// The control API's router, gate included.
pub(super) fn router(ctx: Arc<ControlContext>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/keys", get(keys))
        .route("/v1/tokens/verify", post(super::verify::verify))
        .route("/v1/queues/{queue}/admit", post(admit))
        .route("/v1/queues/{queue}/rate", put(rate))
        .route("/v1/queues/{queue}/capacity", put(capacity))
        .route("/v1/queues/{queue}/pause", post(pause))
        .route("/v1/queues/{queue}/resume", post(resume))
        .route("/v1/users/{user_id}", get(super::players::user))
        .route(
            "/v1/queues/{queue}/players/{user_id}",
            delete(super::players::remove),
        )
        .merge(super::dashboard::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .route("/debug/pprof/profile", get(super::pprof::profile))
        .layer(middleware::from_fn_with_state(
            ctx.clone(),
            super::forward::forward,
        ))
        .layer(middleware::from_fn_with_state(ctx.clone(), gate))
        .layer(middleware::from_fn(super::audit::record))
        .with_state(ctx)
}

/// Auth, declared size and the whole-request deadline, before the route runs.
async fn gate(State(ctx): Ctx, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let public = path == "/v1/keys" && matches!(*request.method(), Method::GET | Method::HEAD);
    if !ctx.api_key.is_empty()
        && (path.starts_with("/v1/") || path.starts_with("/debug/"))
        && !public
        && !authorized(request.headers(), &ctx.api_key)
    {
        return Reply::error(401, "missing or wrong bearer key")
            .with(header::WWW_AUTHENTICATE, "Bearer")
            .into_response();
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_BYTES_MAX as u64) {
        return Reply::from(BodyError::TooLarge).into_response();
    }
    let (method, uri) = (request.method().clone(), request.uri().clone());
    // A CPU profile samples for up to a minute before it answers.
    let deadline = if uri.path().starts_with("/debug/pprof/") {
        super::pprof::REQUEST_TIMEOUT
    } else {
        REQUEST_TIMEOUT
    };
    let response = match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => timed_out().into_response(),
    };
    tracing::debug!(%method, %uri, status = response.status().as_u16(), "control");
    response
}

/// 408, closing the connection (the rest of the request is not read).
fn timed_out() -> Reply {
    Reply::error(408, "request not complete in time").with(header::CONNECTION, "close")
}

/// `Authorization: Bearer <key>` (scheme case-insensitive), compared in constant time.
fn authorized(headers: &HeaderMap, api_key: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, key)) = value.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && constant_time_eq(key.trim().as_bytes(), api_key.as_bytes())
}

/// Equal slices, in time that depends on the length only (the key's length is not secret).
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// 404; a queue operation on a name that cannot even be routed is an unknown queue.
async fn not_found(uri: Uri) -> Reply {
    let queue_op = uri
        .path()
        .strip_prefix("/v1/queues/")
        .and_then(|rest| rest.rsplit_once('/'))
        .is_some_and(|(_, op)| QUEUE_OPS.contains(&op));
    Reply::error(
        404,
        if queue_op {
            "unknown queue"
        } else {
            "not found"
        },
    )
}

/// 405 with the one method the path takes (HEAD rides with GET).
async fn method_not_allowed(uri: Uri) -> Reply {
    let path = uri.path();
    let allow = if path.starts_with("/v1/queues/") {
        if path.contains("/players/") {
            "DELETE"
        } else if path.ends_with("/rate") || path.ends_with("/capacity") {
            "PUT"
        } else {
            "POST"
        }
    } else if path == "/v1/tokens/verify" {
        "POST"
    } else {
        "GET, HEAD"
    };
    Reply::error(405, "method not allowed").with(header::ALLOW, allow)
}

/// Liveness: 200 while serving; 503 while draining or once durability is degraded.
async fn healthz(State(ctx): Ctx) -> Reply {
    if ctx.degraded() {
        Reply::text(503, TEXT, "durability degraded")
    } else if ctx.is_draining() {
        Reply::text(503, TEXT, "draining")
    } else {
        Reply::text(200, TEXT, "ok")
    }
}

/// Readiness: 200 `ready` when the core ended a round within
/// [`super::CORE_ROUND_AGE_MAX`], durability is not degraded and the server is not
/// draining; otherwise 503 naming every check that failed.
async fn readyz(State(ctx): Ctx) -> Reply {
    let mut failed = Vec::new();
    if ctx.is_draining() {
        failed.push("draining".to_string());
    }
    if ctx.degraded() {
        failed.push("durability degraded".to_string());
    }
    let age = ctx.core_round_age();
    if age > super::CORE_ROUND_AGE_MAX {
        failed.push(format!(
            "core stalled: last round {:.1} s ago (max {} s)",
            age.as_secs_f64(),
            super::CORE_ROUND_AGE_MAX.as_secs()
        ));
    }
    if failed.is_empty() {
        Reply::text(200, TEXT, "ready")
    } else {
        Reply::text(503, TEXT, format!("not ready: {}", failed.join("; ")))
    }
}

/// `/metrics`: loop and queue counters, durability, core round age.
async fn metrics(State(ctx): Ctx) -> Reply {
    let queues = match ask_core(&ctx, ControlReq::Stats).await {
        Ok(ControlReply::Stats(queues)) => queues,
        Ok(other) => return core_error(other),
        Err(e) => return e.into(),
    };
    #[cfg(feature = "count-alloc")]
    let alloc = Some((
        crate::alloc_count::allocations(),
        crate::alloc_count::allocated_bytes(),
    ));
    #[cfg(not(feature = "count-alloc"))]
    let alloc = None;
    let text = crate::metrics::render(
        &ctx.loops,
        &queues,
        ctx.durability.as_deref(),
        alloc,
        ctx.core_round_age(),
        Some(&crate::metrics::Extra {
            server: &ctx.server_stats,
            inbox_depth: ctx.core.len(),
            process: crate::stats::process::ProcessStats::read(),
            cluster: ctx.cluster.as_ref().map(|c| c.gauges()),
        }),
    );
    Reply::text(200, crate::metrics::CONTENT_TYPE, text)
}

/// `GET /v1/keys`: the JWKS.
async fn keys(State(ctx): Ctx) -> Reply {
    Reply::text(200, JSON, ctx.signer.jwks_json())
}

/// A core answer that is not the success the route expected.
pub(super) fn core_error(reply: ControlReply) -> Reply {
    match reply {
        ControlReply::UnknownQueue => Reply::error(404, "unknown queue"),
        ControlReply::Invalid(reason) => Reply::error(400, &reason),
        ControlReply::Unavailable(reason) => Reply::error(503, &reason),
        other => {
            tracing::error!(reply = ?other, "unexpected core answer to a control request");
            Reply::error(500, "unexpected core answer")
        }
    }
}

/// Reads at most [`BODY_BYTES_MAX`] bytes of `body` within [`BODY_READ_TIMEOUT`] and
/// parses them as `kind`.
pub(super) async fn read_body(body: Body, kind: BodyKind) -> Result<ControlBody, Reply> {
    let read = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(body, BODY_BYTES_MAX).collect(),
    );
    let bytes = match read.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => return Err(BodyError::TooLarge.into()),
        Ok(Err(_)) => return Err(Reply::error(400, "cannot read request body")),
        Err(_) => return Err(timed_out()),
    };
    let parsed = parse_body(kind, &bytes).map_err(Reply::from)?;
    super::audit::note_body(&parsed);
    Ok(parsed)
}

/// The queue named in the path, if it can be a queue at all.
fn queue_name(path: QueuePath) -> Result<String, Reply> {
    match path {
        Ok(Path(queue)) if crate::config::valid_queue_name(&queue) => Ok(queue),
        _ => Err(Reply::error(404, "unknown queue")),
    }
}

/// `POST .../admit`.
async fn admit(State(ctx): Ctx, queue: QueuePath, body: Body) -> Reply {
    let queue = match queue_name(queue) {
        Ok(q) => q,
        Err(reply) => return reply,
    };
    let count = match read_body(body, BodyKind::Admit).await {
        Ok(ControlBody::Admit { count }) => count,
        Ok(_) => unreachable!("parse_body(Admit) gives Admit"),
        Err(reply) => return reply,
    };
    match ask_core(&ctx, ControlReq::Admit { queue, count }).await {
        Ok(ControlReply::Admitted(users)) => Reply::json(200, &shapes::admitted(&users)),
        Ok(other) => core_error(other),
        Err(e) => e.into(),
    }
}

/// A path's queue name, or the rejection that makes it an unknown queue.
type QueuePath = Result<Path<String>, axum::extract::rejection::PathRejection>;

/// `PUT .../rate`, `PUT .../capacity`, `POST .../pause` and `.../resume`: checks the
/// name, then builds the core request from the body (if `kind` has one).
async fn set(
    ctx: Arc<ControlContext>,
    queue: QueuePath,
    body: Option<(Body, BodyKind)>,
    paused: bool,
) -> Reply {
    let queue = match queue_name(queue) {
        Ok(q) => q,
        Err(reply) => return reply,
    };
    let req = match body {
        None => ControlReq::Pause { queue, paused },
        Some((body, kind)) => match read_body(body, kind).await {
            Ok(ControlBody::Rate { per_second }) => ControlReq::SetRate { queue, per_second },
            Ok(ControlBody::Capacity { online, capacity }) => ControlReq::SetCapacity {
                queue,
                online,
                capacity,
            },
            Ok(_) => unreachable!("parse_body gives the kind asked for"),
            Err(reply) => return reply,
        },
    };
    match ask_core(&ctx, req).await {
        Ok(ControlReply::Done) => Reply::json(200, &shapes::DoneOut { ok: true }),
        Ok(other) => core_error(other),
        Err(e) => e.into(),
    }
}

/// `PUT .../rate`.
async fn rate(State(ctx): Ctx, queue: QueuePath, body: Body) -> Reply {
    set(ctx, queue, Some((body, BodyKind::Rate)), false).await
}

/// `PUT .../capacity`.
async fn capacity(State(ctx): Ctx, queue: QueuePath, body: Body) -> Reply {
    set(ctx, queue, Some((body, BodyKind::Capacity)), false).await
}

/// `POST .../pause`.
async fn pause(State(ctx): Ctx, queue: QueuePath) -> Reply {
    set(ctx, queue, None, true).await
}

/// `POST .../resume`.
async fn resume(State(ctx): Ctx, queue: QueuePath) -> Reply {
    set(ctx, queue, None, false).await
}
