//! Snapshots: the whole queue state in one file, `snapshot.bin`, replaced atomically.
//!
//! ```text
//! magic "QSSNAP\0\x01" | next_gen: u64 LE | len: u64 LE | crc: u32 LE | payload (len bytes)
//! ```
//!
//! `crc` is the CRC32 of the 24 bytes before it and the payload; `next_gen` is the first
//! log generation *not* covered: start-up loads the snapshot, then replays logs
//! `next_gen, next_gen + 1, ...`. Older logs are leftovers and are deleted.
//!
//! Invariants:
//! - a snapshot is written to `snapshot.bin.tmp`, fsynced, renamed over `snapshot.bin`,
//!   and the directory fsynced; only then are the logs it covers deleted. A crash at any
//!   step leaves the old snapshot with every log it needs, or the new one;
//! - a snapshot that fails its checks is never guessed at: start-up refuses;
//! - this file imports [`super::shared`] and [`super::wal`] (log names, directory
//!   fsync), never the durability root, which builds on it.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use super::shared::{DurabilityStatus, RecoveryError};
use super::wal;

/// The snapshot's file name.
pub const FILE_NAME: &str = "snapshot.bin";
/// Where a snapshot is written before it is renamed.
pub const TEMP_NAME: &str = "snapshot.bin.tmp";
/// Bytes before the payload.
const HEADER_BYTES: usize = 28;
/// Magic at the start of a snapshot (format version in the last byte).
const MAGIC: &[u8; 8] = b"QSSNAP\0\x01";

/// Writes a snapshot of `payload`, covering every log before `next_gen`, atomically.
pub fn write(dir: &Path, next_gen: u64, payload: &[u8]) -> io::Result<()> {
    let mut head = [0u8; HEADER_BYTES];
    head[..8].copy_from_slice(MAGIC);
    head[8..16].copy_from_slice(&next_gen.to_le_bytes());
    head[16..24].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head[..24]);
    crc.update(payload);
    head[24..].copy_from_slice(&crc.finalize().to_le_bytes());
    let temp = dir.join(TEMP_NAME);
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&temp)?;
    file.write_all(&head)?;
    file.write_all(payload)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, dir.join(FILE_NAME))?;
    wal::sync_dir(dir)
}

/// The snapshot in `dir`, if any: (next_gen, payload, path).
pub fn read(dir: &Path) -> Result<Option<(u64, Vec<u8>, PathBuf)>, RecoveryError> {
    let path = dir.join(FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(RecoveryError::Io { path, source }),
    };
    let corrupt = |offset: u64, reason: &str| RecoveryError::Corrupt {
        path: path.clone(),
        offset,
        reason: reason.to_string(),
    };
    if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
        return Err(corrupt(0, "not a snapshot header"));
    }
    let next_gen = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    if len != (bytes.len() - HEADER_BYTES) as u64 {
        return Err(corrupt(16, "payload length does not match the file size"));
    }
    let crc = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..24]);
    hasher.update(&bytes[HEADER_BYTES..]);
    if hasher.finalize() != crc {
        return Err(corrupt(24, "checksum mismatch"));
    }
    Ok(Some((next_gen, bytes[HEADER_BYTES..].to_vec(), path)))
}

/// Byte offset in the snapshot file of byte `at` of its payload (for error messages).
pub fn file_offset(payload_at: usize) -> u64 {
    (HEADER_BYTES + payload_at) as u64
}

/// Deletes every log older than `next_gen` (they are covered by a durable snapshot).
pub fn delete_covered_logs(dir: &Path, next_gen: u64) -> io::Result<()> {
    let logs = wal::list(dir).map_err(|e| io::Error::other(e.to_string()))?;
    for (gen, path) in logs {
        if gen < next_gen {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}

/// One snapshot for the writer thread.
struct Job {
    /// Encoded state.
    payload: Vec<u8>,
    /// First log generation not covered.
    next_gen: u64,
}

/// Writes periodic snapshots on its own thread, so the queue core only pays for the
/// encoding, not for the write and fsyncs.
#[derive(Debug)]
pub struct Writer {
    /// Jobs; dropped to stop the thread.
    tx: Option<Sender<Job>>,
    /// A job is being written.
    busy: Arc<AtomicBool>,
    /// The thread.
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread for `dir`.
    pub fn spawn(dir: PathBuf, status: Arc<DurabilityStatus>) -> io::Result<Writer> {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let done = busy.clone();
        let thread = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                for job in rx {
                    let result = write(&dir, job.next_gen, &job.payload)
                        .and_then(|()| delete_covered_logs(&dir, job.next_gen));
                    match result {
                        Ok(()) => {
                            status.snapshots.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(bytes = job.payload.len(), "snapshot written");
                        }
                        Err(e) => {
                            status.snapshot_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(error = %e, dir = %dir.display(),
                                "snapshot failed; the log keeps everything and grows until one succeeds");
                        }
                    }
                    done.store(false, Ordering::Release);
                }
            })?;
        Ok(Writer {
            tx: Some(tx),
            busy,
            thread: Some(thread),
        })
    }

    /// True while a snapshot is being written.
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// Hands a snapshot to the thread; the caller checked [`Writer::busy`].
    pub fn submit(&self, payload: Vec<u8>, next_gen: u64) {
        self.busy.store(true, Ordering::Release);
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(Job { payload, next_gen }).is_ok());
        if !sent {
            self.busy.store(false, Ordering::Release);
        }
    }

    /// Waits for the job in progress and stops the thread.
    pub fn finish(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Removes a temp file left by a crash during a snapshot.
pub fn remove_temp(dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(dir.join(TEMP_NAME)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
