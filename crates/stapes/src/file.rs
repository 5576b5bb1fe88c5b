//! `stapes file push/pull/delete`, over SFTP as `incus file` (6.0) does it: one
//! `GET /1.0/instances/N/sftp` upgraded to SFTP per instance (`client::Client::instance_sftp`),
//! then SFTP v3 requests with the `russh-sftp` client.
//!
//! ```text
//!  push   [-p: LSTAT up the path, MKDIR what is missing (+SETSTAT owner)]
//!         OPEN (write, create, truncate) -> WRITE... (1 MiB at a time, pipelined)
//!         -> STAT, SETSTAT owner, SETSTAT mode -> CLOSE        (-r: the same per entry)
//!  pull   OPEN, LSTAT -> READ... into the local file (or stdout for `-`)   (-r: READDIR)
//!  delete REMOVE (-f: a directory's content first, then RMDIR)
//! ```
//!
//! Files are streamed both ways, a chunk at a time; nothing is read whole into memory.
//! Owners and modes follow Incus: the local file's unless `--uid`, `--gid`, `--mode`.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Subcommand};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::{FileAttributes, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ctx::{Ctx, Progress};

/// The chunk files are copied in.
const CHUNK: usize = 1024 * 1024;

#[derive(Debug, Subcommand)]
pub enum FileCmd {
    /// Delete files in instances
    #[command(alias = "rm")]
    Delete {
        /// [<remote>:]<instance>/<path> [[<remote>:]<instance>/<path>...]
        #[arg(required = true)]
        paths: Vec<String>,
        /// Force deleting files, directories, and subdirectories
        #[arg(short, long)]
        force: bool,
    },
    /// Pull files from instances
    Pull(PullArgs),
    /// Push files into instances
    Push(PushArgs),
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// <source path>... [<remote>:]<instance>/<path>
    #[arg(num_args = 2.., required = true)]
    pub args: Vec<String>,
    /// Create any directories necessary
    #[arg(short = 'p', long)]
    pub create_dirs: bool,
    /// Recursively transfer files
    #[arg(short, long)]
    pub recursive: bool,
    /// Set the file's uid on push
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub uid: i64,
    /// Set the file's gid on push
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub gid: i64,
    /// Set the file's perms on push
    #[arg(long, default_value = "")]
    pub mode: String,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// [<remote>:]<instance>/<path>... <target path>
    #[arg(num_args = 2.., required = true)]
    pub args: Vec<String>,
    /// Create any directories necessary
    #[arg(short = 'p', long)]
    pub create_dirs: bool,
    /// Recursively transfer files
    #[arg(short, long)]
    pub recursive: bool,
}

/// An SFTP error in Incus's (Go's `os`) words.
fn sftp_err(e: SftpError) -> anyhow::Error {
    match &e {
        SftpError::Status(s) if s.status_code == StatusCode::NoSuchFile => anyhow!("file does not exist"),
        SftpError::Status(s) if s.status_code == StatusCode::PermissionDenied => anyhow!("permission denied"),
        _ => anyhow!("{e}"),
    }
}

/// `--mode` as Incus reads it: octal, `644` taken as `0644`.
pub fn parse_mode(mode: &str) -> Result<Option<u32>> {
    if mode.is_empty() {
        return Ok(None);
    }
    let digits = mode.trim_start_matches("0o").trim_start_matches('0');
    let value = if digits.is_empty() {
        0
    } else {
        u32::from_str_radix(digits, 8)
            .map_err(|_| anyhow!("strconv.ParseInt: parsing {mode:?}: invalid syntax"))?
    };
    Ok(Some(value & 0o7777))
}

/// `instance/path` split (pure): the instance and the absolute, cleaned path.
pub fn split_target(spec: &str) -> Option<(String, String, bool)> {
    let (instance, path) = spec.split_once('/')?;
    let is_dir = spec.ends_with('/');
    Some((instance.to_string(), clean(&format!("/{path}")), is_dir))
}

/// A path cleaned as Go's `filepath.Clean` does for absolute paths (pure).
pub fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

