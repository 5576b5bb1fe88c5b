//! The `dir` driver: volumes are directories under the pool's source.
//!
//! Incus bind-mounts a given source onto `storage-pools/<name>`; stapes uses the source
//! directly (no mount to undo after a crash, nothing to clean in the mount table). The
//! pool's top directory is made 0711, so a container's root (uid 1000000 on the host)
//! can reach its volume through it.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{renameat_with, RenameFlags, CWD};

use crate::error::{Error, Result};
use crate::names::check_volume_name;
use crate::tree;
use crate::{default_source, Owner, Pool, PoolConfig, Space, Tree, Volume, VolumeType};

/// The directories of a pool, with Incus's modes (`drivers.BaseDirectories`).
const LAYOUT: &[(&str, u32)] = &[
    ("buckets", 0o711),
    ("containers", 0o711),
    ("containers-snapshots", 0o711),
    ("custom", 0o700),
    ("custom-snapshots", 0o700),
    ("images", 0o700),
    ("virtual-machines", 0o700),
    ("virtual-machines-snapshots", 0o700),
];

/// Volume directories that make a pool "in use".
const IN_USE: &[&str] = &[
    "containers",
    "containers-snapshots",
    "custom",
    "custom-snapshots",
    "virtual-machines",
    "virtual-machines-snapshots",
    "buckets",
];

/// Incus's mode for a container volume's top directory.
const CONTAINER_MODE: u32 = 0o100;

/// A `dir` pool.
#[derive(Debug, Clone)]
pub struct Dir {
    name: String,
    source: PathBuf,
    default: bool,
    state_dir: PathBuf,
}

impl Dir {
    pub fn new(state_dir: &Path, config: &PoolConfig) -> Result<Dir> {
        let default_path = default_source(state_dir, &config.name)?;
        let source = match &config.source {
            Some(s) if !s.as_os_str().is_empty() => {
                if !s.is_absolute() {
                    return Err(Error::SourceNotAbsolute(s.clone()));
                }
                lexical_clean(s)
            }
            _ => default_path.clone(),
        };
        Ok(Dir {
            name: config.name.clone(),
            default: source == default_path,
            source,
            state_dir: lexical_clean(state_dir),
        })
    }

    fn kind_dir(&self, kind: VolumeType) -> PathBuf {
        self.source.join(kind.dir())
    }

    fn path_of(&self, vol: &Volume) -> Result<PathBuf> {
        check_volume_name(&vol.name)?;
        Ok(self.kind_dir(vol.kind).join(&vol.name))
    }

