//! The per-player journal behind `GET /v1/users/{user_id}?queue=Q`: for each (queue,
//! player) the last `events_per_player` things that happened to it, with their times,
//! plus counters of the positions its sessions were told. Owned by the queue core thread
//! (no locks), written where the core already handles the fact, read through a
//! `ControlReq::User` round trip like the stats. Not durable: a restart starts it empty
//! (the current state part of an answer comes from the state machine, which is). The
//! answer's shape ([`UserReport`], [`EventOut`], [`PositionCounts`]) lives in
//! `msg::report`, the seam to the control thread, and is re-exported here; this file
//! renders entries into it ([`EventOut::from_entry`]) and imports only `msg` and
//! `config`, so `msg` never imports the queue.
//!
//! Where the facts come from (no message per frame):
//! - core-side facts are recorded where the core applies them: a login (position answered,
//!   lane, or resumed), a kick the core causes (`duplicate_login`, `removed`), an
//!   admission (`jti`), a token use, a `leave`, a reconnect grace running out, an
//!   operator's removal;
//! - loop-side facts travel with messages the loop sends anyway: the peer address and
//!   loop with `CoreMsg::Join`, and with `CoreMsg::Disconnect` a `SessionReport` (how
//!   many `position` answers and pushes the session sent, the last value, and the reason
//!   if the loop kicked it: idle, slow consumer, shutdown). So while a session is
//!   connected the position counters are those of its earlier sessions ("as of the last
//!   report", `reported_at_ms`). A session that ends after admission or after `leave`
//!   sends no disconnect (the core has nothing to release), so its counts are not added.
//!
//! Invariants:
//! - memory is bounded: at most `players_max` journals, each at most `events_per_player`
//!   entries (the oldest dropped first). Past `players_max` the least recently active
//!   journal (oldest last event) is evicted; `evicted` counts them;
//! - an entry is a small `Copy` value ([`Entry`], 32 bytes); a ring grows to its bound and
//!   is then reused, so recording allocates only while a journal is young (one entry per
//!   join/leave/admit/kick on the core; never per frame);
//! - recency is a `BTreeMap` from a touch counter to the key: O(log n) per record;
//! - with the journal off the core holds `None` and pays one branch per op.
//!
//! Cost, measured (`rss_per_journaled_player`, release build, 200,000 players): RSS
//! grows by 451 bytes per player with 6 events (a typical login, a few moves, an
//! admission) and by 1,217 bytes with a full ring of 32. An entry is 32 bytes and a
//! ring's capacity grows 4, 8, 16, 32; the rest is the map entry (key 16 + journal 80
//! bytes, at the hash table's load factor) and the recency index (about 40 bytes).
//! So the default `players_max` = 100,000 costs about 45 MB typically, 122 MB at most.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv6Addr, SocketAddr};

pub use crate::msg::{EventOut, PositionCounts, UserReport};
use crate::msg::{JoinError, KickReason, LoopId, QueueId, SessionReport, UserId};

/// What happened (the payload of an [`Entry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// A connection sent `login` (the address as IPv6, v4 mapped; port; io loop).
    Connected {
        /// Peer IP, IPv4 as v4-mapped IPv6 (18 bytes instead of a 32-byte `SocketAddr`).
        ip: [u8; 16],
        /// Peer port.
        port: u16,
        /// The io loop serving it.
        loop_id: LoopId,
    },
    /// A fresh place at `position`.
    LoggedIn {
        /// Position answered.
        position: u64,
        /// In the priority lane.
        priority: bool,
    },
    /// The player took its place (or its unused admission: position 0) back.
    Resumed {
        /// Position answered; 0 when it resumed an admission.
        position: u64,
    },
    /// The login was refused.
    Refused {
        /// Why.
        error: JoinError,
    },
    /// The connection closed without `leave` (reconnect grace starts).
    Disconnected {
        /// The loop kicked it first (idle, slow consumer, shutdown).
        kicked: Option<KickReason>,
    },
    /// The core kicked the connection (`duplicate_login`, `removed`).
    Kicked {
        /// Why.
        reason: KickReason,
    },
    /// Admitted with grant number `jti`.
    Admitted {
        /// Grant number (the token's `jti` is the state's prefix + this).
        jti: u64,
    },
    /// The admission token was verified (used) by the login server.
    TokenVerified {
        /// Grant number.
        jti: u64,
    },
    /// The player sent `leave`.
    Left,
    /// Reconnect grace ran out: the place is gone.
    GraceExpired,
    /// An operator removed the player (`DELETE /v1/queues/{q}/players/{user_id}`).
    Removed {
        /// What it held: `waiting`, `grace`, `admitted`.
        held: &'static str,
    },
}

