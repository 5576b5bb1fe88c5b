//! Container volumes between members: one volume (an instance's, or one of its
//! snapshots) as one streamed request on the members' mutual-TLS channel.
//!
//! ```text
//!  destination                                   source owner
//!  GET /internal/volumes/{name}[?snapshot=S] ──> freeze if running (rootfs only)
//!                                                tar -C <volume> (GNU tar: numeric owners,
//!                                                xattrs, hard links, devices; reads only)
//!  <── frames: [len u32 BE][bytes]… [0][sha256 of all bytes]
//!  deframe + hash ─> image::unpack_volume into a staged hidden directory
//!  (descriptor-relative, nothing lands outside it, same checks as an image unpack)
//!  digest equal and the end frame seen ─> whole; anything else ─> the stage is removed
//! ```
//!
//! The body moves a window at a time (HTTP/2 flow control on the sending side, a
//! channel of [`QUEUE`] chunks on the receiving side), so memory stays flat whatever the
//! volume's size, and a slow receiver slows the `tar` that reads the disk. A stream cut
//! short (a member killed, a connection cut) has no end frame and fails; a stream that
//! does not move for [`STALL`] fails. The staged directory becomes a volume only when
//! the caller commits it, so a failed transfer leaves nothing under a real name.
//!
//! Copy uses it for an instance's rootfs and each snapshot; a move can use exactly the
//! same pull (the destination fetches, commits, then the record changes owner and the
//! source removes its copy).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use tokio::io::AsyncReadExt;

use crate::context::Ctx;

/// How long a transfer may go without a chunk.
pub const STALL: Duration = Duration::from_secs(60);
/// Chunks buffered between the network and the unpacking thread.
const QUEUE: usize = 8;
/// The largest frame a sender writes (and a receiver accepts).
const MAX_FRAME: usize = 1 << 20;
/// What ends a stream: a zero length, then the digest.
const DIGEST_LEN: usize = 32;

/// Removes what copies, snapshots and restores cut short by a crash left in this
/// member's pools (hidden stages and half-deleted trees), before anything uses them.
pub fn remove_partial(ctx: &Ctx) {
    let state = ctx.store.state();
    for name in state.pools.keys() {
        let Ok(pool) = crate::routes::instances::local_pool(ctx, &state, name) else {
            continue;
        };
        match pool.remove_partial() {
            Ok(0) => {}
            Ok(n) => tracing::info!(pool = %name, removed = n, "removed partial volumes"),
            Err(e) => tracing::warn!(pool = %name, error = %e, "could not remove partial volumes"),
        }
    }
}

/// Encodes one frame header.
fn frame_header(len: usize) -> [u8; 4] {
    (len as u32).to_be_bytes()
}

/// Streams the volume at `path` as framed tar. `done` runs when the stream ends, whether
/// it completed or the receiver went away (to thaw a frozen instance).
pub fn send(path: PathBuf, done: impl FnOnce() + Send + 'static) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(QUEUE);
    tokio::spawn(async move {
        let result = pump(&path, &tx).await;
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "volume stream failed");
            let _ = tx.send(Err(std::io::Error::other(e))).await;
        }
        done();
    });
    Body::from_stream(tokio_stream(rx))
}

fn tokio_stream(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The names at the top of a volume, for `tar`'s argument list.
fn top_entries(path: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(path)? {
        out.push(e?.file_name().to_string_lossy().into_owned());
    }
    out.sort();
    Ok(out)
}

async fn pump(path: &Path, tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>) -> Result<(), String> {
    let entries = top_entries(path).map_err(|e| format!("listing {}: {e}", path.display()))?;
    let mut cmd = tokio::process::Command::new("tar");
    cmd.arg("--create")
        .arg("--file=-")
        .arg("--format=posix")
        .arg("--numeric-owner")
        .arg("--xattrs")
        .arg("--xattrs-include=*")
        .arg("--sparse")
        .arg("--one-file-system")
        .arg("-C")
        .arg(path)
        .arg("--")
        .args(&entries)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("starting tar: {e}"))?;
    let mut out = child.stdout.take().ok_or("tar has no output")?;
    let mut err = child.stderr.take().ok_or("tar has no error output")?;
    let errors = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = (&mut err).take(16 * 1024).read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).trim().to_string()
    });
    let mut hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = out
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading tar: {e}"))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        let mut chunk = Vec::with_capacity(n + 4);
        chunk.extend_from_slice(&frame_header(n));
        chunk.extend_from_slice(&buf[..n]);
        if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
            // The receiver went away: stop reading the disk.
            let _ = child.kill().await;
            return Ok(());
        }
    }
    let status = child.wait().await.map_err(|e| format!("waiting for tar: {e}"))?;
    let stderr = errors.await.unwrap_or_default();
    if !status.success() {
        return Err(format!("tar failed ({status}): {stderr}"));
    }
    let mut end = Vec::with_capacity(4 + DIGEST_LEN);
    end.extend_from_slice(&frame_header(0));
    end.extend_from_slice(hash.finish().as_ref());
    let _ = tx.send(Ok(Bytes::from(end))).await;
    Ok(())
}

/// Reads frames and gives their bytes; fails on a stream that ends without the end
/// frame, and, at the end frame, on a digest that does not match.
pub struct Deframer<R> {
    inner: R,
    left: usize,
    hash: Option<aws_lc_rs::digest::Context>,
    ended: bool,
}

