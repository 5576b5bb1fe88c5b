//! The gate: whether a request may reach a handler, and how much body it may send,
//! decided from the caller and the request line alone, before any byte of the body is
//! read.
//!
//! ```text
//!  auth: member-only path, caller not a member? ──> 403 (before anything else, OpenID too)
//!  gate: the route's access (crate::route::TABLE) does not admit the caller ──> 403
//!        untrusted caller with a body, on a path that takes none from it ──> 403
//!        body larger than the route allows (by Content-Length) ──> 413
//!        streamed route (an upload): no memory budget, bounded by --max-stream-body
//!        body budget (per connection and overall) not free within 5 s ──> 503
//!        else: the handler gets the body wrapped: at most the route's size, and it must
//!              arrive within 30 s plus 1 s per 64 KiB received (a trickle is cut off)
//! ```
//!
//! A refusal is decided before any of the body is read; what the client still sends is
//! read and dropped, bounded, by [`crate::unread`], so that the exchange ends cleanly.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::body::HttpBody;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use trust::Identity;

use crate::auth::ViaMember;
use crate::context::Ctx;
use crate::response::{error_response, ApiError, MAX_BODY};

/// The most an untrusted caller may send, where it may send a body at all.
pub const UNTRUSTED_MAX_BODY: usize = 64 * 1024;
/// The most a member may send in one Raft call (appends are split at 1 MiB; one record
/// may be larger).
pub const RAFT_MAX_BODY: usize = 16 * 1024 * 1024;
/// Bytes of request bodies held in memory at once, over all connections, and on one.
pub const BODIES_OVERALL: usize = 128 * 1024 * 1024;
pub const BODIES_PER_CONNECTION: usize = 8 * 1024 * 1024;
/// The largest body a streamed route accepts unless `--max-stream-body` says otherwise.
pub const DEFAULT_MAX_STREAM_BODY: u64 = 64 * 1024 * 1024 * 1024;
/// How long a request waits for room in the body budget before it is refused.
const BUDGET_WAIT: Duration = Duration::from_secs(5);
/// A body gets this long, plus one second per [`BODY_RATE`] bytes received.
pub const BODY_GRACE: Duration = Duration::from_secs(30);
pub const BODY_RATE: u64 = 64 * 1024;

/// Routes whose body is consumed as it arrives (to a file, a hash, another member) rather
/// than held: they take no memory budget, and their bound is `--max-stream-body`.
pub fn streamed(method: &http::Method, path: &str) -> bool {
    *method == http::Method::POST
        && (path == crate::routes::TEST_SINK || path == "/1.0/images" || instance_files(path))
}

