//! How a loop applies what the core sends it (join answers, admissions, kicks, rank
//! batches, resync slices) and its periodic work (timeouts, deferred pushes), over its
//! session table. The rank and push rules themselves are the shard's
//! [`Tracker`](crate::shard::Tracker); this file only walks the sessions and sends.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Loop, CLOSE_FLUSH};
use crate::msg::{
    queue_source, CoreMsg, JoinError, JoinOk, KickReason, LoopEvent, SessionId, UserId,
};
use crate::protocol::{self, Code};
use crate::session::frames::reply_shutting_down;
use crate::session::{reply_error, Phase, Session};
use crate::shard::tracker::{BatchStep, Follows, Push};

impl Loop {
    /// Applies one event; false on `Shutdown`.
    pub(super) fn handle_event(&self, event: LoopEvent) -> bool {
        match event {
            LoopEvent::Ranks(batch) => {
                match self.shard.tracker.on_batch(batch, self.table.live()) {
                    BatchStep::Nothing | BatchStep::Queued => {}
                    BatchStep::Wait => self.ranks_wake.notify(),
                    BatchStep::ApplyNow => self.apply_ranks(),
                }
            }
            LoopEvent::Resync(list) => self.resync(list),
            LoopEvent::Joined {
                session,
                seq,
                user,
                result,
            } => self.joined(session, seq, user, result),
            LoopEvent::Admitted {
                session,
                token,
                expires_at,
            } => {
                if let Some(s) = self.table.get(session) {
                    if s.admit() {
                        self.send_admitted(&s, &token, expires_at);
                    }
                }
            }
            LoopEvent::Kick { session, reason } => {
                if let Some(s) = self.table.get(session) {
                    s.place_taken();
                    s.kick(&self.shard, reason, None);
                }
            }
            LoopEvent::Shutdown => return false,
            LoopEvent::LinkLost { link } => self.link_lost(link),
        }
        true
    }

    /// Node link `link` broke: its sessions are kicked `shutdown` with a retry hint;
    /// the owner holds their places in grace, so logging in again resumes them.
    fn link_lost(&self, link: usize) {
        let shard = &self.shard;
        let retry = shard.cfg.retry_after_secs;
        self.table.for_each(|s| {
            if s.queue_id().is_some_and(|q| queue_source(q) == link + 1) && !s.closing() {
                s.place_taken();
                s.kick(shard, KickReason::Shutdown, Some(retry));
            }
        });
    }

    /// Overwrites positions with a resync slice's exact ones (as of after every batch
    /// received before it, pending ones included: see `Tracker::resync`).
    fn resync(&self, list: Vec<(SessionId, u64)>) {
        let now = Instant::now();
        for (id, position) in list {
            let Some(s) = self.table.get(id) else {
                continue;
            };
            if s.phase() != Phase::Waiting {
                continue;
            }
            let f = s.follow();
            if f.position() != position {
                tracing::debug!(
                    session = id,
                    was = f.position(),
                    position,
                    "position resynced"
                );
            }
            let push = self.shard.tracker.resync(id, f, position, now);
            self.pushed(&s, push);
        }
    }

    /// Applies every pending rank batch in one pass over the sessions.
    pub(super) fn apply_ranks(&self) {
        let tracker = &self.shard.tracker;
        let Some(pass) = tracker.begin_pass() else {
            return;
        };
        let now = Instant::now();
        self.table.for_each(|s| {
            let push = tracker.apply(&pass, s.id(), s, now);
            self.pushed(s, push);
        });
        tracker.end_pass(pass);
    }

    /// Acts on the tracker's push decision for `s`.
    fn pushed(&self, s: &Session, push: Push) {
        match push {
            Push::None => {}
            Push::Now => self.push_position(s),
            Push::Deferred => self.push_wake.notify(),
        }
    }

    /// Sends a `position` push (the throttle's clock is set already).
    fn push_position(&self, s: &Session) {
        self.shard.stats().pushed(s.queue_id());
        s.send_position(&self.shard, 0);
    }

    fn send_admitted(&self, s: &Session, token: &str, expires_at: u64) {
        let shard = &self.shard;
        shard.stats().pushed(s.queue_id());
        let addr = shard.cfg.login_addr.as_deref();
        s.send(shard, 1, |out| {
            protocol::encode_admitted(out, token, expires_at, addr)
        });
    }