async fn session(ctx: &Ctx, remote: &str, instance: &str) -> Result<SftpSession> {
    if ctx.globals.target.is_some() {
        bail!("--target cannot be used with instances");
    }
    let stream = ctx.client(remote)?.instance_sftp(instance).await?;
    SftpSession::new(stream).await.map_err(sftp_err)
}

/// The SFTP session of `remote:instance`, opened once per command.
async fn session_for<'a>(
    ctx: &Ctx,
    sessions: &'a mut BTreeMap<(String, String), SftpSession>,
    remote: &str,
    instance: &str,
) -> Result<&'a SftpSession> {
    let key = (remote.to_string(), instance.to_string());
    if !sessions.contains_key(&key) {
        let s = session(ctx, remote, instance).await?;
        sessions.insert(key.clone(), s);
    }
    sessions
        .get(&key)
        .ok_or_else(|| anyhow!("no SFTP session for {instance}"))
}

/// Owner and mode for an entry (`None`: leave as the server made it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Owner {
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<u32>,
}

/// Incus's `setOwnerMode`: SETSTAT the owner (a missing half taken from the file), then
/// the mode.
async fn set_owner_mode(sftp: &SftpSession, path: &str, owner: Owner) -> Result<()> {
    let current = sftp.metadata(path).await.map_err(sftp_err)?;
    if owner.uid.is_some() || owner.gid.is_some() {
        let mut attrs = FileAttributes::empty();
        attrs.uid = owner.uid.or(current.uid);
        attrs.gid = owner.gid.or(current.gid);
        sftp.set_metadata(path, attrs).await.map_err(sftp_err)?;
    }
    if let Some(mode) = owner.mode {
        let mut attrs = FileAttributes::empty();
        attrs.permissions = Some(mode);
        sftp.set_metadata(path, attrs).await.map_err(sftp_err)?;
    }
    Ok(())
}

