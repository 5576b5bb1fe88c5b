use std::time::Duration;

use serde_json::json;
use stapes_testkit::{ClientCert, Member, Target};

#[tokio::test]
async fn certificates_crud_through_the_api() {
    let m = Member::start().await;
    let u = m.unix();
    let cert = ClientCert::generate("crud");
    let r = u
        .send_json("POST", "/1.0/certificates", &json!({"name": "alice", "type": "metrics", "certificate": cert.cert_pem, "restricted": true, "projects": ["p1"]}))
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(
        r.header("location"),
        Some(format!("/1.0/certificates/{}", cert.fingerprint).as_str())
    );

    let list = u.get("/1.0/certificates").await.unwrap().metadata();
    assert_eq!(list, json!([format!("/1.0/certificates/{}", cert.fingerprint)]));
    let full = u.get("/1.0/certificates?recursion=1").await.unwrap().metadata();
    assert_eq!(full[0]["name"], "alice");
    assert_eq!(full[0]["type"], "metrics");
    assert_eq!(full[0]["restricted"], true);
    assert_eq!(full[0]["projects"], json!(["p1"]));

    // Show by prefix, with an ETag; edit; delete.
    let prefix = &cert.fingerprint[..12];
    let shown = u.get(&format!("/1.0/certificates/{prefix}")).await.unwrap();
    assert_eq!(shown.metadata()["fingerprint"], cert.fingerprint);
    assert!(shown.header("etag").is_some());
    let r = u
        .send_json(
            "PATCH",
            &format!("/1.0/certificates/{prefix}"),
            &json!({"description": "ops"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let shown = u
        .get(&format!("/1.0/certificates/{prefix}"))
        .await
        .unwrap()
        .metadata();
    assert_eq!(
        (shown["description"].as_str(), shown["name"].as_str()),
        (Some("ops"), Some("alice"))
    );
    let r = u
        .send_json(
            "PUT",
            &format!("/1.0/certificates/{prefix}"),
            &json!({"name": "alice", "type": "client"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400, "type cannot change");
    let r = u
        .request("DELETE", &format!("/1.0/certificates/{prefix}"), None, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(u.get("/1.0/certificates").await.unwrap().metadata(), json!([]));
}

#[tokio::test]
async fn trust_applies_and_revokes_on_an_open_session() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let cert = ClientCert::generate("live");
    let t = Target::tls(&addr, Some(&cert));
    assert_eq!(t.get("/1.0/certificates").await.unwrap().status, 403);
    m.trust(&cert).await;
    assert_eq!(t.get("/1.0/certificates").await.unwrap().status, 200);
    let r = m
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
    assert_eq!(t.get("/1.0/certificates").await.unwrap().status, 403);
}

#[tokio::test]
async fn metrics_certificate_reaches_metrics_only() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let cert = ClientCert::generate("prom");
    let r = m
        .unix()
        .send_json(
            "POST",
            "/1.0/certificates",
            &json!({"type": "metrics", "certificate": cert.cert_pem}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    let t = Target::tls(&addr, Some(&cert));
    assert_eq!(t.get("/1.0/metrics").await.unwrap().status, 200);
    assert_eq!(t.get("/1.0/certificates").await.unwrap().status, 403);
    assert_eq!(
        Target::tls(&addr, None).get("/1.0/metrics").await.unwrap().status,
        403
    );
}

async fn issue_token(m: &Member, name: &str) -> (String, String) {
    let r = m
        .unix()
        .send_json(
            "POST",
            "/1.0/certificates",
            &json!({"name": name, "type": "client", "token": true}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let op = r.metadata();
    assert_eq!(op["class"], "token");
    let md = &op["metadata"];
    let token = trust::token::encode(&trust::token::TrustToken {
        client_name: name.into(),
        fingerprint: md["fingerprint"].as_str().unwrap().into(),
        addresses: serde_json::from_value(md["addresses"].clone()).unwrap(),
        secret: md["secret"].as_str().unwrap().into(),
        expires_at: trust::token::NO_EXPIRY.into(),
    });
    (op["id"].as_str().unwrap().to_string(), token)
}

#[tokio::test]
async fn trust_token_is_single_use() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let (op_id, token) = issue_token(&m, "bob").await;
    let listed = m.unix().get("/1.0/operations").await.unwrap().metadata();
    assert_eq!(listed["running"], json!([format!("/1.0/operations/{op_id}")]));

    let bob = ClientCert::generate("bob");
    let t = Target::tls(&addr, Some(&bob));
    let r = t
        .send_json("POST", "/1.0/certificates", &json!({"trust_token": token}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(t.get("/1.0").await.unwrap().metadata()["auth"], "trusted");
    let stored = m
        .unix()
        .get(&format!("/1.0/certificates/{}", bob.fingerprint))
        .await
        .unwrap()
        .metadata();
    assert_eq!(stored["name"], "bob");

    // The token is spent: a second client gets nothing from it.
    let eve = ClientCert::generate("eve");
    let r = Target::tls(&addr, Some(&eve))
        .send_json("POST", "/1.0/certificates", &json!({"trust_token": token}))
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["error"],
        "No matching certificate add operation found: this token was already used"
    );
    assert_eq!(
        m.unix().get("/1.0/operations").await.unwrap().metadata(),
        json!({})
    );
}

#[tokio::test]
async fn revoked_and_expired_tokens_are_refused() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let (op_id, token) = issue_token(&m, "carol").await;
    let r = m
        .unix()
        .request("DELETE", &format!("/1.0/operations/{op_id}"), None, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let carol = ClientCert::generate("carol");
    let r = Target::tls(&addr, Some(&carol))
        .send_json("POST", "/1.0/certificates", &json!({"trust_token": token}))
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["error"],
        "No matching certificate add operation found: this token was revoked"
    );

    // Tokens expire per core.remote_token_expiry.
    let r = m
        .unix()
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {"core.remote_token_expiry": "1S"}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let (op_id, token) = issue_token(&m, "dave").await;
    let op = m
        .unix()
        .get(&format!("/1.0/operations/{op_id}"))
        .await
        .unwrap()
        .metadata();
    assert!(op["metadata"]["expiresAt"].is_string());
    // Wait on the operation for longer than its life: then it is expired.
    let _ = m
        .unix()
        .get(&format!("/1.0/operations/{op_id}/wait?timeout=1.5"))
        .await
        .unwrap();
    let dave = ClientCert::generate("dave");
    let r = Target::tls(&addr, Some(&dave))
        .send_json("POST", "/1.0/certificates", &json!({"trust_token": token}))
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["error"],
        "No matching certificate add operation found: this token has expired"
    );
}

/// Tokens that open nothing are told apart where that helps the holder and nobody else:
/// a forged secret learns only Incus's words and that the token is unknown.
#[tokio::test]
async fn refused_trust_tokens_say_why() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let (_, token) = issue_token(&m, "frank").await;
    let t = Target::tls(&addr, Some(&ClientCert::generate("frank")));
    let post = |body: serde_json::Value| {
        let t = t.clone();
        async move { t.send_json("POST", "/1.0/certificates", &body).await.unwrap() }
    };
    let mut forged: trust::token::TrustToken = trust::token::decode(&token).unwrap();
    forged.secret = "0".repeat(64);
    let r = post(json!({"trust_token": trust::token::encode(&forged)})).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (
            403,
            json!(
                "No matching certificate add operation found: the token is unknown, already used or expired"
            )
        )
    );
    let r = post(json!({"trust_token": "f".repeat(64)})).await;
    assert_eq!(r.status, 403, "a bare secret that matches nothing");
    let r = post(json!({"trust_token": "this is not a token"})).await;
    assert_eq!(r.status, 403);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid trust token: "),
        "{}",
        r.json()
    );
    let r = post(json!({"type": "client"})).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (403, json!("not authorized: no trust token given"))
    );
    // None of that spent the real token.
    assert_eq!(post(json!({"trust_token": token})).await.status, 201);
}

#[tokio::test]
async fn operation_wait_returns_when_the_token_is_used() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let (op_id, token) = issue_token(&m, "erin").await;
    let waiter = {
        let u = m.unix();
        let path = format!("/1.0/operations/{op_id}/wait?timeout=10");
        tokio::spawn(async move { u.get(&path).await.unwrap() })
    };
    let erin = ClientCert::generate("erin");
    let r = Target::tls(&addr, Some(&erin))
        .send_json("POST", "/1.0/certificates", &json!({"trust_token": token}))
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    let done = waiter.await.unwrap().metadata();
    assert_eq!(done["status"], "Success");
}

#[tokio::test]
async fn token_needs_a_network_listener() {
    let m = Member::start().await;
    let r = m
        .unix()
        .send_json(
            "POST",
            "/1.0/certificates",
            &json!({"name": "x", "type": "client", "token": true}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"],
        "Can't issue token when server isn't listening on network"
    );
}

/// As in Incus, a certificate is trusted only within its validity period: one that
/// expires stops being trusted, with the reason in the refusal; trust add refuses one
/// that is expired or not valid yet.
#[tokio::test]
async fn certificates_are_trusted_only_within_their_dates() {
    use time::{Duration as Span, OffsetDateTime};
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let now = OffsetDateTime::now_utc();
    for (cert, says) in [
        (
            ClientCert::valid_between("old", now - Span::days(30), now - Span::days(1)),
            "Certificate has expired (on ",
        ),
        (
            ClientCert::valid_between("early", now + Span::days(365), now + Span::days(730)),
            "Certificate is not valid before ",
        ),
    ] {
        let r = m
            .unix()
            .send_json(
                "POST",
                "/1.0/certificates",
                &json!({"type": "client", "name": "x", "certificate": cert.cert_pem}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400);
        assert!(
            r.json()["error"].as_str().unwrap().starts_with(says),
            "{}",
            r.json()
        );
    }
    // Trusted while valid, a stranger once expired.
    let expiring = ClientCert::valid_between("soon", now - Span::days(1), now + Span::seconds(3));
    m.trust(&expiring).await;
    let t = Target::tls(&addr, Some(&expiring));
    assert_eq!(t.get("/1.0").await.unwrap().metadata()["auth"], "trusted");
    stapes_testkit::eventually(Duration::from_secs(15), "the certificate expired", || async {
        (OffsetDateTime::now_utc() > now + Span::seconds(4)).then_some(())
    })
    .await;
    assert_eq!(t.get("/1.0").await.unwrap().metadata()["auth"], "untrusted");
    let r = t.get("/1.0/certificates").await.unwrap();
    assert_eq!(r.status, 403);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("Client certificate expired on "),
        "{}",
        r.json()
    );
}

/// A metrics certificate is what Incus makes it: trusted for /1.0/metrics, a stranger
/// everywhere else (no environment, no configuration in GET /1.0).
#[tokio::test]
async fn a_metrics_certificate_sees_only_metrics() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let metrics = ClientCert::generate("metrics");
    m.trust_as(&metrics, "metrics").await;
    let t = Target::tls(&addr, Some(&metrics));
    let server = t.get("/1.0").await.unwrap().metadata();
    assert_eq!(server["auth"], "untrusted");
    assert!(server["environment"].is_null() && server["config"].as_object().is_none_or(|c| c.is_empty()));
    assert_eq!(t.get("/1.0/metrics").await.unwrap().status, 200);
    assert_eq!(t.get("/1.0/certificates").await.unwrap().status, 403);
}
