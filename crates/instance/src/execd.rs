//! Non-interactive exec through a helper that stays inside a running container: it has
//! entered the container's namespaces and cgroups once, and each command is a plain
//! child of it, so a command costs a fork and an exec instead of a whole `lxc-attach`
//! (starting the tool, reading the container's config, entering seven namespaces and
//! moving into every cgroup hierarchy, which on cgroup v1 waits for an RCU grace period).
//!
//! ```text
//!  daemon (tokio)                         helper: `stapesd execd`, one per running container
//!  ──────────────                         ───────────────────────────────────────────────
//!  spawn; stdin = a SEQPACKET socket ──>  single-threaded, before any runtime:
//!  Setup {init pid, cgroup}               pidfd of the init; its cgroup is the container's;
//!                                         refuse what lxc-attach would confine further
//!                                         (an LSM label, seccomp or no_new_privs beyond
//!                                         the daemon's, a smaller capability bounding
//!                                         set, no user namespace); join the container's
//!                                         cgroups (v2: their `.lxc` leaf, as lxc-attach
//!                                         does); not dumpable; enter its user,
//!                                         mount, pid, uts, ipc, net and cgroup namespaces;
//!                                         become its root
//!                                  <──    Ready | Unsupported(why) | Failed(why)
//!  per command: Run {command, env,  ──>   the command, a child of the helper: in the
//!   cwd, uid, gid} + fds [reply,          container's pid namespace and cgroups by birth;
//!   stdin, stdout, stderr]                env cleared, uid/gid set, cwd (`/` if missing)
//!                       on `reply`:<──    Taken (before anything starts: without it, nothing ran)
//!                       on `reply`:<──    Started + its pidfd (signals go straight to it)
//!                                         | NotStarted {127 or 126} (message on its stderr)
//!                       on `reply`:<──    Exited {code} (128+n for signal n)
//! ```
//!
//! Interactive commands are not run here: making a terminal the command's controlling
//! terminal needs a `setsid` between fork and exec, which safe Rust cannot do; they, and
//! every container the helper refuses, go through `lxc-attach` as before.
//!
//! **Reach.** The helper lives in the host's pid namespace, so nothing in the container
//! can see, signal or trace it; it is not dumpable, so its `/proc` entries stay closed
//! even to a process that finds it; it holds no file of the host (its `/` and `/proc`
//! are the container's) besides the two sockets to the daemon. What the daemon reads
//! from it is bounded and only ever an exit code.
//!
//! **Lifetime.** The helper ends when the container's init does (after reporting the
//! commands that died with it). When the daemon closes its socket or dies, it takes no
//! new command and ends with the last one it started (each reported on its own socket,
//! which a daemon that stopped the container still reads); a command never depends on
//! the helper to keep running.

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use rustix::process::{Pid, PidfdFlags};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::driver::{Control, ExecSpec, Process, Reader, WindowSize, Writer};
use crate::error::{Error, Result};
use crate::forkfile::Helper;

/// The largest message either side sends: a request with its command and environment.
/// A larger request is not sent: that command goes through `lxc-attach`.
pub const MAX_MESSAGE: usize = 60 * 1024;
/// How long the helper may take to enter the container.
const SETUP_TIME: Duration = Duration::from_secs(10);
/// How long the helper may take to start a command (fork and exec).
const START_TIME: Duration = Duration::from_secs(10);
/// The file descriptors that come with a request: reply socket, stdin, stdout, stderr.
const RUN_FDS: usize = 4;

/// What the daemon sends first: the container to enter.
#[derive(Debug, Serialize, Deserialize)]
struct Setup {
    /// The container's init, as the host sees it.
    pid: u32,
    /// The container's cgroup (`PREFIX/NAME/container`): the init must be in it.
    cgroup: String,
}

/// The helper's answer to [`Setup`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SetupReply {
    Ready,
    /// The container is confined in a way only `lxc-attach` reproduces.
    Unsupported(String),
    Failed(String),
}

/// One command to start.
#[derive(Debug, Serialize, Deserialize)]
struct Run {
    command: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: String,
    uid: u32,
    gid: u32,
}

