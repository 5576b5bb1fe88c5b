//! Snapshots and copies on a three-member cluster with the official client, on the fake
//! driver (the orchestration: records, files under the pool, forwarding, member to
//! member streams, clashes, a sick member), always through members that do not hold
//! the instance.

use std::path::{Path, PathBuf};
use std::time::Duration;

use stapes_testkit::{eventually, have_root, have_tool};

use super::incus;
use super::t70_instances::cluster_with_image;

const LONG: Duration = Duration::from_secs(60);

pub(crate) fn pool(dir: &Path) -> PathBuf {
    dir.join("storage-pools/pool1")
}

/// Names starting with `.` (half-made copies and moves) anywhere a copy, move or
/// snapshot stages.
pub(crate) fn hidden(pool: &Path) -> Vec<String> {
    let mut dirs = vec![pool.join("containers"), pool.join("containers-snapshots")];
    if let Ok(list) = std::fs::read_dir(pool.join("containers-snapshots")) {
        dirs.extend(list.flatten().map(|e| e.path()));
    }
    dirs.iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|l| l.flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[tokio::test]
async fn t84_snapshot_restore_rename_copy_through_other_members() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (c, v) = cluster_with_image(work.path()).await;
    v.ok(0, &["init", "img", "c1", "--target", "node2"]).await;
    let node2 = pool(&c.members[1].dir);
    let file = node2.join("containers/c1/rootfs/etc/hostname");
    std::fs::write(&file, "one\n").unwrap();

    // Taken through node3, listed through node1.
    v.ok(2, &["snapshot", "create", "c1", "s1"]).await;
    assert_eq!(
        std::fs::read_to_string(node2.join("containers-snapshots/c1/s1/rootfs/etc/hostname")).unwrap(),
        "one\n"
    );
    let list = v.ok(0, &["snapshot", "list", "c1", "--format", "csv"]).await;
    assert!(list.starts_with("s1,"), "{list}");
    let err = v.fails(0, &["snapshot", "create", "c1", "s1"]).await;
    assert!(err.contains("Name 'c1/s1' already in use"), "{err}");

    // Changed, then restored through node1.
    std::fs::write(&file, "two\n").unwrap();
    v.ok(0, &["snapshot", "restore", "c1", "s1"]).await;
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "one\n");

    // Renamed through node3; the instance shows it.
    v.ok(2, &["snapshot", "rename", "c1", "s1", "s2"]).await;
    assert!(node2.join("containers-snapshots/c1/s2").is_dir());
    let show = v.ok(0, &["snapshot", "show", "c1", "s2"]).await;
    assert!(show.contains("name: s2"), "{show}");
    let info = v.ok(2, &["list", "c1", "--format", "csv", "-c", "nS"]).await;
    assert_eq!(info.trim(), "c1,1");
    let info = v.ok(2, &["info", "c1"]).await;
    assert!(info.contains("Snapshots:") && info.contains("s2"), "{info}");
    // A second snapshot, nameless: Incus's pattern names it.
    v.ok(0, &["snapshot", "create", "c1"]).await;
    let list = v
        .ok(1, &["snapshot", "list", "c1", "--format", "csv", "-c", "n"])
        .await;
    assert_eq!(list.lines().collect::<Vec<_>>(), ["s2", "snap0"]);

    // Copied through node1 to node3: the files and the snapshots follow.
    v.ok(0, &["copy", "c1", "c2", "--target", "node3"]).await;
    let node3 = pool(&c.members[2].dir);
    assert_eq!(
        std::fs::read_to_string(node3.join("containers/c2/rootfs/etc/hostname")).unwrap(),
        "one\n"
    );
    assert!(node3
        .join("containers-snapshots/c2/s2/rootfs/etc/hostname")
        .is_file());
    let list = v
        .ok(1, &["snapshot", "list", "c2", "--format", "csv", "-c", "n"])
        .await;
    assert_eq!(list.lines().collect::<Vec<_>>(), ["s2", "snap0"]);
    let config = v.ok(1, &["config", "show", "c2"]).await;
    assert!(config.contains("volatile.base_image"), "{config}");
    assert!(
        config.contains("location: node3")
            || v.ok(1, &["list", "c2", "-c", "L", "--format", "csv"])
                .await
                .contains("node3")
    );

    // Instance only, to node1; from a snapshot, on the source's own member.
    v.ok(2, &["copy", "c1", "c3", "--instance-only", "--target", "node1"])
        .await;
    let node1 = pool(&c.members[0].dir);
    assert!(node1.join("containers/c3/rootfs/etc/hostname").is_file());
    assert!(!node1.join("containers-snapshots/c3").exists());
    std::fs::write(&file, "three\n").unwrap();
    v.ok(0, &["copy", "c1/s2", "c4", "--target", "node2"]).await;
    assert_eq!(
        std::fs::read_to_string(node2.join("containers/c4/rootfs/etc/hostname")).unwrap(),
        "one\n"
    );
    // Without a target, placed by the rule, and started when asked.
    v.ok(1, &["copy", "c1", "c5"]).await;
    let rows = v.ok(0, &["list", "--format", "csv", "-c", "ns"]).await;
    assert!(rows.contains("c5,STOPPED"), "{rows}");

    // A running source: to another member refused as Incus without CRIU refuses a live
    // migration, copied when asked stateless (frozen meanwhile), and left running; on
    // its own member copied stateless.
    v.ok(0, &["start", "c1"]).await;
    let err = v.fails(0, &["copy", "c1", "c6", "--target", "node3"]).await;
    assert!(err.contains("CRIU isn't installed on the source server"), "{err}");
    v.ok(
        0,
        &[
            "copy",
            "c1",
            "c6",
            "--target",
            "node3",
            "--instance-only",
            "--stateless",
        ],
    )
    .await;
    v.ok(2, &["copy", "c1", "c9", "--target", "node2"]).await;
    let rows = v.ok(2, &["list", "--format", "csv", "-c", "ns"]).await;
    assert!(
        rows.contains("c1,RUNNING") && rows.contains("c6,STOPPED") && rows.contains("c9,STOPPED"),
        "{rows}"
    );
    v.ok(0, &["stop", "c1", "--force"]).await;

    // An instance renamed through node1 takes its snapshots' files along, and back.
    v.ok(0, &["rename", "c1", "c1b"]).await;
    assert!(node2
        .join("containers-snapshots/c1b/s2/rootfs/etc/hostname")
        .is_file());
    assert!(!node2.join("containers-snapshots/c1").exists());
    v.ok(2, &["snapshot", "restore", "c1b", "s2"]).await;
    v.ok(0, &["rename", "c1b", "c1"]).await;
    assert!(node2.join("containers-snapshots/c1/s2").is_dir());

    // Deleted through node3: the snapshot's files go; an instance takes its own along.
    v.ok(2, &["snapshot", "delete", "c1", "s2"]).await;
    assert!(!node2.join("containers-snapshots/c1/s2").exists());
    v.ok(0, &["delete", "c2"]).await;
    assert!(!node3.join("containers-snapshots/c2").exists());
    assert!(!node3.join("containers/c2").exists());
    for m in &c.members {
        assert_eq!(hidden(&pool(&m.dir)), Vec::<String>::new());
    }
}

