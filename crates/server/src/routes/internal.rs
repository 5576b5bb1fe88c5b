//! Internal endpoints: readiness (for `admin waitready`) and shutdown (local only).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use trust::Identity;

use crate::context::Ctx;
use crate::response::{error_response, sync, ApiError};

/// 200 while the daemon serves, 503 once shutdown has begun. Tells members how far this
/// one has applied the replicated log.
pub async fn ready(State(ctx): State<Ctx>) -> Response {
    if ctx.ready() {
        let applied = ctx.store.raft_view().map(|v| v.last_applied.unwrap_or(0));
        sync(serde_json::json!({ "applied": applied }))
    } else {
        error_response(&ApiError::unavailable("Shutting down"))
    }
}

/// `GET /ready`: 200 while this member can serve (not shutting down; in a cluster, the
/// database has a leader with a quorum), else 503 with the reason. Unauthenticated and
/// cheap, for haproxy `option httpchk`, keepalived `track_script` and routing daemons.
pub async fn readiness(State(ctx): State<Ctx>) -> Response {
    match ctx.readiness() {
        Ok(()) => sync(serde_json::json!({"ready": true})),
        Err(reason) => error_response(&ApiError::unavailable(format!("Not ready: {reason}"))),
    }
}

/// `stapes admin shutdown`: local callers only (on this member's own socket: the gate
/// refuses an identity a member speaks for).
pub async fn shutdown(State(ctx): State<Ctx>, Extension(id): Extension<Identity>) -> Response {
    tracing::info!(user = %id.username, "shutdown requested");
    let _ = ctx.shutdown_tx.send(true);
    sync(serde_json::json!({})).into_response()
}
