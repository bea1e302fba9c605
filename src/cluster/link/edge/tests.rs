//! The edge's link client against a fake owner on a real socket: answers and rank
//! batches reach the right loop (ids unpacked, queue ids mapped into the link's
//! range); a login in flight when the link breaks, or sent while the owner is
//! unreachable, is answered SHUTTING_DOWN instead of hanging; after a failover the
//! waiting places are re-submitted to the new owner (sorted by key, ids mapped back),
//! and a cut link to the same owner kicks them as before. Failure paths: a
//! re-submission whose write fails goes again on the re-dial (never kicked); a leave
//! racing an unanswered re-submission waits for the new owner's queue id; a join lost
//! with its connection leaves the book; a re-submission answered admitted at once
//! reaches the player as its admission.

use std::net::TcpListener;

use crossbeam_channel::Receiver;

use super::codec::{unpack_session, Reader};
use super::follow::Follow;
use super::*;
use crate::doorbell;
use crate::msg::{remote_queue, ConnRef, JoinOk, QueueDelta, RankBatch};

/// Two loops' ends (the doorbells' read ends are kept alive with them).
type Loops = (
    Arc<Vec<LoopOut>>,
    Vec<Receiver<LoopEvent>>,
    Vec<doorbell::BellRx>,
);

fn loops() -> Loops {
    let (mut outs, mut rxs, mut bells) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2 {
        let (events, rx) = crossbeam_channel::bounded(64);
        let (bell, bell_rx) = doorbell::pair().unwrap();
        outs.push(LoopOut { events, bell });
        rxs.push(rx);
        bells.push(bell_rx);
    }
    (Arc::new(outs), rxs, bells)
}

