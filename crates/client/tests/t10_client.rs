//! The client against small in-process servers built from `transport`'s TLS policy:
//! pinning, first contact, API errors, unix sockets, the events websocket, bounded dials.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use stapes_client::connect::{DialSpec, ServerCheck};
use stapes_client::{Client, ClientError, Endpoint, EventsOptions, Request};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_tungstenite::tungstenite::Message;

fn envelope(metadata: Value) -> String {
    json!({"type":"sync","status":"Success","status_code":200,"operation":"","error_code":0,"error":"","metadata":metadata}).to_string()
}

/// Routes of the fake server. `peer` says whether the client showed a certificate.
fn respond(path_and_query: &str, peer: Option<String>) -> hyper::Response<Full<Bytes>> {
    let (status, body) = match path_and_query.split('?').next().unwrap_or_default() {
        "/1.0" => (
            200,
            envelope(json!({
                "auth": if peer.is_some() { "trusted" } else { "untrusted" },
                "auth_user_name": peer.unwrap_or_default(),
                "echo": path_and_query,
            })),
        ),
        "/1.0/operations/abc/wait" => (
            200,
            envelope(json!({"id":"abc","status":"Success","status_code":200,"err":"","echo":path_and_query})),
        ),
        _ => (
            403,
            r#"{"type":"error","status":"","status_code":0,"operation":"","error_code":403,"error":"not authorized","metadata":null}"#.to_string(),
        ),
    };
    hyper::Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("ETag", "\"e1\"")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn serve_http<S>(stream: S, peer: Option<String>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let peer = peer.clone();
        async move {
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            Ok::<_, Infallible>(respond(&pq, peer))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

struct TlsServer {
    addr: std::net::SocketAddr,
    fingerprint: String,
}

async fn tls_server() -> TlsServer {
    transport::tls::install_default_provider();
    let pair = trust::CertPair::generate_server("node1").unwrap();
    let fingerprint = trust::fingerprint(&trust::cert::pem_to_der(&pair.cert_pem).unwrap());
    let key = transport::tls::certified_key(&pair.cert_pem, &pair.key_pem).unwrap();
    let config = transport::tls::server_config(transport::tls::CertResolver::new(key)).unwrap();
    let acceptor = transport::tls::TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| trust::fingerprint(c.as_ref()));
                serve_http(tls, peer).await;
            });
        }
    });
    TlsServer { addr, fingerprint }
}

fn https(addr: std::net::SocketAddr) -> Endpoint {
    Endpoint::Https {
        host: addr.ip().to_string(),
        port: addr.port(),
    }
}

fn pinned(endpoints: Vec<Endpoint>, fp: &str, identity: Option<trust::CertPair>) -> Client {
    Client::from_spec(DialSpec {
        endpoints,
        check: ServerCheck::Pinned(fp.to_string()),
        identity,
        connect_timeout: Duration::from_secs(2),
        state_file: None,
    })
}

#[tokio::test]
async fn t10_probe_records_the_server_certificate() {
    let srv = tls_server().await;
    let me = trust::CertPair::generate_client("me@test").unwrap();
    let my_fp = trust::fingerprint(&trust::cert::pem_to_der(&me.cert_pem).unwrap());
    let probe = stapes_client::probe(vec![https(srv.addr)], Some(me))
        .await
        .unwrap();
    assert_eq!(probe.fingerprint, srv.fingerprint);
    assert_eq!(trust::fingerprint(&probe.certificate_der), srv.fingerprint);
    assert_eq!(probe.server["auth"], "trusted");
    assert_eq!(probe.server["auth_user_name"], my_fp.as_str());

    let anonymous = stapes_client::probe(vec![https(srv.addr)], None).await.unwrap();
    assert_eq!(anonymous.server["auth"], "untrusted");
}

