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

/// An SFTP server over the root file system `root`, run on the blocking pool: the
/// synchronous loop of [`crate::sftp::serve`] reads and writes the connection through
/// [`Blocking`].
pub(crate) async fn sftp(root: PathBuf) -> Result<crate::driver::SftpServer> {
    let fs = blocking(move || open(&root)).await?;
    Ok(Box::new(move |conn: crate::driver::Conn| {
        Box::pin(async move {
            let handle = tokio::runtime::Handle::current();
            blocking(move || {
                let (read, write) = tokio::io::split(conn);
                let mut input = std::io::BufReader::with_capacity(
                    256 * 1024,
                    Blocking {
                        handle: handle.clone(),
                        inner: read,
                    },
                );
                let mut output = std::io::BufWriter::with_capacity(
                    256 * 1024,
                    Blocking {
                        handle: handle.clone(),
                        inner: write,
                    },
                );
                let served = crate::sftp::serve(&fs, &mut input, &mut output);
                let _ = std::io::Write::flush(&mut output);
                if let Ok(mut w) = output.into_inner() {
                    let _ = handle.block_on(tokio::io::AsyncWriteExt::shutdown(&mut w.inner));
                }
                served.map_err(Error::io("serving SFTP"))
            })
            .await
        }) as crate::driver::BoxFuture<'static, Result<()>>
    }))
}

/// Synchronous reads and writes over an async stream, for a blocking-pool thread.
struct Blocking<T> {
    handle: tokio::runtime::Handle,
    inner: T,
}

impl<T: tokio::io::AsyncRead + Unpin> std::io::Read for Blocking<T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.handle
            .block_on(tokio::io::AsyncReadExt::read(&mut self.inner, buf))
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> std::io::Write for Blocking<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.handle.block_on(self.inner.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.handle.block_on(self.inner.flush())
    }
}
