//! `/metrics`: the io loops' counters and the core's queue counters rendered in the
//! OpenMetrics text format (which Prometheus scrapes) with `prometheus-client`.
//!
//! Invariants:
//! - a fresh `Registry` is built per scrape on the control thread from plain values:
//!   the io loops never touch a registry, they only bump their own [`LoopStats`] atomics;
//! - counters are registered without `_total`; `prometheus-client` appends it, so the
//!   exposed names are exactly `queue_accepted_total`, `queue_admitted_total`, ...;
//! - per-loop families carry one label `core` (the loop index), per-queue families one
//!   label `queue` (the queue name);
//! - `queue_core_round_age_seconds` is the time since the core last ended a round, read
//!   from its round clock at scrape time (it ends one at least every tick: a value of
//!   seconds means the core is wedged);
//! - histograms (`queue_core_round_seconds`, `queue_wal_fsync_seconds`,
//!   `queue_login_answer_seconds`) are read from the writers' atomic buckets
//!   ([`crate::stats::histogram`]) and exposed as classic Prometheus histograms;
//! - `process_*` follow the names every Prometheus client library uses, read from
//!   `/proc/self` at scrape time;
//! - one function per family group (`loop_families`, `queue_*_families`,
//!   `histogram_families`, `by_kind_families`, `process_families`, ...), called in a
//!   fixed order from [`render`]: the order of families on the page is the order of
//!   registration, so moving a call moves lines of the exposition (names, types and
//!   help texts are read by `deploy/` and `tests/deploy_files.rs`: keep them as they are).

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::msg::QueueStats;
use crate::protocol::Code;
use crate::queue::durability::DurabilityStatus;
use crate::stats::histogram::{Histogram, HistogramValues};
use crate::stats::process::ProcessStats;
use crate::stats::{LoopStats, ServerStats, KICK_REASONS};

mod cluster;

pub use cluster::{ClusterGauges, LinkFigures};

/// What `/metrics` shows beyond the loops, the queues and durability.
pub struct Extra<'a> {
    /// Core round times.
    pub server: &'a ServerStats,
    /// Messages waiting in the core's inbox now.
    pub inbox_depth: usize,
    /// The process's own figures.
    pub process: ProcessStats,
    /// The cluster's figures, in cluster mode only (none on one node: no family).
    pub cluster: Option<ClusterGauges>,
}

