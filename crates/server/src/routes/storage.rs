//! `/1.0/storage-pools`: pools made on every member, the Incus cluster way.
//!
//! ```text
//!  POST ?target=M   -> DefinePart (M's own keys, pending)               any member
//!  POST             -> Create (global keys; Errored until done)          any member
//!                      └─ for each pending part: its member makes it
//!                         (here: storage::open().create(); elsewhere:
//!                          POST /internal/storage-pools/{name} with the part's keys)
//!                      └─ PartCreated per success; MarkCreated when all are
//!  GET/PUT/PATCH ?target=M   -> forwarded to M: M's view, M's keys
//!  GET .../resources          -> the member's own file system (statvfs)
//!  DELETE           -> refused while used; each member removes its part
//!                      (DELETE /internal/storage-pools/{name}), then the record
//! ```
//!
//! The member that receives a request drives it; the record is the replicated state's
//! (`cluster::state::pools`). A member that fails leaves the pool `Errored` with the
//! reason in the answer, and running the same create again finishes it: parts already
//! made are skipped, and a part whose directory is already whole (a crash between making
//! it and recording it) counts as made. A standalone server's failed create leaves no
//! record.

use std::collections::{BTreeMap, HashMap};

use api::types::{StoragePool, StoragePoolPut, StoragePoolState, StoragePoolsPost};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use axum::Extension;
use cluster::{MemberId, PoolCommand, PoolStatus};
use serde::{Deserialize, Serialize};
use trust::Identity;

use crate::context::Ctx;
use crate::response::{
    check_if_match, created, json_body, listing, recursion, sync, sync_etag, ApiError, Result,
};

/// What a member is asked to make or remove: its part of a pool.
#[derive(Debug, Serialize, Deserialize)]
pub struct PartRequest {
    pub driver: String,
    /// The global keys and the member's own.
    pub config: BTreeMap<String, String>,
}

fn not_found() -> crate::response::Error {
    ApiError::not_found_msg("Storage pool not found").into()
}

fn storage_error(e: storage::Error) -> crate::response::Error {
    if e.is_bad_input() {
        ApiError::bad_request(e.to_string()).into()
    } else {
        ApiError::internal(e.to_string()).into()
    }
}

/// `?target=` when it names something.
fn target(uri: &Uri) -> Option<String> {
    crate::forward::target_of(uri).filter(|t| !t.is_empty())
}

fn pool_config(name: &str, req: &PartRequest) -> storage::PoolConfig {
    storage::PoolConfig {
        name: name.to_string(),
        driver: req.driver.clone(),
        source: req
            .config
            .get("source")
            .filter(|s| !s.is_empty())
            .map(std::path::PathBuf::from),
    }
}

/// Serializes the file-system work on this member's parts, as Incus's pool creation
/// lock does: two creates of one pool at once must not both find the directory empty.
static LOCAL_WORK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The pool (other than `name`) whose part on member `at` already has this `source`.
fn source_taken(state: &cluster::State, name: &str, at: Option<MemberId>, source: &str) -> Option<String> {
    state
        .pools
        .values()
        .filter(|p| p.name != name)
        .find(|p| {
            p.part(at)
                .and_then(|part| part.config.get("source"))
                .is_some_and(|s| s == source)
        })
        .map(|p| p.name.clone())
}

/// A given `source` as the driver will use it (lexically cleaned), to compare with the
/// sources recorded for other pools; `None` for the default one, which is per name.
fn resolved_source(ctx: &Ctx, name: &str, req: &PartRequest) -> Option<String> {
    req.config.get("source").filter(|s| !s.is_empty())?;
    let pool = storage::open(&ctx.state_dir, &pool_config(name, req)).ok()?;
    Some(pool.source().display().to_string())
}

/// Makes this member's part of a pool (or finds it already whole); returns the part's
/// keys as they now are (`source` resolved, as Incus records it).
async fn make_part(ctx: &Ctx, name: &str, req: PartRequest) -> Result<BTreeMap<String, String>> {
    let state_dir = ctx.state_dir.clone();
    let config = pool_config(name, &req);
    let _local = LOCAL_WORK.lock().await;
    let made = tokio::task::spawn_blocking(move || {
        let pool = storage::open(&state_dir, &config)?;
        if pool.check().is_err() {
            pool.create()?;
        }
        Ok::<_, storage::Error>(pool.source().display().to_string())
    })
    .await
    .map_err(|e| ApiError::internal(format!("Creating the storage pool: {e}")))?
    .map_err(storage_error)?;
    let mut part: BTreeMap<String, String> = req
        .config
        .into_iter()
        .filter(|(k, _)| cluster::state::is_member_specific(k))
        .collect();
    part.insert("source".into(), made);
    Ok(part)
}

