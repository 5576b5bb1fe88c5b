//! `POST /1.0/instances/{name}/console`: the container's console on a websocket
//! operation, on the member that holds the instance (its `/websocket` reaches it
//! through any member), as Incus gives it: fds `0` (the terminal, both ways) and
//! `control` (`window-resize`), both required within 5 s.
//!
//! ```text
//!  POST console {width, height, type: console} ─> 202 websocket operation
//!     run: 0 and control connected ─> driver.console (the attachment) ─> ws 0 <-> terminal
//!          control: window-resize; control closed (the client detaches, <ctrl>+a q) ─>
//!          the attachment ends ─> Success; the console and its programs stay
//! ```
//!
//! `GET` of the same path (the console log, `incus console --show-log`) is served with
//! the instance's other logs.

use std::collections::BTreeMap;
use std::sync::Arc;

use api::types::InstanceConsolePost;
use api::ApiError;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Extension;
use trust::Identity;

use super::exec::{attach, check_running, record, resources, Sockets, CONNECT_BOUND};
use crate::context::Ctx;
use crate::ops::{Class, Requestor, Spec};
use crate::response::Result;

/// `POST /1.0/instances/{name}/console`.
pub async fn console(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    record(&ctx, &name)?;
    let post: InstanceConsolePost = crate::response::json_body(body).await?;
    match post.kind.as_str() {
        "" | "console" => {}
        "vga" => {
            return Err(ApiError::bad_request("VGA consoles are only available on virtual machines").into())
        }
        other => return Err(ApiError::bad_request(format!("Unknown console type {other:?}")).into()),
    }
    check_running(&ctx, &name).await?;
    let size = instance::WindowSize {
        cols: u16::try_from(post.width).unwrap_or(u16::MAX),
        rows: u16::try_from(post.height).unwrap_or(u16::MAX),
    };
    let mut op = Spec::task("Showing console");
    op.class = Class::Websocket;
    op.resources = Some(resources(&name));
    op.metadata = Some(BTreeMap::new());
    op.websockets = vec!["0".into(), "control".into()];
    let sockets = Sockets::new();
    op.connect = Some(sockets.connect());
    op.requestor = Some(Requestor::of(&id));
    let run_ctx = ctx.clone();
    Ok(crate::operations::start(&ctx, op, move |_| async move {
        let result = session(&run_ctx, &name, size, &sockets).await;
        sockets.close_all().await;
        result
    }))
}

async fn session(
    ctx: &Ctx,
    name: &str,
    size: instance::WindowSize,
    sockets: &Arc<Sockets>,
) -> std::result::Result<(), String> {
    if !sockets.wait_for(super::exec::required(true), CONNECT_BOUND).await {
        return Err("Timed out waiting for websockets to connect".into());
    }
    let attachment = ctx
        .driver
        .console(name, size)
        .await
        .map_err(|e| format!("Failed to attach to the console: {e}"))?;
    tracing::debug!(instance = %name, "console attached");
    // The attachment ends when the client detaches (its control socket closes, which
    // signals the attachment) or when the attaching tool ends by itself.
    attach(ctx, attachment, true, sockets).await?;
    Ok(())
}
