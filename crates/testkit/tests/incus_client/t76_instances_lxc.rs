//! Real LXC containers on a three-member cluster with the official client, every step
//! through a member other than the owner: launch onto node2 through node1, list,
//! limits set and enforced (read inside through the owner's LXC driver exec: nproc, and
//! `MemTotal` in `/proc/meminfo` and the CPUs of `/proc/cpuinfo` through an lxcfs the
//! test runs itself; the memory limit also at the container's cgroup, read from the
//! host), stop and start, the holder killed with -9 and started again with the
//! container still running, then again with the container stopped behind its back
//! (started at member start, as `boot.autostart` unset and last state running ask),
//! renamed while stopped, delete leaving no process, mount or cgroup. The image is
//! built offline from Debian's `busybox-static`.
//!
//! Needs root, `lxc`, `lxcfs` (and `/dev/fuse`), `incus` and `busybox-static`: skipped with a message without
//! them, failing under `CI=true`. Whatever the test made is purged afterwards, also
//! when it fails, and the purge itself must leave nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use instance::forkfile::Helper;
use instance::{Driver, LxcDriver, LxcOptions};
use serde_json::Value;
use stapes_testkit::{bin, eventually, have_root, have_tool, Cluster};

use super::incus;
use super::t60_storage_profiles::Via;

/// Whether this machine can run the test (else a message, or a panic under CI=true).
pub(crate) fn ready() -> bool {
    if !(have_root() && have_tool("incus") && have_tool("lxc-start")) {
        return false;
    }
    if instance::conformance::static_busybox().is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("busybox-static is required under CI=true");
        }
        eprintln!("SKIP: this test needs busybox-static");
        return false;
    }
    true
}

/// A busybox image (`metadata.yaml`, `rootfs/` with `/sbin/init`) as a gzip tarball.
pub(crate) fn busybox_image(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    let root = tree.join("rootfs");
    for d in [
        "bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "var/log",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(
        root.join("etc/inittab"),
        "::sysinit:/bin/mount -t tmpfs tmpfs /tmp\n::respawn:/bin/sleep 3600\n",
    )
    .unwrap();
    let busybox = instance::conformance::static_busybox().expect("checked by ready()");
    std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "sleep", "mount", "cat", "ls", "hostname", "id", "pwd", "printenv", "env", "tty", "stty",
        "kill", "touch", "echo", "true",
    ] {
        std::os::unix::fs::symlink("/bin/busybox", root.join("bin").join(applet)).unwrap();
    }
    std::os::unix::fs::symlink("/bin/busybox", root.join("sbin/init")).unwrap();
    std::fs::write(
        tree.join("metadata.yaml"),
        "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: busybox\n  os: busybox\ntemplates: {}\n",
    )
    .unwrap();
    let file = dir.join("busybox.tar.gz");
    let st = std::process::Command::new("tar")
        .current_dir(&tree)
        .args([
            "--numeric-owner",
            "-czf",
            file.to_str().unwrap(),
            "metadata.yaml",
            "rootfs",
        ])
        .status()
        .expect("tar runs");
    assert!(st.success());
    file
}

/// The LXC driver of a member, opened on its directory (for the purge).
fn driver_of(dir: &Path) -> Arc<LxcDriver> {
    Arc::new(LxcDriver::new(LxcOptions {
        dir: dir.join("lxc"),
        helper: Helper {
            program: bin("stapesd").into(),
            args: vec!["forkfile".into()],
        },
        execd: None,
        lxcfs: instance::DEFAULT_LXCFS.into(),
    }))
}

/// Stops and deletes every container of every member; returns what is still left.
pub(crate) async fn purge(dirs: &[PathBuf]) -> Vec<String> {
    let mut left = Vec::new();
    for dir in dirs {
        let d = driver_of(dir);
        for c in d.list().await.unwrap_or_default() {
            let _ = d.stop(&c.name, instance::Stop::Force).await;
            let _ = d.delete(&c.name).await;
        }
        left.extend(d.leftovers());
    }
    left
}

/// Runs `argv` inside a container through its member's LXC driver; exit code and stdout.
async fn inside(member_dir: &Path, name: &str, argv: &[&str]) -> (i32, String) {
    use tokio::io::AsyncReadExt;
    let p = driver_of(member_dir)
        .exec(name, instance::conformance::spec(argv))
        .await
        .expect("exec");
    drop(p.stdin);
    let mut stdout = p.stdout;
    let mut out = String::new();
    let read = stdout.read_to_string(&mut out);
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the command ends")
        .expect("stdout");
    let code = tokio::time::timeout(Duration::from_secs(30), p.exit)
        .await
        .expect("the command ends")
        .expect("exit code");
    (code, out)
}

/// The memory limit of the cgroup process `pid` is in, read on the host (v1 or v2).
fn host_memory_limit(pid: i64) -> Option<u64> {
    let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in groups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else {
            continue;
        };
        if let Ok(v) = std::fs::read_to_string(&file) {
            if let Ok(n) = v.trim().parse() {
                return Some(n);
            }
        }
    }
    None
}

