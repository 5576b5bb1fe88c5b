//! Exec through `lxc-attach`, with the three catches of Debian's tool (lxc 5.0.2) handled:
//!
//! - **A terminal must be lxc-attach's controlling terminal**, or it hangs. Interactive
//!   commands run as `setsid --ctty --wait lxc-attach ...` with the secondary side of a
//!   host pseudo-terminal as stdin/stdout/stderr; lxc-attach then makes a terminal inside
//!   the container and relays it, and a resize of ours reaches it as SIGWINCH.
//!   Non-interactive commands get three pipes and never a terminal (lxc-attach switches
//!   to terminal mode if any of its fds is one).
//! - **lxc-attach does not forward signals.** The attached command is a direct child of
//!   lxc-attach (LXC clones it with `CLONE_PARENT`), so a signal is sent to the children
//!   listed in `/proc/<lxc-attach>/task/*/children` that are in the container's PID
//!   namespace (not lxc-attach's own helper child, still on the host's).
//! - **lxc-attach has no working-directory option**: the command starts in the path of
//!   lxc-attach's own working directory on the host, if the container has it. So
//!   lxc-attach is started in the wanted directory when the host has that exact path;
//!   otherwise the command is wrapped in `/bin/sh -c 'cd -- "$1"; shift; exec "$@"'`
//!   inside. Either way a directory the container lacks leaves the command in `/`, as
//!   Incus does.
//!
//! The environment is cleared (`--clear-env`) and set from the request only.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rustix::process::{Pid, Signal};

use crate::driver::{Control, ExecSpec, Process, Reader, WindowSize, Writer};
use crate::error::{Error, Result};
use crate::lxc::{pty, tools};

/// How long a signal waits for lxc-attach to have started the command.
const SIGNAL_WAIT: Duration = Duration::from_secs(5);

/// The working directory the command should start in.
pub(crate) fn wanted_cwd(spec: &ExecSpec) -> String {
    let cwd = spec
        .cwd
        .clone()
        .filter(|c| !c.is_empty())
        .or_else(|| spec.env.get("HOME").cloned())
        .unwrap_or_else(|| "/".into());
    if cwd.starts_with('/') {
        cwd
    } else {
        format!("/{cwd}")
    }
}

/// How the working directory is reached: lxc-attach's own directory on the host, and
/// whether the command is wrapped to `cd` inside.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CwdPlan {
    pub host_dir: String,
    pub wrap: bool,
}

/// lxc-attach passes on its working directory as a *string*, so the host directory works
/// only when it is that exact path (no link on the way, which `getcwd` would resolve).
pub(crate) fn plan_cwd(wanted: &str, host_canonical: Option<&Path>) -> CwdPlan {
    match host_canonical {
        Some(p) if p == Path::new(wanted) => CwdPlan {
            host_dir: wanted.to_string(),
            wrap: false,
        },
        _ => CwdPlan {
            host_dir: "/".into(),
            wrap: wanted != "/",
        },
    }
}

/// `lxc-attach`'s arguments (after the program name).
pub(crate) fn attach_args(
    name: &str,
    lxcpath: &Path,
    env: &BTreeMap<String, String>,
    uid: u32,
    gid: u32,
    cwd_wrap: Option<&str>,
    command: &[String],
) -> Vec<String> {
    let mut args = vec![
        "-n".to_string(),
        name.to_string(),
        "-P".to_string(),
        lxcpath.display().to_string(),
        "--clear-env".to_string(),
    ];
    for (k, v) in env {
        args.push("-v".into());
        args.push(format!("{k}={v}"));
    }
    args.extend([
        "-u".into(),
        uid.to_string(),
        "-g".into(),
        gid.to_string(),
        "--".into(),
    ]);
    if let Some(dir) = cwd_wrap {
        args.extend([
            "/bin/sh".to_string(),
            "-c".to_string(),
            "cd -- \"$1\" 2>/dev/null; shift; exec \"$@\"".to_string(),
            "sh".to_string(),
            dir.to_string(),
        ]);
    }
    args.extend(command.iter().cloned());
    args
}

