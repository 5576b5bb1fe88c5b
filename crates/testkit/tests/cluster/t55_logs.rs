//! What members send each other on their own behalf is not user traffic: an idle
//! follower's INFO log shows none of it, while a client's request forwarded to it is
//! logged there at INFO with the client's address.

use serde_json::json;
use stapes_testkit::{eventually, ClientCert, Cluster, Target};

use crate::{slot, LONG};

#[tokio::test]
async fn t55_an_idle_follower_logs_no_member_traffic_at_info() {
    let _slot = slot().await;
    let c = Cluster::start(3).await;
    c.wait_healthy(3, LONG).await;
    let leader = c.leader(LONG).await;
    let follower = &c.members[(leader + 1) % 3];
    let name = format!("node{}", (leader + 1) % 3 + 1);
    let mark = follower.log().len();

    // Raft appends from the leader, heartbeats and event relays from both others.
    follower.wait_for_requests(40, LONG).await;
    let log = follower.log();
    let since = &log[mark..];
    let internal: Vec<&str> = since.lines().filter(|l| l.contains("/internal/")).collect();
    assert!(
        internal.is_empty(),
        "member traffic logged at INFO:\n{}",
        internal.join("\n")
    );
    for line in since.lines().filter(|l| l.contains(" request ")) {
        assert!(
            line.contains("protocol=\"unix\""),
            "only this test's own requests: {line}"
        );
    }

    // A client's request forwarded from the leader is a client request on the follower.
    let cert = ClientCert::generate("auditor");
    c.members[leader].trust(&cert).await;
    let addr = c.members[leader].address().await;
    let client = Target::tls(&addr, Some(&cert));
    // The follower may not have applied the trust yet: until then it answers the
    // forwarded client as a stranger (no `environment`).
    let r = eventually(LONG, "a forwarded request, trusted on the follower", || async {
        let r = client.get(&format!("/1.0?target={name}")).await.ok()?;
        (r.status == 200 && r.metadata()["auth"] == "trusted").then_some(r)
    })
    .await;
    assert_eq!(r.metadata()["environment"]["server_name"], json!(name));
    let wanted = format!("protocol=\"tls\" user=\"{}\"", cert.fingerprint);
    eventually(LONG, "the forwarded request in the follower's log", || async {
        follower
            .log()
            .lines()
            .any(|l| {
                l.contains(" INFO ")
                    && l.contains("path=/1.0 ")
                    && l.contains("address=\"127.0.0.1\"")
                    && l.contains(&wanted)
            })
            .then_some(())
    })
    .await;
}
