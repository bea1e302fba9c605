//! Membership records: `{prefix}/nodes/{node_id}` = JSON [`Member`], attached to the
//! node's lease, so a node that stops renewing drops out of every listing when etcd
//! expires the lease, and a clean stop (revoke) drops it at once.
//!
//! The record carries the node's config [`Fingerprint`]: what every node of a cluster
//! must share (`tokens.alg`, `tokens.key`, `tokens.kid`, `tokens.issuer`,
//! `control.api_key`). A node whose fingerprint differs from a live member's refuses to
//! start (or, when etcd could not be read at start, to register): see
//! [`config_mismatch`] and `node::Node::check_config`.
//!
//! Invariants: one key per node id; the value is written only by that node; a value
//! that does not parse is skipped by readers (a newer node may add fields, which serde
//! ignores), never fatal; a record without a fingerprint (an older build) is never
//! called a mismatch; no secret is stored, only a keyed SHA-256 of it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::mac;

/// One live node, as registered in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Unique node name (`cluster.node_id`).
    pub node_id: String,
    /// Where players and nodes reach its player port.
    pub advertise_player: String,
    /// Where nodes and operators reach its control port.
    pub advertise_control: String,
    /// Where nodes dial its node link (`cluster.advertise_link`; empty from a node
    /// that has none).
    #[serde(default)]
    pub advertise_link: String,
    /// Wall-clock start of the node, Unix milliseconds (for operators; never compared).
    pub started_at_unix_ms: u64,
    /// What this node's config must share with every other node (absent from an
    /// older build, and from nodes started without one: then never compared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Fingerprint>,
}

/// The settings every node of a cluster must share, as one node has them: public
/// values as they are, secrets only as a keyed SHA-256 (so two nodes can tell whether
/// theirs are equal, and etcd never holds a secret).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// `tokens.alg` (`EdDSA` or `HS256`).
    pub tokens_alg: String,
    /// The key id in every token header (`tokens.kid`, or the one derived from the key).
    pub tokens_kid: String,
    /// `tokens.issuer` (the `iss` of every token).
    pub tokens_issuer: String,
    /// Keyed SHA-256 of `tokens.key` (base64url, 132 bits): nodes signing with different
    /// keys issue tokens the others reject.
    pub tokens_key_sha256: String,
    /// Keyed SHA-256 of `control.api_key` (base64url, 132 bits): a forwarded request is
    /// checked again by the owner, so different keys make forwarding fail with 401.
    pub api_key_sha256: String,
}

/// Domain label of the fingerprint hash (the HMAC key: public, it only separates this
/// use of SHA-256 from any other).
const FINGERPRINT_LABEL: &[u8] = b"queue-server cluster fingerprint v1";

/// Base64url characters kept of the hash: 22, i.e. the first 132 bits (22 x 6). Nodes
/// compare the text, so this length is part of the format and never changes.
const FINGERPRINT_CHARS: usize = 22;

/// HMAC-SHA256 of `what` and `secret` under [`FINGERPRINT_LABEL`], base64url
/// (unpadded), its first [`FINGERPRINT_CHARS`] characters (132 bits): equal inputs give
/// equal text on every node and build.
fn keyed_sha256(what: &str, secret: &str) -> String {
    let message = format!("{what}\0{secret}");
    let tag = mac::hmac_sha256(FINGERPRINT_LABEL, message.as_bytes());
    let mut text = URL_SAFE_NO_PAD.encode(tag);
    text.truncate(FINGERPRINT_CHARS);
    text
}

impl Fingerprint {
    /// The fingerprint of these settings (`key` and `api_key` are hashed here).
    pub fn new(alg: &str, kid: &str, issuer: &str, key: &str, api_key: &str) -> Fingerprint {
        Fingerprint {
            tokens_alg: alg.to_string(),
            tokens_kid: kid.to_string(),
            tokens_issuer: issuer.to_string(),
            tokens_key_sha256: keyed_sha256("tokens.key", key),
            api_key_sha256: keyed_sha256("control.api_key", api_key),
        }
    }

    /// What differs from `theirs` (node `node`), one phrase per config key, naming the
    /// values that are public (alg, kid, issuer) and only the key of the secrets.
    pub fn differences(&self, theirs: &Fingerprint, node: &str) -> Vec<String> {
        let public = [
            ("tokens.alg", &self.tokens_alg, &theirs.tokens_alg),
            ("tokens.kid", &self.tokens_kid, &theirs.tokens_kid),
            ("tokens.issuer", &self.tokens_issuer, &theirs.tokens_issuer),
        ];
        let secret = [
            (
                "tokens.key",
                &self.tokens_key_sha256,
                &theirs.tokens_key_sha256,
            ),
            (
                "control.api_key",
                &self.api_key_sha256,
                &theirs.api_key_sha256,
            ),
        ];
        let mut out: Vec<String> = public
            .iter()
            .filter(|(_, mine, other)| mine != other)
            .map(|(key, mine, other)| format!("{key} ({mine:?} here, {other:?} on {node})"))
            .collect();
        out.extend(
            secret
                .iter()
                .filter(|(_, mine, other)| mine != other)
                .map(|(key, _, _)| format!("{key} (differs from {node}'s)")),
        );
        out
    }
}

