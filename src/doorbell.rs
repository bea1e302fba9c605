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
//! The unit test `no_interleaving_of_ring_and_arm_loses_a_wakeup` plays every order of
//! the two sides' steps and checks the loop either sees the event or finds a byte.

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

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// One step of the loop's wait (as `io_loop`'s event pump does it) or of the core's
    /// send-then-ring.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Step {
        /// Loop: drain the channel (finds the event if it was already sent).
        Drain,
        /// Loop: set `armed`.
        Arm,
        /// Loop: re-check the channel after arming (finds the event if sent).
        Recheck,
        /// Core: send the event.
        Send,
        /// Core: ring the bell.
        Ring,
    }

    /// Every order of the loop's `Drain, Arm, Recheck` and the core's `Send, Ring` that
    /// keeps each side's own order: 5! / (3! 2!) = 10 interleavings.
    fn interleavings() -> Vec<Vec<Step>> {
        let (lp, core) = (
            [Step::Drain, Step::Arm, Step::Recheck],
            [Step::Send, Step::Ring],
        );
        let mut all = Vec::new();
        for first_core in 0..5 {
            for second_core in first_core + 1..5 {
                let (mut l, mut c) = (lp.iter(), core.iter());
                let order = (0..5)
                    .map(|i| {
                        let from_core = i == first_core || i == second_core;
                        *if from_core { c.next() } else { l.next() }.unwrap()
                    })
                    .collect();
                all.push(order);
            }
        }
        all
    }

    /// Runs one interleaving; true when the loop either saw the event before sleeping or
    /// finds a byte on the bell when it sleeps (it wakes). False = a lost wakeup: the
    /// event waits in the channel while the loop sleeps with nothing to wake it.
    fn loop_wakes(order: &[Step]) -> bool {
        let (bell, bell_rx) = pair().unwrap();
        let (armed, mut rx) = bell_rx.into_parts();
        let (tx, events) = crossbeam_channel::unbounded::<u32>();
        let mut seen = false;
        for step in order {
            match step {
                Step::Drain => seen |= events.try_recv().is_ok(),
                Step::Arm => arm(&armed),
                Step::Recheck => {
                    if !events.is_empty() {
                        disarm(&armed);
                        seen = true;
                    }
                }
                Step::Send => tx.send(7).unwrap(),
                Step::Ring => bell.ring(),
            }
        }
        // The loop sleeps now unless it saw the event: does the bell wake it?
        seen || rx.read(&mut [0u8; 8]).is_ok_and(|n| n > 0)
    }

    #[test]
    fn no_interleaving_of_ring_and_arm_loses_a_wakeup() {
        let orders = interleavings();
        assert_eq!(orders.len(), 10);
        // The order that loses a wakeup if `ring` ignores the flag or `arm` does not set
        // it: the loop re-checks an empty channel, then the core sends and rings.
        let racy = [
            Step::Drain,
            Step::Arm,
            Step::Recheck,
            Step::Send,
            Step::Ring,
        ];
        assert!(orders.iter().any(|o| o[..] == racy[..]));
        for order in &orders {
            assert!(loop_wakes(order), "lost wakeup in order {order:?}");
        }
    }

    #[test]
    fn a_busy_loop_costs_the_core_no_write() {
        let (bell, bell_rx) = pair().unwrap();
        let (armed, mut rx) = bell_rx.into_parts();
        bell.ring();
        assert!(
            rx.read(&mut [0u8; 8]).is_err(),
            "rang a loop that is not asleep"
        );
        arm(&armed);
        bell.ring();
        bell.ring();
        // Armed once: one byte, the second ring finds the flag already off.
        assert_eq!(rx.read(&mut [0u8; 8]).unwrap(), 1);
    }
}
