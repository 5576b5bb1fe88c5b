//! The ceiling: the least an HTTPS JSON API server on our stack (tokio, hyper, rustls
//! with aws-lc-rs) has to do to answer `GET /1.0`, so that stapes can be judged as a
//! fraction of what the stack allows, in the same run, on the same machine.
//!
//! It does only this, and on purpose nothing more (no state, no authorization beyond "a
//! client certificate was presented", no logging, no events, no graceful shutdown):
//!
//! ```text
//!  TCP accept (TCP_NODELAY) ─spawn─> TLS 1.3 handshake (client certificate requested,
//!      │                               not required; the policy of `transport::tls`)
//!      │                           ─> SHA-256 fingerprint of the peer's certificate,
//!      │                              once per connection
//!      v
//!  hyper h1 or h2 (ALPN) ─> GET /1.0            -> the body, re-serialised per request
//!                        ─> GET /1.0?target=PEER -> one HTTP/2 connection to the peer
//!                                                  (mutual TLS, pinned, TCP_NODELAY),
//!                                                  response body streamed back
//!  unix socket accept ─────> the same handler, trusted
//! ```
//!
//! The body is the one stapes serves for `GET /1.0` (trusted and untrusted, fetched by
//! the benchmark from the stapes side of the same run), held as a JSON value and
//! serialised on every request, with `server_name` and `server_pid` set per instance:
//! the same bytes on the wire as stapes, and the same serialisation work as any JSON API.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use transport::tls::{ServerTrust, TlsAcceptor, TlsConnector};

/// A bound on every handshake and on connecting to the peer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one ceiling member serves.
#[derive(Debug, Clone)]
pub struct Config {
    /// Its name: `?target=` naming another one is forwarded to the peer.
    pub name: String,
    pub listen: SocketAddr,
    pub unix: PathBuf,
    /// The server certificate (shared by the members, like a cluster certificate; also
    /// the client certificate when forwarding, pinned by the peer's fingerprint).
    pub cert_pem: String,
    pub key_pem: String,
    pub trusted_body: Value,
    pub untrusted_body: Value,
    pub peer: Option<SocketAddr>,
}

type Body = Either<Full<Bytes>, Incoming>;

struct Shared {
    name: String,
    trusted: Value,
    untrusted: Value,
    forwarder: Option<Forwarder>,
}

/// Serves until the process is stopped.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let key = transport::tls::certified_key(&config.cert_pem, &config.key_pem)?;
    let acceptor = TlsAcceptor::from(transport::tls::server_config(transport::tls::CertResolver::new(
        key,
    ))?);
    let pid = std::process::id();
    let shared = Arc::new(Shared {
        trusted: with_identity(config.trusted_body, &config.name, pid),
        untrusted: with_identity(config.untrusted_body, &config.name, pid),
        name: config.name,
        forwarder: match config.peer {
            Some(addr) => Some(Forwarder::new(addr, &config.cert_pem, &config.key_pem)?),
            None => None,
        },
    });
    let tcp = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let _ = std::fs::remove_file(&config.unix);
    let unix =
        UnixListener::bind(&config.unix).with_context(|| format!("binding {}", config.unix.display()))?;
    let on_unix = shared.clone();
    tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = unix.accept().await {
                tokio::spawn(serve_conn(s, on_unix.clone(), true));
            }
        }
    });
    loop {
        let Ok((s, _)) = tcp.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = s.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(s)).await else {
                return;
            };
            let fingerprint = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| trust::fingerprint(c.as_ref()));
            serve_conn(tls, shared, fingerprint.is_some()).await;
        });
    }
}

/// The stapes body with this instance's name and PID, as a member reports its own.
fn with_identity(mut body: Value, name: &str, pid: u32) -> Value {
    if let Some(env) = body
        .get_mut("metadata")
        .and_then(|m| m.get_mut("environment"))
        .and_then(Value::as_object_mut)
    {
        env.insert("server_name".into(), name.into());
        env.insert("server_pid".into(), pid.into());
    }
    body
}