/// Removes this member's part of a pool; nothing there is not an error.
async fn remove_part(ctx: &Ctx, name: &str, req: PartRequest) -> Result<()> {
    let state_dir = ctx.state_dir.clone();
    let config = pool_config(name, &req);
    let _local = LOCAL_WORK.lock().await;
    tokio::task::spawn_blocking(move || {
        let pool = storage::open(&state_dir, &config)?;
        if pool.check().is_err() && !pool.source().exists() {
            return Ok(());
        }
        pool.delete()
    })
    .await
    .map_err(|e| ApiError::internal(format!("Deleting the storage pool: {e}")))?
    .map_err(storage_error)
}

/// Asks member `at` (here, or another over the member channel) to make or remove its
/// part; returns the part's keys after a make.
async fn on_member(
    ctx: &Ctx,
    at: Option<MemberId>,
    method: Method,
    name: &str,
    req: PartRequest,
) -> std::result::Result<BTreeMap<String, String>, String> {
    let state = ctx.store.state();
    let here = at.is_none() || at == ctx.member_id();
    if here {
        let done = if method == Method::DELETE {
            remove_part(ctx, name, req).await.map(|()| BTreeMap::new())
        } else {
            make_part(ctx, name, req).await
        };
        return done.map_err(|e| e.0.message);
    }
    let member = at
        .and_then(|id| state.member_by_id(id))
        .ok_or_else(|| "Cluster member not found".to_string())?;
    if !crate::membership::is_online(ctx, &member.name) {
        return Err(format!("Cluster member {:?} is offline", member.name));
    }
    let body = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
    let path = format!("/internal/storage-pools/{name}");
    let timeout = ctx.settings().forward_timeout;
    let (status, bytes) = ctx
        .peers
        .request(&member.address, method, &path, body, timeout)
        .await
        .map_err(|e| format!("Failed to reach member {:?}: {e}", member.name))?;
    let env: api::Envelope = serde_json::from_slice(&bytes)
        .map_err(|e| format!("Member {:?} answered badly: {e}", member.name))?;
    if status != 200 {
        return Err(format!("Member {:?}: {}", member.name, env.error));
    }
    serde_json::from_value(env.metadata).map_err(|e| format!("Member {:?} answered badly: {e}", member.name))
}

/// `POST /internal/storage-pools/{name}`: make this member's part.
pub async fn internal_make(State(ctx): State<Ctx>, Path(name): Path<String>, body: Body) -> Result<Response> {
    storage::check_pool_name(&name).map_err(storage_error)?;
    let req: PartRequest = json_body(body).await?;
    Ok(sync(make_part(&ctx, &name, req).await?))
}

/// `DELETE /internal/storage-pools/{name}`: remove this member's part.
pub async fn internal_remove(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    storage::check_pool_name(&name).map_err(storage_error)?;
    let req: PartRequest = json_body(body).await?;
    remove_part(&ctx, &name, req).await?;
    Ok(sync(serde_json::json!({})))
}

/// The pool as clients see it: the cluster's view, or one member's (`at`: its global
/// and own keys, its part's state). A standalone server always shows its own.
fn render(ctx: &Ctx, state: &cluster::State, pool: &cluster::Pool, member_view: bool) -> StoragePool {
    let clustered = !state.members.is_empty();
    let at = ctx.member_id();
    let (config, status) = if clustered && !member_view {
        (pool.config.clone(), pool.status)
    } else {
        let status = match pool.part(at).map(|p| p.status) {
            Some(PoolStatus::Created) => PoolStatus::Created,
            _ if pool.status == PoolStatus::Errored => PoolStatus::Errored,
            _ => PoolStatus::Pending,
        };
        (pool.config_at(at), status)
    };
    let mut locations: Vec<String> = if clustered {
        pool.parts
            .iter()
            .map(|p| ctx.location_name(state, p.location))
            .collect()
    } else {
        vec!["none".into()]
    };
    locations.sort();
    StoragePool {
        put: StoragePoolPut {
            config,
            description: pool.description.clone(),
        },
        name: pool.name.clone(),
        driver: pool.driver.clone(),
        used_by: state.pool_used_by(&pool.name),
        status: status.as_str().to_string(),
        locations,
    }
}

