//! A session's two tasks: the reader (frames in, handled one by one) and the writer
//! (one write per batch of ready frames), plus the answer to a refused connection.
//! The loop spawns them (`io_loop::serve`) and releases the session when both end.

use std::os::fd::AsRawFd;
use std::rc::Rc;

use bytes::{Buf, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::{frames, Phase, Session};
use crate::frame::{check_frame, HEADER_BYTES};
use crate::limits::Refused;
use crate::protocol::{self, Code};
use crate::shard::pools::READ_BUF_BYTES;
use crate::shard::Shard;

/// Spare room a read is given at least (bytes).
const READ_SPARE_BYTES: usize = 64;

/// Answers a connection over the connection limits with RATE_LIMITED and closes it.
pub async fn refuse(mut stream: TcpStream, why: Refused) {
    let mut out = BytesMut::with_capacity(128);
    protocol::encode_error(&mut out, "", 0, Code::RateLimited, why.message());
    let (_, _) = stream.write_all(out).await;
    let _ = stream.shutdown().await;
}

/// Sets up a fresh connection's socket: no Nagle delay, and a send buffer bounded by
/// `max_outbound_bytes` (the kernel's share of a slow reader; autotuning allows MBs).
pub fn tune_socket(stream: &TcpStream, max_outbound_bytes: usize) {
    let _ = stream.set_nodelay(true);
    let sndbuf = max_outbound_bytes as libc::c_int;
    // SAFETY: setsockopt on our own socket with a correctly sized int.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&sndbuf as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Writes what the session was sent until it closes and everything is flushed (or the
/// socket fails), then shuts the socket down.
pub async fn write_loop(shard: Rc<Shard>, session: Rc<Session>) {
    loop {
        if session.out.borrow().is_empty() {
            if session.closing() {
                break;
            }
            session.write_ready.wait().await;
            continue;
        }
        let buf = std::mem::take(&mut *session.out.borrow_mut());
        let (res, mut buf) = session.stream().write_all(buf).await;
        buf.clear();
        shard.pools.write_put(buf);
        if res.is_err() {
            break;
        }
    }
    // SAFETY: see `Session::abort`.
    unsafe { libc::shutdown(session.fd, libc::SHUT_RDWR) };
}

/// Reads and handles frames until the connection ends; returns the read buffer it
/// holds then, if any.
///
/// An idle connection holds no read buffer: once every frame read so far is handled,
/// the buffer goes back to the loop's pool and the reader waits for readability (an
/// io_uring poll, no buffer attached); it takes a buffer again only when bytes are
/// there. A partial frame keeps its buffer until the frame is complete.
pub async fn read_loop(shard: &Shard, session: &Rc<Session>) -> Option<BytesMut> {
    let mut held: Option<BytesMut> = None;
    loop {
        if let Some(buf) = held.as_mut() {
            if !handle_frames(shard, session, buf).await {
                return held;
            }
        }
        if held.as_ref().is_some_and(|b| b.is_empty()) {
            // Nothing pending: do not hold a buffer while the client is quiet.
            if let Some(buf) = held.take() {
                shard.pools.read_put(buf);
            }
        }
        if held.is_none() {
            if session.stream().readable(false).await.is_err() {
                return None;
            }
            held = Some(shard.pools.read_get());
        }
        let mut buf = held.take()?;
        if buf.capacity() - buf.len() < READ_SPARE_BYTES {
            buf.reserve(READ_BUF_BYTES);
        }
        // monoio reads at the buffer's start: hand it the spare tail only.
        let filled = buf.len();
        let (res, tail) = session.stream().read(buf.slice_mut(filled..)).await;
        let buf = tail.into_inner();
        match res {
            Ok(0) | Err(_) => return Some(buf),
            Ok(_) => held = Some(buf),
        }
    }
}

/// Handles every whole frame in `buf`, waiting out each login's answer; makes room for
/// a partial one. False when the session is closing (stop reading).
async fn handle_frames(shard: &Shard, session: &Session, buf: &mut BytesMut) -> bool {
    loop {
        if session.phase() == Phase::LoginPending {
            session.login_answered.wait().await;
            continue;
        }
        if session.closing() {
            return false;
        }
        // A stranger may not make us buffer a full-size frame.
        let max = if session.phase() == Phase::Connected {
            shard.cfg.max_login_frame_bytes
        } else {
            shard.cfg.max_frame_bytes
        };
        match check_frame(buf, max) {
            Ok(Some(len)) => {
                frames::handle_frame(shard, session, &buf[HEADER_BYTES..HEADER_BYTES + len]);
                buf.advance(HEADER_BYTES + len);
            }
            Ok(None) => {
                if buf.len() >= HEADER_BYTES {
                    let need = HEADER_BYTES
                        + u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    buf.reserve(need - buf.len());
                }
                return true;
            }
            Err(e) => {
                frames::reply_error(shard, session, "", 0, Code::BadFrame, &e.to_string());
                session.close();
                return false;
            }
        }
    }
}
