//! `stapes launch/init/start/stop/restart/delete/list/info/config` against a real
//! three-member stapesd cluster (started by the testkit from the workspace's build
//! directory: run `cargo build --bins` first), every command through a member that does
//! not hold the instance, and reads through a remote whose first address is dead.
//!
//! The members run the fake driver (no root needed): the CLI's side does not depend on
//! what runs the container. Where the official `incus` client is installed, the same
//! list, info and config views are printed by both clients from the same cluster and
//! must be identical (columns, `--format csv/json/yaml`, the default table). The real
//! LXC run of the same commands is in `instances_lxc.rs`.
//!
//! Every wait is bounded: each command by [`common::COMMAND_LIMIT`], convergence by
//! [`testkit::eventually`] polling.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{add_remote, member_urls, Stapes, COMMAND_LIMIT};
use testkit::{eventually, free_port, have_tool, Cluster, FAKE_DRIVER};

/// The bound on a cluster settling (joins, heartbeats).
const SETTLE: Duration = Duration::from_secs(60);

/// `pool1` on every member, the default profile's root disk on it, and the image
/// `file` imported through node1 as `alias`, all with `stapes`.
async fn prepare(cli: &Stapes, sockets: &[PathBuf], file: &Path, alias: &str) {
    common::prepare_pools(cli, sockets).await;
    let out = cli
        .ok(
            &sockets[0],
            &["image", "import", &file.to_string_lossy(), "--alias", alias],
        )
        .await;
    assert!(out.starts_with("Image imported with fingerprint: "), "{out}");
}

