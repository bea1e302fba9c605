//! The HTTP control port (PROTOCOL.md section 3): one plain blocking thread serving
//! `tiny_http` requests; queue state is only ever reached through the core, with a
//! [`ControlReq`] and a bounded wait for its [`ControlReply`].
//!
//! Invariants:
//! - with an API key set, every `/v1/` call except `GET /v1/keys` is checked against it
//!   (constant time) before routing and before any body is read;
//! - no more than [`MAX_BODY_BYTES`] of a request body is read (413 past it);
//! - every core round trip is bounded by [`CORE_REPLY_TIMEOUT`]; a core that does not
//!   answer in time, or is gone, gives 503 and never blocks the port for longer;
//! - answers are JSON (`{"error": ..}` with a 4xx/5xx on failure), except `/healthz`
//!   (plain text) and `/metrics` (OpenMetrics text).
//!
//! Limits of `tiny_http` 0.12 that this port lives with: a thread per connection and no
//! timeouts; an unread request body is drained on drop by allocating its *declared*
//! remaining length at once, so a single request declaring a huge `Content-Length`
//! aborts the process, before any auth (not fixed in any release; a vendored one-line
//! patch fixes it). Keep the port on loopback, or behind the API key on a private
//! network. Its accept thread also ends for good when descriptors run out; [`serve`]
//! notices and listens again.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::msg::{ControlReply, ControlReq, CoreMsg, QueueStats};
use crate::queue::durability::DurabilityStatus;
use crate::stats::LoopStats;
use crate::token::TokenSigner;

/// Largest request body read, bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest wait for the core to take a request and answer it.
pub const CORE_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the serving loop looks at the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often the serving loop checks that `tiny_http`'s listener is still open.
const LISTENER_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// `Content-Type` of every JSON answer.
const JSON: &str = "application/json";
/// `Content-Type` of `/healthz`.
const TEXT: &str = "text/plain; charset=utf-8";

/// What the control thread needs from the rest of the server.
pub struct ControlContext {
    /// The core's inbound channel; requests go as `CoreMsg::Control(req, reply_tx)`.
    pub core: Sender<CoreMsg>,
    /// Verifies tokens for `POST /v1/tokens/verify` and publishes `GET /v1/keys`.
    pub signer: Arc<TokenSigner>,
    /// Per-loop counters, summed for `/v1/stats` and rendered for `/metrics`.
    pub loops: Arc<Vec<LoopStats>>,
    /// Set while the server drains: `/healthz` answers 503.
    pub draining: Arc<AtomicBool>,
    /// The write-ahead log's status when durability is on (degraded flag, counters).
    pub durability: Option<Arc<DurabilityStatus>>,
    /// Bearer key for `/v1/` calls; empty = no auth.
    pub api_key: String,
    /// Unix ms at the end of the core's last round (`Core::with_round_clock`).
    pub core_round_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// One answer, before it becomes a `tiny_http::Response`.
struct Reply {
    /// HTTP status code.
    status: u16,
    /// `Content-Type` value.
    content_type: &'static str,
    /// Body bytes.
    body: Vec<u8>,
    /// `Allow` header for a 405.
    allow: Option<&'static str>,
    /// Add `WWW-Authenticate: Bearer` (a 401).
    challenge: bool,
}

impl Reply {
    fn json<T: Serialize>(status: u16, value: &T) -> Reply {
        Reply {
            status,
            content_type: JSON,
            body: sonic_rs::to_vec(value).expect("answer shapes serialize"),
            allow: None,
            challenge: false,
        }
    }

    fn text(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into(),
            allow: None,
            challenge: false,
        }
    }

    fn error(status: u16, text: &str) -> Reply {
        #[derive(Serialize)]
        struct ErrorBody<'a> {
            /// What went wrong.
            error: &'a str,
        }
        Reply::json(status, &ErrorBody { error: text })
    }

    fn unavailable() -> Reply {
        Reply::error(503, "core unavailable")
    }

    fn into_response(self) -> Response<std::io::Cursor<Vec<u8>>> {
        let header = |name: &str, value: &str| {
            Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
        };
        let mut response = Response::from_data(self.body)
            .with_status_code(self.status)
            // Always a Content-Length, never chunked: the length is known.
            .with_chunked_threshold(usize::MAX)
            .with_header(header("Content-Type", self.content_type));
        if let Some(allow) = self.allow {
            response.add_header(header("Allow", allow));
        }
        if self.challenge {
            response.add_header(header("WWW-Authenticate", "Bearer"));
        }
        response
    }
}

/// A queue operation named by the last path segment of `/v1/queues/{q}/...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueueOp {
    /// `POST .../admit`.
    Admit,
    /// `PUT .../rate`.
    Rate,
    /// `PUT .../capacity`.
    Capacity,
    /// `POST .../pause`.
    Pause,
    /// `POST .../resume`.
    Resume,
}

/// A known path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    /// `/healthz`.
    Healthz,
    /// `/metrics`.
    Metrics,
    /// `/v1/stats`.
    Stats,
    /// `/v1/keys`.
    Keys,
    /// `/v1/tokens/verify`.
    Verify,
    /// `/v1/queues/{q}/{op}` (the name is checked later).
    Queue(&'a str, QueueOp),
}

