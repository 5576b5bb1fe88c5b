//! The conformance suite: what every [`Driver`] must do, run against each one.
//!
//! ```text
//!  conformance_tests!(backend)  ─>  one #[test] per case (t10_... t96_...)
//!        each test: Backend (a driver + scratch space) ─> case(Env) under catch_unwind
//!                   ─> purge: stop and remove every container the driver has
//!                   ─> assert nothing is left (runtime directories, cgroups, monitors)
//!                   ─> the case's panic, if any, goes on
//! ```
//!
//! The fake driver runs it in this crate's tests on any machine; the LXC driver in the
//! harness's tests (`crates/testkit/tests/instance`) when root and the tools are there,
//! skipping with a message otherwise, and failing under `CI=true`. Root file systems are
//! built offline from Debian's `busybox-static` (the binary, a link per applet, an
//! `inittab` that mounts a tmpfs on `/tmp`), as the LXC lab's probe does.
//!
//! Cases that need a real kernel (limits seen from inside, a tmpfs only the running
//! container sees, device nodes) check [`Backend::real`].

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::driver::{
    BoxFuture, CpuLimit, CreateSpec, Driver, ExecSpec, Limits, Listed, Log, Reader, Status, Stop, WindowSize,
};
use crate::error::{Error, FsErrorKind};
use crate::forkfile::Helper;
use crate::fs::{FileType, SetAttrs, WriteSpec};
use crate::{FakeDriver, LxcDriver, LxcOptions};

/// How long any one step of a case may take before the case fails.
pub const STEP: Duration = Duration::from_secs(60);

/// A driver under test, with the scratch space its containers live in.
pub trait Backend: Send + Sync {
    fn driver(&self) -> Arc<dyn Driver>;
    /// A new driver over the same directory, as a restarted daemon makes.
    fn reopen(&self) -> Arc<dyn Driver>;
    /// Where root file systems are built (searchable by a container's root).
    fn scratch(&self) -> &Path;
    /// Whether commands run for real (busybox, kernel limits, mounts).
    fn real(&self) -> bool;
    /// Stops and removes everything the driver has, whatever state it is in.
    fn purge(&self) -> BoxFuture<'_, ()>;
    /// What the driver left on the host (empty when clean).
    fn leftovers(&self) -> Vec<String>;
}

/// A scratch directory that a container's root can search (`0711`).
fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("a temporary directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod scratch");
    dir
}

/// The fake driver.
pub struct FakeBackend {
    dir: tempfile::TempDir,
    driver: Arc<FakeDriver>,
}

impl FakeBackend {
    pub fn new() -> FakeBackend {
        let dir = scratch_dir("stapes-fake-");
        let driver = Arc::new(FakeDriver::new(dir.path().join("driver")));
        FakeBackend { dir, driver }
    }
}

impl Default for FakeBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for FakeBackend {
    fn driver(&self) -> Arc<dyn Driver> {
        self.driver.clone()
    }
    fn reopen(&self) -> Arc<dyn Driver> {
        Arc::new(FakeDriver::new(self.dir.path().join("driver")))
    }
    fn scratch(&self) -> &Path {
        self.dir.path()
    }
    fn real(&self) -> bool {
        false
    }
    fn purge(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let driver = self.driver();
            for listed in driver.list().await.unwrap_or_default() {
                let _ = driver.stop(&listed.name, Stop::Force).await;
                let _ = driver.delete(&listed.name).await;
            }
        })
    }
    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("driver"))
            .map(|e| e.flatten().map(|e| e.path().display().to_string()).collect())
            .unwrap_or_default()
    }
}

/// The LXC driver, in a scratch LXC path of its own (so its own cgroup prefix).
pub struct LxcBackend {
    dir: tempfile::TempDir,
    helper: Helper,
    driver: Arc<LxcDriver>,
}

/// Whether `CI=true`: a missing tool is then a failure, never a skip.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Whether `path` is a static ELF executable (no `PT_INTERP` program header): a busybox
/// that runs in a root file system without a C library.
fn is_static_elf(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(|b| u64::from_le_bytes(b) as usize)
    };
    if bytes.get(..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        bytes.get(at..at + 4) != Some(&3u32.to_le_bytes()[..])
    })
}

/// The static busybox of `busybox-static`, if installed.
pub fn static_busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| is_static_elf(p))
}

impl LxcBackend {
    /// The LXC backend, or `None` (with a message) when this machine cannot run it:
    /// not root, or `lxc`, `util-linux`'s `setsid` or `busybox-static` missing. Under
    /// `CI=true` a missing piece panics instead.
    pub fn new(helper: Helper) -> Option<LxcBackend> {
        let mut missing = Vec::new();
        if !rustix::process::geteuid().is_root() {
            missing.push("root");
        }
        for tool in ["lxc-start", "lxc-attach", "setsid"] {
            if !on_path(tool) {
                missing.push(tool);
            }
        }
        if static_busybox().is_none() {
            missing.push("busybox-static");
        }
        if !missing.is_empty() {
            let reason = format!(
                "the LXC driver tests need {} (scripts/install-test-deps.sh installs them)",
                missing.join(", ")
            );
            if in_ci() {
                panic!("{reason}, required under CI=true");
            }
            eprintln!("SKIP: {reason}");
            return None;
        }
        let dir = scratch_dir("stapes-lxc-");
        let driver = Arc::new(LxcDriver::new(LxcOptions {
            dir: dir.path().join("lxc"),
            helper: helper.clone(),
            execd: Some(helper.execd()),
            lxcfs: crate::lxc::DEFAULT_LXCFS.into(),
        }));
        Some(LxcBackend { dir, helper, driver })
    }
}

impl Backend for LxcBackend {
    fn driver(&self) -> Arc<dyn Driver> {
        self.driver.clone()
    }
    fn reopen(&self) -> Arc<dyn Driver> {
        Arc::new(LxcDriver::new(LxcOptions {
            dir: self.dir.path().join("lxc"),
            helper: self.helper.clone(),
            execd: Some(self.helper.execd()),
            lxcfs: crate::lxc::DEFAULT_LXCFS.into(),
        }))
    }
    fn scratch(&self) -> &Path {
        self.dir.path()
    }
    fn real(&self) -> bool {
        true
    }
    fn purge(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.driver.purge())
    }
    fn leftovers(&self) -> Vec<String> {
        self.driver.leftovers()
    }
}

