use serde_json::json;
use stapes_testkit::{ClientCert, Member, Target};

/// Every write acknowledged before a `kill -9` is there after the restart.
#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let mut m = Member::start().await;
    let writer = {
        let u = m.unix();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..2000u32 {
                let cert = ClientCert::generate(&format!("c{i}"));
                match u
                    .send_json(
                        "POST",
                        "/1.0/certificates",
                        &json!({"type": "client", "certificate": cert.cert_pem}),
                    )
                    .await
                {
                    Ok(r) if r.status == 201 => acked.push(cert.fingerprint),
                    _ => break,
                }
            }
            acked
        })
    };
    // Let some writes land, then kill mid-stream.
    stapes_testkit::eventually(std::time::Duration::from_secs(20), "20 certificates", || {
        let u = m.unix();
        async move {
            let n = u
                .get("/1.0/certificates")
                .await
                .ok()?
                .metadata()
                .as_array()?
                .len();
            (n >= 20).then_some(())
        }
    })
    .await;
    m.kill9();
    let acked = writer.await.unwrap();
    assert!(acked.len() >= 20);
    m.restart().await;
    let listed = m
        .unix()
        .get("/1.0/certificates")
        .await
        .unwrap()
        .metadata()
        .to_string();
    for fp in &acked {
        assert!(listed.contains(fp.as_str()), "acknowledged certificate {fp} lost");
    }
}

#[tokio::test]
async fn config_and_tokens_survive_restart() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let r = m
        .unix()
        .send_json(
            "POST",
            "/1.0/certificates",
            &json!({"name": "later", "type": "client", "token": true}),
        )
        .await
        .unwrap();
    let secret = r.metadata()["metadata"]["secret"].as_str().unwrap().to_string();
    m.restart().await;
    assert_eq!(
        m.unix().get("/1.0").await.unwrap().metadata()["config"]["core.https_address"],
        addr
    );
    // The listener is back, and the token issued before the restart still works.
    let cert = ClientCert::generate("later");
    let r = Target::tls(&addr, Some(&cert))
        .send_json("POST", "/1.0/certificates", &json!({"trust_token": secret}))
        .await
        .unwrap();
    assert_eq!(r.status, 201);
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_and_exits_cleanly() {
    let mut m = Member::start().await;
    m.listen().await;
    let r = m
        .unix()
        .send_json(
            "POST",
            "/1.0/certificates",
            &json!({"name": "w", "type": "client", "token": true}),
        )
        .await
        .unwrap();
    let op = r.metadata()["id"].as_str().unwrap().to_string();
    // A request in flight (a long wait) when SIGTERM arrives still gets its answer.
    let u = m.unix();
    let waiter = tokio::spawn(async move { u.get(&format!("/1.0/operations/{op}/wait?timeout=1")).await });
    m.wait_for_open_connections(2, std::time::Duration::from_secs(5))
        .await;
    let code = m.terminate().unwrap();
    assert_eq!(code, 0);
    let r = waiter.await.unwrap().expect("in-flight request answered");
    assert_eq!(r.status, 200);
    assert!(!m.socket().exists(), "socket removed on exit");
}