impl Route<'_> {
    /// Parses the path (query string already removed); `None` = 404.
    fn parse(path: &str) -> Option<Route<'_>> {
        Some(match path {
            "/healthz" => Route::Healthz,
            "/metrics" => Route::Metrics,
            "/v1/stats" => Route::Stats,
            "/v1/keys" => Route::Keys,
            "/v1/tokens/verify" => Route::Verify,
            _ => {
                let (queue, op) = path.strip_prefix("/v1/queues/")?.split_once('/')?;
                let op = match op {
                    "admit" => QueueOp::Admit,
                    "rate" => QueueOp::Rate,
                    "capacity" => QueueOp::Capacity,
                    "pause" => QueueOp::Pause,
                    "resume" => QueueOp::Resume,
                    _ => return None,
                };
                Route::Queue(queue, op)
            }
        })
    }

    /// The one method this route takes, as written in `Allow` (HEAD rides with GET).
    fn allow(self) -> &'static str {
        match self {
            Route::Healthz | Route::Metrics | Route::Stats | Route::Keys => "GET, HEAD",
            Route::Verify | Route::Queue(_, QueueOp::Admit | QueueOp::Pause | QueueOp::Resume) => {
                "POST"
            }
            Route::Queue(_, QueueOp::Rate | QueueOp::Capacity) => "PUT",
        }
    }

    /// Whether `method` is the one in [`Route::allow`].
    fn accepts(self, method: &Method) -> bool {
        match self {
            Route::Healthz | Route::Metrics | Route::Stats | Route::Keys => {
                matches!(method, Method::Get | Method::Head)
            }
            Route::Verify | Route::Queue(_, QueueOp::Admit | QueueOp::Pause | QueueOp::Resume) => {
                *method == Method::Post
            }
            Route::Queue(_, QueueOp::Rate | QueueOp::Capacity) => *method == Method::Put,
        }
    }
}

/// Serves until `stop` is set (checked every ~100 ms). Returns when stopped.
///
/// `tiny_http` ends its accept thread for good on an accept error, and panics it when
/// duplicating an accepted socket fails (both happen when the process runs out of file
/// descriptors); its listener then closes and nothing else tells. So once a second this
/// loop tries to bind the server's address itself: that fails while the listener lives;
/// when it succeeds, the port is served again from the new listener. `server` must
/// therefore not listen with `SO_REUSEPORT` ([`spawn`]'s listener does not).
pub fn serve(server: Server, ctx: ControlContext, stop: Arc<AtomicBool>) {
    let mut server = server;
    let addr = server.server_addr().to_ip();
    let mut next_probe = Instant::now() + LISTENER_PROBE_INTERVAL;
    while !stop.load(Ordering::Acquire) {
        match server.recv_timeout(POLL_INTERVAL) {
            Ok(Some(request)) => handle(&ctx, request),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "control port accept failed"),
        }
        if let Some(addr) = addr.filter(|_| Instant::now() >= next_probe) {
            next_probe = Instant::now() + LISTENER_PROBE_INTERVAL;
            if let Some(fresh) = relisten(addr) {
                // Dropping the dead server connects once to `addr` to wake its (already
                // ended) accept thread: a harmless empty connection to the new one.
                server = fresh;
            }
        }
    }
}

/// A new server on `addr` if `addr` can be bound, i.e. the current listener is gone.
fn relisten(addr: SocketAddr) -> Option<Server> {
    let listener = std::net::TcpListener::bind(addr).ok()?;
    tracing::error!(%addr, "control port listener had closed; listening again");
    Server::from_listener(listener, None)
        .map_err(|e| tracing::error!(%addr, error = %e, "control port not restarted"))
        .ok()
}

/// Binds `addr` and serves it on a thread named `control`; returns the bound address
/// (useful with port 0) and the thread, which returns once `stop` is set.
pub fn spawn(
    addr: SocketAddr,
    ctx: ControlContext,
    stop: Arc<AtomicBool>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = std::net::TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let server = Server::from_listener(listener, None).map_err(std::io::Error::other)?;
    let handle = std::thread::Builder::new()
        .name("control".to_string())
        .spawn(move || serve(server, ctx, stop))?;
    Ok((bound, handle))
}

/// Answers one request; a client gone mid-answer is not an error worth more than a log.
fn handle(ctx: &ControlContext, mut request: Request) {
    let reply = answer(ctx, &mut request);
    tracing::debug!(method = %request.method(), url = request.url(), status = reply.status, "control");
    if let Err(e) = request.respond(reply.into_response()) {
        tracing::debug!(error = %e, "control response not delivered");
    }
}

