use serde_json::json;
use stapes_testkit::{Cluster, Member};

use crate::slot;

async fn still_standalone(m: &Member) {
    let c = m.unix().get("/1.0/cluster").await.unwrap().metadata();
    assert_eq!(c["enabled"], false, "the joiner must be left unchanged");
}

#[tokio::test]
async fn token_is_listed_single_use_and_redeemable_through_any_member() {
    let _slot = slot().await;
    let mut c = Cluster::start(2).await;
    // A token issued on node2 (not the leader's choice) is listed and redeemed.
    let token = c.members[1].join_token("node3").await;
    let ops = c.members[0]
        .unix()
        .get("/1.0/operations?recursion=1")
        .await
        .unwrap()
        .metadata();
    let running = ops["running"].as_array().unwrap();
    assert!(running.iter().any(|o| o["metadata"]["serverName"] == "node3"));
    let joiner = Member::start().await;
    let r = joiner.try_join("node3", &token).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    c.members.push(joiner);
    // Spent: another server cannot use it.
    let late = Member::start().await;
    let r = late.try_join("node3", &token).await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["error"],
        "No matching cluster join operation found: this token was already used"
    );
    still_standalone(&late).await;
}

#[tokio::test]
async fn wrong_expired_and_revoked_tokens_leave_the_joiner_unchanged() {
    let _slot = slot().await;
    let c = Cluster::start_with(1, &[("cluster.join_token_expiry", "1S")]).await;
    let joiner = Member::start().await;

    // A forged secret.
    let good = c.members[0].join_token("node2").await;
    let mut decoded: trust::token::JoinToken = trust::token::decode(&good).unwrap();
    decoded.secret = "0".repeat(64);
    let r = joiner.try_join("node2", &trust::token::encode(&decoded)).await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["error"],
        "No matching cluster join operation found: the token is unknown, already used or expired"
    );
    still_standalone(&joiner).await;

    // The wrong name for the token.
    let r = joiner.try_join("other", &good).await;
    assert_eq!(r.status, 400);
    still_standalone(&joiner).await;

    // Garbage.
    let r = joiner.try_join("node2", "not-a-token").await;
    assert_eq!(r.status, 400);

    // Expired (expiry 1 s): wait it out on the operation, bounded.
    let op_id = {
        let ops = c.members[0]
            .unix()
            .get("/1.0/operations?recursion=1")
            .await
            .unwrap()
            .metadata();
        ops["running"][0]["id"].as_str().unwrap().to_string()
    };
    let _ = c.members[0]
        .unix()
        .get(&format!("/1.0/operations/{op_id}/wait?timeout=1.5"))
        .await;
    let r = joiner.try_join("node2", &good).await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["error"],
        "No matching cluster join operation found: this token has expired"
    );
    still_standalone(&joiner).await;

    // Revoked.
    let r = c.members[0]
        .unix()
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {"cluster.join_token_expiry": "3H"}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let token = c.members[0].join_token("node2").await;
    let secret = trust::token::decode::<trust::token::JoinToken>(&token)
        .unwrap()
        .secret;
    let ops = c.members[0]
        .unix()
        .get("/1.0/operations?recursion=1")
        .await
        .unwrap()
        .metadata();
    let id = ops["running"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["metadata"]["secret"] == secret.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c.members[0]
        .unix()
        .request("DELETE", &format!("/1.0/operations/{id}"), None, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = joiner.try_join("node2", &token).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["error"],
        "No matching cluster join operation found: this token was revoked"
    );
    still_standalone(&joiner).await;

    // Replaced by a newer token for the same name, as in Incus.
    let older = c.members[0].join_token("node2").await;
    let newer = c.members[0].join_token("node2").await;
    let r = joiner.try_join("node2", &older).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["error"],
        "No matching cluster join operation found: this token was replaced by a newer one for the same member"
    );
    still_standalone(&joiner).await;

    // A trust token where a join token belongs, and the other way round.
    let addr = c.members[0].address().await;
    let trust_token = {
        let r = c.members[0]
            .unix()
            .send_json(
                "POST",
                "/1.0/certificates",
                &json!({"name": "c", "type": "client", "token": true}),
            )
            .await
            .unwrap();
        let md = r.metadata()["metadata"].clone();
        trust::token::encode(&trust::token::TrustToken {
            client_name: "c".into(),
            fingerprint: md["fingerprint"].as_str().unwrap().into(),
            addresses: vec![addr.clone()],
            secret: md["secret"].as_str().unwrap().into(),
            expires_at: trust::token::NO_EXPIRY.into(),
        })
    };
    let r = joiner.try_join("node2", &trust_token).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("This is a trust token (for adding a client"),
        "{}",
        r.json()
    );
    still_standalone(&joiner).await;
    let client = stapes_testkit::ClientCert::generate("laptop");
    let r = stapes_testkit::Target::tls(&addr, Some(&client))
        .send_json(
            "POST",
            "/1.0/certificates",
            &json!({"type": "client", "trust_token": newer}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("This is a cluster join token (for a new member"),
        "{}",
        r.json()
    );
    // Neither token was spent by the mistakes.
    let r = joiner.try_join("node2", &newer).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn taken_name_and_unreachable_member() {
    let _slot = slot().await;
    let c = Cluster::start(1).await;
    let r = c.members[0]
        .unix()
        .send_json("POST", "/1.0/cluster/members", &json!({"server_name": "node1"}))
        .await
        .unwrap();
    assert_eq!(r.status, 409);

    // A token whose only address answers nothing: a clear error, nothing changed.
    let token = c.members[0].join_token("node2").await;
    let mut decoded: trust::token::JoinToken = trust::token::decode(&token).unwrap();
    decoded.addresses = vec![format!("127.0.0.1:{}", stapes_testkit::free_port())];
    let joiner = Member::start().await;
    let r = joiner.try_join("node2", &trust::token::encode(&decoded)).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("Failed to reach any cluster member"));
    still_standalone(&joiner).await;
    let cfg = joiner.unix().get("/1.0").await.unwrap().metadata()["config"].clone();
    assert_eq!(cfg, json!({}), "the joiner's listener change was undone");
}
