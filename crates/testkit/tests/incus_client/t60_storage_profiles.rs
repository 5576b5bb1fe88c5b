//! Storage pools and profiles driven by the official client, each command through a
//! member other than the one before: pools pending on every member then created, a
//! member that fails and a retry that finishes, `?target=` views, the root disk of
//! `default` on a pool, and the profile commands. Standalone: one-step pools, `info`
//! from the file system, and `admin init --preseed` with `storage_pools` and `profiles`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use stapes_testkit::{have_tool, Cluster, Member, Target};

use super::{incus, incus_stdin, ok};

/// Runs `incus ARGS` expecting failure; its stderr.
async fn fails(conf: &Path, socket: &Path, args: &[&str]) -> String {
    let (success, stdout, stderr) = incus(conf, Some(socket), args).await;
    assert!(!success, "incus {args:?} succeeded: {stdout}");
    stderr
}

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("yaml: {e}\n{text}"))
}

/// `NAME,DRIVER,...,STATE` rows of `storage list --format csv`, by name: the state.
async fn pool_state(conf: &Path, socket: &Path, name: &str) -> String {
    let list = ok(conf, Some(socket), &["storage", "list", "--format", "csv"]).await;
    list.lines()
        .find(|l| l.starts_with(&format!("{name},")))
        .and_then(|l| l.rsplit(',').next())
        .unwrap_or_default()
        .to_string()
}

fn layout_made(pool_dir: &Path) -> bool {
    ["containers", "images", "custom"]
        .iter()
        .all(|d| pool_dir.join(d).is_dir())
}

/// The official client on each member of a cluster, one client configuration for all.
///
/// A member answers reads from its own copy of the state, which may be a moment behind
/// the member that took the last write; so each command first waits (bounded) until
/// every member that answers has applied as much as the others, as a user typing the
/// next command would give it time to.
pub(crate) struct Via {
    pub(crate) conf: tempfile::TempDir,
    pub(crate) sock: Vec<PathBuf>,
}

impl Via {
    pub(crate) fn new(cluster: &Cluster) -> Via {
        Via {
            conf: tempfile::tempdir().unwrap(),
            sock: cluster.members.iter().map(Member::socket).collect(),
        }
    }

    pub(crate) async fn settle(&self) {
        stapes_testkit::eventually(Duration::from_secs(20), "members applied alike", || async {
            let mut applied = std::collections::BTreeSet::new();
            for s in &self.sock {
                if let Ok(r) = Target::Unix(s.clone()).get("/internal/ready").await {
                    applied.insert(r.metadata()["applied"].to_string());
                }
            }
            (applied.len() == 1).then_some(())
        })
        .await
    }

    pub(crate) async fn ok(&self, i: usize, args: &[&str]) -> String {
        self.settle().await;
        ok(self.conf.path(), Some(&self.sock[i]), args).await
    }

    pub(crate) async fn fails(&self, i: usize, args: &[&str]) -> String {
        self.settle().await;
        fails(self.conf.path(), &self.sock[i], args).await
    }

    pub(crate) async fn stdin(&self, i: usize, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        self.settle().await;
        incus_stdin(self.conf.path(), Some(&self.sock[i]), args, stdin).await
    }

    async fn pool_state(&self, i: usize, name: &str) -> String {
        self.settle().await;
        pool_state(self.conf.path(), &self.sock[i], name).await
    }
}

/// A healthy three-member cluster and the client on each member.
async fn three_members() -> (Cluster, Via) {
    let cluster = Cluster::start(3).await;
    cluster.wait_healthy(3, Duration::from_secs(60)).await;
    let v = Via::new(&cluster);
    (cluster, v)
}

