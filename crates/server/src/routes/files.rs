//! Files in an instance: `GET /1.0/instances/{name}/sftp` (an upgrade to SFTP, what the
//! `incus` CLI uses) and `GET/HEAD/POST/DELETE /1.0/instances/{name}/files?path=` (the
//! older API the Go library and the Terraform provider use), on the instance's member.
//!
//! ```text
//!  client ─GET …/sftp, Upgrade: sftp─> any member ─tunnel (tunnel.rs)─> owner
//!        <──────────── 101 ───────────             <── 101: driver.sftp(name) found
//!        <════ SFTP v3, spliced byte for byte ════>     and entered the container first
//!  client ─POST …/files?path=, body─> any member ─h2 stream─> owner: driver.write_file
//! ```
//!
//! Every path is the driver's to resolve inside the container (`instance::fs`); nothing
//! here joins a path. Bodies stream both ways (POST is a streamed route of the gate, its
//! bound `--max-stream-body`). Headers, statuses and messages follow Incus's
//! `instance_file.go` and `instance_sftp.go`: a missing file is 404 `Not Found`, a refused
//! one 403 `Forbidden`, as Incus's `SmartError` renders the SFTP errors it gets.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use instance::{FileStat, FileType, FsErrorKind, WriteSpec};
use serde_json::Value;

use crate::context::Ctx;
use crate::response::{sync, ApiError, Result};

/// SFTP sessions served by this member at once (each holds a helper process or a
/// blocking-pool thread for as long as its client keeps the connection).
const MAX_SFTP_SESSIONS: usize = 128;
static SFTP_SESSIONS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_SFTP_SESSIONS);

/// The longest symbolic link target a POST may set.
const MAX_LINK_TARGET: usize = 4096;
/// The most entries a forced (recursive) delete removes.
const MAX_DELETE: usize = 100_000;

fn instance_exists(ctx: &Ctx, name: &str) -> Result<()> {
    if ctx.store.state().instances.contains_key(name) {
        Ok(())
    } else {
        Err(ApiError::not_found_msg("Instance not found").into())
    }
}

/// A driver's answer as Incus gives it.
fn file_error(e: instance::Error) -> crate::response::Error {
    use instance::Error as E;
    let api = match &e {
        E::NotFound(_) => ApiError::not_found_msg("Instance not found"),
        E::InvalidName { .. } => ApiError::bad_request(e.to_string()),
        E::Fs(f) => match f.kind {
            FsErrorKind::NotFound => ApiError::not_found_msg("Not Found"),
            FsErrorKind::PermissionDenied => ApiError::new(403, "Forbidden"),
            FsErrorKind::InvalidPath => ApiError::bad_request(e.to_string()),
            _ => ApiError::internal(e.to_string()),
        },
        _ => ApiError::internal(e.to_string()),
    };
    api.into()
}

/// `GET /1.0/instances/{name}/sftp` with `Upgrade: sftp`.
pub async fn sftp(State(ctx): State<Ctx>, Path(name): Path<String>, mut req: Request) -> Result<Response> {
    let asked = req
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("sftp"));
    if !asked {
        return Err(ApiError::bad_request("Missing or invalid upgrade header").into());
    }
    instance_exists(&ctx, &name)?;
    let Some(upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return Err(ApiError::bad_request("This connection cannot switch protocols").into());
    };
    let Ok(permit) = SFTP_SESSIONS.try_acquire() else {
        return Err(ApiError::unavailable(format!(
            "This member already serves {MAX_SFTP_SESSIONS} SFTP sessions"
        ))
        .into());
    };
    let server = ctx.driver.sftp(&name).await.map_err(|e| match e {
        instance::Error::NotFound(_) => file_error(e),
        e => ApiError::internal(format!("Failed getting instance SFTP connection: {e}")).into(),
    })?;
    tokio::spawn(async move {
        let _permit = permit;
        match upgrade.await {
            Ok(io) => {
                if let Err(e) = server(Box::new(TokioIo::new(io))).await {
                    tracing::debug!(instance = %name, error = %e, "an SFTP session ended with an error");
                }
            }
            Err(e) => tracing::debug!(instance = %name, error = %e, "an SFTP upgrade did not complete"),
        }
    });
    Ok(http::Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, "sftp")
        .header(http::header::CONNECTION, "Upgrade")
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?)
}

