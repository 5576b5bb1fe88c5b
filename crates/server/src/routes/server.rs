//! `GET /`, and `GET/PUT/PATCH /1.0`: the server and its configuration.

use std::collections::{BTreeMap, HashMap};

use api::types::{Server, ServerEnvironment, ServerPut, StorageDriver};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use serde_json::Value;
use trust::Identity;

use crate::context::Ctx;
use crate::response::{check_if_match, json_body, sync, sync_etag, ApiError, Result};

pub async fn root() -> Response {
    sync(["/1.0"])
}

/// The configuration as `GET /1.0` shows it: global and local keys together.
fn current_config(ctx: &Ctx) -> BTreeMap<String, String> {
    let mut config = ctx.store.state().config.clone();
    config.extend(ctx.store.local().iter().map(|(k, v)| (k.clone(), v.clone())));
    config
}

fn auth_methods(config: &BTreeMap<String, String>) -> Vec<String> {
    let mut methods = vec!["tls".to_string()];
    let set = |k: &str| config.get(k).is_some_and(|v| !v.is_empty());
    if set("oidc.issuer") && set("oidc.client.id") {
        methods.push("oidc".into());
    }
    methods
}

pub async fn get(State(ctx): State<Ctx>, Extension(id): Extension<Identity>) -> Result<Response> {
    let config = current_config(&ctx);
    let mut server = Server {
        config: BTreeMap::new(),
        api_extensions: api::extensions::API_EXTENSIONS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        api_status: "stable".into(),
        api_version: "1.0".into(),
        auth: "untrusted".into(),
        public: false,
        auth_methods: auth_methods(&config),
        ..Default::default()
    };
    if !id.trusted() {
        return Ok(sync(server));
    }
    let served = ctx.served_certificate();
    let host = &ctx.host;
    server.auth = "trusted".into();
    server.auth_user_name = Some(id.username.clone());
    server.auth_user_method = Some(id.method.as_str().into());
    server.environment = Some(ServerEnvironment {
        addresses: ctx.addresses(),
        architectures: host.architectures.clone(),
        certificate: served.0.clone(),
        certificate_fingerprint: served.1.clone(),
        driver: String::new(),
        driver_version: String::new(),
        firewall: String::new(),
        kernel: host.kernel.clone(),
        kernel_architecture: host.kernel_architecture.clone(),
        kernel_features: BTreeMap::new(),
        kernel_version: host.kernel_version.clone(),
        lxc_features: BTreeMap::new(),
        os_name: host.os_name.clone(),
        os_version: host.os_version.clone(),
        project: "default".into(),
        server: "stapes".into(),
        server_clustered: ctx.store.clustered(),
        server_event_mode: "full-mesh".into(),
        server_name: ctx.server_name(),
        server_pid: std::process::id(),
        server_version: env!("CARGO_PKG_VERSION").into(),
        storage: String::new(),
        storage_version: String::new(),
        storage_supported_drivers: Vec::<StorageDriver>::new(),
    });
    server.config = config
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    Ok(sync_etag(server, &config))
}

pub async fn put(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    update(ctx, id, q, headers, body, true).await
}

pub async fn patch(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    update(ctx, id, q, headers, body, false).await
}

async fn update(
    ctx: Ctx,
    id: Identity,
    _query: HashMap<String, String>,
    headers: HeaderMap,
    body: Body,
    replace: bool,
) -> Result<Response> {
    let req: ServerPut = json_body(body).await?;
    let before = current_config(&ctx);
    check_if_match(&headers, &before)?;
    let proposed = to_strings(req.config)?;
    let proposed = api::config::check(&proposed).map_err(|e| ApiError::bad_request(e.to_string()))?;

    // What changes: every proposed key, plus (for PUT) every set key left out.
    let mut changes: BTreeMap<String, String> = proposed.clone();
    if replace {
        for k in before.keys() {
            changes.entry(k.clone()).or_default();
        }
    }
    changes.retain(|k, v| before.get(k).map(String::as_str).unwrap_or("") != v.as_str());
    if changes.is_empty() {
        return Ok(sync(serde_json::json!({})));
    }
    let (local, global): (BTreeMap<_, _>, BTreeMap<_, _>) = changes
        .into_iter()
        .partition(|(k, _)| api::config::scope(k) == Some(api::config::Scope::Local));

    // Side effects that can fail come first, so a refused change persists nothing.
    if let Some(addr) = local.get("core.https_address") {
        let handler = ctx.conn_handler();
        ctx.listeners
            .set_https(addr, handler)
            .await
            .map_err(ApiError::bad_request)?;
    }
    if !local.is_empty() {
        ctx.store.set_local(&local).await?;
    }
    if !global.is_empty() {
        ctx.store
            .apply(cluster::ConfigCommand::SetConfig {
                changes: global.clone(),
            })
            .await?;
    }
    let keys: Vec<&String> = local.keys().chain(global.keys()).collect();
    tracing::info!(keys = ?keys, user = %id.username, "server configuration changed");
    ctx.events.lifecycle("config-updated", "/1.0", Some(&id), None);
    Ok(sync(serde_json::json!({})))
}

/// Incus keeps server config values as strings; accept JSON scalars as their text.
fn to_strings(config: BTreeMap<String, Value>) -> Result<BTreeMap<String, String>> {
    config
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s,
                Value::Null => String::new(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "Invalid value for configuration key \"{k}\": expected a string"
                    ))
                    .into())
                }
            };
            Ok((k, text))
        })
        .collect()
}
