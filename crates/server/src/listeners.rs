//! The HTTPS listener follows `core.https_address` at run time: it opens, moves and
//! closes without a restart. The unix socket is opened once at start.

use std::net::SocketAddr;

use api::config::{parse_listen_address, ListenAddress};
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use transport::tls::TlsAcceptor;

use crate::http::ConnHandler;

/// The default HTTPS port.
pub const DEFAULT_PORT: u16 = 8443;

/// HTTPS connections held at once for clients, at most (fewer when the open-files limit
/// is lower), plus places kept for members, and the unix socket's own count.
pub const HTTPS_PLACES: usize = 16_384;
pub const MEMBER_PLACES: usize = 256;
pub const UNIX_PLACES: usize = 1_024;
/// Descriptors kept for everything else: databases, snapshots, member connections.
const OTHER_FILES: u64 = 512;

/// Raises the soft open-files limit to the hard one (as Go programs such as Incus do),
/// and returns how many HTTPS client places fit under it beside the unix socket's, the
/// members' and [`OTHER_FILES`]: `wanted`, or fewer.
pub fn https_places(wanted: usize) -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    };
    let others = OTHER_FILES + (UNIX_PLACES + MEMBER_PLACES) as u64;
    let fit = soft.saturating_sub(others).max(64);
    let places = usize::try_from(fit).unwrap_or(wanted).min(wanted).max(1);
    if places < wanted {
        tracing::warn!(
            open_files = soft,
            places,
            wanted,
            "the open-files limit allows fewer HTTPS connections than asked for"
        );
    }
    places
}

struct Running {
    address: ListenAddress,
    local: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

pub struct Listeners {
    acceptor: TlsAcceptor,
    proxies: transport::listen::ProxyPolicy,
    members: transport::listen::Priority,
    /// Shared by every HTTPS listener in turn, so moving it keeps the count.
    limit: transport::listen::ConnLimit,
    https: Mutex<Option<Running>>,
}

impl Listeners {
    pub fn new(
        acceptor: TlsAcceptor,
        proxies: transport::listen::ProxyPolicy,
        members: transport::listen::Priority,
        places: usize,
    ) -> Self {
        Listeners {
            acceptor,
            proxies,
            members,
            limit: transport::listen::ConnLimit::new(places, MEMBER_PLACES),
            https: Mutex::new(None),
        }
    }

    /// The address the HTTPS listener is bound to now.
    pub async fn https_local_addr(&self) -> Option<SocketAddr> {
        self.https.lock().await.as_ref().map(|r| r.local)
    }

    /// Opens, moves or closes the HTTPS listener. On error the old listener stays.
    pub async fn set_https(&self, address: &str, handler: ConnHandler) -> Result<(), ListenError> {
        let mut current = self.https.lock().await;
        if address.is_empty() {
            if let Some(old) = current.take() {
                stop(old).await;
            }
            return Ok(());
        }
        let wanted = parse_listen_address(address, DEFAULT_PORT).map_err(ListenError::Address)?;
        if current.as_ref().is_some_and(|r| r.address == wanted) {
            return Ok(());
        }
        let listener = match bind(&wanted).await {
            Ok(l) => l,
            // The new address may overlap the old one (same port, wider host):
            // release the old one and try again, restoring it if that fails too.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && current.is_some() => {
                let old = current.take().expect("checked");
                let old_address = old.address.clone();
                stop(old).await;
                match bind(&wanted).await {
                    Ok(l) => l,
                    Err(e) => {
                        if let Ok(l) = bind(&old_address).await {
                            *current = Some(self.start(l, old_address, handler));
                        }
                        return Err(bind_error(address, e));
                    }
                }
            }
            Err(e) => return Err(bind_error(address, e)),
        };
        if let Some(old) = current.take() {
            stop(old).await;
        }
        *current = Some(self.start(listener, wanted, handler));
        Ok(())
    }

    fn start(&self, listener: TcpListener, address: ListenAddress, handler: ConnHandler) -> Running {
        let local = listener.local_addr().expect("bound listener has an address");
        let (stop_tx, stop_rx) = watch::channel(false);
        let acceptor = self.acceptor.clone();
        let task = tokio::spawn(transport::listen::serve_tls(
            listener,
            acceptor,
            self.proxies.clone(),
            self.limit.clone(),
            self.members.clone(),
            stop_rx,
            move |c| handler(c),
        ));
        tracing::info!(address = %local, "HTTPS listener open");
        Running {
            address,
            local,
            stop: stop_tx,
            task,
        }
    }

    /// Closes the HTTPS listener (at shutdown).
    pub async fn close(&self) {
        if let Some(old) = self.https.lock().await.take() {
            stop(old).await;
        }
    }
}

async fn bind(address: &ListenAddress) -> std::io::Result<TcpListener> {
    TcpListener::bind(address.bind_string()).await
}

/// Why the HTTPS listener could not be opened where asked (the old one stays).
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The address does not parse (checked on write, so only from an old state).
    #[error("{0}")]
    Address(String),
    #[error("Cannot listen on https socket {address:?}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

fn bind_error(address: &str, e: std::io::Error) -> ListenError {
    ListenError::Bind {
        address: address.to_string(),
        source: e,
    }
}

async fn stop(r: Running) {
    let _ = r.stop.send(true);
    let _ = r.task.await;
    tracing::info!(address = %r.local, "HTTPS listener closed");
}
