use std::time::Duration;

use serde_json::json;
use stapes_testkit::{ClientCert, Member, Target};
use tokio::io::AsyncWriteExt;

/// A client that presents a trusted certificate without its private key is refused
/// in the handshake: the TLS signature is really verified.
#[tokio::test]
async fn certificate_with_the_wrong_key_is_refused() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let victim = ClientCert::generate("victim");
    m.trust(&victim).await;
    let attacker = ClientCert::generate("attacker");
    let forged = Target::tls_foreign_key(&addr, &victim, &attacker.key_pem);
    let r = forged.get("/1.0/certificates").await;
    assert!(r.is_err(), "handshake must fail, got {:?}", r.map(|r| r.status));
    // The real owner still gets in.
    assert_eq!(
        Target::tls(&addr, Some(&victim))
            .get("/1.0/certificates")
            .await
            .unwrap()
            .status,
        200
    );
}

/// Identity headers only members may send are ignored from clients.
#[tokio::test]
async fn forged_identity_headers_gain_nothing() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let t = Target::tls(&addr, None);
    let forged = [
        ("X-Incus-forwarded-protocol", "unix"),
        ("X-Incus-forwarded-username", "root"),
        ("X-Incus-forwarded-address", "@"),
        ("X-Stapes-Identity", "root"),
    ];
    let r = t
        .request("GET", "/1.0/certificates", None, &forged)
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    let r = t.request("GET", "/1.0", None, &forged).await.unwrap();
    assert_eq!(r.metadata()["auth"], "untrusted");
    // A trusted client cannot become someone else either.
    let cert = ClientCert::generate("me");
    m.trust(&cert).await;
    let r = Target::tls(&addr, Some(&cert))
        .request("GET", "/1.0", None, &forged)
        .await
        .unwrap();
    assert_eq!(r.metadata()["auth_user_method"], "tls");
    assert_eq!(r.metadata()["auth_user_name"], cert.fingerprint);
}

/// Clients that open TCP and say nothing (or stall mid-handshake) hold up nobody.
#[tokio::test]
async fn silent_clients_do_not_block_others() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let mut half = tokio::net::TcpStream::connect(&addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x00, 0xff]).await.unwrap(); // a ClientHello that never ends
    for _ in 0..5 {
        let r = tokio::time::timeout(Duration::from_secs(5), Target::tls(&addr, None).get("/1.0"))
            .await
            .expect("answered while silent clients hold connections")
            .unwrap();
        assert_eq!(r.status, 200);
    }
    drop(silent);
}

/// Guessing token secrets gets 403 and trusts nobody.
#[tokio::test]
async fn guessed_trust_tokens_are_refused() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let r = m
        .unix()
        .send_json(
            "POST",
            "/1.0/certificates",
            &json!({"name": "real", "type": "client", "token": true}),
        )
        .await
        .unwrap();
    let secret = r.metadata()["metadata"]["secret"].as_str().unwrap().to_string();
    let eve = ClientCert::generate("eve");
    let t = Target::tls(&addr, Some(&eve));
    let mut wrong = secret.clone().into_bytes();
    wrong[0] = if wrong[0] == b'a' { b'b' } else { b'a' };
    for guess in [
        String::from_utf8(wrong).unwrap(),
        secret[..10].to_string(),
        String::new(),
        "x".repeat(5000),
    ] {
        let r = t
            .send_json("POST", "/1.0/certificates", &json!({"trust_token": guess}))
            .await
            .unwrap();
        assert_eq!(r.status, 403);
    }
    // Asking for a token or adding a certificate from outside is refused too.
    let r = t
        .send_json(
            "POST",
            "/1.0/certificates",
            &json!({"type": "client", "certificate": eve.cert_pem}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(t.get("/1.0").await.unwrap().metadata()["auth"], "untrusted");
}

/// Garbage on the wire closes that connection and nothing else.
#[tokio::test]
async fn garbage_does_not_crash_the_daemon() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0u8; 4096][..],
        &[0x16, 0x03, 0x03, 0xff, 0xff, 0x01][..],
    ] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let _ = s.write_all(junk).await;
        drop(s);
    }
    let mut s = tokio::net::UnixStream::connect(m.socket()).await.unwrap();
    let _ = s.write_all(b"\x00\x01BOGUS\r\n\r\n").await;
    drop(s);
    let huge_header = "x".repeat(512 * 1024);
    let _ = m
        .unix()
        .request("GET", "/1.0", None, &[("x-big", &huge_header)])
        .await;
    assert_eq!(m.unix().get("/1.0").await.unwrap().status, 200);
    assert_eq!(Target::tls(&addr, None).get("/1.0").await.unwrap().status, 200);
}

