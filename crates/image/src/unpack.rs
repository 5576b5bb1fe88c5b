//! Unpacking an image into a new container volume, safely.
//!
//! ```text
//!  <target>/            the volume (empty, made by the storage pool)
//!  ├── metadata.yaml    from the unified file or the metadata tarball
//!  ├── templates/
//!  └── rootfs/          members under `rootfs/`, or the split image's rootfs
//! ```
//!
//! Every member is placed with `*at` system calls relative to a directory file
//! descriptor of `<target>` or `<target>/rootfs`, and every directory on the way is
//! opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_XDEV)`. So a member can never land outside the target: `..` and absolute
//! names are refused by [`crate::paths`] before any call, a symbolic link on the way to a
//! member (the "symlink, then write through it" trick) makes the kernel refuse the
//! open, and the last component is created with `O_EXCL | O_NOFOLLOW` after removing what
//! was there, so an earlier member cannot redirect it. Symbolic links are stored as they
//! are (absolute or not) and never followed; hard links name a member already unpacked
//! under the same root, resolved the same way. Device nodes are refused outside the
//! allowed set (`paths::allowed_device`); members under `rootfs/dev/` are skipped as
//! Incus skips them.
//!
//! Owners are numeric (user and group names in the archive are ignored) and written as
//! [`Ownership`] says. stapes's LXC driver gives unprivileged containers the id map
//! 0→1000000 for 1000000000 ids *with an idmapped root file system*
//! (`lxc.rootfs.options = idmap=container`), as Incus does: the files then keep the
//! image's own ids on disk, so [`Ownership::AsIs`] is what it needs, and privileged
//! containers too. [`Ownership::Shifted`] writes host ids (container id + base) for a
//! kernel or file system without idmapped mounts.
//!
//! Modes (with set-id bits, applied after the owner), modification times, and the
//! extended attributes a container may carry (`user.*`, `security.capability`, and the
//! POSIX ACLs when owners are not shifted) are kept. A squashfs is read through
//! `sqfs2tar`, so it passes through exactly the same code. On failure the target is
//! emptied again.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{
    fchmod, fchown, fsetxattr, futimens, linkat, mkdirat, mknodat, openat, openat2, statat, symlinkat,
    unlinkat, utimensat, AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags,
};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::format::{self, Format, Sqfs2tar, HEADER_LEN};
use crate::paths::{self, DeviceKind, Root};
use crate::store::ImageFiles;

/// How the owners in the archive are written to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// As in the archive: for an idmapped root file system (stapes's LXC driver) or a
    /// privileged container.
    AsIs,
    /// Container id `n` becomes host id `base + n`; ids at or past `range` are refused.
    Shifted { base: u32, range: u32 },
}

impl Ownership {
    /// The host id of container id `id`.
    pub fn map(self, id: u64) -> Option<u32> {
        let id = u32::try_from(id).ok()?;
        let host = match self {
            Ownership::AsIs => id,
            Ownership::Shifted { base, range } => {
                if id >= range {
                    return None;
                }
                base.checked_add(id)?
            }
        };
        // (uid_t)-1 means "leave unchanged" to chown.
        (host != u32::MAX).then_some(host)
    }
}

/// Options of an unpack.
#[derive(Debug, Clone, Copy)]
pub struct UnpackOptions {
    pub ownership: Ownership,
    /// The most the regular files may hold together.
    pub max_unpacked: u64,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            ownership: Ownership::AsIs,
            max_unpacked: 256 << 30,
        }
    }
}

/// How far an unpack is, for "Unpacking image: 42%".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the image files read so far (compressed).
    pub bytes: u64,
    /// The image files' size.
    pub total: u64,
}

impl Progress {
    pub fn percent(&self) -> u8 {
        if self.total == 0 {
            return 100;
        }
        (self.bytes.min(self.total) * 100 / self.total) as u8
    }
}

/// What an unpack did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub members: u64,
    /// Bytes of regular files written.
    pub bytes: u64,
    /// Members under `rootfs/dev/` skipped.
    pub skipped_dev: u64,
    /// Extended attributes left out (namespace not kept, or not supported here).
    pub skipped_xattrs: u64,
}

