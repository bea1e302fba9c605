//! The cluster's families of `/metrics` (cluster mode only: on one node none of them
//! is registered, so the single-node page is unchanged).
//!
//! Invariants: registered last, after the process families, in this order:
//! `queue_cluster_members`, `queue_cluster_queues_owned`, `queue_cluster_fenced`,
//! `queue_cluster_etcd_errors_total`, `queue_cluster_forwarded_total` (no labels), then
//! the node link's families ([`LINK_COUNTERS`], then `queue_cluster_link_connected`),
//! labelled `peer` (the other node's id) and `side` (`edge`: this node's link to the
//! queue's owner; `owner`: a link from a node whose players wait here), one series per
//! peer link that ever connected (kept after it closed).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

pub use crate::cluster::link::stats::LinkFigures;

/// Labels of a link series: `peer`, `side`.
type LinkLabels = [(&'static str, String); 2];
/// Name, help and field of a link counter.
type LinkCounter = (&'static str, &'static str, fn(&LinkFigures) -> u64);

/// The link counter families, in registration order (exposed with `_total`).
pub const LINK_COUNTERS: [LinkCounter; 7] = [
    (
        "queue_cluster_link_frames_sent",
        "Node link frames written to the peer",
        |f| f.frames_sent,
    ),
    (
        "queue_cluster_link_frames_received",
        "Node link frames read from the peer",
        |f| f.frames_received,
    ),
    (
        "queue_cluster_link_bytes_sent",
        "Node link bytes written to the peer (frame headers included)",
        |f| f.bytes_sent,
    ),
    (
        "queue_cluster_link_bytes_received",
        "Node link bytes read from the peer (frame headers included)",
        |f| f.bytes_received,
    ),
    (
        "queue_cluster_link_messages_relayed",
        "Messages read from the peer and handed on (edge: to the io loops; owner: to the core)",
        |f| f.relayed,
    ),
    (
        "queue_cluster_link_reconnects",
        "Node link connections established after the first one to or from this peer",
        |f| f.reconnects,
    ),
    (
        "queue_cluster_link_resubmitted",
        "Waiting places re-submitted after a failover (edge: sent; owner: received)",
        |f| f.resubmitted,
    ),
];

/// The cluster's figures at scrape time (this node's view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterGauges {
    /// Live members as last listed from etcd.
    pub members: u64,
    /// Queues this node owns as last listed.
    pub queues_owned: u64,
    /// This node's lease deadline has passed: it admits for no queue.
    pub fenced: bool,
    /// etcd calls that failed or timed out since start.
    pub etcd_errors: u64,
    /// Control requests forwarded to their queue's owner since start.
    pub forwarded: u64,
    /// Every peer link's counters.
    pub links: Vec<LinkFigures>,
}

impl ClusterGauges {
    /// Registers the five node families, then the link families.
    pub fn register(&self, registry: &mut Registry) {
        let gauges = [
            (
                "queue_cluster_members",
                "Live cluster members as this node last listed them in etcd",
                self.members,
            ),
            (
                "queue_cluster_queues_owned",
                "Queues this node owns as last listed in etcd",
                self.queues_owned,
            ),
            (
                "queue_cluster_fenced",
                "1 while this node's lease deadline has passed: it admits for no queue",
                u64::from(self.fenced),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = Gauge::<u64, AtomicU64>::default();
            gauge.set(value);
            registry.register(name, help, gauge);
        }
        let counters = [
            (
                "queue_cluster_etcd_errors",
                "etcd calls that failed or timed out (lease, listing, used tokens)",
                self.etcd_errors,
            ),
            (
                "queue_cluster_forwarded",
                "Control requests forwarded to the owner of their queue",
                self.forwarded,
            ),
        ];
        for (name, help, value) in counters {
            let counter = Counter::<u64, AtomicU64>::default();
            counter.inc_by(value);
            registry.register(name, help, counter);
        }
        self.register_links(registry);
    }

    /// The node link's families (see the module doc).
    fn register_links(&self, registry: &mut Registry) {
        let labels = |f: &LinkFigures| -> LinkLabels {
            [("peer", f.peer.clone()), ("side", f.side.to_string())]
        };
        for (name, help, value) in LINK_COUNTERS {
            let family = Family::<LinkLabels, Counter>::default();
            for f in &self.links {
                family.get_or_create(&labels(f)).inc_by(value(f));
            }
            registry.register(name, help, family);
        }
        let family = Family::<LinkLabels, Gauge<u64, AtomicU64>>::default();
        for f in &self.links {
            family.get_or_create(&labels(f)).set(f.connected);
        }
        registry.register(
            "queue_cluster_link_connected",
            "1 while the node link with this peer is connected",
            family,
        );
    }
}
