//! The driver over Debian's LXC tools (`lxc-start`, `lxc-stop`,
//! `lxc-attach`, `lxc-freeze`, `lxc-unfreeze`), the only code in stapes that runs them.
//!
//! ```text
//!  LXCPATH (the member's, `-P`)            cgroup hierarchies (v1 each, or v2)
//!  └── NAME/                               └── <base>/<prefix>/NAME/
//!      ├── config     written by us            ├── container/   processes, limits
//!      ├── stapes.json  rootfs, privileged,    ├── monitor/     lxc-start's monitor
//!      │               limits                  └── lxc.pivot/   monitor at stop
//!      ├── lxc.log
//!      └── console.log
//! ```
//!
//! Why the tools and not liblxc: the tools are Debian's own, start a container in ~40 ms
//! and attach in ~15 ms here, and give exact exit codes and separate streams; a liblxc
//! binding needs bindgen and clang at build time, unsafe FFI in our crates, and helper
//! processes anyway (liblxc forks, which a threaded daemon must not do). See
//! ARCHITECTURE.md.
//!
//! `lxc-start -d` leaves a monitor process of LXC's own per container, so containers
//! outlive the daemon; a restarted daemon finds them with [`Driver::list`]. State figures
//! come from that monitor's command socket (status, init pid: what `lxc-info` asks, see
//! [`command`]) and the init's cgroups (`host::cgroup`, v1 or v2). File access goes
//! through the container's root file system when it is stopped and through the
//! `forkfile` helper when it runs. A non-interactive exec goes through the container's
//! exec helper ([`crate::execd`], started at its first exec and kept while the container
//! runs), or through `lxc-attach` where that helper refuses the container.

mod command;
mod config;
mod exec;
mod pty;
mod tools;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use host::cgroup::Layout;
use serde::{Deserialize, Serialize};

use crate::driver::{
    BoxFuture, CpuLimit, CreateSpec, Driver, ExecSpec, Limits, Listed, Log, Process, Reader, State, Status,
    Stop, WindowSize,
};
use crate::error::{Error, Result};
use crate::execd::{ExecServer, RunError, Unavailable};
use crate::forkfile::Helper;
use crate::fs::{FileStat, FsOp, FsReply, WriteSpec};
use crate::{store, validate_name};

pub use config::{IDMAP_BASE, IDMAP_RANGE};

/// How long `lxc-start` may take to report the container running.
const START: Duration = Duration::from_secs(60);
/// Added to a clean stop's own timeout for `lxc-stop` to return.
const STOP_MARGIN: Duration = Duration::from_secs(30);
/// How long LXC's monitor may take to exit once its container stopped.
const MONITOR_EXIT: Duration = Duration::from_secs(5);
/// How long a cgroup may stay busy after its container stopped.
const CGROUP_BUSY: Duration = Duration::from_secs(10);

/// What the driver keeps of a container besides LXC's config.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    rootfs: PathBuf,
    privileged: bool,
    limits: Limits,
}

/// Where the driver keeps things and how it reaches the file helper.
#[derive(Debug, Clone)]
pub struct LxcOptions {
    /// The LXC path (`-P`): one directory per container.
    pub dir: PathBuf,
    /// The program that runs [`crate::forkfile::main`] (`stapesd forkfile`).
    pub helper: Helper,
    /// The program that runs [`crate::execd::main`] (`stapesd execd`); `None`: every
    /// exec goes through `lxc-attach`.
    pub execd: Option<Helper>,
    /// Where lxcfs is mounted ([`DEFAULT_LXCFS`] by Debian's `lxcfs` service). When it
    /// runs there, a container started sees its own limits in `/proc/meminfo`,
    /// `/proc/cpuinfo` and the rest of what lxcfs offers; without it, the host's.
    pub lxcfs: PathBuf,
}

/// Where Debian's `lxcfs` service mounts lxcfs.
pub const DEFAULT_LXCFS: &str = "/var/lib/lxcfs";

