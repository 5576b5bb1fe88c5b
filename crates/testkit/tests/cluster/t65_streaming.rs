//! Forwarding that streams and tunnels: bodies of gigabytes through a member that does
//! not own the target, with both members' memory flat; a client that stops reading slows
//! the owner instead of filling the front member; a websocket through a non-owner, also
//! when the owner dies mid-stream. The daemons serve the `/internal/test/*` routes
//! (`STAPES_TEST_ROUTES=true`): a sink that hashes what it reads, a source of N bytes, an echo.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use stapes_testkit::{eventually, memory, tls_stream, ClientCert, Cluster, Target};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::{slot, FAST, LONG};

const MIB: u64 = 1024 * 1024;
/// How much a member's memory may grow while a large body passes through it.
const RSS_ROOM: u64 = 64 * MIB;
/// The large transfer: 2 GiB unless `STAPES_TEST_STREAM_MIB` says otherwise.
fn big() -> u64 {
    std::env::var("STAPES_TEST_STREAM_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048)
        * MIB
}
/// A transfer of `big()` bytes may take this long (debug build, two busy cores).
const TRANSFER: Duration = Duration::from_secs(600);

async fn two_members(env: &[(&str, &str)]) -> (Cluster, ClientCert) {
    let mut all = vec![("STAPES_TEST_ROUTES", "true")];
    all.extend_from_slice(env);
    let c = Cluster::start_env(2, FAST, &all).await;
    c.wait_healthy(1, LONG).await;
    let cert = crate::trusted_client(&c).await;
    (c, cert)
}

/// Asserts the peak memory of `pid` since `before` stayed within [`RSS_ROOM`] of it.
fn assert_flat(what: &str, pid: i32, before: (u64, u64)) {
    let (rss, hwm) = memory(pid);
    let allowed = before.1.max(before.0 + RSS_ROOM);
    assert!(
        hwm <= allowed,
        "{what}: peak RSS {} MiB, was {} MiB before (peak {} MiB); {} MiB allowed (now {} MiB)",
        hwm / MIB,
        before.0 / MIB,
        before.1 / MIB,
        allowed / MIB,
        rss / MIB
    );
}

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// An HTTP/1.1 connection to `addr` presenting `cert`, as the official client opens.
async fn h1(addr: &str, cert: &ClientCert) -> hyper::client::conn::http1::SendRequest<Body> {
    let tls = tls_stream(addr, Some(cert), b"http/1.1").await.expect("TLS");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

/// Bytes `k % 251` for `k` in `0..size`, in chunks of about 256 KiB, through `hash`.
fn pattern_chunks(size: u64) -> impl Iterator<Item = Bytes> {
    let period: Vec<u8> = (0..251u32 * 1024).map(|k| (k % 251) as u8).collect();
    let chunk = Bytes::from(period);
    let step = chunk.len() as u64;
    (0..size.div_ceil(step)).map(move |i| {
        let n = (size - i * step).min(step) as usize;
        chunk.slice(..n)
    })
}

fn sha256_of_pattern(size: u64) -> String {
    let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for c in pattern_chunks(size) {
        h.update(&c);
    }
    hex(h.finish().as_ref())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A request body of the pattern, `size` bytes, streamed (never held whole).
fn pattern_body(size: u64) -> Body {
    let frames = futures_util::stream::iter(pattern_chunks(size).map(|c| Ok(Frame::data(c))));
    BodyExt::boxed_unsync(http_body_util::StreamBody::new(frames))
}

async fn upload(addr: &str, cert: &ClientCert, path: &str, size: u64, declared: bool) -> (u16, Value) {
    let mut sender = h1(addr, cert).await;
    let mut req = http::Request::post(path).header("host", "stapes.test");
    if declared {
        req = req.header("content-length", size);
    }
    let req = req.body(pattern_body(size)).expect("request");
    let resp = tokio::time::timeout(TRANSFER, sender.send_request(req))
        .await
        .expect("the upload finished in time")
        .expect("an answer");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("answer body").to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn t65_a_large_upload_streams_through_a_member_that_does_not_own_it() {
    let _slot = slot().await;
    let (c, cert) = two_members(&[]).await;
    let size = big();
    let front = c.members[0].address().await;
    let before = [memory(c.members[0].pid()), memory(c.members[1].pid())];
    let want = sha256_of_pattern(size);
    let (status, body) = upload(&front, &cert, "/internal/test/sink?target=node2", size, true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["metadata"]["size"], size, "{body}");
    assert_eq!(body["metadata"]["sha256"], want.as_str());
    assert_flat("front member (node1)", c.members[0].pid(), before[0]);
    assert_flat("owner (node2)", c.members[1].pid(), before[1]);
    // The owner hashed it, not the front member: node2's own log has the request.
    c.members[1]
        .log_when(LONG, "the upload in node2's log", |log| {
            log.contains("/internal/test/sink")
        })
        .await;
}

#[tokio::test]
async fn t65_a_large_download_streams_through_a_member_that_does_not_own_it() {
    let _slot = slot().await;
    let (c, cert) = two_members(&[]).await;
    let size = big();
    let front = c.members[0].address().await;
    let before = [memory(c.members[0].pid()), memory(c.members[1].pid())];
    let mut sender = h1(&front, &cert).await;
    let req = http::Request::get(format!("/internal/test/source?size={size}&target=node2"))
        .header("host", "stapes.test")
        .body(BodyExt::boxed_unsync(
            http_body_util::Empty::new().map_err(|e| match e {}),
        ))
        .expect("request");
    let read = async {
        let resp = sender.send_request(req).await.expect("an answer");
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut got = 0u64;
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame.expect("the body arrives whole").data_ref() {
                h.update(d);
                got += d.len() as u64;
            }
        }
        (got, hex(h.finish().as_ref()))
    };
    let (got, sha) = tokio::time::timeout(TRANSFER, read)
        .await
        .expect("the download finished in time");
    assert_eq!(got, size);
    assert_eq!(sha, sha256_of_pattern(size));
    assert_flat("front member (node1)", c.members[0].pid(), before[0]);
    assert_flat("owner (node2)", c.members[1].pid(), before[1]);
}

/// The bytes node2's source has produced so far (through node1).
async fn produced(front: &Target) -> u64 {
    let r = front
        .get("/internal/test/produced?target=node2")
        .await
        .expect("produced");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.metadata().as_u64().expect("a count")
}

#[tokio::test]
async fn t90_a_client_that_stops_reading_slows_the_owner_not_the_front_member_memory() {
    let _slot = slot().await;
    let (c, cert) = two_members(&[]).await;
    let front_addr = c.members[0].address().await;
    let front = Target::tls(&front_addr, Some(&cert));
    let before = memory(c.members[0].pid());
    let mut sender = h1(&front_addr, &cert).await;
    let size = 2048 * MIB;
    let req = http::Request::get(format!("/internal/test/source?size={size}&target=node2"))
        .header("host", "stapes.test")
        .body(BodyExt::boxed_unsync(
            http_body_util::Empty::new().map_err(|e| match e {}),
        ))
        .expect("request");
    let resp = tokio::time::timeout(LONG, sender.send_request(req))
        .await
        .expect("headers in time")
        .expect("an answer");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut read = 0u64;
    while read < 8 * MIB {
        let frame = tokio::time::timeout(LONG, body.frame())
            .await
            .expect("data in time")
            .expect("more data")
            .expect("a frame");
        read += frame.data_ref().map_or(0, |d| d.len() as u64);
    }
    // The client stops reading (the body is held, unread). The owner must stop too: its
    // count stays the same for a second.
    let seen = std::cell::Cell::new((u64::MAX, std::time::Instant::now()));
    let stalled = eventually(LONG, "the owner stopped producing", || async {
        let now = produced(&front).await;
        let (previous, since) = seen.get();
        if now != previous {
            seen.set((now, std::time::Instant::now()));
            return None;
        }
        (since.elapsed() >= Duration::from_secs(1)).then_some(now)
    })
    .await;
    assert!(
        stalled < read + RSS_ROOM,
        "the owner produced {} MiB for a client that read {} MiB",
        stalled / MIB,
        read / MIB
    );
    assert_flat("front member (node1)", c.members[0].pid(), before);
    drop(body);
}

#[tokio::test]
async fn t90_a_streamed_body_over_its_bound_is_refused_with_413() {
    let _slot = slot().await;
    let (c, cert) = two_members(&[("STAPES_MAX_STREAM_BODY", "1048576")]).await;
    let front = c.members[0].address().await;
    for declared in [true, false] {
        let (status, body) = upload(
            &front,
            &cert,
            "/internal/test/sink?target=node2",
            2 * MIB,
            declared,
        )
        .await;
        assert_eq!(status, 413, "declared {declared}: {body}");
        assert_eq!(body["error_code"], 413, "{body}");
        assert!(
            body["metadata"].is_null() || body["metadata"]["sha256"].is_null(),
            "{body}"
        );
    }
    // At the bound, it passes.
    let (status, body) = upload(&front, &cert, "/internal/test/sink?target=node2", MIB, false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["metadata"]["sha256"], sha256_of_pattern(MIB).as_str());
}

/// A websocket to `path` on `addr`, presenting `cert` (or none) and `headers`.
async fn websocket(
    addr: &str,
    cert: Option<&ClientCert>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<
    tokio_tungstenite::WebSocketStream<transport::tls::ClientTlsStream<tokio::net::TcpStream>>,
    tungstenite::Error,
> {
    use tungstenite::client::IntoClientRequest;
    let tls = tls_stream(addr, cert, b"http/1.1").await.expect("TLS");
    let mut req = format!("wss://{addr}{path}")
        .into_client_request()
        .expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v.parse().expect("value"),
        );
    }
    let (ws, _) = tokio::time::timeout(LONG, tokio_tungstenite::client_async(req, tls))
        .await
        .expect("the handshake ended in time")?;
    Ok(ws)
}

async fn next_message<S>(ws: &mut S) -> Option<Result<Message, tungstenite::Error>>
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    tokio::time::timeout(LONG, ws.next())
        .await
        .expect("a message or an end in time")
}

#[tokio::test]
async fn t65_a_websocket_reaches_its_owner_through_another_member_until_the_owner_dies() {
    let _slot = slot().await;
    let (mut c, cert) = two_members(&[]).await;
    let front = c.members[0].address().await;
    // A client's own identity headers are forged: they must not reach the owner as such.
    let forged = [
        ("x-incus-forwarded-username", "admin"),
        ("x-incus-forwarded-protocol", "unix"),
    ];
    let mut ws = websocket(&front, Some(&cert), "/internal/test/echo?target=node2", &forged)
        .await
        .expect("the websocket opens through node1");
    let hello = match next_message(&mut ws).await {
        Some(Ok(Message::Text(t))) => serde_json::from_str::<Value>(&t).expect("JSON"),
        other => panic!("expected the owner's greeting, got {other:?}"),
    };
    assert_eq!(hello["protocol"], "tls", "{hello}");
    assert_eq!(hello["username"], cert.fingerprint.as_str(), "{hello}");
    // Messages come back with their type, the empty text barrier included.
    for msg in [
        Message::Text("hello".into()),
        Message::Binary(Bytes::from(vec![7u8; 200 * 1024])),
        Message::Text("".into()),
    ] {
        ws.send(msg.clone()).await.expect("send");
        match next_message(&mut ws).await {
            Some(Ok(back)) => assert_eq!(back, msg),
            other => panic!("expected an echo, got {other:?}"),
        }
    }
    // The owner dies mid-stream: the client learns it promptly, nothing hangs.
    c.members[1].kill9();
    let end = tokio::time::timeout(LONG, async {
        let _ = ws.send(Message::Text("anyone?".into())).await;
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(Message::Text(t))) if t.as_str() == "anyone?" => {
                    panic!("an echo from a dead owner")
                }
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        end.is_ok(),
        "the client saw no end within {LONG:?} of the owner's death"
    );
}

#[tokio::test]
async fn t90_an_untrusted_upgrade_is_refused_before_anything_is_forwarded() {
    let _slot = slot().await;
    let (c, _cert) = two_members(&[]).await;
    let front = c.members[0].address().await;
    let stranger = ClientCert::generate("stranger");
    for cert in [None, Some(&stranger)] {
        let forged = [
            ("x-incus-forwarded-username", "root"),
            ("x-incus-forwarded-protocol", "unix"),
        ];
        match websocket(&front, cert, "/internal/test/echo?target=node2", &forged).await {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
            Err(e) => panic!("expected 403, got {e}"),
            Ok(_) => panic!("an untrusted caller opened a websocket"),
        }
    }
    assert!(
        !c.members[1].log().contains("/internal/test/echo"),
        "the owner saw the refused upgrade:\n{}",
        c.members[1].log()
    );
}
