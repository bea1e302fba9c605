//! The write-ahead log: append-only files `wal-<gen>.log` in the durability directory.
//! A file is a 20-byte header (magic `QSWAL\0\0\x01`, its generation as u64 LE, a CRC32
//! of those 16 bytes as u32 LE) and then records:
//!
//! ```text
//! +-----------------+-----------------------------------+---------------------------+
//! | len: u32 LE     | crc: u32 LE = CRC32(len ++ payload)| payload: len bytes        |
//! +-----------------+-----------------------------------+---------------------------+
//! ```
//!
//! The payload is one op and its time (`state::codec::encode_op`). The writer encodes
//! records into one reused buffer and hands it to the OS in one `write` per core round.
//!
//! Invariants:
//! - a file is only appended to, by one writer, and never after a torn record (start-up
//!   always opens a new generation);
//! - a record that fails its checks is a *torn tail* only when no valid record follows
//!   it anywhere in the file, and only in the last file; anything else is corruption,
//!   reported with the file and the byte offset of the bad record;
//! - this file imports only [`super::shared`] (and the op codec of `queue::state`),
//!   never `snapshot` or the durability root: they build on it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::shared::RecoveryError;
use crate::queue::state::codec::{decode_op, encode_op};
use crate::queue::state::Op;

/// Bytes of the file header.
pub const HEADER_BYTES: usize = 20;
/// Bytes before a record's payload (len + crc).
const RECORD_HEADER_BYTES: usize = 8;
/// Magic at the start of every log file (format version in the last byte).
const MAGIC: &[u8; 8] = b"QSWAL\0\0\x01";
/// Smallest payload: time (8) + tag (1).
const MIN_PAYLOAD_BYTES: usize = 9;
/// Largest payload accepted when reading (ops are small; a bigger length is corrupt).
const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// The file name of log generation `gen`.
pub fn file_name(gen: u64) -> String {
    format!("wal-{gen:020}.log")
}

/// The generation a log file name stands for, if it is one.
fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Every log file in `dir`, by generation, ascending.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, RecoveryError> {
    let io_err = |source| RecoveryError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut logs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        if let Some(gen) = entry.file_name().to_str().and_then(parse_name) {
            logs.push((gen, entry.path()));
        }
    }
    logs.sort();
    Ok(logs)
}

/// fsyncs a directory, so names created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn header(gen: u64) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&gen.to_le_bytes());
    let crc = crc32fast::hash(&h[..16]);
    h[16..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Appends records to one log file.
#[derive(Debug)]
pub struct LogWriter {
    /// The file, opened for append.
    file: File,
    /// Its generation.
    gen: u64,
    /// Records encoded and not yet written (reused: cleared, never shrunk).
    buf: Vec<u8>,
    /// Bytes were written to the file since the last fsync.
    unsynced: bool,
}

impl LogWriter {
    /// Creates log generation `gen` in `dir` (which must not have it), writes its header
    /// and makes file and name durable.
    pub fn create(dir: &Path, gen: u64) -> io::Result<LogWriter> {
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(dir.join(file_name(gen)))?;
        file.write_all(&header(gen))?;
        file.sync_all()?;
        sync_dir(dir)?;
        Ok(LogWriter {
            file,
            gen,
            buf: Vec::with_capacity(64 * 1024),
            unsynced: false,
        })
    }

    /// This file's generation.
    pub fn gen(&self) -> u64 {
        self.gen
    }

    /// Encodes one record into the buffer (no I/O, no allocation once the buffer grew).
    pub fn append(&mut self, op: &Op, now_ms: u64) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
        encode_op(op, now_ms, &mut self.buf);
        let len = (self.buf.len() - start - RECORD_HEADER_BYTES) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&len.to_le_bytes());
        crc.update(&self.buf[start + RECORD_HEADER_BYTES..]);
        self.buf[start + 4..start + 8].copy_from_slice(&crc.finalize().to_le_bytes());
    }

    /// Bytes encoded and not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }

    /// True when written bytes await an fsync.
    pub fn unsynced(&self) -> bool {
        self.unsynced
    }

    /// Hands the buffered records to the OS in one write.
    pub fn write_out(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.buf)?;
        self.buf.clear();
        self.unsynced = true;
        Ok(())
    }

    /// Writes out and fsyncs (data and the size needed to read it back).
    pub fn sync(&mut self) -> io::Result<()> {
        self.write_out()?;
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }
}

/// What reading one log file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Valid records, all passed to the callback.
    pub records: u64,
    /// A torn tail that was dropped: (byte offset, bytes dropped).
    pub torn: Option<(u64, u64)>,
}

/// Checks the record at `at`; its payload range when it is whole and its CRC matches.
fn record_at(bytes: &[u8], at: usize) -> Option<std::ops::Range<usize>> {
    let head = bytes.get(at..at + RECORD_HEADER_BYTES)?;
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
    if !(MIN_PAYLOAD_BYTES..=MAX_PAYLOAD_BYTES).contains(&len) {
        return None;
    }
    let body = at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + len;
    let payload = bytes.get(body.clone())?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&head[..4]);
    hasher.update(payload);
    (hasher.finalize() == crc).then_some(body)
}

