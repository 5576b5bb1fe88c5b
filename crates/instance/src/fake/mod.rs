//! The in-process driver, for orchestration tests without root or LXC.
//!
//! A container is a directory under the driver's own directory holding `instance.json`
//! (root file system path, privileged, limits, status) and its two logs; its root file
//! system is the caller's directory, as for LXC. State changes are simulated and written
//! at once, so a second driver over the same directory (a restarted daemon) finds its
//! containers as they were, running ones still running. Exec runs the built-in commands
//! of [`shell`] in tasks; file access uses the same [`RootFs`](crate::fs::RootFs) as the
//! real driver, so the path rules are the same.
//!
//! State figures are made up but shaped like real ones: one process plus one per running
//! exec, a fixed memory use, the limits as set.
//!
//! Tests can make it misbehave with marker files: `<dir>/hang-create` holds every
//! create after it wrote its record (a launch to cut short), `<dir>/<name>/fail-stop`
//! makes stops of that container fail.

mod shell;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::driver::{
    BoxFuture, Control, CpuLimit, CreateSpec, Driver, ExecSpec, Limits, Listed, Log, Process, Reader, State,
    Status, Stop, WindowSize,
};
use crate::error::{Error, Result};
use crate::fs::{FileStat, FsOp, FsReply, WriteSpec};
use crate::{store, validate_name};

/// Memory a fake container reports using.
const FAKE_MEMORY: u64 = 4 << 20;
/// The longest a create holds when a test asks it to (see `hold_if_asked`).
const HOLD_BOUND: std::time::Duration = std::time::Duration::from_secs(120);
/// Size of each simulated pipe.
const PIPE: usize = 64 * 1024;

/// What is kept on disk per container.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    rootfs: PathBuf,
    privileged: bool,
    limits: Limits,
    status: Status,
}

/// The in-process driver.
pub struct FakeDriver {
    dir: PathBuf,
    /// Serialises every change of a record.
    lock: tokio::sync::Mutex<()>,
    /// Signal senders of the running execs, per container, to kill them on stop.
    execs: Mutex<HashMap<String, Vec<watch::Sender<i32>>>>,
}

impl FakeDriver {
    /// A driver keeping its containers under `dir` (made when first needed).
    pub fn new(dir: impl Into<PathBuf>) -> FakeDriver {
        FakeDriver {
            dir: dir.into(),
            lock: tokio::sync::Mutex::new(()),
            execs: Mutex::new(HashMap::new()),
        }
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("instance.json")
    }

    async fn load(&self, name: &str) -> Result<Record> {
        validate_name(name)?;
        store::read(&self.record_path(name), name).await
    }

    async fn save(&self, name: &str, record: &Record) -> Result<()> {
        store::write(&self.record_path(name), record).await
    }

