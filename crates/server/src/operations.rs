//! Operations. Pending tokens live in replicated state and are shown as running
//! `class: token` operations, so a token issued anywhere can be listed, waited on,
//! revoked and redeemed anywhere, and survives a restart. Everything else runs in
//! [`crate::ops`], in the memory of the member that started it.

use std::collections::BTreeMap;

use api::types::{status, Operation};
use cluster::{Token, TokenKind};
use serde_json::{json, Value};

use crate::context::Ctx;

/// What a token operation shows; also what the CLI builds the token text from.
pub fn token_operation(ctx: &Ctx, token: &Token, addresses: &[String]) -> Operation {
    let fingerprint = ctx.served_certificate().1.clone();
    let mut metadata: BTreeMap<String, Value> = BTreeMap::new();
    metadata.insert("secret".into(), json!(token.secret));
    metadata.insert("fingerprint".into(), json!(fingerprint));
    metadata.insert("addresses".into(), json!(addresses));
    if let Some(at) = token.expires_at {
        metadata.insert("expiresAt".into(), json!(rfc3339(at)));
    }
    let description = match &token.kind {
        TokenKind::Join { server_name } => {
            return crate::membership::join_token_operation(ctx, token, server_name)
        }
        TokenKind::Trust {
            client_name,
            restricted,
            projects,
        } => {
            metadata.insert(
                "request".into(),
                json!({
                    "name": client_name,
                    "type": "client",
                    "restricted": restricted,
                    "projects": projects,
                    "certificate": "",
                    "description": "",
                    "token": true,
                    "trust_token": "",
                }),
            );
            "Certificate add token"
        }
    };
    Operation {
        id: token.id.clone(),
        class: "token".into(),
        description: description.into(),
        created_at: token.created_at,
        updated_at: token.created_at,
        status: status::name(status::RUNNING).into(),
        status_code: status::RUNNING,
        resources: None,
        metadata: Some(metadata),
        may_cancel: true,
        err: String::new(),
        location: ctx.location_name(&ctx.store.state(), token.location),
    }
}

/// The same operation, finished: how a waiter sees a token that was used or revoked.
pub fn finished(mut op: Operation, code: u16) -> Operation {
    op.status = status::name(code).into();
    op.status_code = code;
    op.updated_at = time::OffsetDateTime::now_utc();
    op.may_cancel = false;
    op
}

pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Records an operation that already finished successfully (what `PUT /1.0/cluster`
/// answers with), so that waiting on it works. Kept for ten minutes.
pub fn record_finished(ctx: &Ctx, description: &str) -> Operation {
    ctx.ops
        .record_finished(ctx.here(), description, std::time::Duration::from_secs(600))
}

/// Starts `run` as a new operation of this member and answers as Incus does: `202`,
/// an async envelope naming `/1.0/operations/{id}`, and a `Location` header.
pub fn start<F, Fut>(ctx: &Ctx, spec: crate::ops::Spec, run: F) -> axum::response::Response
where
    F: FnOnce(crate::ops::Progress) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let op = ctx.ops.start(ctx.here(), spec, run);
    crate::response::operation(&op)
}

/// A new pending token of `kind`, expiring after `expiry` (a setting), or never.
pub fn new_token(ctx: &Ctx, kind: TokenKind, expiry: Option<api::expiry::Expiry>) -> Token {
    let now = time::OffsetDateTime::now_utc();
    // A large expiry saturates rather than overflowing.
    let expires_at = expiry.map(|e| e.after(now));
    Token {
        id: new_uuid(),
        kind,
        secret: trust::random_hex(32),
        location: ctx.member_id(),
        created_at: now,
        expires_at,
    }
}

/// Why a presented token opens nothing, as the API says it: Incus's words first (clients
/// may look for them), then what became of the token when that is known. Telling a
/// holder of a spent secret how it was spent helps nobody who does not hold it.
pub fn token_refusal(kind: &str, refusal: cluster::TokenRefusal) -> api::ApiError {
    use cluster::{Spent, TokenRefusal};
    let what = match kind {
        "join" => "No matching cluster join operation found",
        _ => "No matching certificate add operation found",
    };
    let why = match refusal {
        TokenRefusal::Unknown => "the token is unknown, already used or expired",
        TokenRefusal::Spent(Spent::Used) => "this token was already used",
        TokenRefusal::Spent(Spent::Expired) => "this token has expired",
        TokenRefusal::Spent(Spent::Revoked) => "this token was revoked",
        TokenRefusal::Spent(Spent::Replaced) => "this token was replaced by a newer one for the same member",
    };
    api::ApiError::new(403, format!("{what}: {why}"))
}

/// A random (version 4) UUID.
pub fn new_uuid() -> String {
    uuid::Builder::from_random_bytes(trust::random_bytes16())
        .into_uuid()
        .to_string()
}