/// Reads log file `path`, which must be generation `gen`, passing each record's op and
/// time to `apply` in order. `last`: this is the newest file, where a torn tail is
/// expected after a crash (and dropped); elsewhere it is corruption.
pub fn read(
    path: &Path,
    gen: u64,
    last: bool,
    mut apply: impl FnMut(Op, u64),
) -> Result<ReadOutcome, RecoveryError> {
    let bytes = std::fs::read(path).map_err(|source| RecoveryError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let corrupt = |offset: usize, reason: String| RecoveryError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let header_ok = bytes.len() >= HEADER_BYTES && bytes[..HEADER_BYTES] == header(gen);
    if !header_ok {
        // A crash while the file was being created leaves a short or zeroed header.
        let unwritten = bytes.len() < HEADER_BYTES || bytes.iter().all(|&b| b == 0);
        if last && unwritten {
            return Ok(ReadOutcome {
                records: 0,
                torn: Some((0, bytes.len() as u64)),
            });
        }
        return Err(corrupt(0, format!("not a log header for generation {gen}")));
    }
    let mut at = HEADER_BYTES;
    let mut records = 0;
    while at < bytes.len() {
        let Some(body) = record_at(&bytes, at) else {
            let follows = (at + 1..bytes.len()).find(|&y| record_at(&bytes, y).is_some());
            if let Some(next) = follows {
                return Err(corrupt(
                    at,
                    format!("bad record (a valid one follows at byte {next})"),
                ));
            }
            if !last {
                return Err(corrupt(
                    at,
                    "torn record in a log that is not the newest".into(),
                ));
            }
            return Ok(ReadOutcome {
                records,
                torn: Some((at as u64, (bytes.len() - at) as u64)),
            });
        };
        let (op, now_ms) = decode_op(&bytes[body.clone()])
            .map_err(|e| corrupt(at, format!("record does not decode: {e}")))?;
        apply(op, now_ms);
        records += 1;
        at = body.end;
    }
    Ok(ReadOutcome {
        records,
        torn: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::ConnRef;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("qs-wal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn ops() -> Vec<(Op, u64)> {
        let conn = ConnRef {
            loop_id: 1,
            session: 99,
        };
        vec![
            (
                Op::Join {
                    queue: "q".into(),
                    user: 5,
                    prio: true,
                    conn,
                },
                10,
            ),
            (Op::Tick, 20),
            (
                Op::ConsumeJti {
                    jti: "ab".into(),
                    exp: 7,
                },
                30,
            ),
            (
                Op::Leave {
                    queue: 0,
                    user: 5,
                    conn,
                },
                40,
            ),
        ]
    }

    fn write(d: &Path, gen: u64) -> PathBuf {
        let mut w = LogWriter::create(d, gen).unwrap();
        for (op, t) in ops() {
            w.append(&op, t);
        }
        w.sync().unwrap();
        d.join(file_name(gen))
    }

    fn read_all(
        path: &Path,
        gen: u64,
        last: bool,
    ) -> Result<(Vec<(Op, u64)>, ReadOutcome), RecoveryError> {
        let mut got = Vec::new();
        let out = read(path, gen, last, |op, t| got.push((op, t)))?;
        Ok((got, out))
    }

    #[test]
    fn records_round_trip() {
        let d = dir("roundtrip");
        let path = write(&d, 3);
        let (got, out) = read_all(&path, 3, true).unwrap();
        assert_eq!(got, ops());
        assert_eq!(out.torn, None);
        assert_eq!(list(&d).unwrap(), vec![(3, path)]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn torn_tail_is_dropped_in_the_newest_file_only() {
        let d = dir("torn");
        let path = write(&d, 1);
        let full = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(full - 3).unwrap();
        let (got, out) = read_all(&path, 1, true).unwrap();
        assert_eq!(got, ops()[..3].to_vec());
        let (offset, dropped) = out.torn.unwrap();
        assert_eq!(offset + dropped, full - 3);
        let e = read_all(&path, 1, false).unwrap_err();
        assert!(
            matches!(e, RecoveryError::Corrupt { offset: o, .. } if o == offset),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn corruption_before_the_tail_names_the_offset() {
        let d = dir("corrupt");
        let path = write(&d, 1);
        let mut bytes = std::fs::read(&path).unwrap();
        // Flip a byte inside the second record's payload.
        let first_len = u32::from_le_bytes(bytes[20..24].try_into().unwrap()) as usize;
        let second = HEADER_BYTES + RECORD_HEADER_BYTES + first_len;
        bytes[second + RECORD_HEADER_BYTES + 2] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let e = read_all(&path, 1, true).unwrap_err();
        match &e {
            RecoveryError::Corrupt {
                path: p, offset, ..
            } => {
                assert_eq!(p, &path);
                assert_eq!(*offset, second as u64);
            }
            other => panic!("{other}"),
        }
        assert!(
            e.to_string().contains(&format!("byte offset {second}")),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn zeroed_or_short_header_is_an_empty_newest_log() {
        let d = dir("header");
        let path = d.join(file_name(4));
        std::fs::write(&path, [0u8; 7]).unwrap();
        let (got, out) = read_all(&path, 4, true).unwrap();
        assert!(got.is_empty());
        assert_eq!(out.torn, Some((0, 7)));
        std::fs::write(&path, b"garbage garbage garbage").unwrap();
        assert!(read_all(&path, 4, true).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
