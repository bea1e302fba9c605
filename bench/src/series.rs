//! The measured window of a timed scenario and its per-second time series.
//!
//! [`Window`]: a run is `warmup` then `duration`; a sample whose *intended* time falls
//! in the warm-up is dropped (the server and the client warm their caches, pools and
//! connections there), everything intended from `measured_from` on is kept.
//! [`Series`]: one coarse histogram per second of the measured window, bucketed by the
//! time the answer *arrived*, so a stall shows as a second with a low rate followed by
//! one with a high max (the report's `series`: rate, p50, p99, max per second).
//!
//! Invariants:
//! - second `k` holds answers that arrived in `[measured_from + k s, + (k+1) s)`;
//!   answers before `measured_from` (only possible for warm-up samples, which are
//!   dropped anyway) go to second 0;
//! - merging adds counts second by second; nothing is averaged.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::hist::Latency;

/// Significant digits of the per-second histograms (1 % resolution is enough for a
/// per-second p99, and a 20-minute run keeps 1,200 of them per thread).
const SERIES_SIGFIG: u8 = 2;

/// Warm-up and measured window of one run.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// First intended send (start of the warm-up).
    pub start: Instant,
    /// Start of the measured window (`start + warmup`).
    pub measured_from: Instant,
    /// End of the run: no send is intended at or after it.
    pub end: Instant,
}

impl Window {
    /// A window starting at `start`: `warmup` dropped, then `duration` measured.
    pub fn new(start: Instant, warmup: Duration, duration: Duration) -> Window {
        Window {
            start,
            measured_from: start + warmup,
            end: start + warmup + duration,
        }
    }

    /// Whether a sample intended at `intended` is measured (not warm-up).
    pub fn keeps(&self, intended: Instant) -> bool {
        intended >= self.measured_from
    }

    /// The series second an answer arriving at `at` belongs to.
    pub fn second(&self, at: Instant) -> usize {
        at.saturating_duration_since(self.measured_from).as_secs() as usize
    }
}

/// Per-second latency histograms of one thread (or a merge).
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// Second `k` of the measured window.
    seconds: Vec<Latency>,
}

impl Series {
    /// Records one latency in second `k`.
    pub fn record(&mut self, k: usize, d: Duration) {
        if self.seconds.len() <= k {
            self.seconds
                .resize_with(k + 1, || Latency::with_sigfig(SERIES_SIGFIG));
        }
        self.seconds[k].record(d);
    }

    /// Adds every second of `other`.
    pub fn merge(&mut self, other: &Series) {
        for (k, l) in other.seconds.iter().enumerate() {
            if self.seconds.len() <= k {
                self.seconds
                    .resize_with(k + 1, || Latency::with_sigfig(SERIES_SIGFIG));
            }
            self.seconds[k].merge(l);
        }
    }

    /// Seconds recorded (the last one with a sample, plus one).
    pub fn len(&self) -> usize {
        self.seconds.len()
    }

    /// Nothing recorded.
    pub fn is_empty(&self) -> bool {
        self.seconds.is_empty()
    }

    /// The printed / JSON form.
    pub fn points(&self) -> Vec<SecondPoint> {
        let us = |ns: u64| ns as f64 / 1000.0;
        self.seconds
            .iter()
            .enumerate()
            .map(|(k, l)| SecondPoint {
                second: k as u64,
                rate: l.count(),
                p50_us: us(l.quantile_ns(0.5)),
                p99_us: us(l.quantile_ns(0.99)),
                max_us: us(l.max_ns()),
            })
            .collect()
    }

    /// Carried across processes: per second, the (value ns, count) pairs.
    pub fn to_wire(&self) -> Vec<Vec<(u64, u64)>> {
        self.seconds.iter().map(Latency::to_pairs).collect()
    }

    /// Back from [`Series::to_wire`].
    pub fn from_wire(w: &[Vec<(u64, u64)>]) -> Series {
        Series {
            seconds: w
                .iter()
                .map(|p| Latency::from_pairs_sigfig(p, SERIES_SIGFIG))
                .collect(),
        }
    }
}

/// One second of the measured window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SecondPoint {
    /// Seconds since the measured window began.
    pub second: u64,
    /// Answers that arrived in this second.
    pub rate: u64,
    /// Their median latency.
    pub p50_us: f64,
    /// Their 99th percentile.
    pub p99_us: f64,
    /// Their largest latency.
    pub max_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_samples_are_dropped_by_intended_time() {
        let t0 = Instant::now();
        let w = Window::new(t0, Duration::from_secs(2), Duration::from_secs(5));
        assert!(!w.keeps(t0));
        assert!(!w.keeps(t0 + Duration::from_millis(1999)));
        assert!(w.keeps(t0 + Duration::from_secs(2)));
        assert_eq!(w.end - t0, Duration::from_secs(7));
        let none = Window::new(t0, Duration::ZERO, Duration::from_secs(1));
        assert!(none.keeps(t0));
    }

    #[test]
    fn answers_are_bucketed_by_the_second_they_arrive_in() {
        let t0 = Instant::now();
        let w = Window::new(t0, Duration::from_secs(1), Duration::from_secs(3));
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(w.second(at(500)), 0); // before the window: second 0
        assert_eq!(w.second(at(1000)), 0);
        assert_eq!(w.second(at(1999)), 0);
        assert_eq!(w.second(at(2000)), 1);
        assert_eq!(w.second(at(4500)), 3); // answers after the end still count
    }

    #[test]
    fn series_shows_a_stalled_second() {
        let us = Duration::from_micros;
        let mut a = Series::default();
        let mut b = Series::default();
        for _ in 0..100 {
            a.record(0, us(100));
            a.record(2, us(100));
        }
        b.record(1, us(250_000)); // the stall: one slow answer, few answers
        b.record(2, us(300));
        a.merge(&b);
        let p = a.points();
        assert_eq!(p.len(), 3);
        assert_eq!(p.iter().map(|s| s.rate).collect::<Vec<_>>(), [100, 1, 101]);
        assert!((p[0].p50_us - 100.0).abs() < 1.0, "{p:?}");
        assert!((p[1].max_us - 250_000.0).abs() < 2500.0, "{p:?}");
        assert!((p[2].max_us - 300.0).abs() < 3.0, "{p:?}");
        let back = Series::from_wire(&a.to_wire());
        assert_eq!(back.points(), p);
    }
}
