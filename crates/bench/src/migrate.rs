//! Instances between members, timed with the official client against node1, which
//! holds neither end (cluster mode, real LXC containers from the busybox image `bb` of
//! [`crate::instances`], same pool and image setup):
//!
//! - `move`: the stopped container `mv` on node2 whose root file system holds
//!   [`MOVE_BYTES`] (500 MiB) of pseudo-random, incompressible bytes in `/root/payload`
//!   besides busybox (written once per side before the first run: launched, `incus file
//!   push` of a file made once in the lab directory, forced stop; not timed). One run is
//!   `incus move mv --target node3`, then `incus move mv --target node2`, each timed
//!   from spawning the client until it exits, then a check (not timed) that it is on
//!   node2 again. MB/s counts the payload only (10^6 bytes; busybox's ~2 MB are left
//!   out) over both moves: 2 x 500 MiB / (there + back).
//! - `evacuate`: node2 holds [`EVACUATED`] (20) running containers `e00`... with
//!   `boot.host_shutdown_timeout` = [`SHUTDOWN_TIMEOUT`] (made once per side, not timed).
//!   One run is `incus cluster evacuate node2 --force --action migrate` (each container
//!   stopped cleanly, moved to another member, started there), a check (not timed)
//!   that node2 holds none and all run, then `incus cluster restore node2 --force`
//!   (each moved back and started), and a check that all run on node2 again. They run
//!   because that is what an evacuation is for: the figure holds the stops and starts
//!   as well as the moves. busybox's init halts on LXC's SIGPWR (its halt sequence
//!   waits about a second for processes to end); the shutdown timeout only bounds a
//!   container that does not, the same on both sides.
//!
//! Everything the cases made is deleted when the rounds end ([`Case::cleanup`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::future::BoxFuture;
use serde_json::json;
use tokio::sync::{Mutex, OnceCell};

use crate::cases::{Case, RunCtx, Variant};
use crate::import::{incus, mb_per_s, Noise};
use crate::lab::{log, Kind, Side};
use crate::results::{Metric, Sample};

/// The payload in the moved container's root file system.
pub const MOVE_BYTES: u64 = 500 << 20;
/// Containers on node2 for the evacuation.
pub const EVACUATED: u32 = 20;
/// `boot.host_shutdown_timeout` of the evacuated containers, in seconds.
pub const SHUTDOWN_TIMEOUT: u32 = 30;
/// How long one move, evacuation or restore may take.
pub const MIGRATE_TIMEOUT: Duration = Duration::from_secs(900);
/// How long making a container or pushing the payload may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(600);

pub const MOVE_METRICS: &[Metric] = &[
    Metric {
        name: "MB/s",
        unit: "",
        decimals: 1,
    },
    Metric {
        name: "to node3",
        unit: "s",
        decimals: 2,
    },
    Metric {
        name: "back",
        unit: "s",
        decimals: 2,
    },
];

pub const EVACUATE_METRICS: &[Metric] = &[
    Metric {
        name: "evacuate",
        unit: "s",
        decimals: 2,
    },
    Metric {
        name: "restore",
        unit: "s",
        decimals: 2,
    },
];

/// The name of the evacuated container `i`.
pub fn evacuated(i: u32) -> String {
    format!("e{i:02}")
}

/// Runs the client once, timed; seconds.
async fn timed(ctx: &RunCtx<'_>, conf: &Path, args: &[&str]) -> anyhow::Result<f64> {
    let t = Instant::now();
    incus(ctx, conf, args, MIGRATE_TIMEOUT).await?;
    Ok(t.elapsed().as_secs_f64())
}

/// `name,STATE,location` rows of `incus list` of the side, by name.
async fn where_are(
    ctx: &RunCtx<'_>,
    conf: &Path,
    side: &Side,
) -> anyhow::Result<Vec<(String, String, String)>> {
    let remote = format!("{}:", side.kind.name());
    let out = incus(
        ctx,
        conf,
        &["list", &remote, "--format", "csv", "-c", "nsL"],
        SETUP_TIMEOUT,
    )
    .await?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut f = l.split(',');
            Some((f.next()?.into(), f.next()?.into(), f.next()?.into()))
        })
        .collect())
}

/// The stopped container `mv` with its payload on node2, per side.
pub struct Move {
    setup: std::sync::Arc<crate::instances::Shared>,
    payload: OnceCell<PathBuf>,
    ready: Mutex<Vec<Kind>>,
}

