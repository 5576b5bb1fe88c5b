//! Streamed transfers: request bodies read as they are sent ([`Upload`]), responses
//! written out as they arrive ([`Client::download`]), and connections upgraded to
//! another protocol ([`Client::upgrade`], SFTP).
//!
//! ```text
//!  upload:   connect (raced) -> headers, then the reader chunk by chunk (64 KiB) -> response
//!            bounded by progress: no byte sent and no answer for the idle limit = error
//!  download: connect + request + response head raced over the addresses (a GET)
//!            -> error status: the envelope (at most 64 KiB) ; else frames -> the sink
//!            each frame awaited under the idle limit
//!  upgrade:  connect -> GET with Upgrade -> 101 -> the raw stream (AsyncRead + AsyncWrite)
//! ```
//!
//! Nothing here reads a whole body into memory: an upload holds one chunk, a download
//! one frame. Uploads are sent once (a broken connection is
//! [`ClientError::MaybeApplied`]); downloads, being GETs, race the remote's addresses up
//! to the response head like any other read.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::client::{decode_envelope, with_bearer, Client, Request, Response};
use crate::connect::connect_then;
use crate::http::{Streaming, MAX_ERROR_BODY};
use crate::{ClientError, Endpoint};

/// The size of the chunks an upload is read and sent in.
pub const CHUNK: usize = 64 * 1024;

/// The shortest idle limit of a transfer: how long it may go without moving a byte.
pub const MIN_IDLE: Duration = Duration::from_secs(60);

/// A request body read from a stream as it is sent (chunked transfer encoding).
pub struct Upload {
    reader: Pin<Box<dyn AsyncRead + Send>>,
    content_type: String,
    sent: Arc<AtomicU64>,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("content_type", &self.content_type)
            .finish()
    }
}

/// One part of a `multipart/form-data` upload.
pub struct Part {
    /// The form field (`metadata`, `rootfs`).
    pub name: String,
    /// The file name sent with it.
    pub filename: String,
    pub reader: Pin<Box<dyn AsyncRead + Send>>,
}

impl Upload {
    pub fn new(reader: impl AsyncRead + Send + 'static, content_type: &str) -> Upload {
        Upload {
            reader: Box::pin(reader),
            content_type: content_type.to_string(),
            sent: Arc::default(),
        }
    }

    /// A `multipart/form-data` body of `parts`, in order, laid out as Go's
    /// `mime/multipart` writes it (a random boundary, `Content-Disposition` then
    /// `Content-Type: application/octet-stream` per part).
    pub fn multipart(parts: Vec<Part>) -> Upload {
        let boundary = trust::random_hex(30);
        let mut reader: Pin<Box<dyn AsyncRead + Send>> = Box::pin(tokio::io::empty());
        for (i, part) in parts.into_iter().enumerate() {
            let head = multipart_head(&boundary, i == 0, &part.name, &part.filename);
            reader = Box::pin(tokio::io::AsyncReadExt::chain(
                tokio::io::AsyncReadExt::chain(reader, io::Cursor::new(head.into_bytes())),
                part.reader,
            ));
        }
        let tail = format!("\r\n--{boundary}--\r\n");
        reader = Box::pin(tokio::io::AsyncReadExt::chain(
            reader,
            io::Cursor::new(tail.into_bytes()),
        ));
        Upload {
            reader,
            content_type: format!("multipart/form-data; boundary={boundary}"),
            sent: Arc::default(),
        }
    }

    /// A counter of the body bytes sent so far (for progress).
    pub fn sent(&self) -> Arc<AtomicU64> {
        self.sent.clone()
    }

    pub fn content_type(&self) -> &str {
        &self.content_type
    }
}

/// The header of a multipart part (pure).
pub fn multipart_head(boundary: &str, first: bool, name: &str, filename: &str) -> String {
    let escape = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "{}--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
        if first { "" } else { "\r\n" },
        escape(name),
        escape(filename),
    )
}

/// An [`Upload`] as a hyper body: one chunk read per frame.
struct ReaderBody {
    reader: Pin<Box<dyn AsyncRead + Send>>,
    buf: Vec<u8>,
    sent: Arc<AtomicU64>,
    done: bool,
}

