//! `storm`: N players connect and log in, all at once or ramped at R per second.
//! Reports logins per second achieved, the login RTT, the TCP connect time, and the time
//! from each player's intended connect time to its first position (the login answer
//! carries it), which is the scenario's main latency; `send_lag` is the bench's own
//! lateness (connect started minus intended connect time).
//!
//! Invariants:
//! - connect times come from a [`Ramp`] fixed at start: a slow server delays answers,
//!   never the schedule, so its stall shows as latency (coordinated omission);
//! - every connection stays open until all threads are done, so no disconnect or
//!   `leave` traffic overlaps the measured logins.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::{fetch_max, ns_since, BenchError, Common, Outcome, Phase};
use crate::client::{self, share, FrameReader};
use crate::pace::Ramp;
use crate::report::Tally;

/// Flags of `storm`.
#[derive(Clone, Debug)]
pub struct StormOpts {
    /// Players.
    pub users: u64,
    /// Connects per second; 0 = all at once.
    pub rate: f64,
    /// Send `leave` before closing (so the queue is empty for the next scenario).
    pub leave: bool,
}

/// Shared by the client threads.
struct Shared {
    /// Schedule of connects.
    ramp: Ramp,
    /// Last login answer, ns after `ramp.start`.
    last_ns: AtomicU64,
    /// All threads done logging in.
    done: Phase,
}

/// Runs the storm; blocks until every player has an answer (or failed).
pub fn run(c: &Common, o: &StormOpts) -> Result<Outcome, BenchError> {
    c.check_capacity(o.users)?;
    let mut control = c.control();
    let probe = c.probe(&mut control);
    let shared = Arc::new(Shared {
        ramp: Ramp {
            start: Instant::now() + Duration::from_millis(20),
            rate_per_s: o.rate,
        },
        last_ns: AtomicU64::new(0),
        done: Phase::default(),
    });
    let threads = c.threads.count.max(1);
    let main = c.spawn_clients(o, &shared, thread);
    shared.done.wait_all(threads);
    let alloc = c.probe_end(&mut control, probe);
    shared.done.release(Instant::now());
    let mut out = c.join_clients(main)?;
    out.ops = out.tally.rtt.count();
    out.elapsed_s = shared.last_ns.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e9;
    out.alloc = alloc;
    out.hint();
    Ok(out)
}

async fn thread(c: Common, o: StormOpts, shared: Arc<Shared>, t: usize) -> Tally {
    let tally = Rc::new(RefCell::new(Tally::default()));
    let mut tasks = Vec::new();
    for i in share(o.users, t, c.threads.count) {
        let (c, shared, tally) = (c.clone(), shared.clone(), tally.clone());
        tasks.push(monoio::spawn(async move {
            player(&c, &shared, &tally, i).await
        }));
    }
    let mut held = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Some(conn) = task.await {
            held.push(conn);
        }
    }
    shared.done.arrive().await;
    if o.leave {
        let leaving: Vec<_> = held
            .drain(..)
            .map(|(mut s, mut r, mut w)| {
                monoio::spawn(async move { client::leave(&mut s, &mut r, &mut w, 2).await })
            })
            .collect();
        for l in leaving {
            l.await;
        }
    }
    drop(held);
    Rc::try_unwrap(tally)
        .map(RefCell::into_inner)
        .unwrap_or_default()
}

type Held = (monoio::net::TcpStream, FrameReader, BytesMut);

async fn player(c: &Common, shared: &Shared, tally: &RefCell<Tally>, i: u64) -> Option<Held> {
    let intended = shared.ramp.at(i);
    client::sleep_until(intended).await;
    tally
        .borrow_mut()
        .hist("send_lag")
        .record(Instant::now() - intended);
    let mut stream = match client::connect(c.player(i), c.source(i)).await {
        Ok(s) => s,
        Err(e) => {
            tally.borrow_mut().error(format!("connect: {:?}", e.kind()));
            return None;
        }
    };
    let sent = Instant::now();
    tally.borrow_mut().hist("connect").record(sent - intended);
    let (mut reader, mut wbuf) = (FrameReader::default(), BytesMut::with_capacity(128));
    let result = client::login(
        &mut stream,
        &mut reader,
        &mut wbuf,
        c.user_base + i,
        c.queue.as_deref(),
    )
    .await;
    let now = Instant::now();
    let mut t = tally.borrow_mut();
    match result {
        Ok(_) => {
            t.hist("login").record(now - sent);
            t.rtt.record(now - intended);
            fetch_max(&shared.last_ns, ns_since(shared.ramp.start));
            drop(t);
            Some((stream, reader, wbuf))
        }
        Err(f) => {
            t.error(f.key());
            None
        }
    }
}
