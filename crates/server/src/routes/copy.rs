//! `POST /1.0/instances` with `source.type: "copy"`: a new instance from another one
//! (`c1`) or from a snapshot (`c1/s1`), on the same member or another, through any
//! member.
//!
//! ```text
//!  any member ─ placement (?target= or the rule) ─> destination D (forwarded as it came)
//!  D: 202 "Creating instance"
//!     source owner S == D: pool.copy_tree into hidden names (frozen while a running
//!                          source is copied, as Incus's dir driver)
//!     S != D:              GET /internal/volumes/c1[?snapshot=s] on S, once per tree
//!                          (crate::volumes: framed tar, checksum, staged hidden)
//!     everything whole ─> Create{record, Creating} ─> trees put in place ─> container
//!     made ─> snapshot records ─> Stopped
//!     any failure: staged trees removed, and once recorded, the record and trees too
//! ```
//!
//! The new record takes the source's config without its `volatile.*` keys (but
//! `volatile.base_image`), as Incus's `InstanceIncludeWhenCopying`; what the request
//! sets wins. A running source is copied as Incus copies one without CRIU: on its own
//! member stateless (frozen for the time its volume is read, as the `dir` driver
//! does), to another member only when asked stateless (`incus copy --stateless`); the
//! client's default there, `live`, is refused with Incus's CRIU message.

use std::collections::BTreeMap;
use std::path::PathBuf;

use api::types::InstancesPost;
use api::ApiError;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::response::Response;
use cluster::placement;
use cluster::{InstanceCommand, InstanceRecord, InstanceStatus, SnapshotCommand};
use serde_json::Value;
use storage::Tree;
use trust::Identity;

use crate::context::Ctx;
use crate::ops::Spec;
use crate::response::Result;

/// Incus's refusal of a live migration of a container without CRIU.
pub(crate) const NO_CRIU: &str =
    "Unable to perform live container migration. CRIU isn't installed on the source server. \
     To migrate the container, stop the container before migration or install CRIU on the source server";

/// Who owns the files of a container's volume: root when privileged, else the base of
/// its id map.
pub(crate) fn volume_owner(privileged: bool) -> storage::Owner {
    if privileged {
        storage::Owner::ROOT
    } else {
        storage::Owner {
            uid: instance::lxc::IDMAP_BASE,
            gid: instance::lxc::IDMAP_BASE,
        }
    }
}

/// Puts staged trees in place under `name`: the first as the instance's volume, the
/// others as its snapshots `snaps`, in order. The volume's path; on a failure the
/// message and the staged paths not placed yet (for the caller to remove).
pub(crate) fn commit_all(
    pool: &dyn storage::Pool,
    staged: &[PathBuf],
    name: &str,
    snaps: &[String],
    owner: storage::Owner,
) -> std::result::Result<PathBuf, (String, Vec<PathBuf>)> {
    let mut left = staged.to_vec();
    let mut path = None;
    for (i, p) in staged.iter().enumerate() {
        let tree = match i.checked_sub(1) {
            None => Tree::Container(name),
            Some(k) => match snaps.get(k) {
                Some(s) => Tree::Snapshot(name, s),
                None => return Err(("more trees than snapshots".to_string(), left)),
            },
        };
        match pool.commit_tree(p, tree, owner) {
            Ok(at) => {
                left.retain(|x| x != p);
                if i == 0 {
                    path = Some(at);
                }
            }
            Err(e) => return Err((e.to_string(), left)),
        }
    }
    path.ok_or_else(|| ("nothing copied".to_string(), left))
}

fn url(name: &str) -> String {
    format!("/1.0/instances/{name}")
}

