//! File access inside a container, with every path resolved inside its root.
//!
//! ```text
//!  "/root/../../etc/shadow", "link -> /etc/shadow", "a/b" where b was just swapped for a link
//!        │
//!        v  openat2(root_fd, path, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
//!  the kernel walks the path component by component from root_fd: ".." stops at the
//!  root, an absolute link restarts at the root, /proc/*/fd and /proc/*/root magic links
//!  are refused. Whatever the container does meanwhile, the walk never leaves the root.
//!        │
//!        v  the last component is acted on relative to its parent's descriptor, with the
//!           *at() calls that never follow a link (unlinkat, renameat, mkdirat, symlinkat,
//!           O_NOFOLLOW), or after a second walk that must find the same inode
//! ```
//!
//! [`RootFs`] is that logic, synchronous, over one root directory descriptor. The same
//! code serves three callers: the fake driver (its root file system directories), the LXC
//! driver for a stopped container (its root file system directory), and the `forkfile`
//! helper for a running container, which first enters the container's mount (and user)
//! namespace so that its `/` is the container's own view, mounts included.
//!
//! Writes go to a temporary file in the target's directory, renamed over the target once
//! the stream ended well: a cut upload leaves the old file. Reads and attribute changes
//! refuse anything that is not a regular file or directory, so no device or FIFO the
//! container planted is opened by the host.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::error::{FsError, FsErrorKind};

/// How many links [`RootFs::write`] follows to find the file it replaces.
const MAX_LINKS: usize = 40;
/// How often a walk is tried again when the kernel saw a rename or mount meanwhile.
const MAX_WALK_RETRIES: usize = 1000;
/// The most entries one directory listing returns.
pub const MAX_ENTRIES: usize = 100_000;

/// The type of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    File,
    Dir,
    Symlink,
    /// A device, FIFO or socket.
    Other,
}

/// A file's attributes, with the container's ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    pub kind: FileType,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Seconds since the epoch.
    pub atime: i64,
    pub mtime: i64,
}

/// One entry of a directory (not `.` or `..`), with its own attributes (links not
/// followed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub stat: FileStat,
}

/// The attributes of a written file; `None` keeps the replaced file's, or for a new file
/// `0o644`, uid 0, gid 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteSpec {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The new file starts with the old one's content (`X-Incus-write: append`); the
    /// replacement stays atomic.
    #[serde(default)]
    pub append: bool,
}

/// How [`RootFs::open_file`] opens a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenHow {
    pub read: bool,
    pub write: bool,
    pub append: bool,
    pub create: bool,
    /// With `create`: fail when the file exists.
    pub exclusive: bool,
    pub truncate: bool,
    /// Permission bits of a created file.
    pub mode: u32,
}

/// Attributes to change; `None` leaves one as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<i64>,
    pub mtime: Option<i64>,
}

/// A file operation that needs no byte stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FsOp {
    Stat {
        path: String,
    },
    Lstat {
        path: String,
    },
    ReadDir {
        path: String,
    },
    Mkdir {
        path: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Remove {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Symlink {
        target: String,
        link: String,
        uid: u32,
        gid: u32,
    },
    Readlink {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    SetAttrs {
        path: String,
        attrs: SetAttrs,
    },
}

/// The answer to an [`FsOp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsReply {
    Done,
    Stat(FileStat),
    Entries(Vec<DirEntry>),
    Target(String),
}

/// A path split for acting on its last component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Split {
    /// The root, or a path ending in `..`: there is no last name to act on.
    Whole,
    /// The parent directory (walked by the kernel) and the last name (a plain name).
    Parent { dir: String, name: String },
}

/// Checks a path and splits off its last component. Relative paths are relative to `/`
/// (what SFTP clients send); trailing slashes and `.` components are ignored.
pub(crate) fn split(path: &str) -> Result<Split, FsError> {
    check(path)?;
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    match parts.split_last() {
        None => Ok(Split::Whole),
        Some((last, _)) if *last == ".." => Ok(Split::Whole),
        Some((last, dirs)) => Ok(Split::Parent {
            dir: format!("/{}", dirs.join("/")),
            name: (*last).to_string(),
        }),
    }
}

