//! Accept loops. Each accepted connection gets its own task: the TLS handshake is bounded
//! by a timeout there, never in the loop, so one silent client cannot stop the others.
//!
//! Each listener holds a bounded number of connections ([`ConnLimit`]). Past it, a new
//! connection is closed at once, unless room is kept for connections the server ranks
//! first (members): those are handshaken on probation and kept if they qualify.
//!
//! ```text
//!  accept ─ room? ─yes─> handshake ─> serve (the place is held until the connection ends)
//!           └no─ probation place? ─yes─> handshake ─ priority(facts)? ─yes─> reserved place ─> serve
//!                └no─> close                            └no─> close
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use trust::ConnFacts;

use crate::proxy::{self, Prefixed};

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a peer may take to send its PROXY header (or its first bytes).
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Decides whether a peer address may send a PROXY header (`core.https_trusted_proxy`).
pub type ProxyPolicy = Arc<dyn Fn(std::net::IpAddr) -> bool + Send + Sync>;

/// Decides, after the handshake, whether a connection may use the reserved places.
pub type Priority = Arc<dyn Fn(&ConnFacts) -> bool + Send + Sync>;

/// How many connections one listener holds at once.
#[derive(Clone)]
pub struct ConnLimit {
    open: Arc<Semaphore>,
    reserved: Arc<Semaphore>,
    probation: Arc<Semaphore>,
}

impl ConnLimit {
    /// `places` for anyone, plus `reserved` only for connections a [`Priority`] accepts.
    pub fn new(places: usize, reserved: usize) -> Self {
        ConnLimit {
            open: Arc::new(Semaphore::new(places)),
            reserved: Arc::new(Semaphore::new(reserved)),
            probation: Arc::new(Semaphore::new(reserved)),
        }
    }

    /// Connections held now.
    pub fn in_use(&self, places: usize, reserved: usize) -> usize {
        (places - self.open.available_permits()) + (reserved - self.reserved.available_permits())
    }
}

/// Where an accepted connection sits.
enum Place {
    Open(#[allow(dead_code)] OwnedSemaphorePermit),
    /// Handshaking while the listener is full: kept only if it earns a reserved place.
    Probation(#[allow(dead_code)] OwnedSemaphorePermit),
}

/// The byte stream of an accepted connection.
pub enum ConnStream {
    Tls(Box<TlsStream<Prefixed<TcpStream>>>),
    Unix(UnixStream),
}

/// An accepted, handshaken connection and what we know of its peer.
pub struct Conn {
    pub stream: ConnStream,
    pub facts: ConnFacts,
    /// The negotiated ALPN protocol, if any.
    pub alpn: Option<Vec<u8>>,
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Accepts TLS connections until `stop` turns true, handing each to `serve`, at most
/// as many at once as `limit` allows.
pub async fn serve_tls<F, Fut>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    proxies: ProxyPolicy,
    limit: ConnLimit,
    priority: Priority,
    mut stop: watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(Conn) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped(&mut stop) => return,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let place = match limit.open.clone().try_acquire_owned() {
            Ok(p) => Place::Open(p),
            Err(_) => match limit.probation.clone().try_acquire_owned() {
                Ok(p) => Place::Probation(p),
                Err(_) => {
                    FULL.warn(|suppressed| {
                        tracing::warn!(
                            listener = "https",
                            suppressed,
                            "connection limit reached; closing new connections"
                        )
                    });
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let serve = serve.clone();
        let proxies = proxies.clone();
        let priority = priority.clone();
        let reserved = limit.reserved.clone();
        tokio::spawn(async move {
            let Some(conn) = handshake(acceptor, tcp, remote, proxies).await else {
                return;
            };
            let _held = match place {
                Place::Open(p) => p,
                Place::Probation(_) => match reserved.try_acquire_owned() {
                    Ok(p) if priority(&conn.facts) => p,
                    _ => {
                        FULL.warn(|suppressed| {
                            tracing::warn!(
                                listener = "https",
                                suppressed,
                                "connection limit reached; closing new connections"
                            )
                        });
                        return;
                    }
                },
            };
            serve(conn).await;
        });
    }
}

static FULL: RateLimited = RateLimited::new();

/// PROXY header (from trusted peers only), then TLS.
///
/// ```text
///  first bytes ─ PROXY header? ─ peer trusted?   yes: client address = header's source
///                               │                no : close, warn (rate-limited)
///                               └ no header: the peer's own address
/// ```
async fn handshake(
    acceptor: TlsAcceptor,
    mut tcp: TcpStream,
    peer: SocketAddr,
    proxies: ProxyPolicy,
) -> Option<Conn> {
    let peer_ip = api::config::normalise_ip(peer.ip());
    let (header, leftover) = match proxy::read_header(&mut tcp, PROXY_HEADER_TIMEOUT).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(remote = %peer, error = %e, "connection closed before TLS");
            return None;
        }
    };
    let remote = match header {
        None => peer,
        Some(_) if !proxies(peer_ip) => {
            warn_untrusted_proxy(peer_ip);
            return None;
        }
        // A LOCAL header (health check) or no address: the proxy itself.
        Some(h) => h.source.filter(|_| !h.local).unwrap_or(peer),
    };
    let tls =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(Prefixed::new(leftover, tcp))).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::info!(remote = %remote, error = %e, "TLS handshake refused");
                return None;
            }
            Err(_) => {
                tracing::info!(remote = %remote, "TLS handshake timed out");
                return None;
            }
        };
    let (_, session) = tls.get_ref();
    let leaf = session.peer_certificates().and_then(|c| c.first());
    let cert_fingerprint = leaf.map(|c| trust::fingerprint(c.as_ref()));
    let cert_der = leaf.map(|c| std::sync::Arc::from(c.as_ref()));
    let cert_validity = leaf
        .and_then(|c| trust::cert::inspect(c.as_ref()).ok())
        .map(|i| (i.not_before, i.not_after));
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    Some(Conn {
        stream: ConnStream::Tls(Box::new(tls)),
        facts: ConnFacts {
            remote: Some(SocketAddr::new(
                api::config::normalise_ip(remote.ip()),
                remote.port(),
            )),
            cert_fingerprint,
            cert_der,
            cert_validity,
            unix_user: None,
        },
        alpn,
    })
}

