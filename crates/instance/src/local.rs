//! File access through [`RootFs`] in this process, for a root file system directory on
//! the host (the fake driver, a stopped LXC container): the synchronous calls run on the
//! blocking pool, file contents stream through tokio's file type.

use std::path::PathBuf;

use tokio::io::AsyncWriteExt;

use crate::driver::Reader;
use crate::error::{Error, Result};
use crate::fs::{FileStat, FsOp, FsReply, RootFs, WriteSpec};

fn open(root: &std::path::Path) -> Result<RootFs> {
    RootFs::open(root).map_err(Error::io(format!(
        "opening the root file system {}",
        root.display()
    )))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Tool {
        command: "file access".into(),
        detail: e.to_string(),
    })?
}

pub(crate) async fn run(root: PathBuf, op: FsOp) -> Result<FsReply> {
    blocking(move || Ok(open(&root)?.run(&op)?)).await
}

pub(crate) async fn read(root: PathBuf, path: &str) -> Result<(FileStat, Reader)> {
    let path = path.to_string();
    let (stat, file) = blocking(move || Ok(open(&root)?.open_read(&path)?)).await?;
    Ok((stat, Box::pin(tokio::fs::File::from_std(file))))
}

pub(crate) async fn write(root: PathBuf, path: &str, spec: WriteSpec, mut data: Reader) -> Result<FileStat> {
    let owned = path.to_string();
    let pending = blocking(move || Ok(open(&root)?.begin_write(&owned, spec)?)).await?;
    let copy = async {
        let file = pending
            .file
            .try_clone()
            .map_err(Error::io(format!("writing {path}")))?;
        let mut file = tokio::fs::File::from_std(file);
        tokio::io::copy(&mut data, &mut file)
            .await
            .map_err(Error::io(format!("writing {path}")))?;
        file.flush().await.map_err(Error::io(format!("writing {path}")))?;
        Ok::<_, Error>(())
    };
    match copy.await {
        // A failed stream drops `pending`, which removes the partial file.
        Err(e) => Err(e),
        Ok(()) => blocking(move || Ok(pending.commit()?)).await,
    }
}
