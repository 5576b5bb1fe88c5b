//! Being a cluster member: bootstrap, join, heartbeats, roles and voter promotion.
//!
//! ```text
//!  joiner                         any member                         leader
//!  PUT /1.0/cluster {token} ─POST /internal/cluster/join {secret, own cert}─>
//!                                 find_token (constant time)
//!                                 AddMember (spends the token) ────────────> commit
//!                                 add_learner(joiner) ─────────────────────> replicate
//!  <── {members, cluster cert} ──
//!  start Raft (empty), serve the cluster certificate, wait for the log to arrive
//! ```
//!
//! The interactive `incus admin init` joins in two steps instead: its client first
//! presents the join token as a trust token, which trusts the joiner's own certificate
//! as `type: server` under the token's member name (and spends the token, as in Incus);
//! then `PUT /1.0/cluster` carries `cluster_address` and `cluster_certificate` but no
//! token, and the joiner asks to join with an empty secret: its certificate, trusted as
//! a server of that name, is the authorisation.
//!
//! Liveness comes from heartbeats: every member asks every other member for
//! `/internal/ready` a few times per `cluster.offline_threshold`. The leader uses that
//! view to keep up to `cluster.max_voters` online voters, promoting standbys (Raft
//! learners) when a voter is lost.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use api::types::Operation;
use cluster::{Member, MemberCommand, MemberIdentity, State, TokenCommand};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::context::Ctx;

/// What a joiner sends.
#[derive(Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub secret: String,
    pub server_name: String,
    pub address: String,
    pub id: u64,
    pub certificate: String,
    pub architecture: String,
}

/// What it gets back.
#[derive(Debug, Serialize, Deserialize)]
pub struct JoinReply {
    pub members: Vec<Member>,
    pub cluster_certificate: (String, String),
}

/// How long a member may stay behind what the cluster had applied before it counts as
/// lagging; and how far behind the newest index it may be at any moment.
pub const LAG_GRACE: Duration = Duration::from_secs(5);
pub const LAG_ENTRIES: u64 = 1000;

/// How far each member has applied the replicated log, as this member knows it: its
/// own index, the ones heartbeats report, and the highest index known over the last
/// seconds (marks), so "behind" means behind what was already applied elsewhere a
/// while ago, not behind a write a few milliseconds old.
#[derive(Default)]
pub struct Progress {
    inner: Mutex<ProgressInner>,
}

#[derive(Default)]
struct ProgressInner {
    applied: HashMap<String, u64>,
    marks: VecDeque<(Instant, u64)>,
}

impl Progress {
    /// What a heartbeat reported for `name`.
    pub fn record(&self, name: &str, applied: u64) {
        if let Ok(mut p) = self.inner.lock() {
            p.applied.insert(name.to_string(), applied);
        }
    }

    /// Notes the highest index known now (this member's own included).
    pub fn mark(&self, now: Instant, own: u64, members: &State) {
        if let Ok(mut p) = self.inner.lock() {
            p.applied.retain(|name, _| members.members.contains_key(name));
            let high = p.applied.values().copied().fold(own, u64::max);
            p.marks.push_back((now, high));
            while p.marks.len() > 2 && p.marks[1].0 + 3 * LAG_GRACE < now {
                p.marks.pop_front();
            }
        }
    }

    /// What the last heartbeat said of `name`.
    pub fn applied(&self, name: &str) -> Option<u64> {
        self.inner.lock().ok()?.applied.get(name).copied()
    }

    /// How many entries a member that has applied `applied` is behind, if it lags.
    pub fn behind(&self, now: Instant, applied: u64) -> Option<u64> {
        let p = self.inner.lock().ok()?;
        lag(&p.marks, now, applied)
    }
}