/// Unpacks `files` into `target`, an existing empty directory. Blocking: run it on a
/// blocking thread. `progress` is called as the image is read, at most once per percent.
pub fn unpack(
    files: &ImageFiles,
    target: &Path,
    opts: &UnpackOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<UnpackStats> {
    let volume = open_empty_dir(target)?;
    let result = unpack_into(files, &volume, opts, progress);
    if result.is_err() {
        empty_dir(target);
    }
    result
}

/// [`unpack`] on a blocking thread.
pub async fn unpack_async(
    files: ImageFiles,
    target: std::path::PathBuf,
    opts: UnpackOptions,
    mut progress: impl FnMut(Progress) + Send + 'static,
) -> Result<UnpackStats> {
    tokio::task::spawn_blocking(move || unpack(&files, &target, &opts, &mut progress))
        .await
        .map_err(|e| Error::io("unpack task")(io::Error::other(e.to_string())))?
}

/// Unpacks a plain tar of a whole container volume (`metadata.yaml`, `templates/`,
/// `rootfs/`, as a member sends one when an instance is copied to another member) into
/// `target`, an existing empty directory, with exactly the checks of [`unpack`]. Blocking.
/// On failure the target is emptied again.
pub fn unpack_volume(reader: impl Read, target: &Path, opts: &UnpackOptions) -> Result<UnpackStats> {
    let volume = open_empty_dir(target)?;
    let result = (|| {
        let rootfs = make_rootfs(&volume, opts)?;
        let mut x = Extractor::new(&volume, &rootfs, opts);
        x.members(reader, false)?;
        if !x.saw_rootfs {
            return Err(Error::MissingRootfs);
        }
        x.finish_dirs()?;
        Ok(x.stats)
    })();
    if result.is_err() {
        empty_dir(target);
    }
    result
}

fn unpack_into(
    files: &ImageFiles,
    volume: &OwnedFd,
    opts: &UnpackOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<UnpackStats> {
    let mut total = 0;
    for p in std::iter::once(&files.metadata).chain(files.rootfs.as_ref()) {
        total += fs::metadata(p)
            .map_err(Error::io(format!("reading {}", p.display())))?
            .len();
    }
    let rootfs = make_rootfs(volume, opts)?;
    let mut x = Extractor::new(volume, &rootfs, opts);
    let mut meter = Meter {
        done: 0,
        total,
        last: None,
        report: progress,
    };
    x.archive(&mut meter, &files.metadata, false)?;
    if let Some(r) = &files.rootfs {
        x.saw_rootfs = true;
        x.archive(&mut meter, r, true)?;
    }
    if !x.saw_rootfs {
        return Err(Error::MissingRootfs);
    }
    x.finish_dirs()?;
    meter.add(0, true);
    Ok(x.stats)
}

/// `rootfs/` in the volume, owned by the container's root.
fn make_rootfs(volume: &OwnedFd, opts: &UnpackOptions) -> Result<OwnedFd> {
    let root_ids = (
        opts.ownership.map(0).unwrap_or(0),
        opts.ownership.map(0).unwrap_or(0),
    );
    mkdirat(volume, "rootfs", Mode::from_raw_mode(0o755)).map_err(errno("creating rootfs"))?;
    let rootfs =
        open_beneath(volume, b"rootfs", OFlags::PATH).map_err(|e| Error::io("opening rootfs")(e.into()))?;
    fchown_path(&rootfs, root_ids)?;
    Ok(rootfs)
}

struct Meter<'a> {
    done: u64,
    total: u64,
    last: Option<u8>,
    report: &'a mut dyn FnMut(Progress),
}

impl Meter<'_> {
    fn add(&mut self, n: u64, force: bool) {
        self.done += n;
        let p = Progress {
            bytes: self.done,
            total: self.total,
        };
        if force || self.last != Some(p.percent()) {
            self.last = Some(p.percent());
            (self.report)(p);
        }
    }
}

/// A reader that counts what it reads into the meter.
struct Counting<'m, 'a, R> {
    inner: R,
    meter: &'m mut Meter<'a>,
}

impl<R: Read> Read for Counting<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.add(n as u64, false);
        Ok(n)
    }
}

/// A directory's mode and time, set once everything inside it is written.
struct DirAttrs {
    root: Root,
    path: Vec<u8>,
    mode: u32,
    mtime: i64,
}

struct Extractor<'a> {
    volume: BorrowedFd<'a>,
    rootfs: BorrowedFd<'a>,
    opts: UnpackOptions,
    stats: UnpackStats,
    dirs: Vec<DirAttrs>,
    saw_rootfs: bool,
}

