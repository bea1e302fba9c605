//! Automatic admission pacing and the measured admission rate of one queue.
//!
//! Invariants:
//! - `Pacer::allowance` never returns more than the players waiting;
//! - with a rate set, admissions over any window stay within rate x window + 1 second
//!   of burst (credit is capped at one second's worth, and does not build while empty);
//! - with a capacity report, online + used since the report + unused grants + the new
//!   admissions never exceed the reported capacity;
//! - one call admits at most [`TICK_ADMIT_MAX`], whatever the rate or the report;
//! - no sum overflows: every count saturates, and a non-finite or huge rate cannot make
//!   `allowance` panic (the state machine refuses such rates, this is the second line).

/// Highest automatic admission rate accepted, players per second (`PUT .../rate`).
pub const RATE_MAX_PER_S: f64 = 1_000_000.0;
/// Highest `online` or `capacity` a login server may report (`PUT .../capacity`).
pub const CAPACITY_MAX: u64 = 1_000_000_000;

/// Most players one queue admits automatically per core tick. Every admission signs a
/// token (tens of microseconds each) and sends a push, all within one core round during
/// which nothing else is answered: without a cap, one capacity report with room for a
/// million would admit a million players in one tick, a core stall of tens of seconds and
/// a million events in one flush. 1,000 keeps a tick's signing to some tens of ms; at
/// the default 10 ms tick it still allows 100,000 players/s per queue, more than the core
/// can sign. (With `core.tick_ms = 1000` it is the ceiling of automatic admission:
/// 1,000/s per queue.) Rate credit not taken because of the cap is kept, up to the
/// usual one second of burst.
pub const TICK_ADMIT_MAX: u64 = 1_000;

/// The login server's last load report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityReport {
    /// Players online at the login server when it reported.
    pub online: u64,
    /// Players it can hold.
    pub capacity: u64,
    /// Tokens used (players gone online) since the report.
    pub used_since: u64,
}

/// Decides how many players a queue admits automatically per tick.
#[derive(Debug, Clone, Default)]
pub struct Pacer {
    /// Automatic admission rate, players/s; 0 = no rate-driven admission.
    pub rate_per_s: f64,
    /// Fractional admissions earned but not yet taken.
    credit: f64,
    /// Automatic admission stopped by an operator.
    pub paused: bool,
    /// Capacity-driven admission, once the login server has reported.
    pub capacity: Option<CapacityReport>,
}

impl Pacer {
    /// Records a load report from the login server.
    pub fn report_capacity(&mut self, online: u64, capacity: u64) {
        self.capacity = Some(CapacityReport {
            online,
            capacity,
            used_since: 0,
        });
    }

    /// Fractional admissions earned but not yet taken (for snapshots).
    pub fn credit(&self) -> f64 {
        self.credit
    }

    /// Restores the credit saved by a snapshot.
    pub fn set_credit(&mut self, credit: f64) {
        self.credit = credit;
    }

    /// A token of this queue was used: that player is now online.
    pub fn token_used(&mut self) {
        if let Some(c) = &mut self.capacity {
            c.used_since = c.used_since.saturating_add(1);
        }
    }

    /// Players to admit now, `dt_ms` after the previous call, with `waiting` players in
    /// the queue and `unused` admitted players who have not used their token yet.
    pub fn allowance(&mut self, dt_ms: u64, waiting: u64, unused: u64) -> u64 {
        let rate_driven = self.rate_per_s > 0.0;
        if self.paused || (!rate_driven && self.capacity.is_none()) {
            self.credit = 0.0;
            return 0;
        }
        let mut n = waiting.min(TICK_ADMIT_MAX);
        if rate_driven {
            let burst = self.rate_per_s.max(1.0);
            self.credit = (self.credit + self.rate_per_s * dt_ms as f64 / 1000.0).min(burst);
            n = n.min(self.credit.floor() as u64);
        }
        if let Some(c) = self.capacity {
            let busy = c.online.saturating_add(c.used_since).saturating_add(unused);
            n = n.min(c.capacity.saturating_sub(busy));
        }
        if rate_driven {
            self.credit -= n as f64;
            if waiting == 0 {
                self.credit = self.credit.min(1.0);
            }
        }
        n
    }
}

/// Seconds of history the measured rate averages over.
const WINDOW_SECS: u64 = 60;

/// Admissions per second, measured over the last minute.
#[derive(Debug, Clone)]
pub struct RateMeter {
    /// Per-second buckets: (second, admissions in it), indexed by second % window.
    buckets: [(u64, u64); WINDOW_SECS as usize],
    /// Second of the first admission ever.
    first_sec: Option<u64>,
}

impl Default for RateMeter {
    fn default() -> Self {
        RateMeter {
            buckets: [(u64::MAX, 0); WINDOW_SECS as usize],
            first_sec: None,
        }
    }
}

impl RateMeter {
    /// Counts `n` admissions at `now_ms`.
    pub fn record(&mut self, now_ms: u64, n: u64) {
        let sec = now_ms / 1000;
        let slot = &mut self.buckets[(sec % WINDOW_SECS) as usize];
        if slot.0 != sec {
            *slot = (sec, 0);
        }
        slot.1 = slot.1.saturating_add(n);
        self.first_sec.get_or_insert(sec);
    }

    /// The raw history (for snapshots): per-second buckets and the first second.
    pub fn parts(&self) -> (&[(u64, u64)], Option<u64>) {
        (&self.buckets, self.first_sec)
    }

