//! Exec through a member that does not hold the container, timed with the official
//! client (cluster mode): `incus exec` against node1 of a container that runs on node2,
//! so every byte goes client -> node1 -> node2 -> the container and back.
//!
//! Each side gets one container `c1` on node2, launched on first use from the busybox
//! image `bb` of the instance cases ([`crate::instances`]: the same pool and image
//! setup, done once per side whichever of these cases runs first).
//!
//! - `exec`: the latency of `incus exec c1 -- true`, 50 times in a row after 2 warm-up
//!   runs, each from starting the client until it exits (the client's own start, 20-40
//!   ms, included on both sides): p50 and p90 in seconds.
//! - `exec_cat`: `head -c 1G /dev/zero | incus exec c1 -- cat > /dev/null`: 1 GiB goes
//!   into the container through the client's stdin and comes back out through its
//!   stdout, both ways through node1: MB/s (10^6 bytes of the 1 GiB), seconds, and the
//!   peak RSS of node1 (the relay) and node2 (the owner) during the run, measured as
//!   the image import measures it (VmHWM after a reset, and VmRSS sampled every 10 ms).
//!
//! `c1` is deleted when the rounds end ([`Case::cleanup`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::future::BoxFuture;
use tokio::sync::Mutex;

use crate::cases::{Case, RunCtx, Variant};
use crate::import::{incus, mb_per_s, reset_peak, rss_now};
use crate::lab::{log, Kind, Side};
use crate::results::{Metric, Sample};
use crate::stats::percentile;

/// Runs of `incus exec c1 -- true` per sample, and warm-up runs before them.
pub const LATENCY_RUNS: usize = 50;
pub const WARMUP_RUNS: usize = 2;
/// Bytes piped through `cat` per sample.
pub const CAT_BYTES: u64 = 1 << 30;
/// How long one exec may take (1 GiB on a busy machine).
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(600);
/// How long making the container may take (image import, launch).
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(300);

pub const LATENCY_METRICS: &[Metric] = &[
    Metric {
        name: "p50",
        unit: "s",
        decimals: 3,
    },
    Metric {
        name: "p90",
        unit: "s",
        decimals: 3,
    },
];

pub const CAT_METRICS: &[Metric] = &[
    Metric {
        name: "MB/s",
        unit: "",
        decimals: 1,
    },
    Metric {
        name: "seconds",
        unit: "s",
        decimals: 2,
    },
    Metric {
        name: "node1 peak RSS",
        unit: "MB",
        decimals: 1,
    },
    Metric {
        name: "node2 peak RSS",
        unit: "MB",
        decimals: 1,
    },
];

/// What the exec and file cases share: the instance cases' setup (the client
/// configuration, a pool, the busybox image `bb`) and, per side, the container `c1`.
pub struct Shared {
    setup: std::sync::Arc<crate::instances::Shared>,
    ready: Mutex<Vec<Kind>>,
}

impl Shared {
    pub fn new(setup: std::sync::Arc<crate::instances::Shared>) -> Shared {
        Shared {
            setup,
            ready: Mutex::new(Vec::new()),
        }
    }

