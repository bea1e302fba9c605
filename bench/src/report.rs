//! What a scenario measured: [`Tally`] is filled by each client thread and merged
//! (across threads by value, across `--procs` processes through its JSON form);
//! [`Report`] is the summary printed and written with `--json FILE`.
//!
//! Invariants:
//! - merging tallies adds every count and histogram sample; nothing is averaged;
//! - a report's `qps` is `ops / elapsed_s` of the measured window only (setup such as
//!   the logins of `steady` is not in it).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::counters::AllocReport;
use crate::hist::{Latency, Summary};

/// Counts and histograms from one client thread (or a merge of several).
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// The scenario's main latency (request RTT from its intended send time).
    pub rtt: Latency,
    /// Other latencies by name (`connect`, `admitted_lag`, ...).
    pub named: BTreeMap<String, Latency>,
    /// Errors by protocol code (`"8 RATE_LIMITED"`) or client-side cause (`"io: ..."`).
    pub errors: BTreeMap<String, u64>,
    /// Other counters by name (`pushes`, `answers`, ...).
    pub counts: BTreeMap<String, u64>,
}

impl Tally {
    /// Counts one error under `key`.
    pub fn error(&mut self, key: impl Into<String>) {
        *self.errors.entry(key.into()).or_default() += 1;
    }

    /// Adds `n` to counter `key`.
    pub fn count(&mut self, key: &str, n: u64) {
        *self.counts.entry(key.to_string()).or_default() += n;
    }

    /// The counter `key` (0 when never counted).
    pub fn get(&self, key: &str) -> u64 {
        self.counts.get(key).copied().unwrap_or(0)
    }

    /// The histogram `name`, created empty on first use.
    pub fn hist(&mut self, name: &str) -> &mut Latency {
        self.named.entry(name.to_string()).or_default()
    }

    /// Adds everything of `other`.
    pub fn merge(&mut self, other: &Tally) {
        self.rtt.merge(&other.rtt);
        for (k, v) in &other.named {
            self.hist(k).merge(v);
        }
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.counts {
            *self.counts.entry(k.clone()).or_default() += v;
        }
    }

    /// The form a `--procs` worker prints for its parent.
    pub fn to_wire(&self) -> TallyWire {
        TallyWire {
            rtt: self.rtt.to_pairs(),
            named: self
                .named
                .iter()
                .map(|(k, v)| (k.clone(), v.to_pairs()))
                .collect(),
            errors: self.errors.clone(),
            counts: self.counts.clone(),
        }
    }

    /// Back from [`Tally::to_wire`].
    pub fn from_wire(w: &TallyWire) -> Tally {
        Tally {
            rtt: Latency::from_pairs(&w.rtt),
            named: w
                .named
                .iter()
                .map(|(k, v)| (k.clone(), Latency::from_pairs(v)))
                .collect(),
            errors: w.errors.clone(),
            counts: w.counts.clone(),
        }
    }
}

/// A [`Tally`] as JSON: histograms as (value ns, count) pairs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TallyWire {
    /// Main latency.
    pub rtt: Vec<(u64, u64)>,
    /// Other latencies.
    pub named: BTreeMap<String, Vec<(u64, u64)>>,
    /// Errors.
    pub errors: BTreeMap<String, u64>,
    /// Counters.
    pub counts: BTreeMap<String, u64>,
}

/// The result of one scenario run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// The flags that matter, as given.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Length of the measured window, seconds.
    pub elapsed_s: f64,
    /// Operations completed in the window (answers, logins, admissions, joins).
    pub ops: u64,
    /// `ops / elapsed_s`.
    pub qps: f64,
    /// What `ops` and `rtt` are, in words.
    pub op: String,
    /// Main latency from each op's intended start.
    pub rtt: Summary,
    /// Other latencies by name.
    pub latencies: BTreeMap<String, Summary>,
    /// Errors by protocol code or client-side cause.
    pub errors: BTreeMap<String, u64>,
    /// Scenario-specific numbers (`logins_per_s`, `bytes_per_player`, ...).
    pub values: BTreeMap<String, f64>,
    /// Pass/fail checks (drain): name -> passed.
    pub checks: BTreeMap<String, bool>,
    /// Server allocations during the window, when the server exports them.
    pub server_alloc: Option<AllocReport>,
    /// Warnings and hints for the reader.
    pub notes: Vec<String>,
}

