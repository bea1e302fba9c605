//! Client threads and player connections: each client thread runs one monoio runtime
//! (io_uring, or the legacy epoll driver where io_uring cannot be set up), optionally
//! pinned, driving its share of the connections; a connection is a socket plus a
//! [`FrameReader`] and the helpers to log in and to read frames.
//!
//! Invariants:
//! - users are dealt to threads round-robin (user `i` on thread `i % threads`), and to
//!   source addresses round-robin, so every thread and address gets an even share;
//! - a thread never blocks: cross-thread waits poll an atomic between short sleeps;
//! - `FrameReader` keeps one buffer for the connection's life and hands out bodies by
//!   length; need-more-bytes is a normal state, not an error.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use queue_server::frame::{check_frame, HEADER_BYTES};
use socket2::{Domain, Protocol, Socket, Type};

use crate::wire::{self, Reply};

/// Largest frame the bench accepts from a server (tokens are a few hundred bytes).
const MAX_FRAME_BYTES: u32 = 1 << 20;

/// Where the client threads run.
#[derive(Clone, Debug, Default)]
pub struct Threads {
    /// Number of client threads.
    pub count: usize,
    /// CPUs to pin them to, round-robin (empty = no pinning).
    pub cpus: Vec<usize>,
}

/// Runs `f` on a fresh monoio runtime (io_uring with timer; epoll when that fails).
pub fn block_on<F: Future>(fut: F) -> F::Output {
    match monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(4096)
        .enable_timer()
        .build()
    {
        Ok(mut rt) => {
            crate::pacer::reset(matches!(rt, monoio::FusionRuntime::Legacy(_)));
            rt.block_on(fut)
        }
        Err(_) => {
            crate::pacer::reset(true);
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .expect("cannot build even the legacy monoio runtime")
                .block_on(fut)
        }
    }
}

/// Runs `make(thread_index)` on each client thread; returns their results in order.
pub fn run_threads<T, F, Fut>(threads: &Threads, make: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = T>,
{
    let n = threads.count.max(1);
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let make = make.clone();
            let cpu = (!threads.cpus.is_empty()).then(|| threads.cpus[i % threads.cpus.len()]);
            std::thread::Builder::new()
                .name(format!("bench-{i}"))
                .spawn(move || {
                    if let Some(id) = cpu {
                        core_affinity::set_for_current(core_affinity::CoreId { id });
                    }
                    block_on(make(i))
                })
                .expect("spawn client thread")
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("client thread panicked"))
        .collect()
}

/// Users `0..users` that thread `thread` of `threads` drives.
pub fn share(users: u64, thread: usize, threads: usize) -> impl Iterator<Item = u64> {
    (thread as u64..users).step_by(threads.max(1))
}

/// Counts threads through a phase; each waits (without blocking its runtime) until all
/// have arrived.
#[derive(Debug, Default)]
pub struct Gate {
    /// Threads arrived.
    arrived: AtomicUsize,
}

