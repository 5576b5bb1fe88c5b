//! What is left of a request body once the answer is ready, read and dropped so that the
//! exchange ends cleanly whatever the body's size, without holding it and within bounds.
//!
//! ```text
//!  request body ─> Kept (held here) ─> auth, gate, handler: may answer before reading it
//!  h2:       headers, body of the answer ──> client         (sent at once, nothing waits)
//!            then the rest is read and dropped ≤ AFTER_ANSWER_MAX bytes, ≤ AFTER_ANSWER_TIME
//!            then END_STREAM (a reset with NO_ERROR if the client still sends)
//!  HTTP/1.1: a rest ≤ 256 KiB (4 MiB from a trusted caller), declared or chunked, is
//!            read and dropped first, then the answer; a larger one is left unread (a
//!            chunked one once past the bound) and the connection is closed after it
//! ```
//!
//! Over h2 a server may answer and then reset the stream with NO_ERROR (RFC 9113 §8.1),
//! and h2 does so when the request body is dropped after a complete response. But
//! clients such as curl 7.x fail a transfer (error 92) whose reset arrives before they
//! have looked at the answer, and the answer, its end and the reset would leave in one
//! write. Holding the end of the response until the client has seen the answer and
//! stopped sending (curl ends its stream as soon as it reads an error status) avoids
//! that, for every early answer: 401 and 403 from `auth`, 403, 413 and 503 from the
//! gate, and handlers that answer before reading.
//!
//! HTTP/1.1 cannot do the same: once the answer's last byte is written, hyper drops the
//! request body and closes the connection, and a client still writing may see a reset
//! instead of the answer. There a small rest is read before the answer (the client then
//! has finished sending when it comes), as Go's server (and so Incus) does.
//!
//! Reading and dropping holds no memory beyond one frame, and the bounds hold for every
//! caller: a stranger cannot keep a stream busy nor make the member read without end.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

/// The most of a body read and dropped after the answer (h2): well over the windows a
/// client may fill before it reads the answer (1 MiB per stream and per connection).
pub const AFTER_ANSWER_MAX: u64 = 8 * 1024 * 1024;
/// How long the rest of a body may take after the answer (h2).
pub const AFTER_ANSWER_TIME: Duration = Duration::from_secs(5);
/// The largest rest read before the answer over HTTP/1.1, from a stranger (as much as
/// Go's server reads for anyone) and from a trusted caller.
pub const BEFORE_ANSWER_MAX: u64 = 256 * 1024;
pub const BEFORE_ANSWER_MAX_TRUSTED: u64 = 4 * 1024 * 1024;

/// How much of the rest may be read before an HTTP/1.1 answer; raised by the gate once
/// it knows the caller is trusted (a request extension).
#[derive(Clone)]
pub struct BeforeAnswer(Arc<AtomicU64>);

impl BeforeAnswer {
    /// The caller is trusted: it may have more of its body read before the answer.
    pub fn trusted(req: &Request) {
        if let Some(b) = req.extensions().get::<BeforeAnswer>() {
            b.0.store(BEFORE_ANSWER_MAX_TRUSTED, Ordering::Relaxed);
        }
    }
}

/// The outermost layer: keeps a hold on the request body, and reads what the handler
/// left of it (within the bounds) before the answer ends.
pub async fn layer(mut req: Request, next: Next) -> Response {
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let h2 = req.version() == http::Version::HTTP_2;
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let before = BeforeAnswer(Arc::new(AtomicU64::new(BEFORE_ANSWER_MAX)));
    req.extensions_mut().insert(before.clone());
    let (parts, body) = req.into_parts();
    let kept = Kept(Arc::new(Mutex::new(body)));
    let resp = next
        .run(Request::from_parts(parts, Body::new(kept.clone())))
        .await;
    if h2 {
        return resp.map(|answer| {
            Body::new(AnswerThenRest {
                answer,
                rest: Some(Rest::bounded(kept, AFTER_ANSWER_MAX, AFTER_ANSWER_TIME)),
            })
        });
    }
    // A refusal for want of room is never delayed by reading. A chunked body says
    // nothing of its size: it is read up to the bound, as Go's server does.
    let limit = before.0.load(Ordering::Relaxed);
    if resp.status() != http::StatusCode::SERVICE_UNAVAILABLE && declared.is_none_or(|n| n <= limit) {
        let mut rest = Rest::bounded(kept, limit, crate::gate::BODY_GRACE);
        std::future::poll_fn(|cx| rest.poll_done(cx)).await;
    }
    resp
}

/// A request body the handler reads while this layer keeps a hold on it.
#[derive(Clone)]
struct Kept(Arc<Mutex<Body>>);

