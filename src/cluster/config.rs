//! `[cluster]`: which etcd, who this node is, where others reach it, and the lease.
//!
//! The table is optional: without it the server is one node and nothing here runs. Its
//! defaults live here (not in `config/default.toml`) because the table as a whole must
//! stay absent by default; every key is listed with its default in [`ClusterConfig`].
//!
//! Invariants: a parsed `ClusterConfig` is validated; every error names its key
//! (`cluster.node_id`, ...) and says why.

use std::fmt;

use serde::Deserialize;

/// A `[cluster]` value that cannot be used: which key, and why. (Its own type, not
/// `crate::config::ConfigError`, so this module does not depend on the config loader,
/// which depends on it; the loader maps it 1:1.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfigError {
    /// Dotted key path (`cluster.node_id`), or `cluster` for the table as a whole.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ClusterConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config key `{}`: {}", self.key, self.reason)
    }
}

impl std::error::Error for ClusterConfigError {}

/// Default `lease_ttl_secs`: a dead node's queues move after about this long.
pub const LEASE_TTL_SECS_DEFAULT: u64 = 5;
/// Default `recovery_window_secs`: how long a dead node's players may come back.
pub const RECOVERY_WINDOW_SECS_DEFAULT: u64 = 30;
/// Default `prefix` of every key this cluster writes in etcd.
pub const PREFIX_DEFAULT: &str = "/queue-server";
/// Shortest lease etcd grants with its default election timeout (1 s): it raises any
/// shorter TTL to its minimum (1.5 x election timeout), so a smaller value would lie.
pub const LEASE_TTL_SECS_MIN: u64 = 2;
/// Longest lease accepted: past this a dead node holds its queues for too long.
pub const LEASE_TTL_SECS_MAX: u64 = 300;
/// Longest recovery window accepted (an hour).
pub const RECOVERY_WINDOW_SECS_MAX: u64 = 3600;

/// `[cluster]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd client endpoints, `http://host:port` (required, at least one).
    pub etcd: Vec<String>,
    /// This node's name, unique in the cluster: 1 to 64 of `[A-Za-z0-9_.-]` (required).
    pub node_id: String,
    /// `host:port` where players and other nodes reach this node's player port
    /// (required: the listen address may be 0.0.0.0).
    pub advertise_player: String,
    /// `host:port` where other nodes and operators reach this node's control port
    /// (required).
    pub advertise_control: String,
    /// `host:port` of this node's node link (required): the node binds it, and other
    /// nodes dial it to bring their players' joins, leaves and disconnects for the
    /// queues this node owns (see `cluster::link`). Its own port: no other listener
    /// may use it.
    pub advertise_link: String,
    /// TTL of this node's etcd lease, seconds (default 5, 2..=300): a node that cannot
    /// renew stops admitting before this runs out; its queues move after it.
    #[serde(default = "lease_ttl_secs_default")]
    pub lease_ttl_secs: u64,
    /// How long players of a dead node may reconnect and get their place back, seconds
    /// (default 30, 0..=3600). Read by the failover of places (not by this layer).
    #[serde(default = "recovery_window_secs_default")]
    pub recovery_window_secs: u64,
    /// Prefix of every etcd key of this cluster (default `/queue-server`): starts with
    /// `/`, does not end with one; two clusters on one etcd need two prefixes.
    #[serde(default = "prefix_default")]
    pub prefix: String,
    /// What this node's config must share with every other node (not a `[cluster]`
    /// key: the server fills it from `[tokens]` and `[control]`). None: not registered
    /// and not checked (a node built without it, or a test).
    #[serde(skip)]
    pub fingerprint: Option<super::membership::Fingerprint>,
}

fn lease_ttl_secs_default() -> u64 {
    LEASE_TTL_SECS_DEFAULT
}

fn recovery_window_secs_default() -> u64 {
    RECOVERY_WINDOW_SECS_DEFAULT
}

fn prefix_default() -> String {
    PREFIX_DEFAULT.to_string()
}

fn err(key: &str, reason: impl Into<String>) -> ClusterConfigError {
    ClusterConfigError {
        key: format!("cluster.{key}"),
        reason: reason.into(),
    }
}

impl ClusterConfig {
    /// Parses the `[cluster]` table of a config file (None when absent) and validates it.
    pub fn from_toml(
        table: Option<toml::Value>,
    ) -> Result<Option<ClusterConfig>, ClusterConfigError> {
        let Some(table) = table else {
            return Ok(None);
        };
        let config: ClusterConfig = table.try_into().map_err(|e: toml::de::Error| {
            let message = e.message().trim().to_string();
            // serde names the field in its message (`missing field `node_id``,
            // `unknown field `x``); keep the key at the table level.
            ClusterConfigError {
                key: "cluster".to_string(),
                reason: message,
            }
        })?;
        config.validate()?;
        Ok(Some(config))
    }

