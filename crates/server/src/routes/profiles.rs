//! `/1.0/profiles`: replicated, so any member answers from its state snapshot and writes
//! through the store. The checks that depend on other state (a disk's pool exists) run
//! where the command applies (`cluster::state::profiles`); the ones Incus answers with
//! its own statuses (403 for the `default` profile, 409 for a taken name) run here first.

use std::collections::HashMap;

use api::types::{Profile, ProfilePost, ProfilePut, ProfilesPost};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use axum::Extension;
use cluster::{ProfileCommand, DEFAULT_PROFILE};
use trust::Identity;

use crate::context::Ctx;
use crate::response::{
    check_if_match, created, json_body, listing, recursion, sync, sync_etag, ApiError, Result,
};

fn not_found() -> crate::response::Error {
    ApiError::not_found_msg("Profile not found").into()
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(ApiError::bad_request("No name provided").into());
    }
    match storage::api_name_problem(name) {
        Some(why) => Err(ApiError::bad_request(format!("Invalid profile name: {why}")).into()),
        None => Ok(()),
    }
}

/// The profile as clients see it, with the instances that use it.
fn render(state: &cluster::State, p: &cluster::Profile) -> Profile {
    Profile {
        put: ProfilePut {
            config: p.config.clone(),
            description: p.description.clone(),
            devices: p.devices.clone(),
        },
        name: p.name.clone(),
        used_by: state.profile_used_by(&p.name),
        project: "default".into(),
    }
}

/// What the ETag covers, as Incus: config, description, devices.
fn etag_basis(p: &Profile) -> impl serde::Serialize {
    (
        p.put.config.clone(),
        p.put.description.clone(),
        p.put.devices.clone(),
    )
}

fn lifecycle(ctx: &Ctx, action: &str, name: &str, id: &Identity) {
    ctx.events
        .lifecycle(action, &format!("/1.0/profiles/{name}"), Some(id), None);
}

pub async fn list(State(ctx): State<Ctx>, Query(q): Query<HashMap<String, String>>) -> Result<Response> {
    let state = ctx.store.state();
    let all: Vec<(String, Profile)> = state
        .all_profiles()
        .map(|p| (p.name.clone(), render(&state, &p)))
        .collect();
    Ok(listing(
        recursion(&q),
        "/1.0/profiles",
        all.iter().map(|(n, p)| (n, p.clone())),
    ))
}

pub async fn get(State(ctx): State<Ctx>, Path(name): Path<String>) -> Result<Response> {
    let state = ctx.store.state();
    let p = render(&state, &state.profile(&name).ok_or_else(not_found)?);
    let basis = etag_basis(&p);
    Ok(sync_etag(p, &basis))
}

pub async fn create(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    body: Body,
) -> Result<Response> {
    let req: ProfilesPost = json_body(body).await?;
    check_name(&req.name)?;
    if ctx.store.state().profile(&req.name).is_some() {
        return Err(ApiError::conflict(format!(
            "Error inserting {:?} into database: The profile already exists",
            req.name
        ))
        .into());
    }
    ctx.store
        .apply(ProfileCommand::Create {
            profile: cluster::Profile {
                name: req.name.clone(),
                description: req.put.description,
                config: req.put.config,
                devices: req.put.devices,
            },
        })
        .await?;
    lifecycle(&ctx, "profile-created", &req.name, &id);
    Ok(created(&format!("/1.0/profiles/{}", req.name)))
}

pub async fn put(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let state = ctx.store.state();
    let current = state.profile(&name).ok_or_else(not_found)?;
    check_if_match(&headers, &etag_basis(&render(&state, &current)))?;
    let mut req: ProfilePut = json_body(body).await?;
    if method == Method::PATCH {
        for (k, v) in &current.config {
            req.config.entry(k.clone()).or_insert_with(|| v.clone());
        }
        for (k, v) in &current.devices {
            req.devices.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    ctx.store
        .apply(ProfileCommand::Update {
            profile: cluster::Profile {
                name: name.clone(),
                description: req.description,
                config: req.config,
                devices: req.devices,
            },
        })
        .await?;
    lifecycle(&ctx, "profile-updated", &name, &id);
    Ok(sync(serde_json::json!({})))
}

pub async fn rename(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    if name == DEFAULT_PROFILE {
        return Err(ApiError::new(403, "The \"default\" profile cannot be renamed").into());
    }
    let req: ProfilePost = json_body(body).await?;
    check_name(&req.name)?;
    let state = ctx.store.state();
    if state.profile(&name).is_none() {
        return Err(ApiError::not_found_msg(format!("Profile {name:?} doesn't exist")).into());
    }
    if state.profile(&req.name).is_some() {
        return Err(ApiError::conflict(format!("Profile {:?} already exists", req.name)).into());
    }
    ctx.store
        .apply(ProfileCommand::Rename {
            name: name.clone(),
            new_name: req.name.clone(),
        })
        .await?;
    lifecycle(&ctx, "profile-renamed", &req.name, &id);
    Ok(created(&format!("/1.0/profiles/{}", req.name)))
}

pub async fn delete(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
) -> Result<Response> {
    if name == DEFAULT_PROFILE {
        return Err(ApiError::new(403, "The \"default\" profile cannot be deleted").into());
    }
    ctx.store
        .apply(ProfileCommand::Delete { name: name.clone() })
        .await?;
    lifecycle(&ctx, "profile-deleted", &name, &id);
    Ok(sync(serde_json::json!({})))
}
