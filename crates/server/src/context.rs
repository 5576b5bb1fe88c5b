//! What every handler can reach.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cluster::Store;
use host::HostInfo;
use tokio::sync::watch;
use transport::tls::CertResolver;

use crate::events::EventHub;
use crate::listeners::Listeners;
use crate::metrics::Metrics;

/// How long a member may see no leader (an election) before it reports not-ready.
pub const LEADERLESS_GRACE_MS: u64 = 3000;

/// Shared daemon state, cheap to clone.
pub type Ctx = Arc<Inner>;

pub struct Inner {
    pub store: Store,
    pub state_dir: PathBuf,
    pub host: HostInfo,
    /// This member's own server certificate and key (for member-to-member TLS).
    pub server_cert: trust::CertPair,
    pub peers: Arc<crate::peers::Peers>,
    /// Member name -> when it last answered a heartbeat.
    pub heartbeats: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Members declared lost while their connections stayed open (hung).
    pub liveness: crate::relay::Liveness,
    /// When a Raft leader was last known, in milliseconds since start.
    pub leader_seen_ms: std::sync::atomic::AtomicU64,
    /// Whether this member has seen itself in the member list since it joined.
    pub was_listed: AtomicBool,
    /// The operations this member runs (token operations live in the state instead).
    pub ops: crate::ops::Engine,
    /// The daemon's exit status once it stops (non-zero after a storage failure).
    pub exit_code: std::sync::atomic::AtomicI32,
    /// Request bodies held in memory, over all connections.
    pub bodies: crate::gate::Budget,
    /// How far every member has applied the replicated log.
    pub progress: crate::membership::Progress,
    /// Fingerprints of members learnt from a join reply, before the state arrives.
    pub peer_hints: std::sync::Mutex<Vec<String>>,
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
    /// Turns true when the member stops serving (after the drain period): listeners,
    /// connections, streams and background tasks end on it.
    pub closing: watch::Sender<bool>,
    /// Serves accepted connections; set once the router exists.
    pub handler: std::sync::OnceLock<crate::http::ConnHandler>,
    /// Bumped after every state change, so waiters (operation wait) wake up.
    pub state_changed: watch::Sender<u64>,
    /// The OpenID token verifier for the current `oidc.*` settings.
    pub oidc: crate::oidc::Oidc,
    /// The instance runtime this member drives.
    pub driver: std::sync::Arc<dyn instance::Driver>,
    /// The largest body a streamed route accepts (`--max-stream-body`).
    pub max_stream_body: u64,
    /// `GET /1.0` as last rendered, with what it was rendered from.
    pub server_doc: crate::routes::server::Rendered,
    /// Image imports and fetches under way on this member.
    pub images: crate::images::Local,
    /// Instance launches under way on this member.
    pub instances: crate::routes::instances::Local,
    /// The typed settings, made once per change of the global or local config.
    pub settings: SettingsMemo,
}

/// [`Inner::settings`] as last made, with the state and local config it was made from.
pub type SettingsMemo = crate::memo::Memo<
    (
        Arc<cluster::State>,
        Arc<std::collections::BTreeMap<String, String>>,
    ),
    Arc<api::Settings>,
