//! `queuectl` / `queue-client ctl`: the control port's calls (docs/protocol.md 3) as
//! commands, a human table by default and the server's JSON with `--json`.
//!
//! HTTP is hyper's own client (`hyper-util`'s legacy client): hyper is already in the
//! workspace for the server's control port, the control port speaks plain HTTP/1.1
//! only, so a bigger client (reqwest, with its TLS stack) would add crates for nothing.
//!
//! Invariants: every call has a deadline ([`CALL_TIMEOUT`]); a non-2xx answer prints
//! the server's own `{"error": ...}` text and exits 1; an unreachable port exits 5.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::{exit, CtlArgs, CtlCommand};

/// Most time one control call may take, connect to last body byte (the server answers
/// within 10 s or sends 408).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a call failed.
#[derive(Debug)]
pub enum CallError {
    /// The URL cannot be used.
    Url(String),
    /// No answer: connection refused, broken, or past [`CALL_TIMEOUT`].
    Unreachable(String),
    /// The server answered with this status and error text.
    Status(u16, String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Url(e) => write!(f, "bad --url: {e}"),
            CallError::Unreachable(e) => write!(f, "control port unreachable: {e}"),
            CallError::Status(s, e) => write!(f, "HTTP {s}: {e}"),
        }
    }
}

/// One call: `method` `url``path` with an optional JSON body; the answer's JSON (or
/// its text as a JSON string) on a 2xx status.
pub async fn call(
    url: &str,
    api_key: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, CallError> {
    let uri: hyper::Uri = format!("{}{}", url.trim_end_matches('/'), path)
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| CallError::Url(e.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(CallError::Url(
            "only http:// URLs (the control port speaks plain HTTP/1.1)".into(),
        ));
    }
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(key) = api_key.filter(|k| !k.is_empty()) {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let bytes = match &body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Bytes::from(b.to_string())
        }
        None => Bytes::new(),
    };
    let req = req
        .body(Full::new(bytes))
        .map_err(|e| CallError::Url(e.to_string()))?;
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let answer = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| CallError::Unreachable(error_chain(&e)))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?
            .to_bytes();
        Ok::<_, CallError>((status, body))
    };
    let (status, body) = tokio::time::timeout(CALL_TIMEOUT, answer)
        .await
        .map_err(|_| CallError::Unreachable(format!("no answer within {CALL_TIMEOUT:?}")))??;
    let text = String::from_utf8_lossy(&body).into_owned();
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
    if !(200..300).contains(&status) {
        let msg = value
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| text.trim().to_string(), str::to_string);
        return Err(CallError::Status(status, msg));
    }
    Ok(value)
}

/// An error and its sources, for "connection refused" to show through hyper's wrapper.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// A queue path segment, percent-encoded (the server percent-decodes it).
fn queue_path(queue: &str, tail: &str) -> String {
    let mut enc = String::new();
    for b in queue.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    format!("/v1/queues/{enc}/{tail}")
}

/// Runs one control command; returns the exit code.
pub async fn run(args: CtlArgs) -> u8 {
    let (method, path, body) = match &args.command {
        CtlCommand::Stats => (Method::GET, "/v1/stats".to_string(), None),
        CtlCommand::Admit { count, queue } => (
            Method::POST,
            queue_path(queue, "admit"),
            Some(json!({"count": count})),
        ),
        CtlCommand::Rate { per_second, queue } => (
            Method::PUT,
            queue_path(queue, "rate"),
            Some(json!({"per_second": per_second})),
        ),
        CtlCommand::Capacity {
            online,
            capacity,
            queue,
        } => (
            Method::PUT,
            queue_path(queue, "capacity"),
            Some(json!({"online": online, "capacity": capacity})),
        ),
        CtlCommand::Pause { queue } => (Method::POST, queue_path(queue, "pause"), None),
        CtlCommand::Resume { queue } => (Method::POST, queue_path(queue, "resume"), None),
        CtlCommand::Verify { token } => (
            Method::POST,
            "/v1/tokens/verify".to_string(),
            Some(json!({"token": token})),
        ),
        CtlCommand::Keys => (Method::GET, "/v1/keys".to_string(), None),
    };
    let value = match call(&args.url, args.api_key.as_deref(), method, &path, body).await {
        Ok(v) => v,
        Err(e) => {
            if args.json {
                println!("{}", json!({"error": e.to_string()}));
            } else {
                eprintln!("queuectl: {e}");
            }
            return match e {
                CallError::Status(..) => exit::FAILURE,
                CallError::Url(_) => exit::FAILURE,
                CallError::Unreachable(_) => exit::GAVE_UP,
            };
        }
    };
    let invalid_token = matches!(args.command, CtlCommand::Verify { .. })
        && value.get("valid") != Some(&Value::Bool(true));
    if args.json {
        println!("{value}");
    } else {
        print!("{}", human(&args.command, &value));
    }
    if invalid_token {
        exit::REFUSED
    } else {
        exit::OK
    }
}

/// Columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// A JSON value as a cell.
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// The human form of an answer.
fn human(command: &CtlCommand, v: &Value) -> String {
    match command {
        CtlCommand::Stats => stats_human(v),
        CtlCommand::Admit { queue, .. } => admit_human(queue, v),
        CtlCommand::Rate { per_second, queue } => {
            format!("queue {queue}: automatic admission at {per_second} players/s\n")
        }
        CtlCommand::Capacity {
            online,
            capacity,
            queue,
        } => format!("queue {queue}: {online} online of capacity {capacity}\n"),
        CtlCommand::Pause { queue } => format!("queue {queue}: automatic admission paused\n"),
        CtlCommand::Resume { queue } => format!("queue {queue}: automatic admission resumed\n"),
        CtlCommand::Verify { .. } => {
            if v.get("valid") == Some(&Value::Bool(true)) {
                format!(
                    "valid: user {} queue {}\n",
                    cell(v.get("user_id")),
                    cell(v.get("queue"))
                )
            } else {
                format!("not valid: {}\n", cell(v.get("reason")))
            }
        }
        CtlCommand::Keys => keys_human(v),
    }
}

/// `stats`: one row per queue, then the connections and cores.
fn stats_human(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .get("queues")
        .and_then(Value::as_object)
        .map(|qs| {
            qs.iter()
                .map(|(name, q)| {
                    vec![
                        name.clone(),
                        cell(q.get("waiting")),
                        cell(q.get("admitted_total")),
                        cell(q.get("left_total")),
                        q.get("admit_rate_per_s")
                            .and_then(Value::as_f64)
                            .map_or("-".into(), |r| format!("{r:.2}")),
                        cell(q.get("paused")),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = table(
        &["QUEUE", "WAITING", "ADMITTED", "LEFT", "RATE/S", "PAUSED"],
        &rows,
    );
    out.push_str(&format!(
        "connections: {}  cores: {}\n",
        cell(v.get("connections")),
        cell(v.get("cores"))
    ));
    out
}

/// `admit`: how many, then one row per admitted player.
fn admit_human(queue: &str, v: &Value) -> String {
    let players = v
        .get("admitted")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = players
        .iter()
        .map(|p| {
            vec![
                cell(p.get("user_id")),
                cell(p.get("expires_at")),
                cell(p.get("token")),
            ]
        })
        .collect();
    let mut out = format!("admitted {} from queue {queue}\n", players.len());
    if !rows.is_empty() {
        out.push_str(&table(&["USER", "EXPIRES_AT", "TOKEN"], &rows));
    }
    out
}

/// `keys`: one row per public key.
fn keys_human(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .get("keys")
        .and_then(Value::as_array)
        .map(|ks| {
            ks.iter()
                .map(|k| {
                    vec![
                        cell(k.get("kid")),
                        cell(k.get("alg")),
                        cell(k.get("kty")),
                        cell(k.get("crv")),
                        cell(k.get("x")),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["KID", "ALG", "KTY", "CRV", "X"], &rows)
}
