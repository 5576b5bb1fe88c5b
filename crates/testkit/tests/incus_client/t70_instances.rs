//! Instances on a three-member cluster with the official client, every member running
//! the in-process fake driver (placement, forwarding and lists need no real container):
//! `launch --target` through another member, placement by fewest instances, list with
//! the location through any member, stop/start/delete through a member that does not
//! hold the instance, two launches of one name at once, and the list while a holder is
//! hung.

use std::path::Path;
use std::time::Duration;

use stapes_testkit::{eventually, have_root, have_tool, Cluster, FAKE_DRIVER};

use super::incus;
use super::t60_storage_profiles::Via;

const LONG: Duration = Duration::from_secs(60);

/// A small unified image (`metadata.yaml`, `rootfs/`) as a gzip tarball in `dir`.
pub(crate) fn image(dir: &Path) -> std::path::PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("rootfs/etc")).unwrap();
    std::fs::create_dir_all(tree.join("rootfs/sbin")).unwrap();
    std::fs::write(
        tree.join("metadata.yaml"),
        "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: Test\n  os: busybox\ntemplates: {}\n",
    )
    .unwrap();
    std::fs::write(tree.join("rootfs/etc/hostname"), "test\n").unwrap();
    let file = dir.join("image.tar.gz");
    let st = std::process::Command::new("tar")
        .current_dir(&tree)
        .args(["-czf", file.to_str().unwrap(), "metadata.yaml", "rootfs"])
        .status()
        .expect("tar runs");
    assert!(st.success());
    file
}

/// `name,status,location` rows of `incus list` through member `i`.
async fn rows(v: &Via, i: usize) -> Vec<String> {
    let out = v.ok(i, &["list", "--format", "csv", "-c", "nsL"]).await;
    out.lines().map(str::to_string).collect()
}

/// Three members on the fake driver, a pool on each, the default profile's root disk
/// on it, and the image `img` imported through node1.
pub(crate) async fn cluster_with_image(work: &Path) -> (Cluster, Via) {
    let c = Cluster::start_env(3, &[("cluster.offline_threshold", "3")], &[FAKE_DRIVER]).await;
    c.wait_healthy(3, LONG).await;
    let v = Via::new(&c);
    prepare(&v, &image(work), "img").await;
    (c, v)
}

/// `pool1` on every member of three, the default profile's root disk on it, and the
/// image `file` imported through node1 as `alias`.
pub(crate) async fn prepare(v: &Via, file: &Path, alias: &str) {
    for n in ["node1", "node2", "node3"] {
        v.ok(0, &["storage", "create", "pool1", "dir", "--target", n])
            .await;
    }
    v.ok(1, &["storage", "create", "pool1", "dir"]).await;
    v.ok(
        2,
        &[
            "profile",
            "device",
            "add",
            "default",
            "root",
            "disk",
            "path=/",
            "pool=pool1",
        ],
    )
    .await;
    v.ok(0, &["image", "import", file.to_str().unwrap(), "--alias", alias])
        .await;
}

#[tokio::test]
async fn t70_launch_list_stop_start_delete_through_other_members() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (c, v) = cluster_with_image(work.path()).await;

    // Launched through node1 onto node2, which fetches the image it lacks.
    v.ok(0, &["launch", "img", "c1", "--target", "node2"]).await;
    assert_eq!(rows(&v, 2).await, ["c1,RUNNING,node2"]);
    let volume = c.members[1].dir.join("storage-pools/pool1/containers/c1");
    assert!(volume.join("rootfs/etc/hostname").is_file(), "unpacked on node2");
    assert!(
        !c.members[0]
            .dir
            .join("storage-pools/pool1/containers/c1")
            .exists(),
        "nothing on node1"
    );

    // Without a target, the members with fewer instances fill up first.
    v.ok(2, &["launch", "img", "c2"]).await;
    v.ok(1, &["launch", "img", "c3"]).await;
    let mut places: Vec<String> = rows(&v, 0)
        .await
        .iter()
        .map(|r| r.rsplit(',').next().unwrap_or("").to_string())
        .collect();
    places.sort();
    assert_eq!(places, ["node1", "node2", "node3"]);

    // State changes and show through members that do not hold c1.
    v.ok(2, &["stop", "c1"]).await;
    assert!(rows(&v, 0).await.contains(&"c1,STOPPED,node2".to_string()));
    let show = v.ok(0, &["config", "show", "c1"]).await;
    assert!(show.contains("volatile.base_image"), "{show}");
    let err = v.fails(0, &["launch", "img", "c1"]).await;
    assert!(err.contains("Instance \"c1\" already exists"), "{err}");
    v.ok(0, &["start", "c1"]).await;
    let err = v.fails(2, &["delete", "c1"]).await;
    assert!(err.to_lowercase().contains("running"), "{err}");
    v.ok(2, &["stop", "c1"]).await;
    v.ok(2, &["delete", "c1"]).await;
    assert!(!volume.exists(), "the volume goes with the instance");
    let left = rows(&v, 1).await;
    assert!(left.iter().all(|r| !r.starts_with("c1,")), "{left:?}");
    let err = v.fails(0, &["info", "c1"]).await;
    assert!(err.contains("not found"), "{err}");

    // A bad target, in Incus's words.
    let err = v.fails(0, &["launch", "img", "c9", "--target", "node9"]).await;
    assert!(err.contains("Cluster member \"node9\" not found"), "{err}");
}

