//! Round trips of every link message kind, and refusals of broken frames.

use super::*;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::msg::{remote_queue, QueueDelta, RankBatch, SessionReport};

/// Encodes `msgs` as one frame and decodes it back (as virtual loop 9).
fn core_round_trip(msgs: &[CoreMsg], session: SessionId) -> Vec<CoreMsg> {
    let mut f = FrameBuf::default();
    for m in msgs {
        assert!(f.put_core(m, session));
    }
    let frame = f.finish().to_vec();
    let mut body = Vec::new();
    assert!(read_frame(&mut &frame[..], &mut body).unwrap());
    let mut r = Reader::new(&body).unwrap();
    let mut out = Vec::new();
    while r.more() {
        out.push(r.core_msg(9).unwrap());
    }
    out
}

fn events_round_trip(events: &[LoopEvent]) -> Vec<LoopEvent> {
    let mut f = FrameBuf::default();
    for e in events {
        f.put_event(e);
    }
    let frame = f.finish().to_vec();
    let mut body = Vec::new();
    assert!(read_frame(&mut &frame[..], &mut body).unwrap());
    let mut r = Reader::new(&body).unwrap();
    let mut out = Vec::new();
    while r.more() {
        out.push(r.event(|q| remote_queue(2, q)).unwrap());
    }
    out
}

