//! Image import, timed: `incus image import FILE REMOTE:` with the official client over
//! HTTPS against a side's first member, the member that receives the upload (in stapes
//! the file is stored where it arrives, and copied to the replicas from there).
//!
//! The image is made offline, once per size and run: a unified tarball, uncompressed,
//! with a `metadata.yaml` and `rootfs/payload`, a file of pseudo-random (incompressible)
//! bytes of the wanted size. It is written straight into the archive from a generator,
//! so making a 2 GiB image writes 2 GiB once.
//!
//! What a run reports: throughput (archive bytes / 10^6 / seconds), seconds from
//! starting the client until it exits (the client's own start, 20-40 ms, included), the
//! receiving member's peak RSS during the import and how much that peak grew over its
//! RSS just before. The peak is `VmHWM` after resetting it (`echo 5 >
//! /proc/PID/clear_refs`, as root) just before the import; VmRSS is also sampled every
//! 10 ms, and the larger of the two is kept. The image is deleted after each run
//! (untimed), so the next import is not a duplicate.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::future::BoxFuture;
use tokio::sync::{Mutex, OnceCell};

use crate::cases::{Case, RunCtx, Variant};
use crate::lab::{log, Kind, Side};
use crate::results::{Metric, Sample};

const MIB: u64 = 1024 * 1024;

/// How long one import may take (2 GiB on a busy machine, with replication).
pub const IMPORT_TIMEOUT: Duration = Duration::from_secs(900);

/// What an import case reports; ratios are of the first (throughput).
pub const IMPORT_METRICS: &[Metric] = &[
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
        name: "peak RSS",
        unit: "MB",
        decimals: 1,
    },
    Metric {
        name: "RSS growth",
        unit: "MB",
        decimals: 1,
    },
];

/// The `metadata.yaml` of the benchmark's images.
pub fn metadata_yaml(mib: u64) -> String {
    format!(
        "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: stapes-bench {mib} MiB\n  os: bench\n  release: \"{mib}\"\ntemplates: {{}}\n"
    )
}

/// An endless stream of pseudo-random bytes (xorshift64*): incompressible, cheap.
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Noise {
        Noise(seed | 1)
    }
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(buf.len())
    }
}

/// Writes the unified tarball of `mib` MiB of root file system to `path`.
pub fn make_image(path: &Path, mib: u64) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut b = tar::Builder::new(std::io::BufWriter::with_capacity(MIB as usize, file));
    let mut add = |name: &str, mode: u32, size: u64, data: &mut dyn Read| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(if name.ends_with('/') {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        b.append_data(&mut h, name, data)
    };
    let meta = metadata_yaml(mib);
    add("metadata.yaml", 0o644, meta.len() as u64, &mut meta.as_bytes())?;
    add("rootfs/", 0o755, 0, &mut std::io::empty())?;
    add(
        "rootfs/payload",
        0o644,
        mib * MIB,
        &mut Noise::new(mib).take(mib * MIB),
    )?;
    let mut w = b.into_inner()?;
    std::io::Write::flush(&mut w)?;
    w.into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
        .context("syncing the image")?;
    Ok(())
}

/// The fingerprint `incus image import` prints.
pub fn fingerprint_in(out: &str) -> Option<String> {
    out.lines().find_map(|l| {
        // Progress lines end in \r, not \n: the last piece of a line is what stayed.
        let fp = l
            .rsplit('\r')
            .find(|piece| !piece.trim().is_empty())?
            .trim()
            .strip_prefix("Image imported with fingerprint: ")?
            .trim();
        (fp.len() == 64 && fp.bytes().all(|b| b.is_ascii_hexdigit())).then(|| fp.to_string())
    })
}

/// The size label of a variant: `256MiB`, `2GiB`.
pub fn size_label(mib: u64) -> String {
    if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{}GiB", mib / 1024)
    } else {
        format!("{mib}MiB")
    }
}

/// Throughput in MB/s (10^6 bytes).
pub fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / 1e6 / secs
    } else {
        f64::NAN
    }
}

