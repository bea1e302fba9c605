//! The owner's side of the node link: an acceptor on `cluster.advertise_link`; each
//! accepted edge connection becomes a *virtual loop* of this node's core.
//!
//! After the preambles the edge names itself (`hello`): the link's counters (`stats`)
//! are labelled with that node id; the owner answers with its incarnation (`hello`), by
//! which the edge tells this process from a later one at the same address. Per connection, two threads:
//! - the reader decodes each frame's `Join`/`Leave`/`Disconnect` (as from the virtual
//!   loop) and puts them into the core's inbox like an io loop does;
//! - the writer sleeps on the virtual loop's doorbell (the same [`crate::doorbell`] pair
//!   a monoio loop awaits, read here with a blocking read), drains its channel after each
//!   ring and writes everything it got as one frame (split past
//!   [`codec::FRAME_SPLIT_BYTES`]): one frame per core flush.
//!
//! Invariants:
//! - virtual loop ids are taken in order from `first_loop` (above the io loops) and
//!   never reused in a process: events the core still holds for a closed link's sessions
//!   can never reach another link (past `LoopId::MAX` new links are refused);
//! - the core never waits long on a link: the writer has a write timeout, and a link
//!   that does not take its frames within it is closed (its channel drops, the core
//!   stops sending to it); the edge reconnects;
//! - a broken frame closes the link (see [`codec`]).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::codec::{self, FrameBuf, Reader, PREAMBLE};
use super::hello::{read_hello, write_incarnation};
use super::stats::{LinkRegistry, LinkStats, Side};
use crate::doorbell::{self, BellRx};
use crate::msg::{CoreMsg, LoopEvent, LoopId};

/// Longest a peer may take to send its preamble, and a frame write may block.
pub const LINK_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What every accepted link needs.
#[derive(Clone)]
struct Wiring {
    /// The core's inbox.
    core: Sender<CoreMsg>,
    /// Capacity of each virtual loop's event channel.
    channel_capacity: usize,
    /// Open link sockets, shut on stop.
    open: Arc<Mutex<Vec<TcpStream>>>,
    /// Every peer link's counters.
    stats: Arc<LinkRegistry>,
    /// This process's incarnation, sent after the edge's hello.
    incarnation: u64,
}

/// The running acceptor; stops (and shuts every link) on [`LinkAcceptor::stop`] or drop.
pub struct LinkAcceptor {
    /// The bound address.
    addr: SocketAddr,
    /// Set to stop the accept loop.
    stop: Arc<AtomicBool>,
    /// Open link sockets.
    open: Arc<Mutex<Vec<TcpStream>>>,
    /// The accept thread.
    thread: Option<JoinHandle<()>>,
}

impl LinkAcceptor {
    /// Accepts links on `listener`; the first becomes virtual loop `first_loop`; each
    /// edge is told `incarnation` (this process's, see `hello`).
    pub fn start(
        listener: TcpListener,
        core: Sender<CoreMsg>,
        (first_loop, incarnation): (LoopId, u64),
        channel_capacity: usize,
        stats: Arc<LinkRegistry>,
    ) -> std::io::Result<LinkAcceptor> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(false)?;
        let stop = Arc::new(AtomicBool::new(false));
        let wiring = Wiring {
            core,
            channel_capacity,
            open: Arc::default(),
            stats,
            incarnation,
        };
        let open = wiring.open.clone();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("link-accept".into())
            .spawn(move || accept_loop(&listener, &wiring, first_loop, &flag))?;
        Ok(LinkAcceptor {
            addr,
            stop,
            open,
            thread: Some(thread),
        })
    }

    /// Where the acceptor listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open link (they may reconnect): what a network cut does.
    pub fn close_links(&self) {
        for s in self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Stops accepting and closes every link.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        for s in self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for LinkAcceptor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: &TcpListener, wiring: &Wiring, first_loop: LoopId, stop: &AtomicBool) {
    let mut next = Some(first_loop);
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let Some(loop_id) = next else {
            tracing::error!("node link refused: every virtual loop id was used; restart the node");
            continue;
        };
        match open_link(stream, wiring, loop_id) {
            Ok(()) => next = loop_id.checked_add(1),
            Err(e) => tracing::warn!(error = %e, "node link not opened"),
        }
    }
}