/// A started link client to `addr`; the loops' ends; its stop flag; its book.
struct Edge {
    tx: Sender<CoreMsg>,
    rxs: Vec<Receiver<LoopEvent>>,
    _bells: Vec<doorbell::BellRx>,
    stop: Arc<AtomicBool>,
    places: Arc<Mutex<Book>>,
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn start(addr: String) -> Edge {
    start_with(addr, Retarget::default())
}

fn start_with(addr: String, retarget: Retarget) -> Edge {
    let (loops, rxs, bells) = loops();
    let (tx, inbox) = crossbeam_channel::bounded(64);
    let stop = Arc::new(AtomicBool::new(false));
    let places = Arc::new(Mutex::new(Book::default()));
    let follow = Follow::new(addr.clone(), &Default::default());
    let link = EdgeLink {
        index: 3,
        me: "edge-1".into(),
        stats: Arc::default(),
        node: "owner".into(),
        addr,
        inbox,
        loops,
        stop: stop.clone(),
        retarget,
        orphan_max: Duration::from_secs(30),
    };
    let book = places.clone();
    std::thread::spawn(move || link.run_shared(book, follow));
    Edge {
        tx,
        rxs,
        _bells: bells,
        stop,
        places,
    }
}

/// Closes the owner's end with a reset (`SO_LINGER` 0): the edge's next write fails.
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// Polls `done` until it holds; fails with `what` after 10 s.
fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn join(loop_id: u16, session: u64) -> CoreMsg {
    CoreMsg::Join {
        conn: ConnRef { loop_id, session },
        seq: 4,
        user: 40 + session,
        queue: "q".into(),
        prio: false,
        peer: "127.0.0.1:1".parse().unwrap(),
        claim: None,
    }
}

fn next(rx: &Receiver<LoopEvent>) -> LoopEvent {
    rx.recv_timeout(Duration::from_secs(10)).expect("an event")
}

/// Accepts one link and exchanges preambles; returns the owner's end.
fn accept(listener: &TcpListener) -> TcpStream {
    // One owner process throughout (a re-dial finds the same one: a cut link).
    accept_as(listener, 1)
}

/// [`accept`] by the owner process `incarnation`.
fn accept_as(listener: &TcpListener, incarnation: u64) -> TcpStream {
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut p = [0u8; 4];
    s.read_exact(&mut p).unwrap();
    assert_eq!(&p, PREAMBLE);
    s.write_all(PREAMBLE).unwrap();
    assert_eq!(
        crate::cluster::link::hello::read_hello(&mut s).unwrap(),
        "edge-1"
    );
    crate::cluster::link::hello::write_incarnation(&mut s, incarnation).unwrap();
    s
}

/// Reads one frame of core messages from the edge.
fn read_msgs(s: &mut TcpStream) -> Vec<CoreMsg> {
    let mut body = Vec::new();
    assert!(codec::read_frame(s, &mut body).unwrap());
    let mut r = Reader::new(&body).unwrap();
    let mut out = Vec::new();
    while r.more() {
        out.push(r.core_msg(7).unwrap());
    }
    out
}

#[test]
fn answers_reach_their_loop_and_batches_every_loop() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let edge = start(listener.local_addr().unwrap().to_string());
    edge.tx.send(join(1, 5)).unwrap();
    let mut owner = accept(&listener);
    let msgs = read_msgs(&mut owner);
    let CoreMsg::Join { conn, .. } = &msgs[0] else {
        panic!("{msgs:?}")
    };
    let packed = conn.session;
    assert_eq!(unpack_session(packed), (1, 5));
    let mut f = FrameBuf::default();
    f.put_event(&LoopEvent::Ranks(Arc::new(RankBatch {
        queues: vec![QueueDelta {
            queue: 2,
            ..QueueDelta::default()
        }],
    })));
    f.put_event(&LoopEvent::Joined {
        session: packed,
        seq: 4,
        user: 45,
        result: Ok(JoinOk {
            queue: 2,
            key: 1,
            position: 1,
            queue_len: 1,
            rate_per_s: 0.0,
            resumed: false,
            admitted: None,
        }),
    });
    owner.write_all(f.finish()).unwrap();
    for rx in &edge.rxs {
        match next(rx) {
            LoopEvent::Ranks(b) => assert_eq!(b.queues[0].queue, remote_queue(3, 2)),
            other => panic!("{other:?}"),
        }
    }
    match next(&edge.rxs[1]) {
        LoopEvent::Joined {
            session: 5,
            result: Ok(ok),
            ..
        } => assert_eq!(ok.queue, remote_queue(3, 2)),
        other => panic!("{other:?}"),
    }
    assert!(
        edge.rxs[0].try_recv().is_err(),
        "an answer went to the wrong loop"
    );
}

#[test]
fn a_login_in_flight_when_the_link_breaks_is_answered_shutting_down() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let edge = start(listener.local_addr().unwrap().to_string());
    edge.tx.send(join(0, 9)).unwrap();
    let mut owner = accept(&listener);
    assert_eq!(read_msgs(&mut owner).len(), 1);
    drop(owner); // the owner goes away without answering
    match next(&edge.rxs[0]) {
        LoopEvent::Joined {
            session: 9,
            result: Err(JoinError::ShuttingDown),
            ..
        } => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_login_to_an_unreachable_owner_is_answered_shutting_down() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let edge = start(addr);
    edge.tx.send(join(1, 2)).unwrap();
    assert!(matches!(
        next(&edge.rxs[1]),
        LoopEvent::Joined {
            session: 2,
            result: Err(JoinError::ShuttingDown),
            ..
        }
    ));
}

/// A rank batch of the owner's queue `queue` reporting its admitted `marks`.
fn send_marks(owner: &mut TcpStream, queue: u32, marks: [u64; 2]) {
    let mut f = FrameBuf::default();
    f.put_event(&LoopEvent::Ranks(Arc::new(RankBatch {
        queues: vec![QueueDelta {
            queue,
            admitted_max: marks,
            ..QueueDelta::default()
        }],
    })));
    owner.write_all(f.finish()).unwrap();
}