fn check(path: &str) -> Result<(), FsError> {
    if path.contains('\0') {
        return Err(FsError::new(
            FsErrorKind::InvalidPath,
            path,
            "a path cannot hold a NUL byte",
        ));
    }
    if path.len() > 4096 {
        return Err(FsError::new(
            FsErrorKind::InvalidPath,
            path,
            "the path is too long",
        ));
    }
    Ok(())
}

/// The path to walk for `path`: the root for an empty one.
fn walkable(path: &str) -> &str {
    if path.is_empty() {
        "/"
    } else {
        path
    }
}

/// `dir` joined with a link's target, as the kernel would resolve it from `dir`.
fn join_link(dir: &str, target: &str) -> String {
    if target.starts_with('/') {
        target.to_string()
    } else {
        format!("{}/{target}", dir.trim_end_matches('/'))
    }
}

/// A container's file system, reached through one directory descriptor.
#[derive(Debug)]
pub struct RootFs {
    root: OwnedFd,
}

/// A file being written, not yet in place.
pub struct PendingWrite {
    pub file: std::fs::File,
    dir: OwnedFd,
    temp: String,
    name: String,
    path: String,
    mode: u32,
    uid: u32,
    gid: u32,
    done: bool,
}

impl RootFs {
    /// `dir` becomes `/`. The path to `dir` itself is the caller's and trusted.
    pub fn open(dir: &Path) -> std::io::Result<RootFs> {
        let root = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(RootFs { root })
    }

    /// Walks `path` inside the root and opens what it names with `flags`.
    fn walk(&self, path: &str, flags: OFlags) -> Result<OwnedFd, FsError> {
        check(path)?;
        let mut attempts = 0;
        loop {
            match rustix::fs::openat2(
                &self.root,
                walkable(path),
                flags | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                // A rename or mount anywhere on the host during a walk through `..`: the
                // kernel cannot vouch for the walk and asks for another.
                Err(Errno::AGAIN) if attempts < MAX_WALK_RETRIES => attempts += 1,
                other => return other.map_err(|e| FsError::from_errno(path, e)),
            }
        }
    }

    /// Opens `path` again with `flags`, and only if it is still the file `before` was.
    fn reopen(
        &self,
        path: &str,
        flags: OFlags,
        before: &rustix::fs::Stat,
    ) -> Result<(OwnedFd, rustix::fs::Stat), FsError> {
        let fd = self.walk(path, flags)?;
        let st = same_file(&fd, before, path)?;
        Ok((fd, st))
    }

    /// The parent directory of `path`'s last component, and that component.
    fn parent(&self, path: &str) -> Result<(OwnedFd, String), FsError> {
        match split(path)? {
            Split::Whole => Err(FsError::new(
                FsErrorKind::InvalidPath,
                path,
                "the path names no entry of a directory",
            )),
            Split::Parent { dir, name } => {
                let fd = self.walk(&dir, OFlags::PATH | OFlags::DIRECTORY)?;
                Ok((fd, name))
            }
        }
    }

    pub fn run(&self, op: &FsOp) -> Result<FsReply, FsError> {
        match op {
            FsOp::Stat { path } => self.stat(path).map(FsReply::Stat),
            FsOp::Lstat { path } => self.lstat(path).map(FsReply::Stat),
            FsOp::ReadDir { path } => self.read_dir(path).map(FsReply::Entries),
            FsOp::Mkdir { path, mode, uid, gid } => {
                self.mkdir(path, *mode, *uid, *gid).map(|()| FsReply::Done)
            }
            FsOp::Remove { path } => self.unlink(path, AtFlags::empty()).map(|()| FsReply::Done),
            FsOp::Rmdir { path } => self.unlink(path, AtFlags::REMOVEDIR).map(|()| FsReply::Done),
            FsOp::Symlink {
                target,
                link,
                uid,
                gid,
            } => self.symlink(target, link, *uid, *gid).map(|()| FsReply::Done),
            FsOp::Readlink { path } => self.readlink(path).map(FsReply::Target),
            FsOp::Rename { from, to } => self.rename(from, to).map(|()| FsReply::Done),
            FsOp::SetAttrs { path, attrs } => self.set_attrs(path, attrs).map(|()| FsReply::Done),
        }
    }

