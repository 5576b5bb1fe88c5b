//! Walking a volume's tree by directory descriptors: copying it whole (owners, modes,
//! times, extended attributes, hard links, symbolic links, special files) and
//! measuring what it uses. Nothing here follows a symbolic link: every entry is opened
//! relative to its directory's descriptor with `O_NOFOLLOW`.

use std::collections::HashMap;
use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{
    chmodat, chownat, fchmod, fchown, fgetxattr, flistxattr, fsetxattr, futimens, linkat, mkdirat, mknodat,
    openat, readlinkat, statat, symlinkat, utimensat, AtFlags, Dir, FileType, Gid, Mode, OFlags, Stat,
    Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use crate::error::{Error, Result};

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Opens a directory under `dir` without following a link.
pub(crate) fn open_dir(dir: impl AsFd, name: &OsStr) -> std::result::Result<OwnedFd, Errno> {
    openat(dir, name, DIR_FLAGS, Mode::empty())
}

/// The names in a directory, without `.` and `..`.
fn names(dir: &OwnedFd) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut d = Dir::read_from(dir).map_err(Error::errno("listing a directory"))?;
    while let Some(entry) = d.read() {
        let entry = entry.map_err(Error::errno("listing a directory"))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(name.to_vec());
        }
    }
    Ok(out)
}

/// Copies the contents of `src` into the empty directory `dst`, then gives `dst` the
/// owner, mode, times and extended attributes of `src`.
pub(crate) fn copy_dir_contents(src: &OwnedFd, dst: &OwnedFd) -> Result<()> {
    let mut links = HashMap::new();
    copy_children(src, dst, &mut links, &mut Vec::new(), dst)?;
    let st = rustix::fs::fstat(src).map_err(Error::errno("reading the source"))?;
    finish_fd(src, dst, &st)
}

/// A file with several links already copied: its path under the destination root.
type Links = HashMap<(u64, u64), Vec<u8>>;

fn copy_children(
    src: &OwnedFd,
    dst: &OwnedFd,
    links: &mut Links,
    path: &mut Vec<u8>,
    root: &OwnedFd,
) -> Result<()> {
    for name in names(src)? {
        let os = OsStr::from_bytes(&name);
        let st =
            statat(src, os, AtFlags::SYMLINK_NOFOLLOW).map_err(Error::errno("reading a source entry"))?;
        let len = path.len();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&name);
        copy_entry(src, dst, os, &st, links, path, root)?;
        path.truncate(len);
    }
    Ok(())
}

