//! Rate pacing: when each request or connection is *supposed* to go out. Latency is
//! measured from these intended times (not from when the client got round to sending),
//! so a stalled server or a late client thread shows up as latency rather than as fewer
//! samples (coordinated omission).
//!
//! Invariants:
//! - `Ramp::at(i)` and `Periodic::at(k)` depend only on the index and the start: a late
//!   sender never shifts the schedule of later sends;
//! - the `n` users of a periodic scenario are spread evenly over one interval.

use std::time::{Duration, Instant};

/// `n` events at `rate_per_s` from `start` (or all at `start` when the rate is 0).
#[derive(Clone, Copy, Debug)]
pub struct Ramp {
    /// First event.
    pub start: Instant,
    /// Events per second; 0 = as fast as possible.
    pub rate_per_s: f64,
}

impl Ramp {
    /// Intended time of event `i` (0-based).
    pub fn at(&self, i: u64) -> Instant {
        if self.rate_per_s <= 0.0 {
            return self.start;
        }
        self.start + Duration::from_secs_f64(i as f64 / self.rate_per_s)
    }
}

/// One event per `interval` for one user, offset so `users` users spread evenly.
#[derive(Clone, Copy, Debug)]
pub struct Periodic {
    /// Start of the first interval.
    pub start: Instant,
    /// Time between two events of one user.
    pub interval: Duration,
    /// This user's offset into each interval.
    pub offset: Duration,
}

impl Periodic {
    /// The schedule of user `user` of `users`.
    pub fn spread(start: Instant, interval: Duration, user: u64, users: u64) -> Periodic {
        let users = users.max(1);
        let offset_ns = interval.as_nanos() * u128::from(user % users) / u128::from(users);
        Periodic {
            start,
            interval,
            offset: Duration::from_nanos(offset_ns as u64),
        }
    }

    /// Intended time of this user's event `k` (0-based).
    pub fn at(&self, k: u64) -> Instant {
        self.start + self.offset + self.interval.saturating_mul(k as u32)
    }
}

/// Parses `5s`, `250ms`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (try 5s, 250ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "us" => n / 1e6,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (ms, s, m)")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("`{text}` is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_spaces_events_by_the_rate() {
        let start = Instant::now();
        let r = Ramp {
            start,
            rate_per_s: 1000.0,
        };
        assert_eq!(r.at(0), start);
        assert_eq!(r.at(1000) - start, Duration::from_secs(1));
        assert_eq!(r.at(250) - start, Duration::from_millis(250));
        let burst = Ramp {
            start,
            rate_per_s: 0.0,
        };
        assert_eq!(burst.at(12345), start);
    }

    #[test]
    fn periodic_spreads_users_evenly_over_one_interval() {
        let start = Instant::now();
        let iv = Duration::from_secs(5);
        let offsets: Vec<Duration> = (0..4)
            .map(|u| Periodic::spread(start, iv, u, 4).offset)
            .collect();
        assert_eq!(
            offsets,
            [0, 1250, 2500, 3750].map(Duration::from_millis).to_vec()
        );
        let p = Periodic::spread(start, iv, 1, 4);
        assert_eq!(p.at(2) - start, Duration::from_millis(11_250));
    }

    #[test]
    fn periodic_schedule_does_not_drift_with_late_sends() {
        // The k-th intended time is fixed by k alone: 1000 events 1 ms apart end at 999 ms.
        let start = Instant::now();
        let p = Periodic::spread(start, Duration::from_millis(1), 0, 1);
        assert_eq!(p.at(999) - start, Duration::from_millis(999));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