/// Joined answers for `sessions` (packed), each waiting at `key = 100 - i`, queue 2.
fn answer_joins(owner: &mut TcpStream, sessions: &[SessionId]) {
    let mut f = FrameBuf::default();
    for (i, &packed) in sessions.iter().enumerate() {
        f.put_event(&LoopEvent::Joined {
            session: packed,
            seq: 4,
            user: 40 + unpack_session(packed).1,
            result: Ok(JoinOk {
                queue: 2,
                key: 100 - i as u64,
                position: 1 + i as u64,
                queue_len: 2,
                rate_per_s: 0.0,
                resumed: false,
                admitted: None,
            }),
        });
    }
    owner.write_all(f.finish()).unwrap();
}

/// Two waiting places behind a link whose owner dies; the router names a new owner:
/// the link dials it and re-submits both, sorted by key, without a kick; the new
/// owner's answer (its own queue id 6) reaches the loop as a resync of the position,
/// and a later `leave` carries the new owner's queue id.
#[test]
fn places_are_resubmitted_to_a_new_owner_sorted_by_key() {
    resubmit_and_leave(false);
}

/// As above with the new owner's answers in two frames (two core flushes, or a frame
/// split): the second answer decodes through the mapping the first one made, and the
/// mapping must still name the new owner's id (a `leave` carried the old id before).
#[test]
fn resubmission_answers_over_several_frames_keep_the_new_owners_ids() {
    resubmit_and_leave(true);
}

