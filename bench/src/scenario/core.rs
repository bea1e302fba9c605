//! `core`: the queue core and the rank broadcast in process, without sockets, at a
//! scale no single process can reach with real connections (a million players; the
//! descriptor limit stops sockets at ~20,000 per process). It drives the server's own
//! [`QueueState`] (joins, then automatic admission at R/s, tick by tick in virtual
//! time, tokens signed as the core thread signs them) and applies each tick's
//! [`QueueDelta`] to virtual sessions split over virtual io loops exactly as a loop
//! does: two binary searches per session, a throttled `position` push encoded with the
//! server's encoder where the position changed.
//!
//! Reports joins per second, the cost of one core tick and of one broadcast pass per
//! loop, memory per queued player, an exact resync, and (the bench runs on the counting
//! allocator) allocations per join and per tick.
//!
//! Invariants:
//! - time is virtual (`tick_ms` per tick) so the numbers are CPU cost, not sleeps;
//! - the virtual sessions' positions are checked against the state's exact positions
//!   at the end: a broadcast that drifted is a failed check, not a number.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::BytesMut;
use queue_server::alloc_count;
use queue_server::config::Config;
use queue_server::msg::{ConnRef, QueueDelta};
use queue_server::queue::state::{Event, Limits, Op, QueueState};
use queue_server::token::TokenSigner;

use super::{BenchError, Outcome};
use crate::hist::Latency;

/// Flags of `core`.
#[derive(Clone, Debug)]
pub struct CoreOpts {
    /// Players to queue.
    pub users: u64,
    /// Automatic admission rate, players per second.
    pub admit_rate: f64,
    /// Virtual io loops the sessions are split over.
    pub loops: usize,
    /// Core ticks to run after the joins.
    pub ticks: u64,
    /// Virtual time per tick, ms (the server's `core.tick_ms`).
    pub tick_ms: u64,
    /// Least time between two pushes to one session, ms (`server.push_interval_ms`).
    pub push_interval_ms: u64,
    /// Sign a token per admission, as the core thread does.
    pub sign: bool,
}

/// One virtual session: what an io loop keeps per waiting player to follow its rank.
#[derive(Clone, Copy, Debug, Default)]
struct VSession {
    /// Order key of the place.
    key: u64,
    /// Current position.
    position: u64,
    /// Position last pushed.
    pushed: u64,
    /// Virtual ms of the last push.
    last_push_ms: u64,
    /// Admitted: no longer follows ranks.
    admitted: bool,
}

/// Resident set size of this process, bytes.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

