//! Configuration values checked as Incus checks them, and odd values that must never
//! crash a member: huge expiries, huge waits, too many tokens.

use serde_json::{json, Value};
use stapes_testkit::{Member, Resp};

async fn patch(m: &Member, config: Value) -> Resp {
    m.unix()
        .send_json("PATCH", "/1.0", &json!({ "config": config }))
        .await
        .unwrap()
}

async fn config(m: &Member) -> Value {
    m.unix().get("/1.0").await.unwrap().metadata()["config"].clone()
}

fn error(r: &Resp) -> String {
    r.json()["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn user_keys_are_free_form_and_rules_follow_incus() {
    let m = Member::start().await;
    let r = patch(&m, json!({"user.foo": "bar", "user.rack": "r2"})).await;
    assert_eq!(r.status, 200, "{}", error(&r));
    let c = config(&m).await;
    assert_eq!(
        (c["user.foo"].as_str(), c["user.rack"].as_str()),
        (Some("bar"), Some("r2"))
    );
    assert_eq!(patch(&m, json!({"user.foo": ""})).await.status, 200);
    assert!(
        config(&m).await.get("user.foo").is_none(),
        "an empty value unsets it"
    );

    for (key, value, message) in [
        (
            "cluster.max_voters",
            "4",
            "cannot set 'cluster.max_voters' to '4': Value must be an odd number equal to or higher than 3",
        ),
        (
            "cluster.max_standby",
            "6",
            "cannot set 'cluster.max_standby' to '6': Value must be between 0 and 5",
        ),
        (
            "acme.agree_tos",
            "maybe",
            "cannot set 'acme.agree_tos' to 'maybe': invalid boolean",
        ),
        (
            "core.nonsense",
            "1",
            "cannot set 'core.nonsense' to '1': unknown key",
        ),
        ("user.a=b", "1", "cannot set 'user.a=b' to '1': Invalid key name"),
        (
            "cluster.https_address",
            ":8443",
            "cannot set 'cluster.https_address' to ':8443': Wildcard addresses aren't allowed",
        ),
        (
            "core.remote_token_expiry",
            "9999y",
            "cannot set 'core.remote_token_expiry' to '9999y': Expiry must be at most 1000 years",
        ),
        (
            "cluster.join_token_expiry",
            "8000y",
            "cannot set 'cluster.join_token_expiry' to '8000y': Expiry must be at most 1000 years",
        ),
    ] {
        let r = patch(&m, json!({ key: value, "user.also": "x" })).await;
        assert_eq!((r.status, error(&r)), (400, message.to_string()), "{key}={value}");
    }
    assert!(
        config(&m).await.get("user.also").is_none(),
        "a refused request applies nothing"
    );

    // Normal forms: booleans, integers, defaults stored as unset.
    let r = patch(
        &m,
        json!({"acme.agree_tos": "YES", "cluster.max_voters": "5", "cluster.max_standby": "2"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", error(&r));
    let c = config(&m).await;
    assert_eq!(c["acme.agree_tos"], "true");
    assert_eq!(c["cluster.max_voters"], "5");
    assert!(
        c.get("cluster.max_standby").is_none(),
        "the default is not stored"
    );
    assert_eq!(patch(&m, json!({"cluster.max_voters": "3"})).await.status, 200);
    assert!(config(&m).await.get("cluster.max_voters").is_none());
}

/// The largest expiry that may be set, and a wait of 1e20 seconds: answers, no panic.
#[tokio::test]
async fn odd_values_never_crash_a_member() {
    let mut m = Member::start().await;
    m.listen().await;
    assert_eq!(
        patch(&m, json!({"core.remote_token_expiry": "1000y"}))
            .await
            .status,
        200
    );
    let r = m
        .unix()
        .send_json(
            "POST",
            "/1.0/certificates",
            &json!({"name": "far", "type": "client", "token": true}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", error(&r));
    let op = r.metadata();
    let expires: String = op["metadata"]["expiresAt"].as_str().unwrap().into();
    let year: i32 = expires[..4].parse().unwrap();
    let now = time::OffsetDateTime::now_utc().year();
    assert!((now + 999..=now + 1000).contains(&year), "{expires}");

    let id = op["id"].as_str().unwrap().to_string();
    let waiter = {
        let u = m.unix();
        let path = format!("/1.0/operations/{id}/wait?timeout=1e20");
        tokio::spawn(async move { u.get(&path).await })
    };
    // The waiter is parked once a second connection is open besides ours.
    m.wait_for_open_connections(2, std::time::Duration::from_secs(10))
        .await;
    let r = m
        .unix()
        .request("DELETE", &format!("/1.0/operations/{id}"), None, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let done = waiter.await.unwrap().expect("the wait is answered");
    assert_eq!(done.status, 200);
    for timeout in ["-1", "NaN", "inf", "1e308", "soon"] {
        let r = m
            .unix()
            .get(&format!("/1.0/operations/nope/wait?timeout={timeout}"))
            .await
            .unwrap();
        assert_eq!(r.status, 404, "timeout={timeout}");
    }
    assert_eq!(m.unix().get("/1.0").await.unwrap().status, 200, "still serving");
}

/// At most 1000 pending tokens of each kind; a spent one makes room.
#[tokio::test]
async fn pending_tokens_are_capped() {
    let mut m = Member::start().await;
    m.listen().await;
    let issue = |name: String| {
        let u = m.unix();
        async move {
            u.send_json(
                "POST",
                "/1.0/certificates",
                &json!({"name": name, "type": "client", "token": true}),
            )
            .await
            .unwrap()
        }
    };
    let mut first = String::new();
    for i in 0..1000 {
        let r = issue(format!("c{i}")).await;
        assert_eq!(r.status, 202, "token {i}: {}", error(&r));
        if i == 0 {
            first = r.metadata()["id"].as_str().unwrap().to_string();
        }
    }
    let r = issue("one-more".into()).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        error(&r),
        "Too many pending trust tokens (at most 1000): revoke some, or let them expire"
    );
    let r = m
        .unix()
        .request("DELETE", &format!("/1.0/operations/{first}"), None, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(issue("one-more".into()).await.status, 202);
}
