//! Configuration: the embedded default (`config/default.toml`), an optional file laid
//! over it key by key, flag overrides, and validation.
//!
//! Invariants:
//! - every key has exactly one default, written (with its unit) in `config/default.toml`;
//!   this module holds no second copy of the defaults;
//! - a key the default does not have is an error naming the key (typos never pass);
//! - `Config::validate` runs before anything binds; every error names the key and why.
//!
//! Layout: this file holds the sections' types, loading (`from_toml_str`, `from_file`)
//! and the small shared helpers; `layer.rs` lays a file over the default (unknown keys,
//! type checks, merge); `validate.rs` holds `Config::validate`, one function per
//! section; `tests.rs` the unit tests.

use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;

mod layer;
#[cfg(test)]
mod tests;
mod validate;

use layer::{check_known, key_at, merge};

/// Largest config file read, bytes: every key of the default fits in a few KiB, so a
/// bigger file is a mistake (a log, a binary, a device) and is refused before parsing.
/// Nesting is bounded by the TOML parser itself.
pub const CONFIG_BYTES_MAX: u64 = 1024 * 1024;

/// The built-in default configuration, embedded at build time.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

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
        // `[cluster]` is set before validation: some keys are required only in a cluster.
        let config = Config { cluster, ..config };
        config.validate()?;
        Ok(config)
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
