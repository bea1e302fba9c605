//! A session's request handling: one frame in, exactly one answer out (a `login` is
//! answered later, by the loop, when the core's answer arrives).

use std::time::Instant;

use super::{Phase, Session};
use crate::msg::CoreMsg;
use crate::protocol::{self, Cmd, Code, Request};
use crate::shard::Shard;

/// Wire name of a command, for echoing in answers.
fn cmd_name<'a>(cmd: &Cmd<'a>) -> &'a str {
    match cmd {
        Cmd::Login => "login",
        Cmd::Heartbeat => "heartbeat",
        Cmd::Position => "position",
        Cmd::Leave => "leave",
        Cmd::Unknown(name) => name,
    }
}

/// Answers with an error; closes when the code says so.
pub fn reply_error(shard: &Shard, session: &Session, cmd: &str, seq: u32, code: Code, msg: &str) {
    shard.stats().error(code);
    session.send(shard, 1, |out| {
        protocol::encode_error(out, cmd, seq, code, msg)
    });
    if code.closes() {
        session.close();
    }
}

/// Answers SHUTTING_DOWN with the loop's `retry_after_secs` and closes.
pub fn reply_shutting_down(shard: &Shard, session: &Session, cmd: &str, seq: u32) {
    let retry = shard.cfg.retry_after_secs;
    let (code, msg) = (Code::ShuttingDown, "server is shutting down");
    shard.stats().error(code);
    session.send(shard, 1, |out| {
        protocol::encode_error_retry(out, cmd, seq, code, msg, retry)
    });
    session.close();
}

/// The request being answered: where the answer goes and what it echoes.
struct Answer<'a> {
    /// The loop's shared pieces.
    shard: &'a Shard,
    /// The connection.
    session: &'a Session,
    /// Command name echoed.
    cmd: &'a str,
    /// Request `seq` echoed.
    seq: u32,
}

impl Answer<'_> {
    fn error(&self, code: Code, msg: &str) {
        reply_error(self.shard, self.session, self.cmd, self.seq, code, msg);
    }
}

/// Handles one whole frame body.
pub fn handle_frame(shard: &Shard, session: &Session, body: &[u8]) {
    shard.stats().frame_in(session.queue_id());
    session.frame_read(Instant::now());
    let req = match protocol::parse_request(body) {
        Ok(req) => req,
        Err(e) => {
            reply_error(shard, session, "", 0, Code::BadFrame, &e.to_string());
            return;
        }
    };
    let answer = Answer {
        shard,
        session,
        cmd: cmd_name(&req.cmd),
        seq: req.seq,
    };
    if req.ver != 1 {
        answer.error(Code::Unsupported, "unsupported protocol version");
        return;
    }
    let phase = session.phase();
    match (&req.cmd, phase) {
        (Cmd::Unknown(_), _) => answer.error(Code::Unsupported, "unknown cmd"),
        (Cmd::Login, Phase::Connected) => login(&answer, &req),
        (Cmd::Login, _) => answer.error(Code::AlreadyLoggedIn, "already logged in"),
        (_, Phase::Connected) => answer.error(Code::NotLoggedIn, "login first"),
        (Cmd::Heartbeat, _) => heartbeat(&answer, &req),
        (Cmd::Position, _) => session.send_position(shard, req.seq),
        (Cmd::Leave, _) => leave(&answer, phase),
    }
}

fn heartbeat(answer: &Answer<'_>, req: &Request<'_>) {
    match protocol::parse_heartbeat(req) {
        Ok(ts) => {
            let server_ms = crate::queue::core::unix_ms();
            answer.session.send(answer.shard, 1, |out| {
                protocol::encode_heartbeat_ok(out, req.seq, ts, server_ms)
            });
        }
        Err(e) => answer.error(Code::BadFrame, &e.to_string()),
    }
}

fn leave(answer: &Answer<'_>, phase: Phase) {
    let (shard, session) = (answer.shard, answer.session);
    // Also once admitted: the player gives the unused token up (it stops counting
    // against capacity, and cannot be used any more).
    if matches!(phase, Phase::Waiting | Phase::Admitted) {
        shard.send_core(CoreMsg::Leave {
            conn: shard.conn(session.id),
            queue: session.follow.queue(),
            user: session.user.get(),
        });
    }
    session.left.set(true);
    session.send(shard, 1, |out| protocol::encode_leave_ok(out, answer.seq));
    session.close();
}

fn login(answer: &Answer<'_>, req: &Request<'_>) {
    let (shard, session) = (answer.shard, answer.session);
    let data = match protocol::parse_login(req) {
        Ok(data) => data,
        Err(e) => return answer.error(Code::BadFrame, &e.to_string()),
    };
    if shard.draining() {
        return reply_shutting_down(shard, session, "login", req.seq);
    }
    // A full backlog into the core refuses logins like a spent budget (see
    // `shard::core_link`): the client retries later.
    let source = shard.join_source(&data.queue);
    if source == crate::cluster::routes::NO_OWNER {
        return reply_shutting_down(shard, session, "login", req.seq); // no owner yet: retry
    }
    if !shard.room_for_join(source) || !shard.logins.take(Instant::now()) {
        return answer.error(Code::RateLimited, "too many logins, retry later");
    }
    let ticket = match shard.tickets.verify(data.ticket.as_deref(), data.user_id) {
        Ok(ticket) => ticket,
        Err(e) => return answer.error(Code::AuthFailed, &e.to_string()),
    };
    let claim = match place_claim(shard, session, &data) {
        Ok(claim) => claim,
        Err(e) => return answer.error(Code::AuthFailed, &e),
    };
    session.begin_login(data.user_id);
    shard.send_to(
        source,
        CoreMsg::Join {
            conn: shard.conn(session.id),
            seq: req.seq,
            user: data.user_id,
            queue: data.queue.as_ref().into(),
            prio: ticket.prio,
            peer: session.peer,
            claim,
        },
    );
}

/// Cluster mode: checks the `place_ticket` a login presents (the key it claims, or the
/// refusal's text) and notes the login's queue so that its answer carries a fresh
/// ticket. One node: `Ok(None)`, the field ignored like any unknown one.
fn place_claim(
    shard: &Shard,
    session: &Session,
    data: &protocol::LoginData<'_>,
) -> Result<Option<crate::msg::PlaceKey>, String> {
    let Some(tickets) = shard.place_tickets() else {
        return Ok(None);
    };
    let claim = match data.place_ticket.as_deref() {
        None => None,
        Some(t) => Some(
            tickets
                .key
                .verify(t, data.user_id, &data.queue)
                .map_err(|e| format!("place ticket rejected: {e}"))?,
        ),
    };
    tickets.login_sent(session.id, &data.queue);
    Ok(claim)
}
