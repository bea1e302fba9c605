//! Queue state and the thread that owns it.
//!
//! - [`rank`]: one lane, arrival order with O(log n) exact rank;
//! - [`pacing`]: automatic admission (rate, capacity, pause) and the measured rate;
//! - [`state`]: the state machine over serializable [`state::Op`]s;
//! - [`core`]: the queue core thread: drains, applies, flushes batches to the loops;
//! - [`journal`]: the core's bounded per-player journal (`GET /v1/users/{user_id}`);
//! - [`durability`]: recovery at start, fsync policy, snapshots, degraded status, over
//!   [`durability::wal`] (the append-only log of ops) and [`durability::snapshot`] (the whole state, atomically).

pub mod core;
pub mod durability;
pub mod journal;
pub mod pacing;
pub mod rank;
pub mod state;
