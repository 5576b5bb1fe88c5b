//! `/1.0/cluster`, `/1.0/cluster/members`, and the internal member endpoints.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use cluster::{MemberCommand, TokenCommand, TokenKind, TrustCommand};
use serde::Deserialize;
use serde_json::json;
use trust::{ConnFacts, Identity};

use crate::context::Ctx;
use crate::membership;
use crate::response::{self, json_body, listing, recursion, sync, sync_etag, ApiError, Result};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ClusterPut {
    pub server_name: String,
    pub enabled: bool,
    pub server_address: String,
    pub cluster_token: String,
    pub cluster_address: String,
    pub cluster_certificate: String,
    pub member_config: Option<Vec<serde_json::Value>>,
}

pub async fn get(State(ctx): State<Ctx>) -> Result<Response> {
    let clustered = ctx.store.clustered();
    let body = json!({
        "server_name": if clustered { ctx.server_name() } else { String::new() },
        "enabled": clustered,
        "member_config": crate::routes::storage::member_config(&ctx.store.state()),
    });
    Ok(sync_etag(&body, &body))
}

/// Bootstrap (`enabled` with no token) or join (with `cluster_token`). Answers with a
/// finished operation, as Incus's clients wait on one.
pub async fn put(State(ctx): State<Ctx>, Extension(id): Extension<Identity>, body: Body) -> Result<Response> {
    let req: ClusterPut = json_body(body).await?;
    if !req.enabled {
        return Err(ApiError::bad_request(
            "Disabling clustering is not supported; remove the member instead",
        )
        .into());
    }
    if req.server_name.is_empty() {
        return Err(ApiError::bad_request("A server_name is required").into());
    }
    let joining = !req.cluster_token.is_empty() || !req.cluster_address.is_empty();
    if !joining {
        membership::bootstrap(&ctx, &req.server_name).await?;
        ctx.events
            .lifecycle("cluster-enabled", "/1.0/cluster", Some(&id), None);
    } else {
        let by = if req.cluster_token.is_empty() {
            if req.cluster_certificate.trim().is_empty() {
                return Err(ApiError::bad_request(
                    "Joining by cluster_address needs the cluster's certificate (cluster_certificate), or give a cluster_token",
                )
                .into());
            }
            membership::JoinBy::Certificate {
                address: &req.cluster_address,
                certificate: &req.cluster_certificate,
            }
        } else {
            membership::JoinBy::Token(&req.cluster_token)
        };
        membership::join(&ctx, &req.server_name, &req.server_address, by).await?;
        crate::routes::storage::join_parts(&ctx, req.member_config.as_deref().unwrap_or_default()).await?;
        ctx.events.lifecycle(
            "cluster-member-added",
            &format!("/1.0/cluster/members/{}", req.server_name),
            Some(&id),
            None,
        );
    }
    let description = if joining {
        "Joining cluster"
    } else {
        "Enabling clustering"
    };
    let op = crate::operations::record_finished(&ctx, description);
    Ok(response::operation(&op))
}

fn require_clustered(ctx: &Ctx) -> Result<()> {
    if ctx.store.clustered() {
        Ok(())
    } else {
        Err(ApiError::bad_request("This server is not clustered").into())
    }
}

pub async fn list_members(
    State(ctx): State<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let state = ctx.store.state();
    let members = state
        .members
        .iter()
        .map(|(name, m)| (name, membership::member_json(&ctx, m)));
    Ok(listing(recursion(&q), "/1.0/cluster/members", members))
}

pub async fn get_member(State(ctx): State<Ctx>, Path(name): Path<String>) -> Result<Response> {
    let state = ctx.store.state();
    let m = state.members.get(&name).ok_or_else(member_not_found)?;
    let body = membership::member_json(&ctx, m);
    let config = state.member_settings(m.id).config;
    Ok(sync_etag(&body, &(&m.description, &m.failure_domain, &config)))
}

