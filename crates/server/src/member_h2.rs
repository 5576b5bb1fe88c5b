//! The forwarded request without a body (`GET /1.0?target=…` and every other read) on
//! an HTTP/2 connection driven by the `h2` crate itself, not by hyper's client.
//!
//! hyper's HTTP/2 client hands each request from the caller to the connection task
//! through a channel and then spawns one more task per request to wait for its answer.
//! On the two workers of a small machine that spawn wakes the other worker (a futex
//! call and a context switch) for every forwarded request. Here the request task sends
//! on the shared connection itself and awaits the answer's head itself: per request
//! only the caller and the connection task run, as on the member that answers.
//!
//! ```text
//!  caller task ── h2 send_request (END_STREAM on HEADERS) ──> connection task ──> peer
//!       └── awaits the ResponseFuture; the body is read by whoever reads the answer,
//!           each DATA frame's window given back as it is read
//! ```
//!
//! Requests with a body (uploads, JSON writes) keep to [`crate::peers::Peers::exchange`]
//! (hyper, which streams the body under flow control); so do upgrades, which take a
//! connection of their own. The connection here is pinned, TLS-mutual and `TCP_NODELAY`
//! like every member connection ([`crate::peers`]), and pinged every
//! [`KEEPALIVE`]: a ping unanswered by the next one closes it, as hyper's client
//! keep-alive did.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

/// How often the connection is pinged; an unanswered ping closes it at the next one.
pub const KEEPALIVE: Duration = Duration::from_secs(5);
/// The receive windows (as hyper's client sets them): a large answer is not held up by
/// window updates on a fast link.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

pub type Sender = h2::client::SendRequest<Bytes>;

/// The HTTP/2 handshake on `io`; the connection is driven (and pinged) by a task of its
/// own, which ends when the connection does.
pub async fn handshake<T>(io: T) -> Result<Sender, h2::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, mut conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(64 * 1024)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    let ping = conn.ping_pong();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::spawn(Driver {
        conn,
        ping,
        tick,
        awaiting: false,
    });
    Ok(sender)
}

/// Drives one connection and its keep-alive pings.
struct Driver<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> {
    conn: h2::client::Connection<T, Bytes>,
    ping: Option<h2::PingPong>,
    tick: tokio::time::Interval,
    awaiting: bool,
}

impl<T> Future for Driver<T>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Poll::Ready(r) = Pin::new(&mut this.conn).poll(cx) {
            if let Err(e) = r {
                tracing::debug!(error = %e, "member connection ended");
            }
            return Poll::Ready(());
        }
        let Some(ping) = this.ping.as_mut() else {
            return Poll::Pending;
        };
        loop {
            if this.awaiting {
                match ping.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => this.awaiting = false,
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => {}
                }
            }
            if this.tick.poll_tick(cx).is_pending() {
                return Poll::Pending;
            }
            if this.awaiting {
                tracing::debug!("a member connection did not answer a ping in time: closed");
                return Poll::Ready(());
            }
            if ping.send_ping(h2::Ping::opaque()).is_err() {
                return Poll::Ready(());
            }
            this.awaiting = true;
        }
    }
}

/// Sends `parts` (its URI absolute) with no body and waits for the answer's head.
pub async fn send(
    sender: Sender,
    parts: http::request::Parts,
) -> Result<http::Response<MemberBody>, h2::Error> {
    let mut sender = sender.ready().await?;
    let (fut, _no_body) = sender.send_request(http::Request::from_parts(parts, ()), true)?;
    let resp = fut.await?;
    let (parts, recv) = resp.into_parts();
    let remaining = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    Ok(http::Response::from_parts(parts, MemberBody { recv, remaining }))
}

/// The body of an answer on the direct connection: DATA frames as they come, each one's
/// window handed back to the member as it is passed on, then the trailers if any.
pub struct MemberBody {
    recv: h2::RecvStream,
    /// What `Content-Length` says is still to come.
    remaining: Option<u64>,
}

impl hyper::body::Body for MemberBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        match this.recv.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => {
                let n = data.len();
                let _ = this.recv.flow_control().release_capacity(n);
                if let Some(r) = this.remaining.as_mut() {
                    *r = r.saturating_sub(n as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => match this.recv.poll_trailers(cx) {
                Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                Poll::Ready(Ok(None)) => Poll::Ready(None),
                Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                Poll::Pending => Poll::Pending,
            },
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A member that answers every request with `body` (and its length), reads what the
    /// request carried, and reports the request's method, path and end-of-stream.
    async fn member(io: tokio::io::DuplexStream, body: &'static [u8]) -> Vec<(String, String, bool)> {
        let mut conn = h2::server::handshake(io).await.unwrap();
        let mut seen = Vec::new();
        while let Some(r) = conn.accept().await {
            let (req, mut respond) = r.unwrap();
            seen.push((
                req.method().to_string(),
                req.uri().path().to_string(),
                req.body().is_end_stream(),
            ));
            let resp = http::Response::builder()
                .header("content-length", body.len())
                .body(())
                .unwrap();
            let mut send = respond.send_response(resp, false).unwrap();
            send.send_data(Bytes::from_static(body), true).unwrap();
        }
        seen
    }

    #[tokio::test]
    async fn t10_a_bodiless_request_and_its_answer() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(member(b, b"{\"type\":\"sync\"}\n"));
        let sender = handshake(a).await.unwrap();
        for _ in 0..3 {
            let (parts, ()) = http::Request::get("https://198.51.100.7:8443/1.0?target=node2")
                .body(())
                .unwrap()
                .into_parts();
            let resp = send(sender.clone(), parts).await.unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.into_body();
            assert_eq!(hyper::body::Body::size_hint(&body).exact(), Some(16));
            let bytes = body.collect().await.unwrap().to_bytes();
            assert_eq!(&bytes[..], b"{\"type\":\"sync\"}\n");
        }
        drop(sender);
        let seen = server.await.unwrap();
        assert_eq!(seen.len(), 3);
        assert!(
            seen.iter().all(|s| s == &("GET".into(), "/1.0".into(), true)),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn t50_a_member_that_closes_fails_the_next_request() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(member(b, b"x"));
        let sender = handshake(a).await.unwrap();
        let (parts, ()) = http::Request::get("https://198.51.100.7:8443/1.0")
            .body(())
            .unwrap()
            .into_parts();
        assert!(send(sender.clone(), parts.clone_head()).await.is_ok());
        server.abort();
        let _ = server.await;
        let failed = tokio::time::timeout(Duration::from_secs(10), send(sender, parts))
            .await
            .expect("a closed connection fails at once, not after a timeout");
        assert!(failed.is_err());
    }

    trait CloneHead {
        fn clone_head(&self) -> Self;
    }

    impl CloneHead for http::request::Parts {
        fn clone_head(&self) -> Self {
            let mut parts = http::Request::new(()).into_parts().0;
            parts.method = self.method.clone();
            parts.uri = self.uri.clone();
            parts.headers = self.headers.clone();
            parts
        }
    }
}