#[tokio::test]
async fn t85_copies_with_a_sick_member_fail_naming_it_and_leave_nothing() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (c, v) = cluster_with_image(work.path()).await;
    v.ok(0, &["init", "img", "c1", "--target", "node2"]).await;
    v.ok(0, &["snapshot", "create", "c1", "s1"]).await;
    v.settle().await;

    // Adversarial requests, straight to the API through node1.
    let t = stapes_testkit::Target::Unix(v.sock[0].clone());
    for (path, body, status, message) in [
        (
            "/1.0/instances/c1/snapshots",
            serde_json::json!({"name": "a/b"}),
            400,
            "Invalid snapshot name",
        ),
        (
            "/1.0/instances/c1/snapshots",
            serde_json::json!({"name": ".."}),
            400,
            "Invalid snapshot name",
        ),
        (
            "/1.0/instances/c1/snapshots",
            serde_json::json!({"name": "x".repeat(65)}),
            400,
            "Maximum name length is 64 characters",
        ),
        (
            "/1.0/instances/c1/snapshots",
            serde_json::json!({"name": "s1"}),
            409,
            "Name 'c1/s1' already in use",
        ),
        (
            "/1.0/instances/c1/snapshots",
            serde_json::json!({"name": "ok", "stateful": true}),
            400,
            "Unable to create a stateful snapshot. CRIU isn't installed",
        ),
        (
            "/1.0/instances/nosuch/snapshots",
            serde_json::json!({"name": "s1"}),
            404,
            "Instance not found",
        ),
        (
            "/1.0/instances/c1/snapshots/s1",
            serde_json::json!({"name": "../up"}),
            400,
            "Invalid snapshot name",
        ),
        (
            "/1.0/instances",
            serde_json::json!({"name": "x", "source": {"type": "copy", "source": "nosuch"}}),
            404,
            "Source instance \"nosuch\" not found",
        ),
        (
            "/1.0/instances",
            serde_json::json!({"name": "x", "source": {"type": "copy", "source": "c1/nosuch"}}),
            404,
            "Snapshot \"c1/nosuch\" not found",
        ),
        (
            "/1.0/instances",
            serde_json::json!({"name": "x", "source": {"type": "copy", "source": "c1/../s1"}}),
            400,
            "Invalid copy source",
        ),
        (
            "/1.0/instances",
            serde_json::json!({"name": "c1", "source": {"type": "copy", "source": "c1"}}),
            409,
            "Instance \"c1\" already exists",
        ),
        (
            "/1.0/instances",
            serde_json::json!({"source": {"type": "copy", "source": ""}}),
            400,
            "Must specify a source instance",
        ),
        (
            "/1.0/instances",
            serde_json::json!({"name": "x", "profiles": ["nope"], "source": {"type": "copy", "source": "c1"}}),
            400,
            "Requested profile \"nope\" doesn't exist",
        ),
        (
            "/1.0/instances",
            serde_json::json!({"name": "x", "config": {"limits.memory": "lots"}, "source": {"type": "copy", "source": "c1"}}),
            400,
            "limits.memory",
        ),
    ] {
        let r = t.send_json("POST", path, &body).await.unwrap();
        let err = r.json()["error"].as_str().unwrap_or("").to_string();
        assert_eq!(r.status, status, "{path} {body}: {err}");
        assert!(err.contains(message), "{path} {body}: {err}");
    }
    let r = t.get("/1.0/instances/c1/snapshots/..").await.unwrap();
    assert_ne!(r.status, 200);
    // Volumes go to members only, never to a client, even a trusted local one.
    let r = t.get("/internal/volumes/c1").await.unwrap();
    assert_eq!(r.status, 403);

    // node3 stops answering: a copy to it fails naming it, and nothing is recorded.
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
    let resume = Resume(c.members[2].pid());
    let conf = v.conf.path();
    let err = eventually(LONG, "a copy to the hung node3 refused naming it", || async {
        let (ok, _, err) = incus(conf, Some(&v.sock[0]), &["copy", "c1", "c7", "--target", "node3"]).await;
        (!ok && err.contains("node3")).then_some(err)
    })
    .await;
    assert!(err.contains("node3"), "{err}");
    drop(resume);
    // The source's member hung: a copy elsewhere fails naming it.
    c.members[1].signal(nix::sys::signal::Signal::SIGSTOP);
    let resume = Resume(c.members[1].pid());
    let err = eventually(LONG, "a copy from the hung node2 refused naming it", || async {
        let (ok, _, err) = incus(conf, Some(&v.sock[0]), &["copy", "c1", "c8", "--target", "node1"]).await;
        (!ok && err.contains("node2")).then_some(err)
    })
    .await;
    assert!(err.contains("node2"), "{err}");
    // Snapshot requests about its instance fail naming it too.
    let (ok, _, err) = incus(conf, Some(&v.sock[2]), &["snapshot", "create", "c1", "s9"]).await;
    assert!(!ok && err.contains("node2"), "{err}");
    drop(resume);
    v.settle().await;
    let list = eventually(LONG, "node2 back", || async {
        let (ok, out, _) = incus(
            conf,
            Some(&v.sock[0]),
            &["snapshot", "list", "c1", "--format", "csv", "-c", "n"],
        )
        .await;
        ok.then_some(out)
    })
    .await;
    assert_eq!(list.trim(), "s1", "nothing taken while its member was hung");
    let rows = v.ok(0, &["list", "--format", "csv", "-c", "n"]).await;
    assert_eq!(rows.trim(), "c1", "nothing half-made is listed");
    for m in &c.members {
        let p = pool(&m.dir);
        for name in ["c7", "c8"] {
            assert!(!p.join("containers").join(name).exists());
            assert!(!p.join("containers-snapshots").join(name).exists());
        }
        assert_eq!(hidden(&p), Vec::<String>::new());
    }
}