    /// Attributes, links followed (inside).
    pub fn stat(&self, path: &str) -> Result<FileStat, FsError> {
        let fd = self.walk(path, OFlags::PATH)?;
        fstat(&fd, path)
    }

    /// Attributes of the entry itself.
    pub fn lstat(&self, path: &str) -> Result<FileStat, FsError> {
        let fd = self.walk(path, OFlags::PATH | OFlags::NOFOLLOW)?;
        fstat(&fd, path)
    }

    pub fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, FsError> {
        let fd = self.walk(path, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let dir = rustix::fs::Dir::read_from(&fd).map_err(|e| FsError::from_errno(path, e))?;
        let mut out = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| FsError::from_errno(path, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            if out.len() == MAX_ENTRIES {
                return Err(FsError::new(
                    FsErrorKind::Other,
                    path,
                    format!("the directory has more than {MAX_ENTRIES} entries"),
                ));
            }
            // An entry removed since it was listed is skipped, not an error.
            let Ok(st) = rustix::fs::statat(&fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            out.push(DirEntry {
                name,
                stat: to_stat(&st),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Opens a regular file for reading.
    pub fn open_read(&self, path: &str) -> Result<(FileStat, std::fs::File), FsError> {
        // Look first without opening: a device or FIFO is refused before anything opens it.
        let probe = self.walk(path, OFlags::PATH)?;
        let before = rustix::fs::fstat(&probe).map_err(|e| FsError::from_errno(path, e))?;
        regular_only(&before, path)?;
        let (fd, st) = self.reopen(path, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY, &before)?;
        regular_only(&st, path)?;
        rustix::fs::fcntl_setfl(&fd, OFlags::empty()).map_err(|e| FsError::from_errno(path, e))?;
        Ok((to_stat(&st), std::fs::File::from(fd)))
    }

    /// Opens a regular file in place for random access (SFTP): links at `path` are
    /// followed inside, a missing file is created with `mode` when `how.create` says so
    /// (owned by whoever the caller is: the container's root in the helper), and anything
    /// that is not a regular file is refused before it is opened for reading or writing.
    pub fn open_file(&self, path: &str, how: OpenHow) -> Result<std::fs::File, FsError> {
        let mut access = match (how.read, how.write) {
            (true, true) => OFlags::RDWR,
            (false, true) => OFlags::WRONLY,
            _ => OFlags::RDONLY,
        };
        if how.append {
            access |= OFlags::APPEND;
        }
        let base = access | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let target = self.follow_links(path)?;
        let (dir, name) = self.parent(&target).map_err(|e| FsError {
            path: path.into(),
            ..e
        })?;
        if how.create {
            match rustix::fs::openat(
                &dir,
                name.as_str(),
                base | OFlags::CREATE | OFlags::EXCL,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => {
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(how.mode & 0o7777))
                        .map_err(|e| FsError::from_errno(path, e))?;
                    rustix::fs::fcntl_setfl(&fd, access).map_err(|e| FsError::from_errno(path, e))?;
                    return Ok(std::fs::File::from(fd));
                }
                Err(Errno::EXIST) if !how.exclusive => {}
                Err(e) => return Err(FsError::from_errno(path, e)),
            }
        }
        // An existing entry: it must be a regular file now, and still the same one once
        // opened (a swap in between fails one of the checks, or the NOFOLLOW).
        let before = rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| FsError::from_errno(path, e))?;
        // A directory opens for reading, as `open(2)` allows (SFTP clients open one
        // before they list it); its reads fail.
        let is_dir = rustix::fs::FileType::from_raw_mode(before.st_mode) == rustix::fs::FileType::Directory;
        let base = if is_dir && !how.write && !how.append {
            base | OFlags::DIRECTORY
        } else {
            regular_only(&before, path)?;
            base
        };
        let fd = rustix::fs::openat(&dir, name.as_str(), base, Mode::empty())
            .map_err(|e| FsError::from_errno(path, e))?;
        let st = same_file(&fd, &before, path)?;
        if !is_dir {
            regular_only(&st, path)?;
        }
        if how.truncate && how.write {
            rustix::fs::ftruncate(&fd, 0).map_err(|e| FsError::from_errno(path, e))?;
        }
        rustix::fs::fcntl_setfl(&fd, access).map_err(|e| FsError::from_errno(path, e))?;
        Ok(std::fs::File::from(fd))
    }

    /// Starts replacing the file at `path`. Links at `path` are followed (inside) to the
    /// file they name, which is created if missing (its directory must exist).
    pub fn begin_write(&self, path: &str, spec: WriteSpec) -> Result<PendingWrite, FsError> {
        let target = self.follow_links(path)?;
        let (dir, name) = self.parent(&target).map_err(|e| FsError {
            path: path.into(),
            ..e
        })?;
        let existing = match rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(FsError::from_errno(path, e)),
        };
        if let Some(st) = &existing {
            if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
                return Err(FsError::new(FsErrorKind::IsADirectory, path, "Is a directory"));
            }
        }
        let (mode, uid, gid) = match &existing {
            Some(st) => (st.st_mode & 0o7777, st.st_uid, st.st_gid),
            None => (0o644, 0, 0),
        };
        let mut attempt = 0;
        loop {
            let temp = temp_name();
            match rustix::fs::openat(
                &dir,
                temp.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => {
                    let file = std::fs::File::from(fd);
                    if spec.append && existing.is_some() {
                        // Dropping the pending write on failure removes the temporary.
                        let mut pending = PendingWrite {
                            file,
                            dir,
                            temp,
                            name,
                            path: path.to_string(),
                            mode: 0,
                            uid: 0,
                            gid: 0,
                            done: false,
                        };
                        let old = self.open_file(
                            path,
                            OpenHow {
                                read: true,
                                ..OpenHow::default()
                            },
                        )?;
                        std::io::copy(&mut &old, &mut pending.file)
                            .map_err(|e| FsError::from_io(path, &e))?;
                        pending.mode = spec.mode.unwrap_or(mode) & 0o7777;
                        pending.uid = spec.uid.unwrap_or(uid);
                        pending.gid = spec.gid.unwrap_or(gid);
                        return Ok(pending);
                    }
                    return Ok(PendingWrite {
                        file,
                        dir,
                        temp,
                        name,
                        path: path.to_string(),
                        mode: spec.mode.unwrap_or(mode) & 0o7777,
                        uid: spec.uid.unwrap_or(uid),
                        gid: spec.gid.unwrap_or(gid),
                        done: false,
                    });
                }
                Err(Errno::EXIST) if attempt < 8 => attempt += 1,
                Err(e) => return Err(FsError::from_errno(path, e)),
            }
        }
    }

    /// Where a write to `path` lands: `path`, or the file its links lead to.
    fn follow_links(&self, path: &str) -> Result<String, FsError> {
        let mut current = path.to_string();
        for _ in 0..MAX_LINKS {
            let fd = match self.walk(&current, OFlags::PATH | OFlags::NOFOLLOW) {
                Ok(fd) => fd,
                Err(e) if e.kind == FsErrorKind::NotFound => return Ok(current),
                Err(e) => {
                    return Err(FsError {
                        path: path.into(),
                        ..e
                    })
                }
            };
            let st = rustix::fs::fstat(&fd).map_err(|e| FsError::from_errno(path, e))?;
            if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Symlink {
                return Ok(current);
            }
            let target =
                rustix::fs::readlinkat(&fd, "", Vec::new()).map_err(|e| FsError::from_errno(path, e))?;
            let target = target.to_string_lossy().into_owned();
            let dir = match split(&current)? {
                Split::Parent { dir, .. } => dir,
                Split::Whole => "/".to_string(),
            };
            current = join_link(&dir, &target);
        }
        Err(FsError::new(
            FsErrorKind::Loop,
            path,
            "Too many levels of symbolic links",
        ))
    }

    pub fn mkdir(&self, path: &str, mode: u32, uid: u32, gid: u32) -> Result<(), FsError> {
        let (dir, name) = self.parent(path)?;
        rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o700))
            .map_err(|e| FsError::from_errno(path, e))?;
        // Opened without following: if the new entry was swapped for a link, this fails.
        let fd = rustix::fs::openat(
            &dir,
            name.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FsError::from_errno(path, e))?;
        set_owner_mode(&fd, path, uid, gid, mode)
    }

