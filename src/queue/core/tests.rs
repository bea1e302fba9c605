//! Tests of the queue core: a `Core` driven through its inbox, loops as channel ends.

use super::*;
use crate::config::Config;
use crate::doorbell;
use crate::msg::{ControlReq, JoinOk, KickReason, SessionId};
use crate::queue::state::Limits;

/// A core with one loop whose channel holds `capacity` events; the loop's end.
fn core_with_loop(capacity: usize) -> (Core, Receiver<LoopEvent>, doorbell::BellRx) {
    let (core, mut rxs, mut bells) = core_with_loops(1, capacity);
    (core, rxs.remove(0), bells.remove(0))
}

/// A core with `n` loops whose channels hold `capacity` events each; the loops' ends.
fn core_with_loops(
    n: usize,
    capacity: usize,
) -> (Core, Vec<Receiver<LoopEvent>>, Vec<doorbell::BellRx>) {
    let config = Config::default();
    let state = QueueState::new(Limits::from_config(&config), &[], 1);
    let (signer, _) = TokenSigner::from_config(&config.tokens).expect("signer");
    let (_inbox_tx, inbox) = crossbeam_channel::bounded(16);
    let (mut links, mut rxs, mut bells) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let (bell, bell_rx) = doorbell::pair().expect("doorbell");
        links.push(LoopLink { tx, bell });
        rxs.push(rx);
        bells.push(bell_rx);
    }
    let timing = CoreTiming {
        tick: Duration::from_millis(10),
        resync: Duration::from_secs(10),
    };
    let core = Core::new(
        state,
        Arc::new(signer),
        inbox,
        links,
        timing,
        Arc::new(AtomicBool::new(false)),
    );
    (core, rxs, bells)
}

fn kick(session: SessionId) -> LoopEvent {
    LoopEvent::Kick {
        session,
        reason: KickReason::DuplicateLogin,
    }
}

fn session_of(event: LoopEvent) -> SessionId {
    match event {
        LoopEvent::Kick { session, .. } => session,
        other => panic!("unexpected {other:?}"),
    }
}

/// The "ConsumeJti + resume in the same round answers INTERNAL" race: a player
/// resumes its admission and the token is used in the same round. The login answer
/// is the admission it resumed, not `Gone` (INTERNAL).
#[test]
fn a_resume_and_a_token_use_in_one_round_answer_admitted() {
    let (mut core, rx, _bell) = core_with_loop(64);
    core.state = QueueState::new(
        Limits::from_config(&Config::default()),
        &[("q".into(), 100, 0.0)],
        1,
    );
    let now = unix_ms();
    let join = |session| CoreMsg::Join {
        conn: ConnRef {
            loop_id: 0,
            session,
        },
        seq: 1,
        user: 5,
        queue: "q".into(),
        prio: false,
        peer: "127.0.0.1:1".parse().expect("addr"),
        claim: None,
    };
    let answer = |rx: &Receiver<LoopEvent>| -> Result<JoinOk, JoinError> {
        rx.try_iter()
            .find_map(|e| match e {
                LoopEvent::Joined { result, .. } => Some(result),
                _ => None,
            })
            .expect("a login answer")
    };
    core.handle(join(1), now);
    core.flush(now, false);
    assert!(answer(&rx).expect("joined").admitted.is_none());
    let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
    let admit = ControlReq::Admit {
        queue: "q".into(),
        count: 1,
    };
    core.handle(CoreMsg::Control(admit, reply_tx.clone()), now);
    core.flush(now, false);
    let grant = core.state.grant(0, 5).expect("admitted");
    assert!(matches!(reply_rx.try_recv(), Ok(ControlReply::Admitted(_))));
    let _ = rx.try_iter().count();
    // One round: the player logs in again, and its token is used.
    core.handle(join(2), now);
    let consume = ControlReq::ConsumeJti {
        jti: core.state.jti_text(grant.jti),
        exp: grant.exp,
    };
    core.handle(CoreMsg::Control(consume, reply_tx), now);
    core.flush(now, false);
    assert!(matches!(
        reply_rx.try_recv(),
        Ok(ControlReply::Consumed(true))
    ));
    let resumed = answer(&rx).expect("not INTERNAL");
    assert!(resumed.resumed);
    assert!(resumed.admitted.is_some());
}