impl Body for ReaderBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        if this.buf.len() != CHUNK {
            this.buf.resize(CHUNK, 0);
        }
        let mut rb = ReadBuf::new(&mut this.buf);
        match this.reader.as_mut().poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    this.done = true;
                    return Poll::Ready(None);
                }
                let chunk = Bytes::copy_from_slice(rb.filled());
                this.sent.fetch_add(n as u64, Ordering::Relaxed);
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// What a download answered (its body went to the sink).
#[derive(Debug, Clone)]
pub struct Download {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The address that answered.
    pub endpoint: Endpoint,
    /// Body bytes written to the sink.
    pub bytes: u64,
}

/// A response body as it arrives; the connection lives as long as the stream.
pub type BodyStream = Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, ClientError>> + Send>>;

/// A connection switched to another protocol (`101 Switching Protocols`).
pub struct Upgraded {
    io: TokioIo<hyper::upgrade::Upgraded>,
    /// The address that answered.
    pub endpoint: Endpoint,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Runs `fut`, failing it when `progress` has not moved for `limit`.
async fn with_idle_limit<T>(
    fut: impl std::future::Future<Output = Result<T, ClientError>>,
    progress: &AtomicU64,
    limit: Duration,
    what: &str,
) -> Result<T, ClientError> {
    tokio::pin!(fut);
    let mut last = progress.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            r = &mut fut => return r,
            _ = tokio::time::sleep(limit) => {
                let now = progress.load(Ordering::Relaxed);
                if now == last {
                    return Err(ClientError::Timeout { what: what.to_string(), secs: limit.as_secs() });
                }
                last = now;
            }
        }
    }
}

impl Client {
    /// How long a transfer may go without moving a byte: as set by
    /// [`Client::with_idle_limit`], else the request timeout, at least [`MIN_IDLE`].
    pub fn idle_limit(&self) -> Duration {
        self.idle_override()
            .unwrap_or_else(|| self.timeout().max(MIN_IDLE))
    }