/// What the ETag covers, as Incus: name, driver, description, config.
fn etag_basis(p: &StoragePool) -> (String, String, String, BTreeMap<String, String>) {
    (
        p.name.clone(),
        p.driver.clone(),
        p.put.description.clone(),
        p.put.config.clone(),
    )
}

pub async fn list(State(ctx): State<Ctx>, Query(q): Query<HashMap<String, String>>) -> Result<Response> {
    let state = ctx.store.state();
    let filter = q.get("filter").map(String::as_str).unwrap_or("");
    let filter = api::filter::Filter::parse(filter)
        .map_err(|e| ApiError::bad_request(format!("Invalid filter: {e}")))?;
    let mut rendered = Vec::new();
    for (name, p) in &state.pools {
        let pool = render(&ctx, &state, p, false);
        let value = serde_json::to_value(&pool).unwrap_or(serde_json::Value::Null);
        if filter.matches(&value).map_err(ApiError::bad_request)? {
            rendered.push((name, pool));
        }
    }
    Ok(listing(recursion(&q), "/1.0/storage-pools", rendered.into_iter()))
}

pub async fn get(State(ctx): State<Ctx>, Path(name): Path<String>, uri: Uri) -> Result<Response> {
    let state = ctx.store.state();
    let pool = state.pools.get(&name).ok_or_else(not_found)?;
    let p = render(&ctx, &state, pool, target(&uri).is_some());
    let basis = etag_basis(&p);
    Ok(sync_etag(p, &basis))
}

pub async fn resources(State(ctx): State<Ctx>, Path(name): Path<String>) -> Result<Response> {
    let state = ctx.store.state();
    let pool = state.pools.get(&name).ok_or_else(not_found)?;
    let at = ctx.member_id();
    if pool.part(at).map(|p| p.status) != Some(PoolStatus::Created) {
        return Err(ApiError::bad_request("The storage pool is not created on this member").into());
    }
    let req = PartRequest {
        driver: pool.driver.clone(),
        config: pool.config_at(at),
    };
    let config = pool_config(&name, &req);
    let state_dir = ctx.state_dir.clone();
    let space = tokio::task::spawn_blocking(move || storage::open(&state_dir, &config)?.space())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(storage_error)?;
    Ok(sync(StoragePoolState {
        space: api::types::StoragePoolSpace {
            used: space.used,
            total: space.total,
        },
        inodes: api::types::StoragePoolInodes {
            used: space.inodes_used,
            total: space.inodes_total,
        },
    }))
}

fn lifecycle(ctx: &Ctx, action: &str, name: &str, id: &Identity, target: Option<&str>) {
    let context = target.map(|t| BTreeMap::from([("target".to_string(), serde_json::Value::from(t))]));
    ctx.events
        .lifecycle(action, &format!("/1.0/storage-pools/{name}"), Some(id), context);
}

pub async fn create(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    uri: Uri,
    body: Body,
) -> Result<Response> {
    let req: StoragePoolsPost = json_body(body).await?;
    if req.name.is_empty() {
        return Err(ApiError::bad_request("No name provided").into());
    }
    storage::check_pool_name(&req.name).map_err(storage_error)?;
    if req.driver.is_empty() {
        return Err(ApiError::bad_request("No driver provided").into());
    }
    storage::check_config(&req.driver, req.put.config.keys()).map_err(storage_error)?;
    let location = format!("/1.0/storage-pools/{}", req.name);
    let clustered = ctx.store.clustered();
    if let Some(member) = target(&uri) {
        if !clustered {
            return Err(ApiError::bad_request("Target only allowed when clustered").into());
        }
        if !req.put.description.is_empty() {
            return Err(ApiError::bad_request(
                "The storage pool description cannot be set for a specific member",
            )
            .into());
        }
        let state = ctx.store.state();
        let at = state
            .members
            .get(&member)
            .map(|m| m.id)
            .ok_or_else(|| ApiError::not_found_msg("Cluster member not found"))?;
        ctx.store
            .apply(PoolCommand::DefinePart {
                name: req.name.clone(),
                driver: req.driver.clone(),
                location: at,
                config: req.put.config.clone(),
            })
            .await?;
        lifecycle(&ctx, "storage-pool-created", &req.name, &id, Some(&member));
        return Ok(created(&location));
    }
    let fresh_standalone = !clustered && !ctx.store.state().pools.contains_key(&req.name);
    let (global, own): (BTreeMap<_, _>, BTreeMap<_, _>) = req
        .put
        .config
        .clone()
        .into_iter()
        .partition(|(k, _)| !cluster::state::is_member_specific(k));
    if clustered {
        if let Some(k) = own.keys().next() {
            return Err(ApiError::bad_request(format!("Config key {k:?} is cluster member specific")).into());
        }
    }
    ctx.store
        .apply(PoolCommand::Create {
            name: req.name.clone(),
            driver: req.driver.clone(),
            description: req.put.description.clone(),
            config: global,
            standalone_part: (!clustered).then_some(own),
        })
        .await?;
    let made = make_parts(&ctx, &req.name).await;
    if let Err(e) = made {
        if fresh_standalone {
            // Nothing half-made: a standalone server's pool exists whole or not at all.
            let _ = ctx
                .store
                .apply(PoolCommand::Delete {
                    name: req.name.clone(),
                })
                .await;
        }
        return Err(e);
    }
    lifecycle(&ctx, "storage-pool-created", &req.name, &id, None);
    Ok(created(&location))
}

