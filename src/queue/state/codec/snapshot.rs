//! The whole [`QueueState`] as a snapshot payload, one function per section, in the
//! order they are written:
//!
//! ```text
//! jti_prefix u64 | next_jti u64 | last_tick_ms u64
//! queues: u32 count, then per slot a queue record or a tombstone record
//! grace:  u32 count of (deadline u64, queue u32, user u64)
//! grants: u32 count of (queue u32, user u64, jti u64, iat u64, exp u64)
//! used:   u32 count of (exp u64, jti str)
//! holders (optional, one per grant in the grants' order): (opt conn, returned u8)
//! ```
//!
//! Invariants: those of [`super`] (canonical bytes, never a panic on bad input, the
//! optional last section, the tombstone record); errors name the payload offset of the
//! record at fault, which start-up reports as a file offset.

use super::bytes::{CodecError, Put, Reader};
use crate::msg::QueueId;
use crate::queue::pacing::{CapacityReport, RateMeter};
use crate::queue::rank::place_key;
use crate::queue::state::{Grant, Limits, Place, Queue, QueueState};

/// Tombstone kinds in a snapshot.
const TOMBSTONE_FREE: u8 = 0;
const TOMBSTONE_QUARANTINED: u8 = 1;

impl QueueState {
    /// Appends the canonical snapshot payload of this state.
    pub fn encode_snapshot(&self, out: &mut Vec<u8>) {
        out.u64(self.jti_prefix);
        out.u64(self.next_jti);
        out.u64(self.last_tick_ms);
        out.u32(self.queues.len() as u32);
        for (id, q) in self.queues.iter().enumerate() {
            if q.expired {
                encode_tombstone(q, out);
            } else {
                self.encode_queue(id as QueueId, q, out);
            }
        }
        self.encode_grace(out);
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

    /// One live queue: settings, counters, pacing, rate meter, then its two lanes.
    fn encode_queue(&self, id: QueueId, q: &Queue, out: &mut Vec<u8>) {
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
                let place = &self.places[&(id, user)];
                out.u64(user);
                out.opt_conn(place.conn);
                out.u64(place.grace_deadline_ms);
            }
        }
    }

    /// The grace entries still live, in deadline order (stale ones left out).
    fn encode_grace(&self, out: &mut Vec<u8>) {
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
            s.decode_slot(&mut r, id)?;
        }
        s.decode_grace(&mut r)?;
        let order = s.decode_grants(&mut r)?;
        s.decode_used(&mut r)?;
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

    /// Slot `id`: a tombstone record (empty name first) or a live queue.
    fn decode_slot(&mut self, r: &mut Reader<'_>, id: QueueId) -> Result<(), CodecError> {
        let at = r.at;
        let name = r.str()?.to_string();
        if name.is_empty() {
            let tombstone = self.decode_tombstone(r)?;
            self.push_tombstone(tombstone);
            return Ok(());
        }
        if self.names.contains_key(&name) {
            return Err(CodecError {
                what: "duplicate queue name",
                at,
            });
        }
        let max_waiting = r.u64()?;
        self.create_queue(name, max_waiting);
        decode_queue_fields(r, &mut self.queues[id as usize])?;
        for priority in [true, false] {
            self.decode_lane(r, id, priority)?;
        }
        Ok(())
    }

    /// A tombstone's kind and, when quarantined, the name and counters it keeps.
    fn decode_tombstone(&self, r: &mut Reader<'_>) -> Result<Queue, CodecError> {
        let mut t = Queue::new(String::new(), 0);
        t.expired = true;
        match r.u8()? {
            TOMBSTONE_FREE => {}
            TOMBSTONE_QUARANTINED => {
                let at = r.at;
                let name = r.str()?.to_string();
                t.admitted_total = r.u64()?;
                t.left_total = r.u64()?;
                if name.is_empty() || t.admitted_total == 0 {
                    return Err(CodecError {
                        what: "quarantined tombstone without a name or admissions",
                        at,
                    });
                }
                if self.names.contains_key(&name) {
                    return Err(CodecError {
                        what: "duplicate queue name",
                        at,
                    });
                }
                t.name = name;
            }
            _ => return r.fail("unknown tombstone kind"),
        }
        Ok(t)
    }

    /// One lane of queue `id`: its places in order, keys renumbered from the lane's start.
    fn decode_lane(
        &mut self,
        r: &mut Reader<'_>,
        id: QueueId,
        priority: bool,
    ) -> Result<(), CodecError> {
        let n = r.u32()?;
        for _ in 0..n {
            let at = r.at;
            let user = r.u64()?;
            let conn = r.opt_conn()?;
            let grace_deadline_ms = r.u64()?;
            let q = &mut self.queues[id as usize];
            let lane = if priority { &mut q.prio } else { &mut q.normal };
            let key = place_key(priority, lane.push(user));
            let place = Place {
                key,
                conn,
                grace_deadline_ms,
            };
            if self.places.insert((id, user), place).is_some() {
                return Err(CodecError {
                    what: "a user holds two places in one queue",
                    at,
                });
            }
        }
        Ok(())
    }

    /// The grace section: each entry must name a place in grace with that deadline.
    fn decode_grace(&mut self, r: &mut Reader<'_>) -> Result<(), CodecError> {
        let n = r.u32()?;
        for _ in 0..n {
            let at = r.at;
            let (deadline, queue, user) = (r.u64()?, r.u32()?, r.u64()?);
            let key = match self.places.get(&(queue, user)) {
                Some(p) if p.conn.is_none() && p.grace_deadline_ms == deadline => p.key,
                _ => {
                    return Err(CodecError {
                        what: "grace entry without a place in grace",
                        at,
                    })
                }
            };
            self.grace.push_back((deadline, queue, user, key));
        }
        Ok(())
    }

    /// The grants section, with no holder and counted as returned until the holders
    /// section (if any) says otherwise; returns their (queue, user) in order.
    fn decode_grants(&mut self, r: &mut Reader<'_>) -> Result<Vec<(QueueId, u64)>, CodecError> {
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
            let fresh = self.queues.get(queue as usize).is_some_and(|q| !q.expired)
                && self.grants.insert((queue, user), grant).is_none()
                && self.issued.insert(grant.jti, (queue, user)).is_none();
            if !fresh {
                return Err(CodecError {
                    what: "grant of an unknown queue, or twice",
                    at,
                });
            }
            self.grant_expiry.push_back((grant.exp, grant.jti));
            order.push((queue, user));
        }
        Ok(order)
    }

    /// The used `jti`s with their `exp`, in consumption order.
    fn decode_used(&mut self, r: &mut Reader<'_>) -> Result<(), CodecError> {
        let n = r.u32()?;
        for _ in 0..n {
            let exp = r.u64()?;
            let at = r.at;
            let jti = r.str()?.to_string();
            if self.used.insert(jti.clone(), exp).is_some() {
                return Err(CodecError {
                    what: "used jti listed twice",
                    at,
                });
            }
            self.used_expiry.push_back((exp, jti));
        }
        Ok(())
    }
}

/// A tombstone record: an empty name, then what it keeps (lanes are empty and seqs are
/// renumbered on decode anyway).
fn encode_tombstone(q: &Queue, out: &mut Vec<u8>) {
    out.str("");
    if q.name.is_empty() {
        out.u8(TOMBSTONE_FREE);
    } else {
        out.u8(TOMBSTONE_QUARANTINED);
        out.str(&q.name);
        out.u64(q.admitted_total);
        out.u64(q.left_total);
    }
}

/// A live queue's counters, pacing and rate meter (after its name and `max_waiting`).
fn decode_queue_fields(r: &mut Reader<'_>, q: &mut Queue) -> Result<(), CodecError> {
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
    Ok(())
}