    /// Checks every value that parses but cannot work.
    pub fn validate(&self) -> Result<(), ClusterConfigError> {
        if self.etcd.is_empty() {
            return Err(err(
                "etcd",
                "at least one endpoint, e.g. [\"http://127.0.0.1:2379\"]",
            ));
        }
        for (i, endpoint) in self.etcd.iter().enumerate() {
            let rest = endpoint.strip_prefix("http://").ok_or_else(|| {
                err(
                    &format!("etcd[{i}]"),
                    "must be http://host:port (TLS to etcd is not built in)",
                )
            })?;
            if !has_port(rest.trim_end_matches('/')) {
                return Err(err(&format!("etcd[{i}]"), "must be http://host:port"));
            }
        }
        if !valid_node_id(&self.node_id) {
            return Err(err("node_id", "1 to 64 characters of [A-Za-z0-9_.-]"));
        }
        if !has_port(&self.advertise_player) {
            return Err(err("advertise_player", "must be host:port"));
        }
        if !has_port(&self.advertise_control) {
            return Err(err("advertise_control", "must be host:port"));
        }
        if !has_port(&self.advertise_link) {
            return Err(err("advertise_link", "must be host:port"));
        }
        if self.advertise_link == self.advertise_player
            || self.advertise_link == self.advertise_control
        {
            return Err(err(
                "advertise_link",
                "must differ from advertise_player and advertise_control (its own port)",
            ));
        }
        if !(LEASE_TTL_SECS_MIN..=LEASE_TTL_SECS_MAX).contains(&self.lease_ttl_secs) {
            return Err(err(
                "lease_ttl_secs",
                format!("must be in {LEASE_TTL_SECS_MIN}..={LEASE_TTL_SECS_MAX}"),
            ));
        }
        if self.recovery_window_secs > RECOVERY_WINDOW_SECS_MAX {
            return Err(err(
                "recovery_window_secs",
                format!("must be at most {RECOVERY_WINDOW_SECS_MAX}"),
            ));
        }
        let p = &self.prefix;
        if !p.starts_with('/')
            || p.ends_with('/')
            || p.len() > 128
            || p.contains(char::is_whitespace)
        {
            return Err(err(
                "prefix",
                "must start with '/', not end with '/', no spaces, at most 128 bytes",
            ));
        }
        Ok(())
    }

    /// The lease TTL in milliseconds.
    pub fn lease_ttl_ms(&self) -> u64 {
        self.lease_ttl_secs * 1000
    }
}

/// 1 to 64 of `[A-Za-z0-9_.-]` (a key component and a log field: no `/`, no spaces).
fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// `host:port` with a non-empty host and a numeric port (host names allowed: the
/// address is only handed to others, never bound here).
fn has_port(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<ClusterConfig>, ClusterConfigError> {
        let table: toml::Table = text.parse().unwrap();
        ClusterConfig::from_toml(table.get("cluster").cloned())
    }

    const OK: &str = r#"
        [tokens]
        key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        [cluster]
        etcd = ["http://127.0.0.1:2379"]
        node_id = "a"
        advertise_player = "10.0.0.1:7000"
        advertise_control = "10.0.0.1:7001"
        advertise_link = "10.0.0.1:7002"
    "#;

    #[test]
    fn the_config_loader_reads_the_table() {
        // Through the real loader: the table bypasses its unknown-key check, is parsed here,
        // and errors keep their key.
        let c = crate::config::Config::from_toml_str(OK).unwrap();
        assert_eq!(c.cluster.map(|c| c.node_id), Some("a".to_string()));
        assert_eq!(
            crate::config::Config::from_toml_str("").unwrap().cluster,
            None
        );
        let bad = OK.replace("node_id = \"a\"", "node_id = \"\"");
        let e = crate::config::Config::from_toml_str(&bad).unwrap_err();
        assert_eq!(e.key, "cluster.node_id");
    }

    #[test]
    fn absent_is_single_node() {
        assert_eq!(parse("").unwrap(), None);
    }

    #[test]
    fn defaults_apply() {
        let c = parse(OK).unwrap().unwrap();
        assert_eq!(c.lease_ttl_secs, LEASE_TTL_SECS_DEFAULT);
        assert_eq!(c.recovery_window_secs, RECOVERY_WINDOW_SECS_DEFAULT);
        assert_eq!(c.prefix, PREFIX_DEFAULT);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("etcd = []", "cluster.etcd"),
            ("etcd = [\"127.0.0.1:2379\"]", "cluster.etcd[0]"),
            ("node_id = \"a b\"", "cluster.node_id"),
            (
                "advertise_player = \"10.0.0.1\"",
                "cluster.advertise_player",
            ),
            ("advertise_control = \":7\"", "cluster.advertise_control"),
            ("advertise_link = \"10.0.0.1\"", "cluster.advertise_link"),
            (
                "advertise_link = \"10.0.0.1:7001\"",
                "cluster.advertise_link",
            ),
            ("lease_ttl_secs = 1", "cluster.lease_ttl_secs"),
            (
                "recovery_window_secs = 4000",
                "cluster.recovery_window_secs",
            ),
            ("prefix = \"q/\"", "cluster.prefix"),
        ];
        for (line, key) in cases {
            let field = line.split(' ').next().unwrap();
            let text: String = OK
                .lines()
                .filter(|l| l.trim().split(' ').next() != Some(field))
                .chain([line])
                .collect::<Vec<_>>()
                .join("\n");
            let e = parse(&text).unwrap_err();
            assert_eq!(e.key, key, "{line}: {e}");
        }
        let e = parse("[cluster]\netcd = [\"http://h:1\"]").unwrap_err();
        assert!(e.reason.contains("node_id"), "{e}");
        let e = parse(&format!("{OK}\ntypo = 1")).unwrap_err();
        assert!(e.reason.contains("typo"), "{e}");
    }
}