/// One archive member, read from its header.
struct Member {
    name: Vec<u8>,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    link: Option<Vec<u8>>,
    device: (u32, u32),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<'a> Extractor<'a> {
    fn new(volume: &'a OwnedFd, rootfs: &'a OwnedFd, opts: &UnpackOptions) -> Self {
        Extractor {
            volume: volume.as_fd(),
            rootfs: rootfs.as_fd(),
            opts: *opts,
            stats: UnpackStats::default(),
            dirs: Vec::new(),
            saw_rootfs: false,
        }
    }
    fn root_fd(&self, root: Root) -> BorrowedFd<'_> {
        match root {
            Root::Volume => self.volume,
            Root::Rootfs => self.rootfs,
        }
    }

    /// Unpacks one image file. Members are placed by their `rootfs/` prefix, or all
    /// under `rootfs` for a split image's rootfs (`whole_rootfs`).
    fn archive(&mut self, meter: &mut Meter<'_>, path: &Path, whole_rootfs: bool) -> Result<()> {
        let mut file = File::open(path).map_err(Error::io(format!("opening {}", path.display())))?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        (&mut file)
            .take(HEADER_LEN as u64)
            .read_to_end(&mut header)
            .map_err(Error::io("reading the image"))?;
        let fmt = format::detect(&header).ok_or(Error::UnsupportedCompression)?;
        let file = io::Cursor::new(header).chain(file);
        if fmt == Format::Squashfs {
            let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let (tool, out) = Sqfs2tar::spawn(path)?;
            let walked = self.members(out, whole_rootfs);
            let finished = tool.finish()?;
            walked?;
            finished.map_err(|detail| Error::Tool {
                tool: "sqfs2tar",
                detail,
            })?;
            meter.add(size, false);
            return Ok(());
        }
        if !fmt.is_tar() {
            return Err(Error::UnsupportedFormat(
                fmt.extension().trim_start_matches('.').into(),
            ));
        }
        // The meter counts the compressed bytes as the decoder reads them.
        let counting = Counting { inner: file, meter };
        let tar = format::decoder(fmt, counting).map_err(corrupt)?;
        self.members(tar, whole_rootfs)
    }

    fn members(&mut self, tar: impl Read, whole_rootfs: bool) -> Result<()> {
        let mut archive = tar::Archive::new(tar);
        for entry in archive.entries().map_err(corrupt)? {
            let mut entry = entry.map_err(corrupt)?;
            let member = read_member(&mut entry)?;
            self.member(member, &mut entry, whole_rootfs)?;
        }
        Ok(())
    }

