//! Serving HTTP on one accepted connection: HTTP/1.1 or h2 (by ALPN or preface), with
//! upgrades for websockets, bounded header reads, and a graceful close on shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tower::ServiceExt;
use transport::{Conn, ConnStream};

use crate::context::Ctx;

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may run on after shutdown begins.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub type ConnHandler = Arc<dyn Fn(Conn) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The function the accept loops call for every connection.
/// It holds the daemon weakly: listeners live inside the daemon, and must not keep it
/// alive.
pub fn handler(ctx: &Ctx, router: Router) -> ConnHandler {
    let weak = Arc::downgrade(ctx);
    Arc::new(move |conn: Conn| {
        let ctx = weak.upgrade();
        let router = router.clone();
        Box::pin(async move {
            if let Some(ctx) = ctx {
                serve_conn(ctx, router, conn).await
            }
        })
    })
}

async fn serve_conn(ctx: Ctx, router: Router, conn: Conn) {
    ctx.metrics.connection_opened();
    let facts = conn.facts;
    let svc = router.map_request(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(facts.clone());
        req
    });
    let svc = TowerToHyperService::new(svc);
    let stop = ctx.closing.subscribe();
    match conn.stream {
        ConnStream::Tls(s) => drive(*s, svc, stop).await,
        ConnStream::Unix(s) => drive(s, svc, stop).await,
    }
    ctx.metrics.connection_closed();
}

async fn drive<IO, S>(io: IO, svc: S, mut stop: watch::Receiver<bool>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<hyper::Request<Incoming>, Response = axum::response::Response>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(256 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(64 * 1024);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = transport::listen::stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
        }
    }
}
