//! The operator's live view: `GET /` and `GET /dashboard` serve one page embedded in
//! the binary (`dashboard.html` + `dashboard.js`: inline CSS and JS, no CDN, no build step, works
//! offline); `GET /v1/events` streams a JSON snapshot a second as Server-Sent Events;
//! `GET /v1/stats` (served here since it shares the snapshot's shapes) answers the
//! contract's fields plus the additions and the last hour of history. On a node with
//! `[cluster]` both carry the `cluster` section (`control::cluster`: this node, members,
//! owners, recovery holds, node links), which the page shows as its cluster panel; on
//! a single node there is no section and no panel.
//!
//! Decisions:
//! - the page is public (it holds code, no data); every data call (`/v1/events`,
//!   `/v1/stats`, the queue operations) needs the bearer key when one is set. The page
//!   asks for the key, keeps it in `sessionStorage` (gone with the tab) and sends it as
//!   `Authorization: Bearer`; it reads the stream with `fetch()` (EventSource cannot
//!   send headers), so the key is never in a URL;
//! - a stream is bounded: at most [`EVENT_STREAMS_MAX`] at once (503 past it, so
//!   dashboards can never take all [`super::CONNECTIONS_MAX`] control connections), and
//!   each ends by itself after [`EVENT_STREAM_LIFETIME`] (below
//!   [`super::CONNECTION_LIFETIME`]) and closes its connection (`Connection: close`), so
//!   each stream has a fresh connection and ends by itself before the connection
//!   lifetime would cut it; the page reconnects at once (1 s after an error). The
//!   connection lifetime stays as it was for every connection;
//! - snapshots are built at most every [`SNAPSHOT_FRESH`] whatever the number of
//!   streams (one core round trip, shared), so a number on screen is at most
//!   [`EVENT_INTERVAL`] + [`SNAPSHOT_FRESH`] old: under 2 s;
//! - a stream ends once the server stops (draining and the core gone), so it never
//!   holds up the shutdown.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use hyper::body::Frame;
use serde::Serialize;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::routes::Reply;
use super::{ask_core, shapes, ControlContext, CoreError, CONNECTION_LIFETIME};
use crate::msg::{ControlReply, ControlReq, QueueStats};
use crate::stats::LoopStats;

/// The page, compiled into the binary: the markup (ending in `<script>`), the script,
/// the closing tags.
const PAGE: &str = concat!(
    include_str!("dashboard.html"),
    include_str!("dashboard.js"),
    "</script>\n</body>\n</html>\n"
);
/// Most event streams open at once.
pub const EVENT_STREAMS_MAX: usize = 16;
/// Longest life of one event stream; the page then reconnects.
pub const EVENT_STREAM_LIFETIME: Duration = Duration::from_secs(50);
const _: () = assert!(EVENT_STREAM_LIFETIME.as_secs() < CONNECTION_LIFETIME.as_secs());
/// Time between two events of a stream.
pub const EVENT_INTERVAL: Duration = Duration::from_secs(1);
/// A snapshot younger than this is sent again instead of built anew.
pub const SNAPSHOT_FRESH: Duration = Duration::from_millis(500);
/// Per-second points kept for the charts' recent end.
const RECENT_POINTS: usize = 120;
/// Most queues in one event (those with the most players waiting); `/v1/stats` has all.
pub const EVENT_QUEUES_MAX: usize = 200;

/// `Content-Type` of the page.
const HTML: &str = "text/html; charset=utf-8";
/// The page's only sources are itself: no CDN, nothing fetched from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// One per-second point of the charts.
#[derive(Debug, Clone, Copy, Serialize)]
struct Point {
    /// Unix ms.
    t: u64,
    /// Players waiting, all queues.
    waiting: u64,
    /// Admissions per second since the previous point, all queues.
    admitted_per_s: f64,
    /// Frames read per second since the previous point, all loops.
    requests_per_s: f64,
}

/// The counters of the last snapshot, from which the next one's rates are taken.
#[derive(Debug, Clone)]
struct Previous {
    /// When they were read.
    at: Instant,
    /// Per loop: (logins, frames in, frames out).
    loops: Vec<(u64, u64, u64)>,
    /// Admissions, all queues.
    admitted: u64,
}

/// What the snapshots share.
#[derive(Debug, Default)]
struct Cache {
    /// The last snapshot and when it was built.
    last: Option<(Instant, Bytes)>,
    /// The counters it was built from.
    previous: Option<Previous>,
    /// Per-second points, oldest first.
    recent: VecDeque<Point>,
}

