//! Connection admission limits shared by all io loops: total open connections and open
//! connections per IP address.
//!
//! Invariants:
//! - checked once per accepted connection and released once when it ends, never per
//!   message: the mutex here is off the hot path (accept/close only);
//! - `total` and each per-address count equal the connections admitted and not yet
//!   released; an address with no connection has no entry (the map stays bounded by
//!   open connections).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `server.max_connections` reached.
    Total,
    /// `server.max_connections_per_ip` reached for this address.
    PerIp,
}

impl Refused {
    /// Text for the RATE_LIMITED answer.
    pub fn message(self) -> &'static str {
        match self {
            Refused::Total => "server is at its connection limit",
            Refused::PerIp => "too many connections from this address",
        }
    }
}

/// Open-connection counters and their limits.
#[derive(Debug)]
pub struct ConnLimits {
    /// Most connections in all.
    max_total: u64,
    /// Most connections per address.
    max_per_ip: u32,
    /// Open connections.
    total: AtomicU64,
    /// Open connections per address.
    per_ip: Mutex<HashMap<IpAddr, u32>>,
}

impl ConnLimits {
    /// Limits of `max_total` connections and `max_per_ip` per address.
    pub fn new(max_total: u64, max_per_ip: u32) -> ConnLimits {
        ConnLimits {
            max_total,
            max_per_ip,
            total: AtomicU64::new(0),
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a new connection from `ip`, or says why it must be refused.
    pub fn acquire(&self, ip: IpAddr) -> Result<(), Refused> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Total);
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            if *n == 0 {
                per_ip.remove(&ip);
            }
            drop(per_ip);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::PerIp);
        }
        *n += 1;
        Ok(())
    }

    /// A connection from `ip` admitted by [`ConnLimits::acquire`] has ended.
    pub fn release(&self, ip: IpAddr) {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
        drop(per_ip);
        self.total.fetch_sub(1, Ordering::AcqRel);
    }

    /// Open connections now.
    pub fn open(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_total_and_per_address_and_release() {
        let l = ConnLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(l.acquire(a), Ok(()));
        assert_eq!(l.acquire(a), Ok(()));
        assert_eq!(l.acquire(a), Err(Refused::PerIp));
        assert_eq!(l.acquire(b), Ok(()));
        assert_eq!(l.acquire(b), Err(Refused::Total));
        assert_eq!(l.open(), 3);
        l.release(a);
        assert_eq!(l.acquire(b), Ok(()));
        l.release(a);
        l.release(b);
        l.release(b);
        assert_eq!(l.open(), 0);
        assert!(l.per_ip.lock().unwrap().is_empty());
    }
}