    /// Sends `req` with `body` streamed as its body, once, and reads the (small) answer.
    /// The whole exchange is bounded by progress, not by time: it fails only when no
    /// byte was sent for [`Client::idle_limit`] and no answer came.
    pub async fn upload(&self, req: Request, body: Upload) -> Result<Response, ClientError> {
        let mut req = req;
        if let Some(auth) = self.oidc() {
            // A streamed body cannot be sent twice: make sure the token is good first
            // (a refused one is renewed here, by the ordinary request path).
            self.request(Request::get("/1.0")).await?;
            req = with_bearer(&req, &auth.fresh_token().await);
        }
        req.content_type = Some(body.content_type.clone());
        let conn = self.connect().await?;
        let endpoint = conn.endpoint.clone();
        let peer_cert = conn.peer_cert.clone();
        let sent = body.sent.clone();
        let http_req = self.http_request(
            &endpoint,
            &req,
            ReaderBody {
                reader: body.reader,
                buf: Vec::new(),
                sent: body.sent,
                done: false,
            }
            .boxed_unsync(),
        )?;
        let exchange = crate::http::exchange(conn, http_req);
        match with_idle_limit(exchange, &sent, self.idle_limit(), "the upload to make progress").await {
            Ok(resp) => Ok(Response::from_http(resp, peer_cert, endpoint)),
            Err(e) if e.is_connection_level() => {
                self.mark_failed(&endpoint);
                Err(ClientError::MaybeApplied {
                    addr: endpoint.authority(),
                    source: Box::new(e),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Sends a GET and writes the response body to `sink` as it arrives. An error status
    /// becomes [`ClientError::Api`] and writes nothing. The addresses are raced up to the
    /// response head; the body is then bounded by progress ([`Client::idle_limit`] per
    /// frame).
    pub async fn download<W: AsyncWrite + Unpin + ?Sized>(
        &self,
        req: Request,
        sink: &mut W,
    ) -> Result<Download, ClientError> {
        let (mut head, mut body) = self.get_stream(req).await?;
        while let Some(chunk) = body.next().await {
            let data = chunk?;
            sink.write_all(&data)
                .await
                .map_err(|e| ClientError::io("Failed to write the download", e))?;
            head.bytes += data.len() as u64;
        }
        sink.flush()
            .await
            .map_err(|e| ClientError::io("Failed to write the download", e))?;
        Ok(head)
    }

    /// Sends a GET and returns the response head and its body as a stream of chunks
    /// (each awaited under [`Client::idle_limit`]). An error status becomes
    /// [`ClientError::Api`].
    pub async fn get_stream(&self, req: Request) -> Result<(Download, BodyStream), ClientError> {
        let streaming = match self.oidc() {
            None => self.download_head(&req).await?,
            Some(auth) => {
                let token = auth.fresh_token().await;
                let first = self.download_head(&with_bearer(&req, &token)).await?;
                match crate::oidc::Challenge::from_response(
                    first.1.parts.status.as_u16(),
                    &first.1.parts.headers,
                ) {
                    None => first,
                    Some(challenge) => {
                        drop(first);
                        let token = self.reauthenticate(&challenge, &token).await?;
                        self.download_head(&with_bearer(&req, &token)).await?
                    }
                }
            }
        };
        let (endpoint, Streaming { parts, body, driver }) = streaming;
        let status = parts.status;
        if !status.is_success() {
            let bytes = Streaming { parts, body, driver }.bytes(MAX_ERROR_BODY).await?;
            return Err(match decode_envelope(status.as_u16(), &bytes) {
                Err(e) => e,
                Ok(_) => ClientError::Api {
                    status: status.as_u16(),
                    message: status.canonical_reason().unwrap_or("error").to_string(),
                },
            });
        }
        let head = Download {
            status,
            headers: parts.headers,
            endpoint: endpoint.clone(),
            bytes: 0,
        };
        let limit = self.idle_limit();
        let state = (body, driver, endpoint);
        let stream = futures_util::stream::unfold(state, move |(mut body, driver, endpoint)| async move {
            loop {
                let frame = match tokio::time::timeout(limit, body.frame()).await {
                    Err(_) => {
                        let e = ClientError::Timeout {
                            what: "the download to make progress".into(),
                            secs: limit.as_secs(),
                        };
                        return Some((Err(e), (body, driver, endpoint)));
                    }
                    Ok(None) => return None,
                    Ok(Some(f)) => f,
                };
                match frame {
                    Err(e) => {
                        let e = ClientError::Http {
                            addr: endpoint.url(),
                            source: e,
                        };
                        return Some((Err(e), (body, driver, endpoint)));
                    }
                    Ok(f) => {
                        if let Ok(data) = f.into_data() {
                            return Some((Ok(data), (body, driver, endpoint)));
                        }
                    }
                }
            }
        });
        Ok((head, Box::pin(stream)))
    }

    /// Races the GET over the addresses up to the response head.
    async fn download_head(&self, req: &Request) -> Result<(Endpoint, Streaming), ClientError> {
        let limit = self.timeout();
        let attempt = connect_then(self.dial_spec(), &[], |conn| async move {
            let endpoint = conn.endpoint.clone();
            let http_req = self.http_request(&endpoint, req, crate::http::full(Bytes::new()))?;
            let s = crate::http::send(conn, http_req, false).await?;
            Ok((endpoint, s))
        });
        tokio::time::timeout(limit, attempt)
            .await
            .map_err(|_| ClientError::Timeout {
                what: format!("GET {}", req.path),
                secs: limit.as_secs(),
            })?
    }

    /// `GET path` with `Upgrade: protocol`; on `101 Switching Protocols`, the raw
    /// connection. The handshake is bounded by the request timeout.
    pub async fn upgrade(&self, path: &str, protocol: &str) -> Result<Upgraded, ClientError> {
        let mut req = Request::get(path)
            .header(CONNECTION, "Upgrade")
            .header(UPGRADE, protocol);
        if let Some(auth) = self.oidc() {
            self.request(Request::get("/1.0")).await?;
            req = with_bearer(&req, &auth.fresh_token().await);
        }
        let limit = self.timeout();
        let handshake = async {
            let conn = self.connect().await?;
            let endpoint = conn.endpoint.clone();
            let http_req = self.http_request(&endpoint, &req, crate::http::full(Bytes::new()))?;
            let Streaming { parts, body, driver } = crate::http::send(conn, http_req, true).await?;
            if parts.status != StatusCode::SWITCHING_PROTOCOLS {
                let status = parts.status;
                let bytes = Streaming { parts, body, driver }.bytes(MAX_ERROR_BODY).await?;
                return Err(match decode_envelope(status.as_u16(), &bytes) {
                    Err(e) => e,
                    Ok(_) => ClientError::BadResponse(format!(
                        "the server answered {status} instead of switching to {protocol}"
                    )),
                });
            }
            let mut resp = http::Response::from_parts(parts, body);
            let upgraded = hyper::upgrade::on(&mut resp)
                .await
                .map_err(|e| ClientError::Http {
                    addr: endpoint.url(),
                    source: e,
                })?;
            drop(driver);
            Ok(Upgraded {
                io: TokioIo::new(upgraded),
                endpoint,
            })
        };
        tokio::time::timeout(limit, handshake)
            .await
            .map_err(|_| ClientError::Timeout {
                what: format!("the {protocol} upgrade of {path}"),
                secs: limit.as_secs(),
            })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn t10_multipart_heads_as_go_writes_them() {
        assert_eq!(
            multipart_head("b0", true, "metadata", "meta.tar.gz"),
            "--b0\r\nContent-Disposition: form-data; name=\"metadata\"; filename=\"meta.tar.gz\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        );
        assert!(multipart_head("b0", false, "rootfs", "a\"b").starts_with("\r\n--b0\r\n"));
        assert!(multipart_head("b0", false, "rootfs", "a\"b").contains("filename=\"a\\\"b\""));
    }

    #[tokio::test]
    async fn t10_multipart_body_is_streamed_in_order() {
        let up = Upload::multipart(vec![
            Part {
                name: "metadata".into(),
                filename: "m".into(),
                reader: Box::pin(io::Cursor::new(b"META".to_vec())),
            },
            Part {
                name: "rootfs".into(),
                filename: "r".into(),
                reader: Box::pin(io::Cursor::new(b"ROOT".to_vec())),
            },
        ]);
        let boundary = up
            .content_type()
            .strip_prefix("multipart/form-data; boundary=")
            .unwrap()
            .to_string();
        assert_eq!(boundary.len(), 60);
        let mut body = ReaderBody {
            reader: up.reader,
            buf: Vec::new(),
            sent: up.sent.clone(),
            done: false,
        };
        let mut all = Vec::new();
        while let Some(frame) = body.frame().await {
            all.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        let text = String::from_utf8(all).unwrap();
        let expected = format!(
            "{}META{}ROOT\r\n--{boundary}--\r\n",
            multipart_head(&boundary, true, "metadata", "m"),
            multipart_head(&boundary, false, "rootfs", "r"),
        );
        assert_eq!(text, expected);
        assert_eq!(up.sent.load(Ordering::Relaxed), text.len() as u64);
    }

    #[tokio::test]
    async fn t10_a_large_body_goes_out_in_bounded_chunks() {
        let size = 5 * CHUNK + 17;
        let mut body = ReaderBody {
            reader: Box::pin(tokio::io::repeat(7).take(size as u64)),
            buf: Vec::new(),
            sent: Arc::default(),
            done: false,
        };
        let (mut total, mut biggest) = (0, 0);
        while let Some(frame) = body.frame().await {
            let n = frame.unwrap().into_data().unwrap().len();
            total += n;
            biggest = biggest.max(n);
        }
        assert_eq!(total, size);
        assert!(biggest <= CHUNK);
    }

    #[tokio::test(start_paused = true)]
    async fn t30_a_stalled_transfer_times_out_a_moving_one_does_not() {
        let progress = AtomicU64::new(0);
        let stalled = with_idle_limit(
            std::future::pending::<Result<(), ClientError>>(),
            &progress,
            Duration::from_secs(60),
            "x",
        )
        .await;
        assert!(matches!(stalled, Err(ClientError::Timeout { .. })));
        let moving = Arc::new(AtomicU64::new(0));
        let m = moving.clone();
        let ticker = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(30)).await;
                m.fetch_add(1, Ordering::Relaxed);
            }
        });
        let done = with_idle_limit(
            async {
                tokio::time::sleep(Duration::from_secs(290)).await;
                Ok(())
            },
            &moving,
            Duration::from_secs(60),
            "x",
        )
        .await;
        assert!(done.is_ok());
        ticker.abort();
    }
}
