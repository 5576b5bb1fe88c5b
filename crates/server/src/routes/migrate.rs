//! Moving a stopped container to another member: `POST /1.0/instances/{name}?target=M`
//! with `migration: true` (what `incus move c1 --target M` sends), run by the member
//! that holds it (the route table sends the request there), and the same move for
//! evacuation ([`move_to`]).
//!
//! ```text
//!  source S (owner)                           destination D
//!  checks: D exists, online, not evacuated,
//!  not S; stopped (running: live refused
//!  as Incus without CRIU; stateless: stopped
//!  here, started there)
//!  202 "Migrating instance"
//!  POST /internal/moves/{name}?from=S ──────> leftovers of an earlier try removed
//!                                             (only while the record is not D's)
//!                                             each tree pulled from S: GET /internal/volumes
//!                                             (crate::volumes: staged hidden, sha256)
//!  <── a line per second {"received": n}      all whole ─> put in place, container made
//!  <── {"done": true} | {"error": "..."}      any failure ─> all of it removed
//!  done ─> Move{name, from S, to D}           (one command: the owner changes only now)
//!  S removes its copy; instance-migrated
//!  Move refused / not applied ─> DELETE /internal/moves/{name} on D (its copy removed
//!  while the record is not D's)
//! ```
//!
//! Until the record changes, the instance is whole on S: a destination killed or cut off
//! midway leaves only hidden stages (removed by D on its next start, `remove_partial`)
//! and S reports the failure; the move can be run again. A destination that stops
//! sending lines for `cluster.forward_timeout` is named as not answering. The source
//! removes its copy after the record changed; if it dies in between, the copy stays as
//! an unused directory until a move back here clears it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use api::types::InstancePost;
use api::ApiError;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use cluster::placement;
use cluster::{InstanceCommand, InstanceStatus, Member};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use storage::Tree;
use trust::Identity;

use crate::context::Ctx;
use crate::ops::{Progress, Spec};
use crate::response::Result;

/// How often the destination reports how far it got (and shows it is alive).
const BEAT: Duration = Duration::from_secs(1);
/// The longest line the destination sends.
const MAX_LINE: usize = 64 * 1024;
/// How long a start on another member may take.
const START_WAIT: Duration = Duration::from_secs(120);
/// How long a move run by another member may take.
pub(crate) const MOVE_WAIT: Duration = Duration::from_secs(1800);
/// How long a running instance may take to shut down before a move forces it.
const STOP_CLEAN: Duration = Duration::from_secs(30);

fn url(name: &str) -> String {
    format!("/1.0/instances/{name}")
}

/// `POST /1.0/instances/{name}` with `migration: true`, on the instance's member.
pub async fn post(
    ctx: Ctx,
    id: Identity,
    uri: &http::Uri,
    name: String,
    req: InstancePost,
) -> Result<Response> {
    let target = crate::forward::query_value(uri, "target").filter(|t| !t.is_empty());
    if !req.project.is_empty() && req.project != "default" {
        return Err(ApiError::not_found_msg("Project not found").into());
    }
    if !req.pool.is_empty() {
        return Err(ApiError::not_implemented_yet("Instance moves between storage pools").into());
    }
    let Some(target) = target else {
        return Err(ApiError::not_implemented_yet("Instance moves to another server").into());
    };
    if !req.name.is_empty() && req.name != name {
        return Err(ApiError::not_implemented_yet("Renames during a move").into());
    }
    let state = ctx.store.state();
    if !ctx.store.clustered() {
        return Err(ApiError::bad_request("Target only allowed when clustered").into());
    }
    let rec = state
        .instances
        .get(&name)
        .cloned()
        .ok_or_else(|| ApiError::not_found_msg("Instance not found"))?;
    let facts = crate::routes::instances::facts(&ctx, &state);
    let to = placement::place(&state, Some(&target), &facts)?
        .ok_or_else(|| ApiError::bad_request("Target only allowed when clustered"))?;
    if Some(to) == rec.location {
        return Err(ApiError::bad_request("Requested target server is the same as current server").into());
    }
    let dest = state
        .member_by_id(to)
        .cloned()
        .ok_or_else(|| ApiError::not_found_msg(format!("Cluster member {target:?} not found")))?;
    if rec.status == InstanceStatus::Creating || ctx.instances.building(&name) {
        return Err(ApiError::bad_request("The instance is being created").into());
    }
    let running = crate::routes::instances::is_up(&ctx, &name).await;
    let live = req.live && running;
    let mut spec = Spec::task("Migrating instance");
    spec.resources = Some(BTreeMap::from([(
        "instances".to_string(),
        Some(vec![url(&name)]),
    )]));
    let run_ctx = ctx.clone();
    Ok(crate::operations::start(&ctx, spec, move |progress| async move {
        if live {
            // As Incus: the operation starts, and setting up the source refuses.
            return Err(format!(
                "Failed setting up instance migration on source: {}",
                crate::routes::copy::NO_CRIU
            ));
        }
        move_to(&run_ctx, &id, &name, &dest, &progress).await
    }))
}

