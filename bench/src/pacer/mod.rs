//! Sub-millisecond send pacing on a client thread: [`until`] waits for an intended
//! send time with tens of microseconds of lateness instead of monoio's timer, which
//! rounds every sleep up to a whole millisecond (and so made `steady` report ~1 ms of
//! its own lateness as server latency).
//!
//! How: one pacer per client thread (thread-local) keeps the waiting tasks in a heap
//! ordered by intended time, and one driver task wakes them. The driver arms a
//! timerfd (a kernel hrtimer, ns resolution) for the earliest deadline and reads it
//! *through the runtime* (an io_uring readv, or epoll readiness under the legacy
//! driver), so the thread parks in the kernel like any idle monoio thread and is woken
//! at the deadline; a waiter registering an earlier deadline re-arms the timer, and the
//! pending read then completes at the new time (no cancellation needed).
//!
//! Why not a spin: on this shared 2-core box a thread that spins accumulates CPU time
//! and the scheduler then preempts it for whole time slices (10s of ms of lag in a
//! test: worse than the 1 ms rounding it replaced), and it takes a CPU from the server
//! under test. A timerfd sleeper costs one `timerfd_settime` and one read completion
//! per distinct deadline (at 2,000 sends/s: ~4,000 syscalls or ring entries a second,
//! a few % of a CPU) and wakes with the scheduler's preference for sleepers. Where no
//! timerfd can be made, the driver falls back to a coarse monoio sleep (to [`COARSE`]
//! before the deadline) and a yield loop over the rest: precise on an idle machine,
//! one CPU per client thread when sends are closer than `COARSE`. It yields to the
//! *back* of the run queue through a "kicker" task ([`YieldBack`]), since monoio puts
//! a task that wakes itself at the front, where it would starve every other task.
//!
//! Invariants:
//! - a waiter is never woken before its time (`until` rechecks the clock when polled);
//! - waiters due at the same turn are woken in deadline order;
//! - one driver per runtime: [`reset`] runs before each runtime on a thread;
//! - the timerfd is armed for the earliest deadline, or earlier: never later (a later
//!   registration leaves it alone; an earlier one re-arms it);
//! - in the spin fallback, monoio timers (timeouts, coarse sleeps of other tasks) fire
//!   late while the driver spins: nothing measured may depend on them.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Within this of the next deadline the driver spins instead of sleeping: monoio's
/// timer fires up to 1 ms late, so a coarse sleep must end at least that early; the
/// rest is margin for a busy thread.
pub const COARSE: Duration = Duration::from_millis(2);

/// One task waiting for its send time.
struct Waiter {
    /// Intended time.
    at: Instant,
    /// Registration order (ties at the same instant wake first come first).
    order: u64,
    /// The waiting task.
    waker: Waker,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

/// The waiting tasks of one thread, earliest first.
#[derive(Default)]
pub struct Queue {
    /// Min-heap by (intended time, order).
    heap: BinaryHeap<Reverse<Waiter>>,
    /// Next registration order.
    next_order: u64,
}

impl Queue {
    /// Adds a waiter.
    pub fn push(&mut self, at: Instant, waker: Waker) {
        self.next_order += 1;
        self.heap.push(Reverse(Waiter {
            at,
            order: self.next_order,
            waker,
        }));
    }

    /// The earliest intended time waiting.
    pub fn next_at(&self) -> Option<Instant> {
        self.heap.peek().map(|w| w.0.at)
    }

    /// Removes every waiter due at `now`, earliest first.
    pub fn pop_due(&mut self, now: Instant) -> Vec<Waker> {
        let mut due = Vec::new();
        while self.heap.peek().is_some_and(|w| w.0.at <= now) {
            if let Some(Reverse(w)) = self.heap.pop() {
                due.push(w.waker);
            }
        }
        due
    }

