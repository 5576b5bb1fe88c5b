//! `/internal/test/*`: routes the integration tests drive what no real handler does yet
//! with: bodies that stream through forwarding, and operations. They
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
//! - `GET routes`: the route table, for the test that walks it.
//! - `POST operations`: starts a demo operation (steps of progress, holding until
//!   cancelled, failing, echo websockets), answered as Incus answers any operation.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};

use axum::Extension;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use trust::Identity;

use crate::context::Ctx;
use crate::ops::{Class, Requestor, Spec};
use crate::response::{error_response, parse_json, sync, ApiError, Result};

pub const SINK: &str = "/internal/test/sink";

/// Bytes `source` has produced, over the life of the process.
static PRODUCED: AtomicU64 = AtomicU64::new(0);
const CHUNK: usize = 64 * 1024;

/// `GET routes`: the route table (method, path, access), for the test that walks it.
pub(crate) async fn routes() -> Response {
    let rows: Vec<_> = crate::route::TABLE
        .rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "method": r.verb.as_str(),
                "path": r.path,
                "access": format!("{:?}", r.access),
                "test_only": r.test_only,
            })
        })
        .collect();
    sync(rows)
}

pub(crate) async fn sink(req: Request) -> Result<Response> {
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

pub(crate) async fn source(Query(q): Query<HashMap<String, String>>) -> Result<Response> {
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

pub(crate) async fn produced() -> Result<Response> {
    Ok(sync(PRODUCED.load(Ordering::Relaxed)))
}

pub(crate) async fn echo(
    Extension(id): Extension<Identity>,
    upgrade: std::result::Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response> {
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

/// What a demo operation does.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Demo {
    #[serde(default = "demo_description")]
    description: String,
    /// Progress steps, each reported in the metadata, `step_ms` apart.
    #[serde(default)]
    steps: u32,
    #[serde(default)]
    step_ms: u64,
    /// Runs until cancelled (after its steps).
    #[serde(default)]
    hold: bool,
    /// Ends in Failure with this `err`.
    #[serde(default)]
    fail: Option<String>,
    #[serde(default)]
    may_cancel: bool,
    /// Websocket fds (echoed); `requestor` binds them to the caller.
    #[serde(default)]
    websockets: Vec<String>,
    #[serde(default)]
    requestor: bool,
    #[serde(default)]
    resources: Option<BTreeMap<String, Option<Vec<String>>>>,
}

fn demo_description() -> String {
    "Demo operation".into()
}

/// `POST /internal/test/operations`: starts a demo operation, answered as Incus
/// answers any operation (202, async envelope, `Location`).
pub(crate) async fn start_operation(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    body: axum::body::Bytes,
) -> Result<Response> {
    let demo: Demo = parse_json(&body)?;
    let steps = demo.steps.min(10_000);
    let step = Duration::from_millis(demo.step_ms.min(60_000));
    let mut spec = Spec::task(&demo.description);
    spec.may_cancel = demo.may_cancel;
    spec.resources = demo.resources;
    if !demo.websockets.is_empty() {
        spec.class = Class::Websocket;
        spec.websockets = demo.websockets;
        spec.connect = Some(std::sync::Arc::new(|_fd, mut socket| {
            Box::pin(async move {
                while let Some(Ok(msg)) = socket.next().await {
                    if matches!(msg, Message::Close(_)) || socket.send(msg).await.is_err() {
                        break;
                    }
                }
            })
        }));
        spec.requestor = demo.requestor.then(|| Requestor::of(&id));
    }
    let (hold, fail) = (demo.hold, demo.fail);
    Ok(crate::operations::start(&ctx, spec, move |progress| async move {
        for i in 1..=steps {
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                _ = progress.cancelled() => return Ok(()),
            }
            progress.extend_metadata(
                [(
                    "progress".to_string(),
                    serde_json::json!({ "stage": "demo", "percent": (i * 100 / steps).to_string() }),
                )]
                .into(),
            );
        }
        if hold {
            progress.cancelled().await;
        }
        fail.map_or(Ok(()), Err)
    }))
}
