//! The [`Driver`] trait: what a member needs from an instance runtime, and the plain
//! types that cross it.
//!
//! The trait is object-safe and held as `Arc<dyn Driver>`, so the daemon picks the
//! runtime at start (`--driver lxc|fake`) and nothing above this crate knows which one
//! runs. Methods return [`BoxFuture`]s written by hand, as `cluster::raft::Rpc` does,
//! rather than through `async-trait`: the signatures stay readable in the docs, there is
//! no macro between the reader and the lifetimes, and an implementation is an ordinary
//! `Box::pin(async move { .. })`.
//!
//! Byte streams cross the trait as tokio's `AsyncRead`/`AsyncWrite` ([`Reader`],
//! [`Writer`]): an exec's stdin/stdout/stderr, a file read or written, a log. Nothing is
//! buffered whole, so a large file or a long session costs a bounded amount of memory.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::{Error, Result};
use crate::fs::{DirEntry, FileStat, FsOp, FsReply, SetAttrs, WriteSpec};

/// A boxed future that may cross threads.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A byte stream read from the instance (stdout, a file, a log).
pub type Reader = Pin<Box<dyn AsyncRead + Send>>;
/// A byte stream written into the instance (stdin).
pub type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// A byte stream both ways: an upgraded HTTP connection.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}
/// A boxed [`Duplex`].
pub type Conn = Box<dyn Duplex>;
/// An SFTP server ready for one connection (the instance was found and entered): it
/// serves until the client closes the connection.
pub type SftpServer = Box<dyn FnOnce(Conn) -> BoxFuture<'static, Result<()>> + Send>;

/// What a new container is made of. The caller prepares the root file system (an
/// unpacked image); the driver owns everything else (its runtime directory with the
/// generated configuration and logs, its cgroups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSpec {
    pub name: String,
    /// The directory that becomes `/`. For an unprivileged container every directory above
    /// it must be searchable by the container's root (uid 1000000 on the host): a
    /// `d--x------` directory owned by that uid, as Incus makes, or mode `0711`.
    pub rootfs: PathBuf,
    /// `security.privileged`: no user namespace (container root is host root).
    pub privileged: bool,
    pub limits: Limits,
}

/// Resource limits, typed (see [`Limits::from_config`] for the Incus keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// `limits.memory`, in bytes.
    pub memory: Option<u64>,
    /// `limits.cpu`.
    pub cpu: Option<CpuLimit>,
}

/// `limits.cpu`: a number of CPUs, or the CPUs themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuLimit {
    /// This many CPUs (the driver picks which).
    Count(u32),
    /// These CPUs, as a normalised list (`0-1,3`).
    Set(String),
}

/// How to stop a running container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Ask init to shut down; kill what is left after the timeout.
    Clean(Duration),
    /// Kill at once.
    Force,
}

/// A container's runtime state, as LXC names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Stopped,
    Starting,
    Running,
    Stopping,
    Aborting,
    Freezing,
    Frozen,
    Thawed,
}

/// What the runtime and the cgroups say about a container. Figures the host cannot give
/// (a missing cgroup controller) are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub status: Status,
    /// The container's init, as the host sees it.
    pub pid: Option<u32>,
    pub processes: Option<u64>,
    /// Bytes in use now, the most ever in use, and the limit.
    pub memory: Option<u64>,
    pub memory_peak: Option<u64>,
    pub memory_limit: Option<u64>,
    /// CPU time used since start.
    pub cpu_ns: Option<u64>,
    /// The CPUs it may run on (`0-1`).
    pub cpus: Option<String>,
}

/// One container the driver has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub status: Status,
}

/// The logs a container has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Log {
    /// The runtime's own log (`lxc.log`).
    Runtime,
    /// What the container wrote to its console.
    Console,
}

/// A command to run in a running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// The program (looked up in the container's `PATH` from `env`) and its arguments.
    pub command: Vec<String>,
    /// The whole environment: nothing of the host's is passed on.
    pub env: BTreeMap<String, String>,
    /// The working directory inside the container; `None` is `HOME` from `env`, else `/`.
    /// A directory that does not exist leaves the command in `/`, as Incus does.
    pub cwd: Option<String>,
    pub uid: u32,
    pub gid: u32,
    /// `Some`: interactive, on a terminal of this size that is the command's controlling
    /// terminal; stdout and stderr are both that terminal.
    pub tty: Option<WindowSize>,
}

