//! `/1.0/instances/{name}/snapshots`: snapshots taken, listed, renamed, expired,
//! deleted and restored on the member that holds the instance (route owner
//! `Instance`), through any member.
//!
//! ```text
//!  POST .../snapshots  ─ name checked (Incus's API-name rule), free ─> 202 "Snapshotting instance"
//!     running? freeze ─> pool.copy_tree(containers/c1 -> containers-snapshots/c1/s1) ─> thaw
//!     ─> SnapshotCommand::Create (the record only once the files are whole)
//!  PUT  /1.0/instances/c1 {"restore":"s1"} ─> 202 "Restoring snapshot"
//!     running? stop ─> pool.restore_snapshot (copy beside, one RENAME_EXCHANGE) ─> the
//!     snapshot's config, devices, profiles ─> start again if it ran
//! ```
//!
//! A running container on `dir` is frozen while its volume is copied, as Incus does for
//! drivers that cannot snapshot atomically (`RunningCopyFreeze`): the files are those of
//! one instant of the container's processes, though what they held in memory and had
//! not written is not in them (a stateless snapshot). Stateful snapshots need CRIU and
//! are refused.
//!
//! The owner also honours `expires_at` and `snapshots.schedule` (see
//! [`crate::snapshot_tasks`]).

use std::collections::{BTreeMap, HashMap};

use api::types::{
    InstanceSnapshot, InstanceSnapshotPost, InstanceSnapshotPut, InstanceSnapshotsPost, Timestamp,
};
use api::ApiError;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Extension;
use cluster::{InstanceCommand, InstanceRecord, SnapshotCommand, SnapshotRecord};
use serde_json::Value;
use trust::Identity;

use crate::context::Ctx;
use crate::ops::Spec;
use crate::response::{recursion, sync, Result};

fn instance_url(name: &str) -> String {
    format!("/1.0/instances/{name}")
}

fn snap_url(name: &str, snap: &str) -> String {
    format!("/1.0/instances/{name}/snapshots/{snap}")
}

fn spec(description: &str, name: &str, snap: &str) -> Spec {
    let mut spec = Spec::task(description);
    spec.resources = Some(BTreeMap::from([
        ("instances".to_string(), Some(vec![instance_url(name)])),
        (
            "instances_snapshots".to_string(),
            Some(vec![snap_url(name, snap)]),
        ),
    ]));
    spec
}

fn instance(ctx: &Ctx, name: &str) -> Result<(std::sync::Arc<cluster::State>, InstanceRecord)> {
    let state = ctx.store.state();
    let rec = state
        .instances
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::not_found_msg("Instance not found"))?;
    Ok((state, rec))
}

fn snapshot(
    ctx: &Ctx,
    name: &str,
    snap: &str,
) -> Result<(std::sync::Arc<cluster::State>, InstanceRecord, SnapshotRecord)> {
    let (state, rec) = instance(ctx, name)?;
    let s = state
        .snapshot(name, snap)
        .cloned()
        .ok_or_else(|| ApiError::not_found_msg("Snapshot not found"))?;
    Ok((state, rec, s))
}

/// The API object of a snapshot.
pub fn render(state: &cluster::State, s: &SnapshotRecord) -> InstanceSnapshot {
    let as_instance = InstanceRecord {
        name: s.name.clone(),
        location: None,
        kind: "container".into(),
        architecture: s.architecture.clone(),
        description: s.description.clone(),
        config: s.config.clone(),
        devices: s.devices.clone(),
        profiles: s.profiles.clone(),
        ephemeral: s.ephemeral,
        status: cluster::InstanceStatus::Stopped,
        created_at: s.created_at,
    };
    InstanceSnapshot {
        put: InstanceSnapshotPut {
            expires_at: s.expires_at.map(Timestamp).unwrap_or(Timestamp::ZERO),
        },
        architecture: s.architecture.clone(),
        config: s.config.clone(),
        created_at: Timestamp(s.created_at),
        devices: s.devices.clone(),
        ephemeral: s.ephemeral,
        expanded_config: as_instance.expanded_config(state),
        expanded_devices: as_instance.expanded_devices(state),
        last_used_at: Timestamp::ZERO,
        name: s.name.clone(),
        profiles: s.profiles.clone(),
        stateful: s.stateful,
        size: -1,
    }
}

/// The snapshots of an instance as the instance's `snapshots` field shows them.
pub fn render_all(state: &cluster::State, name: &str) -> Vec<InstanceSnapshot> {
    state
        .snapshots_of(name)
        .into_iter()
        .map(|s| render(state, s))
        .collect()
}

