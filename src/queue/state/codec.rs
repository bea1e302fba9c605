//! Bytes for the write-ahead log and snapshots: one [`Op`] with its time as a log
//! record's payload, and the whole [`QueueState`](super::QueueState) as a snapshot's
//! payload.
//! Little-endian, fixed widths, strings as a u32 length + UTF-8. Framing (lengths, CRCs,
//! files) is `queue::durability::wal`'s and `::snapshot`'s business, not this file's.
//!
//! The map: this file holds the op tags, [`encode_op`] and [`decode_op`]; `bytes.rs`
//! (a leaf) holds [`CodecError`] and the fixed-width writer and reader; `snapshot.rs`
//! holds `QueueState::encode_snapshot` and `QueueState::decode_snapshot`, one function
//! per section.
//!
//! Invariants:
//! - `decode_op(encode_op(op, t)) == (op, t)` for every op; encoding appends to a
//!   caller's buffer and allocates nothing once the buffer has grown;
//! - the snapshot encoding is canonical: queues in id order, places in lane order, grace
//!   entries, grants and used `jti`s in their expiry-queue order, stale expiry entries
//!   left out, lane seqs renumbered on decode. States that behave the same encode to the
//!   same bytes, and `encode(decode(encode(s))) == encode(s)`;
//! - decoding never panics and never trusts a count: bad input is a [`CodecError`];
//! - the snapshot ends with the grant holders (connection, returned by HTTP `admit`), one
//!   per grant in the grants' order. Snapshots written before that section existed end
//!   after the used `jti`s and still decode: their grants get no holder and count as
//!   returned (a `leave` then never voids them; use or expiry still ends them).
//! - format history: the tombstone of an expired queue is a queue record with an empty
//!   name (which no queue can have) followed by its own fields, and [`Op::ExpireQueue`]
//!   is a new tag. Payloads written before queues could expire contain neither, so they
//!   decode unchanged; nothing else changed. [`Op::Remove`] (an operator's removal) is
//!   a later new tag (12); older logs never contain it and decode unchanged.
//!   [`Op::Resubmit`] (13: queue name, user, key, connection) and [`Op::SeqFloor`] (14:
//!   queue id, floor) came with cluster failover: new tags, nothing else changed, so
//!   older logs decode unchanged (a log with them cannot be read by an older build).

pub use self::bytes::CodecError;
use self::bytes::{Put, Reader};
use super::Op;

mod bytes;
mod snapshot;

const TAG_JOIN: u8 = 1;
const TAG_DISCONNECT: u8 = 2;
const TAG_LEAVE: u8 = 3;
const TAG_ADMIT: u8 = 4;
const TAG_SET_RATE: u8 = 5;
const TAG_SET_CAPACITY: u8 = 6;
const TAG_PAUSE: u8 = 7;
const TAG_CONSUME_JTI: u8 = 8;
const TAG_TICK: u8 = 9;
const TAG_RESTART: u8 = 10;
const TAG_EXPIRE_QUEUE: u8 = 11;
const TAG_REMOVE: u8 = 12;
const TAG_RESUBMIT: u8 = 13;
const TAG_SEQ_FLOOR: u8 = 14;

/// Appends the payload of a log record for `op` applied at `now_ms`.
pub fn encode_op(op: &Op, now_ms: u64, out: &mut Vec<u8>) {
    out.u64(now_ms);
    match op {
        Op::Join {
            queue,
            user,
            prio,
            conn,
        } => {
            out.u8(TAG_JOIN);
            out.str(queue);
            out.u64(*user);
            out.u8(u8::from(*prio));
            out.conn(*conn);
        }
        Op::Disconnect { queue, user, conn } => {
            out.u8(TAG_DISCONNECT);
            out.u32(*queue);
            out.u64(*user);
            out.conn(*conn);
        }
        Op::Leave { queue, user, conn } => {
            out.u8(TAG_LEAVE);
            out.u32(*queue);
            out.u64(*user);
            out.conn(*conn);
        }
        Op::Admit { queue, count } => {
            out.u8(TAG_ADMIT);
            out.u32(*queue);
            out.u64(*count);
        }
        Op::SetRate { queue, per_second } => {
            out.u8(TAG_SET_RATE);
            out.u32(*queue);
            out.f64(*per_second);
        }
        Op::SetCapacity {
            queue,
            online,
            capacity,
        } => {
            out.u8(TAG_SET_CAPACITY);
            out.u32(*queue);
            out.u64(*online);
            out.u64(*capacity);
        }
        Op::Pause { queue, paused } => {
            out.u8(TAG_PAUSE);
            out.u32(*queue);
            out.u8(u8::from(*paused));
        }
        Op::ConsumeJti { jti, exp } => {
            out.u8(TAG_CONSUME_JTI);
            out.u64(*exp);
            out.str(jti);
        }
        Op::Tick => out.u8(TAG_TICK),
        Op::ExpireQueue { queue } => {
            out.u8(TAG_EXPIRE_QUEUE);
            out.u32(*queue);
        }
        Op::Restart => out.u8(TAG_RESTART),
        Op::Remove { .. } | Op::Resubmit { .. } | Op::SeqFloor { .. } => encode_later_op(op, out),
    }
}

