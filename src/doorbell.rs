//! The doorbell that wakes an io loop when the queue core has sent it events.
//!
//! A loop must never block on a channel, so each core -> loop channel is paired with a
//! socketpair the loop reads through its runtime (io_uring or epoll alike). The core
//! rings once per flush, not per message, and only when the loop said it is going to
//! sleep (`armed`), so a busy loop costs the core no syscall at all.
//!
//! Invariants (lost-wakeup freedom): the loop sets `armed` and then re-checks its
//! channel before awaiting the bell; the core sends first and then swaps `armed` off,
//! writing a byte only if it was on. Both use SeqCst, so one of the two sees the other.

use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The core's end: rings the loop.
#[derive(Debug)]
pub struct Bell {
    /// Set by the loop before it sleeps.
    armed: Arc<AtomicBool>,
    /// Non-blocking write end of the socketpair.
    tx: UnixStream,
}

/// The loop's end: what it awaits.
#[derive(Debug)]
pub struct BellRx {
    /// Shared with the [`Bell`].
    armed: Arc<AtomicBool>,
    /// Read end, handed to the loop's runtime with [`BellRx::into_parts`].
    rx: UnixStream,
}

/// A connected bell pair.
pub fn pair() -> std::io::Result<(Bell, BellRx)> {
    let (tx, rx) = UnixStream::pair()?;
    tx.set_nonblocking(true)?;
    rx.set_nonblocking(true)?;
    let armed = Arc::new(AtomicBool::new(false));
    Ok((
        Bell {
            armed: armed.clone(),
            tx,
        },
        BellRx { armed, rx },
    ))
}

impl Bell {
    /// A second handle ringing the same loop (for the shutdown path).
    pub fn try_clone(&self) -> std::io::Result<Bell> {
        Ok(Bell {
            armed: self.armed.clone(),
            tx: self.tx.try_clone()?,
        })
    }

    /// Wakes the loop if it is asleep. Call after sending, once per batch.
    pub fn ring(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            // WouldBlock means the socket buffer is full of unread rings: the loop is
            // certain to wake, nothing is lost.
            match (&self.tx).write(&[1]) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => tracing::error!("doorbell write failed: {e}"),
            }
        }
    }
}

impl BellRx {
    /// The armed flag and the read end (wrapped by the loop in its runtime's socket type).
    pub fn into_parts(self) -> (Arc<AtomicBool>, UnixStream) {
        (self.armed, self.rx)
    }
}

/// Loop side: mark "about to sleep". The caller must re-check its channel afterwards.
pub fn arm(armed: &AtomicBool) {
    armed.store(true, Ordering::SeqCst);
}

/// Loop side: "awake after all" (found work after arming).
pub fn disarm(armed: &AtomicBool) {
    armed.store(false, Ordering::SeqCst);
}
