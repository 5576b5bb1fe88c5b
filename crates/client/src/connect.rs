//! The one place that opens connections to a remote.
//!
//! ```text
//!  connect(&DialSpec)
//!    for each endpoint, in order (a later change can race them ~250 ms apart):
//!      unix  : UnixStream::connect(path)                         -- bounded by connect_timeout
//!      https : TcpStream::connect(host:port) -> TLS 1.3 handshake -- bounded together
//!              server checked by pin (or recorded on first contact), client cert presented
//!    first success wins; otherwise every error is reported
//! ```
//!
//! A failed handshake against a pinned remote is diagnosed with a second, recording
//! handshake, so the user is told the certificate changed and what it changed to rather
//! than a bare TLS alert. Only `transport` names TLS library types; this module passes
//! PEM, DER and fingerprints.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use transport::tls::{ClientTlsStream, PeerRecorder, ServerTrust, TlsConnector};

use crate::addr::Endpoint;
use crate::ClientError;

/// How long one connection attempt (TCP connect plus TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the server's certificate is judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCheck {
    /// Only the certificate with this SHA-256 fingerprint is accepted.
    Pinned(String),
    /// Any certificate is accepted and handed back (first contact: `remote add`).
    Record,
}

/// Everything needed to open a connection to one remote.
#[derive(Debug, Clone)]
pub struct DialSpec {
    /// Tried in order; all unix or all https.
    pub endpoints: Vec<Endpoint>,
    /// Ignored for unix sockets.
    pub check: ServerCheck,
    /// The client certificate presented over TLS.
    pub identity: Option<trust::CertPair>,
    pub connect_timeout: Duration,
}

/// A byte stream to a server: TLS over TCP, or a unix socket.
#[derive(Debug)]
pub enum Stream {
    Tls(Box<ClientTlsStream<TcpStream>>),
    Unix(UnixStream),
}

/// An open connection and what we learnt while opening it.
#[derive(Debug)]
pub struct Connected {
    pub stream: Stream,
    /// The endpoint that answered.
    pub endpoint: Endpoint,
    /// The server's certificate (DER), for TLS connections.
    pub peer_cert: Option<Vec<u8>>,
}

/// Opens a connection to the first endpoint that answers.
pub async fn connect(spec: &DialSpec) -> Result<Connected, ClientError> {
    if spec.endpoints.is_empty() {
        return Err(ClientError::Invalid(
            "Remotes must have at least one address".into(),
        ));
    }
    let mut errors = Vec::new();
    for endpoint in &spec.endpoints {
        match connect_one(endpoint, spec).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::debug!(endpoint = %endpoint.url(), error = %e, "connection attempt failed");
                errors.push(e);
            }
        }
    }
    if errors.len() == 1 {
        Err(errors.remove(0))
    } else {
        Err(ClientError::AllFailed(errors))
    }
}

async fn connect_one(endpoint: &Endpoint, spec: &DialSpec) -> Result<Connected, ClientError> {
    match endpoint {
        Endpoint::Unix(_) => {
            let path = endpoint.socket_path().expect("unix endpoints have a path");
            let stream = dial_unix(&path, spec.connect_timeout).await?;
            Ok(Connected {
                stream: Stream::Unix(stream),
                endpoint: endpoint.clone(),
                peer_cert: None,
            })
        }
        Endpoint::Https { host, port } => {
            let (stream, der) = dial_tls(
                host,
                *port,
                &spec.check,
                spec.identity.as_ref(),
                spec.connect_timeout,
            )
            .await?;
            Ok(Connected {
                stream: Stream::Tls(Box::new(stream)),
                endpoint: endpoint.clone(),
                peer_cert: Some(der),
            })
        }
    }
}

async fn dial_unix(path: &Path, limit: Duration) -> Result<UnixStream, ClientError> {
    match tokio::time::timeout(limit, UnixStream::connect(path)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::DaemonNotRunning {
                path: path.to_path_buf(),
            },
            io::ErrorKind::PermissionDenied => ClientError::SocketPermission {
                path: path.to_path_buf(),
            },
            _ => ClientError::Connect {
                addr: path.display().to_string(),
                source: e,
            },
        }),
        Err(_) => Err(ClientError::ConnectTimeout {
            addr: path.display().to_string(),
            secs: limit.as_secs(),
        }),
    }
}

/// TCP connect and TLS handshake to one address, both within `limit`. Returns the stream
/// and the certificate the server presented.
async fn dial_tls(
    host: &str,
    port: u16,
    check: &ServerCheck,
    identity: Option<&trust::CertPair>,
    limit: Duration,
) -> Result<(ClientTlsStream<TcpStream>, Vec<u8>), ClientError> {
    let addr = Endpoint::Https {
        host: host.to_string(),
        port,
    }
    .authority();
    let recorder = Arc::new(PeerRecorder::default());
    let trust = match check {
        ServerCheck::Pinned(fp) => ServerTrust::Pinned(fp.to_ascii_lowercase()),
        ServerCheck::Record => ServerTrust::Record(recorder.clone()),
    };
    let config = transport::tls::client_config(
        trust,
        identity.map(|p| (p.cert_pem.as_str(), p.key_pem.as_str())),
        &[b"http/1.1"],
    )?;
    let attempt = async {
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(config)
            .connect(transport::tls::server_name(host), tcp)
            .await
            .map_err(|source| ClientError::Tls {
                addr: addr.clone(),
                source,
            })
    };
    let result = tokio::time::timeout(limit, attempt)
        .await
        .map_err(|_| ClientError::ConnectTimeout {
            addr: addr.clone(),
            secs: limit.as_secs(),
        })?;
    let tls = match result {
        Ok(tls) => tls,
        Err(ClientError::Tls { addr, source }) => {
            if let ServerCheck::Pinned(pinned) = check {
                if let Some(presented) = presented_fingerprint(host, port, limit).await {
                    if !presented.eq_ignore_ascii_case(pinned) {
                        return Err(ClientError::PinMismatch {
                            addr,
                            remote: None,
                            pinned: pinned.clone(),
                            presented,
                        });
                    }
                }
            }
            return Err(ClientError::Tls { addr, source });
        }
        Err(e) => return Err(e),
    };
    let der = match check {
        ServerCheck::Record => recorder.seen_der().unwrap_or_default(),
        ServerCheck::Pinned(_) => {
            let (_, session) = tls.get_ref();
            session
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec())
                .unwrap_or_default()
        }
    };
    Ok((tls, der))
}

/// What certificate does the server present now? A recording handshake without a client
/// certificate, used only to explain a failed pinned handshake.
async fn presented_fingerprint(host: &str, port: u16, limit: Duration) -> Option<String> {
    let recorder = Arc::new(PeerRecorder::default());
    let config =
        transport::tls::client_config(ServerTrust::Record(recorder.clone()), None, &[b"http/1.1"]).ok()?;
    let attempt = async {
        let tcp = TcpStream::connect((host, port)).await.ok()?;
        TlsConnector::from(config)
            .connect(transport::tls::server_name(host), tcp)
            .await
            .ok()
    };
    let _ = tokio::time::timeout(limit, attempt).await;
    recorder.seen_der().map(|der| trust::fingerprint(&der))
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
