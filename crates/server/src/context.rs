//! What every handler can reach.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cluster::Store;
use tokio::sync::watch;
use transport::tls::CertResolver;

use crate::events::EventHub;
use crate::host::HostInfo;
use crate::listeners::Listeners;
use crate::metrics::Metrics;

/// Shared daemon state, cheap to clone.
pub type Ctx = Arc<Inner>;

pub struct Inner {
    pub store: Store,
    pub state_dir: PathBuf,
    /// This member's name (the host name while standalone).
    pub server_name: String,
    pub host: HostInfo,
    /// The certificate clients see.
    pub resolver: Arc<CertResolver>,
    /// PEM and fingerprint of the served certificate, kept beside the resolver.
    pub served: arc_swap::ArcSwap<(String, String)>,
    pub events: EventHub,
    pub metrics: Metrics,
    pub listeners: Listeners,
    pub started: Instant,
    /// True from the moment shutdown begins; readiness turns false.
    pub shutting_down: AtomicBool,
    /// Asks the daemon to shut down (`PUT /internal/shutdown`, signals).
    pub shutdown_tx: watch::Sender<bool>,
    /// Serves accepted connections; set once the router exists.
    pub handler: std::sync::OnceLock<crate::http::ConnHandler>,
    /// Bumped after every state change, so waiters (operation wait) wake up.
    pub state_changed: watch::Sender<u64>,
}

impl Inner {
    /// PEM and fingerprint of the certificate now served.
    pub fn served_certificate(&self) -> Arc<(String, String)> {
        self.served.load_full()
    }

    /// Serves a new certificate from the next handshake on.
    pub fn set_served_certificate(&self, key: transport::tls::CertifiedKey) {
        self.resolver.set(key);
        let der = self.resolver.leaf_der();
        self.served.store(Arc::new((
            trust::cert::der_to_pem(&der),
            trust::fingerprint(&der),
        )));
    }

    /// The member-local HTTPS address as configured (may be a wildcard).
    pub fn https_address(&self) -> String {
        self.store
            .local()
            .get("core.https_address")
            .cloned()
            .unwrap_or_default()
    }

    /// Where clients can reach this member.
    pub fn addresses(&self) -> Vec<String> {
        crate::host::listen_addresses(&self.https_address())
    }

    pub fn conn_handler(&self) -> crate::http::ConnHandler {
        self.handler.get().expect("handler is set at start").clone()
    }

    pub fn ready(&self) -> bool {
        !self.shutting_down.load(Ordering::SeqCst)
    }

    pub fn notify_state_changed(&self) {
        self.state_changed.send_modify(|v| *v += 1);
    }
}
