//! `/1.0/images`: images and their aliases, answered by any member from the replicated
//! records; the upload lands on the member that receives it and is copied on from there
//! (`crate::images`).
//!
//! ```text
//!  POST /1.0/images  body ──stream──> image::import into <state>/images (400 + nothing
//!                    left on a bad upload) ──> 202 "Downloading image":
//!                    CreateImage{record, here, X-Incus-aliases} ──> replicate ──> Success
//!                    metadata {fingerprint, size}
//!  GET  /1.0/images/<fp>/export   here if held, else forwarded to an online holder
//!  DELETE /1.0/images/<fp>        202: DeleteImage; each holder removes its files when
//!                                 it sees the record gone (crate::images::on_state_change)
//!  GET  /internal/images/<fp>             (members) the local files, as an export
//!  POST /internal/images/<fp>/fetch       (members) pull the image from a holder
//! ```
//!
//! Fingerprints in paths may be unique prefixes, as in Incus.

use std::collections::{BTreeMap, HashMap};

use api::types::{Image, ImageAlias, ImageAliasesEntryPost, ImageAliasesEntryPut, ImagePut, Timestamp};
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use cluster::{ImageCommand, ImageLookup, ImageRecord};
use futures_util::StreamExt;
use http::HeaderMap;
use serde_json::{json, Value};
use trust::Identity;

use crate::context::Ctx;
use crate::images::api_error;
use crate::ops::Spec;
use crate::response::{check_if_match, created, json_body, recursion, sync, sync_etag, ApiError, Result};

/// The image `prefix` names (a whole fingerprint or a unique prefix).
fn find<'a>(state: &'a cluster::State, prefix: &str) -> Result<&'a ImageRecord> {
    state.find_image(prefix).map_err(|e| {
        match e {
            ImageLookup::NotFound => ApiError::not_found_msg("Image not found"),
            ImageLookup::Ambiguous => ApiError::bad_request("More than one image matches"),
        }
        .into()
    })
}

/// Whether `id` may see `image`: a trusted caller any, anyone else the public ones (as
/// Incus, which answers "not found" for the others).
fn visible(id: &Identity, image: &Image) -> bool {
    id.trusted() || image.put.public
}

/// The image `prefix` names, if `id` may see it (the public routes: Incus names the
/// fingerprint asked for in their "not found").
fn find_visible<'a>(state: &'a cluster::State, id: &Identity, prefix: &str) -> Result<&'a ImageRecord> {
    match state.find_image(prefix) {
        Ok(record) if visible(id, &record.image) => Ok(record),
        Err(ImageLookup::Ambiguous) => Err(ApiError::bad_request("More than one image matches").into()),
        _ => Err(ApiError::not_found_msg(format!("Image {prefix:?} not found")).into()),
    }
}

/// What an image's ETag is made from (its writable part, as Incus).
fn etag_basis(image: &Image) -> Value {
    json!([image.put.public, image.put.auto_update, image.put.properties])
}

pub(crate) async fn list(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let state = ctx.store.state();
    let filter = q.get("filter").map(String::as_str).unwrap_or("");
    let filter = api::filter::Filter::parse(filter)
        .map_err(|e| ApiError::bad_request(format!("Invalid filter: {e}")))?;
    let mut images = Vec::new();
    for record in state.images.values().filter(|r| visible(&id, &r.image)) {
        let image = state.render_image(record);
        let value = serde_json::to_value(&image).unwrap_or(Value::Null);
        if filter.matches(&value).map_err(ApiError::bad_request)? {
            images.push(image);
        }
    }
    if recursion(&q) {
        Ok(sync(images))
    } else {
        Ok(sync(
            images
                .iter()
                .map(|i| format!("/1.0/images/{}", i.fingerprint))
                .collect::<Vec<_>>(),
        ))
    }
}

pub(crate) async fn get(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(fp): Path<String>,
) -> Result<Response> {
    let state = ctx.store.state();
    let image = state.render_image(find_visible(&state, &id, &fp)?);
    Ok(sync_etag(&image, &etag_basis(&image)))
}

pub(crate) async fn put(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(fp): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let req: ImagePut = json_body(body).await?;
    update(&ctx, &id, &fp, &headers, |_| Ok(req)).await
}