#[tokio::test]
async fn admin_shutdown_over_the_socket() {
    let mut m = Member::start().await;
    let r = m
        .unix()
        .request("PUT", "/internal/shutdown", None, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    stapes_testkit::eventually(std::time::Duration::from_secs(15), "the daemon to exit", || {
        let gone = !m.socket().exists();
        async move { gone.then_some(()) }
    })
    .await;
    let _ = m.terminate();
}

/// `/ready` is public and cheap; with a drain period, SIGTERM first turns it to 503
/// while requests are still served, then the member exits cleanly.
#[tokio::test]
async fn drain_turns_not_ready_first_and_keeps_serving() {
    let mut m = Member::start_env(&[("STAPES_DRAIN", "2")]).await;
    let addr = m.listen().await;
    let anon = stapes_testkit::Target::tls(&addr, None);
    let r = anon.get("/ready").await.unwrap();
    assert_eq!((r.status, r.metadata()["ready"].clone()), (200, json!(true)));
    m.signal(nix::sys::signal::Signal::SIGTERM);
    let r = stapes_testkit::eventually(std::time::Duration::from_secs(5), "not ready", || async {
        let r = anon.get("/ready").await.ok()?;
        (r.status == 503).then_some(r)
    })
    .await;
    assert!(r.json()["error"].as_str().unwrap().contains("shutting down"));
    // Still serving during the drain.
    assert_eq!(m.unix().get("/1.0").await.unwrap().status, 200);
    assert_eq!(anon.get("/1.0").await.unwrap().status, 200);
    assert_eq!(m.terminate().unwrap_or(0), 0);
}

/// A second daemon on the same state directory stops at once and names the first.
#[tokio::test]
async fn a_second_daemon_on_the_same_state_directory_names_the_holder() {
    let m = Member::start().await;
    let lock = std::fs::read_to_string(m.dir.join("stapesd.lock")).unwrap();
    assert_eq!(lock.trim(), m.pid().to_string());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(m.dir.join("stapesd.lock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let second = tokio::process::Command::new(stapes_testkit::bin("stapesd"))
        .arg("--state-dir")
        .arg(&m.dir)
        .env_remove("STAPES_SOCKET")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), second)
        .await
        .expect("the second daemon exits")
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "State directory {} is in use by stapesd (pid {})",
            m.dir.display(),
            m.pid()
        )),
        "{err}"
    );
    // The first daemon is untouched: its socket still answers.
    assert_eq!(m.unix().get("/1.0").await.unwrap().status, 200);
}

/// A stopping daemon removes its socket only while the path still holds the socket it
/// bound: a successor's socket at the same path survives.
#[tokio::test]
async fn a_stopping_daemon_leaves_a_successors_socket_alone() {
    let mut m = Member::start().await;
    let socket = m.socket();
    std::fs::rename(&socket, m.dir.join("old.socket")).unwrap();
    let successor = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    assert_eq!(m.terminate().unwrap(), 0);
    assert!(socket.exists(), "the successor's socket was removed");
    std::os::unix::net::UnixStream::connect(&socket).expect("the successor's socket still answers");
    drop(successor);
}

/// A member whose files are missing or empty refuses to start, naming the file and what
/// to do; it never starts as a new, empty member.
#[tokio::test]
async fn damaged_files_refuse_to_start() {
    let mut m = Member::start().await;
    m.trust(&ClientCert::generate("kept")).await;
    m.kill9();
    let state = m.dir.join("database/state.redb");
    let saved = std::fs::read(&state).unwrap();
    std::fs::write(&state, b"").unwrap();
    let said = stapes_testkit::refused_start(&m.dir);
    assert!(
        said.contains("state.redb is empty") && said.contains("Restore it from a backup"),
        "{said}"
    );
    std::fs::remove_file(&state).unwrap();
    let said = stapes_testkit::refused_start(&m.dir);
    assert!(said.contains("state.redb is missing"), "{said}");
    std::fs::write(&state, &saved).unwrap();
    let key = m.dir.join("server.key");
    let saved_key = std::fs::read(&key).unwrap();
    std::fs::write(&key, b"").unwrap();
    let said = stapes_testkit::refused_start(&m.dir);
    assert!(said.contains("server.key is empty"), "{said}");
    // Restored: it starts, with what it had.
    std::fs::write(&key, saved_key).unwrap();
    m.start_again().await;
    let listed = m.unix().get("/1.0/certificates").await.unwrap().metadata();
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

/// Files holding keys and secrets are readable by their owner only.
#[tokio::test]
async fn key_and_database_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let m = Member::start().await;
    m.trust(&ClientCert::generate("x")).await;
    for file in ["server.key", "database/state.redb"] {
        let mode = std::fs::metadata(m.dir.join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
}

/// A tmpfs mounted on a member's state directory, unmounted when dropped.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A member whose state directory is an 8 MiB tmpfs (root only).
async fn on_small_tmpfs() -> (Member, Mount) {
    let mut mounted = None;
    let m = Member::start_prepared(None, &[], |dir| {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m"])
            .arg("tmpfs")
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs");
        mounted = Some(Mount(dir.to_path_buf()));
    })
    .await;
    (m, mounted.expect("mounted"))
}

/// Fills the file system of `dir` with one file, returned.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    let filler = dir.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    filler
}

/// A certificate to trust, with a description that takes room on disk.
fn bulky_certificate(i: usize) -> serde_json::Value {
    let cert = ClientCert::generate(&format!("w{i}"));
    json!({"type": "client", "certificate": cert.cert_pem, "description": "d".repeat(256 * 1024)})
}

/// A full disk: writes fail with a clear 503 and the member reports not-ready; once
/// space returns it recovers by itself (redb refuses every write after an I/O error
/// until the database is reopened).
#[tokio::test]
async fn a_full_disk_is_not_ready_and_recovers() {
    use std::time::Duration;
    if !stapes_testkit::have_root() {
        return;
    }
    let (m, mounted) = on_small_tmpfs().await;
    let filler = fill(&m.dir);
    let write = bulky_certificate;
    let u = m.unix();
    let mut failed = None;
    for i in 0..20 {
        let r = u.send_json("POST", "/1.0/certificates", &write(i)).await.unwrap();
        if r.status != 201 {
            failed = Some(r);
            break;
        }
    }
    let r = failed.expect("a write failed on the full disk");
    assert_eq!(r.status, 503, "{}", r.json());
    assert!(
        r.json()["error"].as_str().unwrap().contains("write failed"),
        "{}",
        r.json()
    );
    let ready = u.get("/ready").await.unwrap();
    assert_eq!(ready.status, 503);
    std::fs::remove_file(&filler).unwrap();
    stapes_testkit::eventually(Duration::from_secs(20), "ready again once space returned", || {
        let u = m.unix();
        async move { (u.get("/ready").await.ok()?.status == 200).then_some(()) }
    })
    .await;
    let r = u
        .send_json("POST", "/1.0/certificates", &write(99))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json());
    drop(m);
    drop(mounted);
}