/// The driver over Debian's LXC tools.
pub struct LxcDriver {
    dir: PathBuf,
    prefix: String,
    helper: Helper,
    execd: Option<Helper>,
    /// Each running container's exec helper, or why it has none (until its init changes);
    /// one lock per container, held while its helper starts.
    exec_servers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<ExecSlot>>>>>,
    lxcfs: PathBuf,
    layout: Layout,
    /// One lock per container: its state changes run one at a time.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A container's exec helper, or the init it refused (that container uses `lxc-attach`).
enum ExecSlot {
    Ready(Arc<ExecServer>),
    Refused { init: u32 },
}

/// The per-member cgroup directory name: `stapes-` and 16 hex digits of a hash (64-bit
/// FNV-1a) of the LXC path. The same directory gives the same prefix after a restart;
/// two members on one host have two LXC paths (their state directories are locked), and
/// nothing else on the host names a cgroup `stapes-…` (Incus and LXC use `lxc.payload.*`).
pub fn cgroup_prefix(lxcpath: &Path) -> String {
    format!("stapes-{:016x}", fnv1a(lxcpath.as_os_str().as_encoded_bytes()))
}

/// 64-bit FNV-1a, as LXC hashes long socket names (`fnv_64a_buf`).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Whether the kernel has AppArmor enabled.
fn apparmor_enabled() -> bool {
    host::read::read_trimmed(Path::new("/sys/module/apparmor/parameters/enabled")).as_deref() == Some("Y")
}

/// LXC's name for this machine's architecture.
fn lxc_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" | "aarch64" | "powerpc64" | "s390x" | "riscv64" => Some("linux64"),
        "x86" | "arm" => Some("linux32"),
        _ => None,
    }
}

/// Checks that the container's root (host uid [`IDMAP_BASE`]) can reach `rootfs`: LXC
/// mounts it from inside the user namespace and fails with "Permission denied" otherwise.
fn check_reachable(rootfs: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    for dir in rootfs.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let mode = meta.mode();
        let searchable = mode & 0o001 != 0
            || (meta.uid() == IDMAP_BASE && mode & 0o100 != 0)
            || (meta.gid() == IDMAP_BASE && mode & 0o010 != 0);
        if !searchable {
            return Err(Error::InvalidConfig {
                key: "rootfs".into(),
                value: rootfs.display().to_string(),
                reason: format!(
                    "the container's root (uid {IDMAP_BASE} on the host) cannot reach it through {} (mode {:04o}); \
                     make that directory searchable (0711) or owned by uid {IDMAP_BASE}",
                    dir.display(),
                    mode & 0o7777
                ),
            });
        }
    }
    Ok(())
}

