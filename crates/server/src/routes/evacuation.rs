//! `POST /1.0/cluster/members/{name}/state`: evacuate and restore a member, run by that
//! member (the route table sends the request there, `Owner::Member`).
//!
//! ```text
//!  evacuate:  SetEvacuated(true)  (refused if it already is: "already evacuated")
//!             each instance here (AT_ONCE at a time), running: "Stopping \"c1\" in project \"default\""
//!               clean stop bounded by boot.host_shutdown_timeout, then forced
//!               (force-stop: forced at once); its last state kept RUNNING
//!             a failure: SetEvacuated(false), the error; a second run goes on
//!             from what is still running
//!  restore:   each instance here with volatile.last_state.power RUNNING, not running:
//!               "Starting \"c1\" in project \"default\""
//!             SetEvacuated(false)  (refused unless evacuated: "already restored")
//! ```
//!
//! While evacuated, placement skips the member and a `--target` to it is refused
//! (`cluster::placement`), and it starts nothing by itself at member start. The
//! instance's `cluster.evacuate` (or the request's `mode`) chooses how it leaves
//! ([`action`]): `auto` (the default) and `migrate` move it, stopped, to the member
//! placement picks ([`super::migrate::move_to`]), record `volatile.evacuate.origin`, and
//! start it there if it ran; `live-migrate` does the same (no CRIU here, so stateless);
//! `stop`, `stateful-stop` and `force-stop` stop it in place. With no member to take
//! it, it is stopped in place, as Incus does. A restore first starts what was stopped
//! here, then, with the member back in service, asks each instance's member to move it
//! back (`POST /1.0/instances/{name}?target=`), clearing its origin; a failure puts the
//! member back to evacuated, and both can be run again.
//!
//! Both go through the instances [`AT_ONCE`] at a time: an instance's turn is mostly
//! waiting (its clean shutdown, the other member's unpack and start), so one at a time
//! leaves the members idle. Each instance's own sequence (stop, move, start) is
//! unchanged, and so is what a failure leaves: no further instance starts, those under
//! way finish, and the rerun picks up what is left. Placement counts the instances
//! already on their way where they go ([`Sent`]), so they spread as one at a time would.

use std::collections::BTreeMap;
use std::time::Duration;

use api::types::ClusterMemberStatePost;
use api::ApiError;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Extension;
use cluster::{InstanceCommand, InstanceStatus, MemberCommand};
use serde_json::Value;
use trust::Identity;

use crate::context::Ctx;
use crate::ops::{Progress, Spec};
use crate::response::{json_body, Result};

/// `boot.host_shutdown_timeout`'s default, in seconds (as Incus).
const SHUTDOWN_TIMEOUT: u64 = 30;

/// How an instance leaves an evacuated member, from the request's mode or its own
/// `cluster.evacuate`: forced or clean.
fn stop_how(mode: &str, own: Option<&str>, expanded: &BTreeMap<String, String>) -> instance::Stop {
    let action = match mode {
        "" | "auto" => own.unwrap_or("auto"),
        m => m,
    };
    if action == "force-stop" {
        return instance::Stop::Force;
    }
    let secs = expanded
        .get("boot.host_shutdown_timeout")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(SHUTDOWN_TIMEOUT);
    instance::Stop::Clean(Duration::from_secs(secs.min(3600)))
}

/// What an evacuation does with an instance, as Incus decides it for containers.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Stop,
    Migrate,
}

/// The request's mode overrides the instance's `cluster.evacuate` unless it is `auto`;
/// `auto` migrates a container whose disks are all its root disk (another disk may be
/// local to the member), else stops it.
fn action(mode: &str, own: Option<&str>, devices: &BTreeMap<String, BTreeMap<String, String>>) -> Action {
    let chosen = match mode {
        "" | "auto" => own.unwrap_or("auto"),
        m => m,
    };
    match chosen {
        "migrate" | "live-migrate" => Action::Migrate,
        "auto" => {
            let movable = devices.values().all(|d| {
                d.get("type").map(String::as_str) == Some("disk")
                    && d.get("path").map(String::as_str) == Some("/")
            });
            if movable {
                Action::Migrate
            } else {
                Action::Stop
            }
        }
        _ => Action::Stop,
    }
}

