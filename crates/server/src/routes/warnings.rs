//! `/1.0/warnings`.

use std::collections::HashMap;

use api::types::WarningPut;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Extension;
use cluster::WarningCommand;
use trust::Identity;

use crate::context::Ctx;
use crate::response::{json_body, listing, recursion, sync, sync_etag, ApiError, Result};

pub async fn list(State(ctx): State<Ctx>, Query(q): Query<HashMap<String, String>>) -> Result<Response> {
    let state = ctx.store.state();
    let rendered = state
        .warnings
        .iter()
        .map(|(uuid, w)| (uuid, w.render(ctx.location_name(&state, w.location))));
    Ok(listing(recursion(&q), "/1.0/warnings", rendered))
}

fn not_found() -> crate::response::Error {
    ApiError::not_found_msg("Warning not found").into()
}

pub async fn get(State(ctx): State<Ctx>, Path(uuid): Path<String>) -> Result<Response> {
    let state = ctx.store.state();
    let w = state.warnings.get(&uuid).ok_or_else(not_found)?;
    Ok(sync_etag(
        w.render(ctx.location_name(&state, w.location)),
        &w.status,
    ))
}

pub async fn put(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(uuid): Path<String>,
    body: Body,
) -> Result<Response> {
    let req: WarningPut = json_body(body).await?;
    ctx.store
        .apply(WarningCommand::UpdateWarningStatus {
            uuid: uuid.clone(),
            status: req.status,
        })
        .await?;
    ctx.events.lifecycle(
        "warning-updated",
        &format!("/1.0/warnings/{uuid}"),
        Some(&id),
        None,
    );
    Ok(sync(serde_json::json!({})))
}

pub async fn delete(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(uuid): Path<String>,
) -> Result<Response> {
    ctx.store
        .apply(WarningCommand::DeleteWarning { uuid: uuid.clone() })
        .await?;
    ctx.events.lifecycle(
        "warning-deleted",
        &format!("/1.0/warnings/{uuid}"),
        Some(&id),
        None,
    );
    Ok(sync(serde_json::json!({})))
}
