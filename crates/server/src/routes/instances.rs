//! `/1.0/instances`: system containers on any member, reached through any member.
//!
//! ```text
//!  POST /1.0/instances on A ─ placement::place(state, ?target, facts) ─> member B
//!     B != A: the request goes to B as it came (forward::to_member)
//!     B:  Create{record, status Creating} ──(name check in the state machine)──> 202
//!         operation "Creating instance": image here (images::ensure_local) ─> volume in
//!         the root disk's pool ─> unpack ─> driver.create ─> Stopped [─> start ─> Running]
//!         (a failure removes what was made, record included)
//!  GET  /1.0/instances         every member's own instances at once (/internal/instances),
//!                              each bounded by LIST_BOUND; a member that does not answer
//!                              shows its instances from the state with status Error
//!  /1.0/instances/{name}/**    the owner (route::Owner::Instance), from the record's
//!                              location; the runtime fills `state`
//! ```
//!
//! The record is the cluster's; the container, its volume and its logs are the owner's.
//! Every state change the owner makes through its driver is written back as the
//! record's `status`, so the list of a member that does not answer shows the last one
//! known (as `Error`, as Incus shows instances of an unreachable member).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use api::types::{
    Instance, InstanceFull, InstancePut, InstanceState, InstanceStatePut, InstancesPost, Timestamp,
};
use api::ApiError;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use cluster::placement::{self, Facts};
use cluster::{InstanceCommand, InstanceRecord, InstanceStatus};
use futures_util::future::join_all;
use serde_json::Value;
use trust::Identity;

use crate::context::Ctx;
use crate::ops::Spec;
use crate::response::{check_if_match, parse_json, recursion, sync, sync_etag, Result, MAX_BODY};

/// How long a list waits for one member's instances.
pub const LIST_BOUND: Duration = Duration::from_secs(2);
/// How long a clean stop may take when the client does not bound it (`timeout: -1`).
const STOP_BOUND: Duration = Duration::from_secs(300);
/// How long a read of the runtime state may take.
const STATE_BOUND: Duration = Duration::from_secs(5);

/// What this member's process knows of its instances beyond the state: the launches
/// it is building now. A `Creating` record of this member not in this set was left by
/// a process that died mid-launch.
#[derive(Default)]
pub struct Local {
    building: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Local {
    pub(crate) fn building(&self, name: &str) -> bool {
        self.building
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(name)
    }
}

/// Marks a launch under way until dropped.
pub(crate) struct Building {
    ctx: Ctx,
    name: String,
}

impl Building {
    /// `None` if this member builds that name already.
    pub(crate) fn new(ctx: &Ctx, name: &str) -> Option<Building> {
        let fresh = ctx
            .instances
            .building
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string());
        fresh.then(|| Building {
            ctx: ctx.clone(),
            name: name.to_string(),
        })
    }
}

impl Drop for Building {
    fn drop(&mut self) {
        self.ctx
            .instances
            .building
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.name);
    }
}

fn not_found() -> crate::response::Error {
    ApiError::not_found_msg("Instance not found").into()
}

fn url(name: &str) -> String {
    format!("/1.0/instances/{name}")
}

/// The record's status from what the runtime says.
fn status_of(s: instance::Status) -> InstanceStatus {
    use instance::Status as S;
    match s {
        S::Stopped => InstanceStatus::Stopped,
        S::Frozen | S::Freezing => InstanceStatus::Frozen,
        S::Aborting => InstanceStatus::Error,
        S::Starting | S::Running | S::Stopping | S::Thawed => InstanceStatus::Running,
    }
}

/// The API object from the record, with `status` from the runtime when known.
fn render(ctx: &Ctx, state: &cluster::State, rec: &InstanceRecord, status: InstanceStatus) -> Instance {
    Instance {
        put: InstancePut {
            architecture: rec.architecture.clone(),
            config: rec.config.clone(),
            devices: rec.devices.clone(),
            ephemeral: rec.ephemeral,
            profiles: Some(rec.profiles.clone()),
            restore: String::new(),
            stateful: false,
            description: rec.description.clone(),
        },
        created_at: Timestamp(rec.created_at),
        expanded_config: rec.expanded_config(state),
        expanded_devices: rec.expanded_devices(state),
        name: rec.name.clone(),
        status: status.incus().to_string(),
        status_code: status.code() as u16,
        last_used_at: Timestamp::ZERO,
        location: if ctx.store.clustered() {
            ctx.location_name(state, rec.location)
        } else {
            "none".into()
        },
        kind: rec.kind.clone(),
        project: "default".into(),
    }
}

/// `GET .../state` from the runtime.
fn runtime_state(st: &instance::State) -> InstanceState {
    let status = status_of(st.status);
    let mut out = InstanceState {
        status: status.incus().to_string(),
        status_code: status.code() as u16,
        pid: st.pid.map(i64::from).unwrap_or(0),
        processes: st.processes.map(|p| p as i64).unwrap_or(0),
        ..Default::default()
    };
    out.memory.usage = st.memory.unwrap_or(0) as i64;
    out.memory.usage_peak = st.memory_peak.unwrap_or(0) as i64;
    out.memory.total = st.memory_limit.unwrap_or(0) as i64;
    out.cpu.usage = st.cpu_ns.unwrap_or(0) as i64;
    out
}

