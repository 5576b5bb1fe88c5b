//! The processes the benchmark starts, and what it reads about them and the machine.
//!
//! A daemon is started in a process group of its own, so a ^C at the terminal reaches
//! only the benchmark, which then stops each daemon itself. It is signalled by its PID
//! only, and only while the benchmark still holds the unreaped child: until it is
//! reaped the PID cannot belong to anyone else. Every wait is bounded.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a daemon gets to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A daemon this program started.
pub struct Daemon {
    child: tokio::process::Child,
    pid: i32,
    pub log: PathBuf,
}

/// VmRSS and VmHWM of a process, in kB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Memory {
    pub rss_kb: f64,
    pub hwm_kb: f64,
}

impl Daemon {
    /// Starts `cmd` in its own process group, stdout and stderr appended to `log`.
    pub fn spawn(mut cmd: tokio::process::Command, log: &Path) -> anyhow::Result<Daemon> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.as_std().get_program()))?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .context("a started child has a PID")?;
        Ok(Daemon {
            child,
            pid,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether it still runs (a zombie counts as gone).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `sig`, if the child has not been reaped (so the PID is still ours).
    pub fn signal(&self, sig: Signal) {
        if self.child.id().is_some() {
            let _ = kill(Pid::from_raw(self.pid), sig);
        }
    }

    /// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]; returns once it is reaped.
    pub async fn stop(mut self) {
        self.signal(Signal::SIGCONT);
        self.signal(Signal::SIGTERM);
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "[bench] pid {} still running {STOP_TIMEOUT:?} after SIGTERM: sending SIGKILL",
                self.pid
            );
            self.kill9().await;
        }
    }

    /// SIGKILL; returns once it is reaped.
    pub async fn kill9(mut self) {
        self.signal(Signal::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    /// Memory as the kernel reports it now.
    pub fn memory(&self) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        Some(Memory {
            rss_kb: status_kb(&status, "VmRSS")?,
            hwm_kb: status_kb(&status, "VmHWM")?,
        })
    }

    /// The executable it runs, as the kernel sees it.
    pub fn exe(&self) -> Option<PathBuf> {
        std::fs::read_link(format!("/proc/{}/exe", self.pid)).ok()
    }
}

/// A `kB` field of `/proc/PID/status`.
pub fn status_kb(status: &str, field: &str) -> Option<f64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The first line of `/proc/stat` as (busy, idle) jiffies: idle is idle plus iowait.
pub fn cpu_times(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if v.len() < 8 {
        return None;
    }
    // user nice system idle iowait irq softirq steal
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Some((busy, v[3] + v[4]))
}

/// Percent of the whole machine's CPU time that was not idle over `secs`.
pub async fn cpu_busy(secs: u64) -> f64 {
    let read = || {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| cpu_times(&s))
    };
    let a = read();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    match (a, read()) {
        (Some((b0, i0)), Some((b1, i1))) => {
            let busy = b1.saturating_sub(b0) as f64;
            let all = busy + i1.saturating_sub(i0) as f64;
            if all > 0.0 {
                100.0 * busy / all
            } else {
                0.0
            }
        }
        _ => f64::NAN,
    }
}

/// Whether something answers TCP at `addr` (bounded to 1 s).
pub async fn port_busy(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// A program on PATH (and in /usr/sbin, /sbin, where Debian puts daemons' tools).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The first line `program arg` prints (a version), or `?`.
pub fn version_of(program: &Path, arg: &str) -> String {
    std::process::Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines().next().map(|l| l.trim().to_string())
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "?".into())
}

/// Mount points at or below `dir` in `/proc/mounts` text, deepest first.
pub fn mounts_under(mounts: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by(|a, b| b.cmp(a));
    found.dedup();
    found
}

/// Lazily unmounts whatever a daemon (Incus) left mounted under `dir`.
pub async fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for m in mounts_under(&mounts, dir) {
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::process::Command::new("umount")
                .arg("-l")
                .arg(&m)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status(),
        )
        .await;
    }
}

/// Kills, through LXC, every container a member under `dir` left running: Incus keeps
/// them under `<member>/containers`, stapesd under `<member>/lxc`. Containers outlive
/// their daemon, so this runs after the daemons are stopped.
pub async fn stop_containers_under(dir: &Path) {
    if find_tool("lxc-stop").is_none() {
        return;
    }
    for member in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for sub in ["containers", "lxc"] {
            let lxcpath = member.path().join(sub);
            for c in std::fs::read_dir(&lxcpath).into_iter().flatten().flatten() {
                let _ = tokio::time::timeout(
                    Duration::from_secs(30),
                    tokio::process::Command::new("lxc-stop")
                        .arg("-k")
                        .arg("-P")
                        .arg(&lxcpath)
                        .arg("-n")
                        .arg(c.file_name())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status(),
                )
                .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_status_fields_in_kb() {
        let status = "Name:\tstapesd\nVmHWM:\t   17536 kB\nVmRSS:\t   17100 kB\nThreads:\t3\n";
        assert_eq!(status_kb(status, "VmRSS"), Some(17100.0));
        assert_eq!(status_kb(status, "VmHWM"), Some(17536.0));
        assert_eq!(status_kb(status, "VmSwap"), None);
    }

    #[test]
    fn t10_cpu_times() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(cpu_times(stat), Some((161, 1020)));
        assert_eq!(cpu_times("intr 1 2 3\n"), None);
    }

    #[test]
    fn t10_mounts_under_a_directory_deepest_first() {
        let mounts = "proc /proc proc rw 0 0\n\
            tmpfs /tmp/stapes-bench.x/incus/shmounts tmpfs rw 0 0\n\
            tmpfs /tmp/stapes-bench.x/incus/shmounts/a\\040b tmpfs rw 0 0\n\
            tmpfs /tmp/stapes-bench.xy tmpfs rw 0 0\n";
        let found = mounts_under(mounts, Path::new("/tmp/stapes-bench.x"));
        assert_eq!(
            found,
            [
                PathBuf::from("/tmp/stapes-bench.x/incus/shmounts/a b"),
                PathBuf::from("/tmp/stapes-bench.x/incus/shmounts"),
            ]
        );
    }
}