    fn unlink(&self, path: &str, flags: AtFlags) -> Result<(), FsError> {
        let (dir, name) = self.parent(path)?;
        rustix::fs::unlinkat(&dir, name.as_str(), flags).map_err(|e| FsError::from_errno(path, e))
    }

    pub fn symlink(&self, target: &str, link: &str, uid: u32, gid: u32) -> Result<(), FsError> {
        check(target)?;
        if target.is_empty() {
            return Err(FsError::new(
                FsErrorKind::InvalidPath,
                link,
                "a link needs a target",
            ));
        }
        let (dir, name) = self.parent(link)?;
        rustix::fs::symlinkat(target, &dir, name.as_str()).map_err(|e| FsError::from_errno(link, e))?;
        rustix::fs::chownat(
            &dir,
            name.as_str(),
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| FsError::from_errno(link, e))
    }

    pub fn readlink(&self, path: &str) -> Result<String, FsError> {
        let fd = self.walk(path, OFlags::PATH | OFlags::NOFOLLOW)?;
        match rustix::fs::readlinkat(&fd, "", Vec::new()) {
            Ok(t) => Ok(t.to_string_lossy().into_owned()),
            Err(Errno::INVAL | Errno::NOENT) => Err(FsError::new(
                FsErrorKind::InvalidPath,
                path,
                "not a symbolic link",
            )),
            Err(e) => Err(FsError::from_errno(path, e)),
        }
    }

