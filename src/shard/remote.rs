//! A loop's routes to remote owners (cluster mode only): which core a login goes to,
//! and one ordered, bounded [`CoreLink`] per node link, as into the local core; and the
//! loop's place-ticket state (`tickets`: issuing a ticket in a `waiting` answer needs
//! the queue's name, which the core's answer does not carry).
//!
//! Invariants: the loop re-reads the shared [`RouteTable`] only when the router's
//! generation moved (steady state: one atomic load and up to three hash lookups per
//! login, remote, local, unowned; no lock; an allocation only for a long auto-created
//! name); `links[k]` exists for every link index of the table it holds,
//! so a session's `Leave`/`Disconnect` always finds the link its `Join` went over.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use super::core_link::{CoreLink, JOINS_BACKLOG_MAX};
use crate::cluster::routes::{RouteTable, Routes};
use crate::cluster::ticket::LoopTickets;
use crate::msg::CoreMsg;

/// One loop's view of the routes.
pub struct Remote {
    /// Published by the router.
    routes: Arc<Routes>,
    /// Generation of `table`.
    seen: Cell<u64>,
    /// The table in use.
    table: RefCell<Arc<RouteTable>>,
    /// One link per node link index.
    links: RefCell<Vec<CoreLink>>,
    /// Place tickets issued and checked on this loop (`cluster::ticket`).
    pub tickets: Option<LoopTickets>,
}

impl Remote {
    /// Routes read from `routes`.
    pub fn new(routes: Arc<Routes>) -> Remote {
        let remote = Remote {
            seen: Cell::new(u64::MAX),
            table: RefCell::new(Arc::default()),
            links: RefCell::new(Vec::new()),
            tickets: routes.ticket_key().cloned().map(LoopTickets::new),
            routes,
        };
        remote.refresh();
        remote
    }

    fn refresh(&self) {
        let generation = self.routes.generation();
        if generation == self.seen.get() {
            return;
        }
        let table = self.routes.table();
        let mut links = self.links.borrow_mut();
        for tx in &table.links[links.len().min(table.links.len())..] {
            links.push(CoreLink::new(tx.clone(), JOINS_BACKLOG_MAX));
        }
        *self.table.borrow_mut() = table;
        self.seen.set(generation);
    }

    /// The core a login to `queue` goes to: 0 = this node's, `k + 1` = link `k`,
    /// `routes::NO_OWNER` = none now (answered SHUTTING_DOWN, retry).
    pub fn source_of(&self, queue: &str) -> usize {
        self.refresh();
        self.routes.source_in(&self.table.borrow(), queue)
    }

    /// Sends over link `link` (no-op for an unknown link).
    pub fn send(&self, link: usize, msg: CoreMsg) {
        if let Some(l) = self.links.borrow().get(link) {
            l.send(msg);
        }
    }

    /// True when link `link` may take a `Join`.
    pub fn room_for_join(&self, link: usize) -> bool {
        self.links
            .borrow()
            .get(link)
            .is_some_and(|l| l.room_for_join())
    }

    /// Retries every link's backlog.
    pub fn retry(&self) {
        for l in self.links.borrow().iter() {
            l.retry();
        }
    }
}