impl HttpBody for Kept {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut body = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Pin::new(&mut *body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.lock().map(|b| b.is_end_stream()).unwrap_or(true)
    }

    fn size_hint(&self) -> SizeHint {
        self.0.lock().map(|b| b.size_hint()).unwrap_or_default()
    }
}

/// What is left of a request body, read and dropped after the answer.
struct Rest<B> {
    body: B,
    read: u64,
    max: u64,
    time: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B: HttpBody + Unpin> Rest<B> {
    fn bounded(body: B, max: u64, time: Duration) -> Self {
        Rest {
            body,
            read: 0,
            max,
            time,
            deadline: None,
        }
    }

    /// Ready once the body has ended, failed, or passed a bound.
    fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let time = self.time;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(time)));
        loop {
            if self.body.is_end_stream() || self.read > self.max {
                return Poll::Ready(());
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        self.read += bytes::Buf::remaining(data) as u64;
                    }
                }
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return deadline.as_mut().poll(cx),
            }
        }
    }
}

impl<B> Drop for Rest<B> {
    fn drop(&mut self) {
        if self.read > 0 {
            tracing::debug!(
                bytes = self.read,
                "read and dropped the rest of a request body after the answer"
            );
        }
    }
}

/// The answer, then the rest of the request body (read and dropped), then the end.
struct AnswerThenRest<B> {
    answer: Body,
    rest: Option<Rest<B>>,
}

impl<B: HttpBody + Unpin> HttpBody for AnswerThenRest<B> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if !this.answer.is_end_stream() {
            match Pin::new(&mut this.answer).poll_frame(cx) {
                Poll::Ready(None) => {}
                other => return other,
            }
        }
        if let Some(rest) = this.rest.as_mut() {
            if rest.poll_done(cx).is_pending() {
                return Poll::Pending;
            }
            this.rest = None;
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.answer.is_end_stream() && self.rest.as_ref().is_none_or(|r| r.body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.answer.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    use crate::gate::tests::futures_channel as channel_body;

    fn answer_then(rest: Rest<Body>) -> AnswerThenRest<Body> {
        AnswerThenRest {
            answer: Body::from("refused"),
            rest: Some(rest),
        }
    }

    #[tokio::test]
    async fn the_answer_comes_before_the_rest_is_read_and_the_end_after() {
        let (tx, request) = channel_body();
        let mut body = answer_then(Rest::bounded(request, 1 << 20, Duration::from_secs(60)));
        assert_eq!(body.size_hint().exact(), Some(7));
        assert!(!body.is_end_stream());
        // The answer is there at once, though nothing of the request body has come.
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "refused");
        // The end waits for the request body to end.
        let end = tokio::spawn(async move { body.frame().await.is_none() });
        for _ in 0..3 {
            tx.send(Ok(Frame::data(Bytes::from(vec![0u8; 1000]))))
                .await
                .unwrap();
        }
        assert!(!end.is_finished());
        drop(tx);
        assert!(end.await.unwrap());
    }

    #[tokio::test]
    async fn reading_the_rest_stops_at_its_size_bound() {
        let (tx, request) = channel_body();
        let mut body = answer_then(Rest::bounded(request, 10_000, Duration::from_secs(60)));
        body.frame().await.unwrap().unwrap();
        let end = tokio::spawn(async move { body.frame().await.is_none() });
        let mut sent = 0;
        while !end.is_finished() && sent < 1000 {
            if tx
                .send(Ok(Frame::data(Bytes::from(vec![0u8; 1000]))))
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
            tokio::task::yield_now().await;
        }
        assert!(end.await.unwrap());
        assert!(sent <= 20, "{sent} KB read past a 10 KB bound");
    }

    #[tokio::test]
    async fn reading_the_rest_stops_at_its_time_bound() {
        let (tx, request) = channel_body();
        let mut body = answer_then(Rest::bounded(request, 1 << 20, Duration::from_millis(200)));
        body.frame().await.unwrap().unwrap();
        // The client never ends its body; the response ends anyway.
        let end = tokio::time::timeout(Duration::from_secs(30), body.frame()).await;
        assert!(end.expect("the response ended").is_none());
        drop(tx);
    }

    #[tokio::test]
    async fn a_body_read_by_the_handler_adds_nothing() {
        let request = Body::from("{}");
        let kept = Kept(Arc::new(Mutex::new(request)));
        let mut reader = kept.clone();
        while reader.frame().await.is_some() {}
        let body = AnswerThenRest {
            answer: Body::from("ok"),
            rest: Some(Rest::bounded(kept, AFTER_ANSWER_MAX, AFTER_ANSWER_TIME)),
        };
        assert!(!body.is_end_stream());
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected, "ok");
    }
}