impl Move {
    pub fn new(setup: std::sync::Arc<crate::instances::Shared>) -> Move {
        Move {
            setup,
            payload: OnceCell::new(),
            ready: Mutex::new(Vec::new()),
        }
    }

    async fn payload(&self, dir: &Path) -> anyhow::Result<&PathBuf> {
        self.payload
            .get_or_try_init(|| async {
                let path = dir.join("move-payload");
                let p = path.clone();
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&p)?);
                    std::io::copy(&mut std::io::Read::take(Noise::new(17), MOVE_BYTES), &mut f)?;
                    std::io::Write::flush(&mut f)
                })
                .await?
                .with_context(|| format!("writing {}", path.display()))?;
                Ok(path)
            })
            .await
    }

    /// The client configuration, with `mv` stopped on node2 holding the payload.
    async fn container(&self, ctx: &RunCtx<'_>, side: &Side) -> anyhow::Result<PathBuf> {
        let conf = self.setup.prepare(ctx, side).await?;
        let mut ready = self.ready.lock().await;
        if ready.contains(&side.kind) {
            return Ok(conf);
        }
        let payload = self.payload(&ctx.lab.dir).await?.display().to_string();
        let r = side.kind.name();
        let (image, mv) = (format!("{r}:bb"), format!("{r}:mv"));
        let t = Instant::now();
        incus(
            ctx,
            &conf,
            &["launch", &image, &mv, "--target", "node2"],
            SETUP_TIMEOUT,
        )
        .await?;
        let dest = format!("{mv}/root/payload");
        incus(ctx, &conf, &["file", "push", &payload, &dest], SETUP_TIMEOUT).await?;
        incus(ctx, &conf, &["stop", "--force", &mv], SETUP_TIMEOUT).await?;
        log(format!(
            "{r}: mv stopped on node2 with {} MiB of payload after {:.1} s",
            MOVE_BYTES >> 20,
            t.elapsed().as_secs_f64()
        ));
        ready.push(side.kind);
        Ok(conf)
    }
}

impl Case for Move {
    fn name(&self) -> &'static str {
        "move"
    }

    fn label(&self) -> &'static str {
        "incus move, stopped, 500 MiB, node2->node3->node2 (node1)"
    }

    fn variants(&self) -> Vec<Variant> {
        vec![Variant {
            label: "500MiB".into(),
            conc: 1,
        }]
    }

    fn metrics(&self) -> &'static [Metric] {
        MOVE_METRICS
    }

    fn run<'a>(
        &'a self,
        ctx: &'a RunCtx<'a>,
        side: &'a Side,
        _variant: &'a Variant,
        _raw: &'a Path,
    ) -> BoxFuture<'a, anyhow::Result<Sample>> {
        Box::pin(async move {
            let conf = self.container(ctx, side).await?;
            let mv = format!("{}:mv", side.kind.name());
            let there = timed(ctx, &conf, &["move", &mv, "--target", "node3"]).await?;
            let back = timed(ctx, &conf, &["move", &mv, "--target", "node2"]).await?;
            let rows = where_are(ctx, &conf, side).await?;
            let unexpected = u64::from(
                !rows
                    .iter()
                    .any(|(n, s, l)| n == "mv" && s == "STOPPED" && l == "node2"),
            );
            if unexpected > 0 {
                log(format!(
                    "{}: mv is not stopped on node2: {rows:?}",
                    side.kind.name()
                ));
            }
            Ok(Sample {
                values: vec![mb_per_s(2 * MOVE_BYTES, there + back), there, back],
                unexpected,
            })
        })
    }

    fn cleanup<'a>(&'a self, ctx: &'a RunCtx<'a>, side: &'a Side) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let mut ready = self.ready.lock().await;
            if let Some(i) = ready.iter().position(|k| *k == side.kind) {
                ready.remove(i);
                let conf = crate::import::client_conf(ctx);
                let mv = format!("{}:mv", side.kind.name());
                incus(ctx, &conf, &["delete", "--force", &mv], SETUP_TIMEOUT).await?;
            }
            if ready.is_empty() {
                if let Some(p) = self.payload.get() {
                    let _ = std::fs::remove_file(p);
                }
            }
            Ok(())
        })
    }
}

