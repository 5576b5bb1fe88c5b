//! OpenID Connect against a real provider (node `oidc-provider`, started per test): token
//! verification on every member and through forwarding, key rotation, the browser login
//! split across members, haproxy terminating TLS, and every kind of bad token.
//!
//! Tests that form clusters take the one slot: the machine has two cores.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use stapes_testkit::oidc::{self, Provider};
use stapes_testkit::{
    events_unix, eventually, free_port, have_tool, next_lifecycle, ClientCert, Cluster, Member, Resp, Target,
};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_tungstenite::tungstenite::Message;

static SLOTS: Semaphore = Semaphore::const_new(1);

async fn slot() -> SemaphorePermit<'static> {
    SLOTS.acquire().await.expect("semaphore open")
}

const LONG: Duration = Duration::from_secs(30);

async fn with_token(t: &Target, method: &str, path: &str, token: &str, body: Option<Value>) -> Resp {
    let auth = format!("Bearer {token}");
    t.request(
        method,
        path,
        body.map(|b| serde_json::to_vec(&b).unwrap()),
        &[("authorization", &auth)],
    )
    .await
    .unwrap()
}

fn error_of(r: &Resp) -> String {
    r.json()["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_member_accepts_provider_tokens_and_says_where_to_log_in() {
    if !oidc::available() {
        return;
    }
    let p = Provider::start(&[]).await;
    let (m, addr) = p.member().await;
    let anon = Target::tls(&addr, None);

    let r = anon.get("/1.0").await.unwrap();
    assert_eq!(r.metadata()["auth"], "untrusted");
    assert!(r.metadata()["auth_methods"]
        .as_array()
        .unwrap()
        .contains(&json!("oidc")));

    // What the official client sends first: an empty bearer token, to learn where to log in.
    let r = with_token(&anon, "GET", "/1.0", "", None).await;
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-incus-oidc-issuer"), Some(p.issuer().as_str()));
    assert_eq!(r.header("x-incus-oidc-clientid"), Some(p.client_id()));
    assert_eq!(r.header("x-incus-oidc-audience"), Some(p.audience()));
    assert!(r.header("x-incus-oidc-scopes").unwrap().contains("openid"));
    // A refusal without a token says the same.
    let r = anon
        .send_json("PATCH", "/1.0", &json!({"config": {}}))
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-incus-oidc-issuer"), Some(p.issuer().as_str()));

    let tokens = p.device_login("alice").await;
    let r = with_token(&anon, "GET", "/1.0", &tokens.access_token, None).await;
    assert_eq!(r.status, 200);
    let md = r.metadata();
    assert_eq!(
        (
            md["auth"].as_str(),
            md["auth_user_method"].as_str(),
            md["auth_user_name"].as_str()
        ),
        (Some("trusted"), Some("oidc"), Some("alice@stapes.test"))
    );
    // The browser's cookie works the same way.
    let cookie = format!("oidc_access={}", tokens.access_token);
    let r = anon
        .request("GET", "/1.0", None, &[("cookie", &cookie)])
        .await
        .unwrap();
    assert_eq!(r.metadata()["auth_user_method"], "oidc");

    // Lifecycle events record who did it.
    let mut ws = events_unix(&m.socket(), "type=lifecycle").await.unwrap();
    let r = with_token(
        &anon,
        "PATCH",
        "/1.0",
        &tokens.access_token,
        Some(json!({"config": {"core.remote_token_expiry": "7H"}})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let requestor = next_config_update(&mut ws).await;
    assert_eq!(requestor["username"], "alice@stapes.test");
    assert_eq!(requestor["protocol"], "oidc");
    assert_eq!(requestor["address"], "127.0.0.1");
}

async fn next_config_update<S>(ws: &mut S) -> Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    next_lifecycle(ws, "config-updated").await["metadata"]["requestor"].clone()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401_saying_why() {
    if !oidc::available() {
        return;
    }
    let p = Provider::start(&[]).await;
    let (m, addr) = p.member().await;
    let anon = Target::tls(&addr, None);
    let good = p.device_login("mallory").await.access_token;
    let parts: Vec<&str> = good.split('.').collect();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let now = claims["iat"].as_i64().unwrap();
    let with = |patch: Value| {
        let mut c = claims.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };

    let mut cases: Vec<(&str, String, &str)> = vec![
        ("malformed", "not-a-token".into(), "malformed token"),
        ("three parts of garbage", "a.b.c".into(), "malformed token"),
        (
            "unsigned",
            format!("{}.{}.", b64(&json!({"alg": "none", "typ": "at+jwt"})), parts[1]),
            "\"none\" is not accepted",
        ),
        (
            "HMAC keyed with the public key",
            format!("{}.{}.{}", b64(&json!({"alg": "HS256"})), parts[1], parts[2]),
            "\"HS256\" is not accepted",
        ),
        (
            "claims changed after signing",
            format!(
                "{}.{}.{}",
                parts[0],
                b64(&with(json!({"sub": "admin", "email": "admin@stapes.test"}))),
                parts[2]
            ),
            "signature is invalid",
        ),
    ];
    // Tokens signed by the provider's own key, with bad claims.
    let signed = [
        (
            "expired",
            json!({"exp": now - 3600, "iat": now - 7200}),
            "expired",
        ),
        ("not valid yet", json!({"nbf": now + 3600}), "not valid yet"),
        (
            "wrong audience",
            json!({"aud": "https://elsewhere.test"}),
            "audience",
        ),
        ("wrong issuer", json!({"iss": "https://evil.test"}), "issuer"),
    ];
    for (what, patch, why) in signed {
        cases.push((what, p.sign(&with(patch)).await, why));
    }
    // Signed by a key the provider never published.
    cases.push(("unknown key", p.sign_foreign(&claims).await, "unknown key"));

    for (what, token, why) in cases {
        let r = with_token(&anon, "GET", "/1.0", &token, None).await;
        assert_eq!(r.status, 401, "{what}: {}", String::from_utf8_lossy(&r.body));
        let e = error_of(&r);
        assert!(e.contains(why), "{what}: {e:?} should say {why:?}");
        assert!(r.header("x-incus-oidc-issuer").is_some(), "{what}");
        // The same token in the cookie is refused the same way.
        let cookie = format!("oidc_access={token}");
        let r = anon
            .request("GET", "/1.0", None, &[("cookie", &cookie)])
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{what} (cookie)");
    }
    let r = anon
        .request("GET", "/1.0", None, &[("authorization", "Basic YWxpY2U6cHc=")])
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert!(error_of(&r).contains("Bearer"));
    // The good token still works: nothing above poisoned the key cache.
    assert_eq!(
        with_token(&anon, "GET", "/1.0", &good, None).await.metadata()["auth_user_method"],
        "oidc"
    );
    // Refusals are logged, with the reason.
    eventually(Duration::from_secs(5), "refusals in the log", || {
        let log = m.log();
        async move {
            (log.contains("refused an OpenID access token") && log.contains("token has expired"))
                .then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn allowed_subnets_are_checked_against_the_real_client_address() {
    if !oidc::available() {
        return;
    }
    let p = Provider::start_with(oidc::Options {
        allowed_subnets: vec![
            ("local".into(), vec!["127.0.0.0/8".into()]),
            ("remote".into(), vec!["203.0.113.0/24".into()]),
        ],
        ..Default::default()
    })
    .await;
    let (m, addr) = p.member().await;
    let anon = Target::tls(&addr, None);
    let local = p.device_login("local").await.access_token;
    let remote = p.device_login("remote").await.access_token;
    assert_eq!(with_token(&anon, "GET", "/1.0", &local, None).await.status, 200);
    let r = with_token(&anon, "GET", "/1.0", &remote, None).await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert!(error_of(&r).contains("allowed subnets"), "{}", error_of(&r));
    // Behind a trusted proxy, the address that counts is the one the PROXY header gives.
    let r = m
        .unix()
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {"core.https_trusted_proxy": "127.0.0.1"}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let dst: std::net::SocketAddr = addr.parse().unwrap();
    let v1 = format!("PROXY TCP4 203.0.113.50 {} 40000 {}\r\n", dst.ip(), dst.port());
    let proxied = Target::tls_after(&addr, None, v1.as_bytes());
    assert_eq!(
        with_token(&proxied, "GET", "/1.0", &remote, None).await.status,
        200
    );
    assert_eq!(
        with_token(&proxied, "GET", "/1.0", &local, None).await.status,
        403
    );
}

#[tokio::test]
async fn every_member_verifies_and_forwarding_carries_the_identity() {
    if !oidc::available() {
        return;
    }
    let _slot = slot().await;
    let p = Provider::start(&[]).await;
    let ca = p.ca_file().display().to_string();
    let c = Cluster::start_env(3, &[], &[("SSL_CERT_FILE", &ca)]).await;
    c.wait_healthy(3, LONG).await;
    p.configure(&c.members[0]).await;
    let token = p.device_login("alice").await.access_token;
    for m in &c.members {
        let t = Target::tls(&m.address().await, None);
        let md = eventually(
            Duration::from_secs(10),
            "the setting reaches every member",
            || {
                let (t, token) = (t.clone(), token.clone());
                async move {
                    let r = with_token(&t, "GET", "/1.0", &token, None).await;
                    (r.status == 200).then(|| r.metadata())
                }
            },
        )
        .await;
        assert_eq!(md["auth_user_method"], "oidc");
        assert_eq!(md["auth_user_name"], "alice@stapes.test");
    }

    // Through node1 to node3: node3 answers, for alice, and records her.
    let via = Target::tls(&c.members[0].address().await, None);
    let r = with_token(&via, "GET", "/1.0?target=node3", &token, None).await;
    assert_eq!(r.status, 200);
    let md = r.metadata();
    assert_eq!(md["environment"]["server_name"], "node3");
    assert_eq!(md["auth_user_method"], "oidc");
    assert_eq!(md["auth_user_name"], "alice@stapes.test");
    let mut ws = events_unix(&c.members[2].socket(), "type=lifecycle")
        .await
        .unwrap();
    let r = with_token(
        &via,
        "PATCH",
        "/1.0?target=node3",
        &token,
        Some(json!({"config": {"core.remote_token_expiry": "9H"}})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let requestor = next_config_update(&mut ws).await;
    assert_eq!(requestor["protocol"], "oidc");
    assert_eq!(requestor["username"], "alice@stapes.test");
    assert_eq!(requestor["address"], "127.0.0.1");
    // A client cannot claim to be alice by sending the forwarding headers itself.
    let r = via
        .request(
            "GET",
            "/1.0?target=node3",
            None,
            &[
                ("x-incus-forwarded-protocol", "oidc"),
                ("x-incus-forwarded-username", "alice@stapes.test"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r.metadata()["auth"], "untrusted");
}

#[tokio::test]
async fn key_rotation_at_the_provider_is_followed() {
    if !oidc::available() {
        return;
    }
    let p = Provider::start(&[]).await;
    let (_m, addr) = p.member().await;
    let anon = Target::tls(&addr, None);
    let before = p.device_login("alice").await.access_token;
    assert_eq!(with_token(&anon, "GET", "/1.0", &before, None).await.status, 200);

    // A new signing key: tokens signed with it are accepted (the key set is refetched
    // once the new kid shows up, at most every 2 s), and old ones still are.
    p.rotate_keys().await;
    let after = p.device_login("alice").await.access_token;
    eventually(
        Duration::from_secs(10),
        "a token with the new key accepted",
        || {
            let (anon, after) = (anon.clone(), after.clone());
            async move { (with_token(&anon, "GET", "/1.0", &after, None).await.status == 200).then_some(()) }
        },
    )
    .await;
    assert_eq!(with_token(&anon, "GET", "/1.0", &before, None).await.status, 200);

    // Keys retired at the provider stop working once the member has seen the new set.
    p.replace_keys().await;
    let latest = p.device_login("alice").await.access_token;
    eventually(
        Duration::from_secs(10),
        "a token with the replacing key accepted",
        || {
            let (anon, latest) = (anon.clone(), latest.clone());
            async move { (with_token(&anon, "GET", "/1.0", &latest, None).await.status == 200).then_some(()) }
        },
    )
    .await;
    let r = with_token(&anon, "GET", "/1.0", &before, None).await;
    assert_eq!(r.status, 401);
    assert!(error_of(&r).contains("unknown key"), "{}", error_of(&r));
}

fn set_cookies(r: &Resp) -> Vec<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

fn cookie_value(r: &Resp, name: &str) -> Option<String> {
    set_cookies(r).iter().find_map(|c| {
        let (kv, _) = c.split_once(';').unwrap_or((c, ""));
        let (k, v) = kv.split_once('=')?;
        (k == name && !v.is_empty()).then(|| v.to_string())
    })
}

#[tokio::test]
async fn a_browser_login_can_start_on_one_member_and_finish_on_another() {
    if !oidc::available() {
        return;
    }
    let _slot = slot().await;
    let mut c = Cluster::start(2).await;
    let a = c.members[0].address().await;
    let b = c.members[1].address().await;
    let p = Provider::start(&[
        format!("https://{a}/oidc/callback"),
        format!("https://{b}/oidc/callback"),
    ])
    .await;
    // The provider's CA is needed for the code exchange: restart both members with it.
    let ca = p.ca_file().display().to_string();
    for m in c.members.iter_mut() {
        m.set_env("SSL_CERT_FILE", &ca);
        m.restart().await;
    }
    c.wait_healthy(1, LONG).await;
    p.configure(&c.members[0]).await;
    // The callback lands on the other member: wait until the setting reached it.
    let second = c.members[1].unix();
    eventually(LONG, "the OpenID settings reach the second member", || async {
        let r = second.get("/1.0").await.ok()?;
        let issuer = r.metadata()["config"]["oidc.issuer"].as_str()?.to_string();
        (!issuer.is_empty()).then_some(())
    })
    .await;
    let (at_a, at_b) = (Target::tls(&a, None), Target::tls(&b, None));

    let start = at_a
        .request("GET", "/oidc/login", None, &[("host", &a)])
        .await
        .unwrap();
    assert_eq!(start.status, 303, "{}", String::from_utf8_lossy(&start.body));
    let to_provider = start.header("location").unwrap().to_string();
    assert!(to_provider.starts_with(&p.issuer()), "{to_provider}");
    assert!(
        to_provider.contains("code_challenge_method=S256"),
        "{to_provider}"
    );
    let login_cookie = cookie_value(&start, "oidc_login").expect("a login cookie");
    let attrs = set_cookies(&start).join(" | ");
    assert!(attrs.contains("Secure") && attrs.contains("HttpOnly"), "{attrs}");

    let back = p.authorize(&to_provider, "bob").await;
    let path = back
        .strip_prefix(&format!("https://{a}"))
        .expect("back to where it started")
        .to_string();

    // A tampered login cookie is refused.
    let mut forged = login_cookie.clone().into_bytes();
    let i = forged.len() / 2;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = format!("oidc_login={}", String::from_utf8(forged).unwrap());
    let r = at_b
        .request("GET", &path, None, &[("host", &a), ("cookie", &forged)])
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        error_of(&r).contains("login cookie is invalid"),
        "{}",
        error_of(&r)
    );

    // The callback lands on the other member (a balancer without sticky sessions).
    let cookie = format!("oidc_login={login_cookie}");
    let done = at_b
        .request("GET", &path, None, &[("host", &a), ("cookie", &cookie)])
        .await
        .unwrap();
    assert_eq!(done.status, 303, "{}", String::from_utf8_lossy(&done.body));
    let access = cookie_value(&done, "oidc_access").expect("an access cookie");
    let attrs = set_cookies(&done).join(" | ");
    assert!(
        attrs.contains("oidc_access=") && attrs.contains("Secure") && attrs.contains("HttpOnly"),
        "{attrs}"
    );
    for t in [&at_a, &at_b] {
        let r = t
            .request(
                "GET",
                "/1.0",
                None,
                &[("cookie", &format!("oidc_access={access}"))],
            )
            .await
            .unwrap();
        assert_eq!(r.metadata()["auth_user_name"], "bob@stapes.test");
    }
    // An expired access cookie with a refresh cookie: new tokens, no new login.
    let refresh = cookie_value(&done, "oidc_refresh").expect("a refresh cookie (offline_access)");
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(access.split('.').nth(1).unwrap()).unwrap()).unwrap();
    let mut expired = claims.clone();
    expired["exp"] = json!(claims["iat"].as_i64().unwrap() - 60);
    expired["iat"] = json!(claims["iat"].as_i64().unwrap() - 3660);
    let stale = p.sign(&expired).await;
    let r = at_b
        .request(
            "GET",
            "/1.0",
            None,
            &[("cookie", &format!("oidc_access={stale}"))],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401, "an expired cookie alone is refused");
    let both = format!("oidc_access={stale}; oidc_refresh={refresh}");
    let r = at_a
        .request("GET", "/1.0", None, &[("cookie", &both)])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.metadata()["auth_user_name"], "bob@stapes.test");
    let renewed = cookie_value(&r, "oidc_access").expect("a renewed access cookie");
    assert_ne!(renewed, stale);
    // The same code cannot be used twice.
    let again = at_a
        .request("GET", &path, None, &[("host", &a), ("cookie", &cookie)])
        .await
        .unwrap();
    assert_eq!(again.status, 401);

    let out = at_b
        .request(
            "GET",
            "/oidc/logout",
            None,
            &[("cookie", &format!("oidc_access={access}"))],
        )
        .await
        .unwrap();
    assert_eq!(out.status, 303);
    assert!(set_cookies(&out)
        .iter()
        .any(|c| c.starts_with("oidc_access=;") && c.contains("Max-Age=0")));
}

#[tokio::test]
async fn an_unreachable_provider_is_a_clear_error_and_certificates_still_work() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let cert = ClientCert::generate("admin");
    m.trust(&cert).await;
    let closed = free_port();
    let r = m
        .unix()
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {"oidc.issuer": format!("https://127.0.0.1:{closed}"), "oidc.client.id": "x"}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let token = format!(
        "{}.{}.c2ln",
        b64(&json!({"alg": "RS256", "kid": "k"})),
        b64(&json!({}))
    );
    let r = with_token(&Target::tls(&addr, None), "GET", "/1.0", &token, None).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        error_of(&r).contains("OpenID provider cannot be used"),
        "{}",
        error_of(&r)
    );
    let r = Target::tls(&addr, Some(&cert)).get("/1.0").await.unwrap();
    assert_eq!(r.metadata()["auth"], "trusted");
    assert_eq!(r.metadata()["auth_user_method"], "tls");
}

/// haproxy in HTTP mode terminating TLS: client certificates cannot pass through it, an
/// access token can, and PROXY v2 to the members keeps the real client address.
#[tokio::test]
async fn haproxy_terminating_tls_passes_oidc_users() {
    if !oidc::available() || !have_tool("haproxy") {
        return;
    }
    let _slot = slot().await;
    let p = Provider::start(&[]).await;
    let ca = p.ca_file().display().to_string();
    let c = Cluster::start_env(
        2,
        &[("core.https_trusted_proxy", "127.0.0.9")],
        &[("SSL_CERT_FILE", &ca)],
    )
    .await;
    c.wait_healthy(1, LONG).await;
    p.configure(&c.members[0]).await;
    let cert = ClientCert::generate("behind-lb");
    c.members[0].trust(&cert).await;

    let dir = tempfile::tempdir().unwrap();
    let front_pem = dir.path().join("front.pem");
    let front_cert = ClientCert::generate("lb.stapes.test");
    std::fs::write(
        &front_pem,
        format!("{}{}", front_cert.cert_pem, front_cert.key_pem),
    )
    .unwrap();
    let front = format!("127.0.0.1:{}", free_port());
    let mut servers = String::new();
    for (i, m) in c.members.iter().enumerate() {
        servers.push_str(&format!(
            "  server m{} {} source 127.0.0.9 ssl verify none send-proxy-v2 check check-send-proxy inter 200ms\n",
            i + 1,
            m.address().await
        ));
    }
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 100\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 10s\n  timeout server 10s\n\
             frontend api\n  bind {front} ssl crt {}\n  default_backend members\n\
             backend members\n  balance roundrobin\n  option httpchk GET /ready\n{servers}",
            front_pem.display()
        ),
    )
    .unwrap();
    let _haproxy = stapes_testkit::haproxy(&cfg);
    let token = p.device_login("carol").await.access_token;
    let via = Target::tls(&front, Some(&cert));
    let names = eventually(
        Duration::from_secs(10),
        "haproxy passes a token to both members",
        || {
            let (via, token) = (via.clone(), token.clone());
            async move {
                let mut seen = std::collections::BTreeSet::new();
                let auth = format!("Bearer {token}");
                for _ in 0..6 {
                    // haproxy may not listen yet: a refused connection is "not yet".
                    let r = via
                        .request("GET", "/1.0", None, &[("authorization", &auth)])
                        .await
                        .ok()?;
                    if r.status != 200 || r.metadata()["auth_user_method"] != "oidc" {
                        return None;
                    }
                    seen.insert(r.metadata()["environment"]["server_name"].as_str()?.to_string());
                }
                (seen.len() == 2).then_some(seen)
            }
        },
    )
    .await;
    assert_eq!(names.len(), 2);
    // The certificate ends at haproxy: the member sees an untrusted caller.
    let r = via.get("/1.0").await.unwrap();
    assert_eq!(r.metadata()["auth"], "untrusted");
    assert_eq!(
        r.header("x-incus-oidc-issuer"),
        None,
        "a 200 carries no login hint"
    );
    // And the address recorded is the client's, not haproxy's.
    let mut ws = events_unix(&c.members[0].socket(), "type=lifecycle")
        .await
        .unwrap();
    let r = with_token(
        &via,
        "PATCH",
        "/1.0?target=node1",
        &token,
        Some(json!({"config": {"core.remote_token_expiry": "5H"}})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let requestor = next_config_update(&mut ws).await;
    assert_eq!(requestor["protocol"], "oidc");
    assert_eq!(requestor["username"], "carol@stapes.test");
    assert_eq!(requestor["address"], "127.0.0.1");
}

/// A device login of `user` at a provider serving `certificate`, then `GET /1.0` with
/// the access token at a member whose trust bundle is the provider's CA file.
async fn get_with_provider_certificate(certificate: oidc::ProviderCertificate, user: &str) -> Resp {
    let p = Provider::start_with(oidc::Options {
        certificate,
        ..Default::default()
    })
    .await;
    let (_m, addr) = p.member().await;
    let tokens = p.device_login(user).await;
    with_token(
        &Target::tls(&addr, None),
        "GET",
        "/1.0",
        &tokens.access_token,
        None,
    )
    .await
}

/// A provider serving a self-signed certificate marked as a CA (`openssl req -x509`),
/// with that certificate as the member's trust bundle: accepted, as Incus accepts it.
#[tokio::test]
async fn a_self_signed_provider_certificate_in_the_bundle_is_accepted() {
    if !oidc::available() {
        return;
    }
    let r = get_with_provider_certificate(oidc::ProviderCertificate::SelfSignedCa, "grace").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.metadata()["auth_user_name"], "grace@stapes.test");
}

/// A CA-signed provider certificate for another name is refused, and the member says why
/// in plain words.
#[tokio::test]
async fn a_provider_certificate_for_another_name_is_refused_in_plain_words() {
    if !oidc::available() {
        return;
    }
    let r = get_with_provider_certificate(oidc::ProviderCertificate::WrongName, "heidi").await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        error_of(&r).contains("its certificate is not valid for the name or address in the URL"),
        "{}",
        error_of(&r)
    );
}
