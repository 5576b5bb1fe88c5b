//! Snapshots and copies of real LXC containers on a three-member cluster with the
//! official client, every step through a member other than the owner: a snapshot of a
//! running container, a file changed, the snapshot restored with the file back and the
//! container running again; a copy to another member that starts there with its files;
//! `incus copy c1/s1 c3`; a move of the running container, stateless, to another
//! member, where it runs again with its files and snapshot; its member evacuated and
//! restored, the container running elsewhere meanwhile.
//!
//! Needs what `t76` needs (root, `lxc`, `incus`, `busybox-static`); whatever the test
//! made is purged afterwards, also when it fails.

use std::path::{Path, PathBuf};

use futures_util::FutureExt;
use stapes_testkit::Cluster;

use super::t60_storage_profiles::Via;
use super::t76_instances_lxc::{busybox_image, purge_after, ready, real_cluster, state_of};

fn rootfs(c: &Cluster, member: usize, name: &str) -> PathBuf {
    c.members[member]
        .dir
        .join("storage-pools/pool1/containers")
        .join(name)
        .join("rootfs")
}

async fn body(c: &mut Cluster, work: &Path) {
    let v = Via::new(c);
    super::t70_instances::prepare(&v, &busybox_image(work), "bb").await;
    v.ok(0, &["launch", "bb", "c1", "--target", "node2"]).await;
    let file = rootfs(c, 1, "c1").join("root/note");
    std::fs::write(&file, "one\n").unwrap();

    // A running container, snapshotted through node3 (frozen for the copy).
    v.ok(2, &["snapshot", "create", "c1", "s1"]).await;
    let st = state_of(&v, 0, "c1").await;
    assert_eq!(st["status"], "Running", "thawed after the snapshot: {st}");
    std::fs::write(&file, "two\n").unwrap();

    // Restored through node1: the file is back, and the container runs again.
    v.ok(0, &["snapshot", "restore", "c1", "s1"]).await;
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "one\n");
    let st = state_of(&v, 2, "c1").await;
    assert_eq!(st["status"], "Running", "{st}");
    assert!(st["pid"].as_i64().unwrap_or(0) > 0, "{st}");

    // Copied, stopped, to node3 through node1; it starts there with its files.
    v.ok(2, &["stop", "c1", "--force"]).await;
    v.ok(0, &["copy", "c1", "c2", "--target", "node3"]).await;
    assert_eq!(
        std::fs::read_to_string(rootfs(c, 2, "c2").join("root/note")).unwrap(),
        "one\n"
    );
    assert!(rootfs(c, 2, "c2").join("bin/busybox").is_file());
    v.ok(1, &["start", "c2"]).await;
    let st = state_of(&v, 0, "c2").await;
    assert!(st["pid"].as_i64().unwrap_or(0) > 0, "c2 runs on node3: {st}");
    let snaps = v
        .ok(1, &["snapshot", "list", "c2", "--format", "csv", "-c", "n"])
        .await;
    assert_eq!(snaps.trim(), "s1");

    // From the snapshot, through node3, to node1.
    std::fs::write(&file, "three\n").unwrap();
    v.ok(2, &["copy", "c1/s1", "c3", "--target", "node1"]).await;
    assert_eq!(
        std::fs::read_to_string(rootfs(c, 0, "c3").join("root/note")).unwrap(),
        "one\n"
    );
    v.ok(2, &["start", "c3"]).await;
    let st = state_of(&v, 1, "c3").await;
    assert_eq!(st["status"], "Running", "{st}");

    for (name, owner) in [("c2", 2), ("c3", 0)] {
        v.ok(1, &["stop", name, "--force"]).await;
        v.ok(1, &["delete", name]).await;
        assert!(!rootfs(c, owner, name).exists());
    }

    // Moved, running and stateless, from node2 to node1 through node3: stopped, its
    // rootfs and snapshot carried over, started there; nothing left on node2.
    v.ok(0, &["start", "c1"]).await;
    v.ok(2, &["move", "c1", "--target", "node1", "--stateless"]).await;
    let rows = v.ok(1, &["list", "c1", "--format", "csv", "-c", "nsL"]).await;
    assert_eq!(rows.trim(), "c1,RUNNING,node1");
    let st = state_of(&v, 2, "c1").await;
    assert!(st["pid"].as_i64().unwrap_or(0) > 0, "c1 runs on node1: {st}");
    assert_eq!(
        std::fs::read_to_string(rootfs(c, 0, "c1").join("root/note")).unwrap(),
        "three\n"
    );
    assert!(!rootfs(c, 1, "c1").exists(), "the old rootfs is gone");
    let snaps = v
        .ok(1, &["snapshot", "list", "c1", "--format", "csv", "-c", "n"])
        .await;
    assert_eq!(snaps.trim(), "s1");
    let out = v.ok(1, &["exec", "c1", "--", "cat", "/root/note"]).await;
    assert_eq!(out, "three\n");

    // node1 evacuated through node2: c1 (cluster.evacuate auto) moves and runs
    // elsewhere; restored through node3, it runs on node1 again.
    v.ok(1, &["cluster", "evacuate", "node1", "--force"]).await;
    let rows = v.ok(2, &["list", "c1", "--format", "csv", "-c", "nsL"]).await;
    assert!(
        rows.trim() == "c1,RUNNING,node2" || rows.trim() == "c1,RUNNING,node3",
        "{rows}"
    );
    assert!(!rootfs(c, 0, "c1").exists(), "nothing left on node1");
    v.ok(2, &["cluster", "restore", "node1", "--force"]).await;
    let rows = v.ok(1, &["list", "c1", "--format", "csv", "-c", "nsL"]).await;
    assert_eq!(rows.trim(), "c1,RUNNING,node1");
    let out = v.ok(1, &["exec", "c1", "--", "cat", "/root/note"]).await;
    assert_eq!(out, "three\n");

    v.ok(1, &["stop", "c1", "--force"]).await;
    v.ok(1, &["delete", "c1"]).await;
    for m in 0..3 {
        assert!(!c.members[m]
            .dir
            .join("storage-pools/pool1/containers-snapshots/c1")
            .exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t84_real_snapshots_and_copies_through_members_that_do_not_hold_them() {
    if !ready() {
        return;
    }
    let mut c = real_cluster().await;
    let work = tempfile::tempdir().unwrap();
    let outcome = std::panic::AssertUnwindSafe(body(&mut c, work.path()))
        .catch_unwind()
        .await;
    purge_after(&c, outcome).await;
}
