//! Tests of the pacer: the waiting queue and the driver's decisions as logic, and
//! `until` under both monoio drivers (order and completeness, never timing).

use super::*;
use std::task::Wake;

/// A waker that records its id when woken.
struct SendNote(u64, std::sync::Arc<std::sync::Mutex<Vec<u64>>>);
impl Wake for SendNote {
    fn wake(self: std::sync::Arc<Self>) {
        self.1.lock().unwrap().push(self.0);
    }
}

#[test]
fn queue_wakes_due_waiters_in_deadline_order_and_keeps_the_rest() {
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let waker = |id| Waker::from(std::sync::Arc::new(SendNote(id, log.clone())));
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut q = Queue::default();
    q.push(t0 + ms(3), waker(3));
    q.push(t0 + ms(1), waker(1));
    q.push(t0 + ms(2), waker(2));
    q.push(t0 + ms(1), waker(11)); // same time, registered later
    assert_eq!(q.next_at(), Some(t0 + ms(1)));
    assert!(q.pop_due(t0).is_empty());
    q.pop_due(t0 + ms(2)).into_iter().for_each(Waker::wake);
    assert_eq!(*log.lock().unwrap(), vec![1, 11, 2]);
    assert_eq!(q.len(), 1);
    assert_eq!(q.next_at(), Some(t0 + ms(3)));
}

#[test]
fn driver_sleeps_far_from_a_deadline_and_spins_near_it() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    assert_eq!(step(None, t0), Step::Idle);
    assert_eq!(step(Some(t0), t0), Step::Wake);
    assert_eq!(step(Some(t0 + ms(10)), t0), Step::Sleep(ms(10) - COARSE));
    assert_eq!(step(Some(t0 + COARSE), t0), Step::Spin);
    assert_eq!(step(Some(t0 + Duration::from_micros(50)), t0), Step::Spin);
}

/// 50 tasks with deadlines 0..5 ms out, each checks the clock when it resumes:
/// how many woke before their time (order and completeness only, no timing).
async fn fifty_waiters() -> u32 {
    let t0 = Instant::now();
    let early = Rc::new(Cell::new(0u32));
    let tasks: Vec<_> = (0..50u64)
        .map(|i| {
            let at = t0 + Duration::from_micros(100 * i);
            let early = early.clone();
            monoio::spawn(async move {
                until(at).await;
                if Instant::now() < at {
                    early.set(early.get() + 1);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await;
    }
    early.get()
}

#[test]
fn until_works_under_the_legacy_epoll_driver_too() {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("legacy runtime");
    reset(true);
    let (early, timerfd) = rt.block_on(async {
        let early = fifty_waiters().await;
        (early, PACER.with(|p| p.borrow().timer_fd.get()))
    });
    assert_eq!(early, 0);
    assert!(timerfd >= 0, "the legacy driver fell back to spinning");
}

#[test]
fn until_never_returns_early_and_wakes_everyone() {
    let (early, timerfd) = crate::client::block_on(async {
        let early = fifty_waiters().await;
        (early, PACER.with(|p| p.borrow().timer_fd.get()))
    });
    assert_eq!(early, 0);
    assert!(timerfd >= 0, "no timerfd: the pacer fell back to spinning");
}
