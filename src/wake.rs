//! A single-threaded wake-up flag for tasks of one io loop (no atomics, no locks).
//!
//! Invariants: `notify` before `wait` is not lost (the flag stays set until a `wait`
//! consumes it); one waiter at a time.

use std::cell::Cell;
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// Wakes one task of the same loop.
#[derive(Default)]
pub struct Notify {
    /// Set by `notify`, consumed by `wait`.
    flag: Cell<bool>,
    /// The waiting task.
    waker: Cell<Option<Waker>>,
}

impl Notify {
    /// Sets the flag and wakes the waiter, if any.
    pub fn notify(&self) {
        self.flag.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Resolves once the flag is set, consuming it.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.flag.replace(false) {
                return Poll::Ready(());
            }
            let waker = match self.waker.take() {
                Some(w) if w.will_wake(cx.waker()) => w,
                _ => cx.waker().clone(),
            };
            self.waker.set(Some(waker));
            Poll::Pending
        })
        .await
    }
}
