//! Storage pools and their volumes, behind a small trait so a driver can be swapped.
//!
//! A pool is a place for volumes on one member; the replicated record (name, driver,
//! config, state per member) lives in the cluster, not here. This crate does the
//! member-local part: create a pool at its source, check it, remove it, report its
//! space, and create, rename, copy and delete volumes in the layout Incus uses:
//!
//! ```text
//!  <source>/                      0711  (default: <state>/storage-pools/<name>)
//!  ├── containers/                0711
//!  │   └── <name>/                0100, owned by the container's root (see below)
//!  │       ├── metadata.yaml      written by the image unpack
//!  │       ├── templates/
//!  │       └── rootfs/            0755
//!  ├── containers-snapshots/      0711
//!  │   └── <name>/<snapshot>/     a copy of the volume ([`Tree::Snapshot`])
//!  ├── custom/  custom-snapshots/ 0700
//!  ├── images/                    0700
//!  └── virtual-machines/  virtual-machines-snapshots/  buckets/
//! ```
//!
//! A container volume's directory is `d--x------` (Incus's 0100) and owned by the host
//! id of the container's root: uid 1000000 for an unprivileged container under the LXC
//! driver's id map, 0 for a privileged one, so only that root can pass through it.
//!
//! Only the `dir` driver exists now ([`Dir`]); the names Incus gives the others are
//! refused with Incus's "Unknown driver" until they do.

mod dir;
mod error;
pub mod names;
mod tree;

use std::path::{Path, PathBuf};

pub use dir::Dir;
pub use error::{Error, Result};
pub use names::{api_name_problem, check_pool_name, check_volume_name};

/// Space of a pool's file system (`incus storage info`), from `statvfs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Space {
    pub used: u64,
    pub total: u64,
    pub inodes_used: u64,
    pub inodes_total: u64,
}

/// The kinds of volume a pool holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VolumeType {
    Container,
    Image,
}

impl VolumeType {
    /// The directory of the kind in a pool (Incus's names).
    pub fn dir(self) -> &'static str {
        match self {
            VolumeType::Container => "containers",
            VolumeType::Image => "images",
        }
    }
}

/// A volume of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Volume {
    pub kind: VolumeType,
    /// An instance name, or an image fingerprint.
    pub name: String,
}

impl Volume {
    pub fn container(name: &str) -> Volume {
        Volume {
            kind: VolumeType::Container,
            name: name.to_string(),
        }
    }

    pub fn image(fingerprint: &str) -> Volume {
        Volume {
            kind: VolumeType::Image,
            name: fingerprint.to_string(),
        }
    }
}

/// A container's volume or one of its snapshots: a tree of files a copy, a stream or a
/// restore acts on. Snapshots live in `containers-snapshots/<instance>/<snapshot>`, as
/// Incus's `dir` driver keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tree<'a> {
    Container(&'a str),
    Snapshot(&'a str, &'a str),
}

impl Tree<'_> {
    pub fn is_snapshot(&self) -> bool {
        matches!(self, Tree::Snapshot(..))
    }
}

impl std::fmt::Display for Tree<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tree::Container(n) => write!(f, "{n}"),
            Tree::Snapshot(n, s) => write!(f, "{n}/{s}"),
        }
    }
}

/// Host ids that own a volume's top directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// Host root: a privileged container, or a volume no container enters.
    pub const ROOT: Owner = Owner { uid: 0, gid: 0 };
}

/// What a pool is made from: its name, driver, and the member's `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub name: String,
    /// Incus's driver name (`dir`).
    pub driver: String,
    /// The `source` key; `None` for the default under the state directory.
    pub source: Option<PathBuf>,
}