impl Previous {
    /// The loops' counters now, with the admissions `admitted` (all queues).
    fn read(loops: &[LoopStats], at: Instant, admitted: u64) -> Previous {
        Previous {
            at,
            loops: loops
                .iter()
                .map(|l| {
                    (
                        LoopStats::get(&l.logins),
                        LoopStats::get(&l.frames_in),
                        LoopStats::get(&l.frames_out),
                    )
                })
                .collect(),
            admitted,
        }
    }
}

impl Cache {
    /// Fills the loops' rates of `stats` and appends a point to `recent`, both since the
    /// previous snapshot's counters (nothing on the first snapshot: no rate yet).
    fn add_rates(&mut self, stats: &mut shapes::StatsOut<'_>, current: &Previous, waiting: u64) {
        let Some(prev) = &self.previous else {
            return;
        };
        let secs = current.at.duration_since(prev.at).as_secs_f64().max(1e-3);
        let per_s = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        for ((out, c), p) in stats.loops.iter_mut().zip(&current.loops).zip(&prev.loops) {
            out.logins_per_s = Some(per_s(c.0, p.0));
            out.frames_in_per_s = Some(per_s(c.1, p.1));
            out.frames_out_per_s = Some(per_s(c.2, p.2));
        }
        let frames = |l: &[(u64, u64, u64)]| l.iter().map(|x| x.1).sum::<u64>();
        if self.recent.len() == RECENT_POINTS {
            self.recent.pop_front();
        }
        self.recent.push_back(Point {
            t: crate::queue::core::unix_ms(),
            waiting,
            admitted_per_s: per_s(current.admitted, prev.admitted),
            requests_per_s: per_s(frames(&current.loops), frames(&prev.loops)),
        });
    }
}

/// The dashboard's state: the stream cap and the shared snapshot.
#[derive(Debug)]
pub(super) struct Live {
    /// One permit per open stream.
    streams: Arc<Semaphore>,
    /// The shared snapshot.
    cache: Mutex<Cache>,
}

/// The dashboard's routes, to merge into the control router (behind its gate).
pub(super) fn router() -> Router<Arc<ControlContext>> {
    let live = Arc::new(Live {
        streams: Arc::new(Semaphore::new(EVENT_STREAMS_MAX)),
        cache: Mutex::new(Cache::default()),
    });
    let for_events = live.clone();
    Router::new()
        .route("/", get(page))
        .route("/dashboard", get(page))
        .route("/v1/stats", get(stats))
        .route(
            "/v1/events",
            get(move |State(ctx): State<Arc<ControlContext>>| events(ctx, for_events.clone())),
        )
}

/// `GET /` and `/dashboard`.
async fn page() -> Response {
    let mut response = Response::new(Body::from(PAGE));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(HTML));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The core's queue figures.