    fn existing(&self, vol: &Volume) -> Result<PathBuf> {
        let p = self.path_of(vol)?;
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => Ok(p),
            _ => Err(Error::VolumeNotFound(p)),
        }
    }

    fn make_layout(&self) -> Result<()> {
        for (dir, mode) in LAYOUT {
            let p = self.source.join(dir);
            fs::DirBuilder::new()
                .mode(*mode)
                .create(&p)
                .map_err(Error::io(format!("creating {}", p.display())))?;
            fs::set_permissions(&p, fs::Permissions::from_mode(*mode))
                .map_err(Error::io(format!("setting the mode of {}", p.display())))?;
        }
        fs::set_permissions(&self.source, fs::Permissions::from_mode(0o711)).map_err(Error::io(format!(
            "setting the mode of {}",
            self.source.display()
        )))
    }

    fn snapshots_dir(&self, instance: &str) -> Result<PathBuf> {
        check_volume_name(instance)?;
        Ok(self.source.join("containers-snapshots").join(instance))
    }

    fn path_of_tree(&self, tree: Tree<'_>) -> Result<PathBuf> {
        match tree {
            Tree::Container(n) => self.path_of(&Volume::container(n)),
            Tree::Snapshot(n, s) => {
                check_volume_name(s)?;
                Ok(self.snapshots_dir(n)?.join(s))
            }
        }
    }

    /// The directory a tree lives in, made (0700) for a snapshot when missing.
    fn parent_of(&self, tree: Tree<'_>) -> Result<PathBuf> {
        match tree {
            Tree::Container(_) => Ok(self.kind_dir(VolumeType::Container)),
            Tree::Snapshot(n, _) => {
                let dir = self.snapshots_dir(n)?;
                match fs::DirBuilder::new().mode(0o700).create(&dir) {
                    Ok(()) => Ok(dir),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(dir),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        Err(Error::PoolMissing(self.source.clone()))
                    }
                    Err(e) => Err(Error::io(format!("creating {}", dir.display()))(e)),
                }
            }
        }
    }

    fn existing_tree(&self, tree: Tree<'_>) -> Result<PathBuf> {
        let p = self.path_of_tree(tree)?;
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => Ok(p),
            _ => Err(Error::VolumeNotFound(p)),
        }
    }

    /// Copies the tree at `src` to a new hidden directory in `parent`.
    fn copy_hidden(&self, src: &Path, parent: &Path, name: &str) -> Result<PathBuf> {
        let tmp = parent.join(format!(".copying-{name}-{}", random_suffix()?));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(Error::io(format!("creating {}", tmp.display())))?;
        let copied = (|| -> Result<()> {
            let s = rustix::fs::open(src, tree_flags(), rustix::fs::Mode::empty())
                .map_err(Error::errno(format!("opening {}", src.display())))?;
            let d = rustix::fs::open(&tmp, tree_flags(), rustix::fs::Mode::empty())
                .map_err(Error::errno(format!("opening {}", tmp.display())))?;
            tree::copy_dir_contents(&s, &d)
        })();
        if let Err(e) = copied {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        Ok(tmp)
    }

    /// Moves a hidden tree to `to`, never replacing anything.
    fn put_in_place(tmp: &Path, to: &Path) -> Result<()> {
        renameat_with(CWD, tmp, CWD, to, RenameFlags::NOREPLACE).map_err(|e| match e {
            rustix::io::Errno::EXIST => Error::VolumeExists(to.to_path_buf()),
            e => Error::errno(format!("moving the copy to {}", to.display()))(e),
        })
    }

    /// Moves a directory aside under a hidden name and removes it.
    fn remove_aside(p: &Path, name: &str) -> Result<()> {
        let parent = p.parent().unwrap_or(Path::new("/"));
        let aside = parent.join(format!(".deleting-{name}-{}", random_suffix()?));
        renameat_with(CWD, p, CWD, &aside, RenameFlags::NOREPLACE)
            .map_err(Error::errno(format!("moving {} aside", p.display())))?;
        fs::remove_dir_all(&aside).map_err(Error::io(format!("removing {}", aside.display())))
    }

    /// Names in a directory, ignoring the pool's own dot files.
    fn entries(dir: &Path) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let list = match fs::read_dir(dir) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(format!("listing {}", dir.display()))(e)),
        };
        for e in list {
            let e = e.map_err(Error::io(format!("listing {}", dir.display())))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }
}

impl Pool for Dir {
    fn name(&self) -> &str {
        &self.name
    }