/// Checks auth, route, method and declared body size, then runs the route.
fn answer(ctx: &ControlContext, request: &mut Request) -> Reply {
    let method = request.method().clone();
    let url = request.url().to_string();
    let path = url.split_once('?').map_or(url.as_str(), |(p, _)| p);
    let public = path == "/v1/keys" && matches!(method, Method::Get | Method::Head);
    if !ctx.api_key.is_empty()
        && path.starts_with("/v1/")
        && !public
        && !authorized(request.headers(), &ctx.api_key)
    {
        let mut reply = Reply::error(401, "missing or wrong bearer key");
        reply.challenge = true;
        return reply;
    }
    let Some(route) = Route::parse(path) else {
        return Reply::error(404, "not found");
    };
    if !route.accepts(&method) {
        let mut reply = Reply::error(405, "method not allowed");
        reply.allow = Some(route.allow());
        return reply;
    }
    if request.body_length().is_some_and(|n| n > MAX_BODY_BYTES) {
        return too_large();
    }
    match route {
        Route::Healthz => {
            if ctx
                .durability
                .as_ref()
                .is_some_and(|d| d.degraded.load(Ordering::Acquire))
            {
                Reply::text(503, TEXT, "durability degraded")
            } else if ctx.draining.load(Ordering::Acquire) {
                Reply::text(503, TEXT, "draining")
            } else {
                Reply::text(200, TEXT, "ok")
            }
        }
        Route::Metrics => match ask_core(ctx, ControlReq::Stats) {
            Ok(ControlReply::Stats(queues)) => {
                #[cfg(feature = "count-alloc")]
                let alloc = Some((
                    crate::alloc_count::allocations(),
                    crate::alloc_count::allocated_bytes(),
                ));
                #[cfg(not(feature = "count-alloc"))]
                let alloc = None;
                let text =
                    crate::metrics::render(&ctx.loops, &queues, ctx.durability.as_deref(), alloc);
                Reply::text(200, crate::metrics::CONTENT_TYPE, text)
            }
            Ok(other) => core_error(other),
            Err(reply) => reply,
        },
        Route::Stats => match ask_core(ctx, ControlReq::Stats) {
            Ok(ControlReply::Stats(queues)) => Reply::json(200, &stats_body(ctx, &queues)),
            Ok(other) => core_error(other),
            Err(reply) => reply,
        },
        Route::Keys => Reply::text(200, JSON, ctx.signer.jwks_json()),
        Route::Verify => verify(ctx, request),
        Route::Queue(queue, op) => queue_op(ctx, request, queue, op),
    }
}

/// `Authorization: Bearer <key>` (scheme case-insensitive), compared in constant time.
fn authorized(headers: &[Header], api_key: &str) -> bool {
    let Some(value) = headers
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str())
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
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Sends `req` to the core and waits for the answer, both within [`CORE_REPLY_TIMEOUT`].
fn ask_core(ctx: &ControlContext, req: ControlReq) -> Result<ControlReply, Reply> {
    let deadline = Instant::now() + CORE_REPLY_TIMEOUT;
    let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
    if ctx
        .core
        .send_deadline(CoreMsg::Control(req, reply_tx), deadline)
        .is_err()
    {
        tracing::warn!("control request not taken by the core");
        return Err(Reply::unavailable());
    }
    reply_rx.recv_deadline(deadline).map_err(|e| {
        tracing::warn!(error = %e, "no core answer to a control request");
        Reply::unavailable()
    })
}

/// A core answer that is not the success the route expected.
fn core_error(reply: ControlReply) -> Reply {
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

fn too_large() -> Reply {
    Reply::error(413, "request body over 65536 bytes")
}

/// Reads at most [`MAX_BODY_BYTES`] (a declared larger length was refused already) and
/// parses them as `T`.
fn read_json<T: DeserializeOwned>(request: &mut Request) -> Result<T, Reply> {
    let mut body = Vec::new();
    request
        .as_reader()
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|_| Reply::error(400, "cannot read request body"))?;
    if body.len() > MAX_BODY_BYTES {
        return Err(too_large());
    }
    // serde would also take a struct from an array (`[1]`); the API speaks objects only.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Reply::error(400, "invalid JSON body: not an object"));
    }
    sonic_rs::from_slice(&body).map_err(|e| Reply::error(400, &format!("invalid JSON body: {e}")))
}

/// `POST .../admit` body.
#[derive(Deserialize)]
struct AdmitIn {
    /// Most players to admit.
    count: u64,
}

/// `PUT .../rate` body.
#[derive(Deserialize)]
struct RateIn {
    /// Players per second; 0 = manual only.
    per_second: f64,
}

/// `PUT .../capacity` body.
#[derive(Deserialize)]
struct CapacityIn {
    /// Players the login server has online.
    online: u64,
    /// Players it can hold.
    capacity: u64,
}

/// `POST /v1/tokens/verify` body.
#[derive(Deserialize)]
struct VerifyIn {
    /// The compact JWS to check.
    token: String,
}

/// One entry of the `admit` answer.
#[derive(Serialize)]
struct AdmittedOut<'a> {
    /// The admitted player.
    user_id: u64,
    /// The player's admission token.
    token: &'a str,
    /// Token expiry, unix seconds.
    expires_at: u64,
}

/// The `admit` answer.
#[derive(Serialize)]
struct AdmitOut<'a> {
    /// Players admitted, in admission order.
    admitted: Vec<AdmittedOut<'a>>,
}

/// The answer of `rate`, `capacity`, `pause`, `resume`.
#[derive(Serialize)]
struct DoneOut {
    /// Always true: the core applied the request.
    ok: bool,
}

/// The `tokens/verify` answer.
#[derive(Serialize)]
struct VerifyOut<'a> {
    /// Signature, expiry, issuer good and `jti` not used before.
    valid: bool,
    /// The token's player, when valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<u64>,
    /// The token's queue, when valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    queue: Option<&'a str>,
    /// Why not, when invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// One queue in the `stats` answer.
