//! The control port in a cluster (`[cluster]` set; absent, nothing here runs and every
//! answer is the single-node one): what the control thread holds of the cluster layer
//! ([`ClusterControl`]), the cluster-wide half of `POST /v1/tokens/verify`, and the
//! `cluster` section of `/v1/stats` (also in every `/v1/events` snapshot: the
//! dashboard's cluster panel). Forwarding to a queue's owner is in `forward`.
//!
//! Decisions:
//! - a token is consumed once across the cluster: `POST /v1/tokens/verify` first
//!   consumes its `jti` in etcd (put-if-absent, `ClusterHandle::consume`), then in the
//!   local core as on one node. etcd first, so a verify that cannot reach etcd consumes
//!   nothing anywhere: it answers 503 (never "valid") and a retry can still succeed;
//!   the local core's used set stays a second check (an etcd restored from an old
//!   backup can forget a used mark; the node that verified does not);
//! - `consume` blocks (up to [`CONSUME_WAIT`]) so it runs on the control runtime's
//!   blocking pool, never on the serving thread, at most [`CONSUMES_MAX`] at once; the
//!   others wait for a permit (tested: `tests/cluster_process.rs`);
//! - a node cut off from etcd (fenced) answers a verify 503 at once, without an etcd
//!   call, so verifies never pile up on a silent etcd;
//! - the stats section is this node's view as last listed from etcd (at most a tick,
//!   TTL/3, old), not a consensus read; its recovery hold is the core fence's own
//!   computation ([`ClusterFence::recovery_left_ms`]) and its link figures are the
//!   numbers `/metrics` shows (one copy of the link registry per call, as a scrape).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use serde::Serialize;
use tokio::sync::Semaphore;

use super::routes::Reply;
use crate::cluster::link::start::NodeLink;
use crate::cluster::link::stats::{LinkFigures, LinkRegistry};
use crate::cluster::{ClusterError, ClusterHandle, Fingerprint, Member};
use crate::msg::QueueStats;
use crate::queue::core::{AdmitFence, ClusterFence};

/// Longest wait for a cluster-wide consume: the cluster layer's own bound (two etcd
/// calls and a retry, 2 s each), so this one only catches a pool thread that never ran.
pub const CONSUME_WAIT: Duration = Duration::from_secs(9);
/// Most cluster-wide consumes on the blocking pool at once (the others wait their turn,
/// within [`CONSUME_WAIT`]): half of [`super::CORE_CALLS_MAX`], so verifies stuck on a
/// silent etcd never take every thread the core round trips need.
pub const CONSUMES_MAX: usize = super::CORE_CALLS_MAX / 2;
/// `Retry-After` of every 503 that a retry soon can cure (no owner yet, etcd away).
pub const RETRY_AFTER_SECS: &str = "1";

/// The cluster layer as the control thread sees it.
pub struct ClusterControl {
    /// The node's handle (membership, owners, fence, used tokens).
    pub handle: Arc<ClusterHandle>,
    /// Requests this node forwarded to another node's control port.
    forwarded: AtomicU64,
    /// One permit per consume on the blocking pool ([`CONSUMES_MAX`]).
    consumes: Arc<Semaphore>,
    /// The node link's counters (`/metrics`, the stats section's `links`).
    links: Arc<LinkRegistry>,
    /// The core's fence as the core builds it, asked only for the recovery hold.
    fence: ClusterFence,
}

impl ClusterControl {
    /// The control side of the cluster pieces that `server::start_cluster` started (the
    /// same handle and link counters the node link and the core's fence use).
    pub fn new(link: &NodeLink) -> ClusterControl {
        ClusterControl {
            handle: link.cluster.clone(),
            links: link.link_stats(),
            fence: ClusterFence {
                cluster: link.cluster.clone(),
                recovery_window_ms: link.recovery_window_ms(),
            },
            forwarded: AtomicU64::new(0),
            consumes: Arc::new(Semaphore::new(CONSUMES_MAX)),
        }
    }