    fn member(&mut self, m: Member, data: &mut impl Read, whole_rootfs: bool) -> Result<()> {
        use tar::EntryType as T;
        if matches!(
            m.kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        let shown = String::from_utf8_lossy(&m.name).into_owned();
        let unsafe_ = |reason: &str| Error::Unsafe {
            path: shown.clone(),
            reason: reason.to_string(),
        };
        let (root, comps) = if whole_rootfs {
            (Root::Rootfs, paths::components(&m.name).map_err(unsafe_)?)
        } else {
            paths::place(&m.name).map_err(unsafe_)?
        };
        if root == Root::Rootfs {
            self.saw_rootfs = true;
        }
        if paths::is_skipped_dev(root, &comps) {
            self.stats.skipped_dev += 1;
            return Ok(());
        }
        self.stats.members += 1;
        let uid = self
            .opts
            .ownership
            .map(m.uid)
            .ok_or_else(|| unsafe_("owner outside the container's id range"))?;
        let gid = self
            .opts
            .ownership
            .map(m.gid)
            .ok_or_else(|| unsafe_("group outside the container's id range"))?;
        let mode = m.mode & 0o7777;

        // The root of the archive or of the root file system: its attributes only.
        let Some((name, parents)) = comps.split_last() else {
            if root == Root::Rootfs {
                if m.kind != T::Directory {
                    return Err(unsafe_("rootfs is not a directory"));
                }
                fchown_path(&self.rootfs, (uid, gid))?;
                self.dirs.push(DirAttrs {
                    root,
                    path: Vec::new(),
                    mode,
                    mtime: m.mtime,
                });
            }
            return Ok(());
        };
        let name = OsStr::from_bytes(name);
        let parent = self.parent(root, parents).map_err(|e| why(&shown, e))?;
        let times = timestamps(m.mtime);
        match m.kind {
            T::Directory => {
                match statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                    Ok(_) => {
                        unlinkat(&parent, name, AtFlags::empty()).map_err(errno("replacing a member"))?;
                        mkdirat(&parent, name, Mode::from_raw_mode(0o700))
                            .map_err(errno("creating a directory"))?;
                    }
                    Err(Errno::NOENT) => {
                        mkdirat(&parent, name, Mode::from_raw_mode(0o700))
                            .map_err(errno("creating a directory"))?;
                    }
                    Err(e) => return Err(errno("creating a directory")(e)),
                }
                let dir = openat(
                    &parent,
                    name,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| why(&shown, e))?;
                chown_at(&dir, None, (uid, gid))?;
                let mut full = Vec::new();
                for c in parents.iter().chain(std::iter::once(&name.as_bytes())) {
                    if !full.is_empty() {
                        full.push(b'/');
                    }
                    full.extend_from_slice(c);
                }
                self.set_xattrs_path(&parent, name, &m.xattrs)?;
                self.dirs.push(DirAttrs {
                    root,
                    path: full,
                    mode,
                    mtime: m.mtime,
                });
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                self.clear(&parent, name, &shown)?;
                let fd = openat(
                    &parent,
                    name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| why(&shown, e))?;
                let mut file = File::from(fd);
                let room = self.opts.max_unpacked.saturating_sub(self.stats.bytes);
                let n = io::copy(&mut data.take(room.saturating_add(1)), &mut file).map_err(corrupt)?;
                if n > room {
                    return Err(Error::UnpackedTooLarge {
                        limit: self.opts.max_unpacked,
                    });
                }
                self.stats.bytes += n;
                let fd = OwnedFd::from(file);
                fchown(&fd, Some(uid_of(uid)), Some(gid_of(gid))).map_err(errno("setting an owner"))?;
                fchmod(&fd, Mode::from_raw_mode(mode)).map_err(errno("setting a mode"))?;
                self.set_xattrs_fd(&fd, &m.xattrs)?;
                futimens(&fd, &times).map_err(errno("setting a time"))?;
            }
            T::Symlink => {
                let target = m
                    .link
                    .as_deref()
                    .ok_or_else(|| unsafe_("symbolic link without a target"))?;
                if target.is_empty() || target.contains(&0) {
                    return Err(unsafe_("symbolic link with an empty target"));
                }
                self.clear(&parent, name, &shown)?;
                symlinkat(OsStr::from_bytes(target), &parent, name)
                    .map_err(errno("creating a symbolic link"))?;
                chown_at(&parent, Some(name), (uid, gid))?;
                utimensat(&parent, name, &times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(errno("setting a time"))?;
            }
            T::Link => {
                let target = m
                    .link
                    .as_deref()
                    .ok_or_else(|| unsafe_("hard link without a target"))?;
                let (troot, tcomps) = if whole_rootfs {
                    (
                        Root::Rootfs,
                        paths::components(target).map_err(|r| unsafe_(&format!("hard link target: {r}")))?,
                    )
                } else {
                    paths::place(target).map_err(|r| unsafe_(&format!("hard link target: {r}")))?
                };
                if troot != root {
                    return Err(unsafe_("hard link to a member of another root"));
                }
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(unsafe_("hard link to a directory"));
                };
                let tparent = self.parent(root, tparents).map_err(|e| why(&shown, e))?;
                let tname = OsStr::from_bytes(tname);
                if statat(&tparent, tname, AtFlags::SYMLINK_NOFOLLOW).is_err() {
                    return Err(unsafe_("hard link to a member not unpacked"));
                }
                self.clear(&parent, name, &shown)?;
                linkat(&tparent, tname, &parent, name, AtFlags::empty()).map_err(|e| why(&shown, e))?;
            }
            T::Char | T::Block => {
                let kind = if m.kind == T::Char {
                    DeviceKind::Char
                } else {
                    DeviceKind::Block
                };
                let (major, minor) = m.device;
                if !paths::allowed_device(kind, major, minor) {
                    return Err(unsafe_(&format!(
                        "{} device {major}:{minor} is not allowed in a container",
                        if kind == DeviceKind::Char {
                            "character"
                        } else {
                            "block"
                        }
                    )));
                }
                self.clear(&parent, name, &shown)?;
                let ft = if kind == DeviceKind::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                mknodat(
                    &parent,
                    name,
                    ft,
                    Mode::from_raw_mode(mode),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(errno("creating a device node"))?;
                self.finish_node(&parent, name, (uid, gid), mode, &times)?;
            }
            T::Fifo => {
                self.clear(&parent, name, &shown)?;
                mknodat(&parent, name, FileType::Fifo, Mode::from_raw_mode(mode), 0)
                    .map_err(errno("creating a fifo"))?;
                self.finish_node(&parent, name, (uid, gid), mode, &times)?;
            }
            _ => return Err(unsafe_("unsupported member type")),
        }
        Ok(())
    }

    /// Owner, then mode (so set-id bits survive), then time, of a node made by name.
    fn finish_node(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        ids: (u32, u32),
        mode: u32,
        times: &Timestamps,
    ) -> Result<()> {
        chown_at(parent, Some(name), ids)?;
        rustix::fs::chmodat(parent, name, Mode::from_raw_mode(mode), AtFlags::empty())
            .map_err(errno("setting a mode"))?;
        utimensat(parent, name, times, AtFlags::SYMLINK_NOFOLLOW).map_err(errno("setting a time"))
    }

    /// Removes what a member replaces: anything but a directory; an empty directory.
    fn clear(&self, parent: &OwnedFd, name: &OsStr, shown: &str) -> Result<()> {
        match statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(errno("replacing a member")(e)),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                unlinkat(parent, name, AtFlags::REMOVEDIR).map_err(|e| match e {
                    Errno::NOTEMPTY | Errno::EXIST => Error::Unsafe {
                        path: shown.to_string(),
                        reason: "would replace a directory that is not empty".into(),
                    },
                    e => errno("replacing a member")(e),
                })
            }
            Ok(_) => unlinkat(parent, name, AtFlags::empty()).map_err(errno("replacing a member")),
        }
    }

    /// The directory a member goes in, made (0755, owned by the container's root) where
    /// the archive did not list it first.
    fn parent(&self, root: Root, comps: &[&[u8]]) -> std::result::Result<OwnedFd, Errno> {
        let base = self.root_fd(root);
        let mut dir = rustix::io::fcntl_dupfd_cloexec(base, 0)?;
        if comps.is_empty() {
            return Ok(dir);
        }
        let joined = comps.join(&b'/');
        match open_beneath(&base, &joined, OFlags::PATH) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
        let root_ids = (
            self.opts.ownership.map(0).unwrap_or(0),
            self.opts.ownership.map(0).unwrap_or(0),
        );
        for c in comps {
            dir = match open_beneath(&dir, c, OFlags::PATH) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    mkdirat(&dir, OsStr::from_bytes(c), Mode::from_raw_mode(0o755))?;
                    let fd = open_beneath(&dir, c, OFlags::PATH)?;
                    fchown_path(&fd, root_ids).map_err(|_| Errno::PERM)?;
                    fd
                }
                Err(e) => return Err(e),
            };
        }
        Ok(dir)
    }
}

