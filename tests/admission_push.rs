//! A player admitted in the same core round as the players ahead of it gets its
//! `admitted` push and no `position` push for the place it just left: the rank batch of
//! that round lists the player's own key among the departures, and the loop used to
//! shift it to "position 1 of 0" and push that before the `admitted` push.

mod common;

use serde_json::json;

#[test]
fn admission_sends_no_position_for_the_place_that_left() {
    // Pushes are throttled to one per interval from the login answer on; 1 ms keeps the
    // throttle out of the way (the admit call below takes longer than that).
    let server = common::start("[server]\npush_interval_ms = 1\n");
    let ahead: Vec<_> = (1..=5).map(|u| server.player(u).0).collect();
    let (mut me, login) = server.player(42);
    assert_eq!(login["data"]["position"], 6, "{login}");
    let (status, body) = server.http(
        "POST",
        "/v1/queues/default/admit",
        Some(json!({"count": 6})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["admitted"].as_array().map(Vec::len), Some(6), "{body}");
    let mut before = Vec::new();
    loop {
        let frame = me.next();
        if frame["cmd"] == "admitted" {
            break;
        }
        before.push(frame);
    }
    assert!(
        before.iter().all(|f| f["cmd"] != "position"),
        "position pushed for a place already admitted: {before:?}"
    );
    // The connection stays open after admission and answers `position` with 0.
    let answer = me.request("position", 7, json!({}));
    assert_eq!(answer["data"]["position"], 0, "{answer}");
    drop(ahead);
}
