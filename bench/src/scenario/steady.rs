//! `steady`: every player logs in, then sends one request (`position` or `heartbeat`)
//! per interval, the players spread evenly over the interval, for a duration: the
//! old Go server's client pattern. Open loop: each connection has a writer that keeps
//! the schedule and a reader that matches answers (in order) to intended send times.
//!
//! Beside `rtt` it reports `send_lag` (actual minus intended send time: the bench's
//! own lateness, sub-millisecond with [`crate::pacer`]) and `rtt_from_send` (from the
//! actual send), and the per-second series of `rtt`. `--warmup` runs the load for that
//! long first and drops its samples.
//!
//! Invariants:
//! - the RTT of a request is measured from its intended send time (coordinated
//!   omission): a late writer or a slow server shows as latency, not as fewer samples;
//! - a sample is dropped iff its intended send time is in the warm-up ([`Window`]);
//! - a request still unanswered `GRACE` after the window ends counts as an error
//!   ("no answer") and is recorded with the latency it had reached then;
//! - logins happen before the window and `leave` after it; neither is measured.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::io::Splitable;

use super::{BenchError, Common, Outcome, Phase};
use crate::client::{self, share, Failure, Frame, FrameReader};
use crate::pace::{Periodic, Ramp};
use crate::report::Tally;
use crate::series::Window;
use crate::wire;

/// How long after the window an unanswered request is given up.
const GRACE: Duration = Duration::from_secs(5);

/// Flags of `steady`.
#[derive(Clone, Debug)]
pub struct SteadyOpts {
    /// Players.
    pub users: u64,
    /// Time between two requests of one player.
    pub interval: Duration,
    /// Length of the measured window.
    pub duration: Duration,
    /// Load run before the window, not measured.
    pub warmup: Duration,
    /// `position` or `heartbeat`.
    pub cmd: String,
    /// Logins per second during setup; 0 = all at once.
    pub login_rate: f64,
    /// Send `leave` at the end.
    pub leave: bool,
}

/// Shared by the client threads.
#[derive(Default)]
struct Shared {
    /// Everyone logged in; released with the window's start.
    ready: Phase,
    /// Everyone done; released when the allocation window is closed.
    done: Phase,
}

/// Runs the scenario.
pub fn run(c: &Common, o: &SteadyOpts) -> Result<Outcome, BenchError> {
    c.check_capacity(o.users)?;
    if o.cmd != "position" && o.cmd != "heartbeat" {
        return Err(BenchError::Setup(format!(
            "--cmd {}: use position or heartbeat",
            o.cmd
        )));
    }
    let mut control = c.control();
    let shared = Arc::new(Shared::default());
    let threads = c.threads.count.max(1);
    let main = c.spawn_clients(o, &shared, thread);
    shared.ready.wait_all(threads);
    let probe = c.probe(&mut control);
    let start = Instant::now() + Duration::from_millis(50);
    shared.ready.release(start);
    shared.done.wait_all(threads);
    let alloc = c.probe_end(&mut control, probe);
    shared.done.release(Instant::now());
    let mut out = c.join_clients(main)?;
    out.ops = out.tally.get("answers");
    out.elapsed_s = o.duration.as_secs_f64();
    out.alloc = alloc;
    if o.interval.as_secs() >= 30 && o.cmd == "position" {
        out.notes.push(
            "an interval of 30 s or more lets the server's idle timeout (30 s) kick players".into(),
        );
    }
    out.hint();
    Ok(out)
}

async fn thread(c: Common, o: SteadyOpts, shared: Arc<Shared>, t: usize) -> Tally {
    let tally = Rc::new(RefCell::new(Tally::default()));
    // Setup: log everyone in.
    let ramp = Ramp {
        start: Instant::now(),
        rate_per_s: o.login_rate,
    };
    let mut logins = Vec::new();
    for i in share(o.users, t, c.threads.count) {
        let (c, tally) = (c.clone(), tally.clone());
        logins.push(monoio::spawn(async move {
            client::sleep_until(ramp.at(i)).await;
            let (s, r, w) = c.logged_in(i, &tally).await?;
            Some((i, s, r, w))
        }));
    }
    let mut players = Vec::new();
    for l in logins {
        players.extend(l.await);
    }
    let start = shared.ready.arrive().await;
    let window = Window::new(start, o.warmup, o.duration);
    let mut tasks = Vec::new();
    for (i, s, r, w) in players {
        let (tally, cmd) = (tally.clone(), o.cmd.clone());
        let sched = Periodic::spread(start, o.interval, i, o.users);
        tasks.push(monoio::spawn(player(tally, cmd, sched, window, s, r, w)));
    }
    let mut halves = Vec::new();
    for task in tasks {
        halves.extend(task.await);
    }
    shared.done.arrive().await;
    if o.leave {
        let leaving: Vec<_> = halves
            .into_iter()
            .map(|(mut rd, mut wr, mut r, mut w, seq)| {
                monoio::spawn(async move {
                    wire::encode_cmd(&mut w, "leave", seq);
                    let (res, _) = client::write(&mut wr, w).await;
                    if res.is_ok() {
                        let _ = monoio::time::timeout(
                            Duration::from_secs(2),
                            client::answer(&mut rd, &mut r, seq, |_| {}),
                        )
                        .await;
                    }
                })
            })
            .collect();
        for l in leaving {
            l.await;
        }
    }
    Rc::try_unwrap(tally)
        .map(RefCell::into_inner)
        .unwrap_or_default()
}