/// The config a copy starts from: the source's, without the server's `volatile.*` keys
/// except `volatile.base_image`; then what the request sets.
pub fn copied_config(
    source: &BTreeMap<String, String>,
    requested: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = source
        .iter()
        .filter(|(k, _)| !k.starts_with("volatile.") || *k == "volatile.base_image")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.extend(
        requested
            .iter()
            .filter(|(k, _)| !k.starts_with("volatile.") || *k == "volatile.base_image")
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    out
}

/// `c1` or `c1/s1`.
fn parse_source(source: &str) -> Result<(String, Option<String>)> {
    if source.is_empty() {
        return Err(ApiError::bad_request("Must specify a source instance").into());
    }
    match source.split_once('/') {
        None => Ok((source.to_string(), None)),
        Some((i, s)) if !i.is_empty() && !s.is_empty() && !s.contains('/') => {
            Ok((i.to_string(), Some(s.to_string())))
        }
        _ => Err(ApiError::bad_request(format!("Invalid copy source {source:?}")).into()),
    }
}

/// The dispatch from `POST /1.0/instances`: checks, placement, then here or forwarded.
pub async fn create(
    ctx: Ctx,
    id: Identity,
    parts: http::request::Parts,
    bytes: bytes::Bytes,
    mut post: InstancesPost,
) -> Result<Response> {
    let (source, snap) = parse_source(&post.source.source)?;
    if !post.source.project.is_empty() && post.source.project != "default" {
        return Err(ApiError::not_found_msg("Project not found").into());
    }
    let state = ctx.store.state();
    if !state.instances.contains_key(&source) {
        return Err(ApiError::not_found_msg(format!("Source instance {source:?} not found")).into());
    }
    if let Some(s) = &snap {
        if state.snapshot(&source, s).is_none() {
            return Err(ApiError::not_found_msg(format!("Snapshot \"{source}/{s}\" not found")).into());
        }
    }
    if post.name.is_empty() {
        post.name = format!("instance-{}", &crate::operations::new_uuid()[..8]);
    }
    cluster::state::valid_instance_name(&post.name).map_err(ApiError::bad_request)?;
    if state.instances.contains_key(&post.name) {
        return Err(ApiError::conflict(format!("Instance {:?} already exists", post.name)).into());
    }
    let via_member = parts.extensions.get::<crate::auth::ViaMember>().is_some();
    if !via_member {
        let target = crate::forward::query_value(&parts.uri, "target");
        let facts = crate::routes::instances::facts(&ctx, &state);
        let chosen = placement::place(&state, target.as_deref(), &facts)?;
        if let Some(member) = chosen
            .filter(|c| Some(*c) != ctx.member_id())
            .and_then(|c| state.member_by_id(c))
        {
            let fwd = Request::from_parts(parts, Body::from(bytes));
            return Ok(crate::forward::to_member(&ctx, &member.name, fwd).await);
        }
    }
    here(ctx, id, post, source, snap).await
}

/// What a copy made so far, to undo.
struct Made {
    pool: std::sync::Arc<Box<dyn storage::Pool>>,
    staged: Vec<PathBuf>,
    name: String,
    placed: bool,
    recorded: bool,
}

impl Made {
    async fn undo(self, ctx: &Ctx) {
        let Made {
            pool,
            staged,
            name,
            placed,
            recorded,
        } = self;
        if recorded
            && ctx
                .driver
                .list()
                .await
                .is_ok_and(|l| l.iter().any(|x| x.name == name))
        {
            let _ = ctx.driver.delete(&name).await;
        }
        let n = name.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for p in staged {
                let _ = std::fs::remove_dir_all(p);
            }
            if placed {
                let _ = pool.delete_snapshots(&n);
                let _ = pool.delete_tree(Tree::Container(&n));
            }
        })
        .await;
        if recorded {
            let _ = ctx.store.apply(InstanceCommand::Delete { name }).await;
        }
    }
}

