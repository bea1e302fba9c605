//! `queue-client join`: one player waits with a live bar (position, queue length, ETA,
//! time waited) or, with `--json`, one JSON line per event; prints the token when
//! admitted; Ctrl-C sends `leave`.
//!
//! Output: the bar (or, when stderr is not a terminal, one plain line per event) goes
//! to stderr; the token (`token: ...`, `login_addr: ...`) and JSON lines go to stdout,
//! so `queue-client join ... | tail -1` works in scripts.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use super::{exit, exit_code, human_secs, JoinArgs};
use crate::{Client, Error, Event};

/// One event as the `--json` line prints it.
pub fn event_json(event: &Event) -> Value {
    match event {
        Event::Position {
            position,
            queue_len,
            eta_secs,
        } => {
            json!({"event": "position", "position": position, "queue_len": queue_len, "eta_secs": eta_secs})
        }
        Event::Admitted {
            token,
            expires_at,
            login_addr,
        } => {
            json!({"event": "admitted", "token": token, "expires_at": expires_at, "login_addr": login_addr})
        }
        Event::Kicked {
            reason,
            retry_after_secs,
        } => {
            json!({"event": "kicked", "reason": reason.as_str(), "retry_after_secs": retry_after_secs})
        }
        Event::Reconnecting {
            attempt,
            delay_ms,
            cause,
        } => {
            json!({"event": "reconnecting", "attempt": attempt, "delay_ms": delay_ms, "cause": cause.to_string()})
        }
        Event::Resumed { position } => json!({"event": "resumed", "position": position}),
    }
}

/// A stop as the `--json` line prints it.
fn error_json(e: &Error, exit: u8) -> Value {
    json!({"event": "error", "error": e.to_string(), "code": e.code(), "exit": exit})
}

/// Where the player stands, for the bar.
struct View {
    /// Highest position seen: the bar's length (the bar fills as the place falls).
    start: u64,
    /// Last position.
    position: u64,
    /// Last queue length.
    queue_len: u64,
    /// Last ETA.
    eta_secs: Option<u64>,
    /// What the connection is doing (empty while all is well).
    note: String,
}

impl View {
    fn message(&self, waited: Duration) -> String {
        let eta = self.eta_secs.map_or("--".to_string(), human_secs);
        let mut m = format!(
            "position {} of {} | ETA {} | waited {}",
            self.position,
            self.queue_len,
            eta,
            human_secs(waited.as_secs())
        );
        if !self.note.is_empty() {
            m.push_str(" | ");
            m.push_str(&self.note);
        }
        m
    }
}

/// Writes one JSON line to stdout, flushed (scripts read it as it comes).
fn say(v: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Connects and logs in; on failure (or Ctrl-C) the exit code, the error printed.
async fn connect(args: &JoinArgs) -> Result<Client, u8> {
    let connecting = async { args.player.builder(args.user).connect().await };
    tokio::select! {
        c = connecting => c.map_err(|e| {
            let code = exit_code(&e);
            if args.json { say(error_json(&e, code)) } else { eprintln!("queue-client: {e}") }
            code
        }),
        _ = tokio::signal::ctrl_c() => Err(exit::INTERRUPTED),
    }
}

/// The bar on stderr (hidden with `--json`).
fn progress_bar(json: bool) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {msg}")
            .expect("static template")
            .progress_chars("=> ")
            .tick_chars("|/-\\ "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Runs `join`; returns the exit code.
pub async fn run(args: JoinArgs) -> u8 {
    let started = Instant::now();
    let json = args.json;
    let mut client = match connect(&args).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let tty = std::io::stderr().is_terminal();
    let bar = progress_bar(json);
    let mut view = View {
        start: 1,
        position: 0,
        queue_len: 0,
        eta_secs: None,
        note: String::new(),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        let event = tokio::select! {
            e = client.next_event() => e,
            _ = tick.tick() => {
                bar.set_message(view.message(started.elapsed()));
                continue;
            }
            _ = tokio::signal::ctrl_c() => {
                let _ = client.leave().await;
                if json { say(json!({"event": "left"})) } else {
                    bar.abandon_with_message(format!("{} | left the queue", view.message(started.elapsed())));
                }
                return exit::INTERRUPTED;
            }
        };
        let event = match event {
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                let code = exit_code(&e);
                if json {
                    say(error_json(&e, code));
                } else {
                    bar.abandon_with_message(format!(
                        "{} | stopped",
                        view.message(started.elapsed())
                    ));
                    eprintln!("queue-client: {e}");
                }
                return code;
            }
            None => {
                // Only after Admitted or leave, both handled above: the task ended.
                if !json {
                    eprintln!("queue-client: the connection task stopped");
                }
                return exit::GAVE_UP;
            }
        };
        if json {
            say(event_json(&event));
        } else if !tty {
            eprintln!("{}", event_json(&event));
        }
        if let Some(code) = view.apply(event, &bar, json, started) {
            return code;
        }
        bar.set_message(view.message(started.elapsed()));
    }
}

impl View {
    /// Takes one event into the view and the bar; the exit code once admitted (the
    /// token is then printed on stdout, unless `--json` printed it already).
    fn apply(
        &mut self,
        event: Event,
        bar: &ProgressBar,
        json: bool,
        started: Instant,
    ) -> Option<u8> {
        match event {
            Event::Position {
                position,
                queue_len,
                eta_secs,
            } => {
                self.start = self.start.max(position);
                self.position = position;
                self.queue_len = queue_len;
                self.eta_secs = eta_secs;
                self.note.clear();
                bar.set_length(self.start);
                bar.set_position(self.start - position.min(self.start));
            }
            Event::Reconnecting {
                attempt, delay_ms, ..
            } => {
                self.note = format!("reconnecting (attempt {attempt}, in {delay_ms} ms)");
            }
            Event::Resumed { .. } => self.note = "resumed".into(),
            Event::Kicked { reason, .. } => self.note = format!("kicked: {reason}"),
            Event::Admitted {
                token, login_addr, ..
            } => {
                bar.set_position(self.start);
                bar.finish_with_message(format!("{} | admitted", self.message(started.elapsed())));
                if !json {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "token: {token}");
                    if let Some(addr) = login_addr {
                        let _ = writeln!(out, "login_addr: {addr}");
                    }
                    let _ = out.flush();
                }
                return Some(exit::OK);
            }
        }
        None
    }
}
