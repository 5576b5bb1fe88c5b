//! How a forwarded request travels once `forward` has chosen the member: bodies stream
//! both ways on the pooled HTTP/2 connection, websockets too (as extended CONNECT
//! streams), and other upgrades get a connection of their own; an upgrade is spliced to
//! the client's connection.
//!
//! ```text
//!  ordinary:  client body ─> Watched ─> h2 stream to the owner ─> owner
//!             client <─ Idle <─ h2 stream <─ owner's response body
//!             (flow control end to end: a slow reader slows the writer; nothing is
//!              collected; at most a window per stream in flight)
//!  websocket: client ──Upgrade: websocket──> front ──CONNECT :protocol websocket
//!             (a stream of the pooled h2 connection)──> owner
//!             owner 200 ─> client 101 (Sec-WebSocket-Accept of the client's key)
//!  upgrade:   client ──Upgrade: sftp──> front ──fresh HTTP/1.1 mTLS──> owner
//!             owner 101 ─> client 101
//!  then:      bytes copied both ways through two SPLICE_BUFFER buffers until the
//!             owner's side ends (or the member stops): what it sent is read out to
//!             the client even when the client's last bytes could not reach it;
//!             websocket frames pass untouched
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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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

/// Carries an upgrade to the member `name` at `address` and, once it switches
/// protocols, splices it to the client's. A websocket travels as an HTTP/2 extended
/// CONNECT (RFC 8441) on the pooled member connection: no connection or handshake of its
/// own, which is most of what a forwarded websocket costs (an exec opens four). Anything
/// else (`Upgrade: sftp`), and a websocket to a member that does not offer extended
/// CONNECT, gets a fresh HTTP/1.1 connection. `req` has its headers ready (the `Upgrade`
/// and `Connection` headers included); `timeout` bounds the connection and the owner's
/// answer.
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
    let (parts, body) = req.into_parts();
    let h2 = websocket_key(&parts.headers).and_then(|key| Some((key, H2Slot::take()?)));
    if let Some((key, slot)) = h2 {
        match tokio::time::timeout(timeout, websocket_h2(ctx, address, &parts)).await {
            Ok(Ok(mut resp)) if resp.status() == http::StatusCode::OK => {
                let owner = hyper::upgrade::on(&mut resp);
                let switched = switched(&key, resp.headers());
                let pair = Pair {
                    client,
                    owner,
                    slot: Some(slot),
                };
                return splice_when_ready(ctx, name, pair, sftp, timeout, switched);
            }
            Ok(Ok(resp)) => return refused(resp, timeout),
            Ok(Err(e)) => {
                tracing::debug!(member = %name, error = %e, "no websocket over HTTP/2: trying HTTP/1.1");
            }
            Err(_) => return timed_out(name, address, timeout),
        }
    }
    let req = http::Request::from_parts(parts, body);
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
        Err(_) => return timed_out(name, address, timeout),
    };
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return refused(resp, timeout);
    }
    let owner = hyper::upgrade::on(&mut resp);
    let (parts, _) = resp.into_parts();
    let pair = Pair {
        client,
        owner,
        slot: None,
    };
    splice_when_ready(ctx, name, pair, sftp, timeout, parts)
}

/// The most websockets this member tunnels as streams of its pooled member connections
/// at once; more get connections of their own. Long sessions (a shell may idle for
/// hours) then never take the streams that ordinary forwarded requests need: a member
/// connection carries 256 at a time.
const H2_TUNNELS: usize = 64;
static IN_H2: AtomicUsize = AtomicUsize::new(0);

/// One of the [`H2_TUNNELS`], held for as long as its tunnel lives.
struct H2Slot;

impl H2Slot {
    fn take() -> Option<H2Slot> {
        IN_H2
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < H2_TUNNELS).then_some(n + 1)
            })
            .ok()
            .map(|_| H2Slot)
    }
}

