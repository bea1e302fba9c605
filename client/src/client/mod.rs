//! The client: builder, handle, and (in the submodules) the connection and the task
//! that keeps a player in the queue (heartbeats, answer deadlines, reconnect with
//! backoff and resume).
//!
//! Owns: the reconnect rules every client must follow (docs/protocol.md 5; the server's
//! side of them in 1.6):
//! - heartbeat every `heartbeat_interval` (10 s by default, well inside the server's
//!   30 s idle timeout);
//! - every request (login, heartbeat, leave) must be answered within `answer_timeout`,
//!   else the server is taken for dead and the client reconnects;
//! - reconnect with exponential backoff and jitter; a `login` within the server's
//!   `reconnect_grace_secs` gets the place back (`resumed: true`);
//! - `SHUTTING_DOWN` (9) and `kicked shutdown` are honoured: the next attempt waits at
//!   least `retry_after_secs` (plus up to 10 % of jitter, at most 1 s, so a whole
//!   queue does not come back in the same instant: docs/protocol.md section 5 rule 4);
//! - a cluster's login answer carries a `place_ticket`: the latest one is presented at
//!   every later login (the place comes back on any node, even if the one that held it
//!   died), forgotten once admitted, or when the server rejects it (the login is then
//!   tried again at once without it);
//! - never reconnect after `kicked duplicate_login` / `removed`, after `leave`, after a
//!   refusal that would repeat (bad ticket, full or unknown queue), or once admitted
//!   (the connection is closed then; the token is the player's).
//!
//! Invariants:
//! - One task per client owns the socket; the [`Client`] handle only reads events and
//!   sends commands, so nothing is shared or locked.
//! - The event stream ends (`None`) after `Admitted` or `leave`; a stop for any other
//!   reason ends it with exactly one `Err`, the last item.
//! - Reads are cancel-safe (bytes land in the connection's buffer; whole frames are
//!   taken off it without an await in between), so `select!` never loses a frame.
//!
//! Layout: this file holds the public face (events, builder, handle) and the settings
//! the task reads (`Config`, with the backoff rule, and its jitter source); `conn.rs`
//! one connection and its login; `session.rs` one logged-in connection's life;
//! `task.rs` the task that runs sessions and reconnects between them.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::sleep;

use crate::codec::{self, KickReason};
use crate::error::Error;

mod conn;
mod session;
mod task;

use conn::{login_events, Conn};
use task::drive;

/// Something that happened to the player. Read them with [`Client::next_event`] or as
/// a [`Stream`](futures_core::Stream).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Where the player stands: after every login, and on every `position` push.
    Position {
        /// 1-based place; 1 is admitted next.
        position: u64,
        /// Players waiting in the queue.
        queue_len: u64,
        /// Estimated wait in seconds; `None` until the server has seen admissions.
        eta_secs: Option<u64>,
    },
    /// The player is admitted: hand `token` to the login server. The last event.
    Admitted {
        /// The admission token (a JWT).
        token: String,
        /// Token expiry, unix seconds.
        expires_at: u64,
        /// Where to log in, if the server is configured with it.
        login_addr: Option<String>,
    },
    /// The server kicked this connection. A final kick (`duplicate_login`, `removed`)
    /// is followed by `Err(Error::Kicked)`; any other by `Reconnecting`.
    Kicked {
        /// Why.
        reason: KickReason,
        /// Seconds the server asked the client to stay away.
        retry_after_secs: Option<u64>,
    },
    /// The connection is gone; attempt number `attempt` (from 1) starts in `delay_ms`.
    Reconnecting {
        /// Consecutive attempt number, from 1.
        attempt: u32,
        /// Wait before this attempt (backoff with jitter, or the server's retry-after).
        delay_ms: u64,
        /// What broke the connection or the previous attempt.
        cause: Error,
    },
    /// A reconnect got the player's place back (`resumed: true`); a `Position` follows.
    Resumed {
        /// The place.
        position: u64,
    },
}

/// Defaults of [`ClientBuilder`], in one place for the docs.
pub mod defaults {
    use std::time::Duration;
    /// Heartbeat period: the protocol asks for 10 s (the server's idle timeout is 30 s).
    pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
    /// Most time any request waits for its answer before the server is taken for dead.
    pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
    /// Most time a TCP connect may take.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// First reconnect backoff (doubles per attempt, with jitter).
    pub const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
    /// Largest reconnect backoff (docs/protocol.md section 5 rule 3).
    pub const BACKOFF_MAX: Duration = Duration::from_secs(15);
    /// Reconnect attempts in a row before giving up: 60-120 s of backoff in all, so a
    /// client keeps trying through the server's default 60 s reconnect grace.
    pub const MAX_RECONNECT_ATTEMPTS: u32 = 12;
}

/// Settings of one client; see [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    /// Player port, `host:port`.
    addr: String,
    /// The player (required).
    user_id: Option<u64>,
    /// Queue name.
    queue: String,
    /// Login ticket (required when the server checks tickets).
    ticket: Option<String>,
    /// Heartbeat period.
    heartbeat_interval: Duration,
    /// Answer deadline of every request.
    answer_timeout: Duration,
    /// TCP connect deadline.
    connect_timeout: Duration,
    /// First backoff.
    backoff_initial: Duration,
    /// Backoff cap.
    backoff_max: Duration,
    /// Attempts before giving up.
    max_reconnect_attempts: u32,
    /// Largest server frame body accepted.
    max_frame_bytes: u32,
}

