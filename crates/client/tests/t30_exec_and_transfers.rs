//! Exec's websocket dance and the streamed transfers against a small in-process server
//! on a unix socket that plays the server's side as Incus does (the real daemon's side
//! is covered by `crates/stapes/tests/against_incus.rs`): the order websockets are
//! connected in, the EOF barriers, exit codes from a failed operation, uploads received
//! whole, a split image export with a wrong checksum refused, a bounded error body and a
//! stalled download cut.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use stapes_client::exec::ExecIo;
use stapes_client::{Client, ClientError, Request, Upload};
use tokio::net::UnixListener;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).map_err(|never| match never {}).boxed()
}

fn envelope(kind: &str, metadata: Value) -> String {
    json!({"type": kind, "status": "Success", "status_code": 200, "operation": "",
        "error_code": 0, "error": "", "metadata": metadata})
    .to_string()
}

fn op(status: &str, code: u16, metadata: Value) -> Value {
    json!({"id": "op1", "class": "websocket", "description": "Executing command",
        "created_at": "2026-12-01T20:15:37Z", "updated_at": "2026-12-01T20:15:37Z",
        "status": status, "status_code": code, "resources": null, "metadata": metadata,
        "may_cancel": false, "err": if code == 400 { "Command not found" } else { "" },
        "location": "node2"})
}

/// What the fake server saw and decides.
#[derive(Default)]
struct Seen {
    /// Websockets in the order they were connected (their secrets).
    order: Vec<String>,
    /// What arrived on fd 0 before the barrier.
    stdin: Vec<u8>,
    /// How the command ends: its exit code, or a failure ("Command not found", 127).
    fail: bool,
    /// Bytes of the last upload and their sha256.
    upload: Option<(u64, String)>,
}

/// What the fake server saw, and whether the command "exited" (fd 0 reached EOF), which
/// the output websockets and the operation's wait hold back for.
#[derive(Default)]
struct Fake {
    seen: Mutex<Seen>,
    exited: tokio::sync::watch::Sender<bool>,
}

impl Fake {
    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }

    /// Waits (bounded) for fd 0 to reach EOF.
    async fn until_exited(&self) {
        let mut rx = self.exited.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|e| *e)).await;
    }
}

type Shared = Arc<Fake>;

fn json_response(status: u16, body: String) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(full(body))
        .unwrap()
}

async fn websocket(seen: Shared, secret: String, ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>) {
    let (mut tx, mut rx) = ws.split();
    match secret.as_str() {
        "s0" => {
            while let Some(Ok(msg)) = rx.next().await {
                match msg {
                    Message::Binary(b) => seen.lock().stdin.extend_from_slice(&b),
                    Message::Text(t) if t.is_empty() => break,
                    _ => {}
                }
            }
            seen.exited.send_replace(true);
        }
        "s1" | "s2" => {
            // Output only once the command has had its input (as a `cat` would).
            seen.until_exited().await;
            let data = if secret == "s1" { "out\n" } else { "err\n" };
            let _ = tx.send(Message::binary(data.as_bytes().to_vec())).await;
            let _ = tx.send(Message::text("")).await;
            let _ = tx.close().await;
        }
        _ => while let Some(Ok(_)) = rx.next().await {},
    }
}

async fn route(seen: Shared, req: hyper::Request<hyper::body::Incoming>) -> hyper::Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    match (req.method().as_str(), path.as_str()) {
        ("POST", "/1.0/instances/c1/exec") => {
            let fds = json!({"0": "s0", "1": "s1", "2": "s2", "control": "sc"});
            let meta = op("Running", 103, json!({"fds": fds, "interactive": false}));
            json_response(202, envelope("async", meta))
        }
        ("GET", "/1.0/operations/op1/websocket") => {
            let secret = query.trim_start_matches("secret=").to_string();
            seen.lock().order.push(secret.clone());
            let key = req
                .headers()
                .get("sec-websocket-key")
                .map(|k| tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes()))
                .unwrap_or_default();
            tokio::spawn(async move {
                if let Ok(up) = hyper::upgrade::on(req).await {
                    let ws = WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
                    websocket(seen, secret, ws).await;
                }
            });
            hyper::Response::builder()
                .status(101)
                .header("Connection", "Upgrade")
                .header("Upgrade", "websocket")
                .header("Sec-WebSocket-Accept", key)
                .body(full(""))
                .unwrap()
        }
        ("GET", "/1.0/operations/op1/wait") => {
            seen.until_exited().await;
            if seen.lock().fail {
                // Incus answers the wait of a failed operation with its error alone.
                let e = r#"{"type":"error","status":"","status_code":0,"operation":"","error_code":400,"error":"Command not found","metadata":null}"#;
                return json_response(400, e.to_string());
            }
            json_response(200, envelope("sync", op("Success", 200, json!({"return": 7}))))
        }
        ("GET", "/1.0/operations/op1") => {
            json_response(200, envelope("sync", op("Failure", 400, json!({"return": 127}))))
        }
        ("POST", "/1.0/images") => {
            let mut body = req.into_body();
            let mut n = 0u64;
            let mut hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(d) = frame.into_data() {
                    n += d.len() as u64;
                    hash.update(&d);
                }
            }
            let fp = hex::encode(hash.finish().as_ref());
            seen.lock().upload = Some((n, fp.clone()));
            let meta = op("Running", 103, json!({"fingerprint": fp, "size": n.to_string()}));
            json_response(202, envelope("async", meta))
        }
        ("GET", "/1.0/images/abcd/export") => {
            let boundary = "b0undary";
            let body = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"; filename=\"meta.tar.gz\"\r\nContent-Type: application/octet-stream\r\n\r\nMETA\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"rootfs\"; filename=\"root.squashfs\"\r\nContent-Type: application/octet-stream\r\n\r\nROOT\r\n--{boundary}--\r\n"
            );
            hyper::Response::builder()
                .header(
                    "Content-Type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(full(body))
                .unwrap()
        }
        ("GET", "/1.0/huge-error") => {
            // 16 MiB of error body: the client reads a bounded prefix.
            let chunk = Bytes::from(vec![b'x'; 1024 * 1024]);
            let stream = futures_util::stream::iter(
                (0..16).map(move |_| Ok::<_, std::io::Error>(Frame::data(chunk.clone()))),
            );
            hyper::Response::builder()
                .status(500)
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap()
        }
        ("GET", "/1.0/stall") => {
            // A first chunk, then nothing, ever.
            let first = futures_util::stream::iter([Ok::<_, std::io::Error>(Frame::data(
                Bytes::from_static(b"begin"),
            ))]);
            let stream = first.chain(futures_util::stream::pending());
            hyper::Response::builder()
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap()
        }
        _ => json_response(
            404,
            r#"{"type":"error","error_code":404,"error":"not found","metadata":null}"#.to_string(),
        ),
    }
}