impl LxcDriver {
    pub fn new(options: LxcOptions) -> LxcDriver {
        LxcDriver {
            prefix: cgroup_prefix(&options.dir),
            dir: options.dir,
            helper: options.helper,
            execd: options.execd,
            exec_servers: Mutex::new(HashMap::new()),
            lxcfs: options.lxcfs,
            layout: Layout::read(),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The per-member cgroup directory name ([`cgroup_prefix`]).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn runtime_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    async fn load(&self, name: &str) -> Result<Record> {
        validate_name(name)?;
        store::read(&self.runtime_dir(name).join("stapes.json"), name).await
    }

    /// Writes the record and the LXC config generated from it.
    async fn save(&self, name: &str, record: &Record) -> Result<()> {
        let dir = self.runtime_dir(name);
        let cpus = match &record.limits.cpu {
            None => None,
            Some(CpuLimit::Set(s)) => Some(s.clone()),
            Some(CpuLimit::Count(n)) => Some(first_cpus(*n)?),
        };
        let lxcfs = config::lxcfs_binds(&self.lxcfs);
        let text = config::render(&config::Input {
            name,
            rootfs: &record.rootfs,
            runtime_dir: &dir,
            cgroup_prefix: &self.prefix,
            privileged: record.privileged,
            apparmor: apparmor_enabled(),
            arch: lxc_arch(),
            memory: self.layout.controller("memory").map(|h| h.version),
            cpuset: self.layout.controller("cpuset").map(|h| h.version),
            devices: self.layout.controller("devices").map(|h| h.version),
            memory_limit: record.limits.memory,
            cpus: cpus.as_deref(),
            lxcfs: &lxcfs,
        });
        store::write_atomic(&dir.join("config"), text.as_bytes()).await?;
        store::write(&dir.join("stapes.json"), record).await
    }

    fn lxcpath(&self) -> String {
        self.dir.display().to_string()
    }

    /// Status and init pid, from the container's monitor.
    async fn info(&self, name: &str) -> Result<tools::Info> {
        let status = self.monitor_status(name).await?;
        let pid = match status {
            Status::Stopped => None,
            _ => command::ask(&self.dir, name, command::GET_INIT_PID)
                .await?
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| *p > 0),
        };
        Ok(tools::Info { status, pid })
    }

    /// The status alone, from the container's monitor: stopped when none runs.
    async fn monitor_status(&self, name: &str) -> Result<Status> {
        match command::ask(&self.dir, name, command::GET_STATE).await? {
            None => Ok(Status::Stopped),
            Some(state) => command::status_of(state).ok_or_else(|| Error::Tool {
                command: "lxc command socket".into(),
                detail: format!("the monitor of {name} gave the unknown state {state}"),
            }),
        }
    }

    /// The status of an existing container.
    async fn status(&self, name: &str) -> Result<(Record, tools::Info)> {
        let record = self.load(name).await?;
        Ok((record, self.info(name).await?))
    }

    /// Takes the container's lock (held until the guard drops), then its status.
    async fn locked(&self, name: &str) -> Result<(tokio::sync::OwnedMutexGuard<()>, Record, tools::Info)> {
        validate_name(name)?;
        let guard = self.lock(name).lock_owned().await;
        let (record, info) = self.status(name).await?;
        Ok((guard, record, info))
    }

    /// Where LXC puts cgroups: under PID 1's cgroup (without `init.scope`) of each
    /// hierarchy, as LXC does when started by root.
    fn bases(&self) -> Vec<PathBuf> {
        let text = host::read::read_trimmed(Path::new("/proc/1/cgroup")).unwrap_or_default();
        let memberships: Vec<_> = host::cgroup::parse_memberships(&text)
            .into_iter()
            .map(|mut m| {
                if let Some(p) = m.path.strip_suffix("/init.scope") {
                    m.path = p.to_string();
                }
                m
            })
            .collect();
        self.layout
            .dirs(&memberships)
            .dirs
            .into_iter()
            .map(|(_, d)| d)
            .collect()
    }

    /// Every cgroup directory of a container, in every hierarchy.
    fn instance_cgroups(&self, name: &str) -> Vec<PathBuf> {
        let rel = config::instance_cgroup(&self.prefix, name);
        self.bases().into_iter().map(|b| b.join(&rel)).collect()
    }

    /// Removes a stopped container's cgroups, and the member's directory when it is
    /// empty. LXC's monitor leaves its last cgroup (`lxc.pivot`) a moment after the
    /// container stopped, so a busy cgroup is tried again for a while; one that stays
    /// busy (a process left in it) is an error.
    async fn remove_cgroups(&self, name: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + CGROUP_BUSY;
        loop {
            let mut busy = None;
            for dir in self.instance_cgroups(name) {
                if let Err(e) = host::cgroup::remove_tree(&dir) {
                    busy.get_or_insert(Error::io(format!("removing the cgroup {}", dir.display()))(e));
                }
                if let Some(member) = dir.parent() {
                    // Fails while another container of this member has cgroups: fine.
                    let _ = std::fs::remove_dir(member);
                }
            }
            match busy {
                None => return Ok(()),
                Some(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Cgroups left by a container that died without LXC cleaning up (empty ones only):
    /// LXC refuses to start into an existing container cgroup.
    fn remove_stale_cgroups(&self, name: &str) {
        for dir in self.instance_cgroups(name) {
            for leaf in ["container", "monitor"] {
                let _ = host::cgroup::remove_tree(&dir.join(leaf));
            }
        }
    }

    async fn start_locked(&self, name: &str, record: Record, info: tools::Info) -> Result<()> {
        match info.status {
            Status::Stopped => {}
            Status::Frozen | Status::Freezing => return Err(Error::Frozen(name.into())),
            _ => return Err(Error::AlreadyRunning(name.into())),
        }
        if !record.privileged {
            check_reachable(&record.rootfs)?;
        }
        self.remove_stale_cgroups(name);
        // Regenerated: the host (cgroup layout, AppArmor) may have changed since create.
        self.save(name, &record).await?;
        let started = tools::run("lxc-start", ["-n", name, "-P", &self.lxcpath(), "-d"], START).await;
        if let Err(e) = started {
            let log = tools::log_errors(&self.runtime_dir(name).join("lxc.log"));
            return Err(match e {
                Error::Tool { command, detail } => Error::Tool {
                    command,
                    detail: if log.is_empty() {
                        detail
                    } else {
                        format!("{detail}\n{log}")
                    },
                },
                other => other,
            });
        }
        Ok(())
    }

    async fn stop_locked(&self, name: &str, info: &tools::Info, how: Stop) -> Result<()> {
        // Its helper leaves the container's cgroups now rather than as the init dies.
        self.forget_exec_server(name);
        match info.status {
            Status::Stopped => return Err(Error::NotRunning(name.into())),
            Status::Frozen | Status::Freezing => {
                // A frozen container cannot act on the halt signal.
                tools::run("lxc-unfreeze", ["-n", name, "-P", &self.lxcpath()], tools::QUICK).await?;
            }
            _ => {}
        }
        let lxcpath = self.lxcpath();
        match how {
            Stop::Force => {
                tools::run("lxc-stop", ["-n", name, "-P", &lxcpath, "-k"], tools::QUICK).await?;
            }
            Stop::Clean(timeout) => {
                let secs = timeout.as_secs().max(1).to_string();
                let limit = timeout + STOP_MARGIN;
                tools::run("lxc-stop", ["-n", name, "-P", &lxcpath, "-t", &secs], limit).await?;
            }
        }
        self.wait_stopped(name).await
    }

    /// Waits until the container's monitor says it stopped, then (briefly) until the
    /// monitor is gone. `lxc-stop -k` returns once init is sent SIGKILL, before the
    /// monitor has seen it die: a status asked at once could still say RUNNING, and a
    /// start while the old monitor holds the command socket would fail.
    async fn wait_stopped(&self, name: &str) -> Result<()> {
        let stopped = tokio::time::Instant::now() + STOP_MARGIN;
        loop {
            match command::ask(&self.dir, name, command::GET_STATE).await? {
                None => return Ok(()),
                Some(0) => break,
                Some(_) if tokio::time::Instant::now() >= stopped => {
                    return Err(Error::Timeout {
                        what: format!("{name} to stop"),
                        after: STOP_MARGIN,
                    })
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        let gone = tokio::time::Instant::now() + MONITOR_EXIT;
        while tokio::time::Instant::now() < gone {
            if command::ask(&self.dir, name, command::GET_STATE).await?.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Where file access goes: the helper into a running container, else the root file
    /// system on the host.
    async fn file_target(&self, name: &str) -> Result<FileTarget> {
        let (record, info) = self.status(name).await?;
        match (info.status, info.pid) {
            (Status::Stopped, _) | (_, None) => Ok(FileTarget::Stopped(record.rootfs)),
            (_, Some(pid)) => Ok(FileTarget::Running(pid)),
        }
    }

    fn container_cgroup(&self, name: &str) -> String {
        config::container_cgroup(&self.prefix, name)
    }

    /// The running container's exec helper, started if it has none; `None` where the
    /// helper refused it (or could not start), for `lxc-attach` to take the exec.
    async fn exec_server(&self, name: &str) -> Option<Arc<ExecServer>> {
        let helper = self.execd.as_ref()?;
        let slot = self
            .exec_servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        let refused = match &*slot {
            Some(ExecSlot::Ready(server)) if server.alive() => return Some(server.clone()),
            Some(ExecSlot::Refused { init }) => Some(*init),
            _ => None,
        };
        let init = self.info(name).await.ok()?.pid?;
        if refused == Some(init) {
            return None;
        }
        match ExecServer::start(helper, init, &self.container_cgroup(name)).await {
            Ok(server) => {
                let server = Arc::new(server);
                *slot = Some(ExecSlot::Ready(server.clone()));
                Some(server)
            }
            Err(why) => {
                match &why {
                    Unavailable::Unsupported(why) => {
                        tracing::debug!(
                            instance = name,
                            why,
                            "no exec helper: lxc-attach takes every exec"
                        )
                    }
                    Unavailable::Failed(why) => {
                        tracing::warn!(
                            instance = name,
                            why,
                            "the exec helper did not start: lxc-attach takes every exec until the container restarts"
                        )
                    }
                }
                *slot = Some(ExecSlot::Refused { init });
                None
            }
        }
    }

    /// Drops the container's exec helper (it ends once no exec uses it).
    fn forget_exec_server(&self, name: &str) {
        self.exec_servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// Removes everything of every container under this driver's LXC path, whatever
    /// state it is in: for tests that must leave nothing behind even after a failure.
    #[cfg(feature = "testing")]
    pub async fn purge(&self) {
        let Ok(mut entries) = tokio::fs::read_dir(&self.dir).await else {
            return;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            if validate_name(&name).is_err() {
                continue;
            }
            let lxcpath = self.lxcpath();
            let _ = tools::run("lxc-unfreeze", ["-n", &name, "-P", &lxcpath], tools::QUICK).await;
            let _ = tools::run("lxc-stop", ["-n", &name, "-P", &lxcpath, "-k"], tools::QUICK).await;
            let _ = self.remove_cgroups(&name).await;
            let _ = tokio::fs::remove_dir_all(entry.path()).await;
        }
    }

    /// What this driver left on the host: cgroup directories under its prefix and
    /// runtime directories.
    #[cfg(feature = "testing")]
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for base in self.bases() {
            let dir = base.join(&self.prefix);
            if dir.exists() {
                out.push(dir.display().to_string());
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            out.extend(entries.flatten().map(|e| e.path().display().to_string()));
        }
        out
    }
}

enum FileTarget {
    Stopped(PathBuf),
    Running(u32),
}

/// The first `n` online CPUs (`0-1`), for a `limits.cpu` count.
fn first_cpus(n: u32) -> Result<String> {
    let online = host::read::read_trimmed(Path::new("/sys/devices/system/cpu/online")).unwrap_or_default();
    let cpus = host::resources::parse_cpu_list(&online).unwrap_or_default();
    if cpus.is_empty() {
        return Err(Error::Unsupported("cannot tell which CPUs are online".into()));
    }
    let chosen: Vec<u32> = cpus
        .iter()
        .take(n as usize)
        .filter_map(|c| u32::try_from(*c).ok())
        .collect();
    Ok(crate::config::normalise_cpu_list(&chosen))
}

impl Driver for LxcDriver {
    fn kind(&self) -> &'static str {
        "lxc"
    }

    fn create(&self, spec: CreateSpec) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            validate_name(&spec.name)?;
            let rootfs_text = spec.rootfs.display().to_string();
            if !spec.rootfs.is_absolute() || !config::fits_a_line(&rootfs_text) {
                return Err(Error::InvalidConfig {
                    key: "rootfs".into(),
                    value: rootfs_text,
                    reason: "an absolute path on one line is needed".into(),
                });
            }
            store::check_rootfs(&spec.rootfs).await?;
            if !spec.privileged {
                check_reachable(&spec.rootfs)?;
            }
            let _guard = self.lock(&spec.name).lock_owned().await;
            let dir = store::make_dir(&self.dir, &spec.name).await?;
            let record = Record {
                rootfs: spec.rootfs.clone(),
                privileged: spec.privileged,
                limits: spec.limits.clone(),
            };
            if let Err(e) = self.save(&spec.name, &record).await {
                // No half-made container: the directory goes with the failure.
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Err(e);
            }
            Ok(())
        })
    }

    fn start<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (_guard, record, info) = self.locked(name).await?;
            self.start_locked(name, record, info).await
        })
    }

    fn stop<'a>(&'a self, name: &'a str, how: Stop) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (_guard, _, info) = self.locked(name).await?;
            self.stop_locked(name, &info, how).await
        })
    }

    fn restart<'a>(&'a self, name: &'a str, how: Stop) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (_guard, record, info) = self.locked(name).await?;
            self.stop_locked(name, &info, how).await?;
            let stopped = self.info(name).await?;
            self.start_locked(name, record, stopped).await
        })
    }

    fn freeze<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (_guard, _, info) = self.locked(name).await?;
            match info.status {
                Status::Stopped => Err(Error::NotRunning(name.into())),
                Status::Frozen | Status::Freezing => Err(Error::Frozen(name.into())),
                _ => tools::run("lxc-freeze", ["-n", name, "-P", &self.lxcpath()], tools::QUICK)
                    .await
                    .map(drop),
            }
        })
    }

    fn unfreeze<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (_guard, _, info) = self.locked(name).await?;
            match info.status {
                Status::Stopped => Err(Error::NotRunning(name.into())),
                Status::Frozen | Status::Freezing => {
                    tools::run("lxc-unfreeze", ["-n", name, "-P", &self.lxcpath()], tools::QUICK)
                        .await
                        .map(drop)
                }
                _ => Err(Error::NotFrozen(name.into())),
            }
        })
    }

    fn state<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<State>> {
        Box::pin(async move {
            let (_, info) = self.status(name).await?;
            let mut state = State {
                status: info.status,
                pid: info.pid,
                ..State::default()
            };
            if let Some(pid) = info.pid {
                let usage = self.layout.dirs_of(pid).usage(&self.layout);
                state.processes = usage.processes;
                state.memory = usage.memory;
                state.memory_peak = usage.memory_peak;
                state.memory_limit = usage.memory_limit;
                state.cpu_ns = usage.cpu_ns;
                state.cpus = usage.cpus;
            }
            Ok(state)
        })
    }

    fn status<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Status>> {
        Box::pin(async move {
            validate_name(name)?;
            // Whether the container exists, without reading its record: one stat, not
            // a trip through the blocking pool and a JSON parse, for each of a list.
            if !self.runtime_dir(name).join("stapes.json").exists() {
                return Err(Error::NotFound(name.into()));
            }
            self.monitor_status(name).await
        })
    }

    fn set_limits<'a>(&'a self, name: &'a str, limits: Limits) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (_guard, mut record, info) = self.locked(name).await?;
            if let Some(pid) = info.pid.filter(|_| info.status != Status::Stopped) {
                let dirs = self.layout.dirs_of(pid);
                let unsupported = |e: host::cgroup::CgroupError| match e {
                    host::cgroup::CgroupError::NoController(c) => {
                        Error::Unsupported(format!("the {c} cgroup controller is not available on this host"))
                    }
                    other => Error::Tool {
                        command: "cgroup".into(),
                        detail: other.to_string(),
                    },
                };
                if limits.memory != record.limits.memory {
                    dirs.set_memory_limit(&self.layout, limits.memory)
                        .map_err(unsupported)?;
                }
                if limits.cpu != record.limits.cpu {
                    let cpus = match &limits.cpu {
                        None => None,
                        Some(CpuLimit::Set(s)) => Some(s.clone()),
                        Some(CpuLimit::Count(n)) => Some(first_cpus(*n)?),
                    };
                    dirs.set_cpus(&self.layout, cpus.as_deref())
                        .map_err(unsupported)?;
                }
            } else {
                let needs = |c: &str| {
                    if self.layout.controller(c).is_none() {
                        Err(Error::Unsupported(format!(
                            "the {c} cgroup controller is not available on this host"
                        )))
                    } else {
                        Ok(())
                    }
                };
                if limits.memory.is_some() {
                    needs("memory")?;
                }
                if limits.cpu.is_some() {
                    needs("cpuset")?;
                }
            }
            record.limits = limits;
            self.save(name, &record).await
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (_guard, _, info) = self.locked(name).await?;
            if info.status != Status::Stopped {
                return Err(Error::Running(name.into()));
            }
            self.forget_exec_server(name);
            self.remove_cgroups(name).await?;
            let dir = self.runtime_dir(name);
            tokio::fs::remove_dir_all(&dir)
                .await
                .map_err(Error::io(format!("removing {}", dir.display())))?;
            self.locks.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
            Ok(())
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Listed>>> {
        Box::pin(async move {
            let names = store::names(&self.dir, "stapes.json").await?;
            // All at once, so one slow monitor does not hold up the others.
            let mut tasks = tokio::task::JoinSet::new();
            for name in names {
                let dir = self.dir.clone();
                tasks.spawn(async move {
                    let state = command::ask(&dir, &name, command::GET_STATE).await;
                    (name, state)
                });
            }
            let mut out = Vec::new();
            while let Some(joined) = tasks.join_next().await {
                let Ok((name, state)) = joined else { continue };
                let status = state?.map_or(Some(Status::Stopped), command::status_of);
                out.push(Listed {
                    name,
                    status: status.unwrap_or(Status::Stopped),
                });
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    fn log<'a>(&'a self, name: &'a str, log: Log) -> BoxFuture<'a, Result<Reader>> {
        Box::pin(async move {
            self.load(name).await?;
            let file = match log {
                Log::Runtime => "lxc.log",
                Log::Console => "console.log",
            };
            store::log(&self.runtime_dir(name).join(file)).await
        })
    }

    fn exec<'a>(&'a self, name: &'a str, spec: ExecSpec) -> BoxFuture<'a, Result<Process>> {
        Box::pin(async move {
            // The status alone (one question to the monitor), not the record and the
            // init pid too: this is on every exec's path.
            match Driver::status(self, name).await? {
                Status::Running => {}
                Status::Frozen | Status::Freezing => return Err(Error::Frozen(name.into())),
                _ => return Err(Error::NotRunning(name.into())),
            }
            exec::check(&spec)?;
            if spec.tty.is_none() {
                if let Some(server) = self.exec_server(name).await {
                    match server.run(&spec, exec::wanted_cwd(&spec)).await {
                        Ok(process) => return Ok(process),
                        Err(RunError::Lost(e)) => {
                            self.forget_exec_server(name);
                            return Err(e);
                        }
                        Err(RunError::NotSent(why)) => {
                            tracing::debug!(
                                instance = name,
                                why,
                                "exec through lxc-attach: the helper did not take it"
                            );
                        }
                    }
                }
            }
            exec::spawn(name, &self.dir, spec).await
        })
    }

    fn console<'a>(&'a self, name: &'a str, size: WindowSize) -> BoxFuture<'a, Result<Process>> {
        Box::pin(async move {
            let (_, info) = self.status(name).await?;
            match info.status {
                Status::Running | Status::Frozen | Status::Freezing => {}
                _ => return Err(Error::NotRunning(name.into())),
            }
            exec::spawn_console(name, &self.dir, size).await
        })
    }

    fn fs<'a>(&'a self, name: &'a str, op: FsOp) -> BoxFuture<'a, Result<FsReply>> {
        Box::pin(async move {
            match self.file_target(name).await? {
                FileTarget::Stopped(rootfs) => crate::local::run(rootfs, op).await,
                FileTarget::Running(pid) => self.helper.fs(pid, &self.container_cgroup(name), op).await,
            }
        })
    }

    fn read_file<'a>(&'a self, name: &'a str, path: &'a str) -> BoxFuture<'a, Result<(FileStat, Reader)>> {
        Box::pin(async move {
            match self.file_target(name).await? {
                FileTarget::Stopped(rootfs) => crate::local::read(rootfs, path).await,
                FileTarget::Running(pid) => self.helper.read(pid, &self.container_cgroup(name), path).await,
            }
        })
    }

    fn write_file<'a>(
        &'a self,
        name: &'a str,
        path: &'a str,
        spec: WriteSpec,
        data: Reader,
    ) -> BoxFuture<'a, Result<FileStat>> {
        Box::pin(async move {
            match self.file_target(name).await? {
                FileTarget::Stopped(rootfs) => crate::local::write(rootfs, path, spec, data).await,
                FileTarget::Running(pid) => {
                    self.helper
                        .write(pid, &self.container_cgroup(name), path, spec, data)
                        .await
                }
            }
        })
    }

    fn sftp<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<crate::driver::SftpServer>> {
        Box::pin(async move {
            match self.file_target(name).await? {
                FileTarget::Stopped(rootfs) => crate::local::sftp(rootfs).await,
                FileTarget::Running(pid) => self.helper.sftp(pid, &self.container_cgroup(name)).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_stable_and_per_path() {
        let a = cgroup_prefix(Path::new("/var/lib/stapes/lxc"));
        assert_eq!(a, cgroup_prefix(Path::new("/var/lib/stapes/lxc")));
        assert_ne!(a, cgroup_prefix(Path::new("/var/lib/stapes2/lxc")));
        assert!(a.starts_with("stapes-") && a.len() == "stapes-".len() + 16, "{a}");
        // FNV-1a is fixed: a prefix never changes with the compiler or the platform.
        assert_eq!(cgroup_prefix(Path::new("")), "stapes-cbf29ce484222325");
    }

    #[test]
    fn fnv1a_vectors() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn unreachable_rootfs_is_refused_with_the_directory_named() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let closed = tmp.path().join("closed");
        let rootfs = closed.join("c1/rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = check_reachable(&rootfs).unwrap_err().to_string();
        assert!(
            err.contains(&closed.display().to_string()) && err.contains("0700"),
            "{err}"
        );
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o711)).unwrap();
        check_reachable(&rootfs).unwrap();
    }
}
