//! `Config::validate`: every value that parses but cannot work, one function per
//! section of `config/default.toml`.
//!
//! Invariants:
//! - sections are checked in the file's order (server, control, auth, tokens, queues,
//!   core, durability, journal, then what `[cluster]` requires of the others) and the
//!   first fault is the one reported, so a config with several faults always names the
//!   same key;
//! - every error names its dotted key and why; the texts are part of the interface
//!   (tests and operators read them): change none of them in passing.

use std::collections::HashSet;

use super::{
    err, valid_queue_name, AuthConfig, AuthMode, Config, ConfigError, ControlConfig, CoreConfig,
    DurabilityConfig, JournalConfig, QueuesConfig, ServerConfig, TokenAlg, TokenConfig,
    AUTO_EXPIRE_SECS_MAX, JOURNAL_EVENTS_MAX, JOURNAL_PLAYERS_MAX,
};

impl Config {
    /// Checks every value that parses but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        server(&self.server)?;
        control(&self.control)?;
        auth(&self.auth)?;
        tokens(&self.tokens)?;
        queues(&self.queues)?;
        core(&self.core)?;
        durability(&self.durability)?;
        journal(&self.journal)?;
        cluster(self)
    }
}

/// `[server]`: frame sizes, connection limits, timers, the outbound bound.
fn server(s: &ServerConfig) -> Result<(), ConfigError> {
    if s.max_frame_bytes < 64 || s.max_frame_bytes > 16 * 1024 * 1024 {
        return Err(err("server.max_frame_bytes", "must be in 64..=16777216"));
    }
    if s.max_login_frame_bytes < 64 || s.max_login_frame_bytes > s.max_frame_bytes {
        return Err(err(
            "server.max_login_frame_bytes",
            "must be in 64..=server.max_frame_bytes",
        ));
    }
    if s.max_connections == 0 {
        return Err(err("server.max_connections", "must be at least 1"));
    }
    if s.max_connections_per_ip == 0 {
        return Err(err("server.max_connections_per_ip", "must be at least 1"));
    }
    if s.cores > 1024 {
        return Err(err("server.cores", "must be at most 1024"));
    }
    if s.login_timeout_secs == 0 {
        return Err(err("server.login_timeout_secs", "must be at least 1"));
    }
    if s.idle_timeout_secs == 0 {
        return Err(err("server.idle_timeout_secs", "must be at least 1"));
    }
    if s.push_interval_ms == 0 {
        return Err(err("server.push_interval_ms", "must be at least 1"));
    }
    if s.max_outbound_bytes < 2 * s.max_frame_bytes as usize {
        return Err(err(
            "server.max_outbound_bytes",
            "must be at least twice server.max_frame_bytes",
        ));
    }
    Ok(())
}

/// `[control]`: an open control port needs a key.
fn control(c: &ControlConfig) -> Result<(), ConfigError> {
    if c.api_key.is_empty() && !c.listen.ip().is_loopback() {
        return Err(err(
            "control.listen",
            "a non-loopback control address needs control.api_key",
        ));
    }
    Ok(())
}

/// `[auth]`: checking tickets needs a key.
fn auth(a: &AuthConfig) -> Result<(), ConfigError> {
    if a.mode == AuthMode::Jwt && a.key.is_empty() {
        return Err(err("auth.key", "required when auth.mode = \"jwt\""));
    }
    Ok(())
}

/// `[tokens]`: a lifetime, and a given HS256 secret long enough.
fn tokens(t: &TokenConfig) -> Result<(), ConfigError> {
    if t.ttl_secs == 0 {
        return Err(err("tokens.ttl_secs", "must be at least 1"));
    }
    if t.alg == TokenAlg::HS256 && !t.key.is_empty() && t.key.len() < 32 {
        return Err(err(
            "tokens.key",
            "an HS256 secret must be at least 32 bytes",
        ));
    }
    Ok(())
}

/// `[queues]`: each listed queue, then the bounds over all of them.
fn queues(q: &QueuesConfig) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for (i, item) in q.list.iter().enumerate() {
        let key = format!("queues.list[{i}]");
        if !valid_queue_name(&item.name) {
            return Err(err(
                &format!("{key}.name"),
                "1 to 64 characters of [A-Za-z0-9_.-]",
            ));
        }
        if !names.insert(item.name.as_str()) {
            return Err(err(
                &format!("{key}.name"),
                format!("duplicate queue `{}`", item.name),
            ));
        }
        if item.max_waiting == 0 {
            return Err(err(&format!("{key}.max_waiting"), "must be at least 1"));
        }
        if !(item.admit_rate_per_s >= 0.0 && item.admit_rate_per_s <= 1e6) {
            return Err(err(
                &format!("{key}.admit_rate_per_s"),
                "must be in 0..=1000000",
            ));
        }
    }
    if q.max_queues < q.list.len().max(1) {
        return Err(err(
            "queues.max_queues",
            "must be at least 1 and at least the number of configured queues",
        ));
    }
    if q.auto_expire_secs > AUTO_EXPIRE_SECS_MAX {
        return Err(err(
            "queues.auto_expire_secs",
            format!("must be in 0..={AUTO_EXPIRE_SECS_MAX} (0 = never)"),
        ));
    }
    if q.list.is_empty() && !q.auto_create {
        return Err(err(
            "queues.list",
            "no queues and queues.auto_create = false",
        ));
    }
    Ok(())
}

/// `[core]`: tick, resync period, channel bounds.
fn core(c: &CoreConfig) -> Result<(), ConfigError> {
    if c.tick_ms == 0 || c.tick_ms > 1000 {
        return Err(err("core.tick_ms", "must be in 1..=1000"));
    }
    if c.resync_secs == 0 {
        return Err(err("core.resync_secs", "must be at least 1"));
    }
    if c.inbox_capacity < 16 {
        return Err(err("core.inbox_capacity", "must be at least 16"));
    }
    if c.loop_channel_capacity < 16 {
        return Err(err("core.loop_channel_capacity", "must be at least 16"));
    }
    Ok(())
}

/// `[durability]`: a snapshot period.
fn durability(d: &DurabilityConfig) -> Result<(), ConfigError> {
    if d.snapshot_interval_secs == 0 {
        return Err(err(
            "durability.snapshot_interval_secs",
            "must be at least 1",
        ));
    }
    Ok(())
}

/// `[journal]`: both bounds.
fn journal(j: &JournalConfig) -> Result<(), ConfigError> {
    if j.players_max == 0 || j.players_max > JOURNAL_PLAYERS_MAX {
        return Err(err(
            "journal.players_max",
            format!("must be in 1..={JOURNAL_PLAYERS_MAX}"),
        ));
    }
    if j.events_per_player == 0 || j.events_per_player > JOURNAL_EVENTS_MAX {
        return Err(err(
            "journal.events_per_player",
            format!("must be in 1..={JOURNAL_EVENTS_MAX}"),
        ));
    }
    Ok(())
}

/// With `[cluster]`, a token issued by one node must verify on every other (offline with
/// `GET /v1/keys`, online with `POST /v1/tokens/verify` on any node): every node signs
/// with the one configured key, never a key generated at start that only it knows.
fn cluster(c: &Config) -> Result<(), ConfigError> {
    if c.cluster.is_some() && c.tokens.key.is_empty() {
        return Err(err(
            "tokens.key",
            "required with [cluster]: every node must sign admission tokens with the same \
             key, so that a token issued by one node verifies on all",
        ));
    }
    Ok(())
}
