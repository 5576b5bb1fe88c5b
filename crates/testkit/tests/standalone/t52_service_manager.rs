//! stapesd under a service manager: systemd's readiness protocol (`Type=notify`) spoken
//! to a datagram socket the test holds, and SIGHUP not stopping the member.

use std::time::Duration;

use stapes_testkit::Member;
use tokio::net::UnixDatagram;

async fn next_message(socket: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), socket.recv(&mut buf))
        .await
        .expect("a notification within 30 s")
        .expect("recv");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// READY=1 comes once the API answers; SIGHUP is logged and changes nothing; SIGTERM
/// sends STOPPING=1 and extends systemd's stop timeout to cover the drain.
#[tokio::test]
async fn t52_notify_ready_then_stopping_and_sighup_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&path).unwrap();
    let mut m =
        Member::start_env(&[("NOTIFY_SOCKET", path.to_str().unwrap()), ("STAPES_DRAIN", "1.5")]).await;

    let ready = next_message(&notify).await;
    assert!(ready.starts_with("READY=1\nSTATUS=Serving the API"), "{ready:?}");

    m.signal(nix::sys::signal::Signal::SIGHUP);
    stapes_testkit::eventually(Duration::from_secs(10), "SIGHUP logged", || {
        let logged = m.log().contains("SIGHUP received");
        async move { logged.then_some(()) }
    })
    .await;
    assert_eq!(m.unix().get("/1.0").await.unwrap().status, 200);

    m.signal(nix::sys::signal::Signal::SIGTERM);
    let stopping = next_message(&notify).await;
    // 1.5 s of drain plus the 60 s allowed for closing.
    assert!(
        stopping.starts_with("STOPPING=1\nEXTEND_TIMEOUT_USEC=61500000\nSTATUS=Stopping"),
        "{stopping:?}"
    );
    assert_eq!(m.terminate().unwrap(), 0);
}

/// Without NOTIFY_SOCKET (started by hand or by a script) nothing is sent, and a
/// malformed one is reported but does not stop the member.
#[tokio::test]
async fn t52_bad_notify_socket_is_reported_not_fatal() {
    let mut m = Member::start_env(&[("NOTIFY_SOCKET", "relative/notify")]).await;
    // The notification (and so its warning) follows readiness: wait for the line.
    stapes_testkit::eventually(Duration::from_secs(30), "NOTIFY_SOCKET ignored", || {
        let seen = m.log().contains("NOTIFY_SOCKET ignored");
        async move { seen.then_some(()) }
    })
    .await;
    assert_eq!(m.unix().get("/1.0").await.unwrap().status, 200);
    assert_eq!(m.terminate().unwrap(), 0);
}

/// Started as `nohup` and a shell's `&` leave a daemon (SIGHUP, SIGINT and SIGQUIT
/// ignored), stapesd catches them so that its children get them at their defaults
/// (`instance::signals`), yet behaves as before: SIGHUP is logged, SIGQUIT still does
/// nothing, SIGINT stops it cleanly. The test runs itself again that way; the member it
/// starts inherits the ignored signals.
#[test]
fn t52_started_with_signals_ignored_behaves_the_same() {
    if stapes_testkit::in_rerun_with_signals_ignored() {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(ignored_signals_inner());
        return;
    }
    stapes_testkit::rerun_with_signals_ignored(
        "t52_service_manager::t52_started_with_signals_ignored_behaves_the_same",
    );
}

/// The signals process `pid` ignores.
fn ignored_by(pid: i32) -> Vec<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    instance::signals::ignored_in(&status)
}

async fn ignored_signals_inner() {
    let mut m = Member::start_env(&[]).await;
    // Caught now, not ignored: what the member starts gets them at their defaults.
    let its = ignored_by(m.pid());
    assert!([1, 2, 3].iter().all(|n| !its.contains(n)), "{its:?}");
    m.signal(nix::sys::signal::Signal::SIGHUP);
    stapes_testkit::eventually(Duration::from_secs(10), "SIGHUP logged", || {
        let logged = m.log().contains("SIGHUP received");
        async move { logged.then_some(()) }
    })
    .await;
    m.signal(nix::sys::signal::Signal::SIGQUIT);
    // A request answered after SIGQUIT was sent: the member is still there.
    assert_eq!(m.unix().get("/1.0").await.unwrap().status, 200);
    m.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(m.wait_exit(Duration::from_secs(30)).await, 0, "{}", m.log());
    assert!(m.log().contains("SIGINT received"), "{}", m.log());
}

/// Run with SIGHUP, SIGINT and SIGQUIT ignored (as `nohup` and `&` leave a daemon), a
/// process that called `catch_ignored` (as stapesd does at start) starts children with
/// none of them ignored, and still ignores them itself. No member, no root.
#[test]
fn t52_children_start_with_ignored_signals_at_default() {
    if !stapes_testkit::in_rerun_with_signals_ignored() {
        stapes_testkit::rerun_with_signals_ignored(
            "t52_service_manager::t52_children_start_with_ignored_signals_at_default",
        );
        return;
    }
    let hup_int_quit = [1, 2, 3];
    let done = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { instance::signals::catch_ignored() });
    assert!(hup_int_quit.iter().all(|n| done.caught.contains(n)), "{done:?}");
    assert!(!done.caught.contains(&13), "SIGPIPE is left as it was: {done:?}");
    assert!(done.left.is_empty(), "nothing to warn about: {done:?}");
    let child = std::process::Command::new("cat")
        .arg("/proc/self/status")
        .output()
        .expect("cat");
    let theirs = instance::signals::ignored_in(&String::from_utf8_lossy(&child.stdout));
    assert!(theirs.iter().all(|n| !hup_int_quit.contains(n)), "{theirs:?}");
    assert!(!theirs.contains(&13), "std resets SIGPIPE: {theirs:?}");
    // And this process goes on, not stopped by them.
    let me = std::process::id().to_string();
    for sig in ["HUP", "INT", "QUIT"] {
        let sent = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &me])
            .status()
            .expect("kill");
        assert!(sent.success());
    }
}
