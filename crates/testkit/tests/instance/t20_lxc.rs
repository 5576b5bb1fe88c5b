//! The conformance suite (`instance::conformance`) against the LXC driver, with the
//! daemon's own binary as the file helper (`stapesd forkfile`).

use instance::conformance::LxcBackend;
use instance::forkfile::Helper;

fn backend() -> Option<LxcBackend> {
    LxcBackend::new(Helper {
        program: stapes_testkit::bin("stapesd").into(),
        args: vec!["forkfile".into()],
    })
}

instance::conformance_tests!(backend());

/// What an exec'd command ignores, from its `/proc/self/status`.
fn ignored(env: instance::conformance::Env) -> futures_util::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        // What stapesd does at start, before it spawns anything.
        instance::signals::catch_ignored();
        env.running("c1").await;
        let out = env.run("c1", &["grep", "SigIgn", "/proc/self/status"]).await;
        assert_eq!(out.code, 0, "{out:?}");
        let ignored = instance::signals::ignored_in(&out.stdout);
        // Signals 1 to 31; 32 and 33 belong to the C library's threads.
        assert!(ignored.iter().all(|n| *n > 31), "{ignored:?} in {out:?}");
    })
}

/// A daemon started by a shell's `&` (or `nohup`) ignores SIGINT and SIGQUIT (SIGHUP);
/// what it execs in a container must not, or ^C never reaches the command. This test
/// runs itself again that way and the inner run, once it caught them as the daemon
/// does at start (`instance::signals`), checks the exec'd command.
#[test]
fn t27_exec_does_not_inherit_ignored_signals() {
    if stapes_testkit::in_rerun_with_signals_ignored() {
        instance::conformance::run(backend, ignored);
        return;
    }
    if backend().is_none() {
        // `backend()` says why (and fails under CI=true).
        return;
    }
    stapes_testkit::rerun_with_signals_ignored("t20_lxc::t27_exec_does_not_inherit_ignored_signals");
}

/// The `stapesd execd` helpers in the cgroup of container `name` of the LXC path under
/// `scratch`.
fn exec_helpers(scratch: &std::path::Path, name: &str) -> Vec<u32> {
    let cgroup = format!(
        "/{}/{name}/container",
        instance::lxc::cgroup_prefix(&scratch.join("lxc"))
    );
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.get(1) != Some(&&b"execd"[..]) {
            continue;
        }
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if cgroups.contains(&cgroup) {
            found.push(pid);
        }
    }
    found
}

