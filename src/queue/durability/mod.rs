//! Durability of the queue core (see `docs/durability.md`): recovery at start (snapshot,
//! log replay, then [`Op::Restart`]), and while running the log with its fsync policy,
//! periodic and final snapshots, and the status the rest of the server can read.
//!
//! Files in `durability.dir`: `snapshot.bin` (see [`snapshot`]), `wal-<gen>.log` (see
//! [`wal`]) and `lock` (held with `flock` so two servers never share a directory).
//!
//! The module map (imports go one way: `shared` <- `wal` <- `snapshot` <- this file):
//! - this file: [`open`] and [`recover`] (start-up), [`Durability`] (append, commit
//!   with the fsync policy, periodic and final snapshots, degraded after a log error),
//!   [`logged`] (which ops go to the log);
//! - [`wal`]: the append-only log files, their record framing, torn-tail rules;
//! - [`snapshot`]: `snapshot.bin`, its header and atomic replacement, the writer
//!   thread, deleting the logs a snapshot covers;
//! - [`shared`]: [`RecoveryError`] and [`DurabilityStatus`], used by all three (a leaf:
//!   it imports none of them).
//!
//! Invariants:
//! - in every policy the records of a round reach the OS (one `write`) before anything
//!   that depends on them leaves the core, so a killed process loses nothing it answered;
//! - with `fsync = "always"`, [`Durability::commit`] with output returns `Ok` only once
//!   every record appended so far is on disk (one fsync per round: group commit);
//! - after any error of the log nothing more is written and every later commit fails:
//!   the core enters degraded mode. The files then hold a prefix of history, and every
//!   prefix is a state the machine could have been in;
//! - start-up rebuilds exactly the state of the last record on disk, or refuses with the
//!   file and byte offset at fault; then it writes a snapshot and opens a new log
//!   generation, so a log is never appended to after a torn record.

pub mod shared;
pub mod snapshot;
pub mod wal;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use self::shared::{DurabilityStatus, RecoveryError};
use self::wal::LogWriter;
use crate::config::{DurabilityConfig, FsyncPolicy};
use crate::msg::JoinError;
use crate::queue::state::{Applied, Limits, Op, QueueState};

/// Buffered quiet records (rounds with nothing to answer) are written once they reach
/// this many bytes; rounds with output write at once.
const QUIET_WRITE_BYTES: usize = 64 * 1024;
/// Longest time between two fsyncs with `fsync = "everysec"`.
const EVERYSEC: Duration = Duration::from_secs(1);

/// What [`recover`] found on disk.
#[derive(Debug)]
pub struct Recovered {
    /// The state after the last valid record (no [`Op::Restart`] applied).
    pub state: QueueState,
    /// First log generation after the ones replayed.
    pub next_gen: u64,
    /// Records replayed.
    pub records: u64,
    /// A torn tail dropped: (file, byte offset, bytes).
    pub torn: Option<(PathBuf, u64, u64)>,
}

/// Reads the snapshot and the logs after it in `dir`, and replays them; `None` when the
/// directory holds neither. Read-only: usable on a live server's directory by tools.
pub fn recover(dir: &Path, limits: Limits) -> Result<Option<Recovered>, RecoveryError> {
    let logs = wal::list(dir)?;
    let Some((gen, payload, path)) = snapshot::read(dir)? else {
        if let Some((_, first)) = logs.first() {
            return Err(RecoveryError::Inconsistent {
                path: first.clone(),
                reason: format!("a log without {}", snapshot::FILE_NAME),
            });
        }
        return Ok(None);
    };
    let mut state =
        QueueState::decode_snapshot(limits, &payload).map_err(|e| RecoveryError::Corrupt {
            path,
            offset: snapshot::file_offset(e.at),
            reason: e.what.to_string(),
        })?;
    let logs: Vec<_> = logs.into_iter().filter(|&(g, _)| g >= gen).collect();
    let mut next_gen = gen;
    let mut records = 0;
    let mut torn = None;
    let mut events = Vec::new();
    for (i, (g, path)) in logs.iter().enumerate() {
        if *g != next_gen {
            return Err(RecoveryError::Inconsistent {
                path: dir.join(wal::file_name(next_gen)),
                reason: format!("missing, yet {} exists", path.display()),
            });
        }
        let last = i + 1 == logs.len();
        let out = wal::read(path, *g, last, |op, now_ms| {
            state.apply(&op, now_ms, &mut events);
            events.clear();
        })?;
        records += out.records;
        if let Some((offset, bytes)) = out.torn {
            torn = Some((path.clone(), offset, bytes));
        }
        next_gen += 1;
    }
    Ok(Some(Recovered {
        state,
        next_gen,
        records,
        torn,
    }))
}

