//! A session's two tasks: the reader (frames in, handled one by one) and the writer
//! (one write per batch of ready frames), plus the answer to a refused connection.
//! The loop spawns them (`io_loop::serve`) and releases the session when both end.

use std::os::fd::AsRawFd;
use std::rc::Rc;

use bytes::{Buf, BytesMut};
use monoio::buf::{IoBuf, IoBufMut, Slice};
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
///
/// Its future is the writer task's whole state, kept by every idle connection: each
/// await holds only the awaited future (see [`write_some`]), no buffer beside it.
pub async fn write_loop(shard: Rc<Shard>, session: Rc<Session>) {
    loop {
        let out = session.out.take();
        if out.is_empty() {
            session.out.set(out);
            if session.closing() {
                break;
            }
            session.write_ready.wait().await;
            continue;
        }
        let end = out.len();
        let mut pending = out.slice(..);
        let failed = loop {
            let (res, done) = write_some(&session, pending).await;
            let from = done.begin();
            let mut buf = done.into_inner();
            match res {
                Ok(n) if n > 0 && from + n < end => pending = buf.slice(from + n..end),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    pending = buf.slice(from..end)
                }
                res => {
                    buf.clear();
                    shard.pools.write_put(buf);
                    // 0 bytes written is a dead peer, as for monoio's `write_all`.
                    break !matches!(res, Ok(n) if n > 0);
                }
            }
        };
        if failed {
            break;
        }
    }
    // SAFETY: see `Session::abort`.
    unsafe { libc::shutdown(session.fd, libc::SHUT_RDWR) };
}

/// One write of `pending` (monoio's `write_all` would do the loop, but its future keeps
/// its buffer argument beside the one inside the operation: 32 bytes more in every
/// writer task).
fn write_some(
    session: &Session,
    pending: Slice<BytesMut>,
) -> impl std::future::Future<Output = monoio::BufResult<usize, Slice<BytesMut>>> + '_ {
    session.stream().write(pending)
}

/// Reads and handles frames until the connection ends; returns the read buffer it
/// holds then, if any.
///
/// An idle connection holds no read buffer: once every frame read so far is handled,
/// the buffer goes back to the loop's pool and the reader waits for readability (an
/// io_uring poll, no buffer attached); it takes a buffer again only when bytes are
/// there. A partial frame keeps its buffer until the frame is complete.
pub async fn read_loop(shard: &Shard, session: &Rc<Session>) -> Option<BytesMut> {
    // `held` is only ever moved, never borrowed: a borrowed local keeps its place in
    // the future across every later await (rustc's layout rule), which would make
    // every idle connection's reader task 32 bytes larger.
    let mut held: Option<BytesMut> = None;
    loop {
        while let Some(mut buf) = held {
            match handle_frames(shard, session, &mut buf) {
                Handled::Stop => return Some(buf),
                Handled::NeedBytes => {
                    held = keep_unhandled(shard, buf);
                    break;
                }
                Handled::LoginPending => {
                    // An emptied buffer goes back to the pool while the core answers:
                    // a login storm holds no read buffer per login in flight (the
                    // pool, and the RSS it keeps, would grow to their number).
                    held = keep_unhandled(shard, buf);
                    while session.phase() == Phase::LoginPending {
                        session.login_answered.wait().await;
                    }
                    if held.is_none() && session.closing() {
                        return None;
                    }
                }
            }
        }
        // The buffer is a local of this block only, so that while the read is in
        // flight the future holds the read operation (which owns the buffer) alone.
        let (res, tail) = {
            let pending = held; // moved: not kept beside the read operation either
            let mut buf = match pending {
                Some(buf) => buf,
                None => {
                    if session.stream().readable(false).await.is_err() {
                        return None;
                    }
                    shard.pools.read_get()
                }
            };
            if buf.capacity() - buf.len() < READ_SPARE_BYTES {
                buf.reserve(READ_BUF_BYTES);
            }
            // monoio reads at the buffer's start: hand it the spare tail only.
            let filled = buf.len();
            session.stream().read(buf.slice_mut(filled..))
        }
        .await;
        let buf = tail.into_inner();
        match res {
            Ok(0) | Err(_) => return Some(buf),
            Ok(_) => held = Some(buf),
        }
    }
}

/// `buf` after its whole frames were handled: kept while it holds a partial frame,
/// back to the pool when empty (an idle connection holds no read buffer).
fn keep_unhandled(shard: &Shard, buf: BytesMut) -> Option<BytesMut> {
    if buf.is_empty() {
        shard.pools.read_put(buf);
        None
    } else {
        Some(buf)
    }
}

/// What [`handle_frames`] stopped at.
enum Handled {
    /// Every whole frame is handled; more bytes are needed (room is made for them).
    NeedBytes,
    /// A `login` is with the core: no further frame until it is answered.
    LoginPending,
    /// The session is closing: stop reading.
    Stop,
}

/// Handles the whole frames in `buf` up to the first login that must wait for the
/// core; makes room for a partial frame.
fn handle_frames(shard: &Shard, session: &Session, buf: &mut BytesMut) -> Handled {
    loop {
        if session.phase() == Phase::LoginPending {
            return Handled::LoginPending;
        }
        if session.closing() {
            return Handled::Stop;
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
                return Handled::NeedBytes;
            }
            Err(e) => {
                frames::reply_error(shard, session, "", 0, Code::BadFrame, &e.to_string());
                session.close();
                return Handled::Stop;
            }
        }
    }
}