/// What the helper says about one command, on its own socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RunReply {
    /// The request is in hand (sent before anything is started: a reply socket that
    /// ends without it means nothing ran).
    Taken,
    /// Running; its pidfd comes with this message.
    Started,
    /// Never ran: 127 (not found) or 126 (not executable).
    NotStarted {
        code: i32,
    },
    Exited {
        code: i32,
    },
}

// ---------------------------------------------------------------------------------------
// Messages: one JSON value per SEQPACKET message, file descriptors alongside.
// ---------------------------------------------------------------------------------------

fn send(socket: impl AsFd, value: &impl Serialize, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(std::io::Error::other("message too large"));
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(RUN_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("too many descriptors"));
    }
    let sent = rustix::net::sendmsg(socket, &[IoSlice::new(&bytes)], &mut control, SendFlags::NOSIGNAL)?;
    if sent != bytes.len() {
        return Err(std::io::Error::other("message cut short"));
    }
    Ok(())
}

/// One message and the descriptors that came with it; `None` at end of stream. A message
/// that was cut short (larger than [`MAX_MESSAGE`]) or is not the expected JSON is an error.
fn receive<T: for<'de> Deserialize<'de>>(socket: impl AsFd) -> std::io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut bytes = vec![0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(RUN_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut bytes)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if got.flags.intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC) {
        return Err(std::io::Error::other("message cut short"));
    }
    if got.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    let value = serde_json::from_slice(&bytes[..got.bytes]).map_err(std::io::Error::other)?;
    Ok(Some((value, fds)))
}

// ---------------------------------------------------------------------------------------
// The helper side: synchronous, single-threaded.
// ---------------------------------------------------------------------------------------

/// The helper's `main`: stdin is its socket to the daemon. Call it first thing in
/// `main`, before any thread starts; returns the process exit code.
pub fn main() -> i32 {
    let stdin = std::io::stdin();
    let control = stdin.as_fd();
    let setup = match receive::<Setup>(control) {
        Ok(Some((setup, _))) => setup,
        _ => return 2,
    };
    let init = match enter(setup.pid, &setup.cgroup) {
        Ok(init) => init,
        Err(refusal) => {
            let _ = send(control, &refusal, &[]);
            return 1;
        }
    };
    if send(control, &SetupReply::Ready, &[]).is_err() {
        return 1;
    }
    serve(control, &init);
    0
}

/// Enters the container of init `pid` (see the module's notes); the init's pidfd.
fn enter(pid: u32, cgroup: &str) -> std::result::Result<OwnedFd, SetupReply> {
    let failed = |what: String| SetupReply::Failed(what);
    let unsupported = |what: String| SetupReply::Unsupported(what);
    let pidfd = crate::forkfile::open_init(pid, cgroup).map_err(failed)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| failed(e.to_string()))?;
    let own = std::fs::read_to_string("/proc/self/status").map_err(|e| failed(e.to_string()))?;
    // What the init has beyond what this helper inherited from the daemon (as
    // lxc-attach would have): no_new_privs, or a seccomp filter of LXC's.
    for field in ["NoNewPrivs", "Seccomp", "Seccomp_filters"] {
        if status_field(&status, field) != status_field(&own, field) {
            return Err(unsupported(format!("the container runs with its own {field}")));
        }
    }
    // lxc-attach drops from the bounding set what the container's config drops: a
    // capability this helper has and the init lacks.
    let bounding =
        |status: &str| status_field(status, "CapBnd").and_then(|v| u64::from_str_radix(v, 16).ok());
    match (bounding(&own), bounding(&status)) {
        (Some(own), Some(its)) if own & !its == 0 => {}
        _ => return Err(unsupported("the container drops capabilities".into())),
    }
    // An LSM label (AppArmor's profile) is applied by lxc-attach, not here.
    if let Ok(label) = std::fs::read_to_string(format!("/proc/{pid}/attr/current")) {
        let label = label.trim_end_matches(['\n', '\0']).trim();
        if !label.is_empty() && label != "unconfined" {
            return Err(unsupported(format!(
                "the container is confined by the label {label:?}"
            )));
        }
    }
    if !crate::forkfile::own_user_namespace(pid).map_err(failed)? {
        return Err(unsupported(
            "the container has no user namespace of its own".into(),
        ));
    }
    // The cgroups first: their files are the host's.
    join_cgroups(pid, cgroup).map_err(failed)?;
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| failed(format!("cannot make the helper undumpable: {e}")))?;
    use rustix::thread::ThreadNameSpaceType as Ns;
    let spaces = Ns::USER
        | Ns::MOUNT
        | Ns::PROCESS_ID
        | Ns::HOST_NAME_AND_NIS_DOMAIN_NAME
        | Ns::INTER_PROCESS_COMMUNICATION
        | Ns::NETWORK
        | Ns::CONTROL_GROUP;
    crate::forkfile::move_in(&pidfd, spaces).map_err(failed)?;
    std::env::set_current_dir("/").map_err(|e| failed(e.to_string()))?;
    Ok(pidfd)
}

