use serde_json::json;
use stapes_testkit::{Member, Resp, Target};

fn assert_error(r: &Resp, status: u16, message: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error_code"], status);
    assert_eq!(body["status_code"], 0);
    assert_eq!(body["metadata"], serde_json::Value::Null);
    assert!(body["error"].as_str().unwrap().contains(message), "{body}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_501() {
    let m = Member::start().await;
    let u = m.unix();
    assert_error(&u.get("/1.0/nosuchthing").await.unwrap(), 404, "not found");
    assert_error(&u.get("/2.0").await.unwrap(), 404, "not found");
    assert_error(
        &u.request("DELETE", "/1.0", None, &[]).await.unwrap(),
        501,
        "not implemented",
    );
    assert_error(
        &u.request("PUT", "/1.0/operations", None, &[]).await.unwrap(),
        501,
        "not implemented",
    );
}

#[tokio::test]
async fn untrusted_callers_get_403_everywhere_protected() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let t = Target::tls(&addr, None);
    for path in [
        "/1.0/certificates",
        "/1.0/operations",
        "/1.0/resources",
        "/1.0/metrics",
        "/1.0/warnings",
        "/1.0/events",
    ] {
        assert_error(&t.get(path).await.unwrap(), 403, "not authorized");
    }
    let r = t
        .send_json("PATCH", "/1.0", &json!({"config": {"core.https_address": ""}}))
        .await
        .unwrap();
    assert_error(&r, 403, "not authorized");
    let r = t
        .send_json(
            "POST",
            "/1.0/certificates",
            &json!({"token": true, "type": "client"}),
        )
        .await
        .unwrap();
    assert_error(&r, 403, "not authorized");
    assert_error(
        &t.request("PUT", "/internal/shutdown", None, &[]).await.unwrap(),
        403,
        "not authorized",
    );
}

#[tokio::test]
async fn malformed_json_is_400_and_changes_nothing() {
    let m = Member::start().await;
    let u = m.unix();
    for body in ["{not json", "", "[1,2]", "{\"config\": 5}"] {
        let r = u
            .request("PUT", "/1.0", Some(body.as_bytes().to_vec()), &[])
            .await
            .unwrap();
        assert_error(&r, 400, "");
    }
    let r = u
        .request(
            "POST",
            "/1.0/certificates",
            Some(b"{\"certificate\": 1".to_vec()),
            &[],
        )
        .await
        .unwrap();
    assert_error(&r, 400, "Invalid JSON");
}

#[tokio::test]
async fn bad_config_is_400_naming_the_key_and_applies_nothing() {
    let m = Member::start().await;
    let u = m.unix();
    let r = u
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {"core.remote_token_expiry": "2H", "core.bogus": "1"}}),
        )
        .await
        .unwrap();
    assert_error(&r, 400, "core.bogus");
    let r = u
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {"core.remote_token_expiry": "2H", "cluster.offline_threshold": "soon"}}),
        )
        .await
        .unwrap();
    assert_error(&r, 400, "cluster.offline_threshold");
    let r = u
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {"core.https_trusted_proxy": "10.0.0.0/99"}}),
        )
        .await
        .unwrap();
    assert_error(&r, 400, "core.https_trusted_proxy");
    let r = u
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {"core.https_address": "127.0.0.1:99999"}}),
        )
        .await
        .unwrap();
    assert_error(&r, 400, "core.https_address");
    // An anycast address is one routable address, never a range or loopback.
    for bad in ["203.0.113.0/24", "127.0.0.7", "fe80::1", "lo"] {
        let r = u
            .send_json(
                "PATCH",
                "/1.0",
                &json!({"config": {"core.remote_token_expiry": "2H", "core.anycast_address": bad}}),
            )
            .await
            .unwrap();
        assert_error(&r, 400, "core.anycast_address");
    }
    assert_eq!(
        u.get("/1.0").await.unwrap().metadata()["config"],
        json!({}),
        "nothing applied"
    );
}

#[tokio::test]
async fn address_that_cannot_be_bound_keeps_the_old_listener() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let r = m
        .unix()
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {"core.https_address": busy_addr}}),
        )
        .await
        .unwrap();
    assert_error(&r, 400, "Cannot listen on https socket");
    assert_eq!(
        m.unix().get("/1.0").await.unwrap().metadata()["config"]["core.https_address"],
        addr
    );
    assert_eq!(Target::tls(&addr, None).get("/1.0").await.unwrap().status, 200);
}

#[tokio::test]
async fn oversized_body_is_refused() {
    let m = Member::start().await;
    // Just over the 1 MiB limit, so the client has finished writing when the answer comes.
    let big = format!("{{\"config\": {{\"x\": \"{}\"}}}}", "a".repeat(1024 * 1024 + 100));
    let r = m
        .unix()
        .request("PUT", "/1.0", Some(big.into_bytes()), &[])
        .await
        .unwrap();
    assert_error(&r, 413, "larger than");
}

