//! ACME: the cluster certificate issued and renewed automatically (HTTP-01).
//!
//! ```text
//!  leader: need a certificate? (acme.domain not all covered, or 2/3 of its life gone)
//!    order ─> for each name: SetAcmeChallenge{token, key auth} (replicated: EVERY member
//!    answers /.well-known/acme-challenge/TOKEN, on HTTPS and on acme.http.port, since the
//!    CA may try any address of the name) ─> ready ─> finalize ─> SetClusterCertificate
//!    (the same path as `cluster update-certificate`) ─> clear the challenges
//!  failure: the old certificate stays; a warning and an event; retry with backoff
//! ```
//!
//! The CA's own TLS certificate is checked against the system roots, or against the PEM
//! file named by `STAPES_ACME_CA_FILE` (a private or test CA).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use cluster::{TrustCommand, WarningCommand};
use http_body_util::Full;
use instant_acme::{
    Account, AccountCredentials, ChallengeType, Identifier, NewAccount, NewOrder, RetryPolicy,
};
use time::OffsetDateTime;
use tokio::sync::watch;

use api::settings::Acme;

use crate::context::Ctx;

/// The warning type recorded when issuing fails.
pub const WARNING_TYPE: &str = "Failed to get an ACME certificate";
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// What the ACME keys ask for, when they ask for anything.
fn wanted(ctx: &Ctx) -> Option<Acme> {
    Some(ctx.settings().acme.clone()).filter(Acme::wanted)
}

/// Whether the certificate now served must be replaced: a name missing, or two thirds
/// of its lifetime gone.
pub fn needs_certificate(cert_pem: Option<&str>, domains: &[String], now: OffsetDateTime) -> bool {
    let Some(der) = cert_pem.and_then(|p| trust::cert::pem_to_der(p).ok()) else {
        return true;
    };
    let Ok(info) = trust::cert::inspect(&der) else {
        return true;
    };
    let names = trust::cert::dns_names(&der);
    if domains.iter().any(|d| !names.contains(d)) {
        return true;
    }
    let renew_at = info.not_before + (info.not_after - info.not_before) * 2 / 3;
    now >= renew_at
}

/// The answer to an HTTP-01 challenge, from the replicated state.
pub fn challenge_answer(ctx: &Ctx, token: &str) -> Option<String> {
    ctx.store.state().acme_challenges.get(token).cloned()
}

