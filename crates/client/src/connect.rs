//! The one place that opens connections to a remote.
//!
//! ```text
//!  connect(&DialSpec) / connect_then(&DialSpec, avoid, then)
//!    order the endpoints (pure: order_endpoints): last that worked first, then the
//!      configured order, recently failed ones and `avoid` last   (state file per remote)
//!    resolve host names: every A/AAAA record is a candidate (tokio lookup_host)
//!    race (RFC 8305 style): start candidate 1; every ATTEMPT_DELAY (250 ms) without a
//!      winner, or as soon as an attempt fails, start the next one in parallel
//!      attempt = unix connect | TCP connect + TLS 1.3 handshake (pinned, client cert),
//!                under connect_timeout (3 s), then `then(conn)` (e.g. the first exchange)
//!    first success wins, the other attempts are dropped (cancelled);
//!    the winner is remembered, failed (and slower, cancelled) ones are tried last next time
//! ```
//!
//! A failed handshake against a pinned remote is diagnosed with a second, recording
//! handshake, so the user is told the certificate changed and what it changed to rather
//! than a bare TLS alert. Only `transport` names TLS library types; this module passes
//! PEM, DER and fingerprints. One pinned fingerprint covers every address of a remote.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use transport::tls::{ClientTlsStream, PeerRecorder, ServerTrust, TlsConnector};

use crate::addr::Endpoint;
use crate::ClientError;

/// How long one connection attempt (TCP connect plus TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long an attempt runs alone before the next candidate is started beside it.
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// How long a failed address stays at the end of the order.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(600);

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
    /// The remote's addresses, all unix or all https; raced in the order of
    /// [`order_endpoints`].
    pub endpoints: Vec<Endpoint>,
    /// Ignored for unix sockets.
    pub check: ServerCheck,
    /// The client certificate presented over TLS.
    pub identity: Option<trust::CertPair>,
    /// The deadline of each attempt (connect plus TLS handshake).
    pub connect_timeout: Duration,
    /// Where the remote's [`AddrState`] is remembered (`None`: nothing is remembered).
    pub state_file: Option<PathBuf>,
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

/// What is remembered per remote between runs: the address that worked last and the
/// addresses that failed recently (URL -> UNIX time of the failure).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrState {
    #[serde(default)]
    pub last_ok: Option<String>,
    #[serde(default)]
    pub failed: BTreeMap<String, u64>,
}

impl AddrState {
    /// Reads a state file; a missing or unreadable one is the empty state.
    pub fn load(path: &Path) -> AddrState {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes the state file (best effort: a temporary file renamed over it).
    pub fn save(&self, path: &Path) {
        let Some(parent) = path.parent() else { return };
        let _ = std::fs::create_dir_all(parent);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if let Ok(text) = serde_json::to_vec(self) {
            if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, path).is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }

    pub fn record_success(&mut self, url: &str) {
        self.last_ok = Some(url.to_string());
        self.failed.remove(url);
    }

    pub fn record_failure(&mut self, url: &str, now: u64) {
        self.failed.insert(url.to_string(), now);
        if self.last_ok.as_deref() == Some(url) {
            self.last_ok = None;
        }
    }
}

/// Seconds since the UNIX epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The order endpoints are tried in (pure): the last that worked first, then the
/// configured order, then those that failed within [`FAILURE_MEMORY`] (oldest failure
/// first), then those in `avoid`. Duplicates are dropped; nothing else is.
pub fn order_endpoints(
    endpoints: &[Endpoint],
    state: &AddrState,
    avoid: &[Endpoint],
    now: u64,
) -> Vec<Endpoint> {
    let mut seen = BTreeSet::new();
    let mut keyed: Vec<((u8, u64, usize), Endpoint)> = Vec::new();
    for (i, e) in endpoints.iter().enumerate() {
        let url = e.url();
        if !seen.insert(url.clone()) {
            continue;
        }
        let recent_failure = state
            .failed
            .get(&url)
            .copied()
            .filter(|t| now.saturating_sub(*t) < FAILURE_MEMORY.as_secs());
        let key = if avoid.contains(e) {
            (3, 0, i)
        } else if let Some(t) = recent_failure {
            (2, t, i)
        } else if state.last_ok.as_deref() == Some(url.as_str()) {
            (0, 0, i)
        } else {
            (1, 0, i)
        };
        keyed.push((key, e.clone()));
    }
    keyed.sort_by_key(|(k, _)| *k);
    keyed.into_iter().map(|(_, e)| e).collect()
}

/// One thing to dial: an endpoint and, for https, one resolved socket address of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub endpoint: Endpoint,
    pub addr: Option<SocketAddr>,
}