/// This member's pool holding the instance's root disk.
fn pool_of(
    ctx: &Ctx,
    state: &cluster::State,
    rec: &InstanceRecord,
) -> std::result::Result<Box<dyn storage::Pool>, String> {
    let pool = rec.root_pool(state).ok_or("No root disk device")?;
    crate::routes::instances::local_pool(ctx, state, &pool)
}

/// Runs `f` (a copy of the volume) with the instance frozen if it runs, as Incus's
/// `dir` driver does; thaws it whatever happened.
pub(crate) async fn frozen<T: Send + 'static>(
    ctx: &Ctx,
    name: &str,
    f: impl FnOnce() -> std::result::Result<T, String> + Send + 'static,
) -> std::result::Result<T, String> {
    let running = ctx
        .driver
        .state(name)
        .await
        .is_ok_and(|s| matches!(s.status, instance::Status::Running | instance::Status::Thawed));
    if running {
        ctx.driver
            .freeze(name)
            .await
            .map_err(|e| format!("Failed to freeze the instance: {e}"))?;
    }
    let out = tokio::task::spawn_blocking(f).await.map_err(|e| e.to_string());
    if running {
        if let Err(e) = ctx.driver.unfreeze(name).await {
            tracing::warn!(instance = name, error = %e, "failed to thaw after copying its volume");
        }
    }
    out?
}

/// The next free name from `snapshots.pattern` (`snap%d` by default).
pub fn next_name(pattern: &str, taken: &[&str]) -> String {
    let pattern = if pattern.is_empty() { "snap%d" } else { pattern };
    if !pattern.contains("%d") {
        return if taken.contains(&pattern) {
            format!("{pattern}-0")
        } else {
            pattern.to_string()
        };
    }
    let (pre, post) = pattern.split_once("%d").unwrap_or((pattern, ""));
    let next = taken
        .iter()
        .filter_map(|t| t.strip_prefix(pre)?.strip_suffix(post)?.parse::<u64>().ok())
        .max()
        .map(|n| n + 1)
        .unwrap_or(0);
    format!("{pre}{next}{post}")
}

/// When a new snapshot expires: the request's time, else `snapshots.expiry.manual`
/// or `snapshots.expiry` from now (a scheduled one: `snapshots.expiry`).
pub fn expiry(
    expanded: &BTreeMap<String, String>,
    asked: Option<Timestamp>,
    scheduled: bool,
    now: time::OffsetDateTime,
) -> std::result::Result<Option<time::OffsetDateTime>, String> {
    if let Some(t) = asked {
        return Ok((!t.is_zero()).then_some(t.0));
    }
    let manual = expanded
        .get("snapshots.expiry.manual")
        .filter(|v| !v.is_empty() && !scheduled);
    let text = manual
        .or_else(|| expanded.get("snapshots.expiry"))
        .cloned()
        .unwrap_or_default();
    let parsed = api::expiry::parse_bounded(&text).map_err(|e| e.to_string())?;
    Ok(parsed.map(|e| e.after(now)))
}

/// Takes snapshot `snap` of instance `name` here: the files, then the record.
pub(crate) async fn take(
    ctx: &Ctx,
    name: &str,
    snap: &str,
    expires_at: Option<time::OffsetDateTime>,
) -> std::result::Result<(), String> {
    let (state, rec) = instance(ctx, name).map_err(|e| e.0.message)?;
    let pool = pool_of(ctx, &state, &rec)?;
    let (n, s) = (name.to_string(), snap.to_string());
    let pool = std::sync::Arc::new(pool);
    let p = pool.clone();
    frozen(ctx, name, move || {
        p.copy_tree(storage::Tree::Container(&n), storage::Tree::Snapshot(&n, &s))
            .map(|_| ())
            .map_err(|e| format!("Failed creating snapshot volume: {e}"))
    })
    .await?;
    let record = SnapshotRecord {
        name: snap.to_string(),
        architecture: rec.architecture.clone(),
        description: rec.description.clone(),
        config: rec.config.clone(),
        devices: rec.devices.clone(),
        profiles: rec.profiles.clone(),
        ephemeral: rec.ephemeral,
        stateful: false,
        created_at: time::OffsetDateTime::now_utc(),
        expires_at,
    };
    let made = ctx
        .store
        .apply(SnapshotCommand::Create {
            instance: name.to_string(),
            snapshot: Box::new(record),
        })
        .await;
    if let Err(e) = made {
        let (n, s) = (name.to_string(), snap.to_string());
        let _ = tokio::task::spawn_blocking(move || pool.delete_tree(storage::Tree::Snapshot(&n, &s))).await;
        return Err(crate::response::Error::from(e).0.message);
    }
    Ok(())
}

