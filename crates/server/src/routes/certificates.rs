//! The trust store: `/1.0/certificates` and trust tokens.

use std::collections::HashMap;

use api::types::{Certificate, CertificatePut, CertificatesPost};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use cluster::{State as ClusterState, TokenCommand, TokenKind, TrustCommand};
use time::OffsetDateTime;
use trust::{ConnFacts, Identity};

use crate::context::Ctx;
use crate::operations::token_operation;
use crate::response::{
    self, check_if_match, created, json_body, listing, recursion, sync, sync_etag, ApiError, Result,
};

const TYPES: [&str; 3] = ["client", "metrics", "server"];

pub async fn list(State(ctx): State<Ctx>, Query(q): Query<HashMap<String, String>>) -> Result<Response> {
    let state = ctx.store.state();
    Ok(listing(
        recursion(&q),
        "/1.0/certificates",
        state.certificates.iter(),
    ))
}

/// Finds a certificate by fingerprint or unambiguous prefix, as Incus does.
fn find<'a>(state: &'a ClusterState, prefix: &str) -> Result<&'a Certificate> {
    let mut matches = state
        .certificates
        .range(prefix.to_string()..)
        .take_while(|(fp, _)| fp.starts_with(prefix))
        .map(|(_, c)| c);
    match (matches.next(), matches.next()) {
        (Some(c), None) if !prefix.is_empty() => Ok(c),
        (Some(_), Some(_)) => Err(ApiError::bad_request("More than one certificate matches").into()),
        _ => Err(ApiError::not_found_msg("Certificate not found").into()),
    }
}

pub async fn get(State(ctx): State<Ctx>, Path(fp): Path<String>) -> Result<Response> {
    let state = ctx.store.state();
    let cert = find(&state, &fp)?;
    let basis = etag_basis(cert);
    Ok(sync_etag(cert, &basis))
}

fn etag_basis(c: &Certificate) -> impl serde::Serialize + '_ {
    (
        &c.name,
        &c.kind,
        c.restricted,
        &c.projects,
        &c.certificate,
        &c.description,
    )
}

pub async fn create(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Extension(facts): Extension<ConnFacts>,
    body: Body,
) -> Result<Response> {
    let req: CertificatesPost = json_body(body).await?;
    if req.token && !req.certificate.is_empty() {
        return Err(ApiError::bad_request("Can't use certificate if token is requested").into());
    }
    if !id.full_access() {
        return redeem_trust_token(&ctx, &id, &facts, &req).await;
    }
    if req.token {
        return issue_trust_token(&ctx, &id, req).await;
    }
    let der = if !req.certificate.is_empty() {
        decode_certificate(&req.certificate)?
    } else if let Some(der) = &facts.cert_der {
        if id.method == trust::AuthMethod::Tls {
            return Err(ApiError::bad_request("Client is already trusted").into());
        }
        der.to_vec()
    } else if facts.unix_user.is_some() {
        return Err(ApiError::bad_request("Can't use TLS data on non-TLS link").into());
    } else {
        return Err(ApiError::bad_request("No client certificate provided").into());
    };
    let kind = if req.kind.is_empty() {
        "client".to_string()
    } else {
        req.kind.clone()
    };
    let cert = build_certificate(
        &der,
        &req.name,
        &kind,
        req.restricted,
        req.projects.clone(),
        &req.description,
        &id,
    )?;
    add(&ctx, &id, cert).await
}

/// Accepts PEM or bare base64 DER, as Incus does, and checks it parses.
fn decode_certificate(text: &str) -> Result<Vec<u8>> {
    use base64::Engine as _;
    let der = if text.contains("-----BEGIN") {
        trust::cert::pem_to_der(text).map_err(|e| ApiError::bad_request(e.to_string()))?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| ApiError::bad_request(format!("Invalid certificate: not PEM or base64: {e}")))?
    };
    trust::cert::inspect(&der)
        .map_err(|e| ApiError::bad_request(format!("Invalid certificate material: {e}")))?;
    Ok(der)
}

