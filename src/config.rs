//! Configuration: the embedded default (`config/default.toml`), an optional file laid
//! over it key by key, flag overrides, and validation.
//!
//! Invariants:
//! - every key has exactly one default, written (with its unit) in `config/default.toml`;
//!   this module holds no second copy of the defaults;
//! - a key the default does not have is an error naming the key (typos never pass);
//! - `Config::validate` runs before anything binds; every error names the key and why.

use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;

/// Largest config file read, bytes: every key of the default fits in a few KiB, so a
/// bigger file is a mistake (a log, a binary, a device) and is refused before parsing.
/// Nesting is bounded by the TOML parser itself.
pub const CONFIG_BYTES_MAX: u64 = 1024 * 1024;

/// The built-in default configuration, embedded at build time.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The whole configuration, one field per table of `config/default.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Player port and per-connection limits.
    pub server: ServerConfig,
    /// Control port (HTTP).
    pub control: ControlConfig,
    /// How `login` tickets are checked.
    pub auth: AuthConfig,
    /// Admission tokens signed by this server.
    pub tokens: TokenConfig,
    /// Named queues.
    pub queues: QueuesConfig,
    /// Queue core pacing and channel bounds.
    pub core: CoreConfig,
    /// Write-ahead log and snapshots.
    pub durability: DurabilityConfig,
    /// Logging.
    pub log: LogConfig,
    /// The per-player journal behind `GET /v1/users/{user_id}`.
    pub journal: JournalConfig,
    /// `[cluster]` (optional, parsed by `cluster::config`): absent = one node, no etcd.
    #[serde(skip)]
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// `[server]`: the player port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the player listeners bind (one SO_REUSEPORT listener per loop).
    pub listen: SocketAddr,
    /// Number of io loops; 0 = one per available core.
    pub cores: usize,
    /// io driver of the loops.
    pub driver: Driver,
    /// Largest accepted frame body, bytes.
    pub max_frame_bytes: u32,
    /// Largest accepted frame body before login, bytes.
    pub max_login_frame_bytes: u32,
    /// Most open player connections, all loops together.
    pub max_connections: u64,
    /// Most open player connections from one IP address.
    pub max_connections_per_ip: u32,
    /// Time allowed between connect and `login`, seconds.
    pub login_timeout_secs: u64,
    /// Time allowed without a client frame after login, seconds.
    pub idle_timeout_secs: u64,
    /// Time a disconnected player keeps the place, seconds.
    pub reconnect_grace_secs: u64,
    /// Least time between two position pushes to one connection, ms.
    pub push_interval_ms: u64,
    /// Most unsent bytes per connection before `slow_consumer`.
    pub max_outbound_bytes: usize,
    /// Logins per second per io loop; 0 = unlimited.
    pub max_logins_per_sec_per_core: u32,
    /// `retry_after_secs` sent with `kicked` `shutdown`.
    pub shutdown_retry_after_secs: u64,
    /// Most time a stop waits for sessions to flush `kicked` `shutdown`, seconds.
    pub drain_timeout_secs: u64,
}

/// `[control]`: the HTTP control port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Address of the control HTTP server.
    pub listen: SocketAddr,
    /// Bearer key for `/v1/` calls; empty = none (loopback only).
    pub api_key: String,
}

/// `[auth]`: ticket verification at `login`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `none` or `jwt`.
    pub mode: AuthMode,
    /// The only algorithm tickets may use.
    pub alg: TokenAlg,
    /// HS256 secret or EdDSA public key (base64url, 32 bytes).
    pub key: String,
    /// Expected `iss`; empty = not checked.
    pub issuer: String,
}

/// Which monoio driver the io loops run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Driver {
    /// io_uring where it can be set up, else the legacy epoll driver.
    #[serde(rename = "auto")]
    Auto,
    /// io_uring only.
    #[serde(rename = "io_uring")]
    IoUring,
    /// The legacy epoll driver.
    #[serde(rename = "legacy")]
    Legacy,
}

/// Ticket checking mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Any `user_id` is accepted.
    None,
    /// A JWT from the game's account service is required.
    Jwt,
}

/// A JWS algorithm this server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TokenAlg {
    /// Ed25519 signatures.
    EdDSA,
    /// HMAC-SHA256 with a shared secret.
    HS256,
}

/// `[tokens]`: admission tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Signing algorithm.
    pub alg: TokenAlg,
    /// Ed25519 seed (base64url) or HS256 secret; empty = generated at start.
    pub key: String,
    /// Key id; empty = derived.
    pub kid: String,
    /// Token lifetime, seconds.
    pub ttl_secs: u64,
    /// `iss` claim.
    pub issuer: String,
    /// Login server address given to admitted players; empty = null.
    pub login_addr: String,
}