/// Deletes snapshot `snap` of `name` here: the record, then the files.
pub(crate) async fn remove(ctx: &Ctx, name: &str, snap: &str) -> std::result::Result<(), String> {
    let (state, rec) = instance(ctx, name).map_err(|e| e.0.message)?;
    let pool = pool_of(ctx, &state, &rec)?;
    ctx.store
        .apply(SnapshotCommand::Delete {
            instance: name.to_string(),
            name: snap.to_string(),
        })
        .await
        .map_err(|e| crate::response::Error::from(e).0.message)?;
    let (n, s) = (name.to_string(), snap.to_string());
    tokio::task::spawn_blocking(move || match pool.tree_path(storage::Tree::Snapshot(&n, &s)) {
        Ok(p) if p.exists() => pool.delete_tree(storage::Tree::Snapshot(&n, &s)),
        _ => Ok(()),
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("Failed deleting snapshot volume: {e}"))
}

/// Removes every snapshot file of an instance here (the instance is being deleted; its
/// records go with its record).
pub(crate) async fn remove_all_local(ctx: &Ctx, name: &str) -> std::result::Result<(), String> {
    let (state, rec) = match instance(ctx, name) {
        Ok(x) => x,
        Err(_) => return Ok(()),
    };
    let Ok(pool) = pool_of(ctx, &state, &rec) else {
        return Ok(());
    };
    let n = name.to_string();
    tokio::task::spawn_blocking(move || pool.delete_snapshots(&n))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("Failed deleting snapshot volumes: {e}"))
}

/// `GET /1.0/instances/{name}/snapshots`.
pub async fn list(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let (state, _) = instance(&ctx, &name)?;
    if recursion(&q) {
        Ok(sync(render_all(&state, &name)))
    } else {
        Ok(sync(
            state
                .snapshots_of(&name)
                .iter()
                .map(|s| snap_url(&name, &s.name))
                .collect::<Vec<_>>(),
        ))
    }
}

/// `POST /1.0/instances/{name}/snapshots`.
pub async fn create(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    let (state, rec) = instance(&ctx, &name)?;
    if rec.status == cluster::InstanceStatus::Creating {
        return Err(ApiError::bad_request("The instance is being created").into());
    }
    let req: InstanceSnapshotsPost = crate::response::json_body(body).await?;
    if req.stateful {
        return Err(
            ApiError::bad_request("Unable to create a stateful snapshot. CRIU isn't installed").into(),
        );
    }
    let expanded = rec.expanded_config(&state);
    let snap = if req.name.is_empty() {
        let taken: Vec<&str> = state
            .snapshots_of(&name)
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        next_name(
            expanded
                .get("snapshots.pattern")
                .map(String::as_str)
                .unwrap_or(""),
            &taken,
        )
    } else {
        req.name.clone()
    };
    cluster::state::valid_snapshot_name(&snap).map_err(ApiError::bad_request)?;
    if state.snapshot(&name, &snap).is_some() {
        return Err(ApiError::conflict(format!("Name '{name}/{snap}' already in use")).into());
    }
    let expires_at = expiry(&expanded, req.expires_at, false, time::OffsetDateTime::now_utc())
        .map_err(ApiError::bad_request)?;
    let run_ctx = ctx.clone();
    let s = snap.clone();
    Ok(crate::operations::start(
        &ctx,
        spec("Snapshotting instance", &name, &snap),
        move |_| async move {
            let ctx = run_ctx;
            take(&ctx, &name, &s, expires_at).await?;
            ctx.events
                .lifecycle("instance-snapshot-created", &snap_url(&name, &s), Some(&id), None);
            Ok(())
        },
    ))
}

/// `GET /1.0/instances/{name}/snapshots/{snap}`.
pub async fn get(State(ctx): State<Ctx>, Path((name, snap)): Path<(String, String)>) -> Result<Response> {
    let (state, _, s) = snapshot(&ctx, &name, &snap)?;
    Ok(sync(render(&state, &s)))
}

