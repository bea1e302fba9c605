//! One player, for support and operators: `GET /v1/users/{user_id}?queue=Q` (its state
//! and journal, kept by the queue core: see `queue::journal`) and
//! `DELETE /v1/queues/{q}/players/{user_id}` (removes it: a logged state machine op,
//! `Op::Remove`; the connected session is kicked `removed`).
//!
//! Invariants:
//! - both go through the gate of `routes` (bearer key when one is set) and the DELETE is
//!   an action in the audit trail (`audit` logs every non-GET request with its peer);
//! - answers: `200` with the report, `404 {"error": "no such player"}` when the queue
//!   does not exist or nothing is known of the player (nor held, for the DELETE),
//!   `400` for a `user_id` that is not an unsigned integer, `501` when
//!   `[journal] enabled = false` (the GET only: the DELETE works either way), `503`
//!   when the core does not answer or durability is degraded (the DELETE).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::Uri;
use serde::Serialize;

use super::routes::Reply;
use super::{ask_core, ControlContext};
use crate::msg::{ControlReply, ControlReq, UserId};

/// Queue asked about when `?queue=` is absent.
const DEFAULT_QUEUE: &str = "default";

/// The answer to a removal.
#[derive(Serialize)]
struct RemovedOut {
    /// Always true (otherwise the answer is 404).
    removed: bool,
    /// What the player held: `waiting`, `grace` or `admitted`.
    state: &'static str,
}

/// A path's `user_id`, or the 400 answer.
fn user_id(text: &str) -> Result<UserId, Reply> {
    text.parse()
        .map_err(|_| Reply::error(400, "user_id must be an unsigned 64-bit integer"))
}

/// `?queue=` of `uri` (queue names need no percent-decoding: see
/// `config::valid_queue_name`), else [`DEFAULT_QUEUE`].
fn queue_param(uri: &Uri) -> &str {
    uri.query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("queue="))
        .unwrap_or(DEFAULT_QUEUE)
}

/// A core answer both routes share.
fn other(reply: ControlReply) -> Reply {
    match reply {
        ControlReply::NoSuchPlayer | ControlReply::UnknownQueue => {
            Reply::error(404, "no such player")
        }
        ControlReply::JournalOff => {
            Reply::error(501, "the player journal is off ([journal] enabled = false)")
        }
        ControlReply::Unavailable(reason) => Reply::error(503, &reason),
        other => {
            tracing::error!(reply = ?other, "unexpected core answer to a player request");
            Reply::error(500, "unexpected core answer")
        }
    }
}

/// `GET /v1/users/{user_id}?queue=Q`.
pub(super) async fn user(
    State(ctx): State<Arc<ControlContext>>,
    Path(user): Path<String>,
    uri: Uri,
) -> Reply {
    let user = match user_id(&user) {
        Ok(user) => user,
        Err(reply) => return reply,
    };
    let queue = queue_param(&uri);
    if !crate::config::valid_queue_name(queue) {
        return Reply::error(404, "no such player");
    }
    let req = ControlReq::User {
        queue: queue.to_string(),
        user,
    };
    match ask_core(&ctx, req).await {
        Ok(ControlReply::User(report)) => Reply::json(200, &*report),
        Ok(reply) => other(reply),
        Err(e) => e.into(),
    }
}

/// `DELETE /v1/queues/{q}/players/{user_id}`.
pub(super) async fn remove(
    State(ctx): State<Arc<ControlContext>>,
    Path((queue, user)): Path<(String, String)>,
) -> Reply {
    let user = match user_id(&user) {
        Ok(user) => user,
        Err(reply) => return reply,
    };
    if !crate::config::valid_queue_name(&queue) {
        return Reply::error(404, "no such player");
    }
    match ask_core(&ctx, ControlReq::Remove { queue, user }).await {
        Ok(ControlReply::Removed(state)) => Reply::json(
            200,
            &RemovedOut {
                removed: true,
                state,
            },
        ),
        Ok(reply) => other(reply),
        Err(e) => e.into(),
    }
}
