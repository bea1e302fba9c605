//! The state machine held against a plain model: a `Vec` of players in order.

use super::*;

fn conn(n: u64) -> ConnRef {
    ConnRef {
        loop_id: (n % 3) as u16,
        session: n,
    }
}

fn limits() -> Limits {
    Limits {
        reconnect_grace_ms: 5_000,
        token_ttl_secs: 300,
        auto_create: false,
        auto_max_waiting: 10,
        max_queues: 1000,
        auto_expire_ms: 0,
    }
}

fn state() -> QueueState {
    QueueState::new(limits(), &[("q".into(), 1_000_000, 0.0)], 7)
}

/// One player as the model sees it.
#[derive(Debug, Clone)]
struct ModelPlace {
    user: UserId,
    prio: bool,
    conn: Option<ConnRef>,
    grace_deadline: u64,
}

/// The plain model: priority players first, each lane in arrival order.
#[derive(Default)]
struct Model {
    order: Vec<ModelPlace>,
    admitted: Vec<UserId>,
}

impl Model {
    fn index(&self, user: UserId) -> Option<usize> {
        self.order.iter().position(|p| p.user == user)
    }

    fn insert(&mut self, place: ModelPlace) {
        if place.prio {
            let at = self.order.iter().take_while(|p| p.prio).count();
            self.order.insert(at, place);
        } else {
            self.order.push(place);
        }
    }
}

use crate::test_rng::Rng;

fn run_seed(seed: u64, steps: usize) {
    let mut rng = Rng::new(seed | 1);
    let mut s = state();
    let mut m = Model::default();
    let mut out = Vec::new();
    let mut now = 1_000_000u64;
    let mut next_conn = 1u64;
    let mut last_pos: HashMap<UserId, u64> = HashMap::new();
    for step in 0..steps {
        out.clear();
        now += rng.below(400);
        let users = 60u64;
        let r = rng.below(100);
        let mut prio_inserted = false;
        if r < 35 {
            // Join, or log in again (resume / duplicate).
            let user = rng.below(users);
            let prio = rng.below(5) == 0;
            let c = conn(next_conn);
            next_conn += 1;
            let applied = s.apply(
                &Op::Join {
                    queue: "q".into(),
                    user,
                    prio,
                    conn: c,
                },
                now,
                &mut out,
            );
            let resumed = matches!(applied, Applied::Joined { resumed: true, .. });
            if let Some(i) = m.index(user) {
                assert!(resumed, "seed {seed} step {step}: resume expected");
                if let Some(old) = m.order[i].conn {
                    assert!(out.contains(&Event::Kick {
                        queue: 0,
                        user,
                        conn: old,
                        reason: KickReason::DuplicateLogin
                    }));
                }
                m.order[i].conn = Some(c);
            } else if s.grant(0, user).is_some() {
                assert!(resumed);
            } else {
                assert!(!resumed);
                prio_inserted = prio;
                m.insert(ModelPlace {
                    user,
                    prio,
                    conn: Some(c),
                    grace_deadline: 0,
                });
            }
        } else if r < 45 {
            // Leave from the holding connection.
            if let Some(i) = (!m.order.is_empty()).then(|| rng.below(m.order.len() as u64) as usize)
            {
                let p = m.order[i].clone();
                if let Some(c) = p.conn {
                    s.apply(
                        &Op::Leave {
                            queue: 0,
                            user: p.user,
                            conn: c,
                        },
                        now,
                        &mut out,
                    );
                    m.order.remove(i);
                    assert!(out.iter().any(|e| matches!(e, Event::Departed { .. })));
                }
            }
        } else if r < 60 {
            // Disconnect.
            if let Some(i) = (!m.order.is_empty()).then(|| rng.below(m.order.len() as u64) as usize)
            {
                if let Some(c) = m.order[i].conn {
                    let user = m.order[i].user;
                    s.apply(
                        &Op::Disconnect {
                            queue: 0,
                            user,
                            conn: c,
                        },
                        now,
                        &mut out,
                    );
                    m.order[i].conn = None;
                    m.order[i].grace_deadline = now + limits().reconnect_grace_ms;
                }
            }
        } else if r < 63 {
            // A stale connection's leave and disconnect change nothing.
            if let Some(p) = m.order.first().cloned() {
                let stale = conn(0);
                s.apply(
                    &Op::Leave {
                        queue: 0,
                        user: p.user,
                        conn: stale,
                    },
                    now,
                    &mut out,
                );
                s.apply(
                    &Op::Disconnect {
                        queue: 0,
                        user: p.user,
                        conn: stale,
                    },
                    now,
                    &mut out,
                );
                assert!(out.is_empty());
            }
        } else if r < 80 {
            // Manual admission from the head.
            let count = rng.below(4);
            s.apply(&Op::Admit { queue: 0, count }, now, &mut out);
            let taken = (count as usize).min(m.order.len());
            let expected: Vec<UserId> = m.order.drain(..taken).map(|p| p.user).collect();
            let got: Vec<UserId> = out
                .iter()
                .filter_map(|e| match e {
                    Event::Admitted { user, .. } => Some(*user),
                    _ => None,
                })
                .collect();
            assert_eq!(got, expected, "seed {seed} step {step}: admission order");
            m.admitted.extend(expected);
        } else {
            // Time passes: grace expiry.
            now += rng.below(3_000);
            s.apply(&Op::Tick, now, &mut out);
            m.order
                .retain(|p| p.conn.is_some() || p.grace_deadline > now);
        }

        // Exact positions, never rising except by a priority insertion.
        let q = &s.queues()[0];
        assert_eq!(q.waiting(), m.order.len() as u64, "seed {seed} step {step}");
        for (i, p) in m.order.iter().enumerate() {
            let place = s.place(0, p.user).expect("model place exists in state");
            assert_eq!(place.conn, p.conn);
            let pos = q.position(place.key);
            assert_eq!(pos, i as u64 + 1, "seed {seed} step {step} user {}", p.user);
            if let Some(&before) = last_pos.get(&p.user) {
                assert!(
                    pos <= before || (prio_inserted && pos == before + 1),
                    "seed {seed} step {step}: position rose {before} -> {pos}"
                );
            }
        }
        last_pos = m
            .order
            .iter()
            .enumerate()
            .map(|(i, p)| (p.user, i as u64 + 1))
            .collect();
    }
}

