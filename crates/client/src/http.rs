//! HTTP/1.1 exchanges over an already open [`Stream`](crate::connect::Stream): whole
//! (the response read into memory, bounded), streamed (the response body handed on as
//! it arrives), or upgraded (a raw byte stream after `101 Switching Protocols`).

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::connect::Connected;
use crate::ClientError;

/// The largest response body we read into memory.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// The largest error body read from a streamed response.
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// A request body: bytes in memory, or a stream read as it is sent.
pub type RequestBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// A body from bytes in memory.
pub fn full(bytes: Bytes) -> RequestBody {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

/// Stops the task that drives a connection when the response using it is dropped.
pub(crate) struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response whose body has not been read yet; the connection lives as long as it does.
pub(crate) struct Streaming {
    pub parts: http::response::Parts,
    pub body: Incoming,
    pub driver: Driver,
}

impl Streaming {
    /// Reads the whole body, at most `limit` bytes.
    pub async fn bytes(self, limit: usize) -> Result<Bytes, ClientError> {
        let Streaming { body, driver, .. } = self;
        let bytes = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| ClientError::BadResponse(format!("Failed to read the response body: {e}")))?
            .to_bytes();
        drop(driver);
        Ok(bytes)
    }
}

/// Sends `req` on the connection and returns the response head; the body is read by the
/// caller. The connection is used for this one request. With `upgrades`, a `101` answer
/// can be turned into a raw stream ([`hyper::upgrade::on`]).
pub(crate) async fn send(
    conn: Connected,
    req: http::Request<RequestBody>,
    upgrades: bool,
) -> Result<Streaming, ClientError> {
    let addr = conn.endpoint.url();
    let http_err = |source| ClientError::Http {
        addr: addr.clone(),
        source,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn.stream))
        .await
        .map_err(http_err)?;
    let driver = if upgrades {
        Driver(tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        }))
    } else {
        Driver(tokio::spawn(async move {
            let _ = connection.await;
        }))
    };
    let resp = sender.send_request(req).await.map_err(http_err)?;
    let (parts, body) = resp.into_parts();
    Ok(Streaming { parts, body, driver })
}

/// Sends `req` on the connection and reads the whole response (at most [`MAX_BODY`]).
pub(crate) async fn exchange(
    conn: Connected,
    req: http::Request<RequestBody>,
) -> Result<http::Response<Bytes>, ClientError> {
    let Streaming { parts, body, driver } = send(conn, req, false).await?;
    let bytes = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| ClientError::BadResponse(format!("Failed to read the response body: {e}")))?
        .to_bytes();
    drop(driver);
    Ok(http::Response::from_parts(parts, bytes))
}
