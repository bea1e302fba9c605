//! The SDK keeps a cluster's place ticket: over real sockets, a scripted server (the
//! ticket is opaque to clients, so a script shows exactly what the client sends) gives
//! a `place_ticket` in each login answer and drops the connection; the client presents
//! the latest one at its next login, forgets one the server rejects and logs in again
//! without it, and ends with the admission.

use std::time::Duration;

use queue_client::{Client, Event};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn read_frame(s: &mut TcpStream) -> Value {
    let mut header = [0u8; 4];
    s.read_exact(&mut header).await.expect("frame header");
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    s.read_exact(&mut body).await.expect("frame body");
    serde_json::from_slice(&body).expect("JSON")
}

async fn write_frame(s: &mut TcpStream, v: Value) {
    let body = v.to_string();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body.as_bytes());
    s.write_all(&frame).await.expect("write");
}

/// Accepts the next connection and reads its `login`: the connection and the
/// `place_ticket` it presented.
async fn next_login(listener: &TcpListener) -> (TcpStream, Value, Option<String>) {
    let (mut s, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("the client reconnects")
        .expect("accept");
    let login = read_frame(&mut s).await;
    assert_eq!(login["cmd"], "login", "{login}");
    let ticket = login["data"]["place_ticket"].as_str().map(str::to_string);
    (s, login, ticket)
}

fn waiting(seq: &Value, ticket: &str, resumed: bool) -> Value {
    json!({"cmd": "login", "seq": seq, "code": 0, "msg": "ok", "data": {
        "state": "waiting", "position": 3, "queue_len": 5, "eta_secs": null,
        "resumed": resumed, "place_ticket": ticket}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latest_place_ticket_is_presented_on_reconnect() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (mut s, login, ticket) = next_login(&listener).await;
        assert_eq!(ticket, None, "nothing to present at the first login");
        write_frame(&mut s, waiting(&login["seq"], "T1", false)).await;
        drop(s);
        let (mut s, login, ticket) = next_login(&listener).await;
        assert_eq!(ticket.as_deref(), Some("T1"));
        write_frame(&mut s, waiting(&login["seq"], "T2", true)).await;
        drop(s);
        let (mut s, login, ticket) = next_login(&listener).await;
        assert_eq!(ticket.as_deref(), Some("T2"), "the latest ticket");
        write_frame(
            &mut s,
            json!({"cmd": "login", "seq": login["seq"], "code": 4,
            "msg": "place ticket rejected: bad signature", "data": {}}),
        )
        .await;
        drop(s);
        let (mut s, login, ticket) = next_login(&listener).await;
        assert_eq!(ticket, None, "a rejected ticket is forgotten");
        write_frame(&mut s, waiting(&login["seq"], "T3", false)).await;
        write_frame(
            &mut s,
            json!({"cmd": "admitted", "seq": 0, "code": 0, "msg": "ok",
            "data": {"token": "tok", "expires_at": 1, "login_addr": null}}),
        )
        .await;
        // Keep the socket until the client closes it.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    });
    let mut client = Client::builder(addr)
        .user(7)
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .answer_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("first login");
    let mut resumed = 0;
    let token = loop {
        let event = tokio::time::timeout(Duration::from_secs(20), client.next_event())
            .await
            .expect("an event")
            .expect("the stream goes on until admitted");
        match event.expect("no error: the rejected ticket is retried without it") {
            Event::Resumed { .. } => resumed += 1,
            Event::Admitted { token, .. } => break token,
            _ => {}
        }
    };
    assert_eq!((token.as_str(), resumed), ("tok", 1));
    drop(client);
    server.await.expect("the script ran to its end");
}