/// `[queues]`: named queues.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuesConfig {
    /// Create unknown queues on first login.
    pub auto_create: bool,
    /// `max_waiting` of auto-created queues.
    pub max_waiting: u64,
    /// Most queues in all; auto-creation stops there.
    pub max_queues: usize,
    /// Seconds an auto-created queue stays empty and idle before it is removed (its name
    /// and its slot in `max_queues` become free); 0 = never.
    pub auto_expire_secs: u64,
    /// Queues that exist from the start.
    pub list: Vec<QueueConfig>,
}

/// One `[[queues.list]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Queue name.
    pub name: String,
    /// Most players waiting.
    pub max_waiting: u64,
    /// Automatic admission rate, players/s (0 = manual).
    pub admit_rate_per_s: f64,
}

/// `[core]`: queue core pacing and bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreConfig {
    /// Housekeeping tick, ms.
    pub tick_ms: u64,
    /// Exact position resync period, seconds.
    pub resync_secs: u64,
    /// Sessions per loop from which rank batches are coalesced.
    pub broadcast_coalesce_min_sessions: usize,
    /// Capacity of the core's inbound channel.
    pub inbox_capacity: usize,
    /// Capacity of each core -> loop channel.
    pub loop_channel_capacity: usize,
}

/// `[durability]`: the queue core's write-ahead log and snapshots.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurabilityConfig {
    /// Directory of the log and snapshots; empty = durability off.
    pub dir: std::path::PathBuf,
    /// When the log is fsynced.
    pub fsync: FsyncPolicy,
    /// Period of snapshots, seconds.
    pub snapshot_interval_secs: u64,
}

impl DurabilityConfig {
    /// True when a directory is configured.
    pub fn enabled(&self) -> bool {
        !self.dir.as_os_str().is_empty()
    }
}

/// When the write-ahead log is fsynced (see docs/durability.md for what each loses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Before anything that depends on a record leaves the server (group commit).
    Always,
    /// At most once a second.
    Everysec,
    /// Never (the OS writes back); records still reach the OS before any answer.
    None,
}

/// `[journal]`: what the queue core remembers per player (see `queue::journal`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// Keep a journal per player; off: `GET /v1/users/{user_id}` answers 501.
    pub enabled: bool,
    /// Most players journaled; past it the least recently active journal is evicted.
    pub players_max: usize,
    /// Most events kept per player (the oldest go first), 1..=[`JOURNAL_EVENTS_MAX`].
    pub events_per_player: usize,
}

/// Largest `journal.events_per_player`.
pub const JOURNAL_EVENTS_MAX: usize = 256;
/// Largest `journal.players_max` (a bound against typos: at 1.2 KB a player with full
/// rings of 32 events, 10 million players are some 12 GB).
pub const JOURNAL_PLAYERS_MAX: usize = 10_000_000;

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Default level filter.
    pub level: String,
    /// Line format on stdout.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `target`), for log
    /// collectors; the audit trail's lines have `target` = `audit`.
    Json,
}

/// A configuration that cannot be used: which key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path (`server.listen`), or the file when the whole file is at fault.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config key `{}`: {}", self.key, self.reason)
    }
}

impl std::error::Error for ConfigError {}

fn err(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        reason: reason.into(),
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::from_toml_str("").expect("embedded default config is valid")
    }
}