/// The fake server on a unix socket; returns a client for it and what it saw.
async fn server() -> (Client, Shared, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let seen: Shared = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let s = s.clone();
                    async move { Ok::<_, std::convert::Infallible>(route(s, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (
        Client::unix(&path).with_timeout(Duration::from_secs(10)),
        seen,
        dir,
    )
}

/// A writer the test can read back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl tokio::io::AsyncWrite for Captured {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

fn io(stdin: &'static [u8], out: &Captured, err: &Captured) -> ExecIo {
    ExecIo {
        stdin: Box::new(stdin),
        stdout: Box::new(out.clone()),
        stderr: Box::new(err.clone()),
        control: None,
    }
}

#[tokio::test]
async fn t10_exec_connects_control_then_0_1_2_and_mirrors_with_barriers() {
    let (client, seen, _dir) = server().await;
    let (out, err) = (Captured::default(), Captured::default());
    let post = api::types::InstanceExecPost {
        command: vec!["cat".into()],
        ..Default::default()
    };
    let op = tokio::time::timeout(
        Duration::from_secs(30),
        client.exec("c1", &post, io(b"from-stdin\n", &out, &err)),
    )
    .await
    .expect("the exec ends")
    .expect("the exec succeeds");
    assert_eq!(op.exit_code(), Some(7));
    let seen = seen.lock();
    assert_eq!(seen.order, ["sc", "s0", "s1", "s2"]);
    assert_eq!(seen.stdin, b"from-stdin\n");
    assert_eq!(out.0.lock().unwrap().as_slice(), b"out\n");
    assert_eq!(err.0.lock().unwrap().as_slice(), b"err\n");
}

#[tokio::test]
async fn t30_a_failed_exec_keeps_its_exit_code() {
    let (client, seen, _dir) = server().await;
    seen.lock().fail = true;
    let (out, err) = (Captured::default(), Captured::default());
    let post = api::types::InstanceExecPost {
        command: vec!["/nonexistent".into()],
        ..Default::default()
    };
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        client.exec("c1", &post, io(b"", &out, &err)),
    )
    .await
    .expect("the exec ends");
    match result {
        Err(ClientError::OperationFailed { message, operation }) => {
            assert_eq!(message, "Command not found");
            assert_eq!(operation.exit_code(), Some(127));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn t10_an_upload_arrives_whole_in_bounded_chunks() {
    let (client, seen, _dir) = server().await;
    let size = 20 * 1024 * 1024u64;
    let body = Upload::new(
        tokio::io::AsyncReadExt::take(tokio::io::repeat(b'z'), size),
        "application/octet-stream",
    );
    let op = client
        .import_image(body, &Default::default())
        .await
        .expect("the upload is accepted");
    let (n, fp) = seen.lock().upload.clone().expect("received");
    assert_eq!(n, size);
    let meta = op.metadata.unwrap();
    assert_eq!(meta["fingerprint"], Value::String(fp));
    assert_eq!(meta["size"], Value::String(size.to_string()));
}

#[tokio::test]
async fn t90_a_split_export_that_does_not_hash_to_its_fingerprint_is_refused() {
    let (client, _seen, _dir) = server().await;
    let (mut meta, mut rootfs) = (Vec::new(), Vec::new());
    let e = client
        .export_image("abcd", &mut meta, &mut rootfs)
        .await
        .expect_err("the checksum is wrong");
    assert!(
        e.to_string()
            .starts_with("Invalid response from the server: Image fingerprint doesn't match. Got "),
        "{e}"
    );
    assert_eq!((meta.as_slice(), rootfs.as_slice()), (&b"META"[..], &b"ROOT"[..]));
}

#[tokio::test]
async fn t90_error_bodies_are_read_bounded_and_stalled_downloads_cut() {
    let (client, _seen, _dir) = server().await;
    let mut sink = Vec::new();
    let e = client
        .download(Request::get("/1.0/huge-error"), &mut sink)
        .await
        .expect_err("an error status");
    assert!(
        matches!(&e, ClientError::BadResponse(m) if m.contains("length limit")) || e.status() == Some(500),
        "{e:?}"
    );
    assert!(sink.is_empty());
    let client = client.with_idle_limit(Duration::from_secs(1));
    let mut sink = Vec::new();
    let e = tokio::time::timeout(
        Duration::from_secs(30),
        client.download(Request::get("/1.0/stall"), &mut sink),
    )
    .await
    .expect("the download is cut, not waited on forever")
    .expect_err("it stalled");
    assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
}
