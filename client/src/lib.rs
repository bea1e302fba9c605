//! `queue-client`: the client SDK and command line for queue-server, the login queue
//! for online games.
//!
//! A player connects to the server's player port, logs in, and waits: the server pushes
//! the player's place as it moves and, when the game lets the player in, an admission
//! token to hand to the login server. This crate does all of that on tokio:
//! heartbeats, answer timeouts, reconnects with backoff and jitter, resuming the place
//! after a dropped connection or a server restart, and waiting out a server that shuts
//! down. You read typed [`Event`]s.
//!
//! # Example
//!
//! ```no_run
//! use queue_client::{Client, Event};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), queue_client::Error> {
//!     let mut client = Client::builder("127.0.0.1:7000")
//!         .user(42)
//!         .queue("default")
//!         // .ticket(ticket_from_your_account_service)   // when auth.mode = "jwt"
//!         .connect()
//!         .await?;
//!     while let Some(event) = client.next_event().await {
//!         match event? {
//!             Event::Position { position, queue_len, eta_secs } => {
//!                 println!("place {position} of {queue_len}, eta {eta_secs:?} s");
//!             }
//!             Event::Admitted { token, login_addr, .. } => {
//!                 println!("in! log in at {login_addr:?} with {token}");
//!                 break;
//!             }
//!             Event::Reconnecting { attempt, delay_ms, cause } => {
//!                 println!("connection lost ({cause}); attempt {attempt} in {delay_ms} ms");
//!             }
//!             Event::Resumed { position } => println!("back at place {position}"),
//!             Event::Kicked { reason, .. } => println!("kicked: {reason}"),
//!             _ => {}
//!         }
//!     }
//!     Ok(())
//! }
//! ```
//!
//! A runnable version is `examples/join.rs`
//! (`cargo run -p queue-client --example join -- 127.0.0.1:7000 42`). [`Client`] is
//! also a [`Stream`](futures_core::Stream) of `Result<Event, Error>`.
//!
//! # Events
//! - [`Event::Position`] after every login and on every `position` push;
//! - [`Event::Admitted`] once, last: the stream then ends and the connection is closed;
//! - [`Event::Kicked`] when the server kicks the connection;
//! - [`Event::Reconnecting`] before each reconnect attempt, with its delay and cause;
//! - [`Event::Resumed`] when a reconnect got the place back (a `Position` follows).
//!
//! The stream ends (`None`) after `Admitted` or [`Client::leave`]; any other stop is
//! one `Err` as the last item: a refusal (a typed variant per protocol error code,
//! e.g. [`Error::AuthFailed`], [`Error::QueueFull`], [`Error::UnknownQueue`]), a final
//! kick ([`Error::Kicked`] with `duplicate_login` or `removed`), or
//! [`Error::GaveUp`] after `max_reconnect_attempts` failed reconnects.
//!
//! # Behaviour (the reconnect rules of docs/protocol.md)
//! | what | default | builder |
//! |---|---|---|
//! | heartbeat period | 10 s | [`ClientBuilder::heartbeat_interval`] |
//! | answer timeout (every request; no answer = server dead, reconnect) | 10 s | [`ClientBuilder::answer_timeout`] |
//! | TCP connect timeout | 5 s | [`ClientBuilder::connect_timeout`] |
//! | reconnect backoff (doubling, random 50-100 % of it) | 500 ms up to 15 s | [`ClientBuilder::backoff`] |
//! | reconnect attempts before giving up | 12 | [`ClientBuilder::max_reconnect_attempts`] |
//! | largest server frame | 64 KiB | [`ClientBuilder::max_frame_bytes`] |
//!
//! - After `SHUTTING_DOWN` (code 9) or `kicked shutdown`, the next attempt waits at
//!   least the server's `retry_after_secs` (plus up to 10 % jitter, at most 1 s).
//! - No reconnect after `kicked duplicate_login` (another connection took the place),
//!   `kicked removed`, `leave`, admission, or a refusal that would repeat.
//! - [`ClientBuilder::connect`] fails at once when the server cannot be reached or
//!   refuses; it waits out `SHUTTING_DOWN` and `RATE_LIMITED`.
//! - Dropping the [`Client`] closes the connection; the server keeps the place for its
//!   reconnect grace (60 s by default).
//!
//! # Command line
//! With the default feature `cli`, the crate builds `queue-client` and `queuectl`:
//!
//! ```text
//! queue-client join --addr 127.0.0.1:7000 --user 42 [--queue Q] [--ticket T] [--json]
//! queue-client swarm --users 500 [--addr ..] [--queue ..] [--user-base 1000000]
//! queuectl [--url http://127.0.0.1:7001] [--api-key K | QUEUE_API_KEY] [--json]
//!          stats | admit N | rate R | capacity ONLINE CAP | pause | resume
//!          | verify TOKEN | keys          (queue commands take --queue, default "default")
//! ```
//!
//! Exit codes of `queue-client join` (and of `swarm`, for its worst player):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | admitted: the token was printed |
//! | 1 | any other failure (bad flags' values, output) |
//! | 2 | usage error (flags) |
//! | 3 | refused: the server answered `login` with an error code (bad ticket, queue full, unknown queue, ...) |
//! | 4 | kicked for good: `duplicate_login` or `removed` |
//! | 5 | gave up: the server could not be reached, or reconnecting failed too often |
//! | 130 | interrupted (Ctrl-C): `leave` was sent |
//!
//! `queuectl`: 0 ok; 1 the server answered an HTTP error (its `{"error"}` text is
//! printed); 2 usage; 3 `verify`: the token is not valid; 5 the control port could not
//! be reached.
//!
//! A game that wants only the SDK depends on `queue-client` with
//! `default-features = false`: tokio, serde, serde_json and futures-core, nothing else.

#![warn(missing_docs)]

mod client;
pub mod codec;
mod error;

#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;

pub use client::{defaults, Client, ClientBuilder, Event};
pub use codec::KickReason;
pub use error::Error;
