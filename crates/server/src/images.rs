//! Image files across the cluster: each member keeps whole images in
//! `<state dir>/images` (`<fp>`, `<fp>.rootfs`), and the replicated record says which
//! members hold them.
//!
//! ```text
//!  import on A ──> record {locations: A} ──> replicate: up to cluster.images_minimal_replica
//!                                            holders; each chosen member B is asked
//!                                            (POST /internal/images/<fp>/fetch) and pulls
//!  ensure_local(fp) on B: have it? done. else an online holder H:
//!      GET /internal/images/<fp> on H (a connection of its own, HTTP/1.1)
//!      ──stream──> image::import_copy(fp) on B (sha256 checked)
//!      ──> AddImageLocation{fp, B}
//!  state change ──> reconcile: a file here whose image the state no longer has is removed
//!                   (a delete, seen now or when this member comes back)
//! ```
//!
//! Invariants: a copy is listed only once it is whole and its sha256 is the fingerprint
//! (the import checks it before moving it into place); a copy whose size is not the
//! record's (files are not synced: a power loss may cut one short) counts as missing;
//! a fetch holds a few chunks in memory whatever the size; a file is removed by
//! reconcile only when no import or fetch is under way here (a new file is placed
//! before its record exists).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use api::ApiError;
use bytes::Bytes;
use cluster::{ImageCommand, State};
use futures_util::{Stream, StreamExt};
use http_body_util::BodyExt;

use crate::context::Ctx;

/// How long a fetch may go without receiving a byte.
pub const FETCH_STALL: Duration = Duration::from_secs(60);
/// How long a member asked to fetch an image waits for its record to arrive.
pub const RECORD_WAIT: Duration = Duration::from_secs(30);
/// The bound on asking a member to fetch an image (it answers when it has it).
const REPLICATE_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// What this member is doing with image files now.
#[derive(Default)]
pub struct Local {
    /// Imports and fetches under way (reconcile leaves unknown files alone meanwhile).
    busy: Mutex<usize>,
    /// Fingerprints being fetched here, so two callers do not fetch one image twice.
    fetching: Mutex<HashSet<String>>,
    /// Woken when a fetch here ends (the callers waiting on it look again).
    fetched: tokio::sync::Notify,
    /// The fingerprints the state had when reconcile last ran.
    seen: Mutex<Option<Vec<String>>>,
}

/// Held while an import or a fetch may place files not yet in the state.
pub struct Busy(Ctx);

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut n) = self.0.images.busy.lock() {
            *n = n.saturating_sub(1);
        }
        // What was refused or deleted meanwhile can go now.
        self.0.images.forget_seen();
        on_state_change(&self.0);
    }
}

impl Local {
    fn forget_seen(&self) {
        if let Ok(mut s) = self.seen.lock() {
            *s = None;
        }
    }
}

/// Marks an import or fetch under way until the guard is dropped.
pub fn busy(ctx: &Ctx) -> Busy {
    if let Ok(mut n) = ctx.images.busy.lock() {
        *n += 1;
    }
    Busy(ctx.clone())
}

/// This member's image directory (created when first needed, mode 0700).
pub fn dir(ctx: &Ctx) -> Result<PathBuf, ApiError> {
    let dir = ctx.state_dir.join("images");
    if !dir.is_dir() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dir)
            .map_err(|e| ApiError::internal(format!("Failed to create {}: {e}", dir.display())))?;
    }
    Ok(dir)
}

/// Clears what an import cut short by a crash left (at start).
pub fn remove_partial(ctx: &Ctx) {
    if let Ok(dir) = dir(ctx) {
        match image::remove_partial(&dir) {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "removed unfinished image imports"),
            Err(e) => tracing::warn!(error = %e, "could not clear unfinished image imports"),
        }
    }
}

/// Maps an image error to the envelope: Incus's message, 400 for bad input.
pub fn api_error(e: image::Error) -> ApiError {
    match &e {
        image::Error::NotFound { .. } => ApiError::not_found_msg("Image not found"),
        _ if e.is_bad_input() => ApiError::bad_request(e.to_string()),
        _ => ApiError::internal(e.to_string()),
    }
}

/// Whether this member has the image's files, whole.
pub fn have(ctx: &Ctx, fingerprint: &str) -> bool {
    let state = ctx.store.state();
    let Some(record) = state.images.get(fingerprint) else {
        return false;
    };
    dir(ctx).is_ok_and(|d| whole_copy(&d, record).is_some())
}

/// This member's copy of the image `record`: its files, if they are here and hold the
/// record's size. Image files are not synced when written (see `image::import`), so a
/// power loss may leave one shorter than it was: such a copy counts as missing.
fn whole_copy(dir: &std::path::Path, record: &cluster::ImageRecord) -> Option<image::ImageFiles> {
    let files = image::ImageFiles::locate(dir, &record.image.fingerprint).ok()?;
    let size = files.size().ok()?;
    (i64::try_from(size).ok() == Some(record.image.size)).then_some(files)
}