/// How far `applied` lags: behind the highest index known [`LAG_GRACE`] ago, or more
/// than [`LAG_ENTRIES`] behind the newest. `None` when it keeps up.
pub fn lag(marks: &VecDeque<(Instant, u64)>, now: Instant, applied: u64) -> Option<u64> {
    let newest = marks.back().map(|m| m.1).unwrap_or(0);
    if newest > applied + LAG_ENTRIES {
        return Some(newest - applied);
    }
    let cutoff = now.checked_sub(LAG_GRACE)?;
    let (_, then) = marks.iter().rev().find(|(t, _)| *t <= cutoff)?;
    (*then > applied).then(|| newest.max(*then) - applied)
}

/// How long a joiner waits for the cluster state to arrive.
pub const JOIN_STATE_WAIT: Duration = Duration::from_secs(120);

/// A member's liveness as this member sees it.
pub fn last_seen(ctx: &Ctx, name: &str) -> Option<Duration> {
    if ctx.server_name() == name {
        return Some(Duration::ZERO);
    }
    ctx.heartbeats.lock().ok()?.get(name).map(|t| t.elapsed())
}

/// Whether `name` answered a heartbeat within `cluster.offline_threshold`.
pub fn is_online(ctx: &Ctx, name: &str) -> bool {
    let threshold = ctx.settings().offline_threshold;
    last_seen(ctx, name).is_some_and(|d| d < threshold)
}

/// The member object of `/1.0/cluster/members/NAME`.
pub fn member_json(ctx: &Ctx, m: &Member) -> Value {
    let view = ctx.store.raft_view().unwrap_or_default();
    let settings = ctx.settings();
    let max_standby = settings.max_standby;
    let standbys: Vec<u64> = view
        .nodes
        .keys()
        .filter(|id| !view.voters.contains(id))
        .copied()
        .take(max_standby)
        .collect();
    let mut roles = Vec::new();
    if view.leader == Some(m.id) {
        roles.push("database-leader");
    }
    if view.voters.contains(&m.id) {
        roles.push("database");
    } else if standbys.contains(&m.id) {
        roles.push("database-standby");
    }
    let threshold = settings.offline_threshold;
    let applied = if m.name == ctx.server_name() {
        view.last_applied
    } else {
        ctx.progress.applied(&m.name)
    };
    let lagging = applied.and_then(|a| ctx.progress.behind(Instant::now(), a));
    let settings = ctx.store.state().member_settings(m.id);
    let (status, message) = match last_seen(ctx, &m.name) {
        Some(d) if d < threshold => match lagging {
            Some(n) => ("Blocked", format!("Lagging behind the leader: {n} entries")),
            None if settings.evacuated => ("Evacuated", "Unavailable due to maintenance".to_string()),
            None => ("Online", "Fully operational".to_string()),
        },
        Some(d) => ("Offline", format!("No heartbeat for {:.2}s", d.as_secs_f64())),
        None => ("Offline", "No heartbeat yet".to_string()),
    };
    json!({
        "server_name": m.name,
        "url": format!("https://{}", m.address),
        "database": view.voters.contains(&m.id),
        "status": status,
        "message": message,
        "architecture": m.architecture,
        "failure_domain": m.failure_domain,
        "description": m.description,
        "config": settings.config,
        "groups": ["default"],
        "roles": roles,
    })
}

/// A join token shown as an operation.
pub fn join_token_operation(ctx: &Ctx, token: &cluster::Token, server_name: &str) -> Operation {
    let state = ctx.store.state();
    let fingerprint = ctx.served_certificate().1.clone();
    let addresses: Vec<String> = state
        .members
        .values()
        .filter(|m| is_online(ctx, &m.name))
        .map(|m| m.address.clone())
        .collect();
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert("serverName".to_string(), json!(server_name));
    metadata.insert("secret".to_string(), json!(token.secret));
    metadata.insert("fingerprint".to_string(), json!(fingerprint));
    metadata.insert("addresses".to_string(), json!(addresses));
    if let Some(at) = token.expires_at {
        metadata.insert("expiresAt".to_string(), json!(crate::operations::rfc3339(at)));
    }
    Operation {
        id: token.id.clone(),
        class: "token".into(),
        description: "Requesting to join the cluster".into(),
        created_at: token.created_at,
        updated_at: token.created_at,
        status: "Running".into(),
        status_code: api::types::status::RUNNING,
        resources: None,
        metadata: Some(metadata),
        may_cancel: true,
        err: String::new(),
        location: ctx.location_name(&state, token.location),
    }
}