/// node2's running containers evacuated and restored.
pub struct Evacuate {
    setup: std::sync::Arc<crate::instances::Shared>,
    ready: Mutex<Vec<Kind>>,
}

impl Evacuate {
    pub fn new(setup: std::sync::Arc<crate::instances::Shared>) -> Evacuate {
        Evacuate {
            setup,
            ready: Mutex::new(Vec::new()),
        }
    }

    /// The client configuration, with the containers running on node2.
    async fn containers(&self, ctx: &RunCtx<'_>, side: &Side) -> anyhow::Result<PathBuf> {
        let conf = self.setup.prepare(ctx, side).await?;
        let mut ready = self.ready.lock().await;
        if ready.contains(&side.kind) {
            return Ok(conf);
        }
        let t = Instant::now();
        let names: Vec<String> = (0..EVACUATED).map(evacuated).collect();
        let config = json!({"boot.host_shutdown_timeout": SHUTDOWN_TIMEOUT.to_string()});
        crate::instances::start_on_node2(ctx, side, &names, &config).await?;
        log(format!(
            "{}: {EVACUATED} running containers on node2 made in {:.1} s",
            side.kind.name(),
            t.elapsed().as_secs_f64()
        ));
        ready.push(side.kind);
        Ok(conf)
    }

    /// Fails unless every container runs, and on node2 exactly when `on_node2`.
    async fn check(&self, ctx: &RunCtx<'_>, conf: &Path, side: &Side, on_node2: bool) -> anyhow::Result<()> {
        let rows = where_are(ctx, conf, side).await?;
        let ours: Vec<_> = rows.iter().filter(|(n, _, _)| n.starts_with('e')).collect();
        let fine = ours.len() == EVACUATED as usize
            && ours
                .iter()
                .all(|(_, s, l)| s == "RUNNING" && (l == "node2") == on_node2);
        if !fine {
            bail!(
                "{}: after the {}, not all {EVACUATED} containers run {} node2: {ours:?}",
                side.kind.name(),
                if on_node2 { "restore" } else { "evacuation" },
                if on_node2 { "on" } else { "off" }
            );
        }
        Ok(())
    }
}

impl Case for Evacuate {
    fn name(&self) -> &'static str {
        "evacuate"
    }

    fn label(&self) -> &'static str {
        "incus cluster evacuate/restore node2, 20 running (node1)"
    }

    fn variants(&self) -> Vec<Variant> {
        vec![Variant {
            label: format!("{EVACUATED} running"),
            conc: 1,
        }]
    }

    fn metrics(&self) -> &'static [Metric] {
        EVACUATE_METRICS
    }

    fn run<'a>(
        &'a self,
        ctx: &'a RunCtx<'a>,
        side: &'a Side,
        _variant: &'a Variant,
        _raw: &'a Path,
    ) -> BoxFuture<'a, anyhow::Result<Sample>> {
        Box::pin(async move {
            let conf = self.containers(ctx, side).await?;
            let node2 = format!("{}:node2", side.kind.name());
            let evacuate = timed(
                ctx,
                &conf,
                &["cluster", "evacuate", &node2, "--force", "--action", "migrate"],
            )
            .await?;
            self.check(ctx, &conf, side, false).await?;
            let restore = timed(ctx, &conf, &["cluster", "restore", &node2, "--force"]).await?;
            self.check(ctx, &conf, side, true).await?;
            Ok(Sample {
                values: vec![evacuate, restore],
                unexpected: 0,
            })
        })
    }

    fn cleanup<'a>(&'a self, ctx: &'a RunCtx<'a>, side: &'a Side) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let mut ready = self.ready.lock().await;
            if let Some(i) = ready.iter().position(|k| *k == side.kind) {
                ready.remove(i);
                let conf = crate::import::client_conf(ctx);
                let names: Vec<String> = (0..EVACUATED)
                    .map(|i| format!("{}:{}", side.kind.name(), evacuated(i)))
                    .collect();
                let mut args = vec!["delete", "--force"];
                args.extend(names.iter().map(String::as_str));
                incus(ctx, &conf, &args, SETUP_TIMEOUT).await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_names_and_throughput() {
        assert_eq!(evacuated(0), "e00");
        assert_eq!(evacuated(19), "e19");
        // 2 x 500 MiB in 10 s.
        assert!((mb_per_s(2 * MOVE_BYTES, 10.0) - 104.8576).abs() < 1e-9);
    }
}
