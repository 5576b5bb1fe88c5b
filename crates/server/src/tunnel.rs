//! How a forwarded request travels once `forward` has chosen the member: bodies stream
//! both ways on the pooled HTTP/2 connection, and upgrades get a connection of their own
//! that is spliced to the client's.
//!
//! ```text
//!  ordinary:  client body ─> Watched ─> h2 stream to the owner ─> owner
//!             client <─ Idle <─ h2 stream <─ owner's response body
//!             (flow control end to end: a slow reader slows the writer; nothing is
//!              collected; at most a window per stream in flight)
//!  upgrade:   client ──Upgrade──> front ──fresh HTTP/1.1 mTLS──> owner
//!             owner 101 ─> client 101, then bytes copied both ways through two
//!             SPLICE_BUFFER buffers until either side closes (or the member stops)
//! ```
//!
//! Invariants:
//! - A request body's size and pace are the gate's (`Bounded`): JSON bodies 1 MiB,
//!   streamed routes `--max-stream-body`. When the gate cuts a body off, the client gets
//!   the gate's error (413 or 408) from here, not a vague "member unreachable".
//! - The owner must make progress: a request fails when the owner neither takes body nor
//!   answers for `cluster.forward_timeout` (time spent waiting on a slow client does not
//!   count), and a response body fails when the owner sends nothing for as long while
//!   the client is waiting for more.
//! - An upgrade is forwarded only after the front member has authenticated the caller
//!   and the route's access allowed it; identity travels in `X-Incus-forwarded-*`, set by
//!   the front member (a client's own are stripped by `auth`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody};
use axum::response::Response;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;

use crate::context::Ctx;
use crate::forward::ForwardError;
use crate::peers::PeerError;
use crate::response::{error_response, ApiError};

/// The buffer in each direction of a spliced upgrade.
pub const SPLICE_BUFFER: usize = 16 * 1024;

/// Sends `req` (URI a path and query, headers ready) to the member `name` at `address`
/// and relays its answer, bodies streamed both ways. `timeout` bounds how long the owner
/// may make no progress.
pub async fn stream(
    ctx: &Ctx,
    name: &str,
    address: &str,
    req: http::Request<Body>,
    timeout: Duration,
) -> Response {
    let (parts, body) = req.into_parts();
    let watch = Arc::new(Watch::new());
    let body = Body::new(Watched {
        inner: body,
        watch: watch.clone(),
    });
    let call = ctx.peers.forward(address, http::Request::from_parts(parts, body));
    // A member declared hung fails what waits on it now, not at the end of a long wait.
    let lost = ctx.liveness.watch(name);
    tokio::pin!(call, lost);
    // The first check is one period in: an interval's immediate first tick would only
    // cost every forwarded request a wasted turn of this loop.
    let period = (timeout / 8).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let result = loop {
        tokio::select! {
            r = &mut call => break r,
            _ = &mut lost => {
                ctx.peers.forget(address);
                return failed(name, PeerError::Timeout { address: address.to_string(), after: ctx.settings().forward_timeout });
            }
            _ = tick.tick() => {
                if let Some(e) = watch.failure() {
                    return error_response(&e);
                }
                if watch.stalled(timeout) {
                    ctx.peers.forget(address);
                    return failed(name, PeerError::Timeout { address: address.to_string(), after: timeout });
                }
            }
        }
    };
    match result {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            Response::from_parts(parts, Body::new(Idle::new(body, timeout)))
        }
        Err(e) => {
            // The client's body was cut off by its own bounds: say so, not "unreachable".
            if let Some(e) = watch.failure() {
                return error_response(&e);
            }
            ctx.peers.forget(address);
            failed(name, e)
        }
    }
}

fn failed(name: &str, error: PeerError) -> Response {
    let error = ForwardError::new(name, error);
    tracing::info!(member = %name, error = %error, "forwarding failed");
    error_response(&error.into())
}