/// Makes sure this member has the image `fingerprint` (a whole one), fetching it from an
/// online member that holds it if need be, and lists this member as a holder. What the
/// instance work calls before it unpacks an image.
pub async fn ensure_local(ctx: &Ctx, fingerprint: &str) -> Result<image::ImageFiles, ApiError> {
    let dir = dir(ctx)?;
    loop {
        let state = ctx.store.state();
        let record = state
            .images
            .get(fingerprint)
            .ok_or_else(|| ApiError::not_found_msg("Image not found"))?;
        let me = ctx.member_id();
        if let Some(files) = whole_copy(&dir, record) {
            if !record.locations.contains(&me) {
                ctx.store
                    .apply(ImageCommand::AddImageLocation {
                        fingerprint: fingerprint.to_string(),
                        location: me,
                    })
                    .await
                    .map_err(|e| crate::response::Error::from(e).0)?;
            }
            return Ok(files);
        }
        // One fetch per image at a time; a second caller waits for the first.
        let claimed = ctx
            .images
            .fetching
            .lock()
            .map(|mut f| f.insert(fingerprint.to_string()))
            .unwrap_or(false);
        if !claimed {
            // Look again when that fetch ends (or after a second, should the wake-up
            // come between the claim and this wait).
            let _ = tokio::time::timeout(Duration::from_secs(1), ctx.images.fetched.notified()).await;
            continue;
        }
        if image::ImageFiles::locate(&dir, fingerprint).is_ok() {
            // Here but not whole (cut short by a power loss): fetched again below.
            tracing::warn!(
                fingerprint,
                "the image's files here are not whole; fetching them again"
            );
            let _ = image::delete(&dir, fingerprint);
        }
        let result = fetch(ctx, &state, fingerprint, &dir).await;
        if let Ok(mut f) = ctx.images.fetching.lock() {
            f.remove(fingerprint);
        }
        ctx.images.fetched.notify_waiters();
        result?;
    }
}