#[tokio::test]
async fn events_without_upgrade_is_400() {
    let m = Member::start().await;
    let r = m.unix().get("/1.0/events").await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.header("sec-websocket-version"), Some("13"));
}

#[tokio::test]
async fn unknown_things_are_404_with_their_name() {
    let m = Member::start().await;
    let u = m.unix();
    assert_error(
        &u.get("/1.0/certificates/abcdef").await.unwrap(),
        404,
        "Certificate not found",
    );
    assert_error(
        &u.get("/1.0/operations/nope").await.unwrap(),
        404,
        "Operation not found",
    );
    assert_error(
        &u.get("/1.0/warnings/nope").await.unwrap(),
        404,
        "Warning not found",
    );
    let r = u
        .send_json("POST", "/1.0/certificates", &json!({"type": "client", "certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}))
        .await
        .unwrap();
    assert_error(&r, 400, "");
    let r = u
        .send_json(
            "POST",
            "/1.0/certificates",
            &json!({"type": "root", "certificate": stapes_testkit::ClientCert::generate("x").cert_pem}),
        )
        .await
        .unwrap();
    assert_error(&r, 400, "Unknown certificate type");
}

/// Every path of Incus's API that stapes does not serve yet names its feature with 501,
/// after the trust check; paths Incus does not have stay 404.
#[tokio::test]
async fn areas_not_served_yet_answer_501_naming_the_feature() {
    use api::unsupported::{Methods, NOT_YET};
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let u = m.unix();
    let stranger = Target::tls(&addr, None);
    // Rows leave the table as areas are served; networks, projects, volumes and the
    // rest of Incus's areas are still in it.
    assert!(NOT_YET.len() > 40, "the table covers Incus's areas");
    for &(methods, pattern, feature) in NOT_YET {
        let path: String = pattern
            .split('/')
            .map(|seg| match seg {
                s if s.starts_with("{*") => "a/b",
                s if s.starts_with('{') => "x",
                s => s,
            })
            .collect::<Vec<_>>()
            .join("/");
        let method = match methods {
            Methods::All => "GET",
            Methods::Post => "POST",
        };
        let r = u.request(method, &path, None, &[]).await.unwrap();
        assert_error(
            &r,
            501,
            &format!("{feature} are not supported by this server yet"),
        );
        if methods == Methods::All {
            let r = u.request("DELETE", &path, None, &[]).await.unwrap();
            assert_error(&r, 501, feature);
        }
        let r = stranger.request(method, &path, None, &[]).await.unwrap();
        assert_error(&r, 403, "not authorized");
    }
    for path in [
        "/1.0/instances/x/nonsense",
        "/1.0/instance",
        "/1.0/storage-pools/x/volumes/custom/y/z/w",
    ] {
        assert_error(&u.get(path).await.unwrap(), 404, "not found");
    }
    // What stapes serves at a path with a row for another method is untouched.
    let r = u
        .request("DELETE", "/1.0/cluster/members/x/state", None, &[])
        .await
        .unwrap();
    assert_error(&r, 501, "not implemented");
}

/// A body that is not a JSON object is refused, and changes nothing (serde alone would
/// read `[]` as a PUT with every field empty: every key unset).
#[tokio::test]
async fn a_body_that_is_not_an_object_is_refused() {
    let m = Member::start().await;
    let u = m.unix();
    let r = u
        .send_json(
            "PATCH",
            "/1.0",
            &serde_json::json!({"config": {"core.remote_token_expiry": "5H"}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    for body in ["[]", "[{}]", "\"\"", "7"] {
        let r = u
            .request("PUT", "/1.0", Some(body.as_bytes().to_vec()), &[])
            .await
            .unwrap();
        assert_error(&r, 400, "expected a JSON object");
    }
    let config = u.get("/1.0").await.unwrap().metadata()["config"].clone();
    assert_eq!(config["core.remote_token_expiry"], "5H");
}

/// Every protected route of the table (each method it serves) refuses a caller with no
/// certificate and one with an untrusted certificate; an operation websocket wants its
/// secret.
#[tokio::test]
async fn t90_the_route_table_refuses_strangers_everywhere_protected() {
    let mut m = Member::start_env(&[("STAPES_TEST_ROUTES", "true")]).await;
    let addr = m.listen().await;
    let table = stapes_testkit::route_table(&m.unix()).await;
    let id = stapes_testkit::held_websocket_operation(&m.unix()).await;
    let stranger = stapes_testkit::ClientCert::generate("stranger");
    for t in [Target::tls(&addr, None), Target::tls(&addr, Some(&stranger))] {
        stapes_testkit::assert_refused_everywhere(&table, &t, &[("id", &id)], "").await;
    }
    let _ = m
        .unix()
        .request("DELETE", &format!("/1.0/operations/{id}"), None, &[])
        .await;
}
