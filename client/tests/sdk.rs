//! The SDK against a real queue-server over real sockets: login, positions moving as
//! players ahead leave and get admitted, admission, heartbeats past a short idle
//! timeout, a dropped connection and a dead (frozen) path resumed, a durable server
//! restarted on the same ports, SHUTTING_DOWN waited out, duplicate login, refusals.

mod common;

use std::time::Duration;

use common::*;
use queue_client::{Client, Error, Event, KickReason};

/// Test-speed client settings: heartbeats and timeouts in hundreds of milliseconds.
fn fast(addr: &str, user: u64) -> queue_client::ClientBuilder {
    Client::builder(addr)
        .user(user)
        .heartbeat_interval(Duration::from_millis(200))
        .answer_timeout(Duration::from_millis(2000))
        .backoff(Duration::from_millis(50), Duration::from_millis(400))
        .max_reconnect_attempts(40)
}

/// Waits for `Admitted` on `client`: (token, expires_at, login_addr).
async fn admitted_of(client: &mut Client, what: &str) -> (String, u64, Option<String>) {
    match wait_for(client, what, |e| matches!(e, Event::Admitted { .. })).await {
        Event::Admitted {
            token,
            expires_at,
            login_addr,
        } => (token, expires_at, login_addr),
        other => unreachable!("wait_for returned {other:?}"),
    }
}