fn resubmit_and_leave(split: bool) {
    let old = TcpListener::bind("127.0.0.1:0").unwrap();
    let new = TcpListener::bind("127.0.0.1:0").unwrap();
    let retarget = Retarget::default();
    let edge = start_with(old.local_addr().unwrap().to_string(), retarget.clone());
    edge.tx.send(join(0, 1)).unwrap();
    edge.tx.send(join(1, 2)).unwrap();
    let mut owner = accept(&old);
    let mut packed = Vec::new();
    while packed.len() < 2 {
        for m in read_msgs(&mut owner) {
            let CoreMsg::Join { conn, .. } = m else {
                panic!("{m:?}")
            };
            packed.push(conn.session);
        }
    }
    answer_joins(&mut owner, &packed);
    assert!(matches!(next(&edge.rxs[0]), LoopEvent::Joined { .. }));
    assert!(matches!(next(&edge.rxs[1]), LoopEvent::Joined { .. }));
    // The old owner's rank batches report its admitted marks; the book keeps the
    // highest per lane.
    for marks in [[60, 5], [77, 3]] {
        send_marks(&mut owner, 2, marks);
        for rx in &edge.rxs {
            assert!(matches!(next(rx), LoopEvent::Ranks(_)));
        }
    }
    drop(owner);
    drop(old); // dead: nothing listens there any more
    let to = new.local_addr().unwrap().to_string();
    retarget.lock().unwrap().insert("q".into(), to);
    let mut owner = accept(&new);
    let msgs = read_msgs(&mut owner);
    let keys: Vec<(u64, u64)> = msgs
        .iter()
        .map(|m| match m {
            CoreMsg::Resubmit {
                user,
                key,
                queue,
                admitted,
                ..
            } => {
                assert_eq!(queue.as_str(), "q");
                assert_eq!(*admitted, [77, 5], "the marks the edge saw, per lane");
                (*key, *user)
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(keys, vec![(99, 42), (100, 41)], "sorted by key");
    let mut f = FrameBuf::default();
    for (i, m) in msgs.iter().enumerate() {
        let CoreMsg::Resubmit {
            conn, user, key, ..
        } = m
        else {
            unreachable!()
        };
        f.put_event(&LoopEvent::Joined {
            session: conn.session,
            seq: 0,
            user: *user,
            result: Ok(JoinOk {
                queue: 6,
                key: *key,
                position: 1 + i as u64,
                queue_len: 2,
                rate_per_s: 0.0,
                resumed: true,
                admitted: None,
            }),
        });
        if split {
            owner.write_all(f.finish()).unwrap();
            f.clear();
        }
    }
    if !f.is_empty() {
        owner.write_all(f.finish()).unwrap();
    }
    assert!(matches!(next(&edge.rxs[0]), LoopEvent::Resync(v) if v == vec![(1, 2)]));
    assert!(matches!(next(&edge.rxs[1]), LoopEvent::Resync(v) if v == vec![(2, 1)]));
    edge.tx
        .send(CoreMsg::Leave {
            conn: ConnRef {
                loop_id: 0,
                session: 1,
            },
            queue: remote_queue(3, 2),
            user: 41,
        })
        .unwrap();
    match &read_msgs(&mut owner)[..] {
        [CoreMsg::Leave {
            queue: 6, user: 41, ..
        }] => {}
        other => panic!("{other:?}"),
    }
}

/// A cut link to an owner that is still there: the waiting places are kicked (their
/// places wait in grace at the owner; logging in again resumes them), not re-submitted.
#[test]
fn a_cut_link_to_the_same_owner_kicks_its_places() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let edge = start(listener.local_addr().unwrap().to_string());
    edge.tx.send(join(0, 1)).unwrap();
    let mut owner = accept(&listener);
    let msgs = read_msgs(&mut owner);
    let CoreMsg::Join { conn, .. } = &msgs[0] else {
        panic!("{msgs:?}")
    };
    answer_joins(&mut owner, &[conn.session]);
    assert!(matches!(next(&edge.rxs[0]), LoopEvent::Joined { .. }));
    drop(owner);
    let _again = accept(&listener);
    assert!(matches!(
        next(&edge.rxs[0]),
        LoopEvent::LinkLost { link: 3 }
    ));
}

/// The owner process is replaced at the same address (kill -9, then a restart): the
/// re-dial finds another incarnation, so the waiting place is neither kicked nor sent
/// at once (the new process owns nothing yet); once the router names the queue's owner
/// (this address again, at a new epoch) it is re-submitted there and the player gets a
/// resync of its position, never a `LinkLost`. Before incarnations the link took the
/// new process for the old one after a cut and kicked the place.
#[test]
fn a_restarted_owner_gets_the_places_back_once_named_not_kicked() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let retarget = Retarget::default();
    let edge = start_with(addr.clone(), retarget.clone());
    edge.tx.send(join(0, 1)).unwrap();
    let mut owner = accept_as(&listener, 1);
    let msgs = read_msgs(&mut owner);
    let CoreMsg::Join { conn, .. } = &msgs[0] else {
        panic!("{msgs:?}")
    };
    answer_joins(&mut owner, &[conn.session]);
    assert!(matches!(next(&edge.rxs[0]), LoopEvent::Joined { .. }));
    drop(owner);
    let mut restarted = accept_as(&listener, 2);
    // A join after the re-dial goes out on its own: the held place is not in front.
    edge.tx.send(join_to(2, "q")).unwrap();
    match &read_msgs(&mut restarted)[..] {
        [CoreMsg::Join { conn, .. }] => assert_eq!(conn.session, 2),
        other => panic!("the held place was sent before its owner was named: {other:?}"),
    }
    retarget.lock().unwrap().insert("q".into(), addr);
    let msgs = read_msgs(&mut restarted);
    assert!(
        matches!(
            &msgs[..],
            [CoreMsg::Resubmit {
                user: 41,
                key: 100,
                ..
            }]
        ),
        "{msgs:?}"
    );
    answer_resubmits(&mut restarted, &msgs, 5);
    assert!(matches!(next(&edge.rxs[0]), LoopEvent::Resync(v) if v == vec![(1, 1)]));
}

/// A join of `queue` from loop 0.
fn join_to(session: u64, queue: &str) -> CoreMsg {
    let CoreMsg::Join {
        conn,
        seq,
        user,
        prio,
        peer,
        ..
    } = join(0, session)
    else {
        unreachable!()
    };
    CoreMsg::Join {
        conn,
        seq,
        user,
        queue: queue.into(),
        prio,
        peer,
        claim: None,
    }
}

/// Answers every re-submission in `msgs` with the owner's queue id `queue`; returns
/// the (user, queue name) re-submitted, and the packed sessions.
fn answer_resubmits(owner: &mut TcpStream, msgs: &[CoreMsg], queue: u32) -> Vec<(u64, String)> {
    let mut f = FrameBuf::default();
    let mut out = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let CoreMsg::Resubmit {
            conn,
            user,
            key,
            queue: name,
            ..
        } = m
        else {
            panic!("{m:?}")
        };
        out.push((*user, name.as_str().to_string()));
        f.put_event(&LoopEvent::Joined {
            session: conn.session,
            seq: 0,
            user: *user,
            result: Ok(JoinOk {
                queue,
                key: *key,
                position: 1 + i as u64,
                queue_len: 1,
                rate_per_s: 0.0,
                resumed: true,
                admitted: None,
            }),
        });
    }
    owner.write_all(f.finish()).unwrap();
    out
}

