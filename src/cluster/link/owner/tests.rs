//! The owner's acceptor against a real core: a test dials the link port, sends joins
//! and a leave in binary frames, and reads the answers and rank batches.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use super::*;
use crate::config::Config;
use crate::msg::{JoinOk, SessionReport};
use crate::queue::core::{Core, CoreTiming, LoopLink};
use crate::queue::state::{Limits, QueueState};
use crate::token::TokenSigner;

/// A core with one io loop (id 0, never read) and queue "q", on its own thread.
fn start_core() -> (Sender<CoreMsg>, JoinHandle<()>, Receiver<LoopEvent>) {
    let config = Config::default();
    let state = QueueState::new(Limits::from_config(&config), &[("q".into(), 100, 0.0)], 1);
    let (signer, _) = TokenSigner::from_config(&config.tokens).expect("signer");
    let (inbox_tx, inbox) = crossbeam_channel::bounded(64);
    let (tx, rx) = crossbeam_channel::bounded(64);
    let (bell, _bell_rx) = doorbell::pair().expect("doorbell");
    let core = Core::new(
        state,
        Arc::new(signer),
        inbox,
        vec![LoopLink { tx, bell }],
        CoreTiming {
            tick: Duration::from_millis(10),
            resync: Duration::from_secs(60),
        },
        Arc::new(AtomicBool::new(false)),
    );
    (inbox_tx, std::thread::spawn(move || core.run()), rx)
}

fn join(session: u64, user: u64) -> CoreMsg {
    CoreMsg::Join {
        conn: crate::msg::ConnRef {
            loop_id: 0,
            session,
        },
        seq: session as u32,
        user,
        queue: "q".into(),
        prio: false,
        peer: "127.0.0.1:1".parse().unwrap(),
        claim: None,
    }
}

/// Reads frames until `want` events came (or fails after a deadline).
fn read_events(stream: &mut TcpStream, want: impl Fn(&[LoopEvent]) -> bool) -> Vec<LoopEvent> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut events = Vec::new();
    let mut body = Vec::new();
    while !want(&events) {
        assert!(Instant::now() < deadline, "no answer in time: {events:?}");
        assert!(
            codec::read_frame(stream, &mut body).expect("frame"),
            "closed"
        );
        let mut r = Reader::new(&body).expect("frame body");
        while r.more() {
            events.push(r.event(|q| q).expect("event"));
        }
    }
    events
}

fn joined(events: &[LoopEvent]) -> Vec<(u64, JoinOk)> {
    events
        .iter()
        .filter_map(|e| match e {
            LoopEvent::Joined {
                session,
                result: Ok(ok),
                ..
            } => Some((*session, ok.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_dialed_link_is_a_loop_of_the_core() {
    let (core, core_thread, _loop0) = start_core();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let stats = Arc::new(LinkRegistry::default());
    let mut acceptor =
        LinkAcceptor::start(listener, core.clone(), (1, 7), 64, stats.clone()).unwrap();
    let mut link = TcpStream::connect(acceptor.addr()).unwrap();
    link.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    link.write_all(PREAMBLE).unwrap();
    let mut preamble = [0u8; 4];
    link.read_exact(&mut preamble).unwrap();
    assert_eq!(&preamble, PREAMBLE);
    crate::cluster::link::hello::write_hello(&mut link, "edge-1").unwrap();
    assert_eq!(
        crate::cluster::link::hello::read_incarnation(&mut link).unwrap(),
        7
    );

    // Three joins in one frame: answered in order with positions 1, 2, 3.
    let mut frame = FrameBuf::default();
    for (session, user) in [(11, 101), (12, 102), (13, 103)] {
        assert!(frame.put_core(&join(session, user), session));
    }
    link.write_all(frame.finish()).unwrap();
    frame.clear();
    let events = read_events(&mut link, |e| joined(e).len() == 3);
    let answers = joined(&events);
    let positions: Vec<(u64, u64)> = answers.iter().map(|(s, ok)| (*s, ok.position)).collect();
    assert_eq!(positions, vec![(11, 1), (12, 2), (13, 3)]);
    let first_key = answers[0].1.key;

    // The first leaves: a rank batch carries its departure, which moves the others.
    let leave = CoreMsg::Leave {
        conn: crate::msg::ConnRef {
            loop_id: 0,
            session: 11,
        },
        queue: answers[0].1.queue,
        user: 101,
    };
    assert!(frame.put_core(&leave, 11));
    // And the third disconnects (grace): no departure.
    let gone = CoreMsg::Disconnect {
        conn: crate::msg::ConnRef {
            loop_id: 0,
            session: 13,
        },
        queue: answers[2].1.queue,
        user: 103,
        report: SessionReport::default(),
    };
    assert!(frame.put_core(&gone, 13));
    link.write_all(frame.finish()).unwrap();
    let events = read_events(&mut link, |e| {
        e.iter().any(|e| {
            matches!(e, LoopEvent::Ranks(b)
                if b.queues.iter().any(|d| d.departed.contains(&first_key)))
        })
    });
    let batch = events
        .iter()
        .find_map(|e| match e {
            LoopEvent::Ranks(b) => Some(b.clone()),
            _ => None,
        })
        .unwrap();
    let delta = &batch.queues[0];
    assert_eq!(delta.shift(answers[1].1.key), -1, "second moves to 1");
    assert_eq!(delta.queue_len, 2);

    // The link's counters carry the edge's node id: 2 frames (5 messages) in, the
    // answers and batches out, connected. (A frame is counted once handled: the peer
    // may see its effect first.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let f = loop {
        let figures = stats.figures();
        let [f] = &figures[..] else {
            panic!("{figures:?}")
        };
        if (f.frames_sent >= 2 && f.frames_received >= 2) || Instant::now() > deadline {
            break f.clone();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!((f.peer.as_str(), f.side), ("edge-1", "owner"));
    assert_eq!((f.frames_received, f.relayed), (2, 5), "{f:?}");
    assert!(
        f.frames_sent >= 2 && f.bytes_sent > 0 && f.bytes_received > 0,
        "{f:?}"
    );
    assert_eq!((f.connected, f.reconnects), (1, 0));

    acceptor.stop();
    let _ = core.send(CoreMsg::Shutdown);
    core_thread.join().unwrap();
}

#[test]
fn a_peer_without_the_preamble_is_not_attached() {
    let (core, core_thread, _loop0) = start_core();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let stats = Arc::new(LinkRegistry::default());
    let mut acceptor = LinkAcceptor::start(listener, core.clone(), (1, 7), 64, stats).unwrap();
    let mut bad = TcpStream::connect(acceptor.addr()).unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4];
    // Closed without an answer.
    assert!(matches!(bad.read(&mut buf), Ok(0) | Err(_)));
    acceptor.stop();
    let _ = core.send(CoreMsg::Shutdown);
    core_thread.join().unwrap();
}