/// Runs the scenario.
pub fn run(o: &CoreOpts) -> Result<Outcome, BenchError> {
    let loops = o.loops.max(1);
    let users = o.users.max(1);
    let signer = if o.sign {
        let (s, _) = TokenSigner::from_config(&Config::default().tokens)
            .map_err(|e| BenchError::Setup(format!("token signer: {e}")))?;
        Some(s)
    } else {
        None
    };
    let limits = Limits {
        reconnect_grace_ms: 60_000,
        token_ttl_secs: 300,
        auto_create: false,
        auto_max_waiting: users,
        max_queues: 1000,
        auto_expire_ms: 0,
    };
    let rss0 = rss_bytes();
    let mut state = QueueState::new(limits, &[("default".to_string(), users, 0.0)], 0x5eed);
    let mut sessions: Vec<Vec<VSession>> = (0..loops)
        .map(|_| Vec::with_capacity(users as usize / loops + 1))
        .collect();
    let mut events = Vec::new();
    let mut out = Outcome::default();
    let mut t0_ms = 1_700_000_000_000u64;

    // Joins: the core applies each and answers with the exact position.
    let allocs0 = alloc_count::allocations();
    let started = Instant::now();
    let mut op = Op::Join {
        queue: "default".to_string(),
        user: 0,
        prio: false,
        conn: ConnRef {
            loop_id: 0,
            session: 0,
        },
    };
    for u in 0..users {
        let l = (u % loops as u64) as usize;
        if let Op::Join { user, conn, .. } = &mut op {
            *user = u;
            *conn = ConnRef {
                loop_id: l as u16,
                session: sessions[l].len() as u64,
            };
        }
        state.apply(&op, t0_ms, &mut events);
        let place = state
            .place(0, u)
            .ok_or_else(|| BenchError::Setup(format!("join of {u} failed")))?;
        let position = state.queues()[0].position(place.key);
        sessions[l].push(VSession {
            key: place.key,
            position,
            pushed: position,
            last_push_ms: t0_ms,
            admitted: false,
        });
    }
    let join_s = started.elapsed().as_secs_f64();
    let join_allocs = alloc_count::allocations() - allocs0;
    let rss1 = rss_bytes();
    events.clear();

    // Admission ticks and broadcasts (a first tick sets the state's clock).
    state.apply(&Op::Tick, t0_ms, &mut events);
    events.clear();
    state.apply(
        &Op::SetRate {
            queue: 0,
            per_second: o.admit_rate,
        },
        t0_ms,
        &mut events,
    );
    let mut tick_hist = Latency::new();
    let mut loop_hist = Latency::new();
    let mut push_buf = BytesMut::with_capacity(1 << 16);
    let (mut pushes, mut admitted, mut tick_allocs) = (0u64, 0u64, 0u64);
    let mut per_loop_admits: Vec<Vec<u64>> = vec![Vec::new(); loops];
    let mut delta = QueueDelta::default();
    for _ in 0..o.ticks {
        t0_ms += o.tick_ms;
        let now_ms = t0_ms;
        let a0 = alloc_count::allocations();
        let t = Instant::now();
        events.clear();
        state.apply(&Op::Tick, now_ms, &mut events);
        delta.departed.clear();
        for e in events.drain(..) {
            match e {
                Event::Departed { key, .. } => delta.departed.push(key),
                Event::Admitted {
                    user,
                    conn,
                    jti,
                    iat,
                    exp,
                    ..
                } => {
                    if let Some(s) = &signer {
                        let token = s.sign(user, "default", &state.jti_text(jti), iat, exp);
                        std::hint::black_box(token);
                    }
                    if let Some(c) = conn {
                        per_loop_admits[c.loop_id as usize].push(c.session);
                    }
                    admitted += 1;
                }
                _ => {}
            }
        }
        delta.departed.sort_unstable();
        delta.queue_len = state.queues()[0].waiting();
        tick_hist.record(t.elapsed());
        tick_allocs += alloc_count::allocations() - a0;
        if delta.departed.is_empty() {
            continue;
        }
        for (l, own) in sessions.iter_mut().enumerate() {
            let t = Instant::now();
            for s in per_loop_admits[l].drain(..) {
                own[s as usize].admitted = true;
                pushes += 1;
            }
            for s in own.iter_mut() {
                if s.admitted {
                    continue;
                }
                let shift = delta.shift(s.key);
                if shift != 0 {
                    s.position = s.position.saturating_add_signed(shift);
                }
                if s.position != s.pushed && now_ms - s.last_push_ms >= o.push_interval_ms {
                    if push_buf.len() > 60_000 {
                        push_buf.clear();
                    }
                    queue_server::protocol::encode_position(
                        &mut push_buf,
                        0,
                        s.position,
                        delta.queue_len,
                        None,
                    );
                    s.pushed = s.position;
                    s.last_push_ms = now_ms;
                    pushes += 1;
                }
            }
            loop_hist.record(t.elapsed());
        }
    }

    // One exact resync, as the core sends every `core.resync_secs`, and the drift check.
    let t = Instant::now();
    let mut per_loop: Vec<Vec<(u64, u64)>> = vec![Vec::new(); loops];
    let q = &state.queues()[0];
    for (i, (_, user)) in q.iter().enumerate() {
        if let Some(conn) = state.place(0, user).and_then(|p| p.conn) {
            per_loop[conn.loop_id as usize].push((conn.session, i as u64 + 1));
        }
    }
    let resync_ms = t.elapsed().as_secs_f64() * 1000.0;
    let drift = per_loop
        .iter()
        .enumerate()
        .flat_map(|(l, list)| list.iter().map(move |&(s, p)| (l, s, p)))
        .filter(|&(l, s, p)| sessions[l][s as usize].position != p)
        .count();

    out.tally.rtt = tick_hist;
    out.tally
        .named
        .insert("broadcast_pass_per_loop".into(), loop_hist);
    out.ops = users;
    out.elapsed_s = join_s;
    let per_player = |b: u64| b as f64 / users as f64;
    let mut v = BTreeMap::new();
    v.insert("joins_per_s".to_string(), users as f64 / join_s);
    v.insert("admitted".to_string(), admitted as f64);
    v.insert("pushes".to_string(), pushes as f64);
    v.insert(
        "pushes_per_tick".to_string(),
        pushes as f64 / o.ticks.max(1) as f64,
    );
    // RSS growth over the joins, less the virtual sessions' arrays: the core's state.
    let vsession_bytes = (sessions.iter().map(Vec::capacity).sum::<usize>()
        * std::mem::size_of::<VSession>()) as u64;
    v.insert(
        "core_bytes_per_player_rss".to_string(),
        per_player(rss1.saturating_sub(rss0).saturating_sub(vsession_bytes)),
    );
    v.insert(
        "lane_bytes_per_player".to_string(),
        per_player(q.heap_bytes() as u64),
    );
    v.insert(
        "server_session_struct_bytes".to_string(),
        std::mem::size_of::<queue_server::session::Session>() as f64,
    );
    v.insert("resync_ms".to_string(), resync_ms);
    v.insert("allocs_per_join".to_string(), per_player(join_allocs));
    v.insert(
        "allocs_per_tick".to_string(),
        tick_allocs as f64 / o.ticks.max(1) as f64,
    );
    out.values = v;
    out.checks
        .insert("positions_match_state".into(), drift == 0);
    if alloc_count::allocations() == 0 {
        out.notes.push(
            "allocation counts need the counting allocator (the queue-bench binary installs it)"
                .into(),
        );
    }
    out.notes.push(format!(
        "virtual sessions hold {} bytes each; a real server session is a `Session` ({} bytes) behind an Rc plus its buffers",
        std::mem::size_of::<VSession>(),
        std::mem::size_of::<queue_server::session::Session>()
    ));
    Ok(out)
}
