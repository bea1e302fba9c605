//! `pingpong`: closed loop for the highest request rate. C connections log in, then
//! each sends one request, waits for its answer, and sends the next, for a duration.
//! Against the bench's own `echo-server` (which echoes the very frames, login
//! included) the same client measures the physical ceiling of this machine.
//!
//! Invariants:
//! - one request in flight per connection; its RTT is measured from its send time
//!   (closed loop: the intended time *is* the send time, nothing is scheduled);
//! - only answers inside the window count toward the rate; with `--warmup` the
//!   requests sent in the warm-up are not measured ([`Window`]);
//! - there is no send lag to report: nothing is scheduled.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{BenchError, Common, Outcome, Phase};
use crate::client::{self, share};
use crate::report::Tally;
use crate::series::Window;
use crate::wire;

/// Flags of `pingpong`.
#[derive(Clone, Debug)]
pub struct PingpongOpts {
    /// Connections.
    pub conns: u64,
    /// Length of the measured window.
    pub duration: Duration,
    /// Load run before the window, not measured.
    pub warmup: Duration,
    /// `position` or `heartbeat`.
    pub cmd: String,
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
pub fn run(c: &Common, o: &PingpongOpts) -> Result<Outcome, BenchError> {
    c.check_capacity(o.conns)?;
    let mut control = c.control();
    let shared = Arc::new(Shared::default());
    let threads = c.threads.count.max(1);
    let main = c.spawn_clients(o, &shared, thread);
    shared.ready.wait_all(threads);
    let probe = c.probe(&mut control);
    shared
        .ready
        .release(Instant::now() + Duration::from_millis(20));
    shared.done.wait_all(threads);
    let alloc = c.probe_end(&mut control, probe);
    shared.done.release(Instant::now());
    let mut out = c.join_clients(main)?;
    out.ops = out.tally.get("answers");
    out.elapsed_s = o.duration.as_secs_f64();
    out.alloc = alloc;
    out.hint();
    Ok(out)
}

async fn thread(c: Common, o: PingpongOpts, shared: Arc<Shared>, t: usize) -> Tally {
    let tally = Rc::new(RefCell::new(Tally::default()));
    let mut logins = Vec::new();
    for i in share(o.conns, t, c.threads.count) {
        let (c, tally) = (c.clone(), tally.clone());
        logins.push(monoio::spawn(async move { c.logged_in(i, &tally).await }));
    }
    let mut conns = Vec::new();
    for l in logins {
        conns.extend(l.await);
    }
    let start = shared.ready.arrive().await;
    let window = Window::new(start, o.warmup, o.duration);
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|conn| monoio::spawn(closed_loop(tally.clone(), o.cmd.clone(), window, conn)))
        .collect();
    let mut open = Vec::new();
    for task in tasks {
        open.extend(task.await);
    }
    shared.done.arrive().await;
    if o.leave {
        let leaving: Vec<_> = open
            .into_iter()
            .map(|(mut s, mut r, mut w, seq)| {
                monoio::spawn(async move { client::leave(&mut s, &mut r, &mut w, seq).await })
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

/// A logged-in connection: socket, reader, write buffer.
type Conn = (monoio::net::TcpStream, client::FrameReader, bytes::BytesMut);

/// One connection's closed loop over the window; gives the connection back (with the
/// next seq) unless it failed.
async fn closed_loop(
    tally: Rc<RefCell<Tally>>,
    cmd: String,
    window: Window,
    (mut s, mut r, mut w): Conn,
) -> Option<(
    monoio::net::TcpStream,
    client::FrameReader,
    bytes::BytesMut,
    u32,
)> {
    client::sleep_until(window.start).await;
    let end = window.end;
    let mut seq = 1u32;
    while Instant::now() < end {
        seq = seq.wrapping_add(1).max(2);
        let sent = Instant::now();
        wire::encode_cmd(&mut w, &cmd, seq);
        let (res, b) = client::write(&mut s, std::mem::take(&mut w)).await;
        w = b;
        let result = match res {
            Ok(()) => client::answer(&mut s, &mut r, seq, |_| {}).await,
            Err(e) => Err(client::Failure::io(&e)),
        };
        let now = Instant::now();
        let mut t = tally.borrow_mut();
        match result {
            Ok(_) => {
                if now <= end && window.keeps(sent) {
                    t.rtt.record(now - sent);
                    t.series.record(window.second(now), now - sent);
                    t.count("answers", 1);
                }
            }
            Err(f @ client::Failure::Code(_)) => t.error(f.key()),
            Err(f) => {
                t.error(f.key());
                return None;
            }
        }
    }
    Some((s, r, w, seq.wrapping_add(1).max(2)))
}
