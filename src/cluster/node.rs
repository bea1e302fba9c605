//! The cluster thread's state machine: one lease, its keep-alive, this node's
//! registration, the member and owner listings, and campaigns for unowned queues.
//! Runs on the cluster thread's tokio runtime only; shares results with other threads
//! through [`Shared`] (atomics for the admission check, a mutex for the listings).
//!
//! One step per tick (every TTL/3):
//! 1. no lease: grant one; else send one keep-alive and wait for its answer; on success the fence deadline
//!    becomes `sent + TTL - margin`; if etcd says the lease is gone, drop every
//!    ownership and start over with a new lease;
//! 2. register `{prefix}/nodes/{id}` on the lease if not done (or if it vanished),
//!    unless another live lease holds that node id, or a live member's config
//!    fingerprint differs from this node's (`membership::config_mismatch`);
//! 3. list members, owners and last owners; for each tracked queue: adopt the key if it
//!    is ours (on the current lease), forget it if it is anyone else's, and campaign when it has no owner and this node should try first (see
//!    `Node::should_campaign`), or nobody took it for one TTL.
//!
//! Invariants:
//! - at most one keep-alive is in flight, on a stream opened for it after any failure,
//!   so every answer belongs to the request whose send instant set the deadline;
//! - every etcd call has a deadline (TTL/3): a hung etcd cannot stall the tick forever;
//! - after the fence lapsed, ownership is re-read from etcd before admitting again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use etcd_client::{
    Client, Compare, CompareOp, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp,
    TxnOpResponse,
};

use super::config::ClusterConfig;
use super::error::{within, ClusterError};
use super::fence::{now_ms, Fence, QueueTable};
use super::listing::{self, Listed};
pub use super::listing::{Owner, View};
use super::membership::{config_mismatch, node_key, Member};
use super::ownership::{campaign_txn, is_takeover, preferred_owner, previous_last_owner};

/// State shared between the cluster thread and every other thread.
#[derive(Debug)]
pub struct Shared {
    /// This node's id.
    pub node_id: String,
    /// This process's incarnation: random, drawn once at start, never 0 (a restart of
    /// the same node id is another incarnation; see `link::hello`).
    pub incarnation: u64,
    /// The lease deadline.
    pub fence: Fence,
    /// Tracked queues and this node's ownership epochs.
    pub queues: QueueTable,
    /// Last listing (written once per tick).
    pub view: Mutex<View>,
    /// Test hook: the node stops all etcd traffic, as if frozen or cut off.
    pub frozen: AtomicBool,
    /// The current lease id (0 = none), for diagnostics and tests.
    pub lease_id: AtomicI64,
    /// True while registration is refused because another live lease holds the id.
    pub node_id_in_use: AtomicBool,
    /// etcd calls that failed or timed out (lease, registration, listing, used tokens),
    /// for `/metrics`.
    pub etcd_errors: AtomicU64,
    /// Admission watermarks of the queues (`cluster::watermark`).
    pub watermarks: super::watermark::Watermarks,
    /// Why this node's config does not match a live member's (None: it matches, or
    /// nothing to compare): registration is refused meanwhile; shown in `/v1/stats`.
    pub config_mismatch: Mutex<Option<String>>,
}

/// The cluster thread's view of its lease and campaigns.
pub struct Node {
    /// The etcd client (cheap to clone; one HTTP/2 channel).
    pub client: Client,
    /// Shared with the handle.
    shared: Arc<Shared>,
    /// `[cluster]`.
    config: ClusterConfig,
    /// This node's registration record.
    me: Member,
    /// The lease this node holds, if any.
    lease: Option<i64>,
    /// The keep-alive stream of `lease`, opened on demand.
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    /// True once the node key is on the current lease.
    registered: bool,
    /// `now_ms` when the node key was put on the current lease.
    registered_at_ms: u64,
    /// Queue -> `now_ms` when this node first saw it without an owner.
    unowned_since_ms: HashMap<String, u64>,
    /// Deadline of each etcd call, ms.
    op_ms: u64,
    /// Safety margin subtracted from every lease deadline, ms.
    margin_ms: u64,
}