/// Runs one case against the backend `make` gives (none: skipped), then cleans up and
/// checks that nothing is left, also when the case failed.
pub fn run<B: Backend + 'static>(make: impl FnOnce() -> Option<B>, case: fn(Env) -> BoxFuture<'static, ()>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let Some(backend) = make() else { return };
        let backend: Arc<dyn Backend> = Arc::new(backend);
        let env = Env {
            driver: backend.driver(),
            backend: backend.clone(),
        };
        let outcome = AssertUnwindSafe(case(env)).catch_unwind().await;
        backend.purge().await;
        let left = backend.leftovers();
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
        assert!(left.is_empty(), "left behind after the test: {left:?}");
    });
}

/// One `#[test]` per conformance case, against the backend `$make` returns
/// (`Option<impl Backend>`; `None` skips).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            t10_create_start_stop_delete, t11_refusals, t12_clean_stop_and_restart, t13_freeze,
            t14_limits, t15_adopted_after_restart, t16_logs, t17_privileged,
            t20_exec_streams, t21_exec_stdin, t22_exec_exit_codes, t23_exec_env_cwd_ids,
            t24_exec_signal, t25_exec_terminal, t26_exec_terminal_resize_and_interrupt,
            t30_files_stopped, t31_files_running, t32_files_see_the_running_view,
            t90_escape_absolute_links, t91_escape_dot_dot, t92_escape_relative_links,
            t93_escape_swapped_path, t94_escape_magic_links, t95_no_devices_or_fifos,
            t96_names_are_checked);
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::run(|| $make, $crate::conformance::$case);
            }
        )*
    };
}

/// What a case works with.
pub struct Env {
    pub driver: Arc<dyn Driver>,
    pub backend: Arc<dyn Backend>,
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `what` within [`STEP`], or the case fails saying what it waited for.
async fn step<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {STEP:?}: {what}"),
    }
}

fn base_env() -> BTreeMap<String, String> {
    [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", "/root"),
        ("TERM", "xterm"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A command with the usual environment, as root, not on a terminal.
pub fn spec(argv: &[&str]) -> ExecSpec {
    ExecSpec {
        command: argv.iter().map(|s| s.to_string()).collect(),
        env: base_env(),
        cwd: None,
        uid: 0,
        gid: 0,
        tty: None,
    }
}

fn reader(bytes: impl Into<Vec<u8>>) -> Reader {
    Box::pin(std::io::Cursor::new(bytes.into()))
}

async fn read_all(mut r: Reader) -> Vec<u8> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.expect("a readable stream");
    out
}

impl Env {
    pub fn real(&self) -> bool {
        self.backend.real()
    }

    /// Builds a busybox root file system for `name` (the binary only when the backend
    /// runs it) and returns its path.
    pub fn rootfs(&self, name: &str) -> PathBuf {
        let top = self.backend.scratch().join("rootfs").join(name);
        let root = top.join("rootfs");
        for dir in [
            "bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "var/log", "usr/bin",
        ] {
            std::fs::create_dir_all(root.join(dir)).expect("rootfs dirs");
        }
        for dir in [self.backend.scratch().join("rootfs"), top.clone()] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).expect("chmod");
        }
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        std::fs::set_permissions(root.join("root"), std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
        std::fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
        std::fs::write(root.join("etc/hostname"), format!("{name}\n")).expect("hostname");
        std::fs::write(
            root.join("etc/inittab"),
            "::sysinit:/bin/mount -t tmpfs tmpfs /tmp\n::respawn:/bin/sleep 3600\n",
        )
        .expect("inittab");
        if self.real() {
            let busybox = static_busybox().expect("busybox-static (checked by the backend)");
            std::fs::copy(&busybox, root.join("bin/busybox")).expect("copy busybox");
            let list = std::process::Command::new(&busybox)
                .arg("--list")
                .output()
                .expect("busybox --list");
            for applet in String::from_utf8_lossy(&list.stdout).lines() {
                if applet != "busybox" && !applet.is_empty() {
                    let _ = std::os::unix::fs::symlink("/bin/busybox", root.join("bin").join(applet));
                }
            }
            std::os::unix::fs::symlink("/bin/busybox", root.join("sbin/init")).expect("init link");
        }
        root
    }

    /// Creates a stopped, unprivileged container without limits; returns its root.
    pub async fn create(&self, name: &str) -> PathBuf {
        self.create_with(name, false, Limits::default()).await
    }

    pub async fn create_with(&self, name: &str, privileged: bool, limits: Limits) -> PathBuf {
        let rootfs = self.rootfs(name);
        let spec = CreateSpec {
            name: name.into(),
            rootfs: rootfs.clone(),
            privileged,
            limits,
        };
        step("create", self.driver.create(spec)).await.expect("create");
        rootfs
    }

    /// Creates and starts a container; returns its root.
    pub async fn running(&self, name: &str) -> PathBuf {
        let rootfs = self.create(name).await;
        step("start", self.driver.start(name)).await.expect("start");
        rootfs
    }

    pub async fn status(&self, name: &str) -> Status {
        step("state", self.driver.state(name))
            .await
            .expect("state")
            .status
    }

    pub async fn run(&self, name: &str, argv: &[&str]) -> Output {
        self.run_spec(name, spec(argv), b"").await
    }

    /// Runs a command to its end with `stdin`, and collects its output.
    pub async fn run_spec(&self, name: &str, spec: ExecSpec, stdin: &[u8]) -> Output {
        let what = format!("exec {:?}", spec.command);
        let input = stdin.to_vec();
        let driver = self.driver.clone();
        let name = name.to_string();
        step(&what, async move {
            let p = driver.exec(&name, spec).await.expect("exec");
            let mut w = p.stdin;
            let feed = async move {
                let _ = w.write_all(&input).await;
                let _ = w.shutdown().await;
                drop(w);
            };
            let out = read_all(p.stdout);
            let err = async move {
                match p.stderr {
                    Some(e) => read_all(e).await,
                    None => Vec::new(),
                }
            };
            let ((), out, err) = tokio::join!(feed, out, err);
            let code = p.exit.await.expect("exit status");
            Output {
                code,
                stdout: String::from_utf8_lossy(&out).into_owned(),
                stderr: String::from_utf8_lossy(&err).into_owned(),
            }
        })
        .await
    }

    pub async fn write(&self, name: &str, path: &str, data: &[u8], spec: WriteSpec) {
        step(
            "write",
            self.driver.write_file(name, path, spec, reader(data.to_vec())),
        )
        .await
        .unwrap_or_else(|e| panic!("write {path}: {e}"));
    }

    pub async fn read(&self, name: &str, path: &str) -> crate::error::Result<Vec<u8>> {
        let (_, r) = step("read", self.driver.read_file(name, path)).await?;
        Ok(read_all(r).await)
    }
}

/// An interactive session's output, gathered as it comes.
struct Session {
    process_stdin: crate::driver::Writer,
    control: Arc<dyn crate::driver::Control>,
    output: Arc<Mutex<String>>,
    exit: BoxFuture<'static, crate::error::Result<i32>>,
}

impl Session {
    async fn open(env: &Env, name: &str, argv: &[&str], size: WindowSize) -> Session {
        let mut s = spec(argv);
        s.tty = Some(size);
        let p = step("exec on a terminal", env.driver.exec(name, s))
            .await
            .expect("exec");
        assert!(p.stderr.is_none(), "a terminal has no separate stderr");
        let output = Arc::new(Mutex::new(String::new()));
        let sink = output.clone();
        let mut stdout = p.stdout;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("output")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Session {
            process_stdin: p.stdin,
            control: p.control,
            output,
            exit: p.exit,
        }
    }

    async fn send(&mut self, text: &str) {
        self.process_stdin
            .write_all(text.as_bytes())
            .await
            .expect("terminal input");
        self.process_stdin.flush().await.expect("terminal input");
    }

    fn seen(&self) -> String {
        self.output.lock().expect("output").replace('\r', "")
    }

    /// Sends `input` (again every 250 ms) until the output holds `wanted`.
    async fn until(&mut self, input: &str, wanted: &str) {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            if !input.is_empty() {
                self.send(input).await;
            }
            let until = tokio::time::Instant::now() + Duration::from_millis(250);
            while tokio::time::Instant::now() < until {
                if self.seen().contains(wanted) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {wanted:?} in the terminal output: {:?}",
                self.seen()
            );
        }
    }
}