/// A terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    pub cols: u16,
    pub rows: u16,
}

/// A running command.
///
/// Drop (or shut down) `stdin` to give the command end of file. `exit` resolves with the
/// exit code, or 128+n when a signal killed it (127: not found, 126: not executable).
pub struct Process {
    pub stdin: Writer,
    /// The command's stdout; when interactive, the terminal (stdout and stderr together).
    pub stdout: Reader,
    /// `None` when interactive.
    pub stderr: Option<Reader>,
    pub control: Arc<dyn Control>,
    pub exit: BoxFuture<'static, Result<i32>>,
}

/// Signal number `signal` as this host knows it, or the refusal for one it does not.
pub(crate) fn host_signal(signal: i32) -> crate::error::Result<rustix::process::Signal> {
    rustix::process::Signal::from_named_raw(signal).ok_or_else(|| crate::error::Error::InvalidConfig {
        key: "signal".into(),
        value: signal.to_string(),
        reason: "not a signal this host can send".into(),
    })
}

/// What can be done to a running command besides its streams.
pub trait Control: Send + Sync {
    /// A new terminal size (interactive only); the command gets SIGWINCH.
    fn resize(&self, size: WindowSize) -> Result<()>;
    /// Delivers `signal` to the command itself (not to a runtime process in between).
    fn signal(&self, signal: i32) -> Result<()>;
}

/// An instance runtime. Names are checked by every method ([`crate::validate_name`]), so
/// a name can be used in paths and cgroup names as it is.
///
/// File access (`fs`, `read_file`, `write_file`) resolves every path inside the
/// container's own view of its file system (the running container's mounts, or its root
/// file system when stopped): `..`, absolute and relative symbolic links and a path
/// swapped for a link mid-way all stay inside. Ids (`uid`, `gid`) are the container's.
pub trait Driver: Send + Sync {
    /// `"lxc"` or `"fake"`.
    fn kind(&self) -> &'static str;

    /// Creates a stopped container over a prepared root file system.
    fn create(&self, spec: CreateSpec) -> BoxFuture<'_, Result<()>>;
    /// Starts a stopped container; returns once it runs. `/sbin/init` becomes PID 1.
    fn start<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>>;
    fn stop<'a>(&'a self, name: &'a str, how: Stop) -> BoxFuture<'a, Result<()>>;
    /// Stop, then start.
    fn restart<'a>(&'a self, name: &'a str, how: Stop) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.stop(name, how).await?;
            self.start(name).await
        })
    }
    fn freeze<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>>;
    fn unfreeze<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>>;
    fn state<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<State>>;
    /// The status alone: what a list without state shows. A driver where the usage
    /// figures cost more than the status answers it without them.
    fn status<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Status>> {
        Box::pin(async move { self.state(name).await.map(|s| s.status) })
    }
    /// Changes the limits: at once when running, and for every later start.
    fn set_limits<'a>(&'a self, name: &'a str, limits: Limits) -> BoxFuture<'a, Result<()>>;
    /// Removes a stopped container's runtime directory, logs and cgroups. The root file
    /// system is the caller's and stays.
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Every container this driver has, running or not: what a restarted daemon adopts.
    fn list(&self) -> BoxFuture<'_, Result<Vec<Listed>>>;
    /// A log, from its start.
    fn log<'a>(&'a self, name: &'a str, log: Log) -> BoxFuture<'a, Result<Reader>>;
    /// Runs a command in a running container.
    fn exec<'a>(&'a self, name: &'a str, spec: ExecSpec) -> BoxFuture<'a, Result<Process>>;
    /// Attaches to a running container's console (the terminal its init has as
    /// `/dev/console`) on a host terminal of `size`. The [`Process`] is the attachment,
    /// not a process of the container: its `stdout` is what the console shows, its
    /// `stdin` what is typed there, `control` resizes the terminal, and any signal
    /// through `control` detaches (the console and what runs on it stay as they are);
    /// `exit` resolves once detached.
    fn console<'a>(&'a self, name: &'a str, size: WindowSize) -> BoxFuture<'a, Result<Process>>;

    /// One file operation inside the container.
    fn fs<'a>(&'a self, name: &'a str, op: FsOp) -> BoxFuture<'a, Result<FsReply>>;
    /// A regular file's attributes and content (symbolic links followed, inside).
    fn read_file<'a>(&'a self, name: &'a str, path: &'a str) -> BoxFuture<'a, Result<(FileStat, Reader)>>;
    /// Replaces the file at `path` (a link there is followed, inside) with `data`,
    /// atomically: a failed or cut stream leaves the old file as it was.
    fn write_file<'a>(
        &'a self,
        name: &'a str,
        path: &'a str,
        spec: WriteSpec,
        data: Reader,
    ) -> BoxFuture<'a, Result<FileStat>>;
    /// An SFTP v3 server inside the container ([`crate::sftp`]), with the same path rules
    /// as `fs`. Errors here (no such instance, the container could not be entered) come
    /// before anything is served.
    fn sftp<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<SftpServer>>;
}

