//! `POST /v1/tokens/verify`: the signature, `kid`, `exp` and `iss` are checked here, then
//! the `jti` is consumed so that a token verifies once.
//!
//! One node: the core consumes the `jti` (its used set is durable with the log).
//!
//! Cluster mode (decisions):
//! - the token's queue owner answers when it is another live member and reachable: the
//!   verify is forwarded there (as `super::forward` forwards queue requests), because
//!   the owner's core holds the token's grant: consuming it there frees the grant at
//!   once (capacity-driven admission counts unused tokens) and journals the use. The
//!   owner's answer is passed back only when it is a 200; on any failure (unreachable,
//!   504, a 5xx) this node answers itself, which is safe because etcd decides either way;
//! - answered here (this node owns the queue, nobody does, the request was forwarded
//!   already, or the owner failed): the `jti` is consumed in etcd first (put-if-absent:
//!   used on any node is used everywhere), then in the local core. etcd unreachable:
//!   503 with `Retry-After`, never "valid": see `super::cluster::consume`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;

use super::body::{BodyKind, ControlBody};
use super::routes::{core_error, read_body, Reply};
use super::{ask_core, shapes, ControlContext};
use crate::msg::{ControlReply, ControlReq};

/// `POST /v1/tokens/verify`.
pub(super) async fn verify(
    State(ctx): State<Arc<ControlContext>>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let text = match read_body(body, BodyKind::Verify).await {
        Ok(ControlBody::Verify { token }) => token,
        Ok(_) => unreachable!("parse_body(Verify) gives Verify"),
        Err(reply) => return reply,
    };
    let token = match ctx.signer.verify(&text) {
        Ok(t) => t,
        Err(e) => return Reply::json(200, &shapes::VerifyOut::invalid(e.reason)),
    };
    if let Some(cluster) = &ctx.cluster {
        let at_owner = super::forward::verify_at_owner(cluster, &token.queue, &headers, &text);
        if let Some(answer) = at_owner.await {
            return answer;
        }
        match super::cluster::consume(cluster, &token.jti, token.exp).await {
            Ok(true) => {}
            Ok(false) => return Reply::json(200, &shapes::VerifyOut::invalid("already_used")),
            Err(reply) => return reply,
        }
    }
    let consume = ControlReq::ConsumeJti {
        jti: token.jti,
        exp: token.exp,
    };
    match ask_core(&ctx, consume).await {
        Ok(ControlReply::Consumed(true)) => Reply::json(
            200,
            &shapes::VerifyOut {
                valid: true,
                user_id: Some(token.user),
                queue: Some(&token.queue),
                reason: None,
            },
        ),
        Ok(ControlReply::Consumed(false)) => {
            Reply::json(200, &shapes::VerifyOut::invalid("already_used"))
        }
        Ok(other) => core_error(other),
        Err(e) => e.into(),
    }
}