/// Has every pending part of `name` made by its member, recording each success, and
/// marks the pool created once all are.
async fn make_parts(ctx: &Ctx, name: &str) -> Result<()> {
    let state = ctx.store.state();
    let pool = state.pools.get(name).ok_or_else(not_found)?;
    let pending: Vec<_> = pool
        .parts
        .iter()
        .filter(|p| p.status != PoolStatus::Created)
        .map(|p| {
            let req = PartRequest {
                driver: pool.driver.clone(),
                config: pool.config_at(p.location),
            };
            let at = p.location;
            let taken = resolved_source(ctx, name, &req)
                .and_then(|source| source_taken(&state, name, at, &source).map(|other| (source, other)));
            async move {
                if let Some((source, other)) = taken {
                    let member = ctx.location_name(&ctx.store.state(), at);
                    return (
                        at,
                        Err(format!(
                            "Member {member:?}: Source path '{source}' is already used by storage pool {other:?}"
                        )),
                    );
                }
                (at, on_member(ctx, at, Method::POST, name, req).await)
            }
        })
        .collect();
    let results = futures_util::future::join_all(pending).await;
    let mut failures = Vec::new();
    for (at, result) in results {
        match result {
            Ok(config) => {
                ctx.store
                    .apply(PoolCommand::PartCreated {
                        name: name.to_string(),
                        location: at,
                        config,
                    })
                    .await?;
            }
            Err(e) => failures.push(e),
        }
    }
    if !failures.is_empty() {
        let message = failures.join("; ");
        if !ctx.store.clustered() {
            // The driver's own message, with its status (a bad source is the caller's).
            return Err(ApiError::bad_request(message).into());
        }
        return Err(ApiError::internal(format!("Failed to create storage pool {name:?}: {message}")).into());
    }
    ctx.store
        .apply(PoolCommand::MarkCreated {
            name: name.to_string(),
        })
        .await?;
    Ok(())
}

/// `GET /1.0/cluster`'s `member_config`: the keys a joining member gives for each pool
/// (its `source`), as Incus lists them.
pub fn member_config(state: &cluster::State) -> Vec<serde_json::Value> {
    state
        .pools
        .keys()
        .map(|name| {
            serde_json::json!({
                "entity": "storage-pool",
                "name": name,
                "key": "source",
                "value": "",
                "description": format!("\"source\" property for storage pool \"{name}\""),
            })
        })
        .collect()
}

