//! Place tickets (cluster mode): a signed note of a player's place, given in the `login`
//! answer and presented at a later `login` on any node, so that a player whose node
//! died gets the place back at the new owner (see `queue::core::claim` for when it is
//! honored).
//!
//! Wire form: `base64url(payload) "." base64url(mac)`, unpadded, where
//! `payload = ver:u8(1) lane:u8(1 priority, 0 normal) user:u64 key:u64 issued_at:u64
//! queue_len:u8 queue` (integers little-endian) and `mac = HMAC-SHA256(k, payload)`,
//! `k = SHA-256("queue-server place-ticket v1" 0x00 tokens.key)`. Every node of a
//! cluster has the same `tokens.key` (required with `[cluster]`), so every node
//! verifies every node's tickets.
//!
//! Why symmetric: only cluster nodes verify a ticket (it is opaque to clients), and
//! an HMAC costs about a microsecond on the io loop where an Ed25519 signature costs
//! 20-50 us per login.
//!
//! Invariants: a ticket verifies only under the key that made it, and only for the
//! user and queue it names (the `login`'s own `user_id` and `queue`); verification
//! decodes at most [`TICKET_CHARS_MAX`] characters and compares the MAC in constant
//! time. Issuing and verifying run on a `login` only, never per frame.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::mac;
use crate::msg::{PlaceKey, QueueName, SessionId, UserId};

/// The payload's version byte.
const VERSION: u8 = 1;
/// Payload bytes before the queue name.
const FIXED_BYTES: usize = 1 + 1 + 8 + 8 + 8 + 1;
/// Longest queue name in a ticket (`config::valid_queue_name` allows 64).
const QUEUE_BYTES_MAX: usize = 64;
/// MAC bytes (the whole HMAC-SHA256).
const MAC_BYTES: usize = mac::TAG_BYTES;
/// Longest ticket accepted: both parts at their largest, and the dot.
pub const TICKET_CHARS_MAX: usize = (FIXED_BYTES + QUEUE_BYTES_MAX).div_ceil(3) * 4 + 1 + 44;
/// Domain separation of the derived key: never the admission tokens' key itself.
const KEY_LABEL: &[u8] = b"queue-server place-ticket v1";

/// True for a priority-lane key (`queue::rank::place_key`: normal-lane keys have the
/// top bit set). Read here, not imported, so that `cluster` does not depend on `queue`.
fn priority_key(key: PlaceKey) -> bool {
    key >> 63 == 0
}

/// Why a presented place ticket was refused (the `login` answer's text says
/// `place ticket rejected: <this>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketRejected {
    /// Not `base64url.base64url`, too long, or a payload of the wrong shape.
    Malformed,
    /// The MAC does not match (tampered, or made under another cluster's key).
    BadSignature,
    /// Made for another `user_id`.
    OtherUser,
    /// Made for another queue.
    OtherQueue,
}

impl fmt::Display for TicketRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TicketRejected::Malformed => "malformed",
            TicketRejected::BadSignature => "bad signature",
            TicketRejected::OtherUser => "issued to another user",
            TicketRejected::OtherQueue => "issued for another queue",
        })
    }
}

/// What a ticket says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceTicket {
    /// The player.
    pub user: UserId,
    /// The queue's name.
    pub queue: String,
    /// The place's key (its lane is the key's lane bit).
    pub key: PlaceKey,
    /// When it was issued, unix seconds.
    pub issued_at: u64,
}

/// The cluster's place-ticket key.
#[derive(Clone)]
pub struct TicketKey {
    /// `SHA-256(label 0 tokens.key)`.
    key: [u8; 32],
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TicketKey(..)")
    }
}

impl TicketKey {
    /// The key derived from the configured `tokens.key` text (the same on every node).
    pub fn derive(tokens_key: &str) -> TicketKey {
        let mut h = Sha256::new();
        h.update(KEY_LABEL);
        h.update([0u8]);
        h.update(tokens_key.as_bytes());
        TicketKey {
            key: h.finalize().into(),
        }
    }

    /// The ticket of `user`'s place at `key` in `queue`, issued at `issued_at`.
    pub fn issue(&self, user: UserId, queue: &str, key: PlaceKey, issued_at: u64) -> String {
        let name = &queue.as_bytes()[..queue.len().min(QUEUE_BYTES_MAX)];
        let mut payload = Vec::with_capacity(FIXED_BYTES + name.len());
        payload.push(VERSION);
        payload.push(u8::from(priority_key(key)));
        payload.extend_from_slice(&user.to_le_bytes());
        payload.extend_from_slice(&key.to_le_bytes());
        payload.extend_from_slice(&issued_at.to_le_bytes());
        payload.push(name.len() as u8);
        payload.extend_from_slice(name);
        let tag = mac::hmac_sha256(&self.key, &payload);
        let mut out = URL_SAFE_NO_PAD.encode(&payload);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut out);
        out
    }

    /// Reads and checks a ticket (any user, any queue).
    pub fn read(&self, ticket: &str) -> Result<PlaceTicket, TicketRejected> {
        if ticket.len() > TICKET_CHARS_MAX {
            return Err(TicketRejected::Malformed);
        }
        let (payload, tag) = ticket.split_once('.').ok_or(TicketRejected::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TicketRejected::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TicketRejected::Malformed)?;
        if tag.len() != MAC_BYTES {
            return Err(TicketRejected::Malformed);
        }
        if !mac::verify(&self.key, &payload, &tag) {
            return Err(TicketRejected::BadSignature);
        }
        parse_payload(&payload)
    }

    /// Checks a ticket presented at a `login` of `user` to `queue`: the place's key.
    pub fn verify(
        &self,
        ticket: &str,
        user: UserId,
        queue: &str,
    ) -> Result<PlaceKey, TicketRejected> {
        let t = self.read(ticket)?;
        if t.user != user {
            return Err(TicketRejected::OtherUser);
        }
        if t.queue != queue {
            return Err(TicketRejected::OtherQueue);
        }
        Ok(t.key)
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(le)
}