#[tokio::test]
async fn t86_the_owner_expires_and_schedules_snapshots() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let c = stapes_testkit::Cluster::start_env(
        3,
        &[("cluster.offline_threshold", "3")],
        &[stapes_testkit::FAKE_DRIVER, ("STAPES_TEST_ROUTES", "true")],
    )
    .await;
    c.wait_healthy(3, LONG).await;
    let v = super::t60_storage_profiles::Via::new(&c);
    super::t70_instances::prepare(&v, &super::t70_instances::image(work.path()), "img").await;
    v.ok(0, &["init", "img", "c1", "--target", "node2"]).await;
    // A schedule that is not one is refused when set, in Incus's words.
    let err = v
        .fails(2, &["config", "set", "c1", "snapshots.schedule=sometimes"])
        .await;
    assert!(
        err.contains(
            "Invalid value for config key \"snapshots.schedule\": Error parsing cron expr: sometimes"
        ),
        "{err}"
    );
    let err = v
        .fails(
            1,
            &["profile", "set", "default", "snapshots.schedule=@fortnightly"],
        )
        .await;
    assert!(err.contains("Error parsing cron expr: @fortnightly"), "{err}");
    v.ok(
        2,
        &[
            "config",
            "set",
            "c1",
            "snapshots.schedule=0 3 1 1 *",
            "snapshots.schedule.stopped=true",
            "snapshots.pattern=auto%d",
            "snapshots.expiry=1H",
        ],
    )
    .await;
    v.settle().await;
    let t = stapes_testkit::Target::Unix(v.sock[0].clone());
    // A snapshot that expires before the pass below runs (at a time given to it, so
    // the member's own minute task, which runs meanwhile, finds nothing to do).
    let r = t
        .send_json(
            "POST",
            "/1.0/instances/c1/snapshots",
            &serde_json::json!({"name": "old", "expires_at": "2099-06-01T00:00:00Z"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{:?}", r.json());
    let conf = v.conf.path();
    eventually(LONG, "the snapshot recorded", || async {
        let (ok, out, _) = incus(
            conf,
            Some(&v.sock[2]),
            &["snapshot", "list", "c1", "--format", "csv", "-c", "n"],
        )
        .await;
        (ok && out.contains("old")).then_some(())
    })
    .await;

    // Another member's pass leaves c1 alone; its owner's expires and schedules.
    let r = t
        .send_json(
            "POST",
            "/internal/test/snapshots/tick?target=node3&at=2100-01-01T03:00:00Z",
            &serde_json::json!({}),
        )
        .await
        .unwrap();
    assert_eq!(r.metadata(), serde_json::json!([]), "{:?}", r.json());
    let r = t
        .send_json(
            "POST",
            "/internal/test/snapshots/tick?target=node2&at=2100-01-01T03:00:00Z",
            &serde_json::json!({}),
        )
        .await
        .unwrap();
    assert_eq!(
        r.metadata(),
        serde_json::json!(["expired c1/old", "took c1/auto0"])
    );
    let list = v
        .ok(1, &["snapshot", "list", "c1", "--format", "csv", "-c", "n"])
        .await;
    assert_eq!(list.trim(), "auto0");
    let node2 = pool(&c.members[1].dir);
    assert!(!node2.join("containers-snapshots/c1/old").exists());
    assert!(node2.join("containers-snapshots/c1/auto0").is_dir());
    let show = v.ok(0, &["snapshot", "show", "c1", "auto0"]).await;
    assert!(
        show.contains("expires_at: 2100-01-01T04:00:00Z"),
        "snapshots.expiry applied: {show}"
    );
}

/// Writes `mib` MiB of data (not sparse) at `path`.
fn big_file(path: &Path, mib: usize) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0x5au8; 1 << 20];
    for _ in 0..mib {
        f.write_all(&block).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t87_a_copy_cut_by_a_member_killed_midway_leaves_nothing_and_can_be_retried() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (mut c, v) = cluster_with_image(work.path()).await;
    v.ok(0, &["init", "img", "c1", "--target", "node2"]).await;
    let node2 = pool(&c.members[1].dir);
    let node3 = pool(&c.members[2].dir);
    big_file(&node2.join("containers/c1/rootfs/big"), 512);
    let t = stapes_testkit::Target::Unix(v.sock[0].clone());
    for killed in [2usize, 1] {
        // The copy through node1 to node3; once node3 stages it, a member dies.
        let body = serde_json::json!({"name": "c7", "source": {"type": "copy", "source": "c1"}});
        let r = t
            .send_json("POST", "/1.0/instances?target=node3", &body)
            .await
            .unwrap();
        assert_eq!(r.status, 202, "{:?}", r.json());
        let op = r.json()["operation"].as_str().unwrap_or("").to_string();
        let op = op.split('?').next().unwrap_or("").to_string();
        eventually(LONG, "node3 to stage the copy", || async {
            (!hidden(&node3).is_empty()).then_some(())
        })
        .await;
        c.members[killed].restart().await;
        c.wait_healthy(3, LONG).await;
        v.settle().await;
        if killed == 1 {
            // The destination lived: its operation failed, naming the source's member.
            let done = t.get(&format!("{op}/wait?timeout=60")).await.unwrap();
            let md = done.metadata();
            assert_eq!(md["status"], "Failure", "{md}");
            assert!(md["err"].as_str().unwrap_or("").contains("node2"), "{md}");
        }
        // Nothing half-made: no record, no volume, no stage left on node3.
        eventually(LONG, "node3 to hold nothing of c7", || async {
            (hidden(&node3).is_empty() && !node3.join("containers/c7").exists()).then_some(())
        })
        .await;
        let rows = v.ok(0, &["list", "--format", "csv", "-c", "n"]).await;
        assert_eq!(rows.trim(), "c1", "member {killed} killed");
    }

    // And again, whole this time.
    v.ok(0, &["copy", "c1", "c7", "--target", "node3"]).await;
    let len = std::fs::metadata(node3.join("containers/c7/rootfs/big"))
        .unwrap()
        .len();
    assert_eq!(len, 512 << 20);
}