fn progress_line(progress: &Progress, line: String) {
    progress.extend_metadata(BTreeMap::from([(
        "evacuation_progress".to_string(),
        Value::String(line),
    )]));
}

/// The handler.
pub async fn post(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    if !ctx.store.clustered() {
        return Err(ApiError::bad_request("This server is not clustered").into());
    }
    let mut req: ClusterMemberStatePost = json_body(body).await?;
    let state = ctx.store.state();
    if !state.members.contains_key(&name) {
        return Err(ApiError::not_found_msg("Cluster member not found").into());
    }
    match req.action.as_str() {
        "evacuate" => {
            if !req.mode.is_empty() && !cluster::state::EVACUATE_MODES.contains(&req.mode.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "Invalid value {:?} (not one of {:?})",
                    req.mode,
                    cluster::state::EVACUATE_MODES
                ))
                .into());
            }
            if state.members.len() == 1 {
                if req.mode.is_empty() || req.mode == "auto" {
                    req.mode = "stop".into();
                } else if req.mode != "stop" {
                    return Err(ApiError::bad_request(format!(
                        "Can't perform {:?} evacuation on a single node cluster",
                        req.mode
                    ))
                    .into());
                }
            }
            let run_ctx = ctx.clone();
            Ok(crate::operations::start(
                &ctx,
                Spec::task("Evacuating cluster member"),
                move |progress| async move { evacuate(&run_ctx, &id, &name, &req.mode, &progress).await },
            ))
        }
        "restore" => {
            if !req.mode.is_empty() && req.mode != "skip" {
                return Err(ApiError::bad_request(format!("Invalid restore mode {:?}", req.mode)).into());
            }
            let skip = req.mode == "skip";
            let run_ctx = ctx.clone();
            Ok(crate::operations::start(
                &ctx,
                Spec::task("Restoring cluster member"),
                move |progress| async move { restore(&run_ctx, &id, &name, skip, &progress).await },
            ))
        }
        other => Err(ApiError::bad_request(format!("Unknown action {other:?}")).into()),
    }
}

fn member_url(name: &str) -> String {
    format!("/1.0/cluster/members/{name}")
}

