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

/// The ignored-signal mask in a `/proc/PID/status` text.
fn ignored_mask(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
}

/// What an exec'd command ignores, from its `/proc/self/status`.
fn ignored(env: instance::conformance::Env) -> futures_util::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        // What stapesd does at start, before it spawns anything.
        instance::signals::catch_ignored();
        env.running("c1").await;
        let out = env.run("c1", &["grep", "SigIgn", "/proc/self/status"]).await;
        assert_eq!(out.code, 0, "{out:?}");
        let mask = ignored_mask(&out.stdout);
        // Signals 1 to 31; 32 and 33 belong to the C library's threads.
        assert_eq!(mask.map(|m| m & 0x7fff_ffff), Some(0), "{out:?}");
    })
}

/// A daemon started by a shell's `&` (or `nohup`) ignores SIGINT and SIGQUIT (SIGHUP);
/// what it execs in a container must not, or ^C never reaches the command. This test
/// runs itself again that way and the inner run, once it caught them as the daemon
/// does at start (`instance::signals`), checks the exec'd command.
#[test]
fn t27_exec_does_not_inherit_ignored_signals() {
    if std::env::var_os("STAPES_INNER_IGNORED").is_some() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let mask = ignored_mask(&status).unwrap_or(0);
        assert_eq!(
            mask & 0b111,
            0b111,
            "the runner was meant to ignore HUP, INT and QUIT:\n{status}"
        );
        instance::conformance::run(backend, ignored);
        return;
    }
    if backend().is_none() {
        // `backend()` says why (and fails under CI=true).
        return;
    }
    let me = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new("sh")
        .args(["-c", "nohup \"$0\" \"$@\" & wait $!"])
        .arg(me)
        .args([
            "--exact",
            "t20_lxc::t27_exec_does_not_inherit_ignored_signals",
            "--nocapture",
        ])
        .env("STAPES_INNER_IGNORED", "1")
        .output()
        .expect("the test runs itself");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}
