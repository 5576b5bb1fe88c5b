//! Member-to-member calls: one multiplexed HTTP/2 connection per peer, mutual TLS with
//! each side's own server certificate, the peer pinned by its fingerprint.
//!
//! ```text
//!   caller ──TCP (bounded)──TLS SNI=member.stapes.internal, own server.crt──> peer
//!          <── peer presents its own server.crt, checked against the member list ──
//! ```
//!
//! Connections are kept and reused, so a call to a warm peer costs no handshake. Every
//! step is bounded: a peer that accepts TCP and then says nothing fails the call in
//! [`CONNECT_TIMEOUT`] plus the call's own deadline, never longer.
//!
//! Bodies on the pooled connection are streams ([`Body`]): a forwarded upload or download
//! moves through HTTP/2 flow control a window at a time, never collected (see
//! `tunnel.rs`). What cannot ride HTTP/2 (an upgrade, a snapshot) gets a fresh HTTP/1.1
//! connection of its own ([`Peers::connect_http1`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Body;
use bytes::Bytes;
use cluster::raft::{Rpc, RpcFuture, RpcKind};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use transport::tls::{self, ServerTrust, TlsConnector, MEMBER_SNI};

/// TCP connect plus TLS handshake to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A joiner's request to be admitted: a Raft commit and a membership change.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(15);
/// One call, once connected.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A member connection idle this long is probed (TCP keepalive, three probes a third of
/// it apart); one that does not answer them is closed.
pub const MEMBER_KEEPALIVE: Duration = Duration::from_secs(30);

type Sender = SendRequest<Body>;

/// Why a call to another member failed. The first three are what an operator acts on
/// differently: a member down (or its address wrong), a member hung or overloaded, and
/// a member presenting a certificate the cluster does not know for it (replaced by
/// hand, or not the member at all).
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{address}: {source}")]
    Refused {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{address} did not answer within {after:?}")]
    Timeout { address: String, after: Duration },
    #[error("{address} presented a certificate that is not the one the cluster trusts for it")]
    CertificateMismatch { address: String },
    #[error("{address} is not a known member")]
    NotMember { address: String },
    #[error("TLS with {address} failed: {source}")]
    Tls {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// The connection broke, or the member spoke something other than HTTP.
    #[error("{address}: {source}")]
    Http {
        address: String,
        #[source]
        source: hyper::Error,
    },
    /// The direct connection ([`crate::member_h2`]) broke, or the member reset the
    /// request.
    #[error("{address}: {source}")]
    H2 {
        address: String,
        #[source]
        source: h2::Error,
    },
    /// Anything else: a request that cannot be built, a websocket the member would not
    /// open, this member's own TLS settings.
    #[error("{address}: {detail}")]
    Other { address: String, detail: String },
}

impl PeerError {
    fn other(address: &str, detail: impl std::fmt::Display) -> PeerError {
        PeerError::Other {
            address: address.to_string(),
            detail: detail.to_string(),
        }
    }

    fn http(address: &str) -> impl FnOnce(hyper::Error) -> PeerError + '_ {
        move |source| PeerError::Http {
            address: address.to_string(),
            source,
        }
    }

    fn timeout(address: &str, after: Duration) -> PeerError {
        PeerError::Timeout {
            address: address.to_string(),
            after,
        }
    }
}

pub struct Peers {
    cert_pem: String,
    key_pem: String,
    /// Peer address -> fingerprint of its own server certificate.
    pins: ArcSwap<HashMap<String, String>>,
    conns: Mutex<HashMap<String, Sender>>,
    /// Peer address -> the direct connection for requests without a body.
    direct: Mutex<HashMap<String, crate::member_h2::Sender>>,
}

/// The answer of [`Peers::forward`]: from hyper's connection (a request with a body) or
/// from the direct one (without).
pub type ForwardBody = http_body_util::Either<hyper::body::Incoming, crate::member_h2::MemberBody>;