fn is_err_kind<T: std::fmt::Debug>(r: crate::error::Result<T>, kind: FsErrorKind) -> bool {
    matches!(r, Err(Error::Fs(ref e)) if e.kind == kind)
}

// ---------------------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------------------

/// Create, start, stop, delete: each state as the driver reports it, and nothing left
/// afterwards (no runtime directory, cgroup or monitor).
pub fn t10_create_start_stop_delete(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let d = env.driver.clone();
        env.create("c1").await;
        let listed = d.list().await.expect("list");
        assert_eq!(
            listed,
            vec![Listed {
                name: "c1".into(),
                status: Status::Stopped
            }]
        );
        assert_eq!(env.status("c1").await, Status::Stopped);
        step("start", d.start("c1")).await.expect("start");
        let state = d.state("c1").await.expect("state");
        assert_eq!(state.status, Status::Running);
        assert!(state.pid.is_some(), "{state:?}");
        assert!(state.processes.unwrap_or(0) >= 1, "{state:?}");
        assert!(state.memory.unwrap_or(0) > 0, "{state:?}");
        assert_eq!(d.list().await.expect("list")[0].status, Status::Running);
        if env.real() {
            let init = env.run("c1", &["cat", "/proc/1/cmdline"]).await;
            assert!(
                init.stdout.starts_with("init") || init.stdout.contains("busybox"),
                "{init:?}"
            );
            let map = env.run("c1", &["cat", "/proc/self/uid_map"]).await;
            let map: Vec<&str> = map.stdout.split_whitespace().collect();
            assert_eq!(map, ["0", "1000000", "1000000000"], "unprivileged by default");
        }
        step("stop", d.stop("c1", Stop::Force)).await.expect("stop");
        assert_eq!(env.status("c1").await, Status::Stopped);
        step("delete", d.delete("c1")).await.expect("delete");
        assert!(d.list().await.expect("list").is_empty());
        assert!(matches!(d.state("c1").await, Err(Error::NotFound(_))));
        assert!(matches!(d.delete("c1").await, Err(Error::NotFound(_))));
        assert_eq!(
            env.backend.leftovers(),
            Vec::<String>::new(),
            "delete leaves nothing"
        );
    })
}

/// What is refused, with which error.
pub fn t11_refusals(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let d = env.driver.clone();
        let rootfs = env.create("c1").await;
        let again = d
            .create(CreateSpec {
                name: "c1".into(),
                rootfs: rootfs.clone(),
                privileged: false,
                limits: Limits::default(),
            })
            .await;
        assert!(matches!(again, Err(Error::AlreadyExists(_))), "{again:?}");
        let missing = d
            .create(CreateSpec {
                name: "c2".into(),
                rootfs: env.backend.scratch().join("no-such-rootfs"),
                privileged: false,
                limits: Limits::default(),
            })
            .await;
        assert!(matches!(missing, Err(Error::InvalidConfig { .. })), "{missing:?}");
        assert!(matches!(
            d.stop("c1", Stop::Force).await,
            Err(Error::NotRunning(_))
        ));
        assert!(matches!(d.freeze("c1").await, Err(Error::NotRunning(_))));
        assert!(matches!(
            d.exec("c1", spec(&["true"])).await,
            Err(Error::NotRunning(_))
        ));
        assert!(matches!(d.start("nope").await, Err(Error::NotFound(_))));
        step("start", d.start("c1")).await.expect("start");
        assert!(matches!(d.start("c1").await, Err(Error::AlreadyRunning(_))));
        assert!(matches!(d.delete("c1").await, Err(Error::Running(_))));
        assert!(matches!(d.unfreeze("c1").await, Err(Error::NotFrozen(_))));
        assert_eq!(env.status("c1").await, Status::Running, "refusals change nothing");
    })
}

/// A clean stop within its timeout, and restart.
pub fn t12_clean_stop_and_restart(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let d = env.driver.clone();
        env.running("c1").await;
        let before = d.state("c1").await.expect("state").pid;
        step("restart", d.restart("c1", Stop::Force))
            .await
            .expect("restart");
        let after = d.state("c1").await.expect("state");
        assert_eq!(after.status, Status::Running);
        if env.real() {
            assert_ne!(before, after.pid, "a new init after restart");
        }
        step("clean stop", d.stop("c1", Stop::Clean(Duration::from_secs(30))))
            .await
            .expect("clean stop");
        assert_eq!(env.status("c1").await, Status::Stopped);
        assert!(matches!(
            d.restart("c1", Stop::Force).await,
            Err(Error::NotRunning(_))
        ));
    })
}

/// Freeze stops the processes (no exec), unfreeze brings them back.
pub fn t13_freeze(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let d = env.driver.clone();
        env.running("c1").await;
        step("freeze", d.freeze("c1")).await.expect("freeze");
        assert_eq!(env.status("c1").await, Status::Frozen);
        assert!(matches!(d.freeze("c1").await, Err(Error::Frozen(_))));
        assert!(matches!(
            d.exec("c1", spec(&["true"])).await,
            Err(Error::Frozen(_))
        ));
        step("unfreeze", d.unfreeze("c1")).await.expect("unfreeze");
        assert_eq!(env.status("c1").await, Status::Running);
        assert_eq!(env.run("c1", &["true"]).await.code, 0);
        // A frozen container can still be stopped.
        step("freeze", d.freeze("c1")).await.expect("freeze");
        step("stop frozen", d.stop("c1", Stop::Force))
            .await
            .expect("stop");
        assert_eq!(env.status("c1").await, Status::Stopped);
    })
}

