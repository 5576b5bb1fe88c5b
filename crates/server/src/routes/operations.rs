//! `/1.0/operations`: list, show, wait and cancel.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use api::types::{status, Operation};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Extension;
use trust::Identity;

use crate::auth::require_full;
use crate::context::Ctx;
use crate::operations::{finished, token_operation};
use crate::response::{recursion, sync, ApiError, Result};

/// The longest a single `wait` may block.
const MAX_WAIT: Duration = Duration::from_secs(3600);

fn all(ctx: &Ctx) -> Vec<Operation> {
    let addresses = ctx.addresses();
    let mut ops: Vec<Operation> = ctx
        .store
        .state()
        .tokens
        .values()
        .map(|t| token_operation(ctx, t, &addresses))
        .collect();
    if let Ok(done) = ctx.finished_ops.lock() {
        ops.extend(done.values().map(|(op, _)| op.clone()));
    }
    ops
}

/// Answers a request about an operation this member does not have by asking the
/// others, unless the request already came from a member.
async fn elsewhere(
    ctx: &Ctx,
    via: bool,
    req: axum::extract::Request,
    wait: Option<Duration>,
) -> Result<Response> {
    if via || !ctx.store.clustered() {
        return Err(not_found());
    }
    let state = ctx.store.state();
    let me = ctx.server_name();
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, crate::response::MAX_BODY)
        .await
        .unwrap_or_default();
    for m in state.members.values().filter(|m| m.name != me) {
        if !crate::membership::is_online(ctx, &state, &m.name) {
            continue;
        }
        let mut again =
            axum::extract::Request::from_parts(parts.clone(), axum::body::Body::from(body.clone()));
        if let Some(id) = parts.extensions.get::<Identity>() {
            again.extensions_mut().insert(id.clone());
        }
        let bound = crate::forward::forward_timeout(&state) + wait.unwrap_or_default();
        let resp = crate::forward::to_member_within(ctx, &m.name, again, bound).await;
        if resp.status() != http::StatusCode::NOT_FOUND {
            return Ok(resp);
        }
    }
    Err(not_found())
}

fn find(ctx: &Ctx, id: &str) -> Option<Operation> {
    let state = ctx.store.state();
    if let Some(token) = state.tokens.get(id) {
        return Some(token_operation(ctx, token, &ctx.addresses()));
    }
    ctx.finished_ops.lock().ok()?.get(id).map(|(op, _)| op.clone())
}

fn not_found() -> crate::response::Error {
    ApiError::not_found_msg("Operation not found").into()
}

/// Operations that live only in other members' memory (not tokens: those are shared).
async fn others(ctx: &Ctx) -> Vec<Operation> {
    let state = ctx.store.state();
    let me = ctx.server_name();
    let calls = state
        .members
        .values()
        .filter(|m| m.name != me && crate::membership::is_online(ctx, &state, &m.name))
        .map(|m| {
            let peers = ctx.peers.clone();
            let address = m.address.clone();
            async move {
                let req = http::Request::get("/1.0/operations?recursion=1")
                    .header(crate::auth::FWD_PROTOCOL, "cluster")
                    .header(crate::auth::FWD_USERNAME, "cluster")
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .ok()?;
                let resp = peers.send(&address, req, OTHERS_TIMEOUT).await.ok()?;
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

/// How long a listing waits for another member's operations.
const OTHERS_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn list(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    via: Option<Extension<crate::auth::ViaMember>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    require_full(&id)?;
    let mut by_status: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    let full = recursion(&q);
    let mut ops = all(&ctx);
    if via.is_none() && ctx.store.clustered() {
        ops.extend(others(&ctx).await);
    }
    for op in ops {
        let entry = if full {
            serde_json::to_value(&op).expect("operations serialize")
        } else {
            serde_json::Value::String(format!("/1.0/operations/{}", op.id))
        };
        by_status.entry(op.status.to_lowercase()).or_default().push(entry);
    }
    Ok(sync(by_status))
}

pub async fn get(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    via: Option<Extension<crate::auth::ViaMember>>,
    Path(op_id): Path<String>,
    req: axum::extract::Request,
) -> Result<Response> {
    require_full(&id)?;
    match find(&ctx, &op_id) {
        Some(op) => Ok(sync(op)),
        None => elsewhere(&ctx, via.is_some(), req, None).await,
    }
}

/// Blocks until the operation ends or `timeout` seconds pass (-1 or absent: no limit
/// but [`MAX_WAIT`]). A token ends when it is used or revoked.
pub async fn wait(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    via: Option<Extension<crate::auth::ViaMember>>,
    Path(op_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    req: axum::extract::Request,
) -> Result<Response> {
    require_full(&id)?;
    let timeout = wait_timeout(q.get("timeout").map(String::as_str));
    let Some(mut op) = find(&ctx, &op_id) else {
        return elsewhere(&ctx, via.is_some(), req, Some(timeout)).await;
    };
    if op.status_code != status::RUNNING {
        return Ok(sync(op));
    }
    let mut changes = ctx.state_changed.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Err(_) => return Ok(sync(op)),
            Ok(Err(_)) => return Err(ApiError::unavailable("Shutting down").into()),
            Ok(Ok(())) => match find(&ctx, &op_id) {
                Some(current) => op = current,
                None => return Ok(sync(finished(op, status::SUCCESS))),
            },
        }
    }
}

/// `?timeout=` in seconds, bounded by [`MAX_WAIT`]: absent, negative (Incus's -1 is
/// "no limit"), not a number or too large to represent all mean [`MAX_WAIT`].
fn wait_timeout(text: Option<&str>) -> Duration {
    text.and_then(|t| t.trim().parse::<f64>().ok())
        .filter(|t| *t >= 0.0)
        .and_then(|t| Duration::try_from_secs_f64(t).ok())
        .map_or(MAX_WAIT, |d| d.min(MAX_WAIT))
}

pub async fn delete(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(op_id): Path<String>,
) -> Result<Response> {
    require_full(&id)?;
    let op = find(&ctx, &op_id).ok_or_else(not_found)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_timeouts_are_bounded_whatever_is_asked() {
        assert_eq!(wait_timeout(Some("1.5")), Duration::from_millis(1500));
        assert_eq!(wait_timeout(Some("0")), Duration::ZERO);
        for text in [
            None,
            Some("-1"),
            Some("1e20"),
            Some("1e308"),
            Some("inf"),
            Some("NaN"),
            Some("-inf"),
            Some("soon"),
            Some(""),
            Some("3601"),
        ] {
            assert_eq!(wait_timeout(text), MAX_WAIT, "{text:?}");
        }
    }
}