impl Peers {
    pub fn new(cert_pem: String, key_pem: String) -> Arc<Self> {
        Arc::new(Peers {
            cert_pem,
            key_pem,
            pins: Default::default(),
            conns: Default::default(),
            direct: Default::default(),
        })
    }

    /// The fingerprint the member at `address` must present.
    fn pin(&self, address: &str) -> Result<String, PeerError> {
        self.pins
            .load()
            .get(address)
            .cloned()
            .ok_or_else(|| PeerError::NotMember {
                address: address.to_string(),
            })
    }

    /// Replaces the address -> fingerprint pins (from the member list).
    pub fn set_pins(&self, pins: HashMap<String, String>) {
        if **self.pins.load() != pins {
            self.pins.store(Arc::new(pins));
        }
    }

    /// POSTs or GETs `path` on the member at `address`; returns status and body.
    pub async fn request(
        &self,
        address: &str,
        method: http::Method,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), PeerError> {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| PeerError::other(address, e))?;
        self.send(address, req, timeout)
            .await
            .map(|r| (r.status().as_u16(), r.into_body()))
    }

    /// Sends a request (its URI a path and query) to the member at `address` and reads
    /// the whole answer. Connecting is bounded by [`CONNECT_TIMEOUT`], the rest by
    /// `timeout`.
    pub async fn send(
        &self,
        address: &str,
        req: http::Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<http::Response<Bytes>, PeerError> {
        let call = async {
            let resp = self.exchange(address, req.map(Body::new)).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(PeerError::http(address))?.to_bytes();
            Ok::<_, PeerError>(http::Response::from_parts(parts, body))
        };
        let result = tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err(PeerError::timeout(address, timeout)));
        if result.is_err() {
            self.forget(address);
        }
        result
    }

    /// Sends a request with a streamed body on the pooled connection to `address` and
    /// returns the answer's head with its body still to come. Connecting is bounded by
    /// [`CONNECT_TIMEOUT`]; the caller bounds the rest (it knows how the body moves).
    /// A pooled connection found closed before the request went out is replaced once,
    /// so a member that restarted is dialled afresh rather than failing the call.
    pub async fn exchange(
        &self,
        address: &str,
        req: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, PeerError> {
        let fingerprint = self.pin(address)?;
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        parts.uri = format!("https://{address}{path}")
            .parse()
            .map_err(|e| PeerError::other(address, e))?;
        let req = http::Request::from_parts(parts, body);
        let mut sender = self.sender(address, &fingerprint, false).await?;
        let unsent = match sender.try_send_request(req).await {
            Ok(resp) => return Ok(resp),
            Err(mut e) => match e.take_message() {
                Some(unsent) => unsent,
                None => return Err(PeerError::http(address)(e.into_error())),
            },
        };
        self.forget(address);
        let mut sender = self.sender(address, &fingerprint, true).await?;
        sender
            .send_request(unsent)
            .await
            .map_err(PeerError::http(address))
    }

    /// A forwarded client request: one without a body goes on the direct connection
    /// ([`crate::member_h2`]), one with a body on the pooled hyper connection
    /// ([`Peers::exchange`]). A direct connection found closed before the request went
    /// out is replaced once, as in `exchange`.
    pub async fn forward(
        &self,
        address: &str,
        req: http::Request<Body>,
    ) -> Result<http::Response<ForwardBody>, PeerError> {
        use hyper::body::Body as _;
        if !req.body().is_end_stream() {
            let resp = self.exchange(address, req).await?;
            return Ok(resp.map(http_body_util::Either::Left));
        }
        let fingerprint = self.pin(address)?;
        let (mut parts, _) = req.into_parts();
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(http::uri::Scheme::HTTPS);
        uri.authority = Some(address.parse().map_err(|e| PeerError::other(address, e))?);
        uri.path_and_query = Some(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        parts.uri = http::Uri::from_parts(uri).map_err(|e| PeerError::other(address, e))?;
        let h2_error = |source| PeerError::H2 {
            address: address.to_string(),
            source,
        };
        let sender = self.direct_sender(address, &fingerprint, false).await?;
        let sender = match sender.ready().await {
            Ok(s) => s,
            Err(_) => {
                // Closed since it was pooled (the member restarted, say): dial afresh.
                self.forget(address);
                let fresh = self.direct_sender(address, &fingerprint, true).await?;
                fresh.ready().await.map_err(h2_error)?
            }
        };
        let resp = crate::member_h2::send(sender, parts).await.map_err(h2_error)?;
        Ok(resp.map(http_body_util::Either::Right))
    }

    /// The direct connection to `address`, or (when there is none, or `fresh`) a new one.
    async fn direct_sender(
        &self,
        address: &str,
        fingerprint: &str,
        fresh: bool,
    ) -> Result<crate::member_h2::Sender, PeerError> {
        if !fresh {
            if let Some(s) = self.direct.lock().ok().and_then(|c| c.get(address).cloned()) {
                return Ok(s);
            }
        }
        let connect = async {
            let stream = self.dial(address, fingerprint, b"h2", MEMBER_SNI).await?;
            crate::member_h2::handshake(stream)
                .await
                .map_err(|source| PeerError::H2 {
                    address: address.to_string(),
                    source,
                })
        };
        let sender = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| PeerError::timeout(address, CONNECT_TIMEOUT))??;
        if let Ok(mut c) = self.direct.lock() {
            c.insert(address.to_string(), sender.clone());
        }
        Ok(sender)
    }

    /// Drops the pooled connections to `address` (after a failure on one).
    pub fn forget(&self, address: &str) {
        if let Ok(mut c) = self.conns.lock() {
            c.remove(address);
        }
        if let Ok(mut c) = self.direct.lock() {
            c.remove(address);
        }
    }

    /// The pooled connection to `address`, or (when there is none, or `fresh`) a new one.
    async fn sender(&self, address: &str, fingerprint: &str, fresh: bool) -> Result<Sender, PeerError> {
        if let Some(s) = self.conns.lock().ok().and_then(|c| c.get(address).cloned()) {
            if !fresh && !s.is_closed() {
                return Ok(s);
            }
        }
        let connect = async {
            let stream = self.dial(address, fingerprint, b"h2", MEMBER_SNI).await?;
            let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5))
                .handshake(TokioIo::new(stream))
                .await
                .map_err(PeerError::http(address))?;
            tokio::spawn(conn);
            Ok::<_, PeerError>(sender)
        };
        let sender = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| PeerError::timeout(address, CONNECT_TIMEOUT))??;
        if let Ok(mut c) = self.conns.lock() {
            c.insert(address.to_string(), sender.clone());
        }
        Ok(sender)
    }
}