#[derive(Serialize)]
struct QueueOut {
    /// Players holding a place.
    waiting: u64,
    /// Players admitted since start.
    admitted_total: u64,
    /// Players who left since start.
    left_total: u64,
    /// Measured admission rate, players/s (finite).
    admit_rate_per_s: f64,
    /// Automatic admission paused.
    paused: bool,
}

/// The `stats` answer.
#[derive(Serialize)]
struct StatsOut<'a> {
    /// Per queue, by name (sorted).
    queues: BTreeMap<&'a str, QueueOut>,
    /// Open player connections over all loops.
    connections: u64,
    /// Number of io loops.
    cores: usize,
}

fn stats_body<'a>(ctx: &ControlContext, queues: &'a [QueueStats]) -> StatsOut<'a> {
    StatsOut {
        queues: queues
            .iter()
            .map(|q| {
                let rate = q.admit_rate_per_s;
                let out = QueueOut {
                    waiting: q.waiting,
                    admitted_total: q.admitted_total,
                    left_total: q.left_total,
                    // JSON has no NaN or infinity.
                    admit_rate_per_s: if rate.is_finite() { rate } else { 0.0 },
                    paused: q.paused,
                };
                (q.name.as_str(), out)
            })
            .collect(),
        connections: ctx
            .loops
            .iter()
            .map(|l| LoopStats::get(&l.connections))
            .sum(),
        cores: ctx.loops.len(),
    }
}

/// `POST /v1/tokens/verify`: signature, `kid`, `exp`, `iss` here; then the core
/// consumes the `jti`, so a token verifies once.
fn verify(ctx: &ControlContext, request: &mut Request) -> Reply {
    let input: VerifyIn = match read_json(request) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    let invalid = |reason| {
        Reply::json(
            200,
            &VerifyOut {
                valid: false,
                user_id: None,
                queue: None,
                reason: Some(reason),
            },
        )
    };
    let token = match ctx.signer.verify(&input.token) {
        Ok(t) => t,
        Err(e) => return invalid(e.reason),
    };
    let consume = ControlReq::ConsumeJti {
        jti: token.jti,
        exp: token.exp,
    };
    match ask_core(ctx, consume) {
        Ok(ControlReply::Consumed(true)) => Reply::json(
            200,
            &VerifyOut {
                valid: true,
                user_id: Some(token.user),
                queue: Some(&token.queue),
                reason: None,
            },
        ),
        Ok(ControlReply::Consumed(false)) => invalid("already_used"),
        Ok(other) => core_error(other),
        Err(reply) => reply,
    }
}