/// Runs until shutdown: keeps the challenge listener where `acme.http.port` says, and on
/// the leader (or a standalone member) keeps the certificate issued.
pub async fn run(ctx: Ctx) {
    let mut stop = ctx.closing.subscribe();
    let mut listener: Option<(String, watch::Sender<bool>)> = None;
    let mut next_try = Instant::now();
    let mut failures = 0u32;
    let mut last_wanted: Option<Acme> = None;
    loop {
        let state = ctx.store.state();
        let want = wanted(&ctx);
        keep_listener(&ctx, want.is_some(), &mut listener).await;
        let in_charge = !ctx.store.clustered() || ctx.store.raft_view().is_some_and(|v| v.is_leader());
        if want != last_wanted {
            // New settings: try at once.
            failures = 0;
            next_try = Instant::now();
            last_wanted = want.clone();
        }
        if let (Some(want), true) = (&want, in_charge) {
            let current = state.cluster_certificate.as_ref().map(|(c, _)| c.as_str());
            if Instant::now() >= next_try
                && needs_certificate(current, &want.domains, OffsetDateTime::now_utc())
            {
                match issue(&ctx, want).await {
                    Ok(fp) => {
                        failures = 0;
                        tracing::info!(fingerprint = %fp, domains = ?want.domains, "ACME certificate installed");
                        resolve_warnings(&ctx).await;
                    }
                    Err(e) => {
                        failures += 1;
                        let delay =
                            (Duration::from_secs(5) * 2u32.saturating_pow(failures - 1)).min(MAX_BACKOFF);
                        next_try = Instant::now() + delay;
                        tracing::warn!(error = %e, retry_in = ?delay, "ACME certificate not issued; keeping the current certificate");
                        record_warning(&ctx, &e.to_string()).await;
                    }
                }
                clear_challenges(&ctx).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = transport::listen::stopped(&mut stop) => break,
        }
    }
    if let Some((_, tx)) = listener {
        let _ = tx.send(true);
    }
}

/// Why a certificate was not issued: recorded as a warning, and retried with backoff.
#[derive(Debug, thiserror::Error)]
enum AcmeError {
    /// The CA (or the client talking to it) failed at one step.
    #[error("{step}: {source}")]
    Ca {
        step: String,
        #[source]
        source: instant_acme::Error,
    },
    #[error("the CA offers no HTTP-01 challenge")]
    NoHttp01,
    #[error("the order is {0}, not ready")]
    NotReady(String),
    #[error("sharing the challenge: {0}")]
    Share(#[source] cluster::StoreError),
    /// The account or the certificate could not be recorded in the cluster state.
    #[error("{0}")]
    Store(#[source] cluster::StoreError),
    #[error("{0}")]
    Credentials(#[source] serde_json::Error),
    /// The CA's certificate could not be served (why, in the API's words).
    #[error("{0}")]
    Unusable(String),
}

async fn issue(ctx: &Ctx, want: &Acme) -> Result<String, AcmeError> {
    let e = |what: &str| {
        let step = what.to_string();
        move |source: instant_acme::Error| AcmeError::Ca { step, source }
    };
    let builder = match std::env::var("STAPES_ACME_CA_FILE") {
        Ok(path) if !path.is_empty() => Account::builder_with_root(path).map_err(e("loading the ACME CA"))?,
        _ => Account::builder().map_err(e("preparing the ACME client"))?,
    };
    let state = ctx.store.state();
    let stored: Option<AccountCredentials> = state
        .acme_account
        .as_deref()
        .and_then(|j| serde_json::from_str(j).ok());
    let account = match stored {
        Some(creds) => builder
            .from_credentials(creds)
            .await
            .map_err(e("loading the ACME account"))?,
        None => {
            let contact = format!("mailto:{}", want.email);
            let contacts: Vec<&str> = if want.email.is_empty() {
                vec![]
            } else {
                vec![contact.as_str()]
            };
            let (account, creds) = builder
                .create(
                    &NewAccount {
                        contact: &contacts,
                        terms_of_service_agreed: true,
                        only_return_existing: false,
                    },
                    want.ca_url.clone(),
                    None,
                )
                .await
                .map_err(e(&format!("registering with {}", want.ca_url)))?;
            let credentials = serde_json::to_string(&creds).map_err(AcmeError::Credentials)?;
            ctx.store
                .apply(TrustCommand::SetAcmeAccount { credentials })
                .await
                .map_err(AcmeError::Store)?;
            account
        }
    };
    let identifiers: Vec<Identifier> = want.domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(e("ordering"))?;
    let mut ready = Vec::new();
    {
        let mut authorizations = order.authorizations();
        while let Some(auth) = authorizations.next().await {
            let mut auth = auth.map_err(e("reading an authorization"))?;
            if matches!(auth.status, instant_acme::AuthorizationStatus::Valid) {
                continue;
            }
            let challenge = auth.challenge(ChallengeType::Http01).ok_or(AcmeError::NoHttp01)?;
            let token = challenge.token.clone();
            let key_authorization = challenge.key_authorization().as_str().to_string();
            ctx.store
                .apply(TrustCommand::SetAcmeChallenge {
                    token: token.clone(),
                    key_authorization: Some(key_authorization),
                })
                .await
                .map_err(AcmeError::Share)?;
            ready.push(token);
        }
    }
    // Committed on a quorum; give the other members a heartbeat to apply it too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    {
        let mut authorizations = order.authorizations();
        while let Some(auth) = authorizations.next().await {
            let mut auth = auth.map_err(e("reading an authorization"))?;
            if let Some(mut challenge) = auth.challenge(ChallengeType::Http01) {
                if ready.contains(&challenge.token) {
                    challenge
                        .set_ready()
                        .await
                        .map_err(e("answering the challenge"))?;
                }
            }
        }
    }
    let policy = RetryPolicy::new()
        .initial_delay(Duration::from_millis(200))
        .timeout(Duration::from_secs(60));
    let status = order
        .poll_ready(&policy)
        .await
        .map_err(e("waiting for validation"))?;
    if !matches!(status, instant_acme::OrderStatus::Ready) {
        return Err(AcmeError::NotReady(format!("{status:?}")));
    }
    let key_pem = order.finalize().await.map_err(e("finalizing"))?;
    let chain_pem = order
        .poll_certificate(&policy)
        .await
        .map_err(e("fetching the certificate"))?;
    crate::routes::validate_certificate_pair(&chain_pem, &key_pem)
        .map_err(|err| AcmeError::Unusable(err.0.message))?;
    ctx.store
        .apply(TrustCommand::SetClusterCertificate {
            cert_pem: chain_pem,
            key_pem,
        })
        .await
        .map_err(AcmeError::Store)?;
    crate::context::on_state_change(ctx);
    let fingerprint = ctx.served_certificate().1.clone();
    ctx.events.lifecycle(
        "cluster-certificate-updated",
        "/1.0/cluster/certificate",
        None,
        Some(
            [
                ("fingerprint".to_string(), serde_json::json!(fingerprint)),
                ("source".to_string(), serde_json::json!("acme")),
            ]
            .into(),
        ),
    );
    Ok(fingerprint)
}

async fn clear_challenges(ctx: &Ctx) {
    let tokens: Vec<String> = ctx.store.state().acme_challenges.keys().cloned().collect();
    for token in tokens {
        let _ = ctx
            .store
            .apply(TrustCommand::SetAcmeChallenge {
                token,
                key_authorization: None,
            })
            .await;
    }
}

async fn record_warning(ctx: &Ctx, message: &str) {
    let now = OffsetDateTime::now_utc();
    let uuid = uuid::Builder::from_random_bytes(trust::random_bytes16())
        .into_uuid()
        .to_string();
    let warning = cluster::Warning {
        status: "new".into(),
        uuid: uuid.clone(),
        location: ctx.member_id(),
        project: String::new(),
        kind: WARNING_TYPE.into(),
        count: 1,
        first_seen_at: now,
        last_seen_at: now,
        last_message: message.to_string(),
        severity: "moderate".into(),
        entity_url: String::new(),
    };
    if ctx
        .store
        .apply(WarningCommand::RecordWarning { warning })
        .await
        .is_ok()
    {
        let uuid = ctx
            .store
            .state()
            .warnings
            .values()
            .find(|w| w.kind == WARNING_TYPE)
            .map(|w| w.uuid.clone())
            .unwrap_or(uuid);
        ctx.events.lifecycle(
            "warning-created",
            &format!("/1.0/warnings/{uuid}"),
            None,
            Some([("message".to_string(), serde_json::json!(message))].into()),
        );
    }
}

async fn resolve_warnings(ctx: &Ctx) {
    let open: Vec<String> = ctx
        .store
        .state()
        .warnings
        .values()
        .filter(|w| w.kind == WARNING_TYPE && w.status != "resolved")
        .map(|w| w.uuid.clone())
        .collect();
    for uuid in open {
        let _ = ctx
            .store
            .apply(WarningCommand::UpdateWarningStatus {
                uuid,
                status: "resolved".into(),
            })
            .await;
    }
}

/// Where the challenge listener belongs: `acme.http.port` as `HOST:PORT`, or a bare
/// `:PORT` on the interface of this member's API address when that is specific.
fn listener_address(ctx: &Ctx) -> Option<String> {
    let parsed = ctx.settings().acme.http_port.clone();
    if parsed.host.is_some() {
        return Some(parsed.bind_string());
    }
    let api_host = api::config::parse_listen_address(&ctx.https_address(), 8443)
        .ok()
        .and_then(|a| a.host);
    Some(match api_host {
        Some(h) if h.contains(':') => format!("[{h}]:{}", parsed.port),
        Some(h) => format!("{h}:{}", parsed.port),
        None => parsed.bind_string(),
    })
}

async fn keep_listener(ctx: &Ctx, active: bool, current: &mut Option<(String, watch::Sender<bool>)>) {
    let want = if active { listener_address(ctx) } else { None };
    if current.as_ref().map(|(a, _)| a) == want.as_ref() {
        return;
    }
    if let Some((addr, tx)) = current.take() {
        let _ = tx.send(true);
        tracing::info!(address = %addr, "ACME challenge listener closed");
    }
    let Some(addr) = want else { return };
    match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => {
            let (tx, rx) = watch::channel(false);
            tokio::spawn(serve_challenges(ctx.clone(), l, rx));
            tracing::info!(address = %addr, "ACME challenge listener open");
            *current = Some((addr, tx));
        }
        Err(e) => tracing::warn!(address = %addr, error = %e, "cannot open the ACME challenge listener"),
    }
}

/// Plain HTTP that answers only `/.well-known/acme-challenge/TOKEN`.
async fn serve_challenges(ctx: Ctx, listener: tokio::net::TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r { Ok(a) => a, Err(_) => continue },
            _ = transport::listen::stopped(&mut stop) => return,
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let answer = req
                    .uri()
                    .path()
                    .strip_prefix("/.well-known/acme-challenge/")
                    .and_then(|t| challenge_answer(&ctx, t));
                async move {
                    let resp = match answer {
                        Some(a) => http::Response::builder()
                            .header("content-type", "text/plain")
                            .body(Full::new(bytes::Bytes::from(a))),
                        None => http::Response::builder()
                            .status(404)
                            .body(Full::new(bytes::Bytes::from_static(b"not found\n"))),
                    };
                    Ok::<_, Infallible>(resp.expect("static response"))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_rules() {
        let now = OffsetDateTime::now_utc();
        let mk = |names: &[&str], from: i64, days: i64| {
            let start = now + time::Duration::days(from);
            trust::CertPair::generate_named("x", names, start, start + time::Duration::days(days))
                .unwrap()
                .cert_pem
        };
        let d = vec!["a.test".to_string()];
        assert!(needs_certificate(None, &d, now));
        assert!(!needs_certificate(Some(&mk(&["a.test"], -1, 90)), &d, now));
        assert!(
            needs_certificate(Some(&mk(&["b.test"], -1, 90)), &d, now),
            "name missing"
        );
        assert!(
            needs_certificate(Some(&mk(&["a.test"], -70, 90)), &d, now),
            "two thirds gone"
        );
    }
}
