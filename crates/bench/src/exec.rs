//! Exec through a member that does not hold the container, timed with the official
//! client (cluster mode): `incus exec` against node1 of a container that runs on node2,
//! so every byte goes client -> node1 -> node2 -> the container and back.
//!
//! Each side gets one container `c1` on node2, made on first use from a busybox image
//! (a static busybox and a few applet links, as the tests build it; no NIC), the way
//! its users would: on stapes a `dir` pool on each member and a root disk in the
//! default profile first (an Incus cluster formed by the benchmark has both already),
//! then `incus image import` and `incus launch --target node2`.
//!
//! - `exec`: the latency of `incus exec c1 -- true`, 50 times in a row after 2 warm-up
//!   runs, each from starting the client until it exits (the client's own start, 20-40
//!   ms, included on both sides): p50 and p90 in seconds.
//! - `exec_cat`: 1 GiB of zeros piped through `incus exec c1 -- sh -c 'cat >
//!   /dev/null'` (`head -c` into the client's stdin): MB/s (10^6 bytes), seconds, and
//!   the peak RSS of node1 (the relay) and node2 (the owner) during the run, measured
//!   as the image import measures it (VmHWM after a reset, and VmRSS sampled every
//!   10 ms).
//!
//! The containers stay until the clusters are stopped with the lab.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::future::BoxFuture;
use tokio::sync::{Mutex, OnceCell};

use crate::cases::{Case, RunCtx, Variant};
use crate::import::{client_conf, incus, mb_per_s, reset_peak, rss_now};
use crate::lab::{log, Kind, Side};
use crate::results::{Metric, Sample};

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

/// The applets the benchmark's container needs.
const APPLETS: &[&str] = &["sh", "sleep", "mount", "cat", "true", "head"];

/// The `q`-quantile (0..=1) of `xs` by nearest rank; NaN when empty.
pub fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// The unified busybox image, gzipped, at `dir/busybox.tar.gz`.
pub fn busybox_image(dir: &Path, busybox: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let tree = dir.join("busybox-tree");
    let root = tree.join("rootfs");
    for d in [
        "bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "var/log",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    std::fs::write(
        root.join("etc/inittab"),
        "::sysinit:/bin/mount -t tmpfs tmpfs /tmp\n::respawn:/bin/sleep 3600\n",
    )?;
    std::fs::copy(busybox, root.join("bin/busybox"))?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("/bin/busybox", root.join("bin").join(applet))?;
    }
    std::os::unix::fs::symlink("/bin/busybox", root.join("sbin/init"))?;
    std::fs::write(
        tree.join("metadata.yaml"),
        "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: busybox\n  os: busybox\ntemplates: {}\n",
    )?;
    let file = dir.join("busybox.tar.gz");
    let st = std::process::Command::new("tar")
        .current_dir(&tree)
        .arg("--numeric-owner")
        .arg("-czf")
        .arg(&file)
        .args(["metadata.yaml", "rootfs"])
        .status()
        .context("running tar")?;
    if !st.success() {
        bail!("tar failed making {}", file.display());
    }
    Ok(file)
}

/// A static busybox on this machine (`busybox-static`).
fn static_busybox() -> anyhow::Result<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| {
            std::process::Command::new("file")
                .arg("-L")
                .arg(p)
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("statically linked"))
        })
        .context("a static busybox is needed (apt install busybox-static)")
}

/// What the exec cases share: the client configuration and, per side, the container.
#[derive(Default)]
pub struct Shared {
    remotes: Mutex<Vec<Kind>>,
    image: OnceCell<PathBuf>,
    ready: Mutex<Vec<Kind>>,
}

