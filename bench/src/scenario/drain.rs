//! `drain`: fill a queue with N players, then admit them through the control API at R
//! per second. Reports admissions per second delivered (to the players' sockets), the
//! lag from each admit call to the player's `admitted` push and to each `position`
//! push, and checks that every player was admitted exactly once, that no position ever
//! rose, and that every token verifies (`POST /v1/tokens/verify`, which also consumes it).
//! `send_lag` is each admission's lateness: its admit call's send time minus the
//! instant the schedule made it due (calls go out at most every `ADMIT_PERIOD`).
//!
//! Invariants:
//! - admit calls follow a fixed schedule (`R * elapsed` players admitted by now),
//!   whatever the server's speed: a slow server shows as lag, not as a lower target;
//! - a `position` push showing position p to a player who logged in at p0 reflects the
//!   first `p0 - p` admissions; its lag is measured from the admit call that made them;
//! - players keep their connections alive with `heartbeat` every 10 s (idle timeout 30 s).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::io::Splitable;
use serde::Deserialize;

use super::{ns_since, BenchError, Common, Outcome, Phase};
use crate::client::{self, share, Failure, Frame, FrameReader};
use crate::hist::Latency;
use crate::report::Tally;
use crate::wire;

/// Most players one admit call may take (the control API's limit).
const ADMIT_MAX: u64 = 100_000;
/// Time between admit calls when the schedule allows more.
const ADMIT_PERIOD: Duration = Duration::from_millis(10);
/// Keep-alive period of waiting players.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// Flags of `drain`.
#[derive(Clone, Debug)]
pub struct DrainOpts {
    /// Players.
    pub users: u64,
    /// Admissions per second through the control API.
    pub admit_rate: f64,
    /// How long to wait for the last `admitted` pushes after the last admit call.
    pub settle: Duration,
    /// Verify every token through the control API.
    pub verify: bool,
}

/// What one client thread saw.
#[derive(Default)]
struct Seen {
    /// Errors and counters.
    tally: Tally,
    /// `position` pushes: (user index, received ns, position).
    pushes: Vec<(u64, u64, u64)>,
    /// `admitted` pushes: (user index, token).
    tokens: Vec<(u64, String)>,
    /// Players of this thread logged in or failed.
    settled: u64,
    /// Sockets of this thread's players, shut down at the end so no read stays pending.
    fds: Vec<i32>,
    /// Player tasks still running.
    live: u64,
}

/// Shared by the main thread and the client threads.
struct Shared {
    /// Time base of every `*_ns`.
    epoch: Instant,
    /// Position each player got at login (0: not logged in).
    login_pos: Vec<AtomicU64>,
    /// When each player's `admitted` push arrived, ns + 1 (0: not yet).
    admitted_ns: Vec<AtomicU64>,
    /// `admitted` pushes per player.
    admitted_count: Vec<AtomicU32>,
    /// Players with an `admitted` push.
    admitted_total: AtomicU64,
    /// Everyone logged in.
    filled: Phase,
    /// Main thread has finished measuring.
    finished: Phase,
    /// Players stop sending heartbeats.
    stop: Arc<AtomicBool>,
}

/// Body of an admit answer.
#[derive(Deserialize)]
struct AdmitAnswer {
    /// Players admitted, in order.
    admitted: Vec<AdmittedUser>,
}

/// One admitted player in an admit answer.
#[derive(Deserialize)]
struct AdmittedUser {
    /// The player.
    user_id: u64,
    /// Its token.
    token: String,
}

/// Body of a verify answer.
#[derive(Deserialize)]
struct VerifyAnswer {
    /// Signature, expiry and single use all fine.
    valid: bool,
    /// Whose token it is.
    #[serde(default)]
    user_id: Option<u64>,
}