pub(crate) async fn state_of(v: &Via, i: usize, name: &str) -> Value {
    let out = v.ok(i, &["query", &format!("/1.0/instances/{name}/state")]).await;
    serde_json::from_str(&out).expect("state JSON")
}

async fn body(c: &mut Cluster, work: &Path) {
    let v = Via::new(c);
    let conf = v.conf.path().to_path_buf();
    super::t70_instances::prepare(&v, &busybox_image(work), "bb").await;

    // Launched through node1 onto node2; seen running through node3.
    v.ok(0, &["launch", "bb", "c1", "--target", "node2"]).await;
    let list = v.ok(2, &["list", "--format", "csv", "-c", "nsL"]).await;
    assert_eq!(list.trim(), "c1,RUNNING,node2");
    let st = state_of(&v, 0, "c1").await;
    let pid = st["pid"].as_i64().unwrap_or(0);
    assert!(pid > 0, "{st}");
    let init = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        init.starts_with("/sbin/init") || init.contains("init"),
        "{init:?}"
    );

    // Limits set through node3 (c1 is on node2) are what the container sees, read
    // inside through the owner's LXC driver exec: its CPUs (nproc, and /proc/cpuinfo
    // through lxcfs) and its memory (MemTotal in /proc/meminfo through lxcfs), as in
    // Incus. Before the limits, the host's memory.
    let node2 = c.members[1].dir.clone();
    let mem_total = |text: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let (code, before) = inside(&node2, "c1", &["/bin/busybox", "cat", "/proc/meminfo"]).await;
    assert_eq!(code, 0, "{before}");
    assert!(mem_total(&before).is_some_and(|kb| kb > 64 << 10), "{before}");
    v.ok(2, &["config", "set", "c1", "limits.memory=64MiB", "limits.cpu=1"])
        .await;
    let (code, nproc) = inside(&node2, "c1", &["/bin/busybox", "nproc"]).await;
    assert_eq!((code, nproc.trim()), (0, "1"));
    let (code, meminfo) = inside(&node2, "c1", &["/bin/busybox", "cat", "/proc/meminfo"]).await;
    assert_eq!((code, mem_total(&meminfo)), (0, Some(64 << 10)), "{meminfo}");
    let (code, cpuinfo) = inside(&node2, "c1", &["/bin/busybox", "cat", "/proc/cpuinfo"]).await;
    let processors = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    assert_eq!((code, processors), (0, 1), "{cpuinfo}");
    // The container does not see its cgroup files here (this host's cgroup v1 tree is
    // not mounted inside), so the memory limit is read from the host, at the cgroup
    // the container's init is in.
    assert_eq!(host_memory_limit(pid), Some(64 << 20));
    let st = state_of(&v, 0, "c1").await;
    assert_eq!(st["memory"]["total"].as_i64(), Some(64 << 20), "{st}");

    // Stop (clean, then forced after the timeout) and start again, through other members.
    v.ok(2, &["stop", "c1", "--timeout", "10"]).await;
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "init gone after stop"
    );
    let list = v.ok(0, &["list", "--format", "csv", "-c", "ns"]).await;
    assert_eq!(list.trim(), "c1,STOPPED");
    v.ok(0, &["start", "c1"]).await;
    let pid = state_of(&v, 2, "c1").await["pid"].as_i64().unwrap_or(0);
    assert!(pid > 0);

    // The daemon is not the container: node2 killed (-9) and started again finds c1
    // still running, with the same init, and serves it through node1.
    c.members[1].restart().await;
    let sock = v.sock[0].clone();
    let again = eventually(Duration::from_secs(60), "node2 to serve c1 again", || async {
        let (ok, out, _) = incus(&conf, Some(&sock), &["query", "/1.0/instances/c1/state"]).await;
        let st: Value = serde_json::from_str(&out).ok()?;
        (ok && st["status"] == "Running").then_some(st)
    })
    .await;
    assert_eq!(again["pid"].as_i64(), Some(pid), "{again}");

    // A host reboot, as far as c1 sees it: node2 dies and c1 stops behind its back.
    // Started again, node2 starts c1 (running when last seen, boot.autostart unset).
    c.members[1].kill9();
    driver_of(&c.members[1].dir)
        .stop("c1", instance::Stop::Force)
        .await
        .expect("stopped behind the daemon's back");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    c.members[1].start_again().await;
    let booted = eventually(Duration::from_secs(60), "node2 to start c1 again", || async {
        let (ok, out, _) = incus(&conf, Some(&sock), &["query", "/1.0/instances/c1/state"]).await;
        let st: Value = serde_json::from_str(&out).ok()?;
        (ok && st["status"] == "Running" && st["pid"].as_i64().is_some_and(|p| p > 0)).then_some(st)
    })
    .await;
    assert_ne!(again["pid"], booted["pid"], "a new init");

    // Renamed while stopped, through node3: the container runs under its new name.
    v.ok(2, &["stop", "c1", "--force"]).await;
    v.ok(2, &["rename", "c1", "c1b"]).await;
    v.ok(0, &["start", "c1b"]).await;
    let pid = state_of(&v, 2, "c1b").await["pid"].as_i64().unwrap_or(0);
    assert!(pid > 0);
    let names: Vec<String> = driver_of(&c.members[1].dir)
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(names, ["c1b"]);

    // Stopped behind the running daemon's back: every list depth shows it stopped at
    // once (the status comes from LXC's monitor, which is gone), through other members.
    driver_of(&c.members[1].dir)
        .stop("c1b", instance::Stop::Force)
        .await
        .expect("stopped behind the daemon's back");
    let list = v.ok(0, &["list", "--format", "csv", "-c", "nsL"]).await;
    assert_eq!(list.trim(), "c1b,STOPPED,node2");
    let list = v.ok(2, &["list", "--format", "csv", "-c", "ns4"]).await;
    assert_eq!(list.trim(), "c1b,STOPPED,");

    // Delete leaves no process, mount, runtime directory, cgroup or volume.
    v.ok(0, &["delete", "c1b"]).await;
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    let volume = c.members[1].dir.join("storage-pools/pool1/containers/c1b");
    assert!(!volume.exists(), "volume removed");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(
        !mounts.contains(&c.members[1].dir.display().to_string()),
        "nothing mounted from node2's directory"
    );
    assert_eq!(driver_of(&c.members[1].dir).leftovers(), Vec::<String>::new());
    let list = v.ok(1, &["list", "--format", "csv"]).await;
    assert_eq!(list.trim(), "");
}

