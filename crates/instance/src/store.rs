//! The small on-disk records both drivers keep per container (one directory each, a
//! JSON record written atomically), so the fake and LXC share one way of keeping them.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::driver::Reader;
use crate::error::{Error, Result};
use crate::validate_name;

/// Reads container `name`'s record at `path`; a missing one is [`Error::NotFound`].
pub(crate) async fn read<T: DeserializeOwned>(path: &Path, name: &str) -> Result<T> {
    let text = match tokio::fs::read(path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NotFound(name.into())),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()))(e)),
    };
    serde_json::from_slice(&text).map_err(|e| Error::Tool {
        command: "instance record".into(),
        detail: format!("{}: {e}", path.display()),
    })
}

/// Writes `data` to `path` through a temporary file and a rename: never half a file.
pub(crate) async fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let temp = path.with_extension("new");
    tokio::fs::write(&temp, data)
        .await
        .map_err(Error::io(format!("writing {}", temp.display())))?;
    tokio::fs::rename(&temp, path)
        .await
        .map_err(Error::io(format!("writing {}", path.display())))
}

pub(crate) async fn write<T: Serialize>(path: &Path, record: &T) -> Result<()> {
    let json = serde_json::to_vec_pretty(record).map_err(|e| Error::Tool {
        command: "instance record".into(),
        detail: e.to_string(),
    })?;
    write_atomic(path, &json).await
}

/// Checks that a new container's root file system is a directory.
pub(crate) async fn check_rootfs(rootfs: &Path) -> Result<()> {
    if tokio::fs::metadata(rootfs).await.is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    Err(Error::InvalidConfig {
        key: "rootfs".into(),
        value: rootfs.display().to_string(),
        reason: "not a directory".into(),
    })
}

/// Makes container `name`'s directory under `parent`; [`Error::AlreadyExists`] if there.
pub(crate) async fn make_dir(parent: &Path, name: &str) -> Result<PathBuf> {
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(Error::io(format!("creating {}", parent.display())))?;
    let dir = parent.join(name);
    match tokio::fs::create_dir(&dir).await {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::AlreadyExists(name.into())),
        Err(e) => Err(Error::io(format!("creating {}", dir.display()))(e)),
    }
}

/// The containers under `parent`: directories with a valid name holding `record`.
pub(crate) async fn names(parent: &Path, record: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut entries = match tokio::fs::read_dir(parent).await {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(format!("listing {}", parent.display()))(e)),
    };
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(Error::io(format!("listing {}", parent.display())))?
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if validate_name(&name).is_ok() && entry.path().join(record).exists() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// The most of a log that is read in one call.
const MAX_LOG: u64 = 16 << 20;

/// A log file from its start (bounded); a log not written yet is empty.
pub(crate) async fn log(path: &Path) -> Result<Reader> {
    use tokio::io::AsyncReadExt;
    match tokio::fs::File::open(path).await {
        Ok(f) => Ok(Box::pin(f.take(MAX_LOG))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Box::pin(std::io::Cursor::new(Vec::new()))),
        Err(e) => Err(Error::io(format!("reading {}", path.display()))(e)),
    }
}