#[test]
fn positions_match_model_across_seeds() {
    for seed in 1..=40u64 {
        run_seed(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 3_000);
    }
}

#[test]
fn unknown_queue_and_full_queue() {
    let mut s = QueueState::new(limits(), &[("q".into(), 2, 0.0)], 7);
    let mut out = Vec::new();
    let join = |user, queue: &str| Op::Join {
        queue: queue.into(),
        user,
        prio: false,
        conn: conn(user),
    };
    assert_eq!(
        s.apply(&join(1, "nope"), 0, &mut out),
        Applied::JoinFailed(JoinError::UnknownQueue)
    );
    assert!(matches!(
        s.apply(&join(1, "q"), 0, &mut out),
        Applied::Joined { .. }
    ));
    assert!(matches!(
        s.apply(&join(2, "q"), 0, &mut out),
        Applied::Joined { .. }
    ));
    assert_eq!(
        s.apply(&join(3, "q"), 0, &mut out),
        Applied::JoinFailed(JoinError::QueueFull)
    );
    // A resume is not a new place: allowed when full.
    assert!(matches!(
        s.apply(&join(2, "q"), 0, &mut out),
        Applied::Joined { resumed: true, .. }
    ));
}

#[test]
fn auto_create_makes_queues_on_join() {
    let mut l = limits();
    l.auto_create = true;
    let mut s = QueueState::new(l, &[], 7);
    let mut out = Vec::new();
    let applied = s.apply(
        &Op::Join {
            queue: "world-2".into(),
            user: 1,
            prio: false,
            conn: conn(1),
        },
        0,
        &mut out,
    );
    assert_eq!(
        applied,
        Applied::Joined {
            queue: 0,
            resumed: false
        }
    );
    assert_eq!(s.queue_id("world-2"), Some(0));
    assert_eq!(s.queues()[0].max_waiting, 10);
}

#[test]
fn grants_resume_expire_and_consume_once() {
    let mut s = state();
    let mut out = Vec::new();
    let now = 10_000_000;
    s.apply(
        &Op::Join {
            queue: "q".into(),
            user: 5,
            prio: false,
            conn: conn(1),
        },
        now,
        &mut out,
    );
    s.apply(&Op::Admit { queue: 0, count: 1 }, now, &mut out);
    let grant = s.grant(0, 5).expect("granted");
    assert_eq!(s.queues()[0].unused_grants, 1);
    // Reconnecting while admitted resumes the admission.
    assert_eq!(
        s.apply(
            &Op::Join {
                queue: "q".into(),
                user: 5,
                prio: false,
                conn: conn(2)
            },
            now,
            &mut out
        ),
        Applied::Joined {
            queue: 0,
            resumed: true
        }
    );
    let jti = s.jti_text(grant.jti);
    assert_eq!(jti.len(), 32);
    let consume = Op::ConsumeJti {
        jti: jti.clone(),
        exp: grant.exp,
    };
    assert_eq!(s.apply(&consume, now, &mut out), Applied::Consumed(true));
    assert_eq!(s.apply(&consume, now, &mut out), Applied::Consumed(false));
    assert_eq!(s.grant(0, 5), None);
    assert_eq!(s.queues()[0].unused_grants, 0);
    // Unused grants expire at `exp`.
    s.apply(
        &Op::Join {
            queue: "q".into(),
            user: 6,
            prio: false,
            conn: conn(3),
        },
        now,
        &mut out,
    );
    s.apply(&Op::Admit { queue: 0, count: 1 }, now, &mut out);
    assert!(s.grant(0, 6).is_some());
    s.apply(&Op::Tick, now + 301_000, &mut out);
    assert_eq!(s.grant(0, 6), None);
    assert_eq!(s.queues()[0].unused_grants, 0);
}

#[test]
fn rate_and_capacity_drive_ticks() {
    let mut s = state();
    let mut out = Vec::new();
    for user in 0..100 {
        s.apply(
            &Op::Join {
                queue: "q".into(),
                user,
                prio: false,
                conn: conn(user),
            },
            0,
            &mut out,
        );
    }
    s.apply(&Op::Tick, 1_000, &mut out);
    assert_eq!(s.queues()[0].admitted_total, 0, "manual by default");
    s.apply(
        &Op::SetRate {
            queue: 0,
            per_second: 20.0,
        },
        1_000,
        &mut out,
    );
    for t in 1..=100 {
        s.apply(&Op::Tick, 1_000 + t * 10, &mut out);
    }
    assert_eq!(s.queues()[0].admitted_total, 20);
    s.apply(
        &Op::Pause {
            queue: 0,
            paused: true,
        },
        2_000,
        &mut out,
    );
    s.apply(&Op::Tick, 3_000, &mut out);
    assert_eq!(s.queues()[0].admitted_total, 20);
    s.apply(
        &Op::SetRate {
            queue: 0,
            per_second: 0.0,
        },
        3_000,
        &mut out,
    );
    s.apply(
        &Op::Pause {
            queue: 0,
            paused: false,
        },
        3_000,
        &mut out,
    );
    // Capacity 30 with 20 unused tokens and 5 online: room for 5.
    s.apply(
        &Op::SetCapacity {
            queue: 0,
            online: 5,
            capacity: 30,
        },
        3_000,
        &mut out,
    );
    s.apply(&Op::Tick, 3_010, &mut out);
    assert_eq!(s.queues()[0].admitted_total, 25);
    s.apply(&Op::Tick, 3_020, &mut out);
    assert_eq!(s.queues()[0].admitted_total, 25);
    assert_eq!(
        s.apply(
            &Op::SetRate {
                queue: 0,
                per_second: f64::NAN
            },
            0,
            &mut out
        ),
        Applied::Invalid(RATE_INVALID)
    );
    assert_eq!(
        s.apply(&Op::Admit { queue: 9, count: 1 }, 0, &mut out),
        Applied::UnknownQueue
    );
}