    /// The core answered a `login`.
    fn joined(&self, id: SessionId, seq: u32, user: UserId, result: Result<JoinOk, JoinError>) {
        // Cluster mode: a waiting place gets its ticket (`cluster::ticket`).
        let ticket = self.shard.place_tickets().and_then(|t| match &result {
            Ok(ok) if ok.admitted.is_none() => t.answered(id, user, ok.key),
            _ => {
                t.forget(id);
                None
            }
        });
        let Some(s) = self
            .table
            .get(id)
            .filter(|s| s.phase() == Phase::LoginPending)
        else {
            // The connection closed while its login was with the core.
            if let Ok(ok) = result {
                if ok.admitted.is_none() {
                    self.shard.send_core(CoreMsg::Disconnect {
                        conn: self.shard.conn(id),
                        queue: ok.queue,
                        user,
                        report: crate::msg::SessionReport::default(),
                    });
                }
            }
            return;
        };
        match result {
            Ok(ok) => self.login_ok(&s, seq, ok, ticket.as_deref()),
            Err(e) => self.login_failed(&s, seq, e),
        }
        s.login_done();
        // The reader reads nothing while the login is with the core, so `last_frame`
        // is still the time the `login` frame was read.
        self.shard
            .stats()
            .login_answer
            .observe(s.since_last_frame(Instant::now()));
    }

    fn login_ok(&self, s: &Session, seq: u32, ok: JoinOk, place_ticket: Option<&str>) {
        let shard = &self.shard;
        shard.stats().logged_in(ok.queue);
        s.logged_in(ok.queue);
        shard
            .tracker
            .set_queue_view(ok.queue, ok.queue_len, ok.rate_per_s);
        let eta = crate::msg::eta_secs(ok.position, ok.rate_per_s);
        let admitted = ok.admitted.is_some();
        let answer = protocol::LoginAnswer {
            admitted,
            position: ok.position,
            queue_len: ok.queue_len,
            eta_secs: eta,
            resumed: ok.resumed,
            place_ticket,
        };
        s.send(shard, 1, |out| protocol::encode_login_ok(out, seq, &answer));
        if let Some((token, expires_at)) = ok.admitted {
            s.admitted_at_login();
            self.send_admitted(s, &token, expires_at);
        } else {
            // Batches received so far are older than this position.
            s.wait_in_queue(shard, ok.key, ok.position, Instant::now());
        }
    }

    fn login_failed(&self, s: &Session, seq: u32, e: JoinError) {
        let (code, msg) = match e {
            JoinError::QueueFull => (Code::QueueFull, "queue is full"),
            JoinError::UnknownQueue => (Code::UnknownQueue, "no such queue"),
            JoinError::ShuttingDown => (Code::ShuttingDown, "server is shutting down"),
            JoinError::Gone => (Code::Internal, "place lost, log in again"),
        };
        s.login_refused();
        if code == Code::ShuttingDown {
            reply_shutting_down(&self.shard, s, "login", seq);
        } else {
            reply_error(&self.shard, s, "login", seq, code, msg);
        }
    }

    /// Drops a closed session from the table, telling the core its place is in grace.
    pub(super) fn release(&self, session: &Session) {
        if let Some((queue, user, report)) = session.place_to_release() {
            self.shard.send_core(CoreMsg::Disconnect {
                conn: self.shard.conn(session.id()),
                queue,
                user,
                report,
            });
        }
        self.forget(session);
    }

    /// Drops a session from the table without telling the core.
    pub(super) fn forget(&self, session: &Session) {
        if let Some(tickets) = self.shard.place_tickets() {
            tickets.forget(session.id());
        }
        if self.table.remove(session) {
            self.shard
                .stats()
                .connections
                .fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Retries the core backlog, kicks idle sessions and closes those that never
    /// logged in.
    pub(super) fn sweep(&self) {
        let shard = &self.shard;
        shard.retry();
        let now = Instant::now();
        self.table.for_each(|s| match s.phase() {
            Phase::Connected if s.connected_for(now) >= shard.cfg.login_timeout => {
                s.close();
            }
            Phase::Waiting | Phase::Admitted
                if s.since_last_frame(now) >= shard.cfg.idle_timeout =>
            {
                s.kick(shard, KickReason::IdleTimeout, None);
            }
            Phase::Closing if s.flush_overdue(now, CLOSE_FLUSH) => s.abort(),
            _ => {}
        });
    }

    /// Sends deferred pushes that are due; returns the earliest next due time.
    pub(super) fn flush_pushes(&self) -> Option<Instant> {
        let now = Instant::now();
        self.shard
            .tracker
            .flush_due(now, |id| self.table.get(id), |s| self.push_position(s))
    }
}