/// One journal entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// When, unix ms.
    pub at_ms: u64,
    /// What.
    pub what: What,
}

/// One player's journal.
#[derive(Debug)]
pub struct PlayerJournal {
    /// The last events, oldest first (at most `events_per_player`).
    pub events: VecDeque<Entry>,
    /// Events dropped off the front of the ring.
    pub dropped: u64,
    /// `position` requests answered, summed over reported sessions.
    pub answered: u64,
    /// `position` pushes sent, summed over reported sessions.
    pub pushed: u64,
    /// Last position answered or pushed, as of the last report (0: none).
    pub last_position: u64,
    /// When the counters were last reported, unix ms (0: never).
    pub reported_at_ms: u64,
    /// Recency stamp (key of the LRU index).
    touch: u64,
}

/// Every journal, bounded (see the module invariants).
#[derive(Debug)]
pub struct Journal {
    /// Journals by (queue, player).
    players: HashMap<(QueueId, UserId), PlayerJournal>,
    /// Recency: touch stamp -> key, oldest first.
    lru: BTreeMap<u64, (QueueId, UserId)>,
    /// Next touch stamp.
    next_touch: u64,
    /// Most journals.
    players_max: usize,
    /// Most events per journal.
    events_max: usize,
    /// Journals evicted to stay within `players_max`.
    pub evicted: u64,
}

impl Journal {
    /// An empty journal set with these bounds (both at least 1).
    pub fn new(players_max: usize, events_max: usize) -> Journal {
        Journal {
            players: HashMap::new(),
            lru: BTreeMap::new(),
            next_touch: 0,
            players_max: players_max.max(1),
            events_max: events_max.max(1),
            evicted: 0,
        }
    }

    /// From `[journal]`; `None` when it is off.
    pub fn from_config(config: &crate::config::JournalConfig) -> Option<Journal> {
        config
            .enabled
            .then(|| Journal::new(config.players_max, config.events_per_player))
    }

    /// Most events kept per player.
    pub fn events_max(&self) -> usize {
        self.events_max
    }

    /// Players journaled.
    pub fn len(&self) -> usize {
        self.players.len()
    }

    /// No player journaled.
    pub fn is_empty(&self) -> bool {
        self.players.is_empty()
    }

    /// The journal of (queue, user), touched now (evicting the least recently active
    /// one if a new journal would exceed `players_max`).
    fn touch(&mut self, queue: QueueId, user: UserId) -> &mut PlayerJournal {
        let key = (queue, user);
        let stamp = self.next_touch;
        self.next_touch += 1;
        if let Some(old) = self.players.get(&key).map(|p| p.touch) {
            self.lru.remove(&old);
        } else if self.players.len() >= self.players_max {
            if let Some((_, victim)) = self.lru.pop_first() {
                self.players.remove(&victim);
                self.evicted += 1;
            }
        }
        self.lru.insert(stamp, key);
        let player = self.players.entry(key).or_insert_with(|| PlayerJournal {
            events: VecDeque::new(),
            dropped: 0,
            answered: 0,
            pushed: 0,
            last_position: 0,
            reported_at_ms: 0,
            touch: stamp,
        });
        player.touch = stamp;
        player
    }