#[tokio::test]
async fn t60_pools_pending_on_every_member_then_created_and_profiles_through_any_member() {
    if !have_tool("incus") {
        return;
    }
    let (cluster, v) = three_members().await;
    let dir: Vec<PathBuf> = cluster.members.iter().map(|m| m.dir.clone()).collect();
    // node3 keeps its pool in a directory of the operator's choosing.
    let outside = tempfile::tempdir().unwrap();
    let source3 = outside.path().join("pool1");
    std::fs::create_dir(&source3).unwrap();

    // Member-specific keys only with --target; the global step refuses them.
    let err = v.fails(0, &["storage", "create", "pool1", "dir"]).await;
    assert!(
        err.contains("Pool not pending on any node (use --target <node> first)"),
        "{err}"
    );
    let err = v
        .fails(
            1,
            &[
                "storage",
                "create",
                "pool1",
                "dir",
                "rsync.bwlimit=1",
                "--target",
                "node1",
            ],
        )
        .await;
    assert!(err.contains("may not be used as member-specific key"), "{err}");
    v.ok(0, &["storage", "create", "pool1", "dir", "--target", "node1"])
        .await;
    v.ok(1, &["storage", "create", "pool1", "dir", "--target", "node2"])
        .await;
    let s3 = format!("source={}", source3.display());
    v.ok(
        2,
        &["storage", "create", "pool1", "dir", &s3, "--target", "node3"],
    )
    .await;
    let err = v
        .fails(0, &["storage", "create", "pool1", "dir", "--target", "node3"])
        .await;
    assert!(
        err.contains("The storage pool already defined on member \"node3\""),
        "{err}"
    );
    assert_eq!(v.pool_state(1, "pool1").await, "PENDING");
    let err = v
        .fails(0, &["storage", "create", "pool1", "dir", "source=/x"])
        .await;
    assert!(
        err.contains("Config key \"source\" is cluster member specific"),
        "{err}"
    );

    // The global step through node2 makes every member's part.
    v.ok(1, &["storage", "create", "pool1", "dir", "user.team=blue"])
        .await;
    assert_eq!(v.pool_state(2, "pool1").await, "CREATED");
    assert!(
        layout_made(&dir[0].join("storage-pools/pool1")),
        "node1's default source"
    );
    assert!(
        layout_made(&dir[1].join("storage-pools/pool1")),
        "node2's default source"
    );
    assert!(layout_made(&source3), "node3's own source");
    assert!(!dir[2].join("storage-pools/pool1").exists());

    // The cluster's view has no member keys; a member's view has its own.
    let global = yaml(&v.ok(0, &["storage", "show", "pool1"]).await);
    assert_eq!(global["status"], "Created");
    assert_eq!(global["config"]["user.team"], "blue");
    assert!(global["config"].get("source").is_none(), "{global:?}");
    assert_eq!(global["locations"].as_array().map(Vec::len), Some(3));
    let on3 = yaml(&v.ok(0, &["storage", "show", "pool1", "--target", "node3"]).await);
    assert_eq!(on3["config"]["source"], source3.display().to_string());
    let on1 = yaml(&v.ok(2, &["storage", "show", "pool1", "--target", "node1"]).await);
    assert_eq!(
        on1["config"]["source"],
        dir[0].join("storage-pools/pool1").display().to_string()
    );
    let info = v
        .ok(0, &["storage", "info", "pool1", "--target", "node2", "--bytes"])
        .await;
    let total = yaml(&info)["info"]["total space"].clone();
    assert!(
        total
            .as_str()
            .and_then(|t| t.parse::<u64>().ok())
            .is_some_and(|t| t > 0),
        "{info}"
    );

    // get/set/unset/edit through different members.
    v.ok(2, &["storage", "set", "pool1", "user.k", "v"]).await;
    assert_eq!(v.ok(0, &["storage", "get", "pool1", "user.k"]).await.trim(), "v");
    let err = v.fails(0, &["storage", "set", "pool1", "nonsense", "1"]).await;
    assert!(err.contains("Invalid option \"nonsense\""), "{err}");
    v.ok(1, &["storage", "unset", "pool1", "user.k"]).await;
    assert_eq!(v.ok(2, &["storage", "get", "pool1", "user.k"]).await.trim(), "");
    let edited = "config:\n  user.team: red\ndescription: shared\n";
    let (success, _, err) = v.stdin(0, &["storage", "edit", "pool1"], Some(edited)).await;
    assert!(success, "{err}");
    let shown = yaml(&v.ok(1, &["storage", "show", "pool1"]).await);
    assert_eq!(shown["description"], "shared");
    assert_eq!(shown["config"]["user.team"], "red");

    // The root disk of `default` on the pool, through node3; seen through node1.
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
    let default = yaml(&v.ok(0, &["profile", "show", "default"]).await);
    assert_eq!(default["devices"]["root"]["pool"], "pool1");
    assert_eq!(default["devices"]["root"]["type"], "disk");
    let used = yaml(&v.ok(1, &["storage", "show", "pool1"]).await);
    assert_eq!(used["used_by"][0], "/1.0/profiles/default");
    let err = v.fails(1, &["storage", "delete", "pool1"]).await;
    assert!(err.contains("The storage pool is currently in use"), "{err}");

    // Profiles: every command through a different member, replicated.
    v.ok(0, &["profile", "create", "p1"]).await;
    v.ok(1, &["profile", "set", "p1", "user.k", "v"]).await;
    assert_eq!(v.ok(2, &["profile", "get", "p1", "user.k"]).await.trim(), "v");
    v.ok(2, &["profile", "copy", "p1", "p2"]).await;
    v.ok(0, &["profile", "rename", "p2", "p3"]).await;
    v.ok(1, &["profile", "unset", "p1", "user.k"]).await;
    let list = v.ok(1, &["profile", "list", "--format", "csv"]).await;
    let names: Vec<&str> = list.lines().filter_map(|l| l.split(',').next()).collect();
    assert_eq!(names, ["default", "p1", "p3"], "{list}");
    assert_eq!(v.ok(0, &["profile", "get", "p3", "user.k"]).await.trim(), "v");
    v.ok(
        0,
        &[
            "profile",
            "device",
            "add",
            "p3",
            "root",
            "disk",
            "path=/",
            "pool=pool1",
        ],
    )
    .await;
    v.ok(1, &["profile", "device", "set", "p3", "root", "size=1GiB"])
        .await;
    let p3 = yaml(&v.ok(2, &["profile", "show", "p3"]).await);
    assert_eq!(p3["devices"]["root"]["size"], "1GiB");
    v.ok(2, &["profile", "device", "remove", "p3", "root"]).await;
    let edited = "config:\n  user.edited: \"yes\"\ndescription: edited\ndevices: {}\n";
    let (success, _, err) = v.stdin(1, &["profile", "edit", "p1"], Some(edited)).await;
    assert!(success, "{err}");
    let p1 = yaml(&v.ok(2, &["profile", "show", "p1"]).await);
    assert_eq!(p1["description"], "edited");
    assert_eq!(p1["config"]["user.edited"], "yes");

    // Bad devices and names are refused with the reason, and change nothing.
    for (args, message) in [
        (
            &[
                "profile",
                "device",
                "add",
                "p1",
                "eth0",
                "nic",
                "network=incusbr0",
            ][..],
            "no networks yet",
        ),
        (
            &[
                "profile",
                "device",
                "add",
                "p1",
                "root",
                "disk",
                "path=/",
                "pool=nope",
            ][..],
            "Failed loading storage pool \"nope\"",
        ),
        (
            &["profile", "device", "add", "p1", "root", "disk", "path=/"][..],
            "Root disk entry must have a \"pool\" property set",
        ),
        (
            &["profile", "set", "p1", "nonsense", "1"][..],
            "Unknown configuration key: nonsense",
        ),
        (
            &["profile", "delete", "default"][..],
            "The \"default\" profile cannot be deleted",
        ),
        (
            &["profile", "rename", "default", "x"][..],
            "The \"default\" profile cannot be renamed",
        ),
        (&["profile", "create", "p1"][..], "The profile already exists"),
        (
            &["profile", "rename", "p1", "p3"][..],
            "Profile \"p3\" already exists",
        ),
        (&["profile", "create", "bad/name"][..], "Invalid profile name"),
    ] {
        let err = v.fails(2, args).await;
        assert!(err.contains(message), "incus {args:?}: {err}");
    }
    let p1_after = yaml(&v.ok(0, &["profile", "show", "p1"]).await);
    assert_eq!(p1_after, p1);

    v.ok(0, &["profile", "delete", "p3"]).await;
    let list = v.ok(2, &["profile", "list", "--format", "csv"]).await;
    assert!(!list.contains("p3,"), "{list}");

    // The list takes Incus's filters (the REST API's `filter=`), through any member.
    let t = stapes_testkit::Target::Unix(v.sock[2].clone());
    for (filter, want) in [
        ("name eq pool1", vec!["/1.0/storage-pools/pool1"]),
        (
            "driver eq dir and status eq Created",
            vec!["/1.0/storage-pools/pool1"],
        ),
        ("name eq nope", vec![]),
    ] {
        let q = format!("filter={}", filter.replace(' ', "%20"));
        let r = t.get(&format!("/1.0/storage-pools?{q}")).await.unwrap();
        assert_eq!(r.status, 200, "{filter}");
        let got: Vec<String> = serde_json::from_value(r.metadata()).unwrap();
        assert_eq!(got, want, "{filter}");
    }
    let r = t
        .get("/1.0/storage-pools?recursion=1&filter=name%20eq%20pool1")
        .await
        .unwrap();
    assert_eq!(r.metadata()[0]["name"], "pool1");
    let r = t.get("/1.0/storage-pools?filter=name%20eq").await.unwrap();
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("Invalid filter"),
        "{:?}",
        r.json()
    );

    // Freed, the pool is deleted from every member.
    v.ok(1, &["profile", "device", "remove", "default", "root"]).await;
    v.ok(2, &["storage", "delete", "pool1"]).await;
    assert!(!dir[0].join("storage-pools/pool1").exists());
    assert!(!dir[1].join("storage-pools/pool1").exists());
    assert!(
        source3.is_dir() && std::fs::read_dir(&source3).unwrap().next().is_none(),
        "node3's source emptied, kept"
    );
    let list = v.ok(0, &["storage", "list", "--format", "csv"]).await;
    assert!(list.trim().is_empty(), "{list}");
}