impl Drop for H2Slot {
    fn drop(&mut self) {
        IN_H2.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Both halves of an upgrade, and the slot its tunnel holds, if any.
struct Pair {
    client: hyper::upgrade::OnUpgrade,
    owner: hyper::upgrade::OnUpgrade,
    slot: Option<H2Slot>,
}

/// The owner's refusal of an upgrade, relayed as any answer.
fn refused(resp: http::Response<Incoming>, timeout: Duration) -> Response {
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, Body::new(Idle::new(body, timeout)))
}

fn timed_out(name: &str, address: &str, timeout: Duration) -> Response {
    failed(
        name,
        PeerError::Timeout {
            address: address.to_string(),
            after: timeout,
        },
    )
}

/// Once both sides have switched, copies bytes both ways until either closes, the
/// owner is declared lost or the member stops; `parts` is the client's 101.
fn splice_when_ready(
    ctx: &Ctx,
    name: &str,
    pair: Pair,
    sftp: bool,
    timeout: Duration,
    parts: http::response::Parts,
) -> Response {
    let mut closing = ctx.closing.subscribe();
    let member = name.to_string();
    let lost = ctx.liveness.watch(name);
    let Pair { client, owner, slot } = pair;
    tokio::spawn(async move {
        let _slot = slot;
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
                    r = splice_bytes(&mut client, &mut owner) => r,
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

/// Copies bytes both ways through a [`SPLICE_BUFFER`] each until the owner's side ends,
/// passing on each side's end of stream. The owner's side decides the end: when the
/// client's bytes can no longer reach it (it finished and reset its stream), what it
/// sent before is still read out to the client. A copy that ends at the first error
/// either way would drop it: a command's last output, sent just before the owner closed
/// while the client was still sending (a stdin barrier, a window resize).
async fn splice_bytes<C, O>(client: C, owner: O) -> std::io::Result<()>
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    O: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let (client_r, mut client_w) = tokio::io::split(client);
    let (owner_r, mut owner_w) = tokio::io::split(owner);
    let up = async {
        let mut from = tokio::io::BufReader::with_capacity(SPLICE_BUFFER, client_r);
        let r = tokio::io::copy_buf(&mut from, &mut owner_w).await;
        let _ = owner_w.shutdown().await;
        r
    };
    let down = async {
        let mut from = tokio::io::BufReader::with_capacity(SPLICE_BUFFER, owner_r);
        let r = tokio::io::copy_buf(&mut from, &mut client_w).await;
        let _ = client_w.shutdown().await;
        r
    };
    tokio::pin!(up, down);
    let mut up_result = None;
    loop {
        tokio::select! {
            r = &mut up, if up_result.is_none() => up_result = Some(r),
            d = &mut down => {
                // The client's side failing only because the owner had gone is no error.
                return d.map(drop);
            }
        }
    }
}

/// The client's `Sec-WebSocket-Key` when the request is a websocket handshake (version
/// 13) that can travel as an extended CONNECT.
fn websocket_key(headers: &http::HeaderMap) -> Option<http::HeaderValue> {
    let websocket = headers
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let version = headers
        .get(http::header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    websocket.then_some(()).filter(|_| version)?;
    headers.get(http::header::SEC_WEBSOCKET_KEY).cloned()
}

/// Sends the websocket handshake `parts` to the owner as an extended CONNECT on the
/// pooled HTTP/2 connection: the same path, query and headers (the forwarded identity
/// included) less those of the HTTP/1.1 handshake.
async fn websocket_h2(
    ctx: &Ctx,
    address: &str,
    parts: &http::request::Parts,
) -> Result<http::Response<Incoming>, PeerError> {
    let mut req = http::Request::new(Body::empty());
    *req.method_mut() = http::Method::CONNECT;
    *req.uri_mut() = parts.uri.clone();
    for (k, v) in parts.headers.iter() {
        if !h1_handshake_only(k) {
            req.headers_mut().append(k.clone(), v.clone());
        }
    }
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    ctx.peers.exchange(address, req).await
}

/// Headers that belong to the HTTP/1.1 handshake (or to its connection) and have no
/// place in an HTTP/2 extended CONNECT.
fn h1_handshake_only(name: &http::HeaderName) -> bool {
    use http::header;
    [
        header::HOST,
        header::CONNECTION,
        header::UPGRADE,
        header::SEC_WEBSOCKET_KEY,
        header::TRANSFER_ENCODING,
        header::TE,
        header::CONTENT_LENGTH,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// The client's 101 for a websocket the owner accepted over HTTP/2: the accept key of
/// the client's own key, and the subprotocol the owner chose, if any.
fn switched(key: &http::HeaderValue, owner: &http::HeaderMap) -> http::response::Parts {
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut resp = Response::new(());
    *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    h.insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = owner.get(http::header::SEC_WEBSOCKET_PROTOCOL) {
        h.insert(http::header::SEC_WEBSOCKET_PROTOCOL, p.clone());
    }
    resp.into_parts().0
}

/// Marks a websocket that came as an HTTP/2 extended CONNECT, as [`as_h1_websocket`]
/// rewrote it.
#[derive(Debug, Clone, Copy)]
pub struct H2Websocket;

/// A websocket over HTTP/2 (RFC 8441, what [`upgrade`] sends the owner) is handled as
/// the HTTP/1.1 handshake it stands for, so every websocket route serves both with one
/// GET handler: the request becomes that GET (here, before routing), and its 101 the
/// 200 that accepts an extended CONNECT ([`h2_websocket`]). [`connect_guard`] lets it
/// through only from a member.
pub fn as_h1_websocket<B>(req: &mut http::Request<B>) {
    let websocket = req.method() == http::Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str() == "websocket");
    if !websocket {
        return;
    }
    *req.method_mut() = http::Method::GET;
    *req.version_mut() = http::Version::HTTP_11;
    let h = req.headers_mut();
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    h.insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
    // The key only proves an HTTP/1.1 handshake; the answer's accept key is dropped.
    h.insert(
        http::header::SEC_WEBSOCKET_KEY,
        http::HeaderValue::from_static("c3RhcGVzIHR1bm5lbCBrZXk="),
    );
    req.extensions_mut().insert(H2Websocket);
}

/// The answer to a websocket [`as_h1_websocket`] rewrote: its 101 becomes a 200.
pub async fn h2_websocket(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let h2 = req.extensions().get::<H2Websocket>().is_some();
    let mut resp = next.run(req).await;
    if h2 && resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        *resp.status_mut() = http::StatusCode::OK;
        let h = resp.headers_mut();
        for k in [
            http::header::CONNECTION,
            http::header::UPGRADE,
            http::header::SEC_WEBSOCKET_ACCEPT,
        ] {
            h.remove(k);
        }
    }
    resp
}

/// Lets a websocket over HTTP/2 through only from a member: members use it to tunnel
/// to each other, and nothing else may skip the HTTP/1.1 handshake's checks. Runs after
/// `auth`.
pub async fn connect_guard(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let h2 = req.extensions().get::<H2Websocket>().is_some();
    if h2 && req.extensions().get::<crate::auth::ViaMember>().is_none() {
        return error_response(&ApiError::not_implemented());
    }
    next.run(req).await
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

    #[test]
    fn a_websocket_travels_over_h2_with_its_own_accept_key() {
        let mut h = http::HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap());
        assert!(websocket_key(&h).is_none(), "no version, no websocket");
        h.insert("sec-websocket-version", "13".parse().unwrap());
        let key = websocket_key(&h).expect("a websocket handshake");
        // RFC 6455 section 1.3's example.
        let parts = switched(&key, &http::HeaderMap::new());
        assert_eq!(parts.status, http::StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            parts.headers["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(parts.headers["upgrade"], "websocket");
        assert!(!parts.headers.contains_key("sec-websocket-protocol"));
        let mut sftp = h.clone();
        sftp.insert("upgrade", "sftp".parse().unwrap());
        assert!(websocket_key(&sftp).is_none(), "sftp keeps its own connection");
        for k in ["host", "connection", "upgrade", "sec-websocket-key", "keep-alive"] {
            assert!(h1_handshake_only(&http::HeaderName::from_static(k)), "{k}");
        }
        for k in [
            "sec-websocket-version",
            "x-incus-forwarded-username",
            "user-agent",
        ] {
            assert!(!h1_handshake_only(&http::HeaderName::from_static(k)), "{k}");
        }
    }

    /// A websocket over HTTP/2 reaches a GET handler as its HTTP/1.1 handshake, only
    /// from a member, and its 101 leaves as a 200; other requests pass untouched.
    #[tokio::test]
    async fn a_members_h2_websocket_is_its_routes_get() {
        use tower::ServiceExt as _;
        let app = || {
            let handler = |req: axum::extract::Request| async move {
                let h = req.headers();
                let as_h1 = req.method() == http::Method::GET
                    && h.get("upgrade").is_some_and(|v| v == "websocket")
                    && h.contains_key("sec-websocket-key");
                let mut resp = Response::new(Body::empty());
                if as_h1 {
                    *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
                    let h = resp.headers_mut();
                    h.insert("upgrade", "websocket".parse().unwrap());
                    h.insert("sec-websocket-accept", "x".parse().unwrap());
                }
                resp
            };
            axum::Router::new()
                .route("/x", axum::routing::get(handler))
                .layer(axum::middleware::from_fn(connect_guard))
                .layer(axum::middleware::from_fn(
                    |mut req: axum::extract::Request, next: axum::middleware::Next| async move {
                        // What `auth` marks.
                        if req.headers().contains_key("member") {
                            req.extensions_mut().insert(crate::auth::ViaMember);
                        }
                        next.run(req).await
                    },
                ))
                .layer(axum::middleware::from_fn(h2_websocket))
        };
        let answer = |mut req: http::Request<Body>| async {
            as_h1_websocket(&mut req);
            app().oneshot(req).await.expect("an answer")
        };
        let connect = |websocket: bool, member: bool| {
            let mut req = http::Request::new(Body::empty());
            *req.method_mut() = http::Method::CONNECT;
            *req.version_mut() = http::Version::HTTP_2;
            *req.uri_mut() = "/x".parse().unwrap();
            if websocket {
                req.extensions_mut()
                    .insert(hyper::ext::Protocol::from_static("websocket"));
            }
            if member {
                req.headers_mut().insert("member", "1".parse().unwrap());
            }
            req
        };
        let ok = answer(connect(true, true)).await;
        assert_eq!(ok.status(), http::StatusCode::OK);
        assert!(!ok.headers().contains_key("upgrade") && !ok.headers().contains_key("sec-websocket-accept"));
        for (websocket, member) in [(true, false), (false, true), (false, false)] {
            let status = answer(connect(websocket, member)).await.status();
            assert_ne!(
                status,
                http::StatusCode::OK,
                "websocket {websocket}, member {member}"
            );
            assert_ne!(status, http::StatusCode::SWITCHING_PROTOCOLS);
        }
        let get = http::Request::get("/x").body(Body::empty()).unwrap();
        assert_eq!(
            answer(get).await.status(),
            http::StatusCode::OK,
            "a GET passes untouched"
        );
    }

    #[test]
    fn h2_tunnels_are_bounded_and_their_slots_come_back() {
        let held: Vec<H2Slot> = std::iter::from_fn(H2Slot::take).take(H2_TUNNELS + 1).collect();
        assert_eq!(held.len(), H2_TUNNELS, "no more than the bound");
        assert!(H2Slot::take().is_none(), "the next gets a connection of its own");
        drop(held);
        assert!(H2Slot::take().is_some(), "an ended tunnel gives its slot back");
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

    /// The client still sends (a stdin barrier) when the owner has already sent its
    /// last output and closed: the output reaches the client all the same.
    #[tokio::test]
    async fn an_owners_last_output_reaches_the_client_it_could_not_hear() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut far) = tokio::io::duplex(1 << 16);
        far.write_all(b"\x81\x00").await.unwrap();
        // An owner that has finished: what it sent is still there to read, and it takes
        // nothing more (its stream was reset).
        let (gone, _) = tokio::io::duplex(64);
        let owner = tokio::io::join(
            std::io::Cursor::new(b"/dev/pts/0 and a close frame".to_vec()),
            gone,
        );
        tokio::time::timeout(Duration::from_secs(5), splice_bytes(client, owner))
            .await
            .expect("the splice ends with the owner")
            .unwrap();
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"/dev/pts/0 and a close frame");
    }
}