/// Incus's `recursiveMkdir`: the missing directories of `path`, each owned and moded.
async fn mkdir_all(
    sftp: &SftpSession,
    path: &str,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<()> {
    if path == "/" {
        return Ok(());
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut existing = 0;
    for i in (1..=parts.len()).rev() {
        let cur = parts[..i].join("/");
        if let Ok(meta) = sftp.symlink_metadata(cur.clone()).await {
            if !meta.is_dir() {
                bail!("{cur} is not a directory");
            }
            existing = i;
            break;
        }
    }
    for i in existing + 1..=parts.len() {
        let cur = format!("/{}", parts[..i].join("/"));
        if sftp.create_dir(cur.clone()).await.is_err() && sftp.metadata(cur.clone()).await.is_err() {
            bail!("Failed to create directory {cur}");
        }
        set_owner_mode(sftp, &cur, Owner { uid, gid, mode }).await?;
    }
    Ok(())
}

/// Streams `reader` into a new (truncated) remote file, then sets its owner and mode.
async fn write_file(
    ctx: &Ctx,
    sftp: &SftpSession,
    mut reader: impl tokio::io::AsyncRead + Unpin,
    path: &str,
    owner: Owner,
    label: &str,
    size: Option<u64>,
) -> Result<()> {
    let mut file = sftp.create(path.to_string()).await.map_err(sftp_err)?;
    let show = !ctx.globals.quiet && crate::ctx::stdout_is_terminal();
    let mut progress = Progress::default();
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    let start = std::time::Instant::now();
    loop {
        let n = reader.read(&mut buf).await.context("read")?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).await.context("write")?;
        sent += n as u64;
        if show {
            let secs = start.elapsed().as_secs_f64().max(0.001);
            let speed = crate::format::size_si((sent as f64 / secs) as i64, 2);
            let text = match size.filter(|s| *s > 0) {
                Some(s) => format!("{label}: {}% ({speed}/s)", sent * 100 / s),
                None => format!("{label}: {} ({speed}/s)", crate::format::size_si(sent as i64, 2)),
            };
            progress.update(&text);
        }
    }
    file.shutdown().await.context("close")?;
    progress.done("");
    set_owner_mode(sftp, path, owner).await
}

/// The local file's owner and mode bits (Incus's `GetOwnerMode`).
fn local_owner(meta: &std::fs::Metadata) -> (u32, u32, u32) {
    (meta.permissions().mode() & 0o7777, meta.uid(), meta.gid())
}

pub async fn run(ctx: &Ctx, cmd: FileCmd) -> Result<()> {
    match cmd {
        FileCmd::Push(args) => push(ctx, args).await,
        FileCmd::Pull(args) => pull(ctx, args).await,
        FileCmd::Delete { paths, force } => delete(ctx, &paths, force).await,
    }
}

async fn push(ctx: &Ctx, args: PushArgs) -> Result<()> {
    let (sources, target) = args.args.split_at(args.args.len() - 1);
    let target = &target[0];
    let (remote, spec) = ctx.parse_remote(target)?;
    let (instance, target_path, mut target_is_dir) =
        split_target(&spec).ok_or_else(|| anyhow!("Invalid target {target}"))?;
    if target_path.ends_with('/') {
        target_is_dir = true;
    }
    let sftp = session(ctx, &remote, &instance).await?;
    let mode = parse_mode(&args.mode)?;
    let sources: Vec<String> = sources
        .iter()
        .map(|s| if s == "-" { s.clone() } else { clean_local(s) })
        .collect();
    if args.recursive {
        if args.uid != -1 || args.gid != -1 || !args.mode.is_empty() {
            bail!("Can't supply uid/gid/mode in recursive mode");
        }
        if args.create_dirs {
            let meta = std::fs::metadata(&sources[0]).with_context(|| format!("open {}", sources[0]))?;
            let (m, uid, gid) = local_owner(&meta);
            mkdir_all(&sftp, &target_path, Some(m), Some(uid), Some(gid)).await?;
        }
        for s in &sources {
            push_tree(ctx, &sftp, Path::new(s), &target_path).await?;
        }
        return Ok(());
    }
    if sources.len() > 1 && !target_is_dir {
        bail!("Missing target directory");
    }
    let uid = u32::try_from(args.uid).ok();
    let gid = u32::try_from(args.gid).ok();
    for s in &sources {
        let fpath = if target_is_dir {
            let base = Path::new(s)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            clean(&format!("{target_path}/{base}"))
        } else {
            target_path.clone()
        };
        let (local_mode, local_uid, local_gid, size) = if s == "-" {
            (0o644, 0, 0, None)
        } else {
            let meta = std::fs::metadata(s).with_context(|| format!("open {s}"))?;
            let (m, u, g) = local_owner(&meta);
            (m, u, g, Some(meta.len()))
        };
        let owner = Owner {
            uid: Some(uid.unwrap_or(local_uid)),
            gid: Some(gid.unwrap_or(local_gid)),
            mode: Some(mode.unwrap_or(local_mode)),
        };
        if args.create_dirs {
            let parent = Path::new(&fpath)
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|| "/".into());
            mkdir_all(&sftp, &parent, None, owner.uid, owner.gid).await?;
        }
        let label = format!("Pushing {s} to {fpath}");
        if s == "-" {
            write_file(ctx, &sftp, tokio::io::stdin(), &fpath, owner, &label, None).await?;
        } else {
            let f = tokio::fs::File::open(s)
                .await
                .with_context(|| format!("open {s}"))?;
            write_file(ctx, &sftp, f, &fpath, owner, &label, size).await?;
        }
    }
    Ok(())
}

/// Go's `filepath.Clean` for a local path (relative ones stay relative).
fn clean_local(p: &str) -> String {
    if p.starts_with('/') {
        return clean(p);
    }
    let c = clean(&format!("/{p}"));
    let rel = c.trim_start_matches('/');
    if rel.is_empty() {
        ".".into()
    } else {
        rel.to_string()
    }
}

