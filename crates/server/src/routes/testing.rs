//! `/internal/testing/**`: routes the test suite uses to drive what no real handler
//! does yet. Served only when the daemon runs with `--test-hooks`; otherwise these
//! paths are not in the route table at all (404), and they always need full trust.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::ws::Message;
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use futures_util::StreamExt;
use serde::Deserialize;
use trust::Identity;

use crate::auth::require_full;
use crate::context::Ctx;
use crate::ops::{Class, Requestor, Spec};
use crate::response::{parse_json, Result};

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

/// `POST /internal/testing/operations`: starts a demo operation, answered as Incus
/// answers any operation (202, async envelope, `Location`).
pub async fn start_operation(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    body: axum::body::Bytes,
) -> Result<Response> {
    require_full(&id)?;
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
