//! Instances, timed with the official client over HTTPS against a side's first member
//! (node1), both sides three-member clusters running real LXC containers:
//!
//! - `launch`: one round is `incus launch bb NAME --target node2` (node1 does not hold
//!   the instance: the request is forwarded), `incus stop --force`, `incus start`, a
//!   forced stop (not timed) and `incus delete`, each timed from spawning the client
//!   until it exits (the client's own start, 20-40 ms, included on both sides).
//! - `list`: `LIST_RUNNING` running (100) and `LIST_STOPPED` created, never started
//!   (300) instances spread evenly over the three members, made once per side before its
//!   first run (not timed, through the REST API, a few at once); one run is `incus list`
//!   with the default columns (every instance's state: `recursion=2`) and with `-c nsL`
//!   (`recursion=1`), and reads each member daemon's RSS (VmRSS of the daemon process
//!   alone: the per-container LXC monitors are separate processes on both sides).
//! - `restart`: node2 holds `RESTART_RUNNING` (30) running instances, made once per
//!   side before its first run (not timed). One run SIGKILLs node2's daemon and starts
//!   it again on its state directory; the clock runs from just before the new process is
//!   spawned until `GET /1.0/instances/r000` on node2's unix socket answers 200 with
//!   status `Running` (polled every 10 ms), and, as a second figure, until `GET /1.0`
//!   answers. The containers run on throughout (LXC's monitors are not the daemon's
//!   children). Before the next run, node1 must answer for `r000` again (not timed).
//!
//! The image is busybox, built offline from the host's static busybox (Debian's
//! `busybox-static`) as an uncompressed unified tarball, imported once per side as `bb`.
//! stapes gets a `dir` pool on every member and the default profile's root disk on it,
//! as Incus got in its preseed; neither has a network device. Before the first timed
//! launch each side launches and deletes one instance on node2 (not timed), so the
//! image is already on node2 when the clock runs. Every instance a case made is deleted
//! when the rounds end ([`Case::cleanup`]); whatever is left after a failure is stopped
//! through LXC when the lab is finished.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use client::Method;
use futures_util::future::BoxFuture;
use futures_util::{stream, StreamExt as _};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::cases::{Case, RunCtx, Variant};
use crate::import::{ensure_remote, incus};
use crate::lab::{call, log, tls_client, Kind, Side};
use crate::results::{Metric, Sample};

/// How long one client command about one instance may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// How long `incus list` of every instance may take.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(600);
/// How many instances are created or started at once while filling a side.
pub const FILL_CONCURRENCY: usize = 6;
/// How long a restarted member may take to serve its instances again.
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(120);

/// The instance counts of the `list` case: the by default, smaller on request
/// (`LIST_RUNNING`, `LIST_STOPPED`) for a quick run on a busy machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub running: u32,
    pub stopped: u32,
}

impl Sizes {
    pub const DEFAULT: Sizes = Sizes {
        running: 100,
        stopped: 300,
    };

    /// From `LIST_RUNNING` and `LIST_STOPPED`; an unset variable keeps the default, a
    /// bad one is an error.
    pub fn from_env() -> Result<Sizes, String> {
        let get = |name: &str, default: u32| match std::env::var(name) {
            Err(_) => Ok(default),
            Ok(v) => v
                .trim()
                .parse::<u32>()
                .map_err(|_| format!("{name}={v:?} is not a count")),
        };
        Ok(Sizes {
            running: get("LIST_RUNNING", Self::DEFAULT.running)?,
            stopped: get("LIST_STOPPED", Self::DEFAULT.stopped)?,
        })
    }

    pub fn total(self) -> u32 {
        self.running + self.stopped
    }
}

/// The name of the `i`-th instance of the list fill, and the member it goes to
/// (`node1`, `node2`, `node3` in turn).
pub fn fill_instance(i: u32) -> (String, String) {
    (format!("l{i:04}"), format!("node{}", i % 3 + 1))
}

/// A static busybox on this host.
pub fn static_busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| {
            // A static ELF has no program interpreter (PT_INTERP, type 3).
            std::fs::read(p).is_ok_and(|b| is_elf(&b) && !has_interp(&b))
        })
}