fn build_certificate(
    der: &[u8],
    name: &str,
    kind: &str,
    restricted: bool,
    projects: Option<Vec<String>>,
    description: &str,
    id: &Identity,
) -> Result<Certificate> {
    if !TYPES.contains(&kind) {
        return Err(ApiError::bad_request(format!("Unknown certificate type {kind:?}")).into());
    }
    let info = trust::cert::inspect(der)
        .map_err(|e| ApiError::bad_request(format!("Invalid certificate material: {e}")))?;
    if let Some(why) = trust::cert::outside_validity(&info, OffsetDateTime::now_utc()) {
        return Err(ApiError::bad_request(why).into());
    }
    let name = [name, info.common_name.as_str(), id.address.as_str()]
        .into_iter()
        .find(|n| !n.is_empty())
        .unwrap_or("unnamed")
        .to_string();
    Ok(Certificate {
        name,
        kind: kind.to_string(),
        restricted,
        projects: projects.unwrap_or_default(),
        certificate: trust::cert::der_to_pem(der),
        description: description.to_string(),
        fingerprint: info.fingerprint,
    })
}

async fn add(ctx: &Ctx, id: &Identity, cert: Certificate) -> Result<Response> {
    let fp = cert.fingerprint.clone();
    let (name, kind) = (cert.name.clone(), cert.kind.clone());
    ctx.store
        .apply(TrustCommand::AddCertificate { certificate: cert })
        .await?;
    tracing::info!(fingerprint = %fp, name = %name, kind = %kind, by = %id.username, "certificate trusted");
    let source = format!("/1.0/certificates/{fp}");
    ctx.events
        .lifecycle("certificate-created", &source, Some(id), None);
    Ok(created(&source))
}

async fn issue_trust_token(ctx: &Ctx, id: &Identity, req: CertificatesPost) -> Result<Response> {
    if !req.kind.is_empty() && req.kind != "client" {
        return Err(ApiError::bad_request("Tokens can only be issued for client certificates").into());
    }
    let addresses = ctx.addresses();
    if addresses.is_empty() {
        return Err(ApiError::bad_request("Can't issue token when server isn't listening on network").into());
    }
    let token = crate::operations::new_token(
        ctx,
        TokenKind::Trust {
            client_name: req.name.clone(),
            restricted: req.restricted,
            projects: req.projects.clone().unwrap_or_default(),
        },
        ctx.settings().remote_token_expiry,
    );
    ctx.store
        .apply(TokenCommand::CreateToken { token: token.clone() })
        .await?;
    tracing::info!(client = %req.name, by = %id.username, "trust token issued");
    let op = token_operation(ctx, &token, &addresses);
    ctx.events.send(
        "operation",
        "default",
        serde_json::to_value(&op).expect("operations serialize"),
    );
    Ok(response::operation(&op))
}

/// What an untrusted caller put in `trust_token`.
#[derive(Debug, PartialEq)]
enum Presented {
    /// A trust token, or only its secret.
    Trust(String),
    /// A cluster join token.
    Join(trust::token::JoinToken),
    /// Neither.
    Malformed(String),
}

fn presented(text: &str) -> Presented {
    use trust::token::{decode, JoinToken, TrustToken};
    let text = text.trim();
    match decode::<TrustToken>(text) {
        Ok(t) => Presented::Trust(t.secret),
        Err(e) => match decode::<JoinToken>(text) {
            Ok(j) => Presented::Join(j),
            // A bare secret: what `trust add` shows as the token's secret.
            Err(_)
                if !text.is_empty() && text.len() <= 128 && text.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Presented::Trust(text.to_string())
            }
            Err(_) => Presented::Malformed(e.to_string()),
        },
    }
}