async fn queue_stats(ctx: &Arc<ControlContext>) -> Result<Vec<QueueStats>, Reply> {
    match ask_core(ctx, ControlReq::Stats).await {
        Ok(ControlReply::Stats(queues)) => Ok(queues),
        Ok(other) => {
            tracing::error!(reply = ?other, "unexpected core answer to a stats request");
            Err(Reply::error(500, "unexpected core answer"))
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET /v1/stats`: the contract's fields, the additions, and the last hour.
async fn stats(State(ctx): State<Arc<ControlContext>>) -> Reply {
    let queues = match queue_stats(&ctx).await {
        Ok(q) => q,
        Err(reply) => return reply,
    };
    let mut out = shapes::stats(&ctx, &queues);
    let mut history = ctx.server_stats.history.queues();
    for (name, q) in out.queues.iter_mut() {
        q.history = Some(history.remove(*name).unwrap_or_default());
    }
    Reply::json(200, &out)
}

/// `GET /v1/events`: a stream of snapshots, one per [`EVENT_INTERVAL`].
async fn events(ctx: Arc<ControlContext>, live: Arc<Live>) -> Response {
    let Ok(permit) = live.streams.clone().try_acquire_owned() else {
        return Reply::error(503, "too many event streams; retry later").into_response();
    };
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(feed(ctx, live, tx, permit));
    let mut response = Response::new(Body::new(EventBody { rx }));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies (nginx) must pass each event on at once.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // The next stream gets a fresh connection, whose full `CONNECTION_LIFETIME` is
    // longer than `EVENT_STREAM_LIFETIME`: a stream then always ends by itself, never
    // cut short by the lifetime of a reused connection.
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Writes one stream's events until its lifetime ends, the client goes, or the
/// server stops; the permit is held for as long.
async fn feed(
    ctx: Arc<ControlContext>,
    live: Arc<Live>,
    tx: mpsc::Sender<Bytes>,
    _permit: OwnedSemaphorePermit,
) {
    let end = tokio::time::Instant::now() + EVENT_STREAM_LIFETIME;
    // `retry`: how long an EventSource waits before reconnecting (the page's own
    // reader waits the same).
    if tx
        .send(Bytes::from_static(b"retry: 1000\n\n"))
        .await
        .is_err()
    {
        return;
    }
    let mut ticks = tokio::time::interval(EVENT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = tx.closed() => return,
            () = tokio::time::sleep_until(end) => break,
        }
        let event = match live.snapshot(&ctx).await {
            Ok(json) => {
                let mut e = Vec::with_capacity(json.len() + 24);
                e.extend_from_slice(b"event: snapshot\ndata: ");
                e.extend_from_slice(&json);
                e.extend_from_slice(b"\n\n");
                Bytes::from(e)
            }
            // The server stops: end the stream so it does not hold up the shutdown.
            Err(_) if ctx.is_draining() => break,
            Err(e) => Bytes::from(format!("event: failure\ndata: {{\"error\":\"{e}\"}}\n\n")),
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
    let _ = tx
        .send(Bytes::from_static(b"event: end\ndata: {}\n\n"))
        .await;
}

/// The body of an event stream: what [`feed`] sends, as it comes.
struct EventBody {
    /// From the feeding task; ends when it does.
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|e| e.map(|b| Ok(Frame::data(b))))
    }
}

/// One event's JSON.
#[derive(Serialize)]
struct Snapshot<'a> {
    /// When it was built, unix ms.
    at_unix_ms: u64,
    /// The `/v1/stats` figures (queues without their history, loops with their rates).
    #[serde(flatten)]
    stats: shapes::StatsOut<'a>,
    /// Queues left out (past [`EVENT_QUEUES_MAX`], those with fewest waiting).
    queues_omitted: usize,
    /// Per-second points of the last two minutes, oldest first.
    recent: &'a VecDeque<Point>,
}

impl Live {
    /// The current snapshot: the cached one while fresh, else a new one.
    async fn snapshot(&self, ctx: &Arc<ControlContext>) -> Result<Bytes, CoreError> {
        if let Some(json) = self.fresh() {
            return Ok(json);
        }
        let mut queues = match ask_core(ctx, ControlReq::Stats).await {
            Ok(ControlReply::Stats(q)) => q,
            Ok(_) | Err(CoreError::NoAnswer) => return Err(CoreError::NoAnswer),
            Err(e) => return Err(e),
        };
        let mut guard = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let cache = &mut *guard;
        if let Some((at, json)) = &cache.last {
            if at.elapsed() < SNAPSHOT_FRESH {
                return Ok(json.clone());
            }
        }
        let now = Instant::now();
        let waiting: u64 = queues.iter().map(|q| q.waiting).sum();
        let admitted: u64 = queues.iter().map(|q| q.admitted_total).sum();
        let omitted = queues.len().saturating_sub(EVENT_QUEUES_MAX);
        if omitted > 0 {
            queues.sort_by_key(|q| std::cmp::Reverse(q.waiting));
            queues.truncate(EVENT_QUEUES_MAX);
        }
        let mut stats = shapes::stats(ctx, &queues);
        let current = Previous::read(&ctx.loops, now, admitted);
        cache.add_rates(&mut stats, &current, waiting);
        let json = sonic_rs::to_vec(&Snapshot {
            at_unix_ms: crate::queue::core::unix_ms(),
            stats,
            queues_omitted: omitted,
            recent: &cache.recent,
        })
        .map(Bytes::from)
        .expect("snapshot serializes");
        cache.previous = Some(current);
        cache.last = Some((now, json.clone()));
        Ok(json)
    }

    /// The cached snapshot, if still fresh.
    fn fresh(&self) -> Option<Bytes> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (at, json) = cache.last.as_ref()?;
        (at.elapsed() < SNAPSHOT_FRESH).then(|| json.clone())
    }
}
