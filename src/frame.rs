//! Framing of the player port (docs/protocol.md 1.1): a 4-byte big-endian body length, then
//! the body.
//!
//! Owns: deciding whether the front of a read buffer holds a whole frame, and writing
//! the header of an outgoing frame around a body encoded in place.
//!
//! Invariants:
//! - A frame is accepted or refused from its 4 header bytes alone: a zero length or a
//!   length above the configured maximum is an error before any body byte is read, so
//!   the caller never buffers (or allocates for) a body it is going to refuse.
//! - "Need more bytes" is `Ok(None)`, never an error: frames may arrive split across any
//!   number of reads.
//! - Nothing here allocates; outgoing frames are written into the caller's `BytesMut`
//!   (which grows only if the caller gave it too little capacity).

use std::fmt;

use bytes::{BufMut, BytesMut};

/// Size of the length header that precedes every body.
pub const HEADER_BYTES: usize = 4;

/// Why the header at the front of a buffer cannot start a valid frame.
/// Either way the connection gets `BAD_FRAME` and is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The header says the body is 0 bytes long; the protocol forbids empty bodies.
    ZeroLength,
    /// The header announces a body longer than the configured maximum.
    TooLong {
        /// Body length announced by the header.
        len: u32,
        /// Largest body length the server accepts (`max_frame_bytes`).
        max: u32,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::ZeroLength => f.write_str("frame length is 0"),
            FrameError::TooLong { len, max } => {
                write!(f, "frame length {len} exceeds the maximum of {max}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Looks at the front of `buf`.
///
/// `Ok(None)`: need more bytes (fewer than 4 header bytes, or the body is incomplete).
/// `Ok(Some(body_len))`: a whole frame is at `buf[HEADER_BYTES..HEADER_BYTES + body_len]`.
/// `Err` as soon as the 4 header bytes are there and say 0 or more than `max_body`
/// (decided from the header alone, before any body arrives).
#[inline]
pub fn check_frame(buf: &[u8], max_body: u32) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.first_chunk::<HEADER_BYTES>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*header);
    if len == 0 {
        return Err(FrameError::ZeroLength);
    }
    if len > max_body {
        return Err(FrameError::TooLong { len, max: max_body });
    }
    // u32 -> usize is lossless on every target this server runs on (64-bit Linux).
    let body_len = len as usize;
    if buf.len() - HEADER_BYTES < body_len {
        return Ok(None);
    }
    Ok(Some(body_len))
}

/// Starts a frame in `out`: pushes a 4-byte placeholder header and returns its offset,
/// to be handed to [`end_frame`] once the body has been written after it.
#[inline]
pub fn begin_frame(out: &mut BytesMut) -> usize {
    let start = out.len();
    out.put_u32(0);
    start
}

/// Finishes the frame begun at `start` by [`begin_frame`]: patches the big-endian body
/// length (everything written to `out` after the header).
///
/// Panics if `start` is not a header written by [`begin_frame`] in this buffer, if the
/// body is empty (the peer would reject it) or if it does not fit in a `u32`: all three
/// are bugs in the encoder, not conditions of the input.
#[inline]
pub fn end_frame(out: &mut BytesMut, start: usize) {
    let body_start = start + HEADER_BYTES;
    assert!(
        body_start <= out.len(),
        "end_frame: no header at offset {start}"
    );
    let body_len = out.len() - body_start;
    assert!(body_len > 0, "end_frame: empty body");
    let body_len = u32::try_from(body_len).expect("end_frame: body longer than u32::MAX");
    out[start..body_start].copy_from_slice(&body_len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn byte_by_byte_arrival() {
        let wire = frame(b"{\"cmd\":\"heartbeat\"}");
        for end in 0..wire.len() {
            assert_eq!(
                check_frame(&wire[..end], 4096),
                Ok(None),
                "prefix of {end} bytes"
            );
        }
        assert_eq!(
            check_frame(&wire, 4096),
            Ok(Some(wire.len() - HEADER_BYTES))
        );
    }

    #[test]
    fn many_frames_in_one_buffer() {
        let bodies: [&[u8]; 3] = [b"a", b"{\"cmd\":\"position\"}", b"xyz"];
        let mut wire = Vec::new();
        for b in bodies {
            wire.extend_from_slice(&frame(b));
        }
        // A partial fourth frame at the end must be left alone.
        wire.extend_from_slice(&[0, 0, 0, 9, b'{']);

        let mut rest = &wire[..];
        for b in bodies {
            let len = check_frame(rest, 4096).unwrap().unwrap();
            assert_eq!(&rest[HEADER_BYTES..HEADER_BYTES + len], b);
            rest = &rest[HEADER_BYTES + len..];
        }
        assert_eq!(check_frame(rest, 4096), Ok(None));
    }

    #[test]
    fn zero_length_is_an_error() {
        assert_eq!(
            check_frame(&[0, 0, 0, 0], 4096),
            Err(FrameError::ZeroLength)
        );
        assert_eq!(check_frame(&[0, 0, 0], 4096), Ok(None));
    }

    #[test]
    fn over_limit_decided_from_header_alone() {
        let header = 4097u32.to_be_bytes();
        assert_eq!(
            check_frame(&header, 4096),
            Err(FrameError::TooLong {
                len: 4097,
                max: 4096
            })
        );
        assert_eq!(
            check_frame(&u32::MAX.to_be_bytes(), 4096),
            Err(FrameError::TooLong {
                len: u32::MAX,
                max: 4096
            })
        );
        assert_eq!(check_frame(&header[..3], 4096), Ok(None));
    }

    #[test]
    fn exact_limit_accepted() {
        let body = vec![b'x'; 4096];
        let wire = frame(&body);
        assert_eq!(check_frame(&wire[..HEADER_BYTES], 4096), Ok(None));
        assert_eq!(check_frame(&wire[..wire.len() - 1], 4096), Ok(None));
        assert_eq!(check_frame(&wire, 4096), Ok(Some(4096)));
    }

    #[test]
    fn begin_end_round_trip() {
        let mut out = BytesMut::with_capacity(64);
        out.extend_from_slice(b"junk before");
        let start = begin_frame(&mut out);
        out.extend_from_slice(b"hello");
        end_frame(&mut out, start);
        let second = begin_frame(&mut out);
        out.extend_from_slice(b"!");
        end_frame(&mut out, second);

        let rest = &out[start..];
        assert_eq!(check_frame(rest, 16), Ok(Some(5)));
        assert_eq!(&rest[HEADER_BYTES..HEADER_BYTES + 5], b"hello");
        let rest = &rest[HEADER_BYTES + 5..];
        assert_eq!(check_frame(rest, 16), Ok(Some(1)));
        assert_eq!(&rest[HEADER_BYTES..], b"!");
    }

    #[test]
    fn display() {
        assert_eq!(FrameError::ZeroLength.to_string(), "frame length is 0");
        assert_eq!(
            FrameError::TooLong {
                len: 5000,
                max: 4096
            }
            .to_string(),
            "frame length 5000 exceeds the maximum of 4096"
        );
    }
}
