//! Cluster coordination on etcd: membership, queue ownership, fencing and used tokens.
//!
//! Everything async (the `etcd-client` crate, on tokio) runs on one thread owned by this
//! module, on its own current-thread runtime, never in an io loop. Other threads see a
//! [`ClusterHandle`]: cheap, synchronous, and for the admission check lock-free.
//!
//! Keys (all under `prefix`, default `/queue-server`):
//! - `{prefix}/nodes/{node_id}` = JSON [`Member`], on the node's lease ([`membership`]);
//! - `{prefix}/owners/{queue}` = owner node id, on the owner's lease, created by
//!   put-if-absent; its create_revision is the ownership epoch ([`ownership`]);
//! - `{prefix}/last_owner/{queue}` = `"<node_id> <incarnation>"` of the latest owner,
//!   no lease, written (and the previous value read) by the winning campaign's
//!   transaction: a win over any other process is a takeover, held for the recovery
//!   window ([`ownership`]);
//! - `{prefix}/used/{jti}` = node id that consumed the token, on a per-expiry-bucket
//!   lease ([`used_tokens`]);
//! - `{prefix}/admitted/{queue}` = `"<normal>,<priority>"`, the highest place keys its
//!   owners admitted, no lease ([`watermark`]: a new owner honors no place ticket of a
//!   place that may have been admitted).
//!
//! Why two owners never admit at once ([`fence`]): a node admits for a queue only while
//! it holds the owner key and `now < sent + TTL - margin`, `sent` being when its last
//! successful keep-alive was sent. etcd counts the TTL from when it received that
//! keep-alive (later than `sent`), deletes the key only when the lease expires or is
//! revoked, and only then can another node's put-if-absent succeed. So the old owner's
//! deadline passes before the new owner's campaign is even sent, as long as the two
//! clocks' rates differ by less than m / (2T - m) (about 11 % with the margin T/5; see
//! docs/cluster.md).
//!
//! Used by the control port (`control::cluster`, `control::forward`): requests about a
//! queue another node owns are forwarded to it, tokens are consumed here. The data path:
//! [`link`] (node link: remote nodes are virtual loops of the owner's core; routes in
//! [`routes`]), started by the server with `[cluster]`; the core admits only while
//! [`ClusterHandle::may_admit`] (`queue::core::fence`). Failover of places: surviving
//! edges re-submit theirs (`link::edge`); the dead node's own players come back with a
//! place ticket ([`ticket`], honored by `queue::core::claim` above the [`watermark`]).
//! One keyed hash, HMAC-SHA256 ([`mac`]), signs tickets and hashes the secrets of the
//! config fingerprint ([`membership`]).
//!
//! Invariants: without `[cluster]` nothing here runs; [`ClusterHandle::stop`] (or drop)
//! revokes the lease so a clean stop frees the node's queues at once; every etcd call
//! has a deadline.

pub mod config;
pub mod error;
pub mod fence;
pub mod link;
pub mod listing;
pub mod mac;
pub mod membership;
pub mod node;
pub mod ownership;
pub mod routes;
pub mod ticket;
pub mod used_tokens;
pub mod watermark;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, ConnectOptions};
use tokio::sync::{mpsc, oneshot};

pub use config::{ClusterConfig, ClusterConfigError};
pub use error::ClusterError;
pub use fence::{now_ms, Ownership};
pub use membership::{Fingerprint, Member};
pub use node::Owner;

use error::TOKEN_OP_MS;
use fence::{Fence, QueueTable};
use node::{Node, Shared, View};
use used_tokens::BucketLeases;

/// Longest wait at start for the member listing that the config check reads, ms.
const START_CHECK_MS: u64 = 2000;

/// Pending used-token checks before `consume` answers `Busy`.
const COMMANDS_MAX: usize = 1024;

/// A request to the cluster thread.
enum Command {
    /// Mark a token used; answer whether this was the first time.
    Consume {
        /// The token's id.
        jti: String,
        /// The token's `exp`, Unix seconds.
        expires_at_unix_secs: u64,
        /// Where the answer goes.
        reply: crossbeam_channel::Sender<Result<bool, ClusterError>>,
    },
}

/// Starts the cluster layer.
pub struct Cluster;