/// `incus image import` of a `mib` MiB image against a side's first member.
pub struct Import {
    pub name: &'static str,
    pub label: &'static str,
    pub mib: u64,
    image: OnceCell<PathBuf>,
    /// The sides whose remote the client configuration already has.
    remotes: Mutex<Vec<Kind>>,
}

impl Import {
    pub fn new(name: &'static str, label: &'static str, mib: u64) -> Import {
        Import {
            name,
            label,
            mib,
            image: OnceCell::new(),
            remotes: Mutex::new(Vec::new()),
        }
    }

    async fn image(&self, dir: &Path) -> anyhow::Result<&PathBuf> {
        self.image
            .get_or_try_init(|| async {
                let path = dir.join(format!("image-{}.tar", size_label(self.mib)));
                let mib = self.mib;
                let t = Instant::now();
                let p = path.clone();
                tokio::task::spawn_blocking(move || make_image(&p, mib)).await??;
                log(format!(
                    "made {} ({mib} MiB of incompressible root file system) in {:.1} s",
                    path.display(),
                    t.elapsed().as_secs_f64()
                ));
                Ok(path)
            })
            .await
    }

    /// The incus client's configuration with the remote of `side`, added when first
    /// needed.
    async fn remote(&self, ctx: &RunCtx<'_>, side: &Side) -> anyhow::Result<PathBuf> {
        let mut added = self.remotes.lock().await;
        if added.contains(&side.kind) {
            return Ok(client_conf(ctx));
        }
        let conf = ensure_remote(ctx, side).await?;
        added.push(side.kind);
        Ok(conf)
    }
}

/// The incus client's configuration directory of the lab (`$DIR/incus-client`).
pub fn client_conf(ctx: &RunCtx<'_>) -> PathBuf {
    ctx.lab.dir.join("incus-client")
}

/// The incus client's configuration (the client certificate, one remote per side named
/// after the side, at its first member over HTTPS), made on first use; the remote of
/// `side` is added unless it is there already (another case may have added it).
pub async fn ensure_remote(ctx: &RunCtx<'_>, side: &Side) -> anyhow::Result<PathBuf> {
    let conf = client_conf(ctx);
    std::fs::create_dir_all(&conf)?;
    std::fs::copy(&ctx.lab.identity.cert_file, conf.join("client.crt"))?;
    std::fs::copy(&ctx.lab.identity.key_file, conf.join("client.key"))?;
    let list = incus(
        ctx,
        &conf,
        &["remote", "list", "--format", "csv"],
        Duration::from_secs(60),
    )
    .await?;
    if !list
        .lines()
        .any(|l| l.starts_with(&format!("{},", side.kind.name())))
    {
        let url = format!("https://{}", side.front().https);
        incus(
            ctx,
            &conf,
            &["remote", "add", side.kind.name(), &url, "--accept-certificate"],
            Duration::from_secs(60),
        )
        .await?;
    }
    Ok(conf)
}