    /// Waiters.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// No waiter.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// What the driver does next, given the earliest deadline and the clock.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nobody waits: park until someone registers.
    Idle,
    /// Wake the due waiters now.
    Wake,
    /// Sleep on monoio's timer for this long (or until an earlier waiter registers).
    Sleep(Duration),
    /// Yield once and look again.
    Spin,
}

/// The driver's decision (pure, for tests).
pub fn step(next_at: Option<Instant>, now: Instant) -> Step {
    match next_at {
        None => Step::Idle,
        Some(at) if at <= now => Step::Wake,
        Some(at) if at - now > COARSE => Step::Sleep(at - now - COARSE),
        Some(_) => Step::Spin,
    }
}

/// One thread's pacer.
struct Pacer {
    /// Waiting tasks.
    queue: RefCell<Queue>,
    /// The driver, when it is parked waiting for a new (or earlier) waiter.
    bell: Cell<Option<Waker>>,
    /// The driver task has been spawned on this thread.
    driving: Cell<bool>,
    /// The driver, yielded, waiting for the kicker.
    yielder: Cell<Option<Waker>>,
    /// The kicker task, waiting for the driver to yield.
    kicker: Cell<Option<Waker>>,
    /// The runtime is monoio's legacy (epoll) driver: the timerfd must be non-blocking.
    legacy: bool,
    /// The timerfd the driver reads (-1: none yet, or the spin fallback).
    timer_fd: Cell<i32>,
    /// When the timerfd is armed to expire (None: disarmed or expired and read).
    armed: Cell<Option<Instant>>,
}

impl Pacer {
    /// A pacer for a runtime on monoio's legacy driver (`legacy`) or io_uring.
    fn new(legacy: bool) -> Pacer {
        Pacer {
            queue: RefCell::default(),
            bell: Cell::default(),
            driving: Cell::default(),
            yielder: Cell::default(),
            kicker: Cell::default(),
            legacy,
            timer_fd: Cell::new(-1),
            armed: Cell::default(),
        }
    }

    /// Arms the timerfd to expire at `at` (at least 1 ns from now: 0 would disarm it).
    fn arm(&self, at: Instant) {
        let fd = self.timer_fd.get();
        if fd < 0 {
            return;
        }
        let d = at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: plain syscall on the pacer's own descriptor with a valid spec.
        unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) };
        self.armed.set(Some(at));
    }
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer::new(false)
    }
}

thread_local! {
    /// The pacer of this client thread (of its current runtime: see [`reset`]).
    static PACER: RefCell<Rc<Pacer>> = RefCell::default();
}

/// Gives this thread a fresh pacer. Called before each runtime starts on a thread
/// ([`crate::client::block_on`]): a driver task belongs to the runtime that spawned it,
/// and a runtime that ended takes its driver with it.
/// `legacy`: the runtime runs monoio's legacy (epoll) driver, not io_uring.
pub fn reset(legacy: bool) {
    PACER.with(|p| *p.borrow_mut() = Rc::new(Pacer::new(legacy)));
}

/// Waits until `at` with sub-millisecond lateness (returns at once when it has passed).
/// Must run inside a monoio runtime (the first call spawns the thread's driver).
pub async fn until(at: Instant) {
    if Instant::now() >= at {
        return;
    }
    let pacer = PACER.with(|p| p.borrow().clone());
    if !pacer.driving.replace(true) {
        monoio::spawn(drive(pacer.clone()));
        monoio::spawn(kick(pacer.clone()));
    }
    Until {
        at,
        pacer,
        registered: false,
    }
    .await
}

/// The future of [`until`].
struct Until {
    /// Intended time.
    at: Instant,
    /// This thread's pacer.
    pacer: Rc<Pacer>,
    /// Already in the queue.
    registered: bool,
}

impl Future for Until {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            return Poll::Ready(());
        }
        if !self.registered {
            self.registered = true;
            self.pacer
                .queue
                .borrow_mut()
                .push(self.at, cx.waker().clone());
            if let Some(bell) = self.pacer.bell.take() {
                bell.wake();
            }
        }
        Poll::Pending
    }
}

/// Yields to the *back* of the runtime's run queue. A task that wakes itself while
/// running goes to the front in monoio (and would run again at once, starving every
/// other task until it stops spinning), so the driver hands its waker to the kicker
/// task, which wakes it from outside: the driver then queues behind everything that
/// became ready meanwhile (writers to resume, readers whose data arrived).
struct YieldBack<'a> {
    /// This thread's pacer (holds the two wakers).
    pacer: &'a Pacer,
    /// Already handed over.
    yielded: bool,
}