/// Runs the scenario: fill, admit on schedule, wait for the pushes, then check.
pub fn run(c: &Common, o: &DrainOpts) -> Result<Outcome, BenchError> {
    c.check_capacity(o.users)?;
    let mut control = c
        .control()
        .ok_or_else(|| BenchError::Setup("drain needs the control port (--control ADDR)".into()))?;
    if o.admit_rate <= 0.0 {
        return Err(BenchError::Setup("drain needs --admit-rate > 0".into()));
    }
    let shared = Arc::new(Shared::new(o.users as usize));
    let threads = c.threads.count.max(1);
    let main = c.spawn_clients(o, &shared, thread);
    shared.filled.wait_all(threads);
    let logged_in = shared.logged_in();
    let probe = crate::counters::AllocProbe::begin(&mut control).ok();
    shared.filled.release(Instant::now());

    let admits = admit_on_schedule(c, o, &mut control, &shared, logged_in)?;
    let admit_done = Instant::now();
    while shared.admitted_total.load(Ordering::Relaxed) < admits.ours
        && admit_done.elapsed() < o.settle
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let alloc = probe.map(|p| {
        let end = crate::counters::Snapshot::read(&mut control).unwrap_or_default();
        p.report(end, &c.server_build)
    });
    shared.stop.store(true, Ordering::SeqCst);
    shared.finished.release(Instant::now());
    let seen = main
        .join()
        .map_err(|_| BenchError::Setup("client thread panicked".into()))?;

    let mut out = Outcome::default();
    let mut push_tokens: HashMap<u64, String> = HashMap::new();
    let mut pushes = Vec::new();
    for s in seen {
        out.tally.merge(&s.tally);
        push_tokens.extend(s.tokens);
        pushes.extend(s.pushes);
    }
    record_lags(&mut out, &shared, &admits, &pushes);
    let bad_tokens = check_tokens(c, o, &mut control, &admits, &push_tokens, &mut out)?;
    let once = shared.admitted_once() && admits.http_dupes == 0 && admits.ours == logged_in;
    out.tally.count("admit_calls", admits.calls);
    out.tally.count("position_pushes", pushes.len() as u64);
    out.tally.count("admitted_http", admits.ours);
    out.tally.count("logged_in", logged_in);
    let admitted_total = shared.admitted_total.load(Ordering::Relaxed);
    out.tally.count("admitted_pushes", admitted_total);
    let rose = out.tally.get("positions_rose");
    out.ops = admitted_total;
    out.alloc = alloc;
    out.checks.insert("admitted_exactly_once".into(), once);
    out.checks.insert("positions_never_rose".into(), rose == 0);
    out.checks
        .insert("tokens_match_and_verify".into(), bad_tokens == 0);
    if logged_in < o.users {
        out.notes
            .push(format!("only {logged_in} of {} players logged in", o.users));
    }
    out.hint();
    Ok(out)
}

