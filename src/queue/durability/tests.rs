//! Durability against real files in a temp dir: random op sequences replayed from the
//! log (with snapshots in between) equal the live state byte for byte; torn tails,
//! corruption, interrupted snapshots, the lock and a failing fsync.

use std::path::PathBuf;

use super::*;
use crate::msg::ConnRef;
use crate::queue::state::Applied;

fn limits() -> Limits {
    Limits {
        reconnect_grace_ms: 5_000,
        token_ttl_secs: 30,
        auto_create: true,
        auto_max_waiting: 40,
        max_queues: 1000,
        auto_expire_ms: 0,
    }
}

fn queues() -> Vec<(String, u64, f64)> {
    vec![("q".to_string(), 1_000, 0.0)]
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qs-durable-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config(dir: &Path, fsync: FsyncPolicy) -> DurabilityConfig {
    DurabilityConfig {
        dir: dir.to_path_buf(),
        fsync,
        snapshot_interval_secs: 3600,
    }
}

fn encoded(state: &QueueState) -> Vec<u8> {
    let mut out = Vec::new();
    state.encode_snapshot(&mut out);
    out
}

use crate::test_rng::Rng;

/// Drives a live state and its log with random ops, like the core does.
struct Driver {
    state: QueueState,
    wal: Durability,
    rng: Rng,
    now_ms: u64,
    next_conn: u64,
    events: Vec<crate::queue::state::Event>,
}

impl Driver {
    fn open(dir: &Path, fsync: FsyncPolicy, seed: u64) -> Driver {
        let (state, wal) = open(&config(dir, fsync), limits(), &queues(), 1_000_000).unwrap();
        Driver {
            state,
            wal: wal.expect("durability on"),
            rng: Rng::new(seed | 1),
            now_ms: 1_000_000,
            next_conn: 1,
            events: Vec::new(),
        }
    }

    fn apply(&mut self, op: Op) -> Applied {
        self.events.clear();
        let applied = self.state.apply(&op, self.now_ms, &mut self.events);
        if logged(&applied) {
            self.wal.append(&op, self.now_ms);
        }
        applied
    }

    /// One random op (and sometimes a commit or a snapshot).
    fn step(&mut self) {
        self.now_ms += self.rng.below(300);
        let users = 50;
        let user = self.rng.below(users);
        let queue_name = if self.rng.below(10) == 0 { "q2" } else { "q" };
        let qid = self.state.queue_id(queue_name).unwrap_or(0);
        let op = match self.rng.below(100) {
            0..=34 => {
                self.next_conn += 1;
                Op::Join {
                    queue: queue_name.to_string(),
                    user,
                    prio: self.rng.below(6) == 0,
                    conn: ConnRef {
                        loop_id: (self.next_conn % 3) as u16,
                        session: self.next_conn,
                    },
                }
            }
            35..=54 => {
                let conn = self
                    .state
                    .place(qid, user)
                    .and_then(|p| p.conn)
                    // An admitted player's leave: from the connection holding it.
                    .or_else(|| self.state.grant(qid, user).and_then(|g| g.conn))
                    .unwrap_or(ConnRef {
                        loop_id: 0,
                        session: 0,
                    });
                if self.rng.below(2) == 0 {
                    Op::Leave {
                        queue: qid,
                        user,
                        conn,
                    }
                } else {
                    Op::Disconnect {
                        queue: qid,
                        user,
                        conn,
                    }
                }
            }
            55..=62 => Op::Admit {
                queue: qid,
                count: self.rng.below(4),
            },
            63..=66 => Op::SetRate {
                queue: qid,
                per_second: [0.0, 3.5, 40.0][self.rng.below(3) as usize],
            },
            67..=68 => Op::Pause {
                queue: qid,
                paused: self.rng.below(2) == 0,
            },
            69..=70 => Op::SetCapacity {
                queue: qid,
                online: self.rng.below(10),
                capacity: self.rng.below(30),
            },
            71..=76 => {
                let jti = match self.state.grant(qid, user) {
                    Some(g) => self.state.jti_text(g.jti),
                    None => format!("{:032x}", self.rng.below(5)),
                };
                Op::ConsumeJti {
                    jti,
                    exp: self.now_ms / 1000 + self.rng.below(40),
                }
            }
            77..=80 => Op::Remove { queue: qid, user },
            _ => Op::Tick,
        };
        self.apply(op);
        if self.rng.below(4) == 0 {
            self.wal.commit(self.rng.below(2) == 0).unwrap();
        }
        if self.rng.below(150) == 0 && !self.wal.writer.busy() {
            self.wal.snapshot(&self.state).unwrap();
        }
    }

    /// Makes everything appended reach the OS, as a round with output does.
    fn write_out(&mut self) {
        self.wal.commit(true).unwrap();
        // Let a snapshot in flight land, so the test also sees it used.
        self.wal.writer.finish();
    }
}

#[test]
fn replay_equals_live_after_random_ops() {
    for seed in [1u64, 7, 0xdead_beef, 42_424_242] {
        for fsync in [FsyncPolicy::Always, FsyncPolicy::None] {
            let d = dir(&format!("replay-{seed}-{fsync:?}"));
            let mut drv = Driver::open(&d, fsync, seed);
            for _ in 0..1_500 {
                drv.step();
            }
            drv.write_out();
            let live = encoded(&drv.state);
            let live_dump = drv.state.dump();
            let Driver { state, wal, .. } = drv;
            // A crash: no final snapshot, the process just ends.
            drop(wal);
            let r = recover(&d, limits()).unwrap().expect("something on disk");
            assert!(r.torn.is_none());
            assert!(r.records > 0, "the log was replayed");
            let q = &live_dump.queues[0];
            assert!(q.admitted_total > 0 && q.left_total > 0 && !live_dump.used.is_empty());
            assert!(live_dump.queues.len() == 2, "auto-created queue");
            assert_eq!(r.state.dump(), live_dump, "seed {seed}");
            assert_eq!(
                encoded(&r.state),
                live,
                "seed {seed}: replay differs from live"
            );
            // A clean stop: the final snapshot alone gives the same state.
            let (state2, wal2) = open(&config(&d, fsync), limits(), &queues(), 2_000_000).unwrap();
            assert_eq!(
                state2
                    .dump()
                    .queues
                    .iter()
                    .map(|q| q.waiting.clone())
                    .collect::<Vec<_>>(),
                state
                    .dump()
                    .queues
                    .iter()
                    .map(|q| q.waiting.clone())
                    .collect::<Vec<_>>(),
                "restart keeps every place in order"
            );
            wal2.unwrap().close(&state2).unwrap();
            let r = recover(&d, limits()).unwrap().unwrap();
            assert_eq!(r.records, 0, "the final snapshot covers every log");
            assert_eq!(encoded(&r.state), encoded(&state2));
            let _ = std::fs::remove_dir_all(&d);
        }
    }
}

#[test]
fn restart_puts_every_place_in_grace_at_its_position() {
    let d = dir("restart");
    let mut drv = Driver::open(&d, FsyncPolicy::Always, 3);
    for user in 0..5 {
        drv.apply(Op::Join {
            queue: "q".into(),
            user,
            prio: false,
            conn: ConnRef {
                loop_id: 0,
                session: user,
            },
        });
    }
    drv.write_out();
    let before = drv.state.dump();
    drop(drv);
    let (state, _wal) = open(
        &config(&d, FsyncPolicy::Always),
        limits(),
        &queues(),
        9_000_000,
    )
    .unwrap();
    assert_eq!(state.dump(), before);
    for user in 0..5 {
        let place = state.place(0, user).unwrap();
        assert_eq!(place.conn, None);
        assert_eq!(place.grace_deadline_ms, 9_000_000 + 5_000);
        assert_eq!(state.queues()[0].position(place.key), user + 1);
    }
    drop(_wal);
    let _ = std::fs::remove_dir_all(&d);
}

/// Writes `n` joins, each in its own committed round; returns the dir, the newest log
/// and the encoded state after each join.
fn joins_on_disk(name: &str, n: u64) -> (PathBuf, PathBuf, Vec<Vec<u8>>) {
    let d = dir(name);
    let mut drv = Driver::open(&d, FsyncPolicy::Always, 5);
    let mut states = vec![encoded(&drv.state)];
    for user in 0..n {
        drv.apply(Op::Join {
            queue: "q".into(),
            user,
            prio: false,
            conn: ConnRef {
                loop_id: 0,
                session: user,
            },
        });
        drv.wal.commit(true).unwrap();
        states.push(encoded(&drv.state));
    }
    let log = d.join(wal::file_name(drv.wal.log.gen()));
    drop(drv);
    (d, log, states)
}

#[test]
fn torn_tail_is_dropped_with_the_rest_kept() {
    let (d, log, states) = joins_on_disk("torn", 6);
    let len = std::fs::metadata(&log).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);
    let r = recover(&d, limits()).unwrap().unwrap();
    let (path, _, _) = r.torn.clone().expect("torn tail reported");
    assert_eq!(path, log);
    assert_eq!(encoded(&r.state), states[5], "all but the torn last join");
    // Start-up accepts it, and the next start no longer sees any tear.
    let (state, wal) = open(&config(&d, FsyncPolicy::Always), limits(), &queues(), 5).unwrap();
    assert_eq!(state.queues()[0].waiting(), 5);
    drop(wal);
    assert!(recover(&d, limits()).unwrap().unwrap().torn.is_none());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn corruption_before_the_tail_refuses_naming_file_and_offset() {
    let (d, log, _) = joins_on_disk("corrupt", 6);
    let mut bytes = std::fs::read(&log).unwrap();
    let first = wal::HEADER_BYTES;
    let len = u32::from_le_bytes(bytes[first..first + 4].try_into().unwrap()) as usize;
    let second = first + 8 + len;
    bytes[second + 12] ^= 0x01;
    std::fs::write(&log, &bytes).unwrap();
    let e = open(&config(&d, FsyncPolicy::Always), limits(), &queues(), 5).unwrap_err();
    match &e {
        RecoveryError::Corrupt { path, offset, .. } => {
            assert_eq!(path, &log);
            assert_eq!(*offset, second as u64);
        }
        other => panic!("expected corruption, got {other}"),
    }
    let text = e.to_string();
    assert!(text.contains(&log.display().to_string()), "{text}");
    assert!(text.contains(&format!("byte offset {second}")), "{text}");
    // The refused start changed nothing: still refused.
    assert!(open(&config(&d, FsyncPolicy::Always), limits(), &queues(), 5).is_err());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn corrupt_snapshot_refuses_naming_it() {
    let (d, _, _) = joins_on_disk("badsnap", 3);
    let snap = d.join(snapshot::FILE_NAME);
    let mut bytes = std::fs::read(&snap).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0xff;
    std::fs::write(&snap, &bytes).unwrap();
    let e = recover(&d, limits()).unwrap_err();
    assert!(
        matches!(&e, RecoveryError::Corrupt { path, .. } if path == &snap),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn interrupted_snapshots_leave_the_old_or_the_new_one_loadable() {
    let d = dir("snapcrash");
    let mut drv = Driver::open(&d, FsyncPolicy::Always, 11);
    for _ in 0..300 {
        drv.step();
    }
    drv.write_out();
    let live = encoded(&drv.state);
    let old_snapshot = std::fs::read(d.join(snapshot::FILE_NAME)).unwrap();

    // 1. Crash while the temp file is half written: the old snapshot and its logs.
    let mut payload = Vec::new();
    drv.state.encode_snapshot(&mut payload);
    std::fs::write(d.join(snapshot::TEMP_NAME), &payload[..payload.len() / 2]).unwrap();
    assert_eq!(
        encoded(&recover(&d, limits()).unwrap().unwrap().state),
        live
    );

    // 2. Crash after the log was rotated, before the snapshot was written.
    let next_gen = drv.wal.rotate().unwrap();
    assert_eq!(
        encoded(&recover(&d, limits()).unwrap().unwrap().state),
        live
    );

    // 3. Crash with the new snapshot complete in the temp file, not yet renamed.
    let scratch = dir("snapcrash-scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    snapshot::write(&scratch, next_gen, &payload).unwrap();
    std::fs::copy(
        scratch.join(snapshot::FILE_NAME),
        d.join(snapshot::TEMP_NAME),
    )
    .unwrap();
    assert_eq!(
        std::fs::read(d.join(snapshot::FILE_NAME)).unwrap(),
        old_snapshot
    );
    assert_eq!(
        encoded(&recover(&d, limits()).unwrap().unwrap().state),
        live
    );

    // 4. Crash after the rename, before the covered logs were deleted: the new one.
    snapshot::write(&d, next_gen, &payload).unwrap();
    assert!(wal::list(&d).unwrap().iter().any(|&(g, _)| g < next_gen));
    let r = recover(&d, limits()).unwrap().unwrap();
    assert_eq!(r.records, 0, "logs before the snapshot are not replayed");
    assert_eq!(encoded(&r.state), live);

    // And the records after it are replayed on top.
    drv.apply(Op::Join {
        queue: "q".into(),
        user: 1_000,
        prio: false,
        conn: ConnRef {
            loop_id: 0,
            session: 77,
        },
    });
    drv.wal.commit(true).unwrap();
    let r = recover(&d, limits()).unwrap().unwrap();
    assert_eq!(encoded(&r.state), encoded(&drv.state));
    drop(drv);
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn a_missing_log_or_snapshot_refuses() {
    let d = dir("missing");
    let mut drv = Driver::open(&d, FsyncPolicy::Always, 13);
    drv.step();
    drv.wal.commit(true).unwrap();
    let first = drv.wal.rotate().unwrap() - 1;
    drv.step();
    drv.wal.commit(true).unwrap();
    drop(drv);
    std::fs::remove_file(d.join(wal::file_name(first))).unwrap();
    let e = recover(&d, limits()).unwrap_err();
    assert!(matches!(e, RecoveryError::Inconsistent { .. }), "{e}");
    std::fs::remove_file(d.join(snapshot::FILE_NAME)).unwrap();
    let e = recover(&d, limits()).unwrap_err();
    assert!(e.to_string().contains(snapshot::FILE_NAME), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn one_server_per_directory() {
    let d = dir("lock");
    let (_state, wal) = open(&config(&d, FsyncPolicy::None), limits(), &queues(), 1).unwrap();
    let e = open(&config(&d, FsyncPolicy::None), limits(), &queues(), 1).unwrap_err();
    assert!(matches!(e, RecoveryError::Locked { .. }), "{e}");
    drop(wal);
    assert!(open(&config(&d, FsyncPolicy::None), limits(), &queues(), 1).is_ok());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_failed_fsync_fails_every_later_commit_and_keeps_the_prefix() {
    let d = dir("fsyncfail");
    let mut drv = Driver::open(&d, FsyncPolicy::Always, 17);
    let join = |user| Op::Join {
        queue: "q".into(),
        user,
        prio: false,
        conn: ConnRef {
            loop_id: 0,
            session: user,
        },
    };
    drv.apply(join(1));
    drv.wal.commit(true).unwrap();
    let acknowledged = drv.state.dump();
    drv.wal.status.fail_next_sync.store(true, Ordering::Relaxed);
    drv.apply(join(2));
    assert!(drv.wal.commit(true).is_err());
    drv.apply(join(3));
    assert!(drv.wal.commit(true).is_err(), "stays failed");
    assert!(drv.wal.snapshot(&drv.state).is_err());
    let Driver { state, wal, .. } = drv;
    assert!(
        wal.close(&state).is_err(),
        "no final snapshot after a failure"
    );
    // What reached the disk is a prefix: join 1 surely, join 2 maybe, join 3 never.
    let r = recover(&d, limits()).unwrap().unwrap();
    let waiting = r.state.dump().queues[0].waiting.clone();
    assert_eq!(waiting[0], acknowledged.queues[0].waiting[0]);
    assert!(!waiting.contains(&(3, false)));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn everysec_and_none_still_write_before_answers() {
    for fsync in [FsyncPolicy::Everysec, FsyncPolicy::None] {
        let d = dir(&format!("policy-{fsync:?}"));
        let mut drv = Driver::open(&d, fsync, 19);
        drv.apply(Op::Join {
            queue: "q".into(),
            user: 9,
            prio: false,
            conn: ConnRef {
                loop_id: 0,
                session: 1,
            },
        });
        drv.wal.commit(true).unwrap();
        // Read back while the writer is still open: the record is in the file.
        let r = recover(&d, limits()).unwrap().unwrap();
        assert_eq!(r.state.queues()[0].waiting(), 1, "{fsync:?}");
        drop(drv);
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// Issue 7: queue expiry is logged and replayed exactly: random joins, leaves and
/// admissions over many fresh names with a small `max_queues`, ticks with the expiries
/// the core would apply, snapshots in between; replay equals the live state, tombstones
/// and slot reuse included.
#[test]
fn replay_repeats_queue_expiry_and_slot_reuse() {
    let mut l = limits();
    l.max_queues = 4;
    l.auto_expire_ms = 2_000;
    for seed in [5u64, 11, 0xfeed] {
        let d = dir(&format!("expiry-{seed}"));
        let cfg = config(&d, FsyncPolicy::None);
        let (state, wal) = open(&cfg, l.clone(), &queues(), 1_000_000).unwrap();
        let mut drv = Driver {
            state,
            wal: wal.unwrap(),
            rng: Rng::new(seed),
            now_ms: 1_000_000,
            next_conn: 1,
            events: Vec::new(),
        };
        let (mut expired, mut saw_free, mut saw_quarantined) = (0, false, false);
        for _ in 0..3_000 {
            drv.now_ms += drv.rng.below(800);
            let name = format!("n{}", drv.rng.below(12));
            let user = drv.rng.below(3);
            match drv.rng.below(10) {
                0..=2 => {
                    drv.next_conn += 1;
                    let conn = ConnRef {
                        loop_id: 0,
                        session: drv.next_conn,
                    };
                    drv.apply(Op::Join {
                        queue: name,
                        user,
                        prio: false,
                        conn,
                    });
                }
                3..=6 => {
                    if let Some(queue) = drv.state.queue_id(&name) {
                        if let Some(conn) = drv.state.place(queue, user).and_then(|p| p.conn) {
                            drv.apply(Op::Leave { queue, user, conn });
                        } else if drv.state.grant(queue, user).is_some() {
                            let jti = drv.state.grant(queue, user).unwrap().jti;
                            let jti = drv.state.jti_text(jti);
                            drv.apply(Op::ConsumeJti { jti, exp: u64::MAX });
                        }
                    }
                }
                7 => {
                    if drv.rng.below(8) == 0 {
                        if let Some(queue) = drv.state.queue_id(&name) {
                            drv.apply(Op::Admit { queue, count: 1 });
                        }
                    }
                }
                _ => {
                    drv.apply(Op::Tick);
                    let (now_ms, mut from) = (drv.now_ms, 0);
                    while let Some(queue) = drv.state.next_expiry(now_ms, from) {
                        assert_eq!(drv.apply(Op::ExpireQueue { queue }), Applied::Ok);
                        expired += 1;
                        from = queue as usize + 1;
                        let t = &drv.state.queues()[queue as usize];
                        saw_free |= t.name.is_empty();
                        saw_quarantined |= !t.name.is_empty();
                    }
                }
            }
            if drv.rng.below(200) == 0 && !drv.wal.writer.busy() {
                drv.wal.snapshot(&drv.state).unwrap();
            }
        }
        drv.write_out();
        assert!(expired > 20, "seed {seed}: only {expired} expiries");
        let live_dump = drv.state.dump();
        assert!(
            saw_free && saw_quarantined,
            "seed {seed}: both kinds of tombstone"
        );
        assert!(live_dump.queues.len() <= 4 + 12, "slots are bounded");
        let live = encoded(&drv.state);
        drop(drv);
        let r = recover(&d, l.clone()).unwrap().expect("on disk");
        assert!(r.records > 0);
        assert_eq!(r.state.dump(), live_dump, "seed {seed}");
        assert_eq!(encoded(&r.state), live, "seed {seed}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
