//! Latency histograms: an hdrhistogram of nanoseconds per measured thing, mergeable
//! across client threads (by `add`) and across processes (by the recorded-value pairs
//! they print as JSON), summarised as p50 / p90 / p99 / p99.9 / p99.99 / max / count,
//! and written whole as HdrHistogram's percentile distribution text (`.hgrm`).
//!
//! Invariants:
//! - values are nanoseconds, clamped into `[1 ns, HIGHEST_NS]` (`saturating_record`):
//!   a stalled server shows up as a huge value, never as a dropped sample;
//! - merging never loses counts: `merge(a, b).count == a.count + b.count`.

use std::fmt::Write as _;

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
        Latency::with_sigfig(SIGFIG)
    }

    /// An empty histogram keeping `sigfig` significant digits (2 for the per-second
    /// series: 1 % resolution in an eighth of the memory). Only histograms of the same
    /// precision are merged.
    pub fn with_sigfig(sigfig: u8) -> Latency {
        Latency {
            hist: Histogram::new_with_bounds(1, HIGHEST_NS, sigfig).expect("static bounds"),
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
            p9999_us: q(0.9999),
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
        Latency::from_pairs_sigfig(pairs, SIGFIG)
    }

    /// [`Latency::from_pairs`] at another precision.
    pub fn from_pairs_sigfig(pairs: &[(u64, u64)], sigfig: u8) -> Latency {
        let mut l = Latency::with_sigfig(sigfig);
        for &(value, count) in pairs {
            l.hist.saturating_record_n(value.max(1), count);
        }
        l
    }

    /// The value at `quantile` (0..=1), ns; 0 when empty.
    pub fn quantile_ns(&self, quantile: f64) -> u64 {
        if self.hist.is_empty() {
            0
        } else {
            self.hist.value_at_quantile(quantile)
        }
    }

    /// Largest sample, ns; 0 when empty.
    pub fn max_ns(&self) -> u64 {
        self.hist.max()
    }

    /// The whole spectrum as HdrHistogram's percentile distribution text (the format
    /// of Java's `outputPercentileDistribution` with 5 ticks per half distance, read by
    /// HdrHistogram's plotter and `hdr-plot`), values in milliseconds.
    pub fn hgrm(&self) -> String {
        const MS: f64 = 1e6;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:>12} {:>14} {:>10} {:>14}\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        );
        if !self.hist.is_empty() {
            let mut total = 0u64;
            for v in self.hist.iter_quantiles(5) {
                let value = self.hist.highest_equivalent(v.value_iterated_to()) as f64 / MS;
                let q = v.quantile_iterated_to();
                total += v.count_since_last_iteration();
                if q < 1.0 {
                    let _ = writeln!(
                        s,
                        "{value:12.4} {q:2.12} {total:10} {:14.2}",
                        1.0 / (1.0 - q)
                    );
                } else {
                    let _ = writeln!(s, "{value:12.4} {q:2.12} {total:10}");
                }
            }
        }
        let (mean, sd, max) = if self.hist.is_empty() {
            (0.0, 0.0, 0.0)
        } else {
            (
                self.hist.mean() / MS,
                self.hist.stdev() / MS,
                self.hist.max() as f64 / MS,
            )
        };
        let _ = writeln!(s, "#[Mean    = {mean:12.4}, StdDeviation   = {sd:12.4}]");
        let _ = writeln!(
            s,
            "#[Max     = {max:12.4}, Total count    = {:12}]",
            self.hist.len()
        );
        let _ = writeln!(
            s,
            "#[Buckets = {:12}, SubBuckets     = {:12}]",
            self.hist.buckets(),
            sub_buckets(self.hist.sigfig())
        );
        s
    }
}

/// Sub-buckets per bucket at `sigfig` digits (2048 at 3), as HdrHistogram sizes them.
fn sub_buckets(sigfig: u8) -> u64 {
    let largest_single_unit = 2 * 10u64.pow(u32::from(sigfig));
    largest_single_unit.next_power_of_two()
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
    /// 99.99th percentile.
    #[serde(default)]
    pub p9999_us: f64,
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
    fn hgrm_lists_the_spectrum_in_hdrhistogram_format() {
        let mut a = Latency::new();
        for i in 1..=10_000u64 {
            a.record_ns(i * 1000); // 1 us .. 10 ms
        }
        let text = a.hgrm();
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            head,
            ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
        );
        assert_eq!(lines.next(), Some(""));
        let rows: Vec<Vec<f64>> = text
            .lines()
            .skip(2)
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().map(|f| f.parse().unwrap()).collect())
            .collect();
        assert!(rows.len() > 50, "{text}");
        // Values (ms), percentiles and counts never decrease; the last row is 100 %.
        for w in rows.windows(2) {
            assert!(
                w[1][0] >= w[0][0] && w[1][1] >= w[0][1] && w[1][2] >= w[0][2],
                "{w:?}"
            );
        }
        let last = rows.last().unwrap();
        assert_eq!((last[1], last[2], last.len()), (1.0, 10_000.0, 3));
        assert!((last[0] - 10.0).abs() < 0.02, "max {} ms", last[0]);
        let median = rows.iter().find(|r| r[1] >= 0.5).unwrap();
        assert!((median[0] - 5.0).abs() < 0.01, "p50 {} ms", median[0]);
        assert!(rows
            .iter()
            .all(|r| r.len() == 3 || (r[3] - 1.0 / (1.0 - r[1])).abs() < 0.01));
        assert!(text.contains("#[Max     =      10.0"), "{text}");
        assert!(text.contains("Total count    =        10000]"), "{text}");
        assert!(text.contains("#[Buckets =           "), "{text}");
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
    }

    #[test]
    fn p9999_sees_the_one_slow_sample_in_ten_thousand() {
        let mut a = Latency::new();
        for _ in 0..9_998 {
            a.record_ns(100_000);
        }
        a.record_ns(50_000_000);
        a.record_ns(50_000_000);
        let s = a.summary();
        assert!((s.p999_us - 100.0).abs() < 1.0, "{s:?}");
        assert!((s.p9999_us - 50_000.0).abs() < 50.0, "{s:?}");
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(Latency::new().summary(), Summary::default());
    }
}
