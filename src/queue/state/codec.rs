//! Bytes for the write-ahead log and snapshots: one [`Op`] with its time as a log
//! record's payload, and the whole [`QueueState`] as a snapshot's payload.
//! Little-endian, fixed widths, strings as a u32 length + UTF-8. Framing (lengths, CRCs,
//! files) is `queue::durability::wal`'s and `::snapshot`'s business, not this file's.
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

use std::fmt;

use super::{Grant, Limits, Op, Place, Queue, QueueState};
use crate::msg::{ConnRef, QueueId};
use crate::queue::pacing::{CapacityReport, RateMeter};
use crate::queue::rank::place_key;

/// Bytes that cannot be decoded: what was expected, and where in the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError {
    /// What was wrong.
    pub what: &'static str,
    /// Byte offset within the payload.
    pub at: usize,
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (payload byte {})", self.what, self.at)
    }
}

impl std::error::Error for CodecError {}

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

/// Tombstone kinds in a snapshot.
const TOMBSTONE_FREE: u8 = 0;
const TOMBSTONE_QUARANTINED: u8 = 1;

/// Appends fixed-width values to a byte buffer.
trait Put {
    fn u8(&mut self, v: u8);
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    fn u64(&mut self, v: u64);
    fn f64(&mut self, v: f64);
    fn str(&mut self, v: &str);
    fn conn(&mut self, c: ConnRef);
    fn opt_conn(&mut self, c: Option<ConnRef>);
}

impl Put for Vec<u8> {
    fn u8(&mut self, v: u8) {
        self.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    fn str(&mut self, v: &str) {
        self.u32(u32::try_from(v.len()).expect("string under 4 GiB"));
        self.extend_from_slice(v.as_bytes());
    }
    fn conn(&mut self, c: ConnRef) {
        self.u16(c.loop_id);
        self.u64(c.session);
    }
    fn opt_conn(&mut self, c: Option<ConnRef>) {
        match c {
            Some(c) => {
                self.u8(1);
                self.conn(c);
            }
            None => self.u8(0),
        }
    }
}

/// Reads fixed-width values from a payload.
struct Reader<'a> {
    /// The payload.
    bytes: &'a [u8],
    /// Next byte to read.
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    fn fail<T>(&self, what: &'static str) -> Result<T, CodecError> {
        Err(CodecError { what, at: self.at })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.bytes.len() - self.at < n {
            return self.fail("payload ends early");
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn f64(&mut self) -> Result<f64, CodecError> {
        Ok(f64::from_bits(self.u64()?))
    }
    fn bool(&mut self) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => self.fail("flag is neither 0 nor 1"),
        }
    }
    fn str(&mut self) -> Result<&'a str, CodecError> {
        let n = self.u32()? as usize;
        let at = self.at;
        std::str::from_utf8(self.take(n)?).map_err(|_| CodecError {
            what: "string is not UTF-8",
            at,
        })
    }
    fn conn(&mut self) -> Result<ConnRef, CodecError> {
        Ok(ConnRef {
            loop_id: self.u16()?,
            session: self.u64()?,
        })
    }
    fn opt_conn(&mut self) -> Result<Option<ConnRef>, CodecError> {
        Ok(if self.bool()? {
            Some(self.conn()?)
        } else {
            None
        })
    }
    fn end(&self) -> Result<(), CodecError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            self.fail("bytes after the end")
        }
    }
}

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
        Op::Remove { queue, user } => {
            out.u8(TAG_REMOVE);
            out.u32(*queue);
            out.u64(*user);
        }
    }
}

/// The op and its time from a log record's payload.
pub fn decode_op(payload: &[u8]) -> Result<(Op, u64), CodecError> {
    let mut r = Reader::new(payload);
    let now_ms = r.u64()?;
    let op = match r.u8()? {
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
        _ => {
            return Err(CodecError {
                what: "unknown op tag",
                at: 8,
            })
        }
    };
    r.end()?;
    Ok((op, now_ms))
}