/// Whether a request asks to switch protocols (websocket, `Upgrade: sftp`) and came on a
/// connection that can (HTTP/1.1): then the client's half of the upgrade.
pub fn take_upgrade(req: &mut http::Request<Body>) -> Option<hyper::upgrade::OnUpgrade> {
    if !asks_upgrade(req.headers()) {
        return None;
    }
    req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>()
}

/// `Upgrade: X` with `Connection: upgrade` (among other tokens).
fn asks_upgrade(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::UPGRADE)
        && headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Carries an upgrade to the member `name` at `address` on a fresh HTTP/1.1 connection
/// and, once it switches protocols, splices it to the client's. `req` has its headers
/// ready (the `Upgrade` and `Connection` headers included); `timeout` bounds the
/// connection and the owner's answer.
pub async fn upgrade(
    ctx: &Ctx,
    name: &str,
    address: &str,
    req: http::Request<Body>,
    client: hyper::upgrade::OnUpgrade,
    timeout: Duration,
) -> Response {
    let sftp = req
        .headers()
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"sftp"));
    let open = async {
        let http = |source| PeerError::Http {
            address: address.to_string(),
            source,
        };
        let stream = ctx.peers.connect_http1(address).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "tunnel connection ended with an error");
            }
        });
        sender.send_request(req).await.map_err(http)
    };
    let mut resp = match tokio::time::timeout(timeout, open).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return failed(name, e),
        Err(_) => {
            let address = address.to_string();
            return failed(
                name,
                PeerError::Timeout {
                    address,
                    after: timeout,
                },
            );
        }
    };
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        // A refusal: relayed as any answer.
        let (parts, body) = resp.into_parts();
        return Response::from_parts(parts, Body::new(Idle::new(body, timeout)));
    }
    let owner = hyper::upgrade::on(&mut resp);
    let (parts, _) = resp.into_parts();
    let mut closing = ctx.closing.subscribe();
    let member = name.to_string();
    let lost = ctx.liveness.watch(name);
    tokio::spawn(async move {
        let both = async { tokio::try_join!(client, owner) };
        let (client, owner) = match tokio::time::timeout(timeout, both).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                tracing::debug!(member = %member, error = %e, "an upgrade did not complete");
                return;
            }
            Err(_) => {
                tracing::debug!(member = %member, "an upgrade did not complete in time");
                return;
            }
        };
        let (mut client, mut owner) = (TokioIo::new(client), TokioIo::new(owner));
        let splice = async {
            if sftp {
                // Packet by packet, so that a lost owner is named to the client.
                crate::sftp_relay::splice(&mut client, &mut owner, &member, lost).await
            } else {
                // A hung owner ends the session; the operation's failure names it.
                tokio::select! {
                    r = tokio::io::copy_bidirectional_with_sizes(
                        &mut client,
                        &mut owner,
                        SPLICE_BUFFER,
                        SPLICE_BUFFER,
                    ) => r.map(drop),
                    _ = lost => Err(std::io::Error::other("the member stopped answering")),
                }
            }
        };
        tokio::select! {
            r = splice => {
                if let Err(e) = r {
                    tracing::debug!(member = %member, error = %e, "a tunnelled connection ended with an error");
                }
            }
            _ = transport::listen::stopped(&mut closing) => {}
        }
    });
    Response::from_parts(parts, Body::empty())
}

/// How a forwarded request body moves: when it last moved, whether it is waiting for the
/// client (not the owner's fault), whether it is done, and why it failed.
struct Watch {
    since: Instant,
    last_ms: AtomicU64,
    on_client: AtomicBool,
    failed: Mutex<Option<ApiError>>,
}

impl Watch {
    fn new() -> Self {
        Watch {
            since: Instant::now(),
            last_ms: AtomicU64::new(0),
            on_client: AtomicBool::new(false),
            failed: Mutex::new(None),
        }
    }