/// The first live member other than `me` whose fingerprint differs from `mine`: the
/// text of the refusal, naming the member and every key that differs.
pub fn config_mismatch(mine: &Fingerprint, me: &str, members: &[Member]) -> Option<String> {
    members.iter().filter(|m| m.node_id != me).find_map(|m| {
        let theirs = m.config.as_ref()?;
        let differences = mine.differences(theirs, &m.node_id);
        (!differences.is_empty()).then(|| {
            format!(
                "this node's config differs from live member {}: {}; every node of a \
                     cluster needs the same tokens.alg, tokens.key, tokens.kid, \
                     tokens.issuer and control.api_key; to change one, stop every node",
                m.node_id,
                differences.join(", ")
            )
        })
    })
}

/// `{prefix}/nodes/{node_id}`.
pub fn node_key(prefix: &str, node_id: &str) -> String {
    format!("{prefix}/nodes/{node_id}")
}

/// The prefix of every node key.
pub fn nodes_prefix(prefix: &str) -> String {
    format!("{prefix}/nodes/")
}

impl Member {
    /// The JSON value stored in etcd.
    pub fn to_json(&self) -> String {
        sonic_rs::to_string(self).unwrap_or_default()
    }

    /// Parses a stored value; None when it is not a member record.
    pub fn from_json(bytes: &[u8]) -> Option<Member> {
        sonic_rs::from_slice(bytes).ok()
    }
}

impl super::node::Shared {
    /// Records the latest config comparison; logs an error when a mismatch appears or
    /// changes, and a line when it is gone.
    pub fn note_config_mismatch(&self, now: Option<String>) {
        let mut held = self
            .config_mismatch
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *held == now {
            return;
        }
        match &now {
            Some(text) => tracing::error!(node = %self.node_id, "cluster: {text}"),
            None => {
                tracing::info!(node = %self.node_id, "cluster: config matches the members again")
            }
        }
        *held = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_skips_garbage() {
        let m = Member {
            node_id: "a".into(),
            advertise_player: "h:1".into(),
            advertise_control: "h:2".into(),
            advertise_link: "h:3".into(),
            started_at_unix_ms: 5,
            config: Some(Fingerprint::new("EdDSA", "k", "iss", "seed", "api")),
        };
        assert_eq!(Member::from_json(m.to_json().as_bytes()), Some(m.clone()));
        assert_eq!(Member::from_json(b"{"), None);
        // An older build's record (no fingerprint) still parses, and is never a mismatch.
        let old = r#"{"node_id":"o","advertise_player":"h:1","advertise_control":"h:2","started_at_unix_ms":1}"#;
        let old = Member::from_json(old.as_bytes()).unwrap();
        assert_eq!(old.config, None);
        let mine = Fingerprint::new("EdDSA", "k2", "iss", "seed", "api");
        assert_eq!(config_mismatch(&mine, "a", &[old]), None);
    }

    #[test]
    fn a_mismatch_names_the_keys_but_no_secret() {
        let mine = Fingerprint::new("EdDSA", "k1", "iss", "seed-one", "api-one");
        assert_eq!(
            mine,
            Fingerprint::new("EdDSA", "k1", "iss", "seed-one", "api-one")
        );
        let member = |node_id: &str, fp: Fingerprint| Member {
            node_id: node_id.into(),
            advertise_player: "h:1".into(),
            advertise_control: "h:2".into(),
            advertise_link: "h:3".into(),
            started_at_unix_ms: 1,
            config: Some(fp),
        };
        // Our own record never counts; an equal one is no mismatch.
        let members = [
            member("a", Fingerprint::default()),
            member("b", mine.clone()),
        ];
        assert_eq!(config_mismatch(&mine, "a", &members), None);
        let theirs = Fingerprint::new("EdDSA", "k2", "iss", "seed-two", "api-two");
        let text = config_mismatch(&mine, "a", &[member("c", theirs.clone())]).unwrap();
        assert!(text.contains("live member c"), "{text}");
        assert!(
            text.contains("tokens.kid (\"k1\" here, \"k2\" on c)"),
            "{text}"
        );
        assert!(text.contains("tokens.key (differs"), "{text}");
        assert!(text.contains("control.api_key (differs"), "{text}");
        assert!(!text.contains("tokens.issuer ("), "{text}");
        let json = member("c", theirs).to_json();
        assert!(
            !json.contains("seed-two") && !json.contains("api-two"),
            "{json}"
        );
    }

    #[test]
    fn fingerprint_values_are_pinned() {
        // Nodes of different builds compare these texts: a change of the hash, its
        // label or its length would make every mixed cluster refuse to start.
        let fp = Fingerprint::new("HS256", "kid", "iss", "secret-key", "api-key");
        assert_eq!(fp.tokens_key_sha256, "zZet26WlwwLYDqfTj83m-j");
        assert_eq!(fp.api_key_sha256, "Xa0Fi0nqfQUNuoRAPP3c6S");
    }
}