impl QueueState {
    /// Appends the canonical snapshot payload of this state.
    pub fn encode_snapshot(&self, out: &mut Vec<u8>) {
        out.u64(self.jti_prefix);
        out.u64(self.next_jti);
        out.u64(self.last_tick_ms);
        out.u32(self.queues.len() as u32);
        for (id, q) in self.queues.iter().enumerate() {
            if q.expired {
                // A tombstone: an empty name, then what it keeps (lanes are empty and
                // seqs are renumbered on decode anyway).
                out.str("");
                if q.name.is_empty() {
                    out.u8(TOMBSTONE_FREE);
                } else {
                    out.u8(TOMBSTONE_QUARANTINED);
                    out.str(&q.name);
                    out.u64(q.admitted_total);
                    out.u64(q.left_total);
                }
                continue;
            }
            out.str(&q.name);
            out.u64(q.max_waiting);
            out.u64(q.admitted_total);
            out.u64(q.left_total);
            out.u64(q.unused_grants);
            out.f64(q.pacer.rate_per_s);
            out.f64(q.pacer.credit());
            out.u8(u8::from(q.pacer.paused));
            match q.pacer.capacity {
                Some(c) => {
                    out.u8(1);
                    out.u64(c.online);
                    out.u64(c.capacity);
                    out.u64(c.used_since);
                }
                None => out.u8(0),
            }
            let (buckets, first_sec) = q.meter.parts();
            match first_sec {
                Some(s) => {
                    out.u8(1);
                    out.u64(s);
                }
                None => out.u8(0),
            }
            out.u32(buckets.len() as u32);
            for &(sec, n) in buckets {
                out.u64(sec);
                out.u64(n);
            }
            for lane in [&q.prio, &q.normal] {
                out.u32(lane.len() as u32);
                for (_, user) in lane.iter() {
                    let place = &self.places[&(id as QueueId, user)];
                    out.u64(user);
                    out.opt_conn(place.conn);
                    out.u64(place.grace_deadline_ms);
                }
            }
        }
        let live_grace = self.grace.iter().filter(|&&(deadline, queue, user, key)| {
            matches!(self.places.get(&(queue, user)),
                Some(p) if p.key == key && p.conn.is_none() && p.grace_deadline_ms == deadline)
        });
        out.u32(live_grace.clone().count() as u32);
        for &(deadline, queue, user, _) in live_grace {
            out.u64(deadline);
            out.u32(queue);
            out.u64(user);
        }
        let live_grants = self.live_grants();
        out.u32(live_grants.clone().count() as u32);
        for (queue, user, g) in live_grants {
            out.u32(queue);
            out.u64(user);
            out.u64(g.jti);
            out.u64(g.iat);
            out.u64(g.exp);
        }
        out.u32(self.used_expiry.len() as u32);
        for (exp, jti) in &self.used_expiry {
            out.u64(*exp);
            out.str(jti);
        }
        // Grant holders (see the module invariants).
        for (_, _, g) in self.live_grants() {
            out.opt_conn(g.conn);
            out.u8(u8::from(g.returned));
        }
    }

