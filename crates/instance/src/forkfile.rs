//! File access inside a running container, through a helper process that enters the
//! container's namespaces (as Incus's `forkfile` does).
//!
//! ```text
//!  daemon (threads, host root)                helper: `stapesd forkfile` (one per operation)
//!  ───────────────────────────                ──────────────────────────────────────────────
//!  spawn, write one JSON request line  ──>    single-threaded, before any runtime:
//!                                             pidfd_open(init pid); check its cgroup is the
//!                                             container's; setns(pidfd, USER | MOUNT);
//!                                             become the container's root (uid/gid 0)
//!                                             RootFs over "/" = the container's own view
//!  read one JSON reply line            <──    the result, or the error
//!  (read: file bytes follow to EOF; write: length-prefixed frames, an empty frame commits)
//! ```
//!
//! Why a process: a user namespace can only be entered by a single-threaded process, and
//! only inside the container's user and mount namespaces do the container's ids and its
//! idmapped root file system work as they do for the container (the host's root cannot
//! create files on an idmapped mount whose map it is not in). The helper's own `/` and
//! `/proc` are the container's, so nothing of the host is even in reach; paths are still
//! resolved with [`RootFs`] rules. A privileged container has no user namespace of its
//! own: only the mount namespace is entered.
//!
//! The pid comes from `lxc-info`; a pid reused by another process in the meantime fails
//! the cgroup check, and once the pidfd is open it names that process only.

use std::ffi::OsString;
use std::io::{BufRead, Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use rustix::thread::ThreadNameSpaceType;
use std::os::unix::fs::MetadataExt;
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::driver::Reader;
use crate::error::{Error, FsError, FsErrorKind, Result};
use crate::fs::{FileStat, FsOp, FsReply, RootFs, WriteSpec};

/// How long the helper may take to answer (the first line).
const ANSWER: Duration = Duration::from_secs(30);
/// The longest request or reply line.
const MAX_LINE: u64 = 64 << 20;
/// Size of one data frame of a write.
const FRAME: usize = 128 * 1024;

/// What the helper is asked.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    /// The container's init, as the host sees it.
    pid: u32,
    /// The container's cgroup (`PREFIX/NAME/container`): the init must be in it.
    cgroup: String,
    action: Action,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Action {
    Fs(FsOp),
    Read {
        path: String,
    },
    Write {
        path: String,
        spec: WriteSpec,
    },
    /// Serve SFTP on stdin and stdout until stdin ends.
    Sftp,
}

/// How to start the helper: a program and the arguments before the request (for the
/// daemon, `stapesd forkfile`).
#[derive(Debug, Clone)]
pub struct Helper {
    pub program: OsString,
    pub args: Vec<OsString>,
}

impl Helper {
    /// The exec helper of the same program (`PROGRAM execd`, [`crate::execd`]): the
    /// daemon's binary is both.
    pub fn execd(&self) -> Helper {
        Helper {
            program: self.program.clone(),
            args: vec!["execd".into()],
        }
    }
}

// ---------------------------------------------------------------------------------------
// The helper side: synchronous, single-threaded.
// ---------------------------------------------------------------------------------------

/// The helper's `main`: reads a request on stdin, answers on stdout, and returns the
/// process exit code. Call it first thing in `main`, before any thread starts.
pub fn main() -> i32 {
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut line = String::new();
    if (&mut stdin).take(MAX_LINE).read_line(&mut line).is_err() {
        return 2;
    }
    let request: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            let _ = reply::<()>(&mut stdout, &Err(setup_error(format!("bad request: {e}"))));
            return 2;
        }
    };
    if let Err(message) = enter(request.pid, &request.cgroup) {
        let _ = reply::<()>(&mut stdout, &Err(setup_error(message)));
        return 1;
    }
    rustix::process::umask(rustix::fs::Mode::empty());
    let root = match RootFs::open(std::path::Path::new("/")) {
        Ok(r) => r,
        Err(e) => {
            let _ = reply::<()>(&mut stdout, &Err(setup_error(format!("cannot open /: {e}"))));
            return 1;
        }
    };
    match request.action {
        Action::Fs(op) => {
            let result = root.run(&op);
            let ok = result.is_ok();
            if reply(&mut stdout, &result).is_err() || !ok {
                return 1;
            }
            0
        }
        Action::Read { path } => match root.open_read(&path) {
            Err(e) => {
                let _ = reply::<FileStat>(&mut stdout, &Err(e));
                1
            }
            Ok((stat, mut file)) => {
                if reply::<FileStat>(&mut stdout, &Ok(stat)).is_err() {
                    return 1;
                }
                match std::io::copy(&mut file, &mut stdout).and_then(|_| stdout.flush()) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("{path}: {e}");
                        1
                    }
                }
            }
        },
        Action::Write { path, spec } => write_side(&root, &path, spec, &mut stdin, &mut stdout),
        Action::Sftp => {
            if reply::<()>(&mut stdout, &Ok(())).is_err() {
                return 1;
            }
            // Raw writes to our stdout (the lock's line buffering would flush at every
            // newline byte of a file); the daemon sends nothing before the answer above,
            // so the locked stdin holds no SFTP bytes yet and goes on serving them.
            let out = match std::io::stdout().as_fd().try_clone_to_owned() {
                Ok(fd) => std::fs::File::from(fd),
                Err(_) => return 1,
            };
            let mut out = std::io::BufWriter::with_capacity(256 * 1024, out);
            match crate::sftp::serve(&root, &mut stdin, &mut out).and_then(|()| out.flush()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("sftp: {e}");
                    1
                }
            }
        }
    }
}