    /// The client configuration, with `c1` running on node2 of `side`.
    pub(crate) async fn container(&self, ctx: &RunCtx<'_>, side: &Side) -> anyhow::Result<PathBuf> {
        let conf = self.setup.prepare(ctx, side).await?;
        let mut ready = self.ready.lock().await;
        if ready.contains(&side.kind) {
            return Ok(conf);
        }
        let r = side.kind.name();
        let t = Instant::now();
        let (image, c1) = (format!("{r}:bb"), format!("{r}:c1"));
        incus(
            ctx,
            &conf,
            &["launch", &image, &c1, "--target", "node2"],
            SETUP_TIMEOUT,
        )
        .await?;
        let list = incus(
            ctx,
            &conf,
            &["list", &c1, "--format", "csv", "-c", "nsL"],
            SETUP_TIMEOUT,
        )
        .await?;
        if list.trim() != "c1,RUNNING,node2" {
            bail!("{r}: c1 is not running on node2: {list:?}");
        }
        log(format!(
            "{r}: c1 running on node2 after {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        ready.push(side.kind);
        Ok(conf)
    }

    /// Deletes `c1` of `side` if this made it.
    pub(crate) async fn remove(&self, ctx: &RunCtx<'_>, side: &Side) -> anyhow::Result<()> {
        let mut ready = self.ready.lock().await;
        if let Some(i) = ready.iter().position(|k| *k == side.kind) {
            ready.remove(i);
            let conf = crate::import::client_conf(ctx);
            let c1 = format!("{}:c1", side.kind.name());
            incus(ctx, &conf, &["delete", "--force", &c1], SETUP_TIMEOUT).await?;
        }
        Ok(())
    }
}

/// Runs `incus exec REMOTE:c1 -- true` once; seconds until the client exited 0.
async fn exec_true(conf: &Path, remote: &str) -> anyhow::Result<f64> {
    let mut cmd = tokio::process::Command::new("incus");
    cmd.env("INCUS_CONF", conf)
        .args(["exec", &format!("{remote}:c1"), "--", "true"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let t = Instant::now();
    let out = tokio::time::timeout(EXEC_TIMEOUT, cmd.output())
        .await
        .context("incus exec c1 -- true did not end")??;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{remote}: incus exec c1 -- true: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(secs)
}

/// Runs `sh -c script` with the client configuration `conf`, bounded by `limit`, and
/// watches node1 (the relay) and node2 (the owner) of `side` meanwhile: the seconds
/// until it exited 0 and each member's peak RSS in MB (VmHWM after a reset where the
/// kernel allows it, and VmRSS sampled every 10 ms).
pub(crate) async fn run_watched(
    ctx: &RunCtx<'_>,
    side: &Side,
    conf: &Path,
    script: &str,
    limit: Duration,
) -> anyhow::Result<(f64, [f64; 2])> {
    let (relay, owner) = (&side.members[0], &side.members[1]);
    let mut pids = [0i32; 2];
    for (i, m) in [relay, owner].into_iter().enumerate() {
        pids[i] = ctx
            .lab
            .pid(&m.key)
            .with_context(|| format!("{} is not running", m.key))?;
    }
    let mut peak_kb = [0.0f64; 2];
    let mut reset = [false; 2];
    for (i, pid) in pids.iter().enumerate() {
        peak_kb[i] = rss_now(*pid).context("reading a member's memory")?.rss_kb;
        reset[i] = reset_peak(*pid);
    }
    let mut cmd = tokio::process::Command::new("sh");
    cmd.env("INCUS_CONF", conf)
        .args(["-c", script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let t = Instant::now();
    let run = tokio::time::timeout(limit, cmd.output());
    tokio::pin!(run);
    let out = loop {
        tokio::select! {
            r = &mut run => break r.with_context(|| format!("{script} did not end"))??,
            _ = tokio::time::sleep(Duration::from_millis(10)) => {
                for (i, pid) in pids.iter().enumerate() {
                    if let Some(m) = rss_now(*pid) {
                        peak_kb[i] = peak_kb[i].max(m.rss_kb);
                    }
                }
            }
        }
    };
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{}: {script}: {} {}",
            side.kind.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    for (i, pid) in pids.iter().enumerate() {
        if let (true, Some(m)) = (reset[i], rss_now(*pid)) {
            peak_kb[i] = peak_kb[i].max(m.hwm_kb);
        }
    }
    Ok((secs, [peak_kb[0] / 1024.0, peak_kb[1] / 1024.0]))
}

/// `incus exec c1 -- true` through node1, c1 on node2.
pub struct ExecLatency(pub std::sync::Arc<Shared>);

/// 1 GiB through `cat` in c1 on node2 and back, through node1.
pub struct ExecCat(pub std::sync::Arc<Shared>);

impl Case for ExecLatency {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn label(&self) -> &'static str {
        "incus exec c1 -- true via node1, c1 on node2"
    }

    fn variants(&self) -> Vec<Variant> {
        vec![Variant {
            label: format!("{LATENCY_RUNS} runs"),
            conc: 1,
        }]
    }

    fn metrics(&self) -> &'static [Metric] {
        LATENCY_METRICS
    }

    fn run<'a>(
        &'a self,
        ctx: &'a RunCtx<'a>,
        side: &'a Side,
        _variant: &'a Variant,
        _raw: &'a Path,
    ) -> BoxFuture<'a, anyhow::Result<Sample>> {
        Box::pin(async move {
            let conf = self.0.container(ctx, side).await?;
            let remote = side.kind.name();
            for _ in 0..WARMUP_RUNS {
                exec_true(&conf, remote).await?;
            }
            let mut secs = Vec::with_capacity(LATENCY_RUNS);
            for _ in 0..LATENCY_RUNS {
                secs.push(exec_true(&conf, remote).await?);
            }
            let p = |q| percentile(&secs, q).unwrap_or(f64::NAN);
            Ok(Sample {
                values: vec![p(50), p(90)],
                unexpected: 0,
            })
        })
    }

    fn cleanup<'a>(&'a self, ctx: &'a RunCtx<'a>, side: &'a Side) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move { self.0.remove(ctx, side).await })
    }
}

impl Case for ExecCat {
    fn name(&self) -> &'static str {
        "exec_cat"
    }

    fn label(&self) -> &'static str {
        "head -c 1G /dev/zero | incus exec c1 -- cat > /dev/null via node1 (in and back out)"
    }

    fn variants(&self) -> Vec<Variant> {
        vec![Variant {
            label: "1GiB".into(),
            conc: 1,
        }]
    }

    fn metrics(&self) -> &'static [Metric] {
        CAT_METRICS
    }

    fn run<'a>(
        &'a self,
        ctx: &'a RunCtx<'a>,
        side: &'a Side,
        _variant: &'a Variant,
        _raw: &'a Path,
    ) -> BoxFuture<'a, anyhow::Result<Sample>> {
        Box::pin(async move {
            let conf = self.0.container(ctx, side).await?;
            let script = format!(
                "head -c {CAT_BYTES} /dev/zero | incus exec {}:c1 -- cat > /dev/null",
                side.kind.name()
            );
            let (secs, peak) = run_watched(ctx, side, &conf, &script, EXEC_TIMEOUT).await?;
            Ok(Sample {
                values: vec![mb_per_s(CAT_BYTES, secs), secs, peak[0], peak[1]],
                unexpected: 0,
            })
        })
    }

    fn cleanup<'a>(&'a self, ctx: &'a RunCtx<'a>, side: &'a Side) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move { self.0.remove(ctx, side).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_the_latency_is_the_nearest_rank_median() {
        let xs: Vec<f64> = (1..=50).rev().map(f64::from).collect();
        assert_eq!(percentile(&xs, 50), Some(25.0));
        assert_eq!(percentile(&xs, 90), Some(45.0));
    }
}
