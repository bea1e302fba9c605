//! A loop's login budget: a token bucket of `logins_per_sec` tokens refilled
//! continuously (burst = one second's worth); 0 = unlimited.

use std::cell::Cell;
use std::time::Instant;

/// The bucket.
pub struct LoginBucket {
    /// Logins per second; 0 = unlimited.
    rate_per_s: f64,
    /// (tokens, last refill).
    state: Cell<(f64, Instant)>,
}

impl LoginBucket {
    /// A full bucket of `logins_per_sec`.
    pub fn new(logins_per_sec: u32, now: Instant) -> LoginBucket {
        let rate_per_s = f64::from(logins_per_sec);
        LoginBucket {
            rate_per_s,
            state: Cell::new((rate_per_s, now)),
        }
    }

    /// Takes one login at `now`; false when the budget is spent.
    pub fn take(&self, now: Instant) -> bool {
        let rate = self.rate_per_s;
        if rate == 0.0 {
            return true;
        }
        let (tokens, last) = self.state.get();
        let tokens = (tokens + rate * now.duration_since(last).as_secs_f64()).min(rate);
        if tokens >= 1.0 {
            self.state.set((tokens - 1.0, now));
            true
        } else {
            self.state.set((tokens, now));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_second_of_burst_then_the_rate() {
        let t0 = Instant::now();
        let bucket = LoginBucket::new(4, t0);
        assert!((0..4).all(|_| bucket.take(t0)));
        assert!(!bucket.take(t0));
        assert!(!bucket.take(t0 + Duration::from_millis(200)));
        assert!(bucket.take(t0 + Duration::from_millis(300)));
        assert!(!bucket.take(t0 + Duration::from_millis(310)));
        let unlimited = LoginBucket::new(0, t0);
        assert!((0..1000).all(|_| unlimited.take(t0)));
    }
}
