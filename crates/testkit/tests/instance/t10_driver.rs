use std::process::{Command, Stdio};

use stapes_testkit::{bin, Member, FAKE_DRIVER};

/// `--driver`/`STAPES_DRIVER` picks the runtime; LXC is the default.
#[tokio::test]
async fn t10_the_driver_is_chosen_per_member() {
    let fake = Member::start_env(&[FAKE_DRIVER]).await;
    assert!(fake.log().contains("driver=\"fake\""), "{}", fake.log());
    let default = Member::start().await;
    assert!(default.log().contains("driver=\"lxc\""), "{}", default.log());
}

/// An unknown driver is refused at start with the choices, and nothing is served.
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