    async fn append_log(&self, name: &str, log: &str, line: &str) {
        use tokio::io::AsyncWriteExt;
        if let Ok(mut f) = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name).join(log))
            .await
        {
            let _ = f.write_all(format!("{line}\n").as_bytes()).await;
        }
    }

    /// Changes the status from one of `from` to `to`, or says why not.
    async fn transition(&self, name: &str, to: Status) -> Result<()> {
        let _guard = self.lock.lock().await;
        let mut record = self.load(name).await?;
        let allowed = match (record.status, to) {
            (Status::Stopped, Status::Running) => Ok(()),
            (Status::Running | Status::Frozen, Status::Running) => Err(Error::AlreadyRunning(name.into())),
            (Status::Running | Status::Frozen, Status::Stopped) => Ok(()),
            (Status::Running, Status::Frozen) => Ok(()),
            (Status::Frozen, Status::Frozen) => Err(Error::Frozen(name.into())),
            (Status::Frozen, Status::Thawed) => Ok(()),
            (Status::Running, Status::Thawed) => Err(Error::NotFrozen(name.into())),
            _ => Err(Error::NotRunning(name.into())),
        };
        allowed?;
        record.status = if to == Status::Thawed { Status::Running } else { to };
        self.save(name, &record).await?;
        drop(_guard);
        match to {
            Status::Running => self.append_log(name, "console.log", "fake init started").await,
            Status::Stopped => {
                self.kill_execs(name);
                self.append_log(name, "console.log", "fake init stopped").await;
            }
            _ => {}
        }
        Ok(())
    }

    /// While `<dir>/hang-create` exists (at most [`HOLD_BOUND`]), a create holds
    /// after writing its record, having written `<dir>/create-held` with the name:
    /// how tests cut a launch short by killing the daemon in the middle of it.
    async fn hold_if_asked(&self, name: &str) {
        let hang = self.dir.join("hang-create");
        if !tokio::fs::try_exists(&hang).await.unwrap_or(false) {
            return;
        }
        let _ = tokio::fs::write(self.dir.join("create-held"), name).await;
        let until = tokio::time::Instant::now() + HOLD_BOUND;
        while tokio::fs::try_exists(&hang).await.unwrap_or(false) && tokio::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    fn kill_execs(&self, name: &str) {
        let mut execs = self.execs.lock().unwrap_or_else(|e| e.into_inner());
        for tx in execs.remove(name).unwrap_or_default() {
            let _ = tx.send(9);
        }
    }

    fn running_execs(&self, name: &str) -> u64 {
        let mut execs = self.execs.lock().unwrap_or_else(|e| e.into_inner());
        let list = execs.entry(name.to_string()).or_default();
        list.retain(|tx| !tx.is_closed());
        list.len() as u64
    }

    /// The root file system, if file access is allowed now.
    async fn rootfs(&self, name: &str) -> Result<PathBuf> {
        Ok(self.load(name).await?.rootfs)
    }
}

/// `limits.cpu` as the CPUs a fake container reports.
fn fake_cpus(limit: &Option<CpuLimit>) -> Option<String> {
    match limit {
        Some(CpuLimit::Set(s)) => Some(s.clone()),
        Some(CpuLimit::Count(1)) => Some("0".into()),
        Some(CpuLimit::Count(n)) => Some(format!("0-{}", n - 1)),
        None => None,
    }
}

struct FakeControl {
    signals: watch::Sender<i32>,
    size: Arc<Mutex<WindowSize>>,
    tty: bool,
}

impl Control for FakeControl {
    fn resize(&self, size: WindowSize) -> Result<()> {
        if self.tty {
            *self.size.lock().unwrap_or_else(|e| e.into_inner()) = size;
        }
        Ok(())
    }

    fn signal(&self, signal: i32) -> Result<()> {
        if !(1..=64).contains(&signal) {
            return Err(Error::InvalidConfig {
                key: "signal".into(),
                value: signal.to_string(),
                reason: "not a signal number".into(),
            });
        }
        let _ = self.signals.send(signal);
        Ok(())
    }
}

