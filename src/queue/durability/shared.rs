//! The types the durability files share, in a leaf that imports none of them:
//! [`RecoveryError`] (why start-up refuses: the file and byte offset at fault) and
//! [`DurabilityStatus`] (the counters and flags the core writes and health, metrics and
//! tests read).
//!
//! Invariants:
//! - this module imports nothing of `durability`, `wal` or `snapshot`, so the three can
//!   import it and each other without a cycle (`snapshot` uses `wal`, `mod` uses both);
//! - every [`DurabilityStatus`] field is an atomic or a lock-free histogram: readers on
//!   other threads never wait on the core.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};

/// Why the durable state cannot be loaded; start-up refuses with it.
#[derive(Debug)]
pub enum RecoveryError {
    /// A file or the directory could not be read, written or created.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file holds bytes that were not written as they are: no guessing.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the first bad byte or record.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// The files do not form one history (a log is missing, or has no snapshot).
    Inconsistent {
        /// The file at fault (or missing).
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another process holds the directory's lock.
    Locked {
        /// The lock file.
        path: PathBuf,
    },
}

impl fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            RecoveryError::Corrupt {
                path,
                offset,
                reason,
            } => write!(
                f,
                "{}: corrupt at byte offset {offset}: {reason}",
                path.display()
            ),
            RecoveryError::Inconsistent { path, reason } => {
                write!(f, "{}: {reason}", path.display())
            }
            RecoveryError::Locked { path } => write!(
                f,
                "{}: the durability directory is in use by another process",
                path.display()
            ),
        }
    }
}

impl std::error::Error for RecoveryError {}

/// What the durability layer reports to the rest of the server (metrics, health, tests).
#[derive(Debug, Default)]
pub struct DurabilityStatus {
    /// The log failed (write or fsync): joins and admissions are refused until a restart.
    pub degraded: AtomicBool,
    /// Test hook: the next log fsync fails as if the disk had returned an error.
    pub fail_next_sync: AtomicBool,
    /// Records appended since start.
    pub records: AtomicU64,
    /// Log fsyncs since start.
    pub syncs: AtomicU64,
    /// Snapshots written since start (start-up and shutdown included).
    pub snapshots: AtomicU64,
    /// Snapshots that failed (not fatal: the log keeps everything).
    pub snapshot_errors: AtomicU64,
    /// Time each log fsync took (written by the core only).
    pub fsync: crate::stats::histogram::Histogram,
}
