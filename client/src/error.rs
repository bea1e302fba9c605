//! The SDK's error type: one variant per protocol error code (docs/protocol.md 1.3), and
//! the client-side failures (connect, timeouts, a lost connection, bytes the client
//! cannot read, giving up).
//!
//! Owns: the classification the reconnect loop relies on ([`Error::is_transient`]):
//! which failures the client rides out by reconnecting and which end it.

use std::fmt;

use crate::codec::{DecodeError, KickReason};

/// Everything that can stop or interrupt a [`Client`](crate::Client).
///
/// Codes 1 to 10 of the protocol each have their own variant, carrying the server's
/// `msg`; [`Error::code`] gives the number back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Code 1 `BAD_FRAME`: the server could not read a request (a client bug).
    BadFrame {
        /// The server's text.
        msg: String,
    },
    /// Code 2 `UNSUPPORTED`: unknown `cmd` or `ver`.
    Unsupported {
        /// The server's text.
        msg: String,
    },
    /// Code 3 `NOT_LOGGED_IN`: a command before `login`.
    NotLoggedIn {
        /// The server's text.
        msg: String,
    },
    /// Code 4 `AUTH_FAILED`: ticket missing, malformed, badly signed or expired.
    AuthFailed {
        /// The server's text.
        msg: String,
    },
    /// Code 5 `QUEUE_FULL`: the queue holds `max_waiting` players.
    QueueFull {
        /// The server's text.
        msg: String,
    },
    /// Code 6 `UNKNOWN_QUEUE`: no queue by that name.
    UnknownQueue {
        /// The server's text.
        msg: String,
    },
    /// Code 7 `ALREADY_LOGGED_IN`: a second `login` on one connection.
    AlreadyLoggedIn {
        /// The server's text.
        msg: String,
    },
    /// Code 8 `RATE_LIMITED`: too many logins or connections; retried with backoff.
    RateLimited {
        /// The server's text.
        msg: String,
    },
    /// Code 9 `SHUTTING_DOWN`: the server drains; retried after `retry_after_secs`.
    ShuttingDown {
        /// The server's text.
        msg: String,
        /// When to come back, as the server said.
        retry_after_secs: Option<u64>,
    },
    /// Code 10 `INTERNAL`: a server bug.
    Internal {
        /// The server's text.
        msg: String,
    },
    /// A code this client does not know (a newer server).
    UnknownCode {
        /// The code.
        code: u32,
        /// The server's text.
        msg: String,
    },
    /// The server kicked this client for good (`duplicate_login`, `removed`): another
    /// connection holds the place, or an operator took it. The client does not reconnect.
    Kicked {
        /// Why.
        reason: KickReason,
    },
    /// The TCP connection could not be made.
    Connect {
        /// Where to.
        addr: String,
        /// The OS error.
        msg: String,
    },
    /// The TCP connection was not made within the connect timeout.
    ConnectTimeout {
        /// Where to.
        addr: String,
        /// The timeout.
        after_ms: u64,
    },
    /// A request got no answer within the answer timeout: the server (or the path to
    /// it) is taken for dead.
    AnswerTimeout {
        /// The request.
        cmd: &'static str,
        /// The timeout.
        after_ms: u64,
    },
    /// The connection closed or broke without a `kicked` push.
    ConnectionLost {
        /// What the socket said.
        msg: String,
    },
    /// The server sent bytes this client cannot read.
    Decode(DecodeError),
    /// Reconnecting failed `attempts` times in a row; `last` is the last failure.
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: Box<Error>,
    },
    /// The client has stopped (admitted, left, or stopped by an error) and cannot act.
    Closed,
    /// The builder was given something unusable.
    Config(String),
}

impl Error {
    /// The error for an answer with a non-zero `code`; `retry_after_secs` comes from
    /// its `data` (code 9).
    pub fn from_code(code: u32, msg: &str, retry_after_secs: Option<u64>) -> Error {
        let msg = msg.to_string();
        match code {
            1 => Error::BadFrame { msg },
            2 => Error::Unsupported { msg },
            3 => Error::NotLoggedIn { msg },
            4 => Error::AuthFailed { msg },
            5 => Error::QueueFull { msg },
            6 => Error::UnknownQueue { msg },
            7 => Error::AlreadyLoggedIn { msg },
            8 => Error::RateLimited { msg },
            9 => Error::ShuttingDown {
                msg,
                retry_after_secs,
            },
            10 => Error::Internal { msg },
            code => Error::UnknownCode { code, msg },
        }
    }