/// Moves instance `name` of this member to `dest`: stopped first if it runs (cleanly,
/// bounded) and started there after. The error says what failed; the instance is then
/// whole here (started again if it ran).
pub(crate) async fn move_to(
    ctx: &Ctx,
    id: &Identity,
    name: &str,
    dest: &Member,
    progress: &Progress,
) -> std::result::Result<(), String> {
    let guard = crate::routes::instances::Building::new(ctx, name)
        .ok_or("The instance is busy with another operation")?;
    let was_running = crate::routes::instances::is_up(ctx, name).await;
    if was_running {
        let clean = ctx.driver.stop(name, instance::Stop::Clean(STOP_CLEAN)).await;
        if clean.is_err() || crate::routes::instances::is_up(ctx, name).await {
            ctx.driver
                .stop(name, instance::Stop::Force)
                .await
                .map_err(|e| format!("Failed to stop instance: {e}"))?;
        }
        set_status(ctx, name, InstanceStatus::Stopped).await?;
    }
    let moved = transfer(ctx, name, dest, progress).await;
    if let Err(e) = moved {
        if was_running {
            let _ = ctx.driver.start(name).await;
            let _ = set_status(ctx, name, InstanceStatus::Running).await;
        }
        return Err(e);
    }
    drop(guard);
    // The record is the destination's now: this member's copy goes.
    if let Err(e) = crate::routes::instances::remove_local(ctx, name).await {
        tracing::warn!(instance = %name, error = %e, "moved, but the old copy could not be removed");
    }
    ctx.events
        .lifecycle("instance-migrated", &url(name), Some(id), None);
    if was_running {
        start_on(ctx, name, dest).await?;
    }
    Ok(())
}

/// Writes instance `name`'s status to the record; the error's message.
pub(crate) async fn set_status(
    ctx: &Ctx,
    name: &str,
    status: InstanceStatus,
) -> std::result::Result<(), String> {
    ctx.store
        .apply(InstanceCommand::SetStatus {
            name: name.to_string(),
            status,
        })
        .await
        .map(|_| ())
        .map_err(|e| crate::response::Error::from(e).0.message)
}

/// Starts instance `name` on member `dest` (through its API, as a client would).
pub(crate) async fn start_on(ctx: &Ctx, name: &str, dest: &Member) -> std::result::Result<(), String> {
    // `dest` routes the start by its own view of the record's location.
    await_view(ctx, dest, "/internal/instances?recursion=1", |list| {
        list.as_array()
            .is_some_and(|l| l.iter().any(|i| i["name"] == name))
    })
    .await;
    let body = json!({"action": "start", "timeout": -1});
    let path = format!("{}/state", url(name));
    run_on(
        ctx,
        dest,
        http::Method::PUT,
        &path,
        body,
        "start instance on",
        START_WAIT,
    )
    .await
}

/// How long [`await_view`] waits for another member to apply what this one wrote.
const VIEW_WAIT: Duration = Duration::from_secs(10);