pub(crate) async fn patch(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(fp): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let req: serde_json::Map<String, Value> = json_body(body).await?;
    update(&ctx, &id, &fp, &headers, move |current| {
        let mut merged = serde_json::to_value(current).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut merged {
            for (k, v) in req {
                match (k.as_str(), m.get_mut("properties"), v) {
                    // Properties are merged key by key, as Incus does.
                    ("properties", Some(Value::Object(have)), Value::Object(new)) => have.extend(new),
                    (_, _, v) => {
                        m.insert(k, v);
                    }
                }
            }
        }
        serde_json::from_value(merged)
            .map_err(|e| ApiError::bad_request(format!("Invalid JSON in request body: {e}")))
    })
    .await
}

async fn update(
    ctx: &Ctx,
    id: &Identity,
    fp: &str,
    headers: &HeaderMap,
    make: impl FnOnce(&ImagePut) -> std::result::Result<ImagePut, ApiError>,
) -> Result<Response> {
    let state = ctx.store.state();
    let record = find(&state, fp)?;
    check_if_match(headers, &etag_basis(&record.image))?;
    let put = make(&record.image.put)?;
    let fingerprint = record.image.fingerprint.clone();
    ctx.store
        .apply(ImageCommand::UpdateImage {
            fingerprint: fingerprint.clone(),
            put,
        })
        .await?;
    ctx.events.lifecycle(
        "image-updated",
        &format!("/1.0/images/{fingerprint}"),
        Some(id),
        None,
    );
    Ok(sync(json!({})))
}

pub(crate) async fn delete(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(fp): Path<String>,
) -> Result<Response> {
    let fingerprint = find(&ctx.store.state(), &fp)?.image.fingerprint.clone();
    let mut spec = Spec::task("Deleting image");
    spec.resources = Some(
        [(
            "images".to_string(),
            Some(vec![format!("/1.0/images/{fingerprint}")]),
        )]
        .into(),
    );
    let run_ctx = ctx.clone();
    Ok(crate::operations::start(
        &ctx,
        spec,
        move |_progress| async move {
            let ctx = run_ctx;
            ctx.store
                .apply(ImageCommand::DeleteImage {
                    fingerprint: fingerprint.clone(),
                })
                .await
                .map_err(|e| crate::response::Error::from(e).0.message)?;
            // Here at once; every other holder when it sees the record gone.
            if let Ok(dir) = crate::images::dir(&ctx) {
                let _ = image::delete(&dir, &fingerprint);
            }
            ctx.events.lifecycle(
                "image-deleted",
                &format!("/1.0/images/{fingerprint}"),
                Some(&id),
                None,
            );
            Ok(())
        },
    ))
}

