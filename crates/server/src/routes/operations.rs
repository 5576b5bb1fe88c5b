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
    ctx.store
        .state()
        .tokens
        .values()
        .map(|t| token_operation(ctx, t, &addresses))
        .collect()
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

pub async fn list(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    require_full(&id)?;
    let mut by_status: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    let full = recursion(&q);
    for op in all(&ctx) {
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
    Path(op_id): Path<String>,
) -> Result<Response> {
    require_full(&id)?;
    Ok(sync(find(&ctx, &op_id).ok_or_else(not_found)?))
}

/// Blocks until the operation ends or `timeout` seconds pass (-1 or absent: no limit
/// but [`MAX_WAIT`]). A token ends when it is used or revoked.
pub async fn wait(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(op_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    require_full(&id)?;
    let timeout = q
        .get("timeout")
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|t| *t >= 0.0)
        .map(|t| Duration::from_secs_f64(t).min(MAX_WAIT))
        .unwrap_or(MAX_WAIT);
    let mut op = find(&ctx, &op_id).ok_or_else(not_found)?;
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

pub async fn delete(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(op_id): Path<String>,
) -> Result<Response> {
    require_full(&id)?;
    let op = find(&ctx, &op_id).ok_or_else(not_found)?;
    ctx.store
        .apply(cluster::Command::DeleteToken {
            token_id: op_id.clone(),
        })
        .await
        .map_err(|_| not_found())?;
    ctx.notify_state_changed();
    tracing::info!(operation = %op_id, by = %id.username, "token revoked");
    let cancelled = finished(op, status::CANCELLED);
    ctx.events.send(
        "operation",
        "default",
        serde_json::to_value(&cancelled).expect("operations serialize"),
    );
    Ok(sync(serde_json::json!({})))
}
