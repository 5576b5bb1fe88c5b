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

/// Sets a fake container's simulated status, as a host reboot would leave it.
fn fake_status(member_dir: &Path, name: &str, status: &str) {
    let path = member_dir.join("fake").join(name).join("instance.json");
    let mut rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    rec["status"] = status.into();
    std::fs::write(&path, serde_json::to_vec(&rec).unwrap()).unwrap();
}

/// `config get` of one key through member `i`.
async fn key(v: &Via, i: usize, name: &str, k: &str) -> String {
    v.ok(i, &["config", "get", name, k]).await.trim().to_string()
}

#[tokio::test]
async fn t71_a_restarted_member_cleans_a_cut_launch_writes_back_and_autostarts() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (mut c, v) = cluster_with_image(work.path()).await;
    let on2 = ["--target", "node2"];
    v.ok(0, &[&["launch", "img", "a1"][..], &on2].concat()).await;
    v.ok(
        0,
        &[&["launch", "img", "a2", "-c", "boot.autostart=false"][..], &on2].concat(),
    )
    .await;
    v.ok(
        0,
        &[&["init", "img", "a3", "-c", "boot.autostart=true"][..], &on2].concat(),
    )
    .await;
    v.ok(0, &[&["init", "img", "a4"][..], &on2].concat()).await;
    assert_eq!(key(&v, 1, "a1", "volatile.last_state.power").await, "RUNNING");

    // A launch on node2 held inside the runtime, then node2 killed (-9) in the middle.
    let node2 = c.members[1].dir.clone();
    std::fs::create_dir_all(node2.join("fake")).unwrap();
    std::fs::write(node2.join("fake/hang-create"), "").unwrap();
    let t = stapes_testkit::Target::Unix(v.sock[0].clone());
    let body = serde_json::json!({"name": "h1", "source": {"type": "image", "alias": "img"}});
    let r = t
        .send_json("POST", "/1.0/instances?target=node2", &body)
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{:?}", r.json());
    let held = node2.join("fake/create-held");
    eventually(LONG, "the launch to reach the runtime", || async {
        held.exists().then_some(())
    })
    .await;
    assert!(node2.join("storage-pools/pool1/containers/h1/rootfs").is_dir());
    c.members[1].kill9();
    std::fs::remove_file(node2.join("fake/hang-create")).unwrap();
    // While it is down, a1 and a2 stop as a host reboot would stop them.
    fake_status(&node2, "a1", "stopped");
    fake_status(&node2, "a2", "stopped");
    c.members[1].start_again().await;

    // Through node1: the cut launch is gone whole, a1 (running when last seen) and a3
    // (boot.autostart) run again, a2 (boot.autostart=false) and a4 stay stopped.
    let conf = v.conf.path();
    let want = [
        "a1,RUNNING,node2",
        "a2,STOPPED,node2",
        "a3,RUNNING,node2",
        "a4,STOPPED,node2",
    ];
    eventually(
        LONG,
        "node2's instances as its start-up pass leaves them",
        || async {
            let (ok, out, _) = incus(conf, Some(&v.sock[0]), &["list", "--format", "csv", "-c", "nsL"]).await;
            let rows: Vec<&str> = out.lines().collect();
            (ok && rows == want).then_some(())
        },
    )
    .await;
    assert!(
        !node2.join("storage-pools/pool1/containers/h1").exists(),
        "volume removed"
    );
    assert!(!node2.join("fake/h1").exists(), "runtime directory removed");
    let err = v.fails(2, &["info", "h1"]).await;
    assert!(err.contains("not found"), "{err}");
    // The status it found was written back into the record.
    eventually(LONG, "a2's last state written back", || async {
        (key(&v, 2, "a2", "volatile.last_state.power").await == "STOPPED").then_some(())
    })
    .await;
    assert_eq!(key(&v, 2, "a3", "volatile.last_state.power").await, "RUNNING");
}

/// Whether `incus cluster list` through member `i` shows `member` with `status,message`.
pub(crate) async fn member_shows(v: &Via, i: usize, member: &str, status_message: &str) -> bool {
    let out = v.ok(i, &["cluster", "list", "--format", "csv"]).await;
    out.lines()
        .any(|l| l.starts_with(&format!("{member},")) && l.ends_with(status_message))
}