/// Accepts unix-socket connections until `stop` turns true, at most as many at once as
/// `limit` allows (its own count: HTTPS clients never take the socket's places).
pub async fn serve_unix<F, Fut>(
    listener: UnixListener,
    limit: ConnLimit,
    mut stop: watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(Conn) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped(&mut stop) => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "unix accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(held) = limit.open.clone().try_acquire_owned() else {
            UNIX_FULL.warn(|suppressed| {
                tracing::warn!(
                    listener = "unix",
                    suppressed,
                    "connection limit reached; closing new connections"
                )
            });
            continue;
        };
        let user = match crate::unix::peer_user(&stream) {
            Ok(u) => u,
            Err(e) => {
                tracing::info!(error = %e, "unix peer credentials unavailable; closing");
                continue;
            }
        };
        let serve = serve.clone();
        tokio::spawn(async move {
            let _held = held;
            serve(Conn {
                stream: ConnStream::Unix(stream),
                facts: ConnFacts {
                    remote: None,
                    cert_fingerprint: None,
                    cert_der: None,
                    cert_validity: None,
                    unix_user: Some(user),
                },
                alpn: None,
            })
            .await;
        });
    }
}

static UNIX_FULL: RateLimited = RateLimited::new();

/// A PROXY header from a peer that is not a trusted proxy: logged, at most once every
/// ten seconds, so a flood cannot flood the log.
fn warn_untrusted_proxy(peer: std::net::IpAddr) {
    static UNTRUSTED: RateLimited = RateLimited::new();
    UNTRUSTED.warn(|suppressed| tracing::warn!(peer = %peer, suppressed, "refused a PROXY header from a peer that is not in core.https_trusted_proxy"));
}

/// A warning said at most once every ten seconds, with how many were held back.
struct RateLimited {
    last: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

impl RateLimited {
    const fn new() -> Self {
        RateLimited {
            last: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn warn(&self, say: impl FnOnce(u64)) {
        use std::sync::atomic::Ordering;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let last = self.last.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            say(self.suppressed.swap(0, Ordering::Relaxed));
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}