/// Expands endpoints into candidates: an IP literal is one, a host name one per A/AAAA
/// record (resolution bounded by `limit`; a name that does not resolve is an error for
/// that endpoint only).
pub async fn candidates(endpoints: &[Endpoint], limit: Duration) -> (Vec<Candidate>, Vec<ClientError>) {
    let resolved = futures_util::future::join_all(endpoints.iter().map(|e| async move {
        match e {
            Endpoint::Unix(_) => Ok(vec![Candidate {
                endpoint: e.clone(),
                addr: None,
            }]),
            Endpoint::Https { host, port } => {
                if let Ok(ip) = host.parse::<IpAddr>() {
                    return Ok(vec![Candidate {
                        endpoint: e.clone(),
                        addr: Some(SocketAddr::new(ip, *port)),
                    }]);
                }
                match tokio::time::timeout(limit, tokio::net::lookup_host((host.as_str(), *port))).await {
                    Ok(Ok(addrs)) => {
                        let mut out: Vec<Candidate> = Vec::new();
                        for a in addrs {
                            let c = Candidate {
                                endpoint: e.clone(),
                                addr: Some(a),
                            };
                            if !out.contains(&c) {
                                out.push(c);
                            }
                        }
                        Ok(out)
                    }
                    Ok(Err(source)) => Err(ClientError::Connect {
                        addr: e.authority(),
                        source,
                    }),
                    Err(_) => Err(ClientError::ConnectTimeout {
                        addr: e.authority(),
                        secs: limit.as_secs(),
                    }),
                }
            }
        }
    }))
    .await;
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    for r in resolved {
        match r {
            Ok(c) => out.extend(c),
            Err(e) => errors.push(e),
        }
    }
    (out, errors)
}

/// Opens a connection to the first endpoint that answers (see the module docs).
pub async fn connect(spec: &DialSpec) -> Result<Connected, ClientError> {
    connect_then(spec, &[], |c| async move { Ok(c) }).await
}

/// Races the remote's candidates as [`connect`] does, each attempt being the connection
/// followed by `then` on it (the first exchange, say); the first attempt that succeeds
/// as a whole wins. Endpoints in `avoid` are tried last.
pub async fn connect_then<T, F, Fut>(spec: &DialSpec, avoid: &[Endpoint], then: F) -> Result<T, ClientError>
where
    F: Fn(Connected) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    if spec.endpoints.is_empty() {
        return Err(ClientError::Invalid(
            "Remotes must have at least one address".into(),
        ));
    }
    let now = unix_now();
    let mut state = spec
        .state_file
        .as_deref()
        .map(AddrState::load)
        .unwrap_or_default();
    let before = state.clone();
    let ordered = order_endpoints(&spec.endpoints, &state, avoid, now);
    let (cands, mut errors) = candidates(&ordered, spec.connect_timeout).await;
    let then = &then;
    let start = |i: usize| {
        let cand = cands[i].clone();
        async move {
            let attempt = async {
                let conn = tokio::time::timeout(spec.connect_timeout, connect_one(&cand, spec))
                    .await
                    .map_err(|_| ClientError::ConnectTimeout {
                        addr: cand.endpoint.authority(),
                        secs: spec.connect_timeout.as_secs(),
                    })??;
                then(conn).await
            };
            (i, attempt.await)
        }
    };
    let mut running = FuturesUnordered::new();
    let mut live = BTreeSet::new();
    let mut failed: Vec<usize> = Vec::new();
    let mut next = 0;
    let mut winner = None;
    if !cands.is_empty() {
        running.push(start(0));
        live.insert(0);
        next = 1;
    }
    while !running.is_empty() {
        let more = next < cands.len();
        tokio::select! {
            Some((i, r)) = running.next() => {
                live.remove(&i);
                match r {
                    Ok(v) => {
                        winner = Some((i, v));
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(endpoint = %cands[i].endpoint.url(), error = %e, "connection attempt failed");
                        errors.push(e);
                        failed.push(i);
                        if more {
                            running.push(start(next));
                            live.insert(next);
                            next += 1;
                        }
                    }
                }
            }
            _ = tokio::time::sleep(ATTEMPT_DELAY), if more => {
                tracing::debug!(endpoint = %cands[next].endpoint.url(), "starting a parallel attempt");
                running.push(start(next));
                live.insert(next);
                next += 1;
            }
        }
    }
    drop(running); // cancels the attempts that lost
    if let Some(path) = &spec.state_file {
        let won = winner.as_ref().map(|(i, _)| cands[*i].endpoint.url());
        // Failed and slower (started earlier, still pending) endpoints go last next time.
        for i in failed.iter().chain(
            live.iter()
                .filter(|i| winner.as_ref().is_some_and(|(w, _)| *i < w)),
        ) {
            let url = cands[*i].endpoint.url();
            if won.as_deref() != Some(url.as_str()) {
                state.record_failure(&url, now);
            }
        }
        if let Some(url) = &won {
            state.record_success(url);
        }
        if state != before {
            state.save(path);
        }
    }
    match winner {
        Some((_, v)) => Ok(v),
        None if errors.len() == 1 => Err(errors.remove(0)),
        None if errors.is_empty() => Err(ClientError::Invalid("No address to connect to".into())),
        None => Err(ClientError::AllFailed(errors)),
    }
}

