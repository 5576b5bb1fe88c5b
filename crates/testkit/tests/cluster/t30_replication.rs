use std::time::Duration;

use serde_json::json;
use stapes_testkit::{eventually, ClientCert, Cluster, Target};

use crate::slot;

#[tokio::test]
async fn trust_and_global_config_apply_everywhere_local_keys_stay_local() {
    let _slot = slot().await;
    let c = Cluster::start(3).await;
    // Trust added through node2 is in force on node3.
    let cert = ClientCert::generate("everywhere");
    c.members[1].trust(&cert).await;
    let addr3 = c.members[2].address().await;
    eventually(Duration::from_secs(5), "trust on node3", || async {
        let r = Target::tls(&addr3, Some(&cert))
            .get("/1.0/certificates")
            .await
            .ok()?;
        (r.status == 200).then_some(())
    })
    .await;
    // A global key set on node3 is on node1; the members keep their own addresses.
    let r = Target::tls(&addr3, Some(&cert))
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {"core.remote_token_expiry": "7H"}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    eventually(Duration::from_secs(5), "config on node1", || async {
        let cfg = c.members[0].unix().get("/1.0").await.ok()?.metadata()["config"].clone();
        (cfg["core.remote_token_expiry"] == "7H").then_some(())
    })
    .await;
    let a1 = c.members[0].address().await;
    let a3 = c.members[2].address().await;
    assert_ne!(a1, a3);
    // Removing the trust on node1 revokes it on node3.
    let r = c.members[0]
        .unix()
        .request(
            "DELETE",
            &format!("/1.0/certificates/{}", cert.fingerprint),
            None,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    eventually(Duration::from_secs(5), "revoked on node3", || async {
        let r = Target::tls(&addr3, Some(&cert))
            .get("/1.0/certificates")
            .await
            .ok()?;
        (r.status == 403).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_trust_token_from_one_member_works_on_another() {
    let _slot = slot().await;
    let c = Cluster::start(2).await;
    let r = c.members[0]
        .unix()
        .send_json(
            "POST",
            "/1.0/certificates",
            &json!({"name": "roamer", "type": "client", "token": true}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 202);
    let secret = r.metadata()["metadata"]["secret"].as_str().unwrap().to_string();
    let addr2 = c.members[1].address().await;
    let roamer = ClientCert::generate("roamer");
    let r = eventually(Duration::from_secs(5), "token redeemed on node2", || async {
        let r = Target::tls(&addr2, Some(&roamer))
            .send_json("POST", "/1.0/certificates", &json!({"trust_token": secret}))
            .await
            .ok()?;
        (r.status == 201).then_some(r)
    })
    .await;
    assert_eq!(r.status, 201);
}

/// After compaction the log no longer starts at the beginning: a member that joins
/// later receives a snapshot, then the rest of the log.
#[tokio::test]
async fn a_late_joiner_gets_the_state_through_a_snapshot() {
    let _slot = slot().await;
    let mut c = Cluster::start(1).await;
    let u = c.members[0].unix();
    for i in 0..1300u32 {
        let r = u
            .send_json(
                "PATCH",
                "/1.0",
                &json!({"config": {"core.remote_token_expiry": format!("{}M", i + 1)}}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    c.add("node2").await;
    let cfg = c.members[1].unix().get("/1.0").await.unwrap().metadata()["config"].clone();
    assert_eq!(cfg["core.remote_token_expiry"], "1300M");
}

/// Member-only endpoints refuse everyone else, trusted clients included.
#[tokio::test]
async fn internal_endpoints_refuse_non_members() {
    let _slot = slot().await;
    let c = Cluster::start(1).await;
    let addr = c.members[0].address().await;
    let client = ClientCert::generate("admin");
    c.members[0].trust(&client).await;
    for who in [Some(&client), None] {
        let t = Target::tls(&addr, who);
        for kind in ["append", "vote", "snapshot", "write"] {
            let r = t
                .request(
                    "POST",
                    &format!("/internal/raft/{kind}"),
                    Some(b"{}".to_vec()),
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(r.status, 403, "{kind} from {:?}", who.map(|c| &c.fingerprint));
        }
    }
    // Not over the local socket either: it is not a member.
    let r = c.members[0]
        .unix()
        .request("POST", "/internal/raft/vote", Some(b"{}".to_vec()), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    // A join with a certificate other than the one of the TLS session is refused.
    let other = ClientCert::generate("other");
    let body = json!({"secret": "x", "server_name": "evil", "address": "127.0.0.1:1", "id": 5,
                      "certificate": other.cert_pem, "architecture": "x86_64"});
    let r = Target::tls(&addr, Some(&client))
        .send_json("POST", "/internal/cluster/join", &body)
        .await
        .unwrap();
    assert_eq!(r.status, 403);
}

/// `user.*` keys are global like in Incus: set on one member, seen on every member; the
/// voter rules are checked wherever a value is set.
#[tokio::test]
async fn user_keys_replicate_and_voter_rules_hold_on_every_member() {
    let _slot = slot().await;
    let c = Cluster::start(3).await;
    let r = c.members[1]
        .unix()
        .send_json("PATCH", "/1.0", &json!({"config": {"user.owner": "team-a"}}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    for m in &c.members {
        eventually(Duration::from_secs(10), "user.owner everywhere", || async {
            let cfg = m.unix().get("/1.0").await.ok()?.metadata()["config"].clone();
            (cfg["user.owner"] == "team-a").then_some(())
        })
        .await;
    }
    for m in &c.members {
        let r = m
            .unix()
            .send_json("PATCH", "/1.0", &json!({"config": {"cluster.max_voters": "4"}}))
            .await
            .unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(
            r.json()["error"],
            "cannot set 'cluster.max_voters' to '4': Value must be an odd number equal to or higher than 3"
        );
    }
    let r = c.members[2]
        .unix()
        .send_json("PATCH", "/1.0", &json!({"config": {"cluster.max_voters": "5"}}))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    eventually(Duration::from_secs(10), "max_voters on node1", || async {
        let cfg = c.members[0].unix().get("/1.0").await.ok()?.metadata()["config"].clone();
        (cfg["cluster.max_voters"] == "5").then_some(())
    })
    .await;
    // Three members still make three voters.
    c.wait_healthy(3, crate::LONG).await;
}