/// Incus's `recursivePushFile`: `source` (a directory tree) under `target`.
async fn push_tree(ctx: &Ctx, sftp: &SftpSession, source: &Path, target: &str) -> Result<()> {
    let base = source.parent().unwrap_or(Path::new(""));
    let mut stack: Vec<PathBuf> = vec![source.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).with_context(|| format!("lstat {}", p.display()))?;
        let rel = p.strip_prefix(base).unwrap_or(&p).to_string_lossy().into_owned();
        let dest = clean(&format!("{target}/{rel}"));
        let (mode, uid, gid) = local_owner(&meta);
        let owner = Owner {
            uid: Some(uid),
            gid: Some(gid),
            mode: Some(mode),
        };
        if meta.is_dir() {
            if sftp.metadata(dest.clone()).await.is_err() {
                sftp.create_dir(dest.clone()).await.map_err(sftp_err)?;
            }
            set_owner_mode(sftp, &dest, owner).await?;
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            entries.reverse();
            stack.extend(entries);
        } else if meta.file_type().is_symlink() {
            let link = std::fs::read_link(&p)?;
            if let Ok(m) = sftp.symlink_metadata(dest.clone()).await {
                if m.is_symlink() {
                    sftp.remove_file(dest.clone()).await.map_err(sftp_err)?;
                }
            }
            // Servers (OpenSSH, Incus's, stapesd's) take SSH_FXP_SYMLINK's strings as
            // target then link, the reverse of the draft this client follows.
            sftp.symlink(link.to_string_lossy().into_owned(), dest.clone())
                .await
                .map_err(sftp_err)?;
        } else if meta.is_file() {
            let f = tokio::fs::File::open(&p).await?;
            let label = format!("Pushing {} to {dest}", p.display());
            write_file(ctx, sftp, f, &dest, owner, &label, Some(meta.len())).await?;
        }
    }
    Ok(())
}

