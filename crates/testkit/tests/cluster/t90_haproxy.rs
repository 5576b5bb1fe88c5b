use std::time::Duration;

use stapes_testkit::{eventually, free_port, have_tool, ClientCert, Cluster, Target};

use crate::{slot, FAST, LONG};

/// haproxy in TCP mode with PROXY v2 in front of three members, health-checking
/// `/ready`: a dead member is taken out, and a rolling restart with drain loses no
/// request.
// `timeout check 2s`: without it a check must finish within `inter` (200 ms), and on a
// busy machine a slow answer from a healthy member would take it out of rotation; a
// draining member still answers 503 at once and goes out as fast as before.
// Two workers: `terminate` blocks its thread until the member has drained and exited,
// and the client task must keep running meanwhile. On one thread it would stall with a
// connection half open to the draining member, which closes it when the drain ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_takes_out_sick_members_and_a_rolling_restart_loses_nothing() {
    if !have_tool("haproxy") {
        return;
    }
    let _slot = slot().await;
    let mut c = Cluster::start_env(3, FAST, &[("STAPES_DRAIN", "3")]).await;
    c.wait_healthy(3, LONG).await;
    let cert = ClientCert::generate("lb-client");
    c.members[0].trust(&cert).await;
    let r = c.members[0]
        .unix()
        .send_json(
            "PATCH",
            "/1.0",
            &serde_json::json!({"config": {"core.https_trusted_proxy": "127.0.0.9"}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let front = format!("127.0.0.1:{}", free_port());
    let mut servers = String::new();
    for (i, m) in c.members.iter().enumerate() {
        servers.push_str(&format!(
            "  server m{} {} source 127.0.0.9 send-proxy-v2 check check-ssl verify none check-send-proxy inter 200ms fall 1 rise 2\n",
            i + 1,
            m.address().await
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  timeout check 2s\n  retries 3\n  option redispatch\n\
             frontend api\n  bind {front}\n  default_backend members\n\
             backend members\n  balance roundrobin\n  option httpchk GET /ready\n  http-check expect status 200\n{servers}"
        ),
    )
    .unwrap();
    let mut haproxy = stapes_testkit::haproxy(&cfg);
    let via = Target::tls(&front, Some(&cert));
    eventually(
        Duration::from_secs(10),
        "haproxy up with every member",
        || async {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..9 {
                let r = via.get("/1.0").await.ok()?;
                seen.insert(r.metadata()["environment"]["server_name"].as_str()?.to_string());
            }
            (seen.len() == 3).then_some(())
        },
    )
    .await;

    // Rolling restart while a client keeps asking: not one failure.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let client = {
        let via = via.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            for _ in 0..100_000 {
                if *stop_rx.borrow() {
                    break;
                }
                match via.get("/1.0").await {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failed.push(format!("status {}", r.status)),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    for i in 0..3 {
        let code = c.members[i].terminate().unwrap();
        assert_eq!(code, 0);
        c.members[i].start_again().await;
        c.wait_healthy(3, LONG).await;
        // haproxy must route to it again before the next one goes.
        let name = format!("node{}", i + 1);
        eventually(
            Duration::from_secs(10),
            "haproxy routing to the restarted member",
            || async {
                for _ in 0..6 {
                    if via.get("/1.0").await.ok()?.metadata()["environment"]["server_name"] == name.as_str() {
                        return Some(());
                    }
                }
                None
            },
        )
        .await;
    }
    stop_tx.send(true).unwrap();
    let (ok, failed) = client.await.unwrap();
    println!(
        "rolling restart through haproxy: {ok} requests answered, {} failed",
        failed.len()
    );
    assert!(ok > 50, "the client kept running ({ok})");
    assert!(
        failed.is_empty(),
        "requests failed during the rolling restart: {failed:?}"
    );

    // A dead member is taken out of rotation.
    c.members[2].kill9();
    eventually(Duration::from_secs(10), "only live members answer", || async {
        for _ in 0..6 {
            let r = via.get("/1.0").await.ok()?;
            if r.status != 200 {
                return None;
            }
        }
        Some(())
    })
    .await;
    let _ = haproxy.kill().await;
}