fn is_elf(b: &[u8]) -> bool {
    b.len() > 64 && &b[..4] == b"\x7fELF" && b[4] == 2
}

/// Whether a 64-bit little-endian ELF image has a PT_INTERP program header.
fn has_interp(b: &[u8]) -> bool {
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return true;
    };
    (0..usize::from(phnum)).any(|i| {
        let at = phoff as usize + i * usize::from(phentsize);
        b.get(at..at + 4)
            .is_none_or(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) == 3)
    })
}

/// The busybox image: an uncompressed unified tarball written to `path`.
pub fn make_busybox_image(path: &Path, busybox: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(file));
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    let meta = "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: busybox (stapes-bench)\n  os: busybox\n  release: bench\ntemplates: {}\n";
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o644, meta.len() as u64),
        "metadata.yaml",
        meta.as_bytes(),
    )?;
    for d in [
        "rootfs",
        "rootfs/bin",
        "rootfs/sbin",
        "rootfs/etc",
        "rootfs/proc",
        "rootfs/sys",
        "rootfs/dev",
        "rootfs/root",
        "rootfs/run",
        "rootfs/var",
        "rootfs/var/log",
    ] {
        b.append_data(
            &mut header(tar::EntryType::Directory, 0o755, 0),
            d,
            std::io::empty(),
        )?;
    }
    b.append_data(
        &mut header(tar::EntryType::Directory, 0o1777, 0),
        "rootfs/tmp",
        std::io::empty(),
    )?;
    let bin = std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o755, bin.len() as u64),
        "rootfs/bin/busybox",
        bin.as_slice(),
    )?;
    for (link, name) in [
        ("rootfs/sbin/init", "/bin/busybox"),
        ("rootfs/bin/sh", "/bin/busybox"),
        ("rootfs/bin/mount", "/bin/busybox"),
        ("rootfs/bin/sleep", "/bin/busybox"),
        // For the exec and file cases.
        ("rootfs/bin/cat", "/bin/busybox"),
        ("rootfs/bin/true", "/bin/busybox"),
    ] {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, link, name)?;
    }
    for (file, text) in [
        ("rootfs/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("rootfs/etc/group", "root:x:0:\n"),
        (
            "rootfs/etc/inittab",
            "::sysinit:/bin/mount -t tmpfs tmpfs /tmp\n::respawn:/bin/sleep 3600\n",
        ),
    ] {
        b.append_data(
            &mut header(tar::EntryType::Regular, 0o644, text.len() as u64),
            file,
            text.as_bytes(),
        )?;
    }
    let mut w = b.into_inner()?;
    std::io::Write::flush(&mut w)?;
    Ok(())
}

/// What a side has been given so far.
#[derive(Default)]
struct Prepared {
    /// The sides with a pool, the image `bb` and the warm-up launch done.
    image: Vec<Kind>,
    /// The sides whose list fill is done.
    filled: Vec<Kind>,
    /// The sides whose node2 holds the `restart` case's running instances.
    restart: Vec<Kind>,
}

