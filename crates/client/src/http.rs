//! One HTTP/1.1 exchange over an already open [`Stream`](crate::connect::Stream).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

use crate::connect::Connected;
use crate::ClientError;

/// The largest response body we read into memory.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// Sends `req` on the connection and reads the whole response. The connection is used for
/// this one request and then closed.
pub(crate) async fn exchange(
    conn: Connected,
    req: http::Request<Full<Bytes>>,
) -> Result<http::Response<Bytes>, ClientError> {
    let addr = conn.endpoint.url();
    let http_err = |source| ClientError::Http {
        addr: addr.clone(),
        source,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn.stream))
        .await
        .map_err(http_err)?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let result = async {
        let resp = sender.send_request(req).await.map_err(http_err)?;
        let (parts, body) = resp.into_parts();
        let bytes = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| ClientError::BadResponse(format!("Failed to read the response body: {e}")))?
            .to_bytes();
        Ok(http::Response::from_parts(parts, bytes))
    }
    .await;
    drop(sender);
    driver.abort();
    result
}