/// The official client against the daemon at `socket`, with its own configuration in
/// `conf`; `(success, stdout, stderr)`.
async fn incus(conf: &Path, socket: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new("incus");
    cmd.args(args)
        .env("INCUS_CONF", conf)
        .env("INCUS_SOCKET", socket)
        .env("HOME", conf)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(COMMAND_LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("incus {args:?} did not finish within {COMMAND_LIMIT:?}"))
        .expect("incus runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `stapes` and, where installed, `incus` print the same thing for `args` through
/// `socket`; returns what stapes printed.
async fn same_as_incus(cli: &Stapes, conf: Option<&Path>, socket: &Path, args: &[&str]) -> String {
    let ours = cli.ok(socket, args).await;
    if let Some(conf) = conf {
        let (ok, theirs, err) = incus(conf, socket, args).await;
        assert!(ok, "incus {args:?}: {err}");
        assert_eq!(ours, theirs, "stapes and incus differ on {args:?}");
    }
    ours
}

/// `name,status,location` rows through `socket`.
async fn rows(cli: &Stapes, socket: &Path) -> Vec<String> {
    cli.ok(socket, &["list", "-c", "nsL", "-f", "csv"])
        .await
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn t10_instance_commands_through_members_that_do_not_hold_the_instance() {
    let cluster = Cluster::start_env(3, &[], &[FAKE_DRIVER]).await;
    cluster.wait_healthy(3, SETTLE).await;
    let sockets: Vec<PathBuf> = cluster.members.iter().map(|m| m.socket()).collect();
    let (s1, s2, s3) = (&sockets[0], &sockets[1], &sockets[2]);
    let cli = Stapes::new();
    let work = tempfile::tempdir().expect("work dir");
    prepare(&cli, &sockets, &common::test_image(work.path()), "img").await;
    // The official client, when installed, prints the same views (its configuration
    // made first, so its first-run hint stays out of the way).
    let incus_conf = have_tool("incus").then(|| work.path().join("incus-conf"));
    if let Some(conf) = &incus_conf {
        let _ = incus(conf, s1, &["remote", "list"]).await;
    }
    let conf = incus_conf.as_deref();

    // launch and init (create), with and without --target, through other members.
    let out = cli
        .run(s1, &["launch", "img", "c1", "--target", "node2"], None)
        .await;
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout, "Launching c1\n");
    let out = cli
        .run(s2, &["init", "img", "c2", "--target", "node3"], None)
        .await;
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout, "Creating c2\n");
    let out = cli
        .run(s3, &["create", "img", "c3", "-c", "user.k=v"], None)
        .await;
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout, "Creating c3\n");
    let list = rows(&cli, s3).await;
    assert_eq!(list[..2], ["c1,RUNNING,node2", "c2,STOPPED,node3"], "{list:?}");
    assert!(
        list[2].starts_with("c3,STOPPED,node1"),
        "the member with none: {list:?}"
    );

    // The views, the same as the official client's, through a member without c1.
    for args in [
        &["list"][..],
        &["list", "-c", "nsL4t"],
        &["list", "-c", "nsL4t", "-f", "csv"],
        &["list", "-f", "csv"],
        &["list", "-f", "json"],
        &["list", "-f", "yaml"],
        &["list", "-c", "ns", "-f", "compact"],
        &["list", "c", "-c", "n", "-f", "csv"],
        &["list", "-c", "nsL4t", "-f", "yaml"],
        &["list", "--fast", "-f", "csv,header"],
        &["list", "c1", "-c", "nsL", "-f", "json"],
        &["list", "--columns", "ns,L", "--format", "table"],
        &["config", "show", "c1"],
        &["config", "show", "c3", "--expanded"],
        &["config", "get", "c3", "user.k"],
        &["info", "c1"],
        &["info", "c2"],
    ] {
        same_as_incus(&cli, conf, s3, args).await;
    }
    let json: serde_json::Value =
        serde_json::from_str(&cli.ok(s1, &["list", "-f", "json"]).await).expect("list JSON");
    assert_eq!(json[0]["name"], "c1");
    assert_eq!(json[0]["location"], "node2");
    assert_eq!(json[0]["state"]["status"], "Running", "{json}");

    // info through node1, c1 being on node2.
    let info = cli.ok(s1, &["info", "c1"]).await;
    assert!(
        info.starts_with("Name: c1\nDescription: \nStatus: RUNNING\nType: container\n"),
        "{info}"
    );
    assert!(info.contains("\nLocation: node2\n"), "{info}");
    let err = cli.fails(s1, &["info", "nosuch"]).await;
    assert_eq!(err, "Error: Instance not found\n");

    // State changes, each through a member other than the owner.
    cli.ok(s1, &["stop", "c1"]).await;
    assert!(rows(&cli, s3).await.contains(&"c1,STOPPED,node2".into()));
    let err = cli.fails(s3, &["stop", "c1"]).await;
    assert_eq!(err, "Error: The instance is already stopped\n");
    cli.ok(s3, &["start", "c1", "c2"]).await;
    let list = rows(&cli, s2).await;
    assert!(
        list.contains(&"c1,RUNNING,node2".into()) && list.contains(&"c2,RUNNING,node3".into()),
        "{list:?}"
    );
    let err = cli.fails(s1, &["start", "c1"]).await;
    assert_eq!(err, "Error: The instance is already running\n");
    cli.ok(s1, &["restart", "c1"]).await;
    cli.ok(s1, &["restart", "-f", "c2"]).await;
    cli.ok(s2, &["stop", "--timeout", "5", "c2"]).await;
    cli.ok(s1, &["stop", "-f", "c1"]).await;
    let list = rows(&cli, s1).await;
    assert!(
        list.contains(&"c1,STOPPED,node2".into()) && list.contains(&"c2,STOPPED,node3".into()),
        "{list:?}"
    );
    // --all: every instance of the cluster, wherever it is.
    cli.ok(s2, &["start", "--all"]).await;
    let list = rows(&cli, s3).await;
    assert!(list.iter().all(|r| r.contains(",RUNNING,")), "{list:?}");
    cli.ok(s3, &["stop", "--all", "-f"]).await;
    let list = rows(&cli, s1).await;
    assert!(list.iter().all(|r| r.contains(",STOPPED,")), "{list:?}");

    // config get/set/unset, with and without the profiles' view.
    cli.ok(s3, &["config", "set", "c1", "user.a=b", "limits.cpu=1"])
        .await;
    assert_eq!(cli.ok(s1, &["config", "get", "c1", "user.a"]).await, "b\n");
    assert_eq!(cli.ok(s2, &["config", "get", "c3", "user.k"]).await, "v\n");
    cli.ok(s2, &["config", "set", "c1", "user.a", "c"]).await;
    assert_eq!(cli.ok(s1, &["config", "get", "c1", "user.a"]).await, "c\n");
    cli.ok(s1, &["config", "unset", "c1", "user.a"]).await;
    assert_eq!(cli.ok(s3, &["config", "get", "c1", "user.a"]).await, "\n");
    let show = cli.ok(s1, &["config", "show", "c1"]).await;
    assert!(show.contains("  limits.cpu: \"1\"\n"), "{show}");
    assert!(show.contains("volatile.base_image"), "{show}");
    let err = cli
        .fails(s1, &["config", "set", "c1", "limits.memory=lots"])
        .await;
    assert!(err.starts_with("Error: "), "{err}");

    // delete: a running instance needs --force; the owner's volume goes with it.
    cli.ok(s2, &["start", "c1"]).await;
    let err = cli.fails(s3, &["delete", "c1"]).await;
    assert_eq!(
        err,
        "Error: The instance is currently running, stop it first or pass --force\n"
    );
    cli.ok(s3, &["delete", "-f", "c1"]).await;
    cli.ok(s1, &["delete", "c2", "c3"]).await;
    assert_eq!(cli.ok(s2, &["list", "-f", "csv"]).await, "");
    assert_eq!(cli.ok(s2, &["list", "-f", "json"]).await, "[]\n");
    let volume = cluster.members[1].dir.join("storage-pools/pool1/containers/c1");
    assert!(!volume.exists(), "c1's volume left on node2");

    // Errors in Incus's words.
    let err = cli.fails(s1, &["launch", "img", "c9", "--target", "node9"]).await;
    assert_eq!(err, "Error: Cluster member \"node9\" not found\n");
    let err = cli.fails(s1, &["launch", "nosuch", "c9"]).await;
    assert_eq!(err, "Error: Image \"nosuch\" not found\n");
}