#[tokio::test]
async fn t62_a_member_that_fails_leaves_the_pool_errored_until_a_retry() {
    if !have_tool("incus") {
        return;
    }
    let (mut cluster, v) = three_members().await;
    let outside = tempfile::tempdir().unwrap();
    let source2 = outside.path().join("busy");
    std::fs::create_dir(&source2).unwrap();
    std::fs::write(source2.join("precious"), b"keep me").unwrap();
    let s2 = format!("source={}", source2.display());
    v.ok(0, &["storage", "create", "pool2", "dir", "--target", "node1"])
        .await;
    v.ok(
        0,
        &["storage", "create", "pool2", "dir", &s2, "--target", "node2"],
    )
    .await;
    v.ok(0, &["storage", "create", "pool2", "dir", "--target", "node3"])
        .await;

    let err = v
        .fails(2, &["storage", "create", "pool2", "dir", "user.a=b"])
        .await;
    assert!(err.contains("node2") && err.contains("isn't empty"), "{err}");
    assert_eq!(v.pool_state(0, "pool2").await, "ERRORED");
    assert_eq!(std::fs::read(source2.join("precious")).unwrap(), b"keep me");
    let on1 = yaml(&v.ok(1, &["storage", "show", "pool2", "--target", "node1"]).await);
    assert_eq!(on1["status"], "Created", "node1's part was made");
    let err = v
        .fails(1, &["storage", "create", "pool2", "dir", "user.a=c"])
        .await;
    assert!(err.contains("already partially created"), "{err}");

    // The operator clears the directory; the same create finishes the pool.
    std::fs::remove_file(source2.join("precious")).unwrap();
    v.ok(1, &["storage", "create", "pool2", "dir"]).await;
    assert_eq!(v.pool_state(2, "pool2").await, "CREATED");
    assert!(layout_made(&source2));
    let shown = yaml(&v.ok(0, &["storage", "show", "pool2"]).await);
    assert_eq!(
        shown["config"]["user.a"], "b",
        "the first attempt's global keys stay"
    );

    // A member killed before the global step: the others make their parts, the pool is
    // Errored; back, the member makes its part on the retry. The record survives the kill.
    for (i, name) in ["node1", "node2", "node3"].iter().enumerate() {
        v.ok(i, &["storage", "create", "pool3", "dir", "--target", name])
            .await;
    }
    cluster.members[2].kill9();
    let err = v.fails(0, &["storage", "create", "pool3", "dir"]).await;
    assert!(err.contains("node3"), "{err}");
    assert_eq!(v.pool_state(1, "pool3").await, "ERRORED");
    assert!(layout_made(&cluster.members[0].dir.join("storage-pools/pool3")));
    assert!(!cluster.members[2].dir.join("storage-pools/pool3").exists());
    cluster.members[2].start_again().await;
    cluster.wait_healthy(3, Duration::from_secs(60)).await;
    v.ok(1, &["storage", "create", "pool3", "dir"]).await;
    assert_eq!(v.pool_state(2, "pool3").await, "CREATED");
    assert!(layout_made(&cluster.members[2].dir.join("storage-pools/pool3")));
}

