//! The process's own figures from `/proc/self` (Linux): resident memory, open
//! descriptors and their limit, CPU time. Read on the control thread at scrape time.

/// What `/proc/self` says now; a figure that cannot be read is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    /// Resident set size, bytes.
    pub resident_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// Soft limit on open file descriptors.
    pub max_fds: Option<u64>,
    /// User + system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads `/proc/self/statm`, `/proc/self/stat`, `/proc/self/fd` and the fd limit.
    pub fn read() -> ProcessStats {
        // SAFETY: sysconf and getrlimit with a valid pointer to a local struct.
        let (page_bytes, ticks_per_s, max_fds) = unsafe {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            let max = (libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0).then_some(lim.rlim_cur);
            (
                libc::sysconf(libc::_SC_PAGESIZE),
                libc::sysconf(libc::_SC_CLK_TCK),
                max,
            )
        };
        let resident_bytes = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .filter(|_| page_bytes > 0)
            .map(|pages| pages * page_bytes as u64);
        // Fields after the command name (which may hold spaces) start at field 3;
        // utime and stime are fields 14 and 15.
        let cpu_seconds = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                let rest = s.rsplit_once(')')?.1;
                let mut f = rest.split_whitespace().skip(11);
                let utime: u64 = f.next()?.parse().ok()?;
                let stime: u64 = f.next()?.parse().ok()?;
                Some((utime + stime) as f64)
            })
            .filter(|_| ticks_per_s > 0)
            .map(|ticks| ticks / ticks_per_s as f64);
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count().saturating_sub(1) as u64); // minus the one read_dir holds
        ProcessStats {
            resident_bytes,
            open_fds,
            max_fds,
            cpu_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let p = ProcessStats::read();
        assert!(p.resident_bytes.is_some_and(|b| b > 1024 * 1024), "{p:?}");
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{p:?}");
        assert!(p.max_fds.is_some_and(|n| n >= p.open_fds.unwrap()), "{p:?}");
        // Burn a little CPU so the figure cannot be a constant zero.
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(
            ProcessStats::read().cpu_seconds.is_some_and(|s| s > 0.0),
            "{p:?}"
        );
    }
}