/// The runtime's status of an instance here, bounded; `None` if it cannot say.
pub(crate) async fn runtime_status(ctx: &Ctx, name: &str) -> Option<instance::Status> {
    tokio::time::timeout(STATE_BOUND, ctx.driver.status(name))
        .await
        .ok()
        .and_then(|r| r.ok())
}

/// Whether the runtime says an instance here is anything but stopped.
pub(crate) async fn is_up(ctx: &Ctx, name: &str) -> bool {
    runtime_status(ctx, name)
        .await
        .is_some_and(|s| s != instance::Status::Stopped)
}

/// What the runtime says of an instance here, bounded; `None` if it cannot say.
async fn runtime(ctx: &Ctx, name: &str) -> Option<instance::State> {
    tokio::time::timeout(STATE_BOUND, ctx.driver.state(name))
        .await
        .ok()
        .and_then(|r| r.ok())
}

/// An instance of this member as `recursion=1` shows it: the status from the runtime,
/// no `state`, `snapshots` or `backups`. Asks the runtime for the status alone, which
/// costs far less than the usage figures of [`full_here`].
async fn plain_here(ctx: &Ctx, state: &cluster::State, rec: &InstanceRecord) -> InstanceFull {
    let rt = match rec.status {
        InstanceStatus::Creating => None,
        _ => runtime_status(ctx, &rec.name).await,
    };
    InstanceFull {
        instance: render_here(ctx, state, rec, rt),
        backups: None,
        state: None,
        snapshots: None,
    }
}

/// The API object of an instance of this member, from what its runtime says (`None`:
/// it could not say, shown as `Error`).
fn render_here(
    ctx: &Ctx,
    state: &cluster::State,
    rec: &InstanceRecord,
    runtime: Option<instance::Status>,
) -> Instance {
    let status = match (runtime, rec.status) {
        (_, InstanceStatus::Creating) => InstanceStatus::Creating,
        (Some(st), _) => status_of(st),
        (None, _) => InstanceStatus::Error,
    };
    let mut instance = render(ctx, state, rec, status);
    if rec.status == InstanceStatus::Creating {
        // The owner knows a launch is under way; Incus shows such an instance stopped.
        instance.status = "Stopped".into();
        instance.status_code = 102;
    }
    instance
}

/// An instance of this member, rendered with its runtime state.
async fn full_here(ctx: &Ctx, state: &cluster::State, rec: &InstanceRecord) -> InstanceFull {
    let rt = match rec.status {
        InstanceStatus::Creating => None,
        _ => runtime(ctx, &rec.name).await,
    };
    let instance = render_here(ctx, state, rec, rt.as_ref().map(|s| s.status));
    InstanceFull {
        instance,
        backups: Some(Vec::new()),
        state: Some(rt.as_ref().map(runtime_state).unwrap_or_else(|| InstanceState {
            status: "Stopped".into(),
            status_code: 102,
            ..Default::default()
        })),
        snapshots: Some(crate::routes::snapshots::render_all(state, &rec.name)),
    }
}

fn me(ctx: &Ctx) -> Option<cluster::MemberId> {
    ctx.member_id()
}

pub(crate) fn facts(ctx: &Ctx, state: &cluster::State) -> impl Fn(&cluster::Member) -> Facts {
    let facts: HashMap<String, Facts> = state
        .members
        .values()
        .map(|m| {
            let here = Some(m.id) == ctx.member_id();
            let online = here || crate::membership::is_online(ctx, &m.name);
            (m.name.clone(), placement::facts_of(state, m, online))
        })
        .collect();
    move |m: &cluster::Member| facts.get(&m.name).copied().unwrap_or_default()
}

/// `POST /1.0/instances`.
pub async fn create(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    req: Request,
) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| crate::gate::body_error(e, MAX_BODY))?;
    let mut post: InstancesPost = parse_json(&bytes)?;
    let via_member = parts.extensions.get::<crate::auth::ViaMember>().is_some();
    if !post.kind.is_empty() && post.kind != api::types::kind::CONTAINER {
        return Err(ApiError::bad_request(format!(
            "Instance type {:?} is not supported by this server (containers only)",
            post.kind
        ))
        .into());
    }
    if post.source.kind == "copy" {
        return crate::routes::copy::create(ctx, id, parts, bytes, post).await;
    }
    if post.source.kind != "image" {
        return Err(ApiError::bad_request(format!(
            "Unknown or unsupported source type {:?} (this server creates instances from images)",
            post.source.kind
        ))
        .into());
    }
    if post.name.is_empty() {
        post.name = format!("instance-{}", &crate::operations::new_uuid()[..8]);
    }
    cluster::state::valid_instance_name(&post.name).map_err(ApiError::bad_request)?;
    let state = ctx.store.state();
    if state.instances.contains_key(&post.name) {
        return Err(ApiError::conflict(format!("Instance {:?} already exists", post.name)).into());
    }
    if !via_member {
        let target = crate::forward::query_value(&parts.uri, "target");
        let chosen = placement::place(&state, target.as_deref(), &facts(&ctx, &state))?;
        if let Some(member) = chosen
            .filter(|c| Some(*c) != me(&ctx))
            .and_then(|c| state.member_by_id(c))
        {
            let fwd = Request::from_parts(parts, Body::from(bytes));
            return Ok(crate::forward::to_member(&ctx, &member.name, fwd).await);
        }
    }
    create_here(ctx, id, post).await
}