/// Refuses a request no runtime can start: no command, or a variable name that cannot be.
pub(crate) fn check(spec: &ExecSpec) -> Result<()> {
    if spec.command.is_empty() {
        return Err(Error::InvalidConfig {
            key: "command".into(),
            value: String::new(),
            reason: "a command is needed".into(),
        });
    }
    if spec.env.keys().any(|k| k.is_empty() || k.contains('=')) {
        return Err(Error::InvalidConfig {
            key: "environment".into(),
            value: String::new(),
            reason: "variable names cannot be empty or hold '='".into(),
        });
    }
    Ok(())
}

/// Starts `spec` in container `name` of `lxcpath`.
pub(crate) async fn spawn(name: &str, lxcpath: &Path, spec: ExecSpec) -> Result<Process> {
    check(&spec)?;
    let wanted = wanted_cwd(&spec);
    let probe = wanted.clone();
    let canonical =
        tokio::task::spawn_blocking(move || std::fs::canonicalize(&probe).ok().filter(|p| p.is_dir()))
            .await
            .ok()
            .flatten();
    let plan = plan_cwd(&wanted, canonical.as_deref());
    let args = attach_args(
        name,
        lxcpath,
        &spec.env,
        spec.uid,
        spec.gid,
        plan.wrap.then_some(wanted.as_str()),
        &spec.command,
    );
    match spec.tty {
        None => spawn_pipes(&args, &plan.host_dir).await,
        Some(size) => spawn_terminal(&args, &plan.host_dir, size).await,
    }
}

fn spawn_error(program: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Unsupported(format!(
            "{program} is not installed: the lxc driver needs Debian's lxc package"
        )),
        _ => Error::io(format!("starting {program}"))(e),
    }
}

async fn spawn_pipes(args: &[String], cwd: &str) -> Result<Process> {
    let mut child = tools::command(&[], "lxc-attach")?
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error("lxc-attach"))?;
    let pid = child.id().ok_or_else(|| Error::Tool {
        command: "lxc-attach".into(),
        detail: "exited before it could be watched".into(),
    })?;
    let missing = || Error::Tool {
        command: "lxc-attach".into(),
        detail: "no pipe".into(),
    };
    let stdin = child.stdin.take().ok_or_else(missing)?;
    let stdout = child.stdout.take().ok_or_else(missing)?;
    let stderr = child.stderr.take().ok_or_else(missing)?;
    Ok(Process {
        stdin: Box::pin(stdin) as Writer,
        stdout: Box::pin(stdout) as Reader,
        stderr: Some(Box::pin(stderr) as Reader),
        control: Arc::new(AttachControl { pid, primary: None }),
        exit: Box::pin(async move { wait(child).await }),
    })
}

/// A tool run as `setsid --ctty --wait TOOL ARGS` on a new host terminal of `size`,
/// which is its controlling terminal (a resize reaches it as SIGWINCH).
struct OnTerminal {
    child: tokio::process::Child,
    pid: u32,
    /// The primary side, for resizes.
    primary: OwnedFd,
    read: Reader,
    write: Writer,
}

fn spawn_on_terminal(program: &str, args: &[String], cwd: &str, size: WindowSize) -> Result<OnTerminal> {
    let (primary, secondary) = pty::open(size).map_err(Error::io("opening a terminal"))?;
    let stdio = |fd: &OwnedFd| -> Result<Stdio> {
        Ok(Stdio::from(
            fd.try_clone().map_err(Error::io("opening a terminal"))?,
        ))
    };
    let child = tools::command(&["setsid", "--ctty", "--wait"], program)?
        .args(args)
        .current_dir(cwd)
        .stdin(stdio(&secondary)?)
        .stdout(stdio(&secondary)?)
        .stderr(stdio(&secondary)?)
        .spawn()
        .map_err(spawn_error(program))?;
    // Only the child holds the secondary side now: when it is done, reads end.
    drop(secondary);
    let pid = child.id().ok_or_else(|| Error::Tool {
        command: program.into(),
        detail: "exited before it could be watched".into(),
    })?;
    let control_fd = primary.try_clone().map_err(Error::io("opening a terminal"))?;
    let stream = pty::Primary::new(primary).map_err(Error::io("opening a terminal"))?;
    let (read, write) = tokio::io::split(stream);
    Ok(OnTerminal {
        child,
        pid,
        primary: control_fd,
        read: Box::pin(read),
        write: Box::pin(write),
    })
}

