//! Admissions of [`QueueState`]: admitting from the head (by hand or by pacing), the
//! unused grants and their expiry, a `leave` that gives up an admission, token use
//! ([`Op::ConsumeJti`](super::Op::ConsumeJti)) and the used `jti`s.
//!
//! Invariants (see the `state` module for the whole list):
//! - admission takes the head: priority lane first, FIFO within a lane; each admitted
//!   player gets one grant, numbered from `next_jti`, never reused;
//! - a grant whose token an HTTP `admit` returned (`returned`) is never given up by
//!   `leave`: only its use, its expiry or an operator's removal ends it;
//! - a `jti` is consumed at most once: used `jti`s are kept until their `exp`.

use super::op::{Applied, Event};
use super::queue::Grant;
use super::QueueState;
use crate::msg::{ConnRef, QueueId, UserId};

impl QueueState {
    /// Admits up to `count` players from the head of `queue`; returns how many.
    /// `returned`: the tokens go back in an HTTP answer too (see [`Grant::returned`]).
    pub(super) fn admit(
        &mut self,
        queue: QueueId,
        count: u64,
        now_ms: u64,
        returned: bool,
        out: &mut Vec<Event>,
    ) -> u64 {
        let iat = now_ms / 1000;
        let exp = iat.saturating_add(self.limits.token_ttl_secs);
        let mut admitted = 0;
        while admitted < count {
            let Some((_, user)) = self.queues[queue as usize].head() else {
                break;
            };
            let place = self.depart(queue, user, out).expect("head has a place");
            let jti = self.next_jti;
            self.next_jti += 1;
            let grant = Grant {
                jti,
                iat,
                exp,
                conn: place.conn,
                returned,
            };
            self.grants.insert((queue, user), grant);
            self.issued.insert(jti, (queue, user));
            self.grant_expiry.push_back((exp, jti));
            let q = &mut self.queues[queue as usize];
            q.unused_grants += 1;
            q.admitted_total += 1;
            let lane = usize::from(crate::queue::rank::split_key(place.key).0);
            q.admitted_max[lane] = q.admitted_max[lane].max(place.key);
            out.push(Event::Admitted {
                queue,
                user,
                conn: place.conn,
                jti,
                iat,
                exp,
            });
            admitted += 1;
        }
        if admitted > 0 {
            self.queues[queue as usize].meter.record(now_ms, admitted);
        }
        admitted
    }

    /// A `leave` from `conn` of a player without a place: it gives up the unused
    /// admission if `conn` holds it and its token was only pushed to the player. A
    /// stale connection's leave, or one racing an HTTP `admit` that returned the token,
    /// changes nothing (the grant then ends by use or expiry).
    pub(super) fn leave_grant(&mut self, queue: QueueId, user: UserId, conn: ConnRef) {
        let gives_up = matches!(self.grants.get(&(queue, user)),
            Some(g) if !g.returned && g.conn == Some(conn));
        if gives_up {
            self.withdraw_grant(queue, user);
        }
    }

    /// Cancels the unused grant of `user`, if any: its `jti` is marked used.
    pub(super) fn withdraw_grant(&mut self, queue: QueueId, user: UserId) {
        let Some(grant) = self.grants.remove(&(queue, user)) else {
            return;
        };
        self.issued.remove(&grant.jti);
        self.queues[queue as usize].unused_grants -= 1;
        let jti = self.jti_text(grant.jti);
        self.used.insert(jti.clone(), grant.exp);
        self.used_expiry.push_back((grant.exp, jti));
    }

    pub(super) fn consume(&mut self, jti: &str, exp: u64) -> Applied {
        if self.used.contains_key(jti) {
            return Applied::Consumed(false);
        }
        self.used.insert(jti.to_string(), exp);
        self.used_expiry.push_back((exp, jti.to_string()));
        if let Some(number) = own_jti_number(jti, self.jti_prefix) {
            if let Some((queue, user)) = self.issued.remove(&number) {
                if self.grants.get(&(queue, user)).map(|g| g.jti) == Some(number) {
                    self.grants.remove(&(queue, user));
                    let q = &mut self.queues[queue as usize];
                    q.unused_grants -= 1;
                    q.pacer.token_used();
                }
            }
        }
        Applied::Consumed(true)
    }

    /// The owner of the unused grant whose `jti` text is `jti`, with its number.
    pub fn grant_owner(&self, jti: &str) -> Option<(QueueId, UserId, u64)> {
        let number = own_jti_number(jti, self.jti_prefix)?;
        let &(queue, user) = self.issued.get(&number)?;
        (self.grants.get(&(queue, user)).map(|g| g.jti) == Some(number))
            .then_some((queue, user, number))
    }

    /// Grant expiry at `now_s` (unix seconds): unused grants whose token expired end,
    /// and used `jti`s are forgotten once they expire (a token past `exp` fails anyway).
    pub(super) fn expire_grants(&mut self, now_s: u64) {
        while let Some(&(exp, jti)) = self.grant_expiry.front() {
            if exp > now_s {
                break;
            }
            self.grant_expiry.pop_front();
            if let Some((queue, user)) = self.issued.remove(&jti) {
                if self.grants.get(&(queue, user)).map(|g| g.jti) == Some(jti) {
                    self.grants.remove(&(queue, user));
                    self.queues[queue as usize].unused_grants -= 1;
                }
            }
        }
        while let Some((exp, _)) = self.used_expiry.front() {
            if *exp > now_s {
                break;
            }
            let (_, jti) = self.used_expiry.pop_front().expect("front exists");
            self.used.remove(&jti);
        }
    }
}

/// The grant number of a `jti` this state (prefix `prefix`) issued.
fn own_jti_number(jti: &str, prefix: u64) -> Option<u64> {
    jti.get(..16)
        .and_then(|p| u64::from_str_radix(p, 16).ok())
        .filter(|&p| p == prefix)
        .and_then(|_| jti.get(16..))
        .and_then(|n| u64::from_str_radix(n, 16).ok())
}
