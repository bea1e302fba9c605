//! `echo-server`: a bare frame echo server with the server's framing and threading
//! (one pinned monoio thread per core, each with its own SO_REUSEPORT listener, bound
//! by the server's own `reuseport_listeners`) and
//! nothing else: no JSON, no channel, no queue. `pingpong` against it measures the
//! ceiling of this machine; against queue-server, how close the server gets to it.
//!
//! Invariants:
//! - a frame is checked from its 4-byte header alone (`queue_server::frame::check_frame`)
//!   and a bad header closes the connection, as in the server;
//! - every whole frame of one read goes back in one write; a partial frame waits;
//! - one read buffer and one write buffer per connection for its whole life.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::{Buf, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use queue_server::frame::{check_frame, HEADER_BYTES};

use crate::client::block_on;

/// Largest frame body echoed (the server's default `max_frame_bytes`).
const MAX_FRAME_BYTES: u32 = 4096;

/// A running echo server.
pub struct EchoServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Tells the accept loops to stop.
    stop: Arc<AtomicBool>,
    /// One thread per core.
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    /// Binds `cores` listeners on `addr` (port 0 picks one) and starts a thread each,
    /// pinned round-robin to `cpus` when given.
    pub fn start(addr: SocketAddr, cores: usize, cpus: &[usize]) -> std::io::Result<EchoServer> {
        let listeners = queue_server::server::reuseport_listeners(addr, cores.max(1))?;
        let addr = listeners[0].local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let threads = listeners
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let stop = stop.clone();
                let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
                std::thread::Builder::new()
                    .name(format!("echo-{i}"))
                    .spawn(move || {
                        if let Some(id) = cpu {
                            core_affinity::set_for_current(core_affinity::CoreId { id });
                        }
                        block_on(accept(l, stop));
                    })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(EchoServer {
            addr,
            stop,
            threads,
        })
    }

    /// Stops accepting and ends the threads (open connections are dropped).
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake each accept loop with a connection it will see the flag after.
        for _ in &self.threads {
            let _ = std::net::TcpStream::connect(self.addr);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// Runs until the process is killed.
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

async fn accept(l: std::net::TcpListener, stop: Arc<AtomicBool>) {
    let Ok(listener) = TcpListener::from_std(l) else {
        return;
    };
    while !stop.load(Ordering::SeqCst) {
        match listener.accept().await {
            Ok((stream, _)) => {
                monoio::spawn(echo(stream));
            }
            // Out of descriptors (or another transient error): retrying at once would
            // spin this thread; wait for connections to close.
            Err(_) => monoio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

async fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut rbuf = BytesMut::with_capacity(4096);
    let mut wbuf = BytesMut::with_capacity(4096);
    loop {
        // Every whole frame now in the buffer goes into one write.
        let mut whole = 0;
        loop {
            match check_frame(&rbuf[whole..], MAX_FRAME_BYTES) {
                Ok(Some(len)) => whole += HEADER_BYTES + len,
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if whole > 0 {
            wbuf.extend_from_slice(&rbuf[..whole]);
            rbuf.advance(whole);
            let (res, b) = stream.write_all(wbuf).await;
            wbuf = b;
            wbuf.clear();
            if res.is_err() {
                return;
            }
        }
        if rbuf.capacity() - rbuf.len() < 512 {
            rbuf.reserve(4096);
        }
        let filled = rbuf.len();
        let (res, tail) = stream.read(rbuf.slice_mut(filled..)).await;
        rbuf = tail.into_inner();
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