/// Setup shared by the instance cases: the image file, the client configuration, and
/// per side the pool, the imported image and the fill.
pub struct Shared {
    prepared: Mutex<Prepared>,
    image_file: Mutex<Option<PathBuf>>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            prepared: Mutex::new(Prepared::default()),
            image_file: Mutex::new(None),
        }
    }

    async fn image_file(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let mut f = self.image_file.lock().await;
        if let Some(p) = &*f {
            return Ok(p.clone());
        }
        let busybox = static_busybox()
            .context("a static busybox is needed for the image (apt install busybox-static)")?;
        let path = dir.join("busybox.tar");
        make_busybox_image(&path, &busybox)?;
        *f = Some(path.clone());
        Ok(path)
    }

    /// The client configuration with the side's remote, the pool (stapes), the image
    /// `bb` and one untimed launch/delete on node2.
    pub(crate) async fn prepare(&self, ctx: &RunCtx<'_>, side: &Side) -> anyhow::Result<PathBuf> {
        if side.members.len() < 3 {
            bail!("the instance cases need MODE=cluster (three members per side)");
        }
        let conf = ensure_remote(ctx, side).await?;
        let mut p = self.prepared.lock().await;
        if p.image.contains(&side.kind) {
            return Ok(conf);
        }
        let r = side.kind.name();
        let run = |args: Vec<String>| {
            let conf = conf.clone();
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                incus(ctx, &conf, &args, COMMAND_TIMEOUT).await
            }
        };
        if side.kind == Kind::Stapes {
            for m in &side.members {
                run(vec![
                    "storage".into(),
                    "create".into(),
                    format!("{r}:pool1"),
                    "dir".into(),
                    "--target".into(),
                    m.name.clone(),
                ])
                .await?;
            }
            run(vec![
                "storage".into(),
                "create".into(),
                format!("{r}:pool1"),
                "dir".into(),
            ])
            .await?;
            run(vec![
                "profile".into(),
                "device".into(),
                "add".into(),
                format!("{r}:default"),
                "root".into(),
                "disk".into(),
                "path=/".into(),
                "pool=pool1".into(),
            ])
            .await?;
        }
        let file = self.image_file(&ctx.lab.dir).await?;
        run(vec![
            "image".into(),
            "import".into(),
            file.display().to_string(),
            format!("{r}:"),
            "--alias".into(),
            "bb".into(),
        ])
        .await?;
        let t = Instant::now();
        run(vec![
            "launch".into(),
            format!("{r}:bb"),
            format!("{r}:warmup"),
            "--target".into(),
            "node2".into(),
        ])
        .await?;
        run(vec!["delete".into(), "--force".into(), format!("{r}:warmup")]).await?;
        log(format!(
            "{r}: pool, image bb and a warm-up launch/delete on node2 done ({:.1} s for the warm-up)",
            t.elapsed().as_secs_f64()
        ));
        p.image.push(side.kind);
        Ok(conf)
    }

    /// `sizes.total()` instances spread over the members, the first `sizes.running`
    /// started, made through node1's REST API a few at once.
    async fn fill(&self, ctx: &RunCtx<'_>, side: &Side, sizes: Sizes) -> anyhow::Result<()> {
        let mut p = self.prepared.lock().await;
        if p.filled.contains(&side.kind) {
            return Ok(());
        }
        let c = tls_client(&side.front().https, Some(&ctx.lab.identity.pair), COMMAND_TIMEOUT)?;
        let fp = call(&c, Method::GET, "/1.0/images/aliases/bb", None)
            .await?
            .expect(Some(200), format!("{}: the alias bb", side.kind.name()))?
            .metadata()["target"]
            .as_str()
            .context("the alias bb has no target")?
            .to_string();
        let t = Instant::now();
        let done = AtomicU32::new(0);
        let results: Vec<anyhow::Result<()>> = stream::iter(0..sizes.total())
            .map(|i| {
                let (c, fp, done) = (&c, &fp, &done);
                async move {
                    let (name, member) = fill_instance(i);
                    let body = json!({
                        "name": name,
                        "type": "container",
                        "source": {"type": "image", "fingerprint": fp},
                        "start": i < sizes.running,
                    });
                    let path = format!("/1.0/instances?target={member}");
                    let a = call(c, Method::POST, &path, Some(&body))
                        .await?
                        .expect(None, format!("POST {path} {name}"))?;
                    wait_operation(c, &a.json())
                        .await
                        .with_context(|| format!("creating {name}"))?;
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if n % 50 == 0 {
                        log(format!(
                            "{}: {n}/{} instances made",
                            side.kind.name(),
                            sizes.total()
                        ));
                    }
                    Ok(())
                }
            })
            .buffer_unordered(FILL_CONCURRENCY)
            .collect()
            .await;
        for r in results {
            r?;
        }
        log(format!(
            "{}: {} running and {} stopped instances made in {:.1} s",
            side.kind.name(),
            sizes.running,
            sizes.stopped,
            t.elapsed().as_secs_f64()
        ));
        p.filled.push(side.kind);
        Ok(())
    }

    /// `running` started instances `r000`... on node2, made through node1's REST API a
    /// few at once, once per side.
    async fn fill_node2(&self, ctx: &RunCtx<'_>, side: &Side, running: u32) -> anyhow::Result<()> {
        let mut p = self.prepared.lock().await;
        if p.restart.contains(&side.kind) {
            return Ok(());
        }
        let t = Instant::now();
        let names: Vec<String> = (0..running).map(restart_instance).collect();
        start_on_node2(ctx, side, &names, &json!({})).await?;
        log(format!(
            "{}: {running} running instances on node2 made in {:.1} s",
            side.kind.name(),
            t.elapsed().as_secs_f64()
        ));
        p.restart.push(side.kind);
        Ok(())
    }

    /// Deletes every instance of the side (forced), a few at once.
    async fn clear(&self, ctx: &RunCtx<'_>, side: &Side) -> anyhow::Result<()> {
        let c = tls_client(&side.front().https, Some(&ctx.lab.identity.pair), COMMAND_TIMEOUT)?;
        let list = call(&c, Method::GET, "/1.0/instances", None)
            .await?
            .expect(Some(200), "GET /1.0/instances")?
            .metadata();
        let names: Vec<String> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str()?.rsplit('/').next().map(str::to_string))
            .collect();
        let n = names.len();
        let results: Vec<anyhow::Result<()>> = stream::iter(names)
            .map(|name| {
                let c = &c;
                async move {
                    let stop = json!({"action": "stop", "force": true, "timeout": -1});
                    let path = format!("/1.0/instances/{name}/state");
                    let a = call(c, Method::PUT, &path, Some(&stop)).await?;
                    if a.status == 202 {
                        // Already stopped is fine; a failed stop shows at the delete.
                        let _ = wait_operation(c, &a.json()).await;
                    }
                    let path = format!("/1.0/instances/{name}");
                    let a = call(c, Method::DELETE, &path, None)
                        .await?
                        .expect(Some(202), format!("DELETE {path}"))?;
                    wait_operation(c, &a.json()).await
                }
            })
            .buffer_unordered(FILL_CONCURRENCY)
            .collect()
            .await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
            bail!(
                "{}: {failed} of {n} instances not deleted: {e:#}",
                side.kind.name()
            );
        }
        log(format!("{}: {n} instances deleted", side.kind.name()));
        Ok(())
    }
}