#[test]
fn ops_serialize_for_a_log() {
    let op = Op::Join {
        queue: "q".into(),
        user: 1,
        prio: true,
        conn: conn(1),
    };
    let text = serde_json::to_string(&op).unwrap();
    let back: Op = serde_json::from_str(&text).unwrap();
    assert_eq!(back, op);
}

#[test]
fn auto_create_stops_at_max_queues() {
    let mut l = limits();
    l.auto_create = true;
    l.max_queues = 2;
    let mut s = QueueState::new(l, &[("q".into(), 10, 0.0)], 7);
    let mut out = Vec::new();
    let join = |queue: &str| Op::Join {
        queue: queue.into(),
        user: 1,
        prio: false,
        conn: conn(1),
    };
    assert!(matches!(
        s.apply(&join("a"), 0, &mut out),
        Applied::Joined { .. }
    ));
    assert_eq!(
        s.apply(&join("b"), 0, &mut out),
        Applied::JoinFailed(JoinError::UnknownQueue)
    );
    assert_eq!(s.queues().len(), 2);
}

#[test]
fn leave_after_admission_gives_the_token_up() {
    let mut s = state();
    let mut out = Vec::new();
    let c = conn(1);
    s.apply(
        &Op::Join {
            queue: "q".into(),
            user: 5,
            prio: false,
            conn: c,
        },
        0,
        &mut out,
    );
    // Admitted by capacity: the token was only pushed to the player (a token an HTTP
    // `admit` returned is kept, see `a_leave_never_voids_a_token_returned_by_admit`).
    s.apply(
        &Op::SetCapacity {
            queue: 0,
            online: 0,
            capacity: 1,
        },
        0,
        &mut out,
    );
    s.apply(&Op::Tick, 10, &mut out);
    let grant = s.grant(0, 5).expect("granted");
    assert_eq!(s.queues()[0].unused_grants, 1);
    s.apply(
        &Op::Leave {
            queue: 0,
            user: 5,
            conn: c,
        },
        0,
        &mut out,
    );
    assert_eq!(s.grant(0, 5), None);
    assert_eq!(s.queues()[0].unused_grants, 0);
    let consume = Op::ConsumeJti {
        jti: s.jti_text(grant.jti),
        exp: grant.exp,
    };
    assert_eq!(s.apply(&consume, 0, &mut out), Applied::Consumed(false));
}

/// Admits `user` (joined on `c`) by capacity: its token is only pushed to it.
fn join_and_tick_admit(s: &mut QueueState, user: UserId, c: ConnRef) -> Grant {
    let mut out = Vec::new();
    s.apply(
        &Op::Join {
            queue: "q".into(),
            user,
            prio: false,
            conn: c,
        },
        0,
        &mut out,
    );
    let room = s.queues()[0].unused_grants + 1;
    s.apply(
        &Op::SetCapacity {
            queue: 0,
            online: 0,
            capacity: room,
        },
        0,
        &mut out,
    );
    s.apply(&Op::Tick, 10, &mut out);
    s.grant(0, user).expect("admitted by capacity")
}

/// Issue 7 item 6: A is admitted, B logs in as the same user (A is kicked), A's leave
/// arrives late: it is stale and voids nothing. B's own leave does give the token up.
#[test]
fn a_stale_leave_does_not_void_the_newer_connections_admission() {
    let mut s = state();
    let mut out = Vec::new();
    let (a, b) = (conn(1), conn(2));
    let grant = join_and_tick_admit(&mut s, 5, a);
    assert_eq!(grant.conn, Some(a));
    s.apply(
        &Op::Join {
            queue: "q".into(),
            user: 5,
            prio: false,
            conn: b,
        },
        20,
        &mut out,
    );
    assert_eq!(
        out,
        vec![Event::Kick {
            queue: 0,
            user: 5,
            conn: a,
            reason: KickReason::DuplicateLogin
        }],
        "the newest login holds the admission"
    );
    out.clear();
    for op in [
        Op::Leave {
            queue: 0,
            user: 5,
            conn: a,
        },
        Op::Disconnect {
            queue: 0,
            user: 5,
            conn: a,
        },
    ] {
        s.apply(&op, 30, &mut out);
        assert_eq!(
            s.grant(0, 5).map(|g| (g.jti, g.conn)),
            Some((grant.jti, Some(b)))
        );
    }
    assert!(out.is_empty());
    s.apply(
        &Op::Leave {
            queue: 0,
            user: 5,
            conn: b,
        },
        40,
        &mut out,
    );
    assert_eq!(s.grant(0, 5), None);
    assert_eq!(s.queues()[0].unused_grants, 0);
}

/// Issue 7 item 6: a token that an HTTP `admit` answer returned is never voided by the
/// player's `leave` (it may already be with the login server); use still ends it.
#[test]
fn a_leave_never_voids_a_token_returned_by_admit() {
    let mut s = state();
    let mut out = Vec::new();
    let c = conn(1);
    s.apply(
        &Op::Join {
            queue: "q".into(),
            user: 5,
            prio: false,
            conn: c,
        },
        0,
        &mut out,
    );
    s.apply(&Op::Admit { queue: 0, count: 1 }, 0, &mut out);
    let grant = s.grant(0, 5).expect("granted");
    assert!(grant.returned);
    s.apply(
        &Op::Leave {
            queue: 0,
            user: 5,
            conn: c,
        },
        0,
        &mut out,
    );
    assert_eq!(s.grant(0, 5), Some(grant));
    assert_eq!(s.queues()[0].unused_grants, 1);
    let consume = Op::ConsumeJti {
        jti: s.jti_text(grant.jti),
        exp: grant.exp,
    };
    assert_eq!(s.apply(&consume, 0, &mut out), Applied::Consumed(true));
}

