//! `POST /1.0/cluster/members/{name}/state`: evacuate and restore a member, run by that
//! member (the route table sends the request there, `Owner::Member`).
//!
//! ```text
//!  evacuate:  SetEvacuated(true)  (refused if it already is: "already evacuated")
//!             each instance here, running: "Stopping \"c1\" in project \"default\""
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
//! instance's `cluster.evacuate` (or the request's `mode`) chooses how it leaves:
//! this server migrates nothing yet, so `auto`, `migrate` and `live-migrate` stop the
//! instance in place, as Incus does when no member can take it; `stateful-stop` is a
//! clean stop (no checkpoints here).

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
    if let Err(e) = stop_all(ctx, id, mode, progress).await {
        // As Incus: the member is back in service, and the evacuation can be run again.
        let _ = set_evacuated(ctx, member, false).await;
        return Err(format!("Failed to evacuate instances: {e}"));
    }
    ctx.events
        .lifecycle("cluster-member-evacuated", &member_url(member), Some(id), None);
    Ok(())
}

/// Stops this member's running instances, keeping their last state `RUNNING`.
async fn stop_all(
    ctx: &Ctx,
    id: &Identity,
    mode: &str,
    progress: &Progress,
) -> std::result::Result<(), String> {
    let state = ctx.store.state();
    let here = ctx.member_id();
    for rec in state.instances.values().filter(|r| r.location == here) {
        if !super::instances::is_up(ctx, &rec.name).await {
            continue;
        }
        progress_line(
            progress,
            format!("Stopping {:?} in project \"default\"", rec.name),
        );
        let expanded = rec.expanded_config(&state);
        let own = expanded.get(cluster::state::EVACUATE_KEY).map(String::as_str);
        let how = stop_how(mode, own, &expanded);
        let stopped = match ctx.driver.stop(&rec.name, how).await {
            Err(_) if how != instance::Stop::Force => ctx.driver.stop(&rec.name, instance::Stop::Force).await,
            other => other,
        };
        stopped.map_err(|e| {
            format!(
                "Failed to stop instance {:?} in project \"default\": {e}",
                rec.name
            )
        })?;
        ctx.store
            .apply(InstanceCommand::SetStatus {
                name: rec.name.clone(),
                status: InstanceStatus::Stopped,
            })
            .await
            .map_err(|e| e.to_string())?;
        ctx.store
            .apply(InstanceCommand::SetVolatile {
                name: rec.name.clone(),
                keys: BTreeMap::from([(
                    cluster::state::LAST_STATE.to_string(),
                    Some(cluster::state::POWER_RUNNING.to_string()),
                )]),
            })
            .await
            .map_err(|e| e.to_string())?;
        let event = if how == instance::Stop::Force {
            "instance-stopped"
        } else {
            "instance-shutdown"
        };
        ctx.events
            .lifecycle(event, &format!("/1.0/instances/{}", rec.name), Some(id), None);
    }
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
        for rec in state.instances.values().filter(|r| r.location == here) {
            if rec.config.get(cluster::state::LAST_STATE).map(String::as_str)
                != Some(cluster::state::POWER_RUNNING)
            {
                continue;
            }
            let stopped =
                super::instances::runtime_status(ctx, &rec.name).await == Some(instance::Status::Stopped);
            if !stopped {
                continue;
            }
            progress_line(
                progress,
                format!("Starting {:?} in project \"default\"", rec.name),
            );
            ctx.driver
                .start(&rec.name)
                .await
                .map_err(|e| format!("Failed to start instance {:?}: {e}", rec.name))?;
            ctx.store
                .apply(InstanceCommand::SetStatus {
                    name: rec.name.clone(),
                    status: InstanceStatus::Running,
                })
                .await
                .map_err(|e| e.to_string())?;
            ctx.events.lifecycle(
                "instance-started",
                &format!("/1.0/instances/{}", rec.name),
                Some(id),
                None,
            );
        }
    }
    set_evacuated(ctx, member, false).await?;
    ctx.events
        .lifecycle("cluster-member-restored", &member_url(member), Some(id), None);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "no migration: stopped in place"
        );
        let t = BTreeMap::from([("boot.host_shutdown_timeout".to_string(), "5".to_string())]);
        assert_eq!(
            stop_how("", None, &t),
            instance::Stop::Clean(Duration::from_secs(5))
        );
    }
}
