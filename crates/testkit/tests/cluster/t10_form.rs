use std::sync::Arc;

use serde_json::json;
use stapes_testkit::{Cluster, Member, PeerRecorder, ServerTrust, Target};

use crate::{slot, LONG};

#[tokio::test]
async fn three_members_form_a_cluster_with_three_voters() {
    let _slot = slot().await;
    let c = Cluster::start(3).await;
    c.wait_healthy(3, LONG).await;
    let list = c.members[2].members().await;
    let names: Vec<_> = list
        .iter()
        .map(|m| m["server_name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["node1", "node2", "node3"]);
    assert_eq!(
        list.iter()
            .filter(|m| m["roles"].to_string().contains("database-leader"))
            .count(),
        1
    );
    for m in &list {
        assert_eq!(m["message"], "Fully operational");
        assert!(m["url"].as_str().unwrap().starts_with("https://127.0.0.1:"));
    }
    let cluster = c.members[1].unix().get("/1.0/cluster").await.unwrap().metadata();
    assert_eq!(cluster["enabled"], true);
    assert_eq!(cluster["server_name"], "node2");
    let me = c.members[1].unix().get("/1.0").await.unwrap().metadata();
    assert_eq!(me["environment"]["server_clustered"], true);
    assert_eq!(me["environment"]["server_name"], "node2");
}

/// Every member presents the one cluster certificate, and reports it.
#[tokio::test]
async fn every_member_presents_the_same_certificate() {
    let _slot = slot().await;
    let c = Cluster::start(3).await;
    let mut seen = Vec::new();
    for m in &c.members {
        let rec = Arc::new(PeerRecorder::default());
        let addr = m.address().await;
        let r = Target::tls_with(&addr, None, ServerTrust::Record(rec.clone()))
            .get("/1.0")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let fp = trust::fingerprint(&rec.seen_der().unwrap());
        let reported =
            m.unix().get("/1.0").await.unwrap().metadata()["environment"]["certificate_fingerprint"].clone();
        assert_eq!(reported, json!(fp));
        seen.push(fp);
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    // Not the members' own server certificates: those appear as type "server".
    let certs = c.members[0]
        .unix()
        .get("/1.0/certificates?recursion=1")
        .await
        .unwrap()
        .metadata();
    let servers: Vec<_> = certs
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "server")
        .collect();
    assert_eq!(servers.len(), 3);
    assert!(servers.iter().all(|s| s["fingerprint"] != json!(seen[0])));
}

#[tokio::test]
async fn bootstrap_keeps_what_the_standalone_member_had() {
    let _slot = slot().await;
    let mut m = Member::start().await;
    m.listen().await;
    let cert = stapes_testkit::ClientCert::generate("before");
    m.trust(&cert).await;
    m.enable_cluster("solo").await;
    let certs = m
        .unix()
        .get("/1.0/certificates")
        .await
        .unwrap()
        .metadata()
        .to_string();
    assert!(certs.contains(&cert.fingerprint));
    // A second enable is refused.
    let r = m
        .unix()
        .send_json(
            "PUT",
            "/1.0/cluster",
            &json!({"server_name": "again", "enabled": true}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    // And it survives a restart as a cluster.
    m.restart().await;
    let me = m.unix().get("/1.0").await.unwrap().metadata();
    assert_eq!(me["environment"]["server_name"], "solo");
    assert_eq!(me["environment"]["server_clustered"], true);
}

#[tokio::test]
async fn clustering_needs_a_specific_address() {
    let m = Member::start().await;
    let r = m
        .unix()
        .send_json(
            "PUT",
            "/1.0/cluster",
            &json!({"server_name": "n", "enabled": true}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("address"));
    assert_eq!(
        m.unix().get("/1.0/cluster").await.unwrap().metadata()["enabled"],
        false
    );
}