/// Containers `names` from the image `bb`, started on node2 of `side` with the config
/// `config`, made through node1's REST API a few at once.
pub(crate) async fn start_on_node2(
    ctx: &RunCtx<'_>,
    side: &Side,
    names: &[String],
    config: &Value,
) -> anyhow::Result<()> {
    let c = tls_client(&side.front().https, Some(&ctx.lab.identity.pair), COMMAND_TIMEOUT)?;
    let results: Vec<anyhow::Result<()>> = stream::iter(names.to_vec())
        .map(|name| {
            let (c, config) = (&c, config.clone());
            async move {
                let body = json!({
                    "name": name,
                    "type": "container",
                    "source": {"type": "image", "alias": "bb"},
                    "config": config,
                    "start": true,
                });
                let path = "/1.0/instances?target=node2";
                let a = call(c, Method::POST, path, Some(&body))
                    .await?
                    .expect(None, format!("POST {path} {name}"))?;
                wait_operation(c, &a.json())
                    .await
                    .with_context(|| format!("creating {name}"))
            }
        })
        .buffer_unordered(FILL_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new()
    }
}

/// Waits for the operation of a 202 answer (`operation` in the envelope) to end; an
/// error unless it succeeded.
async fn wait_operation(c: &client::Client, answer: &Value) -> anyhow::Result<()> {
    let op = answer["operation"]
        .as_str()
        .context("no operation in the answer")?;
    let path = op.split('?').next().unwrap_or(op);
    let a = call(c, Method::GET, &format!("{path}/wait?timeout=280"), None)
        .await?
        .expect(Some(200), format!("GET {path}/wait"))?;
    let md = a.metadata();
    if md["status_code"] != 200 {
        bail!("operation {path} ended {}: {}", md["status"], md["err"]);
    }
    Ok(())
}

