//! The node link's counters, per peer link and side, for `/metrics`
//! (`queue_cluster_link_*`, see `metrics::cluster`): the link threads bump plain
//! atomics ([`LinkStats`]); a scrape copies them ([`LinkRegistry::figures`]).
//!
//! Invariants:
//! - one [`LinkStats`] per (peer node id, side), created when a link to or from that
//!   peer first connects and kept for the life of the process (counters only grow; a
//!   reconnect reuses it): the registry's lock is taken per connection and per scrape,
//!   never per frame or message;
//! - per frame a link thread does a few `Relaxed` atomic adds: no lock, no allocation;
//! - at most [`PEERS_MAX`] entries: a peer id past that (or not a valid node id) is
//!   counted under [`OTHER_PEER`].

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Most (peer, side) entries kept.
pub const PEERS_MAX: usize = 1024;
/// The peer label of links past [`PEERS_MAX`] or with a peer that gave no valid id.
pub const OTHER_PEER: &str = "_other";

/// Which end of the link this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// This node's client to the queue's owner (its players wait there).
    Edge,
    /// This node owns the queue; the peer's players wait here.
    Owner,
}

impl Side {
    /// The `side` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Edge => "edge",
            Side::Owner => "owner",
        }
    }
}

/// One peer link's counters (see the module doc).
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Frames written.
    frames_sent: AtomicU64,
    /// Frames read.
    frames_received: AtomicU64,
    /// Bytes written (length prefixes included).
    bytes_sent: AtomicU64,
    /// Bytes read (length prefixes included).
    bytes_received: AtomicU64,
    /// Connections open now (0 or 1, briefly 2 while a reconnect overlaps the close).
    open: AtomicI64,
    /// Connections established since start.
    connections: AtomicU64,
    /// Messages received and handed on (edge: to the loops; owner: into the core).
    relayed: AtomicU64,
    /// Places re-submitted after a failover (edge: sent; owner: received).
    resubmitted: AtomicU64,
}

impl LinkStats {
    /// One frame of `bytes` written.
    #[inline]
    pub fn sent(&self, bytes: usize) {
        self.frames_sent.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// One frame of `bytes` read, carrying `messages`.
    #[inline]
    pub fn received(&self, bytes: usize, messages: u64) {
        self.frames_received.fetch_add(1, Ordering::Relaxed);
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.relayed.fetch_add(messages, Ordering::Relaxed);
    }

    /// `n` places re-submitted.
    pub fn resubmitted(&self, n: u64) {
        self.resubmitted.fetch_add(n, Ordering::Relaxed);
    }

    /// A connection opened.
    pub fn opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed (call once per [`LinkStats::opened`]).
    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One peer link's counters at scrape time (`metrics::cluster` renders it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkFigures {
    /// The other node's id.
    pub peer: String,
    /// `edge` or `owner`.
    pub side: &'static str,
    /// Frames written.
    pub frames_sent: u64,
    /// Frames read.
    pub frames_received: u64,
    /// Bytes written.
    pub bytes_sent: u64,
    /// Bytes read.
    pub bytes_received: u64,
    /// Connections open now (0 or 1).
    pub connected: u64,
    /// Connections established after the first.
    pub reconnects: u64,
    /// Messages received and handed on (edge: to the io loops; owner: to the core).
    pub relayed: u64,
    /// Places re-submitted after a failover (edge: sent; owner: received).
    pub resubmitted: u64,
}

/// Every peer link's counters (see the module doc).
#[derive(Debug, Default)]
pub struct LinkRegistry {
    /// (peer, side, counters), in creation order.
    links: Mutex<Vec<(String, Side, Arc<LinkStats>)>>,
}

impl LinkRegistry {
    /// The counters of the link with `peer` on `side` (created on first use).
    pub fn get(&self, peer: &str, side: Side) -> Arc<LinkStats> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let peer = if crate::cluster::routes::trackable(peer) && links.len() < PEERS_MAX {
            peer
        } else {
            OTHER_PEER
        };
        if let Some((_, _, s)) = links.iter().find(|(p, d, _)| p == peer && *d == side) {
            return s.clone();
        }
        let stats = Arc::new(LinkStats::default());
        links.push((peer.to_string(), side, stats.clone()));
        stats
    }

    /// A copy of every link's counters (per scrape).
    pub fn figures(&self) -> Vec<LinkFigures> {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        links
            .iter()
            .map(|(peer, side, s)| LinkFigures {
                peer: peer.clone(),
                side: side.as_str(),
                frames_sent: load(&s.frames_sent),
                frames_received: load(&s.frames_received),
                bytes_sent: load(&s.bytes_sent),
                bytes_received: load(&s.bytes_received),
                connected: s.open.load(Ordering::Relaxed).max(0) as u64,
                reconnects: load(&s.connections).saturating_sub(1),
                relayed: load(&s.relayed),
                resubmitted: load(&s.resubmitted),
            })
            .collect()
    }
}
