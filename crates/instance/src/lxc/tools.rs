//! Running Debian's `lxc-*` tools: each run bounded in time, its stderr kept for the
//! error.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::driver::Status;
use crate::error::{Error, Result};

/// How long a quick tool (`lxc-freeze`, `lxc-stop -k`) may take.
pub const QUICK: Duration = Duration::from_secs(30);
/// The most of a tool's output kept.
const MAX_OUTPUT: usize = 64 * 1024;

/// A container's status and init pid (what `lxc-info -s -p` would say), from its
/// monitor ([`super::command`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub status: Status,
    pub pid: Option<u32>,
}

/// A command that runs `before..` (e.g. `setsid --ctty --wait`), then `program` (found
/// on `PATH`, so that a missing tool is named even behind `setsid`).
///
/// Nothing stands between the daemon and the tool to reset signal dispositions: the
/// daemon catches at start whatever it was started ignoring ([`crate::signals`]), so
/// the tool, and the container's processes after it, start with every signal at its
/// default (^C typed in `exec` reaches the command even under `nohup` or `&`).
pub fn command(before: &[&str], program: &str) -> Result<tokio::process::Command> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "{program} is not installed: the lxc driver needs Debian's lxc package"
            ))
        })?;
    let command = match before.split_first() {
        Some((first, rest)) => {
            let mut c = tokio::process::Command::new(first);
            c.args(rest).arg(found);
            c
        }
        None => tokio::process::Command::new(found),
    };
    Ok(command)
}

/// Runs `program args` (no stdin), at most `limit`; stdout on success, else an error
/// with stderr.
pub async fn run<I, S>(program: &str, args: I, limit: Duration) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let child = command(&[], program)?
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(limit, child)
        .await
        .map_err(|_| Error::Timeout {
            what: program.to_string(),
            after: limit,
        })?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Unsupported(format!(
                "{program} is not installed: the lxc driver needs Debian's lxc package"
            )),
            _ => Error::io(format!("running {program}"))(e),
        })?;
    let text = |b: &[u8]| {
        String::from_utf8_lossy(&b[..b.len().min(MAX_OUTPUT)])
            .trim()
            .to_string()
    };
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(Error::Tool {
            command: program.to_string(),
            detail: text(&out.stderr),
        })
    }
}

/// The last lines of a container's `lxc.log` at error level, for a failed start.
pub fn log_errors(log: &Path) -> String {
    let text = host::read::read_bounded(log, 1 << 20).unwrap_or_default();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains(" ERROR ")).collect();
    let start = errors.len().saturating_sub(5);
    errors[start..].join("\n")
}
