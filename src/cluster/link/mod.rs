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
//!   clients.
//!
//! Ids: a virtual loop's `LoopId` is above the owner's io loops (never reused); an edge
//! session crosses as (edge loop << 24 | session) ([`codec::pack_session`]); the owner's
//! `QueueId`s are mapped on the edge into link `k`'s range, `(k + 1) << 24 | id`
//! (`msg::remote_queue`), so a session's `Leave`/`Disconnect` is routed by its queue id.
//!
//! Not here yet: when a link breaks, the owner keeps that link's places (no grace
//! starts) and the edge's sessions keep waiting on positions that no longer move; the
//! failover of places (re-submission, place tickets) and the ownership epoch on frames.

pub mod codec;
pub mod edge;
pub mod owner;
pub mod router;
pub mod start;