fn member_not_found() -> crate::response::Error {
    ApiError::not_found_msg("Cluster member not found").into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct MemberPut {
    pub description: Option<String>,
    pub failure_domain: Option<String>,
    pub config: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    /// Database roles follow Raft and are managed automatically; others are refused.
    pub roles: Option<Vec<String>>,
}

pub async fn edit_member(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
    method: http::Method,
    body: Body,
) -> Result<Response> {
    let req: MemberPut = json_body(body).await?;
    let state = ctx.store.state();
    let m = state.members.get(&name).ok_or_else(member_not_found)?;
    if let Some(given) = &req.config {
        // PUT replaces the member's config, PATCH adds to it (as Incus).
        let mut config = if method == http::Method::PATCH {
            state.member_settings(m.id).config
        } else {
            Default::default()
        };
        for (k, v) in given {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            config.insert(k.clone(), v);
        }
        if config != state.member_settings(m.id).config {
            ctx.store
                .apply(MemberCommand::SetMemberConfig {
                    name: name.clone(),
                    config,
                })
                .await?;
        }
    }
    let failure_domain = req
        .failure_domain
        .filter(|f| !f.is_empty())
        .unwrap_or(m.failure_domain.clone());
    ctx.store
        .apply(MemberCommand::UpdateMember {
            name: name.clone(),
            description: req.description.unwrap_or(m.description.clone()),
            failure_domain,
        })
        .await?;
    ctx.events.lifecycle(
        "cluster-member-updated",
        &format!("/1.0/cluster/members/{name}"),
        Some(&id),
        None,
    );
    Ok(sync(json!({})))
}

#[derive(Debug, Deserialize)]
pub struct MemberPost {
    pub server_name: String,
}

pub async fn rename_member(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    let req: MemberPost = json_body(body).await?;
    membership::validate_name(&req.server_name)?;
    ctx.store
        .apply(MemberCommand::RenameMember {
            name: name.clone(),
            new_name: req.server_name.clone(),
        })
        .await?;
    ctx.events.lifecycle(
        "cluster-member-renamed",
        &format!("/1.0/cluster/members/{}", req.server_name),
        Some(&id),
        Some([("old_name".to_string(), json!(name))].into()),
    );
    Ok(response::created(&format!(
        "/1.0/cluster/members/{}",
        req.server_name
    )))
}

pub async fn delete_member(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    req: axum::extract::Request,
) -> Result<Response> {
    require_clustered(&ctx)?;
    // A member cannot carry out its own removal (it stops being a member half-way):
    // another member does it.
    if name == ctx.server_name() {
        let state = ctx.store.state();
        if let Some(other) = state
            .members
            .values()
            .find(|m| m.name != name && membership::is_online(&ctx, &m.name))
        {
            return Ok(crate::forward::to_member(&ctx, &other.name.clone(), req).await);
        }
    }
    let force = q.get("force").is_some_and(|v| v == "1" || v == "true");
    let state = ctx.store.state();
    let m = state.members.get(&name).ok_or_else(member_not_found)?.clone();
    if !force && !membership::is_online(&ctx, &name) {
        return Err(ApiError::bad_request(format!(
            "Member \"{name}\" is offline; use --force to remove it anyway"
        ))
        .into());
    }
    if state.members.len() == 1 {
        return Err(ApiError::bad_request("Cannot remove the last member of a cluster").into());
    }
    ctx.store
        .apply(MemberCommand::RemoveMember {
            name: name.clone(),
            force,
        })
        .await?;
    ctx.store.remove_node(m.id).await?;
    tracing::info!(member = %name, force, by = %id.username, "member removed");
    ctx.events.lifecycle(
        "cluster-member-removed",
        &format!("/1.0/cluster/members/{name}"),
        Some(&id),
        None,
    );
    Ok(sync(json!({})))
}

#[derive(Debug, Deserialize)]
pub struct MembersPost {
    pub server_name: String,
}

/// `cluster add NAME`: a join token, as a token operation.
pub async fn add_member(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    body: Body,
) -> Result<Response> {
    require_clustered(&ctx)?;
    let req: MembersPost = json_body(body).await?;
    membership::validate_name(&req.server_name)?;
    let state = ctx.store.state();
    if state.members.contains_key(&req.server_name) {
        return Err(ApiError::conflict(format!(
            "The cluster already has a member named \"{}\"",
            req.server_name
        ))
        .into());
    }
    let token = crate::operations::new_token(
        &ctx,
        TokenKind::Join {
            server_name: req.server_name.clone(),
        },
        ctx.settings().join_token_expiry,
    );
    ctx.store
        .apply(TokenCommand::CreateToken { token: token.clone() })
        .await?;
    tracing::info!(member = %req.server_name, by = %id.username, "join token issued");
    let op = membership::join_token_operation(&ctx, &token, &req.server_name);
    ctx.events.send(
        "operation",
        "default",
        serde_json::to_value(&op).expect("operations serialize"),
    );
    Ok(response::operation(&op))
}

/// Raft traffic from another member.
pub async fn raft_rpc(State(ctx): State<Ctx>, Path(kind): Path<String>, body: Body) -> Result<Response> {
    let limit = crate::gate::RAFT_MAX_BODY;
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|e| crate::gate::body_error(e, limit))?;
    let kind = cluster::raft::RpcKind::from_path(&kind)
        .filter(|k| *k != cluster::raft::RpcKind::Snapshot)
        .ok_or_else(ApiError::not_found)?;
    match ctx.store.serve_rpc(kind, &body).await {
        Ok(bytes) => Ok(([(http::header::CONTENT_TYPE, "application/json")], bytes).into_response()),
        Err(e) => Err(ApiError::unavailable(e).into()),
    }
}