/// `POST /1.0/images`: an upload (a unified file, or multipart `metadata` + `rootfs`).
pub(crate) async fn create(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    req: Request,
) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header("content-type");
    if content_type.as_deref().is_some_and(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("application/json")
    }) {
        // Copies from a remote server, a URL or an instance: not yet.
        return Err(ApiError::not_implemented_yet("Image copies from a remote, a URL or an instance").into());
    }
    if header("x-incus-secret").is_some() {
        return Err(ApiError::not_implemented_yet("Image push transfers").into());
    }
    let dir = crate::images::dir(&ctx)?;
    // The gate's verdict on a cut-off body (413, 408) is kept, not lost in the import's.
    let body_error: std::sync::Arc<std::sync::Mutex<Option<ApiError>>> = Default::default();
    let seen = body_error.clone();
    let limit = ctx.max_stream_body;
    let stream = body.into_data_stream().map(move |r| {
        r.map_err(|e| {
            let api = crate::gate::body_error(e, usize::try_from(limit).unwrap_or(usize::MAX));
            let message = api.message.clone();
            if let Ok(mut s) = seen.lock() {
                s.get_or_insert(api);
            }
            std::io::Error::other(message)
        })
    });
    let upload = image::Upload::from_content_type(content_type.as_deref(), stream).map_err(api_error)?;
    let opts = image::ImportOptions {
        limits: image::Limits {
            max_size: ctx.max_stream_body,
            ..Default::default()
        },
        expected_fingerprint: header("x-incus-fingerprint"),
        filename: header("x-incus-filename"),
    };
    let busy = crate::images::busy(&ctx);
    let imported = match image::import(&dir, upload, &opts).await {
        Ok(i) => i,
        Err(e) => {
            if let Some(cut) = body_error.lock().ok().and_then(|mut s| s.take()) {
                return Err(cut.into());
            }
            return Err(api_error(e).into());
        }
    };
    let mut properties = imported.properties.clone();
    for (k, v) in form(header("x-incus-properties").as_deref()) {
        properties.insert(k, v);
    }
    let profiles: Vec<String> = form(header("x-incus-profiles").as_deref())
        .into_iter()
        .filter(|(k, _)| k == "profile")
        .map(|(_, v)| v)
        .collect();
    let aliases = header_aliases(header("x-incus-aliases").as_deref());
    let image = Image {
        put: ImagePut {
            auto_update: false,
            properties: properties.into_iter().collect(),
            public: header("x-incus-public").is_some_and(|v| is_true(&v)),
            expires_at: imported.expires_at.map(Timestamp).unwrap_or(Timestamp::ZERO),
            profiles: if profiles.is_empty() {
                vec!["default".into()]
            } else {
                profiles
            },
        },
        aliases: Vec::new(),
        architecture: imported.architecture.clone(),
        cached: false,
        filename: imported.filename.clone(),
        fingerprint: imported.fingerprint.clone(),
        size: i64::try_from(imported.size).unwrap_or(i64::MAX),
        update_source: None,
        kind: imported.image_type.as_str().into(),
        created_at: imported.created_at.map(Timestamp).unwrap_or(Timestamp::ZERO),
        last_used_at: Timestamp::ZERO,
        uploaded_at: Timestamp::now(),
        project: "default".into(),
    };
    let mut spec = Spec::task("Downloading image");
    spec.resources = Some(BTreeMap::new());
    let run_ctx = ctx.clone();
    Ok(crate::operations::start(&ctx, spec, move |progress| async move {
        let ctx = run_ctx;
        let fingerprint = image.fingerprint.clone();
        progress.extend_metadata(
            [
                ("fingerprint".to_string(), json!(fingerprint)),
                ("size".to_string(), json!(image.size.to_string())),
            ]
            .into(),
        );
        let created = ctx
            .store
            .apply(ImageCommand::CreateImage {
                image: Box::new(image),
                location: ctx.member_id(),
                aliases,
            })
            .await;
        drop(busy);
        if let Err(e) = created {
            // A duplicate (or a refused alias): the files just placed have no record.
            let _ = image::delete(&dir, &fingerprint);
            return Err(crate::response::Error::from(e).0.message);
        }
        ctx.events.lifecycle(
            "image-created",
            &format!("/1.0/images/{fingerprint}"),
            Some(&id),
            Some([("type".to_string(), json!("container"))].into()),
        );
        crate::images::replicate(&ctx, &fingerprint).await;
        Ok(())
    }))
}

fn is_true(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on")
}