    fn moved(&self) {
        self.last_ms
            .store(self.since.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether the owner has kept the request from moving for longer than `limit`.
    fn stalled(&self, limit: Duration) -> bool {
        if self.on_client.load(Ordering::Relaxed) {
            return false;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.since.elapsed().saturating_sub(last) > limit
    }

    fn failure(&self) -> Option<ApiError> {
        self.failed.lock().ok().and_then(|f| f.clone())
    }
}

/// A request body on its way to the owner, reporting how it moves to its [`Watch`].
struct Watched {
    inner: Body,
    watch: Arc<Watch>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let watch = &this.watch;
        watch.on_client.store(polled.is_pending(), Ordering::Relaxed);
        match polled {
            Poll::Ready(Some(Err(e))) => {
                let err = crate::gate::body_error(e, 0);
                let cut = axum::Error::new(std::io::Error::other(err.message.clone()));
                if let Ok(mut f) = watch.failed.lock() {
                    *f = Some(err);
                }
                Poll::Ready(Some(Err(cut)))
            }
            Poll::Pending => Poll::Pending,
            other => {
                watch.moved();
                other
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body from the owner that fails when the owner sends nothing for `limit`
/// while the client waits for more (time the client spends not reading does not count).
struct Idle<B = Incoming> {
    inner: B,
    limit: Duration,
    waiting: bool,
    /// Made the first time the member keeps us waiting: a small body that is already
    /// here when the response is (most answers) never needs a timer.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Idle<B> {
    fn new(inner: B, limit: Duration) -> Self {
        Idle {
            inner,
            limit,
            waiting: false,
            deadline: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the member sent nothing for {0:?}")]
struct Silent(Duration);

impl<B> HttpBody for Idle<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.waiting = false;
                Poll::Ready(r.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    let at = tokio::time::Instant::now() + this.limit;
                    match &mut this.deadline {
                        Some(d) => d.as_mut().reset(at),
                        None => this.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
                    }
                }
                let Some(deadline) = this.deadline.as_mut() else {
                    return Poll::Pending;
                };
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Silent(this.limit))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_stalls_only_on_the_owner() {
        let w = Watch::new();
        assert!(!w.stalled(Duration::from_secs(3600)));
        std::thread::sleep(Duration::from_millis(2));
        assert!(w.stalled(Duration::ZERO));
        w.on_client.store(true, Ordering::Relaxed);
        assert!(!w.stalled(Duration::ZERO), "waiting on the client is not a stall");
    }

    #[test]
    fn an_upgrade_needs_both_headers() {
        let asks = |h: &[(&str, &str)]| {
            let mut m = http::HeaderMap::new();
            for (k, v) in h {
                m.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            asks_upgrade(&m)
        };
        assert!(asks(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket")
        ]));
        assert!(asks(&[
            ("connection", "keep-alive"),
            ("connection", "upgrade"),
            ("upgrade", "sftp")
        ]));
        assert!(!asks(&[("upgrade", "websocket")]));
        assert!(!asks(&[("connection", "upgrade")]));
        assert!(!asks(&[("connection", "upgrades"), ("upgrade", "websocket")]));
    }

    /// One frame, then nothing, ever.
    struct OneThenSilence(Option<Bytes>);

    impl HttpBody for OneThenSilence {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.0.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Pending,
            }
        }
    }

    /// A body that is there passes without a timer; one that goes silent fails after
    /// the limit, counted from when it started to keep us waiting.
    #[tokio::test]
    async fn a_silent_member_fails_the_body_after_the_limit() {
        use http_body_util::BodyExt as _;
        let limit = Duration::from_millis(100);
        let mut body = Idle::new(OneThenSilence(Some(Bytes::from_static(b"x"))), limit);
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().ok(), Some(Bytes::from_static(b"x")));
        assert!(body.deadline.is_none(), "no timer while data flows");
        let started = Instant::now();
        let end = tokio::time::timeout(Duration::from_secs(30), body.frame())
            .await
            .expect("the idle limit ends the wait");
        let err = end.expect("an end").expect_err("silence is an error");
        assert!(err.to_string().contains("sent nothing"), "{err}");
        assert!(started.elapsed() >= limit);
    }
}
