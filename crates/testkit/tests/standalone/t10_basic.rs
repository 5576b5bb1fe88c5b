use serde_json::json;
use stapes_testkit::{ClientCert, Member, Target};

#[tokio::test]
async fn unix_socket_is_trusted_as_the_local_user() {
    let m = Member::start().await;
    let r = m.unix().get("/1.0").await.unwrap();
    assert_eq!(r.status, 200);
    let md = r.metadata();
    assert_eq!(md["auth"], "trusted");
    assert_eq!(md["auth_user_method"], "unix");
    assert_eq!(
        md["auth_user_name"],
        nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .unwrap()
            .name
    );
    assert_eq!(md["api_status"], "stable");
    assert!(r.header("etag").is_some(), "single-object GET carries an ETag");
    let env = &md["environment"];
    assert_eq!(env["server_clustered"], false);
    assert_eq!(env["certificate_fingerprint"].as_str().unwrap().len(), 64);
    assert_eq!(env["server_pid"], m.pid());
}

#[tokio::test]
async fn root_lists_the_api_version() {
    let m = Member::start().await;
    let r = m.unix().get("/").await.unwrap();
    assert_eq!(r.metadata(), json!(["/1.0"]));
}

#[tokio::test]
async fn state_dir_socket_and_certificate_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let m = Member::start().await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // Traversable to reach the socket, not listable.
    assert_eq!(mode(&m.dir), 0o711);
    assert_eq!(mode(&m.dir.join("database")), 0o700);
    assert_eq!(mode(&m.socket()), 0o660);
    assert_eq!(mode(&m.dir.join("server.key")), 0o600);
    let pem = std::fs::read_to_string(m.dir.join("server.crt")).unwrap();
    let der = trust::cert::pem_to_der(&pem).unwrap();
    let info = trust::cert::inspect(&der).unwrap();
    assert!(info.not_after - info.not_before > time::Duration::days(3000));
}

#[tokio::test]
async fn https_listener_opens_moves_and_closes_at_run_time() {
    let mut m = Member::start().await;
    let first = m.listen().await;
    let cert = ClientCert::generate("t10");
    m.trust(&cert).await;
    let r = Target::tls(&first, Some(&cert)).get("/1.0").await.unwrap();
    assert_eq!(r.metadata()["auth_user_method"], "tls");
    assert_eq!(r.metadata()["auth_user_name"], cert.fingerprint);
    assert_eq!(r.metadata()["environment"]["addresses"], json!([first]));

    // Move it.
    let second = m.listen().await;
    assert!(
        Target::tls(&first, None).get("/1.0").await.is_err(),
        "old address closed"
    );
    assert_eq!(Target::tls(&second, None).get("/1.0").await.unwrap().status, 200);

    // A wildcard address works too.
    let port = stapes_testkit::free_port();
    let r = m
        .unix()
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {"core.https_address": format!(":{port}")}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = Target::tls(&format!("127.0.0.1:{port}"), None)
        .get("/1.0")
        .await
        .unwrap();
    assert_eq!(r.metadata()["auth"], "untrusted");
    let r = Target::tls(&format!("[::1]:{port}"), None).get("/1.0").await;
    if let Ok(r) = r {
        assert_eq!(r.status, 200);
    }

    // Close it.
    let r = m
        .unix()
        .send_json("PUT", "/1.0", &json!({"config": {}}))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(Target::tls(&format!("127.0.0.1:{port}"), None)
        .get("/1.0")
        .await
        .is_err());
}

#[tokio::test]
async fn untrusted_view_hides_the_environment() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let r = Target::tls(&addr, None).get("/1.0").await.unwrap();
    let md = r.metadata();
    assert_eq!(md["auth"], "untrusted");
    assert_eq!(md["auth_methods"], json!(["tls"]));
    assert_eq!(md["config"], json!({}));
    assert!(md.get("environment").is_none() && md.get("auth_user_name").is_none());
}

#[tokio::test]
async fn config_round_trips_with_put_patch_and_etag() {
    let m = Member::start().await;
    let u = m.unix();
    let r = u
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {"core.remote_token_expiry": "1H", "cluster.offline_threshold": 5}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let got = u.get("/1.0").await.unwrap();
    assert_eq!(got.metadata()["config"]["cluster.offline_threshold"], "5");
    let etag = got.header("etag").unwrap().to_string();

    // A stale ETag is refused with 412 and changes nothing.
    let body = serde_json::to_vec(&json!({"config": {}})).unwrap();
    let r = u
        .request("PUT", "/1.0", Some(body.clone()), &[("if-match", "\"0000\"")])
        .await
        .unwrap();
    assert_eq!(r.status, 412);
    assert_eq!(
        u.get("/1.0").await.unwrap().metadata()["config"]["core.remote_token_expiry"],
        "1H"
    );

    // The right ETag is accepted; PUT replaces the whole set.
    let r = u
        .request("PUT", "/1.0", Some(body), &[("if-match", &etag)])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(u.get("/1.0").await.unwrap().metadata()["config"], json!({}));
}