/// A clustered member whose disk fills: the write that meets the full disk is not
/// acknowledged, Raft stops for good (it does after a storage error), and the member
/// exits with 75 (EX_TEMPFAIL) so that its service manager restarts it. Started again
/// once space has returned, it has every write it acknowledged.
#[tokio::test]
async fn a_clustered_member_whose_storage_fails_exits_75() {
    use std::time::Duration;
    if !stapes_testkit::have_root() {
        return;
    }
    let (mut m, mounted) = on_small_tmpfs().await;
    m.enable_cluster("solo").await;
    let u = m.unix();
    stapes_testkit::eventually(Duration::from_secs(60), "the member clustered", || {
        let u = m.unix();
        async move {
            let me = u.get("/1.0").await.ok()?.metadata();
            (me["environment"]["server_clustered"] == true).then_some(())
        }
    })
    .await;
    let mut acknowledged = Vec::new();
    for i in 0..3 {
        let cert = ClientCert::generate(&format!("before{i}"));
        let body = json!({"type": "client", "certificate": cert.cert_pem});
        let r = u.send_json("POST", "/1.0/certificates", &body).await.unwrap();
        assert_eq!(r.status, 201, "{}", r.json());
        acknowledged.push(body["certificate"].clone());
    }
    let filler = fill(&m.dir);
    for i in 0..40 {
        let cert = bulky_certificate(i);
        match u.send_json("POST", "/1.0/certificates", &cert).await {
            Ok(r) if r.status == 201 => acknowledged.push(cert["certificate"].clone()),
            Ok(r) => {
                assert!(r.status >= 500, "{} {}", r.status, r.json());
                break;
            }
            // The member may be stopping already.
            Err(_) => break,
        }
    }
    let code = m.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(code, 75, "{}", m.log());
    assert!(
        m.log()
            .contains("stopping so that the service manager restarts this member"),
        "{}",
        m.log()
    );
    std::fs::remove_file(&filler).unwrap();
    m.start_again().await;
    stapes_testkit::eventually(Duration::from_secs(60), "ready after the restart", || {
        let u = m.unix();
        async move { (u.get("/ready").await.ok()?.status == 200).then_some(()) }
    })
    .await;
    let listed = m
        .unix()
        .get("/1.0/certificates?recursion=1")
        .await
        .unwrap()
        .metadata();
    let listed: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["certificate"].as_str().unwrap_or_default().trim().to_string())
        .collect();
    for pem in &acknowledged {
        let pem = pem.as_str().unwrap().trim();
        assert!(
            listed.iter().any(|l| l == pem),
            "an acknowledged write is missing"
        );
    }
    println!(
        "{} writes acknowledged before the disk filled",
        acknowledged.len()
    );
    drop(m);
    drop(mounted);
}