#[test]
fn core_messages_round_trip() {
    let conn = ConnRef {
        loop_id: 1,
        session: 77,
    };
    let peer6: SocketAddr = "[2001:db8::1]:4242".parse().unwrap();
    let long = "x".repeat(100);
    let msgs = [
        CoreMsg::Join {
            conn,
            seq: 3,
            user: 42,
            queue: "world-1".into(),
            prio: true,
            peer: "10.1.2.3:5555".parse().unwrap(),
            claim: None,
        },
        CoreMsg::Join {
            conn,
            seq: 4,
            user: u64::MAX,
            queue: long.as_str().into(),
            prio: false,
            peer: peer6,
            claim: Some(u64::MAX - 1),
        },
        CoreMsg::Leave {
            conn,
            queue: remote_queue(0, 5),
            user: 8,
        },
        CoreMsg::Disconnect {
            conn,
            queue: 6,
            user: 9,
            report: SessionReport {
                answered: 1,
                pushed: 2,
                last_position: 3,
                kicked: Some(KickReason::IdleTimeout),
            },
        },
        CoreMsg::Disconnect {
            conn,
            queue: 6,
            user: 9,
            report: SessionReport::default(),
        },
    ];
    let packed = pack_session(3, 0x0000_0005_0000_0011).unwrap();
    let out = core_round_trip(&msgs, packed);
    assert_eq!(out.len(), msgs.len());
    let vconn = ConnRef {
        loop_id: 9,
        session: packed,
    };
    match &out[0] {
        CoreMsg::Join {
            conn,
            seq: 3,
            user: 42,
            queue,
            prio: true,
            peer,
            claim: None,
        } => {
            assert_eq!(*conn, vconn);
            assert_eq!(queue.as_str(), "world-1");
            assert_eq!(peer.to_string(), "10.1.2.3:5555");
        }
        other => panic!("{other:?}"),
    }
    match &out[1] {
        CoreMsg::Join {
            queue,
            peer,
            prio,
            claim,
            ..
        } => {
            assert_eq!(*claim, Some(u64::MAX - 1), "a place ticket's claim crosses");
            assert_eq!(queue.as_str(), long);
            assert_eq!(*peer, peer6);
            assert!(!prio);
        }
        other => panic!("{other:?}"),
    }
    // The edge's source bits are stripped: the owner sees its own id.
    assert!(matches!(
        out[2],
        CoreMsg::Leave {
            queue: 5,
            user: 8,
            ..
        }
    ));
    match &out[3] {
        CoreMsg::Disconnect {
            conn,
            queue: 6,
            user: 9,
            report,
        } => {
            assert_eq!(*conn, vconn);
            assert_eq!(report.kicked, Some(KickReason::IdleTimeout));
            assert_eq!(
                (report.answered, report.pushed, report.last_position),
                (1, 2, 3)
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&out[4], CoreMsg::Disconnect { report, .. } if *report == SessionReport::default())
    );
    assert_eq!(unpack_session(packed), (3, 0x0000_0005_0000_0011));
}

#[test]
fn other_core_messages_do_not_cross() {
    let mut f = FrameBuf::default();
    assert!(!f.put_core(&CoreMsg::Shutdown, 0));
    assert!(f.is_empty());
}

#[test]
fn sessions_that_do_not_fit_are_not_packed() {
    assert_eq!(pack_session(256, 1), None);
    assert_eq!(pack_session(0, 1 << 24), None);
    assert_eq!(
        unpack_session(pack_session(255, !0xff00_0000u64).unwrap()),
        (255, !0xff00_0000u64)
    );
}

#[test]
fn loop_events_round_trip() {
    let batch = RankBatch {
        queues: vec![QueueDelta {
            queue: 1,
            departed: vec![1, 5, 9],
            inserted: vec![2],
            queue_len: 40,
            rate_per_s: 2.5,
            admitted_max: [(3 << 32) | 7, (1 << 63) | (3 << 32) | 2],
        }],
    };
    let ok = JoinOk {
        queue: 1,
        key: 17,
        position: 4,
        queue_len: 40,
        rate_per_s: 0.5,
        resumed: true,
        admitted: None,
    };
    let admitted_ok = JoinOk {
        admitted: Some(("tok".into(), 99)),
        ..ok.clone()
    };
    let events = [
        LoopEvent::Ranks(Arc::new(batch)),
        LoopEvent::Resync(vec![(1, 2), (3, 4)]),
        LoopEvent::Joined {
            session: 5,
            seq: 6,
            user: 7,
            result: Ok(ok.clone()),
        },
        LoopEvent::Joined {
            session: 5,
            seq: 6,
            user: 7,
            result: Ok(admitted_ok.clone()),
        },
        LoopEvent::Joined {
            session: 5,
            seq: 6,
            user: 7,
            result: Err(JoinError::QueueFull),
        },
        LoopEvent::Joined {
            session: 5,
            seq: 6,
            user: 7,
            result: Err(JoinError::Gone),
        },
        LoopEvent::Admitted {
            session: 8,
            token: "a.b.c".into(),
            expires_at: 123,
        },
        LoopEvent::Kick {
            session: 9,
            reason: KickReason::Removed,
        },
        LoopEvent::Shutdown,
    ];
    let out = events_round_trip(&events);
    assert_eq!(out.len(), events.len());
    let mapped = remote_queue(2, 1);
    match &out[0] {
        LoopEvent::Ranks(b) => {
            let d = &b.queues[0];
            assert_eq!(d.queue, mapped);
            assert_eq!(
                (d.departed.clone(), d.inserted.clone()),
                (vec![1, 5, 9], vec![2])
            );
            assert_eq!((d.queue_len, d.rate_per_s), (40, 2.5));
            let marks = [(3 << 32) | 7, (1 << 63) | (3 << 32) | 2];
            assert_eq!(d.admitted_max, marks);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&out[1], LoopEvent::Resync(l) if *l == vec![(1, 2), (3, 4)]));
    let expect_ok = JoinOk {
        queue: mapped,
        ..ok
    };
    assert!(
        matches!(&out[2], LoopEvent::Joined { session: 5, seq: 6, user: 7, result: Ok(r) } if *r == expect_ok)
    );
    let expect_admitted = JoinOk {
        queue: mapped,
        ..admitted_ok
    };
    assert!(matches!(&out[3], LoopEvent::Joined { result: Ok(r), .. } if *r == expect_admitted));
    assert!(matches!(
        &out[4],
        LoopEvent::Joined {
            result: Err(JoinError::QueueFull),
            ..
        }
    ));
    assert!(matches!(
        &out[5],
        LoopEvent::Joined {
            result: Err(JoinError::Gone),
            ..
        }
    ));
    assert!(
        matches!(&out[6], LoopEvent::Admitted { session: 8, token, expires_at: 123 } if token == "a.b.c")
    );
    assert!(matches!(
        &out[7],
        LoopEvent::Kick {
            session: 9,
            reason: KickReason::Removed
        }
    ));
    assert!(matches!(&out[8], LoopEvent::Shutdown));
}

#[test]
fn broken_frames_are_refused() {
    let mut f = FrameBuf::default();
    f.put_event(&LoopEvent::Kick {
        session: 1,
        reason: KickReason::Removed,
    });
    let frame = f.finish().to_vec();
    let body = &frame[4..];
    // Cut anywhere inside the message: truncated, never a panic.
    for cut in 4..body.len() {
        let mut r = Reader::new(&body[..cut]).unwrap();
        assert_eq!(r.event(|q| q).unwrap_err(), CodecError::Truncated);
    }
    let mut bad = body.to_vec();
    bad[4] = 200;
    assert_eq!(
        Reader::new(&bad).unwrap().event(|q| q).unwrap_err(),
        CodecError::BadValue(200)
    );
    // A count of keys past the end is refused before allocating.
    let mut lie = vec![1, 0, 0, 0, RANKS, 1, 0, 0, 0];
    lie.extend_from_slice(&[0; 20]);
    lie.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        Reader::new(&lie).unwrap().event(|q| q).unwrap_err(),
        CodecError::Truncated
    );
    let huge = ((FRAME_BYTES_MAX + 1) as u32).to_le_bytes();
    assert!(read_frame(&mut &huge[..], &mut Vec::new()).is_err());
    assert!(!read_frame(&mut &[][..], &mut Vec::new()).unwrap());
}

/// A failover re-submission crosses with its user, key, queue name and the queue's
/// admitted marks.
#[test]
fn resubmit_round_trips() {
    let msg = CoreMsg::Resubmit {
        conn: ConnRef {
            loop_id: 1,
            session: 5,
        },
        user: 77,
        key: (1 << 63) | (3 << 32) | 12,
        queue: "world-1".into(),
        admitted: [(3 << 32) | 9, (1 << 63) | (3 << 32) | 4],
    };
    let out = core_round_trip(&[msg], 0x0100_0005);
    match &out[..] {
        [CoreMsg::Resubmit {
            conn,
            user,
            key,
            queue,
            admitted,
        }] => {
            assert_eq!(conn.loop_id, 9);
            assert_eq!(conn.session, 0x0100_0005);
            assert_eq!(*user, 77);
            assert_eq!(*key, (1 << 63) | (3 << 32) | 12);
            assert_eq!(queue.as_str(), "world-1");
            assert_eq!(*admitted, [(3 << 32) | 9, (1 << 63) | (3 << 32) | 4]);
        }
        other => panic!("{other:?}"),
    }
}