impl Cluster {
    /// Starts the cluster thread for `config`, tracking `queues`; returns once the etcd
    /// client is built (etcd itself may still be unreachable: the node keeps trying, and
    /// admits nothing until it holds a lease and owns a queue).
    pub fn start(config: &ClusterConfig, queues: &[&str]) -> Result<ClusterHandle, ClusterError> {
        config
            .validate()
            .map_err(|e| ClusterError::Start(e.to_string()))?;
        let shared = Arc::new(Shared {
            node_id: config.node_id.clone(),
            incarnation: rand::random::<u64>().max(1),
            fence: Fence::default(),
            queues: QueueTable::default(),
            view: Mutex::new(View::default()),
            frozen: AtomicBool::new(false),
            lease_id: AtomicI64::new(0),
            node_id_in_use: AtomicBool::new(false),
            etcd_errors: AtomicU64::new(0),
            watermarks: watermark::Watermarks::default(),
            config_mismatch: Mutex::new(None),
        });
        for q in queues {
            if !shared.queues.add(q) {
                return Err(ClusterError::QueueTableFull);
            }
        }
        let (commands, command_rx) = mpsc::channel(COMMANDS_MAX);
        let (stop, stop_rx) = oneshot::channel();
        let (ready, ready_rx) = crossbeam_channel::bounded(1);
        let thread_shared = shared.clone();
        let thread_config = config.clone();
        let thread = std::thread::Builder::new()
            .name(format!("cluster-{}", config.node_id))
            .spawn(move || run(thread_shared, thread_config, command_rx, stop_rx, ready))
            .map_err(|e| ClusterError::Start(e.to_string()))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => return Err(ClusterError::Start("cluster thread exited".into())),
        }
        Ok(ClusterHandle {
            shared,
            commands,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// The body of the cluster thread.
fn run(
    shared: Arc<Shared>,
    config: ClusterConfig,
    mut commands: mpsc::Receiver<Command>,
    mut stop: oneshot::Receiver<()>,
    ready: crossbeam_channel::Sender<Result<(), ClusterError>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(ClusterError::Start(e.to_string())));
            return;
        }
    };
    runtime.block_on(async move {
        let tick = Duration::from_millis(node::tick_ms(&config));
        // HTTP/2 pings find a dead etcd connection within about two ticks.
        let options = ConnectOptions::new()
            .with_connect_timeout(tick)
            .with_keep_alive(tick, tick)
            .with_keep_alive_while_idle(true);
        let client = match Client::connect(&config.etcd, Some(options)).await {
            Ok(client) => client,
            Err(e) => {
                let _ = ready.send(Err(ClusterError::Start(e.to_string())));
                return;
            }
        };
        let me = Member {
            node_id: config.node_id.clone(),
            advertise_player: config.advertise_player.clone(),
            advertise_control: config.advertise_control.clone(),
            advertise_link: config.advertise_link.clone(),
            started_at_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            config: config.fingerprint.clone(),
        };
        let mut client = client;
        if let Err(e) = refuse_mismatch(&mut client, &config, &shared).await {
            let _ = ready.send(Err(e));
            return;
        }
        let _ = ready.send(Ok(()));
        let prefix = config.prefix.clone();
        watermark::spawn(client.clone(), shared.clone(), &config);
        let mut node = Node::new(client, shared, config, me);
        let leases = Arc::new(BucketLeases::default());
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    spawn_command(command, &node.client, &leases, &prefix, &node_id(&node));
                }
                _ = ticks.tick() => node.step().await,
            }
        }
        node.shutdown().await;
    });
}

/// At start: when etcd answers within a tick (at most [`START_CHECK_MS`]) and a live member's config fingerprint
/// differs from this node's, the start fails with what differs (an operator sees it at
/// once, before the node serves anyone). When etcd does not answer in time the node
/// starts; it is checked again before it registers (`Node::check_config`).
async fn refuse_mismatch(
    client: &mut Client,
    config: &ClusterConfig,
    shared: &Shared,
) -> Result<(), ClusterError> {
    let Some(mine) = &config.fingerprint else {
        return Ok(());
    };
    // At most 2 s: a start must not wait a long TTL's tick (up to 100 s) on a dead etcd.
    let op_ms = node::tick_ms(config).min(START_CHECK_MS);
    let members = listing::members(client, op_ms, &config.prefix, &config.node_id, 0).await;
    let Ok(members) = members else {
        return Ok(());
    };
    match membership::config_mismatch(mine, &config.node_id, &members) {
        Some(text) => {
            shared.note_config_mismatch(Some(text.clone()));
            Err(ClusterError::ConfigMismatch(text))
        }
        None => Ok(()),
    }
}

fn node_id(node: &Node) -> String {
    node.node_id().to_string()
}

/// Runs one command as its own task, so a slow etcd answer delays neither the
/// keep-alive nor other commands.
fn spawn_command(
    command: Command,
    client: &Client,
    leases: &Arc<BucketLeases>,
    prefix: &str,
    node_id: &str,
) {
    let mut client = client.clone();
    let leases = leases.clone();
    let prefix = prefix.to_string();
    let node_id = node_id.to_string();
    match command {
        Command::Consume {
            jti,
            expires_at_unix_secs,
            reply,
        } => {
            tokio::spawn(async move {
                let answer = used_tokens::consume(
                    &mut client,
                    &leases,
                    &prefix,
                    &node_id,
                    &jti,
                    expires_at_unix_secs,
                )
                .await;
                let _ = reply.send(answer);
            });
        }
    }
}