/// `/1.0/instances/{name}/files`: a file pushed into an instance.
fn instance_files(path: &str) -> bool {
    path.strip_prefix("/1.0/instances/")
        .and_then(|rest| rest.strip_suffix("/files"))
        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

/// The largest body an untrusted caller may send to `method path`; `None` where it may
/// send none (every handler there refuses it anyway).
fn untrusted_body(method: &http::Method, path: &str) -> Option<usize> {
    let allowed =
        *method == http::Method::POST && matches!(path, "/1.0/certificates" | "/internal/cluster/join");
    allowed.then_some(UNTRUSTED_MAX_BODY)
}

/// Request bodies held in memory, over all connections.
pub struct Budget(Arc<Semaphore>);

impl Default for Budget {
    fn default() -> Self {
        Budget(Arc::new(Semaphore::new(BODIES_OVERALL)))
    }
}

/// Request bodies held in memory on one connection (a request extension).
#[derive(Clone)]
pub struct ConnBudget(Arc<Semaphore>);

impl Default for ConnBudget {
    fn default() -> Self {
        ConnBudget(Arc::new(Semaphore::new(BODIES_PER_CONNECTION)))
    }
}

pub async fn layer(State((ctx, test_routes)): State<(Ctx, bool)>, req: Request, next: Next) -> Response {
    let Some(id) = req.extensions().get::<Identity>().cloned() else {
        return error_response(&ApiError::forbidden());
    };
    let path = req.uri().path().to_string();
    // Access from the route table; an unknown route goes on to its 404 or 501.
    let via_member = req.extensions().get::<ViaMember>().is_some();
    let allowed = crate::route::TABLE
        .lookup(req.method(), &path, test_routes)
        .is_none_or(|found| crate::route::allows(found.route.access, &id, via_member));
    if !allowed {
        return error_response(&ApiError::forbidden());
    }
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    if id.trusted() {
        crate::unread::BeforeAnswer::trusted(&req);
    }
    // A snapshot is bounded by `--max-snapshot-size` where it is installed.
    let snapshot = path == "/internal/raft/snapshot";
    let upload = id.trusted() && streamed(req.method(), &path);
    let streamed = snapshot || upload;
    let limit = if snapshot {
        usize::MAX
    } else if upload {
        usize::try_from(ctx.max_stream_body).unwrap_or(usize::MAX)
    } else if !id.trusted() {
        match untrusted_body(req.method(), &path) {
            Some(limit) => limit,
            None => return error_response(&ApiError::forbidden()),
        }
    } else if path.starts_with("/internal/raft/") {
        RAFT_MAX_BODY
    } else {
        MAX_BODY
    };
    let declared = content_length(&req);
    if declared.is_some_and(|n| n > limit as u64) {
        return error_response(&ApiError::payload_too_large(limit));
    }
    // A streamed body goes to a file (or on) as it arrives: it holds no memory budget.
    let _permits = if streamed {
        None
    } else {
        let need = declared.map(|n| n as usize).unwrap_or(limit).min(limit);
        let conn = req.extensions().get::<ConnBudget>().cloned().unwrap_or_default();
        match reserve(&ctx.bodies, &conn, need, BUDGET_WAIT).await {
            Some(p) => Some(p),
            None => {
                return error_response(&ApiError::unavailable(
                    "Too many request bodies in flight; retry shortly",
                ))
            }
        }
    };
    let (parts, body) = req.into_parts();
    let bounded = Bounded::new(body, limit as u64);
    next.run(Request::from_parts(parts, Body::new(bounded))).await
}

fn content_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .or_else(|| req.body().size_hint().exact())
}

/// Room for `need` bytes on this connection and overall, waiting at most
/// [`BUDGET_WAIT`]; `None` when there is none.
async fn reserve(
    overall: &Budget,
    conn: &ConnBudget,
    need: usize,
    wait: Duration,
) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
    let n = u32::try_from(need.max(1)).ok()?;
    let both = async {
        let c = conn.0.clone().acquire_many_owned(n).await.ok()?;
        let o = overall.0.clone().acquire_many_owned(n).await.ok()?;
        Some((c, o))
    };
    tokio::time::timeout(wait, both).await.ok().flatten()
}

/// Why a request body was cut off.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("Request body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("Request body did not arrive in time (it must come at {BODY_RATE} bytes/s or faster after {} s)", BODY_GRACE.as_secs())]
    TooSlow,
}

/// A request body bounded in size and in time.
struct Bounded {
    inner: Body,
    limit: u64,
    received: u64,
    started: tokio::time::Instant,
    grace: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Bounded {
    fn new(inner: Body, limit: u64) -> Self {
        Self::with_grace(inner, limit, BODY_GRACE)
    }

    fn with_grace(inner: Body, limit: u64, grace: Duration) -> Self {
        let started = tokio::time::Instant::now();
        Bounded {
            inner,
            limit,
            received: 0,
            started,
            grace,
            deadline: Box::pin(tokio::time::sleep_until(started + grace)),
        }
    }
}

impl HttpBody for Bounded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if this.received > this.limit {
                        return Poll::Ready(Some(Err(axum::Error::new(BodyError::TooLarge(this.limit)))));
                    }
                    let allowed = this.grace + Duration::from_secs(this.received / BODY_RATE);
                    this.deadline.as_mut().reset(this.started + allowed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyError::TooSlow)))),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The API error for a body that could not be read: too large, too slow, or broken.
