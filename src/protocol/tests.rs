//! Unit tests of the protocol layer: parsing, the depth check and every encoder.

use std::borrow::Cow;

use bytes::BytesMut;

use super::encode::put_u64;
use super::*;
use crate::frame::{check_frame, HEADER_BYTES};
use serde_json::{json, Value};

fn parse(body: &str) -> Result<Request<'_>, BadRequest> {
    parse_request(body.as_bytes())
}

fn bad_field(field: &'static str) -> Result<Request<'static>, BadRequest> {
    Err(BadRequest::BadField { field })
}

#[test]
fn valid_login() {
    let body =
        r#"{"cmd":"login","seq":1,"data":{"user_id":42,"queue":"world-1","ticket":"t.k.n"}}"#;
    let req = parse(body).unwrap();
    assert_eq!(req.cmd, Cmd::Login);
    assert_eq!(req.seq, 1);
    assert_eq!(req.ver, 1);
    assert_eq!(
        req.data,
        Some(r#"{"user_id":42,"queue":"world-1","ticket":"t.k.n"}"#)
    );
    let login = parse_login(&req).unwrap();
    assert_eq!(login.user_id, 42);
    assert_eq!(login.queue, "world-1");
    assert!(matches!(login.queue, Cow::Borrowed(_)));
    assert_eq!(login.ticket.as_deref(), Some("t.k.n"));
}

#[test]
fn login_defaults_and_errors() {
    let req = parse(r#"{"cmd":"login","data":{"user_id":18446744073709551615}}"#).unwrap();
    let login = parse_login(&req).unwrap();
    assert_eq!(login.user_id, u64::MAX);
    assert_eq!(login.queue, DEFAULT_QUEUE);
    assert_eq!(login.ticket, None);
    assert_eq!(login.place_ticket, None);
    let req = parse(r#"{"cmd":"login","data":{"user_id":1,"place_ticket":"AQ.mac"}}"#).unwrap();
    assert_eq!(
        parse_login(&req).unwrap().place_ticket.as_deref(),
        Some("AQ.mac")
    );

    let missing = Err(BadRequest::MissingField { field: "user_id" });
    assert_eq!(parse_login(&parse(r#"{"cmd":"login"}"#).unwrap()), missing);
    assert_eq!(
        parse_login(&parse(r#"{"cmd":"login","data":{"queue":"q"}}"#).unwrap()),
        missing
    );
    for (data, field) in [
        (r#"{"user_id":"42"}"#, "user_id"),
        (r#"{"user_id":-1}"#, "user_id"),
        (r#"{"user_id":1.5}"#, "user_id"),
        (r#"{"user_id":18446744073709551616}"#, "user_id"),
        (r#"{"user_id":null}"#, "user_id"),
        (r#"{"user_id":1,"queue":7}"#, "queue"),
        (r#"{"user_id":1,"ticket":{}}"#, "ticket"),
        (r#"{"user_id":1,"ticket":null}"#, "ticket"),
        (r#"{"user_id":1,"place_ticket":null}"#, "place_ticket"),
        (r#"{"user_id":1,"place_ticket":5}"#, "place_ticket"),
        (r#"{"user_id":1,"user_id":2}"#, "user_id"),
    ] {
        let body = format!(r#"{{"cmd":"login","data":{data}}}"#);
        let req = parse(&body).unwrap();
        assert_eq!(
            parse_login(&req),
            Err(BadRequest::BadField { field }),
            "{data}"
        );
    }
}

#[test]
fn escaped_strings_in_queue_and_ticket() {
    let body =
        r#"{"cmd":"login","data":{"user_id":7,"queue":"w\u00f6rld-\"1\"","ticket":"a\/b\\c\n"}}"#;
    let req = parse(body).unwrap();
    let login = parse_login(&req).unwrap();
    assert_eq!(login.queue, "wörld-\"1\"");
    assert_eq!(login.ticket.as_deref(), Some("a/b\\c\n"));
    // Escaped keys are matched by their unescaped name.
    let req = parse(r#"{"c\u006dd":"login","data":{"user_\u0069d":9}}"#).unwrap();
    assert_eq!(req.cmd, Cmd::Login);
    assert_eq!(parse_login(&req).unwrap().user_id, 9);
}

#[test]
fn valid_heartbeat() {
    let req = parse(r#"{"cmd":"heartbeat","seq":4294967295,"data":{"ts":1700000000123}}"#).unwrap();
    assert_eq!(req.cmd, Cmd::Heartbeat);
    assert_eq!(req.seq, u32::MAX);
    assert_eq!(parse_heartbeat(&req), Ok(Some(1_700_000_000_123)));

    let req = parse(r#" { "cmd" : "heartbeat" } "#).unwrap();
    assert_eq!((req.seq, req.ver, req.data), (0, 1, None));
    assert_eq!(parse_heartbeat(&req), Ok(None));

    let req = parse(r#"{"cmd":"heartbeat","data":{}}"#).unwrap();
    assert_eq!(parse_heartbeat(&req), Ok(None));

    for data in [
        r#"{"ts":-5}"#,
        r#"{"ts":"5"}"#,
        r#"{"ts":null}"#,
        r#"{"ts":1e3}"#,
    ] {
        let body = format!(r#"{{"cmd":"heartbeat","data":{data}}}"#);
        assert_eq!(
            parse_heartbeat(&parse(&body).unwrap()),
            Err(BadRequest::BadField { field: "ts" }),
            "{data}"
        );
    }
}

#[test]
fn valid_position_and_leave() {
    let req = parse(r#"{"cmd":"position","seq":3}"#).unwrap();
    assert_eq!((req.cmd, req.seq), (Cmd::Position, 3));
    let req = parse(r#"{"seq":9,"cmd":"leave","data":{}}"#).unwrap();
    assert_eq!((req.cmd, req.seq, req.data), (Cmd::Leave, 9, Some("{}")));
}

#[test]
fn unknown_cmd_and_version_are_not_parse_errors() {
    let req = parse(r#"{"cmd":"dance","seq":5}"#).unwrap();
    assert_eq!(req.cmd, Cmd::Unknown("dance"));
    assert_eq!(req.cmd.as_str(), "dance");
    let req = parse(r#"{"cmd":"d\u0061nce"}"#).unwrap();
    assert_eq!(req.cmd, Cmd::Unknown(ESCAPED_CMD_FALLBACK));
    let req = parse(r#"{"cmd":"heartbe\u0061t"}"#).unwrap();
    assert_eq!(req.cmd, Cmd::Heartbeat);
    let req = parse(r#"{"cmd":"position","ver":2}"#).unwrap();
    assert_eq!(req.ver, 2);
}

#[test]
fn unknown_fields_ignored() {
    let body = r#"{"x":[1,{"y":"}]\"["}],"cmd":"position","z":null,"data":{"q":[true,false],"r":{}},"w":-1.5e3}"#;
    let req = parse(body).unwrap();
    assert_eq!(req.cmd, Cmd::Position);
    assert_eq!(req.data, Some(r#"{"q":[true,false],"r":{}}"#));
}

#[test]
fn missing_or_ill_typed_cmd() {
    assert_eq!(parse(r#"{"seq":1}"#), Err(BadRequest::MissingCmd));
    assert_eq!(parse("{}"), Err(BadRequest::MissingCmd));
    assert_eq!(parse(r#"{"cmd":1}"#), bad_field("cmd"));
    assert_eq!(parse(r#"{"cmd":null}"#), bad_field("cmd"));
    assert_eq!(parse(r#"{"cmd":["login"]}"#), bad_field("cmd"));
    assert_eq!(parse(r#"{"cmd":"login","cmd":"leave"}"#), bad_field("cmd"));
}

#[test]
fn seq_and_ver_types() {
    for seq in [
        "-1",
        "1.5",
        "1.0",
        "4294967296",
        "99999999999999999999",
        "\"1\"",
        "null",
        "true",
        "{}",
    ] {
        let body = format!(r#"{{"cmd":"position","seq":{seq}}}"#);
        assert_eq!(parse(&body), bad_field("seq"), "seq {seq}");
    }
    for ver in ["-1", "\"1\"", "1.5", "null"] {
        let body = format!(r#"{{"cmd":"position","ver":{ver}}}"#);
        assert_eq!(parse(&body), bad_field("ver"), "ver {ver}");
    }
    assert_eq!(parse(r#"{"cmd":"position","seq":0}"#).unwrap().seq, 0);
}

#[test]
fn data_must_be_an_object() {
    for data in ["[]", "1", "\"x\"", "\"\\u0041\"", "null", "true"] {
        let body = format!(r#"{{"cmd":"login","data":{data}}}"#);
        assert_eq!(parse(&body), bad_field("data"), "data {data}");
    }
}

#[test]
fn not_json_not_object() {
    assert_eq!(parse(""), Err(BadRequest::NotJson));
    assert_eq!(parse("   "), Err(BadRequest::NotJson));
    assert_eq!(parse("hello"), Err(BadRequest::NotJson));
    assert_eq!(parse(r#"{"cmd":"login""#), Err(BadRequest::NotJson));
    assert_eq!(parse(r#"{"cmd":"login",}"#), Err(BadRequest::NotJson));
    assert_eq!(parse(r#"{cmd:"login"}"#), Err(BadRequest::NotJson));
    assert_eq!(
        parse(r#"{"cmd":"login","seq":1x}"#),
        Err(BadRequest::NotJson)
    );
    assert_eq!(
        parse(r#"{"cmd":"x","data":{"a":}}"#),
        Err(BadRequest::NotJson)
    );
    assert_eq!(parse(r#"["cmd","login"]"#), Err(BadRequest::NotObject));
    assert_eq!(parse(r#"[{"cmd":"login"}]"#), Err(BadRequest::NotObject));
    assert_eq!(parse(r#""login""#), Err(BadRequest::NotObject));
    assert_eq!(parse("42"), Err(BadRequest::NotObject));
    assert_eq!(parse("null"), Err(BadRequest::NotObject));
}

#[test]
fn invalid_utf8() {
    assert_eq!(
        parse_request(b"{\"cmd\":\"\xff\"}"),
        Err(BadRequest::NotUtf8)
    );
    assert_eq!(parse_request(b"\xc3"), Err(BadRequest::NotUtf8));
}

#[test]
fn trailing_garbage() {
    assert_eq!(parse(r#"{"cmd":"position"}x"#), Err(BadRequest::NotJson));
    assert_eq!(
        parse(r#"{"cmd":"position"}{"cmd":"position"}"#),
        Err(BadRequest::NotJson)
    );
    assert_eq!(parse(r#"{"cmd":"position"}}"#), Err(BadRequest::NotJson));
    assert!(parse("{\"cmd\":\"position\"} \r\n\t").is_ok());
    let req = parse(r#"{"cmd":"heartbeat","data":{"ts":1}}"#).unwrap();
    // The data parsers also refuse trailing bytes (they only see `data`'s own text).
    assert_eq!(parse_heartbeat(&req), Ok(Some(1)));
}

/// Runs `f` on a thread with a stack no bigger than a default spawned thread's, so a
/// recursion bug shows up as a crash here rather than passing on a big main stack.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn deep_nesting_rejected_without_crashing() {
    let too_deep = BadRequest::TooDeep {
        max_depth: MAX_JSON_DEPTH,
    };
    on_small_stack(move || {
        let n = 100_000;
        let deep = format!("{}{}", "[".repeat(n), "]".repeat(n));
        let bodies = [
            format!(r#"{{"cmd":"position","junk":{deep}}}"#),
            format!(r#"{{"cmd":"position","data":{{"a":{deep}}}}}"#),
            format!(r#"{{"cmd":"position","junk":{}"#, "[".repeat(n)),
            format!(r#"{{"cmd":"position","junk":{}"#, "{\"a\":".repeat(n)),
            "{".repeat(n),
            deep.clone(),
        ];
        for body in &bodies {
            let got = parse(body);
            assert!(
                got == Err(too_deep) || got == Err(BadRequest::NotObject),
                "{got:?}"
            );
        }
        assert_eq!(parse(&bodies[0]), Err(too_deep));
        assert_eq!(parse(&bodies[1]), Err(too_deep));
    });
}

#[test]
fn nesting_up_to_the_limit_parses_on_a_small_stack() {
    on_small_stack(|| {
        // Envelope is level 1; `junk` adds MAX_JSON_DEPTH - 1 more.
        let inner = MAX_JSON_DEPTH as usize - 1;
        let ok = format!(
            r#"{{"cmd":"position","junk":{}{}}}"#,
            "[".repeat(inner),
            "]".repeat(inner)
        );
        assert_eq!(parse(&ok).unwrap().cmd, Cmd::Position);
        let data = format!(
            r#"{{"cmd":"heartbeat","data":{{"ts":1,"x":{}0{}}}}}"#,
            "{\"a\":".repeat(inner - 1),
            "}".repeat(inner - 1)
        );
        assert_eq!(parse_heartbeat(&parse(&data).unwrap()), Ok(Some(1)));

        let one_more = format!(
            r#"{{"cmd":"position","junk":{}{}}}"#,
            "[".repeat(inner + 1),
            "]".repeat(inner + 1)
        );
        assert_eq!(
            parse(&one_more),
            Err(BadRequest::TooDeep {
                max_depth: MAX_JSON_DEPTH
            })
        );
        // Brackets inside strings do not count.
        let in_string = format!(
            r#"{{"cmd":"position","s":"{}\"{}"}}"#,
            "[".repeat(100),
            "{".repeat(100)
        );
        assert_eq!(parse(&in_string).unwrap().cmd, Cmd::Position);
    });
}

#[test]
fn code_table() {
    let all = [
        (Code::Ok, 0, "OK", false),
        (Code::BadFrame, 1, "BAD_FRAME", true),
        (Code::Unsupported, 2, "UNSUPPORTED", false),
        (Code::NotLoggedIn, 3, "NOT_LOGGED_IN", true),
        (Code::AuthFailed, 4, "AUTH_FAILED", true),
        (Code::QueueFull, 5, "QUEUE_FULL", true),
        (Code::UnknownQueue, 6, "UNKNOWN_QUEUE", true),
        (Code::AlreadyLoggedIn, 7, "ALREADY_LOGGED_IN", false),
        (Code::RateLimited, 8, "RATE_LIMITED", true),
        (Code::ShuttingDown, 9, "SHUTTING_DOWN", true),
        (Code::Internal, 10, "INTERNAL", false),
    ];
    for (code, value, name, closes) in all {
        assert_eq!(code as u8, value);
        assert_eq!(code.name(), name);
        assert_eq!(code.closes(), closes, "{name}");
    }
}

#[test]
fn bad_request_display() {
    assert_eq!(BadRequest::NotUtf8.to_string(), "body is not valid UTF-8");
    assert_eq!(
        BadRequest::BadField { field: "seq" }.to_string(),
        "field `seq` has the wrong type or value"
    );
    assert_eq!(
        BadRequest::TooDeep { max_depth: 16 }.to_string(),
        "JSON nested deeper than 16 levels"
    );
}

// --- encoders -------------------------------------------------------------------

/// Checks `out` holds exactly one frame and decodes its body.
fn decode(out: &BytesMut) -> Value {
    let len = check_frame(out, u32::MAX).unwrap().expect("whole frame");
    assert_eq!(HEADER_BYTES + len, out.len(), "exactly one frame");
    serde_json::from_slice(&out[HEADER_BYTES..]).unwrap()
}

fn encoded(f: impl FnOnce(&mut BytesMut)) -> Value {
    let mut out = BytesMut::new();
    f(&mut out);
    decode(&out)
}

/// Checks the envelope's keys come in protocol order.
fn assert_envelope_order(out: &BytesMut) {
    let body = std::str::from_utf8(&out[HEADER_BYTES..]).unwrap();
    let at = |k: &str| body.find(&format!("\"{k}\":")).unwrap();
    assert!(at("cmd") < at("seq") && at("seq") < at("code"));
    assert!(at("code") < at("msg") && at("msg") < at("data"));
    assert!(body.starts_with("{\"cmd\":"));
}

#[test]
fn error_round_trip() {
    let mut out = BytesMut::new();
    encode_error(&mut out, "da\"nce", 77, Code::Unsupported, "unknown cmd");
    assert_envelope_order(&out);
    assert_eq!(
        decode(&out),
        json!({"cmd":"da\"nce","seq":77,"code":2,"msg":"unknown cmd","data":{}})
    );
    let v = encoded(|o| encode_error_retry(o, "login", 1, Code::ShuttingDown, "draining", 30));
    assert_eq!(
        v,
        json!({"cmd":"login","seq":1,"code":9,"msg":"draining","data":{"retry_after_secs":30}})
    );
}

#[test]
fn login_ok_round_trip() {
    let answer = LoginAnswer {
        admitted: false,
        position: 1234,
        queue_len: 5000,
        eta_secs: Some(60),
        resumed: true,
        place_ticket: None,
    };
    let v = encoded(|o| encode_login_ok(o, 1, &answer));
    assert_eq!(
        v,
        json!({"cmd":"login","seq":1,"code":0,"msg":"ok","data":{
            "state":"waiting","position":1234,"queue_len":5000,"eta_secs":60,"resumed":true}})
    );
    let admitted = LoginAnswer {
        admitted: true,
        position: 0,
        queue_len: u64::MAX,
        eta_secs: None,
        resumed: false,
        place_ticket: None,
    };
    let v = encoded(|o| encode_login_ok(o, u32::MAX, &admitted));
    assert_eq!(
        v,
        json!({"cmd":"login","seq":u32::MAX,"code":0,"msg":"ok","data":{
            "state":"admitted","position":0,"queue_len":u64::MAX,"eta_secs":null,"resumed":false}})
    );
    // Cluster mode: the place ticket, last.
    let with_ticket = LoginAnswer {
        place_ticket: Some("AQ.xy"),
        ..answer
    };
    let v = encoded(|o| encode_login_ok(o, 2, &with_ticket));
    assert_eq!(v["data"]["place_ticket"], "AQ.xy");
    assert_eq!(v["data"]["resumed"], true);
}

#[test]
fn heartbeat_position_leave_round_trip() {
    let v = encoded(|o| encode_heartbeat_ok(o, 8, Some(1_700_000_000_123), 1_700_000_000_456));
    assert_eq!(
        v,
        json!({"cmd":"heartbeat","seq":8,"code":0,"msg":"ok","data":{
            "ts":1_700_000_000_123u64,"server_ms":1_700_000_000_456u64}})
    );
    let v = encoded(|o| encode_heartbeat_ok(o, 0, None, 5));
    assert_eq!(v["data"], json!({"ts":null,"server_ms":5}));

    let v = encoded(|o| encode_position(o, 3, 10, 20, Some(7)));
    assert_eq!(
        v,
        json!({"cmd":"position","seq":3,"code":0,"msg":"ok","data":{
            "position":10,"queue_len":20,"eta_secs":7}})
    );
    let v = encoded(|o| encode_position(o, 0, 1, 1, None));
    assert_eq!(v["seq"], 0);
    assert_eq!(v["data"]["eta_secs"], Value::Null);

    let v = encoded(|o| encode_leave_ok(o, 12));
    assert_eq!(
        v,
        json!({"cmd":"leave","seq":12,"code":0,"msg":"ok","data":{}})
    );
}

#[test]
fn pushes_round_trip() {
    let v = encoded(|o| encode_admitted(o, "eyJ.a.b", 1_700_000_300, Some("10.0.0.1:9000")));
    assert_eq!(
        v,
        json!({"cmd":"admitted","seq":0,"code":0,"msg":"ok","data":{
            "token":"eyJ.a.b","expires_at":1_700_000_300u64,"login_addr":"10.0.0.1:9000"}})
    );
    let v = encoded(|o| encode_admitted(o, "t", 1, None));
    assert_eq!(v["data"]["login_addr"], Value::Null);

    let v = encoded(|o| encode_kicked(o, "shutdown", Some(15)));
    assert_eq!(
        v,
        json!({"cmd":"kicked","seq":0,"code":0,"msg":"ok","data":{
            "reason":"shutdown","retry_after_secs":15}})
    );
    let v = encoded(|o| encode_kicked(o, "idle_timeout", None));
    assert_eq!(v["data"], json!({"reason":"idle_timeout"}));
}

#[test]
fn strings_are_escaped() {
    let nasty: String =
        (0u8..0x20).map(char::from).collect::<String>() + "\"\\/\u{7f}é\u{2028}😀 end";
    let v = encoded(|o| encode_error(o, &nasty, 1, Code::Internal, &nasty));
    assert_eq!(v["cmd"], nasty.as_str());
    assert_eq!(v["msg"], nasty.as_str());
    let v = encoded(|o| encode_kicked(o, "", None));
    assert_eq!(v["data"]["reason"], "");
}

#[test]
fn integers_format_exactly() {
    for n in [
        0,
        1,
        9,
        10,
        99,
        100,
        12345,
        u64::from(u32::MAX),
        u64::MAX - 1,
        u64::MAX,
    ] {
        let mut out = BytesMut::new();
        put_u64(&mut out, n);
        assert_eq!(&out[..], n.to_string().as_bytes());
    }
}

#[test]
fn frames_append_after_existing_bytes() {
    let mut out = BytesMut::with_capacity(512);
    encode_position(&mut out, 1, 2, 3, None);
    let first = out.len();
    encode_heartbeat_ok(&mut out, 4, Some(5), 6);
    let len = check_frame(&out, 4096).unwrap().unwrap();
    assert_eq!(HEADER_BYTES + len, first);
    let second = decode(&BytesMut::from(&out[first..]));
    assert_eq!(second["cmd"], "heartbeat");
}

#[test]
fn encoded_request_shapes_parse_back() {
    // What we write is what we accept (cmd echo path).
    let mut out = BytesMut::new();
    encode_error(&mut out, "login", 5, Code::BadFrame, "x");
    let req = parse_request(&out[HEADER_BYTES..]).unwrap();
    assert_eq!((req.cmd, req.seq, req.data), (Cmd::Login, 5, Some("{}")));
}
