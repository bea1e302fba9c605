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
/// `bench/results/conn-memory-2026-11-26.md` for the whole breakdown).
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
    // Measured 2026-11-26 (debug and release alike): 344, 328, 312 (the serve future
    // was 672 B while it kept the stream and address it was spawned with). Headroom
    // of about 15%: growing past these bounds costs every idle player (10,000 players
    // x 100 B = 1 MB) and must be a decision, not an accident.
    assert!(session <= 384, "Session grew to {session} B");
    assert!(serve_future <= 384, "serve future grew to {serve_future} B");
    assert!(write_future <= 384, "write future grew to {write_future} B");
}