/// Explains a refused system call on a member's path.
fn why(shown: &str, e: Errno) -> Error {
    let reason = match e {
        Errno::LOOP => "a symbolic link is on its path",
        Errno::XDEV => "its path leaves the target",
        Errno::NOTDIR => "a member on its path is not a directory",
        Errno::EXIST => "it already exists",
        _ => return errno(&format!("unpacking {shown}"))(e),
    };
    Error::Unsafe {
        path: shown.to_string(),
        reason: reason.into(),
    }
}

impl Extractor<'_> {
    fn keep_xattr(&mut self, name: &[u8]) -> bool {
        let keep = name.starts_with(b"user.")
            || name == b"security.capability"
            || (self.opts.ownership == Ownership::AsIs
                && (name == b"system.posix_acl_access" || name == b"system.posix_acl_default"));
        if !keep {
            self.stats.skipped_xattrs += 1;
        }
        keep
    }

    fn set_xattrs_fd(&mut self, fd: &OwnedFd, xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        for (name, value) in xattrs {
            if !self.keep_xattr(name) {
                continue;
            }
            match fsetxattr(fd, OsStr::from_bytes(name), value, XattrFlags::empty()) {
                Ok(()) => {}
                Err(Errno::NOTSUP) => self.stats.skipped_xattrs += 1,
                Err(e) => return Err(errno("setting an extended attribute")(e)),
            }
        }
        Ok(())
    }

    fn set_xattrs_path(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<()> {
        if xattrs.is_empty() {
            return Ok(());
        }
        // Directories: open read-only (not O_PATH) to set attributes through the fd.
        let fd = openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno("opening a directory"))?;
        self.set_xattrs_fd(&fd, xattrs)
    }

    /// Sets directories' modes and times, deepest first, now that nothing more is
    /// written into them.
    fn finish_dirs(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for d in dirs.iter().rev() {
            let base = self.root_fd(d.root);
            let fd = if d.path.is_empty() {
                openat(
                    base,
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
            } else {
                open_beneath(&base, &d.path, OFlags::RDONLY)
            };
            // A directory replaced by a later member has nothing left to set.
            let Ok(fd) = fd else { continue };
            fchmod(&fd, Mode::from_raw_mode(d.mode)).map_err(errno("setting a mode"))?;
            futimens(&fd, &timestamps(d.mtime)).map_err(errno("setting a time"))?;
        }
        Ok(())
    }
}

