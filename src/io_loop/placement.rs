//! Where the server's threads run and which driver the io loops use (io_uring, or the
//! legacy epoll driver where io_uring is missing), and how many connections the
//! process can hold, decided once at start.

use crate::config::{Config, Driver};

/// Where threads run and which driver the io loops use.
pub struct Placement {
    /// CPU cores to pin to, round-robin (empty: no pinning).
    pub cores: Vec<core_affinity::CoreId>,
    /// The io loops use the legacy epoll driver.
    pub legacy: bool,
    /// `server.driver = "auto"`: a loop whose io_uring fails falls back to epoll.
    pub fallback: bool,
}

impl Placement {
    /// Detects the cores and the driver for `loops` io loops.
    pub fn detect(config: &Config, loops: usize) -> Placement {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        if !cores.is_empty() && loops > cores.len() {
            tracing::warn!(
                loops,
                cores = cores.len(),
                "more io loops than cores: pinning round-robin"
            );
        }
        let legacy = match config.server.driver {
            Driver::Legacy => true,
            Driver::IoUring => false,
            Driver::Auto => {
                let missing = !monoio::utils::detect_uring();
                if missing {
                    tracing::warn!(
                        "io_uring is not available here: io loops use the legacy epoll driver"
                    );
                }
                missing
            }
        };
        Placement {
            cores,
            legacy,
            fallback: config.server.driver == Driver::Auto,
        }
    }

    /// The core thread `i` is pinned to (loops are 0..n, the queue core is n).
    pub fn pin(&self, i: usize) -> Option<core_affinity::CoreId> {
        (!self.cores.is_empty()).then(|| self.cores[i % self.cores.len()])
    }
}

/// Descriptors kept for listeners, doorbells, the control port, files and logs.
const FD_RESERVE: u64 = 256;

/// Raises the soft open-file limit to the hard one and returns the connections the
/// process can really hold: `max_connections`, or fewer (with a warning) when the
/// descriptor limit is lower, so the connection over it gets RATE_LIMITED instead of
/// an accept error nobody sees.
pub fn connection_budget(max_connections: u64, loops: usize) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    let fds = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return max_connections;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    };
    let usable = fds.saturating_sub(FD_RESERVE + 8 * loops as u64);
    if usable < max_connections {
        tracing::warn!(
            max_connections,
            open_files_limit = fds,
            usable,
            "open-file limit is below server.max_connections: connections over {usable} get RATE_LIMITED"
        );
        return usable.max(1);
    }
    max_connections
}