fn copy_entry(
    src: &OwnedFd,
    dst: &OwnedFd,
    name: &OsStr,
    st: &Stat,
    links: &mut Links,
    path: &mut Vec<u8>,
    root: &OwnedFd,
) -> Result<()> {
    let ctx = |what: &str| format!("copying {} ({what})", String::from_utf8_lossy(path));
    let kind = FileType::from_raw_mode(st.st_mode);
    let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
    if kind != FileType::Directory && st.st_nlink > 1 {
        if let Some(first) = links.get(&(st.st_dev, st.st_ino)) {
            return linkat(root, OsStr::from_bytes(first), dst, name, AtFlags::empty())
                .map_err(Error::errno(ctx("hard link")));
        }
        links.insert((st.st_dev, st.st_ino), path.clone());
    }
    match kind {
        FileType::Directory => {
            mkdirat(dst, name, Mode::from_raw_mode(0o700)).map_err(Error::errno(ctx("directory")))?;
            let s = open_dir(src, name).map_err(Error::errno(ctx("open")))?;
            let d = open_dir(dst, name).map_err(Error::errno(ctx("open")))?;
            copy_children(&s, &d, links, path, root)?;
            finish_fd(&s, &d, st)
        }
        FileType::RegularFile => {
            let s = openat(
                src,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(Error::errno(ctx("open")))?;
            let d = openat(
                dst,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(Error::errno(ctx("create")))?;
            let (mut sf, mut df) = (File::from(s), File::from(d));
            // copy_file_range under the hood: no bytes through user space where the file
            // system can do better.
            std::io::copy(&mut sf, &mut df).map_err(Error::io(ctx("data")))?;
            finish_fd(&OwnedFd::from(sf), &OwnedFd::from(df), st)
        }
        FileType::Symlink => {
            let target = readlinkat(src, name, Vec::new()).map_err(Error::errno(ctx("read link")))?;
            symlinkat(target.as_c_str(), dst, name).map_err(Error::errno(ctx("link")))?;
            chownat(dst, name, Some(uid(st)), Some(gid(st)), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(Error::errno(ctx("owner")))?;
            utimensat(dst, name, &times(st), AtFlags::SYMLINK_NOFOLLOW).map_err(Error::errno(ctx("time")))
        }
        FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo | FileType::Socket => {
            mknodat(dst, name, kind, mode, st.st_rdev).map_err(Error::errno(ctx("node")))?;
            chownat(dst, name, Some(uid(st)), Some(gid(st)), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(Error::errno(ctx("owner")))?;
            chmodat(dst, name, mode, AtFlags::empty()).map_err(Error::errno(ctx("mode")))?;
            utimensat(dst, name, &times(st), AtFlags::SYMLINK_NOFOLLOW).map_err(Error::errno(ctx("time")))
        }
        FileType::Unknown => Ok(()),
    }
}

/// Owner, then mode (so set-id bits survive the chown), extended attributes, times.
fn finish_fd(src: &OwnedFd, dst: &OwnedFd, st: &Stat) -> Result<()> {
    fchown(dst, Some(uid(st)), Some(gid(st))).map_err(Error::errno("setting an owner"))?;
    fchmod(dst, Mode::from_raw_mode(st.st_mode & 0o7777)).map_err(Error::errno("setting a mode"))?;
    copy_xattrs(src, dst)?;
    futimens(dst, &times(st)).map_err(Error::errno("setting a time"))
}

fn copy_xattrs(src: &OwnedFd, dst: &OwnedFd) -> Result<()> {
    let list = match list_xattrs(src) {
        Ok(l) => l,
        Err(Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(Error::errno("listing extended attributes")(e)),
    };
    for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let mut cname = name.to_vec();
        cname.push(0);
        let Ok(cname) = CStr::from_bytes_with_nul(&cname) else {
            continue;
        };
        let value = match get_xattr(src, cname) {
            Ok(v) => v,
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(Error::errno("reading an extended attribute")(e)),
        };
        match fsetxattr(dst, cname, &value, XattrFlags::empty()) {
            Ok(()) | Err(Errno::NOTSUP) => {}
            Err(e) => return Err(Error::errno("setting an extended attribute")(e)),
        }
    }
    Ok(())
}

/// The names of `fd`'s extended attributes, NUL-separated.
fn list_xattrs(fd: &OwnedFd) -> std::result::Result<Vec<u8>, Errno> {
    // Sized first; a list that grew in between is asked for again, a few times.
    for _ in 0..8 {
        let size = rustix::fs::flistxattr_query(fd)?;
        let mut buf = Vec::with_capacity(size);
        match flistxattr(fd, &mut buf) {
            Ok(_) => return Ok(buf),
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::RANGE)
}

fn get_xattr(fd: &OwnedFd, name: &CStr) -> std::result::Result<Vec<u8>, Errno> {
    for _ in 0..8 {
        let size = rustix::fs::fgetxattr_query(fd, name)?;
        let mut buf = Vec::with_capacity(size);
        match fgetxattr(fd, name, &mut buf) {
            Ok(_) => return Ok(buf),
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::RANGE)
}

/// Bytes allocated under `dir` (and `dir` itself), each inode once.
pub(crate) fn usage(dir: &OwnedFd) -> Result<u64> {
    let st = rustix::fs::fstat(dir).map_err(Error::errno("reading a volume"))?;
    let mut seen = std::collections::HashSet::new();
    Ok(st.st_blocks as u64 * 512 + usage_children(dir, &mut seen)?)
}

fn usage_children(dir: &OwnedFd, seen: &mut std::collections::HashSet<(u64, u64)>) -> Result<u64> {
    let mut total = 0;
    for name in names(dir)? {
        let os = OsStr::from_bytes(&name);
        let st = match statat(dir, os, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue, // removed while we looked
            Err(e) => return Err(Error::errno("reading a volume")(e)),
        };
        if st.st_nlink > 1 && !seen.insert((st.st_dev, st.st_ino)) {
            continue;
        }
        total += st.st_blocks as u64 * 512;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            match open_dir(dir, os) {
                Ok(sub) => total += usage_children(&sub, seen)?,
                Err(Errno::NOENT) => {}
                Err(e) => return Err(Error::errno("reading a volume")(e)),
            }
        }
    }
    Ok(total)
}

fn uid(st: &Stat) -> Uid {
    Uid::from_raw(st.st_uid)
}

fn gid(st: &Stat) -> Gid {
    Gid::from_raw(st.st_gid)
}

fn times(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}
