//! Serving HTTP on one accepted connection: HTTP/1.1 or h2 (chosen by ALPN, as Go's
//! server does, so no connection waits for a preface), with upgrades for websockets,
//! bounded header reads, idle connections closed, and a graceful close on shutdown.
//!
//! ```text
//!  h1: headers within HEADER_READ_TIMEOUT, first request and every keep-alive request
//!      alike: an idle connection is closed after it
//!  h2: pings every H2_PING_EVERY (a vanished peer is dropped), and a connection with no
//!      request in flight for H2_IDLE_TIMEOUT (HEADER_READ_TIMEOUT before the first
//!      request) is closed with GOAWAY
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tower::ServiceExt;
use transport::{Conn, ConnStream};

use crate::context::Ctx;

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may run on after shutdown begins.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// An h2 connection with no request in flight for this long is closed.
pub const H2_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an h2 connection is pinged, and how long the answer may take.
pub const H2_PING_EVERY: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

pub type ConnHandler = Arc<dyn Fn(Conn) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The function the accept loops call for every connection.
/// It holds the daemon weakly: listeners live inside the daemon, and must not keep it
/// alive.
pub fn handler(ctx: &Ctx, router: Router) -> ConnHandler {
    let weak = Arc::downgrade(ctx);
    Arc::new(move |conn: Conn| {
        let ctx = weak.upgrade();
        let router = router.clone();
        Box::pin(async move {
            if let Some(ctx) = ctx {
                serve_conn(ctx, router, conn).await
            }
        })
    })
}

async fn serve_conn(ctx: Ctx, router: Router, conn: Conn) {
    ctx.metrics.connection_opened();
    let facts = conn.facts;
    let member = facts_member(&ctx, &facts);
    let facts_fingerprint = facts.cert_fingerprint.clone();
    let budget = crate::gate::ConnBudget::default();
    let activity = Arc::new(Activity::default());
    let busy = activity.clone();
    let svc = router
        .map_request(move |mut req: hyper::Request<Incoming>| {
            crate::tunnel::as_h1_websocket(&mut req);
            req.extensions_mut().insert(facts.clone());
            req.extensions_mut().insert(budget.clone());
            req
        })
        .map_future(move |response| {
            let request = busy.begin();
            async move {
                let r = response.await;
                drop(request);
                r
            }
        });
    let svc = TowerToHyperService::new(svc);
    let stop = ctx.closing.subscribe();
    let h2 = (conn.alpn.as_deref() == Some(b"h2".as_slice())).then(|| H2Peer {
        member,
        became_member: became_member(&ctx, &facts_fingerprint, member),
    });
    match conn.stream {
        ConnStream::Tls(s) => drive(*s, svc, h2, activity, stop).await,
        ConnStream::Unix(s) => drive(s, svc, None, activity, stop).await,
    }
    ctx.metrics.connection_closed();
}

/// Requests in flight on one connection, and when the last one ended.
struct Activity {
    since: Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
    requests: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            since: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }
}

impl Activity {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// Whether the connection has been idle too long: [`H2_IDLE_TIMEOUT`] after a
    /// request, [`HEADER_READ_TIMEOUT`] when none has come yet.
    fn too_idle(&self) -> bool {
        let limit = if self.requests.load(Ordering::SeqCst) == 0 {
            HEADER_READ_TIMEOUT
        } else {
            H2_IDLE_TIMEOUT
        };
        self.idle() >= limit
    }

    /// How long the connection has had no request in flight.
    fn idle(&self) -> Duration {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::SeqCst));
        self.since.elapsed().saturating_sub(last)
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_ms
            .store(a.since.elapsed().as_millis() as u64, Ordering::SeqCst);
        a.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Who is at the other end of an HTTP/2 connection.
struct H2Peer {
    /// Another member, proven by its certificate.
    member: bool,
    /// For a certificate that was not a member's when the connection opened: whether it
    /// is one now. A member's first calls can come before this member knows it as one
    /// (a member that joined after this one calls before this one has applied the entry
    /// that admits it), and that connection would keep a client's reset limit for its
    /// whole life.
    became_member: Option<Box<dyn Fn() -> bool + Send>>,
}