/// Records the instance on this member and builds it in an operation.
async fn create_here(ctx: Ctx, id: Identity, post: InstancesPost) -> Result<Response> {
    let state = ctx.store.state();
    let src = &post.source;
    let fingerprint = if !src.alias.is_empty() {
        state
            .image_aliases
            .get(&src.alias)
            .map(|a| a.target.clone())
            .ok_or_else(|| ApiError::not_found_msg(format!("Image alias {:?} not found", src.alias)))?
    } else {
        state
            .find_image(&src.fingerprint)
            .map(|r| r.image.fingerprint.clone())
            .map_err(|_| ApiError::not_found_msg("Image not found"))?
    };
    let image = state
        .images
        .get(&fingerprint)
        .ok_or_else(|| ApiError::not_found_msg("Image not found"))?;
    let mut config = BTreeMap::new();
    for (k, v) in &image.image.put.properties {
        config.insert(format!("image.{k}"), v.clone());
    }
    config.extend(post.put.config.clone());
    config.insert("volatile.base_image".into(), fingerprint.clone());
    let record = InstanceRecord {
        name: post.name.clone(),
        location: me(&ctx),
        kind: api::types::kind::CONTAINER.into(),
        architecture: image.image.architecture.clone(),
        description: post.put.description.clone(),
        config,
        devices: post.put.devices.clone(),
        profiles: post
            .put
            .profiles
            .clone()
            .unwrap_or_else(|| vec![cluster::DEFAULT_PROFILE.into()]),
        ephemeral: post.put.ephemeral,
        status: InstanceStatus::Creating,
        created_at: time::OffsetDateTime::now_utc(),
    };
    // Limits are checked before anything is recorded.
    limits(&record.expanded_config(&state))?;
    let building = Building::new(&ctx, &post.name)
        .ok_or_else(|| ApiError::conflict(format!("Instance {:?} already exists", post.name)))?;
    ctx.store
        .apply(InstanceCommand::Create {
            instance: Box::new(record),
        })
        .await?;
    let name = post.name.clone();
    let start = post.start;
    let mut spec = Spec::task("Creating instance");
    spec.resources = Some(BTreeMap::from([(
        "instances".to_string(),
        Some(vec![url(&name)]),
    )]));
    let run_ctx = ctx.clone();
    Ok(crate::operations::start(&ctx, spec, move |progress| async move {
        let ctx = run_ctx;
        let _building = building;
        match build(&ctx, &name, &fingerprint, &progress).await {
            Ok(()) => {}
            Err(e) => {
                undo(&ctx, &name).await;
                return Err(e);
            }
        }
        set_status(&ctx, &name, InstanceStatus::Stopped).await;
        ctx.events
            .lifecycle("instance-created", &url(&name), Some(&id), None);
        if start {
            ctx.driver
                .start(&name)
                .await
                .map_err(|e| format!("Failed to start instance: {e}"))?;
            set_status(&ctx, &name, InstanceStatus::Running).await;
            ctx.events
                .lifecycle("instance-started", &url(&name), Some(&id), None);
        }
        Ok(())
    }))
}

pub(crate) fn limits(expanded: &BTreeMap<String, String>) -> Result<instance::Limits> {
    let host_memory = std::fs::read_to_string("/proc/meminfo")
        .map(|t| host::resources::parse_meminfo(&t).total)
        .unwrap_or(0);
    instance::Limits::from_config(expanded, host_memory)
        .map_err(|e| ApiError::bad_request(e.to_string()).into())
}

/// This member's pool `name`, as its part is recorded.
pub(crate) fn local_pool(
    ctx: &Ctx,
    state: &cluster::State,
    name: &str,
) -> std::result::Result<Box<dyn storage::Pool>, String> {
    let pool = state
        .pools
        .get(name)
        .ok_or_else(|| format!("Storage pool {name:?} not found"))?;
    let part = pool
        .part(me(ctx))
        .ok_or_else(|| format!("Storage pool {name:?} is not defined on this member"))?;
    let config = storage::PoolConfig {
        name: name.to_string(),
        driver: pool.driver.clone(),
        source: part
            .config
            .get("source")
            .filter(|s| !s.is_empty())
            .map(std::path::PathBuf::from),
    };
    storage::open(&ctx.state_dir, &config).map_err(|e| e.to_string())
}

/// The image here, a volume for the root disk, the rootfs unpacked, the container made.
async fn build(
    ctx: &Ctx,
    name: &str,
    fingerprint: &str,
    progress: &crate::ops::Progress,
) -> std::result::Result<(), String> {
    let files = crate::images::ensure_local(ctx, fingerprint)
        .await
        .map_err(|e| e.message)?;
    let state = ctx.store.state();
    let rec = state.instances.get(name).ok_or("Instance not found")?;
    let (privileged, _) = runtime_settings(&state, rec)?;
    let pool_name = rec.root_pool(&state).ok_or("No root disk device")?;
    let pool = local_pool(ctx, &state, &pool_name)?;
    let owner = if privileged {
        storage::Owner::ROOT
    } else {
        storage::Owner {
            uid: instance::lxc::IDMAP_BASE,
            gid: instance::lxc::IDMAP_BASE,
        }
    };
    let vol = storage::Volume::container(name);
    let path = tokio::task::spawn_blocking(move || pool.create_volume(&vol, owner))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("Failed creating instance volume: {e}"))?;
    let p = progress.clone();
    image::unpack_async(files, path.clone(), image::UnpackOptions::default(), move |at| {
        p.extend_metadata(BTreeMap::from([(
            "create_instance_from_image_unpack_progress".to_string(),
            Value::String(format!("Unpacking image: {}%", at.percent())),
        )]));
    })
    .await
    .map_err(|e| format!("Failed unpacking image: {e}"))?;
    make_container(ctx, &state, rec, name, &path).await
}