/// Raft's transport.
pub struct RaftRpc(pub Arc<Peers>);

/// A snapshot stream that moves no byte for this long is abandoned.
pub const SNAPSHOT_STALL: Duration = Duration::from_secs(15);

impl Rpc for RaftRpc {
    fn send_snapshot(&self, _target: u64, address: &str, header: Vec<u8>, data: std::fs::File) -> RpcFuture {
        let peers = self.0.clone();
        let address = address.to_string();
        Box::pin(async move { peers.stream_snapshot(&address, header, data).await })
    }

    fn call(&self, _target: u64, address: &str, kind: RpcKind, body: Vec<u8>) -> RpcFuture {
        let peers = self.0.clone();
        let address = address.to_string();
        Box::pin(async move {
            let (status, body) = peers
                .request(&address, http::Method::POST, kind.path(), body, CALL_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            if status != 200 {
                return Err(format!(
                    "{address} answered {status}: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            Ok(body.to_vec())
        })
    }
}

impl Peers {
    /// Streams a snapshot to the member at `address` on a connection of its own
    /// (HTTP/1.1, so a long transfer never holds up the pooled one): `header`, then the
    /// file, read 256 KiB at a time. Gives up when no byte moves for
    /// [`SNAPSHOT_STALL`], or when the member takes longer to install it than its size
    /// allows.
    pub async fn stream_snapshot(
        &self,
        address: &str,
        header: Vec<u8>,
        data: std::fs::File,
    ) -> Result<Vec<u8>, String> {
        let size = data.metadata().map_err(|e| e.to_string())?.len();
        let stream = self.connect_http1(address).await.map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let conn = AbortOnDrop(tokio::spawn(conn));
        let progress = Arc::new(Progress::default());
        let body = snapshot_body(header.clone(), data, progress.clone());
        let req = http::Request::post(cluster::raft::RpcKind::Snapshot.path())
            .header("host", address)
            .header("content-type", "application/octet-stream")
            .header("content-length", header.len() as u64 + size)
            .body(body)
            .map_err(|e| e.to_string())?;
        // Installing parses the whole state: allow a minute plus a second per 4 MiB.
        let install = Duration::from_secs(60 + size / (4 * 1024 * 1024));
        let call = async {
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = http_body_util::Limited::new(resp.into_body(), 1024 * 1024)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        tokio::pin!(call);
        let (status, body) = loop {
            tokio::select! {
                r = &mut call => break r.map_err(|e| format!("{address}: {e}"))?,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    let (idle, done) = progress.idle();
                    if !done && idle > SNAPSHOT_STALL {
                        return Err(format!("{address}: the snapshot stream stalled for {SNAPSHOT_STALL:?}"));
                    }
                    if done && idle > install {
                        return Err(format!("{address} did not install the snapshot within {install:?}"));
                    }
                }
            }
        };
        drop(conn);
        if status != 200 {
            return Err(format!(
                "{address} answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(body.to_vec())
    }
}

/// When a snapshot stream last moved a byte, and whether it has sent everything.
struct Progress {
    since: std::time::Instant,
    last_ms: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicBool,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            since: std::time::Instant::now(),
            last_ms: Default::default(),
            done: Default::default(),
        }
    }
}

impl Progress {
    fn moved(&self) {
        let ms = self.since.elapsed().as_millis() as u64;
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn idle(&self) -> (Duration, bool) {
        let last = Duration::from_millis(self.last_ms.load(std::sync::atomic::Ordering::Relaxed));
        (
            self.since.elapsed().saturating_sub(last),
            self.done.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

type SnapshotBody = http_body_util::StreamBody<
    std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<hyper::body::Frame<Bytes>, std::io::Error>> + Send>,
    >,
>;

/// The request body of a snapshot: the header line, then the file in chunks.
fn snapshot_body(header: Vec<u8>, data: std::fs::File, progress: Arc<Progress>) -> SnapshotBody {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::from_std(data);
    let chunks = futures_util::stream::unfold(
        (Some(header), file, progress),
        |(header, mut file, progress)| async move {
            progress.moved();
            if let Some(h) = header {
                return Some((
                    Ok(hyper::body::Frame::data(Bytes::from(h))),
                    (None, file, progress),
                ));
            }
            let mut buf = bytes::BytesMut::with_capacity(256 * 1024);
            match file.read_buf(&mut buf).await {
                Ok(0) => {
                    progress.done.store(true, std::sync::atomic::Ordering::Relaxed);
                    None
                }
                Ok(_) => Some((Ok(hyper::body::Frame::data(buf.freeze())), (None, file, progress))),
                Err(e) => Some((Err(e), (None, file, progress))),
            }
        },
    );
    http_body_util::StreamBody::new(Box::pin(chunks))
}

/// Aborts a task when dropped (a connection driver nobody needs any more).
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A member's own event stream, as a websocket over mutual TLS (HTTP/1.1).
pub type EventStream =
    tokio_tungstenite::WebSocketStream<transport::tls::ClientTlsStream<tokio::net::TcpStream>>;

impl Peers {
    /// Opens `/internal/events` on the member at `address`.
    pub async fn open_events(&self, address: &str) -> Result<EventStream, PeerError> {
        let connect = async {
            let stream = self.connect_http1(address).await?;
            let url = format!("wss://{address}/internal/events");
            let (ws, _) = tokio_tungstenite::client_async(url, stream)
                .await
                .map_err(|e| PeerError::other(address, e))?;
            Ok::<_, PeerError>(ws)
        };
        tokio::time::timeout(CONNECT_TIMEOUT * 3, connect)
            .await
            .map_err(|_| PeerError::timeout(address, CONNECT_TIMEOUT * 3))?
    }

    /// A fresh mutual-TLS connection to the member at `address` speaking HTTP/1.1 (for
    /// what the pooled HTTP/2 connection cannot carry: upgrades), bounded by
    /// [`CONNECT_TIMEOUT`].
    pub async fn connect_http1(
        &self,
        address: &str,
    ) -> Result<transport::tls::ClientTlsStream<tokio::net::TcpStream>, PeerError> {
        let fingerprint = self.pin(address)?;
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.dial(address, &fingerprint, b"http/1.1", MEMBER_SNI),
        )
        .await
        .map_err(|_| PeerError::timeout(address, CONNECT_TIMEOUT))?
    }
}

impl Peers {
    /// TCP and TLS to `address`: this member's own certificate, the peer pinned by
    /// `fingerprint`. Callers bound it with a timeout.
    async fn dial(
        &self,
        address: &str,
        fingerprint: &str,
        alpn: &[u8],
        sni: &str,
    ) -> Result<transport::tls::ClientTlsStream<tokio::net::TcpStream>, PeerError> {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|source| PeerError::Refused {
                address: address.to_string(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        // A member that vanishes without closing (a host gone, a partition) is noticed
        // on connections that outlive a request: tunnels, which may idle for long.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(MEMBER_KEEPALIVE)
            .with_interval(MEMBER_KEEPALIVE / 3)
            .with_retries(3);
        let sock = socket2::SockRef::from(&tcp);
        let _ = sock.set_tcp_keepalive(&keepalive);
        let config = tls::client_config(
            ServerTrust::Pinned(fingerprint.to_string()),
            Some((&self.cert_pem, &self.key_pem)),
            &[alpn],
        )
        .map_err(|e| PeerError::other(address, e))?;
        TlsConnector::from(config)
            .connect(tls::server_name(sni), tcp)
            .await
            .map_err(|source| match tls::is_pin_mismatch(&source) {
                true => PeerError::CertificateMismatch {
                    address: address.to_string(),
                },
                false => PeerError::Tls {
                    address: address.to_string(),
                    source,
                },
            })
    }

    /// A joiner's one call to a member: the member is pinned by the cluster
    /// certificate's fingerprint from the token (it is not a known member yet).
    pub async fn join(
        &self,
        address: &str,
        cluster_fingerprint: &str,
        body: &[u8],
    ) -> Result<(u16, Bytes), PeerError> {
        let call = async {
            let host = address.rsplit_once(':').map(|(h, _)| h).unwrap_or(address);
            let stream = self.dial(address, cluster_fingerprint, b"http/1.1", host).await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(PeerError::http(address))?;
            tokio::spawn(conn);
            let req = http::Request::post("/internal/cluster/join")
                .header("host", address)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::copy_from_slice(body)))
                .map_err(|e| PeerError::other(address, e))?;
            let resp = sender.send_request(req).await.map_err(PeerError::http(address))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(PeerError::http(address))?
                .to_bytes();
            Ok((status, body))
        };
        // Admission includes a Raft commit and a membership change: allow for both.
        tokio::time::timeout(JOIN_TIMEOUT, call)
            .await
            .map_err(|_| PeerError::timeout(address, JOIN_TIMEOUT))?
    }
}
