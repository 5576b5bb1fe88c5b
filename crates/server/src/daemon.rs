//! Start-up and shutdown of one member.
//!
//! ```text
//! start:    state dir (0711) ─> stapesd.lock (flock, our pid) ─> server.crt/key (made once)
//!           ─> store (replay) ─> unix socket ─> HTTPS listener if core.https_address is set
//!           ─> ready (─> core.anycast_address on `lo` while ready)
//! shutdown: not ready, anycast address removed ─> drain period ─> listeners close
//!           ─> open connections finish in-flight requests (bounded by DRAIN_TIMEOUT)
//!           ─> our socket file removed (only if it is still the one we bound) ─> exit
//! ```
//!
//! The lock makes "one daemon per state directory" a fact rather than a hope: a second
//! daemon stops at once and names the holder. The socket check matters when a stopping
//! daemon overlaps with its successor (a restart that did not wait): the path may by
//! then hold the successor's socket, which must survive.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use cluster::Store;
use host::HostInfo;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use transport::tls::{self, CertResolver, TlsAcceptor};

use crate::context::{Ctx, Inner};
use crate::events::EventHub;
use crate::http::DRAIN_TIMEOUT;
use crate::listeners::Listeners;
use crate::metrics::Metrics;

/// The exit status of a member that stopped because its storage failed (EX_TEMPFAIL):
/// a supervisor restarts it, and the restart reopens the databases.
pub const EXIT_TEMPFAIL: i32 = 75;