/// Checks `token` with `POST /v1/tokens/verify`: it must be valid; its `user_id`.
async fn verified_user(server: &std::sync::Arc<Server>, token: String) -> serde_json::Value {
    let s = server.clone();
    let (status, body) = blocking(move || {
        s.http(
            "POST",
            "/v1/tokens/verify",
            Some(&format!("{{\"token\":\"{token}\"}}")),
        )
    })
    .await;
    assert_eq!(
        (status, body["valid"].clone()),
        (200, serde_json::json!(true)),
        "{body}"
    );
    body["user_id"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_positions_move_and_admission_ends_the_stream() {
    let server = Server::start(BASE);
    let addr = server.addr();
    let mut a = fast(&addr, 1).connect().await.expect("login 1");
    let mut b = fast(&addr, 2).connect().await.expect("login 2");
    let mut c = fast(&addr, 3).connect().await.expect("login 3");
    assert_eq!(
        next(&mut c).await,
        Event::Position {
            position: 3,
            queue_len: 3,
            eta_secs: None
        }
    );
    assert_eq!(a.user_id(), 1);
    assert_eq!(c.queue(), "default");

    // The player ahead leaves: 3 -> 2.
    a.leave().await.expect("leave");
    assert!(
        matches!(next(&mut a).await, Event::Position { position: 1, .. }),
        "the login's position is still there to read"
    );
    assert!(
        next_item(&mut a).await.is_none(),
        "the stream ends after leave"
    );
    wait_position(&mut c, 2).await;
    // The next one is admitted over HTTP: b gets the token, c moves to 1.
    let server = std::sync::Arc::new(server);
    let s = server.clone();
    let admitted = blocking(move || s.admit(1)).await;
    assert_eq!(admitted[0]["user_id"], 2);
    let (token, _, login_addr) = admitted_of(&mut b, "b admitted").await;
    assert_eq!(token, admitted[0]["token"].as_str().unwrap());
    assert_eq!(login_addr, None);
    assert!(
        next_item(&mut b).await.is_none(),
        "the stream ends after Admitted"
    );
    // Back again with the token unused: the same admission, at once.
    let mut again = fast(&addr, 2)
        .connect()
        .await
        .expect("login after admission");
    assert_eq!(
        next(&mut again).await,
        Event::Admitted {
            token: token.clone(),
            expires_at: admitted[0]["expires_at"].as_u64().unwrap(),
            login_addr: None
        }
    );
    assert!(next_item(&mut again).await.is_none());
    wait_position(&mut c, 1).await;

    let s = server.clone();
    blocking(move || s.admit(1)).await;
    let (token, expires_at, _) = admitted_of(&mut c, "c admitted").await;
    assert!(expires_at > 0);
    assert_eq!(verified_user(&server, token).await, 3);
    assert!(next_item(&mut c).await.is_none());
    assert!(matches!(c.leave().await, Err(Error::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_an_idle_client_past_the_idle_timeout() {
    let server = Server::start("[server]\nidle_timeout_secs = 1\npush_interval_ms = 20\n");
    let addr = server.addr();
    let mut client = fast(&addr, 1).connect().await.expect("login");
    wait_position(&mut client, 1).await;
    // A second player that sends nothing after login: the server kicks it idle; by then
    // the SDK client, logged in earlier, has been quiet-but-heartbeating for longer.
    let mut idle = fast(&addr, 2)
        .heartbeat_interval(Duration::from_secs(3600))
        .connect()
        .await
        .expect("login 2");
    wait_for(&mut idle, "idle player kicked", |e| {
        matches!(
            e,
            Event::Kicked {
                reason: KickReason::IdleTimeout,
                ..
            }
        )
    })
    .await;
    // Everything the heartbeating client got so far: no kick, no reconnect.
    while let Ok(Some(item)) =
        tokio::time::timeout(Duration::from_millis(1), client.next_event()).await
    {
        let event = item.expect("no error");
        assert!(
            matches!(event, Event::Position { .. }),
            "heartbeating client got {event:?}"
        );
    }
    // And it is still logged in on its first connection: position 1, nobody kicked it.
    let (_, stats) = blocking(move || {
        let r = server.http("GET", "/v1/stats", None);
        drop(server);
        r
    })
    .await;
    assert_eq!(stats["queues"]["default"]["waiting"], 2, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_reconnects_and_resumes_the_place() {
    let server = Server::start(BASE);
    let proxy = Proxy::start(server.player).await;
    let _ahead = fast(&server.addr(), 1).connect().await.expect("login 1");
    let mut client = fast(&proxy.addr.to_string(), 2)
        .connect()
        .await
        .expect("login 2");
    wait_position(&mut client, 2).await;

    proxy.cut();
    let e = wait_for(&mut client, "reconnecting", |e| {
        matches!(e, Event::Reconnecting { .. })
    })
    .await;
    let Event::Reconnecting { attempt, cause, .. } = e else {
        unreachable!()
    };
    assert_eq!(attempt, 1);
    assert!(matches!(cause, Error::ConnectionLost { .. }), "{cause:?}");
    assert_eq!(
        wait_for(&mut client, "resumed", |e| matches!(
            e,
            Event::Resumed { .. }
        ))
        .await,
        Event::Resumed { position: 2 }
    );
    wait_position(&mut client, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_is_detected_and_left() {
    let server = Server::start(BASE);
    let proxy = Proxy::start(server.player).await;
    let mut client = fast(&proxy.addr.to_string(), 2)
        .answer_timeout(Duration::from_millis(300))
        .connect()
        .await
        .expect("login");
    wait_position(&mut client, 1).await;

    // The path swallows everything: heartbeats go unanswered.
    proxy.freeze(true);
    let e = wait_for(&mut client, "reconnecting", |e| {
        matches!(e, Event::Reconnecting { .. })
    })
    .await;
    let Event::Reconnecting { cause, .. } = e else {
        unreachable!()
    };
    assert!(
        matches!(
            cause,
            Error::AnswerTimeout {
                cmd: "heartbeat",
                ..
            }
        ),
        "{cause:?}"
    );
    proxy.freeze(false);
    assert_eq!(
        wait_for(&mut client, "resumed", |e| matches!(
            e,
            Event::Resumed { .. }
        ))
        .await,
        Event::Resumed { position: 1 }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_server_restarted_on_the_same_ports_is_rejoined_in_place() {
    let (toml, dir) = durable_toml("restart");
    let server = Server::start(&toml);
    let addr = server.addr();
    let _ahead = fast(&addr, 1).connect().await.expect("login 1");
    let mut client = fast(&addr, 2).connect().await.expect("login 2");
    wait_position(&mut client, 2).await;

    let server = blocking(move || {
        let mut s = server;
        s.restart();
        s
    })
    .await;
    // The stop kicks with `shutdown` and a retry-after, which the client honours.
    assert_eq!(
        wait_for(&mut client, "kicked", |e| matches!(e, Event::Kicked { .. })).await,
        Event::Kicked {
            reason: KickReason::Shutdown,
            retry_after_secs: Some(1)
        }
    );
    let e = next(&mut client).await;
    let Event::Reconnecting {
        attempt: 1,
        delay_ms,
        ..
    } = e
    else {
        panic!("expected the first reconnect, got {e:?}")
    };
    assert!(
        delay_ms >= 1000,
        "retry_after_secs 1 honoured: {delay_ms} ms"
    );
    assert_eq!(
        wait_for(&mut client, "resumed", |e| matches!(
            e,
            Event::Resumed { .. }
        ))
        .await,
        Event::Resumed { position: 2 }
    );
    drop(client);
    blocking(move || drop(server)).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_is_waited_out() {
    let (toml, dir) = durable_toml("draining");
    let server = Server::start(&toml);
    let proxy = Proxy::start(server.player).await;
    let _ahead = fast(&server.addr(), 1).connect().await.expect("login 1");
    let mut client = fast(&proxy.addr.to_string(), 2)
        .connect()
        .await
        .expect("login 2");
    wait_position(&mut client, 2).await;

    // The server drains: a new login gets SHUTTING_DOWN with retry_after_secs 1.
    server.handle.as_ref().unwrap().begin_drain();
    proxy.cut();
    let e = wait_for(&mut client, "a reconnect after SHUTTING_DOWN", |e| {
        matches!(
            e,
            Event::Reconnecting {
                cause: Error::ShuttingDown { .. },
                ..
            }
        )
    })
    .await;
    let Event::Reconnecting {
        delay_ms, cause, ..
    } = e
    else {
        unreachable!()
    };
    assert_eq!(cause.code(), Some(9));
    assert_eq!(cause.retry_after_secs(), Some(1));
    assert!(
        delay_ms >= 1000,
        "retry_after_secs 1 honoured: {delay_ms} ms"
    );
    // The operator restarts it on the same ports; the client comes back in place.
    let server = blocking(move || {
        let mut s = server;
        s.restart();
        s
    })
    .await;
    assert_eq!(
        wait_for(&mut client, "resumed", |e| matches!(
            e,
            Event::Resumed { .. }
        ))
        .await,
        Event::Resumed { position: 2 }
    );
    drop(client);
    blocking(move || drop(server)).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_login_stops_the_older_client_for_good() {
    let server = Server::start(BASE);
    let addr = server.addr();
    let mut old = fast(&addr, 7).connect().await.expect("login");
    wait_position(&mut old, 1).await;
    let mut new = fast(&addr, 7).connect().await.expect("second login");
    assert_eq!(next(&mut new).await, Event::Resumed { position: 1 });

    assert_eq!(
        next(&mut old).await,
        Event::Kicked {
            reason: KickReason::DuplicateLogin,
            retry_after_secs: None
        }
    );
    match next_item(&mut old).await {
        Some(Err(Error::Kicked {
            reason: KickReason::DuplicateLogin,
        })) => {}
        other => panic!("expected the final kick, got {other:?}"),
    }
    assert!(
        next_item(&mut old).await.is_none(),
        "no reconnect after duplicate_login"
    );
    // The newer client still holds the place.
    let (_, stats) = blocking(move || server.http("GET", "/v1/stats", None)).await;
    assert_eq!(stats["queues"]["default"]["waiting"], 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_typed_errors() {
    let server = Server::start(
        "[auth]\nmode = \"jwt\"\nalg = \"HS256\"\nkey = \"a-ticket-secret-of-at-least-32-bytes!!\"\n",
    );
    let addr = server.addr();
    let e = fast(&addr, 1)
        .ticket("not-a-jwt")
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::AuthFailed { .. }), "{e:?}");
    assert_eq!(e.code(), Some(4));
    let e = fast(&addr, 1)
        .queue("nope")
        .ticket("x")
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::AuthFailed { .. } | Error::UnknownQueue { .. }),
        "{e:?}"
    );
    drop(server);

    let open = Server::start(BASE);
    let e = fast(&open.addr(), 1)
        .queue("nope")
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::UnknownQueue { .. }), "{e:?}");
    assert_eq!(e.code(), Some(6));
    assert!(!e.is_transient());

    // Over the per-address connection limit: RATE_LIMITED (8, a frame with seq 0) is
    // retried with backoff, then given up.
    let limited = Server::start(&format!("{BASE}max_connections_per_ip = 1\n"));
    let _holder = fast(&limited.addr(), 1).connect().await.expect("first");
    let e = fast(&limited.addr(), 2)
        .max_reconnect_attempts(2)
        .connect()
        .await
        .unwrap_err();
    match &e {
        Error::GaveUp { attempts: 2, last } => {
            assert!(matches!(**last, Error::RateLimited { .. }), "{last:?}")
        }
        other => panic!("expected GaveUp after RATE_LIMITED, got {other:?}"),
    }

    // Nothing listening: a connect error at once, no retries.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = fast(&closed.to_string(), 1).connect().await.unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    let e = Client::builder("127.0.0.1:1").connect().await.unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
}

#[test]
fn every_protocol_code_maps_to_its_own_variant() {
    for code in 1..=10u32 {
        let e = Error::from_code(code, "m", Some(3));
        assert_eq!(e.code(), Some(code), "{e:?}");
        assert!(e.to_string().contains(&format!("({code})")), "{e}");
    }
    assert_eq!(
        Error::from_code(9, "m", Some(3)).retry_after_secs(),
        Some(3)
    );
    assert_eq!(Error::from_code(42, "m", None).code(), Some(42));
}

/// A fake server: answers `login` (waiting, position 1), then sends an error frame
/// with seq 0 (about no request of the client's). RATE_LIMITED (8) is ridden out by
/// reconnecting; BAD_FRAME (1) ends the client with that error.
#[tokio::test(flavor = "current_thread")]
async fn an_error_frame_about_no_request_is_typed_by_its_code() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    fn frame(body: &str) -> Vec<u8> {
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(body.as_bytes());
        out
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        for code in [8, 1] {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            let login = r#"{"cmd":"login","seq":1,"code":0,"msg":"ok","data":{"state":"waiting","position":1,"queue_len":1,"eta_secs":null,"resumed":true}}"#;
            s.write_all(&frame(login)).await.unwrap();
            let err = format!(r#"{{"cmd":"","seq":0,"code":{code},"msg":"x","data":{{}}}}"#);
            s.write_all(&frame(&err)).await.unwrap();
            // Hold the socket until the client closes it.
            let _ = s.read(&mut buf).await;
        }
    });
    let mut client = fast(&addr, 1).connect().await.expect("login");
    let e = wait_for(&mut client, "reconnecting", |e| {
        matches!(e, Event::Reconnecting { .. })
    })
    .await;
    assert!(
        matches!(
            e,
            Event::Reconnecting {
                cause: Error::RateLimited { .. },
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(next(&mut client).await, Event::Resumed { position: 1 });
    wait_position(&mut client, 1).await;
    match next_item(&mut client).await {
        Some(Err(Error::BadFrame { .. })) => {}
        other => panic!("expected BAD_FRAME to end the client, got {other:?}"),
    }
    assert!(next_item(&mut client).await.is_none());
    drop(client);
    server.await.unwrap();
}