    /// Records `what` for (queue, user) at `at_ms`.
    pub fn record(&mut self, queue: QueueId, user: UserId, at_ms: u64, what: What) {
        let events_max = self.events_max;
        let player = self.touch(queue, user);
        if player.events.len() >= events_max {
            player.events.pop_front();
            player.dropped += 1;
        }
        player.events.push_back(Entry { at_ms, what });
    }

    /// A session of (queue, user) ended without `leave`: adds its counters and records
    /// the disconnect.
    pub fn disconnected(
        &mut self,
        queue: QueueId,
        user: UserId,
        at_ms: u64,
        report: SessionReport,
    ) {
        self.record(
            queue,
            user,
            at_ms,
            What::Disconnected {
                kicked: report.kicked,
            },
        );
        let player = self.touch(queue, user);
        player.answered += u64::from(report.answered);
        player.pushed += u64::from(report.pushed);
        if report.answered > 0 || report.pushed > 0 {
            player.last_position = report.last_position;
        }
        player.reported_at_ms = at_ms;
    }

    /// The journal of (queue, user).
    pub fn get(&self, queue: QueueId, user: UserId) -> Option<&PlayerJournal> {
        self.players.get(&(queue, user))
    }

    /// Forgets every journal of `queue` (its id is about to name another queue).
    pub fn forget_queue(&mut self, queue: QueueId) {
        let lru = &mut self.lru;
        self.players.retain(|&(q, _), p| {
            if q == queue {
                lru.remove(&p.touch);
            }
            q != queue
        });
    }
}

/// The peer address as stored in [`What::Connected`].
pub fn connected(peer: SocketAddr, loop_id: LoopId) -> What {
    let ip = match peer.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    What::Connected {
        ip: ip.octets(),
        port: peer.port(),
        loop_id,
    }
}