>;

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

    /// The settings now in force: the state's global config and this member's local one,
    /// typed (made again only when either has changed).
    pub fn settings(&self) -> Arc<api::Settings> {
        let inputs = (self.store.state(), self.store.local());
        self.settings
            .get(inputs, |(state, local)| {
                Arc::new(api::Settings::new(&state.config, local))
            })
            .1
            .clone()
    }

    /// The member-local HTTPS address as configured (may be a wildcard).
    pub fn https_address(&self) -> String {
        self.settings().https_address.clone()
    }

    /// Where clients can reach this member.
    pub fn addresses(&self) -> Vec<String> {
        host::listen_addresses(&self.https_address(), crate::listeners::DEFAULT_PORT)
    }

    pub fn conn_handler(&self) -> crate::http::ConnHandler {
        self.handler.get().expect("handler is set at start").clone()
    }

    /// This member's id (its Raft node id), or 0 while standalone: what operation ids
    /// carry ([`crate::ops::new_id`]).
    pub fn own_id(&self) -> u64 {
        self.member_id().unwrap_or(0)
    }

    /// This member as operations name it.
    pub fn here(&self) -> crate::ops::Here {
        crate::ops::Here {
            id: self.own_id(),
            name: self.server_name(),
        }
    }

    /// This member's name: its cluster name, or the host name while standalone.
    pub fn server_name(&self) -> String {
        match self.store.identity() {
            Some(id) => id.name.clone(),
            None => self.host.hostname.clone(),
        }
    }

    /// How replicated state refers to this member: its id; `None` while standalone.
    pub fn member_id(&self) -> Option<cluster::MemberId> {
        self.store.identity().map(|id| id.id)
    }

    /// The name clients see for the member that `at` (a member reference in `state`)
    /// names: a member's current name, and this member's own for `None` (an object
    /// of this server from before it was clustered, or of no member in particular).
    pub fn location_name(&self, state: &cluster::State, at: Option<cluster::MemberId>) -> String {
        state.location_name(at, &self.server_name())
    }

    /// Whether `fingerprint` is another member's own server certificate.
    pub fn is_member(&self, state: &cluster::State, fingerprint: &str) -> bool {
        state.member_by_fingerprint(fingerprint).is_some()
            || self
                .peer_hints
                .lock()
                .is_ok_and(|h| h.iter().any(|f| f == fingerprint))
    }

    pub fn ready(&self) -> bool {
        !self.shutting_down.load(Ordering::SeqCst)
    }

    /// Whether this member can serve now, and why not: for load balancers and routers.
    pub fn readiness(&self) -> Result<(), String> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err("shutting down".into());
        }
        if let Some(why) = self.store.storage_problem() {
            return Err(format!("the state database cannot be written ({why})"));
        }
        if let Some(view) = self.store.raft_view() {
            let now = self.started.elapsed().as_millis() as u64;
            if view.leader.is_some() {
                self.leader_seen_ms.store(now, Ordering::Relaxed);
            }
            // Behind the others: whatever else is wrong, that is what to fix first.
            if let Some(n) = self
                .progress
                .behind(Instant::now(), view.last_applied.unwrap_or(0))
            {
                return Err(format!("lagging behind the leader by {n} entries"));
            }
            if view.leader.is_none()
                && now.saturating_sub(self.leader_seen_ms.load(Ordering::Relaxed)) > LEADERLESS_GRACE_MS
            {
                // An election takes about a second: only a longer absence means no quorum.
                return Err("the cluster database has no leader (no quorum)".into());
            }
            if view.is_leader() && view.voters.len() > 1 && !self.store.leader_has_quorum() {
                return Err("the cluster database has lost its quorum".into());
            }
            if let Some(me) = self.store.identity() {
                if self.store.state().member_by_id(me.id).is_none() {
                    return Err("the cluster state has not arrived yet".into());
                }
            }
        }
        Ok(())
    }

    /// Wakes the waiters on `state_changed`, once what derives from the state has
    /// caught up (`daemon::watch_state`, on every change the store publishes).
    pub fn notify_state_changed(&self) {
        self.state_changed.send_modify(|v| *v += 1);
    }
}

/// Keeps what derives from the state in step with it: member pins, the certificate
/// served to clients, the location stamped on events, `cluster.crt` on disk.
pub fn on_state_change(ctx: &Ctx) {
    let state = ctx.store.state();
    if !state.members.is_empty() {
        ctx.peers.set_pins(crate::membership::pins_of(&state));
        // A member appearing in the list has just been in contact (it joined, or we
        // did): count that as its first heartbeat.
        if let Ok(mut hb) = ctx.heartbeats.lock() {
            for name in state.members.keys() {
                hb.entry(name.clone()).or_insert_with(std::time::Instant::now);
            }
        }
        if let Some(me) = ctx.store.identity() {
            match state.member_by_id(me.id) {
                Some(m) if m.name != me.name => {
                    tracing::info!(old = %me.name, new = %m.name, "this member was renamed");
                    let _ = ctx.store.rename_identity(&m.name);
                }
                Some(_) => {
                    ctx.was_listed.store(true, Ordering::SeqCst);
                    // The member list has arrived: from now on it alone says who is a
                    // member (a member removed later must not stay trusted by a hint).
                    if let Ok(mut hints) = ctx.peer_hints.lock() {
                        hints.clear();
                    }
                }
                // Absent after having been listed: removed. (A joiner may first receive a
                // snapshot from before its own admission; that is not a removal.)
                None if ctx.store.clustered() && ctx.was_listed.swap(false, Ordering::SeqCst) => {
                    tracing::warn!("this member was removed from the cluster; continuing standalone");
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let _ = ctx.store.leave().await;
                    });
                }
                None => {}
            }
        }
    }
    ctx.events.set_location(&ctx.server_name());
    crate::images::on_state_change(ctx);
    if let Some((crt, key)) = &state.cluster_certificate {
        let served_pem = ctx.served_certificate().0.clone();
        let wanted = trust::cert::pem_to_der(crt)
            .map(|d| trust::cert::der_to_pem(&d))
            .unwrap_or_default();
        if wanted != served_pem {
            match transport::tls::certified_key(crt, key) {
                Ok(k) => {
                    ctx.set_served_certificate(k);
                    let _ = std::fs::write(ctx.state_dir.join("cluster.crt"), crt);
                    tracing::info!(fingerprint = %ctx.served_certificate().1, "serving the cluster certificate");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the cluster certificate in the state is unusable; keeping the current one")
                }
            }
        }
    }
}