/// `PUT` and `PATCH /1.0/instances/{name}/snapshots/{snap}`: `expires_at`, the one
/// field a snapshot lets change.
pub async fn put(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path((name, snap)): Path<(String, String)>,
    body: Body,
) -> Result<Response> {
    snapshot(&ctx, &name, &snap)?;
    let raw: serde_json::Map<String, Value> = crate::response::json_body(body).await?;
    let expires_at = match raw.get("expires_at") {
        None => None,
        Some(v) => {
            let t: Timestamp = serde_json::from_value(v.clone())
                .map_err(|e| ApiError::bad_request(format!("Invalid expires_at: {e}")))?;
            Some((!t.is_zero()).then_some(t.0))
        }
    };
    let run_ctx = ctx.clone();
    let s = snap.clone();
    Ok(crate::operations::start(
        &ctx,
        spec("Updating snapshot", &name, &snap),
        move |_| async move {
            let ctx = run_ctx;
            if let Some(expires_at) = expires_at {
                ctx.store
                    .apply(SnapshotCommand::SetExpiry {
                        instance: name.clone(),
                        name: s.clone(),
                        expires_at,
                    })
                    .await
                    .map_err(|e| crate::response::Error::from(e).0.message)?;
            }
            ctx.events
                .lifecycle("instance-snapshot-updated", &snap_url(&name, &s), Some(&id), None);
            Ok(())
        },
    ))
}

/// `POST /1.0/instances/{name}/snapshots/{snap}`: rename.
pub async fn post(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path((name, snap)): Path<(String, String)>,
    body: Body,
) -> Result<Response> {
    let (state, rec, _) = snapshot(&ctx, &name, &snap)?;
    let req: InstanceSnapshotPost = crate::response::json_body(body).await?;
    if req.migration {
        return Err(ApiError::bad_request(
            "Snapshot migration is not supported; copy the snapshot into a new instance instead",
        )
        .into());
    }
    if req.name.is_empty() {
        return Err(ApiError::bad_request("A new name for the instance must be provided").into());
    }
    cluster::state::valid_snapshot_name(&req.name).map_err(ApiError::bad_request)?;
    if state.snapshot(&name, &req.name).is_some() {
        return Err(ApiError::conflict(format!("Name '{name}/{}' already in use", req.name)).into());
    }
    let pool = pool_of(&ctx, &state, &rec).map_err(ApiError::internal)?;
    let new_name = req.name.clone();
    let run_ctx = ctx.clone();
    Ok(crate::operations::start(
        &ctx,
        spec("Renaming snapshot", &name, &snap),
        move |_| async move {
            let ctx = run_ctx;
            let (n, s, t) = (name.clone(), snap.clone(), new_name.clone());
            tokio::task::spawn_blocking(move || pool.rename_snapshot(&n, &s, &t))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("Failed renaming snapshot volume: {e}"))?;
            ctx.store
                .apply(SnapshotCommand::Rename {
                    instance: name.clone(),
                    name: snap.clone(),
                    new_name: new_name.clone(),
                })
                .await
                .map_err(|e| crate::response::Error::from(e).0.message)?;
            ctx.events.lifecycle(
                "instance-snapshot-renamed",
                &snap_url(&name, &new_name),
                Some(&id),
                Some(BTreeMap::from([("old_name".to_string(), Value::String(snap))])),
            );
            Ok(())
        },
    ))
}

/// `DELETE /1.0/instances/{name}/snapshots/{snap}`.
pub async fn delete(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path((name, snap)): Path<(String, String)>,
) -> Result<Response> {
    snapshot(&ctx, &name, &snap)?;
    let run_ctx = ctx.clone();
    let s = snap.clone();
    Ok(crate::operations::start(
        &ctx,
        spec("Deleting snapshot", &name, &snap),
        move |_| async move {
            let ctx = run_ctx;
            remove(&ctx, &name, &s).await?;
            ctx.events
                .lifecycle("instance-snapshot-deleted", &snap_url(&name, &s), Some(&id), None);
            Ok(())
        },
    ))
}