/// A restart forgets every connection: a connection id of the new process that equals
/// an old holder's cannot give the admission up.
#[test]
fn a_restart_forgets_who_held_an_admission() {
    let mut s = state();
    let mut out = Vec::new();
    let c = conn(1);
    let grant = join_and_tick_admit(&mut s, 5, c);
    s.apply(&Op::Restart, 50, &mut out);
    s.apply(
        &Op::Leave {
            queue: 0,
            user: 5,
            conn: c,
        },
        60,
        &mut out,
    );
    assert_eq!(s.grant(0, 5).map(|g| g.jti), Some(grant.jti));
}

/// Issue 7 item 4: the state machine refuses rates and capacity reports out of bounds on
/// its own (the HTTP edge checks too), naming the field, and changes nothing.
#[test]
fn set_rate_and_capacity_out_of_bounds_are_invalid() {
    let mut s = state();
    let mut out = Vec::new();
    for per_second in [f64::NAN, f64::INFINITY, -1.0, 1e300, RATE_MAX_PER_S * 2.0] {
        assert_eq!(
            s.apply(
                &Op::SetRate {
                    queue: 0,
                    per_second
                },
                0,
                &mut out
            ),
            Applied::Invalid(RATE_INVALID),
            "{per_second}"
        );
    }
    assert!(RATE_INVALID.contains(&format!("{RATE_MAX_PER_S}")));
    assert_eq!(s.queues()[0].pacer.rate_per_s, 0.0);
    let max = RATE_MAX_PER_S;
    assert_eq!(
        s.apply(
            &Op::SetRate {
                queue: 0,
                per_second: max
            },
            0,
            &mut out
        ),
        Applied::Ok
    );
    let over = CAPACITY_MAX + 1;
    for (online, capacity, why) in [
        (over, 10, ONLINE_INVALID),
        (u64::MAX, 10, ONLINE_INVALID),
        (0, over, CAPACITY_INVALID),
        (0, u64::MAX, CAPACITY_INVALID),
    ] {
        let op = Op::SetCapacity {
            queue: 0,
            online,
            capacity,
        };
        assert_eq!(s.apply(&op, 0, &mut out), Applied::Invalid(why));
        assert!(why.contains(&CAPACITY_MAX.to_string()));
    }
    assert_eq!(s.queues()[0].pacer.capacity, None);
    let op = Op::SetCapacity {
        queue: 0,
        online: CAPACITY_MAX,
        capacity: CAPACITY_MAX,
    };
    assert_eq!(s.apply(&op, 0, &mut out), Applied::Ok);
}

/// Issue 7 item 4: one tick admits at most `TICK_ADMIT_MAX` per queue, however much
/// room a capacity report gives; the rest follow on later ticks.
#[test]
fn capacity_admission_is_capped_per_tick() {
    use crate::queue::pacing::TICK_ADMIT_MAX;
    let mut s = state();
    let mut out = Vec::new();
    let n = TICK_ADMIT_MAX * 2 + 5;
    for user in 0..n {
        let op = Op::Join {
            queue: "q".into(),
            user,
            prio: false,
            conn: conn(user),
        };
        s.apply(&op, 0, &mut out);
    }
    let op = Op::SetCapacity {
        queue: 0,
        online: 0,
        capacity: CAPACITY_MAX,
    };
    s.apply(&op, 0, &mut out);
    s.apply(&Op::Tick, 10, &mut out);
    assert_eq!(s.queues()[0].admitted_total, TICK_ADMIT_MAX);
    s.apply(&Op::Tick, 20, &mut out);
    s.apply(&Op::Tick, 30, &mut out);
    assert_eq!(s.queues()[0].admitted_total, n);
}

/// Snapshots keep who holds each admission and whether HTTP returned its token (a log
/// replayed after the snapshot depends on both); a snapshot written before that section
/// existed still decodes, its grants held by nobody and never voided by a `leave`.
#[test]
fn snapshots_keep_grant_holders_and_read_the_older_format() {
    let mut s = state();
    let mut out = Vec::new();
    let pushed = join_and_tick_admit(&mut s, 5, conn(1));
    s.apply(
        &Op::Join {
            queue: "q".into(),
            user: 6,
            prio: false,
            conn: conn(2),
        },
        0,
        &mut out,
    );
    s.apply(&Op::Admit { queue: 0, count: 1 }, 0, &mut out);
    let returned = s.grant(0, 6).expect("admitted");
    let mut bytes = Vec::new();
    s.encode_snapshot(&mut bytes);
    let back = QueueState::decode_snapshot(limits(), &bytes).expect("decodes");
    assert_eq!(back.grant(0, 5), Some(pushed));
    assert_eq!(back.grant(0, 6), Some(returned));
    let mut again = Vec::new();
    back.encode_snapshot(&mut again);
    assert_eq!(again, bytes, "canonical");
    // The older format: the same bytes without the holder section (per grant: a
    // connection, 1 + 2 + 8 bytes when present, and a flag).
    let holders = (1 + 2 + 8 + 1) * 2;
    let old = &bytes[..bytes.len() - holders];
    let back = QueueState::decode_snapshot(limits(), old).expect("older format decodes");
    let g = back.grant(0, 5).expect("kept");
    assert_eq!((g.jti, g.conn, g.returned), (pushed.jti, None, true));
    // A trailing partial section is refused, not guessed at.
    assert!(QueueState::decode_snapshot(limits(), &bytes[..bytes.len() - 1]).is_err());
}