impl ClientBuilder {
    /// The player's id (required).
    pub fn user(mut self, user_id: u64) -> Self {
        self.user_id = Some(user_id);
        self
    }

    /// The queue to join (default `"default"`).
    pub fn queue(mut self, name: impl Into<String>) -> Self {
        self.queue = name.into();
        self
    }

    /// The login ticket from the game's account service (a JWT), when the server
    /// checks tickets (`auth.mode = "jwt"`).
    pub fn ticket(mut self, ticket: impl Into<String>) -> Self {
        self.ticket = Some(ticket.into());
        self
    }

    /// Heartbeat period (default 10 s). Must stay well below the server's
    /// `idle_timeout_secs`.
    pub fn heartbeat_interval(mut self, every: Duration) -> Self {
        self.heartbeat_interval = every;
        self
    }

    /// Most time a request waits for its answer (default 10 s).
    pub fn answer_timeout(mut self, timeout: Duration) -> Self {
        self.answer_timeout = timeout;
        self
    }

    /// Most time a TCP connect may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Reconnect backoff: first delay and cap (defaults 500 ms and 15 s). Each attempt
    /// doubles the delay up to the cap and waits a random 50 to 100 % of it.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// Reconnect attempts in a row before the client gives up (default 10).
    pub fn max_reconnect_attempts(mut self, attempts: u32) -> Self {
        self.max_reconnect_attempts = attempts;
        self
    }

    /// Largest server frame accepted (default 64 KiB).
    pub fn max_frame_bytes(mut self, bytes: u32) -> Self {
        self.max_frame_bytes = bytes;
        self
    }

    /// Connects and logs in, then keeps the player in the queue in a background task.
    ///
    /// Fails at once when the server cannot be reached or refuses the login (a typed
    /// [`Error`]); a server that answers "later" (`SHUTTING_DOWN`, `RATE_LIMITED`) is
    /// waited out, up to `max_reconnect_attempts` times. Must be called within a
    /// tokio runtime.
    pub async fn connect(self) -> Result<Client, Error> {
        let user_id = self
            .user_id
            .ok_or_else(|| Error::Config("user id is required (.user(id))".into()))?;
        if self.heartbeat_interval.is_zero() || self.answer_timeout.is_zero() {
            return Err(Error::Config(
                "heartbeat interval and answer timeout must be above zero".into(),
            ));
        }
        let mut cfg = Config {
            user_id,
            rng: Rng::new(user_id),
            b: self,
            place_ticket: None,
        };
        let mut attempts = 0;
        let (conn, answer) = loop {
            match Conn::open(&cfg).await {
                Ok(ok) => break ok,
                Err(e) if matches!(e, Error::ShuttingDown { .. } | Error::RateLimited { .. }) => {
                    attempts += 1;
                    if attempts > cfg.b.max_reconnect_attempts {
                        return Err(Error::GaveUp {
                            attempts: attempts - 1,
                            last: Box::new(e),
                        });
                    }
                    sleep(cfg.delay(attempts, e.retry_after_secs())).await;
                }
                Err(e) => return Err(e),
            }
        };
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        login_events(&answer, &event_tx);
        cfg.logged_in(&answer);
        let queue = cfg.b.queue.clone();
        let task = tokio::spawn(drive(cfg, conn, event_tx, command_rx));
        Ok(Client {
            events: event_rx,
            commands: command_tx,
            task,
            user_id,
            queue,
        })
    }
}

/// A player waiting in a queue. Dropping it closes the connection (the server keeps the
/// place for its reconnect grace); [`Client::leave`] gives the place up.
#[derive(Debug)]
pub struct Client {
    /// Events from the connection task.
    events: mpsc::UnboundedReceiver<Result<Event, Error>>,
    /// Commands to the connection task.
    commands: mpsc::UnboundedSender<Command>,
    /// The connection task (aborted on drop).
    task: JoinHandle<()>,
    /// The player.
    user_id: u64,
    /// The queue.
    queue: String,
}

/// From the handle to the connection task.
#[derive(Debug)]
enum Command {
    /// Send `leave`, close, stop; answer when done.
    Leave(oneshot::Sender<Result<(), Error>>),
}

