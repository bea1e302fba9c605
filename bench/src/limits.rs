//! How many connections this machine lets one bench open, and why not more: the
//! per-process file-descriptor limit (`ulimit -n`), the ephemeral port range per source
//! address, and the server's own limit. Checked before a scenario starts, so a user
//! count that cannot be opened is refused up front with the reason and the flag that
//! helps, instead of failing half way.
//!
//! Invariants:
//! - the soft `RLIMIT_NOFILE` is raised to the hard limit once at start, never above;
//! - `FD_RESERVE` descriptors stay free for the runtime, control calls and stdio.

use std::net::IpAddr;

/// Descriptors kept back per process (io_uring, eventfds, control HTTP, stdio, files).
pub const FD_RESERVE: u64 = 100;

/// Why a requested number of connections cannot be opened.
#[derive(Debug, Clone, PartialEq)]
pub enum CapacityError {
    /// More connections per process than file descriptors.
    Descriptors {
        /// Connections this process would hold.
        per_process: u64,
        /// Its descriptor limit.
        limit: u64,
        /// `--procs` that would fit.
        procs_needed: u64,
    },
    /// More connections per source address than ephemeral ports.
    Ports {
        /// Connections requested.
        users: u64,
        /// Ports per source address (`ip_local_port_range`).
        ports: u64,
        /// Source addresses given.
        sources: u64,
    },
}

impl std::fmt::Display for CapacityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CapacityError::Descriptors {
                per_process,
                limit,
                procs_needed,
            } => write!(
                f,
                "cannot open {per_process} connections in one process: its file-descriptor limit (ulimit -n) is {limit}, \
                 {FD_RESERVE} of which are kept for the runtime; split the users over processes with --procs {procs_needed} \
                 (the server process has its own limit too: one queue-server holds at most about {} players here)",
                limit.saturating_sub(FD_RESERVE)
            ),
            CapacityError::Ports {
                users,
                ports,
                sources,
            } => write!(
                f,
                "cannot open {users} connections to one server address from {sources} source address(es): each source \
                 address has {ports} ephemeral ports (net.ipv4.ip_local_port_range); add loopback sources with \
                 --source-addrs 127.0.0.1,127.0.0.2,... (at least {})",
                users.div_ceil(*ports)
            ),
        }
    }
}

impl std::error::Error for CapacityError {}

/// Raises the soft descriptor limit to the hard one; returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

/// Ephemeral ports per (source, destination) pair, from `ip_local_port_range`.
pub fn ephemeral_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|n| n.parse::<u64>().ok());
            let lo = it.next()??;
            let hi = it.next()??;
            Some(hi.saturating_sub(lo) + 1)
        })
        .unwrap_or(28_232)
}

/// Checks that `users` connections spread over `procs` processes and `sources` source
/// addresses fit the limits `fd_limit` (per process) and `ports` (per source).
pub fn check(
    users: u64,
    procs: u64,
    fd_limit: u64,
    ports: u64,
    sources: &[IpAddr],
) -> Result<(), CapacityError> {
    let procs = procs.max(1);
    let usable = fd_limit.saturating_sub(FD_RESERVE).max(1);
    let per_process = users.div_ceil(procs);
    if per_process > usable {
        return Err(CapacityError::Descriptors {
            per_process,
            limit: fd_limit,
            procs_needed: users.div_ceil(usable),
        });
    }
    let n_sources = sources.len().max(1) as u64;
    if users > ports * n_sources {
        return Err(CapacityError::Ports {
            users,
            ports,
            sources: n_sources,
        });
    }
    Ok(())
}

/// Parses `127.0.0.1,127.0.0.2`.
pub fn parse_sources(text: &str) -> Result<Vec<IpAddr>, String> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| format!("`{s}` is not an IP address"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_limit_names_the_procs_needed() {
        let e = check(50_000, 1, 20_000, 28_232, &[]).unwrap_err();
        assert_eq!(
            e,
            CapacityError::Descriptors {
                per_process: 50_000,
                limit: 20_000,
                procs_needed: 3
            }
        );
        assert!(e.to_string().contains("--procs 3"), "{e}");
        assert!(check(
            50_000,
            3,
            20_000,
            28_232,
            &parse_sources("127.0.0.1,127.0.0.2").unwrap()
        )
        .is_ok());
    }

    #[test]
    fn port_range_names_the_sources_needed() {
        let e = check(50_000, 3, 20_000, 28_232, &[]).unwrap_err();
        assert!(e.to_string().contains("--source-addrs"), "{e}");
        assert!(e.to_string().contains("at least 2"), "{e}");
    }

    #[test]
    fn sources_parse() {
        assert_eq!(parse_sources("127.0.0.1, 127.0.0.2").unwrap().len(), 2);
        assert!(parse_sources("nope").is_err());
    }
}
