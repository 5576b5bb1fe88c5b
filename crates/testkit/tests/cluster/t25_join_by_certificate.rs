//! The two-step join of the interactive `incus admin init`, at the API: the join token
//! trusts the joiner's own certificate as a server of that name, then the joiner joins
//! by that certificate with no token.

use base64::Engine as _;
use serde_json::json;
use stapes_testkit::{free_port, Cluster, Member, Target};

use crate::{slot, LONG};

#[tokio::test]
async fn t25_a_join_token_trusts_the_joiner_then_it_joins_by_certificate() {
    let _slot = slot().await;
    let c = Cluster::start(1).await;
    let addr1 = c.members[0].address().await;
    let cluster_cert = c.members[0].unix().get("/1.0").await.unwrap().metadata()["environment"]
        ["certificate"]
        .as_str()
        .unwrap()
        .to_string();
    let joiner = Member::start().await;
    let server_pem = std::fs::read_to_string(joiner.dir.join("server.crt")).unwrap();
    let server_der = trust::cert::pem_to_der(&server_pem).unwrap();
    let join_put = json!({
        "server_name": "node2",
        "enabled": true,
        "server_address": format!("127.0.0.1:{}", free_port()),
        "cluster_address": addr1,
        "cluster_certificate": cluster_cert,
        "cluster_token": "",
        "member_config": [],
    });

    // Not trusted yet: refused, nothing changes.
    let r = joiner
        .unix()
        .send_json("PUT", "/1.0/cluster", &join_put)
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["error"],
        "This server's certificate is not trusted as cluster member \"node2\": join with a join token"
    );
    let mut no_cert = join_put.clone();
    no_cert["cluster_certificate"] = json!("");
    let r = joiner
        .unix()
        .send_json("PUT", "/1.0/cluster", &no_cert)
        .await
        .unwrap();
    assert_eq!(r.status, 400);

    // The trust step, as the incus client sends it: no client certificate, the joiner's
    // certificate in the body, type server, the join token as the trust token.
    let token = c.members[0].join_token("node2").await;
    let trust_post = json!({
        "name": "node2",
        "type": "server",
        "certificate": base64::engine::general_purpose::STANDARD.encode(&server_der),
        "trust_token": token,
    });
    let anonymous = Target::tls(&addr1, None);
    let r = anonymous
        .send_json("POST", "/1.0/certificates", &trust_post)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let fp = trust::fingerprint(&server_der);
    let shown = c.members[0]
        .unix()
        .get(&format!("/1.0/certificates/{fp}"))
        .await
        .unwrap()
        .metadata();
    assert_eq!(
        (shown["type"].as_str(), shown["name"].as_str()),
        (Some("server"), Some("node2"))
    );
    // The token is spent there, as in Incus.
    let r = anonymous
        .send_json("POST", "/1.0/certificates", &trust_post)
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["error"],
        "No matching cluster join operation found: this token was already used"
    );

    // Another name with this certificate is still refused; its own name joins.
    let mut other = join_put.clone();
    other["server_name"] = json!("node9");
    let r = joiner
        .unix()
        .send_json("PUT", "/1.0/cluster", &other)
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    let r = joiner
        .unix()
        .send_json("PUT", "/1.0/cluster", &join_put)
        .await
        .unwrap();
    assert_eq!(
        r.status,
        202,
        "{}\n{}",
        String::from_utf8_lossy(&r.body),
        joiner.log()
    );
    stapes_testkit::eventually(LONG, "two members online on node1", || async {
        let list = c.members[0].members().await;
        (list.len() == 2 && list.iter().all(|m| m["status"] == "Online")).then_some(())
    })
    .await;
}
