//! The node link's wire format: binary, little-endian, length-prefixed frames, one per
//! round in each direction.
//!
//! ```text
//! connection := preamble frame*            (each side sends the preamble first)
//! preamble   := "QSL4"                    (then the edge's hello and the owner's
//!                                          incarnation: see `hello`)
//! frame      := body_len:u32 body          (body_len <= FRAME_BYTES_MAX)
//! body       := count:u32 message{count}
//! edge -> owner messages (CoreMsg):
//!   1 Join       session:u64 seq:u32 user:u64 prio:u8 queue:str16 peer
//!                claim:u8 [key:u64]   (1 + the key of a verified place ticket)
//!   2 Leave      session:u64 queue:u32 user:u64
//!   3 Disconnect session:u64 queue:u32 user:u64 answered:u32 pushed:u32
//!                last_position:u64 kicked:u8 (0 none, 1 + kick index)
//!   4 Resubmit   session:u64 user:u64 key:u64 queue:str16 admitted:u64 u64
//!                (failover: a place put back at its old key at a new owner, with the
//!                queue's admitted marks [normal, priority] the edge last saw;
//!                answered by a Joined)
//! owner -> edge messages (LoopEvent):
//!   10 Ranks     n:u32 { queue:u32 queue_len:u64 rate:f64 departed:keys inserted:keys
//!                        admitted:u64 u64 }   (highest admitted key per lane)
//!   11 Resync    n:u32 { session:u64 position:u64 }
//!   12 Joined    session:u64 seq:u32 user:u64 ok:u8, then
//!                ok=1: queue:u32 key:u64 position:u64 queue_len:u64 rate:f64
//!                      resumed:u8 admitted:u8 [token:str32 expires_at:u64]
//!                ok=0: error:u8 (1 full, 2 unknown queue, 3 shutting down, 4 gone)
//!   13 Admitted  session:u64 token:str32 expires_at:u64
//!   14 Kick      session:u64 reason:u8 (kick index)
//!   15 Shutdown
//! keys  := n:u32 key:u64{n}      str16 := len:u16 bytes   str32 := len:u32 bytes
//! peer  := 4 ip:[u8;4] port:u16 | 6 ip:[u8;16] port:u16
//! ```
//!
//! Invariants:
//! - `session` is opaque to the owner: the edge packs (its loop, its session) into it
//!   ([`pack_session`]) and unpacks the owner's answers;
//! - queue ids on the wire are always the owner's own ids: the edge strips its source
//!   bits when encoding ([`local_queue`]) and maps them into its link's range when
//!   decoding (the `map_queue` of [`Reader::event`]);
//! - a decode error (truncated, unknown tag, bad UTF-8, oversized frame) is a broken
//!   link: the caller closes the connection, never guesses.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::msg::{
    local_queue, ConnRef, CoreMsg, JoinError, JoinOk, KickReason, LoopEvent, LoopId, PlaceKey,
    QueueId, SessionId,
};

/// What each side writes first.
/// Version 2: the edge's hello after the preambles (`hello`) and the claim on `Join`;
/// version 3: the owner answers the hello with its incarnation (`hello`); version 4:
/// `Ranks` carries each queue's admitted marks and `Resubmit` the marks the edge last
/// saw (`cluster::watermark`). A node of another version fails the preamble check and
/// never misreads a frame.
pub const PREAMBLE: &[u8; 4] = b"QSL4";
/// Largest frame body accepted (a full `admit` of 100,000 tokens is ~40 MB: the writer
/// splits frames before this).
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// A writer starts a new frame once the current one is this large.
pub const FRAME_SPLIT_BYTES: usize = 1 << 20;

const JOIN: u8 = 1;
const LEAVE: u8 = 2;
const DISCONNECT: u8 = 3;
const RESUBMIT: u8 = 4;
const RANKS: u8 = 10;
const RESYNC: u8 = 11;
const JOINED: u8 = 12;
const ADMITTED: u8 = 13;
const KICK: u8 = 14;
const SHUTDOWN: u8 = 15;

/// Every kick reason by its wire number.
const KICKS: [KickReason; 5] = [
    KickReason::DuplicateLogin,
    KickReason::IdleTimeout,
    KickReason::SlowConsumer,
    KickReason::Shutdown,
    KickReason::Removed,
];