/// Issue 7: auto-created queues expire once idle, as the core drives it: a tick, then
/// `ExpireQueue` for every queue `next_expiry` names.
struct Expiring {
    s: QueueState,
    out: Vec<Event>,
    now_ms: u64,
    next_conn: u64,
}

impl Expiring {
    /// auto_create, max_queues 3 with one configured queue "cfg", expiry after 1 s.
    fn new() -> Expiring {
        let mut l = limits();
        l.auto_create = true;
        l.max_queues = 3;
        l.auto_expire_ms = 1_000;
        Expiring {
            s: QueueState::new(l, &[("cfg".into(), 10, 0.0)], 7),
            out: Vec::new(),
            now_ms: 1_000_000,
            next_conn: 1,
        }
    }

    fn apply(&mut self, op: Op) -> Applied {
        self.out.clear();
        self.s.apply(&op, self.now_ms, &mut self.out)
    }

    /// Lets `ms` pass: a tick, then the expiries that are due.
    fn pass(&mut self, ms: u64) -> Vec<QueueId> {
        self.now_ms += ms;
        self.apply(Op::Tick);
        let mut expired = Vec::new();
        let mut from = 0;
        while let Some(queue) = self.s.next_expiry(self.now_ms, from) {
            assert_eq!(self.apply(Op::ExpireQueue { queue }), Applied::Ok);
            expired.push(queue);
            from = queue as usize + 1;
        }
        expired
    }

    /// `user` joins `queue` on a new connection.
    fn join(&mut self, user: UserId, queue: &str) -> (Applied, ConnRef) {
        self.next_conn += 1;
        let c = conn(self.next_conn);
        let op = Op::Join {
            queue: queue.into(),
            user,
            prio: false,
            conn: c,
        };
        (self.apply(op), c)
    }

    /// `user` joins `queue` and leaves; the queue id, or the failure.
    fn visit(&mut self, user: UserId, queue: &str) -> Result<QueueId, Applied> {
        match self.join(user, queue) {
            (Applied::Joined { queue, .. }, c) => {
                self.apply(Op::Leave {
                    queue,
                    user,
                    conn: c,
                });
                Ok(queue)
            }
            (other, _) => Err(other),
        }
    }

    fn live_names(&self) -> Vec<String> {
        let mut names: Vec<_> = self
            .s
            .queues()
            .iter()
            .filter(|q| !q.is_expired())
            .map(|q| q.name.clone())
            .collect();
        names.sort();
        names
    }
}

#[test]
fn idle_auto_created_queues_expire_and_free_their_names() {
    let mut e = Expiring::new();
    assert_eq!(e.visit(1, "a"), Ok(1));
    assert_eq!(e.visit(1, "b"), Ok(2));
    let full = Err(Applied::JoinFailed(JoinError::UnknownQueue));
    assert_eq!(e.visit(1, "c"), full);
    // Not yet idle long enough.
    assert!(e.pass(999).is_empty());
    assert_eq!(e.visit(1, "c"), full);
    assert_eq!(e.pass(1), vec![1, 2]);
    assert_eq!(e.live_names(), ["cfg"]);
    assert_eq!(e.s.queue_id("a"), None);
    // Fresh names beyond max_queues now fit, in the freed slots (ids stay bounded).
    for i in 0..20u64 {
        let name = format!("fresh-{i}");
        let id = e.visit(2, &name).expect("accepted");
        assert!(id == 1 || id == 2, "id {id}");
        e.pass(1_000);
        assert_eq!(e.s.queue_id(&name), None, "{name} expired");
    }
    assert_eq!(e.s.queues().len(), 3, "no slot beyond max_queues");
    // An expired name can be made again.
    assert!(e.visit(3, "a").is_ok());
    assert_eq!(e.live_names(), ["a", "cfg"]);
    // The configured queue never expires, though idle all along.
    e.pass(1_000_000);
    assert_eq!(e.live_names(), ["cfg"]);
    let cfg = e.s.queue_id("cfg").unwrap();
    assert_eq!(
        e.apply(Op::ExpireQueue { queue: cfg }),
        Applied::Invalid("only an idle auto-created queue expires")
    );
}

#[test]
fn a_queue_in_use_does_not_expire() {
    let mut e = Expiring::new();
    // A player in reconnect grace (5 s here) keeps the queue.
    let (applied, c) = e.join(1, "grace");
    let Applied::Joined { queue: grace, .. } = applied else {
        panic!("{applied:?}")
    };
    e.apply(Op::Disconnect {
        queue: grace,
        user: 1,
        conn: c,
    });
    // An unused grant keeps the queue.
    let (applied, _) = e.join(2, "granted");
    let Applied::Joined { queue: granted, .. } = applied else {
        panic!("{applied:?}")
    };
    e.apply(Op::Admit {
        queue: granted,
        count: 1,
    });
    assert_eq!(e.s.grant(granted, 2).map(|g| g.exp), Some(1_000 + 300));
    for _ in 0..4 {
        assert!(e.pass(1_000).is_empty());
    }
    assert_eq!(
        e.apply(Op::ExpireQueue { queue: grace }),
        Applied::Invalid("only an idle auto-created queue expires")
    );
    // Grace ends (5 s): the queue empties, then expires a second later.
    assert!(e.pass(1_000).is_empty());
    assert_eq!(e.s.queues()[grace as usize].waiting(), 0);
    assert_eq!(e.pass(1_000), vec![grace]);
    // The grant expires (300 s): then its queue goes too.
    assert!(e.s.queue_id("granted").is_some());
    e.pass(300_000);
    e.pass(1_000);
    assert_eq!(e.s.queue_id("granted"), None);
}

