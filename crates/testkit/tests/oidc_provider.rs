//! The test OpenID provider itself: discovery, the device flow, JWT access tokens with
//! the claims stapes reads, refresh, the authorization code flow, logout and key
//! rotation. Other suites rely on all of this.

use std::time::{Duration, Instant};

use serde_json::json;
use stapes_testkit::oidc::{self, decode_jwt, Provider};

const CALLBACK: &str = "https://127.0.0.1:9/oidc/callback";
const AFTER_LOGOUT: &str = "https://127.0.0.1:9/";

async fn provider() -> Option<Provider> {
    if !oidc::available() {
        return None;
    }
    Some(
        Provider::start_with(oidc::Options {
            redirect_uris: vec![CALLBACK.to_string()],
            post_logout_redirect_uris: vec![AFTER_LOGOUT.to_string()],
            allowed_subnets: vec![("carol".into(), vec!["203.0.113.0/24".into()])],
            ..Default::default()
        })
        .await,
    )
}

#[tokio::test]
async fn t10_device_login_gives_a_jwt_for_the_audience_and_refresh_works() {
    let Some(p) = provider().await else { return };
    let d = p.discovery().await;
    assert_eq!(d["issuer"], p.issuer());
    for k in [
        "jwks_uri",
        "device_authorization_endpoint",
        "token_endpoint",
        "authorization_endpoint",
        "end_session_endpoint",
    ] {
        let url = d[k]
            .as_str()
            .unwrap_or_else(|| panic!("discovery has no {k}: {d}"));
        assert!(url.starts_with(&p.issuer()), "{k}: {url}");
    }
    assert!(p.ca_file().exists());

    let da = p.device_authorization().await;
    assert_eq!(da.interval, 1, "a short polling interval");

    let started = Instant::now();
    let t = p.device_login("alice").await;
    let took = started.elapsed();
    eprintln!("device login took {took:?}");
    // A bound against a stuck login, not a speed target: CI machines are busy.
    assert!(took < Duration::from_secs(20), "device login took {took:?}");

    let (h, c) = decode_jwt(&t.access_token);
    assert_eq!(h["typ"], "at+jwt", "{h}");
    assert_eq!(h["alg"], "RS256", "{h}");
    assert_eq!(c["iss"], p.issuer());
    assert_eq!(c["aud"], p.audience());
    assert_eq!(c["aud"], oidc::AUDIENCE);
    assert_eq!(c["client_id"], p.client_id());
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["email"], "alice@stapes.test");
    assert!(c.get("incus.allowed_subnets").is_none(), "{c}");
    let kid = h["kid"].as_str().expect("kid").to_string();
    let jwks = p.jwks().await;
    assert!(
        jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .any(|k| k["kid"] == kid),
        "{jwks}"
    );

    assert!(
        oidc::rs256_signature_ok(&t.access_token, &jwks),
        "the signature verifies"
    );
    assert!(!oidc::rs256_signature_ok(
        &oidc::tamper(&t.access_token, json!({"sub": "root"})),
        &jwks
    ));

    let id = t.id_token.as_deref().expect("an ID token");
    assert_eq!(decode_jwt(id).1["aud"], p.client_id());

    let refresh = t.refresh_token.clone().expect("a refresh token (offline_access)");
    let t2 = p.refresh(&refresh).await;
    let (_, c2) = decode_jwt(&t2.access_token);
    assert_eq!(c2["sub"], "alice");
    assert_eq!(c2["aud"], p.audience());
    assert_eq!(c2["email"], "alice@stapes.test");
    assert_ne!(t2.access_token, t.access_token);
    // The refresh token rotated: the old one is spent.
    let next = t2.refresh_token.as_deref().expect("a new refresh token");
    assert_ne!(next, refresh);
    let (status, v) = p
        .token_endpoint(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", p.client_id()),
        ])
        .await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");
}

#[tokio::test]
async fn t10_allowed_subnets_claim_for_chosen_logins() {
    let Some(p) = provider().await else { return };
    let t = p.device_login("carol").await;
    let c = decode_jwt(&t.access_token).1;
    assert_eq!(c["email"], "carol@stapes.test");
    assert_eq!(c["incus.allowed_subnets"], json!(["203.0.113.0/24"]));
}