/// Why bytes from a link cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecError {
    /// The frame ended inside a message.
    Truncated,
    /// A message tag or enum value this version does not know.
    BadValue(u8),
    /// A string that is not UTF-8.
    BadText,
    /// A frame over [`FRAME_BYTES_MAX`].
    TooLarge,
    /// The peer did not start with [`PREAMBLE`].
    BadPreamble,
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Truncated => write!(f, "truncated link frame"),
            CodecError::BadValue(v) => write!(f, "unknown value {v} in link frame"),
            CodecError::BadText => write!(f, "text in link frame is not UTF-8"),
            CodecError::TooLarge => write!(f, "link frame over {FRAME_BYTES_MAX} bytes"),
            CodecError::BadPreamble => write!(f, "peer is not a queue-server node link"),
        }
    }
}

impl std::error::Error for CodecError {}

/// Packs an edge loop and its session into the session id sent to the owner: the loop
/// goes into bits 24..32 (the slot index of a session id is below 2^24: far above any
/// loop's connections). `None` when either does not fit.
pub fn pack_session(loop_id: LoopId, session: SessionId) -> Option<SessionId> {
    (loop_id < 256 && session & 0xff00_0000 == 0).then(|| session | (u64::from(loop_id) << 24))
}

/// The edge loop and its session from a packed id.
pub fn unpack_session(packed: SessionId) -> (LoopId, SessionId) {
    (((packed >> 24) & 0xff) as LoopId, packed & !0xff00_0000)
}

/// Builds one frame in a reusable buffer.
#[derive(Debug, Default)]
pub struct FrameBuf {
    /// Header (length, count) then messages.
    buf: Vec<u8>,
    /// Messages in the frame.
    count: u32,
}

impl FrameBuf {
    /// True when no message was added since the last [`FrameBuf::clear`].
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes in the frame so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    fn start(&mut self) {
        if self.buf.is_empty() {
            self.buf.extend_from_slice(&[0; 8]);
        }
        self.count += 1;
    }

    /// The finished frame (header filled in); the next message starts a new one.
    pub fn finish(&mut self) -> &[u8] {
        let body = (self.buf.len() - 4) as u32;
        self.buf[..4].copy_from_slice(&body.to_le_bytes());
        self.buf[4..8].copy_from_slice(&self.count.to_le_bytes());
        &self.buf
    }

    /// Empties the buffer (keeps its capacity).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
    }

    /// Adds an edge -> owner message; false (nothing added) for messages that do not
    /// cross a link. `session` replaces the message's session (see [`pack_session`]).
    pub fn put_core(&mut self, msg: &CoreMsg, session: SessionId) -> bool {
        match msg {
            CoreMsg::Join {
                seq,
                user,
                queue,
                prio,
                peer,
                claim,
                ..
            } => {
                self.start();
                let b = &mut self.buf;
                b.push(JOIN);
                put_u64(b, session);
                put_u32(b, *seq);
                put_u64(b, *user);
                b.push(u8::from(*prio));
                put_str16(b, queue.as_str());
                put_peer(b, peer);
                put_claim(b, *claim);
            }
            CoreMsg::Leave { queue, user, .. } => {
                self.start();
                let b = &mut self.buf;
                b.push(LEAVE);
                put_u64(b, session);
                put_u32(b, local_queue(*queue));
                put_u64(b, *user);
            }
            CoreMsg::Disconnect {
                queue,
                user,
                report,
                ..
            } => {
                self.start();
                let b = &mut self.buf;
                b.push(DISCONNECT);
                put_u64(b, session);
                put_u32(b, local_queue(*queue));
                put_u64(b, *user);
                put_u32(b, report.answered);
                put_u32(b, report.pushed);
                put_u64(b, report.last_position);
                b.push(report.kicked.map_or(0, |k| kick_number(k) + 1));
            }
            CoreMsg::Resubmit {
                user,
                queue,
                key,
                admitted,
                ..
            } => {
                self.start();
                let b = &mut self.buf;
                b.push(RESUBMIT);
                put_u64(b, session);
                put_u64(b, *user);
                put_u64(b, *key);
                put_str16(b, queue.as_str());
                put_u64(b, admitted[0]);
                put_u64(b, admitted[1]);
            }
            _ => return false,
        }
        true
    }

    /// Adds an owner -> edge message (`LinkLost` is local to a node: not added).
    pub fn put_event(&mut self, event: &LoopEvent) {
        if matches!(event, LoopEvent::LinkLost { .. }) {
            return;
        }
        self.start();
        let b = &mut self.buf;
        match event {
            LoopEvent::Ranks(batch) => {
                b.push(RANKS);
                put_u32(b, batch.queues.len() as u32);
                for d in &batch.queues {
                    put_u32(b, d.queue);
                    put_u64(b, d.queue_len);
                    put_u64(b, d.rate_per_s.to_bits());
                    put_keys(b, &d.departed);
                    put_keys(b, &d.inserted);
                    put_u64(b, d.admitted_max[0]);
                    put_u64(b, d.admitted_max[1]);
                }
            }
            LoopEvent::Resync(list) => {
                b.push(RESYNC);
                put_u32(b, list.len() as u32);
                for (session, position) in list {
                    put_u64(b, *session);
                    put_u64(b, *position);
                }
            }
            LoopEvent::Joined {
                session,
                seq,
                user,
                result,
            } => {
                b.push(JOINED);
                put_u64(b, *session);
                put_u32(b, *seq);
                put_u64(b, *user);
                put_join_result(b, result);
            }
            LoopEvent::Admitted {
                session,
                token,
                expires_at,
            } => {
                b.push(ADMITTED);
                put_u64(b, *session);
                put_str32(b, token);
                put_u64(b, *expires_at);
            }
            LoopEvent::Kick { session, reason } => {
                b.push(KICK);
                put_u64(b, *session);
                b.push(kick_number(*reason));
            }
            LoopEvent::Shutdown => b.push(SHUTDOWN),
            LoopEvent::LinkLost { .. } => {}
        }
    }
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