async fn set_evacuated(ctx: &Ctx, name: &str, evacuated: bool) -> std::result::Result<(), String> {
    ctx.store
        .apply(MemberCommand::SetEvacuated {
            name: name.to_string(),
            evacuated,
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn evacuate(
    ctx: &Ctx,
    id: &Identity,
    member: &str,
    mode: &str,
    progress: &Progress,
) -> std::result::Result<(), String> {
    set_evacuated(ctx, member, true).await?;
    if let Err(e) = leave_all(ctx, id, member, mode, progress).await {
        // As Incus: the member is back in service, and the evacuation can be run again.
        let _ = set_evacuated(ctx, member, false).await;
        return Err(format!("Failed to evacuate instances: {e}"));
    }
    ctx.events
        .lifecycle("cluster-member-evacuated", &member_url(member), Some(id), None);
    Ok(())
}

/// How many instances an evacuation or a restore handles at once. Most of an
/// instance's turn is waiting (its clean shutdown, the other member's unpack and start),
/// so a few at once shorten the whole without loading the members; the bound keeps a
/// member with hundreds of instances from starting hundreds of transfers.
const AT_ONCE: usize = 4;

/// Runs `each` on every item, [`AT_ONCE`] at a time; after the first error no further
/// item starts (those under way finish), and that error is the result.
async fn bounded<T, F, Fut>(items: Vec<T>, each: F) -> std::result::Result<(), String>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), String>>,
{
    use futures_util::StreamExt as _;
    let failed = std::sync::atomic::AtomicBool::new(false);
    let results: Vec<std::result::Result<(), String>> = futures_util::stream::iter(items)
        .map(|item| {
            let (failed, run) = (&failed, &each);
            async move {
                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                    return Ok(());
                }
                let r = run(item).await;
                if r.is_err() {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                r
            }
        })
        .buffer_unordered(AT_ONCE)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Where the instances an evacuation is sending are going, so that placing the next
/// one counts them where they go, not on the member they leave.
#[derive(Default)]
struct Sent(std::sync::Mutex<BTreeMap<String, cluster::MemberId>>);

impl Sent {
    /// The member placement picks for `name`, recorded as its destination; `None` when
    /// no other member can take it.
    fn place(&self, ctx: &Ctx, name: &str) -> Option<cluster::Member> {
        let now = ctx.store.state();
        let facts = super::instances::facts(ctx, &now);
        let mut sent = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut plan = (*now).clone();
        for (n, to) in sent.iter() {
            if let Some(r) = plan.instances.get_mut(n) {
                r.location = Some(*to);
            }
        }
        let dest = match cluster::placement::place(&plan, None, &facts) {
            Ok(Some(m)) => now.member_by_id(m).cloned(),
            _ => None,
        }
        .filter(|d| Some(d.id) != ctx.member_id())?;
        sent.insert(name.to_string(), dest.id);
        Some(dest)
    }
}

/// Stops this member's running instances, keeping their last state `RUNNING`, and moves
/// those whose action is to migrate to the member placement picks, [`AT_ONCE`] at a
/// time.
async fn leave_all(
    ctx: &Ctx,
    id: &Identity,
    member: &str,
    mode: &str,
    progress: &Progress,
) -> std::result::Result<(), String> {
    let state = ctx.store.state();
    let here = ctx.member_id();
    let recs: Vec<&cluster::InstanceRecord> =
        state.instances.values().filter(|r| r.location == here).collect();
    let sent = Sent::default();
    bounded(recs, |rec| {
        leave_one(ctx, id, member, mode, &state, rec, &sent, progress)
    })
    .await
}

/// One instance's part of [`leave_all`].
#[allow(clippy::too_many_arguments)]
async fn leave_one(
    ctx: &Ctx,
    id: &Identity,
    member: &str,
    mode: &str,
    state: &cluster::State,
    rec: &cluster::InstanceRecord,
    sent: &Sent,
    progress: &Progress,
) -> std::result::Result<(), String> {
    let expanded = rec.expanded_config(state);
    let own = expanded.get(cluster::state::EVACUATE_KEY).map(String::as_str);
    let act = action(mode, own, &rec.expanded_devices(state));
    let running = super::instances::is_up(ctx, &rec.name).await;
    if running {
        stop_one(ctx, id, &rec.name, stop_how(mode, own, &expanded), progress).await?;
    }
    if act != Action::Migrate {
        return Ok(());
    }
    let Some(dest) = sent.place(ctx, &rec.name) else {
        // No member can take it: stopped in place, as Incus does.
        return Ok(());
    };
    if !rec.config.contains_key(ORIGIN) {
        set_volatile(ctx, &rec.name, ORIGIN, Some(member)).await?;
    }
    progress_line(
        progress,
        format!(
            "Migrating {:?} in project \"default\" to {:?}",
            rec.name, dest.name
        ),
    );
    super::migrate::move_to(ctx, id, &rec.name, &dest, progress)
        .await
        .map_err(|e| {
            format!(
                "Failed to migrate instance {:?} in project \"default\": {e}",
                rec.name
            )
        })?;
    if running {
        progress_line(
            progress,
            format!("Starting {:?} in project \"default\"", rec.name),
        );
        super::migrate::start_on(ctx, &rec.name, &dest).await?;
    }
    Ok(())
}

/// `volatile.evacuate.origin`: the member an evacuation moved an instance from.
const ORIGIN: &str = "volatile.evacuate.origin";

async fn set_volatile(
    ctx: &Ctx,
    name: &str,
    key: &str,
    value: Option<&str>,
) -> std::result::Result<(), String> {
    ctx.store
        .apply(InstanceCommand::SetVolatile {
            name: name.to_string(),
            keys: BTreeMap::from([(key.to_string(), value.map(str::to_string))]),
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Stops instance `name` here (`how`, then forced), its last state kept `RUNNING`.
async fn stop_one(
    ctx: &Ctx,
    id: &Identity,
    name: &str,
    how: instance::Stop,
    progress: &Progress,
) -> std::result::Result<(), String> {
    progress_line(progress, format!("Stopping {name:?} in project \"default\""));
    let stopped = match ctx.driver.stop(name, how).await {
        Err(_) if how != instance::Stop::Force => ctx.driver.stop(name, instance::Stop::Force).await,
        other => other,
    };
    stopped.map_err(|e| format!("Failed to stop instance {name:?} in project \"default\": {e}"))?;
    super::migrate::set_status(ctx, name, InstanceStatus::Stopped).await?;
    set_volatile(
        ctx,
        name,
        cluster::state::LAST_STATE,
        Some(cluster::state::POWER_RUNNING),
    )
    .await?;
    let event = if how == instance::Stop::Force {
        "instance-stopped"
    } else {
        "instance-shutdown"
    };
    ctx.events
        .lifecycle(event, &format!("/1.0/instances/{name}"), Some(id), None);
    Ok(())
}

async fn restore(
    ctx: &Ctx,
    id: &Identity,
    member: &str,
    skip: bool,
    progress: &Progress,
) -> std::result::Result<(), String> {
    let state = ctx.store.state();
    let here = ctx.member_id();
    if !here.is_some_and(|m| state.member_settings(m).evacuated) {
        return Err("Cluster member is already restored".into());
    }
    if !skip {
        let recs: Vec<&cluster::InstanceRecord> =
            state.instances.values().filter(|r| r.location == here).collect();
        bounded(recs, |rec| start_again(ctx, id, rec, progress)).await?;
    }
    set_evacuated(ctx, member, false).await?;
    if !skip {
        if let Err(e) = bring_back(ctx, member, progress).await {
            let _ = set_evacuated(ctx, member, true).await;
            return Err(format!("Failed to restore instances: {e}"));
        }
    }
    ctx.events
        .lifecycle("cluster-member-restored", &member_url(member), Some(id), None);
    Ok(())
}

/// Starts instance `rec` here again if an evacuation stopped it in place (its last
/// state `RUNNING`, and stopped).
async fn start_again(
    ctx: &Ctx,
    id: &Identity,
    rec: &cluster::InstanceRecord,
    progress: &Progress,
) -> std::result::Result<(), String> {
    if rec.config.get(cluster::state::LAST_STATE).map(String::as_str) != Some(cluster::state::POWER_RUNNING) {
        return Ok(());
    }
    let stopped = super::instances::runtime_status(ctx, &rec.name).await == Some(instance::Status::Stopped);
    if !stopped {
        return Ok(());
    }
    progress_line(
        progress,
        format!("Starting {:?} in project \"default\"", rec.name),
    );
    ctx.driver
        .start(&rec.name)
        .await
        .map_err(|e| format!("Failed to start instance {:?}: {e}", rec.name))?;
    super::migrate::set_status(ctx, &rec.name, InstanceStatus::Running).await?;
    ctx.events.lifecycle(
        "instance-started",
        &format!("/1.0/instances/{}", rec.name),
        Some(id),
        None,
    );
    Ok(())
}

/// Moves each instance an evacuation took from `member` back here, through its current
/// member (which runs the move, stopping and starting it again if it runs), then clears
/// its origin.
async fn bring_back(ctx: &Ctx, member: &str, progress: &Progress) -> std::result::Result<(), String> {
    let state = ctx.store.state();
    let recs: Vec<&cluster::InstanceRecord> = state
        .instances
        .values()
        .filter(|r| r.config.get(ORIGIN).map(String::as_str) == Some(member))
        .collect();
    bounded(recs, |rec| come_back(ctx, member, &state, rec, progress)).await
}

/// One instance's part of [`bring_back`].
async fn come_back(
    ctx: &Ctx,
    member: &str,
    state: &cluster::State,
    rec: &cluster::InstanceRecord,
    progress: &Progress,
) -> std::result::Result<(), String> {
    if rec.location != ctx.member_id() {
        let Some(owner) = rec.location.and_then(|m| state.member_by_id(m)) else {
            return Ok(());
        };
        progress_line(
            progress,
            format!(
                "Migrating {:?} in project \"default\" from {:?}",
                rec.name, owner.name
            ),
        );
        // The owner places the move by its own view, which must show this member
        // back in service.
        super::migrate::await_view(ctx, owner, &member_url(member), |m| {
            m["status"].as_str().is_some_and(|s| s != "Evacuated")
        })
        .await;
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("target", member)
            .finish();
        let body = serde_json::json!({"name": rec.name, "migration": true, "live": false});
        super::migrate::run_on(
            ctx,
            owner,
            http::Method::POST,
            &format!("/1.0/instances/{}?{query}", rec.name),
            body,
            "migrate instance from",
            super::migrate::MOVE_WAIT,
        )
        .await?;
    }
    set_volatile(ctx, &rec.name, ORIGIN, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn t30_after_a_failure_no_further_instance_starts() {
        let ran = std::sync::Mutex::new(Vec::new());
        let r = bounded((0..40).collect(), |i: u32| {
            let ran = &ran;
            async move {
                tokio::task::yield_now().await;
                ran.lock().unwrap().push(i);
                if i == 5 {
                    Err(format!("{i} failed"))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert_eq!(r, Err("5 failed".to_string()));
        let ran = ran.into_inner().unwrap();
        assert!(ran.contains(&5));
        assert!(ran.len() <= 5 + AT_ONCE, "only those under way finish: {ran:?}");
        let all = std::sync::atomic::AtomicU32::new(0);
        let ok = bounded((0..40).collect(), |_: u32| {
            let all = &all;
            async move {
                all.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
        })
        .await;
        assert_eq!((ok, all.into_inner()), (Ok(()), 40));
    }

    #[test]
    fn t10_how_an_instance_leaves() {
        let none = BTreeMap::new();
        let clean = instance::Stop::Clean(Duration::from_secs(SHUTDOWN_TIMEOUT));
        assert_eq!(stop_how("", None, &none), clean);
        assert_eq!(stop_how("", Some("force-stop"), &none), instance::Stop::Force);
        assert_eq!(stop_how("auto", Some("force-stop"), &none), instance::Stop::Force);
        assert_eq!(
            stop_how("stop", Some("force-stop"), &none),
            clean,
            "the request's mode wins"
        );
        assert_eq!(stop_how("force-stop", Some("stop"), &none), instance::Stop::Force);
        assert_eq!(
            stop_how("migrate", None, &none),
            clean,
            "a running instance is stopped cleanly before it moves"
        );
        let t = BTreeMap::from([("boot.host_shutdown_timeout".to_string(), "5".to_string())]);
        assert_eq!(
            stop_how("", None, &t),
            instance::Stop::Clean(Duration::from_secs(5))
        );
    }

    #[test]
    fn t11_what_an_evacuation_does_with_an_instance() {
        let dev = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let root = BTreeMap::from([(
            "root".to_string(),
            dev(&[("type", "disk"), ("path", "/"), ("pool", "p")]),
        )]);
        let mut data = root.clone();
        data.insert(
            "data".to_string(),
            dev(&[("type", "disk"), ("path", "/srv"), ("source", "/srv")]),
        );
        assert_eq!(
            action("", None, &root),
            Action::Migrate,
            "auto moves a container on its root disk"
        );
        assert_eq!(
            action("", None, &data),
            Action::Stop,
            "another disk may be the member's own"
        );
        assert_eq!(action("", Some("migrate"), &data), Action::Migrate);
        assert_eq!(action("", Some("live-migrate"), &root), Action::Migrate);
        for own in ["stop", "force-stop", "stateful-stop"] {
            assert_eq!(action("", Some(own), &root), Action::Stop, "{own}");
            assert_eq!(action("auto", Some(own), &root), Action::Stop, "{own}");
        }
        assert_eq!(
            action("stop", Some("migrate"), &root),
            Action::Stop,
            "the request's mode wins"
        );
        assert_eq!(action("migrate", Some("stop"), &data), Action::Migrate);
    }
}