/// A field of `/proc/PID/status`.
fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// The container's own cgroup directory, from the one its init is in (which may be
/// below it: an init such as systemd moves itself to `init.scope`).
fn container_dir(init_dir: &std::path::Path, cgroup: &str) -> Option<std::path::PathBuf> {
    let wanted = format!("/{}", cgroup.trim_matches('/'));
    let text = init_dir.to_str()?;
    let (at, _) = text
        .match_indices(&wanted)
        .find(|(at, _)| matches!(text.as_bytes().get(at + wanted.len()), None | Some(b'/')))?;
    Some(std::path::PathBuf::from(&text[..at + wanted.len()]))
}

/// Moves this process into the container's cgroup (`cgroup`, where init `pid` is) in
/// every hierarchy, as lxc-attach does (v2: its `.lxc` leaf, made if missing, since a
/// v2 cgroup with controllers for its children takes no process of its own).
fn join_cgroups(pid: u32, cgroup: &str) -> std::result::Result<(), String> {
    let layout = host::cgroup::Layout::read();
    let me = std::process::id().to_string();
    for (hierarchy, init_dir) in layout.dirs_of(pid).dirs {
        let dir = container_dir(&init_dir, cgroup)
            .ok_or_else(|| format!("the init's cgroup {} is not the container's", init_dir.display()))?;
        let dir = match hierarchy.version {
            host::cgroup::Version::V1 => dir,
            host::cgroup::Version::V2 => {
                let leaf = dir.join(".lxc");
                if let Err(e) = std::fs::create_dir(&leaf) {
                    if e.kind() != std::io::ErrorKind::AlreadyExists {
                        return Err(format!("cannot make the cgroup {}: {e}", leaf.display()));
                    }
                }
                leaf
            }
        };
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, &me).map_err(|e| format!("cannot join the cgroup {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// A command the helper started, until it is reported.
struct Running {
    child: std::process::Child,
    pidfd: OwnedFd,
    reply: OwnedFd,
}

/// Starts commands until the daemon's socket ends, and reports each until it ends; leaves
/// once the socket is gone and no command is left, or when the container's init exits.
fn serve(control: BorrowedFd<'_>, init: &OwnedFd) {
    let mut running: Vec<Running> = Vec::new();
    let mut open = true;
    while open || !running.is_empty() {
        // [init, each command..., the daemon's socket while it is open]
        let ready: Vec<bool> = {
            let mut fds = vec![PollFd::new(init, PollFlags::IN)];
            fds.extend(running.iter().map(|r| PollFd::new(&r.pidfd, PollFlags::IN)));
            if open {
                fds.push(PollFd::new(&control, PollFlags::IN));
            }
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return,
            }
            fds.iter().map(|f| !f.revents().is_empty()).collect()
        };
        let request = open && ready[ready.len() - 1];
        // Commands first: those the container's end killed are reported before leaving.
        for i in (0..running.len()).rev() {
            if ready[1 + i] {
                let mut done = running.swap_remove(i);
                let code = match done.child.wait() {
                    Ok(status) => exit_code(status),
                    Err(_) => 1,
                };
                let _ = send(&done.reply, &RunReply::Exited { code }, &[]);
            }
        }
        if ready[0] {
            return;
        }
        if request {
            match receive::<Run>(control) {
                Ok(Some((run, fds))) => {
                    if let Some(started) = start(run, fds) {
                        running.push(started);
                    }
                }
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INTR.raw_os_error()) => {}
                // A malformed request (its descriptors are closed): the daemon's reply
                // socket, if any, ends without an answer.
                Err(e) if e.raw_os_error().is_none() => {}
                // The daemon closed its socket or is gone: no new command.
                Ok(None) | Err(_) => open = false,
            }
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Starts one command; `None` when it did not run (already answered).
fn start(run: Run, fds: Vec<OwnedFd>) -> Option<Running> {
    let Ok::<[OwnedFd; RUN_FDS], _>([reply, stdin, stdout, stderr]) = fds.try_into() else {
        return None;
    };
    if send(&reply, &RunReply::Taken, &[]).is_err() {
        // The daemon gave up on it before it started.
        return None;
    }
    if run.command.is_empty() {
        let _ = send(&reply, &RunReply::NotStarted { code: 127 }, &[]);
        return None;
    }
    // A directory the container lacks (or the user cannot enter) leaves the command in
    // `/`, as Incus does.
    let cwd = if std::path::Path::new(&run.cwd).is_dir() {
        run.cwd.as_str()
    } else {
        "/"
    };
    let mut result = spawn(&run, cwd, &stdin, &stdout, &stderr);
    if cwd != "/"
        && result
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
    {
        result = spawn(&run, "/", &stdin, &stdout, &stderr);
    }
    drop((stdin, stdout));
    match result {
        Ok(child) => {
            let pid = Pid::from_raw(child.id() as i32);
            let pidfd = match pid.map(|p| rustix::process::pidfd_open(p, PidfdFlags::empty())) {
                Some(Ok(fd)) => fd,
                _ => {
                    // Not reachable for a child not yet reaped; report it as it ends.
                    let mut child = child;
                    let code = child.wait().map(exit_code).unwrap_or(1);
                    let _ = send(&reply, &RunReply::Exited { code }, &[]);
                    return None;
                }
            };
            if send(&reply, &RunReply::Started, &[pidfd.as_fd()]).is_err() {
                // The daemon gave up on it: it runs on, unreported.
            }
            Some(Running { child, pidfd, reply })
        }
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            let message = format!("Failed to exec {:?}: {e}\n", run.command[0]);
            let _ = rustix::io::write(&stderr, message.as_bytes());
            let _ = send(&reply, &RunReply::NotStarted { code }, &[]);
            None
        }
    }
}

fn spawn(
    run: &Run,
    cwd: &str,
    stdin: &OwnedFd,
    stdout: &OwnedFd,
    stderr: &OwnedFd,
) -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    std::process::Command::new(&run.command[0])
        .args(&run.command[1..])
        .env_clear()
        .envs(&run.env)
        .current_dir(cwd)
        .uid(run.uid)
        .gid(run.gid)
        .stdin(Stdio::from(stdin.try_clone()?))
        .stdout(Stdio::from(stdout.try_clone()?))
        .stderr(Stdio::from(stderr.try_clone()?))
        .spawn()
}

// ---------------------------------------------------------------------------------------
// The daemon side.
// ---------------------------------------------------------------------------------------

/// Why a container has no helper.
#[derive(Debug)]
pub enum Unavailable {
    /// The helper refused this container: use `lxc-attach` for it while its init lives.
    Unsupported(String),
    /// The helper failed or is gone.
    Failed(String),
}

/// Why a command did not run through the helper.
#[derive(Debug)]
pub enum RunError {
    /// The request never reached the helper (gone, or too large) or it ended before
    /// taking it: nothing ran, the command may go through `lxc-attach` instead.
    NotSent(String),
    /// The request was sent and no answer came: the command may have started, so it is
    /// not tried again.
    Lost(Error),
}

/// A helper inside one running container.
pub struct ExecServer {
    control: AsyncFd<OwnedFd>,
    /// Reaped by tokio once dropped; it ends by itself when `control` closes.
    _child: tokio::process::Child,
}

/// A socket pair; the first is non-blocking and watched by tokio, the second is the
/// other side's.
fn pair() -> std::io::Result<(AsyncFd<OwnedFd>, OwnedFd)> {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let flags = rustix::fs::fcntl_getfl(&ours)?;
    rustix::fs::fcntl_setfl(&ours, flags | rustix::fs::OFlags::NONBLOCK)?;
    // See `pty::Primary::new`: an `OwnedFd` moved into the `AsyncFd` cannot be closed
    // behind its back.
    #[allow(deprecated)]
    let ours = AsyncFd::new(ours)?;
    Ok((ours, theirs))
}

async fn send_async(
    socket: &AsyncFd<OwnedFd>,
    value: &impl Serialize,
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    socket
        .async_io(Interest::WRITABLE, |fd| send(fd, value, fds))
        .await
}

async fn receive_async<T: for<'de> Deserialize<'de>>(
    socket: &AsyncFd<OwnedFd>,
) -> std::io::Result<Option<(T, Vec<OwnedFd>)>> {
    socket.async_io(Interest::READABLE, |fd| receive(fd)).await
}

impl ExecServer {
    /// Starts the helper for the container whose init is `pid` (in `cgroup`).
    pub async fn start(
        helper: &Helper,
        pid: u32,
        cgroup: &str,
    ) -> std::result::Result<ExecServer, Unavailable> {
        let failed = |e: std::io::Error| Unavailable::Failed(format!("the exec helper: {e}"));
        let (control, theirs) = pair().map_err(failed)?;
        let child = tokio::process::Command::new(&helper.program)
            .args(&helper.args)
            .current_dir("/")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(failed)?;
        let setup = Setup {
            pid,
            cgroup: cgroup.to_string(),
        };
        let answer = async {
            send_async(&control, &setup, &[]).await?;
            receive_async::<SetupReply>(&control).await
        };
        match tokio::time::timeout(SETUP_TIME, answer).await {
            Ok(Ok(Some((SetupReply::Ready, _)))) => Ok(ExecServer {
                control,
                _child: child,
            }),
            Ok(Ok(Some((SetupReply::Unsupported(why), _)))) => Err(Unavailable::Unsupported(why)),
            Ok(Ok(Some((SetupReply::Failed(why), _)))) => Err(Unavailable::Failed(why)),
            Ok(Ok(None)) => Err(Unavailable::Failed("the exec helper ended at once".into())),
            Ok(Err(e)) => Err(failed(e)),
            Err(_) => Err(Unavailable::Failed(format!(
                "the exec helper did not start within {SETUP_TIME:?}"
            ))),
        }
    }

    /// Whether the helper is still there (it never writes after setting up: its socket
    /// becomes readable only when it ends).
    pub fn alive(&self) -> bool {
        let mut fds = [PollFd::new(self.control.get_ref(), PollFlags::IN)];
        matches!(
            rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())),
            Ok(0)
        )
    }

    /// Starts `spec` (not interactive) in the directory `cwd`.
    pub async fn run(&self, spec: &ExecSpec, cwd: String) -> std::result::Result<Process, RunError> {
        let failed = |e: std::io::Error| RunError::NotSent(format!("the exec helper: {e}"));
        let lost = |detail: String| {
            RunError::Lost(Error::Tool {
                command: "exec helper".into(),
                detail,
            })
        };
        let run = Run {
            command: spec.command.clone(),
            env: spec.env.clone(),
            cwd,
            uid: spec.uid,
            gid: spec.gid,
        };
        let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| failed(e.into()));
        let (stdin_r, stdin_w) = pipe()?;
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        let (reply, theirs) = pair().map_err(failed)?;
        let fds = [
            theirs.as_fd(),
            stdin_r.as_fd(),
            stdout_w.as_fd(),
            stderr_w.as_fd(),
        ];
        send_async(&self.control, &run, &fds).await.map_err(failed)?;
        // Only the command holds its ends now: its end of output is the pipes' end.
        drop((theirs, stdin_r, stdout_w, stderr_w));
        let answer = || async {
            tokio::time::timeout(START_TIME, receive_async::<RunReply>(&reply))
                .await
                .map_err(|_| format!("the command was not started within {START_TIME:?}"))?
                .map_err(|e| format!("no answer about the command: {e}"))
        };
        // Without `Taken`, the helper never had the request (it died with it unread).
        match answer().await {
            Ok(Some((RunReply::Taken, _))) => {}
            Ok(None) => return Err(RunError::NotSent("the exec helper ended".into())),
            Ok(Some((other, _))) => return Err(lost(format!("it answered {other:?} to a new command"))),
            Err(e) => return Err(lost(e)),
        }
        let first = answer().await.map_err(lost)?;
        let (pidfd, exit): (Option<OwnedFd>, Option<i32>) = match first {
            Some((RunReply::Started, mut fds)) if fds.len() == 1 => (fds.pop(), None),
            Some((RunReply::NotStarted { code }, _)) => (None, Some(code)),
            other => return Err(lost(format!("it answered {other:?} to a new command"))),
        };
        let io = |e: std::io::Error| lost(format!("the command's pipes: {e}"));
        let stdin = tokio::net::unix::pipe::Sender::from_owned_fd(stdin_w).map_err(io)?;
        let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(stdout_r).map_err(io)?;
        let stderr = tokio::net::unix::pipe::Receiver::from_owned_fd(stderr_r).map_err(io)?;
        let exit = async move {
            if let Some(code) = exit {
                return Ok(code);
            }
            match receive_async::<RunReply>(&reply).await {
                Ok(Some((RunReply::Exited { code }, _))) => Ok(code),
                Ok(_) | Err(_) => Err(Error::Tool {
                    command: "exec helper".into(),
                    detail: "it ended before the command did".into(),
                }),
            }
        };
        Ok(Process {
            stdin: Box::pin(stdin) as Writer,
            stdout: Box::pin(stdout) as Reader,
            stderr: Some(Box::pin(stderr) as Reader),
            control: Arc::new(Signaller { pidfd }),
            exit: Box::pin(exit),
        })
    }
}