impl EventOut {
    /// The answer shape of `entry`; `jti_text` renders grant numbers.
    pub fn from_entry(entry: &Entry, jti_text: impl Fn(u64) -> String) -> EventOut {
        let mut out = EventOut {
            at_ms: entry.at_ms,
            event: "",
            peer: None,
            loop_id: None,
            position: None,
            lane: None,
            reason: None,
            error: None,
            jti: None,
            held: None,
        };
        match entry.what {
            What::Connected { ip, port, loop_id } => {
                out.event = "connected";
                let ip = Ipv6Addr::from(ip).to_canonical();
                out.peer = Some(SocketAddr::new(ip, port).to_string());
                out.loop_id = Some(loop_id);
            }
            What::LoggedIn { position, priority } => {
                out.event = "logged_in";
                out.position = Some(position);
                out.lane = Some(if priority { "priority" } else { "normal" });
            }
            What::Resumed { position } => {
                out.event = "resumed";
                out.position = Some(position);
            }
            What::Refused { error } => {
                out.event = "refused";
                out.error = Some(match error {
                    JoinError::QueueFull => "QUEUE_FULL",
                    JoinError::UnknownQueue => "UNKNOWN_QUEUE",
                    JoinError::ShuttingDown => "SHUTTING_DOWN",
                    JoinError::Gone => "INTERNAL",
                });
            }
            What::Disconnected { kicked } => {
                out.event = "disconnected";
                out.reason = kicked.map(KickReason::as_str);
            }
            What::Kicked { reason } => {
                out.event = "kicked";
                out.reason = Some(reason.as_str());
            }
            What::Admitted { jti } => {
                out.event = "admitted";
                out.jti = Some(jti_text(jti));
            }
            What::TokenVerified { jti } => {
                out.event = "token_verified";
                out.jti = Some(jti_text(jti));
            }
            What::Left => out.event = "left",
            What::GraceExpired => out.event = "grace_expired",
            What::Removed { held } => {
                out.event = "removed";
                out.held = Some(held);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_small() {
        assert!(
            std::mem::size_of::<Entry>() <= 32,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn the_ring_keeps_the_last_events_and_counts_the_dropped() {
        let mut j = Journal::new(10, 4);
        for i in 0..10 {
            j.record(0, 7, i, What::Resumed { position: i });
        }
        let p = j.get(0, 7).expect("journaled");
        let kept: Vec<u64> = p.events.iter().map(|e| e.at_ms).collect();
        assert_eq!(kept, vec![6, 7, 8, 9]);
        assert_eq!(p.dropped, 6);
        assert!(
            p.events.capacity() < 8,
            "the ring does not grow past its bound"
        );
    }

    #[test]
    fn past_players_max_the_least_recently_active_is_evicted() {
        let mut j = Journal::new(3, 8);
        j.record(0, 1, 1, What::Left);
        j.record(0, 2, 2, What::Left);
        j.record(0, 3, 3, What::Left);
        // 1 is active again: 2 is now the least recently active.
        j.record(0, 1, 4, What::Left);
        j.record(0, 4, 5, What::Left);
        assert_eq!(j.len(), 3);
        assert!(j.get(0, 2).is_none(), "least recently active evicted");
        assert!(j.get(0, 1).is_some() && j.get(0, 3).is_some() && j.get(0, 4).is_some());
        assert_eq!(j.evicted, 1);
        assert_eq!(j.lru.len(), 3, "the index follows the map");
        // A player of another queue is another journal.
        j.record(1, 4, 6, What::Left);
        assert!(j.get(0, 3).is_none());
        assert_eq!(j.evicted, 2);
    }

    #[test]
    fn session_reports_add_up_and_forget_queue_clears() {
        let mut j = Journal::new(10, 8);
        let report = SessionReport {
            answered: 2,
            pushed: 3,
            last_position: 9,
            kicked: Some(KickReason::IdleTimeout),
        };
        j.disconnected(0, 5, 100, report);
        j.disconnected(0, 5, 200, SessionReport::default());
        let p = j.get(0, 5).expect("journaled");
        assert_eq!((p.answered, p.pushed, p.last_position), (2, 3, 9));
        assert_eq!(p.reported_at_ms, 200);
        assert_eq!(
            p.events[0].what,
            What::Disconnected {
                kicked: Some(KickReason::IdleTimeout)
            }
        );
        j.record(1, 5, 300, What::Left);
        j.forget_queue(0);
        assert!(j.get(0, 5).is_none());
        assert!(j.get(1, 5).is_some());
        assert_eq!(j.lru.len(), 1);
    }

    #[test]
    fn peers_render_as_written() {
        let v4: SocketAddr = "127.0.0.1:4242".parse().expect("addr");
        let v6: SocketAddr = "[::1]:80".parse().expect("addr");
        for peer in [v4, v6] {
            let entry = Entry {
                at_ms: 1,
                what: connected(peer, 3),
            };
            let out = EventOut::from_entry(&entry, |n| n.to_string());
            assert_eq!(out.peer.as_deref(), Some(peer.to_string().as_str()));
            assert_eq!(out.loop_id, Some(3));
        }
    }

    /// Memory per journaled player, measured: `cargo test --release --lib
    /// rss_per_journaled_player -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, run by hand in a release build"]
    fn rss_per_journaled_player() {
        fn rss_bytes() -> u64 {
            let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
            let pages: u64 = statm
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .expect("rss pages");
            pages * 4096
        }
        const N: u64 = 200_000;
        let peer: SocketAddr = "10.0.0.1:50000".parse().expect("addr");
        // Each set stays alive, so no measurement reuses memory another one freed.
        let mut kept = Vec::new();
        for events in [6u64, 32] {
            let mut j = Journal::new(N as usize, 32);
            let before = rss_bytes();
            for user in 0..N {
                for e in 0..events {
                    let what = match e {
                        0 => connected(peer, 0),
                        1 => What::LoggedIn {
                            position: user,
                            priority: false,
                        },
                        _ => What::Resumed { position: e },
                    };
                    j.record(0, user, e, what);
                }
            }
            let after = rss_bytes();
            println!(
                "{events} events/player: {} bytes/player (RSS {} -> {} for {N} players; entry {} bytes)",
                (after - before) / N,
                before,
                after,
                std::mem::size_of::<Entry>()
            );
            kept.push(j);
        }
    }
}