/// A histogram's values, registered as one metric.
#[derive(Debug)]
struct ConstHistogram(HistogramValues);

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let v = &self.0;
        encoder.encode_histogram::<NoLabelSet>(v.sum_seconds, v.count, &v.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Registers `values` as histogram `name`.
fn histogram(registry: &mut Registry, name: &str, help: &str, values: HistogramValues) {
    let mut values = values;
    if values.buckets.is_empty() {
        Histogram::default().add_to(&mut values);
    }
    registry.register(name, help, ConstHistogram(values));
}

/// The `Content-Type` of [`render`]'s output (what `prometheus-client` documents for it).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One label, `core` or `queue`.
type Labels = [(&'static str, String); 1];
/// An integer gauge family.
type GaugeFamily = Family<Labels, Gauge<u64, AtomicU64>>;
/// A floating-point gauge family.
type RateFamily = Family<Labels, Gauge<f64, AtomicU64>>;
/// A counter family.
type CounterFamily = Family<Labels, Counter>;
/// Name, help and field of a per-loop counter.
type LoopCounter = (&'static str, &'static str, fn(&LoopStats) -> &AtomicU64);
/// Name, help and field of a per-queue value.
type QueueValue = (&'static str, &'static str, fn(&QueueStats) -> u64);

/// Registers a counter family named `name` (exposed as `name_total`), filled by `fill`.
fn counters(registry: &mut Registry, name: &str, help: &str, fill: impl FnOnce(&CounterFamily)) {
    let family = CounterFamily::default();
    fill(&family);
    registry.register(name, help, family);
}

/// Registers an integer gauge family, filled by `fill`.
fn gauges(registry: &mut Registry, name: &str, help: &str, fill: impl FnOnce(&GaugeFamily)) {
    let family = GaugeFamily::default();
    fill(&family);
    registry.register(name, help, family);
}

/// The whole exposition (ending in `# EOF`) for these loop counters, queue counters,
/// the write-ahead log's status when durability is on, when the counting allocator
/// is built in its `(allocations, allocated bytes)`, and the time since the core's
/// last round.
pub fn render(
    loops: &[LoopStats],
    queues: &[QueueStats],
    durability: Option<&DurabilityStatus>,
    alloc: Option<(u64, u64)>,
    core_round_age: Duration,
    extra: Option<&Extra<'_>>,
) -> String {
    let mut registry = Registry::default();
    let age = Gauge::<f64, AtomicU64>::default();
    age.set(core_round_age.as_secs_f64());
    registry.register(
        "queue_core_round_age_seconds",
        "Seconds since the queue core last ended a round (it ends one at least every tick)",
        age,
    );
    loop_families(&mut registry, loops);
    queue_families(&mut registry, queues);
    if let Some(d) = durability {
        durability_families(&mut registry, d);
    }
    if let Some((allocations, bytes)) = alloc {
        alloc_families(&mut registry, allocations, bytes);
    }
    if let Some(extra) = extra {
        extra_families(&mut registry, loops, durability, extra);
    }
    let mut out = String::with_capacity(4096);
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

/// The per-loop families, labelled `core`.
fn loop_families(registry: &mut Registry, loops: &[LoopStats]) {
    let core = |i: usize| [("core", i.to_string())];

    gauges(
        registry,
        "queue_connections",
        "Open player connections",
        |f| {
            for (i, l) in loops.iter().enumerate() {
                f.get_or_create(&core(i))
                    .set(LoopStats::get(&l.connections));
            }
        },
    );
    let loop_counters: [LoopCounter; 7] = [
        ("queue_accepted", "Player connections accepted", |l| {
            &l.accepted
        }),
        ("queue_logins", "Successful logins", |l| &l.logins),
        ("queue_frames_in", "Frames read from clients", |l| {
            &l.frames_in
        }),
        (
            "queue_frames_out",
            "Frames written to clients (responses and pushes)",
            |l| &l.frames_out,
        ),
        (
            "queue_pushes",
            "Pushes sent (position, admitted, kicked)",
            |l| &l.pushes,
        ),
        ("queue_errors", "Error responses sent", |l| &l.errors),
        (
            "queue_refused",
            "Connections refused at accept by connection limits",
            |l| &l.refused,
        ),
    ];
    for (name, help, field) in loop_counters {
        counters(registry, name, help, |f| {
            for (i, l) in loops.iter().enumerate() {
                f.get_or_create(&core(i))
                    .inc_by(field(l).load(Ordering::Relaxed));
            }
        });
    }
}

/// The label of a per-queue family.
fn queue_label(q: &QueueStats) -> Labels {
    [("queue", q.name.clone())]
}

/// The per-queue families, labelled `queue`: places and counts, rates, and what the
/// login server last reported (in that order on the page).
fn queue_families(registry: &mut Registry, queues: &[QueueStats]) {
    queue_count_families(registry, queues);
    queue_rate_families(registry, queues);
    queue_report_families(registry, queues);
}

/// Places held, pause, unused tokens (gauges); admitted and left (counters).
fn queue_count_families(registry: &mut Registry, queues: &[QueueStats]) {
    let queue_gauges: [QueueValue; 4] = [
        (
            "queue_waiting",
            "Players holding a place (both lanes, grace included)",
            |q| q.waiting,
        ),
        (
            "queue_waiting_priority",
            "Players holding a place in the priority lane",
            |q| q.waiting_priority,
        ),
        (
            "queue_paused",
            "1 while automatic admission is paused",
            |q| u64::from(q.paused),
        ),
        (
            "queue_unused_tokens",
            "Admission tokens issued, not yet used, not expired",
            |q| q.unused_tokens,
        ),
    ];
    for (name, help, field) in queue_gauges {
        gauges(registry, name, help, |f| {
            for q in queues {
                f.get_or_create(&queue_label(q)).set(field(q));
            }
        });
    }
    let queue_counters: [QueueValue; 2] = [
        ("queue_admitted", "Players admitted", |q| q.admitted_total),
        (
            "queue_left",
            "Players who left (leave, grace expiry)",
            |q| q.left_total,
        ),
    ];
    for (name, help, field) in queue_counters {
        counters(registry, name, help, |f| {
            for q in queues {
                f.get_or_create(&queue_label(q)).inc_by(field(q));
            }
        });
    }
}

/// The measured and the configured admission rate.
fn queue_rate_families(registry: &mut Registry, queues: &[QueueStats]) {
    let rate = RateFamily::default();
    for q in queues {
        rate.get_or_create(&queue_label(q)).set(q.admit_rate_per_s);
    }
    registry.register(
        "queue_admit_rate_per_s",
        "Measured admission rate, players per second",
        rate,
    );
    let target = RateFamily::default();
    for q in queues {
        target
            .get_or_create(&queue_label(q))
            .set(q.target_rate_per_s);
    }
    registry.register(
        "queue_target_rate_per_s",
        "Configured automatic admission rate, players per second (0 = manual only)",
        target,
    );
}

/// Capacity and players online as the login server last reported them (only queues
/// with a report have a line).
fn queue_report_families(registry: &mut Registry, queues: &[QueueStats]) {
    gauges(
        registry,
        "queue_capacity",
        "Players the login server can hold, as last reported (queues with a report)",
        |f| {
            for q in queues {
                if let Some((_, capacity)) = q.capacity {
                    f.get_or_create(&queue_label(q)).set(capacity);
                }
            }
        },
    );
    gauges(
        registry,
        "queue_online",
        "Players online at the login server, as last reported (queues with a report)",
        |f| {
            for q in queues {
                if let Some((online, _)) = q.capacity {
                    f.get_or_create(&queue_label(q)).set(online);
                }
            }
        },
    );
}

/// Histograms, the core's inbox, kicks and errors by kind, the build, the process (in
/// that order on the page).
fn extra_families(
    registry: &mut Registry,
    loops: &[LoopStats],
    durability: Option<&DurabilityStatus>,
    extra: &Extra<'_>,
) {
    histogram_families(registry, loops, durability, extra.server);
    let depth = Gauge::<u64, AtomicU64>::default();
    depth.set(extra.inbox_depth as u64);
    registry.register(
        "queue_core_inbox_depth",
        "Messages waiting in the queue core's inbox",
        depth,
    );
    by_kind_families(registry, loops);
    gauges(
        registry,
        "queue_build_info",
        "Always 1; the label carries the server's version",
        |f| {
            f.get_or_create(&[("version", env!("CARGO_PKG_VERSION").to_string())])
                .set(1);
        },
    );
    process_families(registry, &extra.process, extra.server.started_unix_secs);
    if let Some(c) = &extra.cluster {
        c.register(registry);
    }
}

/// Core round times, log fsync times (durability on), login answer times (all loops).
fn histogram_families(
    registry: &mut Registry,
    loops: &[LoopStats],
    durability: Option<&DurabilityStatus>,
    server: &ServerStats,
) {
    histogram(
        registry,
        "queue_core_round_seconds",
        "Duration of a queue core round: apply the messages taken, commit, flush",
        server.core_round.values(),
    );
    if let Some(d) = durability {
        histogram(
            registry,
            "queue_wal_fsync_seconds",
            "Duration of a write-ahead log fsync",
            d.fsync.values(),
        );
    }
    let mut login = HistogramValues::empty();
    for l in loops {
        l.login_answer.add_to(&mut login);
    }
    histogram(
        registry,
        "queue_login_answer_seconds",
        "Time from reading a login frame to writing its answer (logins sent to the core)",
        login,
    );
}

/// Kicks by reason and error answers by code, summed over the loops.
fn by_kind_families(registry: &mut Registry, loops: &[LoopStats]) {
    counters(
        registry,
        "queue_kicks",
        "kicked pushes sent, by reason",
        |f| {
            for (i, reason) in KICK_REASONS.iter().enumerate() {
                let n: u64 = loops.iter().map(|l| LoopStats::get(&l.kicks[i])).sum();
                f.get_or_create(&[("reason", reason.as_str().to_string())])
                    .inc_by(n);
            }
        },
    );
    counters(
        registry,
        "queue_errors_by_code",
        "Error answers sent to players, by protocol error code name",
        |f| {
            for (i, code) in Code::ALL.iter().enumerate().skip(1) {
                let n: u64 = loops
                    .iter()
                    .map(|l| LoopStats::get(&l.errors_by_code[i]))
                    .sum();
                f.get_or_create(&[("code", code.name().to_string())])
                    .inc_by(n);
            }
        },
    );
}

/// `process_*` under the names every Prometheus client library uses; a figure the
/// process could not read has no line.
fn process_families(registry: &mut Registry, p: &ProcessStats, started_unix_secs: u64) {
    let int_gauges = [
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            p.resident_bytes,
        ),
        (
            "process_open_fds",
            "Number of open file descriptors",
            p.open_fds,
        ),
        (
            "process_max_fds",
            "Maximum number of open file descriptors (soft limit)",
            p.max_fds,
        ),
        (
            "process_start_time_seconds",
            "Start time of the process since the unix epoch in seconds",
            Some(started_unix_secs),
        ),
    ];
    for (name, help, value) in int_gauges {
        if let Some(v) = value {
            let g = Gauge::<u64, AtomicU64>::default();
            g.set(v);
            registry.register(name, help, g);
        }
    }
    if let Some(cpu) = p.cpu_seconds {
        let c = Counter::<f64, AtomicU64>::default();
        c.inc_by(cpu);
        registry.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            c,
        );
    }
}

/// The write-ahead log's status.
fn durability_families(registry: &mut Registry, d: &DurabilityStatus) {
    let degraded = Gauge::<i64>::default();
    degraded.set(i64::from(d.degraded.load(Ordering::Relaxed)));
    registry.register(
        "queue_durability_degraded",
        "1 after a log write or fsync failed: joins and admissions are refused until restart",
        degraded,
    );
    for (name, help, value) in [
        (
            "queue_wal_records",
            "Write-ahead log records appended",
            &d.records,
        ),
        ("queue_wal_fsyncs", "Write-ahead log fsyncs", &d.syncs),
        ("queue_snapshots", "Snapshots written", &d.snapshots),
        (
            "queue_snapshot_errors",
            "Snapshots that failed",
            &d.snapshot_errors,
        ),
    ] {
        let c = Counter::<u64>::default();
        c.inc_by(value.load(Ordering::Relaxed));
        registry.register(name, help, c);
    }
}

/// The counting allocator's totals.
fn alloc_families(registry: &mut Registry, allocations: u64, bytes: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(allocations);
    registry.register(
        "queue_server_allocations",
        "Heap allocations since start",
        c,
    );
    let c = Counter::<u64>::default();
    c.inc_by(bytes);
    registry.register(
        "queue_server_allocated_bytes",
        "Bytes allocated since start",
        c,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str, waiting: u64, rate: f64, paused: bool) -> QueueStats {
        QueueStats {
            name: name.to_string(),
            waiting,
            waiting_priority: 2,
            admitted_total: 30,
            left_total: 4,
            admit_rate_per_s: rate,
            target_rate_per_s: 10.0,
            paused,
            unused_tokens: 5,
            capacity: None,
        }
    }

    #[test]
    fn renders_every_family_with_final_names() {
        let loops: Vec<LoopStats> = (0..2).map(|_| LoopStats::default()).collect();
        LoopStats::add(&loops[0].connections, 3);
        LoopStats::add(&loops[1].connections, 4);
        LoopStats::add(&loops[1].accepted, 9);
        LoopStats::add(&loops[0].logins, 8);
        LoopStats::add(&loops[0].frames_in, 100);
        LoopStats::add(&loops[1].frames_out, 200);
        LoopStats::add(&loops[0].pushes, 50);
        LoopStats::add(&loops[1].errors, 1);
        let queues = [queue("default", 12, 2.5, false), queue("w-1", 0, 0.0, true)];
        let text = render(
            &loops,
            &queues,
            None,
            Some((7, 4096)),
            Duration::from_millis(1500),
            None,
        );
        for line in [
            "# TYPE queue_connections gauge",
            "queue_connections{core=\"0\"} 3",
            "queue_connections{core=\"1\"} 4",
            "# TYPE queue_accepted counter",
            "queue_accepted_total{core=\"1\"} 9",
            "queue_accepted_total{core=\"0\"} 0",
            "queue_logins_total{core=\"0\"} 8",
            "queue_frames_in_total{core=\"0\"} 100",
            "queue_frames_out_total{core=\"1\"} 200",
            "queue_pushes_total{core=\"0\"} 50",
            "queue_errors_total{core=\"1\"} 1",
            "queue_waiting{queue=\"default\"} 12",
            "queue_waiting_priority{queue=\"default\"} 2",
            "queue_admitted_total{queue=\"default\"} 30",
            "queue_left_total{queue=\"w-1\"} 4",
            "queue_admit_rate_per_s{queue=\"default\"} 2.5",
            "queue_admit_rate_per_s{queue=\"w-1\"} 0.0",
            "queue_paused{queue=\"w-1\"} 1",
            "queue_paused{queue=\"default\"} 0",
            "queue_unused_tokens{queue=\"default\"} 5",
            "queue_server_allocations_total 7",
            "queue_server_allocated_bytes_total 4096",
            "# TYPE queue_core_round_age_seconds gauge",
            "queue_core_round_age_seconds 1.5",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn no_allocator_no_queues() {
        let loops = [LoopStats::default()];
        let text = render(&loops, &[], None, None, Duration::ZERO, None);
        assert!(text.contains("queue_connections{core=\"0\"} 0"), "{text}");
        assert!(!text.contains("queue_server_allocations"), "{text}");
        assert!(!text.contains("queue=\""), "{text}");
    }

    #[test]
    fn renders_histograms_kicks_errors_process_and_build() {
        let loops: Vec<LoopStats> = (0..2).map(|_| LoopStats::new(4)).collect();
        loops[0].kicked(Some(0), crate::msg::KickReason::IdleTimeout);
        loops[1].kicked(None, crate::msg::KickReason::IdleTimeout);
        loops[1].error(crate::protocol::Code::RateLimited);
        loops[0].login_answer.observe(Duration::from_micros(300));
        loops[1].login_answer.observe(Duration::from_micros(400));
        let server = ServerStats::default();
        server.core_round.observe(Duration::from_micros(20));
        let durability = DurabilityStatus::default();
        durability.fsync.observe(Duration::from_millis(2));
        let extra = Extra {
            server: &server,
            inbox_depth: 7,
            process: ProcessStats {
                resident_bytes: Some(1 << 20),
                open_fds: Some(12),
                max_fds: Some(1024),
                cpu_seconds: Some(1.5),
            },
            cluster: None,
        };
        let mut q = queue("default", 1, 0.0, false);
        q.capacity = Some((40, 100));
        let text = render(
            &loops,
            &[q],
            Some(&durability),
            None,
            Duration::ZERO,
            Some(&extra),
        );
        let version = env!("CARGO_PKG_VERSION");
        for line in [
            "# TYPE queue_core_round_seconds histogram",
            "queue_core_round_seconds_count 1",
            "queue_core_round_seconds_bucket{le=\"0.000025\"} 1",
            "queue_core_round_seconds_bucket{le=\"+Inf\"} 1",
            "queue_wal_fsync_seconds_count 1",
            "queue_wal_fsync_seconds_bucket{le=\"0.001\"} 0",
            "queue_wal_fsync_seconds_bucket{le=\"0.0025\"} 1",
            "queue_login_answer_seconds_count 2",
            "queue_login_answer_seconds_bucket{le=\"0.0005\"} 2",
            "queue_core_inbox_depth 7",
            "queue_kicks_total{reason=\"idle_timeout\"} 2",
            "queue_kicks_total{reason=\"removed\"} 0",
            "queue_errors_by_code_total{code=\"RATE_LIMITED\"} 1",
            "queue_errors_by_code_total{code=\"BAD_FRAME\"} 0",
            "queue_target_rate_per_s{queue=\"default\"} 10.0",
            "queue_capacity{queue=\"default\"} 100",
            "queue_online{queue=\"default\"} 40",
            "process_resident_memory_bytes 1048576",
            "process_open_fds 12",
            "process_max_fds 1024",
            "process_cpu_seconds_total 1.5",
            &format!("queue_build_info{{version=\"{version}\"}} 1"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
    }
}