/// `security.privileged` and the limits of an instance, from its expanded config.
fn runtime_settings(
    state: &cluster::State,
    rec: &InstanceRecord,
) -> std::result::Result<(bool, instance::Limits), String> {
    let expanded = rec.expanded_config(state);
    let privileged = expanded.get("security.privileged").is_some_and(|v| v == "true");
    let limits = limits(&expanded).map_err(|e| e.0.message)?;
    Ok((privileged, limits))
}

/// The runtime's container `name` for `rec`, over the volume at `volume`.
pub(crate) async fn make_container(
    ctx: &Ctx,
    state: &cluster::State,
    rec: &InstanceRecord,
    name: &str,
    volume: &std::path::Path,
) -> std::result::Result<(), String> {
    let (privileged, limits) = runtime_settings(state, rec)?;
    ctx.driver
        .create(instance::CreateSpec {
            name: name.to_string(),
            rootfs: volume.join("rootfs"),
            privileged,
            limits,
        })
        .await
        .map_err(|e| format!("Failed creating instance: {e}"))
}

/// Removes what a failed launch or a delete leaves: the container, its volume, the
/// record.
async fn undo(ctx: &Ctx, name: &str) {
    remove_local(ctx, name).await.ok();
    let _ = ctx
        .store
        .apply(InstanceCommand::Delete {
            name: name.to_string(),
        })
        .await;
}