#[tokio::test]
async fn t30_reads_survive_a_dead_first_address() {
    let cluster = Cluster::start_env(3, &[], &[FAKE_DRIVER]).await;
    let urls = member_urls(&cluster, 3).await;
    let sockets: Vec<PathBuf> = cluster.members.iter().map(|m| m.socket()).collect();
    let cli = Stapes::new();
    let work = tempfile::tempdir().expect("work dir");
    prepare(&cli, &sockets, &common::test_image(work.path()), "img").await;
    add_remote(&cli, &sockets[0], "c", &urls[0]).await;
    cli.ok(&sockets[0], &["launch", "c:img", "c:r1", "--target", "node3"])
        .await;

    // The remote's first address is refused: reads go to the next.
    let refused = format!("https://127.0.0.1:{}", free_port());
    let mut set_url = vec!["remote", "set-url", "c", refused.as_str()];
    set_url.extend(urls.iter().map(String::as_str));
    cli.ok(&sockets[0], &set_url).await;
    let list = cli
        .ok(&sockets[0], &["list", "c:", "-c", "nsL", "-f", "csv"])
        .await;
    assert_eq!(list, "r1,RUNNING,node3\n");
    let info = cli.ok(&sockets[0], &["info", "c:r1"]).await;
    assert!(info.contains("\nLocation: node3\n"), "{info}");
    assert_eq!(
        cli.ok(&sockets[0], &["config", "get", "c:r1", "volatile.base_image"])
            .await
            .trim()
            .len(),
        64
    );

    // node1 gone for good: lists and state changes still work through the others.
    let mut cluster = cluster;
    cluster.wait_healthy(3, SETTLE).await;
    cluster.members[0].kill9();
    let list = eventually(SETTLE, "the list without node1", || async {
        let out = cli
            .run(&sockets[1], &["list", "c:", "-c", "nsL", "-f", "csv"], None)
            .await;
        (out.success && out.stdout == "r1,RUNNING,node3\n").then_some(out.stdout)
    })
    .await;
    assert_eq!(list, "r1,RUNNING,node3\n");
    // Writes wait for the survivors to elect a new leader (node1 led): a plain one
    // (a profile) shows when they have.
    eventually(SETTLE, "a write without node1", || async {
        let out = cli
            .run(&sockets[1], &["profile", "create", "c:probe"], None)
            .await;
        out.success.then_some(())
    })
    .await;
    cli.ok(&sockets[1], &["stop", "-f", "c:r1"]).await;
    cli.ok(&sockets[1], &["delete", "c:r1"]).await;
    assert_eq!(cli.ok(&sockets[2], &["list", "-f", "csv"]).await, "");
}