/// A URL-encoded header (`X-Incus-properties`, `X-Incus-profiles`).
fn form(value: Option<&str>) -> Vec<(String, String)> {
    value
        .map(|v| {
            form_urlencoded::parse(v.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// `X-Incus-aliases`: `alias=a&alias=b`, or one plain name, as Incus reads it.
fn header_aliases(value: Option<&str>) -> Vec<ImageAlias> {
    let Some(v) = value.filter(|v| !v.is_empty()) else {
        return Vec::new();
    };
    let pairs = form(Some(v));
    let named: Vec<String> = pairs
        .into_iter()
        .filter(|(k, _)| k == "alias")
        .map(|(_, v)| v)
        .collect();
    let names = if named.is_empty() {
        vec![v.to_string()]
    } else {
        named
    };
    names
        .into_iter()
        .map(|name| ImageAlias {
            name,
            description: String::new(),
        })
        .collect()
}

/// `GET /1.0/images/<fp>/export`: the files, from here or from an online holder.
pub(crate) async fn export(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(fp): Path<String>,
    req: Request,
) -> Result<Response> {
    let state = ctx.store.state();
    let fingerprint = find_visible(&state, &id, &fp)?.image.fingerprint.clone();
    if crate::images::have(&ctx, &fingerprint) || req.extensions().get::<crate::auth::ViaMember>().is_some() {
        return local_export(&ctx, &fingerprint).await;
    }
    let holder = crate::images::holder(&ctx, &state, &fingerprint)
        .ok_or_else(|| ApiError::unavailable("Image not available on any online member"))?;
    Ok(crate::forward::to_member(&ctx, &holder.name, req).await)
}

async fn local_export(ctx: &Ctx, fingerprint: &str) -> Result<Response> {
    let dir = crate::images::dir(ctx)?;
    let export = image::export(&dir, fingerprint).await.map_err(api_error)?;
    let mut resp = Body::from_stream(export.body).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(&export.content_type) {
        h.insert(http::header::CONTENT_TYPE, v);
    }
    if let Some(d) = export
        .content_disposition
        .and_then(|d| http::HeaderValue::from_str(&d).ok())
    {
        h.insert(http::header::CONTENT_DISPOSITION, d);
    }
    h.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(export.content_length),
    );
    Ok(resp)
}

/// `GET /internal/images/<fp>` (members): this member's files, whole fingerprint only.
pub(crate) async fn internal_export(State(ctx): State<Ctx>, Path(fp): Path<String>) -> Result<Response> {
    local_export(&ctx, &fp).await
}

/// `POST /internal/images/<fp>/fetch` (members): get the image from a holder; answers
/// when this member has it.
pub(crate) async fn internal_fetch(State(ctx): State<Ctx>, Path(fp): Path<String>) -> Result<Response> {
    // The record was just committed: this member may not have applied it yet.
    crate::images::wait_for_record(&ctx, &fp, crate::images::RECORD_WAIT).await;
    crate::images::ensure_local(&ctx, &fp).await?;
    Ok(sync(json!({})))
}

/// `POST /internal/test/images/<fp>/ensure` (`--test-routes`, `?target=` picks the
/// member): runs [`crate::images::ensure_local`] there, as instance creation will.
pub(crate) async fn test_ensure(State(ctx): State<Ctx>, Path(fp): Path<String>) -> Result<Response> {
    let files = crate::images::ensure_local(&ctx, &fp).await?;
    Ok(sync(json!({
        "metadata": files.metadata,
        "rootfs": files.rootfs,
    })))
}

/// `POST /internal/test/images/sync` (`--test-routes`): the leader's periodic top-up
/// of image copies, now, on the member reached.
pub(crate) async fn test_sync(State(ctx): State<Ctx>) -> Result<Response> {
    crate::images::sync_all(&ctx).await;
    Ok(sync(json!({})))
}

// Aliases.

pub(crate) async fn list_aliases(
    State(ctx): State<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let state = ctx.store.state();
    if recursion(&q) {
        Ok(sync(
            state
                .image_aliases
                .keys()
                .filter_map(|n| state.render_alias(n))
                .collect::<Vec<_>>(),
        ))
    } else {
        Ok(sync(
            state
                .image_aliases
                .keys()
                .map(|n| format!("/1.0/images/aliases/{n}"))
                .collect::<Vec<_>>(),
        ))
    }
}

/// Incus's alias name rule (`IsAPIName` with slashes allowed).
fn check_alias_name(name: &str) -> std::result::Result<(), ApiError> {
    let why = if name.len() > 64 {
        Some("Maximum name length is 64 characters".to_string())
    } else if name.chars().any(char::is_whitespace) {
        Some("Name cannot contain white space".to_string())
    } else if let Some(c) = name.chars().find(|c| "$?&+\"'`*".contains(*c)) {
        Some(format!("Name contains invalid character {:?}", c.to_string()))
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        Some("Name must start and end with a letter or a number".to_string())
    } else {
        None
    };
    match why {
        Some(w) => Err(ApiError::bad_request(format!("Invalid image alias name: {w}"))),
        None => Ok(()),
    }
}

pub(crate) async fn create_alias(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    body: Body,
) -> Result<Response> {
    let req: api::types::ImageAliasesPost = json_body(body).await?;
    if req.name.is_empty() || req.put.target.is_empty() {
        return Err(ApiError::bad_request("Alias name and target are required").into());
    }
    check_alias_name(&req.name)?;
    let state = ctx.store.state();
    if state.image_aliases.contains_key(&req.name) {
        return Err(ApiError::conflict(format!("Alias {:?} already exists", req.name)).into());
    }
    let target = find(&state, &req.put.target)?.image.fingerprint.clone();
    ctx.store
        .apply(ImageCommand::CreateAlias {
            name: req.name.clone(),
            alias: ImageAliasesEntryPut {
                description: req.put.description,
                target,
            },
        })
        .await?;
    let url = format!("/1.0/images/aliases/{}", req.name);
    ctx.events.lifecycle("image-alias-created", &url, Some(&id), None);
    Ok(created(&url))
}

fn alias_of(state: &cluster::State, name: &str) -> Result<api::types::ImageAliasesEntry> {
    state
        .render_alias(name)
        .ok_or_else(|| ApiError::not_found_msg("Image alias not found").into())
}

pub(crate) async fn get_alias(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
) -> Result<Response> {
    let state = ctx.store.state();
    let alias = alias_of(&state, &name)?;
    // The untrusted see the aliases of public images only.
    if !state
        .images
        .get(&alias.put.target)
        .is_some_and(|r| visible(&id, &r.image))
    {
        return Err(ApiError::not_found_msg("Image alias not found").into());
    }
    Ok(sync_etag(&alias, &alias))
}

pub(crate) async fn put_alias(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let req: ImageAliasesEntryPut = json_body(body).await?;
    update_alias(&ctx, &id, &name, &headers, |_| Ok(req)).await
}

pub(crate) async fn patch_alias(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let req: serde_json::Map<String, Value> = json_body(body).await?;
    update_alias(&ctx, &id, &name, &headers, move |current| {
        let mut put = current.clone();
        if let Some(Value::String(t)) = req.get("target") {
            put.target = t.clone();
        }
        if let Some(Value::String(d)) = req.get("description") {
            put.description = d.clone();
        }
        Ok(put)
    })
    .await
}

async fn update_alias(
    ctx: &Ctx,
    id: &Identity,
    name: &str,
    headers: &HeaderMap,
    make: impl FnOnce(&ImageAliasesEntryPut) -> std::result::Result<ImageAliasesEntryPut, ApiError>,
) -> Result<Response> {
    let state = ctx.store.state();
    let current = alias_of(&state, name)?;
    check_if_match(headers, &current)?;
    let mut put = make(&current.put)?;
    if put.target.is_empty() {
        return Err(ApiError::bad_request("The target field is required").into());
    }
    put.target = find(&state, &put.target)?.image.fingerprint.clone();
    ctx.store
        .apply(ImageCommand::UpdateAlias {
            name: name.to_string(),
            alias: put,
        })
        .await?;
    ctx.events.lifecycle(
        "image-alias-updated",
        &format!("/1.0/images/aliases/{name}"),
        Some(id),
        None,
    );
    Ok(sync(json!({})))
}

pub(crate) async fn rename_alias(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    let req: ImageAliasesEntryPost = json_body(body).await?;
    check_alias_name(&req.name)?;
    ctx.store
        .apply(ImageCommand::RenameAlias {
            name: name.clone(),
            new_name: req.name.clone(),
        })
        .await?;
    let url = format!("/1.0/images/aliases/{}", req.name);
    ctx.events.lifecycle(
        "image-alias-renamed",
        &url,
        Some(&id),
        Some([("old_name".to_string(), json!(name))].into()),
    );
    Ok(created(&url))
}

pub(crate) async fn delete_alias(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
) -> Result<Response> {
    ctx.store
        .apply(ImageCommand::DeleteAlias { name: name.clone() })
        .await?;
    ctx.events.lifecycle(
        "image-alias-deleted",
        &format!("/1.0/images/aliases/{name}"),
        Some(&id),
        None,
    );
    Ok(sync(json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_alias_names_follow_incus() {
        for ok in ["bb", "debian/12", "a-b.c_d"] {
            assert!(check_alias_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "-a", "a?", &"x".repeat(65)] {
            assert_eq!(check_alias_name(bad).unwrap_err().status, 400, "{bad}");
        }
    }

    #[test]
    fn t10_aliases_header_reads_both_forms() {
        let names = |h: &str| {
            header_aliases(Some(h))
                .into_iter()
                .map(|a| a.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names("alias=a&alias=b"), ["a", "b"]);
        assert_eq!(names("plain"), ["plain"]);
        assert!(header_aliases(Some("")).is_empty());
    }
}