impl Client {
    /// Starts a builder for the player port at `addr` (`host:port`).
    pub fn builder(addr: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            addr: addr.into(),
            user_id: None,
            queue: "default".into(),
            ticket: None,
            heartbeat_interval: defaults::HEARTBEAT_INTERVAL,
            answer_timeout: defaults::ANSWER_TIMEOUT,
            connect_timeout: defaults::CONNECT_TIMEOUT,
            backoff_initial: defaults::BACKOFF_INITIAL,
            backoff_max: defaults::BACKOFF_MAX,
            max_reconnect_attempts: defaults::MAX_RECONNECT_ATTEMPTS,
            max_frame_bytes: codec::DEFAULT_MAX_FRAME_BYTES,
        }
    }

    /// The next event; `None` once the client has stopped (after `Admitted`, after
    /// [`leave`](Client::leave), or after the `Err` that says why it stopped).
    pub async fn next_event(&mut self) -> Option<Result<Event, Error>> {
        self.events.recv().await
    }

    /// Gives the place up: sends `leave`, waits for its answer (or the answer timeout),
    /// closes, and ends the event stream. While reconnecting, just stops (the server
    /// frees the place when its reconnect grace runs out). `Err(Error::Closed)` when
    /// the client had already stopped.
    pub async fn leave(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Leave(tx))
            .map_err(|_| Error::Closed)?;
        rx.await.unwrap_or(Err(Error::Closed))
    }

    /// The player's id.
    pub fn user_id(&self) -> u64 {
        self.user_id
    }

    /// The queue's name.
    pub fn queue(&self) -> &str {
        &self.queue
    }
}

impl futures_core::Stream for Client {
    type Item = Result<Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The builder's settings plus what the task needs.
struct Config {
    /// The settings.
    b: ClientBuilder,
    /// The player.
    user_id: u64,
    /// Jitter source.
    rng: Rng,
    /// The latest place ticket a login answer gave (cluster servers), presented at
    /// every later login; forgotten once admitted or refused.
    place_ticket: Option<String>,
}

impl Config {
    /// Wait before attempt `attempt` (from 1): exponential backoff, a random 50-100 %
    /// of it; at least the server's retry-after (plus up to 10 % jitter, at most 1 s) when
    /// given.
    fn delay(&mut self, attempt: u32, retry_after_secs: Option<u64>) -> Duration {
        let initial = self.b.backoff_initial.as_millis() as u64;
        let max = self.b.backoff_max.as_millis() as u64;
        let exp = initial.saturating_mul(1u64 << attempt.saturating_sub(1).min(32));
        let base = exp.min(max);
        let backoff = base / 2 + self.rng.below(base / 2 + 1);
        let ms = match retry_after_secs {
            Some(secs) => {
                let floor = secs.saturating_mul(1000);
                backoff.max(floor + self.rng.below((floor / 10).min(1000) + 1))
            }
            None => backoff,
        };
        Duration::from_millis(ms)
    }

    /// The `login` request's data.
    fn login_data(&self) -> Value {
        let mut data = json!({"user_id": self.user_id, "queue": self.b.queue});
        if let Some(t) = &self.b.ticket {
            data["ticket"] = Value::String(t.clone());
        }
        if let Some(t) = &self.place_ticket {
            data["place_ticket"] = Value::String(t.clone());
        }
        data
    }

    /// Keeps the answer's place ticket (the latest one wins), forgets it once admitted.
    fn logged_in(&mut self, answer: &codec::LoginAnswer) {
        if answer.admitted {
            self.place_ticket = None;
        } else if let Some(t) = &answer.place_ticket {
            self.place_ticket = Some(t.clone());
        }
    }

    /// A login presenting a place ticket was refused for the ticket alone (a cluster
    /// whose `tokens.key` changed): forget it; true when the login should simply be
    /// tried again without it.
    fn ticket_refused(&mut self, e: &Error) -> bool {
        let refused =
            matches!(e, Error::AuthFailed { msg } if msg.starts_with("place ticket rejected"));
        refused && self.place_ticket.take().is_some()
    }
}

/// A small xorshift generator for jitter: no dependency, seeded per client so that
/// clients started together do not draw the same delays.
struct Rng(u64);

impl Rng {
    fn new(user_id: u64) -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng((nanos ^ user_id.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    /// Uniform-ish in `0..n` (`0` when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        if n == 0 {
            0
        } else {
            self.0 % n
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            b: Client::builder("127.0.0.1:1").user(7),
            user_id: 7,
            rng: Rng::new(7),
            place_ticket: None,
        }
    }

    /// docs/protocol.md section 5, rule 3: a random 50-100 % of 0.5 s x 2^attempt,
    /// capped at 15 s.
    #[test]
    fn backoff_doubles_with_jitter_up_to_the_documented_cap() {
        let mut cfg = config();
        for _ in 0..1000 {
            let first = cfg.delay(1, None);
            assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
            let late = cfg.delay(30, None);
            assert!(
                late >= Duration::from_millis(7_500) && late <= Duration::from_secs(15),
                "{late:?}"
            );
        }
    }

    /// Rule 4: at least `retry_after_secs`, plus up to 10 % jitter, at most 1 s.
    #[test]
    fn retry_after_gets_at_most_ten_percent_and_one_second_of_jitter() {
        let mut cfg = config();
        for _ in 0..1000 {
            let d = cfg.delay(1, Some(5));
            assert!(
                d >= Duration::from_secs(5) && d <= Duration::from_millis(5_500),
                "{d:?}"
            );
            let d = cfg.delay(1, Some(60));
            assert!(
                d >= Duration::from_secs(60) && d <= Duration::from_secs(61),
                "{d:?}"
            );
        }
    }
}