fn write_side(
    root: &RootFs,
    path: &str,
    spec: WriteSpec,
    input: &mut impl Read,
    out: &mut impl Write,
) -> i32 {
    let mut pending = match root.begin_write(path, spec) {
        Ok(p) => p,
        Err(e) => {
            let _ = reply::<()>(out, &Err(e));
            return 1;
        }
    };
    if reply::<()>(out, &Ok(())).is_err() {
        return 1;
    }
    let mut buf = vec![0u8; FRAME];
    loop {
        let mut len = [0u8; 4];
        if input.read_exact(&mut len).is_err() {
            // The daemon went away mid-stream: `pending` is dropped, the old file stays.
            return 1;
        }
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 {
            break;
        }
        if len > FRAME || input.read_exact(&mut buf[..len]).is_err() {
            return 1;
        }
        if let Err(e) = pending.file.write_all(&buf[..len]) {
            let _ = reply::<FileStat>(out, &Err(FsError::from_io(path, &e)));
            return 1;
        }
    }
    let result = pending.commit();
    let ok = result.is_ok();
    if reply(out, &result).is_err() || !ok {
        return 1;
    }
    0
}

fn setup_error(message: String) -> FsError {
    FsError::new(FsErrorKind::Other, "", message)
}

fn reply<T: Serialize>(
    out: &mut impl Write,
    result: &std::result::Result<T, FsError>,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(result).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

/// Whether a `/proc/PID/cgroup` text puts the process in `cgroup` (or below it).
pub(crate) fn in_cgroup(proc_cgroup: &str, cgroup: &str) -> bool {
    let wanted = format!("/{}", cgroup.trim_matches('/'));
    host::cgroup::parse_memberships(proc_cgroup)
        .iter()
        .any(|m| m.path.ends_with(&wanted) || m.path.contains(&format!("{wanted}/")))
}

/// A pidfd of `pid`, once it is checked to be the container's init (in `cgroup`).
pub(crate) fn open_init(pid: u32, cgroup: &str) -> std::result::Result<OwnedFd, String> {
    let target = rustix::process::Pid::from_raw(pid as i32).ok_or("no such process")?;
    let pidfd = rustix::process::pidfd_open(target, rustix::process::PidfdFlags::empty())
        .map_err(|e| format!("the container's init ({pid}) is gone: {e}"))?;
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    if !in_cgroup(&cgroups, cgroup) {
        return Err(format!(
            "process {pid} is not the container's init (not in cgroup {cgroup})"
        ));
    }
    Ok(pidfd)
}

/// Whether `pid` has a user namespace other than this process's (not privileged).
pub(crate) fn own_user_namespace(pid: u32) -> std::result::Result<bool, String> {
    let own = std::fs::metadata("/proc/self/ns/user").map_err(|e| e.to_string())?;
    let its = std::fs::metadata(format!("/proc/{pid}/ns/user")).map_err(|e| e.to_string())?;
    Ok((own.dev(), own.ino()) != (its.dev(), its.ino()))
}

/// Enters the namespaces `spaces` of the process of `pidfd` and, with its user namespace
/// among them, becomes its root; fails if `/` is still the host's afterwards.
pub(crate) fn move_in(pidfd: &OwnedFd, spaces: ThreadNameSpaceType) -> std::result::Result<(), String> {
    let host_root = std::fs::metadata("/").map_err(|e| e.to_string())?;
    rustix::thread::move_into_thread_name_spaces(pidfd.as_fd(), spaces)
        .map_err(|e| format!("cannot enter the container's namespaces: {e}"))?;
    if spaces.contains(ThreadNameSpaceType::USER) {
        let root_gid = rustix::fs::Gid::from_raw(0);
        let root_uid = rustix::fs::Uid::from_raw(0);
        rustix::thread::set_thread_res_gid(root_gid, root_gid, root_gid)
            .map_err(|e| format!("cannot become the container's root group: {e}"))?;
        // Refused where the container's setgroups is denied; the groups do not matter then.
        let _ = rustix::thread::set_thread_groups(&[]);
        rustix::thread::set_thread_res_uid(root_uid, root_uid, root_uid)
            .map_err(|e| format!("cannot become the container's root: {e}"))?;
    }
    // Never act on the host's own `/`, whatever the kernel did with the mount namespace.
    let root = std::fs::metadata("/").map_err(|e| e.to_string())?;
    if (root.dev(), root.ino()) == (host_root.dev(), host_root.ino()) {
        return Err("entering the container left / on the host's root".into());
    }
    Ok(())
}

/// Enters the user (if it has its own) and mount namespaces of `pid` after checking it
/// is the container's.
fn enter(pid: u32, cgroup: &str) -> std::result::Result<(), String> {
    let pidfd = open_init(pid, cgroup)?;
    let mut spaces = ThreadNameSpaceType::MOUNT;
    if own_user_namespace(pid)? {
        spaces |= ThreadNameSpaceType::USER;
    }
    move_in(&pidfd, spaces)
}

// ---------------------------------------------------------------------------------------
// The daemon side.
// ---------------------------------------------------------------------------------------

struct Running {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::BufReader<tokio::process::ChildStdout>,
}

impl Helper {
    async fn start(&self, request: &Request) -> Result<Running> {
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(Error::io(format!(
                "starting the file helper {}",
                std::path::Path::new(&self.program).display()
            )))?;
        let missing = || Error::Tool {
            command: "file helper".into(),
            detail: "no pipe".into(),
        };
        let mut stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = tokio::io::BufReader::new(child.stdout.take().ok_or_else(missing)?);
        let mut line = serde_json::to_vec(request).map_err(|e| Error::Tool {
            command: "file helper".into(),
            detail: e.to_string(),
        })?;
        line.push(b'\n');
        stdin
            .write_all(&line)
            .await
            .map_err(Error::io("talking to the file helper"))?;
        Ok(Running { child, stdin, stdout })
    }

    /// One operation without a byte stream.
    pub(crate) async fn fs(&self, pid: u32, cgroup: &str, op: FsOp) -> Result<FsReply> {
        let request = Request {
            pid,
            cgroup: cgroup.into(),
            action: Action::Fs(op),
        };
        let mut running = self.start(&request).await?;
        let reply: std::result::Result<FsReply, FsError> = answer(&mut running.stdout).await?;
        let _ = running.child.wait().await;
        Ok(reply?)
    }

    /// A file's attributes and content.
    pub(crate) async fn read(&self, pid: u32, cgroup: &str, path: &str) -> Result<(FileStat, Reader)> {
        let request = Request {
            pid,
            cgroup: cgroup.into(),
            action: Action::Read { path: path.into() },
        };
        let mut running = self.start(&request).await?;
        let stat: std::result::Result<FileStat, FsError> = answer(&mut running.stdout).await?;
        let stat = stat?;
        drop(running.stdin);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let owned_path = path.to_string();
        tokio::spawn(async move {
            let mut stdout = running.stdout;
            loop {
                let mut buf = vec![0u8; FRAME];
                match stdout.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.send(Ok(buf)).await.is_err() {
                            // The reader was dropped: stop the helper too.
                            let _ = running.child.start_kill();
                            let _ = running.child.wait().await;
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            match running.child.wait().await {
                Ok(status) if status.success() => {}
                _ => {
                    let e = std::io::Error::other(format!(
                        "{owned_path}: the read stopped before the end of the file"
                    ));
                    let _ = tx.send(Err(e)).await;
                }
            }
        });
        Ok((
            stat,
            Box::pin(ChannelReader {
                rx,
                current: Vec::new(),
                pos: 0,
            }),
        ))
    }

    /// Replaces a file with `data`.
    pub(crate) async fn write(
        &self,
        pid: u32,
        cgroup: &str,
        path: &str,
        spec: WriteSpec,
        mut data: Reader,
    ) -> Result<FileStat> {
        let request = Request {
            pid,
            cgroup: cgroup.into(),
            action: Action::Write {
                path: path.into(),
                spec,
            },
        };
        let mut running = self.start(&request).await?;
        let ready: std::result::Result<(), FsError> = answer(&mut running.stdout).await?;
        ready?;
        let mut buf = vec![0u8; FRAME];
        loop {
            let n = match data.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    // Closing the helper's stdin without the final empty frame makes it
                    // drop the temporary file and keep the old one.
                    drop(running.stdin);
                    let _ = tokio::time::timeout(ANSWER, running.child.wait()).await;
                    return Err(Error::io(format!("reading the data for {path}"))(e));
                }
            };
            let len = u32::try_from(n).unwrap_or(0).to_be_bytes();
            if running.stdin.write_all(&len).await.is_err()
                || (n > 0 && running.stdin.write_all(&buf[..n]).await.is_err())
            {
                // The helper stopped: its answer says why.
                break;
            }
            if n == 0 {
                break;
            }
        }
        let _ = running.stdin.flush().await;
        let result: std::result::Result<FileStat, FsError> = answer(&mut running.stdout).await?;
        let _ = running.child.wait().await;
        Ok(result?)
    }
}

impl Helper {
    /// An SFTP server inside the container: the helper has entered it and answered
    /// before this returns; serving splices the connection to its stdin and stdout.
    pub(crate) async fn sftp(&self, pid: u32, cgroup: &str) -> Result<crate::driver::SftpServer> {
        let request = Request {
            pid,
            cgroup: cgroup.into(),
            action: Action::Sftp,
        };
        let mut running = self.start(&request).await?;
        let ready: std::result::Result<(), FsError> = answer(&mut running.stdout).await?;
        ready?;
        Ok(Box::new(move |conn: crate::driver::Conn| {
            Box::pin(splice(running, conn)) as crate::driver::BoxFuture<'static, Result<()>>
        }))
    }
}

/// Copies the client's bytes to the helper and the helper's back until both ends are
/// done. The client's end of file closes the helper's stdin, which ends its loop.
async fn splice(running: Running, conn: crate::driver::Conn) -> Result<()> {
    let Running {
        mut child,
        mut stdin,
        mut stdout,
    } = running;
    let (mut from_client, mut to_client) = tokio::io::split(conn);
    let inbound = async move {
        let r = tokio::io::copy(&mut from_client, &mut stdin).await;
        drop(stdin);
        r
    };
    let outbound = async move {
        let r = tokio::io::copy(&mut stdout, &mut to_client).await;
        let _ = to_client.shutdown().await;
        r
    };
    let (inbound, outbound) = tokio::join!(inbound, outbound);
    // The helper exits once its stdin closed; a stuck one is killed.
    if tokio::time::timeout(ANSWER, child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    inbound.map_err(Error::io("relaying SFTP to the container"))?;
    outbound.map_err(Error::io("relaying SFTP from the container"))?;
    Ok(())
}

/// Reads one reply line, bounded in time and size.
async fn answer<T: for<'de> Deserialize<'de>>(
    stdout: &mut tokio::io::BufReader<tokio::process::ChildStdout>,
) -> Result<std::result::Result<T, FsError>> {
    let mut line = String::new();
    let read = tokio::time::timeout(ANSWER, (&mut *stdout).take(MAX_LINE).read_line(&mut line))
        .await
        .map_err(|_| Error::Timeout {
            what: "the file helper".into(),
            after: ANSWER,
        })?;
    read.map_err(Error::io("reading from the file helper"))?;
    if line.is_empty() {
        return Err(Error::Tool {
            command: "file helper".into(),
            detail: "it exited without an answer".into(),
        });
    }
    serde_json::from_str(&line).map_err(|e| Error::Tool {
        command: "file helper".into(),
        detail: format!("unreadable answer: {e}"),
    })
}

/// An `AsyncRead` over chunks (or an error) sent by a task.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if self.pos < self.current.len() {
                let n = buf.remaining().min(self.current.len() - self.pos);
                let start = self.pos;
                buf.put_slice(&self.current[start..start + n]);
                self.pos += n;
                return Poll::Ready(Ok(()));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_must_be_in_the_containers_cgroup() {
        let text = "4:memory:/stapes-ab/c1/container\n0::/stapes-ab/c1/container/init.scope\n";
        assert!(in_cgroup(text, "stapes-ab/c1/container"));
        assert!(!in_cgroup(text, "stapes-ab/c/container"));
        assert!(!in_cgroup(
            "4:memory:/stapes-ab/c10/container\n",
            "stapes-ab/c1/container"
        ));
        assert!(!in_cgroup("0::/user.slice\n", "stapes-ab/c1/container"));
    }

    #[test]
    fn requests_round_trip() {
        let r = Request {
            pid: 7,
            cgroup: "p/c/container".into(),
            action: Action::Write {
                path: "/root/x".into(),
                spec: WriteSpec {
                    mode: Some(0o600),
                    uid: None,
                    gid: Some(5),
                    append: false,
                },
            },
        };
        let text = serde_json::to_string(&r).unwrap();
        let back: Request = serde_json::from_str(&text).unwrap();
        assert!(
            matches!(back.action, Action::Write { path, spec } if path == "/root/x" && spec.gid == Some(5))
        );
    }
}