    /// Counts one forwarded request.
    pub(super) fn note_forwarded(&self) {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests forwarded to another node since start.
    pub fn forwarded_total(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// The figures `/metrics` shows for the cluster.
    pub fn gauges(&self) -> crate::metrics::ClusterGauges {
        let me = self.handle.node_id();
        crate::metrics::ClusterGauges {
            members: self.handle.members().len() as u64,
            queues_owned: self
                .handle
                .owners()
                .values()
                .filter(|o| o.node_id == me)
                .count() as u64,
            fenced: self.handle.fenced(),
            etcd_errors: self.handle.etcd_errors_total(),
            forwarded: self.forwarded_total(),
            links: self.links.figures(),
        }
    }
}

/// What every node of a cluster must share, from this node's `[tokens]` and
/// `[control]` (see `cluster::membership::Fingerprint`): the kid as tokens carry it
/// (configured, or derived from the key).
pub fn cluster_fingerprint(config: &crate::config::Config) -> Fingerprint {
    let t = &config.tokens;
    let kid = match crate::token::TokenSigner::from_config(t) {
        Ok((signer, _)) => signer.kid().to_string(),
        Err(_) => t.kid.clone(),
    };
    let alg = format!("{:?}", t.alg);
    Fingerprint::new(&alg, &kid, &t.issuer, &t.key, &config.control.api_key)
}

/// Marks `jti` (expiring at `exp`) used across the cluster: Ok(true) the first time,
/// Ok(false) when any node consumed it before, Err(503) when etcd cannot say.
///
/// A node cut off from etcd (fenced: no keep-alive answered for TTL - margin) answers
/// 503 at once, before and after waiting for a permit, instead of sending the call to
/// a silent etcd: each such call would hold its HTTP connection for up to
/// [`CONSUME_WAIT`], and a storm of verifies from login servers during an outage would
/// fill the control port's connection cap, shutting out `/healthz` and operators.
pub(super) async fn consume(cluster: &ClusterControl, jti: &str, exp: u64) -> Result<bool, Reply> {
    if cluster.handle.fenced() {
        return Err(cut_off());
    }
    let handle = cluster.handle.clone();
    let jti = jti.to_string();
    let permits = cluster.consumes.clone();
    let call = async move {
        let permit = permits.acquire_owned().await;
        if handle.fenced() {
            return Ok(Err(ClusterError::Fenced));
        }
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            handle.consume(&jti, exp)
        })
        .await
    };
    let answer = match tokio::time::timeout(CONSUME_WAIT, call).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) | Err(_) => Err(ClusterError::Timeout),
    };
    answer.map_err(|e| {
        if e == ClusterError::Fenced {
            return cut_off();
        }
        tracing::warn!(error = %e, "verify: the used-token store did not answer");
        let text = format!(
            "cannot check the token's use across the cluster ({e}); retry later \
             (if etcd took the first try, a retry answers already_used)"
        );
        Reply::error(503, &text).with(header::RETRY_AFTER, RETRY_AFTER_SECS)
    })
}

/// The 503 of a verify on a node cut off from etcd (no etcd call was made).
fn cut_off() -> Reply {
    let text = "this node is cut off from etcd (its lease lapsed): it cannot check the \
                token's use across the cluster; retry later, or on another node";
    Reply::error(503, text).with(header::RETRY_AFTER, RETRY_AFTER_SECS)
}

/// One member in the stats section.
#[derive(Serialize)]
pub(super) struct MemberOut {
    /// The node's id.
    node_id: String,
    /// Where players reach it.
    advertise_player: String,
    /// Where operators and other nodes reach its control port.
    advertise_control: String,
    /// When it started, Unix ms (its own clock).
    started_at_unix_ms: u64,
}

impl From<Member> for MemberOut {
    fn from(m: Member) -> MemberOut {
        MemberOut {
            node_id: m.node_id,
            advertise_player: m.advertise_player,
            advertise_control: m.advertise_control,
            started_at_unix_ms: m.started_at_unix_ms,
        }
    }
}

/// One queue in the stats section.
#[derive(Serialize)]
pub(super) struct QueueOwnerOut {
    /// The owning node, null while nobody owns it.
    owner: Option<String>,
    /// The ownership epoch (the owner key's create_revision), null without an owner.
    epoch: Option<u64>,
    /// This node is the owner.
    owned_here: bool,
    /// This node may admit for it now: it owns it and its lease is live (not fenced).
    may_admit: bool,
    /// While this node holds the queue's admission after a takeover (the recovery
    /// window): the ms left; null when no hold runs.
    recovery_left_ms: Option<u64>,
}

