//! Moves between members on a three-member cluster with the official client, on the
//! fake driver (the orchestration: the owner changing only once the data is whole,
//! snapshots following, the old copy removed, a destination killed midway, sick
//! members named), always through members that do not hold the instance.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use stapes_testkit::{eventually, have_root, have_tool, Target};

use super::incus;
use super::t70_instances::cluster_with_image;
use super::t84_snapshots::{hidden, pool};

const LONG: Duration = Duration::from_secs(60);

/// `NAME,LOCATION` rows of the list.
async fn locations(v: &super::t60_storage_profiles::Via, i: usize) -> String {
    v.ok(i, &["list", "--format", "csv", "-c", "nL"]).await
}

#[tokio::test]
async fn t88_move_with_snapshots_rename_and_running_through_other_members() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (c, v) = cluster_with_image(work.path()).await;
    v.ok(0, &["init", "img", "c1", "--target", "node2"]).await;
    let (node1, node2, node3) = (
        pool(&c.members[0].dir),
        pool(&c.members[1].dir),
        pool(&c.members[2].dir),
    );
    std::fs::write(node2.join("containers/c1/rootfs/etc/hostname"), "one\n").unwrap();
    v.ok(2, &["snapshot", "create", "c1", "s1"]).await;
    std::fs::write(node2.join("containers/c1/rootfs/etc/hostname"), "two\n").unwrap();

    // Moved through node1 (neither source nor destination): files, snapshot, record.
    let mut events = stapes_testkit::events_unix(&v.sock[0], "type=lifecycle")
        .await
        .unwrap();
    v.ok(0, &["move", "c1", "--target", "node3"]).await;
    let ev = stapes_testkit::next_lifecycle(&mut events, "instance-migrated").await;
    assert_eq!(ev["metadata"]["source"], "/1.0/instances/c1", "{ev}");
    assert!(locations(&v, 1).await.contains("c1,node3"));
    assert_eq!(
        std::fs::read_to_string(node3.join("containers/c1/rootfs/etc/hostname")).unwrap(),
        "two\n"
    );
    assert_eq!(
        std::fs::read_to_string(node3.join("containers-snapshots/c1/s1/rootfs/etc/hostname")).unwrap(),
        "one\n"
    );
    assert!(!node2.join("containers/c1").exists(), "the old rootfs is gone");
    assert!(!node2.join("containers-snapshots/c1").exists());
    let list = v
        .ok(1, &["snapshot", "list", "c1", "--format", "csv", "-c", "n"])
        .await;
    assert_eq!(list.trim(), "s1");
    // It works where it is now: restored and started through node2.
    v.ok(1, &["snapshot", "restore", "c1", "s1"]).await;
    assert_eq!(
        std::fs::read_to_string(node3.join("containers/c1/rootfs/etc/hostname")).unwrap(),
        "one\n"
    );

    // `move c1 c1new` renames, through node1.
    v.ok(0, &["move", "c1", "c1new"]).await;
    assert!(locations(&v, 0).await.contains("c1new,node3"));
    assert!(node3.join("containers-snapshots/c1new/s1").is_dir());

    // Refusals, each naming what is wrong.
    let err = v.fails(0, &["move", "c1new", "--target", "node3"]).await;
    assert!(
        err.contains("Requested target server is the same as current server"),
        "{err}"
    );
    let err = v.fails(0, &["move", "c1new", "--target", "nosuch"]).await;
    assert!(err.contains("nosuch"), "{err}");

    // Running: refused as Incus refuses a live move without CRIU; stateless, it is
    // stopped, moved and started again on the destination.
    v.ok(1, &["start", "c1new"]).await;
    let err = v.fails(0, &["move", "c1new", "--target", "node1"]).await;
    assert!(err.contains("CRIU isn't installed on the source server"), "{err}");
    let rows = v.ok(0, &["list", "--format", "csv", "-c", "nsL"]).await;
    assert!(rows.contains("c1new,RUNNING,node3"), "{rows}");
    v.ok(1, &["move", "c1new", "--target", "node1", "--stateless"])
        .await;
    let rows = v.ok(2, &["list", "--format", "csv", "-c", "nsL"]).await;
    assert!(rows.contains("c1new,RUNNING,node1"), "{rows}");
    assert!(node1.join("containers-snapshots/c1new/s1").is_dir());
    assert!(!node3.join("containers/c1new").exists());
    for m in &c.members {
        assert_eq!(hidden(&pool(&m.dir)), Vec::<String>::new());
    }
}