/// The copy on the destination member (this one).
async fn here(
    ctx: Ctx,
    id: Identity,
    post: InstancesPost,
    source: String,
    snap: Option<String>,
) -> Result<Response> {
    let state = ctx.store.state();
    let src = state
        .instances
        .get(&source)
        .cloned()
        .ok_or_else(|| ApiError::not_found_msg(format!("Source instance {source:?} not found")))?;
    let (base_config, base_devices, base_profiles, base_desc, architecture, ephemeral) = match &snap {
        Some(s) => {
            let r = state
                .snapshot(&source, s)
                .ok_or_else(|| ApiError::not_found_msg(format!("Snapshot \"{source}/{s}\" not found")))?;
            (
                r.config.clone(),
                r.devices.clone(),
                r.profiles.clone(),
                r.description.clone(),
                r.architecture.clone(),
                r.ephemeral,
            )
        }
        None => (
            src.config.clone(),
            src.devices.clone(),
            src.profiles.clone(),
            src.description.clone(),
            src.architecture.clone(),
            src.ephemeral,
        ),
    };
    let mut devices = base_devices;
    devices.extend(post.put.devices.clone());
    let record = InstanceRecord {
        name: post.name.clone(),
        location: ctx.member_id(),
        kind: api::types::kind::CONTAINER.into(),
        architecture,
        description: if post.put.description.is_empty() {
            base_desc
        } else {
            post.put.description.clone()
        },
        config: copied_config(&base_config, &post.put.config),
        devices,
        profiles: post.put.profiles.clone().unwrap_or(base_profiles),
        ephemeral: post.put.ephemeral || ephemeral,
        status: InstanceStatus::Creating,
        created_at: time::OffsetDateTime::now_utc(),
    };
    // What the record will be refused for is refused now, before anything moves.
    crate::routes::instances::limits(&record.expanded_config(&state))?;
    let mut dry = (*state).clone();
    dry.apply(&cluster::Command::Instances(InstanceCommand::Create {
        instance: Box::new(record.clone()),
    }))
    .map_err(|e| crate::response::Error::from(cluster::StoreError::State(e)))?;
    // The new instance's pool must exist here before anything moves.
    let pool_name = record.root_pool(&state).ok_or_else(|| {
        ApiError::bad_request("Failed detecting root disk device: No root device could be found")
    })?;
    let pool =
        crate::routes::instances::local_pool(&ctx, &state, &pool_name).map_err(ApiError::bad_request)?;
    // The source's member, if not this one, must be reachable.
    let from = match src.location.filter(|l| Some(*l) != ctx.member_id()) {
        None => None,
        Some(at) => {
            let m = state
                .member_by_id(at)
                .cloned()
                .ok_or_else(|| ApiError::unavailable("The source instance's member is gone"))?;
            if !crate::membership::is_online(&ctx, &m.name) {
                return Err(ApiError::unavailable(format!(
                    "Cluster member {:?} holding the source instance is offline",
                    m.name
                ))
                .into());
            }
            Some(m)
        }
    };
    // A live copy between members is a live migration, which needs CRIU (Incus's
    // message); on one member Incus copies stateless whatever `live` says.
    if post.source.live && from.is_some() && snap.is_none() {
        return Err(ApiError::bad_request(NO_CRIU).into());
    }
    let snapshots: Vec<String> = if snap.is_some() || post.source.instance_only {
        Vec::new()
    } else {
        state
            .snapshots_of(&source)
            .iter()
            .map(|s| s.name.clone())
            .collect()
    };
    let start = post.start;
    let name = post.name.clone();
    let mut spec = Spec::task("Creating instance");
    spec.resources = Some(BTreeMap::from([(
        "instances".to_string(),
        Some(vec![url(&name)]),
    )]));
    let run_ctx = ctx.clone();
    Ok(crate::operations::start(&ctx, spec, move |progress| async move {
        let ctx = run_ctx;
        let mut made = Made {
            pool: std::sync::Arc::new(pool),
            staged: Vec::new(),
            name: name.clone(),
            placed: false,
            recorded: false,
        };
        let result = run(
            &ctx,
            &mut made,
            record,
            from.as_ref(),
            (&source, snap.as_deref()),
            &snapshots,
            &progress,
        )
        .await;
        if let Err(e) = result {
            made.undo(&ctx).await;
            return Err(e);
        }
        ctx.events
            .lifecycle("instance-created", &url(&name), Some(&id), None);
        if start {
            ctx.driver
                .start(&name)
                .await
                .map_err(|e| format!("Failed to start instance: {e}"))?;
            let _ = ctx
                .store
                .apply(InstanceCommand::SetStatus {
                    name: name.clone(),
                    status: InstanceStatus::Running,
                })
                .await;
            ctx.events
                .lifecycle("instance-started", &url(&name), Some(&id), None);
        }
        Ok(())
    }))
}

