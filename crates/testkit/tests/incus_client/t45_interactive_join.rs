//! The interactive `incus admin init` joins a stapes cluster, as the README shows. Its
//! client needs root (it reads the joiner's `server.crt` from `INCUS_DIR`, which is the
//! member's state directory).

use std::time::Duration;

use stapes_testkit::{free_port, have_tool, Cluster, Member};

/// Runs `incus admin init` for the member `m`, answering its questions with `answers`.
async fn admin_init(m: &Member, answers: &str) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let conf = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new("incus")
        .args(["admin", "init"])
        .env("INCUS_DIR", &m.dir)
        .env("INCUS_CONF", conf.path())
        .env("HOME", conf.path())
        .env_remove("INCUS_SOCKET")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("incus runs");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(answers.as_bytes())
        .await
        .expect("answers written");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("incus admin init finished within 60 s")
        .expect("incus runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether this test can run: the client refuses to join unless it runs as root.
fn can_run() -> bool {
    if !have_tool("incus") {
        return false;
    }
    if !nix::unistd::Uid::effective().is_root() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the interactive join test needs root under CI=true");
        }
        eprintln!("SKIP: incus admin init joins a cluster only as root");
        return false;
    }
    true
}

fn answers(address: &str, token: &str) -> String {
    // Clustering? Address? Joining? Token? Wipe? Print a preseed?
    format!("yes\n{address}\nyes\n{token}\nyes\nno\n")
}

#[tokio::test]
async fn t45_interactive_admin_init_joins_the_cluster() {
    if !can_run() {
        return;
    }
    let c = Cluster::start(2).await;
    let joiner = Member::start().await;
    let token = c.members[0].join_token("node3").await;
    let address = format!("127.0.0.1:{}", free_port());
    let (success, stdout, stderr) = admin_init(&joiner, &answers(&address, &token)).await;
    assert!(success, "admin init:\n{stdout}\n{stderr}\n{}", joiner.log());

    let list = stapes_testkit::eventually(Duration::from_secs(30), "three members online", || async {
        let list = joiner.members().await;
        (list.len() == 3 && list.iter().all(|m| m["status"] == "Online")).then_some(list)
    })
    .await;
    let node3 = list
        .iter()
        .find(|m| m["server_name"] == "node3")
        .expect("node3 listed");
    assert_eq!(node3["url"], format!("https://{address}"));
    // The token was spent by the join, and node3 is trusted as the member it is.
    let ops = c.members[0]
        .unix()
        .get("/1.0/operations")
        .await
        .unwrap()
        .metadata();
    assert!(ops.get("running").is_none(), "no token left pending: {ops}");
    let certs = c.members[0]
        .unix()
        .get("/1.0/certificates?recursion=1")
        .await
        .unwrap()
        .metadata();
    let node3_cert = certs
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "node3")
        .expect("node3's certificate");
    assert_eq!(node3_cert["type"], "server");
}

#[tokio::test]
async fn t46_interactive_join_with_a_spent_token_says_so() {
    if !can_run() {
        return;
    }
    let c = Cluster::start(1).await;
    let joiner = Member::start().await;
    let token = c.members[0].join_token("node2").await;
    // A second token for the same name replaces the first, as in Incus.
    let newer = c.members[0].join_token("node2").await;
    let address = format!("127.0.0.1:{}", free_port());
    let (success, _, stderr) = admin_init(&joiner, &answers(&address, &token)).await;
    assert!(!success);
    assert!(
        stderr.contains("No matching cluster join operation found: this token was replaced by a newer one for the same member"),
        "{stderr}"
    );
    assert!(joiner.members().await.is_empty(), "the joiner stays standalone");
    let (success, stdout, stderr) = admin_init(&joiner, &answers(&address, &newer)).await;
    assert!(success, "admin init with the newer token:\n{stdout}\n{stderr}");
}