/// Waits (at most `limit`) until this member's state has the image `fingerprint`.
pub async fn wait_for_record(ctx: &Ctx, fingerprint: &str, limit: Duration) {
    let mut changed = ctx.state_changed.subscribe();
    let _ = tokio::time::timeout(limit, async {
        while !ctx.store.state().images.contains_key(fingerprint) {
            if changed.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
}

/// An online member other than this one that holds the image.
pub fn holder(ctx: &Ctx, state: &State, fingerprint: &str) -> Option<cluster::Member> {
    let me = ctx.member_id();
    let record = state.images.get(fingerprint)?;
    record
        .locations
        .iter()
        .filter(|at| **at != me)
        .filter_map(|at| at.and_then(|id| state.member_by_id(id)))
        .find(|m| crate::membership::is_online(ctx, &m.name))
        .cloned()
}

async fn fetch(ctx: &Ctx, state: &State, fingerprint: &str, dir: &std::path::Path) -> Result<(), ApiError> {
    let from = holder(ctx, state, fingerprint)
        .ok_or_else(|| ApiError::unavailable("Image not available on any online member"))?;
    let _busy = busy(ctx);
    tracing::info!(fingerprint, from = %from.name, "fetching image from member");
    let failed = |e: &dyn std::fmt::Display| {
        ApiError::unavailable(format!("Failed to fetch the image from {:?}: {e}", from.name))
    };
    // A connection of its own (HTTP/1.1), as a Raft snapshot gets: a long bulk transfer
    // neither holds up the calls sharing the pooled HTTP/2 connection nor pays HTTP/2's
    // framing and flow control on every 16 KiB.
    let stream = ctx
        .peers
        .connect_http1(&from.address)
        .await
        .map_err(|e| failed(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| failed(&e))?;
    let conn = AbortOnDrop(tokio::spawn(conn));
    let req = http::Request::get(format!("/internal/images/{fingerprint}"))
        .header(http::header::HOST, from.address.as_str())
        .body(axum::body::Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = tokio::time::timeout(ctx.settings().forward_timeout, sender.send_request(req))
        .await
        .map_err(|_| ApiError::unavailable(format!("Member {:?} did not answer", from.name)))?
        .map_err(|e| failed(&e))?;
    if resp.status() != http::StatusCode::OK {
        return Err(ApiError::internal(format!(
            "Failed to fetch the image from {:?}: it answered {}",
            from.name,
            resp.status()
        )));
    }
    let content_type = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = stalling(resp.into_body().into_data_stream(), FETCH_STALL);
    let upload = image::Upload::from_content_type(content_type.as_deref(), body).map_err(api_error)?;
    let limits = image::Limits {
        max_size: ctx.max_stream_body,
        ..Default::default()
    };
    image::import_copy(dir, upload, fingerprint, limits)
        .await
        .map_err(|e| ApiError::internal(format!("Failed to fetch the image from {:?}: {e}", from.name)))?;
    drop(conn);
    let added = ctx
        .store
        .apply(ImageCommand::AddImageLocation {
            fingerprint: fingerprint.to_string(),
            location: ctx.member_id(),
        })
        .await;
    if let Err(e) = added {
        // Deleted meanwhile (or we were removed): the copy has no record to join.
        let _ = image::delete(dir, fingerprint);
        return Err(crate::response::Error::from(e).0);
    }
    tracing::info!(fingerprint, from = %from.name, "image fetched");
    Ok(())
}

/// Aborts a connection's driver when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A body stream that fails when no chunk comes for `stall`.
fn stalling<S, E>(
    body: S,
    stall: Duration,
) -> std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display,
{
    let body = Box::pin(body);
    Box::pin(futures_util::stream::unfold(body, move |mut body| async move {
        match tokio::time::timeout(stall, body.next()).await {
            Ok(None) => None,
            Ok(Some(Ok(b))) => Some((Ok(b), body)),
            Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e.to_string())), body)),
            Err(_) => Some((Err(std::io::Error::other(format!("no data for {stall:?}"))), body)),
        }
    }))
}

/// The members to copy an image to: online members that lack it, in id order, until
/// `wanted` members hold it. Pure, for the tests.
pub fn replica_targets(
    state: &State,
    fingerprint: &str,
    wanted: usize,
    online: &dyn Fn(&str) -> bool,
) -> Vec<cluster::Member> {
    let Some(record) = state.images.get(fingerprint) else {
        return Vec::new();
    };
    let have = record.locations.len();
    let mut candidates: Vec<&cluster::Member> = state
        .members
        .values()
        .filter(|m| !record.locations.contains(&Some(m.id)) && online(&m.name))
        .collect();
    candidates.sort_by_key(|m| m.id);
    candidates
        .into_iter()
        .take(wanted.saturating_sub(have))
        .cloned()
        .collect()
}

/// Copies a new image to as many members as `cluster.images_minimal_replica` asks, each
/// pulling it from a holder. Failures are logged: the image stays usable from where it
/// is, and a member lacking it fetches it when it needs it.
pub async fn replicate(ctx: &Ctx, fingerprint: &str) {
    let state = ctx.store.state();
    if state.members.is_empty() {
        return;
    }
    let online = |name: &str| crate::membership::is_online(ctx, name);
    let wanted = ctx.settings().images_minimal_replica;
    let targets = replica_targets(&state, fingerprint, wanted, &online);
    let calls = targets.into_iter().map(|m| {
        let ctx = ctx.clone();
        let path = format!("/internal/images/{fingerprint}/fetch");
        async move {
            tracing::info!(fingerprint, member = %m.name, "copying image to member");
            let r = ctx
                .peers
                .request(&m.address, http::Method::POST, &path, Vec::new(), REPLICATE_TIMEOUT)
                .await;
            match r {
                Ok((200, _)) => {}
                Ok((status, body)) => tracing::warn!(
                    fingerprint, member = %m.name, status,
                    answer = %String::from_utf8_lossy(&body),
                    "copying image to member failed"
                ),
                Err(e) => tracing::warn!(fingerprint, member = %m.name, error = %e, "copying image to member failed"),
            }
        }
    });
    futures_util::future::join_all(calls).await;
    tracing::info!(fingerprint, "syncing image to members finished");
}

/// How often the leader tops up images held by fewer members than wanted (Incus:
/// hourly), e.g. after a member was down during an import or was removed.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(3600);

/// Every [`SYNC_INTERVAL`], on the Raft leader only (one copy per image and round),
/// copies each image to as many members as `cluster.images_minimal_replica` asks.
pub async fn sync_task(ctx: Ctx) {
    let mut stop = ctx.closing.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SYNC_INTERVAL) => {}
            _ = transport::listen::stopped(&mut stop) => return,
        }
        if ctx.store.raft_view().is_some_and(|v| v.is_leader()) {
            sync_all(&ctx).await;
        }
    }
}

/// Copies every image to as many members as `cluster.images_minimal_replica` asks.
pub async fn sync_all(ctx: &Ctx) {
    let fingerprints: Vec<String> = ctx.store.state().images.keys().cloned().collect();
    for fp in fingerprints {
        replicate(ctx, &fp).await;
    }
}

