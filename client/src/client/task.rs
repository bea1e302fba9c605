//! The connection task: runs sessions one after another and reconnects between them
//! (backoff with jitter, the server's retry-after, attempts capped).
//!
//! Invariants:
//! - the task alone owns the connection; it stops after a session ends with `Stop`
//!   (quietly) or `Final` (one `Err`), after a refusal that would repeat, or after
//!   `max_reconnect_attempts` failed attempts in a row (one `Err(GaveUp)`);
//! - each attempt is announced (`Reconnecting`) before its wait; a `leave` or a dropped
//!   handle during the wait stops the task at once (nothing to send: the server frees
//!   the place when its reconnect grace ends).

use tokio::sync::mpsc;
use tokio::time::sleep;

use super::conn::{login_events, Conn};
use super::session::{session, SessionEnd};
use super::{Command, Config, Event};
use crate::error::Error;

/// The connection task: sessions, and reconnects between them.
pub(super) async fn drive(
    mut cfg: Config,
    first: Conn,
    events: mpsc::UnboundedSender<Result<Event, Error>>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut conn = first;
    loop {
        let end = session(&mut conn, &cfg, &events, &mut commands).await;
        drop(conn);
        let (mut cause, mut retry_after) = match end {
            SessionEnd::Stop => return,
            SessionEnd::Final(e) => {
                let _ = events.send(Err(e));
                return;
            }
            SessionEnd::Lost(e, retry) => (e, retry),
        };
        let mut attempt = 0;
        conn = loop {
            attempt += 1;
            if attempt > cfg.b.max_reconnect_attempts {
                let _ = events.send(Err(Error::GaveUp {
                    attempts: attempt - 1,
                    last: Box::new(cause),
                }));
                return;
            }
            let delay = cfg.delay(attempt, retry_after);
            let _ = events.send(Ok(Event::Reconnecting {
                attempt,
                delay_ms: delay.as_millis() as u64,
                cause: cause.clone(),
            }));
            tokio::select! {
                _ = sleep(delay) => {}
                command = commands.recv() => {
                    // Leave while disconnected: nothing to send; the server frees the
                    // place when the grace ends. A dropped handle stops us too.
                    if let Some(Command::Leave(done)) = command {
                        let _ = done.send(Ok(()));
                    }
                    return;
                }
            }
            match Conn::open(&cfg).await {
                Ok((c, answer)) => {
                    login_events(&answer, &events);
                    cfg.logged_in(&answer);
                    break c;
                }
                Err(e) if e.is_transient() || cfg.ticket_refused(&e) => {
                    retry_after = e.retry_after_secs();
                    cause = e;
                }
                Err(e) => {
                    let _ = events.send(Err(e));
                    return;
                }
            }
        };
    }
}