impl Driver for FakeDriver {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn create(&self, spec: CreateSpec) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            validate_name(&spec.name)?;
            store::check_rootfs(&spec.rootfs).await?;
            let _guard = self.lock.lock().await;
            store::make_dir(&self.dir, &spec.name).await?;
            let record = Record {
                rootfs: spec.rootfs.clone(),
                privileged: spec.privileged,
                limits: spec.limits.clone(),
                status: Status::Stopped,
            };
            self.save(&spec.name, &record).await?;
            drop(_guard);
            self.hold_if_asked(&spec.name).await;
            self.append_log(&spec.name, "runtime.log", "created").await;
            Ok(())
        })
    }

    fn start<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.transition(name, Status::Running))
    }

    fn stop<'a>(&'a self, name: &'a str, _how: Stop) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // Tests make a stop fail by placing `fail-stop` in the container's directory.
            validate_name(name)?;
            if tokio::fs::try_exists(self.dir.join(name).join("fail-stop"))
                .await
                .unwrap_or(false)
            {
                return Err(Error::Tool {
                    command: "stop".into(),
                    detail: "the container refused to stop (fail-stop)".into(),
                });
            }
            self.transition(name, Status::Stopped).await
        })
    }

    fn freeze<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.transition(name, Status::Frozen))
    }

    fn unfreeze<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.transition(name, Status::Thawed))
    }

    fn state<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<State>> {
        Box::pin(async move {
            let record = self.load(name).await?;
            if record.status == Status::Stopped {
                return Ok(State {
                    status: Status::Stopped,
                    ..State::default()
                });
            }
            Ok(State {
                status: record.status,
                pid: Some(std::process::id()),
                processes: Some(1 + self.running_execs(name)),
                memory: Some(FAKE_MEMORY),
                memory_peak: Some(FAKE_MEMORY),
                memory_limit: record.limits.memory,
                cpu_ns: Some(0),
                cpus: fake_cpus(&record.limits.cpu),
            })
        })
    }

    fn set_limits<'a>(&'a self, name: &'a str, limits: Limits) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let _guard = self.lock.lock().await;
            let mut record = self.load(name).await?;
            record.limits = limits;
            self.save(name, &record).await
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let _guard = self.lock.lock().await;
            let record = self.load(name).await?;
            if record.status != Status::Stopped {
                return Err(Error::Running(name.into()));
            }
            let dir = self.dir.join(name);
            tokio::fs::remove_dir_all(&dir)
                .await
                .map_err(Error::io(format!("removing {}", dir.display())))
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Listed>>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for name in store::names(&self.dir, "instance.json").await? {
                // One deleted meanwhile is simply not listed.
                if let Ok(record) = self.load(&name).await {
                    out.push(Listed {
                        name,
                        status: record.status,
                    });
                }
            }
            Ok(out)
        })
    }

    fn log<'a>(&'a self, name: &'a str, log: Log) -> BoxFuture<'a, Result<Reader>> {
        Box::pin(async move {
            self.load(name).await?;
            let file = match log {
                Log::Runtime => "runtime.log",
                Log::Console => "console.log",
            };
            store::log(&self.dir.join(name).join(file)).await
        })
    }

    fn exec<'a>(&'a self, name: &'a str, spec: ExecSpec) -> BoxFuture<'a, Result<Process>> {
        Box::pin(async move {
            let record = self.load(name).await?;
            match record.status {
                Status::Running => {}
                Status::Frozen => return Err(Error::Frozen(name.into())),
                _ => return Err(Error::NotRunning(name.into())),
            }
            if spec.command.is_empty() {
                return Err(Error::InvalidConfig {
                    key: "command".into(),
                    value: String::new(),
                    reason: "a command is needed".into(),
                });
            }
            let (signals_tx, signals) = watch::channel(0);
            self.execs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(name.to_string())
                .or_default()
                .push(signals_tx.clone());
            let tty = spec.tty.is_some();
            let size = Arc::new(Mutex::new(spec.tty.unwrap_or(WindowSize { cols: 0, rows: 0 })));
            let (stdin, stdin_inner) = tokio::io::duplex(PIPE);
            let (stdout_inner, stdout) = tokio::io::duplex(PIPE);
            let (stderr_inner, stderr) = if tty {
                (None, None)
            } else {
                let (i, o) = tokio::io::duplex(PIPE);
                (Some(i), Some(o))
            };
            // On a terminal, ^C is a signal and Enter is a new line, as a line discipline
            // makes them.
            let stdin_inner = if tty {
                terminal_input(stdin_inner, signals_tx.clone())
            } else {
                stdin_inner
            };
            let cwd = resolve_cwd(&record.rootfs, &spec).await;
            let ctx = shell::Ctx {
                hostname: name.to_string(),
                env: spec.env,
                cwd,
                uid: spec.uid,
                gid: spec.gid,
                tty,
                size: size.clone(),
                rootfs: record.rootfs,
                signals,
                stdin: tokio::io::BufReader::new(stdin_inner),
                stdout: stdout_inner,
                stderr: stderr_inner,
            };
            let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
            let command = spec.command;
            let keep = signals_tx.clone();
            tokio::spawn(async move {
                let code = shell::run(command, ctx).await;
                drop(keep);
                let _ = exit_tx.send(code);
            });
            let control = Arc::new(FakeControl {
                signals: signals_tx,
                size,
                tty,
            });
            Ok(Process {
                stdin: Box::pin(stdin),
                stdout: Box::pin(stdout),
                stderr: stderr.map(|e| Box::pin(e) as Reader),
                control,
                exit: Box::pin(async move {
                    exit_rx.await.map_err(|_| Error::Tool {
                        command: "fake exec".into(),
                        detail: "the command task ended without a status".into(),
                    })
                }),
            })
        })
    }

    /// The fake console is a shell on a terminal (its prompt is what the console
    /// shows); a signal through `control` ends it, as a detach.
    fn console<'a>(&'a self, name: &'a str, size: WindowSize) -> BoxFuture<'a, Result<Process>> {
        Box::pin(async move {
            let env = [
                ("HOME", "/root"),
                (
                    "PATH",
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                ),
                ("TERM", "linux"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            let spec = ExecSpec {
                command: vec!["sh".into()],
                env,
                cwd: Some("/".into()),
                uid: 0,
                gid: 0,
                tty: Some(size),
            };
            self.exec(name, spec).await
        })
    }

    fn fs<'a>(&'a self, name: &'a str, op: FsOp) -> BoxFuture<'a, Result<FsReply>> {
        Box::pin(async move { crate::local::run(self.rootfs(name).await?, op).await })
    }

    fn read_file<'a>(&'a self, name: &'a str, path: &'a str) -> BoxFuture<'a, Result<(FileStat, Reader)>> {
        Box::pin(async move { crate::local::read(self.rootfs(name).await?, path).await })
    }

    fn write_file<'a>(
        &'a self,
        name: &'a str,
        path: &'a str,
        spec: WriteSpec,
        data: Reader,
    ) -> BoxFuture<'a, Result<FileStat>> {
        Box::pin(async move { crate::local::write(self.rootfs(name).await?, path, spec, data).await })
    }

    fn sftp<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<crate::driver::SftpServer>> {
        Box::pin(async move { crate::local::sftp(self.rootfs(name).await?).await })
    }
}