/// Follows the state: removes this member's files of images the state no longer has.
/// Runs when the set of images changed since it last ran, and not while an import or
/// fetch is under way here.
pub fn on_state_change(ctx: &Ctx) {
    let state = ctx.store.state();
    let now: Vec<String> = state.images.keys().cloned().collect();
    {
        let Ok(mut seen) = ctx.images.seen.lock() else {
            return;
        };
        if seen.as_ref() == Some(&now) {
            return;
        }
        if ctx.images.busy.lock().map(|n| *n > 0).unwrap_or(true) {
            return; // the guard's drop runs this again
        }
        *seen = Some(now);
    }
    let Ok(dir) = dir(ctx) else { return };
    let keep: HashSet<String> = state.images.keys().cloned().collect();
    let me = ctx.member_id();
    let listed: HashSet<String> = state.images_at(me).map(|r| r.image.fingerprint.clone()).collect();
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || {
        for gone in stale_files(&dir, &keep) {
            // An import that started after the check above places its file before its
            // record exists: leave it; the import's guard runs this pass again.
            let Ok(busy) = ctx.images.busy.lock() else { return };
            if *busy > 0 {
                return;
            }
            match image::delete(&dir, &gone) {
                Ok(()) => tracing::info!(fingerprint = %gone, "removed the files of a deleted image"),
                Err(e) => tracing::warn!(fingerprint = %gone, error = %e, "could not remove a deleted image"),
            }
        }
        // Listed here but the files are gone (removed by hand, a disk replaced) or not
        // whole (cut short by a power loss): say so, and drop what is left of them.
        let missing: Vec<String> = listed
            .into_iter()
            .filter(|fp| {
                // Checked and removed under the lock a fetch takes to start: a fetch placing
                // a new copy now must not have it removed; its guard's drop runs this again.
                let Ok(busy) = ctx.images.busy.lock() else {
                    return false;
                };
                if *busy > 0 {
                    return false;
                }
                let whole = state.images.get(fp).and_then(|r| whole_copy(&dir, r)).is_some();
                if !whole && image::ImageFiles::locate(&dir, fp).is_ok() {
                    tracing::warn!(fingerprint = %fp, "removed the files of an image that are not whole");
                    let _ = image::delete(&dir, fp);
                }
                !whole
            })
            .collect();
        if !missing.is_empty() {
            let handle = tokio::runtime::Handle::current();
            handle.spawn(async move {
                for fingerprint in missing {
                    let _ = ctx
                        .store
                        .apply(ImageCommand::RemoveImageLocation {
                            fingerprint,
                            location: me,
                        })
                        .await;
                }
            });
        }
    });
}

/// Fingerprints of the image files in `dir` that are not in `keep`.
fn stale_files(dir: &std::path::Path, keep: &HashSet<String>) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|name| {
            let fp = name.strip_suffix(".rootfs").unwrap_or(&name).to_string();
            (image::check_fingerprint(&fp).is_ok() && !keep.contains(&fp)).then_some(fp)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, id: u64) -> cluster::Member {
        cluster::Member {
            name: name.into(),
            id,
            address: format!("{name}:8443"),
            certificate: String::new(),
            fingerprint: name.into(),
            description: String::new(),
            failure_domain: "default".into(),
            architecture: "x86_64".into(),
        }
    }

    #[test]
    fn t10_replicas_go_to_online_members_lacking_the_image() {
        let mut s = State::default();
        for (n, id) in [("a", 1), ("b", 2), ("c", 3), ("d", 4)] {
            s.apply(
                &cluster::MemberCommand::AddMember {
                    member: member(n, id),
                    token_id: None,
                }
                .into(),
            )
            .unwrap();
        }
        s.apply(
            &ImageCommand::CreateImage {
                image: Box::new(api::types::Image {
                    fingerprint: "f".into(),
                    ..Default::default()
                }),
                location: Some(2),
                aliases: vec![],
            }
            .into(),
        )
        .unwrap();
        let all = |_: &str| true;
        let names = |v: Vec<cluster::Member>| v.into_iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(names(replica_targets(&s, "f", 3, &all)), ["a", "c"]);
        assert_eq!(names(replica_targets(&s, "f", 1, &all)), Vec::<String>::new());
        assert_eq!(names(replica_targets(&s, "f", usize::MAX, &all)), ["a", "c", "d"]);
        let not_a = |n: &str| n != "a";
        assert_eq!(names(replica_targets(&s, "f", 3, &not_a)), ["c", "d"]);
        assert!(replica_targets(&s, "nope", 3, &all).is_empty());
    }

    #[test]
    fn t10_stale_files_are_those_without_a_record() {
        let d = tempfile::tempdir().unwrap();
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        for name in [
            a.clone(),
            format!("{a}.rootfs"),
            b.clone(),
            ".partial-x".into(),
            "other".into(),
        ] {
            std::fs::write(d.path().join(name), b"x").unwrap();
        }
        let keep: HashSet<String> = [b.clone()].into();
        assert_eq!(stale_files(d.path(), &keep), [a]);
    }
}