#[tokio::test]
async fn t73_evacuate_stops_restore_starts_and_placement_follows_the_members_settings() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (c, v) = cluster_with_image(work.path()).await;
    v.ok(0, &["launch", "img", "e1", "--target", "node2"]).await;
    v.ok(
        0,
        &[
            "launch",
            "img",
            "e2",
            "--target",
            "node2",
            "-c",
            "cluster.evacuate=force-stop",
        ],
    )
    .await;
    v.ok(0, &["init", "img", "e3", "--target", "node2"]).await;
    let err = v
        .fails(0, &["config", "set", "e3", "cluster.evacuate=sometimes"])
        .await;
    assert!(err.contains("cluster.evacuate"), "{err}");

    // An evacuation that fails midway (e2 refuses to stop) leaves the member in
    // service, and runs again once the cause is gone.
    let refuse = c.members[1].dir.join("fake/e2/fail-stop");
    std::fs::write(&refuse, "").unwrap();
    let err = v
        .fails(
            0,
            &["cluster", "evacuate", "node2", "--force", "--action", "stop"],
        )
        .await;
    assert!(err.contains("Failed to evacuate instances"), "{err}");
    assert!(err.contains("\"e2\""), "{err}");
    assert!(member_shows(&v, 1, "node2", "ONLINE,Fully operational").await);
    std::fs::remove_file(&refuse).unwrap();

    // Evacuated through node1: node2's running instances stop, the member shows it.
    let out = v
        .ok(
            0,
            &["cluster", "evacuate", "node2", "--force", "--action", "stop"],
        )
        .await;
    assert!(!out.contains("Error"), "{out}");
    assert!(member_shows(&v, 2, "node2", "EVACUATED,Unavailable due to maintenance").await);
    let all = rows(&v, 2).await;
    for e in ["e1,STOPPED,node2", "e2,STOPPED,node2", "e3,STOPPED,node2"] {
        assert!(all.contains(&e.to_string()), "{all:?}");
    }
    let err = v
        .fails(
            0,
            &["cluster", "evacuate", "node2", "--force", "--action", "stop"],
        )
        .await;
    assert!(err.contains("Cluster member is already evacuated"), "{err}");

    // New instances avoid it; a target naming it is refused in Incus's words.
    let err = v.fails(1, &["launch", "img", "x1", "--target", "node2"]).await;
    assert!(err.contains("Cluster member is evacuated"), "{err}");
    v.ok(1, &["init", "img", "x2"]).await;
    v.ok(1, &["init", "img", "x3"]).await;
    let placed = rows(&v, 0).await;
    assert!(
        placed
            .iter()
            .filter(|r| r.starts_with('x'))
            .all(|r| !r.ends_with("node2")),
        "{placed:?}"
    );

    // Restored: what was running runs again, what was stopped stays stopped.
    v.ok(2, &["cluster", "restore", "node2", "--force"]).await;
    let all = rows(&v, 0).await;
    for e in ["e1,RUNNING,node2", "e2,RUNNING,node2", "e3,STOPPED,node2"] {
        assert!(all.contains(&e.to_string()), "{all:?}");
    }
    assert!(member_shows(&v, 0, "node2", "ONLINE,Fully operational").await);
    let err = v.fails(0, &["cluster", "restore", "node2", "--force"]).await;
    assert!(err.contains("Cluster member is already restored"), "{err}");

    // scheduler.instance: manual and group members take only targeted instances.
    v.ok(0, &["cluster", "set", "node1", "scheduler.instance=manual"])
        .await;
    v.ok(1, &["cluster", "set", "node3", "scheduler.instance=group"])
        .await;
    assert_eq!(
        v.ok(2, &["cluster", "get", "node1", "scheduler.instance"])
            .await
            .trim(),
        "manual"
    );
    let err = v
        .fails(0, &["cluster", "set", "node1", "scheduler.instance=often"])
        .await;
    assert!(err.contains("scheduler.instance"), "{err}");
    for n in ["y1", "y2", "y3"] {
        v.ok(0, &["init", "img", n]).await;
    }
    v.ok(0, &["init", "img", "y4", "--target", "node1"]).await;
    let all = rows(&v, 1).await;
    for r in [
        "y1,STOPPED,node2",
        "y2,STOPPED,node2",
        "y3,STOPPED,node2",
        "y4,STOPPED,node1",
    ] {
        assert!(all.contains(&r.to_string()), "{all:?}");
    }
}