async fn serve_conn<S>(stream: S, shared: Arc<Shared>, trusted: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| handle(shared.clone(), trusted, req));
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn handle(
    shared: Arc<Shared>,
    trusted: bool,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::GET || req.uri().path() != "/1.0" {
        return Ok(error(StatusCode::NOT_FOUND, "Not found"));
    }
    if let Some(target) = target(req.uri().query()).filter(|t| *t != shared.name) {
        return Ok(match &shared.forwarder {
            Some(f) => f.forward().await,
            None => error(
                StatusCode::NOT_FOUND,
                &format!("Cluster member {target:?} not found"),
            ),
        });
    }
    let body = if trusted {
        &shared.trusted
    } else {
        &shared.untrusted
    };
    Ok(json(StatusCode::OK, body))
}

/// The `target` of a query string.
pub fn target(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "target")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

fn json(status: StatusCode, body: &Value) -> Response<Body> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from(bytes))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({"type": "error", "error": message, "error_code": status.as_u16()}),
    )
}

/// One HTTP/2 connection to the peer, opened on first use and again when it breaks.
struct Forwarder {
    addr: SocketAddr,
    uri: http::Uri,
    tls: TlsConnector,
    conn: tokio::sync::Mutex<Option<http2::SendRequest<Empty<Bytes>>>>,
}

impl Forwarder {
    fn new(addr: SocketAddr, cert_pem: &str, key_pem: &str) -> anyhow::Result<Forwarder> {
        let der = trust::cert::pem_to_der(cert_pem)?;
        let config = transport::tls::client_config(
            ServerTrust::Pinned(trust::fingerprint(&der)),
            Some((cert_pem, key_pem)),
            &[b"h2"],
        )?;
        Ok(Forwarder {
            addr,
            uri: format!("https://{addr}/1.0").parse()?,
            tls: TlsConnector::from(config),
            conn: tokio::sync::Mutex::new(None),
        })
    }

    async fn sender(&self) -> anyhow::Result<http2::SendRequest<Empty<Bytes>>> {
        let mut conn = self.conn.lock().await;
        if let Some(s) = conn.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let open = async {
            let tcp = TcpStream::connect(self.addr).await?;
            tcp.set_nodelay(true)?;
            let host = self.addr.ip().to_string();
            let tls = self.tls.connect(transport::tls::server_name(&host), tcp).await?;
            let (sender, driver) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
            tokio::spawn(driver);
            anyhow::Ok(sender)
        };
        let sender = tokio::time::timeout(HANDSHAKE_TIMEOUT, open)
            .await
            .context("connecting to the peer timed out")??;
        *conn = Some(sender.clone());
        Ok(sender)
    }

    async fn forward(&self) -> Response<Body> {
        let sent = async {
            let mut sender = self.sender().await?;
            let req = Request::get(self.uri.clone()).body(Empty::new())?;
            anyhow::Ok(sender.send_request(req).await?)
        };
        match sent.await {
            Ok(resp) => resp.map(Either::Right),
            Err(e) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("Forwarding failed: {e}"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_target_from_the_query() {
        assert_eq!(target(Some("target=node2")), Some("node2".into()));
        assert_eq!(target(Some("recursion=1&target=node%32")), Some("node2".into()));
        assert_eq!(target(Some("target=")), None);
        assert_eq!(target(Some("recursion=1")), None);
        assert_eq!(target(None), None);
    }

    #[test]
    fn t10_the_body_names_this_instance() {
        let body =
            serde_json::json!({"metadata": {"environment": {"server_name": "node1", "server_pid": 1}}});
        let b = with_identity(body, "node2", 42);
        assert_eq!(b["metadata"]["environment"]["server_name"], "node2");
        assert_eq!(b["metadata"]["environment"]["server_pid"], 42);
        let other = with_identity(serde_json::json!({"metadata": {}}), "n", 1);
        assert_eq!(other, serde_json::json!({"metadata": {}}));
    }
}