/// `PUT /1.0/instances/{name}` with `restore`: the instance's volume, config, devices
/// and profiles become the snapshot's; a running instance is stopped for it and
/// started again.
pub async fn restore(ctx: &Ctx, id: Identity, name: String, snap: String) -> Result<Response> {
    // `s1` or `c1/s1`, as Incus takes it.
    let snap = match snap.split_once('/') {
        Some((parent, s)) if parent == name => s.to_string(),
        Some(_) => {
            return Err(ApiError::bad_request(format!("Snapshot {snap:?} is not one of {name:?}")).into())
        }
        None => snap,
    };
    let (state, rec, s) = snapshot(ctx, &name, &snap)?;
    let pool = pool_of(ctx, &state, &rec).map_err(ApiError::internal)?;
    let run_ctx = ctx.clone();
    let mut spec = Spec::task("Restoring snapshot");
    spec.resources = Some(BTreeMap::from([(
        "instances".to_string(),
        Some(vec![instance_url(&name)]),
    )]));
    Ok(crate::operations::start(ctx, spec, move |_| async move {
        let ctx = run_ctx;
        let was_running = ctx
            .driver
            .state(&name)
            .await
            .is_ok_and(|st| st.status != instance::Status::Stopped);
        if was_running {
            ctx.driver
                .stop(&name, instance::Stop::Force)
                .await
                .map_err(|e| format!("Failed to stop the instance: {e}"))?;
        }
        let (n, sn) = (name.clone(), snap.clone());
        let restored = tokio::task::spawn_blocking(move || pool.restore_snapshot(&n, &sn))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| format!("Failed restoring snapshot volume: {e}")));
        if restored.is_ok() {
            // The instance's own volatile keys stay; the rest is the snapshot's.
            let mut config: BTreeMap<String, String> = s
                .config
                .iter()
                .filter(|(k, _)| !k.starts_with("volatile."))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            config.extend(
                rec.config
                    .iter()
                    .filter(|(k, _)| k.starts_with("volatile."))
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
            ctx.store
                .apply(InstanceCommand::Update {
                    name: name.clone(),
                    description: s.description.clone(),
                    config,
                    devices: s.devices.clone(),
                    profiles: s.profiles.clone(),
                    ephemeral: s.ephemeral,
                })
                .await
                .map_err(|e| crate::response::Error::from(e).0.message)?;
        }
        if was_running {
            ctx.driver
                .start(&name)
                .await
                .map_err(|e| format!("Failed to start the instance: {e}"))?;
        }
        restored?;
        ctx.events.lifecycle(
            "instance-restored",
            &instance_url(&name),
            Some(&id),
            Some(BTreeMap::from([("snapshot".to_string(), Value::String(snap))])),
        );
        Ok(())
    }))
}

/// `POST /internal/test/snapshots/tick[?at=RFC3339]` (`--test-routes`): the owner's
/// once-a-minute expiry and schedule pass on the member reached, as if it were `at`
/// (default now); answers what it did.
pub async fn test_tick(State(ctx): State<Ctx>, Query(q): Query<HashMap<String, String>>) -> Result<Response> {
    let at = match q.get("at") {
        Some(t) => time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map_err(|e| ApiError::bad_request(format!("Invalid time {t:?}: {e}")))?,
        None => time::OffsetDateTime::now_utc(),
    };
    let done = crate::snapshot_tasks::tick(&ctx, at).await;
    Ok(sync(
        done.iter()
            .map(|a| match a {
                crate::snapshot_tasks::Action::Expire { instance, snapshot } => {
                    format!("expired {instance}/{snapshot}")
                }
                crate::snapshot_tasks::Action::Take {
                    instance, snapshot, ..
                } => format!("took {instance}/{snapshot}"),
            })
            .collect::<Vec<_>>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_next_name_follows_the_pattern() {
        assert_eq!(next_name("", &[]), "snap0");
        assert_eq!(next_name("snap%d", &["snap0", "snap4", "other"]), "snap5");
        assert_eq!(next_name("b-%d-x", &["b-2-x"]), "b-3-x");
        assert_eq!(next_name("fixed", &[]), "fixed");
    }

    #[test]
    fn t10_expiry_from_request_or_config() {
        let now = time::macros::datetime!(2026-01-01 0:00 UTC);
        let cfg = BTreeMap::from([("snapshots.expiry".to_string(), "1d".to_string())]);
        assert_eq!(
            expiry(&cfg, None, false, now).unwrap(),
            Some(time::macros::datetime!(2026-01-02 0:00 UTC))
        );
        let mut manual = cfg.clone();
        manual.insert("snapshots.expiry.manual".into(), "2H".into());
        assert_eq!(
            expiry(&manual, None, false, now).unwrap(),
            Some(time::macros::datetime!(2026-01-01 2:00 UTC))
        );
        assert_eq!(
            expiry(&manual, None, true, now).unwrap(),
            Some(time::macros::datetime!(2026-01-02 0:00 UTC))
        );
        assert_eq!(expiry(&cfg, Some(Timestamp::ZERO), false, now).unwrap(), None);
        assert_eq!(expiry(&BTreeMap::new(), None, false, now).unwrap(), None);
        let bad = BTreeMap::from([("snapshots.expiry".to_string(), "soon".to_string())]);
        assert!(expiry(&bad, None, false, now).is_err());
    }
}
