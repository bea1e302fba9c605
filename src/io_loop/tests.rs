//! Per-connection costs of the loop side.

use std::rc::Rc;

use monoio::net::TcpStream;

use super::serve;
use crate::session::{self, Session};
use crate::shard::Shard;

/// Size of what a two-argument `f` returns, without calling it.
fn returned_bytes_2<A, B, R>(_f: impl FnOnce(A, B) -> R) -> usize {
    std::mem::size_of::<R>()
}

/// The per-connection heap objects of an idle logged-in session stay small: this
/// is what each one costs on top of its read buffer (see
/// `bench/results/conn-memory-2026-11-26b.md` for the whole breakdown).
#[test]
fn per_connection_objects_stay_small() {
    let session = std::mem::size_of::<Session>();
    let serve_future = returned_bytes_2(serve);
    let write_future = returned_bytes_2(session::write_loop);
    let read_future = returned_bytes_2(|shard: &'static Shard, session: &'static Rc<Session>| {
        session::read_loop(shard, session)
    });
    let stream = std::mem::size_of::<TcpStream>();
    eprintln!(
        "TcpStream {stream} B, Session {session} B, serve future {serve_future} B (read loop {read_future} B), \
         write future {write_future} B"
    );
    // Measured 2026-11-26b (debug build): Session 296 B, serve future
    // 296 B (read loop 240 B), write future 248 B; they were 344, 328 (272), 312.
    // The bounds are the edges of mimalloc's size classes (..., 256, 320, 384): an
    // `Rc<Session>` (+16 B counts) and a task cell (+~40 B header and trailer) must
    // stay in the 320-byte class, and the serve future must not give back what it
    // gained. Growing past them costs every idle player 64 B (640 KB at 10,000) and
    // must be a decision, not an accident.
    assert!(session <= 304, "Session grew to {session} B");
    assert!(serve_future <= 296, "serve future grew to {serve_future} B");
    assert!(write_future <= 280, "write future grew to {write_future} B");
}