/// The streaming and echo routes the cluster tests use exist only with
/// `--test-routes`: a daemon started without it does not know them, even for root.
#[tokio::test]
async fn test_routes_do_not_exist_without_their_flag() {
    let m = Member::start().await;
    for (method, path) in [
        ("POST", "/internal/test/sink"),
        ("GET", "/internal/test/source?size=1"),
        ("GET", "/internal/test/produced"),
        ("GET", "/internal/test/echo"),
    ] {
        let r = m.unix().request(method, path, None, &[]).await.unwrap();
        assert_eq!(
            r.status,
            404,
            "{method} {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let on = Member::start_env(&[("STAPES_TEST_ROUTES", "true")]).await;
    let r = on.unix().get("/internal/test/produced").await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// Storage pool and profile requests that try to escape, reuse someone's directory or
/// reach the member-only channel are refused with the reason and leave nothing behind.
#[tokio::test]
async fn storage_pools_and_profiles_refuse_hostile_input() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let u = m.unix();
    let refused = |r: &stapes_testkit::Resp, status: u16, message: &str| {
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
        let body = r.json();
        assert_eq!(body["type"], "error");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(message), "{error}");
    };
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("mine"), b"data").unwrap();
    let inside = m.dir.join("elsewhere");
    std::fs::create_dir(&inside).unwrap();
    for (body, status, message) in [
        (
            json!({"name": "../escape", "driver": "dir"}),
            400,
            "Invalid storage pool name",
        ),
        (
            json!({"name": "..", "driver": "dir"}),
            400,
            "Invalid storage pool name",
        ),
        (json!({"name": "p", "driver": ""}), 400, "No driver provided"),
        (
            json!({"name": "p", "driver": "dir", "config": {"source": outside.path()}}),
            400,
            "isn't empty",
        ),
        (
            json!({"name": "p", "driver": "dir", "config": {"source": inside}}),
            400,
            "within the state directory",
        ),
        (
            json!({"name": "p", "driver": "dir", "config": {"source": "/tmp/../etc"}}),
            400,
            "isn't empty",
        ),
        (
            json!({"name": "p", "driver": "dir", "config": {"x": "1"}}),
            400,
            "Invalid option \"x\"",
        ),
    ] {
        let r = u.send_json("POST", "/1.0/storage-pools", &body).await.unwrap();
        refused(&r, status, message);
    }
    assert_eq!(std::fs::read(outside.path().join("mine")).unwrap(), b"data");
    assert!(
        !m.dir.join("storage-pools/p").exists() && !m.dir.join("storage-pools/..").join("escape").exists()
    );
    let list = u.get("/1.0/storage-pools").await.unwrap();
    assert_eq!(list.metadata(), json!([]), "no record left");
    let r = u
        .request("POST", "/1.0/storage-pools", Some(b"[]".to_vec()), &[])
        .await
        .unwrap();
    refused(&r, 400, "expected a JSON object");

    // A directory already holding a pool is not taken by another, however it is spelled.
    let shared = tempfile::tempdir().unwrap();
    let a = json!({"name": "a", "driver": "dir", "config": {"source": shared.path()}});
    let r = u.send_json("POST", "/1.0/storage-pools", &a).await.unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let spelled = format!("{}/./", shared.path().display());
    let b = json!({"name": "b", "driver": "dir", "config": {"source": spelled}});
    let r = u.send_json("POST", "/1.0/storage-pools", &b).await.unwrap();
    refused(&r, 400, "is already used by storage pool \"a\"");
    let list = u.get("/1.0/storage-pools").await.unwrap();
    assert_eq!(list.metadata(), json!(["/1.0/storage-pools/a"]));

    // The member channel is for members only: not the local socket, not a client.
    let r = u
        .send_json(
            "POST",
            "/internal/storage-pools/p",
            &json!({"driver": "dir", "config": {}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    let client = ClientCert::generate("admin");
    m.trust(&client).await;
    let r = Target::tls(&addr, Some(&client))
        .send_json(
            "DELETE",
            "/internal/storage-pools/p",
            &json!({"driver": "dir", "config": {}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert!(!m.dir.join("storage-pools/p").exists());

    // Profiles: names that are paths, devices that reach for the host.
    for (body, message) in [
        (json!({"name": "a/b"}), "Invalid profile name"),
        (json!({"name": ""}), "No name provided"),
        (
            json!({"name": "p", "devices": {"d": {"type": "disk", "path": "/mnt", "source": "/etc"}}}),
            "not supported by this server yet",
        ),
        (
            json!({"name": "p", "devices": {"d": {"type": "unix-char", "path": "/dev/kmsg"}}}),
            "only \"disk\" devices",
        ),
    ] {
        let r = u.send_json("POST", "/1.0/profiles", &body).await.unwrap();
        refused(&r, 400, message);
    }
    let list = u.get("/1.0/profiles").await.unwrap();
    assert_eq!(list.metadata(), json!(["/1.0/profiles/default"]));
}
