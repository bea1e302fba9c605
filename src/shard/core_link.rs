//! A loop's link into the queue core: `try_send` and an ordered backlog for what the
//! core's inbox has no room for.
//!
//! Invariants:
//! - the loop never blocks on the core: what does not fit waits in the backlog, oldest
//!   first, and once the backlog is non-empty every newer message goes behind it (the
//!   core sees each loop's messages in order); the backlog is retried before any newer
//!   message and on each sweep;
//! - bound: the backlog takes a `Join` only while it holds fewer than `joins_max`
//!   messages ([`CoreLink::room_for_join`]; the login is refused RATE_LIMITED
//!   otherwise). Every other message (`Leave`, `Disconnect`) follows a join the core
//!   already took, at most one per join, so the backlog holds at most `joins_max` plus
//!   the places this loop's sessions held: memory stays bounded even when the core
//!   stalls under a login flood, as the core's own backlog is ([`BACKLOG_MAX`]).
//!
//! [`BACKLOG_MAX`]: crate::queue::core::BACKLOG_MAX

use std::cell::RefCell;
use std::collections::VecDeque;

use crossbeam_channel::{Sender, TrySendError};

use crate::msg::CoreMsg;

/// Most messages in a loop's backlog for a `Join` to be queued (the core's
/// `BACKLOG_MAX` of events the other way): some 100 bytes a message, ~10 MB.
pub const JOINS_BACKLOG_MAX: usize = 100_000;

/// The link (see the module invariants).
pub struct CoreLink {
    /// Into the core (bounded).
    tx: Sender<CoreMsg>,
    /// Messages the core inbox had no room for, oldest first.
    backlog: RefCell<VecDeque<CoreMsg>>,
    /// Backlog length from which joins are refused.
    joins_max: usize,
}

impl CoreLink {
    /// A link over `tx` that queues joins only below `joins_max` backlogged messages.
    pub fn new(tx: Sender<CoreMsg>, joins_max: usize) -> CoreLink {
        CoreLink {
            tx,
            backlog: RefCell::new(VecDeque::new()),
            joins_max,
        }
    }

    /// Sends to the core without blocking; keeps order through the backlog.
    pub fn send(&self, msg: CoreMsg) {
        let mut backlog = self.backlog.borrow_mut();
        if backlog.is_empty() {
            match self.tx.try_send(msg) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(msg)) => backlog.push_back(msg),
            }
        } else {
            backlog.push_back(msg);
        }
    }

    /// True when a `Join` may be sent (the backlog is under its bound).
    pub fn room_for_join(&self) -> bool {
        self.backlog.borrow().len() < self.joins_max
    }

    /// Moves what the core's inbox now has room for out of the backlog, in order.
    pub fn retry(&self) {
        let mut backlog = self.backlog.borrow_mut();
        while let Some(msg) = backlog.pop_front() {
            match self.tx.try_send(msg) {
                Ok(()) => {}
                Err(TrySendError::Full(msg)) => {
                    backlog.push_front(msg);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => backlog.clear(),
            }
        }
    }

    /// Messages waiting in the backlog.
    pub fn backlog_len(&self) -> usize {
        self.backlog.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{ConnRef, SessionReport};

    fn disconnect(user: u64) -> CoreMsg {
        CoreMsg::Disconnect {
            conn: ConnRef {
                loop_id: 0,
                session: user,
            },
            queue: 0,
            user,
            report: SessionReport::default(),
        }
    }

    fn user_of(msg: CoreMsg) -> u64 {
        match msg {
            CoreMsg::Disconnect { user, .. } => user,
            _ => panic!("not a disconnect"),
        }
    }

    #[test]
    fn what_does_not_fit_waits_in_order_and_joins_stop_at_the_bound() {
        let (tx, rx) = crossbeam_channel::bounded(2);
        let link = CoreLink::new(tx, 3);
        for user in 0..5 {
            link.send(disconnect(user));
        }
        assert_eq!(link.backlog_len(), 3);
        assert!(!link.room_for_join(), "3 backlogged of at most 3");
        // Room in the inbox: the backlog goes first, newer messages behind it.
        assert_eq!(user_of(rx.try_recv().expect("msg")), 0);
        link.send(disconnect(5));
        assert_eq!(link.backlog_len(), 4);
        link.retry();
        assert_eq!(link.backlog_len(), 3);
        assert!(!link.room_for_join());
        let mut seen = vec![user_of(rx.try_recv().expect("msg"))];
        while link.backlog_len() > 0 {
            link.retry();
            seen.extend(rx.try_iter().map(user_of));
        }
        seen.extend(rx.try_iter().map(user_of));
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
        assert!(link.room_for_join());
    }
}