/// The one variant of the cases about an instance on node2.
fn on_node2() -> Vec<Variant> {
    vec![Variant {
        label: "node2".into(),
        conc: 1,
    }]
}

/// The sides that run containers (not the ceiling).
/// Runs the client once, timed; seconds.
async fn timed(ctx: &RunCtx<'_>, conf: &Path, args: &[&str], limit: Duration) -> anyhow::Result<f64> {
    let t = Instant::now();
    incus(ctx, conf, args, limit).await?;
    Ok(t.elapsed().as_secs_f64())
}

/// What the `launch` case reports; ratios are of the first.
pub const LAUNCH_METRICS: &[Metric] = &[
    Metric {
        name: "launch",
        unit: "s",
        decimals: 3,
    },
    Metric {
        name: "stop -f",
        unit: "s",
        decimals: 3,
    },
    Metric {
        name: "start",
        unit: "s",
        decimals: 3,
    },
    Metric {
        name: "delete",
        unit: "s",
        decimals: 3,
    },
];

/// What the `restart` case reports; ratios are of the first.
pub const RESTART_METRICS: &[Metric] = &[
    Metric {
        name: "serves",
        unit: "s",
        decimals: 3,
    },
    Metric {
        name: "GET /1.0",
        unit: "s",
        decimals: 3,
    },
];

/// The name of the `restart` case's instance `i`.
pub fn restart_instance(i: u32) -> String {
    format!("r{i:03}")
}

/// What the `list` case reports; ratios are of the first.
pub const LIST_METRICS: &[Metric] = &[
    Metric {
        name: "seconds",
        unit: "s",
        decimals: 3,
    },
    Metric {
        name: "RSS/member",
        unit: "MB",
        decimals: 1,
    },
    Metric {
        name: "RSS max",
        unit: "MB",
        decimals: 1,
    },
];

/// Launch, stop, start and delete of one busybox container on node2 through node1.
pub struct Launch {
    shared: std::sync::Arc<Shared>,
    round: AtomicU32,
}

impl Launch {
    pub fn new(shared: std::sync::Arc<Shared>) -> Launch {
        Launch {
            shared,
            round: AtomicU32::new(0),
        }
    }
}

impl Case for Launch {
    fn name(&self) -> &'static str {
        "launch"
    }

    fn label(&self) -> &'static str {
        "busybox on node2 through node1 (incus CLI)"
    }

    fn variants(&self) -> Vec<Variant> {
        on_node2()
    }

    fn metrics(&self) -> &'static [Metric] {
        LAUNCH_METRICS
    }

    fn run<'a>(
        &'a self,
        ctx: &'a RunCtx<'a>,
        side: &'a Side,
        _variant: &'a Variant,
        _raw: &'a Path,
    ) -> BoxFuture<'a, anyhow::Result<Sample>> {
        Box::pin(async move {
            let conf = self.shared.prepare(ctx, side).await?;
            let r = side.kind.name();
            let n = self.round.fetch_add(1, Ordering::Relaxed);
            let inst = format!("{r}:t{n:03}");
            let image = format!("{r}:bb");
            let launch = timed(
                ctx,
                &conf,
                &["launch", &image, &inst, "--target", "node2"],
                COMMAND_TIMEOUT,
            )
            .await?;
            let stop = timed(ctx, &conf, &["stop", "--force", &inst], COMMAND_TIMEOUT).await?;
            let start = timed(ctx, &conf, &["start", &inst], COMMAND_TIMEOUT).await?;
            incus(ctx, &conf, &["stop", "--force", &inst], COMMAND_TIMEOUT).await?;
            let delete = timed(ctx, &conf, &["delete", &inst], COMMAND_TIMEOUT).await?;
            Ok(Sample {
                values: vec![launch, stop, start, delete],
                unexpected: 0,
            })
        })
    }
}

/// `incus list` of many instances spread over the members, and the members' RSS.
pub struct List {
    shared: std::sync::Arc<Shared>,
    sizes: Sizes,
    label: &'static str,
}

