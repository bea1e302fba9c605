//! Starting and stopping a node's cluster pieces together: the cluster layer
//! ([`Cluster::start`]), the link acceptor on `cluster.advertise_link` (links become
//! virtual loops of this node's core, ids from the io loop count up) and the router
//! (link clients to remote owners, routes read by the io loops).
//!
//! Invariant: the acceptor is bound and the cluster thread up before `start` returns;
//! `stop` ends the router and link clients before the cluster handle can be dropped.

use std::net::{TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use super::edge::LoopOut;
use super::owner::LinkAcceptor;
use super::router::Router;
use super::stats::LinkRegistry;
use crate::cluster::routes::Routes;
use crate::cluster::{Cluster, ClusterConfig, ClusterHandle};
use crate::msg::{CoreMsg, LoopId};

/// What a node's cluster pieces are started with.
pub struct LinkParts<'a> {
    /// `[cluster]`.
    pub config: &'a ClusterConfig,
    /// The queues this node tracks (the configured list).
    pub queues: &'a [&'a str],
    /// The routes the io loops read.
    pub routes: Arc<Routes>,
    /// This node's core inbox.
    pub core: Sender<CoreMsg>,
    /// Number of io loops (the first virtual loop id).
    pub loops: usize,
    /// Every io loop's event channel and doorbell.
    pub loop_outs: Vec<LoopOut>,
    /// Capacity of a virtual loop's event channel (as an io loop's).
    pub loop_channel_capacity: usize,
    /// Capacity of a link client's inbox (as the core's).
    pub inbox_capacity: usize,
    /// `queues.auto_create` (see `routes`: a login for an unseen name).
    pub auto_create: bool,
}

/// The running cluster pieces of a node.
pub struct NodeLink {
    /// The cluster layer (shared with whoever needs it: control API, ...).
    pub cluster: Arc<ClusterHandle>,
    /// The link acceptor.
    acceptor: LinkAcceptor,
    /// Stops the router and the link clients.
    stop: Arc<AtomicBool>,
    /// The router thread.
    router: Option<JoinHandle<()>>,
    /// The routes the io loops read.
    routes: Arc<Routes>,
    /// `cluster.recovery_window_secs` in ms.
    recovery_window_ms: u64,
    /// Every peer link's counters (both sides), for `/metrics`.
    link_stats: Arc<LinkRegistry>,
}

/// Why the cluster pieces did not start.
#[derive(Debug)]
pub enum LinkStartError {
    /// The cluster layer did not start.
    Cluster(String),
    /// `advertise_link` could not be bound.
    Bind(String, std::io::Error),
    /// A thread could not be started.
    Io(std::io::Error),
}

impl std::fmt::Display for LinkStartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkStartError::Cluster(e) => write!(f, "cluster: {e}"),
            LinkStartError::Bind(addr, e) => {
                write!(f, "cannot bind cluster.advertise_link {addr}: {e}")
            }
            LinkStartError::Io(e) => write!(f, "cluster: {e}"),
        }
    }
}

impl std::error::Error for LinkStartError {}

impl NodeLink {
    /// Starts the cluster layer, binds and starts the link acceptor, starts the router.
    pub fn start(p: LinkParts<'_>) -> Result<NodeLink, LinkStartError> {
        let addr = &p.config.advertise_link;
        let listener = addr
            .to_socket_addrs()
            .and_then(|mut a| a.next().ok_or_else(|| std::io::Error::other("no address")))
            .and_then(TcpListener::bind)
            .map_err(|e| LinkStartError::Bind(addr.clone(), e))?;
        let first = LoopId::try_from(p.loops).map_err(|_| {
            LinkStartError::Io(std::io::Error::other("too many io loops for node links"))
        })?;
        let link_stats = Arc::new(LinkRegistry::default());
        let cluster = Cluster::start(p.config, p.queues)
            .map_err(|e| LinkStartError::Cluster(e.to_string()))?;
        let cluster = Arc::new(cluster);
        // Edges are told this process's incarnation (`hello`): the cluster's.
        let acceptor = LinkAcceptor::start(
            listener,
            p.core,
            (first, cluster.incarnation()),
            p.loop_channel_capacity,
            link_stats.clone(),
        )
        .map_err(LinkStartError::Io)?;
        p.routes.set_auto_create(p.auto_create);
        // Until the router's first listing, every configured queue is ownerless: a
        // login is answered SHUTTING_DOWN (retry), never queued in a core that may not
        // own its queue.
        p.routes.publish(crate::cluster::routes::RouteTable {
            unowned: p.queues.iter().map(|q| q.to_string()).collect(),
            ..Default::default()
        });
        let stop = Arc::new(AtomicBool::new(false));
        let router = Router {
            queues: p.queues.iter().map(|q| q.to_string()).collect(),
            link_stats: link_stats.clone(),
            cluster: cluster.clone(),
            routes: p.routes.clone(),
            loops: Arc::new(p.loop_outs),
            inbox_capacity: p.inbox_capacity,
            stop: stop.clone(),
            // The owner's lease runs out, a node takes the queue within a tick or a TTL
            // more: the places wait that long, plus a margin, for the new owner.
            orphan_max: std::time::Duration::from_secs(
                p.config.lease_ttl_secs.saturating_mul(3).saturating_add(5),
            ),
        }
        .spawn()
        .map_err(LinkStartError::Io)?;
        Ok(NodeLink {
            cluster,
            acceptor,
            stop,
            router: Some(router),
            routes: p.routes,
            link_stats,
            recovery_window_ms: p.config.recovery_window_secs.saturating_mul(1000),
        })
    }

    /// The routes the io loops read.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.clone()
    }

    /// Every peer link's counters (both sides), for `/metrics`.
    pub fn link_stats(&self) -> Arc<LinkRegistry> {
        self.link_stats.clone()
    }

    /// `cluster.recovery_window_secs` in ms.
    pub fn recovery_window_ms(&self) -> u64 {
        self.recovery_window_ms
    }

    /// Test hook: closes every node link accepted here (a network cut); edges reconnect.
    #[doc(hidden)]
    pub fn close_links_for_test(&self) {
        self.acceptor.close_links();
    }

    /// Test hook: what `kill -9` does to the cluster side of a node, in process: no
    /// keep-alive, listing or revoke any more (the lease runs out), the link port
    /// closed (every link breaks, dials are refused), the router and link clients
    /// stopped. The core and io loops stay up but can never admit again.
    #[doc(hidden)]
    pub fn kill_for_test(&mut self) {
        self.cluster.freeze_for_test();
        self.stop();
    }

    /// Stops the router, the link clients and the acceptor (every link closes).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(router) = self.router.take() {
            let _ = router.join();
        }
        self.acceptor.stop();
    }
}

impl Drop for NodeLink {
    fn drop(&mut self) {
        self.stop();
    }
}