/// Runs the incus client with configuration `conf`, bounded by `limit`; its output is
/// appended to `logs/incus-cli.log`. Fails unless it exits 0.
pub async fn incus(ctx: &RunCtx<'_>, conf: &Path, args: &[&str], limit: Duration) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::new("incus");
    cmd.env("INCUS_CONF", conf)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .with_context(|| format!("incus {} took over {limit:?}", args.join(" ")))?
        .context("running the incus client")?;
    let cli_log = ctx.lab.logs.join("incus-cli.log");
    let mut text = format!("$ incus {}\n", args.join(" "));
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    crate::cluster::append(&cli_log, &text);
    if !out.status.success() {
        bail!("incus {} failed; see {}", args.join(" "), cli_log.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Resets the peak RSS (`VmHWM`) of `pid` to its current RSS; false if the kernel refused.
pub(crate) fn reset_peak(pid: i32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

pub(crate) fn rss_now(pid: i32) -> Option<crate::procs::Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(crate::procs::Memory {
        rss_kb: crate::procs::status_kb(&status, "VmRSS")?,
        hwm_kb: crate::procs::status_kb(&status, "VmHWM")?,
    })
}

impl Case for Import {
    fn name(&self) -> &'static str {
        self.name
    }

    fn label(&self) -> &'static str {
        self.label
    }

    fn variants(&self) -> Vec<Variant> {
        vec![Variant {
            label: size_label(self.mib),
            conc: 1,
        }]
    }

    fn metrics(&self) -> &'static [Metric] {
        IMPORT_METRICS
    }

    fn run<'a>(
        &'a self,
        ctx: &'a RunCtx<'a>,
        side: &'a Side,
        _variant: &'a Variant,
        _raw: &'a Path,
    ) -> BoxFuture<'a, anyhow::Result<Sample>> {
        Box::pin(async move {
            let image = self.image(&ctx.lab.dir).await?;
            let bytes = std::fs::metadata(image)?.len();
            let conf = self.remote(ctx, side).await?;
            let pid = ctx
                .lab
                .pid(&side.front().key)
                .with_context(|| format!("{} is not running", side.front().key))?;
            let before = rss_now(pid).context("reading the member's memory")?;
            let reset = reset_peak(pid);
            let remote = format!("{}:", side.kind.name());
            let path = image.display().to_string();
            // Not --quiet: that also hides the fingerprint.
            let args = ["image", "import", path.as_str(), remote.as_str()];
            let t = Instant::now();
            let import = incus(ctx, &conf, &args, IMPORT_TIMEOUT);
            tokio::pin!(import);
            let mut sampled = before.rss_kb;
            let out = loop {
                tokio::select! {
                    r = &mut import => break r?,
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {
                        if let Some(m) = rss_now(pid) {
                            sampled = sampled.max(m.rss_kb);
                        }
                    }
                }
            };
            let secs = t.elapsed().as_secs_f64();
            let after = rss_now(pid).context("reading the member's memory")?;
            let peak_kb = if reset { sampled.max(after.hwm_kb) } else { sampled };
            let fp = fingerprint_in(&out)
                .with_context(|| format!("no fingerprint in the output of incus image import: {out:?}"))?;
            let gone = format!("{remote}{fp}");
            incus(ctx, &conf, &["image", "delete", &gone], Duration::from_secs(300)).await?;
            Ok(Sample {
                values: vec![
                    mb_per_s(bytes, secs),
                    secs,
                    peak_kb / 1024.0,
                    (peak_kb - before.rss_kb).max(0.0) / 1024.0,
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
    fn t10_sizes_and_throughput() {
        assert_eq!(size_label(256), "256MiB");
        assert_eq!(size_label(2048), "2GiB");
        assert_eq!(size_label(1536), "1536MiB");
        assert!((mb_per_s(200_000_000, 2.0) - 100.0).abs() < 1e-9);
        assert!(mb_per_s(1, 0.0).is_nan());
    }

    #[test]
    fn t10_the_fingerprint_the_client_prints() {
        let fp = "ab".repeat(32);
        let out = format!("Importing the image: 100%\r\nImage imported with fingerprint: {fp}\n");
        assert_eq!(fingerprint_in(&out), Some(fp.clone()));
        let out =
            format!("Transferring image: 99% (300MB/s)\r   \rImage imported with fingerprint: {fp}\r\n");
        assert_eq!(fingerprint_in(&out), Some(fp));
        assert_eq!(fingerprint_in("Image imported with fingerprint: xyz\n"), None);
        assert_eq!(fingerprint_in(""), None);
    }

    #[test]
    fn t10_the_image_is_a_unified_tarball_of_incompressible_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.tar");
        make_image(&path, 1).unwrap();
        let mut a = tar::Archive::new(std::fs::File::open(&path).unwrap());
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            if name == "rootfs/payload" {
                assert_eq!(data.len() as u64, MIB);
                // Incompressible: every byte value shows up, none dominates.
                let mut counts = [0u32; 256];
                for b in &data {
                    counts[usize::from(*b)] += 1;
                }
                assert!(counts.iter().all(|c| *c > 3000 && *c < 5200), "{counts:?}");
            }
            if name == "metadata.yaml" {
                let text = String::from_utf8(data).unwrap();
                assert!(
                    text.starts_with("architecture: x86_64\ncreation_date: "),
                    "{text}"
                );
            }
            seen.push(name);
        }
        assert_eq!(seen, ["metadata.yaml", "rootfs/", "rootfs/payload"]);
    }
}
