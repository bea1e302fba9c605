//! The edge's link client against a fake owner on a real socket: answers and rank
//! batches reach the right loop (ids unpacked, queue ids mapped into the link's
//! range); a login in flight when the link breaks, or sent while the owner is
//! unreachable, is answered SHUTTING_DOWN instead of hanging.

use std::net::TcpListener;

use crossbeam_channel::Receiver;

use super::*;
use crate::doorbell;
use crate::msg::{ConnRef, JoinOk, QueueDelta, RankBatch};

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

/// A started link client to `addr`; the loops' ends; its stop flag.
struct Edge {
    tx: Sender<CoreMsg>,
    rxs: Vec<Receiver<LoopEvent>>,
    _bells: Vec<doorbell::BellRx>,
    stop: Arc<AtomicBool>,
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn start(addr: String) -> Edge {
    let (loops, rxs, bells) = loops();
    let (tx, inbox) = crossbeam_channel::bounded(64);
    let stop = Arc::new(AtomicBool::new(false));
    EdgeLink {
        index: 3,
        node: "owner".into(),
        addr,
        inbox,
        loops,
        stop: stop.clone(),
    }
    .spawn()
    .unwrap();
    Edge {
        tx,
        rxs,
        _bells: bells,
        stop,
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
    }
}

fn next(rx: &Receiver<LoopEvent>) -> LoopEvent {
    rx.recv_timeout(Duration::from_secs(10)).expect("an event")
}

/// Accepts one link and exchanges preambles; returns the owner's end.
fn accept(listener: &TcpListener) -> TcpStream {
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut p = [0u8; 4];
    s.read_exact(&mut p).unwrap();
    assert_eq!(&p, PREAMBLE);
    s.write_all(PREAMBLE).unwrap();
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
    assert!(matches!(
        next(&edge.rxs[0]),
        LoopEvent::LinkLost { link: 3 }
    ));
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
