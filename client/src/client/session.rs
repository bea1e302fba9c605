//! One logged-in connection's life, from login answer to its end ([`SessionEnd`]):
//! heartbeats, answer deadlines, pushes turned into events, and `leave`.
//!
//! Invariants:
//! - one `select!` waits on four things (a frame, the heartbeat, the oldest request's
//!   answer deadline, a command); each handler is a method of [`Session`] that returns
//!   `Some(end)` to end the connection or `None` to carry on;
//! - every request in flight has an answer deadline; the oldest one passing means the
//!   server is taken for dead (`AnswerTimeout`);
//! - once `leave` is sent no heartbeat nor command is taken any more, and whatever ends
//!   the connection then answers the `leave` exactly once;
//! - an error answer to a request keeps the connection only for the codes after which
//!   the server keeps it open (docs/protocol.md 1.3: 2, 7, 10).

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant, MissedTickBehavior};

use super::conn::{answer_error, Conn};
use super::{Command, Config, Event};
use crate::codec::{self, Message, Push, ServerFrame};
use crate::error::Error;

/// How one connection ended.
pub(super) enum SessionEnd {
    /// Admitted, left, or the handle is gone: stop quietly.
    Stop,
    /// Stop with this error as the stream's last item.
    Final(Error),
    /// Reconnect; the first attempt waits at least this many seconds when given.
    Lost(Error, Option<u64>),
}

/// What one connection keeps between two wake-ups.
struct Session<'a> {
    /// The settings.
    cfg: &'a Config,
    /// Where events go.
    events: &'a mpsc::UnboundedSender<Result<Event, Error>>,
    /// Requests in flight: (seq, cmd, answer deadline), in send order.
    pending: VecDeque<(u32, &'static str, Instant)>,
    /// The `leave` being sent, answered when the connection ends.
    leaving: Option<oneshot::Sender<Result<(), Error>>>,
}

/// Runs one logged-in connection until it ends.
pub(super) async fn session(
    conn: &mut Conn,
    cfg: &Config,
    events: &mpsc::UnboundedSender<Result<Event, Error>>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> SessionEnd {
    let every = cfg.b.heartbeat_interval;
    let mut heartbeat = tokio::time::interval_at(Instant::now() + every, every);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut s = Session {
        cfg,
        events,
        pending: VecDeque::new(),
        leaving: None,
    };
    let mut commands_open = true;
    loop {
        let deadline = s.pending.front().map(|p| p.2);
        let end = tokio::select! {
            frame = conn.read_frame() => s.on_frame(frame),
            _ = heartbeat.tick(), if s.leaving.is_none() => s.heartbeat(conn).await,
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                Some(s.timed_out())
            }
            command = commands.recv(), if commands_open && s.leaving.is_none() => {
                match command {
                    Some(Command::Leave(done)) => s.leave(conn, done).await,
                    // The handle is gone (it aborts us too); stop reading commands.
                    None => {
                        commands_open = false;
                        None
                    }
                }
            }
        };
        if let Some(end) = end {
            return end;
        }
    }
}

