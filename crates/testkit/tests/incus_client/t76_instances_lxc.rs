//! Real LXC containers on a three-member cluster with the official client, every step
//! through a member other than the owner: launch onto node2 through node1, list, stop
//! and start, the holder killed with -9 and started again with the container still
//! running, delete leaving no process, mount or cgroup. The image is built offline
//! from Debian's `busybox-static`.
//!
//! Needs root, `lxc`, `incus` and `busybox-static`: skipped with a message without
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
    for applet in ["sh", "sleep", "mount", "cat", "ls"] {
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

    // Delete leaves no process, mount, runtime directory, cgroup or volume.
    v.ok(2, &["stop", "c1", "--force"]).await;
    v.ok(0, &["delete", "c1"]).await;
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    let volume = c.members[1].dir.join("storage-pools/pool1/containers/c1");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t76_real_containers_through_members_that_do_not_hold_them() {
    if !ready() {
        return;
    }
    let mut c = Cluster::start(3).await;
    c.wait_healthy(3, std::time::Duration::from_secs(60)).await;
    // The container's root (uid 1000000) must be able to reach its rootfs.
    for m in &c.members {
        std::fs::set_permissions(&m.dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let outcome = std::panic::AssertUnwindSafe(body(&mut c, work.path()))
        .catch_unwind()
        .await;
    let dirs: Vec<PathBuf> = c.members.iter().map(|m| m.dir.clone()).collect();
    let left = purge(&dirs).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    assert!(left.is_empty(), "left behind: {left:?}");
}