/// One node link in the stats section: the figures of `/metrics`'
/// `queue_cluster_link_*` series with the same `peer` and `side`.
#[derive(Serialize)]
pub(super) struct LinkOut {
    /// The other node's id (`_other` past the series cap).
    peer: String,
    /// `edge`: this node dialed the queue's owner; `owner`: an edge dialed this node.
    side: &'static str,
    /// Connections open now (1; briefly 2 during a reconnect or with a child link).
    connected: u64,
    /// Frames written.
    frames_sent_total: u64,
    /// Frames read.
    frames_received_total: u64,
    /// Bytes written (frame headers included).
    bytes_sent_total: u64,
    /// Bytes read (frame headers included).
    bytes_received_total: u64,
    /// Messages read and handed on (edge: to the io loops; owner: to the core).
    messages_relayed_total: u64,
    /// Connections established after the first.
    reconnects_total: u64,
    /// Places re-submitted after a failover (edge: sent; owner: received).
    resubmitted_total: u64,
}

impl From<LinkFigures> for LinkOut {
    fn from(f: LinkFigures) -> LinkOut {
        LinkOut {
            peer: f.peer,
            side: f.side,
            connected: f.connected,
            frames_sent_total: f.frames_sent,
            frames_received_total: f.frames_received,
            bytes_sent_total: f.bytes_sent,
            bytes_received_total: f.bytes_received,
            messages_relayed_total: f.relayed,
            reconnects_total: f.reconnects,
            resubmitted_total: f.resubmitted,
        }
    }
}

/// `/v1/stats` `cluster`: this node's view.
#[derive(Serialize)]
pub(super) struct ClusterOut {
    /// This node's id.
    node_id: String,
    /// This node's lease deadline has passed (or it holds none): it admits nothing.
    fenced: bool,
    /// Another live process holds this node's id: this one waits and admits nothing.
    node_id_in_use: bool,
    /// Why this node's config differs from a live member's (it then stays out of the
    /// cluster: not registered, owns nothing), null when it matches.
    config_mismatch: Option<String>,
    /// Live members as last listed, by id.
    members: Vec<MemberOut>,
    /// Per queue (this node's queues and every owned queue in etcd), by name.
    queues: BTreeMap<String, QueueOwnerOut>,
    /// etcd calls that failed or timed out since start.
    etcd_errors_total: u64,
    /// Control requests forwarded to their queue's owner since start.
    forwarded_total: u64,
    /// Every node link that ever connected, to or from this node (kept after it
    /// closed), in the order they first connected.
    links: Vec<LinkOut>,
}

/// The stats section for a node whose core holds `queues`.
pub(super) fn section(cluster: &ClusterControl, queues: &[QueueStats]) -> ClusterOut {
    let handle = &cluster.handle;
    let me = handle.node_id();
    let owners = handle.owners();
    let names = queues
        .iter()
        .map(|q| q.name.as_str())
        .chain(owners.keys().map(String::as_str));
    let queues = names
        .map(|name| {
            let owner = owners.get(name);
            let out = QueueOwnerOut {
                owner: owner.map(|o| o.node_id.clone()),
                epoch: owner.map(|o| o.epoch),
                owned_here: owner.is_some_and(|o| o.node_id == me),
                may_admit: handle.may_admit(name),
                recovery_left_ms: cluster.fence.recovery_left_ms(name),
            };
            (name.to_string(), out)
        })
        .collect();
    ClusterOut {
        node_id: me.to_string(),
        fenced: handle.fenced(),
        node_id_in_use: handle.node_id_in_use(),
        config_mismatch: handle.config_mismatch(),
        members: handle.members().into_iter().map(MemberOut::from).collect(),
        queues,
        etcd_errors_total: handle.etcd_errors_total(),
        forwarded_total: cluster.forwarded_total(),
        links: cluster
            .links
            .figures()
            .into_iter()
            .map(LinkOut::from)
            .collect(),
    }
}