    /// The protocol code of a server-sent error, `None` for client-side errors.
    pub fn code(&self) -> Option<u32> {
        Some(match self {
            Error::BadFrame { .. } => 1,
            Error::Unsupported { .. } => 2,
            Error::NotLoggedIn { .. } => 3,
            Error::AuthFailed { .. } => 4,
            Error::QueueFull { .. } => 5,
            Error::UnknownQueue { .. } => 6,
            Error::AlreadyLoggedIn { .. } => 7,
            Error::RateLimited { .. } => 8,
            Error::ShuttingDown { .. } => 9,
            Error::Internal { .. } => 10,
            Error::UnknownCode { code, .. } => *code,
            _ => return None,
        })
    }

    /// True when the server answered a request with an error code: it refused.
    pub fn is_refusal(&self) -> bool {
        self.code().is_some()
    }

    /// Seconds the server asked the client to stay away (code 9).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Error::ShuttingDown {
                retry_after_secs, ..
            } => *retry_after_secs,
            _ => None,
        }
    }

    /// True when reconnecting can help: the server asked to come back later (8, 9),
    /// had a bug (10), or the connection failed, timed out, broke or was garbled.
    /// False for refusals that would repeat (bad ticket, full or unknown queue, client
    /// bugs), final kicks, and the client's own stop.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::RateLimited { .. }
                | Error::ShuttingDown { .. }
                | Error::Internal { .. }
                | Error::Connect { .. }
                | Error::ConnectTimeout { .. }
                | Error::AnswerTimeout { .. }
                | Error::ConnectionLost { .. }
                | Error::Decode(_)
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadFrame { msg } => write!(f, "BAD_FRAME (1): {msg}"),
            Error::Unsupported { msg } => write!(f, "UNSUPPORTED (2): {msg}"),
            Error::NotLoggedIn { msg } => write!(f, "NOT_LOGGED_IN (3): {msg}"),
            Error::AuthFailed { msg } => write!(f, "AUTH_FAILED (4): {msg}"),
            Error::QueueFull { msg } => write!(f, "QUEUE_FULL (5): {msg}"),
            Error::UnknownQueue { msg } => write!(f, "UNKNOWN_QUEUE (6): {msg}"),
            Error::AlreadyLoggedIn { msg } => write!(f, "ALREADY_LOGGED_IN (7): {msg}"),
            Error::RateLimited { msg } => write!(f, "RATE_LIMITED (8): {msg}"),
            Error::ShuttingDown {
                msg,
                retry_after_secs,
            } => match retry_after_secs {
                Some(s) => write!(f, "SHUTTING_DOWN (9): {msg}; retry after {s} s"),
                None => write!(f, "SHUTTING_DOWN (9): {msg}"),
            },
            Error::Internal { msg } => write!(f, "INTERNAL (10): {msg}"),
            Error::UnknownCode { code, msg } => write!(f, "error code {code}: {msg}"),
            Error::Kicked { reason } => write!(f, "kicked: {reason}"),
            Error::Connect { addr, msg } => write!(f, "cannot connect to {addr}: {msg}"),
            Error::ConnectTimeout { addr, after_ms } => {
                write!(f, "no connection to {addr} within {after_ms} ms")
            }
            Error::AnswerTimeout { cmd, after_ms } => {
                write!(f, "no answer to `{cmd}` within {after_ms} ms")
            }
            Error::ConnectionLost { msg } => write!(f, "connection lost: {msg}"),
            Error::Decode(e) => write!(f, "{e}"),
            Error::GaveUp { attempts, last } => {
                write!(
                    f,
                    "gave up after {attempts} reconnect attempts; last: {last}"
                )
            }
            Error::Closed => f.write_str("the client has stopped"),
            Error::Config(e) => write!(f, "bad client configuration: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Error::Decode(e)
    }
}