#[test]
fn a_queue_that_admitted_players_keeps_its_slot_for_its_name() {
    let mut e = Expiring::new();
    let (_, c) = e.join(1, "adm");
    let adm = e.s.queue_id("adm").unwrap();
    e.apply(Op::Admit {
        queue: adm,
        count: 1,
    });
    let jti = e.s.jti_text(e.s.grant(adm, 1).unwrap().jti);
    e.apply(Op::ConsumeJti { jti, exp: u64::MAX });
    assert_eq!(e.pass(1_000), vec![adm]);
    // The admitted player's connection may still hold `adm`: other names never get the
    // slot, so its stale messages reach no other queue.
    assert_eq!(e.visit(2, "other"), Ok(2));
    assert_eq!(e.pass(1_000), vec![2]);
    assert_eq!(e.visit(3, "third"), Ok(2));
    // A stale `leave` of the old connection for the old id does nothing.
    e.apply(Op::Leave {
        queue: adm,
        user: 1,
        conn: c,
    });
    // The same name comes back in its own slot, with its counters and later seqs.
    let (applied, _) = e.join(4, "adm");
    assert_eq!(
        applied,
        Applied::Joined {
            queue: adm,
            resumed: false
        }
    );
    let q = &e.s.queues()[adm as usize];
    assert_eq!(q.admitted_total, 1);
    assert_eq!(e.s.place(adm, 4).map(|p| split_key(p.key).1), Some(1));
    // Quarantined tombstones do not count against max_queues.
    e.apply(Op::Leave {
        queue: adm,
        user: 4,
        conn: conn(e.next_conn),
    });
    e.pass(1_000);
    assert_eq!(e.visit(5, "x"), Ok(2));
    assert_eq!(e.visit(5, "y"), Ok(3));
}

#[test]
fn snapshots_keep_tombstones_canonically() {
    let mut e = Expiring::new();
    e.visit(1, "free-me").unwrap();
    e.join(2, "adm");
    let adm = e.s.queue_id("adm").unwrap();
    e.apply(Op::Admit {
        queue: adm,
        count: 1,
    });
    e.pass(300_000);
    e.pass(1_000);
    assert_eq!(e.live_names(), ["cfg"]);
    e.join(3, "live");
    let mut bytes = Vec::new();
    e.s.encode_snapshot(&mut bytes);
    let back = QueueState::decode_snapshot(e.s.limits.clone(), &bytes).unwrap();
    assert_eq!(back.dump(), e.s.dump());
    let mut again = Vec::new();
    back.encode_snapshot(&mut again);
    assert_eq!(again, bytes);
    // The restored state reuses slots as the original does.
    let mut restored = Expiring::new();
    restored.s = back;
    restored.now_ms = e.now_ms;
    restored.s.configure_queues(&[("cfg".into(), 10, 0.0)]);
    for name in ["adm", "n1", "n2"] {
        assert_eq!(restored.visit(9, name), e.visit(9, name), "{name}");
    }
    assert_eq!(restored.s.dump(), e.s.dump());
}

#[test]
fn expiry_ops_round_trip_through_the_log_codec() {
    let op = Op::ExpireQueue { queue: 77 };
    let mut bytes = Vec::new();
    codec::encode_op(&op, 123, &mut bytes);
    assert_eq!(codec::decode_op(&bytes), Ok((op, 123)));
}

/// Bytes written by the version before queue expiry (generated with that code from the
/// ops in `old_format_ops`): they must decode to the same state and re-encode the same.
const OLD_SNAPSHOT_HEX: &str = concat!(
    "34120000000000000300000000000000284f4c000000000002000000010000007164000000000000",
    "00000000000000000000000000000000000000000000000000000000000000044000000000000000",
    "000100003c000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000",
    "ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff",
    "0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000",
    "ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff",
    "0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000",
    "ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff",
    "0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000",
    "ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff",
    "0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000",
    "ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff",
    "0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000",
    "ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff",
    "0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000",
    "ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff",
    "0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000",
    "ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff",
    "0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000",
    "ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff",
    "0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000",
    "ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff",
    "0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000",
    "ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff",
    "0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000",
    "ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff",
    "00000000000000000100000002000000000000000102000200000000000000000000000000000002",
    "000000010000000000000001010001000000000000000000000000000000040000000000000000bc",
    "604c00000000000200000077320a0000000000000002000000000000000000000000000000020000",
    "00000000000000000000000000000000000000000000010300000000000000090000000000000000",
    "000000000000000188130000000000003c000000ffffffffffffffff0000000000000000ffffffff",
    "ffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff00000000",
    "00000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffff",
    "ffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff00000000",
    "00000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffff",
    "ffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff00000000",
    "00000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffff",
    "ffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff00000000",
    "00000000ffffffffffffffff00000000000000008813000000000000010000000000000089130000",
    "000000000100000000000000ffffffffffffffff0000000000000000ffffffffffffffff00000000",
    "00000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffff",
    "ffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff00000000",
    "00000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffff",
    "ffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff00000000",
    "00000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffff",
    "ffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff00000000",
    "00000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffff",
    "ffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff00000000",
    "00000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffff",
    "ffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff00000000",
    "00000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffff",
    "ffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff00000000",
    "00000000ffffffffffffffff0000000000000000ffffffffffffffff0000000000000000ffffffff",
    "ffffffff0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff00000000",
    "00000000ffffffffffffffff0000000000000000000000000000000001000000bc604c0000000000",
    "00000000040000000000000002000000010000000300000000000000010000000000000088130000",
    "00000000b41400000000000001000000050000000000000002000000000000008913000000000000",
    "b514000000000000010000009f8601000000000003000000616263",
);
const OLD_WAL_HEX: &[&str] = &[
    "404b4c000000000001010000007101000000000000000001000100000000000000",
    "a44b4c000000000001010000007102000000000000000102000200000000000000",
    "084c4c00000000000102000000773203000000000000000000000300000000000000",
    "6c4c4c000000000001010000007104000000000000000001000400000000000000",
    "d04c4c00000000000102000000773205000000000000000002000500000000000000",
    "344d4c00000000000200000000040000000000000001000400000000000000",
    "984d4c000000000004010000000100000000000000",
    "fc4d4c0000000000070000000001",
    "604e4c0000000000060100000003000000000000000900000000000000",
    "c44e4c0000000000089f8601000000000003000000616263",
    "284f4c000000000009",
];