impl List {
    pub fn new(shared: std::sync::Arc<Shared>, sizes: Sizes) -> List {
        let label: &'static str = Box::leak(
            format!(
                "incus list, {} running + {} stopped over 3 members",
                sizes.running, sizes.stopped
            )
            .into_boxed_str(),
        );
        List { shared, sizes, label }
    }
}

impl Case for List {
    fn name(&self) -> &'static str {
        "list"
    }

    fn label(&self) -> &'static str {
        self.label
    }

    fn variants(&self) -> Vec<Variant> {
        ["default", "-c nsL"]
            .into_iter()
            .map(|l| Variant {
                label: l.into(),
                conc: 1,
            })
            .collect()
    }

    fn metrics(&self) -> &'static [Metric] {
        LIST_METRICS
    }

    fn run<'a>(
        &'a self,
        ctx: &'a RunCtx<'a>,
        side: &'a Side,
        variant: &'a Variant,
        _raw: &'a Path,
    ) -> BoxFuture<'a, anyhow::Result<Sample>> {
        Box::pin(async move {
            let conf = self.shared.prepare(ctx, side).await?;
            self.shared.fill(ctx, side, self.sizes).await?;
            let remote = format!("{}:", side.kind.name());
            let mut args = vec!["list", remote.as_str(), "--format", "csv"];
            if variant.label != "default" {
                args.extend(["-c", "nsL"]);
            }
            let t = Instant::now();
            let out = incus(ctx, &conf, &args, LIST_TIMEOUT).await?;
            let secs = t.elapsed().as_secs_f64();
            let rows = out.lines().filter(|l| !l.is_empty()).count();
            let unexpected = u64::from(rows != self.sizes.total() as usize);
            if unexpected > 0 {
                log(format!(
                    "{}: incus list printed {rows} rows, not {}",
                    side.kind.name(),
                    self.sizes.total()
                ));
            }
            let rss: Vec<f64> = side
                .members
                .iter()
                .filter_map(|m| ctx.lab.memory(&m.key))
                .map(|m| m.rss_kb / 1024.0)
                .collect();
            let mean = rss.iter().sum::<f64>() / rss.len().max(1) as f64;
            let max = rss.iter().copied().fold(0.0, f64::max);
            Ok(Sample {
                values: vec![secs, mean, max],
                unexpected,
            })
        })
    }

    fn cleanup<'a>(&'a self, ctx: &'a RunCtx<'a>, side: &'a Side) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move { self.shared.clear(ctx, side).await })
    }
}

/// node2's daemon killed (-9) and started again while it holds running instances: how
/// soon it serves them.
pub struct Restart {
    shared: std::sync::Arc<Shared>,
    running: u32,
    label: &'static str,
}

impl Restart {
    pub fn new(shared: std::sync::Arc<Shared>, running: u32) -> Restart {
        let label: &'static str = Box::leak(
            format!("node2 killed -9 and started with {running} running instances").into_boxed_str(),
        );
        Restart {
            shared,
            running: running.max(1),
            label,
        }
    }

    /// `RESTART_RUNNING` from the environment (30 by default).
    pub fn running_from_env() -> Result<u32, String> {
        match std::env::var("RESTART_RUNNING") {
            Err(_) => Ok(30),
            Ok(v) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| format!("RESTART_RUNNING={v:?} is not a number from 1 to 1000")),
        }
    }
}

/// Whether an answer to `GET /1.0/instances/NAME` says the instance runs.
pub fn answers_running(status: u16, body: &Value) -> bool {
    status == 200 && body["metadata"]["status"] == "Running"
}