/// A non-interactive exec goes through one helper per container, kept between execs;
/// the command is in each of the container's namespaces and has only its streams. The
/// helper is in the container's cgroups, out of its sight (the host's pid namespace only), closed
/// to its root's `/proc` reads (not dumpable: its files belong to the host's root, not
/// to the container's root it runs as). Killed, it is replaced at the next exec; it
/// leaves with its container, which then stops and is deleted cleanly. A privileged
/// container gets none.
fn helper_kept_and_out_of_reach(
    env: instance::conformance::Env,
) -> futures_util::future::BoxFuture<'static, ()> {
    use std::os::unix::fs::MetadataExt;
    Box::pin(async move {
        let scratch = env.backend.scratch().to_path_buf();
        // A descriptor left open across exec, as a careless parent of the daemon would:
        // the helper closes it at start, so no command inherits it.
        let stray = std::fs::File::open("/etc/hostname").unwrap();
        rustix::io::fcntl_setfd(&stray, rustix::io::FdFlags::empty()).unwrap();
        env.running("c1").await;
        assert!(
            exec_helpers(&scratch, "c1").is_empty(),
            "no helper before the first exec"
        );
        assert_eq!(env.run("c1", &["true"]).await.code, 0);
        let helpers = exec_helpers(&scratch, "c1");
        assert_eq!(helpers.len(), 1, "one helper: {helpers:?}");
        let helper = helpers[0];
        // (What a command sees and gives back is the conformance suite's, above.)
        assert_eq!(env.run("c1", &["false"]).await.code, 1);
        assert_eq!(
            exec_helpers(&scratch, "c1"),
            [helper],
            "the same helper took the next exec"
        );

        let status = std::fs::read_to_string(format!("/proc/{helper}/status")).unwrap();
        let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
        assert_eq!(
            nspid.split_whitespace().count(),
            2,
            "host pid namespace only: {nspid}"
        );
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(
            uid.split_whitespace().nth(1).unwrap() != "0",
            "it runs as the container's root: {uid}"
        );
        let environ = std::fs::metadata(format!("/proc/{helper}/environ")).unwrap();
        assert_eq!(
            environ.uid(),
            0,
            "not dumpable: its /proc files are the host root's"
        );
        // The command is in every namespace of the container's init, and holds nothing
        // of the helper's: only its three streams (and the directory `ls` reads).
        let init = env
            .driver
            .state("c1")
            .await
            .expect("state")
            .pid
            .expect("init pid");
        let kinds = ["user", "mnt", "pid", "uts", "ipc", "net", "cgroup"];
        let script = kinds.map(|k| format!("readlink /proc/self/ns/{k}")).join("; ");
        let seen = env.run("c1", &["sh", "-c", &script]).await.stdout;
        let want: Vec<String> = kinds
            .iter()
            .map(|k| {
                std::fs::read_link(format!("/proc/{init}/ns/{k}"))
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(seen.lines().collect::<Vec<_>>(), want, "the init's namespaces");
        let fds = env.run("c1", &["ls", "/proc/self/fd"]).await.stdout;
        assert_eq!(
            fds.split_whitespace().collect::<Vec<_>>(),
            ["0", "1", "2", "3"],
            "{fds}"
        );
        drop(stray);
        // Inside, no process is the helper: every pid the container sees is its own.
        let inside = env
            .run("c1", &["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"])
            .await;
        assert!(!inside.stdout.contains("execd"), "{inside:?}");

        // A command killed through the helper's pidfd, then the helper itself.
        let p = env
            .driver
            .exec("c1", instance::conformance::spec(&["sleep", "600"]))
            .await
            .expect("exec");
        p.control.signal(9).expect("signal");
        assert_eq!(p.exit.await.expect("exit"), 128 + 9);
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(helper as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        // Once it is gone (an exec sent as it dies is lost, not run again elsewhere).
        stapes_testkit::eventually(std::time::Duration::from_secs(10), "the helper gone", || {
            let gone = exec_helpers(&scratch, "c1").is_empty();
            async move { gone.then_some(()) }
        })
        .await;
        assert_eq!(
            env.run("c1", &["true"]).await.code,
            0,
            "exec after the helper died"
        );
        // (That one may have met the helper as it died and gone through lxc-attach.)
        assert_eq!(env.run("c1", &["true"]).await.code, 0);
        let replaced = exec_helpers(&scratch, "c1");
        assert!(replaced.len() == 1 && replaced[0] != helper, "{replaced:?}");

        env.driver
            .stop("c1", instance::driver::Stop::Force)
            .await
            .expect("stop");
        assert!(
            exec_helpers(&scratch, "c1").is_empty(),
            "the helper left with its container"
        );
        env.driver
            .delete("c1")
            .await
            .expect("delete: no cgroup kept busy");

        // A privileged container drops capabilities and has no user namespace of its own:
        // the helper refuses it, and lxc-attach (which applies both) takes its execs.
        env.create_with("c2", true, instance::driver::Limits::default())
            .await;
        env.driver.start("c2").await.expect("start");
        assert_eq!(env.run("c2", &["true"]).await.code, 0);
        assert!(
            exec_helpers(&scratch, "c2").is_empty(),
            "no helper in a privileged container"
        );
    })
}

#[test]
fn t28_exec_goes_through_a_helper_out_of_the_containers_reach() {
    instance::conformance::run(backend, helper_kept_and_out_of_reach);
}
