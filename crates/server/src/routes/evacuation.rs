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
//! instance's `cluster.evacuate` (or the request's `mode`) chooses how it leaves
//! ([`action`]): `auto` (the default) and `migrate` move it, stopped, to the member
//! placement picks ([`super::migrate::move_to`]), record `volatile.evacuate.origin`, and
//! start it there if it ran; `live-migrate` does the same (no CRIU here, so stateless);
//! `stop`, `stateful-stop` and `force-stop` stop it in place. With no member to take
//! it, it is stopped in place, as Incus does. A restore first starts what was stopped
//! here, then, with the member back in service, asks each instance's member to move it
//! back (`POST /1.0/instances/{name}?target=`), clearing its origin; a failure puts the
//! member back to evacuated, and both can be run again.

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

/// Stops this member's running instances, keeping their last state `RUNNING`, and moves
/// those whose action is to migrate to the member placement picks.
async fn leave_all(
    ctx: &Ctx,
    id: &Identity,
    member: &str,
    mode: &str,
    progress: &Progress,
) -> std::result::Result<(), String> {
    let state = ctx.store.state();
    let here = ctx.member_id();
    for rec in state.instances.values().filter(|r| r.location == here) {
        let expanded = rec.expanded_config(&state);
        let own = expanded.get(cluster::state::EVACUATE_KEY).map(String::as_str);
        let act = action(mode, own, &rec.expanded_devices(&state));
        let running = super::instances::is_up(ctx, &rec.name).await;
        if running {
            stop_one(ctx, id, &rec.name, stop_how(mode, own, &expanded), progress).await?;
        }
        if act != Action::Migrate {
            continue;
        }
        let now = ctx.store.state();
        let facts = super::instances::facts(ctx, &now);
        let dest = match cluster::placement::place(&now, None, &facts) {
            Ok(Some(m)) => now.member_by_id(m).cloned(),
            _ => None,
        };
        let Some(dest) = dest.filter(|d| Some(d.id) != here) else {
            // No member can take it: stopped in place, as Incus does.
            continue;
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
            super::migrate::set_status(ctx, &rec.name, InstanceStatus::Running).await?;
            ctx.events.lifecycle(
                "instance-started",
                &format!("/1.0/instances/{}", rec.name),
                Some(id),
                None,
            );
        }
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

/// Moves each instance an evacuation took from `member` back here, through its current
/// member (which runs the move, stopping and starting it again if it runs), then clears
/// its origin.
async fn bring_back(ctx: &Ctx, member: &str, progress: &Progress) -> std::result::Result<(), String> {
    let state = ctx.store.state();
    let here = ctx.member_id();
    for rec in state.instances.values() {
        if rec.config.get(ORIGIN).map(String::as_str) != Some(member) {
            continue;
        }
        if rec.location != here {
            let Some(owner) = rec.location.and_then(|m| state.member_by_id(m)) else {
                continue;
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
        set_volatile(ctx, &rec.name, ORIGIN, None).await?;
    }
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