/// A full channel never blocks the core: the rest waits in order, and once anything
/// waits, later events go behind it even when the channel has room again.
#[test]
fn a_full_loop_channel_backs_up_in_order_without_blocking() {
    let (mut core, rx, _bell) = core_with_loop(2);
    for s in 0..10 {
        core.send(0, kick(s));
    }
    assert_eq!(rx.len(), 2);
    assert_eq!(core.backlog[0].len(), 8);
    let mut seen: Vec<SessionId> = rx.try_iter().map(session_of).collect();
    core.send(0, kick(10));
    assert!(rx.is_empty(), "a new event must not pass the backlog");
    while core.backlogged() {
        core.drain_backlogs();
        seen.extend(rx.try_iter().map(session_of));
    }
    assert_eq!(seen, (0..=10).collect::<Vec<_>>());
}

/// Past `BACKLOG_MAX` the core waits for the loop, ringing it first: a loop that
/// only reads after its doorbell (as the io loops do) still takes everything.
#[test]
fn a_backlog_over_its_bound_waits_for_a_loop_that_sleeps_on_its_bell() {
    use std::io::Read;
    let (mut core, rx, bell) = core_with_loop(16);
    let total = BACKLOG_MAX as u64 + 100;
    let reader = std::thread::spawn(move || {
        let (armed, mut bell) = bell.into_parts();
        bell.set_nonblocking(false).expect("blocking bell");
        let mut next = 0;
        let mut buf = [0u8; 64];
        while next < total {
            while let Ok(event) = rx.try_recv() {
                assert_eq!(session_of(event), next);
                next += 1;
            }
            doorbell::arm(&armed);
            if rx.is_empty() && next < total {
                let _rings = bell.read(&mut buf).expect("bell read");
            } else {
                doorbell::disarm(&armed);
            }
        }
    });
    for s in 0..total {
        core.send(0, kick(s));
        assert!(core.backlog[0].len() <= BACKLOG_MAX);
    }
    while core.backlogged() {
        core.flush(unix_ms(), false);
        std::thread::yield_now();
    }
    core.flush(unix_ms(), false);
    reader.join().expect("loop got every event in order");
}

