//! A small HTTPS client for talking to third-party web services (an OpenID provider):
//! the server is verified the ordinary way, against the system's roots (the
//! `SSL_CERT_FILE` and `SSL_CERT_DIR` variables are honoured) and by host name, never by
//! pin; a self-signed certificate marked as a CA is accepted when that very certificate
//! is in the bundle, as Incus accepts it ([`crate::bundle`]). Certificate failures are
//! reported in plain words. One request per connection, every step under a deadline,
//! every body bounded.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use tokio::net::TcpStream;

use crate::bundle::{plain_words, BundleVerifier};

/// The largest body read from a web service.
pub const MAX_BODY: usize = 1 << 20;
/// The deadline for one whole request: connect, TLS, request and response body.
pub const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("bad URL {0:?}: {1}")]
    Url(String, String),
    #[error("cannot reach {0}: {1}")]
    Connect(String, String),
    #[error("{0} did not answer within {1:?}")]
    Timeout(String, Duration),
    #[error("request to {0} failed: {1}")]
    Http(String, String),
    #[error("the response from {0} is larger than {1} bytes")]
    TooLarge(String, usize),
    #[error("no usable system certificate roots: {0}")]
    Roots(String),
}

/// A response, fully read.
#[derive(Debug)]
pub struct WebResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl WebResponse {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// TLS configuration for web services: system roots, host names checked.
fn web_tls() -> Result<Arc<rustls::ClientConfig>, WebError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(found
                    .errors
                    .first()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "none found".into()));
            }
            BundleVerifier::new(found.certs)
                .and_then(|v| v.client_config(&[b"http/1.1"]))
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(WebError::Roots)
}

/// `GET url`.
pub async fn get(url: &str) -> Result<WebResponse, WebError> {
    send(Method::GET, url, None, &[]).await
}

/// `POST url` with an `application/x-www-form-urlencoded` body.
pub async fn post_form(url: &str, form: &[(&str, &str)]) -> Result<WebResponse, WebError> {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    send(Method::POST, url, Some(body), &[]).await
}

/// One request with extra headers; `body` is sent as a form when present.
pub async fn send(
    method: Method,
    url: &str,
    body: Option<String>,
    headers: &[(&str, &str)],
) -> Result<WebResponse, WebError> {
    tokio::time::timeout(TIMEOUT, send_inner(method, url, body, headers))
        .await
        .map_err(|_| WebError::Timeout(url.to_string(), TIMEOUT))?
}

async fn send_inner(
    method: Method,
    url: &str,
    body: Option<String>,
    headers: &[(&str, &str)],
) -> Result<WebResponse, WebError> {
    let bad = |why: &str| WebError::Url(url.to_string(), why.to_string());
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad("the scheme must be https or http")),
    };
    let host = uri.host().ok_or_else(|| bad("no host"))?.to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .ok_or_else(|| bad("no host"))?;
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());

    let dial_host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let tcp = TcpStream::connect((dial_host.as_str(), port))
        .await
        .map_err(|e| WebError::Connect(authority.clone(), e.to_string()))?;
    let _ = tcp.set_nodelay(true);

    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, &authority)
        .header(header::ACCEPT, "application/json")
        .header(header::USER_AGENT, "stapes");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = match body {
        Some(b) => {
            req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            Full::new(Bytes::from(b))
        }
        None => Full::new(Bytes::new()),
    };
    let req = req.body(body).map_err(|e| bad(&e.to_string()))?;

    let http_err = |e: &dyn std::fmt::Display| WebError::Http(authority.clone(), e.to_string());
    let resp = if tls {
        let name = rustls::pki_types::ServerName::try_from(dial_host.clone())
            .map_err(|_| bad("the host is not a valid TLS server name"))?;
        let stream = tokio_rustls::TlsConnector::from(web_tls()?)
            .connect(name, tcp)
            .await
            .map_err(|e| WebError::Connect(authority.clone(), tls_failure(&e)))?;
        exchange(stream, req).await.map_err(|e| http_err(&e))?
    } else {
        exchange(tcp, req).await.map_err(|e| http_err(&e))?
    };
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|_| WebError::TooLarge(authority.clone(), MAX_BODY))?
        .to_bytes();
    Ok(WebResponse {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// A failed handshake, with a certificate problem said in plain words.
fn tls_failure(e: &std::io::Error) -> String {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(plain_words)
        .map(|words| format!("the TLS handshake failed: {words}"))
        .unwrap_or_else(|| e.to_string())
}

async fn exchange<S>(
    stream: S,
    req: Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_urls_are_refused_before_any_traffic() {
        for url in ["ftp://example.test/", "not a url", "https:///path"] {
            assert!(matches!(get(url).await, Err(WebError::Url(..))), "{url}");
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let r = get(&format!("http://127.0.0.1:{port}/")).await;
        assert!(matches!(r, Err(WebError::Connect(..))), "{r:?}");
    }
}
