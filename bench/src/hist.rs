//! Latency histograms: an hdrhistogram of nanoseconds per measured thing, mergeable
//! across client threads (by `add`) and across processes (by the recorded-value pairs
//! they print as JSON), summarised as p50 / p90 / p99 / p99.9 / max / count.
//!
//! Invariants:
//! - values are nanoseconds, clamped into `[1 ns, HIGHEST_NS]` (`saturating_record`):
//!   a stalled server shows up as a huge value, never as a dropped sample;
//! - merging never loses counts: `merge(a, b).count == a.count + b.count`.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Largest latency a histogram holds, ns (one hour; larger values are clamped to it).
pub const HIGHEST_NS: u64 = 3_600_000_000_000;
/// Significant decimal digits kept (3: 0.1% value resolution).
const SIGFIG: u8 = 3;

/// One latency distribution, in nanoseconds.
#[derive(Clone, Debug)]
pub struct Latency {
    /// The histogram.
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Latency {
        Latency {
            hist: Histogram::new_with_bounds(1, HIGHEST_NS, SIGFIG).expect("static bounds"),
        }
    }

    /// Records one latency.
    pub fn record(&mut self, d: Duration) {
        self.record_ns(u64::try_from(d.as_nanos()).unwrap_or(HIGHEST_NS));
    }

    /// Records one latency given in nanoseconds.
    pub fn record_ns(&mut self, ns: u64) {
        self.hist.saturating_record(ns.max(1));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides: `add` cannot fail.
        self.hist.add(&other.hist).expect("same bounds");
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The printed summary.
    pub fn summary(&self) -> Summary {
        let us = |ns: u64| ns as f64 / 1000.0;
        let q = |quantile: f64| {
            if self.hist.is_empty() {
                0.0
            } else {
                us(self.hist.value_at_quantile(quantile))
            }
        };
        Summary {
            count: self.hist.len(),
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if self.hist.is_empty() {
                0.0
            } else {
                us(self.hist.max())
            },
            mean_us: if self.hist.is_empty() {
                0.0
            } else {
                self.hist.mean() / 1000.0
            },
        }
    }

    /// The recorded values as (value ns, count) pairs, for carrying across processes.
    pub fn to_pairs(&self) -> Vec<(u64, u64)> {
        self.hist
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }

    /// A histogram holding the pairs of [`Latency::to_pairs`].
    pub fn from_pairs(pairs: &[(u64, u64)]) -> Latency {
        let mut l = Latency::new();
        for &(value, count) in pairs {
            l.hist.saturating_record_n(value.max(1), count);
        }
        l
    }
}

/// The summary printed and written to JSON (microseconds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_and_keeps_extremes() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for i in 1..=1000u64 {
            a.record_ns(i * 1000);
        }
        b.record_ns(5_000_000_000);
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 1001);
        assert!(
            (s.max_us - 5_000_000.0).abs() / 5_000_000.0 < 0.001,
            "{s:?}"
        );
        assert!((s.p50_us - 500.0).abs() / 500.0 < 0.01, "{s:?}");
    }

    #[test]
    fn pairs_round_trip_across_processes() {
        let mut a = Latency::new();
        for i in 0..5000u64 {
            a.record_ns(1 + i * i);
        }
        let b = Latency::from_pairs(&a.to_pairs());
        assert_eq!(a.summary(), b.summary());
    }

    #[test]
    fn zero_and_huge_values_are_clamped_not_dropped() {
        let mut a = Latency::new();
        a.record(Duration::ZERO);
        a.record(Duration::from_secs(100_000));
        assert_eq!(a.count(), 2);
        assert!(a.summary().max_us >= HIGHEST_NS as f64 / 1000.0 * 0.999);
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(Latency::new().summary(), Summary::default());
    }
}
