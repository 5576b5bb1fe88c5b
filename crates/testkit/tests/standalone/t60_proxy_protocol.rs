use std::time::Duration;

use serde_json::{json, Value};
use stapes_testkit::{events_unix, eventually, have_tool, next_lifecycle, ClientCert, Member, Target};

fn v2(src: std::net::SocketAddr, dst: std::net::SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21);
    match (src, dst) {
        (std::net::SocketAddr::V6(s), std::net::SocketAddr::V6(d)) => {
            h.push(0x21);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
            h.extend_from_slice(&s.port().to_be_bytes());
            h.extend_from_slice(&d.port().to_be_bytes());
        }
        (std::net::SocketAddr::V4(s), std::net::SocketAddr::V4(d)) => {
            h.push(0x11);
            // 12 bytes of addresses and a 7-byte TLV that must be skipped.
            h.extend_from_slice(&19u16.to_be_bytes());
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
            h.extend_from_slice(&s.port().to_be_bytes());
            h.extend_from_slice(&d.port().to_be_bytes());
            h.extend_from_slice(&[0x04, 0x00, 0x04, b'a', b'b', b'c', b'd']);
        }
        _ => unreachable!(),
    }
    h
}

async fn requestor_of_next_change(m: &Member, via: &Target) -> Value {
    let mut ws = events_unix(&m.socket(), "type=lifecycle").await.unwrap();
    // A value that differs from the last one: an unchanged value is no change and
    // emits no event.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let r = via
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {"core.remote_token_expiry": format!("{n}M")}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    next_lifecycle(&mut ws, "config-updated").await["metadata"]["requestor"].clone()
}

#[tokio::test]
async fn proxy_headers_from_trusted_peers_give_the_client_address() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let cert = ClientCert::generate("behind-lb");
    m.trust(&cert).await;
    let r = m
        .unix()
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {"core.https_trusted_proxy": "127.0.0.0/8, ::1"}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let dst: std::net::SocketAddr = addr.parse().unwrap();
    // v1
    let v1 = format!("PROXY TCP4 198.51.100.7 {} 40000 {}\r\n", dst.ip(), dst.port());
    let t = Target::tls_after(&addr, Some(&cert), v1.as_bytes());
    assert_eq!(requestor_of_next_change(&m, &t).await["address"], "198.51.100.7");
    // v2 over IPv6, and v2 IPv4 with a TLV.
    let h = v2(
        "[2001:db8::7]:40000".parse().unwrap(),
        "[2001:db8::1]:8443".parse().unwrap(),
    );
    let t = Target::tls_after(&addr, Some(&cert), &h);
    assert_eq!(requestor_of_next_change(&m, &t).await["address"], "2001:db8::7");
    let h = v2("203.0.113.9:1234".parse().unwrap(), dst);
    let t = Target::tls_after(&addr, Some(&cert), &h);
    assert_eq!(requestor_of_next_change(&m, &t).await["address"], "203.0.113.9");
    // The header is optional from a trusted peer; a LOCAL (health check) keeps the peer.
    assert_eq!(
        requestor_of_next_change(&m, &Target::tls(&addr, Some(&cert))).await["address"],
        "127.0.0.1"
    );
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    let r = Target::tls_after(&addr, None, &local)
        .get("/ready")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn proxy_headers_from_anyone_else_are_refused() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let cert = ClientCert::generate("x");
    m.trust(&cert).await;
    let v1 = b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 8443\r\n";
    assert!(Target::tls_after(&addr, Some(&cert), v1)
        .get("/1.0")
        .await
        .is_err());
    let garbage = b"PROXY TCP4 not an address\r\n";
    assert!(Target::tls_after(&addr, Some(&cert), garbage)
        .get("/1.0")
        .await
        .is_err());
    eventually(Duration::from_secs(5), "a warning naming the peer", || {
        let log = m.log();
        async move { (log.contains("refused a PROXY header") && log.contains("127.0.0.1")).then_some(()) }
    })
    .await;
    // Plain clients are unaffected.
    assert_eq!(
        Target::tls(&addr, Some(&cert)).get("/1.0").await.unwrap().status,
        200
    );
}

/// Real haproxy in TCP mode with `send-proxy-v2` in front of a member: TLS client
/// certificates pass through, and the member sees the client's address, not haproxy's.
#[tokio::test]
async fn haproxy_send_proxy_v2() {
    if !have_tool("haproxy") {
        return;
    }
    let mut m = Member::start().await;
    let backend = m.listen().await;
    let cert = ClientCert::generate("via-haproxy");
    m.trust(&cert).await;
    let r = m
        .unix()
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {"core.https_trusted_proxy": "127.0.0.9"}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let front = format!("127.0.0.1:{}", stapes_testkit::free_port());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
             frontend api\n  bind {front}\n  default_backend members\n\
             backend members\n  option httpchk GET /ready\n  http-check expect status 200\n\
               server m1 {backend} source 127.0.0.9 send-proxy-v2 check check-ssl verify none check-send-proxy inter 500ms\n"
        ),
    )
    .unwrap();
    let mut haproxy = stapes_testkit::haproxy(&cfg);
    let via = Target::tls(&front, Some(&cert));
    let r = eventually(Duration::from_secs(10), "haproxy forwarding", || async {
        let r = via.get("/1.0").await.ok()?;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(r.metadata()["auth_user_method"], "tls");
    assert_eq!(r.metadata()["auth_user_name"], cert.fingerprint);
    let requestor = requestor_of_next_change(&m, &via).await;
    assert_eq!(
        requestor["address"], "127.0.0.1",
        "the client's address, not haproxy's 127.0.0.9"
    );
    let _ = haproxy.kill().await;
}