    fn driver(&self) -> &'static str {
        "dir"
    }

    fn source(&self) -> &Path {
        &self.source
    }

    fn create(&self) -> Result<()> {
        let mut made_source = false;
        if self.default {
            let parent = self.state_dir.join("storage-pools");
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(&parent)
                .map_err(Error::io(format!("creating {}", parent.display())))?;
            match fs::DirBuilder::new().mode(0o711).create(&self.source) {
                Ok(()) => made_source = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(format!("creating {}", self.source.display()))(e)),
            }
        }
        // Incus's checks, in its order.
        match fs::symlink_metadata(&self.source) {
            Err(_) => return Err(Error::SourceMissing(self.source.clone())),
            Ok(m) if !m.is_dir() => return Err(Error::SourceNotDirectory(self.source.clone())),
            Ok(_) => {}
        }
        if !self.default && self.source.starts_with(&self.state_dir) {
            return Err(Error::SourceInStateDir(self.source.clone()));
        }
        let empty = fs::read_dir(&self.source)
            .map_err(Error::io(format!("listing {}", self.source.display())))?
            .next()
            .is_none();
        if !empty {
            return Err(Error::SourceNotEmpty(self.source.clone()));
        }
        let made = self.make_layout();
        if made.is_err() {
            for (dir, _) in LAYOUT {
                let _ = fs::remove_dir(self.source.join(dir));
            }
            if made_source {
                let _ = fs::remove_dir(&self.source);
            }
        }
        made
    }

    fn check(&self) -> Result<()> {
        for (dir, _) in LAYOUT {
            let p = self.source.join(dir);
            if !fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                return Err(Error::PoolMissing(self.source.clone()));
            }
        }
        Ok(())
    }

    fn delete(&self) -> Result<()> {
        let mut volumes = Vec::new();
        for dir in IN_USE {
            for name in Self::entries(&self.source.join(dir))? {
                volumes.push(format!("{dir}/{name}"));
            }
        }
        if !volumes.is_empty() {
            return Err(Error::InUse { volumes });
        }
        // Wipe the contents (image caches, the layout, anything left), as Incus does.
        match fs::read_dir(&self.source) {
            Ok(list) => {
                for e in list {
                    let e = e.map_err(Error::io("listing the pool"))?;
                    let p = e.path();
                    let removed = if e.file_type().is_ok_and(|t| t.is_dir()) {
                        fs::remove_dir_all(&p)
                    } else {
                        fs::remove_file(&p)
                    };
                    removed.map_err(Error::io(format!("removing {}", p.display())))?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("listing the pool")(e)),
        }
        if self.default {
            fs::remove_dir(&self.source).map_err(Error::io(format!("removing {}", self.source.display())))?;
        }
        Ok(())
    }

    fn space(&self) -> Result<Space> {
        let st = rustix::fs::statvfs(&self.source)
            .map_err(Error::errno(format!("statvfs {}", self.source.display())))?;
        let frsize = st.f_frsize;
        Ok(Space {
            total: st.f_blocks.saturating_mul(frsize),
            used: st.f_blocks.saturating_sub(st.f_bfree).saturating_mul(frsize),
            inodes_total: st.f_files,
            inodes_used: st.f_files.saturating_sub(st.f_ffree),
        })
    }

    fn volumes(&self) -> Result<Vec<Volume>> {
        let mut out = Vec::new();
        for kind in [VolumeType::Container, VolumeType::Image] {
            for name in Self::entries(&self.kind_dir(kind))? {
                out.push(Volume { kind, name });
            }
        }
        Ok(out)
    }

    fn volume_path(&self, vol: &Volume) -> Result<PathBuf> {
        self.path_of(vol)
    }

    fn create_volume(&self, vol: &Volume, owner: Owner) -> Result<PathBuf> {
        let p = self.path_of(vol)?;
        let mode = match vol.kind {
            VolumeType::Container => CONTAINER_MODE,
            VolumeType::Image => 0o700,
        };
        match fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(Error::VolumeExists(p)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::PoolMissing(self.source.clone()))
            }
            Err(e) => return Err(Error::io(format!("creating {}", p.display()))(e)),
        }
        let finish = || -> Result<()> {
            rustix::fs::chown(&p, Some(uid(owner.uid)), Some(gid(owner.gid)))
                .map_err(Error::errno(format!("setting the owner of {}", p.display())))?;
            fs::set_permissions(&p, fs::Permissions::from_mode(mode))
                .map_err(Error::io(format!("setting the mode of {}", p.display())))
        };
        if let Err(e) = finish() {
            let _ = fs::remove_dir(&p);
            return Err(e);
        }
        Ok(p)
    }

    fn set_volume_owner(&self, vol: &Volume, owner: Owner) -> Result<()> {
        let p = self.existing(vol)?;
        rustix::fs::chown(&p, Some(uid(owner.uid)), Some(gid(owner.gid)))
            .map_err(Error::errno(format!("setting the owner of {}", p.display())))
    }

    fn delete_volume(&self, vol: &Volume) -> Result<()> {
        let p = self.existing(vol)?;
        // Moved aside first, so a half-removed volume is never seen under its name.
        let aside = self
            .kind_dir(vol.kind)
            .join(format!(".deleting-{}-{}", vol.name, random_suffix()?));
        renameat_with(CWD, &p, CWD, &aside, RenameFlags::NOREPLACE)
            .map_err(Error::errno(format!("moving {} aside", p.display())))?;
        fs::remove_dir_all(&aside).map_err(Error::io(format!("removing {}", aside.display())))
    }

    fn rename_volume(&self, vol: &Volume, new_name: &str) -> Result<()> {
        let from = self.existing(vol)?;
        let to = self.path_of(&Volume {
            kind: vol.kind,
            name: new_name.to_string(),
        })?;
        renameat_with(CWD, &from, CWD, &to, RenameFlags::NOREPLACE).map_err(|e| match e {
            rustix::io::Errno::EXIST => Error::VolumeExists(to.clone()),
            e => Error::errno(format!("renaming {}", from.display()))(e),
        })
    }

    fn copy_volume(&self, from: &Volume, to_name: &str) -> Result<PathBuf> {
        let src = self.existing(from)?;
        let to = self.path_of(&Volume {
            kind: from.kind,
            name: to_name.to_string(),
        })?;
        if fs::symlink_metadata(&to).is_ok() {
            return Err(Error::VolumeExists(to));
        }
        // Built under a hidden name, then renamed into place.
        let tmp = self
            .kind_dir(from.kind)
            .join(format!(".copying-{to_name}-{}", random_suffix()?));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(Error::io(format!("creating {}", tmp.display())))?;
        let copied = (|| -> Result<()> {
            let s = rustix::fs::open(&src, tree_flags(), rustix::fs::Mode::empty())
                .map_err(Error::errno(format!("opening {}", src.display())))?;
            let d = rustix::fs::open(&tmp, tree_flags(), rustix::fs::Mode::empty())
                .map_err(Error::errno(format!("opening {}", tmp.display())))?;
            tree::copy_dir_contents(&s, &d)?;
            renameat_with(CWD, &tmp, CWD, &to, RenameFlags::NOREPLACE).map_err(|e| match e {
                rustix::io::Errno::EXIST => Error::VolumeExists(to.clone()),
                e => Error::errno(format!("moving the copy to {}", to.display()))(e),
            })
        })();
        if let Err(e) = copied {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        Ok(to)
    }

    fn tree_path(&self, tree: Tree<'_>) -> Result<PathBuf> {
        self.path_of_tree(tree)
    }

    fn copy_tree(&self, from: Tree<'_>, to: Tree<'_>) -> Result<PathBuf> {
        let src = self.existing_tree(from)?;
        let dst = self.path_of_tree(to)?;
        if fs::symlink_metadata(&dst).is_ok() {
            return Err(Error::VolumeExists(dst));
        }
        let parent = self.parent_of(to)?;
        let name = dst
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self.copy_hidden(&src, &parent, &name)?;
        if let Err(e) = Self::put_in_place(&tmp, &dst) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        Ok(dst)
    }

    fn delete_tree(&self, tree: Tree<'_>) -> Result<()> {
        let p = self.existing_tree(tree)?;
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self::remove_aside(&p, &name)?;
        if let Tree::Snapshot(n, _) = tree {
            // The instance's snapshot directory goes with its last snapshot.
            let _ = fs::remove_dir(self.snapshots_dir(n)?);
        }
        Ok(())
    }

    fn rename_snapshot(&self, instance: &str, name: &str, new_name: &str) -> Result<()> {
        let from = self.existing_tree(Tree::Snapshot(instance, name))?;
        let to = self.path_of_tree(Tree::Snapshot(instance, new_name))?;
        renameat_with(CWD, &from, CWD, &to, RenameFlags::NOREPLACE).map_err(|e| match e {
            rustix::io::Errno::EXIST => Error::VolumeExists(to.clone()),
            e => Error::errno(format!("renaming {}", from.display()))(e),
        })
    }

    fn restore_snapshot(&self, instance: &str, name: &str) -> Result<()> {
        let snap = self.existing_tree(Tree::Snapshot(instance, name))?;
        let vol = self.existing_tree(Tree::Container(instance))?;
        let tmp = self.copy_hidden(&snap, &self.kind_dir(VolumeType::Container), instance)?;
        if let Err(e) = renameat_with(CWD, &tmp, CWD, &vol, RenameFlags::EXCHANGE) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(Error::errno(format!(
                "swapping {} with its snapshot",
                vol.display()
            ))(e));
        }
        // `tmp` now holds the old contents, under the hidden name a crash cleans up.
        fs::remove_dir_all(&tmp).map_err(Error::io(format!("removing {}", tmp.display())))
    }

    fn delete_snapshots(&self, instance: &str) -> Result<()> {
        let dir = self.snapshots_dir(instance)?;
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => Self::remove_aside(&dir, instance),
            _ => Ok(()),
        }
    }

    fn rename_snapshots(&self, instance: &str, new_name: &str) -> Result<()> {
        let from = self.snapshots_dir(instance)?;
        let to = self.snapshots_dir(new_name)?;
        if fs::symlink_metadata(&from).is_err() {
            return Ok(());
        }
        renameat_with(CWD, &from, CWD, &to, RenameFlags::NOREPLACE).map_err(|e| match e {
            rustix::io::Errno::EXIST => Error::VolumeExists(to.clone()),
            e => Error::errno(format!("renaming {}", from.display()))(e),
        })
    }

    fn stage_tree(&self, tree: Tree<'_>) -> Result<PathBuf> {
        let dst = self.path_of_tree(tree)?;
        if fs::symlink_metadata(&dst).is_ok() {
            return Err(Error::VolumeExists(dst));
        }
        let parent = self.parent_of(tree)?;
        let name = dst
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = parent.join(format!(".copying-{name}-{}", random_suffix()?));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(Error::io(format!("creating {}", tmp.display())))?;
        Ok(tmp)
    }

    fn copy_tree_into(&self, from: Tree<'_>, staged: &Path) -> Result<()> {
        let src = self.existing_tree(from)?;
        let s = rustix::fs::open(&src, tree_flags(), rustix::fs::Mode::empty())
            .map_err(Error::errno(format!("opening {}", src.display())))?;
        let d = rustix::fs::open(staged, tree_flags(), rustix::fs::Mode::empty())
            .map_err(Error::errno(format!("opening {}", staged.display())))?;
        tree::copy_dir_contents(&s, &d)
    }

    fn commit_tree(&self, staged: &Path, tree: Tree<'_>, owner: Owner) -> Result<PathBuf> {
        let dst = self.path_of_tree(tree)?;
        if staged.parent() != dst.parent()
            || !staged
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".copying-"))
        {
            return Err(Error::VolumeNotFound(staged.to_path_buf()));
        }
        rustix::fs::chown(staged, Some(uid(owner.uid)), Some(gid(owner.gid)))
            .map_err(Error::errno(format!("setting the owner of {}", staged.display())))?;
        fs::set_permissions(staged, fs::Permissions::from_mode(CONTAINER_MODE))
            .map_err(Error::io(format!("setting the mode of {}", staged.display())))?;
        Self::put_in_place(staged, &dst)?;
        Ok(dst)
    }

    fn volume_usage(&self, vol: &Volume) -> Result<u64> {
        let p = self.existing(vol)?;
        let fd = rustix::fs::open(&p, tree_flags(), rustix::fs::Mode::empty())
            .map_err(Error::errno(format!("opening {}", p.display())))?;
        tree::usage(&fd)
    }

    fn remove_partial(&self) -> Result<usize> {
        let mut removed = 0;
        let mut dirs: Vec<PathBuf> = [VolumeType::Container, VolumeType::Image]
            .into_iter()
            .map(|k| self.kind_dir(k))
            .collect();
        let snapshots = self.source.join("containers-snapshots");
        dirs.push(snapshots.clone());
        for n in Self::entries(&snapshots)? {
            dirs.push(snapshots.join(n));
        }
        for dir in dirs {
            let list = match fs::read_dir(&dir) {
                Ok(l) => l,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("listing {}", dir.display()))(e)),
            };
            for e in list {
                let e = e.map_err(Error::io(format!("listing {}", dir.display())))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(".copying-") || name.starts_with(".deleting-") {
                    fs::remove_dir_all(e.path()).map_err(Error::io(format!("removing {name}")))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

fn tree_flags() -> rustix::fs::OFlags {
    use rustix::fs::OFlags;
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn uid(id: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(id)
}

fn gid(id: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(id)
}

fn random_suffix() -> Result<String> {
    let mut b = [0u8; 6];
    let f = fs::File::open("/dev/urandom").map_err(Error::io("opening /dev/urandom"))?;
    io::Read::read_exact(&mut &f, &mut b).map_err(Error::io("reading /dev/urandom"))?;
    Ok(hex::encode(b))
}

/// `a/./b/` → `a/b`, without touching the file system (no `..` resolution: a path with
/// `..` stays as written and so never equals the default source).
fn lexical_clean(p: &Path) -> PathBuf {
    p.components().collect()
}
