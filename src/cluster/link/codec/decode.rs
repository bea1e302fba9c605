//! Decoding of link frames (the format is in the parent module's doc): a frame body is
//! read whole, then taken apart message by message; nothing is trusted (counts are
//! checked against the bytes left before anything is allocated).

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use super::*;
use crate::msg::{JoinOk, QueueDelta, RankBatch, SessionReport};

/// Reads one frame body (after its length) into `buf`; `Ok(false)` on a clean end of
/// stream before a frame starts.
pub fn read_frame(stream: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            CodecError::TooLarge,
        ));
    }
    buf.resize(len, 0);
    stream.read_exact(buf)?;
    Ok(true)
}

/// Reads a frame body message by message.
pub struct Reader<'a> {
    /// The body.
    buf: &'a [u8],
    /// Next byte.
    pos: usize,
    /// Messages left.
    left: u32,
}

impl<'a> Reader<'a> {
    /// A reader over a frame body (as [`read_frame`] leaves it).
    pub fn new(body: &'a [u8]) -> Result<Reader<'a>, CodecError> {
        let mut r = Reader {
            buf: body,
            pos: 0,
            left: 0,
        };
        r.left = r.u32()?;
        Ok(r)
    }

    /// True while messages are left.
    pub fn more(&self) -> bool {
        self.left > 0
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self.pos.checked_add(n).ok_or(CodecError::Truncated)?;
        let out = self.buf.get(self.pos..end).ok_or(CodecError::Truncated)?;
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_le_bytes(
            self.bytes(2)?.try_into().unwrap_or([0; 2]),
        ))
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(
            self.bytes(4)?.try_into().unwrap_or([0; 4]),
        ))
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(
            self.bytes(8)?.try_into().unwrap_or([0; 8]),
        ))
    }

    fn flag(&mut self) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(CodecError::BadValue(v)),
        }
    }

    fn str(&mut self, len: usize) -> Result<&'a str, CodecError> {
        std::str::from_utf8(self.bytes(len)?).map_err(|_| CodecError::BadText)
    }

    fn str16(&mut self) -> Result<&'a str, CodecError> {
        let len = self.u16()? as usize;
        self.str(len)
    }

    fn keys(&mut self) -> Result<Vec<u64>, CodecError> {
        let n = self.u32()? as usize;
        // Each key is 8 bytes: a count past the frame's end is a lie, not an allocation.
        if n > (self.buf.len() - self.pos) / 8 {
            return Err(CodecError::Truncated);
        }
        (0..n).map(|_| self.u64()).collect()
    }

    fn peer(&mut self) -> Result<SocketAddr, CodecError> {
        let ip = match self.u8()? {
            4 => {
                let o: [u8; 4] = self.bytes(4)?.try_into().unwrap_or([0; 4]);
                IpAddr::V4(Ipv4Addr::from(o))
            }
            6 => {
                let o: [u8; 16] = self.bytes(16)?.try_into().unwrap_or([0; 16]);
                IpAddr::V6(Ipv6Addr::from(o))
            }
            v => return Err(CodecError::BadValue(v)),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }

    /// The next edge -> owner message, as from virtual loop `loop_id`.
    pub fn core_msg(&mut self, loop_id: LoopId) -> Result<CoreMsg, CodecError> {
        self.left = self.left.checked_sub(1).ok_or(CodecError::Truncated)?;
        let tag = self.u8()?;
        let conn = ConnRef {
            loop_id,
            session: self.u64()?,
        };
        Ok(match tag {
            JOIN => {
                let seq = self.u32()?;
                let user = self.u64()?;
                let prio = self.flag()?;
                let queue = self.str16()?.into();
                let peer = self.peer()?;
                let claim = match self.flag()? {
                    true => Some(self.u64()?),
                    false => None,
                };
                CoreMsg::Join {
                    conn,
                    seq,
                    user,
                    queue,
                    prio,
                    peer,
                    claim,
                }
            }
            LEAVE => CoreMsg::Leave {
                conn,
                queue: self.u32()?,
                user: self.u64()?,
            },
            DISCONNECT => {
                let queue = self.u32()?;
                let user = self.u64()?;
                let answered = self.u32()?;
                let pushed = self.u32()?;
                let last_position = self.u64()?;
                let kicked = match self.u8()? {
                    0 => None,
                    n => Some(kick_of(n - 1)?),
                };
                CoreMsg::Disconnect {
                    conn,
                    queue,
                    user,
                    report: SessionReport {
                        answered,
                        pushed,
                        last_position,
                        kicked,
                    },
                }
            }
            RESUBMIT => {
                let user = self.u64()?;
                let key = self.u64()?;
                let queue = self.str16()?.into();
                CoreMsg::Resubmit {
                    conn,
                    user,
                    key,
                    queue,
                    admitted: [self.u64()?, self.u64()?],
                }
            }
            t => return Err(CodecError::BadValue(t)),
        })
    }

    /// The next owner -> edge message; `map_queue` turns the owner's queue ids into
    /// this node's ids for that link.
    pub fn event(
        &mut self,
        map_queue: impl Fn(QueueId) -> QueueId,
    ) -> Result<LoopEvent, CodecError> {
        self.left = self.left.checked_sub(1).ok_or(CodecError::Truncated)?;
        Ok(match self.u8()? {
            RANKS => {
                let n = self.u32()? as usize;
                let mut queues = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    let queue = map_queue(self.u32()?);
                    let queue_len = self.u64()?;
                    let rate_per_s = f64::from_bits(self.u64()?);
                    let departed = self.keys()?;
                    let inserted = self.keys()?;
                    let admitted_max = [self.u64()?, self.u64()?];
                    queues.push(QueueDelta {
                        queue,
                        departed,
                        inserted,
                        queue_len,
                        rate_per_s,
                        admitted_max,
                    });
                }
                LoopEvent::Ranks(Arc::new(RankBatch { queues }))
            }
            RESYNC => {
                let n = self.u32()? as usize;
                if n > (self.buf.len() - self.pos) / 16 {
                    return Err(CodecError::Truncated);
                }
                let list = (0..n)
                    .map(|_| Ok((self.u64()?, self.u64()?)))
                    .collect::<Result<_, CodecError>>()?;
                LoopEvent::Resync(list)
            }
            JOINED => {
                let session = self.u64()?;
                let seq = self.u32()?;
                let user = self.u64()?;
                let result = self.join_result(&map_queue)?;
                LoopEvent::Joined {
                    session,
                    seq,
                    user,
                    result,
                }
            }
            ADMITTED => {
                let session = self.u64()?;
                let len = self.u32()? as usize;
                let token = self.str(len)?.to_string();
                LoopEvent::Admitted {
                    session,
                    token,
                    expires_at: self.u64()?,
                }
            }
            KICK => LoopEvent::Kick {
                session: self.u64()?,
                reason: kick_of(self.u8()?)?,
            },
            SHUTDOWN => LoopEvent::Shutdown,
            t => return Err(CodecError::BadValue(t)),
        })
    }

    fn join_result(
        &mut self,
        map_queue: &impl Fn(QueueId) -> QueueId,
    ) -> Result<Result<JoinOk, JoinError>, CodecError> {
        if !self.flag()? {
            return Ok(Err(match self.u8()? {
                1 => JoinError::QueueFull,
                2 => JoinError::UnknownQueue,
                3 => JoinError::ShuttingDown,
                4 => JoinError::Gone,
                v => return Err(CodecError::BadValue(v)),
            }));
        }
        let queue = map_queue(self.u32()?);
        let key = self.u64()?;
        let position = self.u64()?;
        let queue_len = self.u64()?;
        let rate_per_s = f64::from_bits(self.u64()?);
        let resumed = self.flag()?;
        let admitted = if self.flag()? {
            let len = self.u32()? as usize;
            let token = self.str(len)?.to_string();
            Some((token, self.u64()?))
        } else {
            None
        };
        Ok(Ok(JoinOk {
            queue,
            key,
            position,
            queue_len,
            rate_per_s,
            resumed,
            admitted,
        }))
    }
}
