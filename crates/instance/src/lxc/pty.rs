//! A host pseudo-terminal for interactive exec, with safe calls only (rustix): the pair is
//! opened here, the child gets the secondary side as stdin/stdout/stderr, and the primary
//! side is read and written asynchronously through tokio's `AsyncFd`.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use rustix::fs::OFlags;
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::driver::WindowSize;

/// Opens a terminal pair of `size`: (primary, secondary).
pub fn open(size: WindowSize) -> io::Result<(OwnedFd, OwnedFd)> {
    let primary = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&primary)?;
    rustix::pty::unlockpt(&primary)?;
    let secondary = rustix::pty::ioctl_tiocgptpeer(&primary, OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
    resize(&primary, size)?;
    Ok((primary, secondary))
}

/// Sets the terminal's size; the foreground process group gets SIGWINCH.
pub fn resize(primary: &impl AsFd, size: WindowSize) -> io::Result<()> {
    rustix::termios::tcsetwinsize(
        primary,
        Winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}

/// The primary side, as an async byte stream. Once every process has closed the
/// secondary side, reads end (the kernel's EIO is end of file here).
pub struct Primary {
    fd: AsyncFd<OwnedFd>,
}

impl Primary {
    pub fn new(fd: OwnedFd) -> io::Result<Primary> {
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | OFlags::NONBLOCK)?;
        // Deprecated in tokio because a `T` that only borrows its descriptor could close it
        // while registered; an `OwnedFd` moved into the `AsyncFd` cannot, so this is sound.
        // Its replacement, `AsyncFd::register`, is `unsafe`, which this workspace forbids.
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd)?;
        Ok(Primary { fd })
    }
}

impl AsyncRead for Primary {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| rustix::io::read(fd.get_ref(), &mut *unfilled).map_err(io::Error::from)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Primary {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(io::Error::from)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