fn old_format_ops() -> Vec<Op> {
    let mut ops = Vec::new();
    let joins = [
        ("q", 1, false),
        ("q", 2, true),
        ("w2", 3, false),
        ("q", 4, false),
        ("w2", 5, false),
    ];
    for (i, (queue, user, prio)) in joins.into_iter().enumerate() {
        ops.push(Op::Join {
            queue: queue.into(),
            user,
            prio,
            conn: conn(i as u64 + 1),
        });
    }
    ops.push(Op::Disconnect {
        queue: 0,
        user: 4,
        conn: conn(4),
    });
    ops.push(Op::Admit { queue: 1, count: 1 });
    ops.push(Op::Pause {
        queue: 0,
        paused: true,
    });
    ops.push(Op::SetCapacity {
        queue: 1,
        online: 3,
        capacity: 9,
    });
    ops.push(Op::ConsumeJti {
        jti: "abc".into(),
        exp: 99_999,
    });
    ops.push(Op::Tick);
    ops
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn logs_and_snapshots_of_the_previous_version_still_load() {
    let mut l = limits();
    l.auto_create = true;
    let mut s = QueueState::new(l.clone(), &[("q".into(), 100, 2.5)], 0x1234);
    let mut out = Vec::new();
    for (i, (op, hex)) in old_format_ops().iter().zip(OLD_WAL_HEX).enumerate() {
        let now = 5_000_000 + i as u64 * 100;
        assert_eq!(codec::decode_op(&unhex(hex)), Ok((op.clone(), now)));
        let mut bytes = Vec::new();
        codec::encode_op(op, now, &mut bytes);
        assert_eq!(bytes, unhex(hex), "op {i} encodes as before");
        s.apply(op, now, &mut out);
    }
    let old = unhex(OLD_SNAPSHOT_HEX);
    let back = QueueState::decode_snapshot(l, &old).unwrap();
    // Snapshots older than the grant-holder section count every grant as returned.
    let mut want = s.dump();
    for grant in &mut want.grants {
        grant.returned = true;
    }
    assert_eq!(back.dump(), want);
    assert!(back.queues().iter().all(|q| !q.is_expired()));
    let mut bytes = Vec::new();
    s.encode_snapshot(&mut bytes);
    // A state without tombstones encodes as before, plus the grant-holder section.
    assert!(
        bytes.starts_with(&old),
        "a state without tombstones encodes as before"
    );
}

/// `Op::Remove` of a waiting player: its place departs (the one behind moves up), its
/// connection is kicked `removed`; removing it again, or a stranger, changes nothing.
#[test]
fn remove_takes_a_waiting_player_out_and_kicks_it() {
    let mut s = state();
    let mut out = Vec::new();
    for user in 1..=3 {
        let join = Op::Join {
            queue: "q".into(),
            user,
            prio: false,
            conn: conn(user),
        };
        s.apply(&join, 10, &mut out);
    }
    out.clear();
    let key = s.place(0, 2).expect("placed").key;
    let applied = s.apply(&Op::Remove { queue: 0, user: 2 }, 20, &mut out);
    assert_eq!(applied, Applied::Removed(Some("waiting")));
    assert_eq!(
        out,
        vec![
            Event::Departed { queue: 0, key },
            Event::Kick {
                queue: 0,
                user: 2,
                conn: conn(2),
                reason: KickReason::Removed
            }
        ]
    );
    let q = &s.queues()[0];
    assert_eq!(q.position(s.place(0, 3).expect("placed").key), 2);
    assert_eq!((q.waiting(), q.left_total), (2, 1));
    out.clear();
    for user in [2, 99] {
        let applied = s.apply(&Op::Remove { queue: 0, user }, 30, &mut out);
        assert_eq!(applied, Applied::Removed(None));
    }
    assert!(out.is_empty());
    assert_eq!(
        s.apply(&Op::Remove { queue: 9, user: 1 }, 30, &mut out),
        Applied::UnknownQueue
    );
    assert!(!crate::queue::durability::logged(&Applied::Removed(None)));
    assert!(crate::queue::durability::logged(&Applied::Removed(Some(
        "waiting"
    ))));
}

/// A player in grace has no connection to kick; an admitted player's unused token is
/// voided even when an HTTP `admit` returned it (its `jti` no longer verifies).
#[test]
fn remove_ends_grace_and_voids_an_unused_admission() {
    let mut s = state();
    let mut out = Vec::new();
    for user in [1, 2] {
        let join = Op::Join {
            queue: "q".into(),
            user,
            prio: false,
            conn: conn(user),
        };
        s.apply(&join, 10, &mut out);
    }
    s.apply(&Op::Admit { queue: 0, count: 1 }, 11, &mut out);
    let grant = s.grant(0, 1).expect("admitted");
    assert!(grant.returned);
    s.apply(
        &Op::Disconnect {
            queue: 0,
            user: 2,
            conn: conn(2),
        },
        12,
        &mut out,
    );
    out.clear();
    let applied = s.apply(&Op::Remove { queue: 0, user: 2 }, 13, &mut out);
    assert_eq!(applied, Applied::Removed(Some("grace")));
    assert!(
        !out.iter().any(|e| matches!(e, Event::Kick { .. })),
        "nobody to kick in grace: {out:?}"
    );
    out.clear();
    let applied = s.apply(&Op::Remove { queue: 0, user: 1 }, 14, &mut out);
    assert_eq!(applied, Applied::Removed(Some("admitted")));
    assert_eq!(
        out,
        vec![Event::Kick {
            queue: 0,
            user: 1,
            conn: conn(1),
            reason: KickReason::Removed
        }]
    );
    assert!(s.grant(0, 1).is_none());
    assert_eq!(s.queues()[0].unused_grants, 0);
    let jti = s.jti_text(grant.jti);
    assert_eq!(
        s.apply(
            &Op::ConsumeJti {
                jti,
                exp: grant.exp
            },
            15,
            &mut out
        ),
        Applied::Consumed(false),
        "a removed player's token does not verify"
    );
    // Grace expiry later finds nothing to expire.
    out.clear();
    s.apply(&Op::Tick, 60_000, &mut out);
    assert!(out.is_empty(), "{out:?}");
}

/// `Op::Remove` goes through the log codec (its own tag) and replays to the same state.
#[test]
fn remove_round_trips_through_the_log_and_replays() {
    let mut live = state();
    let mut out = Vec::new();
    let mut ops = Vec::new();
    for user in 1..=4 {
        ops.push(Op::Join {
            queue: "q".into(),
            user,
            prio: user == 4,
            conn: conn(user),
        });
    }
    ops.push(Op::Admit { queue: 0, count: 1 });
    ops.push(Op::Remove { queue: 0, user: 3 });
    ops.push(Op::Remove { queue: 0, user: 1 });
    ops.push(Op::Remove { queue: 0, user: 4 });
    ops.push(Op::Remove { queue: 0, user: 4 });
    let mut log = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if crate::queue::durability::logged(&live.apply(op, 100 + i as u64, &mut out)) {
            let mut payload = Vec::new();
            codec::encode_op(op, 100 + i as u64, &mut payload);
            log.push(payload);
        }
    }
    let mut payload = Vec::new();
    codec::encode_op(&Op::Remove { queue: 7, user: 42 }, 5, &mut payload);
    assert_eq!(payload[8], 12, "Remove has its own, new tag");
    assert_eq!(
        codec::decode_op(&payload),
        Ok((Op::Remove { queue: 7, user: 42 }, 5))
    );
    let mut replayed = state();
    for payload in &log {
        let (op, at) = codec::decode_op(payload).expect("decodes");
        replayed.apply(&op, at, &mut out);
    }
    assert_eq!(replayed.dump(), live.dump());
    let waiting: Vec<UserId> = live.queues()[0].iter().map(|(_, u)| u).collect();
    assert_eq!(waiting, vec![2], "4 admitted then removed, 3 and 1 removed");
    assert!(live.grant(0, 4).is_none());
    assert_eq!(
        log.len(),
        ops.len() - 1,
        "the removal of nothing is not logged"
    );
}

