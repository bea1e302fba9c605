//! A latency histogram with fixed buckets, recorded with relaxed atomic adds and read
//! at scrape time: cheap enough for the io loops and the core.
//!
//! Invariants:
//! - [`Histogram::observe`] allocates nothing and takes no lock: a scan of
//!   [`BOUNDS_NS`] (18 compares) and two relaxed `fetch_add`s;
//! - each histogram has one writer (its loop, the core, or the log's owner); readers
//!   may see a bucket and the sum from slightly different instants, which Prometheus
//!   tolerates (the buckets stay monotonic);
//! - the last bucket counts everything above the largest bound (`+Inf`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, nanoseconds: 10 us to 5 s, about 2.5x apart, the span
/// of a core round (tens of us), an fsync (hundreds of us to tens of ms) and a login
/// answer under load (ms to s).
pub const BOUNDS_NS: [u64; 18] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
];

/// Number of buckets: one per bound, plus `+Inf`.
pub const BUCKETS: usize = BOUNDS_NS.len() + 1;

/// Counts of durations per bucket, and their sum.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS],
    /// Sum of every observation, nanoseconds.
    sum_ns: AtomicU64,
}

/// A histogram's values at one instant, as `/metrics` renders them.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramValues {
    /// (upper bound in seconds, observations in that bucket), the last bound infinite.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations, seconds.
    pub sum_seconds: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Records one duration.
    #[inline]
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(BOUNDS_NS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Adds this histogram's counts into `into` (summing loops into one).
    pub fn add_to(&self, into: &mut HistogramValues) {
        if into.buckets.is_empty() {
            into.buckets = BOUNDS_NS
                .iter()
                .map(|&b| b as f64 / 1e9)
                .chain(std::iter::once(f64::INFINITY))
                .map(|b| (b, 0))
                .collect();
        }
        for (slot, bucket) in into.buckets.iter_mut().zip(&self.buckets) {
            let n = bucket.load(Ordering::Relaxed);
            slot.1 += n;
            into.count += n;
        }
        into.sum_seconds += self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
    }

    /// This histogram's values now.
    pub fn values(&self) -> HistogramValues {
        let mut v = HistogramValues::empty();
        self.add_to(&mut v);
        v
    }
}

impl HistogramValues {
    /// No observations (buckets filled in by the first [`Histogram::add_to`]).
    pub fn empty() -> HistogramValues {
        HistogramValues {
            buckets: Vec::new(),
            sum_seconds: 0.0,
            count: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_the_sum() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(5)); // <= 10 us
        h.observe(Duration::from_micros(10)); // <= 10 us (bounds are inclusive)
        h.observe(Duration::from_micros(11)); // <= 25 us
        h.observe(Duration::from_secs(60)); // +Inf
        let v = h.values();
        assert_eq!(v.count, 4);
        assert_eq!(v.buckets.len(), BUCKETS);
        assert_eq!(v.buckets[0], (10e-6, 2));
        assert_eq!(v.buckets[1], (25e-6, 1));
        assert_eq!(v.buckets[BUCKETS - 1], (f64::INFINITY, 1));
        assert!(
            (v.sum_seconds - 60.000026).abs() < 1e-9,
            "{}",
            v.sum_seconds
        );
        let mut both = HistogramValues::empty();
        h.add_to(&mut both);
        h.add_to(&mut both);
        assert_eq!(both.count, 8);
        assert_eq!(both.buckets[0].1, 4);
    }
}
