//! Host resources, metrics and the configuration reference.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::context::Ctx;
use crate::response::{sync, ApiError, Result};

pub async fn resources(State(_ctx): State<Ctx>) -> Result<Response> {
    let facts = tokio::task::spawn_blocking(host::resources::gather)
        .await
        .map_err(|e| ApiError::internal(format!("Failed to read host resources: {e}")))?;
    Ok(sync(facts))
}

/// Prometheus text, for client and metrics certificates.
pub async fn metrics(State(ctx): State<Ctx>) -> Result<Response> {
    let body = ctx
        .metrics
        .render(ctx.started.elapsed(), ctx.store.state().certificates.len());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

pub async fn metadata_configuration() -> Result<Response> {
    Ok(sync(api::config::metadata_configuration()))
}
