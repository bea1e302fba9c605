//! The cluster's families of `/metrics` (cluster mode only: on one node none of them
//! is registered, so the single-node page is unchanged).
//!
//! Invariants: registered last, after the process families, in this order:
//! `queue_cluster_members`, `queue_cluster_queues_owned`, `queue_cluster_fenced`,
//! `queue_cluster_etcd_errors_total`, `queue_cluster_forwarded_total`; no labels.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// The cluster's figures at scrape time (this node's view).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

impl ClusterGauges {
    /// Registers the five families.
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
    }
}
