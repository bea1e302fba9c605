//! Counters the io loops keep for `/metrics` and `/v1/stats`.
//!
//! Invariants:
//! - each [`LoopStats`] is written by its own loop only (relaxed stores and adds on a
//!   cache line of its own), read by the control thread at scrape time: no lock, no
//!   shared write on the hot path;
//! - values are monotonic counters except `connections`, a gauge.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one io loop, padded to its own cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct LoopStats {
    /// Open player connections (gauge).
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Successful logins.
    pub logins: AtomicU64,
    /// Frames read from clients.
    pub frames_in: AtomicU64,
    /// Frames written to clients (responses and pushes).
    pub frames_out: AtomicU64,
    /// Pushes (`position`, `admitted`, `kicked`).
    pub pushes: AtomicU64,
    /// Error responses sent (any non-zero code).
    pub errors: AtomicU64,
    /// Connections refused at accept (connection limits).
    pub refused: AtomicU64,
}

impl LoopStats {
    /// Adds `n` to a counter owned by this loop (relaxed: only the owner writes).
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    #[inline]
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