impl Report {
    /// A report from a merged tally; `rtt` and `ops` come from the tally's main histogram.
    pub fn from_tally(scenario: &str, op: &str, elapsed_s: f64, ops: u64, t: &Tally) -> Report {
        Report {
            scenario: scenario.to_string(),
            op: op.to_string(),
            elapsed_s,
            ops,
            qps: if elapsed_s > 0.0 {
                ops as f64 / elapsed_s
            } else {
                0.0
            },
            rtt: t.rtt.summary(),
            latencies: t
                .named
                .iter()
                .map(|(k, v)| (k.clone(), v.summary()))
                .collect(),
            errors: t.errors.clone(),
            values: t
                .counts
                .iter()
                .map(|(k, &v)| (k.clone(), v as f64))
                .collect(),
            ..Report::default()
        }
    }

    /// Sets parameter `key`.
    pub fn param(&mut self, key: &str, value: impl Serialize) {
        self.params.insert(
            key.to_string(),
            serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
        );
    }

    /// True when no error was counted and every check passed.
    pub fn clean(&self) -> bool {
        self.errors.is_empty() && self.checks.values().all(|&ok| ok)
    }

    /// The human-readable form printed on stdout.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(s, "== {} ({})", self.scenario, params.join(" "));
        let _ = writeln!(
            s,
            "{:<26} {} in {:.3} s = {:.0}/s",
            self.op, self.ops, self.elapsed_s, self.qps
        );
        let _ = writeln!(
            s,
            "{:<26} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "latency (us)", "p50", "p90", "p99", "p99.9", "max", "count"
        );
        let mut line = |name: &str, l: &Summary| {
            let _ = writeln!(
                s,
                "{:<26} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10}",
                name, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.count
            );
        };
        if self.rtt.count > 0 {
            line("rtt", &self.rtt);
        }
        for (k, v) in &self.latencies {
            line(k, v);
        }
        for (k, v) in &self.values {
            let _ = writeln!(s, "{k:<26} {v:.3}");
        }
        if self.errors.is_empty() {
            let _ = writeln!(s, "{:<26} none", "errors");
        }
        for (k, v) in &self.errors {
            let _ = writeln!(s, "{:<26} {v}", format!("error {k}"));
        }
        for (k, ok) in &self.checks {
            let _ = writeln!(
                s,
                "{:<26} {}",
                format!("check {k}"),
                if *ok { "ok" } else { "FAILED" }
            );
        }
        if let Some(a) = &self.server_alloc {
            let _ = writeln!(s, "{}", a.render());
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }

    /// Writes the JSON form to `path`.
    pub fn write_json(&self, path: &std::path::Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text + "\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(rtts: &[u64], err: &str) -> Tally {
        let mut t = Tally::default();
        for &r in rtts {
            t.rtt.record_ns(r);
            t.hist("connect").record_ns(r * 2);
        }
        t.error(err);
        t.count("pushes", rtts.len() as u64);
        t
    }

    #[test]
    fn merge_adds_every_count() {
        let mut a = tally(&[1000, 2000], "8 RATE_LIMITED");
        a.merge(&tally(&[3000], "8 RATE_LIMITED"));
        a.merge(&tally(&[], "io: refused"));
        assert_eq!(a.rtt.count(), 3);
        assert_eq!(a.named["connect"].count(), 3);
        assert_eq!(a.errors["8 RATE_LIMITED"], 2);
        assert_eq!(a.errors["io: refused"], 1);
        assert_eq!(a.get("pushes"), 3);
    }

    #[test]
    fn tally_survives_its_wire_form() {
        let a = tally(&[1000, 5000, 5000, 70_000_000], "5 QUEUE_FULL");
        let json = serde_json::to_string(&a.to_wire()).unwrap();
        let b = Tally::from_wire(&serde_json::from_str(&json).unwrap());
        assert_eq!(a.rtt.summary(), b.rtt.summary());
        assert_eq!(a.errors, b.errors);
        assert_eq!(a.counts, b.counts);
    }

    #[test]
    fn report_json_round_trips_with_its_fields() {
        let mut r = Report::from_tally("pingpong", "answers", 2.0, 1000, &tally(&[1000], "x"));
        r.param("conns", 200);
        r.checks.insert("admitted_once".into(), true);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["scenario"], "pingpong");
        assert_eq!(json["qps"], 500.0);
        assert_eq!(json["params"]["conns"], 200);
        assert_eq!(json["rtt"]["count"], 1);
        for key in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us", "count"] {
            assert!(json["rtt"].get(key).is_some(), "{key}");
        }
        assert_eq!(json["errors"]["x"], 1);
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
        assert!(!r.clean());
        assert!(r.render().contains("error x"));
    }
}
