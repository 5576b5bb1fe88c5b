//! `/internal/test/*`: routes that stream, for the integration tests of forwarding. They
//! exist only when the daemon runs with `--test-routes` (the test harness passes it);
//! otherwise these paths are unknown (404). Each requires a trusted caller.
//!
//! - `POST sink`: reads the body as it arrives and answers its SHA-256 and size: a
//!   streamed route, bounded by `--max-stream-body`, holding no more than a chunk.
//! - `GET source?size=N`: answers N bytes, byte k being `k % 251`, made as they are sent.
//! - `GET produced`: how many bytes `source` has handed to the connection so far (a
//!   sender slowed by its receiver stops counting).
//! - `GET echo`: a websocket that first says who the caller is (as this member sees it),
//!   then echoes every message with its type.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::{Body, HttpBody};
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Query, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use futures_util::StreamExt;
use trust::Identity;

use crate::auth::require_full;
use crate::context::Ctx;
use crate::response::{error_response, sync, ApiError, Result};

pub const SINK: &str = "/internal/test/sink";

/// Bytes `source` has produced, over the life of the process.
static PRODUCED: AtomicU64 = AtomicU64::new(0);
const CHUNK: usize = 64 * 1024;

pub fn add(router: Router<Ctx>) -> Router<Ctx> {
    router
        .route(SINK, post(sink))
        .route("/internal/test/source", get(source))
        .route("/internal/test/produced", get(produced))
        .route("/internal/test/echo", get(echo))
}

async fn sink(Extension(id): Extension<Identity>, req: Request) -> Result<Response> {
    require_full(&id)?;
    let mut body = req.into_body();
    let mut hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut size = 0u64;
    while let Some(frame) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return Ok(error_response(&crate::gate::body_error(e, 0))),
        };
        if let Some(data) = frame.data_ref() {
            hash.update(data);
            size += data.len() as u64;
        }
    }
    Ok(sync(serde_json::json!({
        "sha256": hex::encode(hash.finish()),
        "size": size,
    })))
}

async fn source(
    Extension(id): Extension<Identity>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    require_full(&id)?;
    let size: u64 = q
        .get("size")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::bad_request("size must be a number of bytes"))?;
    let chunks = futures_util::stream::unfold(0u64, move |offset| async move {
        if offset >= size {
            return None;
        }
        let n = (size - offset).min(CHUNK as u64);
        let start = (offset % 251) as usize;
        let chunk = Bytes::copy_from_slice(&pattern()[start..start + n as usize]);
        PRODUCED.fetch_add(n, Ordering::Relaxed);
        Some((Ok::<_, std::io::Error>(chunk), offset + n))
    });
    let mut resp = Body::from_stream(chunks).into_response();
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(size));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}

/// Bytes `k % 251` for k from 0 to a chunk plus a period: any chunk is a slice of it.
fn pattern() -> &'static [u8] {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| (0..CHUNK + 251).map(|k| (k % 251) as u8).collect())
}

async fn produced(Extension(id): Extension<Identity>) -> Result<Response> {
    require_full(&id)?;
    Ok(sync(PRODUCED.load(Ordering::Relaxed)))
}

async fn echo(
    Extension(id): Extension<Identity>,
    upgrade: std::result::Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response> {
    require_full(&id)?;
    let upgrade = upgrade.map_err(|_| ApiError::bad_request("Expected a websocket"))?;
    let hello = serde_json::json!({
        "username": id.username,
        "protocol": id.method.as_str(),
    })
    .to_string();
    Ok(upgrade
        .max_message_size(1024 * 1024)
        .on_upgrade(move |mut socket| async move {
            if socket.send(Message::Text(hello.into())).await.is_err() {
                return;
            }
            while let Some(Ok(msg)) = socket.next().await {
                let reply = match msg {
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => continue,
                    other => other,
                };
                if socket.send(reply).await.is_err() {
                    break;
                }
            }
        })
        .into_response())
}
