//! `/1.0/events`: a websocket streaming the events a listener asked for.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use tokio::sync::broadcast::error::RecvError;
use trust::Identity;

use crate::auth::require_full;
use crate::context::Ctx;
use crate::events::Filter;
use crate::response::Result;

/// How often an idle stream is pinged, so dead listeners are noticed.
const PING_EVERY: Duration = Duration::from_secs(30);

pub async fn stream(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Query(q): Query<HashMap<String, String>>,
    upgrade: std::result::Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response> {
    require_full(&id)?;
    let Ok(upgrade) = upgrade else {
        // What Incus (gorilla/websocket) answers a plain GET.
        return Ok((
            StatusCode::BAD_REQUEST,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::SEC_WEBSOCKET_VERSION, "13"),
            ],
            "Bad Request\n",
        )
            .into_response());
    };
    let filter = Filter::from_query(&q);
    tracing::debug!(user = %id.username, ?filter, "event listener connected");
    Ok(upgrade
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| pump(ctx, socket, filter))
        .into_response())
}

/// `/internal/events`: this member's own lifecycle and operation events, for the
/// other members' relays.
pub async fn internal(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    upgrade: std::result::Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response> {
    if id.method != trust::AuthMethod::Cluster {
        return Err(crate::response::ApiError::forbidden().into());
    }
    let upgrade = upgrade.map_err(|_| crate::response::ApiError::bad_request("Expected a websocket"))?;
    let filter = Filter {
        types: vec!["lifecycle".into(), "operation".into()],
        project: String::new(),
        all_projects: true,
        only_own: true,
    };
    Ok(upgrade
        .on_upgrade(move |socket| pump(ctx, socket, filter))
        .into_response())
}

async fn pump(ctx: Ctx, mut socket: WebSocket, filter: Filter) {
    let (mut events, _interest) = ctx.events.subscribe_for(&filter);
    let mut stop = ctx.closing.subscribe();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(event) if filter.accepts(&event) && (!filter.only_own || ctx.events.is_own(&event)) => {
                    let text = serde_json::to_string(&event).expect("events serialize");
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => tracing::warn!(dropped = n, "event listener fell behind"),
                Err(RecvError::Closed) => return,
            },
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
            }
            _ = transport::listen::stopped(&mut stop) => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        }
    }
}
