//! File transfer through a member that does not hold the container, timed with the
//! official client (cluster mode): `incus file push` and `incus file pull` of 1 GiB
//! against node1, the container `c1` running on node2 (the one of the exec cases,
//! [`crate::exec`]), so every byte goes client -> node1 -> node2 -> the container's
//! file system or back. The client speaks SFTP over the instance's `sftp` upgrade on
//! both sides.
//!
//! - `file`, variant `push`: `incus file push` of a 1 GiB file (zeros, written once in
//!   the lab directory, so it comes from the page cache) to `/root/big` in c1;
//! - variant `pull`: `incus file pull` of `/root/big` to a file in the lab directory
//!   (removed after each run); a push before it (not timed) when this side has none.
//!
//! Each reports MB/s (10^6 bytes of the 1 GiB), seconds, and the peak RSS of node1 (the
//! relay) and node2 (the owner) during the run, as `exec_cat` measures them.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use tokio::sync::{Mutex, OnceCell};

use crate::cases::{Case, RunCtx, Variant};
use crate::exec::{run_watched, Shared, CAT_METRICS};
use crate::import::mb_per_s;
use crate::lab::{Kind, Side};
use crate::results::{Metric, Sample};

/// Bytes per transfer.
pub const FILE_BYTES: u64 = 1 << 30;
/// How long one transfer may take (1 GiB on a busy machine).
pub const FILE_TIMEOUT: Duration = Duration::from_secs(600);
/// Where the file goes in c1 (on the pool's disk, not the tmpfs on /tmp).
pub const IN_C1: &str = "/root/big";

/// `incus file push` and `incus file pull` of 1 GiB through node1, c1 on node2.
pub struct Files {
    shared: std::sync::Arc<Shared>,
    source: OnceCell<PathBuf>,
    /// The sides whose c1 holds the pushed file.
    pushed: Mutex<Vec<Kind>>,
}

impl Files {
    pub fn new(shared: std::sync::Arc<Shared>) -> Files {
        Files {
            shared,
            source: OnceCell::new(),
            pushed: Mutex::new(Vec::new()),
        }
    }

    async fn source(&self, dir: &Path) -> anyhow::Result<&PathBuf> {
        self.source
            .get_or_try_init(|| async {
                let path = dir.join("file-1GiB");
                let p = path.clone();
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    let mut f = std::io::BufWriter::new(std::fs::File::create(&p)?);
                    std::io::copy(&mut std::io::repeat(0).take(FILE_BYTES), &mut f)?;
                    std::io::Write::flush(&mut f)
                })
                .await?
                .with_context(|| format!("writing {}", path.display()))?;
                Ok(path)
            })
            .await
    }

    /// `incus file push` of the source file to c1, watched.
    async fn push(&self, ctx: &RunCtx<'_>, side: &Side, conf: &Path) -> anyhow::Result<(f64, [f64; 2])> {
        let source = self.source(&ctx.lab.dir).await?;
        let script = format!(
            "incus file push '{}' {}:c1{IN_C1}",
            source.display(),
            side.kind.name()
        );
        let r = run_watched(ctx, side, conf, &script, FILE_TIMEOUT).await?;
        let mut pushed = self.pushed.lock().await;
        if !pushed.contains(&side.kind) {
            pushed.push(side.kind);
        }
        Ok(r)
    }

    async fn pull(&self, ctx: &RunCtx<'_>, side: &Side, conf: &Path) -> anyhow::Result<(f64, [f64; 2])> {
        if !self.pushed.lock().await.contains(&side.kind) {
            self.push(ctx, side, conf).await?;
        }
        let target = ctx.lab.dir.join("file-pulled");
        let _ = std::fs::remove_file(&target);
        let script = format!(
            "incus file pull {}:c1{IN_C1} '{}'",
            side.kind.name(),
            target.display()
        );
        let r = run_watched(ctx, side, conf, &script, FILE_TIMEOUT).await;
        let size = std::fs::metadata(&target).map(|m| m.len());
        let _ = std::fs::remove_file(&target);
        let r = r?;
        match size {
            Ok(FILE_BYTES) => Ok(r),
            other => anyhow::bail!(
                "{}: the pulled file has {other:?} bytes, not {FILE_BYTES}",
                side.kind.name()
            ),
        }
    }
}

impl Case for Files {
    fn name(&self) -> &'static str {
        "file"
    }

    fn label(&self) -> &'static str {
        "incus file push/pull of 1 GiB via node1, c1 on node2"
    }

    fn variants(&self) -> Vec<Variant> {
        ["push", "pull"]
            .into_iter()
            .map(|label| Variant {
                label: label.into(),
                conc: 1,
            })
            .collect()
    }

    fn metrics(&self) -> &'static [Metric] {
        CAT_METRICS
    }

    fn run<'a>(
        &'a self,
        ctx: &'a RunCtx<'a>,
        side: &'a Side,
        variant: &'a Variant,
        _raw: &'a Path,
    ) -> BoxFuture<'a, anyhow::Result<Sample>> {
        Box::pin(async move {
            let conf = self.shared.container(ctx, side).await?;
            let (secs, peak) = if variant.label == "pull" {
                self.pull(ctx, side, &conf).await?
            } else {
                self.push(ctx, side, &conf).await?
            };
            Ok(Sample {
                values: vec![mb_per_s(FILE_BYTES, secs), secs, peak[0], peak[1]],
                unexpected: 0,
            })
        })
    }

    fn cleanup<'a>(&'a self, ctx: &'a RunCtx<'a>, side: &'a Side) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            if let Some(p) = self.source.get() {
                let _ = std::fs::remove_file(p);
            }
            self.pushed.lock().await.clear();
            self.shared.remove(ctx, side).await
        })
    }
}