/// Typed shorthands over [`Driver::fs`].
impl dyn Driver {
    pub async fn stat(&self, name: &str, path: &str) -> Result<FileStat> {
        expect_stat(self.fs(name, FsOp::Stat { path: path.into() }).await?)
    }

    /// As `stat`, of a symbolic link itself.
    pub async fn lstat(&self, name: &str, path: &str) -> Result<FileStat> {
        expect_stat(self.fs(name, FsOp::Lstat { path: path.into() }).await?)
    }

    pub async fn read_dir(&self, name: &str, path: &str) -> Result<Vec<DirEntry>> {
        match self.fs(name, FsOp::ReadDir { path: path.into() }).await? {
            FsReply::Entries(e) => Ok(e),
            other => Err(unexpected(other)),
        }
    }

    pub async fn mkdir(&self, name: &str, path: &str, mode: u32, uid: u32, gid: u32) -> Result<()> {
        let op = FsOp::Mkdir {
            path: path.into(),
            mode,
            uid,
            gid,
        };
        self.fs(name, op).await.map(drop)
    }

    /// Removes a file or symbolic link (not a directory).
    pub async fn remove(&self, name: &str, path: &str) -> Result<()> {
        self.fs(name, FsOp::Remove { path: path.into() }).await.map(drop)
    }

    /// Removes an empty directory.
    pub async fn rmdir(&self, name: &str, path: &str) -> Result<()> {
        self.fs(name, FsOp::Rmdir { path: path.into() }).await.map(drop)
    }

    /// Makes `link` a symbolic link to `target` (stored as given, resolved by whoever
    /// follows it).
    pub async fn symlink(&self, name: &str, target: &str, link: &str, uid: u32, gid: u32) -> Result<()> {
        let op = FsOp::Symlink {
            target: target.into(),
            link: link.into(),
            uid,
            gid,
        };
        self.fs(name, op).await.map(drop)
    }

    pub async fn readlink(&self, name: &str, path: &str) -> Result<String> {
        match self.fs(name, FsOp::Readlink { path: path.into() }).await? {
            FsReply::Target(t) => Ok(t),
            other => Err(unexpected(other)),
        }
    }

    pub async fn rename(&self, name: &str, from: &str, to: &str) -> Result<()> {
        let op = FsOp::Rename {
            from: from.into(),
            to: to.into(),
        };
        self.fs(name, op).await.map(drop)
    }

    pub async fn set_attrs(&self, name: &str, path: &str, attrs: SetAttrs) -> Result<()> {
        let op = FsOp::SetAttrs {
            path: path.into(),
            attrs,
        };
        self.fs(name, op).await.map(drop)
    }
}

fn expect_stat(reply: FsReply) -> Result<FileStat> {
    match reply {
        FsReply::Stat(s) => Ok(s),
        other => Err(unexpected(other)),
    }
}

fn unexpected(reply: FsReply) -> Error {
    Error::Tool {
        command: "file access".into(),
        detail: format!("unexpected reply {reply:?}"),
    }
}
