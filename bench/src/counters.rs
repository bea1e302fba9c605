//! Server counters read from `GET /metrics` (OpenMetrics text), and the allocation
//! report built from two reads around a scenario: server allocations per request and
//! per push, when the server was built with the `count-alloc` feature.
//!
//! Invariants:
//! - a counter is the sum of its samples over every label set (one per io loop);
//! - the cost of a scrape itself (the control thread renders the text, the core builds
//!   its stats) is measured by two back-to-back scrapes before the run and subtracted,
//!   so an idle server reports 0 allocations for the window.

use serde::{Deserialize, Serialize};

use crate::http::{Control, HttpError};

/// The counters the bench reads.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// `queue_server_allocations_total` (None: server built without `count-alloc`).
    pub allocations: Option<u64>,
    /// `queue_server_allocated_bytes_total`.
    pub allocated_bytes: Option<u64>,
    /// `queue_frames_in_total`: requests read.
    pub frames_in: u64,
    /// `queue_frames_out_total`: responses and pushes written.
    pub frames_out: u64,
    /// `queue_pushes_total`: position, admitted and kicked pushes.
    pub pushes: u64,
}

/// Sum of the samples of `name` (exact metric name, any labels); None when absent.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value = rest.rsplit(' ').next().unwrap_or("");
        if let Ok(v) = value.parse::<f64>() {
            *found.get_or_insert(0) += v as u64;
        }
    }
    found
}

impl Snapshot {
    /// Parses a `/metrics` text.
    pub fn parse(text: &str) -> Snapshot {
        Snapshot {
            allocations: metric(text, "queue_server_allocations_total"),
            allocated_bytes: metric(text, "queue_server_allocated_bytes_total"),
            frames_in: metric(text, "queue_frames_in_total").unwrap_or(0),
            frames_out: metric(text, "queue_frames_out_total").unwrap_or(0),
            pushes: metric(text, "queue_pushes_total").unwrap_or(0),
        }
    }

    /// Reads the server's counters now.
    pub fn read(control: &mut Control) -> Result<Snapshot, HttpError> {
        Ok(Snapshot::parse(&control.get("/metrics")?))
    }
}

/// A reading taken before a scenario's measured window.
#[derive(Clone, Copy, Debug)]
pub struct AllocProbe {
    /// The second of two back-to-back reads.
    start: Snapshot,
    /// Allocations (and bytes) of one scrape, from the first read to the second.
    scrape: (u64, u64),
}

impl AllocProbe {
    /// Takes the two reads.
    pub fn begin(control: &mut Control) -> Result<AllocProbe, HttpError> {
        let a = Snapshot::read(control)?;
        let b = Snapshot::read(control)?;
        let diff = |x: Option<u64>, y: Option<u64>| y.unwrap_or(0).saturating_sub(x.unwrap_or(0));
        Ok(AllocProbe {
            start: b,
            scrape: (
                diff(a.allocations, b.allocations),
                diff(a.allocated_bytes, b.allocated_bytes),
            ),
        })
    }

    /// Reads again and reports the window.
    pub fn end(&self, control: &mut Control, build: &str) -> Result<AllocReport, HttpError> {
        Ok(self.report(Snapshot::read(control)?, build))
    }

    /// The report for an end reading `end`.
    pub fn report(&self, end: Snapshot, build: &str) -> AllocReport {
        let s = self.start;
        let requests = end.frames_in.saturating_sub(s.frames_in);
        let pushes = end.pushes.saturating_sub(s.pushes);
        let frames_out = end.frames_out.saturating_sub(s.frames_out);
        let (allocations, bytes) = match (s.allocations, end.allocations) {
            (Some(a), Some(b)) => (
                Some(b.saturating_sub(a).saturating_sub(self.scrape.0)),
                Some(
                    end.allocated_bytes
                        .unwrap_or(0)
                        .saturating_sub(s.allocated_bytes.unwrap_or(0))
                        .saturating_sub(self.scrape.1),
                ),
            ),
            _ => (None, None),
        };
        let per = |n: u64| match allocations {
            Some(a) if n > 0 => Some(a as f64 / n as f64),
            _ => None,
        };
        AllocReport {
            build: build.to_string(),
            counted: allocations.is_some(),
            allocations,
            allocated_bytes: bytes,
            requests,
            pushes,
            frames_out,
            per_request: per(requests),
            per_push: per(pushes),
            per_frame_out: per(frames_out),
            scrape_allocations: self.scrape.0,
        }
    }
}