#[tokio::test]
async fn t20_authorization_code_flow_with_pkce_and_logout() {
    let Some(p) = provider().await else { return };
    let (verifier, challenge) = oidc::pkce_pair();
    let url = p.authorize_url(CALLBACK, "st4te", &challenge);
    let mut browser = p.browser();
    let back = browser.authorize(&url, "bob").await.expect("authorize");
    assert!(back.starts_with(&format!("{CALLBACK}?")), "{back}");
    assert_eq!(oidc::query_param(&back, "state").as_deref(), Some("st4te"));
    assert_eq!(oidc::query_param(&back, "iss"), Some(p.issuer()));
    let code = oidc::query_param(&back, "code").expect("a code");
    let t = p.exchange_code(&code, &verifier, CALLBACK).await;
    let (h, c) = decode_jwt(&t.access_token);
    assert_eq!(h["typ"], "at+jwt");
    assert_eq!(c["aud"], p.audience());
    assert_eq!(c["email"], "bob@stapes.test");
    assert!(t.refresh_token.is_some(), "prompt=consent keeps offline_access");

    // The same browser is logged in: a second authorization needs no form.
    let (_, challenge2) = oidc::pkce_pair();
    let again = browser
        .authorize(&p.authorize_url(CALLBACK, "two", &challenge2), "ignored")
        .await
        .expect("second authorize");
    assert_eq!(oidc::query_param(&again, "state").as_deref(), Some("two"));

    // Without the verifier the code is refused.
    let (_, challenge3) = oidc::pkce_pair();
    let third = p
        .authorize(&p.authorize_url(CALLBACK, "three", &challenge3), "bob")
        .await;
    let code3 = oidc::query_param(&third, "code").expect("a code");
    let (status, v) = p
        .token_endpoint(&[
            ("grant_type", "authorization_code"),
            ("code", &code3),
            ("code_verifier", "wrong-verifier-wrong-verifier-wrong-verifier-00"),
            ("redirect_uri", CALLBACK),
            ("client_id", p.client_id()),
        ])
        .await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");

    // RP-initiated logout back to the relying party.
    let id_token = t.id_token.expect("an ID token");
    let end = format!(
        "{}?{}",
        p.discovery().await["end_session_endpoint"]
            .as_str()
            .expect("end_session_endpoint"),
        oidc::form_body(&[
            ("id_token_hint", &id_token),
            ("post_logout_redirect_uri", AFTER_LOGOUT),
            ("state", "bye"),
        ])
    );
    match browser.end_session(&end).await.expect("end session") {
        oidc::Walk::Left(to) => {
            assert!(to.starts_with(AFTER_LOGOUT), "{to}");
            assert_eq!(oidc::query_param(&to, "state").as_deref(), Some("bye"));
        }
        other => panic!("logout did not redirect back: {other:?}"),
    }
}

#[tokio::test]
async fn t30_key_rotation_changes_the_kid_and_keeps_refresh_tokens() {
    let Some(p) = provider().await else { return };
    let t = p.device_login("dave").await;
    let old_kid = decode_jwt(&t.access_token).0["kid"]
        .as_str()
        .expect("kid")
        .to_string();

    let new_kid = p.rotate_keys().await;
    assert_ne!(new_kid, old_kid);
    let kids: Vec<String> = p.jwks().await["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        kids,
        [new_kid.clone(), old_kid.clone()],
        "new key first, old key kept"
    );

    // Tokens issued before the rotation can still be refreshed; new ones use the new key.
    let t2 = p
        .refresh(t.refresh_token.as_deref().expect("refresh token"))
        .await;
    assert_eq!(decode_jwt(&t2.access_token).0["kid"], new_kid);
    let t3 = p.device_login("dave").await;
    assert_eq!(decode_jwt(&t3.access_token).0["kid"], new_kid);

    let only = p.replace_keys().await;
    let kids: Vec<String> = p.jwks().await["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(kids, [only]);
}

#[tokio::test]
async fn t30_tokens_for_negative_tests() {
    let Some(p) = provider().await else { return };
    let jwks = p.jwks().await;
    let claims = json!({"iss": p.issuer(), "aud": "https://elsewhere.test", "sub": "x", "exp": 1});
    let signed = p.sign(&claims).await;
    let (h, c) = decode_jwt(&signed);
    assert_eq!(c, claims, "the claims exactly as given");
    assert_eq!(h["typ"], "at+jwt");
    assert_eq!(h["kid"], jwks["keys"][0]["kid"]);
    assert!(oidc::rs256_signature_ok(&signed, &jwks));

    let foreign = p.sign_foreign(&claims).await;
    let (h, _) = decode_jwt(&foreign);
    assert_eq!(h["alg"], "RS256");
    assert!(
        !oidc::rs256_signature_ok(&foreign, &jwks),
        "no published key for {h}"
    );
    let borrowed = oidc::forge_token(
        json!({"kid": jwks["keys"][0]["kid"].clone()}),
        claims.clone(),
        "RS256",
    );
    assert!(!oidc::rs256_signature_ok(&borrowed, &jwks));
    let unsigned = oidc::forge_token(json!({}), claims, "none");
    assert!(unsigned.ends_with('.'));
}

#[tokio::test]
async fn t30_a_wrong_user_code_is_a_clear_failure() {
    let Some(p) = provider().await else { return };
    let err = p
        .try_approve_device("BCDF-GHJK", "eve")
        .await
        .expect_err("a made-up user code was approved");
    assert!(format!("{err:#}").contains("incorrect"), "{err:#}");
}