    pub fn rename(&self, from: &str, to: &str) -> Result<(), FsError> {
        let (from_dir, from_name) = self.parent(from)?;
        let (to_dir, to_name) = self.parent(to)?;
        rustix::fs::renameat(&from_dir, from_name.as_str(), &to_dir, to_name.as_str())
            .map_err(|e| FsError::from_errno(from, e))
    }

    /// Changes attributes, links followed (inside). Mode and times only on regular files
    /// and directories.
    pub fn set_attrs(&self, path: &str, attrs: &SetAttrs) -> Result<(), FsError> {
        let probe = self.walk(path, OFlags::PATH)?;
        let before = rustix::fs::fstat(&probe).map_err(|e| FsError::from_errno(path, e))?;
        if attrs.uid.is_some() || attrs.gid.is_some() {
            rustix::fs::chownat(
                &probe,
                "",
                attrs.uid.map(rustix::fs::Uid::from_raw),
                attrs.gid.map(rustix::fs::Gid::from_raw),
                AtFlags::EMPTY_PATH,
            )
            .map_err(|e| FsError::from_errno(path, e))?;
        }
        if attrs.mode.is_none() && attrs.atime.is_none() && attrs.mtime.is_none() {
            return Ok(());
        }
        let kind = rustix::fs::FileType::from_raw_mode(before.st_mode);
        let flags = match kind {
            rustix::fs::FileType::Directory => OFlags::RDONLY | OFlags::DIRECTORY,
            rustix::fs::FileType::RegularFile => OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
            _ => {
                return Err(FsError::new(
                    FsErrorKind::NotRegular,
                    path,
                    "mode and times can only be set on files and directories",
                ))
            }
        };
        let (fd, st) = self.reopen(path, flags, &before)?;
        if let Some(mode) = attrs.mode {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777))
                .map_err(|e| FsError::from_errno(path, e))?;
        }
        if attrs.atime.is_some() || attrs.mtime.is_some() {
            let cur = to_stat(&st);
            let times = Timestamps {
                last_access: Timespec {
                    tv_sec: attrs.atime.unwrap_or(cur.atime),
                    tv_nsec: 0,
                },
                last_modification: Timespec {
                    tv_sec: attrs.mtime.unwrap_or(cur.mtime),
                    tv_nsec: 0,
                },
            };
            rustix::fs::futimens(&fd, &times).map_err(|e| FsError::from_errno(path, e))?;
        }
        Ok(())
    }
}

impl PendingWrite {
    /// Puts the written file in place with its attributes, durably.
    pub fn commit(mut self) -> Result<FileStat, FsError> {
        let path = self.path.clone();
        let fd = self.file.as_fd();
        set_owner_mode(&fd, &path, self.uid, self.gid, self.mode)?;
        rustix::fs::fsync(fd).map_err(|e| FsError::from_errno(&path, e))?;
        rustix::fs::renameat(&self.dir, self.temp.as_str(), &self.dir, self.name.as_str())
            .map_err(|e| FsError::from_errno(&path, e))?;
        self.done = true;
        fstat(&self.file.as_fd(), &path)
    }
}