/// Server allocations over a scenario's window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AllocReport {
    /// What the user said about the server build (`--server-build`).
    pub build: String,
    /// The server exports the counters (built with `count-alloc`).
    pub counted: bool,
    /// Allocations in the window, one scrape's cost subtracted.
    pub allocations: Option<u64>,
    /// Bytes those allocations asked for.
    pub allocated_bytes: Option<u64>,
    /// Requests read by the server in the window.
    pub requests: u64,
    /// Pushes written in the window.
    pub pushes: u64,
    /// Frames written (responses + pushes).
    pub frames_out: u64,
    /// `allocations / requests`.
    pub per_request: Option<f64>,
    /// `allocations / pushes`.
    pub per_push: Option<f64>,
    /// `allocations / frames_out`.
    pub per_frame_out: Option<f64>,
    /// Allocations of one `/metrics` scrape (subtracted).
    pub scrape_allocations: u64,
}

impl AllocReport {
    /// One line for the printed report.
    pub fn render(&self) -> String {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        match self.allocations {
            None => format!(
                "server allocations         not exported: build the server with `--features count-alloc` ({} requests, {} pushes in the window)",
                self.requests, self.pushes
            ),
            Some(a) => format!(
                "server allocations         {a} ({} bytes) over {} requests, {} pushes, {} frames out: {} per request, {} per push, {} per frame out",
                self.allocated_bytes.unwrap_or(0),
                self.requests,
                self.pushes,
                self.frames_out,
                f(self.per_request),
                f(self.per_push),
                f(self.per_frame_out)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP queue_frames_in Frames read\n# TYPE queue_frames_in counter\nqueue_frames_in_total{core=\"0\"} 10\nqueue_frames_in_total{core=\"1\"} 5\nqueue_frames_out_total{core=\"0\"} 20\nqueue_pushes_total{core=\"0\"} 4\nqueue_server_allocations_total 1000\nqueue_server_allocated_bytes_total 64000\n# EOF\n";

    #[test]
    fn counters_sum_over_labels() {
        let s = Snapshot::parse(TEXT);
        assert_eq!(s.frames_in, 15);
        assert_eq!(s.frames_out, 20);
        assert_eq!(s.pushes, 4);
        assert_eq!(s.allocations, Some(1000));
        assert_eq!(metric(TEXT, "queue_frames"), None);
    }

    #[test]
    fn report_subtracts_the_scrape_and_divides() {
        let probe = AllocProbe {
            start: Snapshot::parse(TEXT),
            scrape: (7, 700),
        };
        let mut end = Snapshot::parse(TEXT);
        end.allocations = Some(1000 + 7 + 30);
        end.allocated_bytes = Some(64000 + 700 + 300);
        end.frames_in += 60;
        end.pushes += 10;
        let r = probe.report(end, "count-alloc");
        assert_eq!(r.allocations, Some(30));
        assert_eq!(r.allocated_bytes, Some(300));
        assert_eq!(r.per_request, Some(0.5));
        assert_eq!(r.per_push, Some(3.0));
        let plain = AllocProbe {
            start: Snapshot::default(),
            scrape: (0, 0),
        }
        .report(Snapshot::default(), "release");
        assert!(!plain.counted);
        assert!(plain.render().contains("count-alloc"));
    }
}