/// How a member is started.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    /// The unix socket; `STATE_DIR/unix.socket` when `None`.
    pub socket: Option<PathBuf>,
    /// The group that owns the socket.
    pub group: Option<String>,
    /// After a shutdown request, how long to keep serving while not ready, so load
    /// balancers, VRRP and routing daemons move traffic away first.
    pub drain: std::time::Duration,
    /// The instance runtime: LXC, or the in-process fake for tests.
    pub driver: instance::DriverKind,
    /// Where lxcfs is mounted, for the LXC driver (`--lxcfs-dir`).
    pub lxcfs: PathBuf,
    /// The largest snapshot accepted from a leader, in bytes.
    pub max_snapshot_size: u64,
    /// HTTPS connections held at once for clients (members have places of their own).
    pub max_connections: usize,
    /// The largest body a streamed route (an upload) accepts, in bytes.
    pub max_stream_body: u64,
    /// Serves the `/internal/test/*` routes the integration tests stream through.
    pub test_routes: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("Failed to prepare the state directory {path}: {source}")]
    StateDir { path: PathBuf, source: std::io::Error },
    #[error("State directory {} is in use by stapesd ({}): stop that daemon first", path.display(), holder_text(*pid))]
    InUse { path: PathBuf, pid: Option<u32> },
    #[error("Failed to load or create the server certificate: {0}")]
    Certificate(String),
    #[error("Failed to open the state database: {0}")]
    Store(#[from] cluster::StoreError),
    #[error("Failed to bind the unix socket {path}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
    #[error("Failed to open the HTTPS listener: {0}")]
    Https(#[source] crate::listeners::ListenError),
    #[error("Refusing to start: {0}")]
    Damaged(#[from] crate::state_files::Damaged),
}

fn holder_text(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".into(),
    }
}

/// A running member.
pub struct Daemon {
    ctx: Ctx,
    socket: PathBuf,
    /// Device and inode of the socket file this daemon bound.
    socket_id: Option<(u64, u64)>,
    /// Held (flock) for as long as the daemon runs.
    _lock: std::fs::File,
    unix_task: JoinHandle<()>,
    anycast_task: JoinHandle<()>,
    drain: std::time::Duration,
}

impl Daemon {
    pub async fn start(config: DaemonConfig, events: EventHub) -> Result<Daemon, StartError> {
        let dir = &config.state_dir;
        // Others may pass through to the socket (its mode and group decide who may use
        // it) but not list the directory, as /var/lib/incus; what is secret inside is 0600
        // or in a 0700 directory.
        prepare_dir(dir, 0o711)?;
        let lock = lock_state_dir(dir)?;
        crate::state_files::check(dir)?;
        let cert = load_or_create_cert(dir)?;
        let key = tls::certified_key(&cert.cert_pem, &cert.key_pem)
            .map_err(|e| StartError::Certificate(e.to_string()))?;
        let resolver = CertResolver::new(key);
        let server_config =
            tls::server_config(resolver.clone()).map_err(|e| StartError::Certificate(e.to_string()))?;
        let der = resolver.leaf_der();
        let served = (trust::cert::der_to_pem(&der), trust::fingerprint(&der));

        let db_dir = dir.join("database");
        prepare_dir(&db_dir, 0o700)?;
        let peers = crate::peers::Peers::new(cert.cert_pem.clone(), cert.key_pem.clone());
        let store = Store::open(&db_dir, Arc::new(crate::peers::RaftRpc(peers.clone()))).await?;
        store.set_snapshot_limit(config.max_snapshot_size);

        let host = HostInfo::read();
        // Trusted proxies are read from the replicated configuration per connection.
        let trusted_from = Arc::new(std::sync::OnceLock::<std::sync::Weak<Inner>>::new());
        let lookup = trusted_from.clone();
        let proxies: transport::listen::ProxyPolicy = Arc::new(move |ip| {
            lookup
                .get()
                .and_then(std::sync::Weak::upgrade)
                .is_some_and(|ctx| ctx.settings().trusted_proxy(ip))
        });
        let lookup = trusted_from.clone();
        let members: transport::listen::Priority = Arc::new(move |facts| {
            let ctx = lookup.get().and_then(std::sync::Weak::upgrade);
            match (ctx, &facts.cert_fingerprint) {
                (Some(ctx), Some(fp)) => ctx.is_member(&ctx.store.state(), fp),
                _ => false,
            }
        });
        let (shutdown_tx, _) = watch::channel(false);
        let ctx: Ctx = Arc::new(Inner {
            store,
            state_dir: dir.clone(),
            host,
            server_cert: cert,
            peers,
            heartbeats: Default::default(),
            liveness: Default::default(),
            peer_hints: Default::default(),
            progress: Default::default(),
            bodies: Default::default(),
            exit_code: Default::default(),
            ops: crate::ops::Engine::new(events.clone()),
            was_listed: Default::default(),
            leader_seen_ms: Default::default(),
            resolver,
            served: arc_swap::ArcSwap::from_pointee(served),
            events,
            metrics: Metrics::default(),
            listeners: Listeners::new(
                TlsAcceptor::from(server_config),
                proxies,
                members,
                crate::listeners::https_places(config.max_connections),
            ),
            started: Instant::now(),
            shutting_down: Default::default(),
            shutdown_tx,
            closing: watch::channel(false).0,
            handler: Default::default(),
            state_changed: watch::channel(0).0,
            oidc: Default::default(),
            driver: instance::open(config.driver, dir, &config.lxcfs),
            max_stream_body: config.max_stream_body,
            server_doc: Default::default(),
            images: Default::default(),
            instances: Default::default(),
            settings: Default::default(),
        });
        let _ = trusted_from.set(Arc::downgrade(&ctx));
        crate::images::remove_partial(&ctx);
        crate::volumes::remove_partial(&ctx);
        crate::context::on_state_change(&ctx);
        if config.test_routes {
            tracing::warn!("serving the test routes under /internal/test (--test-routes)");
        }
        let router = crate::routes::router(ctx.clone(), config.test_routes);
        let handler = crate::http::handler(&ctx, router);
        let _ = ctx.handler.set(handler.clone());

        // HTTPS first: once the unix socket answers, the member is fully up (what
        // `admin waitready` and the tests wait for).
        let https = ctx.https_address();
        if !https.is_empty() {
            ctx.listeners
                .set_https(&https, ctx.conn_handler())
                .await
                .map_err(StartError::Https)?;
        }
        let socket = config.socket.clone().unwrap_or_else(|| dir.join("unix.socket"));
        let unix =
            transport::unix::bind(&socket, config.group.as_deref()).map_err(|source| StartError::Socket {
                path: socket.clone(),
                source,
            })?;
        let socket_id = std::fs::symlink_metadata(&socket)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let unix_task = tokio::spawn(transport::listen::serve_unix(
            unix,
            transport::listen::ConnLimit::new(crate::listeners::UNIX_PLACES, 0),
            ctx.closing.subscribe(),
            move |c| handler(c),
        ));

        tokio::spawn(watch_state(ctx.clone()));
        tokio::spawn(crate::membership::run(ctx.clone()));
        tokio::spawn(crate::relay::run(ctx.clone()));
        tokio::spawn(crate::acme::run(ctx.clone()));
        tokio::spawn(crate::images::sync_task(ctx.clone()));
        tokio::spawn(crate::routes::instances::on_start(ctx.clone()));
        tokio::spawn(crate::snapshot_tasks::run(ctx.clone()));
        let anycast_task = tokio::spawn(crate::anycast::run(ctx.clone()));
        tracing::info!(
            dir = %dir.display(),
            socket = %socket.display(),
            https = %https,
            fingerprint = %ctx.served_certificate().1,
            driver = ctx.driver.kind(),
            "stapesd ready"
        );
        Ok(Daemon {
            ctx,
            socket,
            socket_id,
            _lock: lock,
            unix_task,
            anycast_task,
            drain: config.drain,
        })
    }

    /// Asks the daemon to stop (what SIGTERM does).
    pub fn shutdown_trigger(&self) -> watch::Sender<bool> {
        self.ctx.shutdown_tx.clone()
    }

    /// The HTTPS listener's bound address, when there is one.
    pub async fn https_addr(&self) -> Option<std::net::SocketAddr> {
        self.ctx.listeners.https_local_addr().await
    }

    /// Runs until shutdown is asked for, then stops in order. Returns the exit status:
    /// 0, or [`EXIT_TEMPFAIL`] when the member stopped because its storage failed.
    pub async fn run(self) -> i32 {
        let mut stop = self.ctx.shutdown_tx.subscribe();
        let _ = stop.wait_for(|s| *s).await;
        self.ctx.shutting_down.store(true, Ordering::SeqCst);
        // The anycast task removes the address as soon as shutdown is asked for.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.anycast_task).await;
        if !self.drain.is_zero() {
            tracing::info!(drain = ?self.drain, "shutting down: not ready, still serving while traffic moves away");
            tokio::time::sleep(self.drain).await;
        }
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        self.ctx.listeners.close().await;
        // Connections accepted just before the listener closed get a moment to send
        // their request: a graceful close would otherwise drop them unread.
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let _ = self.ctx.closing.send(true);
        let _ = self.unix_task.await;
        self.ctx.store.shutdown().await;
        remove_own_socket(&self.socket, self.socket_id);
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while self.ctx.metrics.open_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tracing::info!(open = self.ctx.metrics.open_connections(), "stopped");
        self.ctx.exit_code.load(Ordering::SeqCst)
    }
}

/// Follows state changes (local or replicated) with what derives from them.
async fn watch_state(ctx: Ctx) {
    let mut changes = ctx.store.subscribe();
    let mut stop = ctx.closing.subscribe();
    loop {
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                crate::context::on_state_change(&ctx);
                ctx.notify_state_changed();
            }
            _ = transport::listen::stopped(&mut stop) => return,
        }
    }
}