impl Config {
    /// The configuration from `text` laid over the embedded default, validated.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let mut base: toml::Table = DEFAULT_TOML
            .parse()
            .map_err(|e| err("<default>", format!("{e}")))?;
        let mut user: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| err("<file>", e.to_string()))?;
        let cluster = crate::cluster::ClusterConfig::from_toml(user.remove("cluster"))
            .map_err(|e| err(&e.key, e.reason))?;
        check_known(&base, &user, "")?;
        merge(&mut base, user);
        // Re-parse the merged text so a value error points at its line and key.
        let merged = toml::to_string(&base).map_err(|e| err("<file>", e.to_string()))?;
        let config: Config = toml::from_str(&merged).map_err(|e: toml::de::Error| {
            let key = e
                .span()
                .map_or_else(|| "<file>".to_string(), |span| key_at(&merged, span.start));
            err(&key, e.message().trim())
        })?;
        config.validate()?;
        Ok(Config { cluster, ..config })
    }

    /// Reads and parses a config file.
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        use std::io::Read;
        let name = path.display().to_string();
        let file =
            std::fs::File::open(path).map_err(|e| err(&name, format!("cannot open: {e}")))?;
        // Read one byte past the cap so an oversized file (or a device that never ends,
        // such as /dev/zero) is refused without reading it whole.
        let mut text = String::new();
        file.take(CONFIG_BYTES_MAX + 1)
            .read_to_string(&mut text)
            .map_err(|e| err(&name, format!("cannot read: {e}")))?;
        if text.len() as u64 > CONFIG_BYTES_MAX {
            return Err(err(
                &name,
                format!("larger than {CONFIG_BYTES_MAX} bytes: not a config file"),
            ));
        }
        Config::from_toml_str(&text)
    }

    /// Number of io loops to run (resolves `cores = 0`).
    pub fn loop_count(&self) -> usize {
        if self.server.cores == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.server.cores
        }
    }

    /// Checks every value that parses but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
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
        if self.control.api_key.is_empty() && !self.control.listen.ip().is_loopback() {
            return Err(err(
                "control.listen",
                "a non-loopback control address needs control.api_key",
            ));
        }
        if self.auth.mode == AuthMode::Jwt && self.auth.key.is_empty() {
            return Err(err("auth.key", "required when auth.mode = \"jwt\""));
        }
        if self.tokens.ttl_secs == 0 {
            return Err(err("tokens.ttl_secs", "must be at least 1"));
        }
        if self.tokens.alg == TokenAlg::HS256
            && !self.tokens.key.is_empty()
            && self.tokens.key.len() < 32
        {
            return Err(err(
                "tokens.key",
                "an HS256 secret must be at least 32 bytes",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, q) in self.queues.list.iter().enumerate() {
            let key = format!("queues.list[{i}]");
            if !valid_queue_name(&q.name) {
                return Err(err(
                    &format!("{key}.name"),
                    "1 to 64 characters of [A-Za-z0-9_.-]",
                ));
            }
            if !names.insert(q.name.as_str()) {
                return Err(err(
                    &format!("{key}.name"),
                    format!("duplicate queue `{}`", q.name),
                ));
            }
            if q.max_waiting == 0 {
                return Err(err(&format!("{key}.max_waiting"), "must be at least 1"));
            }
            if !(q.admit_rate_per_s >= 0.0 && q.admit_rate_per_s <= 1e6) {
                return Err(err(
                    &format!("{key}.admit_rate_per_s"),
                    "must be in 0..=1000000",
                ));
            }
        }
        if self.queues.max_queues < self.queues.list.len().max(1) {
            return Err(err(
                "queues.max_queues",
                "must be at least 1 and at least the number of configured queues",
            ));
        }
        if self.queues.auto_expire_secs > AUTO_EXPIRE_SECS_MAX {
            return Err(err(
                "queues.auto_expire_secs",
                format!("must be in 0..={AUTO_EXPIRE_SECS_MAX} (0 = never)"),
            ));
        }
        if self.queues.list.is_empty() && !self.queues.auto_create {
            return Err(err(
                "queues.list",
                "no queues and queues.auto_create = false",
            ));
        }
        if self.core.tick_ms == 0 || self.core.tick_ms > 1000 {
            return Err(err("core.tick_ms", "must be in 1..=1000"));
        }
        if self.core.resync_secs == 0 {
            return Err(err("core.resync_secs", "must be at least 1"));
        }
        if self.core.inbox_capacity < 16 {
            return Err(err("core.inbox_capacity", "must be at least 16"));
        }
        if self.core.loop_channel_capacity < 16 {
            return Err(err("core.loop_channel_capacity", "must be at least 16"));
        }
        if self.durability.snapshot_interval_secs == 0 {
            return Err(err(
                "durability.snapshot_interval_secs",
                "must be at least 1",
            ));
        }
        let j = &self.journal;
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
}

/// Longest `queues.auto_expire_secs` (one year; longer is "never", which is 0).
pub const AUTO_EXPIRE_SECS_MAX: u64 = 365 * 24 * 3600;

/// Queue names are short and URL-safe so they can sit in a control API path.
pub fn valid_queue_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Rejects any key of `user` that `base` lacks, naming it by its dotted path.
fn check_known(base: &toml::Table, user: &toml::Table, prefix: &str) -> Result<(), ConfigError> {
    for (k, v) in user {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let Some(b) = base.get(k) else {
            return Err(err(&path, "unknown key"));
        };
        match (b, v) {
            (toml::Value::Table(bt), toml::Value::Table(ut)) => check_known(bt, ut, &path)?,
            (toml::Value::Array(ba), toml::Value::Array(ua)) => {
                if let Some(toml::Value::Table(template)) = ba.first() {
                    for (i, item) in ua.iter().enumerate() {
                        let item_path = format!("{path}[{i}]");
                        let toml::Value::Table(it) = item else {
                            return Err(err(&item_path, "must be a table"));
                        };
                        check_known(template, it, &item_path)?;
                    }
                }
            }
            (toml::Value::Table(_), _) => return Err(err(&path, "must be a table")),
            (toml::Value::Float(_), toml::Value::Integer(_)) => {}
            (b, v) if b.type_str() != v.type_str() => {
                return Err(err(
                    &path,
                    format!(
                        "must be {}, not {}",
                        article(b.type_str()),
                        article(v.type_str())
                    ),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The dotted key of the `key = value` line holding byte `at` of a TOML text.
fn key_at(text: &str, at: usize) -> String {
    let before = &text[..at.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = &text[line_start..];
    let key = line.split('=').next().unwrap_or("").trim();
    let table = before[..line_start]
        .lines()
        .rev()
        .find_map(|l| {
            let l = l.trim();
            l.starts_with('[')
                .then(|| l.trim_matches(|c| c == '[' || c == ']').to_string())
        })
        .unwrap_or_default();
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

/// "an integer", "a string", ... for error messages.
fn article(type_str: &str) -> String {
    match type_str.as_bytes().first() {
        Some(b'a' | b'e' | b'i' | b'o' | b'u') => format!("an {type_str}"),
        _ => format!("a {type_str}"),
    }
}

/// Lays `user` over `base`: tables merge key by key; any other value replaces.
/// Array-of-table items are laid over the default's first item so they inherit its keys.
fn merge(base: &mut toml::Table, user: toml::Table) {
    for (k, v) in user {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(bt)), toml::Value::Table(ut)) => merge(bt, ut),
            (Some(toml::Value::Array(ba)), toml::Value::Array(ua)) => {
                let template = match ba.first() {
                    Some(toml::Value::Table(t)) => Some(t.clone()),
                    _ => None,
                };
                let items = ua
                    .into_iter()
                    .map(|item| match (&template, item) {
                        (Some(t), toml::Value::Table(it)) => {
                            let mut merged = t.clone();
                            merge(&mut merged, it);
                            toml::Value::Table(merged)
                        }
                        (_, other) => other,
                    })
                    .collect();
                *ba = items;
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_and_validates() {
        let c = Config::default();
        assert_eq!(c.server.listen.port(), 7000);
        assert_eq!(c.control.listen.port(), 7001);
        assert!(c.control.listen.ip().is_loopback());
        assert_eq!(c.auth.mode, AuthMode::None);
        assert_eq!(c.queues.list.len(), 1);
        assert_eq!(c.queues.list[0].name, "default");
        assert_eq!(c.queues.list[0].admit_rate_per_s, 0.0);
        assert_eq!(c.tokens.alg, TokenAlg::EdDSA);
    }

    #[test]
    fn oversized_or_endless_config_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("qs-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.toml");
        let mut big = String::from("[server]\n");
        while big.len() as u64 <= CONFIG_BYTES_MAX {
            big.push_str("# padding padding padding padding padding padding padding\n");
        }
        std::fs::write(&path, &big).unwrap();
        let e = Config::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        let e = Config::from_file(std::path::Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("larger than") || e.contains("cannot read"),
            "{e}"
        );
        std::fs::write(&path, "[server]\nidle_timeout_secs = 3\n").unwrap();
        assert_eq!(
            Config::from_file(&path).unwrap().server.idle_timeout_secs,
            3
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn deeply_nested_config_is_an_error_not_a_crash() {
        let text = format!("x = {}1{}\n", "[".repeat(100_000), "]".repeat(100_000));
        assert!(Config::from_toml_str(&text).is_err());
    }

    #[test]
    fn file_overrides_single_keys() {
        let c = Config::from_toml_str("[server]\nidle_timeout_secs = 3\n").unwrap();
        assert_eq!(c.server.idle_timeout_secs, 3);
        assert_eq!(c.server.login_timeout_secs, 5);
    }

    #[test]
    fn queue_items_inherit_defaults() {
        let c = Config::from_toml_str("[[queues.list]]\nname = \"w1\"\n").unwrap();
        assert_eq!(c.queues.list.len(), 1);
        assert_eq!(c.queues.list[0].name, "w1");
        assert_eq!(c.queues.list[0].max_waiting, 1_000_000);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml_str("[server]\nlistne = \"x\"\n").unwrap_err();
        assert_eq!(e.key, "server.listne");
        let e = Config::from_toml_str("[[queues.list]]\nname=\"a\"\nrate=1\n").unwrap_err();
        assert_eq!(e.key, "queues.list[0].rate");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = Config::from_toml_str("[server]\nmax_frame_bytes = 1\n").unwrap_err();
        assert_eq!(e.key, "server.max_frame_bytes");
        let e = Config::from_toml_str("[control]\nlisten = \"0.0.0.0:1\"\n").unwrap_err();
        assert_eq!(e.key, "control.listen");
        let e = Config::from_toml_str("[auth]\nmode = \"jwt\"\n").unwrap_err();
        assert_eq!(e.key, "auth.key");
        let e = Config::from_toml_str("[[queues.list]]\nname = \"a b\"\n").unwrap_err();
        assert_eq!(e.key, "queues.list[0].name");
    }

    #[test]
    fn log_format_is_text_by_default_json_on_request_and_checked() {
        assert_eq!(Config::default().log.format, LogFormat::Text);
        let c = Config::from_toml_str("[log]\nformat = \"json\"\n").unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        let e = Config::from_toml_str("[log]\nformat = \"xml\"\n").unwrap_err();
        assert_eq!(e.key, "log.format");
    }

    #[test]
    fn journal_is_on_by_default_and_bounded() {
        let j = Config::default().journal;
        assert!(j.enabled);
        assert_eq!((j.players_max, j.events_per_player), (100_000, 32));
        let c = Config::from_toml_str(
            "[journal]
enabled = false
events_per_player = 256
",
        )
        .unwrap();
        assert!(!c.journal.enabled);
        assert_eq!(c.journal.events_per_player, 256);
        for (toml, key) in [
            (
                "[journal]
events_per_player = 257
",
                "journal.events_per_player",
            ),
            (
                "[journal]
events_per_player = 0
",
                "journal.events_per_player",
            ),
            (
                "[journal]
players_max = 0
",
                "journal.players_max",
            ),
            (
                "[journal]
players_max = 10000001
",
                "journal.players_max",
            ),
        ] {
            assert_eq!(Config::from_toml_str(toml).unwrap_err().key, key, "{toml}");
        }
    }

    #[test]
    fn durability_is_off_by_default_and_validated() {
        let c = Config::default();
        assert!(!c.durability.enabled());
        assert_eq!(c.durability.fsync, FsyncPolicy::Always);
        let c = Config::from_toml_str("[durability]\ndir = \"/tmp/q\"\nfsync = \"everysec\"\n")
            .unwrap();
        assert!(c.durability.enabled());
        assert_eq!(c.durability.fsync, FsyncPolicy::Everysec);
        let e = Config::from_toml_str("[durability]\nfsync = \"sometimes\"\n").unwrap_err();
        assert_eq!(e.key, "durability.fsync");
        let e = Config::from_toml_str("[durability]\nsnapshot_interval_secs = 0\n").unwrap_err();
        assert_eq!(e.key, "durability.snapshot_interval_secs");
    }

    #[test]
    fn auto_expire_defaults_to_five_minutes_and_is_bounded() {
        assert_eq!(Config::default().queues.auto_expire_secs, 300);
        let c = Config::from_toml_str("[queues]\nauto_expire_secs = 0\n").unwrap();
        assert_eq!(c.queues.auto_expire_secs, 0);
        let e = Config::from_toml_str("[queues]\nauto_expire_secs = 31536001\n").unwrap_err();
        assert_eq!(e.key, "queues.auto_expire_secs");
    }

    #[test]
    fn type_errors_mention_the_field() {
        let e = Config::from_toml_str("[server]\nidle_timeout_secs = \"x\"\n").unwrap_err();
        assert_eq!(e.key, "server.idle_timeout_secs");
        assert!(e.reason.contains("integer"), "{e}");
        let e = Config::from_toml_str("[auth]\nmode = \"ldap\"\n").unwrap_err();
        assert_eq!(e.key, "auth.mode");
        assert!(e.reason.contains("ldap"), "{e}");
        let e = Config::from_toml_str("[server]\nlisten = \"nowhere\"\n").unwrap_err();
        assert_eq!(e.key, "server.listen");
        let c =
            Config::from_toml_str("[[queues.list]]\nname = \"a\"\nadmit_rate_per_s = 5\n").unwrap();
        assert_eq!(c.queues.list[0].admit_rate_per_s, 5.0);
    }
}