#[tokio::test]
async fn metadata_configuration_lists_every_declared_key() {
    let m = Member::start().await;
    let md = m
        .unix()
        .get("/1.0/metadata/configuration")
        .await
        .unwrap()
        .metadata();
    let text = md.to_string();
    for key in [
        "core.https_address",
        "cluster.https_address",
        "core.https_trusted_proxy",
        "core.remote_token_expiry",
        "cluster.offline_threshold",
        "cluster.join_token_expiry",
        "cluster.max_voters",
        "cluster.max_standby",
        "oidc.issuer",
        "acme.domain",
    ] {
        assert!(text.contains(key), "{key} missing");
    }
}

#[tokio::test]
async fn resources_metrics_and_warnings_answer() {
    let m = Member::start().await;
    let u = m.unix();
    let res = u.get("/1.0/resources").await.unwrap();
    assert_eq!(res.status, 200);
    let md = res.metadata();
    assert!(md["memory"]["total"].as_u64().unwrap_or(0) > 0, "{md}");
    assert!(md["cpu"]["total"].as_u64().unwrap_or(0) > 0, "{md}");

    let metrics = u.get("/1.0/metrics").await.unwrap();
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("stapes_api_requests_total{code=\"2xx\"}"));
    assert!(text.contains("stapes_open_connections"));
    assert!(text.contains("stapes_uptime_seconds"));

    let w = u.get("/1.0/warnings").await.unwrap();
    assert_eq!((w.status, w.metadata()), (200, json!([])));
    let ops = u.get("/1.0/operations").await.unwrap();
    assert_eq!(ops.metadata(), json!({}));
}

/// `GET /1.0` is kept between changes: its ETag stays put while nothing changes, and a
/// change to a global or a member-local key, or to the listener, shows at once (new
/// ETag, new body) and makes the old ETag stale for `If-Match`. Each caller still sees
/// itself in the document.
#[tokio::test]
async fn server_document_and_etag_follow_every_change() {
    let mut m = Member::start().await;
    let get = |t: Target| async move {
        let r = t.get("/1.0").await.unwrap();
        assert_eq!(r.status, 200);
        let etag = r.header("etag").expect("an ETag").to_string();
        (etag, r.metadata())
    };
    let (first, md) = get(m.unix()).await;
    assert_eq!(get(m.unix()).await.0, first, "nothing changed");
    assert!(md["config"].get("core.remote_token_expiry").is_none());

    // A global key.
    let set = |config: serde_json::Value| {
        let unix = m.unix();
        async move {
            let r = unix
                .send_json("PATCH", "/1.0", &json!({ "config": config }))
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{:?}", r.json());
        }
    };
    set(json!({"core.remote_token_expiry": "3H"})).await;
    let (second, md) = get(m.unix()).await;
    assert_ne!(second, first);
    assert_eq!(md["config"]["core.remote_token_expiry"], "3H");
    let patch_if = |etag: String| {
        let unix = m.unix();
        async move {
            let body = br#"{"config": {"core.remote_token_expiry": "4H"}}"#.to_vec();
            let headers = [("If-Match", etag.as_str())];
            unix.request("PATCH", "/1.0", Some(body), &headers)
                .await
                .unwrap()
                .status
        }
    };
    assert_eq!(patch_if(first).await, 412, "the old ETag is stale");
    assert_eq!(
        patch_if(second.clone()).await,
        200,
        "the current ETag is accepted"
    );
    let (third, md) = get(m.unix()).await;
    assert_ne!(third, second);
    assert_eq!(md["config"]["core.remote_token_expiry"], "4H");

    // A member-local key, which also moves the listener and the addresses shown.
    let addr = m.listen().await;
    let (fourth, md) = get(m.unix()).await;
    assert_ne!(fourth, third);
    assert_eq!(md["config"]["core.https_address"], addr.as_str());
    assert_eq!(md["environment"]["addresses"], json!([addr]));

    // Another caller, same state: same ETag, its own name.
    let cert = ClientCert::generate("t10-etag");
    m.trust(&cert).await;
    let (over_tls, md) = get(Target::tls(&addr, Some(&cert))).await;
    assert_eq!(over_tls, fourth);
    assert_eq!(md["auth_user_method"], "tls");
    assert_eq!(md["auth_user_name"], cert.fingerprint);
    let untrusted = Target::tls(&addr, None).get("/1.0").await.unwrap();
    assert_eq!(untrusted.metadata()["auth"], "untrusted");
    assert!(untrusted.metadata().get("environment").is_none());
    assert!(untrusted.header("etag").is_none());
    assert_eq!(get(m.unix()).await.1["auth_user_method"], "unix");
}