fn read_member<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Member> {
    let h = entry.header();
    let kind = h.entry_type();
    let mode = h.mode().map_err(corrupt)?;
    let mut uid = h.uid().map_err(corrupt)?;
    let mut gid = h.gid().map_err(corrupt)?;
    let mut mtime = h.mtime().map_err(corrupt)? as i64;
    let device = if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
        (
            h.device_major().map_err(corrupt)?.unwrap_or(0),
            h.device_minor().map_err(corrupt)?.unwrap_or(0),
        )
    } else {
        (0, 0)
    };
    let name = entry.path_bytes().into_owned();
    let link = entry.link_name_bytes().map(|l| l.into_owned());
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions().map_err(corrupt)? {
        for ext in pax {
            let ext = ext.map_err(corrupt)?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            let number = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.split('.').next()?.parse::<i64>().ok())
            };
            if let Some(attr) = key.strip_prefix(b"SCHILY.xattr.") {
                xattrs.push((attr.to_vec(), value.to_vec()));
            } else if key == b"uid" {
                uid = number().and_then(|n| u64::try_from(n).ok()).unwrap_or(uid);
            } else if key == b"gid" {
                gid = number().and_then(|n| u64::try_from(n).ok()).unwrap_or(gid);
            } else if key == b"mtime" {
                mtime = number().unwrap_or(mtime);
            }
        }
    }
    Ok(Member {
        name,
        kind,
        mode,
        uid,
        gid,
        mtime,
        link,
        device,
        xattrs,
    })
}

/// Opens `path` under `dir`, never through a symbolic link and never out of `dir`.
fn open_beneath(dir: &impl AsFd, path: &[u8], extra: OFlags) -> std::result::Result<OwnedFd, Errno> {
    openat2(
        dir,
        OsStr::from_bytes(path),
        extra | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_MAGICLINKS
            | ResolveFlags::NO_XDEV,
    )
}

/// Opens the target, checking it is a directory (not a link to one) and empty.
fn open_empty_dir(target: &Path) -> Result<OwnedFd> {
    let not_empty = || Error::TargetNotEmpty(target.to_path_buf());
    let fd = rustix::fs::open(
        target,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|_| not_empty())?;
    let mut entries = fs::read_dir(target).map_err(|_| not_empty())?;
    if entries.next().is_some() {
        return Err(not_empty());
    }
    Ok(fd)
}

/// Removes what an unpack left in `target` (after a failure).
fn empty_dir(target: &Path) {
    if let Ok(entries) = fs::read_dir(target) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = match e.file_type() {
                Ok(t) if t.is_dir() => fs::remove_dir_all(&p),
                _ => fs::remove_file(&p),
            };
        }
    }
}

fn timestamps(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn uid_of(id: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(id)
}

fn gid_of(id: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(id)
}

/// `fchownat(fd, "", AT_EMPTY_PATH)`, for an `O_PATH` descriptor.
fn fchown_path(fd: &impl AsFd, ids: (u32, u32)) -> Result<()> {
    chown_at(fd, None, ids)
}

fn chown_at(dir: &impl AsFd, name: Option<&OsStr>, (uid, gid): (u32, u32)) -> Result<()> {
    let (path, flags) = match name {
        Some(n) => (n, AtFlags::SYMLINK_NOFOLLOW),
        None => (OsStr::new(""), AtFlags::EMPTY_PATH),
    };
    rustix::fs::chownat(dir, path, Some(uid_of(uid)), Some(gid_of(gid)), flags)
        .map_err(errno("setting an owner"))
}

fn errno(context: &str) -> impl FnOnce(Errno) -> Error + '_ {
    move |e| Error::Io {
        context: context.to_string(),
        source: e.into(),
    }
}

fn corrupt(e: io::Error) -> Error {
    Error::Corrupt {
        part: "image",
        detail: e.to_string(),
    }
}