type Halves = (
    monoio::net::tcp::TcpOwnedReadHalf,
    monoio::net::tcp::TcpOwnedWriteHalf,
    FrameReader,
    BytesMut,
    u32,
);

/// What a player's writer and reader share.
#[derive(Default)]
struct Flight {
    /// (intended, actual) send times of the requests not yet answered, in order.
    inflight: RefCell<VecDeque<(Instant, Instant)>>,
    /// The writer has sent its last request (or failed).
    writer_done: Cell<bool>,
    /// Last seq sent.
    sent: Cell<u32>,
}

/// One player's window: a writer on schedule and a reader matching answers.
async fn player(
    tally: Rc<RefCell<Tally>>,
    cmd: String,
    sched: Periodic,
    window: Window,
    stream: monoio::net::TcpStream,
    mut reader: FrameReader,
    wbuf: BytesMut,
) -> Option<Halves> {
    let (mut rd, wr) = stream.into_split();
    let flight = Rc::new(Flight::default());
    flight.sent.set(1);
    let writer = monoio::spawn(writer(
        tally.clone(),
        cmd,
        sched,
        window.end,
        flight.clone(),
        wr,
        wbuf,
    ));
    let open = read_answers(&tally, &window, &flight, &mut rd, &mut reader).await;
    // Whatever is still in flight never got an answer in time.
    let now = Instant::now();
    for (at, sent_at) in flight.inflight.borrow_mut().drain(..) {
        let mut t = tally.borrow_mut();
        if window.keeps(at) {
            t.rtt.record(now - at);
            t.hist("send_lag").record(sent_at - at);
        }
        t.error("no answer");
    }
    let (wr, wbuf) = writer.await;
    let seq = flight.sent.get().wrapping_add(1).max(2);
    open.then_some((rd, wr, reader, wbuf, seq))
}

/// Sends one request at each intended time of `sched` before `end`.
async fn writer(
    tally: Rc<RefCell<Tally>>,
    cmd: String,
    sched: Periodic,
    end: Instant,
    flight: Rc<Flight>,
    mut wr: monoio::net::tcp::TcpOwnedWriteHalf,
    mut wbuf: BytesMut,
) -> (monoio::net::tcp::TcpOwnedWriteHalf, BytesMut) {
    let mut k = 0u64;
    loop {
        let at = sched.at(k);
        if at >= end {
            break;
        }
        client::sleep_until(at).await;
        let seq = flight.sent.get().wrapping_add(1).max(2);
        flight.sent.set(seq);
        flight.inflight.borrow_mut().push_back((at, Instant::now()));
        // Say "done" with the last request, not after it: its answer may be
        // read before this task runs again.
        if sched.at(k + 1) >= end {
            flight.writer_done.set(true);
        }
        wire::encode_cmd(&mut wbuf, &cmd, seq);
        let (res, b) = client::write(&mut wr, wbuf).await;
        wbuf = b;
        if let Err(e) = res {
            tally.borrow_mut().error(Failure::io(&e).key());
            break;
        }
        k += 1;
    }
    flight.writer_done.set(true);
    (wr, wbuf)
}

/// Reads answers until the writer is done and every request is answered, or until
/// `GRACE` after the window; false when the connection failed.
async fn read_answers(
    tally: &RefCell<Tally>,
    window: &Window,
    flight: &Flight,
    rd: &mut monoio::net::tcp::TcpOwnedReadHalf,
    reader: &mut FrameReader,
) -> bool {
    let cutoff = window.end + GRACE;
    while !(flight.writer_done.get() && flight.inflight.borrow().is_empty()) {
        let next = monoio::time::timeout(
            cutoff.saturating_duration_since(Instant::now()),
            reader.next(rd),
        )
        .await;
        let len = match next {
            Ok(Ok(Some(len))) => len,
            Ok(Ok(None)) => {
                tally.borrow_mut().error(Failure::Closed(None).key());
                return false;
            }
            Ok(Err(e)) => {
                tally.borrow_mut().error(Failure::io(&e).key());
                return false;
            }
            Err(_) => return true,
        };
        let frame = client::classify(reader.body(len));
        reader.consume(len);
        let now = Instant::now();
        let mut t = tally.borrow_mut();
        match frame {
            Ok(Frame::Answer { code, .. }) => {
                let Some((at, sent_at)) = flight.inflight.borrow_mut().pop_front() else {
                    t.error("answer to nothing");
                    continue;
                };
                if window.keeps(at) {
                    record(&mut t, window, at, sent_at, now);
                } else {
                    t.count("warmup_answers", 1);
                }
                if code != 0 {
                    t.error(wire::code_key(code));
                }
            }
            Ok(Frame::Kicked(reason)) => t.error(Failure::Closed(Some(reason)).key()),
            Ok(_) => t.count("pushes", 1),
            Err(f) => t.error(f.key()),
        }
    }
    true
}

/// Records one measured answer: its RTT from the intended send (and in its second of
/// the series), the send lag, and the RTT from the actual send.
fn record(t: &mut Tally, window: &Window, at: Instant, sent_at: Instant, now: Instant) {
    t.rtt.record(now - at);
    t.series.record(window.second(now), now - at);
    t.hist("send_lag").record(sent_at - at);
    t.hist("rtt_from_send").record(now - sent_at);
    t.count("answers", 1);
}