/// The core's round time at a million players, resync rounds included: 300 rounds
/// of churn (50 joins, 50 leaves, a tick), a resync started every 100 rounds, the
/// loops' channels drained between rounds outside the timing. A measurement, not a
/// check (no timing assert); numbers in `bench/results/resync-2026-11-26.md`.
#[test]
#[ignore = "measurement: cargo test --release --lib resync_round_times -- --ignored --nocapture"]
fn resync_round_times_at_a_million_players() {
    const PLAYERS: u64 = 1_000_000;
    const LOOPS: u64 = 4;
    const ROUNDS: u64 = 300;
    const RESYNC_EVERY: u64 = 100;
    const CHURN: u64 = 50;
    let (mut core, rxs, _bells) = core_with_loops(LOOPS as usize, 1 << 16);
    core.state = QueueState::new(
        Limits::from_config(&Config::default()),
        &[("q".into(), 4 * PLAYERS, 0.0)],
        1,
    );
    let now = unix_ms();
    let conn = |user: u64| ConnRef {
        loop_id: (user % LOOPS) as _,
        session: user,
    };
    let join = |user: u64| Op::Join {
        queue: "q".into(),
        user,
        prio: user.is_multiple_of(10),
        conn: conn(user),
    };
    for user in 0..PLAYERS {
        core.apply(&join(user), now);
    }
    core.flush(now, false);
    let drain = |rxs: &[Receiver<LoopEvent>]| {
        for rx in rxs {
            while rx.try_recv().is_ok() {}
        }
    };
    drain(&rxs);
    let mut rounds = Vec::new();
    let mut resync_rounds = Vec::new();
    let mut slice_rounds = Vec::new();
    let mut resync_was_active = false;
    let mut next_user = PLAYERS;
    for round in 0..ROUNDS {
        let started = Instant::now();
        for i in 0..CHURN {
            core.apply(&join(next_user), now);
            next_user += 1;
            let gone = (round * CHURN + i) * 7919 % PLAYERS;
            let leave = Op::Leave {
                queue: 0,
                user: gone,
                conn: conn(gone),
            };
            core.apply(&leave, now);
        }
        core.apply(&Op::Tick, now);
        let resync = round.is_multiple_of(RESYNC_EVERY);
        core.commit(resync || core.resync.active);
        core.flush(now, resync);
        let took = started.elapsed();
        rounds.push(took);
        if resync {
            resync_rounds.push(took);
        }
        if resync || core.resync.active || resync_was_active {
            slice_rounds.push(took);
        }
        resync_was_active = core.resync.active;
        drain(&rxs);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut sorted = rounds.clone();
    sorted.sort_unstable();
    let at = |p: f64| ms(sorted[((sorted.len() - 1) as f64 * p).round() as usize]);
    println!(
        "rounds={} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} over_5ms={} resync_start_rounds_ms={:?}",
        rounds.len(),
        at(0.5),
        at(0.99),
        ms(*sorted.last().expect("rounds")),
        rounds.iter().filter(|&&d| ms(d) > 5.0).count(),
        resync_rounds
            .iter()
            .map(|&d| (ms(d) * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>(),
    );
    slice_rounds.sort_unstable();
    println!(
        "slice_size={} rounds_with_a_resync_slice={} their_p50_ms={:.3} their_max_ms={:.3}",
        core.resync_slice,
        slice_rounds.len(),
        ms(slice_rounds[slice_rounds.len() / 2]),
        ms(*slice_rounds.last().expect("slices")),
    );
}

/// What an io loop keeps of its waiting sessions, for the resync tests: applies
/// rank batches and resync lists exactly as `io_loop.rs` does (by session id).
#[derive(Default)]
struct FakeLoop {
    /// Session -> (queue, key, position).
    sessions: std::collections::HashMap<SessionId, (QueueId, PlaceKey, u64)>,
}

impl FakeLoop {
    fn take(&mut self, rx: &Receiver<LoopEvent>) {
        for event in rx.try_iter() {
            match event {
                LoopEvent::Ranks(batch) => {
                    for (queue, key, position) in self.sessions.values_mut() {
                        if let Some(d) = batch.queues.iter().find(|d| d.queue == *queue) {
                            *position = position.saturating_add_signed(d.shift(*key));
                        }
                    }
                }
                LoopEvent::Resync(list) => {
                    for (session, position) in list {
                        if let Some(s) = self.sessions.get_mut(&session) {
                            s.2 = position;
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// The drift the resync exists for: every loop's positions are corrupted, players
/// join, leave and are admitted between slices, and a resync cycle walks three
/// slots a round over a queue with both lanes, an empty queue and a queue of
/// players in grace. After the cycle every loop holds the exact positions.
#[test]
fn an_incremental_resync_leaves_every_loop_at_the_exact_positions() {
    const LOOPS: usize = 2;
    let (mut core, rxs, _bells) = core_with_loops(LOOPS, 1 << 12);
    core.state = QueueState::new(
        Limits::from_config(&Config::default()),
        &[
            ("a".into(), 1000, 0.0),
            ("b".into(), 1000, 0.0),
            ("c".into(), 1000, 0.0),
        ],
        1,
    );
    core.resync_slice = 3;
    let now = unix_ms();
    let conn = |user: u64| ConnRef {
        loop_id: (user % LOOPS as u64) as _,
        session: user,
    };
    let queue_of = |user: u64| if user.is_multiple_of(3) { "c" } else { "a" };
    let join = |user: u64| Op::Join {
        queue: queue_of(user).into(),
        user,
        prio: user.is_multiple_of(4),
        conn: conn(user),
    };
    let mut loops: Vec<FakeLoop> = (0..LOOPS).map(|_| FakeLoop::default()).collect();
    // The loop side learns a new session with its exact position at flush time,
    // behind that round's batch (as a join answer is).
    let learn = |core: &Core, loops: &mut [FakeLoop], user: u64, drift: u64| {
        let queue = if queue_of(user) == "c" { 2 } else { 0 };
        if let Some(place) = core.state.place(queue, user) {
            let position = core.state.queues()[queue as usize].position(place.key);
            loops[conn(user).loop_id as usize]
                .sessions
                .insert(user, (queue, place.key, position + drift));
        }
    };
    for user in 0..60 {
        core.apply(&join(user), now);
    }
    // Players 100.. are in grace: no connection, nothing to resync.
    for user in 100..105 {
        core.apply(&join(user), now);
        let disconnect = Op::Disconnect {
            queue: 0,
            user,
            conn: conn(user),
        };
        core.apply(&disconnect, now);
    }
    core.flush(now, false);
    for (l, rx) in loops.iter_mut().zip(&rxs) {
        l.take(rx);
    }
    for user in 0..60 {
        // Drift: every loop's bookkeeping is off, by a different amount each.
        learn(&core, &mut loops, user, 1 + user % 7);
    }
    let mut next_user = 1000;
    let mut rounds = 0;
    let mut resync = true;
    while resync || core.resync.active {
        // Churn between slices: a leave near the head, a join at the tail and one
        // in the priority lane, an admission.
        let gone = rounds * 5 % 60;
        let leave = Op::Leave {
            queue: if queue_of(gone) == "c" { 2 } else { 0 },
            user: gone,
            conn: conn(gone),
        };
        core.apply(&leave, now);
        let joined = [next_user, next_user + 1];
        next_user += 3;
        for &user in &joined {
            core.apply(&join(user), now);
        }
        core.apply(&Op::Admit { queue: 0, count: 1 }, now);
        core.flush(now, std::mem::take(&mut resync));
        for (l, rx) in loops.iter_mut().zip(&rxs) {
            l.take(rx);
        }
        for &user in &joined {
            learn(&core, &mut loops, user, 0);
        }
        // Sessions whose player no longer waits stop following ranks.
        for l in &mut loops {
            l.sessions
                .retain(|&user, s| core.state.place(s.0, user).is_some());
        }
        rounds += 1;
        assert!(rounds < 1000, "the resync cycle never ends");
    }
    assert!(
        rounds > 10,
        "the cycle took {rounds} rounds: not incremental"
    );
    let mut checked = 0;
    for l in &loops {
        for (&user, &(queue, key, position)) in &l.sessions {
            let exact = core.state.queues()[queue as usize].position(key);
            assert_eq!(position, exact, "player {user} of queue {queue}");
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} sessions checked");
}

/// A fence the test opens and closes.
struct TestFence(Arc<AtomicBool>);

impl AdmitFence for TestFence {
    fn may_admit(&self, _queue: &str) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    fn owner(&self, _queue: &str) -> Option<String> {
        Some("n9".into())
    }
}

/// A fence of a node that owns the queue but holds it for the recovery window.
struct HoldingFence;

impl AdmitFence for HoldingFence {
    fn may_admit(&self, _queue: &str) -> bool {
        false
    }
    fn owner(&self, _queue: &str) -> Option<String> {
        Some("me".into())
    }
    fn recovery_left_ms(&self, _queue: &str) -> Option<u64> {
        Some(1_500)
    }
}

/// During the hold after a takeover the refusal says why (the recovery window), not
/// "not the owner" (which named this very node).
#[test]
fn an_admit_during_the_recovery_hold_says_so() {
    let (mut core, _rx, _bell) = core_with_loop(1024);
    core.state = QueueState::new(
        Limits::from_config(&Config::default()),
        &[("q".into(), 100, 100.0)],
        1,
    );
    let mut core = core.with_fence(Some(Box::new(HoldingFence)));
    let admit = ControlReq::Admit {
        queue: "q".into(),
        count: 1,
    };
    match core.control(admit, unix_ms()) {
        ControlReply::Unavailable(why) => assert!(
            why.contains("recovery window")
                && why.contains("1.5 s left")
                && !why.contains("not the owner"),
            "{why}"
        ),
        other => panic!("admitted during the hold: {other:?}"),
    }
}

/// Cluster mode: a node that may not admit for a queue makes no admission, neither by
/// hand (503 naming the owner) nor by its rate in the tick; once it may, it does, and
/// an operator's pause given meanwhile is kept.
#[test]
fn a_fenced_core_admits_neither_by_hand_nor_by_rate() {
    let (mut core, _rx, _bell) = core_with_loop(1024);
    core.state = QueueState::new(
        Limits::from_config(&Config::default()),
        &[("q".into(), 100, 100.0)],
        1,
    );
    let allowed = Arc::new(AtomicBool::new(false));
    let mut core = core.with_fence(Some(Box::new(TestFence(allowed.clone()))));
    let mut now = unix_ms();
    for user in 1..=5 {
        let conn = ConnRef {
            loop_id: 0,
            session: user,
        };
        let op = Op::Join {
            queue: "q".into(),
            user,
            prio: false,
            conn,
        };
        core.apply(&op, now);
    }
    let admit = ControlReq::Admit {
        queue: "q".into(),
        count: 2,
    };
    match core.control(admit.clone(), now) {
        ControlReply::Unavailable(why) => {
            assert!(why.contains("not the owner") && why.contains("n9"), "{why}")
        }
        other => panic!("admitted while fenced: {other:?}"),
    }
    let tick = |core: &mut Core, now: u64| {
        core.fence_tick(now);
        core.apply(&Op::Tick, now);
    };
    for _ in 0..20 {
        now += 10;
        tick(&mut core, now);
    }
    assert_eq!(
        core.state.queues()[0].waiting(),
        5,
        "the rate admitted while fenced"
    );
    allowed.store(true, Ordering::SeqCst);
    now += 10;
    tick(&mut core, now);
    now += 10;
    tick(&mut core, now);
    assert!(
        core.state.queues()[0].waiting() < 5,
        "no admission once allowed"
    );
    assert!(matches!(
        core.control(admit, now),
        ControlReply::Admitted(list) if !list.is_empty()
    ));
    // Fenced again; the operator pauses meanwhile: still paused once the fence lifts.
    allowed.store(false, Ordering::SeqCst);
    now += 10;
    tick(&mut core, now);
    let pause = ControlReq::Pause {
        queue: "q".into(),
        paused: true,
    };
    assert!(matches!(core.control(pause, now), ControlReply::Done));
    allowed.store(true, Ordering::SeqCst);
    now += 10;
    tick(&mut core, now);
    assert!(core.state.queues()[0].pacer.paused, "operator's pause lost");
}

/// A node link that closes leaves no place attached to it: each goes into grace (the
/// player resumes by logging in again), and nothing more is sent to the link.
#[test]
fn a_detached_link_puts_its_places_in_grace() {
    let (mut core, _rx, _bell) = core_with_loop(64);
    core.state = QueueState::new(
        Limits::from_config(&Config::default()),
        &[("q".into(), 100, 0.0)],
        1,
    );
    let now = unix_ms();
    let (events, link_rx) = crossbeam_channel::bounded(64);
    let (bell, _link_bell) = doorbell::pair().expect("doorbell");
    core.handle(
        CoreMsg::AttachLoop {
            loop_id: 1,
            events,
            bell,
        },
        now,
    );
    for (loop_id, user) in [(1u16, 7u64), (0, 8), (1, 9)] {
        let conn = ConnRef {
            loop_id,
            session: user,
        };
        core.apply(
            &Op::Join {
                queue: "q".into(),
                user,
                prio: false,
                conn,
            },
            now,
        );
    }
    core.handle(CoreMsg::DetachLoop { loop_id: 1 }, now);
    let conn_of = |core: &Core, user| core.state.place(0, user).expect("place").conn;
    assert_eq!(conn_of(&core, 7), None, "link's place not in grace");
    assert_eq!(conn_of(&core, 9), None, "link's place not in grace");
    assert!(
        conn_of(&core, 8).is_some(),
        "a local loop's place was touched"
    );
    core.flush(now, false);
    assert!(
        link_rx.try_recv().is_err(),
        "the detached link still gets events"
    );
}

/// A fence that owns "q" at epoch 3 (or nothing) and lets the core admit.
struct EpochFence(Option<u64>);

impl AdmitFence for EpochFence {
    fn may_admit(&self, _queue: &str) -> bool {
        true
    }
    fn owner(&self, _queue: &str) -> Option<String> {
        Some("n1".into())
    }
    fn epoch(&self, _queue: &str) -> Option<u64> {
        self.0
    }
}

/// Failover in the core: a new owner (epoch 3) floors its seqs at 3 << 32 before the
/// first join, takes re-submitted places at their old keys (ahead of that join) and
/// answers each like a join with its position; a node that does not own the queue
/// refuses re-submissions.
#[test]
fn a_new_owner_takes_places_back_ahead_of_new_arrivals() {
    let (mut core, _rx, _bell) = core_with_loop(1024);
    core.state = QueueState::new(
        Limits::from_config(&Config::default()),
        &[("q".into(), 100, 0.0)],
        1,
    );
    let mut core = core.with_fence(Some(Box::new(EpochFence(Some(3)))));
    let now = unix_ms();
    let conn = |session| ConnRef {
        loop_id: 0,
        session,
    };
    let join = CoreMsg::Join {
        conn: conn(1),
        seq: 1,
        user: 1,
        queue: "q".into(),
        prio: false,
        peer: "127.0.0.1:1".parse().unwrap(),
        claim: None,
    };
    assert!(core.handle(join, now));
    let new_key = core.state.place(0, 1).expect("joined").key;
    assert_eq!(new_key & !(1 << 63), 3 << 32, "the floor came first");
    for (session, old) in [(2u64, 7u64), (3, 5)] {
        let msg = CoreMsg::Resubmit {
            conn: conn(session),
            user: 10 + session,
            queue: "q".into(),
            key: (1 << 63) | old,
            admitted: [0, 0],
        };
        assert!(core.handle(msg, now));
    }
    let order: Vec<UserId> = core.state.queues()[0].iter().map(|(_, u)| u).collect();
    assert_eq!(order, vec![13, 12, 1]);
    assert!(core.joins.iter().all(|j| j.outcome.is_ok()));

    let (mut core, _rx, _bell) = core_with_loop(1024);
    core.state = QueueState::new(
        Limits::from_config(&Config::default()),
        &[("q".into(), 100, 0.0)],
        1,
    );
    let mut other = core.with_fence(Some(Box::new(EpochFence(None))));
    let msg = CoreMsg::Resubmit {
        conn: conn(2),
        user: 12,
        queue: "q".into(),
        key: 5,
        admitted: [0, 0],
    };
    assert!(other.handle(msg, now));
    assert!(matches!(
        other.joins[0].outcome,
        Err(JoinError::ShuttingDown)
    ));
    assert!(other.state.place(0, 12).is_none());
}

/// A fence that owns "q" at epoch 5, holds it (`hold`) with the earlier owners'
/// admission marks `before`, and records what the core publishes; it tracks every
/// queue but "auto".
struct ClaimFence {
    epoch: Option<u64>,
    hold: bool,
    before: Option<[PlaceKey; 2]>,
    published: Arc<std::sync::Mutex<Vec<[PlaceKey; 2]>>>,
}

impl AdmitFence for ClaimFence {
    fn may_admit(&self, _queue: &str) -> bool {
        !self.hold
    }
    fn owner(&self, _queue: &str) -> Option<String> {
        Some("n1".into())
    }
    fn epoch(&self, _queue: &str) -> Option<u64> {
        self.epoch
    }
    fn recovery_left_ms(&self, _queue: &str) -> Option<u64> {
        self.hold.then_some(1000)
    }
    fn admitted_before(&self, _queue: &str) -> Option<[PlaceKey; 2]> {
        self.before
    }
    fn publish_admitted(&self, _queue: &str, marks: [PlaceKey; 2]) {
        self.published.lock().unwrap().push(marks);
    }
    fn tracks(&self, queue: &str) -> bool {
        queue != "auto"
    }
}

/// A core owning "q" behind `fence`.
fn claim_core(fence: ClaimFence) -> Core {
    let (core, _rx, _bell) = core_with_loop(1024);
    let mut core = core.with_fence(Some(Box::new(fence)));
    core.state = QueueState::new(
        Limits::from_config(&Config::default()),
        &[("q".into(), 100, 0.0)],
        1,
    );
    core
}

fn claim_join(user: UserId, claim: Option<PlaceKey>) -> CoreMsg {
    CoreMsg::Join {
        conn: ConnRef {
            loop_id: 0,
            session: user,
        },
        seq: 1,
        user,
        queue: "q".into(),
        prio: false,
        peer: "127.0.0.1:1".parse().unwrap(),
        claim,
    }
}

/// Place tickets in the core: during the recovery hold a claim of an earlier epoch's
/// key above the admission watermark puts the place back (ahead of new arrivals, as a
/// logged re-submission, answered resumed); a key at or below the watermark, of this
/// epoch, of epoch 0, or outside the hold is a normal join at the end; a node that
/// does not own the queue answers SHUTTING_DOWN. What the core admits is published.
#[test]
fn a_claim_is_honored_only_in_the_hold_above_the_watermark() {
    let normal = |epoch: u64, n: u64| (1 << 63) | (epoch << 32) | n;
    let published = Arc::new(std::sync::Mutex::new(Vec::new()));
    let fence_with = |hold, epoch, before| ClaimFence {
        epoch,
        hold,
        before,
        published: published.clone(),
    };
    let fence = |hold, epoch| fence_with(hold, epoch, Some([normal(2, 10), 0]));
    let now = unix_ms();
    let mut core = claim_core(fence(true, Some(5)));
    assert!(core.handle(claim_join(1, None), now));
    let claims = [
        (2, normal(2, 11)), // above the watermark: honored
        (3, normal(2, 10)), // at the watermark: may have been admitted
        (4, normal(5, 0)),  // this owner's own epoch
        (5, normal(2, 3)),  // below the watermark
        (6, normal(2, 11)), // someone else's key already
    ];
    for (user, key) in claims {
        assert!(core.handle(claim_join(user, Some(key)), now));
    }
    let order: Vec<UserId> = core.state.queues()[0].iter().map(|(_, u)| u).collect();
    assert_eq!(order, vec![2, 1, 3, 4, 5, 6]);
    let resumed: Vec<bool> = core
        .joins
        .iter()
        .map(|j| j.outcome.as_ref().unwrap().2)
        .collect();
    assert_eq!(resumed, vec![false, true, false, false, false, false]);
    assert_eq!(core.state.place(0, 2).unwrap().key, normal(2, 11));
    // Holding a place already: a normal resume, nothing moves.
    assert!(core.handle(claim_join(2, Some(normal(2, 12))), now));
    assert_eq!(core.state.place(0, 2).unwrap().key, normal(2, 11));

    // Outside the hold: a normal join.
    let mut core = claim_core(fence(false, Some(5)));
    assert!(core.handle(claim_join(2, Some(normal(2, 11))), now));
    assert!(!core.joins[0].outcome.as_ref().unwrap().2);
    assert_ne!(core.state.place(0, 2).unwrap().key, normal(2, 11));
    // Admissions are published: the highest admitted key per lane.
    let reply = core.control(
        ControlReq::Admit {
            queue: "q".into(),
            count: 1,
        },
        now,
    );
    assert!(
        matches!(reply, ControlReply::Admitted(ref a) if a.len() == 1),
        "{reply:?}"
    );
    core.publish_admitted();
    let marks = *published.lock().unwrap().last().expect("published");
    assert_eq!(marks, [normal(5, 0), 0]);

    // Nobody admitted before (marks 0): any earlier epoch's key but epoch 0 (no owner
    // hands those out: a non-owner's place from an ownerless gap).
    for (before, user, key, honored) in [
        (Some([0, 0]), 7, normal(0, 99), false),
        (Some([0, 0]), 8, normal(1, 99), true),
    ] {
        let mut core = claim_core(fence_with(true, Some(5), before));
        assert!(core.handle(claim_join(user, Some(key)), now));
        let at = core.state.place(0, user).unwrap().key;
        assert_eq!(
            (at == key, core.joins[0].outcome.as_ref().unwrap().2),
            (honored, honored)
        );
    }

    // Not the owner, or the marks not read yet in the hold: SHUTTING_DOWN (the player
    // comes back, ticket in hand); nothing placed.
    for fence in [fence(true, None), fence_with(true, Some(5), None)] {
        let mut core = claim_core(fence);
        assert!(core.handle(claim_join(2, Some(normal(2, 11))), now));
        assert!(matches!(
            core.joins[0].outcome,
            Err(JoinError::ShuttingDown)
        ));
        assert!(core.state.place(0, 2).is_none());
    }
    // A queue the cluster does not track (auto-created, one per node): a normal join.
    let mut core = claim_core(fence(true, None));
    core.state = QueueState::new(
        Limits::from_config(&Config::default()),
        &[("auto".into(), 100, 0.0)],
        1,
    );
    let mut msg = claim_join(2, Some(normal(2, 11)));
    if let CoreMsg::Join { queue, .. } = &mut msg {
        *queue = "auto".into();
    }
    assert!(core.handle(msg, now));
    assert!(!core.joins[0].outcome.as_ref().unwrap().2);
    assert_ne!(core.state.place(0, 2).unwrap().key, normal(2, 11));
}

/// A fence whose node may not admit for "q": owner at `epoch` but cut off from etcd
/// (its lease deadline passed), or (`None`) not the owner at all.
struct LapsedFence(Option<u64>);

impl AdmitFence for LapsedFence {
    fn may_admit(&self, _queue: &str) -> bool {
        false
    }
    fn owner(&self, _queue: &str) -> Option<String> {
        Some("n2".into())
    }
    fn epoch(&self, _queue: &str) -> Option<u64> {
        self.0
    }
    fn tracks(&self, queue: &str) -> bool {
        queue != "auto"
    }
}

/// Issue 11: a plain join (no ticket) reaching a node that does not own a queue the
/// cluster tracks (a stale route, a link join racing an ownership change) is answered
/// SHUTTING_DOWN and queued nowhere: before, it made a place here, fenced for good and
/// split from the real queue. The owner cut off from etcd still queues (it only stops
/// admitting), and a queue the cluster does not track is a normal join.
#[test]
fn a_join_on_a_node_that_does_not_own_the_queue_is_answered_retry() {
    let now = unix_ms();
    let core_behind = |fence: LapsedFence, queue: &str| {
        let (core, _rx, _bell) = core_with_loop(1024);
        let mut core = core.with_fence(Some(Box::new(fence)));
        core.state = QueueState::new(
            Limits::from_config(&Config::default()),
            &[(queue.into(), 100, 0.0)],
            1,
        );
        core
    };
    let join_of = |queue: &str| {
        let mut msg = claim_join(1, None);
        if let CoreMsg::Join { queue: q, .. } = &mut msg {
            *q = queue.into();
        }
        msg
    };
    let mut other = core_behind(LapsedFence(None), "q");
    assert!(other.handle(join_of("q"), now));
    assert!(
        matches!(other.joins[0].outcome, Err(JoinError::ShuttingDown)),
        "a non-owner answered {:?}",
        other.joins[0].outcome
    );
    assert!(other.state.place(0, 1).is_none(), "queued on a non-owner");

    let mut fenced_owner = core_behind(LapsedFence(Some(3)), "q");
    assert!(fenced_owner.handle(join_of("q"), now));
    assert!(fenced_owner.joins[0].outcome.is_ok());
    assert!(
        fenced_owner.state.place(0, 1).is_some(),
        "the fenced owner refused"
    );

    let mut untracked = core_behind(LapsedFence(None), "auto");
    assert!(untracked.handle(join_of("auto"), now));
    assert!(untracked.joins[0].outcome.is_ok());
    assert!(untracked.state.place(0, 1).is_some());
}
