//! `record-output`: what an exec without websockets wrote, kept as files the instance's
//! logs list (`/1.0/instances/{name}/logs/exec-output/exec_<operation>.stdout|stderr`),
//! read and deleted as in Incus. They live in `<state dir>/exec-output/<instance>/` on
//! the member that holds the instance, and go with the instance's record.
//!
//! File names are checked against the one shape this module writes before they become
//! paths, so a request never names anything else.

use std::collections::BTreeMap;
use std::path::PathBuf;

use api::ApiError;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};

use crate::context::Ctx;
use crate::response::{sync, Result};

fn dir(ctx: &Ctx, name: &str) -> PathBuf {
    ctx.state_dir.join("exec-output").join(name)
}

/// Removes an instance's recorded output (with the instance); none is fine.
pub(crate) fn remove_all(ctx: &Ctx, name: &str) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir(ctx, name)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Moves an instance's recorded output to its new name; none is fine.
pub(crate) fn rename_all(ctx: &Ctx, name: &str, new: &str) -> std::io::Result<()> {
    match std::fs::rename(dir(ctx, name), dir(ctx, new)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn url(name: &str, file: &str) -> String {
    format!("/1.0/instances/{name}/logs/exec-output/{file}")
}

/// Whether `file` is a name [`create`] makes: `exec_` and an operation id, then
/// `.stdout` or `.stderr`.
pub(crate) fn valid_name(file: &str) -> bool {
    let Some(stem) = file
        .strip_suffix(".stdout")
        .or_else(|| file.strip_suffix(".stderr"))
    else {
        return false;
    };
    stem.strip_prefix("exec_").is_some_and(|id| {
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
    })
}

/// The two files of operation `op` and their URLs (`1`, `2`), as the operation's
/// `output` metadata names them.
pub(crate) async fn create(
    ctx: &Ctx,
    name: &str,
    op: &str,
) -> std::io::Result<(tokio::fs::File, tokio::fs::File, BTreeMap<String, String>)> {
    let dir = dir(ctx, name);
    tokio::fs::create_dir_all(&dir).await?;
    let out_name = format!("exec_{op}.stdout");
    let err_name = format!("exec_{op}.stderr");
    let out = tokio::fs::File::create(dir.join(&out_name)).await?;
    let err = tokio::fs::File::create(dir.join(&err_name)).await?;
    let urls = BTreeMap::from([
        ("1".to_string(), url(name, &out_name)),
        ("2".to_string(), url(name, &err_name)),
    ]);
    Ok((out, err, urls))
}

fn check(ctx: &Ctx, name: &str, file: &str) -> Result<PathBuf> {
    super::exec::record(ctx, name)?;
    if !valid_name(file) {
        return Err(ApiError::not_found_msg(format!("Log file {file:?} not found")).into());
    }
    Ok(dir(ctx, name).join(file))
}

/// `GET /1.0/instances/{name}/logs/exec-output`.
pub async fn list(State(ctx): State<Ctx>, Path(name): Path<String>) -> Result<Response> {
    super::exec::record(&ctx, &name)?;
    let mut out = Vec::new();
    if let Ok(mut entries) = tokio::fs::read_dir(dir(&ctx, &name)).await {
        while let Ok(Some(e)) = entries.next_entry().await {
            let file = e.file_name().to_string_lossy().into_owned();
            if valid_name(&file) {
                out.push(url(&name, &file));
            }
        }
    }
    out.sort();
    Ok(sync(out))
}

/// `GET /1.0/instances/{name}/logs/exec-output/{file}`.
pub async fn get(State(ctx): State<Ctx>, Path((name, file)): Path<(String, String)>) -> Result<Response> {
    let path = check(&ctx, &name, &file)?;
    let f = tokio::fs::File::open(&path)
        .await
        .map_err(|_| ApiError::not_found_msg(format!("Log file {file:?} not found")))?;
    let stream = futures_util::stream::unfold(f, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let body = axum::body::Body::from_stream(stream);
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}

/// `DELETE /1.0/instances/{name}/logs/exec-output/{file}`.
pub async fn delete(State(ctx): State<Ctx>, Path((name, file)): Path<(String, String)>) -> Result<Response> {
    let path = check(&ctx, &name, &file)?;
    tokio::fs::remove_file(&path)
        .await
        .map_err(|_| ApiError::not_found_msg(format!("Log file {file:?} not found")))?;
    Ok(sync(serde_json::json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_this_module_makes() {
        assert!(valid_name("exec_5e2bb8fb-6363-4ec0-8d3f-541a7ed91bbe.stdout"));
        assert!(valid_name("exec_5e2bb8fb-6363-4ec0-8d3f-541a7ed91bbe.stderr"));
        for bad in [
            "",
            "lxc.log",
            "exec_.stdout",
            "exec_../../x.stdout",
            "exec_a/b.stdout",
            "exec_abc.stdin",
            "../exec_abc.stdout",
            "exec_abc.stdout/",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
