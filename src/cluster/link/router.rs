//! The router thread of a cluster node: every [`ROUTER_POLL`] it reads the cluster's
//! last listing (owners, members), starts a link client ([`EdgeLink`]) for each remote
//! owner the first time one of its queues is seen, and publishes a new
//! [`RouteTable`] when the routing changed (see `cluster::routes`). Never on a hot path:
//! the io loops only read the published table.
//!
//! Routing rule: a queue owned by another live member goes to that member's link; a
//! queue owned here stays on this node's core; a queue the cluster knows (tracked or
//! listed) with no owner, or whose owner is no live member with an `advertise_link`,
//! is answered SHUTTING_DOWN with a retry hint (`routes::NO_OWNER`). Every queue listed
//! as owned, and every name a login asked for (`queues.auto_create`), is tracked by the
//! cluster layer, so this node can campaign for it and take it over.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::edge::{EdgeLink, LoopOut, Retarget};
use super::stats::{LinkRegistry, Side};
use crate::cluster::membership::Member;
use crate::cluster::node::Owner;
use crate::cluster::routes::{RouteTable, Routes};
use crate::cluster::ClusterHandle;

/// How often the router reads the cluster's listing (which changes once a tick).
pub const ROUTER_POLL: Duration = Duration::from_millis(50);
/// Most remote nodes one node links to (queue ids keep 8 bits for the link).
pub const LINKS_MAX: usize = 254;

/// What the router thread needs.
pub struct Router {
    /// The cluster layer.
    pub cluster: Arc<ClusterHandle>,
    /// Where it publishes.
    pub routes: Arc<Routes>,
    /// Every local io loop (for the link clients' relays).
    pub loops: Arc<Vec<LoopOut>>,
    /// Capacity of each link client's inbox.
    pub inbox_capacity: usize,
    /// Set when the server stops.
    pub stop: Arc<AtomicBool>,
    /// How long a link holds its places after its connection broke (see
    /// `EdgeLink::orphan_max`).
    pub orphan_max: Duration,
    /// The configured queues (the cluster layer tracks them from the start).
    pub queues: Vec<String>,
    /// Every peer link's counters (each link client gets its peer's).
    pub link_stats: Arc<LinkRegistry>,
}

/// The owner a link was last told for a queue: (node id, epoch).
type Told = (String, u64);

/// What the router remembers between polls.
#[derive(Default)]
struct Known {
    /// The link client threads.
    threads: Vec<JoinHandle<()>>,
    /// Each link's retarget slot, by link index.
    retargets: Vec<Retarget>,
    /// Queue -> the link that last served it and the epoch it served (kept while the
    /// queue has no owner, or is owned here).
    served: HashMap<String, (usize, u64)>,
    /// Queues the cluster layer tracks (configured, listed, or asked for by a login).
    tracked: HashSet<String>,
    /// Queue -> the links that were told a new owner of it (their places of the queue,
    /// or their child links', are at that owner), each with the owner and epoch it was
    /// told last: told again only when that changes, so places follow a new owner that
    /// dies too, and a settled takeover names nothing (no lock, no allocation a poll).
    holders: HashMap<String, HashMap<usize, Told>>,
}

impl Known {
    /// Failover: `queue` was served by a link whose node is no longer a live member, or
    /// is owned at another epoch than the link served (its owner process was replaced,
    /// by a restart of the same node id or by another node), and is now owned by
    /// `owner`: that link re-submits the queue's held places to `owner`'s
    /// `advertise_link` (this node's own when it took the queue); each queue to its own
    /// new owner (see `edge::follow`). A link whose owner process still lives holds no
    /// places, so the name moves nothing there. Each holder is told each (owner, epoch)
    /// once: a settled takeover costs a poll a few map lookups.
    fn follow(&mut self, queue: &str, owner: &Owner, table: &RouteTable, members: &[Member]) {
        let Some(&(k, served_epoch)) = self.served.get(queue) else {
            return;
        };
        let old = &table.nodes[k];
        let gone = *old != owner.node_id && !members.iter().any(|m| m.node_id == *old);
        if !gone && owner.epoch == served_epoch {
            return;
        }
        // The queue stays served by the dead link while this node owns it (`served`
        // is kept then): what each holder was told decides, not the served link.
        let stale = |t: &Told| t.0 != owner.node_id || t.1 != owner.epoch;
        let settled = self
            .holders
            .get(queue)
            .is_some_and(|hs| hs.contains_key(&k) && !hs.values().any(stale));
        if settled {
            return;
        }
        let Some(addr) = members
            .iter()
            .find(|m| m.node_id == owner.node_id && !m.advertise_link.is_empty())
        else {
            return;
        };
        let holders = self.holders.entry(queue.to_string()).or_default();
        holders.entry(k).or_default();
        for (&h, told) in holders.iter_mut().filter(|(_, t)| stale(t)) {
            self.retargets[h]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(queue.to_string(), addr.advertise_link.clone());
            *told = (owner.node_id.clone(), owner.epoch);
        }
    }
}