/// An untrusted client presents a trust token: it is trusted with the certificate of
/// its TLS session, once. A join token presented by a server that is joining trusts that
/// server's certificate instead (the first step of the interactive `admin init`).
async fn redeem_trust_token(
    ctx: &Ctx,
    id: &Identity,
    facts: &ConnFacts,
    req: &CertificatesPost,
) -> Result<Response> {
    if req.token {
        return Err(ApiError::forbidden().into());
    }
    if req.trust_token.trim().is_empty() {
        return Err(ApiError::new(403, "not authorized: no trust token given").into());
    }
    let secret = match presented(&req.trust_token) {
        Presented::Trust(secret) => secret,
        Presented::Join(join) => return redeem_join_token(ctx, id, facts, req, &join).await,
        // 403 as for any token that opens nothing (and as Incus answers it).
        Presented::Malformed(e) => {
            return Err(ApiError::new(403, format!("Invalid trust token: {e}")).into());
        }
    };
    let state = ctx.store.state();
    let token = pending(&state, "trust", &secret, id)?;
    let Some(der) = &facts.cert_der else {
        return Err(ApiError::bad_request("No client certificate provided").into());
    };
    let (client_name, restricted, projects) = match &token.kind {
        TokenKind::Trust {
            client_name,
            restricted,
            projects,
        } => (client_name.clone(), *restricted, projects.clone()),
        TokenKind::Join { .. } => {
            return Err(crate::operations::token_refusal("trust", cluster::TokenRefusal::Unknown).into());
        }
    };
    let cert = build_certificate(der, &client_name, "client", restricted, Some(projects), "", id)?;
    let fp = cert.fingerprint.clone();
    let token_id = token.id.clone();
    let addresses = ctx.addresses();
    let op = token_operation(ctx, token, &addresses);
    ctx.store
        .apply(TokenCommand::RedeemTrustToken {
            token_id,
            certificate: cert,
        })
        .await
        .map_err(|e| spent_first("trust", e))?;
    tracing::info!(fingerprint = %fp, client = %client_name, address = %id.address, "certificate trusted by token");
    token_redeemed(ctx, id, op, &fp);
    Ok(created(&format!("/1.0/certificates/{fp}")))
}

/// The pending token of `kind` with `secret`, or the refusal that says why not.
fn pending<'a>(
    state: &'a ClusterState,
    kind: &str,
    secret: &str,
    id: &Identity,
) -> Result<&'a cluster::Token> {
    state
        .find_token(kind, secret, OffsetDateTime::now_utc())
        .map_err(|refusal| {
            tracing::info!(address = %id.address, kind, ?refusal, "refused a token");
            crate::operations::token_refusal(kind, refusal).into()
        })
}

/// A token that was pending a moment ago and is gone now was spent by someone else.
fn spent_first(kind: &str, e: cluster::StoreError) -> response::Error {
    match e {
        cluster::StoreError::State(cluster::StateError::TokenNotFound) => {
            crate::operations::token_refusal(kind, cluster::TokenRefusal::Spent(cluster::Spent::Used)).into()
        }
        other => response::Error::from(other),
    }
}

/// Tells listeners the token operation finished and the certificate was added.
fn token_redeemed(ctx: &Ctx, id: &Identity, op: api::types::Operation, fingerprint: &str) {
    let done = crate::operations::finished(op, api::types::status::SUCCESS);
    ctx.events.send(
        "operation",
        "default",
        serde_json::to_value(&done).expect("operations serialize"),
    );
    let source = format!("/1.0/certificates/{fingerprint}");
    ctx.events
        .lifecycle("certificate-created", &source, Some(id), None);
}

/// A join token as a trust token, from a server that is joining (`type: server`, its
/// certificate in the body or the TLS session): that certificate is trusted as a server
/// under the token's member name, and the token is spent. From anyone else, a message
/// that says what the token is for.
async fn redeem_join_token(
    ctx: &Ctx,
    id: &Identity,
    facts: &ConnFacts,
    req: &CertificatesPost,
    join: &trust::token::JoinToken,
) -> Result<Response> {
    if req.kind != "server" {
        return Err(ApiError::bad_request(
            "This is a cluster join token (for a new member, with admin init), not a trust token for adding a client",
        )
        .into());
    }
    let state = ctx.store.state();
    let token = pending(&state, "join", &join.secret, id)?;
    let TokenKind::Join { server_name } = &token.kind else {
        return Err(crate::operations::token_refusal("join", cluster::TokenRefusal::Unknown).into());
    };
    let der = if !req.certificate.is_empty() {
        decode_certificate(&req.certificate)?
    } else if let Some(der) = &facts.cert_der {
        der.to_vec()
    } else {
        return Err(ApiError::bad_request("No client certificate provided").into());
    };
    let cert = build_certificate(&der, server_name, "server", false, None, "", id)?;
    let fp = cert.fingerprint.clone();
    let op = crate::membership::join_token_operation(ctx, token, server_name);
    ctx.store
        .apply(TokenCommand::RedeemJoinToken {
            token_id: token.id.clone(),
            certificate: cert,
        })
        .await
        .map_err(|e| spent_first("join", e))?;
    tracing::info!(fingerprint = %fp, member = %server_name, address = %id.address, "server certificate trusted by join token");
    token_redeemed(ctx, id, op, &fp);
    Ok(created(&format!("/1.0/certificates/{fp}")))
}