/// Remembers that `endpoint` failed (a stream that broke after connecting, say), so the
/// next connection tries it last.
pub fn record_failure(spec: &DialSpec, endpoint: &Endpoint) {
    if let Some(path) = &spec.state_file {
        let mut state = AddrState::load(path);
        state.record_failure(&endpoint.url(), unix_now());
        state.save(path);
    }
}

async fn connect_one(cand: &Candidate, spec: &DialSpec) -> Result<Connected, ClientError> {
    let endpoint = &cand.endpoint;
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
                cand.addr,
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
    resolved: Option<SocketAddr>,
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
        let tcp = match resolved {
            Some(sa) => TcpStream::connect(sa).await,
            None => TcpStream::connect((host, port)).await,
        }
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
                if let Some(presented) = presented_fingerprint(host, port, resolved, limit).await {
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
async fn presented_fingerprint(
    host: &str,
    port: u16,
    resolved: Option<SocketAddr>,
    limit: Duration,
) -> Option<String> {
    let recorder = Arc::new(PeerRecorder::default());
    let config =
        transport::tls::client_config(ServerTrust::Record(recorder.clone()), None, &[b"http/1.1"]).ok()?;
    let attempt = async {
        let tcp = match resolved {
            Some(sa) => TcpStream::connect(sa).await.ok()?,
            None => TcpStream::connect((host, port)).await.ok()?,
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint::Https {
            host: "127.0.0.1".into(),
            port,
        }
    }

    fn ports(v: &[Endpoint]) -> Vec<u16> {
        v.iter()
            .map(|e| match e {
                Endpoint::Https { port, .. } => *port,
                Endpoint::Unix(_) => 0,
            })
            .collect()
    }

    #[test]
    fn t10_configured_order_without_state() {
        let eps = [ep(1), ep(2), ep(3)];
        let o = order_endpoints(&eps, &AddrState::default(), &[], 1000);
        assert_eq!(ports(&o), [1, 2, 3]);
        let dup = [ep(1), ep(2), ep(1)];
        assert_eq!(
            ports(&order_endpoints(&dup, &AddrState::default(), &[], 1000)),
            [1, 2]
        );
    }

    #[test]
    fn t10_last_working_first_recent_failures_last() {
        let eps = [ep(1), ep(2), ep(3), ep(4)];
        let mut st = AddrState::default();
        st.record_success(&ep(3).url());
        st.record_failure(&ep(2).url(), 990);
        st.record_failure(&ep(1).url(), 995);
        assert_eq!(ports(&order_endpoints(&eps, &st, &[], 1000)), [3, 4, 2, 1]);
        // Failures are forgotten after FAILURE_MEMORY.
        let later = 995 + FAILURE_MEMORY.as_secs();
        assert_eq!(ports(&order_endpoints(&eps, &st, &[], later)), [3, 1, 2, 4]);
        // Avoided endpoints go after everything, even the last that worked.
        assert_eq!(ports(&order_endpoints(&eps, &st, &[ep(3)], 1000)), [4, 2, 1, 3]);
    }

    #[test]
    fn t10_a_failure_unseats_the_last_working_address() {
        let mut st = AddrState::default();
        st.record_success(&ep(1).url());
        st.record_failure(&ep(1).url(), 1000);
        assert_eq!(st.last_ok, None);
        st.record_success(&ep(1).url());
        assert!(st.failed.is_empty());
        let eps = [ep(2), ep(1)];
        assert_eq!(ports(&order_endpoints(&eps, &st, &[], 1000)), [1, 2]);
    }

    #[test]
    fn t10_state_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("remote-state").join("c.json");
        assert_eq!(AddrState::load(&path), AddrState::default());
        let mut st = AddrState::default();
        st.record_success("https://a:1");
        st.record_failure("https://b:2", 7);
        st.save(&path);
        assert_eq!(AddrState::load(&path), st);
    }

    #[tokio::test]
    async fn t10_host_names_give_one_candidate_per_address() {
        let eps = [
            Endpoint::Https {
                host: "localhost".into(),
                port: 9,
            },
            ep(5),
        ];
        let (c, errors) = candidates(&eps, Duration::from_secs(3)).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert!(c.len() >= 2, "{c:?}");
        assert!(c.iter().all(|c| c.addr.is_some_and(|a| a.ip().is_loopback())));
        assert_eq!(c.last().unwrap().endpoint, ep(5));
    }
}