/// See [`H2Peer::became_member`]: `None` when there is nothing to watch for.
fn became_member(
    ctx: &Ctx,
    fingerprint: &Option<String>,
    member: bool,
) -> Option<Box<dyn Fn() -> bool + Send>> {
    let fingerprint = fingerprint.clone().filter(|_| !member)?;
    let ctx = ctx.clone();
    Some(Box::new(move || ctx.is_member(&ctx.store.state(), &fingerprint)))
}

/// Whether the connection's client certificate is a member's.
fn facts_member(ctx: &Ctx, facts: &trust::identity::ConnFacts) -> bool {
    facts
        .cert_fingerprint
        .as_deref()
        .is_some_and(|fp| ctx.is_member(&ctx.store.state(), fp))
}

/// Streams a member may reset before this member has taken them, on one connection.
/// A client keeps h2's default (20, its guard against a flood of resets). A member's
/// connection carries Raft and every forwarded call, and the websockets it tunnels:
/// after a pause of this member (a stop, a long GC-like stall of the machine) the other
/// member's timed-out calls arrive together with their resets, and closing the
/// connection for them would end every tunnelled exec and console on it.
const MEMBER_PENDING_RESETS: usize = 4096;

async fn drive<IO, S>(
    io: IO,
    svc: S,
    h2: Option<H2Peer>,
    activity: Arc<Activity>,
    stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<hyper::Request<Incoming>, Response = axum::response::Response>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // hyper's own builders, not the auto-detecting one: it waits for the first bytes
    // without a deadline before any timeout of the protocol applies.
    if let Some(peer) = h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        if peer.member {
            builder.max_pending_accept_reset_streams(MEMBER_PENDING_RESETS);
        }
        let conn = builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(64 * 1024)
            // Websockets over HTTP/2 (RFC 8441): how members tunnel them to each other.
            .enable_connect_protocol()
            .keep_alive_interval(Some(H2_PING_EVERY))
            .keep_alive_timeout(H2_PING_TIMEOUT)
            .serve_connection(TokioIo::new(io), svc);
        run(
            conn,
            |c| c.graceful_shutdown(),
            Some(activity),
            peer.became_member,
            stop,
        )
        .await
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(256 * 1024)
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        run(conn, |c| c.graceful_shutdown(), None, None, stop).await
    }
}

/// Runs a connection until it ends, closing it gracefully at shutdown and, when
/// `activity` is given, once it has had no request in flight for [`H2_IDLE_TIMEOUT`].
/// Once `became_member` says its peer is now known as a member, it takes no new stream
/// (a GOAWAY: the member opens a new connection, which gets a member's limits; see
/// [`H2Peer::became_member`]) and ends when the streams it carries do.
async fn run<C, E>(
    conn: C,
    shutdown: impl Fn(Pin<&mut C>),
    activity: Option<Arc<Activity>>,
    mut became_member: Option<Box<dyn Fn() -> bool + Send>>,
    mut stop: watch::Receiver<bool>,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    let mut idle_check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = idle_check.tick(), if activity.is_some() => {
                if activity.as_ref().is_some_and(|a| a.too_idle()) {
                    tracing::debug!("closing an idle h2 connection");
                    shutdown(conn.as_mut());
                    let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
                    return;
                }
                if became_member.as_ref().is_some_and(|f| f()) {
                    // No new stream here from now on; what runs on it (an event relay,
                    // a tunnel) goes on to its own end.
                    tracing::debug!("a connection opened before its peer was known as a member takes no new streams: it reconnects as one");
                    shutdown(conn.as_mut());
                    became_member = None;
                }
            }
            _ = transport::listen::stopped(&mut stop) => {
                shutdown(conn.as_mut());
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
                return;
            }
        }
    }
}