impl Drop for PendingWrite {
    /// An abandoned write leaves nothing behind.
    fn drop(&mut self) {
        if !self.done {
            let _ = rustix::fs::unlinkat(&self.dir, self.temp.as_str(), AtFlags::empty());
        }
    }
}

/// Owner first: a chown clears the set-id bits that the mode may then set.
fn set_owner_mode(fd: &impl AsFd, path: &str, uid: u32, gid: u32, mode: u32) -> Result<(), FsError> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .map_err(|e| FsError::from_errno(path, e))?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777)).map_err(|e| FsError::from_errno(path, e))
}

/// The attributes of `fd`, if it is still the file `before` described.
fn same_file(fd: &OwnedFd, before: &rustix::fs::Stat, path: &str) -> Result<rustix::fs::Stat, FsError> {
    let st = rustix::fs::fstat(fd).map_err(|e| FsError::from_errno(path, e))?;
    if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino) {
        return Err(FsError::new(
            FsErrorKind::Other,
            path,
            "the file changed while it was opened",
        ));
    }
    Ok(st)
}

fn regular_only(st: &rustix::fs::Stat, path: &str) -> Result<(), FsError> {
    match rustix::fs::FileType::from_raw_mode(st.st_mode) {
        rustix::fs::FileType::RegularFile => Ok(()),
        rustix::fs::FileType::Directory => {
            Err(FsError::new(FsErrorKind::IsADirectory, path, "Is a directory"))
        }
        _ => Err(FsError::new(
            FsErrorKind::NotRegular,
            path,
            "not a regular file (device, FIFO or socket)",
        )),
    }
}

fn fstat(fd: &impl AsFd, path: &str) -> Result<FileStat, FsError> {
    rustix::fs::fstat(fd)
        .map(|st| to_stat(&st))
        .map_err(|e| FsError::from_errno(path, e))
}

#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
fn to_stat(st: &rustix::fs::Stat) -> FileStat {
    let kind = match rustix::fs::FileType::from_raw_mode(st.st_mode) {
        rustix::fs::FileType::RegularFile => FileType::File,
        rustix::fs::FileType::Directory => FileType::Dir,
        rustix::fs::FileType::Symlink => FileType::Symlink,
        _ => FileType::Other,
    };
    FileStat {
        kind,
        mode: (st.st_mode as u32) & 0o7777,
        uid: st.st_uid as u32,
        gid: st.st_gid as u32,
        size: u64::try_from(st.st_size).unwrap_or(0),
        atime: i64::from(st.st_atime),
        mtime: i64::from(st.st_mtime),
    }
}

/// A name no one else picks: the process, a counter and the clock.
fn temp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(".stapes-write-{}-{n}-{nanos}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_paths() {
        let p = |dir: &str, name: &str| Split::Parent {
            dir: dir.into(),
            name: name.into(),
        };
        assert_eq!(split("/").unwrap(), Split::Whole);
        assert_eq!(split("").unwrap(), Split::Whole);
        assert_eq!(split("/a/..").unwrap(), Split::Whole);
        assert_eq!(split("/a/b").unwrap(), p("/a", "b"));
        assert_eq!(split("root/x/").unwrap(), p("/root", "x"));
        assert_eq!(split("/a/./b/.").unwrap(), p("/a", "b"));
        assert_eq!(split("../../etc/shadow").unwrap(), p("/../../etc", "shadow"));
        assert_eq!(split("x").unwrap(), p("/", "x"));
        assert_eq!(split("a\0b").unwrap_err().kind, FsErrorKind::InvalidPath);
    }

    #[test]
    fn link_targets_join_like_the_kernel() {
        assert_eq!(join_link("/root", "/etc/shadow"), "/etc/shadow");
        assert_eq!(join_link("/root", "../etc/shadow"), "/root/../etc/shadow");
        assert_eq!(join_link("/", "x"), "/x");
    }
}