async fn spawn_terminal(args: &[String], cwd: &str, size: WindowSize) -> Result<Process> {
    let t = spawn_on_terminal("lxc-attach", args, cwd, size)?;
    let child = t.child;
    Ok(Process {
        stdin: t.write,
        stdout: t.read,
        stderr: None,
        control: Arc::new(AttachControl {
            pid: t.pid,
            primary: Some(t.primary),
        }),
        exit: Box::pin(async move { wait(child).await }),
    })
}

/// `lxc-console`'s arguments: the console itself (`-t 0`; the container has no other
/// terminals), with the escape key turned off (`^@` gives LXC a negative escape code):
/// clients detach on their own, as Incus's do, and every byte typed reaches the console.
pub(crate) fn console_args(name: &str, lxcpath: &Path) -> Vec<String> {
    vec![
        "-n".into(),
        name.into(),
        "-P".into(),
        lxcpath.display().to_string(),
        "-t".into(),
        "0".into(),
        "-e".into(),
        "^@".into(),
    ]
}

/// Attaches to container `name`'s console with `lxc-console` on a host terminal that is
/// its controlling terminal, so a resize reaches it as SIGWINCH and it resizes the
/// console in turn. Detaching ends lxc-console only; the console stays the container's.
pub(crate) async fn spawn_console(name: &str, lxcpath: &Path, size: WindowSize) -> Result<Process> {
    let t = spawn_on_terminal("lxc-console", &console_args(name, lxcpath), "/", size)?;
    // `setsid` execs in place: the pid is lxc-console's, held as a pidfd so a
    // detach never signals a reused pid.
    let pid = Pid::from_raw(t.pid as i32).ok_or_else(|| Error::Tool {
        command: "lxc-console".into(),
        detail: "exited before it could be watched".into(),
    })?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .map_err(|e| Error::io("watching lxc-console")(e.into()))?;
    let child = t.child;
    Ok(Process {
        stdin: t.write,
        stdout: t.read,
        stderr: None,
        control: Arc::new(ConsoleControl {
            pidfd,
            primary: t.primary,
        }),
        exit: Box::pin(async move { wait(child).await }),
    })
}

/// A console attachment: resizes its terminal; any signal ends lxc-console (a detach).
struct ConsoleControl {
    pidfd: OwnedFd,
    primary: OwnedFd,
}

impl Control for ConsoleControl {
    fn resize(&self, size: WindowSize) -> Result<()> {
        pty::resize(&self.primary, size).map_err(Error::io("resizing the terminal"))
    }

    fn signal(&self, _signal: i32) -> Result<()> {
        match rustix::process::pidfd_send_signal(&self.pidfd, Signal::KILL) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(Error::io("detaching from the console")(e.into())),
        }
    }
}

/// The command's exit code: lxc-attach exits with it (128+n for a signal); a signal that
/// killed lxc-attach itself counts the same way.
async fn wait(mut child: tokio::process::Child) -> Result<i32> {
    use std::os::unix::process::ExitStatusExt;
    let status = child.wait().await.map_err(Error::io("waiting for lxc-attach"))?;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1))
}

struct AttachControl {
    /// `lxc-attach`, or `setsid` in front of it (which execs it in place).
    pid: u32,
    primary: Option<OwnedFd>,
}

impl Control for AttachControl {
    fn resize(&self, size: WindowSize) -> Result<()> {
        match &self.primary {
            Some(fd) => pty::resize(fd, size).map_err(Error::io("resizing the terminal")),
            None => Ok(()),
        }
    }

