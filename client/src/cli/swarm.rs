//! `queue-client swarm`: N players join at once (one SDK client each, user ids
//! `user_base..user_base + N`) and a live summary shows how many connect, wait,
//! reconnect, are admitted or stopped. Ends when no player is left waiting (exit 0 when
//! all were admitted, else the exit code of the worst stop: refused, kicked, gave up),
//! or on Ctrl-C, which sends `leave` for every player still waiting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use tokio::sync::watch;

use super::{exit, exit_code, SwarmArgs};
use crate::Event;

/// Players in each state (a player is in exactly one).
#[derive(Default)]
struct Counts {
    /// Connecting and logging in for the first time.
    connecting: AtomicU64,
    /// Logged in, waiting.
    waiting: AtomicU64,
    /// Between connections.
    reconnecting: AtomicU64,
    /// Admitted.
    admitted: AtomicU64,
    /// Left on Ctrl-C.
    left: AtomicU64,
    /// Stopped: refused.
    refused: AtomicU64,
    /// Stopped: kicked for good.
    kicked: AtomicU64,
    /// Stopped: gave up.
    gave_up: AtomicU64,
}

impl Counts {
    fn snapshot(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "connecting": g(&self.connecting), "waiting": g(&self.waiting),
            "reconnecting": g(&self.reconnecting), "admitted": g(&self.admitted),
            "left": g(&self.left), "refused": g(&self.refused), "kicked": g(&self.kicked),
            "gave_up": g(&self.gave_up),
        })
    }

    fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = format!(
            "waiting {} | reconnecting {} | admitted {}",
            g(&self.waiting),
            g(&self.reconnecting),
            g(&self.admitted)
        );
        for (name, n) in [
            ("connecting", g(&self.connecting)),
            ("refused", g(&self.refused)),
            ("kicked", g(&self.kicked)),
            ("gave up", g(&self.gave_up)),
            ("left", g(&self.left)),
        ] {
            if n > 0 {
                s.push_str(&format!(" | {name} {n}"));
            }
        }
        s
    }
}

/// Moves one player from one state counter to another.
fn shift(from: &AtomicU64, to: &AtomicU64) {
    from.fetch_sub(1, Ordering::Relaxed);
    to.fetch_add(1, Ordering::Relaxed);
}

/// One player's life; returns its exit code.
async fn player(
    args: Arc<SwarmArgs>,
    user: u64,
    counts: Arc<Counts>,
    mut stop: watch::Receiver<bool>,
) -> u8 {
    let c = &counts;
    let mut client = tokio::select! {
        r = args.player.builder(user).connect() => match r {
            Ok(client) => client,
            Err(e) => {
                let code = exit_code(&e);
                shift(&c.connecting, stopped(c, code));
                return code;
            }
        },
        _ = stop.changed() => {
            shift(&c.connecting, &c.left);
            return exit::INTERRUPTED;
        }
    };
    let mut state = &c.connecting;
    shift(state, &c.waiting);
    state = &c.waiting;
    loop {
        let event = tokio::select! {
            e = client.next_event() => e,
            _ = stop.changed() => {
                let _ = client.leave().await;
                shift(state, &c.left);
                return exit::INTERRUPTED;
            }
        };
        let next = match event {
            Some(Ok(Event::Admitted { .. })) => {
                shift(state, &c.admitted);
                return exit::OK;
            }
            Some(Ok(Event::Reconnecting { .. })) => &c.reconnecting,
            Some(Ok(Event::Position { .. } | Event::Resumed { .. })) => &c.waiting,
            Some(Ok(Event::Kicked { .. })) => state,
            Some(Err(e)) => {
                let code = exit_code(&e);
                shift(state, stopped(c, code));
                return code;
            }
            None => {
                shift(state, &c.gave_up);
                return exit::GAVE_UP;
            }
        };
        if !std::ptr::eq(next, state) {
            shift(state, next);
            state = next;
        }
    }
}

/// The counter of a stop with this exit code.
fn stopped(c: &Counts, code: u8) -> &AtomicU64 {
    match code {
        exit::REFUSED => &c.refused,
        exit::KICKED => &c.kicked,
        _ => &c.gave_up,
    }
}

/// Runs `swarm`; returns the exit code.
pub async fn run(args: SwarmArgs) -> u8 {
    let n = args.users;
    let json_out = args.json;
    let args = Arc::new(args);
    let counts = Arc::new(Counts::default());
    counts.connecting.store(n as u64, Ordering::Relaxed);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let user = args.user_base + i as u64;
        tasks.spawn(player(args.clone(), user, counts.clone(), stop_rx.clone()));
    }
    let bar = if json_out {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed}] [{bar:30}] {pos}/{len} admitted | {msg}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    };
    let mut worst = exit::OK;
    let mut report =
        tokio::time::interval(Duration::from_millis(if json_out { 1000 } else { 200 }));
    let mut interrupted = false;
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(Ok(code)) => worst = worse(worst, code),
                Some(Err(_)) => worst = worse(worst, exit::FAILURE),
                None => break,
            },
            _ = report.tick() => {
                if json_out {
                    println!("{}", counts.snapshot());
                } else {
                    bar.set_position(counts.admitted.load(Ordering::Relaxed));
                    bar.set_message(counts.line());
                }
            }
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                interrupted = true;
                let _ = stop_tx.send(true);
            }
        }
    }
    if json_out {
        let mut last = counts.snapshot();
        last["done"] = json!(true);
        println!("{last}");
    } else {
        bar.set_position(counts.admitted.load(Ordering::Relaxed));
        bar.finish_with_message(counts.line());
    }
    if interrupted {
        exit::INTERRUPTED
    } else {
        worst
    }
}

/// The worse of two exit codes: refused, then kicked, then gave up, then any failure.
fn worse(a: u8, b: u8) -> u8 {
    let rank = |c| match c {
        exit::OK => 0,
        exit::INTERRUPTED => 1,
        exit::FAILURE => 2,
        exit::GAVE_UP => 3,
        exit::KICKED => 4,
        _ => 5,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}