impl Shared {
    /// State for `n` players.
    fn new(n: usize) -> Shared {
        Shared {
            epoch: Instant::now(),
            login_pos: (0..n).map(|_| AtomicU64::new(0)).collect(),
            admitted_ns: (0..n).map(|_| AtomicU64::new(0)).collect(),
            admitted_count: (0..n).map(|_| AtomicU32::new(0)).collect(),
            admitted_total: AtomicU64::new(0),
            filled: Phase::default(),
            finished: Phase::default(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Players that logged in.
    fn logged_in(&self) -> u64 {
        self.login_pos
            .iter()
            .filter(|p| p.load(Ordering::Relaxed) > 0)
            .count() as u64
    }

    /// Player `i`'s `admitted` push arrived at `now_ns` (only the first one is timed).
    fn admitted(&self, i: usize, now_ns: u64) {
        if self.admitted_count[i].fetch_add(1, Ordering::Relaxed) == 0 {
            self.admitted_ns[i].store(now_ns + 1, Ordering::Relaxed);
            self.admitted_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every logged-in player got exactly one `admitted` push.
    fn admitted_once(&self) -> bool {
        self.login_pos
            .iter()
            .zip(&self.admitted_count)
            .all(|(p, n)| p.load(Ordering::Relaxed) == 0 || n.load(Ordering::Relaxed) == 1)
    }
}

/// What the admit calls did.
#[derive(Default)]
struct Admits {
    /// (players admitted after the call, call sent ns), one per call.
    batches: Vec<(u64, u64)>,
    /// Per player: ns its admit call was sent (0: never admitted).
    sent_ns: Vec<u64>,
    /// Token the admit answer gave each of our players.
    http_tokens: HashMap<u64, String>,
    /// Players an admit answer listed twice.
    http_dupes: u64,
    /// Our players admitted.
    ours: u64,
    /// Admit calls made.
    calls: u64,
    /// Per admission: call sent minus the instant it fell due on the schedule.
    send_lag: Latency,
}

/// Admits on schedule (`admit_rate * elapsed` players by now, in calls at most
/// `ADMIT_PERIOD` apart) until every logged-in player of ours is admitted.
fn admit_on_schedule(
    c: &Common,
    o: &DrainOpts,
    control: &mut crate::http::Control,
    shared: &Shared,
    logged_in: u64,
) -> Result<Admits, BenchError> {
    let mut a = Admits {
        sent_ns: vec![0; o.users as usize],
        ..Admits::default()
    };
    let path = format!(
        "/v1/queues/{}/admit",
        c.queue.as_deref().unwrap_or("default")
    );
    let mut total = 0u64;
    let start = Instant::now();
    let due_at = |n: u64| start + Duration::from_secs_f64(n as f64 / o.admit_rate);
    while a.ours < logged_in {
        let due = ((start.elapsed().as_secs_f64() * o.admit_rate) as u64)
            .min(total + (logged_in - a.ours));
        if due <= total {
            std::thread::sleep(ADMIT_PERIOD);
            continue;
        }
        let count = (due - total).min(ADMIT_MAX);
        let (at, now) = (ns_since(shared.epoch), Instant::now());
        for n in total + 1..=total + count {
            a.send_lag.record(now.saturating_duration_since(due_at(n)));
        }
        let body = control.post(&path, &format!("{{\"count\":{count}}}"))?;
        a.calls += 1;
        let answer: AdmitAnswer = serde_json::from_str(&body).map_err(|e| {
            BenchError::Setup(format!(
                "admit answer is not the documented JSON ({e}): {body}"
            ))
        })?;
        total += answer.admitted.len() as u64;
        a.batches.push((total, at));
        for adm in &answer.admitted {
            let Some(idx) = adm
                .user_id
                .checked_sub(c.user_base)
                .filter(|&i| i < o.users)
            else {
                continue; // someone else's player (an earlier run's, in reconnect grace)
            };
            a.ours += 1;
            a.sent_ns[idx as usize] = at;
            if a.http_tokens.insert(idx, adm.token.clone()).is_some() {
                a.http_dupes += 1;
            }
        }
        if (answer.admitted.len() as u64) < count {
            break; // the queue is empty
        }
    }
    Ok(a)
}

/// The main latency (admit call -> `admitted` push), the position push lag, the send
/// lag of the admit calls, and the window from the first call to the last push.
fn record_lags(out: &mut Outcome, shared: &Shared, a: &Admits, pushes: &[(u64, u64, u64)]) {
    let mut last_ns = 0u64;
    let first_ns = a.batches.first().map_or(0, |b| b.1);
    for (i, slot) in shared.admitted_ns.iter().enumerate() {
        let got = slot.load(Ordering::Relaxed);
        if got > 0 && a.sent_ns[i] > 0 {
            out.tally
                .rtt
                .record_ns((got - 1).saturating_sub(a.sent_ns[i]));
            last_ns = last_ns.max(got - 1);
        }
    }
    let mut lag = Latency::new();
    for &(idx, recv_ns, pos) in pushes {
        let p0 = shared.login_pos[idx as usize].load(Ordering::Relaxed);
        let moved = p0.saturating_sub(pos);
        if moved == 0 {
            continue;
        }
        let b = a.batches.partition_point(|&(cum, _)| cum < moved);
        if let Some(&(_, at)) = a.batches.get(b) {
            lag.record_ns(recv_ns.saturating_sub(at));
        }
    }
    out.tally.named.insert("position_push_lag".into(), lag);
    out.tally
        .named
        .insert("send_lag".into(), a.send_lag.clone());
    out.elapsed_s = last_ns.saturating_sub(first_ns) as f64 / 1e9;
}

/// Tokens pushed that differ from the admit answers' plus, with verification on,
/// tokens the control API does not accept for their player.
fn check_tokens(
    c: &Common,
    o: &DrainOpts,
    control: &mut crate::http::Control,
    a: &Admits,
    push_tokens: &HashMap<u64, String>,
    out: &mut Outcome,
) -> Result<u64, BenchError> {
    let mut bad_tokens = push_tokens
        .iter()
        .filter(|(i, t)| a.http_tokens.get(i) != Some(t))
        .count() as u64;
    if o.verify {
        for (&idx, token) in &a.http_tokens {
            let body = control.post(
                "/v1/tokens/verify",
                &serde_json::json!({ "token": token }).to_string(),
            )?;
            match serde_json::from_str::<VerifyAnswer>(&body) {
                Ok(v) if v.valid && v.user_id == Some(c.user_base + idx) => {}
                _ => bad_tokens += 1,
            }
        }
        out.tally
            .count("tokens_verified", a.http_tokens.len() as u64);
    }
    out.tally.count("bad_tokens", bad_tokens);
    Ok(bad_tokens)
}

async fn thread(c: Common, o: DrainOpts, shared: Arc<Shared>, t: usize) -> Seen {
    let seen = Rc::new(RefCell::new(Seen::default()));
    let mine: Vec<u64> = share(o.users, t, c.threads.count).collect();
    for &i in &mine {
        let (c, shared, seen) = (c.clone(), shared.clone(), seen.clone());
        seen.borrow_mut().live += 1;
        monoio::spawn(async move {
            player(&c, &shared, &seen, i).await;
            seen.borrow_mut().live -= 1;
        });
    }
    while seen.borrow().settled < mine.len() as u64 {
        monoio::time::sleep(Duration::from_millis(2)).await;
    }
    shared.filled.arrive().await;
    shared.finished.arrive().await;
    // End every player's pending read (a runtime must not be dropped with reads in
    // flight on sockets that stay open), then collect.
    for &fd in &seen.borrow().fds {
        // SAFETY: plain syscall on a descriptor its task still owns.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.borrow().live > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut s = seen.borrow_mut();
    Seen {
        tally: std::mem::take(&mut s.tally),
        pushes: std::mem::take(&mut s.pushes),
        tokens: std::mem::take(&mut s.tokens),
        ..Seen::default()
    }
}

async fn player(c: &Common, shared: &Shared, seen: &RefCell<Seen>, i: u64) {
    let settle = |err: Option<String>| {
        let mut s = seen.borrow_mut();
        s.settled += 1;
        if let Some(e) = err {
            s.tally.error(format!("login: {e}"));
        }
    };
    let mut stream = match client::connect(c.player(i), c.source(i)).await {
        Ok(s) => s,
        Err(e) => return settle(Some(format!("connect {:?}", e.kind()))),
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    seen.borrow_mut().fds.push(fd);
    let (mut reader, mut wbuf) = (FrameReader::default(), BytesMut::with_capacity(128));
    let (user, queue) = (c.user_base + i, c.queue.as_deref());
    let login = client::login(&mut stream, &mut reader, &mut wbuf, user, queue);
    let p0 = match login.await {
        Ok(p) => p,
        Err(f) => return settle(Some(f.key())),
    };
    shared.login_pos[i as usize].store(p0.max(1), Ordering::Relaxed);
    settle(None);
    let (mut rd, wr) = stream.into_split();
    let admitted = Rc::new(Cell::new(false));
    monoio::spawn(heartbeats(wr, wbuf, admitted.clone(), shared.stop.clone()));
    let mut last = p0;
    loop {
        let len = match reader.next(&mut rd).await {
            Ok(Some(len)) => len,
            _ if shared.stop.load(Ordering::Relaxed) => return,
            Ok(None) => {
                seen.borrow_mut().tally.error(Failure::Closed(None).key());
                return;
            }
            Err(e) => {
                seen.borrow_mut().tally.error(Failure::io(&e).key());
                return;
            }
        };
        let frame = client::classify(reader.body(len));
        reader.consume(len);
        let now = ns_since(shared.epoch);
        let mut s = seen.borrow_mut();
        match frame {
            Ok(Frame::Position(p)) => {
                if p > last {
                    s.tally.count("positions_rose", 1);
                }
                last = p;
                s.pushes.push((i, now, p));
            }
            Ok(Frame::Admitted(token)) => {
                shared.admitted(i as usize, now);
                s.tokens.push((i, token));
                admitted.set(true);
            }
            Ok(Frame::Answer { code, .. }) if code != 0 => s.tally.error(wire::code_key(code)),
            Ok(Frame::Kicked(reason)) => s.tally.error(Failure::Closed(Some(reason)).key()),
            Ok(_) => {}
            Err(f) => s.tally.error(f.key()),
        }
    }
}

/// Keeps a waiting player alive: `heartbeat` every `HEARTBEAT` until it is admitted
/// or the run stops.
async fn heartbeats(
    mut wr: monoio::net::tcp::TcpOwnedWriteHalf,
    mut wbuf: BytesMut,
    admitted: Rc<Cell<bool>>,
    stop: Arc<AtomicBool>,
) {
    let mut seq = 1u32;
    loop {
        monoio::time::sleep(HEARTBEAT).await;
        if admitted.get() || stop.load(Ordering::Relaxed) {
            return;
        }
        seq = seq.wrapping_add(1).max(2);
        wire::encode_cmd(&mut wbuf, "heartbeat", seq);
        let (res, b) = client::write(&mut wr, wbuf).await;
        wbuf = b;
        if res.is_err() {
            return;
        }
    }
}