impl Router {
    /// Starts the router thread.
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("cluster-router".into())
            .spawn(move || self.run())
    }

    fn run(self) {
        let mut table = RouteTable::default();
        let mut links = Known {
            tracked: self.queues.iter().cloned().collect(),
            ..Known::default()
        };
        while !self.stop.load(Ordering::Relaxed) {
            if let Some(next) = self.next_table(&table, &mut links) {
                tracing::info!(
                    remote_queues = next.remote.len(),
                    "node link routes changed"
                );
                table = next.clone();
                self.routes.publish(next);
            }
            std::thread::sleep(ROUTER_POLL);
        }
        for link in links.threads {
            let _ = link.join();
        }
    }

    /// The routing from the cluster's last listing; `None` when unchanged.
    fn next_table(&self, current: &RouteTable, links: &mut Known) -> Option<RouteTable> {
        let me = self.cluster.node_id();
        let members = self.cluster.members();
        let owners = self.cluster.owners();
        self.track(&owners, links);
        let mut next = current.clone();
        next.remote = HashMap::new();
        next.local = HashSet::new();
        next.unowned = HashSet::new();
        for (queue, owner) in &owners {
            links.follow(queue, owner, &next, &members);
            if owner.node_id == me {
                continue;
            }
            let Some(index) = self.link_index(&mut next, &owner.node_id, links, &members) else {
                continue;
            };
            links.served.insert(queue.clone(), (index, owner.epoch));
            next.remote.insert(queue.clone(), index);
        }
        for queue in owners.keys().chain(links.tracked.iter()) {
            if next.remote.contains_key(queue) {
                continue;
            }
            // Ours by the listing, or by a campaign won since (listed next tick).
            let mine = owners.get(queue).is_some_and(|o| o.node_id == me)
                || self.cluster.ownership(queue).is_some();
            if mine {
                next.local.insert(queue.clone());
            } else {
                next.unowned.insert(queue.clone());
            }
        }
        let changed = next.remote != current.remote
            || next.local != current.local
            || next.unowned != current.unowned
            || next.nodes.len() != current.nodes.len();
        changed.then_some(next)
    }

    /// Tracks (campaigns for, can take over) every queue listed as owned anywhere, and
    /// every queue name the loops asked for (auto-created queues): new names only.
    fn track(&self, owners: &HashMap<String, Owner>, links: &mut Known) {
        let listed = owners.keys().map(|q| q.to_string());
        let wanted: Vec<String> = self
            .routes
            .take_wanted()
            .map(|q| q.as_str().to_string())
            .collect();
        for queue in listed.chain(wanted) {
            if links.tracked.contains(&queue) || !crate::cluster::routes::trackable(&queue) {
                continue;
            }
            match self.cluster.add_queue(&queue) {
                Ok(()) => {
                    tracing::info!(
                        queue,
                        "cluster: tracking a queue created elsewhere or on a login"
                    );
                    links.tracked.insert(queue);
                }
                Err(e) => tracing::warn!(queue, error = %e, "cluster: queue not tracked"),
            }
        }
    }

    /// The index of the link to `node`, started when it has none yet; `None` when the
    /// node is no live member with a link address (or no link could be started).
    fn link_index(
        &self,
        table: &mut RouteTable,
        node: &str,
        links: &mut Known,
        members: &[Member],
    ) -> Option<usize> {
        if let Some(i) = table.nodes.iter().position(|n| n == node) {
            return Some(i);
        }
        let addr = members
            .iter()
            .find(|m| m.node_id == node && !m.advertise_link.is_empty())
            .map(|m| m.advertise_link.clone())?;
        let (handle, retarget) = self.start_link(table, node, addr)?;
        links.threads.push(handle);
        links.retargets.push(retarget);
        Some(table.nodes.len() - 1)
    }

    /// Starts the link client to `node`, appending it to `table`.
    fn start_link(
        &self,
        table: &mut RouteTable,
        node: &str,
        addr: String,
    ) -> Option<(JoinHandle<()>, Retarget)> {
        if table.nodes.len() >= LINKS_MAX {
            tracing::error!(node, "node link not started: {LINKS_MAX} links already");
            return None;
        }
        let (tx, inbox) = crossbeam_channel::bounded(self.inbox_capacity);
        let retarget = Retarget::default();
        let link = EdgeLink {
            index: table.nodes.len(),
            me: self.cluster.node_id().to_string(),
            stats: self.link_stats.get(node, Side::Edge),
            node: node.to_string(),
            addr,
            inbox,
            loops: self.loops.clone(),
            stop: self.stop.clone(),
            retarget: retarget.clone(),
            orphan_max: self.orphan_max,
        };
        match link.spawn() {
            Ok(handle) => {
                table.links.push(tx);
                table.nodes.push(node.to_string());
                Some((handle, retarget))
            }
            Err(e) => {
                tracing::error!(node, error = %e, "node link thread not started");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(node_id: &str) -> Member {
        Member {
            node_id: node_id.into(),
            advertise_player: String::new(),
            advertise_control: String::new(),
            advertise_link: format!("{node_id}:7000"),
            started_at_unix_ms: 0,
            config: None,
        }
    }

    fn owner(node_id: &str, epoch: u64) -> Owner {
        Owner {
            node_id: node_id.into(),
            epoch,
        }
    }

    /// Links to `nodes` (index = position), none started: only their retarget slots.
    fn known(nodes: &[&str]) -> (Known, RouteTable) {
        let links = Known {
            retargets: nodes.iter().map(|_| Retarget::default()).collect(),
            ..Known::default()
        };
        let table = RouteTable {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            ..RouteTable::default()
        };
        (links, table)
    }

    /// One poll of the router for queue `q` as `next_table` makes it on node `me`:
    /// the names given, then the link serving a remote owner remembered.
    fn poll(links: &mut Known, table: &RouteTable, me: &str, o: &Owner, members: &[Member]) {
        links.follow("q", o, table, members);
        if o.node_id != me {
            let k = table.nodes.iter().position(|n| *n == o.node_id).unwrap();
            links.served.insert("q".into(), (k, o.epoch));
        }
    }

    /// How many names each link was given since the last call.
    fn told(links: &Known) -> Vec<usize> {
        let drain = |r: &Retarget| r.lock().unwrap().drain().count();
        links.retargets.iter().map(drain).collect()
    }

    /// This node (b) takes the queue over from d, whose link served it: link 0 is
    /// told the new owner once, not again every poll (before: every 50 ms, forever,
    /// each time an allocation per holder and a write to the link's slot).
    #[test]
    fn a_takeover_here_is_named_once_not_every_poll() {
        let (mut links, table) = known(&["d"]);
        links.served.insert("q".into(), (0, 5));
        let members = [member("b"), member("c")];
        let mine = owner("b", 7);
        poll(&mut links, &table, "b", &mine, &members);
        assert_eq!(told(&links), [1]);
        for _ in 0..5 {
            poll(&mut links, &table, "b", &mine, &members);
            assert_eq!(told(&links), [0], "named again with nothing changed");
        }
        // It changes (this node lost the queue and took it back at a new epoch):
        // named once more.
        poll(&mut links, &table, "b", &owner("b", 9), &members);
        assert_eq!(told(&links), [1]);
        poll(&mut links, &table, "b", &owner("b", 9), &members);
        assert_eq!(told(&links), [0]);
    }

    /// d dies, c takes the queue (link 1), then c dies and this node (b) takes it:
    /// every link ever named an owner of the queue is told each new owner once.
    #[test]
    fn each_new_owner_is_named_once_to_every_holder() {
        let (mut links, table) = known(&["d", "c"]);
        links.served.insert("q".into(), (0, 5));
        let members = [member("b"), member("c")];
        for _ in 0..3 {
            poll(&mut links, &table, "b", &owner("c", 7), &members);
        }
        assert_eq!(told(&links), [1, 0]);
        let members = [member("b")];
        poll(&mut links, &table, "b", &owner("b", 9), &members);
        assert_eq!(told(&links), [1, 1]);
        for _ in 0..3 {
            poll(&mut links, &table, "b", &owner("b", 9), &members);
        }
        assert_eq!(told(&links), [0, 0]);
    }
}