impl Future for YieldBack<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        self.pacer.yielder.set(Some(cx.waker().clone()));
        if let Some(k) = self.pacer.kicker.take() {
            k.wake();
        }
        Poll::Pending
    }
}

/// The kicker: wakes the yielded driver, so it goes to the back of the queue.
async fn kick(pacer: Rc<Pacer>) {
    std::future::poll_fn(|cx| {
        if let Some(w) = pacer.yielder.take() {
            w.wake();
        }
        pacer.kicker.set(Some(cx.waker().clone()));
        Poll::<()>::Pending
    })
    .await
}

/// The driver: the timerfd when one can be made, else the coarse sleep and spin.
async fn drive(pacer: Rc<Pacer>) {
    match timer_stream(&pacer) {
        Some(timer) => drive_timerfd(&pacer, timer).await,
        None => drive_spin(&pacer).await,
    }
}

/// A timerfd as a monoio stream (so its reads go through the runtime's driver).
fn timer_stream(pacer: &Pacer) -> Option<monoio::net::UnixStream> {
    use std::os::fd::FromRawFd;
    let flags = libc::TFD_CLOEXEC | if pacer.legacy { libc::TFD_NONBLOCK } else { 0 };
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, flags) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else. It is not a socket, but
    // monoio only registers it and reads it with readv (read(2) semantics).
    let std = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    let stream = monoio::net::UnixStream::from_std(std).ok()?;
    pacer.timer_fd.set(fd);
    Some(stream)
}

/// Sleeps on the timerfd until the earliest deadline, wakes the due waiters, repeats.
async fn drive_timerfd(pacer: &Pacer, mut timer: monoio::net::UnixStream) {
    use monoio::io::AsyncReadRent;
    let mut buf = monoio::buf::VecBuf::from(vec![vec![0u8; 8]]);
    loop {
        let next = pacer.queue.borrow().next_at();
        match next {
            None => {
                pacer.armed.set(None);
                ring_or(pacer, None).await;
            }
            Some(at) if at <= Instant::now() => {
                let due = pacer.queue.borrow_mut().pop_due(Instant::now());
                due.into_iter().for_each(Waker::wake);
            }
            Some(at) => {
                pacer.arm(at);
                let (res, b) = timer.readv(buf).await;
                buf = b;
                pacer.armed.set(None);
                match res {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        // The descriptor cannot be read through this runtime after
                        // all: pace by spinning instead.
                        pacer.timer_fd.set(-1);
                        return drive_spin(pacer).await;
                    }
                }
            }
        }
    }
}

/// The fallback: coarse monoio sleeps, a yield loop over the last [`COARSE`].
async fn drive_spin(pacer: &Pacer) {
    loop {
        let next = pacer.queue.borrow().next_at();
        match step(next, Instant::now()) {
            Step::Wake => {
                let due = pacer.queue.borrow_mut().pop_due(Instant::now());
                due.into_iter().for_each(Waker::wake);
                yield_back(pacer).await;
            }
            Step::Spin => yield_back(pacer).await,
            Step::Idle => ring_or(pacer, None).await,
            Step::Sleep(d) => ring_or(pacer, Some(Box::pin(monoio::time::sleep(d)))).await,
        }
    }
}

/// See [`YieldBack`].
fn yield_back(pacer: &Pacer) -> YieldBack<'_> {
    YieldBack {
        pacer,
        yielded: false,
    }
}

/// Waits for a new registration (the bell), or for `sleep` to end.
async fn ring_or(pacer: &Pacer, mut sleep: Option<Pin<Box<monoio::time::Sleep>>>) {
    let mut first = true;
    std::future::poll_fn(|cx| {
        if let Some(s) = sleep.as_mut() {
            if s.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        if first {
            first = false;
            pacer.bell.set(Some(cx.waker().clone()));
            return Poll::Pending;
        }
        // Polled again: either the sleep woke us (handled above) or the bell rang
        // (it takes the waker out when it rings).
        match pacer.bell.take() {
            Some(w) => {
                pacer.bell.set(Some(w));
                Poll::Pending
            }
            None => Poll::Ready(()),
        }
    })
    .await;
    pacer.bell.set(None);
}

#[cfg(test)]
mod tests;