#[tokio::test]
async fn t64_standalone_pools_info_and_preseed() {
    if !have_tool("incus") {
        return;
    }
    let m = Member::start().await;
    let conf = tempfile::tempdir().unwrap();
    let c = conf.path();
    let s = m.socket();

    // The default profile is there from the start.
    let default = yaml(&ok(c, Some(&s), &["profile", "show", "default"]).await);
    assert_eq!(default["name"], "default");
    assert_eq!(default["description"], "Default Incus profile");

    // A bad source leaves nothing behind; no --target needed.
    let err = fails(c, &s, &["storage", "create", "bad", "dir", "source=relative"]).await;
    assert!(err.contains("isn't an absolute path"), "{err}");
    let err = fails(c, &s, &["storage", "create", "bad", "zfs"]).await;
    assert!(err.contains("Unknown driver"), "{err}");
    let err = fails(c, &s, &["storage", "create", "bad-", "dir"]).await;
    assert!(err.contains("Invalid storage pool name"), "{err}");
    let list = ok(c, Some(&s), &["storage", "list", "--format", "csv"]).await;
    assert!(list.trim().is_empty(), "{list}");

    // `incus admin init --preseed` makes the pool and puts the root disk on it.
    let preseed = "storage_pools:\n- name: default\n  driver: dir\nprofiles:\n- name: default\n  devices:\n    root:\n      path: /\n      pool: default\n      type: disk\n";
    let (success, _, err) = incus_stdin(c, Some(&s), &["admin", "init", "--preseed"], Some(preseed)).await;
    assert!(success, "preseed: {err}");
    assert!(layout_made(&m.dir.join("storage-pools/default")));
    assert_eq!(pool_state(c, &s, "default").await, "CREATED");
    let shown = yaml(&ok(c, Some(&s), &["storage", "show", "default"]).await);
    assert_eq!(
        shown["config"]["source"],
        m.dir.join("storage-pools/default").display().to_string()
    );
    assert_eq!(shown["locations"][0], "none");
    let default = yaml(&ok(c, Some(&s), &["profile", "show", "default"]).await);
    assert_eq!(default["devices"]["root"]["pool"], "default");

    let server: Value = serde_json::from_str(&ok(c, Some(&s), &["query", "/1.0"]).await).unwrap();
    assert_eq!(server["environment"]["storage"], "dir");
    assert_eq!(
        server["environment"]["storage_supported_drivers"][0]["Name"],
        "dir"
    );
    assert!(server["api_extensions"]
        .as_array()
        .unwrap()
        .contains(&"storage".into()));

    // Space from the file system the pool is on.
    let info = yaml(&ok(c, Some(&s), &["storage", "info", "default", "--bytes"]).await);
    let total: u64 = info["info"]["total space"].as_str().unwrap().parse().unwrap();
    let vfs = nix::sys::statvfs::statvfs(&m.dir).unwrap();
    let expected = vfs.blocks() * vfs.fragment_size();
    assert!(
        total > 0 && total.abs_diff(expected) <= expected / 100,
        "{total} vs {expected}"
    );
    let err = fails(c, &s, &["storage", "set", "default", "source", "/elsewhere"]).await;
    assert!(err.contains("cannot be changed"), "{err}");
}