    /// A meter with this history (from a snapshot); `buckets` holds one entry per
    /// second of the window, as [`RateMeter::parts`] gave them.
    pub fn from_parts(buckets: &[(u64, u64)], first_sec: Option<u64>) -> Option<RateMeter> {
        Some(RateMeter {
            buckets: buckets.try_into().ok()?,
            first_sec,
        })
    }

    /// Admissions per second over the last minute (or since the first admission, if
    /// sooner); 0 when nothing was admitted in that window.
    pub fn rate(&self, now_ms: u64) -> f64 {
        let Some(first) = self.first_sec else {
            return 0.0;
        };
        let sec = now_ms / 1000;
        let recent: u64 = self
            .buckets
            .iter()
            .filter(|(s, _)| *s != u64::MAX && *s <= sec && sec - *s < WINDOW_SECS)
            .fold(0u64, |sum, (_, n)| sum.saturating_add(*n));
        let window = (sec.saturating_sub(first) + 1).min(WINDOW_SECS);
        recent as f64 / window as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_admits_at_the_rate() {
        let mut p = Pacer {
            rate_per_s: 50.0,
            ..Pacer::default()
        };
        let mut total = 0;
        for _ in 0..100 {
            total += p.allowance(10, 1_000, 0);
        }
        // 1 s of ticks at 50/s.
        assert!((49..=51).contains(&total), "{total}");
    }

    #[test]
    fn credit_does_not_build_while_empty_or_paused() {
        let mut p = Pacer {
            rate_per_s: 10.0,
            ..Pacer::default()
        };
        for _ in 0..1000 {
            assert_eq!(p.allowance(10, 0, 0), 0);
        }
        assert!(p.allowance(10, 100, 0) <= 1);
        p.paused = true;
        assert_eq!(p.allowance(60_000, 100, 0), 0);
        p.paused = false;
        assert!(p.allowance(10, 100, 0) <= 1);
    }

    #[test]
    fn capacity_bounds_admissions() {
        let mut p = Pacer::default();
        assert_eq!(p.allowance(10, 100, 0), 0, "manual until a report");
        p.report_capacity(90, 100);
        assert_eq!(p.allowance(10, 100, 0), 10);
        // Those 10 are unused tokens now: no more room.
        assert_eq!(p.allowance(10, 90, 10), 0);
        // Two used: still counted (online at the login server), no room.
        p.token_used();
        p.token_used();
        assert_eq!(p.allowance(10, 90, 8), 0);
        // Login server reports two players went offline.
        p.report_capacity(90, 100);
        assert_eq!(p.allowance(10, 90, 8), 2);
    }

    #[test]
    fn rate_and_capacity_take_the_smaller() {
        let mut p = Pacer {
            rate_per_s: 1000.0,
            ..Pacer::default()
        };
        p.report_capacity(0, 3);
        assert_eq!(p.allowance(1000, 100, 0), 3);
    }

    #[test]
    fn capacity_sums_saturate_instead_of_overflowing() {
        let mut p = Pacer::default();
        p.report_capacity(u64::MAX, u64::MAX);
        p.token_used();
        // online + used + unused would wrap (release) or abort (debug): room is 0.
        assert_eq!(p.allowance(10, 100, u64::MAX), 0);
        assert_eq!(p.capacity.unwrap().used_since, 1);
        let mut p = Pacer::default();
        p.report_capacity(0, 10);
        p.capacity.as_mut().unwrap().used_since = u64::MAX;
        p.token_used();
        assert_eq!(p.capacity.unwrap().used_since, u64::MAX);
        assert_eq!(p.allowance(10, 100, 5), 0);
    }

    #[test]
    fn one_tick_admits_at_most_tick_admit_max() {
        // Capacity-driven: room for a billion, a million waiting.
        let mut p = Pacer::default();
        p.report_capacity(0, CAPACITY_MAX);
        assert_eq!(p.allowance(10, 1_000_000, 0), TICK_ADMIT_MAX);
        assert_eq!(p.allowance(10, 10, 0), 10, "never more than waiting");
        // Rate-driven: the credit not taken is kept (up to one second's worth).
        let mut p = Pacer {
            rate_per_s: RATE_MAX_PER_S,
            ..Pacer::default()
        };
        assert_eq!(p.allowance(1000, 1_000_000, 0), TICK_ADMIT_MAX);
        assert!(p.credit() >= RATE_MAX_PER_S - TICK_ADMIT_MAX as f64);
        assert_eq!(p.allowance(10, 1_000_000, 0), TICK_ADMIT_MAX);
    }

    #[test]
    fn a_non_finite_or_huge_rate_does_not_panic() {
        for rate in [f64::INFINITY, f64::NAN, 1e300, f64::MAX, -1.0] {
            let mut p = Pacer {
                rate_per_s: rate,
                ..Pacer::default()
            };
            for dt_ms in [0, 10, u64::MAX] {
                assert!(p.allowance(dt_ms, 50, 0) <= 50, "rate {rate}");
                assert!(p.allowance(dt_ms, u64::MAX, u64::MAX) <= TICK_ADMIT_MAX);
            }
        }
    }

    #[test]
    fn meter_measures_recent_rate() {
        let mut m = RateMeter::default();
        assert_eq!(m.rate(5_000), 0.0);
        for s in 0..10u64 {
            m.record(s * 1000, 5);
        }
        assert!((m.rate(9_500) - 5.0).abs() < 1e-9);
        assert_eq!(m.rate(200_000), 0.0);
    }
}