/// Waits until member `dest` answers `GET path` (served from its own state) with
/// metadata for which `seen` holds: a member applies the replicated log a moment after
/// the one that wrote it, and a request it routes by a stale view goes astray. Bounded;
/// past the bound the caller goes on and the next request says what is wrong.
pub(crate) async fn await_view(ctx: &Ctx, dest: &Member, path: &str, seen: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + VIEW_WAIT;
    loop {
        let got = ctx
            .peers
            .request(&dest.address, http::Method::GET, path, Vec::new(), VIEW_WAIT)
            .await;
        if let Ok((200, body)) = got {
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            if seen(&v["metadata"]) {
                return;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `method path` with the JSON `body` to member `dest` and waits for the
/// operation it starts, at most `wait`; `what` names the step in errors ("start
/// instance on").
pub(crate) async fn run_on(
    ctx: &Ctx,
    dest: &Member,
    method: http::Method,
    path: &str,
    body: Value,
    what: &str,
    wait: Duration,
) -> std::result::Result<(), String> {
    let failed = |e: &dyn std::fmt::Display| format!("Failed to {what} cluster member {:?}: {e}", dest.name);
    let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    let timeout = ctx.settings().forward_timeout;
    let (status, body) = ctx
        .peers
        .request(&dest.address, method, path, body, timeout)
        .await
        .map_err(|e| failed(&e))?;
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    if status >= 400 {
        return Err(failed(&v["error"].as_str().unwrap_or("")));
    }
    let Some(op) = v["operation"].as_str() else {
        return Ok(());
    };
    let path = format!("{op}/wait?timeout={}", wait.as_secs());
    let (_, body) = ctx
        .peers
        .request(
            &dest.address,
            http::Method::GET,
            &path,
            Vec::new(),
            wait + Duration::from_secs(5),
        )
        .await
        .map_err(|e| failed(&e))?;
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    match v["metadata"]["err"].as_str() {
        Some(e) if !e.is_empty() => Err(failed(&e)),
        _ => Ok(()),
    }
}

/// The data to `dest`, then the record.
async fn transfer(
    ctx: &Ctx,
    name: &str,
    dest: &Member,
    progress: &Progress,
) -> std::result::Result<(), String> {
    let from = ctx.member_id();
    let me = ctx.server_name();
    receive_on(ctx, name, dest, &me, progress).await?;
    let applied = ctx
        .store
        .apply(InstanceCommand::Move {
            name: name.to_string(),
            from,
            to: Some(dest.id),
        })
        .await;
    match applied {
        Ok(_) => Ok(()),
        Err(e) => {
            // Not applied, or not known: whichever the state says once it settles.
            let msg = crate::response::Error::from(e).0.message;
            let moved = settled_on(ctx, name, dest.id).await;
            if moved {
                return Ok(());
            }
            discard_on(ctx, name, dest).await;
            Err(format!("Failed to record the move: {msg}"))
        }
    }
}

/// Asks `dest` to pull the instance and waits for its answer lines.
async fn receive_on(
    ctx: &Ctx,
    name: &str,
    dest: &Member,
    me: &str,
    progress: &Progress,
) -> std::result::Result<(), String> {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("from", me)
        .finish();
    let req = http::Request::post(format!("/internal/moves/{name}?{query}"))
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let bound = ctx.settings().forward_timeout;
    let who = &dest.name;
    let resp = crate::volumes::open(ctx, who, &dest.address, req, "take the instance").await?;
    let mut body = resp.into_body().into_data_stream();
    let mut line = Vec::new();
    let started = std::time::Instant::now();
    loop {
        let chunk = match tokio::time::timeout(bound, body.next()).await {
            Err(_) => {
                ctx.peers.forget(&dest.address);
                return Err(format!("Cluster member {who:?} did not answer in time"));
            }
            Ok(None) => {
                return Err(format!(
                    "Cluster member {who:?} stopped answering during the move"
                ))
            }
            Ok(Some(Err(e))) => {
                return Err(format!(
                    "Cluster member {who:?} stopped answering during the move: {e}"
                ))
            }
            Ok(Some(Ok(b))) => b,
        };
        for byte in chunk {
            if byte != b'\n' {
                if line.len() >= MAX_LINE {
                    return Err(format!("Cluster member {who:?} sent a line too long"));
                }
                line.push(byte);
                continue;
            }
            let v: Value = serde_json::from_slice(&line).unwrap_or_default();
            line.clear();
            if let Some(e) = v["error"].as_str() {
                return Err(e.to_string());
            }
            if v["done"] == true {
                return Ok(());
            }
            if let Some(n) = v["received"].as_u64() {
                let secs = started.elapsed().as_secs_f64().max(0.001);
                progress.extend_metadata(BTreeMap::from([(
                    "fs_progress".to_string(),
                    Value::String(format!(
                        "{name}: {} ({}/s)",
                        human(n as f64),
                        human(n as f64 / secs)
                    )),
                )]));
            }
        }
    }
}

/// Bytes as Incus's progress shows them (`12.34MB`).
fn human(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.2}{}", UNITS[u])
}

/// Tells `dest` to drop what it received (best effort: a copy left is removed by the
/// next move there).
async fn discard_on(ctx: &Ctx, name: &str, dest: &Member) {
    let _ = ctx
        .peers
        .request(
            &dest.address,
            http::Method::DELETE,
            &format!("/internal/moves/{name}"),
            Vec::new(),
            ctx.settings().forward_timeout,
        )
        .await;
}

/// Waits a little for the state to show where a move whose write failed ended up:
/// true if the instance is on `to`.
async fn settled_on(ctx: &Ctx, name: &str, to: cluster::MemberId) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = ctx.store.state();
        match state.instances.get(name) {
            Some(r) if r.location == Some(to) => return true,
            Some(_) if !ctx.store.clustered() => return false,
            None => return false,
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// This member's copy of `name`, when the record says it is another member's: the
/// container, its snapshots' and its own volume, removed.
async fn remove_unowned(ctx: &Ctx, name: &str) -> std::result::Result<(), String> {
    let state = ctx.store.state();
    let rec = state.instances.get(name).ok_or("Instance not found")?;
    if rec.location == ctx.member_id() {
        return Err("The instance is on this member".into());
    }
    let pool_name = rec.root_pool(&state).ok_or("No root disk device")?;
    let pool = crate::routes::instances::local_pool(ctx, &state, &pool_name)?;
    match ctx.driver.delete(name).await {
        Ok(()) | Err(instance::Error::NotFound(_)) => {}
        Err(e) => return Err(format!("Failed deleting instance: {e}")),
    }
    let n = name.to_string();
    tokio::task::spawn_blocking(move || {
        pool.delete_snapshots(&n)?;
        match pool.tree_path(Tree::Container(&n)) {
            Ok(p) if p.exists() => pool.delete_tree(Tree::Container(&n)),
            _ => Ok(()),
        }
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("Failed deleting instance volume: {e}"))
}

/// `POST /internal/moves/{name}?from=S` (members): pulls instance `name` from member
/// `S`, which holds it, and makes it here; answers lines of JSON as it goes.
pub async fn internal_receive(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Response> {
    let state = ctx.store.state();
    let from = q
        .get("from")
        .and_then(|f| state.members.get(f))
        .cloned()
        .ok_or_else(|| ApiError::bad_request("Unknown source member"))?;
    let rec = state
        .instances
        .get(&name)
        .ok_or_else(|| ApiError::not_found_msg("Instance not found"))?;
    if rec.location != Some(from.id) {
        return Err(ApiError::bad_request("The instance is not on the member that sends it").into());
    }
    let guard = crate::routes::instances::Building::new(&ctx, &name)
        .ok_or_else(|| ApiError::conflict("The instance is already being moved here"))?;
    let received = Arc::new(AtomicU64::new(0));
    let job_ctx = ctx.clone();
    let job_name = name.clone();
    let counter = received.clone();
    let job = tokio::spawn(async move {
        let _guard = guard;
        let result = receive(&job_ctx, &job_name, &from, &counter).await;
        if result.is_err() {
            let _ = remove_unowned(&job_ctx, &job_name).await;
        }
        result
    });
    let lines = Lines {
        job: Some(job),
        received,
        delivered: false,
        ctx,
        name,
    };
    let stream = futures_util::stream::unfold(lines, |mut l| async move {
        let job = l.job.as_mut()?;
        let line = tokio::select! {
            r = job => {
                l.job = None;
                l.delivered = true;
                match r {
                    Ok(Ok(())) => json!({"done": true}),
                    Ok(Err(e)) => json!({"error": e}),
                    Err(e) => json!({"error": e.to_string()}),
                }
            }
            _ = tokio::time::sleep(BEAT) => json!({"received": l.received.load(Ordering::Relaxed)}),
        };
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        Some((Ok::<_, std::io::Error>(bytes::Bytes::from(bytes)), l))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}

/// The answer's state; dropped before the outcome was sent (the source went away), it
/// removes what the move made here once the move ends: the source cannot record a move
/// it never heard completed.
struct Lines {
    job: Option<tokio::task::JoinHandle<std::result::Result<(), String>>>,
    received: Arc<AtomicU64>,
    delivered: bool,
    ctx: Ctx,
    name: String,
}

impl Drop for Lines {
    fn drop(&mut self) {
        if self.delivered {
            return;
        }
        let (Some(job), ctx, name) = (self.job.take(), self.ctx.clone(), self.name.clone()) else {
            return;
        };
        tokio::spawn(async move {
            if let Ok(Ok(())) = job.await {
                let _guard = crate::routes::instances::Building::new(&ctx, &name);
                if let Err(e) = remove_unowned(&ctx, &name).await {
                    tracing::warn!(instance = %name, error = %e, "could not remove an abandoned move");
                }
            }
        });
    }
}

/// The destination's part: every tree pulled and staged, then all put in place and
/// the container made. A failure leaves nothing (the caller removes placed trees).
async fn receive(
    ctx: &Ctx,
    name: &str,
    from: &Member,
    received: &AtomicU64,
) -> std::result::Result<(), String> {
    // What an earlier, interrupted try left here.
    remove_unowned(ctx, name).await?;
    let state = ctx.store.state();
    let rec = state.instances.get(name).cloned().ok_or("Instance not found")?;
    let pool_name = rec.root_pool(&state).ok_or("No root disk device")?;
    let pool: Arc<Box<dyn storage::Pool>> =
        Arc::new(crate::routes::instances::local_pool(ctx, &state, &pool_name)?);
    let snaps: Vec<String> = state.snapshots_of(name).iter().map(|s| s.name.clone()).collect();
    let mut staged: Vec<std::path::PathBuf> = Vec::new();
    let pulled = async {
        for snap in std::iter::once(None).chain(snaps.iter().map(Some)) {
            let p = pool.clone();
            let (n, s) = (name.to_string(), snap.cloned());
            let dir = tokio::task::spawn_blocking(move || match &s {
                Some(s) => p.stage_tree(Tree::Snapshot(&n, s)),
                None => p.stage_tree(Tree::Container(&n)),
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("Failed creating instance volume: {e}"))?;
            staged.push(dir.clone());
            crate::volumes::fetch(
                ctx,
                &from.name,
                &from.address,
                name,
                snap.map(String::as_str),
                dir,
                Some(received),
            )
            .await?;
        }
        Ok::<(), String>(())
    };
    let pulled = pulled.await;
    let expanded = rec.expanded_config(&state);
    let privileged = expanded.get("security.privileged").is_some_and(|v| v == "true");
    let owner = crate::routes::copy::volume_owner(privileged);
    let placed = match pulled {
        Err(e) => Err((e, staged)),
        Ok(()) => {
            let (p, n, s) = (pool.clone(), name.to_string(), snaps.clone());
            match tokio::task::spawn_blocking(move || {
                crate::routes::copy::commit_all(&**p, &staged, &n, &s, owner)
            })
            .await
            {
                Ok(r) => r.map_err(|(e, left)| (format!("Failed creating instance volume: {e}"), left)),
                Err(e) => Err((e.to_string(), Vec::new())),
            }
        }
    };
    let path = match placed {
        Ok(p) => p,
        Err((e, left)) => {
            let _ = tokio::task::spawn_blocking(move || {
                for p in left {
                    let _ = std::fs::remove_dir_all(p);
                }
            })
            .await;
            return Err(e);
        }
    };
    crate::routes::instances::make_container(ctx, &state, &rec, name, &path).await
}

/// `DELETE /internal/moves/{name}` (members): drops this member's copy of an instance
/// that another member holds (a move whose record did not change).
pub async fn internal_discard(State(ctx): State<Ctx>, Path(name): Path<String>) -> Result<Response> {
    let _guard = crate::routes::instances::Building::new(&ctx, &name)
        .ok_or_else(|| ApiError::conflict("The instance is being moved here"))?;
    remove_unowned(&ctx, &name).await.map_err(ApiError::bad_request)?;
    Ok(crate::response::sync(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_progress_in_incus_units() {
        assert_eq!(human(0.0), "0.00B");
        assert_eq!(human(12_340_000.0), "12.34MB");
        assert_eq!(human(1_500.0), "1.50kB");
    }
}