/// Removes the socket file at `path` only if it is still the one this daemon bound.
fn remove_own_socket(path: &Path, bound: Option<(u64, u64)>) {
    let now = std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()));
    match now {
        Some(id) if Some(id) == bound => {
            let _ = std::fs::remove_file(path);
        }
        Some(_) => {
            tracing::info!(socket = %path.display(), "the socket path now holds another socket; left in place")
        }
        None => {}
    }
}

/// Takes `DIR/stapesd.lock` (an exclusive flock, released by the kernel when the
/// process ends, however it ends) and writes our pid into it.
fn lock_state_dir(dir: &Path) -> Result<std::fs::File, StartError> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("stapesd.lock");
    let err = |source| StartError::StateDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(StartError::InUse {
                path: dir.to_path_buf(),
                pid: text.trim().parse().ok(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
    }
    file.set_len(0).map_err(err)?;
    file.rewind().map_err(err)?;
    writeln!(file, "{}", std::process::id()).map_err(err)?;
    file.sync_all().map_err(err)?;
    Ok(file)
}

fn prepare_dir(dir: &Path, mode: u32) -> Result<(), StartError> {
    let err = |source| StartError::StateDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(err)
}

/// `server.crt`/`server.key`, created on first start. The key is written to a temporary
/// file and renamed, so a crash never leaves half a key behind.
fn load_or_create_cert(dir: &Path) -> Result<trust::CertPair, StartError> {
    let (crt, key) = (dir.join("server.crt"), dir.join("server.key"));
    let fail = |e: &dyn std::fmt::Display| StartError::Certificate(e.to_string());
    if crt.exists() && key.exists() {
        return Ok(trust::CertPair {
            cert_pem: std::fs::read_to_string(&crt).map_err(|e| fail(&e))?,
            key_pem: std::fs::read_to_string(&key).map_err(|e| fail(&e))?,
        });
    }
    let hostname = HostInfo::read().hostname;
    let pair = trust::CertPair::generate_server(&hostname).map_err(|e| fail(&e))?;
    write_atomic(&key, pair.key_pem.as_bytes(), 0o600).map_err(|e| fail(&e))?;
    write_atomic(&crt, pair.cert_pem.as_bytes(), 0o644).map_err(|e| fail(&e))?;
    tracing::info!(path = %crt.display(), "created the server certificate");
    Ok(pair)
}

fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
