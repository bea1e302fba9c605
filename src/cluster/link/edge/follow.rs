//! Failover with several new owners: when the dead owner's queues went to different
//! nodes, the router names each queue's new owner ([`Retarget`]); the link follows the
//! first one named with its own connection, and hands the held places of every queue
//! owned by another node to a *child* link to that node: same link index (so the
//! sessions' queue ids keep meaning this link, and their `Leave`/`Disconnect` still
//! reach it: it forwards them to the child by queue id), its own connection, book and
//! id maps, started with the places held and re-submitting them at once.
//!
//! When a new owner dies too, the router names the queue's next owner to every link it
//! named one before (`router`): a link whose own connection went there splits the
//! queue's places off to a child as above; a link that handed the queue to a child
//! passes the name on to that child, which follows it the same way (a child of its
//! own if need be).
//!
//! A child link ends once no waiting place is left behind it (each admitted, left,
//! refused or kicked) and it has no child of its own left: it raises its `empty` flag,
//! its parent drops every sender of its inbox (`Follow::reap`), and the child writes
//! what it was still sent, sees its inbox disconnected, closes its connection (its
//! reader ends with it) and its thread exits. A child that still holds a waiting
//! place stays: that player waits at the owner through it.
//!
//! Invariants: a queue is split off once per link (`handed`); a place goes to the
//! owner the router named for its queue, never to another node (which would refuse
//! it); places whose queue has no new owner yet stay held until it has one or
//! `orphan_max` passed; a child's `empty` flag, once raised, stays (its book only
//! shrinks: a child is sent leaves and disconnects, never joins); in steady state
//! (nothing named, no child ending) `follow` allocates nothing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::Sender;

use super::places::Book;
use super::{book, EdgeLink, Retarget};
use crate::msg::{local_queue, CoreMsg, QueueId};

/// Where a link's places go after its owner died (see the module doc).
#[derive(Default)]
pub(super) struct Follow {
    /// The address this link dials.
    pub addr: String,
    /// True once the link followed a new owner (it never goes back).
    pub moved: bool,
    /// Queue name -> its new owner's `advertise_link`, as the router named it.
    pub targets: HashMap<String, String>,
    /// Queue name -> when the router last named its owner (a name from before the
    /// owner process restarted is stale: `Follow::restarted`).
    named_at: HashMap<String, Instant>,
    /// Queues whose places went to a child link.
    handed: HashSet<String>,
    /// Queue id (link bits cleared) -> the child link holding its places.
    pub children: HashMap<QueueId, Sender<CoreMsg>>,
    /// Queue name -> the retarget slot of the child link holding its places: a later
    /// new owner of the queue (the child's owner died too) is named to the child,
    /// which follows it like this link does.
    child_retargets: HashMap<String, Retarget>,
    /// The child links this link started and that have not ended.
    spawned: Vec<Child>,
    /// A child link's own flag, raised when nothing waits behind it any more (its
    /// parent then drops it); `None` for a link the router started.
    empty: Option<Arc<AtomicBool>>,
}

/// A child link as its parent keeps it.
struct Child {
    /// Its inbox (the entries of `Follow::children` are clones of it).
    tx: Sender<CoreMsg>,
    /// Its retarget slot (the entries of `Follow::child_retargets` are clones of it).
    retarget: Retarget,
    /// Raised by the child when no place waits behind it (see the module doc).
    empty: Arc<AtomicBool>,
    /// Where it dials (for logs).
    addr: String,
}

impl Follow {
    /// Dials `addr` (a child: `queues` go there).
    pub fn new(addr: String, queues: &HashSet<String>) -> Follow {
        let moved = !queues.is_empty();
        Follow {
            targets: queues.iter().map(|q| (q.clone(), addr.clone())).collect(),
            addr,
            moved,
            ..Follow::default()
        }
    }

    /// The owner process at this link's address was replaced (its places were behind
    /// a connection broken at `since`): from now on the link only re-submits, to the
    /// owner the router names for each queue after `since` (this address's new process,
    /// at a new epoch, or another node through a child link); names from before are
    /// dropped (they named the dead process).
    pub fn restarted(&mut self, since: Option<Instant>) {
        self.moved = true;
        let named_at = &self.named_at;
        self.targets.retain(|queue, _| {
            named_at
                .get(queue)
                .is_some_and(|t| since.is_none_or(|since| *t >= since))
        });
    }

    /// True when `queue`'s places belong on this link's connection now.
    pub fn here(&self, queue: &str) -> bool {
        self.targets.get(queue) == Some(&self.addr)
    }

    /// Sends `msg` to the child link holding its session's queue; gives it back when
    /// no child does.
    pub fn forward(&self, msg: CoreMsg) -> Option<CoreMsg> {
        let queue = match &msg {
            CoreMsg::Leave { queue, .. } | CoreMsg::Disconnect { queue, .. } => *queue,
            _ => return Some(msg),
        };
        match self.children.get(&local_queue(queue)) {
            Some(child) => {
                let _ = child.send(msg);
                None
            }
            None => Some(msg),
        }
    }