#[tokio::test]
async fn t72_two_launches_of_one_name_give_one_instance() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (_c, v) = cluster_with_image(work.path()).await;
    v.settle().await;
    let conf = v.conf.path();
    let (a, b) = tokio::join!(
        incus(
            conf,
            Some(&v.sock[0]),
            &["init", "img", "dup", "--target", "node1"]
        ),
        incus(
            conf,
            Some(&v.sock[2]),
            &["init", "img", "dup", "--target", "node3"]
        ),
    );
    assert!(a.0 != b.0, "exactly one succeeds: {a:?} {b:?}");
    let err = if a.0 { b.2 } else { a.2 };
    assert!(err.contains("Instance \"dup\" already exists"), "{err}");
    let all = rows(&v, 1).await;
    assert_eq!(all.iter().filter(|r| r.starts_with("dup,")).count(), 1, "{all:?}");
}

#[tokio::test]
async fn t74_a_hung_member_shows_its_instances_as_error_and_the_list_still_answers() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (c, v) = cluster_with_image(work.path()).await;
    v.ok(0, &["launch", "img", "a1", "--target", "node1"]).await;
    v.ok(0, &["launch", "img", "a3", "--target", "node3"]).await;
    v.settle().await;
    // node3 stops answering (the process is held, not killed).
    c.members[2].signal(nix::sys::signal::Signal::SIGSTOP);
    struct Resume(i32);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
    }
    let _resume = Resume(c.members[2].pid());
    let conf = v.conf.path();
    let out = eventually(LONG, "the list through node2 with a3 in error", || async {
        let (ok, out, _) = incus(conf, Some(&v.sock[1]), &["list", "--format", "csv", "-c", "nsL"]).await;
        (ok && out.contains("a3,ERROR,node3")).then_some(out)
    })
    .await;
    assert!(out.contains("a1,RUNNING,node1"), "{out}");
}

#[tokio::test]
async fn t78_bad_launches_are_refused_and_leave_nothing() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (c, v) = cluster_with_image(work.path()).await;
    v.settle().await;
    let t = stapes_testkit::Target::Unix(v.sock[0].clone());
    let img = serde_json::json!({"type": "image", "alias": "img"});
    for (body, status, message) in [
        (
            serde_json::json!({"name": "a.b", "source": img}),
            400,
            "Invalid instance name: Name can only contain alphanumeric and hyphen characters",
        ),
        (
            serde_json::json!({"name": "../x", "source": img}),
            400,
            "The character \"/\" is reserved for snapshots",
        ),
        (
            serde_json::json!({"name": "-x", "source": img}),
            400,
            "Invalid instance name: Name must not start with \"-\" character",
        ),
        (
            serde_json::json!({"name": "x", "type": "virtual-machine", "source": img}),
            400,
            "not supported",
        ),
        (
            serde_json::json!({"name": "x", "source": {"type": "copy", "source": "c1"}}),
            404,
            "Source instance \"c1\" not found",
        ),
        (
            serde_json::json!({"name": "x", "source": {"type": "image", "alias": "nope"}}),
            404,
            "Image alias \"nope\" not found",
        ),
        (
            serde_json::json!({"name": "x", "profiles": ["nope"], "source": img}),
            400,
            "Requested profile \"nope\" doesn't exist",
        ),
        (
            serde_json::json!({"name": "x", "config": {"limits.memory": "lots"}, "source": img}),
            400,
            "limits.memory",
        ),
    ] {
        let r = t.send_json("POST", "/1.0/instances", &body).await.unwrap();
        let err = r.json()["error"].as_str().unwrap_or("").to_string();
        assert_eq!(r.status, status, "{body}: {err}");
        assert!(err.contains(message), "{body}: {err}");
    }
    let r = t.get("/1.0/instances").await.unwrap();
    assert_eq!(r.metadata(), serde_json::json!([]), "nothing recorded");
    for m in &c.members {
        let containers = m.dir.join("storage-pools/pool1/containers");
        let left: Vec<_> = std::fs::read_dir(&containers)
            .map(|d| d.flatten().count())
            .into_iter()
            .collect();
        assert!(left.iter().all(|n| *n == 0), "{containers:?} holds {left:?}");
    }
}