/// Limits set at create, changed while running, kept across a restart, and (for real)
/// seen from inside.
pub fn t14_limits(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let d = env.driver.clone();
        let limits = Limits {
            memory: Some(128 << 20),
            cpu: Some(CpuLimit::Count(1)),
        };
        env.create_with("c1", false, limits).await;
        step("start", d.start("c1")).await.expect("start");
        let state = d.state("c1").await.expect("state");
        assert_eq!(state.memory_limit, Some(128 << 20), "{state:?}");
        assert_eq!(state.cpus.as_deref(), Some("0"), "{state:?}");
        if env.real() {
            let nproc = env.run("c1", &["nproc"]).await;
            assert_eq!(nproc.stdout.trim(), "1", "{nproc:?}");
        }
        let changed = Limits {
            memory: Some(96 << 20),
            cpu: Some(CpuLimit::Set("0".into())),
        };
        step("set limits", d.set_limits("c1", changed))
            .await
            .expect("set limits");
        assert_eq!(d.state("c1").await.expect("state").memory_limit, Some(96 << 20));
        step("restart", d.restart("c1", Stop::Force))
            .await
            .expect("restart");
        let state = d.state("c1").await.expect("state");
        assert_eq!(
            state.memory_limit,
            Some(96 << 20),
            "kept across a restart: {state:?}"
        );
        step("lift limits", d.set_limits("c1", Limits::default()))
            .await
            .expect("lift limits");
        let state = d.state("c1").await.expect("state");
        assert_eq!(state.memory_limit, None, "{state:?}");
        if env.real() {
            let nproc = env.run("c1", &["nproc"]).await;
            let host = std::thread::available_parallelism().map_or(1, |n| n.get());
            assert_eq!(nproc.stdout.trim(), host.to_string(), "{nproc:?}");
        }
    })
}

/// `security.privileged`: no user namespace, fewer capabilities, files as they are.
pub fn t17_privileged(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let d = env.driver.clone();
        let rootfs = env.create_with("c1", true, Limits::default()).await;
        step("start", d.start("c1")).await.expect("start");
        assert_eq!(env.status("c1").await, Status::Running);
        if env.real() {
            let map = env.run("c1", &["cat", "/proc/self/uid_map"]).await;
            let map: Vec<&str> = map.stdout.split_whitespace().collect();
            assert_eq!(map, ["0", "0", "4294967295"], "no user namespace");
            // CAP_SYS_MODULE (16), CAP_SYS_RAWIO (17) and CAP_SYS_TIME (25) are dropped.
            let status = env.run("c1", &["cat", "/proc/self/status"]).await.stdout;
            let bounding = status
                .lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .expect("CapBnd");
            for cap in [16, 17, 25] {
                assert_eq!(bounding & (1 << cap), 0, "capability {cap} dropped: {bounding:x}");
            }
        }
        let owner = WriteSpec {
            mode: None,
            uid: Some(1234),
            gid: Some(1234),
            append: false,
        };
        env.write("c1", "/root/owned", b"x", owner).await;
        let on_disk = std::fs::metadata(rootfs.join("root/owned")).expect("on disk");
        assert_eq!(on_disk.uid(), 1234);
        step("stop", d.stop("c1", Stop::Force)).await.expect("stop");
        step("delete", d.delete("c1")).await.expect("delete");
        assert_eq!(env.backend.leftovers(), Vec::<String>::new());
    })
}

/// Containers outlive the driver: a new one over the same directory finds them running
/// and drives them.
pub fn t15_adopted_after_restart(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        env.running("c1").await;
        env.create("c2").await;
        let pid = env.driver.state("c1").await.expect("state").pid;
        if env.real() {
            // What keeps the container is not the daemon's child, nor in its session: the
            // daemon can die or be restarted under it.
            let me = std::process::id();
            let keepers = keepers_of(pid.expect("init pid"));
            assert!(!keepers.is_empty(), "the init has a parent");
            for (keeper, parent, session) in keepers {
                assert_ne!(parent, me, "{keeper} is the daemon's child");
                assert_ne!(session, own_session(), "{keeper} is in the daemon's session");
            }
        }
        let again = env.backend.reopen();
        let listed = again.list().await.expect("list");
        assert_eq!(
            listed,
            vec![
                Listed {
                    name: "c1".into(),
                    status: Status::Running
                },
                Listed {
                    name: "c2".into(),
                    status: Status::Stopped
                }
            ]
        );
        assert_eq!(again.state("c1").await.expect("state").pid, pid, "the same init");
        let out = step("exec", async {
            let p = again.exec("c1", spec(&["hostname"])).await.expect("exec");
            let out = read_all(p.stdout).await;
            (p.exit.await.expect("exit"), out)
        })
        .await;
        assert_eq!(out.0, 0);
        assert_eq!(String::from_utf8_lossy(&out.1).trim(), "c1");
        step("stop", again.stop("c1", Stop::Force)).await.expect("stop");
        assert_eq!(env.status("c1").await, Status::Stopped);
    })
}

/// `(pid, parent, session)` of `pid`'s parent (the runtime's monitor).
fn keepers_of(pid: u32) -> Vec<(u32, u32, u32)> {
    stat_fields(pid)
        .and_then(|(parent, _)| stat_fields(parent).map(|(pp, session)| vec![(parent, pp, session)]))
        .unwrap_or_default()
}

fn own_session() -> u32 {
    stat_fields(std::process::id()).map_or(0, |(_, session)| session)
}

/// The parent and session of a process, from `/proc/PID/stat` (after the command name).
fn stat_fields(pid: u32) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // state ppid pgrp session ...
    Some((fields.get(1)?.parse().ok()?, fields.get(3)?.parse().ok()?))
}

/// The runtime log and the console log can be read; the console has what init printed.
pub fn t16_logs(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let d = env.driver.clone();
        env.running("c1").await;
        step("stop", d.stop("c1", Stop::Clean(Duration::from_secs(30))))
            .await
            .expect("stop");
        let runtime = read_all(d.log("c1", Log::Runtime).await.expect("runtime log")).await;
        assert!(runtime.len() < 16 << 20);
        let console = read_all(d.log("c1", Log::Console).await.expect("console log")).await;
        assert!(!console.is_empty(), "init wrote to the console");
        assert!(matches!(
            d.log("nope", Log::Console).await,
            Err(Error::NotFound(_))
        ));
    })
}

