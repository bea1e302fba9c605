//! Child links end: a child link started to re-submit places to a second new owner
//! closes its connection and its thread ends once no waiting place is left behind it
//! (all admitted or left), and not before; the parent drops it and goes on.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::super::{EdgeLink, LoopOut, Retarget};
use crate::cluster::link::codec::{self, FrameBuf, Reader, PREAMBLE};
use crate::cluster::link::hello::{read_hello, write_incarnation};
use crate::doorbell;
use crate::msg::{remote_queue, ConnRef, CoreMsg, JoinOk, LoopEvent, SessionId};

/// One loop's end, the link's inbox and stop flag (set on drop).
struct Edge {
    tx: Sender<CoreMsg>,
    rx: Receiver<LoopEvent>,
    _bell: doorbell::BellRx,
    stop: Arc<AtomicBool>,
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A link client (index 3) to `addr`, named new owners through `retarget`.
fn start(addr: String, retarget: Retarget) -> Edge {
    let (events, rx) = crossbeam_channel::bounded(64);
    let (bell, bell_rx) = doorbell::pair().unwrap();
    let (tx, inbox) = crossbeam_channel::bounded(64);
    let stop = Arc::new(AtomicBool::new(false));
    EdgeLink {
        index: 3,
        me: "edge-1".into(),
        stats: Arc::default(),
        node: "owner".into(),
        addr,
        inbox,
        loops: Arc::new(vec![LoopOut { events, bell }]),
        stop: stop.clone(),
        retarget,
        orphan_max: Duration::from_secs(30),
    }
    .spawn()
    .unwrap();
    Edge {
        tx,
        rx,
        _bell: bell_rx,
        stop,
    }
}

fn next(rx: &Receiver<LoopEvent>) -> LoopEvent {
    rx.recv_timeout(Duration::from_secs(10)).expect("an event")
}

/// Accepts one link as owner process 1 (preambles, hello); the owner's end.
fn accept(listener: &TcpListener) -> TcpStream {
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut p = [0u8; 4];
    s.read_exact(&mut p).unwrap();
    assert_eq!(&p, PREAMBLE);
    s.write_all(PREAMBLE).unwrap();
    assert_eq!(read_hello(&mut s).unwrap(), "edge-1");
    write_incarnation(&mut s, 1).unwrap();
    s
}

/// One frame of core messages from the edge; `None` when the edge closed the link.
fn read_msgs(s: &mut TcpStream) -> Option<Vec<CoreMsg>> {
    let mut body = Vec::new();
    if !codec::read_frame(s, &mut body).expect("a frame or the end of the link") {
        return None;
    }
    let mut r = Reader::new(&body).unwrap();
    let mut out = Vec::new();
    while r.more() {
        out.push(r.core_msg(7).unwrap());
    }
    Some(out)
}

/// A login of session `session` (user 40 + session) on loop 0 to `queue`.
fn join(session: u64, queue: &str) -> CoreMsg {
    CoreMsg::Join {
        conn: ConnRef {
            loop_id: 0,
            session,
        },
        seq: 4,
        user: 40 + session,
        queue: queue.into(),
        prio: false,
        peer: "127.0.0.1:1".parse().unwrap(),
        claim: None,
    }
}

/// The owner's answer to a join or a re-submission of `session`: a place in its
/// queue `queue` at key = user.
fn joined(session: SessionId, user: u64, queue: u32) -> LoopEvent {
    LoopEvent::Joined {
        session,
        seq: 4,
        user,
        result: Ok(JoinOk {
            queue,
            key: user,
            position: 1,
            queue_len: 1,
            rate_per_s: 0.0,
            resumed: false,
            admitted: None,
        }),
    }
}

/// Answers every join or re-submission in `msgs`, `queue_of` giving the owner's
/// queue id for a queue name; the packed sessions answered.
fn answer(owner: &mut TcpStream, msgs: &[CoreMsg], queue_of: impl Fn(&str) -> u32) -> Vec<u64> {
    let mut f = FrameBuf::default();
    let mut sessions = Vec::new();
    for m in msgs {
        let (CoreMsg::Join {
            conn, user, queue, ..
        }
        | CoreMsg::Resubmit {
            conn, user, queue, ..
        }) = m
        else {
            panic!("{m:?}")
        };
        f.put_event(&joined(conn.session, *user, queue_of(queue.as_str())));
        sessions.push(conn.session);
    }
    owner.write_all(f.finish()).unwrap();
    sessions
}

fn leave(session: u64, queue: u32) -> CoreMsg {
    CoreMsg::Leave {
        conn: ConnRef {
            loop_id: 0,
            session,
        },
        queue: remote_queue(3, queue),
        user: 40 + session,
    }
}

/// The dead owner held q (session 1) and r (sessions 2 and 3); q goes to one new
/// owner (the link's own connection), r to another (a child link). r's owner admits
/// session 2: the child stays (session 3 still waits behind it: its leave reaches r's
/// owner with that owner's id); once session 3 left, the child closes its connection
/// (failed before: it stayed open until the server stopped). The parent goes on: a
/// leave of q still reaches q's owner.
#[test]
fn a_child_link_ends_once_no_place_waits_behind_it() {
    let old = TcpListener::bind("127.0.0.1:0").unwrap();
    let (new_q, new_r) = (
        TcpListener::bind("127.0.0.1:0").unwrap(),
        TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    let retarget = Retarget::default();
    let edge = start(old.local_addr().unwrap().to_string(), retarget.clone());
    for (session, queue) in [(1, "q"), (2, "r"), (3, "r")] {
        edge.tx.send(join(session, queue)).unwrap();
    }
    let mut owner = accept(&old);
    let mut joins = Vec::new();
    while joins.len() < 3 {
        joins.extend(read_msgs(&mut owner).unwrap());
    }
    // Queue ids at the dead owner: q = 2, r = 3.
    answer(&mut owner, &joins, |q| if q == "q" { 2 } else { 3 });
    for _ in 0..3 {
        assert!(matches!(next(&edge.rx), LoopEvent::Joined { .. }));
    }
    drop(owner);
    drop(old);

    retarget
        .lock()
        .unwrap()
        .insert("q".into(), new_q.local_addr().unwrap().to_string());
    let mut owner_q = accept(&new_q);
    let msgs = read_msgs(&mut owner_q).unwrap();
    assert_eq!(answer(&mut owner_q, &msgs, |_| 6).len(), 1);
    assert!(matches!(next(&edge.rx), LoopEvent::Resync(_)));

    retarget
        .lock()
        .unwrap()
        .insert("r".into(), new_r.local_addr().unwrap().to_string());
    let mut owner_r = accept(&new_r);
    let mut msgs = Vec::new();
    while msgs.len() < 2 {
        msgs.extend(read_msgs(&mut owner_r).unwrap());
    }
    let sessions = answer(&mut owner_r, &msgs, |_| 9);
    for _ in 0..2 {
        assert!(matches!(next(&edge.rx), LoopEvent::Resync(_)));
    }

    // r's owner admits session 2; session 3 still waits behind the child.
    let mut f = FrameBuf::default();
    f.put_event(&LoopEvent::Admitted {
        session: sessions[0],
        token: "t".into(),
        expires_at: 1,
    });
    owner_r.write_all(f.finish()).unwrap();
    assert!(matches!(next(&edge.rx), LoopEvent::Admitted { .. }));
    let waiting = 5 - crate::cluster::link::codec::unpack_session(sessions[0]).1;
    edge.tx.send(leave(waiting, 3)).unwrap();
    let msgs = read_msgs(&mut owner_r).expect("the child still up with a place behind it");
    assert!(
        matches!(&msgs[..], [CoreMsg::Leave { queue: 9, .. }]),
        "{msgs:?}"
    );
    // Nothing waits behind the child any more: it closes its connection.
    assert!(
        read_msgs(&mut owner_r).is_none(),
        "the child link kept its connection with no place behind it"
    );
    edge.tx.send(leave(1, 2)).unwrap();
    let msgs = read_msgs(&mut owner_q).unwrap();
    assert!(
        matches!(
            &msgs[..],
            [CoreMsg::Leave {
                queue: 6,
                user: 41,
                ..
            }]
        ),
        "{msgs:?}"
    );
}