/// Writes `mib` MiB that do not compress or sparsify to `path`.
fn incompressible(path: &Path, mib: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
    f.flush().unwrap();
}

/// The bytes in the stages under `pool`.
fn staged_bytes(pool: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(list) = std::fs::read_dir(p) else {
            return 0;
        };
        list.flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => walk(&e.path()),
                Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => 0,
            })
            .sum()
    }
    let containers = pool.join("containers");
    std::fs::read_dir(&containers)
        .map(|l| {
            l.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| walk(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn t89_a_move_killed_midway_leaves_the_source_whole_and_is_retried() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (mut c, v) = cluster_with_image(work.path()).await;
    v.ok(0, &["init", "img", "c1", "--target", "node2"]).await;
    v.ok(0, &["snapshot", "create", "c1", "s1"]).await;
    let node2 = pool(&c.members[1].dir);
    let node3 = pool(&c.members[2].dir);
    let big = node2.join("containers/c1/rootfs/big");
    incompressible(&big, 400);
    let digest = |p: &Path| {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &std::fs::read(p).unwrap())
            .as_ref()
            .to_vec()
    };
    let want = digest(&big);

    // The move, asked through node1; node3 is killed once data has landed there.
    let t = Target::Unix(v.sock[0].clone());
    let r = t
        .send_json(
            "POST",
            "/1.0/instances/c1?target=node3",
            &json!({"name": "c1", "migration": true, "live": true}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{:?}", r.json());
    let op = r.json()["operation"].as_str().unwrap().to_string();
    eventually(LONG, "data arriving on node3", || async {
        (staged_bytes(&node3) > 8 << 20).then_some(())
    })
    .await;
    c.members[2].kill9();
    let r = t.get(&format!("{op}/wait?timeout=60")).await.unwrap();
    let done: Value = r.metadata();
    assert_eq!(done["status"], "Failure", "{done}");
    assert!(
        done["err"].as_str().unwrap_or("").contains("node3"),
        "the failure names the destination: {done}"
    );

    // The instance is whole where it was, and still there per the record.
    assert!(locations(&v, 0).await.contains("c1,node2"));
    assert_eq!(digest(&big), want);
    assert!(node2.join("containers-snapshots/c1/s1").is_dir());

    // node3 back: nothing half-made there; the move run again completes.
    c.members[2].start_again().await;
    c.wait_healthy(3, LONG).await;
    assert_eq!(hidden(&node3), Vec::<String>::new());
    assert!(!node3.join("containers/c1").exists());
    let conf = v.conf.path();
    eventually(LONG, "the move retried", || async {
        let (ok, _, _) = incus(conf, Some(&v.sock[0]), &["move", "c1", "--target", "node3"]).await;
        ok.then_some(())
    })
    .await;
    assert!(locations(&v, 1).await.contains("c1,node3"));
    assert_eq!(digest(&node3.join("containers/c1/rootfs/big")), want);
    assert!(node3.join("containers-snapshots/c1/s1").is_dir());
    assert!(!node2.join("containers/c1").exists());
    for m in &c.members {
        assert_eq!(hidden(&pool(&m.dir)), Vec::<String>::new());
    }
}

#[tokio::test]
async fn t89_moves_with_a_sick_member_fail_naming_it() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (c, v) = cluster_with_image(work.path()).await;
    v.ok(0, &["init", "img", "c1", "--target", "node2"]).await;
    v.settle().await;
    struct Resume(i32);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
    }
    // Members only: a client cannot ask a member to pull an instance.
    let t = Target::Unix(v.sock[0].clone());
    let r = t
        .send_json("POST", "/internal/moves/c1?from=node2", &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 403);

    // The destination hung.
    c.members[2].stop_process().await;
    let resume = Resume(c.members[2].pid());
    let conf = v.conf.path();
    let err = eventually(LONG, "a move to the hung node3 refused naming it", || async {
        let (ok, _, err) = incus(conf, Some(&v.sock[0]), &["move", "c1", "--target", "node3"]).await;
        (!ok && err.contains("node3")).then_some(err)
    })
    .await;
    assert!(err.contains("node3"), "{err}");
    drop(resume);
    // The source hung.
    c.members[1].stop_process().await;
    let resume = Resume(c.members[1].pid());
    let err = eventually(LONG, "a move from the hung node2 refused naming it", || async {
        let (ok, _, err) = incus(conf, Some(&v.sock[0]), &["move", "c1", "--target", "node1"]).await;
        (!ok && err.contains("node2")).then_some(err)
    })
    .await;
    assert!(err.contains("node2"), "{err}");
    drop(resume);
    let rows = eventually(LONG, "node2 back", || async {
        let (ok, out, _) = incus(conf, Some(&v.sock[0]), &["list", "--format", "csv", "-c", "nL"]).await;
        (ok && out.contains("c1,node2")).then_some(out)
    })
    .await;
    assert_eq!(rows.trim(), "c1,node2", "nothing moved");
    // A request the hung member took late ends with what it made removed.
    eventually(LONG, "nothing left on the other members", || async {
        let clean = c.members.iter().all(|m| {
            let p = pool(&m.dir);
            hidden(&p).is_empty() && (m.dir == c.members[1].dir || !p.join("containers/c1").exists())
        });
        clean.then_some(())
    })
    .await;
    assert!(pool(&c.members[1].dir).join("containers/c1/rootfs").is_dir());
}

/// The `NAME,STATE,LOCATION` row of `name`.
async fn row(v: &super::t60_storage_profiles::Via, i: usize, name: &str) -> String {
    let out = v.ok(i, &["list", "--format", "csv", "-c", "nsL"]).await;
    out.lines()
        .find(|l| l.starts_with(&format!("{name},")))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn t89_evacuation_moves_instances_away_and_restore_brings_them_back() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (c, v) = cluster_with_image(work.path()).await;
    v.ok(0, &["launch", "img", "m1", "--target", "node2"]).await;
    v.ok(0, &["init", "img", "m2", "--target", "node2"]).await;
    let stay = [
        "launch",
        "img",
        "m3",
        "--target",
        "node2",
        "-c",
        "cluster.evacuate=stop",
    ];
    v.ok(0, &stay).await;
    let node2 = pool(&c.members[1].dir);
    std::fs::write(node2.join("containers/m1/rootfs/etc/hostname"), "m1 here\n").unwrap();
    v.ok(1, &["snapshot", "create", "m1", "s1"]).await;

    // Evacuated through node1 with the default action (auto): m1 and m2 move to the
    // other members, m1 runs there; m3 (cluster.evacuate=stop) stops in place.
    v.ok(0, &["cluster", "evacuate", "node2", "--force"]).await;
    assert!(
        super::t70_instances::member_shows(&v, 2, "node2", "EVACUATED,Unavailable due to maintenance").await
    );
    let m1 = row(&v, 2, "m1").await;
    assert!(
        m1.starts_with("m1,RUNNING,node") && !m1.ends_with("node2"),
        "{m1}"
    );
    let m2 = row(&v, 2, "m2").await;
    assert!(
        m2.starts_with("m2,STOPPED,node") && !m2.ends_with("node2"),
        "{m2}"
    );
    assert_eq!(row(&v, 2, "m3").await, "m3,STOPPED,node2");
    let at = |r: &str| if r.ends_with("node1") { 0 } else { 2 };
    let p1 = pool(&c.members[at(&m1)].dir);
    assert_eq!(
        std::fs::read_to_string(p1.join("containers/m1/rootfs/etc/hostname")).unwrap(),
        "m1 here\n"
    );
    assert!(p1.join("containers-snapshots/m1/s1").is_dir());
    assert!(!node2.join("containers/m1").exists() && !node2.join("containers/m2").exists());
    let origin = v
        .ok(1, &["config", "get", "m1", "volatile.evacuate.origin"])
        .await;
    assert_eq!(origin.trim(), "node2");

    // Restored through node3: everything is back on node2, running as before.
    v.ok(2, &["cluster", "restore", "node2", "--force"]).await;
    assert_eq!(row(&v, 0, "m1").await, "m1,RUNNING,node2");
    assert_eq!(row(&v, 0, "m2").await, "m2,STOPPED,node2");
    assert_eq!(row(&v, 0, "m3").await, "m3,RUNNING,node2");
    assert!(super::t70_instances::member_shows(&v, 0, "node2", "ONLINE,Fully operational").await);
    assert_eq!(
        std::fs::read_to_string(node2.join("containers/m1/rootfs/etc/hostname")).unwrap(),
        "m1 here\n"
    );
    assert!(node2.join("containers-snapshots/m1/s1").is_dir());
    let origin = v
        .ok(1, &["config", "get", "m1", "volatile.evacuate.origin"])
        .await;
    assert_eq!(origin.trim(), "", "the origin is cleared");
    for m in [0, 2] {
        let p = pool(&c.members[m].dir);
        assert!(!p.join("containers/m1").exists() && !p.join("containers/m2").exists());
        assert_eq!(hidden(&p), Vec::<String>::new());
    }
}