impl Session<'_> {
    /// A frame read, or the read's failure.
    fn on_frame(&mut self, frame: Result<ServerFrame, Error>) -> Option<SessionEnd> {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                if let Some(done) = self.leaving.take() {
                    // The server closes after answering `leave`; a close here
                    // means the leave went through or the server is gone.
                    let _ = done.send(Ok(()));
                    return Some(SessionEnd::Stop);
                }
                return Some(SessionEnd::Lost(e, None));
            }
        };
        let message = match codec::classify(frame) {
            Ok(m) => m,
            Err(e) => return Some(SessionEnd::Lost(e.into(), None)),
        };
        match message {
            Message::Push(push) => self.on_push(push),
            Message::Answer(frame) if frame.seq == 0 => {
                // An error about no request of ours: a frame the server could
                // not parse, or a connection-level refusal (RATE_LIMITED over
                // the connection limits). The server closes after it.
                let e = answer_error(&frame);
                let retry = e.retry_after_secs();
                Some(if e.is_transient() {
                    SessionEnd::Lost(e, retry)
                } else {
                    SessionEnd::Final(e)
                })
            }
            Message::Answer(frame) => self.on_answer(frame),
        }
    }

    /// A push: position, admitted, kicked (others are ignored).
    fn on_push(&mut self, push: Push) -> Option<SessionEnd> {
        match push {
            Push::Position(s) => {
                let _ = self.events.send(Ok(Event::Position {
                    position: s.position,
                    queue_len: s.queue_len,
                    eta_secs: s.eta_secs,
                }));
                None
            }
            Push::Admitted {
                token,
                expires_at,
                login_addr,
            } => {
                let _ = self.events.send(Ok(Event::Admitted {
                    token,
                    expires_at,
                    login_addr,
                }));
                if let Some(done) = self.leaving.take() {
                    let _ = done.send(Ok(()));
                }
                Some(SessionEnd::Stop)
            }
            Push::Kicked {
                reason,
                retry_after_secs,
            } => {
                let _ = self.events.send(Ok(Event::Kicked {
                    reason: reason.clone(),
                    retry_after_secs,
                }));
                if let Some(done) = self.leaving.take() {
                    let _ = done.send(Ok(()));
                    return Some(SessionEnd::Stop);
                }
                if reason.is_final() {
                    return Some(SessionEnd::Final(Error::Kicked { reason }));
                }
                let cause = Error::ConnectionLost {
                    msg: format!("kicked: {reason}"),
                };
                Some(SessionEnd::Lost(cause, retry_after_secs))
            }
            Push::Other(_) => None,
        }
    }

    /// The answer to one of our requests (matched by `seq`).
    fn on_answer(&mut self, frame: ServerFrame) -> Option<SessionEnd> {
        let Some(at) = self.pending.iter().position(|p| p.0 == frame.seq) else {
            return Some(SessionEnd::Lost(
                codec::DecodeError::Field {
                    cmd: frame.cmd,
                    field: "seq",
                }
                .into(),
                None,
            ));
        };
        let (_, cmd, _) = self.pending.remove(at).unwrap_or((0, "", Instant::now()));
        if cmd == "leave" {
            if let Some(done) = self.leaving.take() {
                let result = if frame.code == 0 {
                    Ok(())
                } else {
                    Err(answer_error(&frame))
                };
                let _ = done.send(result);
            }
            return Some(SessionEnd::Stop);
        }
        if frame.code == 0 {
            return None;
        }
        let e = answer_error(&frame);
        match frame.code {
            // The connection stays open after these (1.3): carry on.
            2 | 7 | 10 => None,
            _ if e.is_transient() => {
                let retry = e.retry_after_secs();
                Some(SessionEnd::Lost(e, retry))
            }
            _ => Some(SessionEnd::Final(e)),
        }
    }

    /// Time for a heartbeat: send it, with its answer deadline.
    async fn heartbeat(&mut self, conn: &mut Conn) -> Option<SessionEnd> {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        match conn.send("heartbeat", json!({ "ts": ms })).await {
            Ok(seq) => {
                self.pending.push_back((
                    seq,
                    "heartbeat",
                    Instant::now() + self.cfg.b.answer_timeout,
                ));
                None
            }
            Err(e) => Some(SessionEnd::Lost(e, None)),
        }
    }

    /// The oldest request's answer deadline passed: the server is taken for dead.
    fn timed_out(&mut self) -> SessionEnd {
        let cmd = self.pending.front().map_or("request", |p| p.1);
        let e = Error::AnswerTimeout {
            cmd,
            after_ms: self.cfg.b.answer_timeout.as_millis() as u64,
        };
        if let Some(done) = self.leaving.take() {
            let _ = done.send(Err(e));
            return SessionEnd::Stop;
        }
        SessionEnd::Lost(e, None)
    }

    /// [`Client::leave`](super::Client::leave): send `leave`; `done` is answered when
    /// the connection ends.
    async fn leave(
        &mut self,
        conn: &mut Conn,
        done: oneshot::Sender<Result<(), Error>>,
    ) -> Option<SessionEnd> {
        match conn.send("leave", json!({})).await {
            Ok(seq) => {
                self.pending
                    .push_back((seq, "leave", Instant::now() + self.cfg.b.answer_timeout));
                self.leaving = Some(done);
                None
            }
            Err(_) => {
                // Could not even write it: the connection is gone, and with
                // it (after the grace) the place.
                let _ = done.send(Ok(()));
                Some(SessionEnd::Stop)
            }
        }
    }
}
