//! The node link: how players connected to any node wait in one queue held by its
//! owner's core. A remote node is one more loop of the owner's core (a *virtual loop*);
//! the link carries the messages loops and core already exchange (`msg.rs`), batched
//! per round in both directions, in the binary frames of [`codec`].
//!
//! - [`owner`]: the acceptor on `cluster.advertise_link`; each connection is a virtual
//!   loop of this node's core;
//! - [`edge`]: one client per remote owner, acting as a core for the sessions whose
//!   queue that node owns;
//! - [`router`]: which queue goes where (publishes `cluster::routes`), and starts the
//!   clients;
//! - [`hello`]: the edge names itself after the preambles, the owner answers with its
//!   incarnation;
//! - [`stats`]: per peer link and side, the counters `/metrics` shows
//!   (`queue_cluster_link_*`), plain atomics bumped per frame.
//!
//! Ids: a virtual loop's `LoopId` is above the owner's io loops (never reused); an edge
//! session crosses as (edge loop << 24 | session) ([`codec::pack_session`]); the owner's
//! `QueueId`s are mapped on the edge into link `k`'s range, `(k + 1) << 24 | id`
//! (`msg::remote_queue`), so a session's `Leave`/`Disconnect` is routed by its queue id.
//!
//! A broken link (either side closes, a broken frame, a write stuck past
//! `owner::LINK_IO_TIMEOUT`): the owner detaches the virtual loop and puts its places
//! into reconnect grace; the edge answers its logins in flight SHUTTING_DOWN and holds
//! its waiting places (its book, `edge::places`) while it re-dials:
//! - the same owner process answers (a cut link; told apart by the incarnation the
//!   owner answers the hello with, see [`hello`]): the link's sessions are kicked
//!   `shutdown` with a retry hint, so they log in again and resume from grace;
//! - another process answers at the owner's address (the owner was restarted): the
//!   places are held until the router names each queue's owner at a new epoch (the
//!   restarted node, or another) and re-submitted there as in a failover;
//! - the owner died and the router saw other nodes take its queues (failover): each
//!   queue's waiting places are re-submitted to that queue's new owner (this node's
//!   own link port when it is the new owner), one batch sorted by key
//!   (`CoreMsg::Resubmit`): the link follows the first new owner named, and hands the
//!   places of queues another node took to a child link to that node (`edge::follow`);
//!   places whose queue has no new owner yet stay held; the players stay connected
//!   and never see it, and each new owner's queue ids are mapped back onto the ids
//!   their sessions hold;
//! - neither within `3 x lease TTL + 5 s`: the sessions are kicked as for a cut link.
//!
//! Back-pressure: a virtual loop has the io loops' bounded channel and core backlog;
//! past `BACKLOG_MAX` the core waits for it like for an io loop, at most until the
//! link's write times out (then the link closes and the core stops sending to it).
//!
//! The dead node's own players come back with place tickets: a `Join` carries the
//! ticket's claim (`codec`), judged by the owner's core (`queue::core::claim`).
//!
//! Not here yet: fencing re-checked at flush, sharing one encoded rank batch between
//! links.

pub mod codec;
pub mod edge;
pub mod hello;
pub mod owner;
pub mod router;
pub mod start;
pub mod stats;