/// The `path` parameter, made absolute as Incus does.
fn path_param(q: &HashMap<String, String>) -> Result<String> {
    match q.get("path").map(String::as_str) {
        None | Some("") => Err(ApiError::bad_request("Missing path argument").into()),
        Some(p) if p.starts_with('/') => Ok(p.to_string()),
        Some(p) => Ok(format!("/{p}")),
    }
}

fn type_name(kind: FileType) -> &'static str {
    match kind {
        FileType::Dir => "directory",
        FileType::Symlink => "symlink",
        _ => "file",
    }
}

/// Go's `time.Time.String()` of a UTC time: `2006-01-02 15:04:05 +0000 UTC`.
fn go_time(secs: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} +0000 UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn file_headers(resp: &mut Response, st: &FileStat) {
    let h = resp.headers_mut();
    let mut set = |k: &'static str, v: String| {
        if let Ok(v) = http::HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set("X-Incus-uid", st.uid.to_string());
    set("X-Incus-gid", st.gid.to_string());
    set("X-Incus-mode", format!("{:04o}", st.mode & 0o777));
    set("X-Incus-modified", go_time(st.mtime));
    set("X-Incus-type", type_name(st.kind).to_string());
}

fn base_name(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

fn octet_stream(resp: &mut Response, name: &str, len: u64) {
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    if let Ok(v) = http::HeaderValue::from_str(&format!("inline;filename={name}")) {
        h.insert(http::header::CONTENT_DISPOSITION, v);
    }
}

fn event(ctx: &Ctx, action: &str, name: &str, path: &str) {
    let mut context = std::collections::BTreeMap::new();
    context.insert("path".to_string(), Value::String(path.to_string()));
    ctx.events
        .lifecycle(action, &format!("/1.0/instances/{name}"), None, Some(context));
}

/// `GET` (and `HEAD`) `/1.0/instances/{name}/files?path=`.
pub async fn get(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    method: http::Method,
    headers: http::HeaderMap,
) -> Result<Response> {
    let path = path_param(&q)?;
    instance_exists(&ctx, &name)?;
    let range = headers.get(http::header::RANGE).cloned();
    let st = ctx.driver.lstat(&name, &path).await.map_err(file_error)?;
    let head = method == http::Method::HEAD;
    let mut resp = match st.kind {
        FileType::Dir if !head => {
            let entries = ctx.driver.read_dir(&name, &path).await.map_err(file_error)?;
            sync(entries.into_iter().map(|e| e.name).collect::<Vec<_>>())
        }
        FileType::Symlink if !head => {
            let target = ctx.driver.readlink(&name, &path).await.map_err(file_error)?;
            let target = if target.starts_with('/') {
                instance::sftp::clean(&target)
            } else {
                let dir = path.rsplit_once('/').map_or("/", |(d, _)| d);
                instance::sftp::clean(&format!("{dir}/{target}"))
            };
            let len = target.len() as u64;
            let mut resp = Body::from(target).into_response();
            octet_stream(&mut resp, base_name(&path), len);
            resp
        }
        FileType::File | FileType::Other if !head => {
            let (st, reader) = ctx.driver.read_file(&name, &path).await.map_err(file_error)?;
            let asked = range.as_ref().and_then(|h| h.to_str().ok());
            match asked.map(|h| byte_range(h, st.size)) {
                None | Some(Ranged::Whole) => {
                    let mut resp = Body::from_stream(chunks_of(reader)).into_response();
                    octet_stream(&mut resp, base_name(&path), st.size);
                    resp
                }
                Some(Ranged::Part(first, last)) => {
                    let len = last - first + 1;
                    let body = range_chunks(reader, first, len);
                    let mut resp = Body::from_stream(body).into_response();
                    *resp.status_mut() = http::StatusCode::PARTIAL_CONTENT;
                    octet_stream(&mut resp, base_name(&path), len);
                    if let Ok(v) = http::HeaderValue::from_str(&format!("bytes {first}-{last}/{}", st.size)) {
                        resp.headers_mut().insert(http::header::CONTENT_RANGE, v);
                    }
                    resp
                }
                Some(Ranged::Unsatisfiable(why)) => {
                    let mut resp =
                        (http::StatusCode::RANGE_NOT_SATISFIABLE, format!("{why}\n")).into_response();
                    if let Ok(v) = http::HeaderValue::from_str(&format!("bytes */{}", st.size)) {
                        resp.headers_mut().insert(http::header::CONTENT_RANGE, v);
                    }
                    return Ok(resp);
                }
            }
        }
        FileType::File => {
            let mut resp = http::StatusCode::OK.into_response();
            octet_stream(&mut resp, base_name(&path), st.size);
            resp
        }
        _ => http::StatusCode::OK.into_response(),
    };
    file_headers(&mut resp, &st);
    if !head {
        event(&ctx, "instance-file-retrieved", &name, &path);
    }
    Ok(resp)
}

/// What a `Range` header asks of a file of `size` bytes, as Go's `http.ServeContent`
/// (which Incus serves files with) reads it, for one range.
#[derive(Debug, PartialEq, Eq)]
enum Ranged {
    /// No range that applies (several ranges are answered whole, not as multipart).
    Whole,
    /// Bytes `first..=last`.
    Part(u64, u64),
    /// 416, with Go's message.
    Unsatisfiable(&'static str),
}

fn byte_range(header: &str, size: u64) -> Ranged {
    let Some(spec) = header.strip_prefix("bytes=") else {
        return Ranged::Unsatisfiable("invalid range");
    };
    let specs: Vec<&str> = spec.split(',').map(str::trim).filter(|r| !r.is_empty()).collect();
    let [one] = specs[..] else {
        return if specs.is_empty() {
            Ranged::Unsatisfiable("invalid range")
        } else {
            Ranged::Whole
        };
    };
    let Some((from, to)) = one.split_once('-') else {
        return Ranged::Unsatisfiable("invalid range");
    };
    let (from, to) = (from.trim(), to.trim());
    let number = |t: &str| {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse::<u64>().ok())
            .flatten()
    };
    if from.is_empty() {
        // The last `n` bytes.
        return match number(to) {
            Some(0) | None => Ranged::Unsatisfiable("invalid range"),
            Some(_) if size == 0 => Ranged::Unsatisfiable("invalid range: failed to overlap"),
            Some(n) => Ranged::Part(size - n.min(size), size - 1),
        };
    }
    let Some(first) = number(from) else {
        return Ranged::Unsatisfiable("invalid range");
    };
    if first >= size {
        return Ranged::Unsatisfiable("invalid range: failed to overlap");
    }
    if to.is_empty() {
        return Ranged::Part(first, size - 1);
    }
    match number(to) {
        Some(last) if last >= first => Ranged::Part(first, last.min(size - 1)),
        _ => Ranged::Unsatisfiable("invalid range"),
    }
}

/// `reader` past its first `skip` bytes (read and dropped: the driver's reader does not
/// seek), then at most `len` bytes, as a body stream.
fn range_chunks(
    reader: instance::Reader,
    skip: u64,
    len: u64,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send {
    futures_util::stream::unfold((reader, skip, len), |(mut r, mut skip, left)| async move {
        use tokio::io::AsyncReadExt;
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) => {
                    let short = std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file is shorter than it was",
                    );
                    return Some((Err(short), (r, 0, 0)));
                }
                Ok(n) => n,
                Err(e) => return Some((Err(e), (r, 0, 0))),
            };
            let dropped = usize::try_from(skip).unwrap_or(usize::MAX).min(n);
            skip -= dropped as u64;
            if dropped == n {
                continue;
            }
            let take = usize::try_from(left).unwrap_or(usize::MAX).min(n - dropped);
            let chunk = bytes::Bytes::copy_from_slice(&buf[dropped..dropped + take]);
            return Some((Ok(chunk), (r, skip, left - take as u64)));
        }
    })
}