impl<R: Read> Deframer<R> {
    pub fn new(inner: R) -> Self {
        Deframer {
            inner,
            left: 0,
            hash: Some(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256)),
            ended: false,
        }
    }

    /// Reads to the end frame and checks the digest.
    pub fn finish(mut self) -> std::io::Result<()> {
        let mut sink = [0u8; 64 * 1024];
        while self.read(&mut sink)? > 0 {}
        Ok(())
    }

    fn next_frame(&mut self) -> std::io::Result<()> {
        let mut head = [0u8; 4];
        self.inner.read_exact(&mut head).map_err(|_| cut())?;
        let len = u32::from_be_bytes(head) as usize;
        if len > MAX_FRAME {
            return Err(std::io::Error::other("volume stream: frame too large"));
        }
        if len == 0 {
            let mut digest = [0u8; DIGEST_LEN];
            self.inner.read_exact(&mut digest).map_err(|_| cut())?;
            let ours = self.hash.take().map(|h| h.finish());
            if ours.as_ref().map(|d| d.as_ref()) != Some(&digest[..]) {
                return Err(std::io::Error::other("volume stream: checksum mismatch"));
            }
            self.ended = true;
        }
        self.left = len;
        Ok(())
    }
}

fn cut() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "volume stream cut short (no end frame)",
    )
}

impl<R: Read> Read for Deframer<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.left == 0 {
            if self.ended {
                return Ok(0);
            }
            self.next_frame()?;
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(cut());
        }
        self.left -= n;
        if let Some(h) = self.hash.as_mut() {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// A blocking reader over chunks sent from an async task (read on a blocking thread).
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Sends `req` to member `member` at `address` (bounded by `cluster.forward_timeout`
/// until the answer starts) and expects 200: else an error naming the member and
/// saying it could not `what` ("send the volume"), with the member's own message.
pub(crate) async fn open(
    ctx: &Ctx,
    member: &str,
    address: &str,
    req: http::Request<axum::body::Body>,
    what: &str,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let resp = tokio::time::timeout(ctx.settings().forward_timeout, ctx.peers.exchange(address, req))
        .await
        .map_err(|_| format!("Cluster member {member:?} did not answer in time"))?
        .map_err(|e| format!("Failed to reach cluster member {member:?}: {e}"))?;
    if resp.status() == http::StatusCode::OK {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let msg = serde_json::from_slice::<api::Envelope>(&body)
        .ok()
        .map(|e| e.error)
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| status.to_string());
    Err(format!("Cluster member {member:?} could not {what}: {msg}"))
}

/// Fetches volume `name` (or its snapshot) from the member at `address` into the
/// empty directory `staged`, adding the bytes received to `received` as they come. On
/// error the directory may hold a part: the caller removes it.
pub async fn fetch(
    ctx: &Ctx,
    member: &str,
    address: &str,
    name: &str,
    snapshot: Option<&str>,
    staged: PathBuf,
    received: Option<&std::sync::atomic::AtomicU64>,
) -> Result<(), String> {
    let mut path = format!("/internal/volumes/{name}");
    if let Some(s) = snapshot {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("snapshot", s)
            .finish();
        path.push('?');
        path.push_str(&query);
    }
    let req = http::Request::get(path)
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let resp = open(ctx, member, address, req, "send the volume").await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(QUEUE);
    let unpack = tokio::task::spawn_blocking(move || {
        let mut reader = Deframer::new(ChannelReader {
            rx,
            current: Bytes::new(),
        });
        image::unpack_volume(&mut reader, &staged, &image::UnpackOptions::default())
            .map_err(|e| e.to_string())?;
        reader.finish().map_err(|e| e.to_string())
    });
    let mut body = resp.into_body().into_data_stream();
    let pumped = async {
        loop {
            let item = match tokio::time::timeout(STALL, body.next()).await {
                Err(_) => Err(std::io::Error::other(format!("no data for {STALL:?}"))),
                Ok(None) => break,
                Ok(Some(Ok(b))) => {
                    if let Some(r) = received {
                        r.fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(b)
                }
                Ok(Some(Err(e))) => Err(std::io::Error::other(e.to_string())),
            };
            let failed = item.is_err();
            // Bounded: a slow unpack holds the network back.
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    };
    pumped.await;
    drop(tx);
    unpack
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("Failed receiving the volume from cluster member {member:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(data: &[u8], chunk: usize, digest_of: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in data.chunks(chunk) {
            out.extend_from_slice(&frame_header(c.len()));
            out.extend_from_slice(c);
        }
        out.extend_from_slice(&frame_header(0));
        out.extend_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, digest_of).as_ref());
        out
    }

    #[test]
    fn t10_frames_round_trip() {
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let wire = framed(&data, 777, &data);
        let mut d = Deframer::new(&wire[..]);
        let mut back = Vec::new();
        d.read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn t50_cut_or_altered_streams_fail() {
        let data = b"some volume bytes".to_vec();
        let wire = framed(&data, 5, &data);
        // Cut anywhere before the end: an error, never a clean end.
        for cut_at in 0..wire.len() {
            let mut back = Vec::new();
            assert!(
                Deframer::new(&wire[..cut_at]).read_to_end(&mut back).is_err(),
                "cut at {cut_at}"
            );
        }
        let bad = framed(&data, 5, b"other bytes");
        let mut back = Vec::new();
        assert!(Deframer::new(&bad[..]).read_to_end(&mut back).is_err());
        let mut huge = frame_header(MAX_FRAME + 1).to_vec();
        huge.extend_from_slice(&[0; 16]);
        assert!(Deframer::new(&huge[..]).read_to_end(&mut back).is_err());
    }
}
