use std::process::{Command, Stdio};
use std::time::Duration;

use stapes_testkit::{bin, eventually, Member, FAKE_DRIVER};

/// Waits for the daemon's ready line (logged just after it starts serving) to name
/// `driver`.
async fn runs_driver(member: &Member, driver: &str) {
    let wanted = format!("driver=\"{driver}\"");
    eventually(
        Duration::from_secs(20),
        &format!("a ready line with {wanted}"),
        || async {
            let log = member.log();
            log.lines()
                .any(|l| l.contains("stapesd ready") && l.contains(&wanted))
                .then_some(())
        },
    )
    .await;
}

/// `--driver`/`STAPES_DRIVER` picks the runtime; LXC is the default.
#[tokio::test]
async fn t10_the_driver_is_chosen_per_member() {
    let fake = Member::start_env(&[FAKE_DRIVER]).await;
    runs_driver(&fake, "fake").await;
    let default = Member::start().await;
    runs_driver(&default, "lxc").await;
}

/// An unknown driver is refused at start with the choices, and nothing is made.
#[test]
fn t11_an_unknown_driver_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(bin("stapesd"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("STAPES_DRIVER", "docker")
        .stdin(Stdio::null())
        .output()
        .expect("run stapesd");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value 'docker'") && stderr.contains("lxc") && stderr.contains("fake"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("state").exists(),
        "nothing made before the refusal"
    );
}