/// A storage pool on this member.
pub trait Pool: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &str;
    /// Incus's driver name.
    fn driver(&self) -> &'static str;
    /// Where the pool keeps its volumes (the `source` key's value).
    fn source(&self) -> &Path;

    /// Creates the pool: the source directory when it is the default, the layout in it.
    /// A given source must exist and be empty. On failure nothing is left that was not
    /// there before.
    fn create(&self) -> Result<()>;
    /// Checks that the pool is there and whole (at start, and before use).
    fn check(&self) -> Result<()>;
    /// Removes the pool, refusing ([`Error::InUse`]) while it holds container volumes.
    /// Image volumes are caches and go with it. A given source directory is emptied and
    /// kept; the default one is removed.
    fn delete(&self) -> Result<()>;
    /// Space of the file system the pool is on.
    fn space(&self) -> Result<Space>;

    /// The volumes the pool holds.
    fn volumes(&self) -> Result<Vec<Volume>>;
    /// Where a volume is mounted (for `dir`: where it is).
    fn volume_path(&self, vol: &Volume) -> Result<PathBuf>;
    /// Creates an empty volume whose top directory `owner` owns.
    fn create_volume(&self, vol: &Volume, owner: Owner) -> Result<PathBuf>;
    /// Gives a volume's top directory to another owner (a container that became
    /// privileged or unprivileged).
    fn set_volume_owner(&self, vol: &Volume, owner: Owner) -> Result<()>;
    fn delete_volume(&self, vol: &Volume) -> Result<()>;
    /// Renames a volume; the new name must be free.
    fn rename_volume(&self, vol: &Volume, new_name: &str) -> Result<()>;
    /// Copies a volume to a new one of the same kind, keeping owners, modes, times,
    /// extended attributes, hard links, symbolic links and special files. The copy
    /// appears whole or not at all.
    fn copy_volume(&self, from: &Volume, to_name: &str) -> Result<PathBuf>;
    /// Where a container volume or snapshot is (names checked).
    fn tree_path(&self, tree: Tree<'_>) -> Result<PathBuf>;
    /// Copies a container volume or snapshot to a new one (a snapshot taken, a copy from
    /// a snapshot, a snapshot copied with its instance), keeping everything
    /// [`Pool::copy_volume`] keeps. Whole or not at all; `to` must be free.
    fn copy_tree(&self, from: Tree<'_>, to: Tree<'_>) -> Result<PathBuf>;
    /// Removes a container volume or snapshot (moved aside first, so it is never seen
    /// half-removed).
    fn delete_tree(&self, tree: Tree<'_>) -> Result<()>;
    /// Renames a snapshot of `instance`; the new name must be free.
    fn rename_snapshot(&self, instance: &str, name: &str, new_name: &str) -> Result<()>;
    /// Gives the container volume the snapshot's contents: a copy of the snapshot is made
    /// beside the volume, then swapped with it in one `renameat2(RENAME_EXCHANGE)`, so
    /// the volume is either the old one or the restored one, never a mix.
    fn restore_snapshot(&self, instance: &str, name: &str) -> Result<()>;
    /// Removes every snapshot of `instance` (its directory under `containers-snapshots`).
    fn delete_snapshots(&self, instance: &str) -> Result<()>;
    /// Moves the snapshots of `instance` to `new_name` (an instance renamed).
    fn rename_snapshots(&self, instance: &str, new_name: &str) -> Result<()>;
    /// An empty hidden directory beside where `tree` goes, to receive it (from another
    /// member); [`Pool::commit_tree`] puts it in place, removing it is abandoning it.
    fn stage_tree(&self, tree: Tree<'_>) -> Result<PathBuf>;
    /// Copies a tree into a staged (empty) directory, as [`Pool::copy_tree`] copies.
    fn copy_tree_into(&self, from: Tree<'_>, staged: &Path) -> Result<()>;
    /// Puts a staged tree in place under its name, its top directory owned by `owner`
    /// with the mode of its kind; refused if the name is taken.
    fn commit_tree(&self, staged: &Path, tree: Tree<'_>, owner: Owner) -> Result<PathBuf>;
    /// Bytes a volume uses on disk (allocated blocks, hard links counted once).
    fn volume_usage(&self, vol: &Volume) -> Result<u64>;
    /// Removes what copies and deletions cut short by a crash left (hidden, never listed
    /// as volumes). Call it at start, before any volume operation runs.
    fn remove_partial(&self) -> Result<usize>;
}

/// The default source of a pool: `<state>/storage-pools/<name>`, as Incus's.
pub fn default_source(state_dir: &Path, name: &str) -> Result<PathBuf> {
    check_pool_name(name)?;
    Ok(state_dir.join("storage-pools").join(name))
}

/// Checks a pool's config keys for `driver` (values are checked where they are used):
/// the `dir` driver's own keys, `volume.*` defaults for new volumes, `user.*`.
pub fn check_config<'a>(driver: &str, keys: impl IntoIterator<Item = &'a String>) -> Result<()> {
    if driver != "dir" {
        return Err(Error::UnknownDriver(driver.to_string()));
    }
    const DIR_KEYS: &[&str] = &[
        "source",
        "volatile.initial_source",
        "rsync.bwlimit",
        "rsync.compression",
    ];
    for key in keys {
        let known =
            DIR_KEYS.contains(&key.as_str()) || key.starts_with("user.") || key.starts_with("volume.");
        if !known {
            return Err(Error::InvalidOption(key.clone()));
        }
    }
    Ok(())
}

/// Opens the pool `config` describes on a member whose state directory is
/// `state_dir` (this does not create it: see [`Pool::create`]).
pub fn open(state_dir: &Path, config: &PoolConfig) -> Result<Box<dyn Pool>> {
    check_pool_name(&config.name)?;
    match config.driver.as_str() {
        "dir" => Ok(Box::new(Dir::new(state_dir, config)?)),
        other => Err(Error::UnknownDriver(other.to_string())),
    }
}