/// Checks the peer's preamble, attaches the virtual loop, starts its two threads.
fn open_link(mut stream: TcpStream, wiring: &Wiring, loop_id: LoopId) -> std::io::Result<()> {
    let peer = stream.peer_addr()?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(LINK_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(LINK_IO_TIMEOUT))?;
    let mut preamble = [0u8; 4];
    stream.read_exact(&mut preamble)?;
    if &preamble != PREAMBLE {
        return Err(std::io::Error::other(codec::CodecError::BadPreamble));
    }
    stream.write_all(PREAMBLE)?;
    let node = read_hello(&mut stream)?;
    write_incarnation(&mut stream, wiring.incarnation)?;
    // Frames may be far apart (an idle queue): only writes keep a timeout.
    stream.set_read_timeout(None)?;
    let (events, rx) = crossbeam_channel::bounded(wiring.channel_capacity);
    let (bell, bell_rx) = doorbell::pair()?;
    wiring
        .core
        .send(CoreMsg::AttachLoop {
            loop_id,
            events,
            bell,
        })
        .map_err(|_| std::io::Error::other("queue core stopped"))?;
    let reader = stream.try_clone()?;
    let writer = stream.try_clone()?;
    wiring
        .open
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(stream);
    let core = wiring.core.clone();
    let stats = wiring.stats.get(&node, Side::Owner);
    let out_stats = stats.clone();
    stats.opened();
    let unopened = stats.clone();
    std::thread::Builder::new()
        .name(format!("link-in-{loop_id}"))
        .spawn(move || read_link(reader, &core, loop_id, &stats))
        .inspect_err(|_| unopened.closed())?;
    std::thread::Builder::new()
        .name(format!("link-out-{loop_id}"))
        .spawn(move || write_link(writer, &rx, bell_rx, loop_id, &out_stats))?;
    tracing::info!(%peer, node, loop_id, "node link opened");
    Ok(())
}

/// Decodes the edge's frames into the core's inbox until the link ends.
fn read_link(mut stream: TcpStream, core: &Sender<CoreMsg>, loop_id: LoopId, stats: &LinkStats) {
    let why = read_frames(&mut stream, core, loop_id, stats);
    tracing::info!(loop_id, why, "node link closed");
    stats.closed();
    let _ = stream.shutdown(Shutdown::Both);
    // Its players' places go into grace: they resume by logging in again anywhere.
    let _ = core.send(CoreMsg::DetachLoop { loop_id });
}

/// Puts each frame's messages into the core until the link ends; returns why it ended.
fn read_frames(
    stream: &mut TcpStream,
    core: &Sender<CoreMsg>,
    loop_id: LoopId,
    stats: &LinkStats,
) -> String {
    let mut body = Vec::new();
    loop {
        match codec::read_frame(stream, &mut body) {
            Ok(true) => {}
            Ok(false) => return "closed by the edge".to_string(),
            Err(e) => return e.to_string(),
        }
        let mut r = match Reader::new(&body) {
            Ok(r) => r,
            Err(e) => return e.to_string(),
        };
        let (mut messages, mut resubmitted) = (0, 0);
        while r.more() {
            match r.core_msg(loop_id) {
                // Blocking is fine here: this thread serves only this link.
                Ok(msg) => {
                    messages += 1;
                    resubmitted += u64::from(matches!(msg, CoreMsg::Resubmit { .. }));
                    if core.send(msg).is_err() {
                        return "the queue core stopped".to_string();
                    }
                }
                Err(e) => return e.to_string(),
            }
        }
        stats.received(body.len() + 4, messages);
        stats.resubmitted(resubmitted);
    }
}

/// Writes everything the core sent the virtual loop, one frame per ring, until the
/// link or the core ends.
fn write_link(
    mut stream: TcpStream,
    rx: &Receiver<LoopEvent>,
    bell: BellRx,
    loop_id: LoopId,
    stats: &LinkStats,
) {
    let (armed, mut bell) = bell.into_parts();
    if bell.set_nonblocking(false).is_err() {
        return;
    }
    let mut frame = FrameBuf::default();
    let mut ring = [0u8; 64];
    loop {
        let mut gone = false;
        loop {
            match rx.try_recv() {
                Ok(event) => frame.put_event(&event),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    gone = true;
                    break;
                }
            }
            if frame.len() >= codec::FRAME_SPLIT_BYTES && !send(&mut stream, &mut frame, stats) {
                return;
            }
        }
        if !frame.is_empty() && !send(&mut stream, &mut frame, stats) {
            return;
        }
        if gone {
            return;
        }
        doorbell::arm(&armed);
        if !rx.is_empty() {
            doorbell::disarm(&armed);
            continue;
        }
        match bell.read(&mut ring) {
            Ok(0) => return, // the core dropped its bell: it stopped
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(loop_id, error = %e, "node link doorbell failed");
                return;
            }
        }
    }
}

/// Writes the frame; false (and the socket shut) when the link is broken or too slow.
fn send(stream: &mut TcpStream, frame: &mut FrameBuf, stats: &LinkStats) -> bool {
    let bytes = frame.finish();
    let ok = stream.write_all(bytes).is_ok();
    if ok {
        stats.sent(bytes.len());
    }
    frame.clear();
    if !ok {
        let _ = stream.shutdown(Shutdown::Both);
    }
    ok
}

#[cfg(test)]
mod tests;
