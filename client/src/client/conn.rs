//! One logged-in connection ([`Conn`]): connect and `login` within their deadlines,
//! write requests, read frames; and the events a login answer stands for.
//!
//! Invariants:
//! - every await has a deadline: connect (`connect_timeout`), each write and the login
//!   answer (`answer_timeout`);
//! - reads are cancel-safe: bytes land in `rbuf`, whole frames are taken off it with no
//!   await in between, so a `select!` that drops a read never loses a frame;
//! - pushes that arrive before the login answer are kept (`early`) and handed out first;
//! - request `seq` is never 0 (seq 0 marks pushes).

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Config, Event};
use crate::codec::{self, ServerFrame, Standing};
use crate::error::Error;

/// One logged-in connection.
pub(super) struct Conn {
    /// The socket.
    stream: TcpStream,
    /// Bytes read, not yet taken as frames.
    rbuf: Vec<u8>,
    /// Next request `seq` (never 0: seq 0 marks pushes).
    next_seq: u32,
    /// Largest body accepted.
    max_frame_bytes: u32,
    /// Answer deadline.
    answer_timeout: Duration,
    /// Pushes that arrived before the login answer, handled first by the session.
    early: VecDeque<ServerFrame>,
}

impl Conn {
    /// Connects (within the connect timeout) and logs in (within the answer timeout).
    pub(super) async fn open(cfg: &Config) -> Result<(Conn, codec::LoginAnswer), Error> {
        let addr = cfg.b.addr.clone();
        let connect_ms = cfg.b.connect_timeout.as_millis() as u64;
        let stream =
            match tokio::time::timeout(cfg.b.connect_timeout, TcpStream::connect(&addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return Err(Error::Connect {
                        addr,
                        msg: e.to_string(),
                    })
                }
                Err(_) => {
                    return Err(Error::ConnectTimeout {
                        addr,
                        after_ms: connect_ms,
                    })
                }
            };
        let _ = stream.set_nodelay(true);
        let mut conn = Conn {
            stream,
            rbuf: Vec::with_capacity(1024),
            next_seq: 1,
            max_frame_bytes: cfg.b.max_frame_bytes,
            answer_timeout: cfg.b.answer_timeout,
            early: VecDeque::new(),
        };
        let seq = conn.send("login", cfg.login_data()).await?;
        let deadline = Instant::now() + cfg.b.answer_timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, conn.read_wire_frame())
                .await
                .map_err(|_| Error::AnswerTimeout {
                    cmd: "login",
                    after_ms: cfg.b.answer_timeout.as_millis() as u64,
                })??;
            if frame.seq == 0 && frame.code == 0 {
                conn.early.push_back(frame);
                continue;
            }
            if frame.code != 0 {
                return Err(answer_error(&frame));
            }
            if frame.seq != seq {
                return Err(Error::Decode(codec::DecodeError::Field {
                    cmd: frame.cmd,
                    field: "seq",
                }));
            }
            let answer = codec::login_answer(&frame)?;
            return Ok((conn, answer));
        }
    }

    /// Writes one request (within the answer timeout); returns its `seq`.
    pub(super) async fn send(&mut self, cmd: &str, data: Value) -> Result<u32, Error> {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        let frame = codec::encode_request(cmd, seq, data);
        match tokio::time::timeout(self.answer_timeout, self.stream.write_all(&frame)).await {
            Ok(Ok(())) => Ok(seq),
            Ok(Err(e)) => Err(Error::ConnectionLost { msg: e.to_string() }),
            Err(_) => Err(Error::AnswerTimeout {
                cmd: "write",
                after_ms: self.answer_timeout.as_millis() as u64,
            }),
        }
    }

    /// The next frame: pushes kept during login first, then the socket. Cancel-safe.
    pub(super) async fn read_frame(&mut self) -> Result<ServerFrame, Error> {
        if let Some(f) = self.early.pop_front() {
            return Ok(f);
        }
        self.read_wire_frame().await
    }

    /// The next frame off the socket (not the kept pushes). Cancel-safe.
    async fn read_wire_frame(&mut self) -> Result<ServerFrame, Error> {
        loop {
            if let Some(frame) = codec::take_frame(&mut self.rbuf, self.max_frame_bytes)? {
                return Ok(frame);
            }
            self.rbuf.reserve(4096);
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) => {
                    return Err(Error::ConnectionLost {
                        msg: "closed by the server".into(),
                    })
                }
                Ok(_) => {}
                Err(e) => return Err(Error::ConnectionLost { msg: e.to_string() }),
            }
        }
    }
}

/// The typed error of an answer with a non-zero code.
pub(super) fn answer_error(frame: &ServerFrame) -> Error {
    let retry = frame.data.get("retry_after_secs").and_then(Value::as_u64);
    Error::from_code(frame.code, &frame.msg, retry)
}

/// Events for a login answer: `Resumed` when the place came back, then `Position` while
/// waiting (when admitted the `admitted` push follows instead).
pub(super) fn login_events(
    answer: &codec::LoginAnswer,
    tx: &mpsc::UnboundedSender<Result<Event, Error>>,
) {
    if answer.admitted {
        return;
    }
    let Standing {
        position,
        queue_len,
        eta_secs,
    } = answer.standing;
    if answer.resumed {
        let _ = tx.send(Ok(Event::Resumed { position }));
    }
    let _ = tx.send(Ok(Event::Position {
        position,
        queue_len,
        eta_secs,
    }));
}
