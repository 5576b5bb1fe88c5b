//! `stapes` instance commands against a three-member stapesd cluster running real LXC
//! system containers (the daemon's default driver), every command through a member that
//! does not hold the container: launch onto node2 through node1, list and info through
//! node3, stop, start, restart, config, and delete leaving no process behind.
//!
//! Needs root, Debian's `lxc` tools and `busybox-static` (the image is built offline
//! from it): skipped with a message without them, failing under `CI=true`. Whatever the
//! test launched is deleted when it ends, also when a check fails.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Stapes;
use testkit::{eventually, have_tool, Cluster};

/// Whether this machine can run the test (else a message, or a panic under CI=true).
fn can_run() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the LXC tests need root under CI=true");
        }
        eprintln!("SKIP: the LXC tests need root");
        return false;
    }
    have_tool("lxc-start") && have_tool("busybox") && have_tool("tar")
}

/// Deletes, when dropped, whatever containers are left on the members (through the
/// daemons, then through LXC itself), each step bounded.
struct Purge {
    socket: PathBuf,
    conf: PathBuf,
    dirs: Vec<PathBuf>,
}

impl Drop for Purge {
    fn drop(&mut self) {
        let names: Vec<String> = self
            .dirs
            .iter()
            .flat_map(|d| std::fs::read_dir(d.join("lxc")).into_iter().flatten().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for name in names {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_stapes"));
            cmd.args(["delete", "--force", &name])
                .env("STAPES_CONF", &self.conf)
                .env("STAPES_SOCKET", &self.socket);
            common::bounded(cmd, Duration::from_secs(60));
        }
        for dir in &self.dirs {
            let lxc = dir.join("lxc");
            for e in std::fs::read_dir(&lxc).into_iter().flatten().flatten() {
                let mut cmd = std::process::Command::new("lxc-stop");
                cmd.arg("-k").arg("-P").arg(&lxc).arg("-n").arg(e.file_name());
                common::bounded(cmd, Duration::from_secs(30));
            }
        }
    }
}

/// The pid of `name`'s init as `stapes info` through `socket` shows it.
async fn pid_of(cli: &Stapes, socket: &Path, name: &str) -> i32 {
    let info = cli.ok(socket, &["info", name]).await;
    info.lines()
        .find_map(|l| l.strip_prefix("PID: "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no PID in {info}"))
}

fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn t20_real_containers_driven_through_members_that_do_not_hold_them() {
    if !can_run() {
        return;
    }
    let cluster = Cluster::start(3).await;
    cluster.wait_healthy(3, Duration::from_secs(60)).await;
    let sockets: Vec<PathBuf> = cluster.members.iter().map(|m| m.socket()).collect();
    let (s1, s2, s3) = (&sockets[0], &sockets[1], &sockets[2]);
    let cli = Stapes::new();
    let _purge = Purge {
        socket: s1.clone(),
        conf: cli.conf.path().to_path_buf(),
        dirs: cluster.members.iter().map(|m| m.dir.clone()).collect(),
    };
    let work = tempfile::tempdir().expect("work dir");
    let image = common::busybox_image(work.path());
    common::prepare_pools(&cli, &sockets).await;
    cli.ok(
        s1,
        &["image", "import", &image.to_string_lossy(), "--alias", "bb"],
    )
    .await;

    // Launched through node1 onto node2; seen running, with its init, through node3.
    let out = cli
        .run(s1, &["launch", "bb", "r1", "--target", "node2"], None)
        .await;
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout, "Launching r1\n");
    assert_eq!(
        cli.ok(s3, &["list", "-c", "nsLt", "-f", "csv"]).await,
        "r1,RUNNING,node2,CONTAINER\n"
    );
    let pid = pid_of(&cli, s3, "r1").await;
    assert!(running(pid), "r1's init {pid}");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(String::from_utf8_lossy(&cmdline).contains("init"), "{cmdline:?}");
    let info = cli.ok(s1, &["info", "r1"]).await;
    assert!(info.contains("\nLocation: node2\n"), "{info}");
    assert!(info.contains("\nResources:\n  Processes: "), "{info}");

    // Stop (clean, bounded), start, restart -f, through members without r1.
    cli.ok(s3, &["stop", "--timeout", "10", "r1"]).await;
    assert!(!running(pid), "init gone after stop");
    assert_eq!(
        cli.ok(s1, &["list", "-c", "ns", "-f", "csv"]).await,
        "r1,STOPPED\n"
    );
    cli.ok(s1, &["config", "set", "r1", "limits.memory=256MiB"]).await;
    assert_eq!(
        cli.ok(s3, &["config", "get", "r1", "limits.memory"]).await,
        "256MiB\n"
    );
    cli.ok(s1, &["start", "r1"]).await;
    let pid = pid_of(&cli, s1, "r1").await;
    assert!(running(pid));
    cli.ok(s3, &["restart", "-f", "r1"]).await;
    let again = eventually(Duration::from_secs(30), "r1 running again", || async {
        let out = cli.run(s1, &["info", "r1"], None).await;
        let pid: i32 = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("PID: "))?
            .trim()
            .parse()
            .ok()?;
        (pid > 0 && running(pid)).then_some(pid)
    })
    .await;
    assert_ne!(again, pid, "restart made a new init");
    assert!(!running(pid), "the old init is gone");

    // Another through node2 onto node3 without a wait: created, then started.
    cli.ok(s2, &["init", "bb", "r2", "--target", "node3"]).await;
    cli.ok(s1, &["start", "r2"]).await;
    let pid2 = pid_of(&cli, s2, "r2").await;
    assert!(running(pid2));

    // delete refuses a running instance; --force stops and deletes, leaving nothing.
    let err = cli.fails(s3, &["delete", "r1"]).await;
    assert_eq!(
        err,
        "Error: The instance is currently running, stop it first or pass --force\n"
    );
    cli.ok(s3, &["delete", "-f", "r1", "r2"]).await;
    assert_eq!(cli.ok(s2, &["list", "-f", "csv"]).await, "");
    for p in [again, pid2] {
        assert!(!running(p), "init {p} still runs after delete");
    }
    for m in &cluster.members {
        let left: Vec<_> = std::fs::read_dir(m.dir.join("lxc"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?} left in {}", m.dir.display());
    }
}
