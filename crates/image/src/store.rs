//! An image's files in a directory (`<dir>/<fingerprint>`, `<dir>/<fingerprint>.rootfs`)
//! and the temporary files of an import (`<dir>/.partial-<random>`).
//!
//! `<fingerprint>` is the mark of a complete image: it is moved into place last, with
//! `RENAME_NOREPLACE`, once the file and the rootfs are whole (not synced: see
//! `import::write_part`); deletion removes it first. A fingerprint is checked to be 64 lowercase hex digits before it is ever
//! joined to a path.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{renameat_with, RenameFlags, CWD};

use crate::error::{Error, Result};

const PARTIAL_PREFIX: &str = ".partial-";

/// An image's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFiles {
    /// The unified file, or the metadata tarball of a split image.
    pub metadata: PathBuf,
    /// The root file system of a split image.
    pub rootfs: Option<PathBuf>,
}

impl ImageFiles {
    /// The files of the image `fingerprint` in `dir`, if it is there.
    pub fn locate(dir: &Path, fingerprint: &str) -> Result<ImageFiles> {
        check_fingerprint(fingerprint)?;
        let metadata = dir.join(fingerprint);
        if !metadata.is_file() {
            return Err(Error::NotFound {
                fingerprint: fingerprint.to_string(),
            });
        }
        let rootfs = dir.join(format!("{fingerprint}.rootfs"));
        Ok(ImageFiles {
            metadata,
            rootfs: rootfs.is_file().then_some(rootfs),
        })
    }

    pub fn is_split(&self) -> bool {
        self.rootfs.is_some()
    }

    /// The bytes the files hold together (the image's `size`).
    pub fn size(&self) -> Result<u64> {
        let mut total = 0;
        for p in std::iter::once(&self.metadata).chain(self.rootfs.as_ref()) {
            total += fs::metadata(p)
                .map_err(Error::io(format!("reading {}", p.display())))?
                .len();
        }
        Ok(total)
    }
}

/// Checks that `fingerprint` is a whole sha256 in lowercase hex.
pub fn check_fingerprint(fingerprint: &str) -> Result<()> {
    if fingerprint.len() == 64
        && fingerprint
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(Error::NotFound {
            fingerprint: fingerprint.to_string(),
        })
    }
}

/// Removes an image's files from `dir` (the main file first). Missing files are fine.
pub fn delete(dir: &Path, fingerprint: &str) -> Result<()> {
    check_fingerprint(fingerprint)?;
    for name in [fingerprint.to_string(), format!("{fingerprint}.rootfs")] {
        match fs::remove_file(dir.join(&name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(Error::io(format!("removing {name}"))(e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Removes the temporary files of imports that did not finish (after a crash).
pub fn remove_partial(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(Error::io(format!("listing {}", dir.display())))? {
        let entry = entry.map_err(Error::io("listing the image directory"))?;
        if entry.file_name().to_string_lossy().starts_with(PARTIAL_PREFIX) {
            fs::remove_file(entry.path()).map_err(Error::io("removing a partial import"))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// A temporary file, removed when dropped unless it was moved into place.
#[derive(Debug)]
pub(crate) struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    /// Creates `<dir>/.partial-<random>` (mode 0600) and opens it for writing.
    pub(crate) fn create(dir: &Path) -> Result<(TempFile, File)> {
        let mut random = [0u8; 8];
        aws_lc_rs::rand::fill(&mut random)
            .map_err(|_| Error::io("random name")(io::Error::other("no randomness")))?;
        let path = dir.join(format!("{PARTIAL_PREFIX}{}", hex::encode(random)));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(Error::io(format!("creating a file in {}", dir.display())))?;
        Ok((TempFile { path: Some(path) }, file))
    }

    pub(crate) fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Moves the file to `to`; with `replace` false, fails if `to` exists.
    fn place(mut self, to: &Path, replace: bool) -> io::Result<()> {
        let flags = if replace {
            RenameFlags::empty()
        } else {
            RenameFlags::NOREPLACE
        };
        renameat_with(CWD, self.path(), CWD, to, flags)?;
        self.path = None;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Moves a finished import into place: the rootfs (a leftover of a crash is replaced),
/// then the main file, never over an existing one. Nothing is synced (see
/// `import::write_part`).
pub(crate) fn persist(
    dir: &Path,
    fingerprint: &str,
    main: TempFile,
    rootfs: Option<TempFile>,
) -> Result<ImageFiles> {
    let exists = || Error::Exists {
        fingerprint: fingerprint.to_string(),
    };
    let target = dir.join(fingerprint);
    if target.exists() {
        return Err(exists());
    }
    let rootfs_target = match rootfs {
        Some(r) => {
            let to = dir.join(format!("{fingerprint}.rootfs"));
            r.place(&to, true)
                .map_err(Error::io("moving the rootfs into place"))?;
            Some(to)
        }
        None => None,
    };
    match main.place(&target, false) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(exists()),
        Err(e) => {
            if let Some(r) = &rootfs_target {
                let _ = fs::remove_file(r);
            }
            return Err(Error::io("moving the image into place")(e));
        }
    }
    Ok(ImageFiles {
        metadata: target,
        rootfs: rootfs_target,
    })
}