// ---------------------------------------------------------------------------------------
// Exec
// ---------------------------------------------------------------------------------------

/// stdout and stderr apart, and the exit code.
pub fn t20_exec_streams(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        env.running("c1").await;
        let out = env
            .run("c1", &["sh", "-c", "echo out; echo err >&2; exit 7"])
            .await;
        assert_eq!(
            (out.code, out.stdout.as_str(), out.stderr.as_str()),
            (7, "out\n", "err\n")
        );
        assert_eq!(env.run("c1", &["hostname"]).await.stdout.trim(), "c1");
    })
}

/// stdin reaches the command, and its end is the command's end of file.
pub fn t21_exec_stdin(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        env.running("c1").await;
        let data: String = (0..2000).map(|i| format!("line {i}\n")).collect();
        let out = env.run_spec("c1", spec(&["cat"]), data.as_bytes()).await;
        assert_eq!(out.code, 0);
        assert_eq!(out.stdout, data);
    })
}

/// Exit codes: failure, a missing command (127), as Incus reports them.
pub fn t22_exec_exit_codes(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        env.running("c1").await;
        assert_eq!(env.run("c1", &["true"]).await.code, 0);
        assert_eq!(env.run("c1", &["false"]).await.code, 1);
        assert_eq!(env.run("c1", &["/nonexistent"]).await.code, 127);
        assert_eq!(env.run("c1", &["sh", "-c", "exit 42"]).await.code, 42);
        let nothing = env.driver.exec("c1", spec(&[])).await;
        assert!(matches!(nothing, Err(Error::InvalidConfig { .. })), "no command");
    })
}

/// The environment is only what was asked; the working directory (also one only the
/// container has, and a missing one), user and group.
pub fn t23_exec_env_cwd_ids(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        env.running("c1").await;
        let mut s = spec(&["env"]);
        s.env.insert("FOO".into(), "bar baz".into());
        let printed = env.run_spec("c1", s, b"").await.stdout;
        let vars: Vec<&str> = printed.lines().collect();
        assert!(vars.contains(&"FOO=bar baz"), "{vars:?}");
        assert!(vars.contains(&"HOME=/root"), "{vars:?}");
        // Nothing of the host's environment (the runtime may add `container=lxc`).
        let base = base_env();
        for var in &vars {
            let key = var.split('=').next().unwrap_or_default();
            assert!(
                base.contains_key(key) || key == "FOO" || key == "container",
                "{var} is not from the request"
            );
        }

        assert_eq!(env.run("c1", &["pwd"]).await.stdout, "/root\n", "HOME by default");
        let mut s = spec(&["pwd"]);
        s.cwd = Some("/tmp".into());
        assert_eq!(env.run_spec("c1", s, b"").await.stdout, "/tmp\n");
        let inside = format!("/srv-only-inside-{}", std::process::id());
        assert!(!Path::new(&inside).exists(), "the host has no {inside}");
        step("mkdir", env.driver.mkdir("c1", &inside, 0o755, 0, 0))
            .await
            .expect("mkdir");
        let mut s = spec(&["pwd"]);
        s.cwd = Some(inside.clone());
        assert_eq!(env.run_spec("c1", s, b"").await.stdout, format!("{inside}\n"));
        let mut s = spec(&["pwd"]);
        s.cwd = Some("/no/such/dir".into());
        assert_eq!(
            env.run_spec("c1", s, b"").await.stdout,
            "/\n",
            "a missing directory: /"
        );

        let mut s = spec(&["id", "-u"]);
        s.uid = 1000;
        s.gid = 1001;
        s.cwd = Some("/".into());
        assert_eq!(env.run_spec("c1", s.clone(), b"").await.stdout, "1000\n");
        s.command = vec!["id".into(), "-g".into()];
        assert_eq!(env.run_spec("c1", s, b"").await.stdout, "1001\n");
    })
}

/// A signal reaches the command itself (not only a runtime process in between).
pub fn t24_exec_signal(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        env.running("c1").await;
        let p = step("exec", env.driver.exec("c1", spec(&["sleep", "600"])))
            .await
            .expect("exec");
        p.control.signal(15).expect("signal");
        let code = step("the signalled command ends", p.exit).await.expect("exit");
        assert_eq!(code, 128 + 15);
        if env.real() {
            let left = env.run("c1", &["sh", "-c", "ps | grep -c '[s]leep 600'"]).await;
            assert_eq!(left.stdout.trim(), "0", "the sleep itself is gone: {left:?}");
        }
        // The same on a terminal, where the runtime sits behind a session leader.
        let mut s = Session::open(&env, "c1", &["sleep", "600"], WindowSize { cols: 80, rows: 24 }).await;
        s.control.signal(15).expect("signal");
        let code = step("the signalled command ends", &mut s.exit)
            .await
            .expect("exit");
        assert_eq!(code, 128 + 15);
    })
}

/// On a terminal: a tty inside, its initial size, output and exit code.
pub fn t25_exec_terminal(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        env.running("c1").await;
        let size = WindowSize { cols: 100, rows: 30 };
        let mut s = Session::open(&env, "c1", &["sh", "-c", "tty; stty size; exit 3"], size).await;
        let code = step("terminal exit", &mut s.exit).await.expect("exit");
        assert_eq!(code, 3);
        s.until("", "30 100").await;
        assert!(s.seen().contains("/dev/pts/"), "{:?}", s.seen());
    })
}

/// On a terminal: a resize is seen by the command, ^C interrupts the foreground command.
pub fn t26_exec_terminal_resize_and_interrupt(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        env.running("c1").await;
        let mut s = Session::open(&env, "c1", &["sh"], WindowSize { cols: 100, rows: 30 }).await;
        s.until("stty size\n", "30 100").await;
        s.control
            .resize(WindowSize { cols: 120, rows: 40 })
            .expect("resize");
        s.until("stty size\n", "40 120").await;
        s.send("exit 4\n").await;
        assert_eq!(step("shell exit", &mut s.exit).await.expect("exit"), 4);

        // ^C is typed once the command runs, as a user would: a byte sent while the
        // attach is still setting the terminals up may be taken by the setup instead.
        let mut s = Session::open(
            &env,
            "c1",
            &["sh", "-c", "echo started; exec sleep 600"],
            WindowSize { cols: 80, rows: 24 },
        )
        .await;
        s.until("", "started").await;
        let deadline = tokio::time::Instant::now() + STEP;
        let code = loop {
            s.send("\x03").await;
            if let Ok(code) = tokio::time::timeout(Duration::from_millis(250), &mut s.exit).await {
                break code.expect("exit");
            }
            if tokio::time::Instant::now() >= deadline {
                // What the container's processes looked like: sessions, the terminal's
                // foreground group and each one's blocked and ignored signals.
                let ps = env
                    .run(
                        "c1",
                        &[
                            "sh",
                            "-c",
                            "for d in /proc/[0-9]*; do echo \"$(cat $d/stat) | \
                             $(grep -E '^Sig(Blk|Ign|Cgt)' $d/status | tr '\\n' ' ')\"; done",
                        ],
                    )
                    .await;
                panic!(
                    "^C did not end the command; seen {:?}; processes:\n{}",
                    s.seen(),
                    ps.stdout
                );
            }
        };
        assert_eq!(code, 128 + 2, "ended by SIGINT from the terminal");
    })
}

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

