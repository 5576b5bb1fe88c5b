//! One log line and one metrics sample per request.
//!
//! Client requests are logged at INFO with the client's address (a request another
//! member forwards carries its client's identity, so it is logged as the client's).
//! What members send each other on their own behalf (Raft appends, heartbeats, event
//! relays) is logged at DEBUG: an idle cluster exchanges several such requests a second,
//! and they are neither user traffic nor anything an auditor needs.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use trust::{AuthMethod, Identity};

use crate::context::Ctx;

pub async fn layer(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let identity = req.extensions().get::<Identity>().cloned();
    let resp = next.run(req).await;
    let elapsed = start.elapsed();
    let status = resp.status().as_u16();
    ctx.metrics.record_request(status, elapsed);
    let (user, protocol, address) = identity
        .as_ref()
        .map(|i| (i.username.as_str(), i.method.as_str(), i.address.as_str()))
        .unwrap_or_default();
    let duration_us = elapsed.as_micros() as u64;
    macro_rules! request_line {
        ($level:ident) => {
            tracing::$level!(
                method = %method,
                path = %path,
                status,
                duration_us,
                address,
                protocol,
                user,
                "request"
            )
        };
    }
    if identity.as_ref().is_some_and(|i| i.method == AuthMethod::Cluster) {
        request_line!(debug);
    } else {
        request_line!(info);
    }
    if status == 403 && identity.as_ref().is_some_and(|i| !i.trusted()) {
        tracing::info!(address, path = %path, "refused an untrusted caller");
    }
    resp
}