/// A reader as a body stream, in chunks of at most 64 KiB.
fn chunks_of(
    reader: instance::Reader,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send {
    futures_util::stream::unfold(reader, |mut r| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), r))
            }
            Err(e) => Some((Err(e), r)),
        }
    })
}

/// The `X-Incus-*` file headers (or `X-LXD-*`), as Incus's `ParseFileHeaders` reads them.
struct FileHeaders {
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<u32>,
    kind: String,
    write: String,
}

fn file_headers_of(h: &http::HeaderMap) -> FileHeaders {
    let get = |key: &str| {
        h.get(format!("X-Incus-{key}"))
            .or_else(|| h.get(format!("X-LXD-{key}")))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let id = |s: String| s.parse::<i64>().ok().and_then(|v| u32::try_from(v).ok());
    let mode_text = get("mode");
    // Incus accepts what parses as a decimal integer and then reads it as C does
    // (`0644` octal, `644` decimal), keeping the permission bits.
    let mode = mode_text.parse::<i64>().ok().map(|decimal| {
        let value = if mode_text.len() > 1 && mode_text.starts_with('0') {
            i64::from_str_radix(&mode_text[1..], 8).unwrap_or(decimal)
        } else {
            decimal
        };
        (value & 0o777) as u32
    });
    let or = |s: String, d: &str| if s.is_empty() { d.to_string() } else { s };
    FileHeaders {
        uid: id(get("uid")),
        gid: id(get("gid")),
        mode,
        kind: or(get("type"), "file"),
        write: or(get("write"), "overwrite"),
    }
}

/// `POST /1.0/instances/{name}/files?path=`: a file (body streamed), a symbolic link
/// (the body is the target) or a directory.
pub async fn post(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Result<Response> {
    let path = path_param(&q)?;
    instance_exists(&ctx, &name)?;
    let h = file_headers_of(req.headers());
    if h.write != "overwrite" && h.write != "append" {
        return Err(ApiError::bad_request(format!("Bad file write mode: {}", h.write)).into());
    }
    let exists = ctx.driver.stat(&name, &path).await.is_ok();
    match h.kind.as_str() {
        "file" => {
            // As Incus: the owner and mode apply to a new file; an existing one keeps its.
            let spec = WriteSpec {
                mode: if exists { None } else { h.mode },
                uid: if exists { None } else { h.uid },
                gid: if exists { None } else { h.gid },
                append: h.write == "append",
            };
            let body = req.into_body().into_data_stream();
            let reader = reader_of(body);
            ctx.driver
                .write_file(&name, &path, spec, reader)
                .await
                .map_err(file_error)?;
        }
        "symlink" => {
            let body = axum::body::to_bytes(req.into_body(), MAX_LINK_TARGET)
                .await
                .map_err(|_| ApiError::bad_request("The link target is too long"))?;
            let target = String::from_utf8(body.to_vec())
                .map_err(|_| ApiError::bad_request("The link target is not UTF-8"))?;
            if ctx.driver.readlink(&name, &path).await.ok().as_deref() == Some(target.as_str()) {
                return Ok(sync(Value::Null));
            }
            ctx.driver
                .symlink(&name, &target, &path, 0, 0)
                .await
                .map_err(file_error)?;
        }
        "directory" => {
            if exists {
                return Ok(sync(Value::Null));
            }
            let mode = h.mode.unwrap_or(0o755);
            ctx.driver
                .mkdir(&name, &path, mode, h.uid.unwrap_or(0), h.gid.unwrap_or(0))
                .await
                .map_err(file_error)?;
        }
        other => return Err(ApiError::bad_request(format!("Bad file type: {other}")).into()),
    }
    event(&ctx, "instance-file-pushed", &name, &path);
    Ok(sync(Value::Null))
}

/// A request body as a reader.
fn reader_of(body: axum::body::BodyDataStream) -> instance::Reader {
    use futures_util::TryStreamExt;
    let stream = body.map_err(std::io::Error::other);
    Box::pin(StreamReader {
        inner: Box::pin(stream),
        current: bytes::Bytes::new(),
    })
}

/// An `AsyncRead` over a stream of byte chunks.
struct StreamReader {
    inner: std::pin::Pin<Box<dyn futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send>>,
    current: bytes::Bytes,
}

impl tokio::io::AsyncRead for StreamReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        loop {
            if !self.current.is_empty() {
                let n = buf.remaining().min(self.current.len());
                let chunk = self.current.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match self.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => self.current = chunk,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// `DELETE /1.0/instances/{name}/files?path=`; with `X-Incus-force: true`, a directory
/// and everything below it.
pub async fn delete(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: http::HeaderMap,
) -> Result<Response> {
    let path = path_param(&q)?;
    instance_exists(&ctx, &name)?;
    let force = headers
        .get("X-Incus-force")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on"));
    let st = ctx.driver.lstat(&name, &path).await.map_err(file_error)?;
    if st.kind != FileType::Dir {
        ctx.driver.remove(&name, &path).await.map_err(file_error)?;
    } else if !force {
        ctx.driver.rmdir(&name, &path).await.map_err(file_error)?;
    } else {
        remove_tree(&ctx, &name, &path).await?;
    }
    event(&ctx, "instance-file-deleted", &name, &path);
    Ok(sync(Value::Null))
}

/// Removes a directory and what it holds, deepest first, links not followed.
async fn remove_tree(ctx: &Ctx, name: &str, top: &str) -> Result<()> {
    // (directory, listed yet)
    let mut stack = vec![(top.trim_end_matches('/').to_string(), false)];
    let mut removed = 0usize;
    while let Some((dir, listed)) = stack.pop() {
        if listed {
            ctx.driver.rmdir(name, &dir).await.map_err(file_error)?;
            continue;
        }
        stack.push((dir.clone(), true));
        for entry in ctx.driver.read_dir(name, &dir).await.map_err(file_error)? {
            removed += 1;
            if removed > MAX_DELETE {
                return Err(ApiError::bad_request(format!(
                    "more than {MAX_DELETE} entries to delete under {top}"
                ))
                .into());
            }
            let child = format!("{dir}/{}", entry.name);
            if entry.stat.kind == FileType::Dir {
                stack.push((child, false));
            } else {
                ctx.driver.remove(name, &child).await.map_err(file_error)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t20_byte_ranges_as_go_reads_them() {
        use Ranged::*;
        const OVERLAP: &str = "invalid range: failed to overlap";
        for (h, size, want) in [
            ("bytes=0-9", 100, Part(0, 9)),
            ("bytes=90-", 100, Part(90, 99)),
            ("bytes=90-200", 100, Part(90, 99)),
            ("bytes=-10", 100, Part(90, 99)),
            ("bytes=-500", 100, Part(0, 99)),
            ("bytes=100-", 100, Unsatisfiable(OVERLAP)),
            ("bytes=0-0", 0, Unsatisfiable(OVERLAP)),
            ("bytes=5-2", 100, Unsatisfiable("invalid range")),
            ("bytes=-0", 100, Unsatisfiable("invalid range")),
            ("bytes=x-1", 100, Unsatisfiable("invalid range")),
            ("items=0-1", 100, Unsatisfiable("invalid range")),
            ("bytes=", 100, Unsatisfiable("invalid range")),
            ("bytes=0-1,5-6", 100, Whole),
        ] {
            assert_eq!(byte_range(h, size), want, "{h} of {size}");
        }
    }

    #[tokio::test]
    async fn t21_a_range_skips_then_takes() {
        use futures_util::StreamExt;
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let reader: instance::Reader = Box::pin(std::io::Cursor::new(data.clone()));
        let got: Vec<u8> = range_chunks(reader, 70_000, 100_001)
            .map(|c| c.unwrap().to_vec())
            .concat()
            .await;
        assert_eq!(got, data[70_000..170_001]);
        let reader: instance::Reader = Box::pin(std::io::Cursor::new(vec![0u8; 10]));
        let last: Vec<_> = range_chunks(reader, 5, 10).collect().await;
        assert!(
            last.last().unwrap().is_err(),
            "a file that shrank ends the body with an error"
        );
    }

    #[test]
    fn modes_read_as_incus_reads_them() {
        let mode = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("X-Incus-mode", http::HeaderValue::from_str(v).unwrap());
            file_headers_of(&h).mode
        };
        assert_eq!(mode("0644"), Some(0o644));
        assert_eq!(mode("0600"), Some(0o600));
        assert_eq!(mode("644"), Some(644 & 0o777));
        assert_eq!(mode("rw"), None);
        assert_eq!(mode(""), None);
    }

    #[test]
    fn headers_default_as_incus() {
        let h = file_headers_of(&http::HeaderMap::new());
        assert_eq!(
            (h.uid, h.gid, h.kind.as_str(), h.write.as_str()),
            (None, None, "file", "overwrite")
        );
        let mut m = http::HeaderMap::new();
        m.insert("X-LXD-uid", http::HeaderValue::from_static("1000"));
        m.insert("X-Incus-gid", http::HeaderValue::from_static("-1"));
        let h = file_headers_of(&m);
        assert_eq!((h.uid, h.gid), (Some(1000), None));
    }

    #[test]
    fn times_print_as_go_does() {
        assert_eq!(go_time(0), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(go_time(1_700_000_000), "2023-11-14 22:13:20 +0000 UTC");
    }
}