async fn files_round_trip(env: &Env, rootfs: &Path) {
    let d = env.driver.clone();
    let spec = WriteSpec {
        mode: Some(0o640),
        uid: Some(1000),
        gid: Some(1001),
        append: false,
    };
    env.write("c1", "/root/hello", b"hello world\n", spec).await;
    let st = d.stat("c1", "/root/hello").await.expect("stat");
    assert_eq!(
        (st.kind, st.mode, st.uid, st.gid, st.size),
        (FileType::File, 0o640, 1000, 1001, 12)
    );
    assert_eq!(
        env.read("c1", "/root/hello").await.expect("read"),
        b"hello world\n"
    );
    assert_eq!(
        env.read("c1", "root/hello").await.expect("relative is from /"),
        b"hello world\n"
    );
    // The container's own ids on disk (an idmapped or privileged root file system).
    let host = std::fs::metadata(rootfs.join("root/hello")).expect("on disk");
    assert_eq!((host.uid(), host.gid()), (1000, 1001));

    // Replacing keeps attributes not given.
    env.write("c1", "/root/hello", b"second", WriteSpec::default())
        .await;
    let st = d.stat("c1", "/root/hello").await.expect("stat");
    assert_eq!((st.mode, st.uid, st.gid, st.size), (0o640, 1000, 1001, 6));

    // A larger file, streamed.
    let big: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    env.write("c1", "/root/big", &big, WriteSpec::default()).await;
    assert!(
        env.read("c1", "/root/big").await.expect("read") == big,
        "3 MiB round trip"
    );

    d.mkdir("c1", "/root/d", 0o750, 1000, 1000).await.expect("mkdir");
    let st = d.stat("c1", "/root/d").await.expect("stat");
    assert_eq!((st.kind, st.mode, st.uid), (FileType::Dir, 0o750, 1000));
    assert!(is_err_kind(
        d.mkdir("c1", "/root/d", 0o755, 0, 0).await,
        FsErrorKind::AlreadyExists
    ));
    d.symlink("c1", "hello", "/root/link", 1000, 1000)
        .await
        .expect("symlink");
    assert_eq!(d.readlink("c1", "/root/link").await.expect("readlink"), "hello");
    assert_eq!(
        d.lstat("c1", "/root/link").await.expect("lstat").kind,
        FileType::Symlink
    );
    assert_eq!(d.lstat("c1", "/root/link").await.expect("lstat").uid, 1000);
    assert_eq!(
        d.stat("c1", "/root/link").await.expect("stat").kind,
        FileType::File
    );
    assert!(is_err_kind(
        d.readlink("c1", "/root/hello").await,
        FsErrorKind::InvalidPath
    ));
    let names = entries(env, "/root").await;
    assert_eq!(names, ["big", "d", "hello", "link"]);
    d.rename("c1", "/root/hello", "/root/d/moved")
        .await
        .expect("rename");
    assert!(is_err_kind(
        d.stat("c1", "/root/hello").await,
        FsErrorKind::NotFound
    ));
    assert!(is_err_kind(
        d.rmdir("c1", "/root/d").await,
        FsErrorKind::DirectoryNotEmpty
    ));
    assert!(is_err_kind(
        d.remove("c1", "/root/d").await,
        FsErrorKind::IsADirectory
    ));
    d.set_attrs(
        "c1",
        "/root/d/moved",
        SetAttrs {
            mode: Some(0o600),
            uid: Some(2000),
            gid: Some(2000),
            atime: Some(1_000_000),
            mtime: Some(2_000_000),
        },
    )
    .await
    .expect("set attrs");
    let st = d.stat("c1", "/root/d/moved").await.expect("stat");
    assert_eq!(
        (st.mode, st.uid, st.gid, st.mtime, st.atime),
        (0o600, 2000, 2000, 2_000_000, 1_000_000)
    );
    d.remove("c1", "/root/d/moved").await.expect("remove");
    d.rmdir("c1", "/root/d").await.expect("rmdir");
    d.remove("c1", "/root/link").await.expect("remove link");
    assert!(is_err_kind(
        env.read("c1", "/root/missing").await,
        FsErrorKind::NotFound
    ));
    assert!(is_err_kind(
        d.write_file(
            "c1",
            "/no/such/dir/f",
            WriteSpec::default(),
            reader(b"x".to_vec())
        )
        .await,
        FsErrorKind::NotFound
    ));
    assert!(is_err_kind(
        env.read("c1", "/root").await,
        FsErrorKind::IsADirectory
    ));

    // A cut upload leaves the old file and no partial one.
    env.write("c1", "/root/keep", b"old", WriteSpec::default()).await;
    let failing: Reader = Box::pin(FailingReader { sent: false });
    assert!(d
        .write_file("c1", "/root/keep", WriteSpec::default(), failing)
        .await
        .is_err());
    assert_eq!(env.read("c1", "/root/keep").await.expect("read"), b"old");
    let names = entries(env, "/root").await;
    assert_eq!(names, ["big", "keep"], "no temporary file left");
}

/// The names in a directory of `c1`.
async fn entries(env: &Env, dir: &str) -> Vec<String> {
    let listed = env.driver.read_dir("c1", dir).await.expect("read_dir");
    listed.into_iter().map(|e| e.name).collect()
}

/// A stream that gives some bytes, then fails.
struct FailingReader {
    sent: bool,
}

impl tokio::io::AsyncRead for FailingReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.sent {
            return std::task::Poll::Ready(Err(std::io::Error::other("the client went away")));
        }
        self.sent = true;
        buf.put_slice(b"partial new content");
        std::task::Poll::Ready(Ok(()))
    }
}

/// Every file operation on a stopped container.
pub fn t30_files_stopped(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let rootfs = env.create("c1").await;
        files_round_trip(&env, &rootfs).await;
    })
}