/// Signals go straight to the command, through its pidfd.
struct Signaller {
    pidfd: Option<OwnedFd>,
}

impl Control for Signaller {
    fn resize(&self, _size: WindowSize) -> Result<()> {
        Ok(())
    }

    fn signal(&self, signal: i32) -> Result<()> {
        let sig = crate::driver::host_signal(signal)?;
        let Some(pidfd) = &self.pidfd else {
            return Ok(());
        };
        match rustix::process::pidfd_send_signal(pidfd, sig) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(Error::io("signalling the command")(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_by_name() {
        let status = "Name:\tinit\nNoNewPrivs:\t0\nSeccomp:\t2\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(status_field(status, "Seccomp"), Some("2"));
        assert_eq!(status_field(status, "NoNewPrivs"), Some("0"));
        assert_eq!(status_field(status, "CapBnd"), Some("000001ffffffffff"));
        assert_eq!(status_field(status, "Seccomp_filters"), None);
    }

    #[test]
    fn the_containers_cgroup_is_found_above_the_inits() {
        let dir = |s: &str| std::path::PathBuf::from(s);
        let cg = "stapes-0123/c1/container";
        assert_eq!(
            container_dir(&dir("/sys/fs/cgroup/memory/stapes-0123/c1/container"), cg),
            Some(dir("/sys/fs/cgroup/memory/stapes-0123/c1/container"))
        );
        assert_eq!(
            container_dir(&dir("/sys/fs/cgroup/stapes-0123/c1/container/init.scope"), cg),
            Some(dir("/sys/fs/cgroup/stapes-0123/c1/container"))
        );
        // Another container whose name starts the same, and a cgroup elsewhere: none.
        assert_eq!(
            container_dir(&dir("/sys/fs/cgroup/stapes-0123/c1/container2"), cg),
            None
        );
        assert_eq!(container_dir(&dir("/sys/fs/cgroup/system.slice"), cg), None);
    }

    #[test]
    fn messages_carry_descriptors_and_refuse_what_is_cut_short() {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        send(&a, &RunReply::Exited { code: 3 }, &[w.as_fd()]).unwrap();
        drop(w);
        let (reply, fds) = receive::<RunReply>(&b).unwrap().unwrap();
        assert!(matches!(reply, RunReply::Exited { code: 3 }));
        assert_eq!(fds.len(), 1);
        rustix::io::write(&fds[0], b"x").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(rustix::io::read(&r, &mut buf).unwrap(), 1);
        // Over the bound: refused before sending.
        let big = "x".repeat(MAX_MESSAGE);
        assert!(send(&a, &big, &[]).is_err());
        // Not the expected value: an error, not a panic.
        send(&a, &"hello", &[]).unwrap();
        assert!(receive::<RunReply>(&b).is_err());
        // The other side gone: end of stream.
        drop(a);
        assert!(receive::<RunReply>(&b).unwrap().is_none());
    }
}