/// Whether an op that had this result goes to the log: every op that may have changed
/// the state (a logged op that changed nothing replays as nothing).
pub fn logged(applied: &Applied) -> bool {
    !matches!(
        applied,
        Applied::UnknownQueue
            | Applied::Invalid(_)
            | Applied::Consumed(false)
            | Applied::Removed(None)
            | Applied::JoinFailed(JoinError::UnknownQueue)
    )
}

/// Takes the directory's lock (released when the file closes, also on a crash).
fn lock(dir: &Path) -> Result<File, RecoveryError> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| RecoveryError::Io {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock(2) on a descriptor this function owns; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(RecoveryError::Locked { path });
    }
    Ok(file)
}

/// The queue core's log, snapshots and status.
#[derive(Debug)]
pub struct Durability {
    /// The durability directory.
    dir: PathBuf,
    /// When the log is fsynced.
    policy: FsyncPolicy,
    /// The newest log generation, appended to.
    log: LogWriter,
    /// Shared with whoever reports health and metrics.
    status: Arc<DurabilityStatus>,
    /// Period of snapshots.
    interval: Duration,
    /// When the next periodic snapshot is due.
    next_snapshot: Instant,
    /// Last log fsync (for `everysec`).
    last_sync: Instant,
    /// Writes periodic snapshots off the core thread.
    writer: snapshot::Writer,
    /// Records appended and not yet counted in `status`.
    appended: u64,
    /// Size of the last snapshot, to size the next one's buffer in one allocation.
    snapshot_bytes: usize,
    /// The log failed once: nothing more is written.
    failed: bool,
    /// The directory lock, held for the life of this value.
    _lock: File,
}

/// Opens durability per `cfg`: recovers the state from `cfg.dir` (or makes a new one
/// with the configured queues), applies [`Op::Restart`] at `now_ms` to a recovered one,
/// writes a snapshot and opens a new log generation. With durability off, a fresh state
/// and `None`.
pub fn open(
    cfg: &DurabilityConfig,
    limits: Limits,
    queues: &[(String, u64, f64)],
    now_ms: u64,
) -> Result<(QueueState, Option<Durability>), RecoveryError> {
    if !cfg.enabled() {
        return Ok((QueueState::new(limits, queues, rand::random()), None));
    }
    let dir = cfg.dir.clone();
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RecoveryError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let lock = lock(&dir)?;
    snapshot::remove_temp(&dir).map_err(io_err(&dir.join(snapshot::TEMP_NAME)))?;
    let (state, next_gen) = match recover(&dir, limits.clone())? {
        Some(r) => {
            if let Some((path, offset, bytes)) = &r.torn {
                tracing::warn!(file = %path.display(), offset, bytes,
                    "dropped a torn record at the end of the log (a crash during a write)");
            }
            let mut state = r.state;
            let added = state.configure_queues(queues);
            state.apply(&Op::Restart, now_ms, &mut Vec::new());
            let places: u64 = state.queues().iter().map(|q| q.waiting()).sum();
            tracing::info!(dir = %dir.display(), records = r.records, places,
                queues_added = added, "recovered the queues; every place is in reconnect grace");
            (state, r.next_gen)
        }
        None => {
            tracing::info!(dir = %dir.display(), "durability on, new directory");
            (QueueState::new(limits, queues, rand::random()), 1)
        }
    };
    let mut payload = Vec::new();
    state.encode_snapshot(&mut payload);
    snapshot::write(&dir, next_gen, &payload).map_err(io_err(&dir.join(snapshot::FILE_NAME)))?;
    snapshot::delete_covered_logs(&dir, next_gen).map_err(io_err(&dir))?;
    let log =
        LogWriter::create(&dir, next_gen).map_err(io_err(&dir.join(wal::file_name(next_gen))))?;
    let status = Arc::new(DurabilityStatus::default());
    status.snapshots.store(1, Ordering::Relaxed);
    let writer = snapshot::Writer::spawn(dir.clone(), status.clone()).map_err(io_err(&dir))?;
    let interval = Duration::from_secs(cfg.snapshot_interval_secs);
    let durability = Durability {
        dir,
        policy: cfg.fsync,
        log,
        status,
        interval,
        next_snapshot: Instant::now() + interval,
        last_sync: Instant::now(),
        writer,
        appended: 0,
        snapshot_bytes: payload.len(),
        failed: false,
        _lock: lock,
    };
    Ok((state, Some(durability)))
}