/// Every file operation on a running container.
pub fn t31_files_running(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let rootfs = env.running("c1").await;
        files_round_trip(&env, &rootfs).await;
        if env.real() {
            let seen = env.run("c1", &["cat", "/root/keep"]).await;
            assert_eq!(seen.stdout, "old", "the command sees what was written: {seen:?}");
        }
    })
}

/// A running container's files are its own view: its tmpfs on /tmp, not the directory
/// underneath.
pub fn t32_files_see_the_running_view(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        if !env.real() {
            return;
        }
        let rootfs = env.running("c1").await;
        // The image's init mounts the tmpfs once it runs, a moment after `start` returns.
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let mounts = env.run("c1", &["cat", "/proc/mounts"]).await;
            if mounts.stdout.lines().any(|l| l.split(' ').nth(1) == Some("/tmp")) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the container's init never mounted /tmp: {mounts:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        env.write(
            "c1",
            "/tmp/in-tmpfs",
            b"only in the container",
            WriteSpec::default(),
        )
        .await;
        assert!(
            !rootfs.join("tmp/in-tmpfs").exists(),
            "written into the container's tmpfs"
        );
        let seen = env.run("c1", &["cat", "/tmp/in-tmpfs"]).await;
        assert_eq!(seen.stdout, "only in the container");
        assert_eq!(
            env.read("c1", "/tmp/in-tmpfs").await.expect("read"),
            b"only in the container"
        );
    })
}

// ---------------------------------------------------------------------------------------
// Escapes: no path may reach a host file.
// ---------------------------------------------------------------------------------------

/// A file on the host that no container path may reach.
pub struct HostSecret {
    dir: PathBuf,
    file: PathBuf,
    /// `../` enough times to climb above `/` from anywhere in the container.
    up: String,
}

const SECRET: &[u8] = b"HOST SECRET, never to be read through a container";
const CONTAINER_SHADOW: &[u8] = b"the container's own shadow\n";

/// A check run on a container in each state, with its root on the host and the secret.
type Check = for<'a> fn(&'a Env, &'a Path, &'a HostSecret) -> BoxFuture<'a, ()>;

/// Runs `check` on a stopped and then on the running container `c1`, which has its own
/// `/etc/shadow`, beside a host directory holding a secret.
async fn both_states(env: &Env, check: Check) {
    let dir = env.backend.scratch().join("host-secret");
    std::fs::create_dir_all(&dir).expect("secret dir");
    let file = dir.join("shadow");
    std::fs::write(&file, SECRET).expect("secret");
    let up = "../".repeat(dir.components().count() + 3);
    let secret = HostSecret { dir, file, up };
    let rootfs = env.create("c1").await;
    env.write("c1", "/etc/shadow", CONTAINER_SHADOW, WriteSpec::default())
        .await;
    check(env, &rootfs, &secret).await;
    step("start", env.driver.start("c1")).await.expect("start");
    check(env, &rootfs, &secret).await;
}

impl HostSecret {
    /// The secret is as it was, alone in its directory, with its mode.
    fn untouched(&self) {
        assert_eq!(std::fs::read(&self.file).expect("secret"), SECRET);
        let names: Vec<_> = std::fs::read_dir(&self.dir)
            .expect("secret dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            names,
            [std::ffi::OsString::from("shadow")],
            "nothing made on the host"
        );
        assert_eq!(
            std::fs::metadata(&self.file).expect("secret").mode() & 0o777,
            0o644
        );
    }

    fn path(&self) -> String {
        self.file.display().to_string()
    }
}

/// Reading must give the container's file or an error, never the host's.
async fn never_the_host(env: &Env, path: &str, want_container: bool) {
    match env.read("c1", path).await {
        Ok(bytes) => {
            assert_ne!(bytes, SECRET, "{path} read a host file");
            if want_container {
                assert_eq!(bytes, CONTAINER_SHADOW, "{path}");
            }
        }
        Err(e) => assert!(!want_container, "{path}: {e}"),
    }
}

/// Makes `link -> target` in `c1`, replacing an older one.
async fn relink(env: &Env, target: &str, link: &str) {
    let _ = env.driver.remove("c1", link).await;
    env.driver
        .symlink("c1", target, link, 0, 0)
        .await
        .expect("symlink");
}

/// Tries to change the file at `path` every way there is; errors are fine.
async fn try_changes(env: &Env, path: &str) {
    let d = &env.driver;
    let _ = d
        .write_file("c1", path, WriteSpec::default(), reader(b"overwrite".to_vec()))
        .await;
    let _ = d.mkdir("c1", &format!("{path}.d"), 0o755, 0, 0).await;
    let _ = d.symlink("c1", "/", &format!("{path}.l"), 0, 0).await;
    let attrs = SetAttrs {
        mode: Some(0o777),
        uid: Some(4242),
        ..SetAttrs::default()
    };
    let _ = d.set_attrs("c1", path, attrs).await;
    let _ = d.rename("c1", path, &format!("{path}.moved")).await;
    let _ = d.remove("c1", path).await;
}

/// Absolute links, to `/etc/shadow` and to a host path, resolve inside.
pub fn t90_escape_absolute_links(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move { both_states(&env, |e, r, s| Box::pin(absolute_links(e, r, s))).await })
}

async fn absolute_links(env: &Env, rootfs: &Path, secret: &HostSecret) {
    let secret_dir = secret.dir.display().to_string();
    relink(env, "/etc/shadow", "/root/to-shadow").await;
    relink(env, &secret.path(), "/root/to-host").await;
    relink(env, &secret_dir, "/root/to-host-dir").await;
    never_the_host(env, "/root/to-shadow", true).await;
    never_the_host(env, "/root/to-host", false).await;
    never_the_host(env, "/root/to-host-dir/shadow", false).await;
    assert!(
        env.driver.stat("c1", "/root/to-host").await.is_err(),
        "no such file inside"
    );
    try_changes(env, "/root/to-host").await;
    try_changes(env, "/root/to-host-dir/shadow").await;
    try_changes(env, "/root/to-host-dir/new").await;
    secret.untouched();
    // What a write through the link made, it made inside.
    let landed = rootfs.join(secret.path().trim_start_matches('/'));
    assert!(!landed.exists() || std::fs::read(&landed).is_ok_and(|b| b != SECRET));
}

/// `..` never climbs above the container's `/`.
pub fn t91_escape_dot_dot(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move { both_states(&env, |e, r, s| Box::pin(dot_dot(e, r, s))).await })
}

