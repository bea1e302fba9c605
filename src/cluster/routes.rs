//! Where an edge node's loops send a login: to this node's core, or over node link `k`
//! to the queue's owner. The router (`cluster::link::router`) publishes a new
//! [`RouteTable`] when ownership changes and bumps the generation; each io loop keeps
//! its own `Arc` of the table and re-reads it only when the generation moved, so a
//! login in steady state costs one atomic load and one hash lookup, no lock.
//!
//! A login whose queue the cluster knows but nobody reachable owns (the owner died and
//! nobody took the queue yet, or its owner is listed but is no live member with a link
//! address) is answered SHUTTING_DOWN with a retry hint ([`NO_OWNER`]): never queued in
//! this node's core, which would hold a place in a queue it does not own (fenced: never
//! admitted, and split from the real queue). With `queues.auto_create`, a queue name
//! the cluster has never seen is answered the same way while this node asks the router
//! to track it ([`Routes::want`]): some node then campaigns for it (the preferred one
//! within a tick, any after a TTL), and the next login goes to the owner.
//!
//! Invariants: link indexes are append-only for the life of the process (a queue id
//! mapped into link `k`'s range, see `msg::remote_queue`, keeps meaning that link);
//! `links[k]` is the inbox of link `k`'s client, which acts as a core for its sessions.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;

use crate::msg::{CoreMsg, QueueName};

/// The source [`Routes`] gives a login whose queue has no reachable owner now: it is
/// answered SHUTTING_DOWN with a retry hint, sent to no core.
pub const NO_OWNER: usize = usize::MAX;
/// Most queue names the loops may ask the router to track between two polls (more are
/// dropped: the clients retry).
pub const WANTED_MAX: usize = 256;

/// One published routing.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    /// Queue name -> link index, for queues owned by another node. Absent: this node's
    /// core (owned here, or no owner known).
    pub remote: HashMap<String, usize>,
    /// Each link's inbox, by link index.
    pub links: Vec<Sender<CoreMsg>>,
    /// Each link's node id, by link index.
    pub nodes: Vec<String>,
    /// Queues this node owns (its core).
    pub local: HashSet<String>,
    /// Queues the cluster knows with no reachable owner now: logins answer
    /// SHUTTING_DOWN with a retry hint ([`NO_OWNER`]).
    pub unowned: HashSet<String>,
}

impl RouteTable {
    /// The source of a login to `queue`: 0 = this node's core, `k + 1` = link `k`,
    /// [`NO_OWNER`]; `None` when the cluster does not know the queue.
    #[inline]
    pub fn source_of(&self, queue: &str) -> Option<usize> {
        if let Some(&k) = self.remote.get(queue) {
            return Some(k + 1);
        }
        if self.local.contains(queue) {
            return Some(0);
        }
        self.unowned.contains(queue).then_some(NO_OWNER)
    }
}

/// The shared, versioned routing.
#[derive(Debug)]
pub struct Routes {
    /// Bumped on every publish.
    generation: AtomicU64,
    /// The current table.
    table: Mutex<Arc<RouteTable>>,
    /// `queues.auto_create`: a login for a queue the cluster does not know asks the
    /// router to track it instead of going to this node's core.
    auto_create: AtomicBool,
    /// Queue names the loops asked the router to track (bounded, never blocks).
    wanted_tx: crossbeam_channel::Sender<QueueName>,
    /// The router's end.
    wanted_rx: crossbeam_channel::Receiver<QueueName>,
    /// The cluster's place-ticket key (set once at start; see `cluster::ticket`).
    ticket_key: std::sync::OnceLock<crate::cluster::ticket::TicketKey>,
}

impl Default for Routes {
    fn default() -> Routes {
        let (wanted_tx, wanted_rx) = crossbeam_channel::bounded(WANTED_MAX);
        Routes {
            generation: AtomicU64::default(),
            table: Mutex::default(),
            auto_create: AtomicBool::new(false),
            wanted_tx,
            wanted_rx,
            ticket_key: std::sync::OnceLock::new(),
        }
    }
}

impl Routes {
    /// Sets `queues.auto_create` (once, at start).
    pub fn set_auto_create(&self, on: bool) {
        self.auto_create.store(on, Ordering::Relaxed);
    }

    /// The source of a login to `queue` by `table` (see [`RouteTable::source_of`]); a
    /// queue the cluster does not know goes to this node's core (which answers
    /// `unknown queue`) unless queues are auto-created: then the router is asked to
    /// track it and the login is answered [`NO_OWNER`] (retry). No lock; no allocation
    /// but for an unseen name longer than `QueueName::INLINE_BYTES`.
    #[inline]
    pub fn source_in(&self, table: &RouteTable, queue: &str) -> usize {
        match table.source_of(queue) {
            Some(source) => source,
            None if self.auto_create.load(Ordering::Relaxed) && trackable(queue) => {
                let _ = self.wanted_tx.try_send(QueueName::from(queue));
                NO_OWNER
            }
            None => 0,
        }
    }

    /// The names the loops asked to track since the last call (router only).
    pub fn take_wanted(&self) -> impl Iterator<Item = QueueName> + '_ {
        self.wanted_rx.try_iter()
    }

    /// The generation of the current table (one atomic load).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current table.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the table (the generation is bumped after, so a reader that sees the
    /// new generation gets at least this table).
    pub fn publish(&self, table: RouteTable) {
        *self.table.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The routes of a node with `[cluster]` (`cluster` is `Some`; `None` on one
    /// node): empty, with the place-ticket key derived from `tokens.key` (the same on
    /// every node).
    pub fn for_cluster<T>(cluster: &Option<T>, tokens_key: &str) -> Option<Arc<Routes>> {
        cluster.as_ref()?;
        let routes = Routes::default();
        let key = crate::cluster::ticket::TicketKey::derive(tokens_key);
        let _ = routes.ticket_key.set(key);
        Some(Arc::new(routes))
    }

    /// The place-ticket key, once set.
    pub fn ticket_key(&self) -> Option<&crate::cluster::ticket::TicketKey> {
        self.ticket_key.get()
    }

    /// The owner node a login to `queue` is sent to now, when another node's.
    pub fn remote_owner(&self, queue: &str) -> Option<String> {
        let table = self.table();
        table.remote.get(queue).map(|&k| table.nodes[k].clone())
    }
}

/// A name an auto-created queue may have (as `config::valid_queue_name`, which this
/// module cannot import: `config` imports `cluster`): 1-64 of `[A-Za-z0-9_.-]`.
pub fn trackable(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}