/// A snapshot streamed by the leader: written to a file as it arrives, bounded by
/// `--max-snapshot-size` rather than by the request body limit, then installed.
pub async fn raft_snapshot(State(ctx): State<Ctx>, body: Body) -> Result<Response> {
    use cluster::raft::ReceiveError;
    use futures_util::StreamExt;
    let refused = |e: ReceiveError| -> crate::response::Error {
        tracing::warn!(error = %e, "refused a snapshot from the leader");
        e.into()
    };
    let mut receiver = ctx.store.receive_snapshot()?;
    let mut stream = body.into_data_stream();
    loop {
        let next = tokio::time::timeout(crate::peers::SNAPSHOT_STALL, stream.next())
            .await
            .map_err(|_| ApiError::new(408, "The snapshot stream stalled"))?;
        match next {
            None => break,
            Some(Ok(bytes)) => receiver.write(&bytes).await.map_err(refused)?,
            Some(Err(e)) => {
                return Err(ApiError::bad_request(format!("The snapshot stream broke: {e}")).into())
            }
        }
    }
    let reply = receiver.finish().await.map_err(refused)?;
    Ok(([(http::header::CONTENT_TYPE, "application/json")], reply).into_response())
}

/// A joiner asks to be admitted. Authorised by the join secret, not by trust.
pub async fn join(
    State(ctx): State<Ctx>,
    Extension(facts): Extension<ConnFacts>,
    body: Body,
) -> Result<Response> {
    let req: membership::JoinRequest = json_body(body).await?;
    // The joiner must prove the certificate it registers: it is the one of this session.
    let presented = facts.cert_fingerprint.clone().unwrap_or_default();
    let claimed = trust::cert::pem_to_der(&req.certificate)
        .map(|d| trust::fingerprint(&d))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if presented != claimed {
        return Err(ApiError::forbidden().into());
    }
    let reply = membership::admit(&ctx, req).await?;
    Ok((
        [(http::header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&reply).expect("serializes"),
    )
        .into_response())
}

/// `GET /1.0/cluster/members/NAME/state`: served by that member, wherever the client
/// connected.
/// (The route table sends the request to the member it names: here it is this one.)
pub async fn member_state(State(ctx): State<Ctx>) -> Result<Response> {
    require_clustered(&ctx)?;
    let sysinfo = tokio::task::spawn_blocking(host::sysinfo)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(sync(json!({ "sysinfo": sysinfo, "storage_pools": {} })))
}

#[derive(Debug, Deserialize)]
pub struct CertificatePut {
    #[serde(default)]
    pub cluster_certificate: String,
    #[serde(default)]
    pub cluster_certificate_key: String,
}

/// `cluster update-certificate`: a new certificate for every member, through the
/// replicated state (so a member offline now takes it when it returns, key change or
/// not). Members keep authenticating each other with their own certificates, so even a
/// certificate clients would refuse cannot break the cluster.
pub async fn certificate_put(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    body: Body,
) -> Result<Response> {
    require_clustered(&ctx)?;
    let req: CertificatePut = json_body(body).await?;
    let (crt, key) = validate_certificate_pair(&req.cluster_certificate, &req.cluster_certificate_key)?;
    ctx.store
        .apply(TrustCommand::SetClusterCertificate {
            cert_pem: crt,
            key_pem: key,
        })
        .await?;
    crate::context::on_state_change(&ctx);
    let fingerprint = ctx.served_certificate().1.clone();
    tracing::info!(fingerprint = %fingerprint, by = %id.username, "cluster certificate replaced");
    ctx.events.lifecycle(
        "cluster-certificate-updated",
        "/1.0/cluster/certificate",
        Some(&id),
        Some([("fingerprint".to_string(), json!(fingerprint))].into()),
    );
    Ok(sync(json!({})))
}

/// Both parse, the key matches, and the certificate is a leaf we can serve.
pub fn validate_certificate_pair(crt: &str, key: &str) -> Result<(String, String)> {
    let der = trust::cert::pem_to_der(crt)
        .map_err(|_| ApiError::bad_request("Certificate must be base64 encoded PEM certificate"))?;
    let info = trust::cert::inspect(&der).map_err(|e| ApiError::bad_request(e.to_string()))?;
    // Clients would refuse it: say so now rather than when they connect.
    if let Some(why) = trust::cert::outside_validity(&info, time::OffsetDateTime::now_utc()) {
        return Err(ApiError::bad_request(why).into());
    }
    if key.trim().is_empty() {
        return Err(ApiError::bad_request("A private key for the certificate is required").into());
    }
    transport::tls::certified_key(crt, key).map_err(|e| {
        ApiError::bad_request(match e {
            transport::tls::TlsError::KeyMismatch => {
                "The private key does not match the certificate".to_string()
            }
            transport::tls::TlsError::BadKeyPem => {
                "Private key must be a PEM encoded private key".to_string()
            }
            other => other.to_string(),
        })
    })?;
    Ok((crt.to_string(), key.to_string()))
}