    fn signal(&self, signal: i32) -> Result<()> {
        let sig = crate::driver::host_signal(signal)?;
        if deliver(self.pid, sig) {
            return Ok(());
        }
        // lxc-attach may not have started the command yet: keep looking for a while.
        let pid = self.pid;
        tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + SIGNAL_WAIT;
            while std::time::Instant::now() < deadline && alive(pid) {
                if deliver(pid, sig) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Ok(())
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The children of `pid`, from every thread's `children` list.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let text = host::read::read_trimmed(&task.path().join("children")).unwrap_or_default();
        out.extend(text.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    out
}

/// The PID namespace a process is in (device and inode of its `ns/pid`).
fn pid_namespace(pid: u32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

fn comm(pid: u32) -> String {
    host::read::read_trimmed(Path::new(&format!("/proc/{pid}/comm"))).unwrap_or_default()
}

/// Sends `sig` to the command lxc-attach runs; whether one was found.
fn deliver(pid: u32, sig: Signal) -> bool {
    // `setsid` execs lxc-attach in place unless it had to fork to leave a process group.
    let attach = if comm(pid) == "setsid" {
        match children(pid).first() {
            Some(c) => *c,
            None => return false,
        }
    } else {
        pid
    };
    // While attaching, lxc-attach has a child of its own that enters the namespaces: a
    // signal there would break the attach, not reach the command. That child stays in
    // the host's PID namespace; the command is created inside the container's.
    let Some(host_ns) = pid_namespace(attach) else {
        return false;
    };
    let targets: Vec<u32> = children(attach)
        .into_iter()
        .filter(|c| pid_namespace(*c).is_some_and(|ns| ns != host_ns))
        .collect();
    let mut sent = false;
    for child in targets {
        // Through a pidfd, and only while it is still lxc-attach's child: a pid that was
        // reused meanwhile is left alone.
        let Some(pid) = Pid::from_raw(child as i32) else {
            continue;
        };
        let Ok(pidfd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else {
            continue;
        };
        if !children(attach).contains(&child) {
            continue;
        }
        if rustix::process::pidfd_send_signal(&pidfd, sig).is_ok() {
            sent = true;
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cwd_plans() {
        assert_eq!(
            plan_cwd("/root", Some(Path::new("/root"))),
            CwdPlan {
                host_dir: "/root".into(),
                wrap: false
            }
        );
        // /bin is a link to usr/bin on a merged-/usr host: getcwd would say /usr/bin.
        assert_eq!(
            plan_cwd("/bin", Some(Path::new("/usr/bin"))),
            CwdPlan {
                host_dir: "/".into(),
                wrap: true
            }
        );
        assert_eq!(
            plan_cwd("/srv/only-inside", None),
            CwdPlan {
                host_dir: "/".into(),
                wrap: true
            }
        );
        assert_eq!(
            plan_cwd("/", Some(Path::new("/"))),
            CwdPlan {
                host_dir: "/".into(),
                wrap: false
            }
        );
    }

    #[test]
    fn default_cwd_is_home_then_root() {
        let mut spec = ExecSpec {
            command: vec!["true".into()],
            env: BTreeMap::new(),
            cwd: None,
            uid: 0,
            gid: 0,
            tty: None,
        };
        assert_eq!(wanted_cwd(&spec), "/");
        spec.env.insert("HOME".into(), "/root".into());
        assert_eq!(wanted_cwd(&spec), "/root");
        spec.cwd = Some("tmp".into());
        assert_eq!(wanted_cwd(&spec), "/tmp");
    }

    #[test]
    fn attach_arguments() {
        let env: BTreeMap<String, String> = [("PATH".to_string(), "/bin".to_string())].into();
        let cmd = vec!["pwd".to_string()];
        assert_eq!(
            attach_args("c1", Path::new("/p"), &env, 1000, 1000, None, &cmd),
            [
                "-n",
                "c1",
                "-P",
                "/p",
                "--clear-env",
                "-v",
                "PATH=/bin",
                "-u",
                "1000",
                "-g",
                "1000",
                "--",
                "pwd"
            ]
        );
        let wrapped = attach_args("c1", Path::new("/p"), &env, 0, 0, Some("/srv/x"), &cmd);
        let tail: Vec<&str> = wrapped[wrapped.len() - 6..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "/bin/sh",
                "-c",
                "cd -- \"$1\" 2>/dev/null; shift; exec \"$@\"",
                "sh",
                "/srv/x",
                "pwd"
            ]
        );
    }
}
