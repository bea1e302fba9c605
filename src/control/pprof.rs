//! `GET /debug/pprof/profile?seconds=N[&format=svg]`: a CPU profile of the running
//! server, taken without a restart, as a pprof protobuf (`go tool pprof`, `pprof -http`)
//! or a flamegraph SVG.
//!
//! The sampler is the `pprof` crate's: `setitimer(ITIMER_PROF)` makes the kernel send
//! SIGPROF to whichever thread is using CPU, [`FREQUENCY_HZ`] times per CPU-second, and
//! the handler records that thread's stack and name. It needs no hardware counters and no
//! `perf_event_open` (works in containers and VMs). A profile costs the io loops one
//! stack walk per sample, nothing when none runs.
//!
//! Invariants:
//! - at most one profile runs at a time in the process (the sampler is process-wide);
//!   another request meanwhile gets 409;
//! - the profile never runs on the control runtime: a thread named `pprof` starts the
//!   sampler, waits, builds and encodes the report; the handler only awaits its answer,
//!   so other control requests are served meanwhile; a request that goes away (client
//!   closed, server stopping) stops the sampler at once;
//! - frames inside libc, libgcc, libpthread and the vDSO are not unwound
//!   ([`BLOCKLIST`]): unwinding from a signal that interrupted the unwinder or the
//!   dynamic loader itself can deadlock;
//! - the io loops are not stopped or slowed beyond the samples: SIGPROF is installed with
//!   `SA_RESTART`, io_uring completions are not affected by signals, and an interrupted
//!   `io_uring_enter` / `epoll_wait` is only an early wake-up for monoio (tested under
//!   load by `tests/pprof.rs`, where no client sees an error).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use axum::http::Uri;
use pprof::protos::Message;

use super::routes::Reply;

/// Samples per CPU-second: 99, not 100, so sampling does not run in lockstep with the
/// core's 10 ms tick or other periodic work (the usual choice of perf and Go).
pub const FREQUENCY_HZ: i32 = 99;
/// Profile length when `seconds` is not given (as Go's `net/http/pprof`).
pub const SECONDS_DEFAULT: u64 = 30;
/// Longest profile. A control connection lives [`super::CONNECTION_LIFETIME`] (60 s) and
/// then gets [`super::REQUEST_TIMEOUT`] (10 s) to finish its answer, so a 60 s profile
/// on a fresh connection leaves 10 s to build the report (under 2 s in a release build).
pub const SECONDS_MAX: u64 = 60;
/// Longest time to build and encode the report once sampling ended (503 past it).
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Whole-request deadline of `/debug/pprof/` routes, used by the gate instead of
/// [`super::REQUEST_TIMEOUT`]: the longest profile plus its report, plus a margin so the
/// handler's own 503 comes first.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(SECONDS_MAX + 10 + 5);
const _: () = assert!(REQUEST_TIMEOUT.as_secs() > SECONDS_MAX + REPORT_TIMEOUT.as_secs());
/// Shared objects whose frames are not unwound (matched as substrings of their path).
pub const BLOCKLIST: [&str; 4] = ["libc", "libgcc", "pthread", "vdso"];
/// `Content-Type` of the protobuf answer.
const PROTOBUF: &str = "application/octet-stream";
/// `Content-Type` of the flamegraph answer.
const SVG: &str = "image/svg+xml";

/// Set while a profile runs; cleared by [`Running`]'s drop once its thread has stopped
/// the sampler, before the answer is sent.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Holds [`RUNNING`] for as long as it lives.
struct Running;

impl Running {
    /// Takes the flag, or `None` when a profile already runs.
    fn take() -> Option<Running> {
        RUNNING
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Running)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::Release);
    }
}

/// What the answer is encoded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// pprof's `profile.proto`, uncompressed (`format=proto`, the default).
    Protobuf,
    /// An inferno flamegraph (`format=svg`).
    Svg,
}

/// A profile request, parsed from the query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileQuery {
    /// Sampling time, 1..=[`SECONDS_MAX`].
    pub seconds: u64,
    /// Answer encoding.
    pub format: Format,
}

/// Why a query string was refused (400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// `seconds` is not an integer in 1..=[`SECONDS_MAX`].
    Seconds,
    /// `format` is neither `proto` nor `svg`.
    Format,
    /// A parameter this route does not take (a typo must not be silently ignored).
    Unknown(String),
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::Seconds => write!(f, "seconds must be an integer in 1..={SECONDS_MAX}"),
            QueryError::Format => f.write_str("format must be proto or svg"),
            QueryError::Unknown(key) => write!(f, "unknown parameter {key:?}"),
        }
    }
}

impl std::error::Error for QueryError {}

/// Parses `seconds=N&format=F` (both optional, percent-encoding not needed by any value).
pub fn parse_query(query: Option<&str>) -> Result<ProfileQuery, QueryError> {
    let mut out = ProfileQuery {
        seconds: SECONDS_DEFAULT,
        format: Format::Protobuf,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "seconds" => {
                out.seconds = value
                    .parse::<u64>()
                    .ok()
                    .filter(|s| (1..=SECONDS_MAX).contains(s))
                    .ok_or(QueryError::Seconds)?;
            }
            "format" => {
                out.format = match value {
                    "proto" | "pb" => Format::Protobuf,
                    "svg" | "flamegraph" => Format::Svg,
                    _ => return Err(QueryError::Format),
                };
            }
            _ => return Err(QueryError::Unknown(key.chars().take(64).collect())),
        }
    }
    Ok(out)
}