fn random_id() -> u64 {
    let b = trust::random_bytes16();
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes")) >> 1
}

fn own_member(ctx: &Ctx, name: &str, address: &str, id: u64) -> Member {
    let cert = ctx.server_cert.cert_pem.clone();
    let fingerprint = trust::cert::pem_to_der(&cert)
        .map(|d| trust::fingerprint(&d))
        .unwrap_or_default();
    Member {
        name: name.to_string(),
        id,
        address: address.to_string(),
        certificate: cert,
        fingerprint,
        description: String::new(),
        failure_domain: "default".into(),
        architecture: ctx.host.kernel_architecture.clone(),
    }
}

/// The address members reach this one at: `cluster.https_address`, else a specific
/// `core.https_address`.
pub fn cluster_address(ctx: &Ctx) -> Option<String> {
    let settings = ctx.settings();
    let addr = match &settings.cluster_https_address {
        Some(addr) => addr,
        None if settings.https_address.is_empty() => return None,
        None => &settings.https_address,
    };
    let parsed = api::config::parse_listen_address(addr, crate::listeners::DEFAULT_PORT).ok()?;
    parsed.host.as_ref()?;
    Some(parsed.bind_string())
}

/// Why bootstrapping, joining or admitting a member failed (mapped to the envelope in
/// `response.rs`; the words are the API's).
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("This server is already clustered")]
    AlreadyClustered,
    #[error("This server is not clustered")]
    NotClustered,
    #[error("Clustering needs a specific network address: set core.https_address or cluster.https_address (not a wildcard)")]
    NoAddress,
    #[error("Invalid member name {0:?}: use letters, digits and '-'")]
    InvalidName(String),
    #[error("This is a trust token (for adding a client, as incus remote add does), not a cluster join token: get one with `cluster add NAME` on a member")]
    TrustTokenGiven,
    #[error("Invalid cluster join token: {0}")]
    InvalidToken(#[source] trust::token::TokenError),
    #[error("Invalid cluster_certificate: {0}")]
    InvalidClusterCertificate(#[source] trust::cert::CertError),
    #[error("Invalid cluster_address {0:?}")]
    InvalidClusterAddress(String),
    #[error("Invalid server_address {0:?}")]
    InvalidServerAddress(String),
    /// The joiner asks with a token made for another name.
    #[error("The join token is for a member named {token:?}, not {name:?}")]
    TokenForAnotherName { token: String, name: String },
    /// Seen by the member asked to admit: the token names another member.
    #[error("The join token is for a member named {token:?}, not {name:?}")]
    AdmitForAnotherName { token: String, name: String },
    #[error("This server's certificate is not trusted as cluster member {0:?}: join with a join token")]
    CertificateNotTrusted(String),
    #[error("{}", crate::operations::token_refusal(.0, *.1).message)]
    TokenRefused(&'static str, cluster::TokenRefusal),
    #[error("{0}")]
    BadCertificate(#[source] trust::cert::CertError),
    #[error("{0}")]
    Listen(#[source] crate::listeners::ListenError),
    #[error("The join token lists no member address")]
    NoMemberAddress,
    /// The token's fingerprint is not the certificate the member presents.
    #[error("Failed to reach any cluster member: {0} (does the token's fingerprint match the cluster?)")]
    WrongCluster(#[source] crate::peers::PeerError),
    #[error("Failed to reach any cluster member: {0}")]
    Unreachable(#[source] crate::peers::PeerError),
    #[error("Bad join answer from {target}: {source}")]
    BadAnswer {
        target: String,
        #[source]
        source: serde_json::Error,
    },
    /// The member asked answered, and its verdict is final (wrong token, taken name).
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("Joined, but the cluster state has not arrived within {} s", JOIN_STATE_WAIT.as_secs())]
    StateLate,
    #[error("{0}")]
    Certificate(#[source] trust::cert::CertError),
    /// This member's own database could not take the change.
    #[error("{0}")]
    Database(#[source] cluster::StoreError),
    /// The cluster database refused or could not take the change.
    #[error(transparent)]
    Store(cluster::StoreError),
    /// The cluster database cannot take the change now.
    #[error("{0}")]
    Unavailable(#[source] cluster::StoreError),
}

/// `cluster enable NAME`.
pub async fn bootstrap(ctx: &Ctx, name: &str) -> Result<(), MembershipError> {
    if ctx.store.clustered() {
        return Err(MembershipError::AlreadyClustered);
    }
    validate_name(name)?;
    let address = cluster_address(ctx).ok_or(MembershipError::NoAddress)?;
    let host = ctx.host.hostname.clone();
    let pair = trust::CertPair::generate_server(&host).map_err(MembershipError::Certificate)?;
    let member = own_member(ctx, name, &address, random_id());
    ctx.peers
        .set_pins([(address.clone(), member.fingerprint.clone())].into());
    ctx.store
        .bootstrap(member, (pair.cert_pem, pair.key_pem))
        .await
        .map_err(MembershipError::Database)?;
    crate::context::on_state_change(ctx);
    tracing::info!(name, address = %address, "cluster bootstrapped");
    Ok(())
}

pub fn validate_name(name: &str) -> Result<(), MembershipError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(MembershipError::InvalidName(name.to_string()))
    }
}

/// What authorises a join.
#[derive(Debug)]
pub enum JoinBy<'a> {
    /// A join token (`cluster_token`).
    Token(&'a str),
    /// This member's own certificate, already trusted by the cluster as a server of
    /// this name; the member at `address` presents `certificate` (the cluster's).
    Certificate { address: &'a str, certificate: &'a str },
}

/// Decodes a join token, saying so when it is a trust token instead.
fn decode_join_token(text: &str) -> Result<trust::token::JoinToken, MembershipError> {
    trust::token::decode(text).map_err(|e| {
        if trust::token::decode::<trust::token::TrustToken>(text).is_ok() {
            MembershipError::TrustTokenGiven
        } else {
            MembershipError::InvalidToken(e)
        }
    })
}

/// The joining side of `PUT /1.0/cluster` with a `cluster_token` or, after the
/// interactive trust step, a `cluster_address`.
pub async fn join(
    ctx: &Ctx,
    server_name: &str,
    server_address: &str,
    by: JoinBy<'_>,
) -> Result<(), MembershipError> {
    if ctx.store.clustered() {
        return Err(MembershipError::AlreadyClustered);
    }
    validate_name(server_name)?;
    let token = match by {
        JoinBy::Token(text) => decode_join_token(text)?,
        JoinBy::Certificate { address, certificate } => {
            let der =
                trust::cert::pem_to_der(certificate).map_err(MembershipError::InvalidClusterCertificate)?;
            let address = api::config::parse_listen_address(address, crate::listeners::DEFAULT_PORT)
                .ok()
                .filter(|a| a.host.is_some())
                .map(|a| a.bind_string())
                .ok_or_else(|| MembershipError::InvalidClusterAddress(address.to_string()))?;
            trust::token::JoinToken {
                server_name: server_name.to_string(),
                fingerprint: trust::fingerprint(&der),
                addresses: vec![address],
                secret: String::new(),
                expires_at: trust::token::NO_EXPIRY.into(),
            }
        }
    };
    if token.server_name != server_name {
        return Err(MembershipError::TokenForAnotherName {
            token: token.server_name,
            name: server_name.to_string(),
        });
    }
    let address = api::config::parse_listen_address(server_address, crate::listeners::DEFAULT_PORT)
        .ok()
        .filter(|a| a.host.is_some())
        .map(|a| a.bind_string())
        .ok_or_else(|| MembershipError::InvalidServerAddress(server_address.to_string()))?;

    // Members will call us at `address`: listen there first, and undo it on failure.
    let mut changes = std::collections::BTreeMap::new();
    changes.insert("cluster.https_address".to_string(), address.clone());
    if ctx.settings().https_address.is_empty() {
        changes.insert("core.https_address".to_string(), address.clone());
        ctx.listeners
            .set_https(&address, ctx.conn_handler())
            .await
            .map_err(MembershipError::Listen)?;
    }
    match ask_to_join(ctx, &token, server_name, &address).await {
        Ok((reply, id)) => {
            ctx.store
                .set_local(&changes)
                .await
                .map_err(MembershipError::Database)?;
            finish_join(
                ctx,
                reply,
                MemberIdentity {
                    id,
                    name: server_name.to_string(),
                },
            )
            .await
        }
        Err(e) => {
            if changes.contains_key("core.https_address") {
                let _ = ctx.listeners.set_https("", ctx.conn_handler()).await;
            }
            Err(e)
        }
    }
}

async fn ask_to_join(
    ctx: &Ctx,
    token: &trust::token::JoinToken,
    name: &str,
    address: &str,
) -> Result<(JoinReply, u64), MembershipError> {
    let id = random_id();
    let req = JoinRequest {
        secret: token.secret.clone(),
        server_name: name.to_string(),
        address: address.to_string(),
        id,
        certificate: ctx.server_cert.cert_pem.clone(),
        architecture: ctx.host.kernel_architecture.clone(),
    };
    let body = serde_json::to_vec(&req).expect("join requests serialize");
    let mut last_error = MembershipError::NoMemberAddress;
    for target in &token.addresses {
        match ctx.peers.join(target, &token.fingerprint, &body).await {
            Ok((200, bytes)) => {
                let reply: JoinReply =
                    serde_json::from_slice(&bytes).map_err(|source| MembershipError::BadAnswer {
                        target: target.clone(),
                        source,
                    })?;
                return Ok((reply, id));
            }
            Ok((status, bytes)) => {
                let msg = serde_json::from_slice::<api::Envelope>(&bytes)
                    .map(|e| e.error)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
                // The member answered: its verdict is final (wrong token, taken name).
                return Err(MembershipError::Refused { status, message: msg });
            }
            Err(e) => {
                tracing::info!(target = %target, error = %e, "join attempt failed; trying the next member");
                last_error = match e {
                    crate::peers::PeerError::CertificateMismatch { .. } => MembershipError::WrongCluster(e),
                    e => MembershipError::Unreachable(e),
                };
            }
        }
    }
    Err(last_error)
}

async fn finish_join(ctx: &Ctx, reply: JoinReply, identity: MemberIdentity) -> Result<(), MembershipError> {
    let pins = reply
        .members
        .iter()
        .map(|m| (m.address.clone(), m.fingerprint.clone()))
        .collect();
    ctx.peers.set_pins(pins);
    *ctx.peer_hints.lock().expect("hints lock") =
        reply.members.iter().map(|m| m.fingerprint.clone()).collect();
    let name = identity.name.clone();
    ctx.store
        .start_joining(identity)
        .await
        .map_err(MembershipError::Database)?;
    let (crt, key) = &reply.cluster_certificate;
    if let Ok(k) = transport::tls::certified_key(crt, key) {
        ctx.set_served_certificate(k);
    }
    // Wait (bounded) for the log to reach us: then we are a full member. A large state
    // arrives as a snapshot stream, which takes a while.
    let mut changes = ctx.store.subscribe();
    let deadline = tokio::time::Instant::now() + JOIN_STATE_WAIT;
    while !ctx.store.state().members.contains_key(&name) {
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            return Err(MembershipError::StateLate);
        }
    }
    crate::context::on_state_change(ctx);
    tracing::info!(name = %name, "joined the cluster");
    Ok(())
}

/// The member side of a join: checks the secret (or, with none, that the joiner's
/// certificate is trusted as a server of that name) and admits the joiner.
pub async fn admit(ctx: &Ctx, req: JoinRequest) -> Result<JoinReply, MembershipError> {
    let state = ctx.store.state();
    let Some((cert, key)) = state.cluster_certificate.clone() else {
        return Err(MembershipError::NotClustered);
    };
    validate_name(&req.server_name)?;
    let der = trust::cert::pem_to_der(&req.certificate).map_err(MembershipError::BadCertificate)?;
    let token_id = if req.secret.is_empty() {
        // The handler checked that this is the certificate of the TLS session.
        let trusted = state
            .certificates
            .get(&trust::fingerprint(&der))
            .is_some_and(|c| c.kind == "server" && c.name == req.server_name);
        if !trusted {
            tracing::info!(name = %req.server_name, "refused a join by a certificate not trusted as that server");
            return Err(MembershipError::CertificateNotTrusted(req.server_name));
        }
        None
    } else {
        match state.find_token("join", &req.secret, OffsetDateTime::now_utc()) {
            Ok(token) => match &token.kind {
                cluster::TokenKind::Join { server_name } if server_name != &req.server_name => {
                    return Err(MembershipError::AdmitForAnotherName {
                        token: server_name.clone(),
                        name: req.server_name,
                    });
                }
                _ => Some(token.id.clone()),
            },
            Err(refusal) => {
                tracing::info!(name = %req.server_name, ?refusal, "refused a join token");
                return Err(MembershipError::TokenRefused("join", refusal));
            }
        }
    };
    let member = Member {
        name: req.server_name.clone(),
        id: req.id,
        address: req.address.clone(),
        fingerprint: trust::fingerprint(&der),
        certificate: req.certificate.clone(),
        description: String::new(),
        failure_domain: "default".into(),
        architecture: req.architecture.clone(),
    };
    ctx.store
        .apply(MemberCommand::AddMember {
            member: member.clone(),
            token_id,
        })
        .await
        .map_err(|e| match e {
            // Another join spent it first.
            cluster::StoreError::State(cluster::StateError::TokenNotFound) => {
                MembershipError::TokenRefused("join", cluster::TokenRefusal::Spent(cluster::Spent::Used))
            }
            other => MembershipError::Store(other),
        })?;
    crate::context::on_state_change(ctx);
    ctx.store
        .add_learner(member.id, &member.address)
        .await
        .map_err(MembershipError::Unavailable)?;
    tracing::info!(name = %member.name, address = %member.address, "member admitted");
    // Give the new member its seat (or standby role) now rather than at the next round.
    let later = ctx.clone();
    tokio::spawn(async move {
        let state = later.store.state();
        if later.store.raft_view().is_some_and(|v| v.is_leader()) {
            reconcile(&later, &state).await;
        }
    });
    let state = ctx.store.state();
    Ok(JoinReply {
        members: state.members.values().cloned().collect(),
        cluster_certificate: (cert, key),
    })
}

/// Background work of a clustered member: heartbeats, and on the leader, keeping the
/// voter set healthy. Bounded per round; runs until shutdown.
pub async fn run(ctx: Ctx) {
    let mut stop = ctx.closing.subscribe();
    loop {
        let state = ctx.store.state();
        let interval =
            (ctx.settings().offline_threshold / 6).clamp(Duration::from_millis(200), Duration::from_secs(3));
        // Keeps the last time a leader was seen current between readiness probes.
        let _ = ctx.readiness();
        ctx.store.check_storage().await;
        if let Some(why) = ctx.store.raft_failure() {
            // Raft stops for good after a storage error; a restart reopens the database.
            tracing::error!(error = %why, "the cluster database failed; stopping so that the service manager restarts this member");
            ctx.exit_code
                .store(crate::daemon::EXIT_TEMPFAIL, std::sync::atomic::Ordering::SeqCst);
            let _ = ctx.shutdown_tx.send(true);
            return;
        }
        let leader = ctx.store.raft_view().is_some_and(|v| v.is_leader());
        if ctx.store.clustered() {
            heartbeat_round(&ctx, &state, interval).await;
            if leader {
                reconcile(&ctx, &state).await;
            }
        }
        if leader || !ctx.store.clustered() {
            prune_expired_tokens(&ctx, &state).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = transport::listen::stopped(&mut stop) => return,
        }
    }
}

/// Expired tokens can never be used; drop them so they stop being listed.
async fn prune_expired_tokens(ctx: &Ctx, state: &State) {
    let now = OffsetDateTime::now_utc();
    for t in state
        .tokens
        .values()
        .filter(|t| t.expires_at.is_some_and(|at| at <= now))
    {
        if ctx
            .store
            .apply(TokenCommand::DeleteToken {
                token_id: t.id.clone(),
                how: cluster::Spent::Expired,
            })
            .await
            .is_ok()
        {
            tracing::info!(operation = %t.id, "expired token removed");
        }
    }
}

async fn heartbeat_round(ctx: &Ctx, state: &State, timeout: Duration) {
    let me = ctx.server_name();
    let calls = state.members.values().filter(|m| m.name != me).map(|m| {
        let ctx = ctx.clone();
        let (name, address) = (m.name.clone(), m.address.clone());
        async move {
            let answer = ctx
                .peers
                .request(
                    &address,
                    http::Method::GET,
                    "/internal/ready",
                    Vec::new(),
                    timeout,
                )
                .await;
            let ok = answer.as_ref().is_ok_and(|(status, _)| *status == 200);
            let applied = answer.ok().and_then(|(_, body)| {
                let v: Value = serde_json::from_slice(&body).ok()?;
                v["metadata"]["applied"].as_u64()
            });
            (name, ok, applied)
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let now = Instant::now();
    if let Ok(mut hb) = ctx.heartbeats.lock() {
        for (name, ok, applied) in results {
            if ok {
                hb.insert(name.clone(), now);
            }
            if let Some(applied) = applied {
                ctx.progress.record(&name, applied);
            }
        }
        hb.retain(|name, _| state.members.contains_key(name));
    }
    let own = ctx.store.raft_view().and_then(|v| v.last_applied).unwrap_or(0);
    ctx.progress.mark(now, own, state);
}

/// On the leader: every member is in Raft, and up to `max_voters` online members vote.
async fn reconcile(ctx: &Ctx, state: &State) {
    let Some(view) = ctx.store.raft_view() else { return };
    for m in state.members.values() {
        if !view.nodes.contains_key(&m.id) {
            if let Err(e) = ctx.store.add_learner(m.id, &m.address).await {
                tracing::warn!(member = %m.name, error = %e, "could not add member to the database");
            }
            return;
        }
    }
    let max_voters = ctx.settings().max_voters;
    let online = |id: &u64| state.member_by_id(*id).is_some_and(|m| is_online(ctx, &m.name));
    let known = |id: &u64| state.member_by_id(*id).is_some();
    let desired = desired_voters(
        &view.voters,
        &view.nodes.keys().copied().collect(),
        max_voters,
        online,
        known,
    );
    if desired != view.voters {
        tracing::info!(from = ?view.voters, to = ?desired, "changing database voters");
        if let Err(e) = ctx.store.set_voters(desired).await {
            tracing::warn!(error = %e, "could not change database voters");
        }
    }
}

/// Which nodes should vote: online voters stay; missing seats go to online learners;
/// an offline voter gives its seat to an online learner when there is one. Never an
/// empty set.
pub fn desired_voters(
    voters: &BTreeSet<u64>,
    nodes: &BTreeSet<u64>,
    max_voters: usize,
    online: impl Fn(&u64) -> bool,
    known: impl Fn(&u64) -> bool,
) -> BTreeSet<u64> {
    let mut keep: BTreeSet<u64> = voters
        .iter()
        .copied()
        .filter(|id| online(id) && known(id))
        .collect();
    let mut spare: Vec<u64> = nodes
        .iter()
        .copied()
        .filter(|id| !voters.contains(id) && online(id) && known(id))
        .collect();
    spare.sort();
    let mut spare = spare.into_iter();
    while keep.len() < max_voters {
        match spare.next() {
            Some(id) => {
                keep.insert(id);
            }
            None => break,
        }
    }
    // Offline voters keep their seats while nobody can take them (they may come back).
    for id in voters {
        if keep.len() >= max_voters.max(1) {
            break;
        }
        if known(id) {
            keep.insert(*id);
        }
    }
    // An even number of voters tolerates no more failures than one fewer: never grow
    // into an even set.
    if keep.len() > 1 && keep.len().is_multiple_of(2) {
        if let Some(newest) = keep.iter().rev().find(|id| !voters.contains(id)).copied() {
            keep.remove(&newest);
        }
    }
    if keep.is_empty() {
        return voters.clone();
    }
    keep
}

/// Connections to members are pinned by the member list; this keeps pins, the served
/// certificate and the event location in step with the state.
pub fn pins_of(state: &State) -> HashMap<String, String> {
    state
        .members
        .values()
        .map(|m| (m.address.clone(), m.fingerprint.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn marks(list: &[(u64, u64)], now: Instant) -> VecDeque<(Instant, u64)> {
        list.iter()
            .map(|(ago, high)| (now - Duration::from_secs(*ago), *high))
            .collect()
    }

    #[test]
    fn a_member_keeping_up_is_not_lagging() {
        let now = Instant::now();
        // A write that is a moment old is not lag.
        let m = marks(&[(12, 100), (6, 120), (1, 150)], now);
        assert_eq!(lag(&m, now, 140), None);
        assert_eq!(lag(&m, now, 120), None);
        // No history yet: nothing to judge by.
        assert_eq!(lag(&VecDeque::new(), now, 0), None);
    }

    #[test]
    fn a_member_behind_what_was_applied_a_while_ago_lags() {
        let now = Instant::now();
        let m = marks(&[(12, 100), (6, 120), (1, 150)], now);
        assert_eq!(lag(&m, now, 110), Some(40));
        // Far behind the newest index: lagging at once.
        let m = marks(&[(1, 5000)], now);
        assert_eq!(lag(&m, now, 10), Some(4990));
    }

    #[test]
    fn learners_fill_empty_seats() {
        let d = desired_voters(&set(&[1]), &set(&[1, 2, 3]), 3, |_| true, |_| true);
        assert_eq!(d, set(&[1, 2, 3]));
    }

    #[test]
    fn two_members_do_not_make_two_voters() {
        let d = desired_voters(&set(&[1]), &set(&[1, 2]), 3, |_| true, |_| true);
        assert_eq!(d, set(&[1]));
    }

    #[test]
    fn a_standby_replaces_a_lost_voter() {
        let d = desired_voters(&set(&[1, 2, 3]), &set(&[1, 2, 3, 4]), 3, |id| *id != 2, |_| true);
        assert_eq!(d, set(&[1, 3, 4]));
    }

    #[test]
    fn a_lost_voter_keeps_its_seat_when_nobody_can_take_it() {
        let d = desired_voters(&set(&[1, 2, 3]), &set(&[1, 2, 3]), 3, |id| *id != 2, |_| true);
        assert_eq!(d, set(&[1, 2, 3]));
    }

    #[test]
    fn removed_members_lose_their_seat() {
        let d = desired_voters(&set(&[1, 2, 3]), &set(&[1, 2, 3, 4]), 3, |_| true, |id| *id != 3);
        assert_eq!(d, set(&[1, 2, 4]));
    }
}
