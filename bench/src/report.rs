//! What a scenario measured: [`Tally`] is filled by each client thread and merged
//! (across threads by value, across `--procs` processes through its JSON form);
//! [`Report`] is the summary printed and written with `--json FILE` (with its
//! per-second series, and the same run against the echo server with `--compare-echo`).
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
use crate::series::{SecondPoint, Series};

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
    /// The main latency per second of the measured window (timed scenarios).
    pub series: Series,
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
        self.series.merge(&other.series);
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
            series: self.series.to_wire(),
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
            series: Series::from_wire(&w.series),
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
    /// Per-second histograms' pairs.
    #[serde(default)]
    pub series: Vec<Vec<(u64, u64)>>,
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
    /// The main latency per second of the measured window (timed scenarios).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<SecondPoint>,
    /// The same load against the bench's echo server, same run (`--compare-echo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<Box<Report>>,
    /// This run over the echo run: `qps`, `rtt_p50`, `rtt_p99`, `rtt_p999`, `rtt_p9999`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vs_echo: BTreeMap<String, f64>,
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
            series: t.series.points(),
            ..Report::default()
        }
    }

    /// Attaches the echo server's run of the same load and the ratios to it.
    pub fn compare_echo(&mut self, echo: Report) {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let (q, e) = (&self.rtt, &echo.rtt);
        for (k, a, b) in [
            ("qps", self.qps, echo.qps),
            ("rtt_p50", q.p50_us, e.p50_us),
            ("rtt_p99", q.p99_us, e.p99_us),
            ("rtt_p999", q.p999_us, e.p999_us),
            ("rtt_p9999", q.p9999_us, e.p9999_us),
        ] {
            self.vs_echo.insert(k.to_string(), ratio(a, b));
        }
        self.echo = Some(Box::new(echo));
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
            "{:<26} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "latency (us)", "p50", "p90", "p99", "p99.9", "p99.99", "max", "count"
        );
        let mut line = |name: &str, l: &Summary| {
            let _ = writeln!(
                s,
                "{:<26} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10}",
                name, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.p9999_us, l.max_us, l.count
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
        if let Some(line) = series_line(&self.series) {
            let _ = writeln!(s, "{line}");
        }
        if let Some(a) = &self.server_alloc {
            let _ = writeln!(s, "{}", a.render());
        }
        if let Some(e) = &self.echo {
            s.push_str(&self.render_echo(e));
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }

    /// The echo server's run of the same load and the ratios to it.
    fn render_echo(&self, e: &Report) -> String {
        let mut s = String::from("-- the same load against the bench's echo server:\n");
        s.push_str(&e.render());
        let v = |k: &str| self.vs_echo.get(k).copied().unwrap_or(0.0);
        let _ = writeln!(
            s,
            "vs echo (this / echo): rate {:.2}, rtt p50 {:.2}, p99 {:.2}, p99.9 {:.2}, p99.99 {:.2}",
            v("qps"),
            v("rtt_p50"),
            v("rtt_p99"),
            v("rtt_p999"),
            v("rtt_p9999")
        );
        s
    }

    /// Writes the JSON form to `path`.
    pub fn write_json(&self, path: &std::path::Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text + "\n")
    }
}

/// Writes each histogram of `tally` whole as `.hgrm` beside `json`: `NAME.hgrm` for the
/// main latency and `NAME.HIST.hgrm` for the others (`NAME.TAG.…` with a tag, e.g.
/// `echo`), where `json` is `NAME.json`. Returns the files written.
pub fn write_spectra(
    json: &std::path::Path,
    tag: Option<&str>,
    tally: &Tally,
) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut stem = json.with_extension("").into_os_string();
    if let Some(tag) = tag {
        stem.push(format!(".{tag}"));
    }
    let mut written = Vec::new();
    let main = std::iter::once((String::new(), &tally.rtt));
    let named = tally.named.iter().map(|(k, v)| (format!(".{k}"), v));
    for (suffix, hist) in main.chain(named) {
        if hist.count() == 0 {
            continue;
        }
        let mut file = stem.clone();
        file.push(format!("{suffix}.hgrm"));
        let file = std::path::PathBuf::from(file);
        std::fs::write(&file, hist.hgrm())?;
        written.push(file);
    }
    Ok(written)
}

/// One line on the per-second series: its length, rate range and worst second.
fn series_line(series: &[SecondPoint]) -> Option<String> {
    let worst = series.iter().max_by(|a, b| a.p99_us.total_cmp(&b.p99_us))?;
    let rate_min = series.iter().map(|p| p.rate).min().unwrap_or(0);
    let rate_max = series.iter().map(|p| p.rate).max().unwrap_or(0);
    Some(format!(
        "{:<26} {} s, {}..{} answers/s; worst p99 in second {}: {:.1} us (max {:.1} us)",
        "per second",
        series.len(),
        rate_min,
        rate_max,
        worst.second,
        worst.p99_us,
        worst.max_us
    ))
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
        for key in [
            "p50_us", "p90_us", "p99_us", "p999_us", "p9999_us", "max_us", "count",
        ] {
            assert!(json["rtt"].get(key).is_some(), "{key}");
        }
        assert_eq!(json["errors"]["x"], 1);
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
        assert!(!r.clean());
        assert!(r.render().contains("error x"));
    }

    #[test]
    fn series_survives_merge_wire_and_report() {
        let mut a = tally(&[1000], "x");
        a.series.record(0, std::time::Duration::from_micros(100));
        a.series.record(2, std::time::Duration::from_micros(900));
        let mut b = Tally::from_wire(
            &serde_json::from_str(&serde_json::to_string(&a.to_wire()).unwrap()).unwrap(),
        );
        b.merge(&a);
        let r = Report::from_tally("steady", "answers", 3.0, 2, &b);
        let json = serde_json::to_value(&r).unwrap();
        let rates: Vec<u64> = json["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["rate"].as_u64().unwrap())
            .collect();
        assert_eq!(rates, [2, 0, 2]);
        assert!(json["series"][2]["p99_us"].as_f64().unwrap() > 800.0);
        assert!(
            r.render().contains("worst p99 in second 2"),
            "{}",
            r.render()
        );
    }

    #[test]
    fn spectra_are_written_beside_the_json() {
        let dir = std::env::temp_dir().join(format!("bench-spectra-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("steady.json");
        let mut t = tally(&[1000, 2000], "x");
        t.hist("empty");
        let files = write_spectra(&json, None, &t).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["steady.hgrm", "steady.connect.hgrm"]);
        let echo = write_spectra(&json, Some("echo"), &t).unwrap();
        assert_eq!(echo[0].file_name().unwrap(), "steady.echo.hgrm");
        let text = std::fs::read_to_string(&files[0]).unwrap();
        assert!(text.contains("Total count    =            2]"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn echo_comparison_gives_ratios_and_nests_the_echo_run() {
        let mut r = Report::from_tally("steady", "answers", 1.0, 100, &tally(&[4000], "x"));
        let e = Report::from_tally("steady", "answers", 1.0, 200, &tally(&[1000], "x"));
        r.compare_echo(e);
        assert_eq!(r.vs_echo["qps"], 0.5);
        assert!((r.vs_echo["rtt_p50"] - 4.0).abs() < 0.01, "{:?}", r.vs_echo);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["echo"]["qps"], 200.0);
        assert!(
            r.render().contains("vs echo (this / echo): rate 0.50"),
            "{}",
            r.render()
        );
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }
}
