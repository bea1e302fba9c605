//! Queue state and the thread that owns it.
//!
//! - [`rank`]: one lane, arrival order with O(log n) exact rank;
//! - [`pacing`]: automatic admission (rate, capacity, pause) and the measured rate;
//! - [`state`]: the state machine over serializable [`state::Op`]s;
//! - [`core`]: the queue core thread: drains, applies, flushes batches to the loops.

pub mod core;
pub mod pacing;
pub mod rank;
pub mod state;