async fn pull(ctx: &Ctx, args: PullArgs) -> Result<()> {
    let (sources, target) = args.args.split_at(args.args.len() - 1);
    let raw_target = &target[0];
    let target = if raw_target == "-" {
        "-".to_string()
    } else {
        clean_local(raw_target)
    };
    let mut target_is_dir = false;
    match std::fs::metadata(&target) {
        Ok(m) => {
            target_is_dir = m.is_dir();
            if !target_is_dir && sources.len() > 1 {
                bail!("More than one file to download, but target is not a directory");
            }
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        Err(_) if raw_target.ends_with('/') || sources.len() > 1 => {
            std::fs::create_dir_all(&target)?;
            target_is_dir = true;
        }
        Err(_) if args.create_dirs && target != "-" => {
            if let Some(parent) = Path::new(&target).parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
        }
        Err(_) => {}
    }
    let mut sessions: BTreeMap<(String, String), SftpSession> = BTreeMap::new();
    for source in sources {
        let (remote, spec) = ctx.parse_remote(source)?;
        let (instance, path, _) = split_target(&spec).ok_or_else(|| anyhow!("Invalid source {spec}"))?;
        let sftp = session_for(ctx, &mut sessions, &remote, &instance).await?;
        let mut src = sftp.open(path.clone()).await.map_err(sftp_err)?;
        let info = sftp.symlink_metadata(path.clone()).await.map_err(sftp_err)?;
        if info.is_dir() {
            if !args.recursive {
                bail!("Can't pull a directory without --recursive");
            }
            if !Path::new(&target).exists() {
                std::fs::create_dir_all(&target)?;
            }
            pull_tree(sftp, &path, Path::new(&target)).await?;
            continue;
        }
        let target_path = if target_is_dir {
            let base = Path::new(&path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Path::new(&target).join(base)
        } else {
            PathBuf::from(&target)
        };
        if info.is_symlink() {
            let link = sftp.read_link(path.clone()).await.map_err(sftp_err)?;
            std::os::unix::fs::symlink(link, &target_path)?;
            continue;
        }
        if target_path.as_os_str() == "-" {
            let mut out = tokio::io::stdout();
            tokio::io::copy(&mut src, &mut out).await?;
            out.flush().await?;
            continue;
        }
        let mut f = tokio::fs::File::create(&target_path)
            .await
            .with_context(|| format!("open {}", target_path.display()))?;
        if let Some(perm) = info.permissions {
            std::fs::set_permissions(&target_path, std::fs::Permissions::from_mode(perm & 0o7777))?;
        }
        tokio::io::copy(&mut src, &mut f).await?;
        f.flush().await?;
    }
    Ok(())
}

/// Incus's `recursivePullFile`: the remote tree at `path` into `target/<base name>`.
async fn pull_tree(sftp: &SftpSession, path: &str, target: &Path) -> Result<()> {
    let base = Path::new(path)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into());
    let mut stack = vec![path.to_string()];
    while let Some(p) = stack.pop() {
        let rel = p
            .strip_prefix(&base)
            .unwrap_or(&p)
            .trim_start_matches('/')
            .to_string();
        let local = target.join(&rel);
        let meta = sftp.symlink_metadata(p.clone()).await.map_err(sftp_err)?;
        if meta.is_dir() {
            std::fs::create_dir_all(&local)?;
            if let Some(perm) = meta.permissions {
                std::fs::set_permissions(&local, std::fs::Permissions::from_mode((perm & 0o7777) | 0o700))?;
            }
            let mut names: Vec<String> = sftp
                .read_dir(p.clone())
                .await
                .map_err(sftp_err)?
                .map(|e| e.file_name())
                .filter(|n| n != "." && n != "..")
                .collect();
            names.sort();
            names.reverse();
            stack.extend(names.into_iter().map(|n| clean(&format!("{p}/{n}"))));
        } else if meta.is_symlink() {
            let link = sftp.read_link(p.clone()).await.map_err(sftp_err)?;
            std::os::unix::fs::symlink(link, &local)?;
        } else if meta.is_regular() {
            let mut src = sftp.open(p.clone()).await.map_err(sftp_err)?;
            let mut f = tokio::fs::File::create(&local).await?;
            tokio::io::copy(&mut src, &mut f).await?;
            f.flush().await?;
            if let Some(perm) = meta.permissions {
                std::fs::set_permissions(&local, std::fs::Permissions::from_mode(perm & 0o7777))?;
            }
        }
    }
    Ok(())
}

async fn delete(ctx: &Ctx, paths: &[String], force: bool) -> Result<()> {
    let mut sessions: BTreeMap<(String, String), SftpSession> = BTreeMap::new();
    for spec in paths {
        let (remote, name) = ctx.parse_remote(spec)?;
        let (instance, path, _) = split_target(&name).ok_or_else(|| anyhow!("Invalid path {name}"))?;
        let sftp = session_for(ctx, &mut sessions, &remote, &instance).await?;
        // Incus sends the path relative to the root (`root/x` for `/root/x`).
        let rel = path.trim_start_matches('/').to_string();
        if force {
            remove_all(sftp, &rel).await?;
        } else {
            sftp.remove_file(rel).await.map_err(sftp_err)?;
        }
    }
    Ok(())
}

/// Removes `path` and, when it is a directory, everything under it.
async fn remove_all(sftp: &SftpSession, path: &str) -> Result<()> {
    let meta = sftp.symlink_metadata(path.to_string()).await.map_err(sftp_err)?;
    if !meta.is_dir() {
        return sftp.remove_file(path.to_string()).await.map_err(sftp_err);
    }
    // Depth first, bounded by the tree itself: directories are listed, then removed
    // after their content.
    let mut dirs = vec![path.to_string()];
    let mut order = Vec::new();
    while let Some(d) = dirs.pop() {
        for e in sftp.read_dir(d.clone()).await.map_err(sftp_err)? {
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let child = format!("{d}/{name}");
            if e.file_type().is_dir() {
                dirs.push(child);
            } else {
                sftp.remove_file(child).await.map_err(sftp_err)?;
            }
        }
        order.push(d);
    }
    for d in order.into_iter().rev() {
        sftp.remove_dir(d).await.map_err(sftp_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_targets_and_modes_as_incus_reads_them() {
        assert_eq!(
            split_target("c1/root/x"),
            Some(("c1".into(), "/root/x".into(), false))
        );
        assert_eq!(split_target("c1/tmp/"), Some(("c1".into(), "/tmp".into(), true)));
        assert_eq!(
            split_target("c1/a/../b/./c"),
            Some(("c1".into(), "/b/c".into(), false))
        );
        assert_eq!(split_target("c1"), None);
        assert_eq!(parse_mode("0600").unwrap(), Some(0o600));
        assert_eq!(parse_mode("644").unwrap(), Some(0o644));
        assert_eq!(parse_mode("").unwrap(), None);
        assert!(parse_mode("9x").is_err());
        assert_eq!(clean_local("./a//b/"), "a/b");
        assert_eq!(clean_local("/tmp/../etc"), "/etc");
    }
}