async fn dot_dot(env: &Env, _rootfs: &Path, secret: &HostSecret) {
    let up = &secret.up;
    for path in [
        format!("/{up}etc/shadow"),
        format!("{up}etc/shadow"),
        format!("/root/{up}etc/shadow"),
        "/root/../../etc/../etc/shadow".to_string(),
    ] {
        never_the_host(env, &path, true).await;
    }
    let secret_rel = secret.path();
    never_the_host(
        env,
        &format!("/{up}{}", secret_rel.trim_start_matches('/')),
        false,
    )
    .await;
    try_changes(env, &format!("{up}{}", secret_rel.trim_start_matches('/'))).await;
    secret.untouched();
    let root = env.driver.stat("c1", "/").await.expect("stat /");
    let above = env
        .driver
        .stat("c1", &format!("/{up}"))
        .await
        .expect("stat above /");
    assert_eq!(root, above, "above / is /");
}

/// Relative links, chains of them and links through directories, resolve inside.
pub fn t92_escape_relative_links(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move { both_states(&env, |e, r, s| Box::pin(relative_links(e, r, s))).await })
}

async fn relative_links(env: &Env, _rootfs: &Path, secret: &HostSecret) {
    let up = &secret.up;
    relink(env, &format!("{up}etc/shadow"), "/root/rel").await;
    relink(env, "rel", "/root/b").await;
    relink(env, "b", "/root/a").await;
    relink(env, up, "/root/dir").await;
    let host = format!("{up}{}", secret.path().trim_start_matches('/'));
    relink(env, &host, "/root/host").await;
    never_the_host(env, "/root/rel", true).await;
    never_the_host(env, "/root/a", true).await;
    never_the_host(env, "/root/dir/etc/shadow", true).await;
    never_the_host(env, "/root/host", false).await;
    try_changes(env, "/root/host").await;
    secret.untouched();
}

/// A directory swapped for a link to the host while operations run on paths through
/// it: every operation stays inside.
pub fn t93_escape_swapped_path(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move { both_states(&env, |e, r, s| Box::pin(swapped_path(e, r, s))).await })
}

/// How many times each operation runs while the path is being swapped.
const SWAP_ROUNDS: usize = 40;

async fn swapped_path(env: &Env, rootfs: &Path, secret: &HostSecret) {
    let race = rootfs.join("race");
    let other = rootfs.join("race-other");
    for p in [&race, &other] {
        let _ = std::fs::remove_dir_all(p);
        let _ = std::fs::remove_file(p);
    }
    std::fs::create_dir(&race).expect("race dir");
    std::os::unix::fs::symlink(&secret.dir, &other).expect("race link");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let swapper = std::thread::spawn(move || {
        let mut swaps = 0u64;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = rustix::fs::renameat_with(
                rustix::fs::CWD,
                &race,
                rustix::fs::CWD,
                &other,
                rustix::fs::RenameFlags::EXCHANGE,
            );
            swaps += 1;
        }
        swaps
    });
    for i in 0..SWAP_ROUNDS {
        // Relative (as SFTP clients send them) and absolute.
        let dir = if i % 2 == 0 { "race" } else { "/race" };
        if let Ok(bytes) = env.read("c1", &format!("{dir}/shadow")).await {
            assert_ne!(bytes, SECRET, "read the host file through a swapped path");
        }
        try_changes(env, &format!("{dir}/w{i}")).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(swapper.join().expect("swapper") > 0);
    secret.untouched();
}

/// `/proc/*/root` and `/proc/*/fd` links are not followed.
pub fn t94_escape_magic_links(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move { both_states(&env, |e, r, s| Box::pin(magic_links(e, r, s))).await })
}

async fn magic_links(env: &Env, _rootfs: &Path, secret: &HostSecret) {
    relink(env, "/proc/self/root/etc/shadow", "/root/magic").await;
    let secret_path = secret.path();
    for path in [
        "/proc/self/root/etc/shadow".to_string(),
        "/proc/1/root/etc/shadow".to_string(),
        format!("/proc/self/root{secret_path}"),
        format!("/proc/{}/root{secret_path}", std::process::id()),
        "/root/magic".to_string(),
    ] {
        never_the_host(env, &path, false).await;
    }
    try_changes(env, &format!("/proc/{}/root{secret_path}", std::process::id())).await;
    secret.untouched();
}

/// FIFOs (and, as root, device nodes) in a container are never opened for a client: a
/// read is refused at once instead of blocking or reading a device.
pub fn t95_no_devices_or_fifos(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move { both_states(&env, |e, r, s| Box::pin(no_devices(e, r, s))).await })
}

async fn no_devices(env: &Env, rootfs: &Path, _secret: &HostSecret) {
    let node = |name: &str, kind: rustix::fs::FileType, dev: u64| {
        let path = rootfs.join("root").join(name);
        let _ = std::fs::remove_file(&path);
        let mode = rustix::fs::Mode::from_raw_mode(0o666);
        rustix::fs::mknodat(rustix::fs::CWD, &path, kind, mode, dev).expect("mknod");
    };
    node("fifo", rustix::fs::FileType::Fifo, 0);
    assert!(is_err_kind(
        env.read("c1", "/root/fifo").await,
        FsErrorKind::NotRegular
    ));
    let chmod = SetAttrs {
        mode: Some(0o600),
        ..SetAttrs::default()
    };
    assert!(is_err_kind(
        env.driver.set_attrs("c1", "/root/fifo", chmod).await,
        FsErrorKind::NotRegular
    ));
    if rustix::process::geteuid().is_root() {
        node(
            "zero",
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::makedev(1, 5),
        );
        assert!(is_err_kind(
            env.read("c1", "/root/zero").await,
            FsErrorKind::NotRegular
        ));
    }
}

/// Names that are not Incus names are refused by every call before any use.
pub fn t96_names_are_checked(env: Env) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let d = env.driver.clone();
        let rootfs = env.rootfs("ok");
        for bad in ["../escape", "a/b", "", "-x", "x".repeat(64).as_str()] {
            let create = d
                .create(CreateSpec {
                    name: bad.into(),
                    rootfs: rootfs.clone(),
                    privileged: false,
                    limits: Limits::default(),
                })
                .await;
            assert!(
                matches!(create, Err(Error::InvalidName { .. })),
                "{bad:?}: {create:?}"
            );
            assert!(
                matches!(d.start(bad).await, Err(Error::InvalidName { .. })),
                "{bad:?}"
            );
            assert!(
                matches!(d.state(bad).await, Err(Error::InvalidName { .. })),
                "{bad:?}"
            );
            assert!(
                matches!(d.delete(bad).await, Err(Error::InvalidName { .. })),
                "{bad:?}"
            );
            assert!(
                matches!(d.stat(bad, "/").await, Err(Error::InvalidName { .. })),
                "{bad:?}"
            );
        }
        assert!(d.list().await.expect("list").is_empty());
    })
}
