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
