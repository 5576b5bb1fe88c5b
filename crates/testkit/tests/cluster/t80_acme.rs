use std::time::{Duration, Instant};

use serde_json::json;
use stapes_testkit::acme::{self, Lab};
use stapes_testkit::{eventually, free_port, Cluster, Member};
use time::OffsetDateTime;

use crate::{slot, FAST};

const NAME: &str = "acme.stapes.test";

/// Three members on 127.0.0.1-3, each trusting the lab's CA for the ACME API.
async fn cluster_for(lab: &Lab) -> Vec<Member> {
    let ca = lab.ca_file().to_str().unwrap().to_string();
    let env = [("STAPES_ACME_CA_FILE", ca.as_str())];
    let mut first = Member::start_env(&env).await;
    first.listen_on("127.0.0.1").await;
    first.enable_cluster("node1").await;
    let r = first
        .unix()
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {"cluster.offline_threshold": FAST[0].1}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let mut members = vec![first];
    for n in 2..=3 {
        let m = Member::start_env(&env).await;
        let token = members[0].join_token(&format!("node{n}")).await;
        let r = m
            .try_join_at(
                &format!("node{n}"),
                &token,
                &format!("127.0.0.{n}:{}", free_port()),
            )
            .await;
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        members.push(m);
    }
    members
}

async fn leaf_of(m: &Member) -> Vec<u8> {
    acme::served_chain(&m.address().await).await.remove(0)
}

/// Every member serves a certificate from the CA for the cluster's name, whichever
/// member the CA validated through; and a certificate nearing its end is replaced.
#[tokio::test]
async fn acme_issues_and_renews_the_cluster_certificate() {
    if !acme::tools_available() {
        return;
    }
    let _slot = slot().await;
    let lab = Lab::start(NAME, &["127.0.0.1", "127.0.0.2", "127.0.0.3"]).await;
    let members = cluster_for(&lab).await;
    let intermediate = lab.intermediate_pem().await;
    let started = Instant::now();
    let r = members[1]
        .unix()
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {
                "acme.domain": NAME,
                "acme.email": "admin@stapes.test",
                "acme.agree_tos": "true",
                "acme.ca_url": lab.directory_url(),
                "acme.http.port": format!(":{}", lab.http_port()),
            }}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    for (i, m) in members.iter().enumerate() {
        eventually(
            Duration::from_secs(60),
            &format!("member {} serving the ACME certificate", i + 1),
            || async {
                let leaf = leaf_of(m).await;
                (acme::issued_by(&leaf, &intermediate)
                    && trust::cert::dns_names(&leaf).contains(&NAME.to_string()))
                .then_some(())
            },
        )
        .await;
    }
    println!("ACME certificate on every member after {:?}", started.elapsed());
    let first = trust::fingerprint(&leaf_of(&members[0]).await);

    // A certificate for the name with most of its life gone: the leader renews it.
    let now = OffsetDateTime::now_utc();
    let old = trust::CertPair::generate_named(
        "old",
        &[NAME],
        now - time::Duration::days(80),
        now + time::Duration::days(10),
    )
    .unwrap();
    let r = members[0]
        .unix()
        .send_json(
            "PUT",
            "/1.0/cluster/certificate",
            &json!({"cluster_certificate": old.cert_pem, "cluster_certificate_key": old.key_pem}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    for m in &members {
        eventually(Duration::from_secs(60), "renewed from the CA", || async {
            let leaf = leaf_of(m).await;
            let fp = trust::fingerprint(&leaf);
            (acme::issued_by(&leaf, &intermediate) && fp != first).then_some(())
        })
        .await;
    }
}

/// A CA that does not answer: the certificate in service stays, and a warning says why.
#[tokio::test]
async fn acme_failure_keeps_the_certificate_and_warns() {
    let _slot = slot().await;
    let c = Cluster::start(1).await;
    let before = c.members[0].unix().get("/1.0").await.unwrap().metadata()["environment"]
        ["certificate_fingerprint"]
        .clone();
    let r = c.members[0]
        .unix()
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {
                "acme.domain": NAME,
                "acme.agree_tos": "true",
                "acme.ca_url": format!("https://127.0.0.1:{}/dir", free_port()),
                "acme.http.port": format!("127.0.0.1:{}", free_port()),
            }}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let w = eventually(Duration::from_secs(30), "an ACME warning", || async {
        let ws = c.members[0]
            .unix()
            .get("/1.0/warnings?recursion=1")
            .await
            .ok()?
            .metadata();
        ws.as_array()?
            .iter()
            .find(|w| w["type"] == "Failed to get an ACME certificate")
            .cloned()
    })
    .await;
    assert!(w["last_message"].as_str().unwrap().contains("127.0.0.1"), "{w}");
    let after = c.members[0].unix().get("/1.0").await.unwrap().metadata()["environment"]
        ["certificate_fingerprint"]
        .clone();
    assert_eq!(before, after);
}
