//! queue-server: a thread-per-core login queue for online games.
//!
//! Players hold one TCP connection each (4-byte length + JSON frames) and watch their
//! place move; login servers and operators drive admission over an HTTP control API;
//! admitted players get a signed token. The map:
//!
//! - [`config`]: the embedded default config, file overlay, validation;
//! - [`cluster`]: several nodes on etcd (docs/cluster.md): membership, queue ownership,
//!   fencing and used tokens in etcd; the node link ([`cluster::link`]: a remote node is
//!   one more loop of the owner's core; failover re-submits places) and the routes
//!   loops use for logins; started by [`server`] only with `[cluster]`;
//! - [`server`]: binds listeners, wires channels, starts and stops every thread;
//! - [`io_loop`]: one pinned monoio runtime per core; owns its session table and tasks,
//!   applies the core's events, rank batches and resync slices;
//! - [`session`]: one connection: its life-cycle state machine, reader, writer,
//!   request handling; sees its loop only through a [`shard::Shard`];
//! - [`shard`]: what a loop's sessions share: settings, the core link and its bounded
//!   backlog, buffer pools, the login budget, the rank/push tracker (runtime-free);
//! - [`frame`]: the 4-byte length framing, decided from the header alone;
//! - [`protocol`]: envelope parsing, error codes, JSON encoders writing into buffers;
//! - [`queue`]: the queue state machine ([`queue::state`]), its thread ([`queue::core`]),
//!   durability ([`queue::durability`]: write-ahead log, snapshots, recovery) and the
//!   core's per-player journal ([`queue::journal`]); [`queue`]'s header names the file
//!   behind each queue behaviour (join, leave, admission, rate, capacity, pause, grace,
//!   expiry, removal, journal, durability, resync);
//! - [`msg`]: the messages between loops, core and control thread;
//! - [`doorbell`]: wakes a loop once per batch of core events;
//! - [`wake`]: a loop-local task wake-up flag;
//! - [`token`]: admission tokens (JWT EdDSA/HS256, JWKS) and login ticket checks;
//! - [`control`]: the HTTP control API thread (hyper + axum on a tokio current-thread
//!   runtime: routes, limits, `/readyz`, the dashboard and its event stream, the player
//!   journal and removal, CPU profiles, the audit trail, forwarding to a queue's owner in
//!   a cluster); [`metrics`]: Prometheus text;
//! - [`limits`]: open-connection limits (total, per IP) shared by the loops;
//! - [`stats`]: per-loop counters, histograms, the per-minute history and process
//!   figures; [`alloc_count`]: the counting allocator.

pub mod alloc_count;
pub mod cluster;
pub mod config;
pub mod control;
pub mod doorbell;
pub mod frame;
pub mod io_loop;
pub mod limits;
pub mod metrics;
pub mod msg;
pub mod protocol;
pub mod queue;
pub mod server;
pub mod session;
pub mod shard;
pub mod stats;
#[cfg(test)]
mod test_rng;
pub mod token;
pub mod wake;