    /// Drops the child links that raised their `empty` flag: every sender of their
    /// inbox goes, so each writes what it was sent, then ends (see the module doc).
    fn reap(&mut self) {
        if !self.spawned.iter().any(|c| c.empty.load(Ordering::Acquire)) {
            return;
        }
        let (ended, kept) = std::mem::take(&mut self.spawned)
            .into_iter()
            .partition::<Vec<_>, _>(|c| c.empty.load(Ordering::Acquire));
        self.spawned = kept;
        for c in ended {
            self.children.retain(|_, tx| !tx.same_channel(&c.tx));
            self.child_retargets
                .retain(|_, r| !Arc::ptr_eq(r, &c.retarget));
            tracing::info!(to = %c.addr, "node link child ends: no place waits behind it");
        }
    }

    /// A child link with no waiting place behind it, nor a child of its own, raises
    /// its `empty` flag (once: its book only shrinks).
    fn check_empty(&self, places: &Mutex<Book>) {
        let Some(empty) = &self.empty else {
            return;
        };
        if !empty.load(Ordering::Relaxed) && self.spawned.is_empty() && book(places).live.is_empty()
        {
            empty.store(true, Ordering::Release);
        }
    }
}

impl EdgeLink {
    /// Takes the router's new owners: true when this link now dials another address.
    /// Held places of queues owned by a node this link does not follow go to a child.
    pub(super) fn follow(&self, f: &mut Follow, places: &Arc<Mutex<Book>>) -> bool {
        let named: Vec<(String, String)> = self
            .retarget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        let mut moved = false;
        let any_named = !named.is_empty();
        let now = Instant::now();
        for (queue, addr) in named {
            if let Some(child) = f.child_retargets.get(&queue) {
                child
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(queue, addr);
                continue;
            }
            // A name of this link's own address (its owner took the queue back at a new
            // epoch: a restart, or an etcd outage) moves nothing by itself.
            if !f.moved && addr != f.addr {
                f.moved = true;
                tracing::info!(node = %self.node, from = %f.addr, to = %addr, "node link follows its queues to a new owner");
                f.addr = addr.clone();
                moved = true;
            }
            f.named_at.insert(queue.clone(), now);
            f.targets.insert(queue, addr);
        }
        f.reap();
        f.check_empty(places);
        if !any_named {
            // Nothing named: `targets` and `addr` are as the last call left them, every
            // queue owned elsewhere is handed already.
            return moved;
        }
        let mut by_addr: HashMap<&str, HashSet<String>> = HashMap::new();
        for (queue, addr) in &f.targets {
            if *addr != f.addr && !f.handed.contains(queue) {
                by_addr.entry(addr).or_default().insert(queue.clone());
            }
        }
        for (addr, queues) in by_addr {
            let seed = book(places).split_off(&queues);
            f.handed.extend(queues.iter().cloned());
            if seed.live.is_empty() {
                continue;
            }
            let ids = seed.edge_queues();
            if let Some(child) = self.spawn_child(addr, seed, &queues) {
                f.children
                    .extend(ids.into_iter().map(|id| (id, child.tx.clone())));
                f.child_retargets
                    .extend(queues.iter().map(|q| (q.clone(), child.retarget.clone())));
                f.spawned.push(child);
            }
        }
        moved
    }

    /// Starts a child link to `addr` holding `seed` (places of `queues`).
    fn spawn_child(&self, addr: &str, seed: Book, queues: &HashSet<String>) -> Option<Child> {
        let capacity = self.inbox.capacity().unwrap_or(1024);
        let (tx, inbox) = crossbeam_channel::bounded(capacity);
        let retarget = Retarget::default();
        let child = EdgeLink {
            index: self.index,
            me: self.me.clone(),
            stats: self.stats.clone(),
            node: self.node.clone(),
            addr: addr.to_string(),
            inbox,
            loops: self.loops.clone(),
            stop: self.stop.clone(),
            retarget: retarget.clone(),
            orphan_max: self.orphan_max,
        };
        let empty = Arc::new(AtomicBool::new(false));
        let mut follow = Follow::new(addr.to_string(), queues);
        follow.empty = Some(empty.clone());
        tracing::info!(node = %self.node, to = %addr, places = seed.live.len(), "node link hands places to a second new owner");
        let spawned = std::thread::Builder::new()
            .name(format!("link-to-{}+", self.node))
            .spawn(move || child.run_with(seed, follow));
        match spawned {
            Ok(_) => Some(Child {
                tx,
                retarget,
                empty,
                addr: addr.to_string(),
            }),
            Err(e) => {
                tracing::error!(node = %self.node, error = %e, "node link child not started: its places are lost");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
