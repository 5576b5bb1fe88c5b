use std::time::{Duration, Instant};

use serde_json::json;
use stapes_testkit::{eventually, ClientCert, Cluster};

use crate::{slot, FAST, LONG};

fn set_expiry(n: u32) -> serde_json::Value {
    json!({"config": {"core.remote_token_expiry": format!("{}H", n % 50 + 1)}})
}

#[tokio::test]
async fn leader_killed_a_new_leader_takes_writes() {
    let _slot = slot().await;
    let mut c = Cluster::start_with(3, FAST).await;
    c.wait_healthy(3, LONG).await;
    let leader = c.leader(LONG).await;
    c.members[leader].kill9();
    let killed = Instant::now();
    let survivor = (leader + 1) % 3;
    let mut n = 0;
    eventually(
        Duration::from_secs(15),
        "a write accepted after the leader died",
        || {
            n += 1;
            let u = c.members[survivor].unix();
            let body = set_expiry(n);
            async move { (u.send_json("PATCH", "/1.0", &body).await.ok()?.status == 200).then_some(()) }
        },
    )
    .await;
    // How fast is the benchmark's business (stapes-bench cluster mode, "leader SIGKILL
    // -> write OK", target under 2 s); here only the 15 s bound is asserted.
    println!(
        "writes resumed {:?} after the leader was killed",
        killed.elapsed()
    );
    let dead = format!("node{}", leader + 1);
    eventually(
        Duration::from_secs(15),
        "the dead leader shown offline",
        || async {
            let list = c.members[survivor].members().await;
            let m = list.iter().find(|m| m["server_name"] == dead.as_str())?;
            (m["status"] == "Offline" && m["message"].as_str()?.starts_with("No heartbeat for")).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn quorum_lost_writes_fail_fast_and_reads_still_work() {
    let _slot = slot().await;
    let mut c = Cluster::start_with(3, FAST).await;
    c.wait_healthy(3, LONG).await;
    c.members[1].kill9();
    c.members[2].kill9();
    let survivor = &c.members[0];
    // Every attempt answers (never hangs); once the loss is noticed it is a 503.
    let r = eventually(Duration::from_secs(20), "a 503 from the survivor", || async {
        let started = Instant::now();
        let r = survivor
            .unix()
            .send_json("PATCH", "/1.0", &set_expiry(7))
            .await
            .ok()?;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a write hung for {:?}",
            started.elapsed()
        );
        (r.status == 503).then_some(r)
    })
    .await;
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("Cluster database is unavailable"),
        "{}",
        r.json()
    );
    let started = Instant::now();
    let r = survivor
        .unix()
        .send_json("PATCH", "/1.0", &set_expiry(8))
        .await
        .unwrap();
    println!("a write without quorum failed in {:?}", started.elapsed());
    assert_eq!(r.status, 503);
    assert_eq!(survivor.unix().get("/1.0").await.unwrap().status, 200);
}

#[tokio::test]
async fn restarted_member_rejoins_and_catches_up() {
    let _slot = slot().await;
    let mut c = Cluster::start_with(3, FAST).await;
    c.wait_healthy(3, LONG).await;
    c.members[2].kill9();
    let r = c.members[0]
        .unix()
        .send_json("PATCH", "/1.0", &set_expiry(11))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let restarted = Instant::now();
    c.members[2].restart().await;
    eventually(Duration::from_secs(15), "node3 online and caught up", || async {
        let list = c.members[0].members().await;
        let online = list
            .iter()
            .any(|m| m["server_name"] == "node3" && m["status"] == "Online");
        let cfg = c.members[2].unix().get("/1.0").await.ok()?.metadata()["config"].clone();
        (online && cfg["core.remote_token_expiry"] == "12H").then_some(())
    })
    .await;
    println!(
        "restarted member usable through another member after {:?}",
        restarted.elapsed()
    );
}

/// A write loop through the survivors while the leader dies: every write that was
/// acknowledged is on every member afterwards.
#[tokio::test]
async fn acknowledged_writes_survive_the_leader_dying() {
    let _slot = slot().await;
    let mut c = Cluster::start_with(3, FAST).await;
    c.wait_healthy(3, LONG).await;
    let leader = c.leader(LONG).await;
    let writers: Vec<_> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| c.members[i].unix())
        .collect();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..5000usize {
            if *stop_rx.borrow() {
                break;
            }
            let cert = ClientCert::generate(&format!("w{i}"));
            let body = json!({"type": "client", "certificate": cert.cert_pem});
            if let Ok(r) = writers[i % writers.len()]
                .send_json("POST", "/1.0/certificates", &body)
                .await
            {
                if r.status == 201 {
                    acked.push(cert.fingerprint);
                }
            }
        }
        acked
    });
    let count = |m: &stapes_testkit::Member| {
        let u = m.unix();
        async move {
            u.get("/1.0/certificates")
                .await
                .ok()
                .and_then(|r| r.metadata().as_array().map(Vec::len))
        }
    };
    let survivor = (leader + 1) % 3;
    eventually(LONG, "writes before the kill", || async {
        (count(&c.members[survivor]).await? >= 15).then_some(())
    })
    .await;
    c.members[leader].kill9();
    let before = count(&c.members[survivor]).await.unwrap_or(0);
    eventually(LONG, "writes after the kill", || async {
        (count(&c.members[survivor]).await? >= before + 15).then_some(())
    })
    .await;
    stop_tx.send(true).unwrap();
    let acked = task.await.unwrap();
    c.members[leader].restart().await;
    for (i, m) in c.members.iter().enumerate() {
        let acked = acked.clone();
        eventually(LONG, &format!("every acknowledged write on member {i}"), || {
            let u = m.unix();
            let acked = acked.clone();
            async move {
                let listed = u.get("/1.0/certificates").await.ok()?.metadata().to_string();
                acked.iter().all(|fp| listed.contains(fp.as_str())).then_some(())
            }
        })
        .await;
    }
}

#[tokio::test]
async fn ready_reports_a_lost_quorum() {
    let _slot = slot().await;
    let mut c = Cluster::start_with(3, FAST).await;
    c.wait_healthy(3, LONG).await;
    let addr = c.members[0].address().await;
    let anon = stapes_testkit::Target::tls(&addr, None);
    assert_eq!(anon.get("/ready").await.unwrap().status, 200);
    c.members[1].kill9();
    c.members[2].kill9();
    let r = eventually(Duration::from_secs(20), "/ready says 503", || async {
        let r = anon.get("/ready").await.ok()?;
        (r.status == 503).then_some(r)
    })
    .await;
    assert!(
        r.json()["error"].as_str().unwrap().contains("quorum"),
        "{}",
        r.json()
    );
}