/// The dead owner held two queues that went to two different nodes, named one after
/// the other: each queue's places are re-submitted to its own new owner (none is
/// refused, nobody kicked), and a `leave` afterwards reaches the right owner with its
/// own queue id.
#[test]
fn places_of_two_queues_follow_their_two_new_owners() {
    let old = TcpListener::bind("127.0.0.1:0").unwrap();
    let (new_q, new_r) = (
        TcpListener::bind("127.0.0.1:0").unwrap(),
        TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    let retarget = Retarget::default();
    let edge = start_with(old.local_addr().unwrap().to_string(), retarget.clone());
    edge.tx.send(join_to(1, "q")).unwrap();
    edge.tx.send(join_to(2, "r")).unwrap();
    let mut owner = accept(&old);
    let mut joins = Vec::new();
    while joins.len() < 2 {
        joins.extend(read_msgs(&mut owner));
    }
    // Queue ids at the dead owner: q = 2, r = 3.
    let mut f = FrameBuf::default();
    for m in &joins {
        let CoreMsg::Join {
            conn, user, queue, ..
        } = m
        else {
            panic!("{m:?}")
        };
        f.put_event(&LoopEvent::Joined {
            session: conn.session,
            seq: 4,
            user: *user,
            result: Ok(JoinOk {
                queue: if queue.as_str() == "q" { 2 } else { 3 },
                key: *user,
                position: 1,
                queue_len: 1,
                rate_per_s: 0.0,
                resumed: false,
                admitted: None,
            }),
        });
    }
    owner.write_all(f.finish()).unwrap();
    assert!(matches!(next(&edge.rxs[0]), LoopEvent::Joined { .. }));
    assert!(matches!(next(&edge.rxs[0]), LoopEvent::Joined { .. }));
    drop(owner);
    drop(old);

    // q's new owner is named first: only q's place goes there.
    let to = new_q.local_addr().unwrap().to_string();
    retarget.lock().unwrap().insert("q".into(), to);
    let mut owner_q = accept(&new_q);
    let msgs = read_msgs(&mut owner_q);
    assert_eq!(
        answer_resubmits(&mut owner_q, &msgs, 6),
        vec![(41, "q".into())]
    );
    assert!(matches!(next(&edge.rxs[0]), LoopEvent::Resync(v) if v == vec![(1, 1)]));

    // Then r's, another node: r's place goes there, on a second connection.
    let to = new_r.local_addr().unwrap().to_string();
    retarget.lock().unwrap().insert("r".into(), to);
    let mut owner_r = accept(&new_r);
    let msgs = read_msgs(&mut owner_r);
    assert_eq!(
        answer_resubmits(&mut owner_r, &msgs, 9),
        vec![(42, "r".into())]
    );
    assert!(matches!(next(&edge.rxs[0]), LoopEvent::Resync(v) if v == vec![(2, 1)]));

    // Leaves reach each queue's owner with its own id (sessions hold 2 and 3).
    for (session, queue, user) in [(1, 2, 41), (2, 3, 42)] {
        edge.tx
            .send(CoreMsg::Leave {
                conn: ConnRef {
                    loop_id: 0,
                    session,
                },
                queue: remote_queue(3, queue),
                user,
            })
            .unwrap();
    }
    assert!(matches!(
        &read_msgs(&mut owner_q)[..],
        [CoreMsg::Leave {
            queue: 6,
            user: 41,
            ..
        }]
    ));
    assert!(matches!(
        &read_msgs(&mut owner_r)[..],
        [CoreMsg::Leave {
            queue: 9,
            user: 42,
            ..
        }]
    ));
    assert!(edge.rxs[0].try_recv().is_err(), "nobody kicked");
}

/// One place (loop 0, session 1, user 41, key 100, the old owner's queue 2) behind a
/// link whose owner died; the router has named the new owner (the returned listener).
fn one_place_failed_over() -> (Edge, TcpListener) {
    let old = TcpListener::bind("127.0.0.1:0").unwrap();
    let new = TcpListener::bind("127.0.0.1:0").unwrap();
    let retarget = Retarget::default();
    let edge = start_with(old.local_addr().unwrap().to_string(), retarget.clone());
    edge.tx.send(join(0, 1)).unwrap();
    let mut owner = accept(&old);
    let msgs = read_msgs(&mut owner);
    let CoreMsg::Join { conn, .. } = &msgs[0] else {
        panic!("{msgs:?}")
    };
    answer_joins(&mut owner, &[conn.session]);
    assert!(matches!(next(&edge.rxs[0]), LoopEvent::Joined { .. }));
    drop(owner);
    drop(old);
    let to = new.local_addr().unwrap().to_string();
    retarget.lock().unwrap().insert("q".into(), to);
    (edge, new)
}

/// The new owner's connection breaks before it answers the re-submission (reset before
/// the edge writes it, so the write fails; or, if the reset comes later, the answer
/// never comes); the re-dial finds the same owner process, which never acknowledged
/// the place: it is re-submitted there, not kicked. Before, the failed batch kept only
/// joins, and the re-dial kicked the place `shutdown` as if it waited in a grace the
/// owner never had: logging in again went to the end of the queue.
#[test]
fn a_resubmission_whose_write_fails_is_resubmitted_on_the_redial_not_kicked() {
    let (edge, new) = one_place_failed_over();
    reset(accept(&new));
    let mut owner = accept(&new);
    let msgs = read_msgs(&mut owner);
    assert!(
        matches!(
            &msgs[..],
            [CoreMsg::Resubmit {
                user: 41,
                key: 100,
                ..
            }]
        ),
        "{msgs:?}"
    );
    answer_resubmits(&mut owner, &msgs, 6);
    match next(&edge.rxs[0]) {
        LoopEvent::Resync(v) => assert_eq!(v, vec![(1, 1)]),
        other => panic!("the place was not re-submitted: {other:?}"),
    }
}

/// The player of a place whose re-submission the new owner has not answered yet leaves
/// (or its connection closes): the edge does not know the new owner's queue id yet, so
/// it sends nothing then (before: a `Leave` naming the dead owner's queue id 2, wrong at
/// the new owner); once the answer maps the id, the `Leave`/`Disconnect` goes out with
/// the new owner's id 6, and the answer is not relayed to the ended session.
#[test]
fn a_leave_racing_an_unanswered_resubmission_waits_for_the_new_owners_queue_id() {
    leave_racing_a_resubmission(false);
}

/// As above with the connection closing (`Disconnect`) instead of a `leave`.
#[test]
fn a_disconnect_racing_an_unanswered_resubmission_waits_for_the_new_owners_queue_id() {
    leave_racing_a_resubmission(true);
}

fn leave_racing_a_resubmission(disconnect: bool) {
    let (edge, new) = one_place_failed_over();
    let mut owner = accept(&new);
    let resubmits = read_msgs(&mut owner);
    assert!(matches!(
        &resubmits[..],
        [CoreMsg::Resubmit { user: 41, .. }]
    ));
    let conn = ConnRef {
        loop_id: 0,
        session: 1,
    };
    let (queue, user) = (remote_queue(3, 2), 41);
    edge.tx
        .send(if disconnect {
            CoreMsg::Disconnect {
                conn,
                queue,
                user,
                report: Default::default(),
            }
        } else {
            CoreMsg::Leave { conn, queue, user }
        })
        .unwrap();
    // A login behind it: once it arrives, the edge has handled the leave.
    edge.tx.send(join(1, 5)).unwrap();
    loop {
        let msgs = read_msgs(&mut owner);
        assert!(
            !msgs
                .iter()
                .any(|m| matches!(m, CoreMsg::Leave { .. } | CoreMsg::Disconnect { .. })),
            "sent before the new owner's queue id was known: {msgs:?}"
        );
        if msgs.iter().any(|m| matches!(m, CoreMsg::Join { .. })) {
            break;
        }
    }
    answer_resubmits(&mut owner, &resubmits, 6);
    match (&read_msgs(&mut owner)[..], disconnect) {
        (
            [CoreMsg::Leave {
                queue: 6, user: 41, ..
            }],
            false,
        )
        | (
            [CoreMsg::Disconnect {
                queue: 6, user: 41, ..
            }],
            true,
        ) => {}
        (other, _) => panic!("{other:?}"),
    }
    assert!(
        edge.rxs[0].try_recv().is_err(),
        "the late answer reached the ended session"
    );
}

/// A login in flight when its connection is lost (the owner closes without answering,
/// or resets it before the edge writes it: the write fails) is answered SHUTTING_DOWN
/// and leaves nothing in the book's joins in flight (before: the entry stayed forever).
#[test]
fn a_join_lost_with_its_connection_leaves_nothing_in_the_book() {
    for reset_first in [false, true] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let edge = start(listener.local_addr().unwrap().to_string());
        edge.tx.send(join(0, 9)).unwrap();
        let mut owner = accept(&listener);
        if reset_first {
            reset(owner);
        } else {
            assert_eq!(read_msgs(&mut owner).len(), 1);
            drop(owner);
        }
        assert!(matches!(
            next(&edge.rxs[0]),
            LoopEvent::Joined {
                session: 9,
                result: Err(JoinError::ShuttingDown),
                ..
            }
        ));
        wait_until(
            || book(&edge.places).joins_in_flight() == 0,
            "a lost join stays in the book",
        );
    }
}