/// After this member joined: makes its part of every created pool, with the keys the
/// join's `member_config` gives it (its `source`, or the default).
pub async fn join_parts(ctx: &Ctx, member_config: &[serde_json::Value]) -> Result<()> {
    let state = ctx.store.state();
    let me = ctx
        .member_id()
        .ok_or_else(|| ApiError::internal("Joined, but this member has no id"))?;
    let mut failures = Vec::new();
    for pool in state
        .pools
        .values()
        .filter(|p| p.status == PoolStatus::Created && !p.deleting)
    {
        if pool.part(Some(me)).is_some() {
            continue;
        }
        let mut config = pool.config.clone();
        for entry in member_config {
            let field = |k: &str| {
                entry
                    .get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            if field("entity") == "storage-pool" && field("name") == pool.name && !field("value").is_empty() {
                config.insert(field("key"), field("value"));
            }
        }
        let req = PartRequest {
            driver: pool.driver.clone(),
            config,
        };
        if let Some(other) = resolved_source(ctx, &pool.name, &req)
            .and_then(|source| source_taken(&state, &pool.name, Some(me), &source))
        {
            failures.push(format!(
                "{}: its source is already used by storage pool {other:?}",
                pool.name
            ));
            continue;
        }
        let made = match make_part(ctx, &pool.name, req).await {
            Ok(made) => made,
            Err(e) => {
                failures.push(format!("{}: {}", pool.name, e.0.message));
                continue;
            }
        };
        ctx.store
            .apply(PoolCommand::AddPart {
                name: pool.name.clone(),
                location: me,
                config: made,
            })
            .await?;
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(ApiError::internal(format!(
            "Joined, but failed to create storage pools: {}",
            failures.join("; ")
        ))
        .into())
    }
}

pub async fn put(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let state = ctx.store.state();
    let pool = state.pools.get(&name).ok_or_else(not_found)?;
    let target = target(&uri);
    let clustered = !state.members.is_empty();
    if target.is_none() && clustered && pool.status != PoolStatus::Created {
        return Err(ApiError::bad_request(
            "Cannot update storage pool global config when not in created state",
        )
        .into());
    }
    let current = render(&ctx, &state, pool, target.is_some());
    check_if_match(&headers, &etag_basis(&current))?;
    let mut req: StoragePoolPut = json_body(body).await?;
    if method == Method::PATCH {
        for (k, v) in &current.put.config {
            req.config.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    storage::check_config(&pool.driver, req.config.keys()).map_err(storage_error)?;
    let at = ctx.member_id();
    let (global, own): (BTreeMap<_, _>, BTreeMap<_, _>) = req
        .config
        .clone()
        .into_iter()
        .partition(|(k, _)| !cluster::state::is_member_specific(k));
    if clustered && target.is_none() {
        if let Some(k) = own.keys().next() {
            return Err(ApiError::bad_request(format!("Config key {k:?} is cluster member specific")).into());
        }
    }
    if clustered && target.is_some() {
        if let Some((k, _)) = global.iter().find(|(k, v)| pool.config.get(*k) != Some(*v)) {
            return Err(ApiError::bad_request(format!(
                "Config key {k:?} may not be used as cluster member specific key"
            ))
            .into());
        }
    }
    let member_view = !clustered || target.is_some();
    if member_view {
        let part = pool
            .part(at)
            .ok_or_else(|| ApiError::not_found_msg("The storage pool is not defined on this member"))?;
        if part.status == PoolStatus::Created && own.get("source") != part.config.get("source") {
            return Err(
                ApiError::bad_request("The \"source\" of a created storage pool cannot be changed").into(),
            );
        }
        if own != part.config {
            ctx.store
                .apply(PoolCommand::UpdatePart {
                    name: name.clone(),
                    location: at,
                    config: own,
                })
                .await?;
        }
    }
    if !clustered || target.is_none() {
        ctx.store
            .apply(PoolCommand::Update {
                name: name.clone(),
                description: req.description.clone(),
                config: global,
            })
            .await?;
    }
    lifecycle(&ctx, "storage-pool-updated", &name, &id, target.as_deref());
    Ok(sync(serde_json::json!({})))
}

pub async fn delete(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
) -> Result<Response> {
    if !ctx.store.state().pools.contains_key(&name) {
        return Err(not_found());
    }
    // Checked where it applies, against the latest state (this member's copy may lag
    // behind a profile just pointed at the pool); from here no profile can start using it.
    let state = ctx
        .store
        .apply(PoolCommand::BeginDelete { name: name.clone() })
        .await?;
    let pool = state.pools.get(&name).ok_or_else(not_found)?;
    let removals = pool
        .parts
        .iter()
        // A pending part was never made (a failed make leaves nothing), and its source
        // may be a directory of the user's: only made parts are removed.
        .filter(|p| p.status == PoolStatus::Created)
        .map(|p| {
            let req = PartRequest {
                driver: pool.driver.clone(),
                config: pool.config_at(p.location),
            };
            on_member(&ctx, p.location, Method::DELETE, &name, req)
        });
    let failures: Vec<String> = futures_util::future::join_all(removals)
        .await
        .into_iter()
        .filter_map(|r| r.err())
        .collect();
    if !failures.is_empty() {
        return Err(ApiError::internal(format!(
            "Failed to delete storage pool {name:?}: {}",
            failures.join("; ")
        ))
        .into());
    }
    ctx.store
        .apply(PoolCommand::Delete { name: name.clone() })
        .await?;
    lifecycle(&ctx, "storage-pool-deleted", &name, &id, None);
    Ok(sync(serde_json::json!({})))
}
