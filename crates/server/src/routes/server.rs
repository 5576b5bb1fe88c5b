//! `GET /`, and `GET/PUT/PATCH /1.0`: the server and its configuration.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use api::types::{Server, ServerEnvironment, ServerPut, StorageDriver};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use serde_json::Value;
use trust::Identity;

use crate::context::Ctx;
use crate::memo::{Memo, PerCaller, Same};
use crate::response::{
    self, check_if_match, json_body, json_bytes_response, sync, sync_body, with_etag, ApiError, Result,
};

pub async fn root() -> Response {
    sync(["/1.0"])
}

/// The configuration as `GET /1.0` shows it: global and local keys together.
fn current_config(ctx: &Ctx) -> BTreeMap<String, String> {
    let mut config = ctx.store.state().config.clone();
    config.extend(ctx.store.local().iter().map(|(k, v)| (k.clone(), v.clone())));
    config
}

fn auth_methods(settings: &api::Settings) -> Vec<String> {
    let mut methods = vec!["tls".to_string()];
    if settings.oidc.is_some() {
        methods.push("oidc".into());
    }
    methods
}

/// What `GET /1.0` is made from besides the caller (see [`crate::memo`]).
pub struct Inputs {
    state: Arc<cluster::State>,
    local: Arc<BTreeMap<String, String>>,
    identity: Option<Arc<cluster::MemberIdentity>>,
    served: Arc<(String, String)>,
    clustered: bool,
}

impl Same for Inputs {
    fn same(&self, o: &Self) -> bool {
        self.state.same(&o.state)
            && self.local.same(&o.local)
            && self.identity.same(&o.identity)
            && self.served.same(&o.served)
            && self.clustered.same(&o.clustered)
    }
}

/// `GET /1.0` as rendered for one set of [`Inputs`]: the ETag, the untrusted body, and
/// the trusted body per caller (it names the caller).
pub struct View {
    config: BTreeMap<String, String>,
    settings: api::Settings,
    etag: String,
    untrusted: Bytes,
    trusted: PerCaller<(String, &'static str), Bytes, 16>,
}

/// The kept `GET /1.0` (a field of the context).
pub type Rendered = Memo<Inputs, View>;

fn inputs(ctx: &Ctx) -> Inputs {
    Inputs {
        state: ctx.store.state(),
        local: ctx.store.local(),
        identity: ctx.store.identity(),
        served: ctx.served_certificate(),
        clustered: ctx.store.clustered(),
    }
}

/// The document without the caller: what every trusted body shares.
fn document(ctx: &Ctx, inputs: &Inputs, settings: &api::Settings) -> Server {
    Server {
        config: BTreeMap::new(),
        api_extensions: api::extensions::API_EXTENSIONS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        api_status: "stable".into(),
        api_version: "1.0".into(),
        auth: "untrusted".into(),
        public: false,
        auth_methods: auth_methods(settings),
        environment: Some(ServerEnvironment {
            addresses: host::listen_addresses(&settings.https_address, crate::listeners::DEFAULT_PORT),
            architectures: ctx.host.architectures.clone(),
            certificate: inputs.served.0.clone(),
            certificate_fingerprint: inputs.served.1.clone(),
            driver: String::new(),
            driver_version: String::new(),
            firewall: String::new(),
            kernel: ctx.host.kernel.clone(),
            kernel_architecture: ctx.host.kernel_architecture.clone(),
            kernel_features: BTreeMap::new(),
            kernel_version: ctx.host.kernel_version.clone(),
            lxc_features: BTreeMap::new(),
            os_name: ctx.host.os_name.clone(),
            os_version: ctx.host.os_version.clone(),
            project: "default".into(),
            server: "stapes".into(),
            server_clustered: inputs.clustered,
            server_event_mode: "full-mesh".into(),
            server_name: match &inputs.identity {
                Some(id) => id.name.clone(),
                None => ctx.host.hostname.clone(),
            },
            server_pid: std::process::id(),
            server_version: env!("CARGO_PKG_VERSION").into(),
            // The drivers of the pools there are, as Incus lists them ("dir").
            storage: storage_in_use(&inputs.state),
            storage_version: if inputs.state.pools.is_empty() {
                String::new()
            } else {
                "1".into()
            },
            storage_supported_drivers: vec![StorageDriver {
                name: "dir".into(),
                version: "1".into(),
                remote: false,
            }],
        }),
        ..Default::default()
    }
}

fn storage_in_use(state: &cluster::State) -> String {
    let drivers: std::collections::BTreeSet<&str> = state.pools.values().map(|p| p.driver.as_str()).collect();
    drivers.into_iter().collect::<Vec<_>>().join(" | ")
}

fn render(ctx: &Ctx, inputs: &Inputs) -> View {
    let mut config = inputs.state.config.clone();
    config.extend(inputs.local.iter().map(|(k, v)| (k.clone(), v.clone())));
    let settings = api::Settings::new(&inputs.state.config, &inputs.local);
    let mut untrusted = document(ctx, inputs, &settings);
    untrusted.environment = None;
    View {
        settings,
        etag: response::etag(&config),
        untrusted: sync_body(untrusted),
        trusted: PerCaller::default(),
        config,
    }
}

/// `GET /1.0`, rendered once per change of its inputs and kept (see [`crate::memo`]).
pub async fn get(State(ctx): State<Ctx>, Extension(id): Extension<Identity>) -> Result<Response> {
    let kept = ctx.server_doc.get(inputs(&ctx), |i| render(&ctx, i));
    let (inputs, view) = (&kept.0, &kept.1);
    if !id.trusted() {
        return Ok(json_bytes_response(StatusCode::OK, view.untrusted.clone()));
    }
    let method = id.method.as_str();
    let body = view.trusted.get((id.username.clone(), method), || {
        let mut server = document(&ctx, inputs, &view.settings);
        server.auth = "trusted".into();
        server.auth_user_name = Some(id.username.clone());
        server.auth_user_method = Some(method.into());
        server.config = view
            .config
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        sync_body(server)
    });
    Ok(with_etag(json_bytes_response(StatusCode::OK, body), &view.etag))
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
    let proposed = api::config::check(&proposed)?;

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
        ctx.listeners.set_https(addr, handler).await?;
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
