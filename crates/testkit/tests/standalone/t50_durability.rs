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
