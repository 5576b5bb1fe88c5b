//! `/1.0/operations`: list, show, wait, cancel and connect.
//!
//! A request about one operation reaches the member that runs it before it gets here
//! (the forward layer reads the owner from the id); so a handler answers from its own
//! engine, or from the replicated state for token operations, and 404s otherwise.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use api::types::{status, Operation};
use axum::extract::ws::{rejection::WebSocketUpgradeRejection, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use trust::Identity;

use crate::context::Ctx;
use crate::operations::{finished, token_operation};
use crate::ops::{wait_timeout, Refusal, Requestor};
use crate::response::{recursion, sync, ApiError, Result};

/// The token operations (anywhere) and this member's own.
fn all(ctx: &Ctx) -> Vec<Operation> {
    let addresses = ctx.addresses();
    let mut ops: Vec<Operation> = ctx
        .store
        .state()
        .tokens
        .values()
        .map(|t| token_operation(ctx, t, &addresses))
        .collect();
    ops.extend(ctx.ops.list());
    ops
}

fn token(ctx: &Ctx, id: &str) -> Option<Operation> {
    let state = ctx.store.state();
    state
        .tokens
        .get(id)
        .map(|token| token_operation(ctx, token, &ctx.addresses()))
}

fn not_found() -> crate::response::Error {
    ApiError::not_found_msg("Operation not found").into()
}

/// Operations that live only in other members' memory (not tokens: those are shared),
/// from the online members `wanted` accepts.
async fn others(ctx: &Ctx, wanted: impl Fn(&str) -> bool) -> Vec<Operation> {
    let state = ctx.store.state();
    let me = ctx.server_name();
    let timeout = ctx.settings().forward_timeout;
    let calls = state
        .members
        .values()
        .filter(|m| m.name != me && wanted(&m.name) && crate::membership::is_online(ctx, &m.name))
        .map(|m| {
            let peers = ctx.peers.clone();
            let address = m.address.clone();
            async move {
                let req = http::Request::get("/1.0/operations?recursion=1")
                    .header(crate::auth::FWD_PROTOCOL, "cluster")
                    .header(crate::auth::FWD_USERNAME, "cluster")
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .ok()?;
                let resp = peers.send(&address, req, timeout).await.ok()?;
                let env: api::Envelope = serde_json::from_slice(resp.body()).ok()?;
                let map: BTreeMap<String, Vec<Operation>> = serde_json::from_value(env.metadata).ok()?;
                Some(
                    map.into_values()
                        .flatten()
                        .filter(|o| o.class != "token")
                        .collect::<Vec<_>>(),
                )
            }
        });
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .flatten()
        .collect()
}

/// Every member's operations (scatter/gather), or one member's with `?target=`.
pub async fn list(
    State(ctx): State<Ctx>,
    via: Option<Extension<crate::auth::ViaMember>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let target = q.get("target").filter(|t| !t.is_empty());
    if let Some(t) = target {
        if ctx.store.clustered() && !ctx.store.state().members.contains_key(t) {
            return Err(ApiError::not_found_msg("Cluster member not found").into());
        }
    }
    let mut ops = all(&ctx);
    if via.is_none() && ctx.store.clustered() {
        ops.extend(others(&ctx, |name| target.is_none_or(|t| t == name)).await);
    }
    let full = recursion(&q);
    let mut by_status: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for op in ops
        .into_iter()
        .filter(|o| target.is_none_or(|t| *t == o.location))
    {
        let entry = if full {
            serde_json::to_value(&op).expect("operations serialize")
        } else {
            serde_json::Value::String(format!("/1.0/operations/{}", op.id))
        };
        by_status.entry(op.status.to_lowercase()).or_default().push(entry);
    }
    Ok(sync(by_status))
}

pub async fn get(State(ctx): State<Ctx>, Path(op_id): Path<String>) -> Result<Response> {
    let op = token(&ctx, &op_id)
        .or_else(|| ctx.ops.get(&op_id))
        .ok_or_else(not_found)?;
    Ok(sync(op))
}

/// Blocks until the operation ends or `timeout` seconds pass (-1 or absent: no limit
/// but [`crate::ops::MAX_WAIT`]). A token ends when it is used or revoked.
pub async fn wait(
    State(ctx): State<Ctx>,
    Path(op_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let timeout = wait_timeout(q.get("timeout").map(String::as_str));
    if ctx.ops.contains(&op_id) {
        let op = ctx.ops.wait(&op_id, timeout).await.ok_or_else(not_found)?;
        return Ok(sync(op));
    }
    let Some(op) = token(&ctx, &op_id) else {
        return Err(not_found());
    };
    wait_token(&ctx, op, timeout).await
}

async fn wait_token(ctx: &Ctx, mut op: Operation, timeout: Duration) -> Result<Response> {
    if op.status_code != status::RUNNING {
        return Ok(sync(op));
    }
    let mut changes = ctx.state_changed.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Err(_) => return Ok(sync(op)),
            Ok(Err(_)) => return Err(ApiError::unavailable("Shutting down").into()),
            Ok(Ok(())) => match token(ctx, &op.id) {
                Some(current) => op = current,
                None => return Ok(sync(finished(op, status::SUCCESS))),
            },
        }
    }
}