/// A queue name (cut at `u16::MAX` bytes: longer names are invalid anyway).
fn put_str16(b: &mut Vec<u8>, s: &str) {
    let name = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    b.extend_from_slice(&(name.len() as u16).to_le_bytes());
    b.extend_from_slice(name);
}

fn put_str32(b: &mut Vec<u8>, s: &str) {
    put_u32(b, s.len() as u32);
    b.extend_from_slice(s.as_bytes());
}

fn put_keys(b: &mut Vec<u8>, keys: &[u64]) {
    put_u32(b, keys.len() as u32);
    for k in keys {
        put_u64(b, *k);
    }
}

fn put_peer(b: &mut Vec<u8>, peer: &SocketAddr) {
    match peer.ip() {
        IpAddr::V4(ip) => {
            b.push(4);
            b.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            b.push(6);
            b.extend_from_slice(&ip.octets());
        }
    }
    b.extend_from_slice(&peer.port().to_le_bytes());
}

/// A `Join`'s claim: 0, or 1 and the key.
fn put_claim(b: &mut Vec<u8>, claim: Option<PlaceKey>) {
    b.push(u8::from(claim.is_some()));
    if let Some(key) = claim {
        put_u64(b, key);
    }
}

fn put_join_result(b: &mut Vec<u8>, result: &Result<JoinOk, JoinError>) {
    match result {
        Ok(ok) => {
            b.push(1);
            put_u32(b, ok.queue);
            put_u64(b, ok.key);
            put_u64(b, ok.position);
            put_u64(b, ok.queue_len);
            put_u64(b, ok.rate_per_s.to_bits());
            b.push(u8::from(ok.resumed));
            match &ok.admitted {
                Some((token, expires_at)) => {
                    b.push(1);
                    put_str32(b, token);
                    put_u64(b, *expires_at);
                }
                None => b.push(0),
            }
        }
        Err(e) => {
            b.push(0);
            b.push(match e {
                JoinError::QueueFull => 1,
                JoinError::UnknownQueue => 2,
                JoinError::ShuttingDown => 3,
                JoinError::Gone => 4,
            });
        }
    }
}

fn kick_number(reason: KickReason) -> u8 {
    KICKS.iter().position(|&k| k == reason).unwrap_or(0) as u8
}

pub(super) fn kick_of(n: u8) -> Result<KickReason, CodecError> {
    KICKS
        .get(n as usize)
        .copied()
        .ok_or(CodecError::BadValue(n))
}

mod decode;

pub use decode::{read_frame, Reader};

#[cfg(test)]
mod tests;