/// The cluster layer as other threads see it. Stops the cluster thread on drop.
pub struct ClusterHandle {
    /// Shared with the cluster thread.
    shared: Arc<Shared>,
    /// Requests to the cluster thread.
    commands: mpsc::Sender<Command>,
    /// Fires the clean stop.
    stop: Option<oneshot::Sender<()>>,
    /// The cluster thread.
    thread: Option<JoinHandle<()>>,
}

impl ClusterHandle {
    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// This process's incarnation (random, never 0): tells a restarted node from the
    /// process it replaced (node links, last owners).
    pub fn incarnation(&self) -> u64 {
        self.shared.incarnation
    }

    /// True when this node may admit players of `queue` now: it owns the queue and its
    /// lease deadline is in the future. Lock-free, allocation-free.
    pub fn may_admit(&self, queue: &str) -> bool {
        self.shared
            .queues
            .index(queue)
            .is_some_and(|i| self.may_admit_index(i))
    }

    /// [`Self::may_admit`] by table index (see [`Self::queue_index`]): no name scan.
    pub fn may_admit_index(&self, index: usize) -> bool {
        self.shared.queues.ownership(index).is_some() && self.shared.fence.is_live()
    }

    /// The table index of a tracked queue.
    pub fn queue_index(&self, queue: &str) -> Option<usize> {
        self.shared.queues.index(queue)
    }

    /// Tracks one more queue (campaigned for from the next tick).
    pub fn add_queue(&self, queue: &str) -> Result<(), ClusterError> {
        if self.shared.queues.add(queue) {
            Ok(())
        } else {
            Err(ClusterError::QueueTableFull)
        }
    }

    /// This node's ownership of `queue` (epoch, campaign instant), fence aside.
    pub fn ownership(&self, queue: &str) -> Option<Ownership> {
        let index = self.shared.queues.index(queue)?;
        self.shared.queues.ownership(index)
    }

    /// The lease deadline in [`now_ms`] milliseconds (0 = no lease).
    pub fn fence_deadline_ms(&self) -> u64 {
        self.shared.fence.deadline_ms()
    }

    /// The current lease id, if any.
    pub fn lease_id(&self) -> Option<i64> {
        let id = self.shared.lease_id.load(Ordering::Acquire);
        (id != 0).then_some(id)
    }

    /// True while this node cannot register because another live lease holds its
    /// `node_id` (it admits nothing meanwhile).
    pub fn node_id_in_use(&self) -> bool {
        self.shared.node_id_in_use.load(Ordering::Acquire)
    }

    /// Live members as last listed (sorted by node id).
    pub fn members(&self) -> Vec<Member> {
        self.view().members.clone()
    }

    /// The owner of `queue` as last listed (any node).
    pub fn owner_of(&self, queue: &str) -> Option<Owner> {
        self.view().owners.get(queue).cloned()
    }

    /// Every owned queue and its owner as last listed (a copy; off the hot path).
    pub fn owners(&self) -> std::collections::HashMap<String, Owner> {
        self.view().owners.clone()
    }

    /// etcd calls that failed or timed out since start (for `/metrics`).
    pub fn etcd_errors_total(&self) -> u64 {
        self.shared.etcd_errors.load(Ordering::Relaxed)
    }

    /// Why this node's config does not match a live member's (it then stays out of
    /// the cluster), or None.
    pub fn config_mismatch(&self) -> Option<String> {
        self.shared
            .config_mismatch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True while this node's lease deadline has passed (or it holds no lease): it may
    /// admit for no queue, whatever it owns.
    pub fn fenced(&self) -> bool {
        !self.shared.fence.is_live()
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.shared.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks token `jti` (expiring at `expires_at_unix_secs`) used across the cluster;
    /// true only the first time. Blocks up to a few seconds on etcd: call it from the
    /// control thread's blocking pool, never from an io loop.
    pub fn consume(&self, jti: &str, expires_at_unix_secs: u64) -> Result<bool, ClusterError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let command = Command::Consume {
            jti: jti.to_string(),
            expires_at_unix_secs,
            reply,
        };
        self.commands.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ClusterError::Busy,
            mpsc::error::TrySendError::Closed(_) => ClusterError::Stopped,
        })?;
        // Two etcd calls at most (grant, txn), plus a retry after a lost lease.
        let answer = match answer.recv_timeout(Duration::from_millis(4 * TOKEN_OP_MS)) {
            Ok(answer) => answer,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(ClusterError::Timeout),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(ClusterError::Stopped),
        };
        if matches!(answer, Err(ClusterError::Etcd(_) | ClusterError::Timeout)) {
            self.shared.etcd_errors.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    /// Test hook: the node stops talking to etcd (no keep-alive, no listing, no revoke
    /// on stop), as if frozen, cut off, or killed; its fence still answers from the last
    /// deadline, as a live-but-partitioned node's would.
    #[doc(hidden)]
    pub fn freeze_for_test(&self) {
        self.shared.frozen.store(true, Ordering::Release);
    }

    /// Clean stop: no more admission, the lease revoked (the node and its queues are
    /// released at once), the thread joined.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ClusterHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}