/// Stages one tree: a local copy, or fetched from the source's member.
async fn stage(
    ctx: &Ctx,
    made: &mut Made,
    from_member: Option<&cluster::Member>,
    from: Tree<'_>,
    to: Tree<'_>,
) -> std::result::Result<(), String> {
    let p = made.pool.clone();
    let (inst, snap) = match to {
        Tree::Container(n) => (n.to_string(), None),
        Tree::Snapshot(n, s) => (n.to_string(), Some(s.to_string())),
    };
    let staged = tokio::task::spawn_blocking(move || match &snap {
        Some(s) => p.stage_tree(Tree::Snapshot(&inst, s)),
        None => p.stage_tree(Tree::Container(&inst)),
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("Failed creating instance volume: {e}"))?;
    made.staged.push(staged.clone());
    match from_member {
        Some(m) => {
            let (name, snap) = match from {
                Tree::Container(n) => (n, None),
                Tree::Snapshot(n, s) => (n, Some(s)),
            };
            crate::volumes::fetch(ctx, &m.name, &m.address, name, snap, staged, None).await
        }
        None => {
            let state = ctx.store.state();
            let (src_name, src_snap) = match from {
                Tree::Container(n) => (n.to_string(), None),
                Tree::Snapshot(n, s) => (n.to_string(), Some(s.to_string())),
            };
            let rec = state
                .instances
                .get(&src_name)
                .cloned()
                .ok_or("Source instance not found")?;
            let pool_name = rec.root_pool(&state).ok_or("No root disk device")?;
            let src_pool = crate::routes::instances::local_pool(ctx, &state, &pool_name)?;
            let copy = move || {
                let tree = match &src_snap {
                    Some(s) => Tree::Snapshot(&src_name, s),
                    None => Tree::Container(&src_name),
                };
                src_pool
                    .copy_tree_into(tree, &staged)
                    .map_err(|e| format!("Failed copying the volume: {e}"))
            };
            if from.is_snapshot() {
                tokio::task::spawn_blocking(copy)
                    .await
                    .map_err(|e| e.to_string())?
            } else {
                let name = from.to_string();
                crate::routes::snapshots::frozen(ctx, &name, copy).await
            }
        }
    }
}

async fn run(
    ctx: &Ctx,
    made: &mut Made,
    record: InstanceRecord,
    from_member: Option<&cluster::Member>,
    (source, snap): (&str, Option<&str>),
    snapshots: &[String],
    progress: &crate::ops::Progress,
) -> std::result::Result<(), String> {
    let name = record.name.clone();
    let report = |what: String| {
        progress.extend_metadata(BTreeMap::from([(
            "create_instance_from_copy_progress".to_string(),
            Value::String(what),
        )]));
    };
    // 1. Every tree, whole, under hidden names.
    report(format!("Copying {source}"));
    let main_from = match snap {
        Some(s) => Tree::Snapshot(source, s),
        None => Tree::Container(source),
    };
    stage(ctx, made, from_member, main_from, Tree::Container(&name)).await?;
    for s in snapshots {
        report(format!("Copying snapshot {source}/{s}"));
        stage(
            ctx,
            made,
            from_member,
            Tree::Snapshot(source, s),
            Tree::Snapshot(&name, s),
        )
        .await?;
    }
    // 2. The record, now that the data is here.
    let state = ctx.store.state();
    let expanded = record.expanded_config(&state);
    let privileged = expanded.get("security.privileged").is_some_and(|v| v == "true");
    let limits = crate::routes::instances::limits(&expanded).map_err(|e| e.0.message)?;
    let src_snaps: Vec<cluster::SnapshotRecord> = snapshots
        .iter()
        .filter_map(|s| state.snapshot(source, s).cloned())
        .collect();
    ctx.store
        .apply(InstanceCommand::Create {
            instance: Box::new(record),
        })
        .await
        .map_err(|e| crate::response::Error::from(e).0.message)?;
    made.recorded = true;
    // 3. In place, the container made, the snapshots recorded.
    let owner = volume_owner(privileged);
    let pool = made.pool.clone();
    let staged = std::mem::take(&mut made.staged);
    let n = name.clone();
    let snaps = snapshots.to_vec();
    made.placed = true;
    let placed = tokio::task::spawn_blocking(move || commit_all(&**pool, &staged, &n, &snaps, owner))
        .await
        .map_err(|e| e.to_string())?;
    let path = match placed {
        Ok(p) => p,
        Err((e, left)) => {
            made.staged = left;
            return Err(format!("Failed creating instance volume: {e}"));
        }
    };
    ctx.driver
        .create(instance::CreateSpec {
            name: name.clone(),
            rootfs: path.join("rootfs"),
            privileged,
            limits,
        })
        .await
        .map_err(|e| format!("Failed creating instance: {e}"))?;
    for s in src_snaps {
        ctx.store
            .apply(SnapshotCommand::Create {
                instance: name.clone(),
                snapshot: Box::new(s),
            })
            .await
            .map_err(|e| crate::response::Error::from(e).0.message)?;
    }
    ctx.store
        .apply(InstanceCommand::SetStatus {
            name,
            status: InstanceStatus::Stopped,
        })
        .await
        .map_err(|e| crate::response::Error::from(e).0.message)?;
    Ok(())
}

/// `GET /internal/volumes/{name}[?snapshot=S]` (members): the volume of an instance of
/// this member, or of one of its snapshots, as a framed tar stream
/// ([`crate::volumes`]); a running instance is frozen while its rootfs is read.
pub async fn internal_volume(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Response> {
    let state = ctx.store.state();
    let rec = state
        .instances
        .get(&name)
        .cloned()
        .ok_or_else(|| ApiError::not_found_msg("Instance not found"))?;
    if rec.location != ctx.member_id() {
        return Err(ApiError::bad_request("The instance is not on this member").into());
    }
    let snap = q.get("snapshot").filter(|s| !s.is_empty()).cloned();
    if let Some(s) = &snap {
        if state.snapshot(&name, s).is_none() {
            return Err(ApiError::not_found_msg("Snapshot not found").into());
        }
    }
    let pool_name = rec
        .root_pool(&state)
        .ok_or_else(|| ApiError::internal("No root disk device"))?;
    let pool = crate::routes::instances::local_pool(&ctx, &state, &pool_name).map_err(ApiError::internal)?;
    let path = match &snap {
        Some(s) => pool.tree_path(Tree::Snapshot(&name, s)),
        None => pool.tree_path(Tree::Container(&name)),
    }
    .map_err(|e| ApiError::not_found_msg(e.to_string()))?;
    let mut thaw = None;
    if snap.is_none()
        && ctx
            .driver
            .state(&name)
            .await
            .is_ok_and(|s| matches!(s.status, instance::Status::Running | instance::Status::Thawed))
    {
        ctx.driver
            .freeze(&name)
            .await
            .map_err(|e| ApiError::internal(format!("Failed to freeze the instance: {e}")))?;
        thaw = Some((ctx.clone(), name.clone()));
    }
    let body = crate::volumes::send(path, move || {
        if let Some((ctx, name)) = thaw {
            tokio::spawn(async move {
                if let Err(e) = ctx.driver.unfreeze(&name).await {
                    tracing::warn!(instance = %name, error = %e, "failed to thaw after sending its volume");
                }
            });
        }
    });
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_volatile_keys_reset_as_incus() {
        let source = BTreeMap::from([
            ("volatile.base_image".to_string(), "abc".to_string()),
            ("volatile.uuid".to_string(), "u".to_string()),
            ("volatile.last_state.power".to_string(), "RUNNING".to_string()),
            ("volatile.idmap.current".to_string(), "[]".to_string()),
            ("limits.memory".to_string(), "1GiB".to_string()),
        ]);
        let asked = BTreeMap::from([
            ("limits.memory".to_string(), "2GiB".to_string()),
            ("volatile.uuid".to_string(), "forged".to_string()),
        ]);
        let out = copied_config(&source, &asked);
        assert_eq!(
            out,
            BTreeMap::from([
                ("volatile.base_image".to_string(), "abc".to_string()),
                ("limits.memory".to_string(), "2GiB".to_string()),
            ])
        );
    }

    #[test]
    fn t90_sources_are_parsed_strictly() {
        assert!(parse_source("").is_err());
        assert!(parse_source("c1/").is_err());
        assert!(parse_source("/s1").is_err());
        assert!(parse_source("c1/s1/x").is_err());
        assert_eq!(parse_source("c1/s1").unwrap(), ("c1".into(), Some("s1".into())));
    }
}