#[tokio::test]
async fn t10_pinned_requests_carry_target_and_etag() {
    let srv = tls_server().await;
    let client = pinned(vec![https(srv.addr)], &srv.fingerprint, None).with_target(Some("node2".into()));
    let (server, etag) = client.server().await.unwrap();
    assert_eq!(server["echo"], "/1.0?target=node2");
    assert_eq!(etag.as_deref(), Some("\"e1\""));
    let op = client
        .wait_operation("/1.0/operations/abc?project=default", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(op["echo"], "/1.0/operations/abc/wait?timeout=5&target=node2");
}

#[tokio::test]
async fn t10_api_errors_carry_status_and_message() {
    let srv = tls_server().await;
    let client = pinned(vec![https(srv.addr)], &srv.fingerprint, None);
    let err = client.get("/1.0/certificates").await.unwrap_err();
    assert_eq!(err.status(), Some(403));
    assert_eq!(err.to_string(), "not authorized");
    // The raw request still hands back the response.
    let raw = client.request(Request::get("/1.0/certificates")).await.unwrap();
    assert_eq!(raw.status.as_u16(), 403);
}

#[tokio::test]
async fn t30_changed_server_certificate_is_reported_with_its_fingerprint() {
    let srv = tls_server().await;
    let stale = "00".repeat(32);
    let err = pinned(vec![https(srv.addr)], &stale, None)
        .server()
        .await
        .unwrap_err();
    match &err {
        ClientError::PinMismatch {
            pinned, presented, ..
        } => {
            assert_eq!(pinned, &stale);
            assert_eq!(presented, &srv.fingerprint);
        }
        other => panic!("expected a pin mismatch, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("has changed") && text.contains(&srv.fingerprint),
        "{text}"
    );
}

#[tokio::test]
async fn t30_refused_addresses_fall_through_to_the_next() {
    let srv = tls_server().await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let client = pinned(vec![https(dead), https(srv.addr)], &srv.fingerprint, None);
    assert_eq!(client.server().await.unwrap().0["auth"], "untrusted");

    let only_dead = pinned(vec![https(dead)], &srv.fingerprint, None);
    assert!(matches!(
        only_dead.server().await,
        Err(ClientError::Connect { .. })
    ));
}

#[tokio::test]
async fn t30_a_silent_server_costs_the_connect_timeout_only() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s); // accept, never answer
        }
    });
    let client = Client::from_spec(DialSpec {
        endpoints: vec![https(addr)],
        check: ServerCheck::Pinned("00".repeat(32)),
        identity: None,
        connect_timeout: Duration::from_millis(300),
        state_file: None,
    });
    let started = std::time::Instant::now();
    let err = client.server().await.unwrap_err();
    assert!(matches!(err, ClientError::ConnectTimeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn t10_unix_socket_requests_and_missing_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unix.socket");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve_http(s, Some("root".into())));
        }
    });
    let client = Client::unix(&path);
    assert_eq!(client.server().await.unwrap().0["auth_user_name"], "root");

    let missing = Client::unix(dir.path().join("nope.socket"));
    let err = missing.server().await.unwrap_err();
    assert!(matches!(err, ClientError::DaemonNotRunning { .. }), "{err:?}");
    assert!(err
        .to_string()
        .starts_with("The stapes daemon doesn't appear to be started"));
}

#[tokio::test]
#[allow(clippy::result_large_err)] // tungstenite's handshake callback signature
async fn t10_events_arrive_over_the_websocket_filtered_by_type() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unix.socket");
    let listener = UnixListener::bind(&path).unwrap();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<String>();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Some(seen_tx)));
        let callback = {
            let seen = seen.clone();
            move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                  resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                if let Some(tx) = seen.lock().unwrap().take() {
                    let _ = tx.send(req.uri().to_string());
                }
                Ok(resp)
            }
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(s, callback).await.unwrap();
        for kind in ["logging", "lifecycle"] {
            let event = json!({"type": kind, "timestamp": "2026-11-24T15:36:14.741270819Z",
                "metadata": {"action": "config-updated"}, "location": "node2", "project": "default"});
            ws.send(Message::Text(event.to_string().into())).await.unwrap();
        }
        let _ = ws.close(None).await;
    });
    let client = Client::unix(&path);
    let opts = EventsOptions {
        types: vec!["lifecycle".into()],
        all_projects: true,
    };
    let mut events = client.events(&opts).await.unwrap();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!(first.kind, "lifecycle");
    assert_eq!(first.location, "node2");
    assert!(events.next().await.is_none());
    assert_eq!(
        seen_rx.await.unwrap(),
        "/1.0/events?type=lifecycle&all-projects=true"
    );
}

/// A listener that accepts and never answers (a hung member); kept open while held.
async fn hung_listener() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn t30_a_hung_first_address_is_overtaken_by_the_next() {
    let srv = tls_server().await;
    let (hung, _task) = hung_listener().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let client = Client::from_spec(DialSpec {
        endpoints: vec![https(hung), https(srv.addr)],
        check: ServerCheck::Pinned(srv.fingerprint.clone()),
        identity: None,
        connect_timeout: Duration::from_secs(3),
        state_file: Some(state.clone()),
    });
    let started = std::time::Instant::now();
    let resp = client.request(Request::get("/1.0")).await.unwrap();
    let took = started.elapsed();
    println!("hung first address: answered in {took:?}");
    assert_eq!(resp.endpoint, https(srv.addr));
    assert!(took < Duration::from_secs(2), "{took:?}");
    // The winner is remembered and tried first next time; the hung one goes last.
    let st = stapes_client::connect::AddrState::load(&state);
    assert_eq!(st.last_ok, Some(https(srv.addr).url()));
    assert!(st.failed.contains_key(&https(hung).url()), "{st:?}");
    let order = stapes_client::connect::order_endpoints(
        &client.dial_spec().endpoints,
        &st,
        &[],
        stapes_client::connect::unix_now(),
    );
    assert_eq!(order, vec![https(srv.addr), https(hung)]);
}

#[tokio::test]
async fn t30_every_address_failing_reports_each() {
    let (hung, _task) = hung_listener().await;
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let client = Client::from_spec(DialSpec {
        endpoints: vec![https(hung), https(refused)],
        check: ServerCheck::Pinned("00".repeat(32)),
        identity: None,
        connect_timeout: Duration::from_millis(500),
        state_file: None,
    });
    let started = std::time::Instant::now();
    let err = client.server().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    match err {
        ClientError::AllFailed(errors) => assert_eq!(errors.len(), 2, "{errors:?}"),
        other => panic!("{other:?}"),
    }
}