#[tokio::test]
async fn t77_rename_a_stopped_instance_through_another_member() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (c, v) = cluster_with_image(work.path()).await;
    v.ok(0, &["launch", "img", "r1", "--target", "node2"]).await;
    v.ok(0, &["init", "img", "r3", "--target", "node3"]).await;
    let err = v.fails(2, &["rename", "r1", "r2"]).await;
    assert!(err.contains("Renaming of running instance not allowed"), "{err}");
    v.ok(2, &["stop", "r1"]).await;
    let err = v.fails(2, &["rename", "r1", "r3"]).await;
    assert!(err.contains("Name \"r3\" already in use"), "{err}");
    let err = v.fails(2, &["rename", "r1", "bad_name"]).await;
    assert!(err.contains("Invalid instance name"), "{err}");
    // A move to another server (no `?target=`) is a later feature, and says so.
    let t = stapes_testkit::Target::Unix(v.sock[0].clone());
    let r = t
        .send_json(
            "POST",
            "/1.0/instances/r1",
            &serde_json::json!({"name": "r9", "migration": true}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 501, "{:?}", r.json());

    let mut events = stapes_testkit::events_unix(&v.sock[0], "type=lifecycle")
        .await
        .unwrap();
    v.ok(2, &["rename", "r1", "r2"]).await;
    let ev = stapes_testkit::next_lifecycle(&mut events, "instance-renamed").await;
    assert_eq!(ev["metadata"]["source"], "/1.0/instances/r2", "{ev}");
    assert_eq!(ev["metadata"]["context"]["old_name"], "r1", "{ev}");
    assert_eq!(ev["location"], "node2", "{ev}");

    let all = rows(&v, 0).await;
    assert!(all.contains(&"r2,STOPPED,node2".to_string()), "{all:?}");
    assert!(all.iter().all(|r| !r.starts_with("r1,")), "{all:?}");
    let node2 = &c.members[1].dir;
    assert!(node2
        .join("storage-pools/pool1/containers/r2/rootfs/etc/hostname")
        .is_file());
    assert!(!node2.join("storage-pools/pool1/containers/r1").exists());
    assert!(node2.join("fake/r2").is_dir() && !node2.join("fake/r1").exists());
    v.ok(1, &["start", "r2"]).await;
    assert!(rows(&v, 2).await.contains(&"r2,RUNNING,node2".to_string()));
    let err = v.fails(1, &["info", "r1"]).await;
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test]
async fn t79_list_filters_all_projects_and_target() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (_c, v) = cluster_with_image(work.path()).await;
    v.ok(
        0,
        &["launch", "img", "f1", "--target", "node1", "-c", "user.role=web"],
    )
    .await;
    v.ok(0, &["init", "img", "f2", "--target", "node2"]).await;
    v.ok(0, &["launch", "img", "f3", "--target", "node3"]).await;
    v.ok(0, &["init", "img", "f10", "--target", "node3"]).await;

    // The official client turns its arguments into filter= and shows what comes back.
    let names = |out: String| out.lines().map(str::to_string).collect::<Vec<_>>();
    let list = |args: &'static [&'static str]| {
        let v = &v;
        async move {
            let mut all = vec!["list", "--format", "csv", "-c", "n"];
            all.extend_from_slice(args);
            names(v.ok(1, &all).await)
        }
    };
    assert_eq!(list(&["f1"]).await, ["f1", "f10"], "a name is a prefix");
    assert_eq!(list(&["status=running"]).await, ["f1", "f3"]);
    assert_eq!(
        list(&["location=node3"]).await,
        ["f3", "f10"],
        "the client sorts naturally"
    );
    assert_eq!(list(&["user.role=web"]).await, ["f1"]);
    assert_eq!(list(&["status=stopped", "location=node3"]).await, ["f10"]);
    let all = v
        .ok(2, &["list", "--all-projects", "--format", "csv", "-c", "n"])
        .await;
    assert_eq!(names(all), ["f1", "f2", "f3", "f10"]);

    // The API itself: Incus's language, ?target= as a filter, all-projects.
    let t = stapes_testkit::Target::Unix(v.sock[2].clone());
    let get = |q: &'static str| {
        let t = &t;
        async move {
            let r = t.get(&format!("/1.0/instances?{q}")).await.unwrap();
            (r.status, r.json())
        }
    };
    let (s, body) = get("recursion=0&filter=name%20eq%20f1%20or%20name%20eq%20f2").await;
    assert_eq!(s, 200);
    assert_eq!(
        body["metadata"],
        serde_json::json!(["/1.0/instances/f1", "/1.0/instances/f2"])
    );
    let (_, body) = get("recursion=1&filter=not%20location%20eq%20node1%20and%20status%20eq%20running").await;
    let got: Vec<&str> = body["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(got, ["f3"]);
    let (_, body) = get("recursion=2&filter=state.status%20eq%20Stopped&target=node3").await;
    let got: Vec<&str> = body["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(got, ["f10"]);
    let (_, body) = get("recursion=1&all-projects=true").await;
    let items = body["metadata"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    assert!(items.iter().all(|i| i["project"] == "default"), "{body}");
    let (s, body) = get("filter=name%20eq").await;
    assert_eq!(s, 400);
    assert!(
        body["error"].as_str().unwrap_or("").starts_with("Invalid filter"),
        "{body}"
    );
    let (s, body) = get("all-projects=true&project=default").await;
    assert_eq!(s, 400);
    assert_eq!(
        body["error"],
        "Cannot specify a project when requesting all projects"
    );
}

#[tokio::test]
async fn t80_etags_guard_instance_edits_through_another_member() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (_c, v) = cluster_with_image(work.path()).await;
    v.ok(0, &["init", "img", "g1", "--target", "node2"]).await;
    let t = stapes_testkit::Target::Unix(v.sock[0].clone());
    let etag_of = |r: &stapes_testkit::Resp| {
        r.headers
            .get("etag")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let r = t.get("/1.0/instances/g1").await.unwrap();
    let first = etag_of(&r);
    assert!(first.len() > 2, "an ETag: {:?}", r.headers);
    let full = t.get("/1.0/instances/g1?recursion=1").await.unwrap();
    assert_eq!(etag_of(&full), first, "the same object, the same ETag");
    let put = r.json()["metadata"].clone();
    let send = |method: &'static str, etag: String, body: serde_json::Value| {
        let t = &t;
        async move {
            t.request(
                method,
                "/1.0/instances/g1",
                Some(serde_json::to_vec(&body).unwrap()),
                &[("If-Match", etag.as_str()), ("Content-Type", "application/json")],
            )
            .await
            .unwrap()
        }
    };
    let r = send("PUT", "\"nope\"".into(), put.clone()).await;
    assert_eq!(r.status, 412, "{:?}", r.json());
    let mut changed = put.clone();
    changed["config"]["user.note"] = "one".into();
    let r = send("PUT", first.clone(), changed).await;
    assert_eq!(r.status, 202, "{:?}", r.json());
    let second = eventually(LONG, "the edit to land", || async {
        let r = t.get("/1.0/instances/g1").await.ok()?;
        (r.json()["metadata"]["config"]["user.note"] == "one").then(|| etag_of(&r))
    })
    .await;
    assert_ne!(second, first);
    let patch = serde_json::json!({"config": {"user.more": "two"}});
    let r = send("PATCH", first, patch.clone()).await;
    assert_eq!(r.status, 412, "a stale ETag");
    let r = send("PATCH", second, patch).await;
    assert_eq!(r.status, 202, "{:?}", r.json());
    // The official client sends the ETag it read with an edit.
    v.ok(1, &["config", "set", "g1", "user.third=3"]).await;
    assert_eq!(v.ok(2, &["config", "get", "g1", "user.more"]).await.trim(), "two");
}