pub async fn delete(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(op_id): Path<String>,
) -> Result<Response> {
    if ctx.ops.contains(&op_id) {
        ctx.ops.cancel(&op_id)?;
        tracing::info!(operation = %op_id, by = %id.username, "operation cancelled");
        ctx.events.lifecycle(
            "operation-cancelled",
            &format!("/1.0/operations/{op_id}"),
            Some(&id),
            None,
        );
        return Ok(sync(serde_json::json!({})));
    }
    let op = token(&ctx, &op_id).ok_or_else(not_found)?;
    ctx.store
        .apply(cluster::TokenCommand::DeleteToken {
            token_id: op_id.clone(),
            how: cluster::Spent::Revoked,
        })
        .await
        .map_err(|_| not_found())?;
    tracing::info!(operation = %op_id, by = %id.username, "token revoked");
    let cancelled = finished(op, status::CANCELLED);
    ctx.events.send(
        "operation",
        "default",
        serde_json::to_value(&cancelled).expect("operations serialize"),
    );
    Ok(sync(serde_json::json!({})))
}

/// `GET /1.0/operations/{id}/websocket?secret=`: reachable without trust; the secret
/// (and, when the operation names one, the requestor) is the capability.
pub async fn websocket(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(op_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    upgrade: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response> {
    let secret = q.get("secret").map(String::as_str).unwrap_or_default();
    if secret.is_empty() {
        return Err(ApiError::bad_request("Missing websocket secret").into());
    }
    let caller = Requestor::of(&id);
    let refused = |r: Refusal| -> crate::response::Error {
        match r {
            Refusal::NotFound => not_found(),
            Refusal::RequestorMismatch => ApiError::new(403, "Requestor mismatch").into(),
            Refusal::Forbidden => ApiError::forbidden().into(),
            Refusal::Conflict(why) => ApiError::bad_request(why).into(),
        }
    };
    let Ok(upgrade) = upgrade else {
        // Checked all the same, so a plain GET learns no more than an upgrade would.
        ctx.ops
            .check_websocket(&op_id, secret, &caller)
            .map_err(refused)?;
        return Err(ApiError::bad_request("Expected a websocket").into());
    };
    let (fd, connect) = ctx
        .ops
        .claim_websocket(&op_id, secret, &caller)
        .map_err(refused)?;
    tracing::debug!(operation = %op_id, fd = %fd, "operation websocket connected");
    Ok(upgrade
        .max_message_size(1024 * 1024)
        .on_upgrade(move |socket| connect(fd, socket))
        .into_response())
}