impl Gate {
    /// Arrives and waits for `n` arrivals or `deadline`.
    pub async fn wait(&self, n: usize, deadline: Instant) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        while self.arrived.load(Ordering::SeqCst) < n && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Waits until `at` (returns at once when it has passed), to within tens of
/// microseconds: see [`crate::pacer`].
pub async fn sleep_until(at: Instant) {
    crate::pacer::until(at).await;
}

/// Opens a connection to `target`, from `source` when given (bind before connect).
pub async fn connect(target: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let stream = match source {
        None => TcpStream::connect_addr(target).await?,
        Some(ip) => {
            let socket = Socket::new(
                Domain::for_address(target),
                Type::STREAM,
                Some(Protocol::TCP),
            )?;
            socket.bind(&SocketAddr::new(ip, 0).into())?;
            socket.set_nonblocking(true)?;
            match socket.connect(&target.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => return Err(e),
            }
            let std_stream: std::net::TcpStream = socket.into();
            let stream = TcpStream::from_std(std_stream)?;
            stream.writable(false).await?;
            // SAFETY: the descriptor is owned by `stream`, alive for this borrow.
            let fd = unsafe {
                std::os::fd::BorrowedFd::borrow_raw(std::os::fd::AsRawFd::as_raw_fd(&stream))
            };
            if let Some(e) = socket2::SockRef::from(&fd).take_error()? {
                return Err(e);
            }
            stream
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Writes `buf` whole, clears it and gives it back.
pub async fn write<W: AsyncWriteRentExt>(w: &mut W, buf: BytesMut) -> (io::Result<()>, BytesMut) {
    let (res, mut buf) = w.write_all(buf).await;
    buf.clear();
    (res.map(|_| ()), buf)
}

/// Reads frames from one connection.
#[derive(Debug)]
pub struct FrameReader {
    /// Bytes read and not yet consumed.
    buf: BytesMut,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader {
            buf: BytesMut::with_capacity(1024),
        }
    }
}

impl FrameReader {
    /// Waits for a whole frame; `Ok(Some(len))`: its body is [`FrameReader::body`] until
    /// [`FrameReader::consume`]. `Ok(None)`: the server closed the connection.
    pub async fn next<R: AsyncReadRent>(&mut self, r: &mut R) -> io::Result<Option<usize>> {
        loop {
            match check_frame(&self.buf, MAX_FRAME_BYTES) {
                Ok(Some(len)) => return Ok(Some(len)),
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
            if self.buf.capacity() - self.buf.len() < 256 {
                self.buf.reserve(4096);
            }
            let filled = self.buf.len();
            let buf = std::mem::take(&mut self.buf);
            let (res, tail) = r.read(buf.slice_mut(filled..)).await;
            self.buf = tail.into_inner();
            if res? == 0 {
                return Ok(None);
            }
        }
    }

    /// The body of the frame [`FrameReader::next`] found.
    pub fn body(&self, len: usize) -> &[u8] {
        &self.buf[HEADER_BYTES..HEADER_BYTES + len]
    }

    /// Drops that frame.
    pub fn consume(&mut self, len: usize) {
        self.buf.advance(HEADER_BYTES + len);
    }
}

/// Why a player's request did not succeed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The server answered with this protocol code.
    Code(u8),
    /// Connect, read or write failed (`io: <kind>`).
    Io(String),
    /// The server closed the connection (after `kicked` with this reason, if any).
    Closed(Option<String>),
    /// A frame that is not the protocol's JSON.
    Garbage,
}

impl Failure {
    /// The key the error is counted under.
    pub fn key(&self) -> String {
        match self {
            Failure::Code(c) => wire::code_key(*c),
            Failure::Io(kind) => format!("io: {kind}"),
            Failure::Closed(None) => "closed by server".into(),
            Failure::Closed(Some(reason)) => format!("kicked {reason}"),
            Failure::Garbage => "unparsable frame".into(),
        }
    }

    /// From an I/O error.
    pub fn io(e: &io::Error) -> Failure {
        Failure::Io(format!("{:?}", e.kind()))
    }
}

/// What a frame from the server was.
pub enum Frame {
    /// The answer to request `seq`: its code and (for login/position) position.
    Answer {
        /// Echoed seq.
        seq: u32,
        /// Protocol code.
        code: u8,
        /// `data.position`, when present.
        position: Option<u64>,
    },
    /// A `position` push.
    Position(u64),
    /// An `admitted` push with its token.
    Admitted(String),
    /// A `kicked` push.
    Kicked(String),
    /// Some other push.
    Other,
}

/// Classifies one frame body.
pub fn classify(body: &[u8]) -> Result<Frame, Failure> {
    let r: Reply<'_> = wire::decode(body).ok_or(Failure::Garbage)?;
    let data = r.data.unwrap_or_default();
    if r.seq != 0 || r.cmd.is_empty() {
        return Ok(Frame::Answer {
            seq: r.seq,
            code: r.code,
            position: data.position,
        });
    }
    Ok(match r.cmd {
        "position" => Frame::Position(data.position.unwrap_or(0)),
        "admitted" => Frame::Admitted(data.token.unwrap_or("").to_string()),
        "kicked" => Frame::Kicked(data.reason.unwrap_or("").to_string()),
        _ => Frame::Other,
    })
}

/// Reads until the answer to `seq`; pushes on the way go to `on_push`.
pub async fn answer<R: AsyncReadRent>(
    r: &mut R,
    reader: &mut FrameReader,
    seq: u32,
    mut on_push: impl FnMut(Frame),
) -> Result<Option<u64>, Failure> {
    let mut kicked = None;
    loop {
        let len = match reader.next(r).await {
            Ok(Some(len)) => len,
            Ok(None) => return Err(Failure::Closed(kicked)),
            Err(e) => return Err(Failure::io(&e)),
        };
        let frame = classify(reader.body(len));
        reader.consume(len);
        match frame? {
            Frame::Answer {
                seq: s,
                code,
                position,
            } if s == seq => {
                return if code == 0 {
                    Ok(position)
                } else {
                    Err(Failure::Code(code))
                };
            }
            Frame::Answer { code, .. } if code != 0 => return Err(Failure::Code(code)),
            Frame::Kicked(reason) => kicked = Some(reason),
            other => on_push(other),
        }
    }
}

/// Sends `login` for `user` and waits for the answer; returns the position.
pub async fn login(
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    wbuf: &mut BytesMut,
    user: u64,
    queue: Option<&str>,
) -> Result<u64, Failure> {
    wire::encode_login(wbuf, 1, user, queue);
    let (res, b) = write(stream, std::mem::take(wbuf)).await;
    *wbuf = b;
    res.map_err(|e| Failure::io(&e))?;
    Ok(answer(stream, reader, 1, |_| {}).await?.unwrap_or(0))
}

/// Sends `leave` and waits (briefly) for the server to close: gives the place up so
/// later scenarios start from an empty queue.
pub async fn leave(
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    wbuf: &mut BytesMut,
    seq: u32,
) {
    wire::encode_cmd(wbuf, "leave", seq);
    let (res, b) = write(stream, std::mem::take(wbuf)).await;
    *wbuf = b;
    if res.is_ok() {
        let _ = monoio::time::timeout(Duration::from_secs(2), answer(stream, reader, seq, |_| {}))
            .await;
    }
}
