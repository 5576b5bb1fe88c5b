//! `incus exec` and `incus console` into a real LXC container on a three-member
//! cluster, every session through a member that does not hold it: the streams, exit
//! codes (7, 126, 127, 128+n), stdin, environment, working directory and ids; a
//! terminal (`tty` is `/dev/pts/N`), its size and resizes seen by `stty size`, ^C and
//! forwarded signals, all under a real pseudo-terminal; the console with what the
//! container writes to it, its log, and the detach; and the owner's daemon killed in
//! the middle of a session, which ends the session with an error naming the member but
//! leaves the command running in the container.
//!
//! The members are started as a shell's `&` and `nohup` leave a daemon, with SIGHUP,
//! SIGINT and SIGQUIT ignored: the test runs itself again that way. The commands still
//! get every signal at its default (^C reaches them).
//!
//! Needs root, `lxc`, `incus` and `busybox-static` (skipped with a message without
//! them, failing under `CI=true`). Whatever it made is purged afterwards, also when it
//! fails.

use std::path::Path;
use std::time::Duration;

use futures_util::FutureExt;
use stapes_testkit::{eventually, Cluster};

use super::t60_storage_profiles::Via;
use super::t76_instances_lxc::{busybox_image, purge_after, ready, real_cluster};
use super::t80_exec::{
    finish, interactive_shell, run, signals_are_forwarded, sleeping, streams_and_codes, Term,
};

const LONG: Duration = Duration::from_secs(60);

/// The host pids of processes whose command line is exactly `argv`.
fn pids_running(argv: &[&str]) -> Vec<u32> {
    let wanted: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == wanted) {
            out.push(pid);
        }
    }
    out
}

async fn body(c: &mut Cluster, work: &Path) {
    let v = Via::new(c);
    super::t70_instances::prepare(&v, &busybox_image(work), "bb").await;
    v.ok(0, &["launch", "bb", "c1", "--target", "node2"]).await;

    streams_and_codes(&v, 0, "c1").await;
    // The daemons ignore HUP, INT and QUIT; what they run in the container does not.
    let r = run(&v, 2, &["exec", "c1", "--", "cat", "/proc/self/status"], None).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    let ignored = instance::signals::ignored_in(&r.out);
    // Signals 1 to 31; 32 and 33 belong to the C library's threads.
    assert!(ignored.iter().all(|n| *n > 31), "{ignored:?} in {r:?}");
    let r = run(&v, 2, &["exec", "c1", "--", "pwd"], None).await;
    assert_eq!(r.out.trim(), "/root", "the default is HOME: {r:?}");
    let r = run(&v, 2, &["exec", "c1", "--cwd", "/tmp", "--", "pwd"], None).await;
    assert_eq!(r.out.trim(), "/tmp", "{r:?}");
    // Not executable, and killed by a signal.
    let r = run(&v, 2, &["exec", "c1", "--", "touch", "/tmp/plain"], None).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    let r = run(&v, 2, &["exec", "c1", "--", "/tmp/plain"], None).await;
    assert_eq!(r.code, Some(126), "{r:?}");
    assert!(r.err.contains("Error: Command not executable"), "{r:?}");
    let r = run(&v, 0, &["exec", "c1", "--", "sh", "-c", "kill -9 $$"], None).await;
    assert_eq!(r.code, Some(137), "{r:?}");
    signals_are_forwarded(&v, 2, "c1").await;
    interactive_shell(&v, 2, "c1").await;

    // The console: what the container writes to it shows, through another member; the
    // log keeps it; the client detaches and the container runs on.
    let mut t = Term::spawn(&v, 0, &["console", "c1"], 30, 100);
    t.expect("To detach from the console, press: <ctrl>+a q").await;
    eventually(LONG, "a line written to /dev/console on the console", || async {
        run(
            &v,
            2,
            &[
                "exec",
                "c1",
                "--",
                "sh",
                "-c",
                "echo hello-console > /dev/console",
            ],
            None,
        )
        .await;
        t.shows_soon("hello-console").await.then_some(())
    })
    .await;
    assert_eq!(t.detach().await, Some(0), "{}", t.text());
    let r = run(&v, 2, &["console", "c1", "--show-log"], None).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.out.contains("hello-console"), "{r:?}");
    let r = run(&v, 2, &["exec", "c1", "--", "true"], None).await;
    assert_eq!(r.code, Some(0), "the container runs on after a detach: {r:?}");

    // The owner's daemon dies mid-session: the session through node1 ends naming node2,
    // and the command goes on in the container, also once the daemon is back.
    let before = pids_running(&["sleep", "600"]);
    let child = sleeping(&v, 0, "c1").await;
    let sleep = eventually(LONG, "the sleep in the container", || async {
        let new: Vec<u32> = pids_running(&["sleep", "600"])
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        (new.len() == 1).then_some(new)
    })
    .await;
    c.members[1].kill9();
    let r = finish(child).await;
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.err.contains("\"node2\""), "{r:?}");
    assert!(
        Path::new(&format!("/proc/{}", sleep[0])).exists(),
        "the command outlives the daemon"
    );
    c.members[1].start_again().await;
    c.wait_healthy(3, LONG).await;
    let r = eventually(LONG, "node2 to serve exec again", || async {
        let r = run(&v, 2, &["exec", "c1", "--", "hostname"], None).await;
        (r.code == Some(0)).then_some(r)
    })
    .await;
    assert_eq!(r.out.trim(), "c1");
    assert!(
        Path::new(&format!("/proc/{}", sleep[0])).exists(),
        "and the daemon's return"
    );
    // A clean stop of the owner's daemon (what a restart does) kills nothing either.
    let before = pids_running(&["sleep", "600"]);
    let child = sleeping(&v, 2, "c1").await;
    let second = eventually(LONG, "the second sleep in the container", || async {
        let new: Vec<u32> = pids_running(&["sleep", "600"])
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        (new.len() == 1).then_some(new[0])
    })
    .await;
    assert_eq!(c.members[1].terminate().expect("node2 stops"), 0);
    let r = finish(child).await;
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.err.contains("\"node2\""), "{r:?}");
    c.members[1].start_again().await;
    c.wait_healthy(3, LONG).await;
    assert!(
        Path::new(&format!("/proc/{second}")).exists(),
        "a clean stop kills no command"
    );
    v.ok(2, &["stop", "c1", "--force"]).await;
    v.ok(0, &["delete", "c1"]).await;
}

#[test]
fn t80_exec_and_console_in_real_containers_through_other_members() {
    if stapes_testkit::in_rerun_with_signals_ignored() {
        in_real_containers();
        return;
    }
    if !ready() {
        return;
    }
    // The members inherit the ignored signals from the test's process.
    stapes_testkit::rerun_with_signals_ignored(
        "t80_exec_lxc::t80_exec_and_console_in_real_containers_through_other_members",
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn in_real_containers() {
    let mut c = real_cluster().await;
    let work = tempfile::tempdir().unwrap();
    let outcome = std::panic::AssertUnwindSafe(body(&mut c, work.path()))
        .catch_unwind()
        .await;
    purge_after(&c, outcome).await;
}