/// `/v1/queues/{q}/{admit,rate,capacity,pause,resume}`.
fn queue_op(ctx: &ControlContext, request: &mut Request, queue: &str, op: QueueOp) -> Reply {
    if !crate::config::valid_queue_name(queue) {
        return Reply::error(404, "unknown queue");
    }
    let queue = queue.to_string();
    let req = match op {
        QueueOp::Admit => match read_json::<AdmitIn>(request) {
            Ok(AdmitIn { count }) => ControlReq::Admit { queue, count },
            Err(reply) => return reply,
        },
        QueueOp::Rate => match read_json::<RateIn>(request) {
            Ok(RateIn { per_second }) if per_second.is_finite() && per_second >= 0.0 => {
                ControlReq::SetRate { queue, per_second }
            }
            Ok(_) => return Reply::error(400, "per_second must be a finite number >= 0"),
            Err(reply) => return reply,
        },
        QueueOp::Capacity => match read_json::<CapacityIn>(request) {
            Ok(CapacityIn { online, capacity }) => ControlReq::SetCapacity {
                queue,
                online,
                capacity,
            },
            Err(reply) => return reply,
        },
        QueueOp::Pause => ControlReq::Pause {
            queue,
            paused: true,
        },
        QueueOp::Resume => ControlReq::Pause {
            queue,
            paused: false,
        },
    };
    match ask_core(ctx, req) {
        Ok(ControlReply::Admitted(users)) if op == QueueOp::Admit => {
            let admitted = users
                .iter()
                .map(|u| AdmittedOut {
                    user_id: u.user,
                    token: &u.token,
                    expires_at: u.expires_at,
                })
                .collect();
            Reply::json(200, &AdmitOut { admitted })
        }
        Ok(ControlReply::Done) if op != QueueOp::Admit => Reply::json(200, &DoneOut { ok: true }),
        Ok(other) => core_error(other),
        Err(reply) => reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{TokenAlg, TokenConfig};
    use crate::msg::AdmittedUser;
    use std::collections::{HashMap, HashSet};
    use std::io::Write;
    use std::net::TcpStream;
    use std::sync::Mutex;

    /// A running control thread with a fake core that records what it was asked.
    struct Harness {
        /// Where the control port listens.
        addr: SocketAddr,
        /// Stops the control thread.
        stop: Arc<AtomicBool>,
        /// The control thread.
        control: Option<JoinHandle<()>>,
        /// The fake core thread, if any.
        core: Option<JoinHandle<()>>,
        /// To stop the fake core.
        core_tx: Sender<CoreMsg>,
        /// Requests the fake core received, in order.
        seen: Arc<Mutex<Vec<ControlReq>>>,
        /// The `/healthz` switch.
        draining: Arc<AtomicBool>,
        /// The signer the control thread verifies with.
        signer: Arc<TokenSigner>,
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Release);
            let _ = self.core_tx.send(CoreMsg::Shutdown);
            self.control.take().unwrap().join().unwrap();
            if let Some(core) = self.core.take() {
                core.join().unwrap();
            }
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn signer() -> Arc<TokenSigner> {
        let cfg = TokenConfig {
            alg: TokenAlg::EdDSA,
            key: String::new(),
            kid: String::new(),
            ttl_secs: 300,
            issuer: "queue-server".to_string(),
            login_addr: String::new(),
        };
        Arc::new(TokenSigner::from_config(&cfg).unwrap().0)
    }

    fn queue_stats(name: &str, waiting: u64) -> QueueStats {
        QueueStats {
            name: name.to_string(),
            waiting,
            waiting_priority: 1,
            admitted_total: 20,
            left_total: 3,
            admit_rate_per_s: 1.5,
            target_rate_per_s: 2.0,
            paused: name == "w-1",
            unused_tokens: 4,
        }
    }

    /// The fake core's canned answer; `None` drops the reply sender unanswered.
    fn canned(
        req: &ControlReq,
        signer: &TokenSigner,
        used: &mut HashSet<String>,
    ) -> Option<ControlReply> {
        let queue = match req {
            ControlReq::Admit { queue, .. }
            | ControlReq::SetRate { queue, .. }
            | ControlReq::SetCapacity { queue, .. }
            | ControlReq::Pause { queue, .. } => queue.as_str(),
            _ => "",
        };
        match queue {
            "ghost" => return Some(ControlReply::UnknownQueue),
            "bad" => return Some(ControlReply::Invalid("capacity below online".into())),
            "silent" => return None,
            "confused" => return Some(ControlReply::Consumed(true)),
            _ => {}
        }
        Some(match req {
            ControlReq::Admit { queue, count } => ControlReply::Admitted(
                (0..(*count).min(3))
                    .map(|i| AdmittedUser {
                        user: 100 + i,
                        token: signer.sign(100 + i, queue, &format!("jti-{i}"), now(), now() + 300),
                        expires_at: now() + 300,
                    })
                    .collect(),
            ),
            ControlReq::ConsumeJti { jti, .. } => ControlReply::Consumed(used.insert(jti.clone())),
            ControlReq::Stats => {
                ControlReply::Stats(vec![queue_stats("default", 12), queue_stats("w-1", 0)])
            }
            _ => ControlReply::Done,
        })
    }

    /// Starts the control thread; `with_core = false` leaves the core channel dead.
    fn start(api_key: &str, with_core: bool) -> Harness {
        let signer = signer();
        let (core_tx, core_rx) = crossbeam_channel::bounded::<CoreMsg>(16);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let core = if with_core {
            let (seen, signer) = (seen.clone(), signer.clone());
            Some(std::thread::spawn(move || {
                let mut used = HashSet::new();
                for msg in core_rx {
                    match msg {
                        CoreMsg::Control(req, reply) => {
                            seen.lock().unwrap().push(req.clone());
                            if let Some(answer) = canned(&req, &signer, &mut used) {
                                reply.send(answer).unwrap();
                            }
                        }
                        CoreMsg::Shutdown => break,
                        _ => {}
                    }
                }
            }))
        } else {
            drop(core_rx);
            None
        };
        let loops: Vec<LoopStats> = (0..2).map(|_| LoopStats::default()).collect();
        LoopStats::add(&loops[0].connections, 3);
        LoopStats::add(&loops[1].connections, 4);
        let draining = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = ControlContext {
            core: core_tx.clone(),
            signer: signer.clone(),
            loops: Arc::new(loops),
            durability: None,
            draining: draining.clone(),
            api_key: api_key.to_string(),
            core_round_ms: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        };
        let (addr, control) = spawn("127.0.0.1:0".parse().unwrap(), ctx, stop.clone()).unwrap();
        Harness {
            addr,
            stop,
            control: Some(control),
            core,
            core_tx,
            seen,
            draining,
            signer,
        }
    }

    /// A response as seen by the test client.
    struct Resp {
        /// Status code.
        status: u16,
        /// Headers, names lowercased.
        headers: HashMap<String, String>,
        /// Body text.
        body: String,
    }

    impl Resp {
        fn json(&self) -> serde_json::Value {
            serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
        }
    }

    /// One HTTP/1.1 exchange over a fresh TCP connection (`Connection: close`).
    fn call(h: &Harness, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut s = TcpStream::connect(h.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Resp {
            status,
            headers,
            body: body.to_string(),
        }
    }

    fn get(h: &Harness, path: &str) -> Resp {
        call(h, "GET", path, &[], b"")
    }

    fn post(h: &Harness, path: &str, body: &str) -> Resp {
        call(h, "POST", path, &[], body.as_bytes())
    }

    fn put(h: &Harness, path: &str, body: &str) -> Resp {
        call(h, "PUT", path, &[], body.as_bytes())
    }

    #[track_caller]
    fn assert_error(r: &Resp, status: u16, text: &str) {
        assert_eq!(r.status, status, "{}", r.body);
        assert_eq!(r.headers["content-type"], "application/json");
        let error = r.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(text), "`{error}` lacks `{text}`");
    }

    #[test]
    fn healthz_flips_while_draining() {
        let h = start("", true);
        let r = get(&h, "/healthz");
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        let r = call(&h, "HEAD", "/healthz", &[], b"");
        assert_eq!((r.status, r.body.as_str()), (200, ""));
        h.draining.store(true, Ordering::Release);
        let r = get(&h, "/healthz");
        assert_eq!((r.status, r.body.as_str()), (503, "draining"));
        h.draining.store(false, Ordering::Release);
        assert_eq!(get(&h, "/healthz").status, 200);
    }

    #[test]
    fn stats_sums_loops_and_lists_queues() {
        let h = start("", true);
        let r = get(&h, "/v1/stats?pretty=no");
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["content-type"], "application/json");
        let v = r.json();
        assert_eq!(v["connections"], 7);
        assert_eq!(v["cores"], 2);
        let d = &v["queues"]["default"];
        assert_eq!(d["waiting"], 12);
        assert_eq!(d["admitted_total"], 20);
        assert_eq!(d["left_total"], 3);
        assert_eq!(d["admit_rate_per_s"], 1.5);
        assert_eq!(d["paused"], false);
        assert_eq!(v["queues"]["w-1"]["paused"], true);
        assert_eq!(h.seen.lock().unwrap().as_slice(), &[ControlReq::Stats]);
    }

    #[test]
    fn metrics_render_loops_and_queues() {
        let h = start("", true);
        let r = get(&h, "/metrics");
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["content-type"], crate::metrics::CONTENT_TYPE);
        assert!(
            r.body.contains("queue_connections{core=\"1\"} 4\n"),
            "{}",
            r.body
        );
        assert!(
            r.body.contains("queue_waiting{queue=\"default\"} 12\n"),
            "{}",
            r.body
        );
        assert_eq!(
            r.body.contains("queue_server_allocations_total"),
            cfg!(feature = "count-alloc")
        );
        assert!(r.body.ends_with("# EOF\n"));
    }

    #[test]
    fn keys_serve_the_jwks() {
        let h = start("", true);
        let r = get(&h, "/v1/keys");
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.body, h.signer.jwks_json());
        assert_eq!(r.json()["keys"][0]["kid"], h.signer.kid());
    }

    #[test]
    fn admit_returns_tokens_that_verify() {
        let h = start("", true);
        let r = post(
            &h,
            "/v1/queues/default/admit",
            r#"{"count": 2, "extra": true}"#,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let admitted = r.json()["admitted"].as_array().unwrap().clone();
        assert_eq!(admitted.len(), 2);
        assert_eq!(admitted[0]["user_id"], 100);
        assert!(admitted[0]["expires_at"].as_u64().unwrap() > now());
        let token = h
            .signer
            .verify(admitted[1]["token"].as_str().unwrap())
            .unwrap();
        assert_eq!((token.user, token.queue.as_str()), (101, "default"));
        assert_eq!(
            h.seen.lock().unwrap().as_slice(),
            &[ControlReq::Admit {
                queue: "default".into(),
                count: 2
            }]
        );
    }

    #[test]
    fn queue_controls_reach_the_core() {
        let h = start("", true);
        for r in [
            put(&h, "/v1/queues/w-1/rate", r#"{"per_second": 2.5}"#),
            put(&h, "/v1/queues/w-1/rate", r#"{"per_second": 0}"#),
            put(
                &h,
                "/v1/queues/w-1/capacity",
                r#"{"online": 10, "capacity": 100}"#,
            ),
            post(&h, "/v1/queues/w-1/pause", ""),
            post(&h, "/v1/queues/w-1/resume", ""),
        ] {
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.json()["ok"], true);
        }
        let q = || "w-1".to_string();
        assert_eq!(
            h.seen.lock().unwrap().as_slice(),
            &[
                ControlReq::SetRate {
                    queue: q(),
                    per_second: 2.5
                },
                ControlReq::SetRate {
                    queue: q(),
                    per_second: 0.0
                },
                ControlReq::SetCapacity {
                    queue: q(),
                    online: 10,
                    capacity: 100
                },
                ControlReq::Pause {
                    queue: q(),
                    paused: true
                },
                ControlReq::Pause {
                    queue: q(),
                    paused: false
                },
            ]
        );
    }

    #[test]
    fn core_answers_map_to_statuses() {
        let h = start("", true);
        assert_error(
            &post(&h, "/v1/queues/ghost/admit", r#"{"count":1}"#),
            404,
            "unknown queue",
        );
        assert_error(
            &post(&h, "/v1/queues/ghost/pause", ""),
            404,
            "unknown queue",
        );
        assert_error(
            &put(
                &h,
                "/v1/queues/bad/capacity",
                r#"{"online":5,"capacity":1}"#,
            ),
            400,
            "capacity below online",
        );
        assert_error(
            &post(&h, "/v1/queues/silent/admit", r#"{"count":1}"#),
            503,
            "core unavailable",
        );
        assert_error(
            &post(&h, "/v1/queues/confused/pause", ""),
            500,
            "unexpected",
        );
        // A name that cannot be a queue never reaches the core.
        let before = h.seen.lock().unwrap().len();
        assert_error(
            &post(&h, "/v1/queues/a%20b/admit", r#"{"count":1}"#),
            404,
            "unknown queue",
        );
        assert_error(
            &post(&h, "/v1/queues//admit", r#"{"count":1}"#),
            404,
            "unknown queue",
        );
        assert_eq!(h.seen.lock().unwrap().len(), before);
    }

    #[test]
    fn bad_requests_are_refused_before_the_core() {
        let h = start("", true);
        let admit = "/v1/queues/default/admit";
        assert_error(&post(&h, admit, ""), 400, "invalid JSON");
        assert_error(&post(&h, admit, "{"), 400, "invalid JSON");
        assert_error(&post(&h, admit, "[1]"), 400, "invalid JSON");
        assert_error(&post(&h, admit, r#"{"cnt":1}"#), 400, "count");
        assert_error(&post(&h, admit, r#"{"count":"3"}"#), 400, "invalid JSON");
        assert_error(&post(&h, admit, r#"{"count":-1}"#), 400, "invalid JSON");
        let rate = "/v1/queues/default/rate";
        assert_error(&put(&h, rate, r#"{"per_second":-1}"#), 400, "per_second");
        assert_error(&put(&h, rate, r#"{"per_second":NaN}"#), 400, "");
        assert_error(&put(&h, rate, r#"{"per_second":1e999}"#), 400, "");
        assert_error(
            &put(&h, "/v1/queues/default/capacity", r#"{"online":1}"#),
            400,
            "capacity",
        );
        assert_error(
            &post(&h, "/v1/tokens/verify", r#"{"token":5}"#),
            400,
            "invalid JSON",
        );
        // Over 64 KiB: refused whether the length is declared or streamed in chunks.
        let big = format!(r#"{{"count":1,"pad":"{}"}}"#, "x".repeat(MAX_BODY_BYTES));
        assert_error(&post(&h, admit, &big), 413, "65536");
        let mut chunked = format!("{:x}\r\n", big.len()).into_bytes();
        chunked.extend_from_slice(big.as_bytes());
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        let r = call(
            &h,
            "POST",
            admit,
            &[("Transfer-Encoding", "chunked")],
            &chunked,
        );
        assert_error(&r, 413, "65536");
        let r = call(&h, "GET", "/healthz", &[], big.as_bytes());
        assert_error(&r, 413, "65536");
        // Just under the limit is fine.
        let fits = format!(
            r#"{{"count":1,"pad":"{}"}}"#,
            "x".repeat(MAX_BODY_BYTES - 30)
        );
        assert_eq!(post(&h, admit, &fits).status, 200);
        assert_eq!(
            h.seen.lock().unwrap().as_slice(),
            &[ControlReq::Admit {
                queue: "default".into(),
                count: 1
            }]
        );
    }

    #[test]
    fn unknown_routes_and_wrong_methods() {
        let h = start("", true);
        assert_error(&get(&h, "/"), 404, "not found");
        assert_error(&get(&h, "/v1/stats/"), 404, "not found");
        assert_error(&get(&h, "/v1/queues/default/kick"), 404, "not found");
        assert_error(&get(&h, "/v2/stats"), 404, "not found");
        let r = get(&h, "/v1/queues/default/admit");
        assert_error(&r, 405, "method");
        assert_eq!(r.headers["allow"], "POST");
        let r = post(&h, "/v1/queues/default/rate", r#"{"per_second":1}"#);
        assert_error(&r, 405, "method");
        assert_eq!(r.headers["allow"], "PUT");
        let r = call(&h, "DELETE", "/healthz", &[], b"");
        assert_error(&r, 405, "method");
        assert_eq!(r.headers["allow"], "GET, HEAD");
        assert_error(&get(&h, "/v1/tokens/verify"), 405, "method");
        assert!(h.seen.lock().unwrap().is_empty());
    }

    #[test]
    fn verify_consumes_the_jti_once() {
        let h = start("", true);
        let token = h.signer.sign(77, "world-1", "jti-77", now(), now() + 300);
        let body = format!(r#"{{"token":"{token}"}}"#);
        let r = post(&h, "/v1/tokens/verify", &body);
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["valid"], true);
        assert_eq!(v["user_id"], 77);
        assert_eq!(v["queue"], "world-1");
        let v = post(&h, "/v1/tokens/verify", &body).json();
        assert_eq!(v["valid"], false);
        assert_eq!(v["reason"], "already_used");
        assert!(v.get("user_id").is_none());
        let consume = ControlReq::ConsumeJti {
            jti: "jti-77".into(),
            exp: h.signer.verify(&token).unwrap().exp,
        };
        assert_eq!(
            h.seen.lock().unwrap().as_slice(),
            &[consume.clone(), consume]
        );
        // Bad tokens never reach the core.
        let expired = h.signer.sign(1, "q", "jti-old", now() - 900, now() - 600);
        for (tok, reason) in [("garbage", "malformed"), (expired.as_str(), "expired")] {
            let r = post(&h, "/v1/tokens/verify", &format!(r#"{{"token":"{tok}"}}"#));
            assert_eq!(r.status, 200);
            assert_eq!(r.json()["valid"], false);
            assert_eq!(r.json()["reason"], reason);
        }
        assert_eq!(h.seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn bearer_key_guards_v1_except_keys() {
        let h = start("s3cret-key", true);
        let auth = [("Authorization", "Bearer s3cret-key")];
        for r in [
            get(&h, "/v1/stats"),
            call(
                &h,
                "GET",
                "/v1/stats",
                &[("Authorization", "Bearer s3cret-kex")],
                b"",
            ),
            call(
                &h,
                "GET",
                "/v1/stats",
                &[("Authorization", "Bearer s3cret-key-and-more")],
                b"",
            ),
            call(
                &h,
                "GET",
                "/v1/stats",
                &[("Authorization", "Basic s3cret-key")],
                b"",
            ),
            call(
                &h,
                "GET",
                "/v1/stats",
                &[("Authorization", "s3cret-key")],
                b"",
            ),
            post(&h, "/v1/queues/default/admit", r#"{"count":1}"#),
            post(&h, "/v1/tokens/verify", r#"{"token":"x"}"#),
            post(&h, "/v1/keys", ""),
            get(&h, "/v1/nothing-here"),
        ] {
            assert_error(&r, 401, "bearer");
            assert_eq!(r.headers["www-authenticate"], "Bearer");
        }
        assert!(h.seen.lock().unwrap().is_empty());
        assert_eq!(call(&h, "GET", "/v1/stats", &auth, b"").status, 200);
        let lower = [("authorization", "bearer s3cret-key")];
        assert_eq!(call(&h, "GET", "/v1/stats", &lower, b"").status, 200);
        let r = call(
            &h,
            "POST",
            "/v1/queues/default/admit",
            &auth,
            br#"{"count":1}"#,
        );
        assert_eq!(r.status, 200);
        assert_error(&call(&h, "POST", "/v1/keys", &auth, b""), 405, "method");
        // Public without the key: the JWKS, health and metrics.
        assert_eq!(get(&h, "/v1/keys").status, 200);
        assert_eq!(get(&h, "/healthz").status, 200);
        assert_eq!(get(&h, "/metrics").status, 200);
    }

    #[test]
    fn no_key_means_no_auth() {
        let h = start("", true);
        let r = call(
            &h,
            "GET",
            "/v1/stats",
            &[("Authorization", "Bearer whatever")],
            b"",
        );
        assert_eq!(r.status, 200);
        assert_eq!(get(&h, "/v1/stats").status, 200);
    }

    #[test]
    fn dead_core_gives_503() {
        let h = start("", false);
        assert_error(&get(&h, "/v1/stats"), 503, "core unavailable");
        assert_error(&get(&h, "/metrics"), 503, "core unavailable");
        assert_error(
            &post(&h, "/v1/queues/default/admit", r#"{"count":1}"#),
            503,
            "core",
        );
        let token = h.signer.sign(1, "q", "j", now(), now() + 60);
        let r = post(
            &h,
            "/v1/tokens/verify",
            &format!(r#"{{"token":"{token}"}}"#),
        );
        assert_error(&r, 503, "core unavailable");
        // What needs no core still works.
        assert_eq!(get(&h, "/healthz").status, 200);
        assert_eq!(get(&h, "/v1/keys").status, 200);
    }

    #[test]
    fn keep_alive_serves_several_requests_on_one_connection() {
        let h = start("", true);
        let mut s = TcpStream::connect(h.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /v1/keys HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        assert_eq!(raw.matches("HTTP/1.1 200").count(), 2, "{raw}");
        assert!(raw.contains(&h.signer.jwks_json()));
    }

    /// `tiny_http` ends its accept thread on an accept error; the port must come back.
    /// Runs itself in a child process, because it lowers the process's fd limit.
    #[test]
    fn port_comes_back_after_accept_error() {
        const CHILD: &str = "QUEUE_SERVER_TEST_REBIND_CHILD";
        if std::env::var_os(CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "control::tests::port_comes_back_after_accept_error",
                ])
                .args(["--nocapture", "--test-threads=1"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
            assert!(stdout.contains("1 passed"), "{stdout}");
            assert!(stderr.contains("listening again"), "{stderr}");
            return;
        }
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::INFO)
            .init();
        let h = start("", true);
        // Use up every free descriptor number below the highest one in use, then allow
        // exactly one more: the client socket gets it and the server's accept() fails.
        use std::os::fd::AsRawFd;
        let max_in_use = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap();
        let mut fillers = Vec::new();
        loop {
            let f = std::fs::File::open("/dev/null").unwrap();
            let fd = f.as_raw_fd() as u64;
            fillers.push(f);
            if fd > max_in_use {
                break;
            }
        }
        let highest = fillers.last().unwrap().as_raw_fd() as u64;
        let mut saved = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut saved) },
            0
        );
        let low = libc::rlimit {
            rlim_cur: highest + 2,
            rlim_max: saved.rlim_max,
        };
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
        let mut client = TcpStream::connect(h.addr).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        // The accept (or the dup after it) fails; the socket is closed or reset.
        let mut byte = [0u8; 1];
        let closed = match client.read(&mut byte) {
            Ok(n) => n == 0,
            Err(e) => {
                e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut
            }
        };
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &saved) }, 0);
        assert!(closed, "the server accepted with no descriptor to spare");
        drop(client);
        drop(fillers);
        // Wait (bounded) for the rebind; each try is one request on a fresh connection.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = TcpStream::connect(h.addr).is_ok_and(|mut s| {
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    .is_ok()
                    && {
                        let mut raw = String::new();
                        s.read_to_string(&mut raw).is_ok() && raw.starts_with("HTTP/1.1 200")
                    }
            });
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "control port did not come back");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }
}