pub async fn put(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(fp): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    edit(ctx, id, fp, headers, body, true).await
}

pub async fn patch(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(fp): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    edit(ctx, id, fp, headers, body, false).await
}

async fn edit(
    ctx: Ctx,
    id: Identity,
    fp: String,
    headers: HeaderMap,
    body: Body,
    replace: bool,
) -> Result<Response> {
    let req: CertificatePut = json_body(body).await?;
    let state = ctx.store.state();
    let old = find(&state, &fp)?.clone();
    check_if_match(&headers, &etag_basis(&old))?;
    let kind = req
        .kind
        .clone()
        .filter(|k| !k.is_empty())
        .unwrap_or(old.kind.clone());
    if kind != old.kind {
        return Err(ApiError::bad_request("The certificate type cannot be changed").into());
    }
    let mut new = old.clone();
    let pick = |new: Option<String>, old: &str| match new {
        Some(v) => v,
        None if replace => String::new(),
        None => old.to_string(),
    };
    new.name = pick(req.name, &old.name);
    new.description = pick(req.description, &old.description);
    new.restricted = req
        .restricted
        .unwrap_or(if replace { false } else { old.restricted });
    new.projects = req
        .projects
        .unwrap_or(if replace { Vec::new() } else { old.projects.clone() });
    if let Some(pem) = req.certificate.filter(|c| !c.is_empty()) {
        let der = decode_certificate(&pem)?;
        new.certificate = trust::cert::der_to_pem(&der);
        new.fingerprint = trust::fingerprint(&der);
    }
    if new.name.is_empty() {
        new.name = old.name.clone();
    }
    ctx.store
        .apply(TrustCommand::UpdateCertificate {
            fingerprint: old.fingerprint.clone(),
            certificate: new.clone(),
        })
        .await?;
    tracing::info!(fingerprint = %old.fingerprint, by = %id.username, "trusted certificate updated");
    ctx.events.lifecycle(
        "certificate-updated",
        &format!("/1.0/certificates/{}", new.fingerprint),
        Some(&id),
        None,
    );
    Ok(sync(serde_json::json!({})))
}

pub async fn delete(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(fp): Path<String>,
) -> Result<Response> {
    let state = ctx.store.state();
    let fingerprint = find(&state, &fp)?.fingerprint.clone();
    ctx.store
        .apply(TrustCommand::DeleteCertificate {
            fingerprint: fingerprint.clone(),
        })
        .await?;
    tracing::info!(fingerprint = %fingerprint, by = %id.username, "certificate removed from the trust store");
    ctx.events.lifecycle(
        "certificate-deleted",
        &format!("/1.0/certificates/{fingerprint}"),
        Some(&id),
        None,
    );
    Ok(sync(serde_json::json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trust::token::{encode, JoinToken, TrustToken, NO_EXPIRY};

    #[test]
    fn presented_tokens_are_told_apart() {
        let trust = encode(&TrustToken {
            client_name: "c".into(),
            fingerprint: "f".into(),
            addresses: vec![],
            secret: "s1".into(),
            expires_at: NO_EXPIRY.into(),
        });
        let join = JoinToken {
            server_name: "node2".into(),
            fingerprint: "f".into(),
            addresses: vec![],
            secret: "s2".into(),
            expires_at: NO_EXPIRY.into(),
        };
        assert_eq!(presented(&trust), Presented::Trust("s1".into()));
        assert_eq!(presented(&format!(" {trust}\n")), Presented::Trust("s1".into()));
        assert_eq!(presented(&encode(&join)), Presented::Join(join));
        let secret = "ab".repeat(32);
        assert_eq!(presented(&secret), Presented::Trust(secret.clone()));
        for junk in ["not a token", "eyJhIjoxfQ==", "!!", &"a".repeat(200)] {
            assert!(matches!(presented(junk), Presented::Malformed(_)), "{junk}");
        }
    }
}
