//! A request forwarded to a member that cannot serve it says why, and names the member:
//! it did not answer in time (hung), it refused the connection (down), or it presented
//! a certificate that is not the one the cluster trusts for it (replaced).

use std::time::{Duration, Instant};

use stapes_testkit::{eventually, Cluster, Member, Resp};

use crate::{slot, LONG};

/// The member the requests are for, and how long it may take to answer.
const VICTIM: &str = "node3";
const FORWARD_TIMEOUT_SECS: u64 = 3;

/// `GET /1.0?target=node3` through `front`: every failure is a 503 (the member may come
/// back); the first one whose message says `why` is returned.
async fn fails_with(front: &Member, why: &str) -> Resp {
    let path = format!("/1.0?target={VICTIM}");
    eventually(Duration::from_secs(20), why, || async {
        let r = front.unix().get(&path).await.ok()?;
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
        let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(msg.contains(&format!("Cluster member \"{VICTIM}\"")), "{msg}");
        msg.contains(why).then_some(r)
    })
    .await
}

#[tokio::test]
async fn t50_hung_down_and_impostor_members_are_told_apart() {
    let _slot = slot().await;
    // Members stay "online" throughout (a long offline threshold), so every request is
    // really sent and its failure is the connection's, not the member list's.
    let timeout = FORWARD_TIMEOUT_SECS.to_string();
    let config = [
        ("cluster.offline_threshold", "3600"),
        ("cluster.forward_timeout", timeout.as_str()),
    ];
    let mut c = Cluster::start_with(3, &config).await;
    c.wait_healthy(3, LONG).await;
    let path = format!("/1.0?target={VICTIM}");
    assert_eq!(c.members[0].unix().get(&path).await.unwrap().status, 200);

    // Hung (SIGSTOP): accepts TCP, answers nothing; fails within the forwarding bound.
    c.members[2].stop_process().await;
    let started = Instant::now();
    let r = c.members[0].unix().get(&path).await.unwrap();
    let took = started.elapsed();
    let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(r.status, 503, "{msg}");
    assert!(
        msg.contains("Cluster member \"node3\" did not answer in time"),
        "{msg}"
    );
    println!("a hung member failed the request after {took:?}: {msg}");
    // The bound is the forward timeout; CI machines are busy, so allow room.
    assert!(took < Duration::from_secs(FORWARD_TIMEOUT_SECS + 7), "{took:?}");
    c.members[2].signal(nix::sys::signal::Signal::SIGCONT);
    eventually(LONG, "the member answers again", || async {
        let r = c.members[0].unix().get(&path).await.ok()?;
        (r.status == 200).then_some(())
    })
    .await;

    // Down (stopped cleanly): nothing listens on its address any more.
    let address = c.members[2].address().await;
    c.members[2].terminate().unwrap();
    let r = fails_with(&c.members[0], "refused the connection").await;
    let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("Connection refused"), "{msg}");
    assert!(!msg.contains("certificate"), "{msg}");

    // An impostor: the member's own certificate replaced on disk by another one, then
    // started again. Its address is right, its certificate is not the one the cluster
    // pinned for it, and the front member says so.
    let other = trust::CertPair::generate_server("impostor").unwrap();
    std::fs::write(c.members[2].dir.join("server.crt"), &other.cert_pem).unwrap();
    std::fs::write(c.members[2].dir.join("server.key"), &other.key_pem).unwrap();
    c.members[2].restart_unready(&address).await;
    let r = fails_with(
        &c.members[0],
        "presented a TLS certificate that is not the one the cluster trusts",
    )
    .await;
    let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(!msg.contains("refused"), "{msg}");
    // The healthy members still serve each other meanwhile.
    let r = c.members[0].unix().get("/1.0?target=node2").await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}
