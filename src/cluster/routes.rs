//! Where an edge node's loops send a login: to this node's core, or over node link `k`
//! to the queue's owner. The router (`cluster::link::router`) publishes a new
//! [`RouteTable`] when ownership changes and bumps the generation; each io loop keeps
//! its own `Arc` of the table and re-reads it only when the generation moved, so a
//! login in steady state costs one atomic load and one hash lookup, no lock.
//!
//! Invariants: link indexes are append-only for the life of the process (a queue id
//! mapped into link `k`'s range, see `msg::remote_queue`, keeps meaning that link);
//! `links[k]` is the inbox of link `k`'s client, which acts as a core for its sessions.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;

use crate::msg::CoreMsg;

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
}

/// The shared, versioned routing.
#[derive(Debug, Default)]
pub struct Routes {
    /// Bumped on every publish.
    generation: AtomicU64,
    /// The current table.
    table: Mutex<Arc<RouteTable>>,
    /// Queues the router has seen owned by another node (never forgotten): taking one
    /// over is a failover, whose admission waits out the recovery window.
    elsewhere: Mutex<HashSet<String>>,
    /// The cluster's place-ticket key (set once at start; see `cluster::ticket`).
    ticket_key: std::sync::OnceLock<crate::cluster::ticket::TicketKey>,
}

impl Routes {
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

    /// Remembers that another node owned `queue`.
    pub fn saw_owned_elsewhere(&self, queue: &str) {
        let mut set = self.elsewhere.lock().unwrap_or_else(|e| e.into_inner());
        if !set.contains(queue) {
            set.insert(queue.to_string());
        }
    }

    /// True when another node owned `queue` at some point (per admission op, not per
    /// join: one short lock).
    pub fn was_owned_elsewhere(&self, queue: &str) -> bool {
        self.elsewhere
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(queue)
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
