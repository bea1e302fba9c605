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
