//! Tests of the configuration: the embedded default, layering, unknown keys, value
//! and type errors naming their key, and the bounds `validate` enforces.

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
    let c =
        Config::from_toml_str("[durability]\ndir = \"/tmp/q\"\nfsync = \"everysec\"\n").unwrap();
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
    let c = Config::from_toml_str("[[queues.list]]\nname = \"a\"\nadmit_rate_per_s = 5\n").unwrap();
    assert_eq!(c.queues.list[0].admit_rate_per_s, 5.0);
}

#[test]
fn a_cluster_needs_a_configured_token_key() {
    let cluster = r#"
        [cluster]
        etcd = ["http://127.0.0.1:2379"]
        node_id = "a"
        advertise_player = "10.0.0.1:7000"
        advertise_control = "10.0.0.1:7001"
        advertise_link = "10.0.0.1:7002"
    "#;
    let e = Config::from_toml_str(cluster).unwrap_err();
    assert_eq!(e.key, "tokens.key", "{e}");
    assert!(e.reason.contains("[cluster]"), "{e}");
    let keyed = format!(
        "[tokens]\nkey = \"{}\"\n{cluster}",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    );
    let c = Config::from_toml_str(&keyed).unwrap();
    assert!(c.cluster.is_some());
    // One node needs no key: it generates one (and warns).
    assert!(Config::from_toml_str("").unwrap().tokens.key.is_empty());
}