    /// Unused grants in expiry-queue order, stale entries left out: (queue, user, grant).
    fn live_grants(&self) -> impl Iterator<Item = (QueueId, u64, Grant)> + Clone + '_ {
        self.grant_expiry.iter().filter_map(|&(_, jti)| {
            let &(queue, user) = self.issued.get(&jti)?;
            let grant = self.grants.get(&(queue, user)).filter(|g| g.jti == jti)?;
            Some((queue, user, *grant))
        })
    }

    /// The state a snapshot payload describes, under `limits` (from the config).
    pub fn decode_snapshot(limits: Limits, payload: &[u8]) -> Result<QueueState, CodecError> {
        let mut r = Reader::new(payload);
        let mut s = QueueState::new(limits, &[], r.u64()?);
        s.next_jti = r.u64()?;
        s.last_tick_ms = r.u64()?;
        let queues = r.u32()?;
        for id in 0..queues {
            let at = r.at;
            let mut name = r.str()?.to_string();
            if name.is_empty() {
                let mut t = Queue::new(String::new(), 0);
                t.expired = true;
                match r.u8()? {
                    TOMBSTONE_FREE => {}
                    TOMBSTONE_QUARANTINED => {
                        let at = r.at;
                        name = r.str()?.to_string();
                        t.admitted_total = r.u64()?;
                        t.left_total = r.u64()?;
                        if name.is_empty() || t.admitted_total == 0 {
                            return Err(CodecError {
                                what: "quarantined tombstone without a name or admissions",
                                at,
                            });
                        }
                        if s.names.contains_key(&name) {
                            return Err(CodecError {
                                what: "duplicate queue name",
                                at,
                            });
                        }
                        t.name = name;
                    }
                    _ => return r.fail("unknown tombstone kind"),
                }
                s.push_tombstone(t);
                continue;
            }
            if s.names.contains_key(&name) {
                return Err(CodecError {
                    what: "duplicate queue name",
                    at,
                });
            }
            let max_waiting = r.u64()?;
            s.create_queue(name, max_waiting);
            let q: &mut Queue = &mut s.queues[id as usize];
            q.admitted_total = r.u64()?;
            q.left_total = r.u64()?;
            q.unused_grants = r.u64()?;
            q.pacer.rate_per_s = r.f64()?;
            q.pacer.set_credit(r.f64()?);
            q.pacer.paused = r.bool()?;
            q.pacer.capacity = if r.bool()? {
                Some(CapacityReport {
                    online: r.u64()?,
                    capacity: r.u64()?,
                    used_since: r.u64()?,
                })
            } else {
                None
            };
            let first_sec = if r.bool()? { Some(r.u64()?) } else { None };
            let n = r.u32()? as usize;
            let mut buckets = Vec::new();
            for _ in 0..n {
                buckets.push((r.u64()?, r.u64()?));
            }
            q.meter = match RateMeter::from_parts(&buckets, first_sec) {
                Some(meter) => meter,
                None => return r.fail("rate meter window size"),
            };
            for priority in [true, false] {
                let n = r.u32()?;
                for _ in 0..n {
                    let at = r.at;
                    let user = r.u64()?;
                    let conn = r.opt_conn()?;
                    let grace_deadline_ms = r.u64()?;
                    let q = &mut s.queues[id as usize];
                    let lane = if priority { &mut q.prio } else { &mut q.normal };
                    let key = place_key(priority, lane.push(user));
                    let place = Place {
                        key,
                        conn,
                        grace_deadline_ms,
                    };
                    if s.places.insert((id, user), place).is_some() {
                        return Err(CodecError {
                            what: "a user holds two places in one queue",
                            at,
                        });
                    }
                }
            }
        }
        let n = r.u32()?;
        for _ in 0..n {
            let at = r.at;
            let (deadline, queue, user) = (r.u64()?, r.u32()?, r.u64()?);
            let key = match s.places.get(&(queue, user)) {
                Some(p) if p.conn.is_none() && p.grace_deadline_ms == deadline => p.key,
                _ => {
                    return Err(CodecError {
                        what: "grace entry without a place in grace",
                        at,
                    })
                }
            };
            s.grace.push_back((deadline, queue, user, key));
        }
        let n = r.u32()?;
        let mut order = Vec::new();
        for _ in 0..n {
            let at = r.at;
            let (queue, user) = (r.u32()?, r.u64()?);
            let grant = Grant {
                jti: r.u64()?,
                iat: r.u64()?,
                exp: r.u64()?,
                conn: None,
                returned: true,
            };
            let fresh = s.queues.get(queue as usize).is_some_and(|q| !q.expired)
                && s.grants.insert((queue, user), grant).is_none()
                && s.issued.insert(grant.jti, (queue, user)).is_none();
            if !fresh {
                return Err(CodecError {
                    what: "grant of an unknown queue, or twice",
                    at,
                });
            }
            s.grant_expiry.push_back((grant.exp, grant.jti));
            order.push((queue, user));
        }
        let n = r.u32()?;
        for _ in 0..n {
            let exp = r.u64()?;
            let at = r.at;
            let jti = r.str()?.to_string();
            if s.used.insert(jti.clone(), exp).is_some() {
                return Err(CodecError {
                    what: "used jti listed twice",
                    at,
                });
            }
            s.used_expiry.push_back((exp, jti));
        }
        if r.at < payload.len() {
            for key in order {
                let conn = r.opt_conn()?;
                let returned = r.bool()?;
                let grant = s.grants.get_mut(&key).expect("decoded above");
                grant.conn = conn;
                grant.returned = returned;
            }
        }
        r.end()?;
        Ok(s)
    }
}