/// The working directory: the one asked for if it is a directory inside, else `/`.
async fn resolve_cwd(rootfs: &Path, spec: &ExecSpec) -> String {
    let wanted = spec
        .cwd
        .clone()
        .or_else(|| spec.env.get("HOME").cloned())
        .unwrap_or_else(|| "/".into());
    let root = rootfs.to_path_buf();
    let probe = wanted.clone();
    let is_dir = tokio::task::spawn_blocking(move || {
        crate::fs::RootFs::open(&root)
            .ok()
            .and_then(|r| r.stat(&probe).ok())
            .is_some_and(|s| s.kind == crate::fs::FileType::Dir)
    })
    .await
    .unwrap_or(false);
    if is_dir && wanted.starts_with('/') {
        wanted
    } else {
        "/".into()
    }
}

/// Turns terminal input into what a program behind a line discipline reads: `^C`
/// becomes SIGINT, `\r` a new line.
fn terminal_input(mut raw: tokio::io::DuplexStream, signals: watch::Sender<i32>) -> tokio::io::DuplexStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut tx, rx) = tokio::io::duplex(PIPE);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match raw.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut out = Vec::with_capacity(n);
            for &b in &buf[..n] {
                match b {
                    0x03 => {
                        let _ = signals.send(2);
                    }
                    b'\r' => out.push(b'\n'),
                    _ => out.push(b),
                }
            }
            if tx.write_all(&out).await.is_err() {
                break;
            }
        }
    });
    rx
}