#[tokio::test]
async fn t66_a_member_joining_later_makes_its_part_from_member_config() {
    if !have_tool("incus") {
        return;
    }
    let cluster = Cluster::start(2).await;
    stapes_testkit::eventually(Duration::from_secs(60), "both members online", || async {
        let list = cluster.members[0].members().await;
        (list.len() == 2 && list.iter().all(|m| m["status"] == "Online")).then_some(())
    })
    .await;
    let v = Via::new(&cluster);
    let c = v.conf.path();
    for (i, name) in ["node1", "node2"].iter().enumerate() {
        v.ok(i, &["storage", "create", "pool1", "dir", "--target", name])
            .await;
    }
    v.ok(0, &["storage", "create", "pool1", "dir"]).await;
    let cluster_info = v.ok(1, &["query", "/1.0/cluster"]).await;
    let cluster_info: Value = serde_json::from_str(&cluster_info).unwrap();
    assert_eq!(cluster_info["member_config"][0]["name"], "pool1");
    assert_eq!(cluster_info["member_config"][0]["key"], "source");

    // node3 joins with a preseed that gives its pool a directory of its own.
    let n3 = Member::start().await;
    let outside = tempfile::tempdir().unwrap();
    let source3 = outside.path().join("p");
    std::fs::create_dir(&source3).unwrap();
    let token = v
        .ok(0, &["cluster", "add", "node3", "--quiet"])
        .await
        .trim()
        .to_string();
    let addr3 = format!("127.0.0.1:{}", stapes_testkit::free_port());
    let preseed = format!(
        "cluster:\n  enabled: true\n  server_name: node3\n  server_address: {addr3}\n  cluster_token: {token}\n  member_config:\n  - entity: storage-pool\n    name: pool1\n    key: source\n    value: {}\n",
        source3.display()
    );
    let (success, _, stderr) = incus_stdin(
        c,
        Some(&n3.socket()),
        &["admin", "init", "--preseed"],
        Some(&preseed),
    )
    .await;
    assert!(success, "preseed join: {stderr}");
    assert!(layout_made(&source3));
    let on3 = yaml(&v.ok(0, &["storage", "show", "pool1", "--target", "node3"]).await);
    assert_eq!(on3["status"], "Created");
    assert_eq!(on3["config"]["source"], source3.display().to_string());
    let global = yaml(&ok(c, Some(&n3.socket()), &["storage", "show", "pool1"]).await);
    assert_eq!(global["locations"].as_array().map(Vec::len), Some(3));
}