/// The new owner answers a re-submission admitted at once (the player holds an unused
/// admission there, e.g. a restarted owner replayed it): the player gets its
/// `admitted` push with the token, not a kick (before: kicked `shutdown`, the token
/// reached it only after logging in again).
#[test]
fn a_resubmission_answered_admitted_relays_the_admission() {
    let (edge, new) = one_place_failed_over();
    let mut owner = accept(&new);
    let msgs = read_msgs(&mut owner);
    let [CoreMsg::Resubmit { conn, user, .. }] = &msgs[..] else {
        panic!("{msgs:?}")
    };
    let mut f = FrameBuf::default();
    f.put_event(&LoopEvent::Joined {
        session: conn.session,
        seq: 0,
        user: *user,
        result: Ok(JoinOk {
            queue: 6,
            key: 0,
            position: 0,
            queue_len: 0,
            rate_per_s: 0.0,
            resumed: true,
            admitted: Some(("tok".into(), 99)),
        }),
    });
    owner.write_all(f.finish()).unwrap();
    match next(&edge.rxs[0]) {
        LoopEvent::Admitted {
            session: 1,
            token,
            expires_at: 99,
        } => assert_eq!(token, "tok"),
        other => panic!("{other:?}"),
    }
    wait_until(
        || book(&edge.places).live.is_empty(),
        "the admitted place stays in the book",
    );
}
