use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use stapes_testkit::{eventually, Cluster, Member, PeerRecorder, ServerTrust, Target};
use time::OffsetDateTime;

use crate::{slot, FAST, LONG};

fn pair(days_from_now: i64, lifetime_days: i64) -> trust::CertPair {
    let start = OffsetDateTime::now_utc() + time::Duration::days(days_from_now);
    trust::CertPair::generate_valid(
        "cluster",
        &["127.0.0.1".parse().unwrap()],
        start,
        start + time::Duration::days(lifetime_days),
    )
    .unwrap()
}

fn fingerprint_of(p: &trust::CertPair) -> String {
    trust::fingerprint(&trust::cert::pem_to_der(&p.cert_pem).unwrap())
}

/// The fingerprint a member presents to clients now.
async fn presented(m: &Member) -> Option<String> {
    let rec = Arc::new(PeerRecorder::default());
    let addr = m.address().await;
    Target::tls_with(&addr, None, ServerTrust::Record(rec.clone()))
        .get("/1.0")
        .await
        .ok()?;
    rec.seen_der().map(|d| trust::fingerprint(&d))
}

async fn update(m: &Member, p: &trust::CertPair) -> stapes_testkit::Resp {
    m.unix()
        .send_json(
            "PUT",
            "/1.0/cluster/certificate",
            &json!({"cluster_certificate": p.cert_pem, "cluster_certificate_key": p.key_pem}),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn update_through_any_member_reaches_every_member_and_one_that_was_offline() {
    let _slot = slot().await;
    let mut c = Cluster::start_with(3, FAST).await;
    c.wait_healthy(3, LONG).await;
    for via in 0..3 {
        let p = pair(-1, 365);
        let fp = fingerprint_of(&p);
        let started = Instant::now();
        let r = update(&c.members[via], &p).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        for m in &c.members {
            eventually(
                Duration::from_secs(5),
                "the new certificate everywhere",
                || async { (presented(m).await? == fp).then_some(()) },
            )
            .await;
        }
        println!(
            "certificate update via node{} served by all members after {:?}",
            via + 1,
            started.elapsed()
        );
        let reported = c.members[2].unix().get("/1.0").await.unwrap().metadata();
        assert_eq!(reported["environment"]["certificate_fingerprint"], json!(fp));
    }
    // node3 is down while the certificate (and its key) change; it catches up.
    c.members[2].kill9();
    let p = pair(-1, 365);
    let fp = fingerprint_of(&p);
    assert_eq!(update(&c.members[0], &p).await.status, 200);
    c.members[2].restart().await;
    eventually(
        LONG,
        "the returning member presents the new certificate",
        || async { (presented(&c.members[2]).await? == fp).then_some(()) },
    )
    .await;
}

/// A certificate that expires while in use is what clients see, but members keep
/// working together. (An already expired one is refused when it is given.)
#[tokio::test]
async fn an_expired_certificate_does_not_break_the_cluster() {
    let _slot = slot().await;
    let mut c = Cluster::start_with(3, FAST).await;
    c.wait_healthy(3, LONG).await;
    let refused = update(&c.members[0], &pair(-30, 1)).await;
    assert_eq!(refused.status, 400);
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("Certificate has expired (on "),
        "{}",
        refused.json()
    );
    let now = OffsetDateTime::now_utc();
    let expiring = trust::CertPair::generate_valid(
        "cluster",
        &["127.0.0.1".parse().unwrap()],
        now - time::Duration::days(1),
        now + time::Duration::seconds(3),
    )
    .unwrap();
    assert_eq!(update(&c.members[0], &expiring).await.status, 200);
    let fp = fingerprint_of(&expiring);
    eventually(Duration::from_secs(5), "the certificate served", || async {
        (presented(&c.members[1]).await? == fp).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "the certificate expired", || async {
        (OffsetDateTime::now_utc() > now + time::Duration::seconds(4)).then_some(())
    })
    .await;
    // Writes through followers, heartbeats and forwarding keep working, and a new
    // member still joins (its token pins the expired certificate by fingerprint).
    let leader = c.leader(LONG).await;
    let follower = (leader + 1) % 3;
    let r = c.members[follower]
        .unix()
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {"core.remote_token_expiry": "8H"}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = c.members[0].unix().get("/1.0?target=node3").await.unwrap();
    assert_eq!(r.metadata()["environment"]["server_name"], "node3");
    c.add("node4").await;
    c.wait_healthy(3, LONG).await;
}

#[tokio::test]
async fn bad_certificates_are_refused_and_change_nothing() {
    let _slot = slot().await;
    let c = Cluster::start(1).await;
    let before = presented(&c.members[0]).await.unwrap();
    let good = pair(-1, 365);
    let other = pair(-1, 365);
    let cases = [
        (
            json!({"cluster_certificate": "garbage", "cluster_certificate_key": good.key_pem}),
            "base64 encoded PEM",
        ),
        (
            json!({"cluster_certificate": good.cert_pem, "cluster_certificate_key": other.key_pem}),
            "does not match",
        ),
        (
            json!({"cluster_certificate": good.cert_pem, "cluster_certificate_key": ""}),
            "private key",
        ),
        (
            json!({"cluster_certificate": good.cert_pem, "cluster_certificate_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}),
            "Private key",
        ),
    ];
    for (body, message) in cases {
        let r = c.members[0]
            .unix()
            .send_json("PUT", "/1.0/cluster/certificate", &body)
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
        assert!(
            r.json()["error"].as_str().unwrap().contains(message),
            "{} vs {message}",
            r.json()
        );
    }
    assert_eq!(presented(&c.members[0]).await.unwrap(), before);
    let r = c.members[0].unix().get("/1.0/cluster/certificate").await.unwrap();
    assert_eq!(r.status, 501);
    // Not on a standalone server.
    let solo = Member::start().await;
    let r = update(&solo, &good).await;
    assert_eq!(r.status, 400);
}

/// A connection opened before the update keeps working after it.
#[tokio::test]
async fn open_connections_survive_an_update() {
    let _slot = slot().await;
    let c = Cluster::start(1).await;
    let addr = c.members[0].address().await;
    let config =
        transport::tls::client_config(ServerTrust::Record(Default::default()), None, &[b"http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let tls = transport::tls::TlsConnector::from(config)
        .connect(transport::tls::server_name("127.0.0.1"), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get = || {
        http::Request::get("/1.0")
            .header("host", "stapes.test")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    assert_eq!(sender.send_request(get()).await.unwrap().status(), 200);
    let p = pair(-1, 365);
    assert_eq!(update(&c.members[0], &p).await.status, 200);
    eventually(
        Duration::from_secs(5),
        "new certificate for new connections",
        || async { (presented(&c.members[0]).await? == fingerprint_of(&p)).then_some(()) },
    )
    .await;
    let resp = sender
        .send_request(get())
        .await
        .expect("the old connection still answers");
    assert_eq!(resp.status(), 200);
}