impl Shared {
    /// The client configuration, with `c1` running on node2 of `side`.
    async fn container(&self, ctx: &RunCtx<'_>, side: &Side) -> anyhow::Result<PathBuf> {
        if side.members.len() < 2 {
            bail!("the exec cases need a cluster (MODE=cluster): c1 runs on node2, reached through node1");
        }
        let conf = client_conf(ctx, side, &self.remotes).await?;
        let mut ready = self.ready.lock().await;
        if ready.contains(&side.kind) {
            return Ok(conf);
        }
        let image = self
            .image
            .get_or_try_init(|| async { busybox_image(&ctx.lab.dir, &static_busybox()?) })
            .await?;
        let r = side.kind.name();
        let t = Instant::now();
        let run = |args: Vec<String>| {
            let conf = conf.clone();
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                incus(ctx, &conf, &args, SETUP_TIMEOUT).await
            }
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
        if side.kind == Kind::Stapes {
            for m in &side.members {
                run(s(&[
                    "storage",
                    "create",
                    &format!("{r}:pool1"),
                    "dir",
                    "--target",
                    &m.name,
                ]))
                .await?;
            }
            run(s(&["storage", "create", &format!("{r}:pool1"), "dir"])).await?;
            run(s(&[
                "profile",
                "device",
                "add",
                &format!("{r}:default"),
                "root",
                "disk",
                "path=/",
                "pool=pool1",
            ]))
            .await?;
        }
        let file = image.display().to_string();
        run(s(&[
            "image",
            "import",
            &file,
            &format!("{r}:"),
            "--alias",
            "bench-busybox",
        ]))
        .await?;
        run(s(&[
            "launch",
            &format!("{r}:bench-busybox"),
            &format!("{r}:c1"),
            "--target",
            "node2",
        ]))
        .await?;
        let list = run(s(&["list", &format!("{r}:"), "--format", "csv", "-c", "nsL"])).await?;
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

/// `incus exec c1 -- true` through node1, c1 on node2.
pub struct ExecLatency(pub std::sync::Arc<Shared>);

/// 1 GiB through `cat` in c1 on node2, through node1.
pub struct ExecCat(pub std::sync::Arc<Shared>);

fn both(kind: Kind) -> bool {
    matches!(kind, Kind::Stapes | Kind::Incus)
}

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

    fn measures(&self, kind: Kind) -> bool {
        both(kind)
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
            Ok(Sample {
                values: vec![quantile(&secs, 0.5), quantile(&secs, 0.9)],
                unexpected: 0,
            })
        })
    }
}

impl Case for ExecCat {
    fn name(&self) -> &'static str {
        "exec_cat"
    }

    fn label(&self) -> &'static str {
        "head -c 1G /dev/zero | incus exec c1 -- sh -c 'cat > /dev/null' via node1"
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

    fn measures(&self, kind: Kind) -> bool {
        both(kind)
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
            let script = format!(
                "head -c {CAT_BYTES} /dev/zero | incus exec {}:c1 -- sh -c 'cat > /dev/null'",
                side.kind.name()
            );
            let mut cmd = tokio::process::Command::new("sh");
            cmd.env("INCUS_CONF", &conf)
                .args(["-c", &script])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            let t = Instant::now();
            let run = tokio::time::timeout(EXEC_TIMEOUT, cmd.output());
            tokio::pin!(run);
            let out = loop {
                tokio::select! {
                    r = &mut run => break r.context("the 1 GiB exec did not end")??,
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
            Ok(Sample {
                values: vec![
                    mb_per_s(CAT_BYTES, secs),
                    secs,
                    peak_kb[0] / 1024.0,
                    peak_kb[1] / 1024.0,
                ],
                unexpected: 0,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_quantiles_by_nearest_rank() {
        let xs: Vec<f64> = (1..=50).rev().map(f64::from).collect();
        assert_eq!(quantile(&xs, 0.5), 25.0);
        assert_eq!(quantile(&xs, 0.9), 45.0);
        assert_eq!(quantile(&[3.0], 0.5), 3.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn t10_the_busybox_image_has_init_and_the_applets() {
        let Ok(busybox) = static_busybox() else {
            eprintln!("SKIP: no static busybox");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let file = busybox_image(dir.path(), &busybox).unwrap();
        let out = std::process::Command::new("tar")
            .arg("-tzf")
            .arg(&file)
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&out.stdout);
        for want in [
            "metadata.yaml",
            "rootfs/sbin/init",
            "rootfs/bin/cat",
            "rootfs/bin/true",
        ] {
            assert!(list.lines().any(|l| l == want), "{want} in {list}");
        }
    }
}