/// The payload of a ticket whose MAC checked.
fn parse_payload(p: &[u8]) -> Result<PlaceTicket, TicketRejected> {
    if p.len() < FIXED_BYTES || p[0] != VERSION {
        return Err(TicketRejected::Malformed);
    }
    let (lane, user, key, issued_at) = (p[1], u64_at(p, 2), u64_at(p, 10), u64_at(p, 18));
    let name = &p[FIXED_BYTES..];
    if name.len() != p[26] as usize || lane > 1 || (lane == 1) != priority_key(key) {
        return Err(TicketRejected::Malformed);
    }
    let queue = std::str::from_utf8(name).map_err(|_| TicketRejected::Malformed)?;
    Ok(PlaceTicket {
        user,
        queue: queue.to_string(),
        key,
        issued_at,
    })
}

/// One io loop's place tickets: the key, and the queue name of each login in flight
/// (the core's answer names the queue by id only; the ticket needs the name).
#[derive(Debug)]
pub struct LoopTickets {
    /// The cluster's key.
    pub key: TicketKey,
    /// Session -> queue name of its `login`, from the request until the answer (or
    /// until the session is dropped).
    pending: RefCell<HashMap<SessionId, QueueName>>,
}

impl LoopTickets {
    /// A loop's tickets under `key`.
    pub fn new(key: TicketKey) -> LoopTickets {
        LoopTickets {
            key,
            pending: RefCell::new(HashMap::new()),
        }
    }

    /// A `login` of `session` to `queue` went to a core.
    pub fn login_sent(&self, session: SessionId, queue: &str) {
        self.pending.borrow_mut().insert(session, queue.into());
    }

    /// The ticket for the answer to `session`'s login (placed at `key`), and forgets
    /// the login. `None` when the login was not recorded.
    pub fn answered(&self, session: SessionId, user: UserId, key: PlaceKey) -> Option<String> {
        let queue = self.pending.borrow_mut().remove(&session)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Some(self.key.issue(user, queue.as_str(), key, now))
    }

    /// Forgets `session`'s login (refused, or the session is gone).
    pub fn forget(&self, session: SessionId) {
        if !self.pending.borrow().is_empty() {
            self.pending.borrow_mut().remove(&session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place_key(priority: bool, seq: u64) -> PlaceKey {
        if priority {
            seq
        } else {
            (1 << 63) | seq
        }
    }

    fn key() -> TicketKey {
        TicketKey::derive("c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I")
    }

    #[test]
    fn a_ticket_verifies_for_its_user_and_queue_only() {
        let k = key();
        let place = place_key(false, (7 << 32) | 3);
        let t = k.issue(42, "world-1", place, 1_700_000_000);
        assert!(t.len() <= TICKET_CHARS_MAX, "{}", t.len());
        assert_eq!(k.verify(&t, 42, "world-1"), Ok(place));
        let read = k.read(&t).unwrap();
        assert_eq!((read.user, read.issued_at), (42, 1_700_000_000));
        assert_eq!(k.verify(&t, 43, "world-1"), Err(TicketRejected::OtherUser));
        assert_eq!(k.verify(&t, 42, "world-2"), Err(TicketRejected::OtherQueue));
        let vip = k.issue(1, "q", place_key(true, 5), 0);
        assert_eq!(k.verify(&vip, 1, "q"), Ok(place_key(true, 5)));
    }

    #[test]
    fn any_changed_byte_is_rejected() {
        let k = key();
        let t = k.issue(42, "world-1", place_key(false, 9), 5);
        let (payload, tag) = t.split_once('.').unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(payload).unwrap();
        for i in 0..raw.len() {
            raw[i] ^= 1;
            let forged = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(&raw));
            assert_eq!(
                k.read(&forged),
                Err(TicketRejected::BadSignature),
                "byte {i}"
            );
            raw[i] ^= 1;
        }
        let mut mac = URL_SAFE_NO_PAD.decode(tag).unwrap();
        mac[31] ^= 0x80;
        let forged = format!("{payload}.{}", URL_SAFE_NO_PAD.encode(&mac));
        assert_eq!(k.read(&forged), Err(TicketRejected::BadSignature));
        // Another cluster's key.
        assert_eq!(
            TicketKey::derive("other").read(&t),
            Err(TicketRejected::BadSignature)
        );
    }

    #[test]
    fn malformed_tickets_are_refused_before_any_mac() {
        let k = key();
        for bad in [
            "",
            ".",
            "abc",
            "a.b",
            "!!!.???",
            &"A".repeat(TICKET_CHARS_MAX + 1),
        ] {
            assert_eq!(k.read(bad), Err(TicketRejected::Malformed), "{bad}");
        }
        assert_eq!(TicketRejected::BadSignature.to_string(), "bad signature");
    }

    #[test]
    fn a_loop_issues_for_the_logins_it_sent() {
        let lt = LoopTickets::new(key());
        lt.login_sent(5, "world-1");
        assert_eq!(lt.answered(6, 1, 0), None);
        let t = lt.answered(5, 1, place_key(false, 1)).unwrap();
        assert_eq!(lt.key.verify(&t, 1, "world-1"), Ok(place_key(false, 1)));
        assert_eq!(lt.answered(5, 1, 0), None, "issued once");
        lt.login_sent(7, "q");
        lt.forget(7);
        assert_eq!(lt.answered(7, 1, 0), None);
    }
}