/// Removes the container and its volume here.
pub(crate) async fn remove_local(ctx: &Ctx, name: &str) -> std::result::Result<(), String> {
    // Asked directly: listing the runtime to see whether it knows the name costs an
    // `lxc-info` per instance of the member.
    match ctx.driver.delete(name).await {
        Ok(()) | Err(instance::Error::NotFound(_)) => {}
        Err(e) => return Err(format!("Failed deleting instance: {e}")),
    }
    crate::routes::snapshots::remove_all_local(ctx, name).await?;
    crate::routes::exec_output::remove_all(ctx, name)
        .map_err(|e| format!("Failed deleting instance exec output: {e}"))?;
    let state = ctx.store.state();
    let pool = state
        .instances
        .get(name)
        .and_then(|r| r.root_pool(&state))
        .and_then(|p| local_pool(ctx, &state, &p).ok());
    if let Some(pool) = pool {
        let vol = storage::Volume::container(name);
        tokio::task::spawn_blocking(move || match pool.volume_path(&vol) {
            Ok(p) if p.exists() => pool.delete_volume(&vol),
            _ => Ok(()),
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("Failed deleting instance volume: {e}"))?;
    }
    Ok(())
}

async fn set_status(ctx: &Ctx, name: &str, status: InstanceStatus) {
    let _ = ctx
        .store
        .apply(InstanceCommand::SetStatus {
            name: name.to_string(),
            status,
        })
        .await;
}

/// How long the start-up pass keeps trying to write what it found (a member restarted
/// in a cluster may wait for a leader).
const START_BOUND: Duration = Duration::from_secs(120);

/// Applies `cmd`, trying again while the store cannot take writes, until `deadline`.
/// False if it was refused or the time ran out.
async fn apply_until(ctx: &Ctx, deadline: tokio::time::Instant, cmd: InstanceCommand) -> bool {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ctx.store.apply(cmd.clone())).await {
            Ok(Ok(_)) => return true,
            Ok(Err(cluster::StoreError::State(e))) => {
                tracing::warn!(command = cmd.name(), error = %e, "start-up write refused");
                return false;
            }
            _ if tokio::time::Instant::now() >= deadline => {
                tracing::warn!(
                    command = cmd.name(),
                    "start-up write gave up: the cluster did not take it"
                );
                return false;
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// What a member does with its instances when it starts:
///
/// ```text
///  record here, Creating, not being built  -> a launch died with the last process:
///                                             container, volume and record removed
///  otherwise                               -> the runtime's status written back when it
///                                             differs (containers outlive the daemon, so
///                                             running ones are adopted as they are)
///  stopped, and boot.autostart true (or unset with volatile.last_state.power RUNNING),
///  member not evacuated                    -> started, in Incus's order (autostart_order)
/// ```
///
/// It runs beside the listeners: the member serves its instances from the start, and
/// what this pass writes lands as soon as the cluster takes writes.
pub async fn on_start(ctx: Ctx) {
    let deadline = tokio::time::Instant::now() + START_BOUND;
    let state = ctx.store.state();
    let here = me(&ctx);
    let mine: Vec<InstanceRecord> = state
        .instances
        .values()
        .filter(|r| r.location == here)
        .cloned()
        .collect();
    if mine.is_empty() {
        return;
    }
    let listed: std::collections::HashSet<String> =
        match tokio::time::timeout(STATE_BOUND, ctx.driver.list()).await {
            Ok(Ok(l)) => l.into_iter().map(|l| l.name).collect(),
            _ => {
                tracing::warn!("the instance runtime did not list its containers; start-up pass skipped");
                return;
            }
        };
    let evacuated = here.is_some_and(|id| state.member_settings(id).evacuated);
    let mut to_start = Vec::new();
    for rec in &mine {
        if rec.status == InstanceStatus::Creating {
            if ctx.instances.building(&rec.name) {
                continue;
            }
            tracing::warn!(instance = %rec.name, "a launch was cut short by the member's end; removing what it left");
            match remove_local(&ctx, &rec.name).await {
                Ok(()) => {
                    apply_until(
                        &ctx,
                        deadline,
                        InstanceCommand::Delete {
                            name: rec.name.clone(),
                        },
                    )
                    .await;
                }
                Err(e) => {
                    tracing::warn!(instance = %rec.name, error = %e, "could not remove an interrupted launch")
                }
            }
            continue;
        }
        let now = if listed.contains(&rec.name) {
            runtime(&ctx, &rec.name)
                .await
                .map(|s| status_of(s.status))
                .unwrap_or(InstanceStatus::Error)
        } else {
            InstanceStatus::Error
        };
        let expanded = rec.expanded_config(&state);
        if now == InstanceStatus::Stopped && !evacuated && cluster::should_autostart(&expanded) {
            // Its last state stays as it was until it is started.
            to_start.push((rec.name.clone(), expanded));
            continue;
        }
        if now != rec.status {
            apply_until(
                &ctx,
                deadline,
                InstanceCommand::SetStatus {
                    name: rec.name.clone(),
                    status: now,
                },
            )
            .await;
        }
    }
    autostart(&ctx, deadline, to_start).await;
}

/// Starts instances at member start in Incus's order: the plain ones at once, then
/// the ordered ones one by one, each followed by its `boot.autostart.delay`.
async fn autostart(
    ctx: &Ctx,
    deadline: tokio::time::Instant,
    instances: Vec<(String, BTreeMap<String, String>)>,
) {
    let (bulk, ordered) = cluster::autostart_order(instances);
    join_all(bulk.iter().map(|name| start_at_boot(ctx, deadline, name))).await;
    for (name, delay) in ordered {
        if start_at_boot(ctx, deadline, &name).await && delay > 0 {
            tokio::time::sleep(Duration::from_secs(delay.min(3600))).await;
        }
    }
}

/// Starts one instance at member start; whether it started.
async fn start_at_boot(ctx: &Ctx, deadline: tokio::time::Instant, name: &str) -> bool {
    match ctx.driver.start(name).await {
        Ok(()) => {
            tracing::info!(instance = %name, "started at member start (boot.autostart)");
            apply_until(
                ctx,
                deadline,
                InstanceCommand::SetStatus {
                    name: name.to_string(),
                    status: InstanceStatus::Running,
                },
            )
            .await;
            ctx.events.lifecycle("instance-started", &url(name), None, None);
            true
        }
        Err(e) => {
            // The record keeps its last state, so the next start tries again.
            tracing::warn!(instance = %name, error = %e, "could not start at member start");
            false
        }
    }
}

/// `GET /1.0/instances`: every member's instances, gathered at once, then `filter=`
/// (Incus's language, `api::filter`) and `?target=` (a member's only) applied.
/// `all-projects=true` lists the one project there is, `default`.
pub async fn list(State(ctx): State<Ctx>, Query(q): Query<HashMap<String, String>>) -> Result<Response> {
    let state = ctx.store.state();
    let level: u32 = q.get("recursion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let filter = api::filter::Filter::parse(q.get("filter").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("Invalid filter: {e}")))?;
    let all_projects = q
        .get("all-projects")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on"));
    if all_projects && q.get("project").is_some_and(|p| !p.is_empty()) {
        return Err(ApiError::bad_request("Cannot specify a project when requesting all projects").into());
    }
    let target = q.get("target").filter(|t| !t.is_empty()).cloned();
    let wanted = |rec: &InstanceRecord| {
        target
            .as_ref()
            .is_none_or(|t| state.location_name(rec.location, &ctx.server_name()) == *t)
    };
    if level == 0 && filter.is_empty() {
        let urls: Vec<String> = state
            .instances
            .values()
            .filter(|r| wanted(r))
            .map(|r| url(&r.name))
            .collect();
        return Ok(sync(urls));
    }
    let mut holders: Vec<Option<cluster::MemberId>> = state
        .instances
        .values()
        .filter(|r| wanted(r))
        .map(|r| r.location)
        .collect();
    holders.sort();
    holders.dedup();
    // Below recursion 2 nothing shows (or filters on) the state: the members skip it.
    let with_state = level >= 2;
    let gathered = join_all(holders.into_iter().map(|at| {
        let ctx = ctx.clone();
        let state = state.clone();
        async move { member_instances(&ctx, &state, at, with_state).await }
    }))
    .await;
    let mut all: Vec<InstanceFull> = gathered
        .into_iter()
        .flatten()
        .filter(|i| state.instances.get(&i.instance.name).is_some_and(&wanted))
        .collect();
    all.sort_by(|a, b| a.instance.name.cmp(&b.instance.name));
    if !filter.is_empty() {
        let mut kept = Vec::with_capacity(all.len());
        for i in all {
            // Matched against what the answer shows: the state only at recursion 2.
            let shown = if level >= 2 {
                serde_json::to_value(&i)
            } else {
                serde_json::to_value(&i.instance)
            }
            .unwrap_or(Value::Null);
            if filter.matches(&shown).map_err(ApiError::bad_request)? {
                kept.push(i);
            }
        }
        all = kept;
    }
    if level == 0 {
        return Ok(sync(
            all.iter().map(|i| url(&i.instance.name)).collect::<Vec<_>>(),
        ));
    }
    if level >= 2 {
        Ok(sync(all))
    } else {
        Ok(sync(all.into_iter().map(|i| i.instance).collect::<Vec<_>>()))
    }
}

/// The instances of member `at`, from it (bounded), or from the state as `Error`;
/// with their runtime state or (`with_state` false) their status alone.
async fn member_instances(
    ctx: &Ctx,
    state: &cluster::State,
    at: Option<cluster::MemberId>,
    with_state: bool,
) -> Vec<InstanceFull> {
    if at == me(ctx) {
        return local_instances(ctx, state, with_state).await;
    }
    let from_member = async {
        let member = at.and_then(|id| state.member_by_id(id))?;
        if !crate::membership::is_online(ctx, &member.name) {
            return None;
        }
        let (status, bytes) = ctx
            .peers
            .request(
                &member.address,
                Method::GET,
                if with_state {
                    "/internal/instances"
                } else {
                    "/internal/instances?recursion=1"
                },
                Vec::new(),
                LIST_BOUND,
            )
            .await
            .ok()?;
        if status != 200 {
            return None;
        }
        let env: api::Envelope = serde_json::from_slice(&bytes).ok()?;
        serde_json::from_value::<Vec<InstanceFull>>(env.metadata).ok()
    };
    match tokio::time::timeout(LIST_BOUND, from_member).await {
        Ok(Some(list)) => list,
        _ => state
            .instances
            .values()
            .filter(|r| r.location == at)
            .map(|r| InstanceFull {
                instance: render(ctx, state, r, InstanceStatus::Error),
                backups: None,
                state: None,
                snapshots: None,
            })
            .collect(),
    }
}

async fn local_instances(ctx: &Ctx, state: &cluster::State, with_state: bool) -> Vec<InstanceFull> {
    let mine = state.instances.values().filter(|r| r.location == me(ctx));
    if with_state {
        join_all(mine.map(|r| full_here(ctx, state, r))).await
    } else {
        join_all(mine.map(|r| plain_here(ctx, state, r))).await
    }
}

/// `GET /internal/instances`: this member's own instances, with their runtime state,
/// or with `?recursion=1` their status alone.
pub async fn internal_list(
    State(ctx): State<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let state = ctx.store.state();
    let with_state = q.get("recursion").is_none_or(|r| r != "1");
    Ok(sync(local_instances(&ctx, &state, with_state).await))
}

fn record(ctx: &Ctx, name: &str) -> Result<(std::sync::Arc<cluster::State>, InstanceRecord)> {
    let state = ctx.store.state();
    let rec = state.instances.get(name).cloned().ok_or_else(not_found)?;
    Ok((state, rec))
}

/// `GET /1.0/instances/{name}` (on its member).
pub async fn get(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let (state, rec) = record(&ctx, &name)?;
    let full = full_here(&ctx, &state, &rec).await;
    if recursion(&q) {
        Ok(sync_etag(full, &etag_basis(&rec)))
    } else {
        Ok(sync_etag(full.instance, &etag_basis(&rec)))
    }
}

/// What an instance's ETag is made from, as Incus: architecture, its own config
/// (volatile keys included) and devices, ephemeral, profiles.
fn etag_basis(rec: &InstanceRecord) -> impl serde::Serialize + '_ {
    (
        &rec.architecture,
        &rec.config,
        &rec.devices,
        rec.ephemeral,
        &rec.profiles,
    )
}

/// `PUT` and `PATCH /1.0/instances/{name}`.
pub async fn put(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
    method: Method,
    headers: http::HeaderMap,
    body: Body,
) -> Result<Response> {
    let (_, rec) = record(&ctx, &name)?;
    check_if_match(&headers, &etag_basis(&rec))?;
    let req: InstancePut = crate::response::json_body(body).await?;
    if !req.restore.is_empty() {
        return crate::routes::snapshots::restore(&ctx, id, name, req.restore).await;
    }
    let (mut config, mut devices) = (req.config, req.devices);
    let mut profiles = req.profiles.unwrap_or_else(|| rec.profiles.clone());
    let mut description = req.description;
    if method == Method::PATCH {
        let mut c = rec.config.clone();
        c.extend(config);
        config = c;
        let mut d = rec.devices.clone();
        d.extend(devices);
        devices = d;
        if description.is_empty() {
            description = rec.description.clone();
        }
        if profiles.is_empty() {
            profiles = rec.profiles.clone();
        }
    }
    // The server's own keys stay as they are.
    config.retain(|k, _| !k.starts_with("volatile."));
    config.extend(
        rec.config
            .iter()
            .filter(|(k, _)| k.starts_with("volatile."))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    let mut next = rec.clone();
    next.config = config.clone();
    next.devices = devices.clone();
    next.profiles = profiles.clone();
    let state = ctx.store.state();
    let new_limits = limits(&next.expanded_config(&state))?;
    ctx.store
        .apply(InstanceCommand::Update {
            name: name.clone(),
            description,
            config,
            devices,
            profiles,
            ephemeral: req.ephemeral,
        })
        .await?;
    let run_ctx = ctx.clone();
    Ok(crate::operations::start(
        &ctx,
        resourced("Updating instance", &name),
        move |_| async move {
            let ctx = run_ctx;
            if is_up(&ctx, &name).await {
                ctx.driver
                    .set_limits(&name, new_limits)
                    .await
                    .map_err(|e| format!("Failed to apply limits: {e}"))?;
            }
            ctx.events
                .lifecycle("instance-updated", &url(&name), Some(&id), None);
            Ok(())
        },
    ))
}

fn resourced(description: &str, name: &str) -> Spec {
    let mut spec = Spec::task(description);
    spec.resources = Some(BTreeMap::from([("instances".to_string(), Some(vec![url(name)]))]));
    spec
}

/// `POST /1.0/instances/{name}`: a rename (`{"name": NEW}`) of a stopped instance, or
/// with `migration: true` a move to the member `?target=` names ([`super::migrate`]).
///
/// ```text
///  Rename{name, new} in the state (the name check: one of two racing renames or
///  launches wins) ─> runtime container removed ─> volume renamed ─> container made
///  under the new name ─> instance-renamed {old_name}
///  a failure on the way puts the name, the volume and the container back
/// ```
pub async fn rename(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
    uri: axum::http::Uri,
    body: Body,
) -> Result<Response> {
    let (_, rec) = record(&ctx, &name)?;
    let req: api::types::InstancePost = crate::response::json_body(body).await?;
    if req.migration {
        return super::migrate::post(ctx, id, &uri, name, req).await;
    }
    let new = req.name;
    cluster::state::valid_instance_name(&new).map_err(ApiError::bad_request)?;
    if new == name {
        return Err(ApiError::bad_request("The instance already has that name").into());
    }
    if ctx.store.state().instances.contains_key(&new) {
        return Err(ApiError::conflict(format!("Name {new:?} already in use")).into());
    }
    if rec.status == InstanceStatus::Creating || ctx.instances.building(&name) {
        return Err(ApiError::bad_request("The instance is being created").into());
    }
    if is_up(&ctx, &name).await {
        return Err(ApiError::bad_request("Renaming of running instance not allowed").into());
    }
    let run_ctx = ctx.clone();
    Ok(crate::operations::start(
        &ctx,
        resourced("Renaming instance", &name),
        move |_| async move {
            let ctx = run_ctx;
            rename_here(&ctx, &name, &new).await?;
            ctx.events.lifecycle(
                "instance-renamed",
                &url(&new),
                Some(&id),
                Some(BTreeMap::from([("old_name".to_string(), Value::String(name))])),
            );
            Ok(())
        },
    ))
}

/// The record, then the container and its volume, renamed; put back on a failure.
async fn rename_here(ctx: &Ctx, name: &str, new: &str) -> std::result::Result<(), String> {
    let rename_record = |from: &str, to: &str| InstanceCommand::Rename {
        name: from.to_string(),
        new_name: to.to_string(),
    };
    ctx.store
        .apply(rename_record(name, new))
        .await
        .map_err(|e| e.to_string())?;
    let state = ctx.store.state();
    let moved = async {
        let rec = state.instances.get(new).ok_or("Instance not found")?;
        let pool_name = rec.root_pool(&state).ok_or("No root disk device")?;
        let pool = local_pool(ctx, &state, &pool_name)?;
        let known = ctx.driver.list().await.map_err(|e| e.to_string())?;
        if known.iter().any(|l| l.name == name) {
            ctx.driver
                .delete(name)
                .await
                .map_err(|e| format!("Failed renaming instance: {e}"))?;
        }
        let (from, to) = (name.to_string(), new.to_string());
        let path = tokio::task::spawn_blocking(move || {
            let vol = storage::Volume::container(&from);
            pool.rename_volume(&vol, &to)?;
            pool.rename_snapshots(&from, &to)?;
            pool.volume_path(&storage::Volume::container(&to))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("Failed renaming instance volume: {e}"))?;
        make_container(ctx, &state, rec, new, &path).await?;
        crate::routes::exec_output::rename_all(ctx, name, new)
            .map_err(|e| format!("Failed renaming instance exec output: {e}"))
    };
    if let Err(e) = moved.await {
        // Back as it was: the volume under the old name, its container, the record.
        let state = ctx.store.state();
        if let Some(rec) = state.instances.get(new) {
            if let Some(pool) = rec
                .root_pool(&state)
                .and_then(|p| local_pool(ctx, &state, &p).ok())
            {
                let _ = ctx.driver.delete(new).await;
                let (from, to) = (new.to_string(), name.to_string());
                let back = tokio::task::spawn_blocking(move || {
                    let vol = storage::Volume::container(&from);
                    if pool.volume_path(&vol).is_ok_and(|p| p.exists()) {
                        pool.rename_volume(&vol, &to)?;
                    }
                    pool.rename_snapshots(&from, &to)?;
                    pool.volume_path(&storage::Volume::container(&to))
                })
                .await;
                if let Ok(Ok(path)) = back {
                    if !ctx
                        .driver
                        .list()
                        .await
                        .is_ok_and(|l| l.iter().any(|l| l.name == name))
                    {
                        let _ = make_container(ctx, &state, rec, name, &path).await;
                    }
                }
            }
        }
        let _ = ctx.store.apply(rename_record(new, name)).await;
        return Err(e);
    }
    Ok(())
}

/// `DELETE /1.0/instances/{name}`.
pub async fn delete(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
) -> Result<Response> {
    let (_, rec) = record(&ctx, &name)?;
    if ctx.instances.building(&name) {
        return Err(ApiError::bad_request("The instance is being created").into());
    }
    if rec.status != InstanceStatus::Creating && is_up(&ctx, &name).await {
        return Err(ApiError::bad_request("Instance is running").into());
    }
    let run_ctx = ctx.clone();
    Ok(crate::operations::start(
        &ctx,
        resourced("Deleting instance", &name),
        move |_| async move {
            let ctx = run_ctx;
            remove_local(&ctx, &name).await?;
            ctx.store
                .apply(InstanceCommand::Delete { name: name.clone() })
                .await
                .map_err(|e| e.to_string())?;
            ctx.events
                .lifecycle("instance-deleted", &url(&name), Some(&id), None);
            Ok(())
        },
    ))
}

/// `GET /1.0/instances/{name}/state`.
pub async fn get_state(State(ctx): State<Ctx>, Path(name): Path<String>) -> Result<Response> {
    let (state, rec) = record(&ctx, &name)?;
    let full = full_here(&ctx, &state, &rec).await;
    Ok(sync(full.state.unwrap_or_default()))
}

/// `PUT /1.0/instances/{name}/state`: start, stop, restart, freeze, unfreeze.
pub async fn put_state(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    let (_, rec) = record(&ctx, &name)?;
    if rec.status == InstanceStatus::Creating {
        return Err(ApiError::bad_request("The instance is being created").into());
    }
    if ctx.instances.building(&name) {
        return Err(ApiError::bad_request("The instance is being moved").into());
    }
    let req: InstanceStatePut = crate::response::json_body(body).await?;
    let how = if req.force || req.timeout == 0 {
        instance::Stop::Force
    } else if req.timeout < 0 {
        instance::Stop::Clean(STOP_BOUND)
    } else {
        instance::Stop::Clean(Duration::from_secs(req.timeout as u64).min(STOP_BOUND))
    };
    let (description, event, after) = match req.action.as_str() {
        "start" => ("Starting instance", "instance-started", InstanceStatus::Running),
        "stop" => (
            "Stopping instance",
            if how == instance::Stop::Force {
                "instance-stopped"
            } else {
                "instance-shutdown"
            },
            InstanceStatus::Stopped,
        ),
        "restart" => (
            "Restarting instance",
            "instance-restarted",
            InstanceStatus::Running,
        ),
        "freeze" => ("Freezing instance", "instance-paused", InstanceStatus::Frozen),
        "unfreeze" => ("Unfreezing instance", "instance-resumed", InstanceStatus::Running),
        other => return Err(ApiError::bad_request(format!("Unknown action {other:?}")).into()),
    };
    let current = runtime(&ctx, &name).await.map(|s| s.status);
    use instance::Status as S;
    let refusal = match (req.action.as_str(), current) {
        ("start", Some(S::Running)) => Some("The instance is already running"),
        ("stop", Some(S::Stopped)) => Some("The instance is already stopped"),
        ("freeze", Some(S::Stopped)) | ("unfreeze", Some(S::Stopped)) | ("restart", Some(S::Stopped)) => {
            Some("The instance isn't running")
        }
        ("freeze", Some(S::Frozen)) => Some("The instance is already frozen"),
        ("unfreeze", Some(s)) if s != S::Frozen => Some("The instance isn't frozen"),
        _ => None,
    };
    if let Some(why) = refusal {
        return Err(ApiError::bad_request(why).into());
    }
    let action = req.action.clone();
    let run_ctx = ctx.clone();
    Ok(crate::operations::start(
        &ctx,
        resourced(description, &name),
        move |_| async move {
            let ctx = run_ctx;
            let done = match action.as_str() {
                "start" => ctx.driver.start(&name).await,
                "stop" => ctx.driver.stop(&name, how).await,
                "restart" => ctx.driver.restart(&name, how).await,
                "freeze" => ctx.driver.freeze(&name).await,
                _ => ctx.driver.unfreeze(&name).await,
            };
            let now = runtime(&ctx, &name).await.map(|s| status_of(s.status));
            set_status(&ctx, &name, now.unwrap_or(after)).await;
            done.map_err(|e| e.to_string())?;
            ctx.events.lifecycle(event, &url(&name), Some(&id), None);
            Ok(())
        },
    ))
}

/// A log of the runtime as a streamed body.
async fn log_body(ctx: &Ctx, name: &str, log: instance::Log) -> Result<Response> {
    record(ctx, name)?;
    let reader = ctx
        .driver
        .log(name, log)
        .await
        .map_err(|e| ApiError::not_found_msg(format!("Log not found: {e}")))?;
    let stream = futures_util::stream::unfold(reader, |mut r| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), r))
            }
            Err(e) => Some((Err(e), r)),
        }
    });
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}

/// `GET /1.0/instances/{name}/logs`.
pub async fn list_logs(State(ctx): State<Ctx>, Path(name): Path<String>) -> Result<Response> {
    record(&ctx, &name)?;
    Ok(sync(vec![format!("{}/logs/lxc.log", url(&name))]))
}

/// `GET /1.0/instances/{name}/logs/{file}`: `lxc.log`.
pub async fn get_log(State(ctx): State<Ctx>, Path((name, file)): Path<(String, String)>) -> Result<Response> {
    if file != "lxc.log" {
        return Err(ApiError::not_found_msg(format!("Log file {file:?} not found")).into());
    }
    log_body(&ctx, &name, instance::Log::Runtime).await
}

/// `GET /1.0/instances/{name}/console`: the console log (`?type=log`, the default of a
/// GET).
pub async fn console_log(State(ctx): State<Ctx>, Path(name): Path<String>) -> Result<Response> {
    log_body(&ctx, &name, instance::Log::Console).await
}