/// Why a profile gave no answer.
#[derive(Debug)]
enum ProfileError {
    /// The sampler could not start (signal handler or timer refused).
    Start(pprof::Error),
    /// The report could not be built or encoded.
    Report(pprof::Error),
    /// The request went away before the end: nothing to answer.
    Cancelled,
}

impl std::fmt::Display for ProfileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProfileError::Start(e) => write!(f, "cpu profiler did not start: {e}"),
            ProfileError::Report(e) => write!(f, "cpu profile report failed: {e}"),
            ProfileError::Cancelled => f.write_str("cpu profile cancelled"),
        }
    }
}

impl std::error::Error for ProfileError {}

/// `GET /debug/pprof/profile`.
pub(super) async fn profile(uri: Uri) -> Reply {
    let query = match parse_query(uri.query()) {
        Ok(q) => q,
        Err(e) => return Reply::error(400, &e.to_string()),
    };
    let Some(running) = Running::take() else {
        return Reply::error(409, "a cpu profile is already running");
    };
    // Dropped with this future (client gone, server stopping): the thread then stops
    // sampling at once instead of profiling for nobody.
    let (cancel_tx, cancel_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("pprof".to_string())
        .spawn(move || {
            let answer = run(query, &cancel_rx);
            // Free before answering: a client may ask for its next profile as soon as
            // it has this one (the sampler itself stopped inside `run`).
            drop(running);
            let _ = done_tx.send(answer);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the cpu profile thread");
        return Reply::error(503, "cannot start the cpu profiler");
    }
    let wait = Duration::from_secs(query.seconds) + REPORT_TIMEOUT;
    let answer = tokio::time::timeout(wait, done_rx).await;
    drop(cancel_tx);
    match answer {
        Ok(Ok(Ok((Format::Protobuf, bytes)))) => Reply::text(200, PROTOBUF, bytes),
        Ok(Ok(Ok((Format::Svg, bytes)))) => Reply::text(200, SVG, bytes),
        Ok(Ok(Err(e))) => {
            tracing::error!(error = %e, "cpu profile failed");
            Reply::error(500, &e.to_string())
        }
        Ok(Err(_)) => Reply::error(500, "cpu profile thread ended without an answer"),
        Err(_) => Reply::error(503, "cpu profile report not ready in time"),
    }
}

/// The profile thread: samples for `query.seconds` (or until `cancel` is dropped), then
/// builds and encodes the report.
fn run(
    query: ProfileQuery,
    cancel: &mpsc::Receiver<()>,
) -> Result<(Format, Vec<u8>), ProfileError> {
    let started = Instant::now();
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY_HZ)
        .blocklist(&BLOCKLIST)
        .build()
        .map_err(ProfileError::Start)?;
    tracing::info!(
        seconds = query.seconds,
        hz = FREQUENCY_HZ,
        format = ?query.format,
        "cpu profile started"
    );
    match cancel.recv_timeout(Duration::from_secs(query.seconds)) {
        Err(RecvTimeoutError::Timeout) => {}
        Ok(()) | Err(RecvTimeoutError::Disconnected) => {
            tracing::info!("cpu profile cancelled: its request went away");
            return Err(ProfileError::Cancelled);
        }
    }
    // Symbolizing takes the sampler's lock: samples taken meanwhile (of this thread,
    // mostly) are dropped, the guard stops the timer right after.
    let report = guard.report().build().map_err(ProfileError::Report)?;
    drop(guard);
    let bytes = match query.format {
        Format::Protobuf => report
            .pprof()
            .map_err(ProfileError::Report)?
            .encode_to_vec(),
        Format::Svg => {
            let mut svg = Vec::new();
            report.flamegraph(&mut svg).map_err(ProfileError::Report)?;
            svg
        }
    };
    let samples: isize = report.data.values().sum();
    tracing::info!(
        samples,
        bytes = bytes.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "cpu profile done"
    );
    Ok((query.format, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_defaults_bounds_and_typos() {
        let q = parse_query(None).unwrap();
        assert_eq!((q.seconds, q.format), (SECONDS_DEFAULT, Format::Protobuf));
        let q = parse_query(Some("seconds=2&format=svg")).unwrap();
        assert_eq!((q.seconds, q.format), (2, Format::Svg));
        assert_eq!(parse_query(Some("seconds=60")).unwrap().seconds, 60);
        for bad in [
            "seconds=0",
            "seconds=61",
            "seconds=-1",
            "seconds=",
            "seconds=1.5",
        ] {
            assert_eq!(parse_query(Some(bad)), Err(QueryError::Seconds), "{bad}");
        }
        assert_eq!(parse_query(Some("format=png")), Err(QueryError::Format));
        assert_eq!(
            parse_query(Some("second=5")),
            Err(QueryError::Unknown("second".into()))
        );
    }
}