/// The ops added later (tags 12, 13, 14).
fn encode_later_op(op: &Op, out: &mut Vec<u8>) {
    match op {
        Op::Remove { queue, user } => {
            out.u8(TAG_REMOVE);
            out.u32(*queue);
            out.u64(*user);
        }
        Op::Resubmit {
            queue,
            user,
            key,
            conn,
        } => {
            out.u8(TAG_RESUBMIT);
            out.str(queue);
            out.u64(*user);
            out.u64(*key);
            out.conn(*conn);
        }
        Op::SeqFloor { queue, floor } => {
            out.u8(TAG_SEQ_FLOOR);
            out.u32(*queue);
            out.u64(*floor);
        }
        _ => {}
    }
}

/// Decodes the failover ops; `None` for any other tag.
fn decode_failover_op(tag: u8, r: &mut Reader<'_>) -> Result<Option<Op>, CodecError> {
    Ok(Some(match tag {
        TAG_RESUBMIT => Op::Resubmit {
            queue: r.str()?.to_string(),
            user: r.u64()?,
            key: r.u64()?,
            conn: r.conn()?,
        },
        TAG_SEQ_FLOOR => Op::SeqFloor {
            queue: r.u32()?,
            floor: r.u64()?,
        },
        _ => return Ok(None),
    }))
}

/// The op and its time from a log record's payload.
pub fn decode_op(payload: &[u8]) -> Result<(Op, u64), CodecError> {
    let mut r = Reader::new(payload);
    let now_ms = r.u64()?;
    let tag = r.u8()?;
    let op = match tag {
        TAG_JOIN => Op::Join {
            queue: r.str()?.to_string(),
            user: r.u64()?,
            prio: r.bool()?,
            conn: r.conn()?,
        },
        TAG_DISCONNECT => Op::Disconnect {
            queue: r.u32()?,
            user: r.u64()?,
            conn: r.conn()?,
        },
        TAG_LEAVE => Op::Leave {
            queue: r.u32()?,
            user: r.u64()?,
            conn: r.conn()?,
        },
        TAG_ADMIT => Op::Admit {
            queue: r.u32()?,
            count: r.u64()?,
        },
        TAG_SET_RATE => Op::SetRate {
            queue: r.u32()?,
            per_second: r.f64()?,
        },
        TAG_SET_CAPACITY => Op::SetCapacity {
            queue: r.u32()?,
            online: r.u64()?,
            capacity: r.u64()?,
        },
        TAG_PAUSE => Op::Pause {
            queue: r.u32()?,
            paused: r.bool()?,
        },
        TAG_CONSUME_JTI => {
            let exp = r.u64()?;
            Op::ConsumeJti {
                jti: r.str()?.to_string(),
                exp,
            }
        }
        TAG_TICK => Op::Tick,
        TAG_EXPIRE_QUEUE => Op::ExpireQueue { queue: r.u32()? },
        TAG_RESTART => Op::Restart,
        TAG_REMOVE => Op::Remove {
            queue: r.u32()?,
            user: r.u64()?,
        },
        _ => match decode_failover_op(tag, &mut r)? {
            Some(op) => op,
            None => {
                return Err(CodecError {
                    what: "unknown op tag",
                    at: 8,
                })
            }
        },
    };
    r.end()?;
    Ok((op, now_ms))
}