impl Durability {
    /// The status shared with health and metrics.
    pub fn status(&self) -> Arc<DurabilityStatus> {
        self.status.clone()
    }

    /// Buffers the record of `op`, applied at `now_ms` (no I/O).
    pub fn append(&mut self, op: &Op, now_ms: u64) {
        if !self.failed {
            self.log.append(op, now_ms);
            self.appended += 1;
        }
    }

    /// Ends a round: writes the buffered records when the round has `output` (or enough
    /// quiet records piled up) and fsyncs as the policy says. `Ok` means everything the
    /// round's output depends on is as durable as the policy promises.
    pub fn commit(&mut self, output: bool) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("the log failed earlier"));
        }
        let result = self.commit_inner(output);
        self.status
            .records
            .fetch_add(std::mem::take(&mut self.appended), Ordering::Relaxed);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn commit_inner(&mut self, output: bool) -> io::Result<()> {
        if output || self.log.pending_bytes() >= QUIET_WRITE_BYTES {
            self.log.write_out()?;
        }
        let sync = match self.policy {
            FsyncPolicy::Always => output && self.log.unsynced(),
            FsyncPolicy::Everysec => self.log.unsynced() && self.last_sync.elapsed() >= EVERYSEC,
            FsyncPolicy::None => false,
        };
        if sync {
            self.sync()?;
        }
        Ok(())
    }

    /// Writes out and fsyncs the log.
    fn sync(&mut self) -> io::Result<()> {
        if self.status.fail_next_sync.swap(false, Ordering::Relaxed) {
            return Err(io::Error::other("injected fsync failure (test hook)"));
        }
        let started = Instant::now();
        self.log.sync()?;
        self.last_sync = Instant::now();
        self.status.fsync.observe(self.last_sync - started);
        self.status.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// True when a periodic snapshot should be taken now.
    pub fn snapshot_due(&self, now: Instant) -> bool {
        !self.failed && now >= self.next_snapshot && !self.writer.busy()
    }

    /// Takes a periodic snapshot of `state`, which must include every record appended:
    /// the log is fsynced and a new generation opened; the encoded state goes to the
    /// writer thread, which replaces the snapshot and deletes the logs it covers. An
    /// error here is an error of the log (the caller degrades).
    pub fn snapshot(&mut self, state: &QueueState) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("the log failed earlier"));
        }
        self.next_snapshot = Instant::now() + self.interval;
        let result = self.rotate();
        if result.is_err() {
            self.failed = true;
        }
        let next_gen = result?;
        let mut payload = Vec::with_capacity(self.snapshot_bytes + self.snapshot_bytes / 4);
        state.encode_snapshot(&mut payload);
        self.snapshot_bytes = payload.len();
        self.writer.submit(payload, next_gen);
        Ok(())
    }

    /// fsyncs the current log and opens the next generation; returns its number.
    fn rotate(&mut self) -> io::Result<u64> {
        self.sync()?;
        let next_gen = self.log.gen() + 1;
        self.log = LogWriter::create(&self.dir, next_gen)?;
        Ok(next_gen)
    }

    /// At shutdown: waits for a snapshot in progress, then writes the final one (the
    /// next start replays no log). Skipped when the log failed: the next start replays
    /// what reached the disk.
    pub fn close(mut self, state: &QueueState) -> io::Result<()> {
        self.writer.finish();
        if self.failed {
            return Err(io::Error::other(
                "the log failed earlier: no final snapshot",
            ));
        }
        self.sync()?;
        let next_gen = self.log.gen() + 1;
        let mut payload = Vec::new();
        state.encode_snapshot(&mut payload);
        snapshot::write(&self.dir, next_gen, &payload)?;
        snapshot::delete_covered_logs(&self.dir, next_gen)?;
        self.status.snapshots.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
