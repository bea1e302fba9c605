//! `log.format = "json"`: every stdout line is one JSON object, and every control action
//! (admit, rate, capacity, pause, resume, verify; refused ones too) leaves an info line
//! with target `audit`, the peer address, the path, what the body asked for and the
//! status; GET requests (stats, metrics, health) leave none, and a token is never logged.

mod server_process;

use serde_json::Value;
use server_process::{request, ServerProcess};

const KEY: &str = "audit-test-key";

#[test]
fn json_logs_carry_an_audit_line_per_control_action_with_the_peer() {
    let server = ServerProcess::start(
        "audit",
        1,
        &format!("api_key = \"{KEY}\""),
        "[log]\nformat = \"json\"\n",
    );
    let c = server.control;
    let token = "eyJhbGciOiJFZERTQSJ9.e30.c2lnbmF0dXJl";
    let actions = [
        ("POST", "/v1/queues/default/pause", "", 200, ""),
        ("POST", "/v1/queues/default/resume", "", 200, ""),
        (
            "PUT",
            "/v1/queues/default/rate",
            r#"{"per_second": 2.5}"#,
            200,
            "per_second=2.5",
        ),
        (
            "PUT",
            "/v1/queues/default/capacity",
            r#"{"online": 3, "capacity": 10}"#,
            200,
            "online=3 capacity=10",
        ),
        (
            "POST",
            "/v1/queues/default/admit",
            r#"{"count": 4}"#,
            200,
            "count=4",
        ),
        (
            "POST",
            "/v1/queues/nope/admit",
            r#"{"count": 1}"#,
            404,
            "count=1",
        ),
    ];
    // A GET leaves no audit line; the line of the first action must be the first seen.
    assert_eq!(request(c, "GET", "/v1/stats", Some(KEY), "").status, 200);
    for (method, path, body, status, asked) in actions {
        let a = request(c, method, path, Some(KEY), body);
        assert_eq!(a.status, status, "{method} {path}");
        // Every line on the way is one JSON object.
        let line = server.wait_line("audit", |l| {
            let _: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            l.contains("control action")
        });
        let v: Value = serde_json::from_str(&line).expect("a json log line");
        assert_eq!(v["target"], "audit", "{line}");
        assert_eq!(v["level"], "INFO", "{line}");
        let f = &v["fields"];
        assert_eq!(f["peer"], a.local.to_string(), "{line}");
        assert_eq!(f["method"], method, "{line}");
        assert_eq!(f["uri"], path, "{line}");
        assert_eq!(f["status"], status, "{line}");
        assert_eq!(f["asked"], asked, "{line}");
    }
    // Without the key: refused, and still on the trail.
    let a = request(c, "POST", "/v1/queues/default/pause", Some("wrong"), "");
    assert_eq!(a.status, 401);
    let line = server.wait_line("audit of a 401", |l| l.contains("control action"));
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["fields"]["status"], 401, "{line}");
    assert_eq!(v["fields"]["peer"], a.local.to_string(), "{line}");
    // A verify is audited without its token.
    let a = request(
        c,
        "POST",
        "/v1/tokens/verify",
        Some(KEY),
        &format!(r#"{{"token": "{token}"}}"#),
    );
    assert_eq!(a.status, 200);
    let line = server.wait_line("audit of a verify", |l| l.contains("control action"));
    assert!(!line.contains(token), "token logged: {line}");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["fields"]["uri"], "/v1/tokens/verify", "{line}");
    assert!(
        v["fields"]["asked"]
            .as_str()
            .unwrap()
            .contains("not logged"),
        "{line}"
    );
}