pub fn body_error(e: axum::Error, limit: usize) -> ApiError {
    // Bodies wrapped in bodies wrap their errors too: look at the innermost one.
    let mut inner = e.into_inner();
    while inner.is::<axum::Error>() {
        match inner.downcast::<axum::Error>() {
            Ok(e) => inner = e.into_inner(),
            Err(other) => {
                inner = other;
                break;
            }
        }
    }
    match inner.downcast_ref::<BodyError>() {
        Some(BodyError::TooSlow) => ApiError::new(408, inner.to_string()),
        Some(BodyError::TooLarge(n)) => ApiError::payload_too_large(*n as usize),
        None if inner.is::<http_body_util::LengthLimitError>() => ApiError::payload_too_large(limit),
        None => ApiError::bad_request(format!("Failed to read the request body: {inner}")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn files_pushed_into_an_instance_stream() {
        let post = http::Method::POST;
        assert!(streamed(&post, "/1.0/instances/c1/files"));
        assert!(!streamed(&http::Method::GET, "/1.0/instances/c1/files"));
        assert!(!streamed(&post, "/1.0/instances//files"));
        assert!(!streamed(&post, "/1.0/instances/c1/x/files"));
        assert!(!streamed(&post, "/1.0/instances/c1"));
    }

    #[test]
    fn untrusted_callers_send_bodies_to_two_routes_only() {
        let post = http::Method::POST;
        assert_eq!(
            untrusted_body(&post, "/1.0/certificates"),
            Some(UNTRUSTED_MAX_BODY)
        );
        assert_eq!(
            untrusted_body(&post, "/internal/cluster/join"),
            Some(UNTRUSTED_MAX_BODY)
        );
        assert_eq!(untrusted_body(&http::Method::PUT, "/1.0/certificates"), None);
        assert_eq!(untrusted_body(&post, "/internal/raft/append"), None);
        assert_eq!(untrusted_body(&http::Method::PUT, "/1.0"), None);
    }

    #[tokio::test]
    async fn bodies_held_are_budgeted_per_connection_and_overall() {
        let wait = Duration::from_millis(50);
        let overall = Budget::default();
        let conn = ConnBudget::default();
        let mib = 1024 * 1024;
        let mut held = Vec::new();
        while let Some(p) = reserve(&overall, &conn, mib, wait).await {
            held.push(p);
        }
        // The connection's budget is full: the next one waited, then was refused.
        assert_eq!(held.len(), BODIES_PER_CONNECTION / mib);
        // Another connection still has room, until the overall budget runs out.
        let mut others = Vec::new();
        loop {
            let c = ConnBudget::default();
            match reserve(&overall, &c, BODIES_PER_CONNECTION, wait).await {
                Some(p) => others.push(p),
                None => break,
            }
        }
        assert_eq!(others.len() + 1, BODIES_OVERALL / BODIES_PER_CONNECTION);
        assert!(reserve(&overall, &ConnBudget::default(), mib, wait)
            .await
            .is_none());
        drop(held);
        assert!(reserve(&overall, &conn, mib, wait).await.is_some());
    }

    async fn read(body: Bounded) -> Result<Bytes, axum::Error> {
        use http_body_util::BodyExt;
        body.collect().await.map(|c| c.to_bytes())
    }

    #[tokio::test]
    async fn a_body_over_its_limit_is_cut_off() {
        let b = Bounded::new(Body::from(vec![0u8; 100]), 10);
        let e = read(b).await.unwrap_err();
        assert_eq!(body_error(e, 10).status, 413);
        let b = Bounded::new(Body::from(vec![0u8; 10]), 10);
        assert_eq!(read(b).await.unwrap().len(), 10);
    }

    #[tokio::test]
    async fn a_trickle_is_cut_off_after_the_grace_period() {
        let (tx, rx) = futures_channel();
        let b = Bounded::with_grace(rx, 1 << 20, Duration::from_millis(300));
        let reader = tokio::spawn(read(b));
        // A byte every 20 ms: far under the rate, so no more time is earned.
        for _ in 0..200 {
            if reader.is_finished() || tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let e = reader.await.unwrap().unwrap_err();
        assert_eq!(body_error(e, 0).status, 408);
    }

    pub(crate) type Sender = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

    /// A request body fed through a channel, a frame at a time.
    pub(crate) fn futures_channel() -> (Sender, Body) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let stream =
            futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
        (tx, Body::new(http_body_util::StreamBody::new(stream)))
    }
}
