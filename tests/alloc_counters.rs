//! Proof that the counters added for the dashboard and `/metrics` (issue 10) keep the
//! hot path allocation-free: what an io loop does per frame, push, kick, error and
//! login answer, and what the core does per round (a histogram observation and the
//! history's per-tick minute check). Measured with the calling thread's own counter,
//! after a warm-up, like `alloc_hot_path.rs`; the assertion is on counts, never time.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use queue_server::alloc_count::{self, CountingAlloc};
use queue_server::config::Config;
use queue_server::msg::KickReason;
use queue_server::protocol::Code;
use queue_server::queue::state::{Limits, QueueState};
use queue_server::stats::history::Sampler;
use queue_server::stats::{LoopStats, ServerStats};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Allocations the calling thread makes in 10,000 runs of `f` (after 100 unmeasured).
fn allocations_during(mut f: impl FnMut()) -> u64 {
    for _ in 0..100 {
        f();
    }
    let before = alloc_count::thread_allocations();
    for _ in 0..10_000 {
        f();
    }
    alloc_count::thread_allocations() - before
}

#[test]
fn loop_counters_allocate_nothing() {
    let stats = LoopStats::new(16);
    let allocs = allocations_during(|| {
        stats.frame_in(black_box(Some(3)));
        stats.frame_in(black_box(None));
        stats.frame_in(black_box(Some(999))); // past the table: loop totals only
        stats.pushed(black_box(Some(3)));
        stats.kicked(black_box(Some(3)), KickReason::SlowConsumer);
        stats.logged_in(black_box(3));
        stats.error(black_box(Code::RateLimited));
        stats
            .login_answer
            .observe(black_box(Duration::from_micros(250)));
    });
    assert_eq!(allocs, 0);
    assert_eq!(LoopStats::get(&stats.frames_in), 3 * 10_100);
    assert_eq!(LoopStats::get(&stats.queues[3].requests_in), 10_100);
}

#[test]
fn core_round_observation_and_minute_check_allocate_nothing() {
    let config = Config::default();
    let state = QueueState::new(Limits::from_config(&config), &[("q".into(), 10, 0.0)], 1);
    let server = Arc::new(ServerStats::default());
    let loops = Arc::new(vec![LoopStats::new(4)]);
    let minute_start = 1_700_000_040_000; // a multiple of 60 s
    let mut sampler = Sampler::new(server.clone(), loops, minute_start);
    let allocs = allocations_during(|| {
        server
            .core_round
            .observe(black_box(Duration::from_micros(40)));
        sampler.tick(black_box(minute_start + 1_000), state.queues());
    });
    assert_eq!(allocs, 0);
    assert!(server.history.server().is_empty(), "still the same minute");
}
