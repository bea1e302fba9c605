//! Queue state and the thread that owns it. Where each queue behaviour of
//! `docs/protocol.md` lives (the state machine decides, the core turns messages into
//! ops and delivers the results):
//!
//! - **login / join, resume, "newest connection wins"** (`duplicate_login`): decided in
//!   `state.rs` (`QueueState::join`); the message and its answer in `core/ops.rs` and
//!   `core/flush.rs` (`answer_join`);
//! - **leave**: a place in `state.rs` (`leave`), an unused admission in
//!   `state/grants.rs` (`leave_grant`);
//! - **positions, priority lane, exact rank**: [`rank`] (lanes), `state/queue.rs`
//!   (`Queue::position`); rank batches and the incremental **resync** in
//!   `core/flush.rs`;
//! - **admission** (head first, grants, token expiry, `POST /v1/tokens/verify`
//!   consuming the `jti`): `state/grants.rs`; `POST .../admit` in `core/control.rs`;
//! - **rate, capacity, pause** (automatic admission): [`pacing`] (the pacer and the
//!   measured rate behind `eta_secs`); the ops in `state.rs` (`set_pacing`, `tick`);
//! - **reconnect grace** (disconnect, grace expiry, restart): `state/grace.rs`;
//! - **auto-created queues, `max_queues`, queue expiry**: `state/table.rs`; the core
//!   applies the expiries in `core.rs` (`expire_queues`);
//! - **operator removal** (`DELETE .../players/{user_id}`): `state.rs` (`remove`) and
//!   `core/control.rs`;
//! - **`/v1/stats`, `GET /v1/users/{user_id}`**: `core/control.rs`; the per-player
//!   **journal** itself: [`journal`];
//! - **durability** (write-ahead log, snapshots, recovery, degraded mode):
//!   [`durability`] (`wal.rs`, `snapshot.rs`, `shared.rs`); the commit before any
//!   answer and degraded mode in the core: `core.rs`;
//! - **delivery to the io loops** (bounded channels, backlogs, doorbells):
//!   `core/backlog.rs`;
//! - ops and snapshots as bytes: `state/codec.rs` (`codec/bytes.rs`,
//!   `codec/snapshot.rs`).
//!
//! Modules: [`rank`] (one lane, O(log n) exact rank), [`pacing`], [`state`] (the state
//! machine over serializable [`state::Op`]s), [`core`] (the queue core thread),
//! [`journal`] (the core's bounded per-player journal), [`durability`].
//! Imports go one way: `core` -> `durability` -> `state` -> `pacing`, `rank`; `journal`
//! imports none of them.

pub mod core;
pub mod durability;
pub mod journal;
pub mod pacing;
pub mod rank;
pub mod state;