/// Failover: places re-submitted at their old keys, from several edges in any order,
/// keep the previous owner's order; a floor puts new arrivals after all of them (late
/// re-submissions included); the same user twice: newest connection wins; both ops go
/// through the log codec (tags 13, 14) and replay to the same state.
#[test]
fn resubmitted_places_keep_their_order_and_new_arrivals_come_after() {
    let mut old = state();
    let mut out = Vec::new();
    for user in 1..=6 {
        let join = Op::Join {
            queue: "q".into(),
            user,
            prio: user == 5,
            conn: conn(user),
        };
        old.apply(&join, 10, &mut out);
    }
    let keys: Vec<(PlaceKey, UserId)> = old.queues()[0].iter().collect();
    let mut live = state();
    let mut ops = vec![Op::SeqFloor {
        queue: 0,
        floor: 9 << 32,
    }];
    // Two edges' batches interleaved, user 2 (the dead node's) missing; a new arrival
    // between them; user 4 re-submitted twice.
    for &(key, user) in keys.iter().rev().filter(|&&(_, u)| u != 2) {
        ops.push(Op::Resubmit {
            queue: "q".into(),
            user,
            key,
            conn: conn(100 + user),
        });
        if user == 4 {
            ops.push(Op::Join {
                queue: "q".into(),
                user: 7,
                prio: false,
                conn: conn(7),
            });
        }
    }
    let key4 = keys.iter().find(|k| k.1 == 4).unwrap().0;
    ops.push(Op::Resubmit {
        queue: "q".into(),
        user: 4,
        key: key4,
        conn: conn(200),
    });
    let mut log = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        out.clear();
        let applied = live.apply(op, 100 + i as u64, &mut out);
        assert!(crate::queue::durability::logged(&applied));
        let mut payload = Vec::new();
        codec::encode_op(op, 100 + i as u64, &mut payload);
        assert_eq!(codec::decode_op(&payload), Ok((op.clone(), 100 + i as u64)));
        log.push(payload);
    }
    assert!(out.contains(&Event::Kick {
        queue: 0,
        user: 4,
        conn: conn(104),
        reason: KickReason::DuplicateLogin
    }));
    let order: Vec<UserId> = live.queues()[0].iter().map(|(_, u)| u).collect();
    assert_eq!(order, vec![5, 1, 3, 4, 6, 7]);
    assert_eq!(live.place(0, 4).unwrap().conn, Some(conn(200)));
    assert!(live.place(0, 7).unwrap().key > keys.iter().map(|k| k.0).max().unwrap());
    let mut tags: Vec<u8> = log.iter().map(|p| p[8]).collect();
    tags.dedup();
    assert!(tags.contains(&13) && tags.contains(&14));
    let mut replayed = state();
    for payload in &log {
        let (op, at) = codec::decode_op(payload).expect("decodes");
        replayed.apply(&op, at, &mut out);
    }
    assert_eq!(replayed.dump(), live.dump());
}