/// Three members whose directories the containers' root (uid 1000000) can reach.
pub(crate) async fn real_cluster() -> Cluster {
    let c = Cluster::start(3).await;
    c.wait_healthy(3, std::time::Duration::from_secs(60)).await;
    for m in &c.members {
        std::fs::set_permissions(&m.dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    c
}

/// After a test's body: every container, mount and cgroup the members made is purged,
/// then the body's panic goes on, then nothing may have been left.
pub(crate) async fn purge_after(c: &Cluster, outcome: std::thread::Result<()>) {
    let dirs: Vec<PathBuf> = c.members.iter().map(|m| m.dir.clone()).collect();
    let left = purge(&dirs).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// An lxcfs of the test's own, mounted in a temporary directory (so nothing of the
/// host's, such as `/var/lib/lxcfs` or `/run/lxcfs.pid`, is touched): stopped by its PID
/// and unmounted when dropped.
struct Lxcfs {
    child: std::process::Child,
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl Lxcfs {
    async fn start() -> Lxcfs {
        let dir = tempfile::Builder::new()
            .prefix("stapes-lxcfs-")
            .tempdir()
            .unwrap();
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let child = std::process::Command::new("lxcfs")
            .arg("--foreground")
            .arg("--pidfile")
            .arg(dir.path().join("lxcfs.pid"))
            .arg(&mount)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("lxcfs.log")).unwrap())
            .spawn()
            .expect("lxcfs starts");
        let fs = Lxcfs {
            child,
            mount,
            _dir: dir,
        };
        let meminfo = fs.mount.join("proc/meminfo");
        eventually(Duration::from_secs(30), "lxcfs to mount", || async {
            meminfo.exists().then_some(())
        })
        .await;
        fs
    }
}

impl Drop for Lxcfs {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        // lxcfs unmounts itself on SIGTERM; lazily, in case it could not.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        if mounts.contains(&self.mount.display().to_string()) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.mount)
                .status();
        }
    }
}

/// Whether lxcfs can run here (else a message, or a panic under CI=true).
fn lxcfs_ready() -> bool {
    if have_tool("lxcfs") && Path::new("/dev/fuse").exists() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("lxcfs and /dev/fuse are required under CI=true");
    }
    eprintln!("SKIP: this test needs lxcfs (Debian's lxcfs package) and /dev/fuse");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t76_real_containers_through_members_that_do_not_hold_them() {
    if !ready() || !lxcfs_ready() {
        return;
    }
    let lxcfs = Lxcfs::start().await;
    let mount = lxcfs.mount.display().to_string();
    let c = Cluster::start_env(3, &[], &[("STAPES_LXCFS_DIR", &mount)]).await;
    c.wait_healthy(3, std::time::Duration::from_secs(60)).await;
    for m in &c.members {
        std::fs::set_permissions(&m.dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let mut c = c;
    let work = tempfile::tempdir().unwrap();
    let outcome = std::panic::AssertUnwindSafe(body(&mut c, work.path()))
        .catch_unwind()
        .await;
    purge_after(&c, outcome).await;
    // Stopped only now: no container of the test uses it any more.
    drop(lxcfs);
}