impl Node {
    /// A node with no lease yet.
    pub fn new(client: Client, shared: Arc<Shared>, config: ClusterConfig, me: Member) -> Node {
        let ttl_ms = config.lease_ttl_ms();
        Node {
            client,
            shared,
            me,
            lease: None,
            keeper: None,
            registered: false,
            registered_at_ms: 0,
            unowned_since_ms: HashMap::new(),
            op_ms: tick_ms(&config),
            // TTL/5: covers a 20% rate difference between this clock and etcd's, plus the
            // time from an admission check to its effect.
            margin_ms: ttl_ms / 5,
            config,
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.me.node_id
    }

    /// One tick: lease, registration, listings and campaigns.
    pub async fn step(&mut self) {
        if self.shared.frozen.load(Ordering::Acquire) {
            return;
        }
        let renewed = match self.lease {
            None => self.start_lease().await,
            Some(lease) => self.keep_alive(lease).await,
        };
        if let Err(e) = renewed {
            self.shared.etcd_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node = %self.me.node_id, error = %e, "cluster: lease not renewed");
            return;
        }
        if !self.registered {
            match self.check_config().await {
                Ok(()) => {}
                // Logged once by `note_config_mismatch`; not an etcd error.
                Err(ClusterError::ConfigMismatch(_)) => return,
                Err(e) => {
                    self.shared.etcd_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(node = %self.me.node_id, error = %e, "cluster: listing failed");
                    return;
                }
            }
            if let Err(e) = self.register().await {
                self.shared.etcd_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = %self.me.node_id, error = %e, "cluster: register failed");
                return;
            }
        }
        if let Err(e) = self.reconcile().await {
            self.shared.etcd_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node = %self.me.node_id, error = %e, "cluster: listing failed");
        }
    }

    /// Grants a new lease. (A lease is never given up while etcd may still hold it:
    /// the node keeps renewing it until etcd says it is gone.)
    async fn start_lease(&mut self) -> Result<(), ClusterError> {
        let sent = now_ms();
        let ttl = self.config.lease_ttl_secs as i64;
        let granted = within(self.op_ms, self.client.lease_grant(ttl, None)).await?;
        self.shared
            .fence
            .set(self.deadline(sent, granted.ttl().max(0) as u64));
        self.lease = Some(granted.id());
        self.shared.lease_id.store(granted.id(), Ordering::Release);
        self.registered = false;
        self.keeper = None;
        tracing::info!(node = %self.me.node_id, lease = granted.id(), "cluster: lease granted");
        Ok(())
    }

    /// `sent + ttl - margin`, in `now_ms` milliseconds.
    fn deadline(&self, sent_ms: u64, ttl_secs: u64) -> u64 {
        (sent_ms + ttl_secs * 1000).saturating_sub(self.margin_ms)
    }

    /// One keep-alive round trip; moves the fence deadline or drops the lease.
    async fn keep_alive(&mut self, lease: i64) -> Result<(), ClusterError> {
        if self.keeper.is_none() {
            // Opening the stream sends a first keep-alive itself (etcd-client waits for its
            // answer and reports a dead lease as an error): that renewal only makes etcd's
            // expiry later than the deadline assumes, never earlier.
            let opened = within(self.op_ms, self.client.lease_keep_alive(lease)).await;
            match opened {
                Ok(opened) => self.keeper = Some(opened),
                Err(e) if is_lease_gone(&e) => {
                    self.lose_lease();
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        let Some((keeper, stream)) = self.keeper.as_mut() else {
            return Err(ClusterError::Stopped);
        };
        let sent = now_ms();
        let answer = within(self.op_ms, async {
            keeper.keep_alive().await?;
            stream.message().await
        })
        .await;
        match answer {
            Ok(Some(answer)) if answer.ttl() > 0 => {
                if !self.shared.fence.is_live() {
                    // The fence lapsed: ownership may have changed hands meanwhile (an
                    // operator's delete); reconcile re-reads it before any admission.
                    self.shared.queues.clear_all();
                }
                let deadline = self.deadline(sent, answer.ttl() as u64);
                self.shared.fence.set(deadline);
                Ok(())
            }
            Ok(Some(_)) => {
                self.lose_lease();
                Err(ClusterError::Etcd("lease expired in etcd".into()))
            }
            Ok(None) => {
                self.keeper = None;
                Err(ClusterError::Etcd("keep-alive stream closed".into()))
            }
            Err(e) => {
                // A late answer must never be matched with a later request: new stream.
                self.keeper = None;
                Err(e)
            }
        }
    }

    /// Stops admitting for every queue and forgets the lease.
    fn lose_lease(&mut self) {
        self.shared.fence.clear();
        self.shared.queues.clear_all();
        self.lease = None;
        self.shared.lease_id.store(0, Ordering::Release);
        self.keeper = None;
        self.registered = false;
        tracing::warn!(node = %self.me.node_id, "cluster: lease lost, every queue released");
    }

    /// The live members, sorted by id; this node counts only under its current lease
    /// (none yet: lease 0, which no record holds).
    async fn members(&mut self) -> Result<Vec<Member>, ClusterError> {
        let lease = self.lease.unwrap_or(0);
        listing::members(
            &mut self.client,
            self.op_ms,
            &self.config.prefix,
            &self.me.node_id,
            lease,
        )
        .await
    }

    /// Before registering: lists the members and refuses (the node stays out of the
    /// cluster, owns nothing, admits nothing) while a live member's config fingerprint
    /// differs from this node's. Registration happens at start and after a lost lease,
    /// so a node started while etcd was unreachable is checked here at the latest.
    async fn check_config(&mut self) -> Result<(), ClusterError> {
        let Some(mine) = self.me.config.clone() else {
            return Ok(());
        };
        let members = self.members().await?;
        let mismatch = config_mismatch(&mine, &self.me.node_id, &members);
        self.shared.note_config_mismatch(mismatch.clone());
        match mismatch {
            Some(text) => Err(ClusterError::ConfigMismatch(text)),
            None => Ok(()),
        }
    }

    /// Puts this node's record on its lease, unless another live lease holds this node
    /// id: a second process with the same `node_id` (a misconfiguration, or a restart
    /// after kill -9 within the TTL) waits until the first one's lease is gone, so it
    /// can never adopt or free the queues the first one may still admit for.
    async fn register(&mut self) -> Result<(), ClusterError> {
        let Some(lease) = self.lease else {
            return Err(ClusterError::Stopped);
        };
        let key = node_key(&self.config.prefix, &self.me.node_id);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                self.me.to_json(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let answer = within(self.op_ms, self.client.txn(txn)).await?;
        if !answer.succeeded() {
            let holder = answer.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.lease()),
                _ => None,
            });
            if holder != Some(lease) {
                self.shared.node_id_in_use.store(true, Ordering::Release);
                return Err(ClusterError::NodeIdInUse);
            }
        }
        self.shared.node_id_in_use.store(false, Ordering::Release);
        self.registered = true;
        self.registered_at_ms = now_ms();
        Ok(())
    }

    /// Lists members and owners, updates the view, adopts, drops and campaigns.
    async fn reconcile(&mut self) -> Result<(), ClusterError> {
        let mut members = self.members().await?;
        if !members.iter().any(|m| m.node_id == self.me.node_id) {
            self.registered = false; // deleted by hand, or a dead lease: put it again
            self.register().await?;
            members.push(self.me.clone());
            members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        }
        if let Some(mine) = &self.me.config {
            // Two nodes that both registered while unable to see each other (etcd
            // unreachable at start): neither is refused then, both show it here.
            let mismatch = config_mismatch(mine, &self.me.node_id, &members);
            self.shared.note_config_mismatch(mismatch);
        }
        let listed = listing::owners(&mut self.client, self.op_ms, &self.config.prefix).await?;
        let last_owners =
            listing::last_owners(&mut self.client, self.op_ms, &self.config.prefix).await?;
        {
            let mut view = self.shared.view.lock().unwrap_or_else(|e| e.into_inner());
            view.members = members.clone();
            view.owners = listed
                .iter()
                .map(|(q, l)| {
                    let owner = Owner {
                        node_id: l.node_id.clone(),
                        epoch: l.epoch,
                    };
                    (q.clone(), owner)
                })
                .collect();
        }
        for index in 0..self.shared.queues.len() {
            let name = self.shared.queues.name(index);
            let last = last_owners.get(name).cloned();
            self.judge(index, listed.get(name), last.as_deref(), &members)
                .await?;
        }
        Ok(())
    }

    /// Decides what to do about one tracked queue given its listed owner.
    async fn judge(
        &mut self,
        index: usize,
        listed: Option<&Listed>,
        last_owner: Option<&str>,
        members: &[Member],
    ) -> Result<(), ClusterError> {
        let queues = &self.shared.queues;
        let name = queues.name(index).to_string();
        let lease = self.lease.unwrap_or(0);
        match listed {
            Some(l) if l.node_id == self.me.node_id && l.lease == lease => {
                self.unowned_since_ms.remove(&name);
                let held = queues.ownership(index).map(|o| o.epoch);
                if held != Some(l.epoch) {
                    // Ours, but the campaign's answer was lost (or the fence lapsed).
                    queues.set_owned(index, l.epoch, now_ms(), None);
                }
            }
            Some(_) => {
                // Someone else's, or ours under another lease (an earlier incarnation of
                // this node id): never adopted, never deleted; it goes with its lease.
                self.unowned_since_ms.remove(&name);
                queues.clear(index);
            }
            None => {
                queues.clear(index);
                if self.should_campaign(&name, last_owner, members) {
                    self.campaign(index, &name, lease).await?;
                }
            }
        }
        Ok(())
    }

    /// Whether to campaign now for `queue`, which has no owner:
    /// - its last owner campaigns at once (it still holds the queue's places);
    /// - otherwise the preferred node (the last owner if it is live, else the rendezvous
    ///   choice) campaigns, but only once registered for a tick, so that after an etcd
    ///   outage every node, the last owner included, is listed again before anyone but
    ///   the last owner moves a queue;
    /// - anyone campaigns after the queue stayed unowned for one TTL (a preferred node
    ///   that does not track the queue, or views that disagree).
    fn should_campaign(
        &mut self,
        queue: &str,
        last_owner: Option<&str>,
        members: &[Member],
    ) -> bool {
        if !self.shared.fence.is_live() {
            return false;
        }
        let me = self.me.node_id.as_str();
        if last_owner == Some(me) {
            return true;
        }
        let now = now_ms();
        let since = *self
            .unowned_since_ms
            .entry(queue.to_string())
            .or_insert(now);
        if now.saturating_sub(since) >= self.config.lease_ttl_ms() {
            return true;
        }
        if now.saturating_sub(self.registered_at_ms) < self.op_ms {
            return false;
        }
        let live_last = last_owner.filter(|l| members.iter().any(|m| m.node_id == *l));
        let preferred = match live_last {
            Some(last) => Some(last),
            None => preferred_owner(queue, members.iter().map(|m| m.node_id.as_str())),
        };
        preferred == Some(me)
    }

    /// Put-if-absent of the owner key on this node's lease (and, in the same txn, this
    /// process as the queue's last owner, read before it is replaced: whether the win is
    /// a takeover, `ownership::is_takeover`).
    async fn campaign(
        &mut self,
        index: usize,
        queue: &str,
        lease: i64,
    ) -> Result<(), ClusterError> {
        let incarnation = self.shared.incarnation;
        let txn = campaign_txn(
            &self.config.prefix,
            queue,
            &self.me.node_id,
            incarnation,
            lease,
        );
        let sent = now_ms();
        let answer = within(self.op_ms, self.client.txn(txn)).await?;
        if answer.succeeded() {
            let epoch = answer.header().map_or(0, |h| h.revision()) as u64;
            let previous = previous_last_owner(answer);
            let takeover = is_takeover(previous.as_deref(), &self.me.node_id, incarnation);
            self.shared
                .queues
                .set_owned(index, epoch, sent, Some(takeover));
            // The view too, at once: else for up to a tick this node may admit while
            // its own view (stats, forwarding) says the queue has no owner.
            let owner = Owner {
                node_id: self.me.node_id.clone(),
                epoch,
            };
            let mut view = self.shared.view.lock().unwrap_or_else(|e| e.into_inner());
            view.owners.insert(queue.to_string(), owner);
            drop(view);
            self.unowned_since_ms.remove(queue);
            tracing::info!(node = %self.me.node_id, queue, epoch, takeover, "cluster: queue owned");
        }
        Ok(())
    }

    /// Clean stop: no more admission, then revoke the lease so the node and its queues
    /// are released at once instead of after the TTL.
    pub async fn shutdown(&mut self) {
        self.shared.fence.clear();
        self.shared.queues.clear_all();
        if let Some(lease) = self.lease.take() {
            if !self.shared.frozen.load(Ordering::Acquire) {
                let _ = within(self.op_ms, self.client.lease_revoke(lease)).await;
            }
        }
        self.shared.lease_id.store(0, Ordering::Release);
    }
}

/// True when etcd says the lease no longer exists (expired or revoked).
fn is_lease_gone(e: &ClusterError) -> bool {
    matches!(e, ClusterError::Etcd(message) if message.contains("lease not found"))
}

/// The tick and per-call deadline: a third of the lease TTL.
pub fn tick_ms(config: &ClusterConfig) -> u64 {
    config.lease_ttl_ms() / 3
}
