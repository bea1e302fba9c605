//! The core's delivery to the io loops: each event goes into the loop's bounded channel
//! with `try_send`, or behind it in that loop's FIFO backlog.
//!
//! Invariants (see the `core` module for the whole list):
//! - the core never blocks on a loop it has not rung: what does not fit waits in the
//!   backlog, and once a backlog is non-empty everything for that loop goes behind it,
//!   so order per loop is kept;
//! - a backlog holds at most [`BACKLOG_MAX`] events; past it the core waits for that
//!   loop, ringing it before every wait ([`BACKLOG_POLL`] each), so the wait ends while
//!   the loop runs;
//! - a loop that stopped (its receiver dropped) gets nothing more, and its backlog is
//!   dropped.

use std::collections::VecDeque;

use crossbeam_channel::{SendTimeoutError, Sender, TrySendError};

use super::{Core, LoopLink, BACKLOG_MAX, BACKLOG_POLL};
use crate::doorbell::Bell;
use crate::msg::{LoopEvent, LoopId, QueueId};
use crate::queue::state::Op;

impl Core {
    /// A node link connected as virtual loop `loop_id` (above the io loops): it gets
    /// rank batches, resync slices and its sessions' events like an io loop. Ids below
    /// it that no link took get a closed channel (nothing is ever sent to them).
    pub(super) fn attach_loop(&mut self, loop_id: LoopId, events: Sender<LoopEvent>, bell: Bell) {
        let id = loop_id as usize;
        while self.loops.len() <= id {
            let Ok(placeholder) = bell.try_clone() else {
                tracing::error!(loop_id, "virtual loop not attached: doorbell clone failed");
                return;
            };
            // A sender whose receiver is gone: `send` sees Disconnected, drops the event.
            let (tx, _) = crossbeam_channel::bounded(1);
            self.loops.push(LoopLink {
                tx,
                bell: placeholder,
            });
            self.rung.push(false);
            self.backlog.push(VecDeque::new());
        }
        self.loops[id] = LoopLink { tx: events, bell };
        self.rung[id] = false;
        self.backlog[id].clear();
        tracing::info!(loop_id, "node link attached as a virtual loop");
    }

    /// A node link closed: nothing more goes to virtual loop `loop_id`, and every place
    /// its sessions held goes into reconnect grace (one logged `Disconnect` each). A
    /// walk over every place: O(players), once per link loss, never per op. Io loops
    /// are never detached.
    pub(super) fn detach_loop(&mut self, loop_id: LoopId, now_ms: u64) {
        let id = loop_id as usize;
        if id >= self.loops.len() || self.degraded {
            return;
        }
        // A sender whose receiver is gone: later events for the loop are dropped.
        self.loops[id].tx = crossbeam_channel::bounded(1).0;
        self.backlog[id].clear();
        self.rung[id] = false;
        let mut held = Vec::new();
        for (q, queue) in self.state.queues().iter().enumerate() {
            for (_, user) in queue.walk_from(0) {
                let Some(user) = user else { continue };
                let conn = self.state.place(q as QueueId, user).and_then(|p| p.conn);
                if let Some(conn) = conn.filter(|c| c.loop_id == loop_id) {
                    held.push((q as QueueId, user, conn));
                }
            }
        }
        tracing::info!(
            loop_id,
            places = held.len(),
            "node link detached: its places are in grace"
        );
        for (queue, user, conn) in held {
            self.apply(&Op::Disconnect { queue, user, conn }, now_ms);
        }
    }

    /// True when some loop has events waiting for room in its channel.
    pub(super) fn backlogged(&self) -> bool {
        self.backlog.iter().any(|b| !b.is_empty())
    }

    /// Queues `event` for `loop_id`: into its channel if it has room and nothing is
    /// waiting before it, else at the back of its backlog. Never blocks, unless the
    /// backlog is over [`BACKLOG_MAX`] (then see [`Core::wait_for_loop`]).
    pub(super) fn send(&mut self, loop_id: usize, event: LoopEvent) {
        let Some(link) = self.loops.get(loop_id) else {
            return;
        };
        let backlog = &mut self.backlog[loop_id];
        if backlog.is_empty() {
            match link.tx.try_send(event) {
                Ok(()) => {
                    self.rung[loop_id] = true;
                    return;
                }
                // A loop that has stopped (shutdown) dropped its receiver: nothing to
                // deliver.
                Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(event)) => {
                    self.rung[loop_id] = true;
                    backlog.push_back(event);
                }
            }
        } else {
            backlog.push_back(event);
        }
        if backlog.len() > BACKLOG_MAX {
            self.wait_for_loop(loop_id);
        }
    }

    /// Moves what fits of every backlog into its channel, oldest first; a loop sent to
    /// or found full is rung at the end of the flush, so it wakes and makes room.
    pub(super) fn drain_backlogs(&mut self) {
        for (loop_id, backlog) in self.backlog.iter_mut().enumerate() {
            if backlog.is_empty() {
                continue;
            }
            let tx = &self.loops[loop_id].tx;
            while let Some(event) = backlog.pop_front() {
                match tx.try_send(event) {
                    Ok(()) => self.rung[loop_id] = true,
                    Err(TrySendError::Full(event)) => {
                        backlog.push_front(event);
                        self.rung[loop_id] = true;
                        break;
                    }
                    // The loop has stopped (shutdown): nothing to deliver, nobody to ring.
                    Err(TrySendError::Disconnected(_)) => {
                        backlog.clear();
                        break;
                    }
                }
            }
        }
    }

    /// The backlog of `loop_id` is over [`BACKLOG_MAX`]: waits until the loop has taken
    /// enough to bring it back to the bound. Rings the loop before every wait: a loop
    /// reads its channel to empty before it sleeps, so each wait ends while it runs.
    pub(super) fn wait_for_loop(&mut self, loop_id: usize) {
        let link = &self.loops[loop_id];
        let backlog = &mut self.backlog[loop_id];
        while backlog.len() > BACKLOG_MAX {
            let mut event = backlog.pop_front().expect("backlog over its bound");
            loop {
                match link.tx.try_send(event) {
                    Ok(()) => break,
                    Err(TrySendError::Disconnected(_)) => {
                        backlog.clear();
                        return;
                    }
                    Err(TrySendError::Full(e)) => event = e,
                }
                link.bell.ring();
                match link.tx.send_timeout(event, BACKLOG_POLL) {
                    Ok(()) => break,
                    Err(SendTimeoutError::Timeout(e)) => event = e,
                    Err(SendTimeoutError::Disconnected(_)) => {
                        backlog.clear();
                        return;
                    }
                }
            }
        }
        self.rung[loop_id] = true;
    }
}