impl Case for Restart {
    fn name(&self) -> &'static str {
        "restart"
    }

    fn label(&self) -> &'static str {
        self.label
    }

    fn variants(&self) -> Vec<Variant> {
        on_node2()
    }

    fn metrics(&self) -> &'static [Metric] {
        RESTART_METRICS
    }

    fn run<'a>(
        &'a self,
        ctx: &'a RunCtx<'a>,
        side: &'a Side,
        _variant: &'a Variant,
        _raw: &'a Path,
    ) -> BoxFuture<'a, anyhow::Result<Sample>> {
        Box::pin(async move {
            self.shared.prepare(ctx, side).await?;
            self.shared.fill_node2(ctx, side, self.running).await?;
            let node2 = &side.members[1];
            let name = restart_instance(0);
            let path = format!("/1.0/instances/{name}");
            let t0 = ctx.lab.kill9_and_start(side.kind, node2).await?;
            let c = crate::lab::unix_client(&node2.socket, Duration::from_secs(1));
            let (mut serves, mut ready) = (None, None);
            while serves.is_none() || ready.is_none() {
                if ready.is_none() {
                    if let Ok(a) = call(&c, Method::GET, "/1.0", None).await {
                        if a.status == 200 {
                            ready = Some(t0.elapsed().as_secs_f64());
                        }
                    }
                }
                if serves.is_none() {
                    if let Ok(a) = call(&c, Method::GET, &path, None).await {
                        if answers_running(a.status, &a.json()) {
                            serves = Some(t0.elapsed().as_secs_f64());
                        }
                    }
                }
                if !ctx.lab.running(&node2.key) {
                    bail!("{} exited after its restart", node2.key);
                }
                if t0.elapsed() > RESTART_TIMEOUT {
                    bail!(
                        "{} did not serve {name} as Running within {RESTART_TIMEOUT:?} of its start",
                        node2.key
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Back in the cluster before anything else runs: node1 answers for it.
            let front = tls_client(&side.front().https, Some(&ctx.lab.identity.pair), COMMAND_TIMEOUT)?;
            let settled = Instant::now();
            loop {
                if let Ok(a) = call(&front, Method::GET, &path, None).await {
                    if answers_running(a.status, &a.json()) {
                        break;
                    }
                }
                if settled.elapsed() > RESTART_TIMEOUT {
                    bail!("node1 did not answer for {name} within {RESTART_TIMEOUT:?} of node2's restart");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Sample {
                values: vec![serves.unwrap_or(f64::NAN), ready.unwrap_or(f64::NAN)],
                unexpected: 0,
            })
        })
    }

    fn cleanup<'a>(&'a self, ctx: &'a RunCtx<'a>, side: &'a Side) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move { self.shared.clear(ctx, side).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_fill_spreads_over_three_members() {
        let places: Vec<String> = (0..6).map(|i| fill_instance(i).1).collect();
        assert_eq!(places, ["node1", "node2", "node3", "node1", "node2", "node3"]);
        assert_eq!(fill_instance(42).0, "l0042");
        assert_eq!(Sizes::DEFAULT.total(), 400);
    }

    #[test]
    fn t10_restart_names_and_running_answers() {
        assert_eq!(restart_instance(0), "r000");
        assert_eq!(restart_instance(29), "r029");
        assert!(answers_running(200, &json!({"metadata": {"status": "Running"}})));
        assert!(!answers_running(200, &json!({"metadata": {"status": "Stopped"}})));
        assert!(!answers_running(200, &json!({"metadata": {"status": "Error"}})));
        assert!(!answers_running(503, &json!({"metadata": {"status": "Running"}})));
    }

    #[test]
    fn t10_static_and_dynamic_elf() {
        // A minimal ELF64 header with one program header of the given type.
        let elf = |ptype: u32| {
            let mut b = vec![0u8; 200];
            b[..4].copy_from_slice(b"\x7fELF");
            b[4] = 2;
            b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
            b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
            b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
            b[64..68].copy_from_slice(&ptype.to_le_bytes());
            b
        };
        assert!(is_elf(&elf(1)) && !has_interp(&elf(1)));
        assert!(has_interp(&elf(3)));
        assert!(!is_elf(b"#!/bin/sh\n"));
    }

    #[test]
    fn t10_the_image_has_init_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("busybox");
        std::fs::write(&fake, b"not really busybox").unwrap();
        let path = dir.path().join("bb.tar");
        make_busybox_image(&path, &fake).unwrap();
        let mut a = tar::Archive::new(std::fs::File::open(&path).unwrap());
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        for want in [
            "metadata.yaml",
            "rootfs/sbin/init",
            "rootfs/bin/busybox",
            "rootfs/etc/inittab",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
    }
}
