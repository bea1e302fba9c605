//! The deploy files (deploy/): every metric the Prometheus alert rules and the Grafana
//! dashboard use is exported by a live server's /metrics; the dashboard is Grafana JSON
//! with a query per panel; the rules name expr, severity and summary; the Docker image
//! is multi-stage and non-root, and its entrypoint hands the API key to the server; the
//! systemd unit stops gracefully within its timeout and has no reload.

mod common;
mod server_process;

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use server_process::{free_port, request, ServerProcess};

fn deploy(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every `queue_*` / `process_*` identifier in `text` (PromQL metric names; a `$queue`
/// variable or a `queue` label is not one).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        if !is_ident(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_ident(bytes[i]) {
            i += 1;
        }
        let word = &text[start..i];
        let variable = start > 0 && matches!(bytes[start - 1], b'$' | b'.');
        if !variable && (word.starts_with("queue_") || word.starts_with("process_")) {
            names.insert(word.to_string());
        }
    }
    names
}

/// The sample names a scrape can hold, from the `# TYPE` lines of an OpenMetrics text
/// (a counter `x` is sampled as `x_total`, a histogram as `x_bucket`, `x_sum`,
/// `x_count`, ...) and from the sample lines themselves.
fn exported_names(metrics: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (Some(family), Some(kind)) = (it.next(), it.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" | "gaugehistogram" => {
                    &["_bucket", "_sum", "_count", "_gsum", "_gcount", "_created"]
                }
                "summary" => &["", "_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            for s in suffixes {
                names.insert(format!("{family}{s}"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

#[test]
fn every_metric_in_the_alert_rules_and_the_dashboard_is_exported() {
    let dir = std::env::temp_dir().join(format!("qs-deploy-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Durability on: its families exist only then.
    let server = common::start(&format!(
        "[durability]\ndir = \"{}\"\nfsync = \"everysec\"\n",
        dir.display()
    ));
    let (status, metrics) = common::http_text(server.control, "GET", "/metrics", None, None);
    assert_eq!(status, 200, "{metrics}");
    let exported = exported_names(&metrics);

    let alerts = metric_names(&deploy("prometheus/alerts.yml"));
    let dashboard = metric_names(&deploy("grafana/queue-server.json"));
    // The alerts the operators asked for are there.
    for needed in [
        "queue_core_round_age_seconds",
        "queue_durability_degraded",
        "queue_waiting",
        "queue_admitted_total",
        "process_open_fds",
        "process_max_fds",
    ] {
        assert!(alerts.contains(needed), "alerts.yml does not use {needed}");
    }
    let mut missing = Vec::new();
    for (file, names) in [("alerts.yml", &alerts), ("queue-server.json", &dashboard)] {
        for name in names.iter() {
            if !exported.contains(name) {
                missing.push(format!("{file}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "metrics used but not exported: {missing:?}\n/metrics:\n{metrics}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn metric_names_follow_openmetrics_suffix_rules() {
    let text = "# TYPE a counter\na_total 1\n# TYPE h histogram\n# TYPE g gauge\n\
                g{x=\"1\"} 2\n# TYPE i info\n# EOF\n";
    let names = exported_names(text);
    for n in ["a_total", "h_bucket", "h_sum", "h_count", "g", "i_info"] {
        assert!(names.contains(n), "{n}");
    }
    for n in ["a", "h", "i", "g_total"] {
        assert!(!names.contains(n), "{n}");
    }
    let used = metric_names(
        r#"sum by (queue) (rate(queue_admitted_total{queue=~"$queue"}[5m])) / process_max_fds + $queue_x + {{ $labels.queue_y }}"#,
    );
    assert_eq!(
        used.into_iter().collect::<Vec<_>>(),
        ["process_max_fds", "queue_admitted_total"]
    );
}

#[test]
fn dashboard_is_grafana_json_with_a_query_per_panel() {
    let d: Value = serde_json::from_str(&deploy("grafana/queue-server.json")).expect("json");
    assert_eq!(d["uid"], "queue-server");
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = HashSet::new();
    let mut queries = 0;
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate id {p}"
        );
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{p}"
        );
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel without a query: {}", p["title"]);
        for t in targets {
            assert!(!t["expr"].as_str().unwrap_or("").is_empty(), "{t}");
            queries += 1;
        }
    }
    assert!(queries >= 15, "{queries} queries");
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "instance", "queue"]);
}

#[test]
fn alert_rules_each_have_expr_severity_and_summary() {
    let text = deploy("prometheus/alerts.yml");
    let blocks: Vec<&str> = text.split("- alert: ").skip(1).collect();
    assert!(blocks.len() >= 5, "{} alerts", blocks.len());
    for b in blocks {
        let name = b.lines().next().unwrap();
        for key in ["expr:", "severity:", "summary:", "description:"] {
            assert!(b.contains(key), "alert {name} has no {key}");
        }
        assert!(!text.contains('\t'), "tabs in YAML");
    }
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_exposes_both_ports() {
    let text = deploy("Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let froms: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    let last = &lines[*froms.last().unwrap()..];
    let user = last
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER in the final stage");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "USER {user}"
    );
    assert!(
        last.iter().any(|l| l.starts_with("COPY --from=")),
        "copies from the builder"
    );
    assert!(last.contains(&"EXPOSE 7000 7001"));
    assert!(last.contains(&"STOPSIGNAL SIGTERM"));
    assert!(last.iter().any(|l| l.starts_with("ENTRYPOINT")));
    // Files the Dockerfile copies exist.
    for l in &lines {
        if let Some(rest) = l.strip_prefix("COPY ") {
            let src = rest.split_whitespace().rev().nth(1).unwrap();
            if !rest.starts_with("--from") && src != "." {
                let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(src);
                assert!(p.exists(), "COPY source {src} missing");
            }
        }
    }
}

/// The image's entrypoint puts the key from QUEUE_SERVER_API_KEY_FILE into [control]
/// (the control port then refuses a request without it), and refuses a key that would
/// need escaping in TOML.
#[test]
fn docker_entrypoint_hands_the_api_key_file_to_the_server() {
    let sh = which("sh");
    let entrypoint = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/docker/entrypoint.sh");
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_queue-server"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let dir = std::env::temp_dir().join(format!("qs-entrypoint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (player, control) = (free_port(), free_port());
    // The image's config, on loopback ports.
    let image_config = deploy("docker/config.toml")
        .replace("0.0.0.0:7000", &format!("127.0.0.1:{player}"))
        .replace("0.0.0.0:7001", &format!("127.0.0.1:{control}"))
        .replace(
            "/var/lib/queue-server",
            &dir.join("data").display().to_string(),
        );
    std::fs::write(dir.join("config.toml"), image_config).unwrap();
    std::fs::write(dir.join("key"), "k3y-from_a.file\n").unwrap();

    let mut cmd = Command::new(&sh);
    cmd.arg(&entrypoint)
        .args(["--cores", "1"])
        .env("PATH", &path)
        .env("QUEUE_SERVER_CONFIG", dir.join("config.toml"))
        .env("QUEUE_SERVER_API_KEY_FILE", dir.join("key"));
    let server = ServerProcess::spawn(cmd, player, control, dir.clone());
    let pause = "/v1/queues/default/pause";
    assert_eq!(request(server.control, "POST", pause, None, "").status, 401);
    assert_eq!(
        request(server.control, "POST", pause, Some("k3y-from_a.file"), "").status,
        200
    );
    assert_eq!(
        request(server.control, "GET", "/healthz", None, "").status,
        200
    );

    let out = Command::new(&sh)
        .arg(&entrypoint)
        .env("PATH", &path)
        .env("QUEUE_SERVER_CONFIG", dir.join("config.toml"))
        .env("QUEUE_SERVER_API_KEY", "a\"b")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}

#[test]
fn systemd_unit_drains_within_its_stop_timeout_and_has_no_reload() {
    let text = deploy("systemd/queue-server.service");
    let get = |key: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .collect()
    };
    let one = |key: &str| get(key).pop().unwrap_or_else(|| panic!("no {key}="));
    let config = queue_server::config::Config::default();
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert_eq!(one("Restart"), "on-failure");
    let stop: u64 = one("TimeoutStopSec").parse().unwrap();
    assert!(
        stop > config.server.drain_timeout_secs * 2,
        "TimeoutStopSec {stop}"
    );
    let nofile: u64 = one("LimitNOFILE").parse().unwrap();
    assert!(
        nofile > config.server.max_connections,
        "LimitNOFILE {nofile}"
    );
    assert!(get("ExecReload").is_empty(), "the server has no reload");
    assert!(one("ExecStart").contains("--config"));
    // io_uring, pinning and the profiler's timer stay allowed.
    for filter in get("SystemCallFilter") {
        for needed in ["@aio", "@resources", "@timer", "@system-service"] {
            assert!(
                !filter.starts_with('~') || !filter.contains(needed),
                "{filter}"
            );
        }
    }
}

/// `name` on PATH, or a clear failure.
fn which(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("{name} not found on PATH (needed to run deploy/docker/entrypoint.sh)")
        })
}
